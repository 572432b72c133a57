"""The programs of a session's roles: the computing parties, the model owner, the client.

One session = one architecture, one set of weight shares and any number of prompts:

1. Set-up (phase ``setup``, step child 0 of the root): the parties agree their keys; the
   model owner and the client give the parties their input seeds; the model owner shares
   every weight tensor once (:func:`~puma_async.protocols.llama.weight_plan` order, in row
   blocks that fit the session's frame limit: it derives x_0 and x_1 from the seeds and
   sends only x_2 to P_1 and P_2). Each party then tells the client it is :class:`Ready`
   (its shares stored), so the client's timings of the online steps do not include any
   party's set-up.
2. Online (step child 1): per prompt and per pass, the client tells the parties how many
   new positions follow (:class:`Run`: public), secret-shares their one-hot rows, and alone
   receives the logits of the last position (of every new position if the session's
   ``reveal_logits`` is "all", in row blocks that fit the frame limit): each party sends bits
   [f, 64) of its 3-out-of-3 share of the head's untruncated product at 2f
   (``io.reveal_product_to``: 46 bits per logit), the client adds them mod 2^(64 - f) and
   decodes at f fractional bits (floor(z / 2^f) - e, e in {0, 1, 2}); it picks the next
   token itself from the last (greedy, or sampled from its own seeded generator:
   client-side randomness, not a protocol secret).
   A prompt too long for one pass (:func:`.state.fits_one_pass`: the session's
   ``max_pass_positions`` N positions and N^2 query-key pairs) comes in passes
   (:func:`.state.prompt_passes`): :class:`Prefill` passes of its first positions, which
   only extend the KV cache (no head; their logits only where every position's are
   revealed), then the :class:`Run` of the rest, so that a pass's memory stays bounded
   whatever the prompt.
   The parties keep a secret-shared KV cache, so each new token costs one position. Every
   prompt runs ``max_new_tokens`` passes unless the client stops at EOS (revealing the
   length: :mod:`.generation`); :class:`NextPrompt` drops the cache, :class:`End` ends.
   A pass after a prompt's first has 1 row at one position more (the state's rules), so
   while a pass runs, the parties make the next pass's offline material beside it
   (``llama.prepare_tuples``, if the prompt may have another pass), and no online round of
   a new token waits on an offline one; the prompt pass makes its own at its start. A
   client that stops early leaves one pass's material unused.

Every command goes through a :class:`~.state.SessionState` on both sides. The parties see
shapes, positions and the number of passes (public by the threat model), never a weight,
token, activation or logit. Traffic of prompt p's pass t (t = 0: the prompt pass) is in scope
``p{p}.t{t}`` of phase ``online`` (a Prefill pass's from position s: ``p{p}.prefill{s}``),
with sub-scopes ``io``, ``embed``, ``layer{i}.attn``, ``layer{i}.mlp`` and ``head`` (its
offline material too, even when the pass before made it).

Parties get the architecture only, the owner alone gets weights and the client alone gets
prompts: :mod:`.factory` builds one role's program from what that role may hold.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import trio

from puma_async.context import OFFLINE_PHASE, Context, Program
from puma_async.errors import ProtocolError, SettingsError
from puma_async.model.weights import LlamaWeights
from puma_async.protocols.fixedpoint import fixed_point
from puma_async.protocols.io import input_ahead, reveal_product_to, share_input
from puma_async.protocols.llama import (
    EmbedAhead,
    PassTuples,
    SecureKVCache,
    Stored,
    assemble_model,
    embed_ahead,
    forward,
    head_format,
    prepare_tuples,
    stored_form,
    weight_plan,
    weight_tensors,
)
from puma_async.protocols.offload import offload
from puma_async.protocols.randomness import setup_input_seeds, setup_keys
from puma_async.protocols.ring import RingArray
from puma_async.protocols.shares import AShare, ProductShare
from puma_async.roles import CLIENT, MODEL_OWNER, PARTIES
from puma_async.session.accounting import pass_scope, prefill_scope
from puma_async.session.frames import row_blocks
from puma_async.session.generation import (
    GenerationOptions,
    Progress,
    ProgressFn,
    PromptResult,
    TokenRecord,
    check_prompts,
    one_hot,
    pick_token,
)
from puma_async.session.messages import Command, End, NextPrompt, Prefill, Ready, Run
from puma_async.session.settings import SessionSettings
from puma_async.session.state import (
    PassDone,
    SessionState,
    SessionStateError,
    prompt_passes,
)
from puma_async.workers import in_thread

ClientResult = tuple[tuple[PromptResult, ...], float]
"""What the client's program returns: its prompts' results and the set-up's seconds."""


