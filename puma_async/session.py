"""A secure generation session: the programs of the model owner, the client and the parties.

One session = one set of weight shares and any number of prompts:

1. Set-up (phase ``setup``, step child 0 of the root): the parties agree their keys; the
   model owner and the client give the parties their input seeds; the model owner shares
   every weight tensor once (:func:`.protocols.llama.weight_plan` order: it derives x_0 and
   x_1 from the seeds and sends only x_2 to P_1 and P_2). Each party then tells the client
   it is ready (its shares stored), so the client's timings of the online steps do not
   include any party's set-up.
2. Online (step child 1): per prompt and per generated token, the client tells the parties
   how many new positions follow (public), secret-shares their one-hot rows, and alone
   receives the logits of the last position; it picks the next token itself (greedy, or
   sampled with a temperature from its own seeded generator: client-side randomness, not a
   protocol secret). The parties keep a secret-shared KV cache, so each new token costs one
   position. A prompt ends at EOS or after ``max_new_tokens``; then the cache is dropped.

The parties see shapes, positions and the number of tokens (public by the threat model),
never a weight, token, activation or logit. Traffic of prompt p's step t (t = 0: the prompt
pass, t >= 1: each new token) is in scope ``p{p}.t{t}`` of phase ``online``, with sub-scopes
``io``, ``embed``, ``layer{i}.attn``, ``layer{i}.mlp`` and ``head``.

Validation happens before any secret moves: :func:`check_prompts` raises
ContextLengthError (prompt + new tokens beyond the context) or ValueError (bad token ids).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import trio

from puma_async.codec import Value
from puma_async.errors import ContextLengthError, ProtocolError
from puma_async.model.config import LlamaConfig
from puma_async.model.weights import LlamaWeights
from puma_async.protocols.arith import fixed_point
from puma_async.protocols.io import reveal_to, share_input
from puma_async.protocols.llama import (
    PROBE_KEY,
    Probe,
    SecureKVCache,
    Stored,
    assemble_model,
    forward,
    store_share,
    weight_plan,
    weight_tensors,
)
from puma_async.protocols.randomness import setup_input_seeds, setup_keys
from puma_async.protocols.shares import AShare
from puma_async.roles import CLIENT, MODEL_OWNER, PARTIES
from puma_async.runner import Program, run_local
from puma_async.runtime import Context
from puma_async.stats import PartyStats, Totals

DEFAULT_TIMEOUT = 900.0
"""Receive timeout of a session (s): a party may wait for a whole forward pass."""


@dataclasses.dataclass(frozen=True)
class GenerationOptions:
    """Decoding options (the client's): greedy when ``temperature`` is 0."""

    max_new_tokens: int = 4
    temperature: float = 0.0
    seed: int | None = None
    eos_id: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")


@dataclasses.dataclass(frozen=True)
class Progress:
    """A client-side progress event: ``kind`` is 'setup' (done) or 'token' (one generated)."""

    kind: str
    seconds: float
    prompt: int = -1
    step: int = -1
    token: int = -1


ProgressFn = Callable[[Progress], None]


@dataclasses.dataclass(frozen=True)
class TokenRecord:
    """One generated token as the client saw it: its logits and the step's wall time."""

    token: int
    seconds: float
    logits: npt.NDArray[np.float64]


@dataclasses.dataclass(frozen=True)
class PromptResult:
    """A prompt's token ids and its generated tokens (record 0 follows the prompt pass)."""

    prompt_ids: tuple[int, ...]
    records: tuple[TokenRecord, ...]

    @property
    def tokens(self) -> list[int]:
        return [r.token for r in self.records]


@dataclasses.dataclass(frozen=True)
class SessionResult:
    """The client's results and every role's statistics."""

    prompts: tuple[PromptResult, ...]
    stats: Mapping[int, PartyStats]
    setup_seconds: float
    seconds: float

    def step_cost(self, prompt: int, step: int, party: int) -> Totals:
        """Bytes, messages and rounds of one step (0 = prompt pass) at one party."""
        return self.stats[party].totals(phase="online", scope=f"p{prompt}.t{step}")

    def setup_cost(self, party: int) -> Totals:
        """Bytes, messages and rounds of the set-up at one party (weights included)."""
        return self.stats[party].totals(phase="setup")

    def owner_setup_bytes(self) -> int:
        """Bytes the model owner sent (the x_2 halves of the weights, and seeds)."""
        return self.stats[MODEL_OWNER].totals(phase="setup").bytes_sent


def check_prompts(
    config: LlamaConfig, prompts: Sequence[Sequence[int]], options: GenerationOptions
) -> list[list[int]]:
    """The prompts as lists of ints, or ContextLengthError / ValueError (nothing is sent)."""
    if not prompts:
        raise ValueError("no prompt given")
    checked = []
    for i, prompt in enumerate(prompts):
        ids = [int(t) for t in prompt]
        if not ids:
            raise ValueError(f"prompt {i} is empty")
        bad = [t for t in ids if not 0 <= t < config.vocab]
        if bad:
            raise ValueError(f"prompt {i}: token ids {bad} are not in [0, {config.vocab})")
        if len(ids) + options.max_new_tokens > config.context_length:
            raise ContextLengthError(
                f"prompt {i}: {len(ids)} tokens + {options.max_new_tokens} new tokens exceed "
                f"the context length {config.context_length}"
            )
        checked.append(ids)
    return checked


def one_hot(ids: Sequence[int], vocab: int) -> npt.NDArray[np.uint64]:
    """Rows e_{id} (n, vocab) as ring integers (scale 1: the embedding needs no truncation)."""
    rows = np.zeros((len(ids), vocab), np.uint64)
    rows[np.arange(len(ids)), ids] = 1
    return rows


def pick_token(
    logits: npt.NDArray[np.float64], temperature: float, rng: np.random.Generator
) -> int:
    """Argmax (first on ties) when temperature is 0, else a sample of softmax(logits / T)."""
    if temperature == 0:
        return int(np.argmax(logits))
    z = (logits - logits.max()) / temperature
    p = np.exp(z)
    return int(rng.choice(len(p), p=p / p.sum()))


async def _command(ctx: Context) -> list[Any]:
    msg = await ctx.recv(CLIENT)
    if not (isinstance(msg, Value) and isinstance(msg.value, list) and msg.value):
        raise ProtocolError("expected a command from the client", peer=CLIENT,
                            step=ctx.step_name)
    return msg.value


async def _tell_parties(ctx: Context, *command: Any) -> None:
    for party in PARTIES:
        await ctx.send(party, Value(list(command)))


# ----------------------------------------------------------------------------- programs


def party_program(config: LlamaConfig, probe: Probe | None = None) -> Program:
    """A computing party: set-up, then forward passes as the client asks; returns None.

    ``probe`` (in-process accuracy measurements only: ``puma_async.accuracy``) is installed
    as the party's ``protocols.llama`` probe.
    """

    async def program(ctx: Context) -> None:
        if probe is not None:
            ctx.shared[PROBE_KEY] = probe
        setup = ctx.child()
        with setup.phase("setup"):
            await setup_keys(setup)
            await setup_input_seeds(setup, MODEL_OWNER)
            await setup_input_seeds(setup, CLIENT)
            stored: dict[str, Stored] = {}
            for name, shape in weight_plan(config):
                share = await share_input(setup, MODEL_OWNER, shape)
                assert isinstance(share, AShare)
                stored[name] = store_share(name, share)
                del share
            model = assemble_model(config, stored)
            del stored
        ctx.join([setup])
        online = ctx.child()
        await online.send(CLIENT, Value(["ready"]))  # every party: its weights are stored
        cache, prompt, step = SecureKVCache.empty(config), 0, 0
        while True:
            command = await _command(online)
            if command[0] == "end":
                return
            if command[0] == "next-prompt":
                cache, prompt, step = SecureKVCache.empty(config), prompt + 1, 0
                continue
            if command[0] != "run" or len(command) != 2 or not isinstance(command[1], int) \
                    or command[1] < 1:
                raise ProtocolError(f"bad client command {command!r}", peer=CLIENT,
                                    step=online.step_name)
            with online.scope(f"p{prompt}.t{step}"):
                with online.scope("io"):
                    tokens = await share_input(online, CLIENT, (command[1], config.vocab))
                assert isinstance(tokens, AShare)
                inner = online.child()
                logits = await forward(inner, model, tokens, cache)
                online.join([inner])
                with online.scope("io"):
                    await reveal_to(online, logits, CLIENT, logits.shape)
            step += 1

    return program


def owner_program(weights: LlamaWeights) -> Program:
    """The model owner: shares every tensor once (fixed point), one tensor at a time."""

    async def program(ctx: Context) -> None:
        setup = ctx.child()
        with setup.phase("setup"):
            await setup_input_seeds(setup, MODEL_OWNER)
            fx = fixed_point(setup)
            plan = weight_plan(weights.config)
            for (_, shape), tensor in zip(plan, weight_tensors(weights), strict=True):
                encoded = await trio.to_thread.run_sync(fx.encode, tensor)
                await share_input(setup, MODEL_OWNER, shape, encoded)
                del encoded
                await trio.sleep(0)  # let the writers send it: one tensor per frame

    return program


def client_program(
    config: LlamaConfig,
    prompts: Sequence[Sequence[int]],
    options: GenerationOptions,
    progress: ProgressFn | None = None,
) -> Program:
    """The client: shares its tokens, receives the logits, decodes; returns its results.

    Returns (tuple of :class:`PromptResult`, set-up seconds as seen by the client).
    """
    checked = check_prompts(config, prompts, options)
    report = progress or (lambda event: None)

    async def program(ctx: Context) -> tuple[tuple[PromptResult, ...], float]:
        started = time.perf_counter()
        setup = ctx.child()
        with setup.phase("setup"):
            await setup_input_seeds(setup, CLIENT)
        online = ctx.child()
        for party in PARTIES:  # the set-up ends when every party has stored its weights
            ready = await online.recv(party)
            if not (isinstance(ready, Value) and ready.value == ["ready"]):
                raise ProtocolError("expected the party's ready signal", peer=party,
                                    step=online.step_name)
        setup_seconds = time.perf_counter() - started
        report(Progress("setup", setup_seconds))
        fx = fixed_point(online)
        rng = np.random.default_rng(options.seed)
        results = []
        for p, ids in enumerate(checked):
            if p:
                await _tell_parties(online, "next-prompt")
            records: list[TokenRecord] = []
            pending = ids
            while True:
                t0 = time.perf_counter()
                await _tell_parties(online, "run", len(pending))
                await share_input(online, CLIENT, (len(pending), config.vocab),
                                  one_hot(pending, config.vocab))
                opened = await reveal_to(online, None, CLIENT, (1, config.vocab))
                assert opened is not None
                logits = fx.decode(opened)[0]
                token = pick_token(logits, options.temperature, rng)
                records.append(TokenRecord(token, time.perf_counter() - t0, logits))
                report(Progress("token", records[-1].seconds, p, len(records) - 1, token))
                if token == options.eos_id or len(records) == options.max_new_tokens:
                    break
                pending = [token]
            results.append(PromptResult(tuple(ids), tuple(records)))
        await _tell_parties(online, "end")
        return tuple(results), setup_seconds

    return program


def run_session(
    weights: LlamaWeights,
    prompts: Sequence[Sequence[int]],
    options: GenerationOptions | None = None,
    *,
    progress: ProgressFn | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    probe: Probe | None = None,
    **run_options: Any,
) -> SessionResult:
    """Generate for every prompt with all five roles in this process (one weight sharing).

    ``probe`` is installed in every computing party (see :func:`party_program`).
    ``run_options`` go to :func:`~puma_async.runner.run_local` (latency, bandwidth, ...).
    Raises ContextLengthError / ValueError before anything runs, RunFailedError if a role
    fails.
    """
    options = options or GenerationOptions()
    config = weights.config
    programs: dict[int, Program] = {p: party_program(config, probe) for p in PARTIES}
    programs[MODEL_OWNER] = owner_program(weights)
    programs[CLIENT] = client_program(config, prompts, options, progress)
    run = run_local(programs, timeout=timeout, **run_options)
    results, setup_seconds = run.results[CLIENT]
    return SessionResult(results, dict(run.stats), setup_seconds, run.seconds)


__all__ = [
    "DEFAULT_TIMEOUT", "GenerationOptions", "Progress", "ProgressFn", "PromptResult",
    "SessionResult", "TokenRecord", "check_prompts", "client_program", "one_hot",
    "owner_program", "party_program", "pick_token", "run_session",
]
