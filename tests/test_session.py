"""The session layer: state machine, control messages, factory, frame limit, model resolver."""

from __future__ import annotations

import dataclasses
import gc
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from puma_async import codec, context, pieces
from puma_async.codec import decode_message, encode_message, packb
from puma_async.errors import (
    DecodeError,
    ModelFileError,
    ProtocolError,
    RunFailedError,
    SettingsError,
)
from puma_async.model import (
    LlamaConfig,
    TinyTokenizer,
    Tokenizer,
    default_model_path,
    random_weights,
    tiny_config,
)
from puma_async.model.gguf_loader import open_gguf, read_config
from puma_async.protocols.arith import stack_right
from puma_async.protocols.llama import LayerPlan, SecureWeight, layer_plan, stored_form
from puma_async.protocols.randomness import setup_input_seeds
from puma_async.roles import CLIENT, MODEL_OWNER, PARTIES
from puma_async.runner import run_local
from puma_async.session import GenerationOptions, SessionSettings, in_process_settings, run_session
from puma_async.session.factory import build_program
from puma_async.session.frames import ELEMENT_BYTES, FRAME_SLACK, row_blocks
from puma_async.session.messages import End, NextPrompt, Prefill, Ready, Run
from puma_async.session.models import (
    SMOLLM2,
    SMOLLM2_ARCHITECTURE,
    ModelSource,
    client_tokenizer,
    owner_model,
)
from puma_async.session.programs import (
    PASS_GC_THRESHOLDS,
    _frozen_heap,
    receive_rows,
    send_rows,
)
from puma_async.session.settings import DEFAULT_PASS_POSITIONS
from puma_async.session.state import (
    PassDone,
    Phase,
    SessionState,
    SessionStateError,
    fits_one_pass,
    prompt_passes,
)
from puma_async.transports.base import Transport

# ----------------------------------------------------------------------------- state


def run_prompt(state: SessionState, positions: int, passes: int) -> None:
    state.handle(Run(positions))
    state.handle(PassDone())
    for _ in range(passes - 1):
        state.handle(Run(1))
        state.handle(PassDone())


def test_a_whole_conversation() -> None:
    state = SessionState(context=10, max_new_tokens=3)
    state.handle(Ready())
    run_prompt(state, 8, 3)
    assert (state.prompt, state.passes, state.positions) == (0, 3, 10)
    state.handle(NextPrompt())
    assert (state.prompt, state.passes, state.positions) == (1, 0, 0)
    run_prompt(state, 1, 2)
    state.handle(End())
    assert state.phase is Phase.END


def test_a_long_prompt_in_prefill_passes() -> None:
    """Prefill passes of a prompt's first positions, then its Run: the passes count Runs
    only, the positions all of them; a new prompt may start with Prefill again."""
    state = SessionState(context=20, max_new_tokens=3, max_pass_positions=4)
    state.handle(Ready())
    for positions in (4, 2):  # 4 x 4 and 2 x 6 query-key pairs
        state.handle(Prefill(positions))
        state.handle(PassDone())
    run_prompt(state, 1, 3)
    assert (state.prompt, state.passes, state.positions) == (0, 3, 9)
    state.handle(NextPrompt())
    state.handle(Prefill(1))
    state.handle(PassDone())
    assert (state.prompt, state.passes, state.positions) == (1, 0, 1)