# ----------------------------------------------------------------------------- inputs, outputs


async def send_rows(ctx: Context, owner: int, shape: tuple[int, ...], block_bytes: int,
                    rows_of: Callable[[slice], RingArray], *, threaded: bool = False) -> None:
    """The input owner's side of :func:`receive_rows`: shares ``rows_of(block)`` for each
    row block of ``shape`` (computed in a worker thread if ``threaded``), one at a time."""
    for rows in row_blocks(shape, block_bytes):
        block = await in_thread(rows_of, rows) if threaded else rows_of(rows)
        await share_input(ctx, owner, block.shape, block)
        del block
        await trio.sleep(0)  # let the writers send it before the next block is made


async def receive_rows(ctx: Context, owner: int, shape: tuple[int, ...], block_bytes: int,
                       into: AShare | None = None) -> AShare:
    """A party's share of an input of ``shape`` shared in row blocks of at most
    ``block_bytes`` (:mod:`.frames`), written into ``into``'s halves when given (views of a
    stored form: :func:`~puma_async.protocols.llama.stored_form`), else into new arrays (a
    one-block input as received). Large blocks are copied in a worker thread."""
    blocks = list(row_blocks(shape, block_bytes))
    if into is None and len(blocks) == 1:
        share = await share_input(ctx, owner, shape)
        assert isinstance(share, AShare)
        return share
    if into is None:
        into = AShare(np.empty(shape, np.uint64), np.empty(shape, np.uint64))
    for rows in blocks:
        part = await share_input(ctx, owner, (rows.stop - rows.start, *shape[1:]))
        assert isinstance(part, AShare)
        await offload(_write_rows, into, rows, part, size=part.size)
    return into


def _write_rows(into: AShare, rows: slice, part: AShare) -> None:
    into.first[rows], into.second[rows] = part.first, part.second


async def reveal_rows(ctx: Context, z: ProductShare | None, role: int,
                      shape: tuple[int, ...], frac_bits: int, block_bytes: int
                      ) -> RingArray | None:
    """:func:`~puma_async.protocols.io.reveal_product_to` in row blocks of at most
    ``block_bytes`` of ring elements per party (one row at least; :mod:`.frames`; each party
    sends 64 - (frac_bits - f) bits of them): the parties give their 3-out-of-3 share ``z`` of
    ``shape`` at ``frac_bits``, ``role`` gives None and gets the whole product at f; the
    parties get None."""
    opened = []
    for rows in row_blocks(shape, block_bytes):
        part = None if z is None else z[rows]
        opened.append(await reveal_product_to(ctx, part, role,
                                              (rows.stop - rows.start, *shape[1:]), frac_bits))
    if ctx.role != role:
        return None
    return opened[0] if len(opened) == 1 else np.concatenate(opened)


# ----------------------------------------------------------------------------- commands


async def _command(ctx: Context, state: SessionState) -> Command:
    """The client's next command, checked against the session's state."""
    msg = await ctx.recv(CLIENT)
    if not isinstance(msg, Run | Prefill | NextPrompt | End):
        raise ProtocolError(f"expected a command from the client, got {type(msg).__name__}",
                            peer=CLIENT, step=ctx.step_name)
    try:
        state.handle(msg)
    except SessionStateError as exc:
        raise ProtocolError(f"bad command from the client: {exc}", peer=CLIENT,
                            step=ctx.step_name) from None
    return msg


async def _tell_parties(ctx: Context, state: SessionState, command: Command) -> None:
    state.handle(command)  # the client holds itself to the rules it holds the parties to
    for party in PARTIES:
        await ctx.send(party, command)


def _no_progress(event: Progress) -> None:
    pass


_FREEZE_LOCK = threading.Lock()
_frozen_blocks = 0  # the _frozen_heap blocks open in this process (several roles in one)
_outer_thresholds: tuple[int, int, int] | None = None  # the collector's, before the first

PASS_GC_THRESHOLDS = (20_000, 20, 20)
"""The cyclic collector's thresholds while passes run (:func:`_frozen_heap`; CPython's
default is (700, 10, 10)). A new token allocates some 10^6 short-lived containers (envelopes,
shares, tuples), nearly all freed by refcounting, yet at 700 the collector ran about 44
young and 4 middle passes per token over whatever was alive then. Toggled token by token in
one session (SmolLM2, balanced): 0.033 s less event-loop CPU per token, 0.037 s less wall
time (two runs of 10 tokens each way; a null toggle moved 0.012 s)."""


@contextlib.contextmanager
def _frozen_heap() -> Iterator[None]:
    """The objects alive now (after the set-up: the model's shares and everything else this
    process holds) out of the cyclic collector's passes until the block ends (``gc.freeze``,
    process-wide): its full collections, about one per new token, then skip them (30 layers
    in one process: ~80 -> ~25 ms of collection per token), and the collector's thresholds
    raised to :data:`PASS_GC_THRESHOLDS`. Refcounting still frees them; cyclic garbage waits
    for the end of the block or a rarer pass. Both are the process's, so with several
    parties in one process (threads included) the heap is unfrozen (``gc.unfreeze``) and
    the thresholds restored when the last of their blocks ends, not the first."""
    global _frozen_blocks, _outer_thresholds
    with _FREEZE_LOCK:
        gc.freeze()
        if not _frozen_blocks:
            _outer_thresholds = gc.get_threshold()
            gc.set_threshold(*PASS_GC_THRESHOLDS)
        _frozen_blocks += 1
    try:
        yield
    finally:
        with _FREEZE_LOCK:
            _frozen_blocks -= 1
            if not _frozen_blocks:
                gc.unfreeze()
                assert _outer_thresholds is not None
                gc.set_threshold(*_outer_thresholds)
                _outer_thresholds = None


# ----------------------------------------------------------------------------- programs