@pytest.mark.parametrize(("before", "event", "message"), [
    ([], Run(1), "Run is not allowed in phase setup"),
    ([Ready(), Run(1)], Run(1), "Run is not allowed in phase run"),
    ([Ready(), Run(1), PassDone()], Ready(), "Ready is not allowed in phase idle"),
    ([Ready()], NextPrompt(), "before the prompt's first pass"),
    ([Ready()], End(), "before the prompt's first pass"),
    ([Ready()], Run(11), "0 + 11 positions exceed the session's context of 10"),
    ([Ready(), Run(9), PassDone()], Run(2), "has 1 position, not 2"),
    ([Ready(), Run(10), PassDone()], Run(1), "10 + 1 positions exceed"),
    ([Ready(), Run(1), PassDone(), Run(1), PassDone(), Run(1), PassDone()], Run(1),
     "pass 4 of a prompt exceeds max_new_tokens 3"),
    ([Ready(), Run(1), PassDone(), End()], Run(1), "Run is not allowed in phase end"),
    ([Ready(), Prefill(4)], Prefill(1), "Prefill is not allowed in phase run"),
    ([Ready(), Run(2), PassDone()], Prefill(1), "Prefill after the prompt's first pass"),
    ([Ready(), Prefill(4), PassDone(), Prefill(4), PassDone()], Run(3),
     "8 + 3 positions exceed the session's context of 10"),
    ([Ready(), Prefill(4), PassDone()], End(), "before the prompt's first pass"),
])
def test_refused_events_change_nothing(before: list, event: object, message: str) -> None:
    assert_refused(SessionState(context=10, max_new_tokens=3), before, event, message)


def assert_refused(state: SessionState, before: list, event: object, message: str) -> None:
    """After the ``before`` events, ``event`` raises ``message`` and changes nothing."""
    for e in before:
        state.handle(e)
    snapshot = dict(vars(state))
    with pytest.raises(SessionStateError, match=re.escape(message)):
        state.handle(event)  # type: ignore[arg-type]
    assert vars(state) == snapshot


@pytest.mark.parametrize(("before", "event", "message"), [
    ([], Run(5), "a pass of 5 positions after 0 exceeds"),
    ([], Prefill(5), "a pass of 5 positions after 0 exceeds"),
    ([Prefill(4), PassDone()], Prefill(3), "a pass of 3 positions after 4 exceeds"),
    ([Prefill(4), PassDone(), Prefill(2), PassDone(), Prefill(1), PassDone()], Run(2),
     "a pass of 2 positions after 7 exceeds the session's 4 positions or 16 query-key pairs"),
])
def test_no_pass_is_larger_than_the_sessions_bound(before: list, event: object,
                                                   message: str) -> None:
    """At most 4 positions and 16 query-key pairs per pass (a pass of one position always
    fits: a token's)."""
    state = SessionState(context=30, max_new_tokens=3, max_pass_positions=4)
    assert_refused(state, [Ready(), *before], event, message)
    for _ in range(30 - state.positions):  # one position at a time: always
        state.handle(Prefill(1))
        state.handle(PassDone())


@given(st.integers(1, 600), st.integers(1, 80))
@settings(max_examples=200, deadline=None)
def test_a_prompts_passes_each_take_the_most_that_fits(length: int, per_pass: int) -> None:
    sizes = prompt_passes(length, per_pass)
    assert sum(sizes) == length and min(sizes) >= 1
    start = 0
    for i, size in enumerate(sizes):
        assert fits_one_pass(start, size, per_pass)
        assert i == len(sizes) - 1 or not fits_one_pass(start, size + 1, per_pass)
        start += size


# ----------------------------------------------------------------------------- messages


@pytest.mark.parametrize("message", [Ready(), Run(5), Prefill(64), NextPrompt(), End()])
def test_messages_round_trip(message: object) -> None:
    assert decode_message(encode_message(message)) == message  # type: ignore[arg-type]


@given(st.one_of(st.integers(-(1 << 63), (1 << 64) - 1), st.text(max_size=3), st.booleans(),
                 st.none(), st.binary(max_size=3), st.floats(allow_nan=False)))
@settings(max_examples=60, deadline=None)
def test_passes_refuse_what_is_not_a_position_count(value: object) -> None:
    for kind in (Run, Prefill):
        data = packb([kind.TAG, value])
        if type(value) is int and 1 <= value <= 1 << 31:
            assert decode_message(data) == kind(value)
        else:
            with pytest.raises(DecodeError, match=f"{kind.__name__}: positions"):
                decode_message(data)