def party_program(settings: SessionSettings, progress: ProgressFn | None = None) -> Program:
    """A computing party: set-up, then forward passes as the client asks; returns None.

    ``progress`` hears of the set-up ('setup') and of each pass ('token', without a token).
    """
    config, blocks = settings.config, settings.input_block_bytes
    all_positions = settings.reveal_logits == "all"
    report = progress or _no_progress

    async def program(ctx: Context) -> None:
        started = time.perf_counter()
        setup = ctx.child()
        with setup.phase("setup"):
            await setup_keys(setup)
            await setup_input_seeds(setup, MODEL_OWNER)
            await setup_input_seeds(setup, CLIENT)
            stored: dict[str, Stored] = {}
            for name, shape in weight_plan(config):
                form = stored_form(name, shape)
                if form is None:
                    stored[name] = await receive_rows(setup, MODEL_OWNER, shape, blocks)
                else:
                    stored[name], halves = form
                    await receive_rows(setup, MODEL_OWNER, shape, blocks, into=halves)
            model = assemble_model(config, stored, settings.plan)
            del stored
        ctx.join([setup])
        online = ctx.child()
        state = SessionState(settings.positions, settings.max_new_tokens,
                             settings.max_pass_positions)
        state.handle(Ready())
        await online.send(CLIENT, Ready())
        report(Progress("setup", time.perf_counter() - started))
        with _frozen_heap():  # the set-up's objects: out of the collector's passes
            cache = SecureKVCache.empty(config)
            ahead: PassTuples | None = None  # the next pass's offline material
            embedded: EmbedAhead | None = None  # P0: its embedding product

            async def prepare_next(c: Context, keys: int, inputs: tuple[bytes, AShare] | None
                                   ) -> tuple[PassTuples, EmbedAhead | None]:
                """The next pass's offline material, then at P0 (``inputs``: the label and P0's
                share of the next row, from the client's input seeds) its embedding product, in a
                worker thread (after the material: this pass's own embedding has read its table
                by then)."""
                with c.phase(OFFLINE_PHASE):
                    material = await prepare_tuples(c, config, model.plan, 1, keys, 1)
                if inputs is None:
                    return material, None
                return material, await in_thread(embed_ahead, model, *inputs)

            while True:
                command = await _command(online, state)
                if isinstance(command, End):
                    return
                if isinstance(command, NextPrompt):
                    cache, ahead = SecureKVCache.empty(config), None
                    continue
                t0, step, pre = time.perf_counter(), state.passes - 1, ahead
                prefill = isinstance(command, Prefill)  # a long prompt's first positions
                start = state.positions - command.positions
                made_ahead = embedded if embedded is not None and command.positions == 1 and (
                    embedded.label == online.next_label(b"input")) else None
                # a next pass of this prompt would have 1 row at one position more: its material
                # is made beside this pass's forward (offline), in the next pass's scope, and P0's
                # embedding product from the input seeds (the row's label is this step's next)
                ahead, embedded = None, None
                more = not prefill and state.passes < state.max_new_tokens and (
                    state.positions < state.context)
                scope = prefill_scope(state.prompt, start) if prefill else (
                    pass_scope(state.prompt, step))
                with online.scope(scope):
                    with online.scope("io"):
                        tokens = await receive_rows(
                            online, CLIENT, (command.positions, config.vocab), blocks)
                    steps = [functools.partial(forward, model=model, one_hot=tokens, cache=cache,
                                               all_positions=all_positions, pre=pre,
                                               embedded=made_ahead,
                                               head=all_positions or not prefill)]
                    children = [online.child()]
                    if more:
                        inputs = input_ahead(online, CLIENT, (1, config.vocab)
                                             ) if ctx.role == 0 else None
                        steps.append(functools.partial(prepare_next, keys=state.positions + 1,
                                                       inputs=inputs))
                        children.append(online.child(pass_scope(state.prompt, step + 1)))
                    logits, *made = await online.run_children(children, steps)
                    ahead, embedded = made[0] if made else (None, None)
                    if logits is not None:
                        with online.scope("io"):
                            await reveal_rows(online, logits, CLIENT, logits.shape,
                                              logits.frac_bits, blocks)
                state.handle(PassDone())
                report(Progress("prefill", time.perf_counter() - t0, state.prompt, start,
                                positions=command.positions) if prefill else
                       Progress("token", time.perf_counter() - t0, state.prompt, step))

    return program


def owner_program(settings: SessionSettings, weights: LlamaWeights) -> Program:
    """The model owner: shares every tensor once (fixed point, in row blocks)."""
    if weights.config != settings.config:
        raise SettingsError("the weights are not of the session's architecture")

    async def program(ctx: Context) -> None:
        setup = ctx.child()
        with setup.phase("setup"):
            await setup_input_seeds(setup, MODEL_OWNER)
            fx = fixed_point(setup)
            tensors = weight_tensors(weights)  # fused lazily: in a worker thread, below
            for _, shape in weight_plan(weights.config):
                tensor = await in_thread(next, tensors)
                await send_rows(setup, MODEL_OWNER, shape, settings.input_block_bytes,
                                lambda rows, tensor=tensor: fx.encode(tensor[rows]),
                                threaded=True)

    return program


def client_program(
    settings: SessionSettings,
    prompts: Sequence[Sequence[int]],
    options: GenerationOptions,
    progress: ProgressFn | None = None,
) -> Program:
    """The client: shares its tokens, receives the logits, decodes; returns a
    :data:`ClientResult`. Raises ContextLengthError / ValueError for a bad prompt at once."""
    config, all_positions = settings.config, settings.reveal_logits == "all"
    checked = check_prompts(config, settings.positions, settings.max_new_tokens, prompts)
    report = progress or _no_progress

    async def program(ctx: Context) -> ClientResult:
        started = time.perf_counter()
        setup = ctx.child()
        with setup.phase("setup"):
            await setup_input_seeds(setup, CLIENT)
        online = ctx.child()
        state = SessionState(settings.positions, settings.max_new_tokens,
                             settings.max_pass_positions)
        for party in PARTIES:  # the set-up ends when every party has stored its weights
            await online.recv_message(party, Ready)
        state.handle(Ready())
        setup_seconds = time.perf_counter() - started
        report(Progress("setup", setup_seconds))
        head_bits = head_format(online).frac_bits  # the head's product at 2f
        fx = fixed_point(online)  # the logits as opened: at f (io.reveal_product_to)
        rng = np.random.default_rng(options.seed)

        async def run_pass(command: Run | Prefill, tokens: list[int]) -> np.ndarray | None:
            """One pass over ``tokens``: the command, their one-hot rows, then the logits
            the parties reveal (of its last position, of every one where the session
            reveals all; none for a Prefill that reveals nothing)."""
            await _tell_parties(online, state, command)
            await send_rows(online, CLIENT, (len(tokens), config.vocab),
                            settings.input_block_bytes,
                            lambda rows: one_hot(tokens[rows], config.vocab))
            opened = None
            if all_positions or isinstance(command, Run):
                rows = len(tokens) if all_positions else 1
                opened = await reveal_rows(online, None, CLIENT, (rows, config.vocab),
                                           head_bits, settings.input_block_bytes)
                assert opened is not None
            state.handle(PassDone())
            return None if opened is None else fx.decode(opened)

        results = []
        for p, ids in enumerate(checked):
            if p:
                await _tell_parties(online, state, NextPrompt())
            records: list[TokenRecord] = []
            t0, ended, seen, start = time.perf_counter(), False, [], 0
            *first, _ = prompt_passes(len(ids), settings.max_pass_positions)
            for size in first:  # a long prompt's first positions
                chunk_t0, chunk = time.perf_counter(), ids[start : start + size]
                revealed = await run_pass(Prefill(size), chunk)
                seen += [] if revealed is None else [revealed]
                report(Progress("prefill", time.perf_counter() - chunk_t0, p, start,
                                positions=size))
                start += size
            pending = ids[start:]
            while True:
                logits = await run_pass(Run(len(pending)), pending)
                assert logits is not None
                token = pick_token(logits[-1], options.temperature, rng)
                records.append(TokenRecord(token, time.perf_counter() - t0, logits[-1], ended,
                                           np.concatenate([*seen, logits])
                                           if all_positions else None))
                report(Progress("token", records[-1].seconds, p, len(records) - 1, token, ended))
                ended, seen = ended or token == options.eos_id, []
                if len(records) == settings.max_new_tokens or (ended and options.stop_at_eos):
                    break
                pending, t0 = [token], time.perf_counter()
            results.append(PromptResult(tuple(ids), tuple(records)))
        await _tell_parties(online, state, End())
        return tuple(results), setup_seconds

    return program


__all__ = [
    "ClientResult", "client_program", "owner_program", "party_program",
    "receive_rows", "reveal_rows", "send_rows",
]