def test_fieldless_messages_refuse_fields() -> None:
    with pytest.raises(DecodeError):
        decode_message(packb([End.TAG, 1]))


# ----------------------------------------------------------------------------- factory


def test_each_role_gets_only_its_own() -> None:
    settings = SessionSettings("s")
    weights = random_weights(settings.config)
    with pytest.raises(ValueError, match="P0 must not get the weights"):
        build_program(settings, 0, weights=weights)
    with pytest.raises(ValueError, match="client must not get the weights"):
        build_program(settings, CLIENT, weights=weights, prompts=[[1]])
    with pytest.raises(ValueError, match="model-owner must not get the client's prompts"):
        build_program(settings, MODEL_OWNER, weights=weights, prompts=[[1]])
    with pytest.raises(ValueError, match="P2 must not get the client's prompts"):
        build_program(settings, 2, options=GenerationOptions())
    with pytest.raises(ValueError, match="needs the weights"):
        build_program(settings, MODEL_OWNER)
    other = random_weights(dataclasses.replace(settings.config, n_layers=3))
    with pytest.raises(SettingsError, match="not of the session's architecture"):
        build_program(settings, MODEL_OWNER, weights=other)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("seed", -5, "seed must be >= 0"), ("temperature", -1.0, "temperature"),
    ("temperature", float("inf"), "temperature"),
])
def test_bad_generation_options(field: str, value: object, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        GenerationOptions(**{field: value})  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- frames


def test_row_blocks_cover_the_rows_within_the_block_size() -> None:
    blocks = list(row_blocks((10, 4), 8 * 4 * 3))
    assert [(b.start, b.stop) for b in blocks] == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert [(b.start, b.stop) for b in row_blocks((2, 100), 8)] == [(0, 1), (1, 2)]
    assert [(b.start, b.stop) for b in row_blocks((5,), 1 << 20)] == [(0, 5)]


def frame_spy(sizes: list[int]) -> Callable[[Transport], Transport]:
    """A transport wrapper recording the size of every frame the role sends (all of its
    messages as frames: none handed over decoded)."""

    def wrap(transport: Transport) -> Transport:
        send = transport.send_immediately

        def spy(peer: int, frame: bytes) -> None:
            sizes.append(len(frame))
            send(peer, frame)

        transport.send_immediately = spy  # type: ignore[method-assign]
        transport.takes_decoded = lambda peer: False  # type: ignore[method-assign]
        return transport

    return wrap


def test_a_session_handing_over_decoded_equals_one_sending_frames() -> None:
    """The same session (same keys) with its array messages handed over decoded between the
    roles of one loop (the default) and with every message a frame (:func:`frame_spy`):
    the same logits, bit for bit, and every role the same traffic, rounds, wire bytes and
    frames."""
    config = dataclasses.replace(tiny_config(), n_layers=1)
    weights, entropy = random_weights(config, seed=4), {r: bytes([r]) * 32 for r in range(5)}
    settings = in_process_settings(config, 3)
    with mock.patch.object(codec, "detached", wraps=codec.detached) as detached:
        direct = run_session(weights, [[3, 1, 4, 1]], settings=settings, entropy=entropy)
    sizes: list[int] = []
    framed = run_session(weights, [[3, 1, 4, 1]], settings=settings, entropy=entropy,
                         wrap_transport=frame_spy(sizes))
    frames = sum(n for s in framed.stats.values() for _, n in s.frames_sent)
    assert len(sizes) == frames and detached.call_count > frames / 2
    for a, b in zip(direct.prompts[0].records, framed.prompts[0].records, strict=True):
        assert a.token == b.token and np.array_equal(a.logits, b.logits)
    for role, stats in direct.stats.items():
        other = framed.stats[role]
        assert (stats.traffic, stats.max_round, stats.wire_bytes_sent, stats.frames_sent) == (
            other.traffic, other.max_round, other.wire_bytes_sent, other.frames_sent)


@pytest.mark.parametrize(("config", "prompt", "new", "blocks"), [
    (tiny_config(), 24, 3, 4096),
    (dataclasses.replace(tiny_config(), n_layers=1, ffn=512, vocab=200, context_length=40),
     30, 2, 1 << 20),
    (dataclasses.replace(tiny_config(), n_layers=1, n_heads=8, n_kv_heads=2, head_dim=4,
                         context_length=48), 40, 4, 2048),
])
def test_frames_stay_within_the_sessions_limit(config: LlamaConfig, prompt: int, new: int,
                                               blocks: int) -> None:
    """Whole sessions at the context's edge (inputs in several blocks), with the piece size
    lowered to 96 KiB (above the 64 KiB of merged frames) so that their large messages are
    split: no frame above :func:`max_frame_bytes`, nor above the piece size plus one
    envelope's head and segment headers (the bound is tight but for the slack)."""
    piece = 96 << 10
    with mock.patch.object(pieces, "PIECE_BYTES", piece), \
            mock.patch.object(context, "split_pieces", wraps=pieces.split_pieces) as split:
        settings = in_process_settings(config, new, context=prompt + new - 1,
                                       input_block_bytes=blocks)
        assert settings.max_frame_bytes == piece + FRAME_SLACK
        sizes: list[int] = []
        result = run_session(random_weights(config, seed=2), [list(range(prompt))],
                             settings=settings, wrap_transport=frame_spy(sizes))
    assert len(result.prompts[0].records) == new
    assert split.called  # some messages were above the piece size
    assert max(sizes) <= min(settings.max_frame_bytes, piece + 4096)


def test_a_long_prompts_message_over_the_old_limit_travels_in_pieces() -> None:
    """A prompt of 62 tokens at context 64 on a model of 16 heads: negExp's offline random
    bits (16 heads x 62 x 62 scores x 9 thresholds, 8 bytes each: 4.4 MB) in one message
    outgrew this session's old limit (4 x 8 x context x 16 heads x context bytes plus 1 MiB,
    3 MiB; inputs in blocks of 64 KiB), as a ~400-token SmolLM2 prompt's 104 MB message did
    its 77 MB at context 512; now it travels in pieces of 4 MiB, within the limit, and the
    session generates."""
    config = dataclasses.replace(tiny_config(), n_layers=1, n_heads=16, n_kv_heads=2,
                                 head_dim=2, context_length=64)
    settings = in_process_settings(config, 2, context=64, input_block_bytes=1 << 16)
    old_limit = 4 * ELEMENT_BYTES * 64 * max(2 * config.ffn, config.q_dim + 2 * config.kv_dim,
                                             config.hidden, config.n_heads * 64, 512) + (1 << 20)
    split_sizes: list[int] = []

    def spy(arrays: tuple[np.ndarray, ...], plan: pieces.Plan) -> list[tuple[np.ndarray, ...]]:
        split_sizes.append(sum(a.nbytes for a in arrays))
        return pieces.split_pieces(arrays, plan)

    sizes: list[int] = []
    with mock.patch.object(context, "split_pieces", spy):
        result = run_session(random_weights(config, seed=3), [list(range(62))],
                             settings=settings, wrap_transport=frame_spy(sizes))
    assert len(result.prompts[0].records) == 2
    assert max(split_sizes) > old_limit == 3 << 20
    assert max(sizes) <= settings.max_frame_bytes == pieces.PIECE_BYTES + FRAME_SLACK


def test_all_positions_logits_stay_within_the_frame_limit() -> None:
    """A prompt pass revealing every position's logits, with a vocabulary far wider than the
    other per-position tensors: the head's product is local, each party sends the client its
    shares of the logits in row blocks (of at least one row), and no frame exceeds the limit
    (with the piece size lowered to 64 KiB, every block above it in pieces), which "all"
    leaves unchanged."""
    config = dataclasses.replace(tiny_config(), n_layers=1, vocab=4000, context_length=32)
    with mock.patch.object(pieces, "PIECE_BYTES", 64 << 10):
        settings = in_process_settings(config, 2, context=24, input_block_bytes=1 << 18,
                                       reveal_logits="all")
        assert settings.max_frame_bytes == dataclasses.replace(
            settings, reveal_logits="last").max_frame_bytes
        sizes: list[int] = []
        result = run_session(random_weights(config, seed=5), [list(range(23))],
                             settings=settings, wrap_transport=frame_spy(sizes))
    assert result.prompts[0].records[0].all_logits.shape == (23, config.vocab)
    assert max(sizes) <= (64 << 10) + 4096


def test_max_pass_positions_setting() -> None:
    """The positions one pass covers at most: 64 by default, agreed by every role (in the
    configuration digest and the cluster file), at least 1."""
    settings = SessionSettings("s")
    assert settings.max_pass_positions == DEFAULT_PASS_POSITIONS == 64
    assert SessionSettings.from_dict(SessionSettings("s", max_pass_positions=8).to_dict()
                                     ).max_pass_positions == 8
    assert settings.config_digest("c", (0,)) != dataclasses.replace(
        settings, max_pass_positions=8).config_digest("c", (0,))
    with pytest.raises(SettingsError, match="max_pass_positions must be >= 1, got 0"):
        SessionSettings("s", max_pass_positions=0)


def test_parties_refuse_a_pass_above_the_sessions_positions_per_pass() -> None:
    """A client that sends a prompt of 6 positions in one pass to parties that take at most
    4 (its settings say 8): every party refuses the Run before receiving a row, naming the
    client, and the session fails instead of running a pass larger than agreed."""
    config = tiny_config()
    agreed = in_process_settings(config, 2, max_pass_positions=4)
    programs = {role: build_program(agreed, role) for role in PARTIES}
    programs[MODEL_OWNER] = build_program(agreed, MODEL_OWNER, weights=random_weights(config))
    programs[CLIENT] = build_program(dataclasses.replace(agreed, max_pass_positions=8),
                                     CLIENT, prompts=[[1, 2, 3, 4, 5, 6]])
    with pytest.raises(RunFailedError) as failed:
        run_local(programs, session=agreed.session, liveness=agreed.liveness)
    for party in PARTIES:
        error = failed.value.errors[party]
        assert isinstance(error, ProtocolError) and error.peer == CLIENT
        assert "bad command from the client: a pass of 6 positions after 0 exceeds the " \
               "session's 4 positions" in str(error)


def test_reveal_logits_setting() -> None:
    assert SessionSettings("s").reveal_logits == "last"
    assert SessionSettings.from_dict(SessionSettings("s", reveal_logits="all").to_dict()
                                     ).reveal_logits == "all"
    with pytest.raises(SettingsError, match="reveal_logits must be one of last, all"):
        SessionSettings("s", reveal_logits="some")


def test_tradeoff_setting() -> None:
    """The tradeoff names the layers' plan: balanced by default (the attention norm before
    the QKV product for multi-head attention only; in passes over more than one row SiLU
    by Horner's split and the candidates without TP1 tuples), fewer-rounds (neither norm
    before its product), fewer-bytes (everywhere, and SiLU by Horner's split); anything
    else is refused."""
    multi_head = dataclasses.replace(tiny_config(), n_kv_heads=4)
    assert SessionSettings("s").tradeoff == "balanced"
    balanced = SessionSettings("s").plan
    assert balanced.for_rows(1) == dataclasses.replace(balanced, prompt=None) == LayerPlan(False)
    assert balanced.for_rows(2) == balanced.for_rows(5) == LayerPlan(
        False, silu_horner=True, candidate_tuples=False)
    assert SessionSettings("s", architecture=multi_head, model="mh").plan.for_rows(1
                                                                              ) == LayerPlan(True)
    assert SessionSettings("s", architecture=multi_head, model="mh",
                           tradeoff="fewer-rounds").plan == LayerPlan(
        False, normalise_mlp_input=False)
    fewer_bytes = SessionSettings("s", tradeoff="fewer-bytes").plan
    assert fewer_bytes == fewer_bytes.for_rows(5) == LayerPlan(
        True, silu_horner=True, candidate_tuples=False)
    assert SessionSettings.from_dict(SessionSettings("s", tradeoff="fewer-rounds").to_dict()
                                     ).tradeoff == "fewer-rounds"
    with pytest.raises(SettingsError, match="tradeoff must be one of balanced, fewer-rounds, "
                                            "fewer-bytes, got 'fast'"):
        SessionSettings("s", tradeoff="fast")
    with pytest.raises(ValueError, match="tradeoff must be one of"):
        layer_plan(tiny_config(), "fast")


def test_blocked_inputs_give_the_same_session() -> None:
    """Inputs shared in blocks of 512 bytes give the session of one block per input (other
    shares, hence other truncation rounding: logits within the secure model's error, as in
    test_secure_llama)."""
    config = tiny_config()
    weights = random_weights(config, seed=4)
    entropy = {r: bytes([r]) * 32 for r in range(5)}
    runs = [run_session(weights, [[3, 1, 4, 1, 5]], entropy=entropy,
                        settings=in_process_settings(config, 2, input_block_bytes=size))
            for size in (512, 1 << 24)]
    assert runs[0].prompts[0].tokens == runs[1].prompts[0].tokens
    for blocked, whole in zip(runs[0].prompts[0].records, runs[1].prompts[0].records,
                              strict=True):
        assert np.abs(blocked.logits - whole.logits).max() < 0.15


# ----------------------------------------------------------------------------- models


def test_settings_resolve_presets_and_context() -> None:
    tiny = SessionSettings("s")
    assert tiny.config == tiny_config() and tiny.positions == tiny_config().context_length
    smol = SessionSettings("s", model=SMOLLM2)
    assert smol.config == SMOLLM2_ARCHITECTURE and smol.positions == 512
    assert smol.max_frame_bytes == tiny.max_frame_bytes == (4 << 20) + FRAME_SLACK  # pieces
    with pytest.raises(SettingsError, match="is a preset"):
        SessionSettings("s", model="tiny", architecture=SMOLLM2_ARCHITECTURE)
    with pytest.raises(SettingsError, match="not a preset"):
        SessionSettings("s", model="mine")
    assert SessionSettings.from_dict(smol.to_dict()) == smol


@pytest.mark.slow
def test_smollm2_preset_is_the_wheels_file() -> None:
    try:
        path = default_model_path()
    except ModelFileError as exc:
        pytest.skip(f"real model not installed: {exc}")
    # the metadata has no gate bounds: the preset's are the weights' (test_real_model_loads)
    found = read_config(open_gguf(path))
    assert dataclasses.replace(found, gate_bounds=SMOLLM2_ARCHITECTURE.gate_bounds) == (
        SMOLLM2_ARCHITECTURE)


def test_owner_and_client_sources() -> None:
    tiny = SessionSettings("s", model_seed=9)
    source = owner_model(tiny, None)
    assert source.file is None and source.seed == 9
    assert np.array_equal(source.load_weights().embed,
                          random_weights(tiny.config, seed=9).embed)
    assert isinstance(client_tokenizer(tiny, None), TinyTokenizer)
    with pytest.raises(SettingsError, match="needs --model-file"):
        owner_model(SessionSettings("s", model="mine", architecture=tiny.config), None)
    with pytest.raises(ModelFileError, match="has no model file"):
        ModelSource("x", tiny.config).open()


def test_tiny_tokenizer() -> None:
    tokenizer = TinyTokenizer()
    ids = tokenizer.encode("The capital. 42")
    assert len(ids) == 15 and max(ids) < tiny_config().vocab
    assert tokenizer.decode(ids) == "The capital. 42"
    assert tokenizer.eos_id is None and tokenizer.apply_chat_template("hi") == "hi"
    with pytest.raises(ValueError, match="not '!'"):
        tokenizer.encode("hi!")


@pytest.mark.slow
def test_exported_tokenizer_round_trip(tmp_path: Path) -> None:
    try:
        original = Tokenizer.from_gguf()
    except ModelFileError as exc:
        pytest.skip(f"real model not installed: {exc}")
    original.save(tmp_path)
    loaded = Tokenizer.from_dir(tmp_path)
    text = original.apply_chat_template("What is 2+2? Ünïcode ✓")
    assert loaded.encode(text) == original.encode(text)
    assert (loaded.bos_id, loaded.eos_id, loaded.add_bos) == (1, 2, False)
    assert loaded.apply_chat_template("hi") == original.apply_chat_template("hi")
    with pytest.raises(FileExistsError, match="--force"):
        original.save(tmp_path)
    settings = SessionSettings("s", model=SMOLLM2)
    assert client_tokenizer(settings, tmp_path).vocab_size <= SMOLLM2_ARCHITECTURE.vocab
    with pytest.raises(SettingsError, match="49152 tokens, the model's vocabulary 64"):
        client_tokenizer(SessionSettings("s"), tmp_path)


@pytest.mark.parametrize("name, shape", [("embed", (37, 6)), ("layer0.wo", (37, 6)),
                                         ("final_norm", (6,))])
@pytest.mark.parametrize("block_bytes", [256, 1 << 20])
def test_weights_are_received_into_their_stored_form(
        spmd: Callable[..., Any], name: str, shape: tuple[int, ...], block_bytes: int) -> None:
    """A weight shared in row blocks (several, or one) lands in its stored form, the embedding
    side by side and a projection stacked, with no copy after set-up: the stored array's halves
    are the received share (the three parties' halves add up to the value)."""
    value = np.random.default_rng(7).integers(0, 2**63, size=shape, dtype=np.uint64)

    async def program(ctx: context.Context) -> Any:
        await setup_input_seeds(ctx, MODEL_OWNER)
        if ctx.role == MODEL_OWNER:
            await send_rows(ctx, MODEL_OWNER, shape, block_bytes, lambda rows: value[rows])
            return None
        form = stored_form(name, shape)
        if form is None:
            return None, await receive_rows(ctx, MODEL_OWNER, shape, block_bytes)
        stored, halves = form
        assert await receive_rows(ctx, MODEL_OWNER, shape, block_bytes, into=halves) is halves
        return stored, halves

    results = spmd(program, roles=(*PARTIES, MODEL_OWNER)).results
    firsts = [results[p][1].first for p in PARTIES]
    assert np.array_equal(firsts[0] + firsts[1] + firsts[2], value)
    for p in PARTIES:
        stored, share = results[p]
        if name == "embed":
            assert np.array_equal(stored, np.concatenate([share.first, share.second], axis=1))
        elif stored is not None:
            assert isinstance(stored, SecureWeight)
            assert np.array_equal(stored.stacked, stack_right(share))
            assert stored.stacked.flags.c_contiguous


def test_the_heap_stays_frozen_until_the_last_party_in_the_process_is_done() -> None:
    """``gc.freeze`` and the collector's thresholds are the process's: with three parties in
    one process, the first to end its passes must not unfreeze the heap or restore the
    thresholds the others' passes rely on; the last restores the caller's own."""
    assert gc.get_freeze_count() == 0
    outer = gc.get_threshold()
    gc.set_threshold(900, 9, 8)  # whatever the embedding program chose
    try:
        first, second = _frozen_heap(), _frozen_heap()
        first.__enter__()
        second.__enter__()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == PASS_GC_THRESHOLDS
        first.__exit__(None, None, None)
        assert gc.get_freeze_count() > 0  # the other party's passes still run
        assert gc.get_threshold() == PASS_GC_THRESHOLDS
        second.__exit__(None, None, None)
        assert gc.get_freeze_count() == 0
        assert gc.get_threshold() == (900, 9, 8)
    finally:
        gc.set_threshold(*outer)
