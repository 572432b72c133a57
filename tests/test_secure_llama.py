"""Secure LLaMA generation on a tiny random-weight model: the real model's code path, fast.

Bounds: the tiny model's tied head gives logits of standard deviation ~6 (sqrt(hidden));
the secure ones differ from float64 by SiLU's approximation (max 1.8e-4 per element),
softmax's (3.4e-5 per probability) and fixed-point rounding, measured at most 4.8e-4 here;
asserted < 0.002.
"""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from puma_async.errors import ContextLengthError, ModelFileError
from puma_async.local import main
from puma_async.model import (
    KVCache,
    LlamaConfig,
    LlamaWeights,
    apply_rope,
    forward,
    greedy_generate,
    random_weights,
    rope_tables,
    tiny_config,
)
from puma_async.model.bounds import certify_gate_bounds
from puma_async.model.gguf_loader import load_gguf
from puma_async.protocols import llama
from puma_async.protocols.arith import stack_right
from puma_async.protocols.fixedpoint import FixedPoint
from puma_async.protocols.llama import (
    FOLDED_EXTRA_BITS,
    QKV_RAW_FRAC,
    QKV_RHO_FRAC,
    Rope,
    SecureLayer,
    SecureWeight,
    Stream,
    causal_mask,
    embed_ahead,
    normalised_qkv,
    weight_plan,
    weight_tensors,
)
from puma_async.protocols.norms import MAX_ABS, wide_shift
from puma_async.protocols.polynomial import HEADROOM_BITS
from puma_async.protocols.shares import AShare
from puma_async.roles import ALL_ROLES, MODEL_OWNER, PARTIES
from puma_async.session import (
    GenerationOptions,
    SessionResult,
    in_process_settings,
    inprocess,
    pick_token,
    run_session,
)
from puma_async.session.accounting import prompt_scopes
from puma_async.session.models import SMOLLM2_ARCHITECTURE
from puma_async.session.state import prompt_passes

LOGIT_BOUND = 0.002
UNBOUNDED = dataclasses.replace(tiny_config(), n_layers=3)  # >= 3 layers: masks of inner layers
CONFIG = dataclasses.replace(  # SiLU on the chains of the bounds the weights certify: 16, 16, 8
    UNBOUNDED, gate_bounds=certify_gate_bounds(random_weights(UNBOUNDED, seed=3)))
WEIGHTS = random_weights(CONFIG, seed=3)
PROMPTS = [[1, 2, 3, 4, 5, 6], [9, 8, 7]]
NEW = 3


@pytest.fixture(scope="module")
def session() -> SessionResult:
    """One session: two prompts, then the first prompt again plus 2 generated tokens
    (a full recompute of the cached path's last step)."""
    first = greedy_generate(WEIGHTS, PROMPTS[0], NEW)
    recompute = PROMPTS[0] + first[:2]
    return run_session(WEIGHTS, [*PROMPTS, recompute], max_new_tokens=NEW)


def _reference_logits(prompt: list[int], tokens: list[int],
                      weights: LlamaWeights = WEIGHTS) -> list[np.ndarray]:
    """float64 logits of the prompt's last position, then of each token fed back but the last."""
    cache = KVCache.empty(weights.config)
    logits = [forward(weights, prompt, cache)[-1]]
    logits += [forward(weights, [t], cache)[-1] for t in tokens[:-1]]
    return logits


def test_greedy_tokens_and_logits_match_plaintext(session) -> None:
    for prompt, result in zip(PROMPTS, session.prompts, strict=False):
        assert result.tokens == greedy_generate(WEIGHTS, prompt, NEW)
        reference = _reference_logits(prompt, result.tokens)
        errors = [np.abs(r.logits - ref).max() for r, ref in zip(result.records, reference,
                                                                  strict=True)]
        assert max(errors) < LOGIT_BOUND, errors


def test_all_positions_logits_match_plaintext() -> None:
    """With reveal_logits "all" the prompt pass reveals every position's logits, each within
    the bound; the last row is the one the token comes from, later passes reveal one row."""
    settings = in_process_settings(CONFIG, NEW, reveal_logits="all")
    result = run_session(WEIGHTS, PROMPTS, settings=settings)
    for prompt, generated in zip(PROMPTS, result.prompts, strict=True):
        first = generated.records[0]
        assert first.all_logits is not None
        assert first.all_logits.shape == (len(prompt), CONFIG.vocab)
        assert np.array_equal(first.all_logits[-1], first.logits)
        assert np.abs(first.all_logits - forward(WEIGHTS, prompt)).max() < LOGIT_BOUND
        assert all(r.all_logits is not None and r.all_logits.shape == (1, CONFIG.vocab)
                   for r in generated.records[1:])
        assert generated.tokens == greedy_generate(WEIGHTS, prompt, NEW)


@pytest.mark.parametrize(("reveal", "per_pass"), [("last", 1), ("last", 4), ("all", 3)])
def test_a_prompt_longer_than_a_pass_runs_in_prefill_passes(reveal: str, per_pass: int) -> None:
    """A prompt of 10 positions with at most ``per_pass`` per pass: Prefill passes of its
    first positions (scopes ``p0.prefill{start}``, as ``prompt_passes`` cuts them: 4, 2, 2
    and 1 for per_pass 4, then the Run of the last one); the tokens are plaintext's greedy
    ones and the logits within the bound, every position's where the session reveals them.
    With one position per pass the first pass has a single key (its softmax maximum is the
    entry itself)."""
    prompt = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    settings = in_process_settings(CONFIG, NEW, reveal_logits=reveal,
                                   max_pass_positions=per_pass)
    result = run_session(WEIGHTS, [prompt], settings=settings)
    generated = result.prompts[0]
    assert generated.tokens == greedy_generate(WEIGHTS, prompt, NEW)
    errors = [np.abs(r.logits - ref).max() for r, ref in zip(
        generated.records, _reference_logits(prompt, generated.tokens), strict=True)]
    assert max(errors) < LOGIT_BOUND, errors
    sizes = prompt_passes(len(prompt), per_pass)
    starts = np.cumsum([0, *sizes[:-2]]) if len(sizes) > 1 else []
    scopes = prompt_scopes(result.stats[0], 0)
    assert scopes == [*(f"p0.prefill{s}" for s in starts), "p0.t0"]
    each = [result.stats[0].totals(phase="online", scope=s) for s in scopes]
    prompt_cost = result.step_cost(0, 0, 0)  # the prompt's passes together
    assert prompt_cost.rounds == sum(t.rounds for t in each) > each[-1].rounds
    assert prompt_cost.bytes_sent == sum(t.bytes_sent for t in each)
    first = generated.records[0]
    if reveal == "all":
        assert first.all_logits is not None and first.all_logits.shape == (10, CONFIG.vocab)
        assert np.abs(first.all_logits - forward(WEIGHTS, prompt)).max() < LOGIT_BOUND
    else:
        assert first.all_logits is None


def test_a_one_token_prompt() -> None:
    """A prompt of one token: its pass has one key per query, its own softmax maximum (this
    failed in the maximum's material, whose pairs per row were 0)."""
    result = run_session(WEIGHTS, [[7]], max_new_tokens=NEW)
    assert result.prompts[0].tokens == greedy_generate(WEIGHTS, [7], NEW)
    errors = [np.abs(r.logits - ref).max() for r, ref in zip(
        result.prompts[0].records, _reference_logits([7], result.prompts[0].tokens),
        strict=True)]
    assert max(errors) < LOGIT_BOUND, errors


def test_default_reveals_the_last_logits_only(session) -> None:
    assert all(r.all_logits is None and r.logits.shape == (CONFIG.vocab,)
               for prompt in session.prompts for r in prompt.records)


def test_kv_cache_equals_full_recompute(session) -> None:
    cached = session.prompts[0].records[2]  # third token: prompt + 2 tokens from the cache
    full = session.prompts[2].records[0]  # the same prefix in one prompt pass
    assert cached.token == full.token
    assert np.abs(cached.logits - full.logits).max() < LOGIT_BOUND


def test_costs_and_weight_sharing(session) -> None:
    """Per-token steps cost one position; the owner sends only x_2 (2 copies) of the weights."""
    for party in PARTIES:
        prompt_pass = session.step_cost(0, 0, party)
        token = session.step_cost(0, 1, party)
        assert 0 < token.bytes_sent < prompt_pass.bytes_sent
        assert 0 < token.rounds <= prompt_pass.rounds
        assert session.setup_cost(party).bytes_sent < 1000  # keys only; weights come in
    elements = sum(int(np.prod(shape)) for _, shape in weight_plan(CONFIG))
    assert 0 <= session.owner_setup_bytes() - 2 * 8 * elements < 200  # + 4 seeds
    assert session.stats[MODEL_OWNER].totals(phase="online").bytes_sent == 0


def test_certified_bounds_shorten_silu_chains_only(session) -> None:
    """The same weights without the bounds: the same tokens, more bytes per token (SiLU's
    comparisons on full chains, their bits opened to all three and shared arithmetically
    offline), the same rounds (with a bound SiLU's bits are opened to their evaluators only,
    who then exchange the selected row, :mod:`.evaluators`: beside the powers, as the tiny
    bounds' chains, 24 bits less the slack's 10, need one tree level)."""
    assert CONFIG.gate_bounds == (16, 16, 8)
    weights = dataclasses.replace(WEIGHTS, config=UNBOUNDED)
    full = run_session(weights, PROMPTS[:1], max_new_tokens=2)
    assert full.prompts[0].tokens == session.prompts[0].tokens[:2]
    for party in PARTIES:
        bounded, unbounded = session.step_cost(0, 1, party), full.step_cost(0, 1, party)
        assert bounded.rounds == unbounded.rounds
        assert bounded.bytes_sent < unbounded.bytes_sent


@pytest.mark.parametrize(("heads", "tradeoff", "prompt_rounds", "token_rounds"), [
    # (rounds per layer, in the head) more than balanced, in the prompt pass and per token
    (2, "fewer-bytes", (3, 0), (12, 3)),  # norm first (3); tokens: Horner (1), no tuples (8)
    (4, "fewer-rounds", (-14, -3), (-5, 0)),  # multi-head: balanced's norms first (3 + 2)
    (2, "fewer-rounds", (-11, -3), (-2, 0)),  # grouped-query: only the MLP's norm differs
])
def test_tradeoffs_give_the_same_tokens(heads: int, tradeoff: str, prompt_rounds: tuple[int, int],
                                        token_rounds: tuple[int, int]) -> None:
    """Every tradeoff's plan computes the same layers: plaintext's tokens and logits, and per
    pass the balanced plan's rounds plus those its protocols add or save per layer and in
    the head, the bytes moving the other way. Balanced's prompt pass takes SiLU by Horner
    and the candidates without TP1 tuples (:func:`.llama.layer_plan`), its tokens neither.
    Those two: 1 for SiLU by Horner (its comparisons' one tree level starts in the gate
    product's last round, so the rows' exchange ends a round after v^2, and B's truncation
    and the last take 4 rounds from there instead of max(exchange, v^4) + 2); and the
    segments' candidates truncated in 2 rounds each, without TP1 tuples: 3 per norm (two
    per layer, and the head's) and 2 for the softmax's 1/sum (its comparisons' leaves start
    in negExp's last round, so its opening waited on nothing). Fewer-bytes also takes the
    norm first: 3 (RoPE's truncation is one block at this width). Fewer-rounds: rho after
    the gate/up product instead of before (2: the raw product beside the rsqrt), and with
    multi-head attention after the QKV product too (3)."""
    raw = dataclasses.replace(UNBOUNDED, n_kv_heads=heads)
    config = dataclasses.replace(raw, gate_bounds=certify_gate_bounds(random_weights(raw, 3)))
    weights = random_weights(config, seed=3)
    runs = {t: run_session(weights, PROMPTS[:1], settings=in_process_settings(
        config, NEW, tradeoff=t)) for t in ("balanced", tradeoff)}
    for result in runs.values():
        generated = result.prompts[0]
        assert generated.tokens == greedy_generate(weights, PROMPTS[0], NEW)
        reference = _reference_logits(PROMPTS[0], generated.tokens, weights)
        errors = [np.abs(r.logits - ref).max()
                  for r, ref in zip(generated.records, reference, strict=True)]
        assert max(errors) < LOGIT_BOUND, errors
    for step in range(NEW):
        base, other = (runs[t].step_cost(0, step, PARTIES[0]) for t in ("balanced", tradeoff))
        per_layer, head = prompt_rounds if step == 0 else token_rounds
        assert other.rounds == base.rounds + per_layer * config.n_layers + head, step
    base_bytes, other_bytes = (sum(runs[t].stats[p].totals(phase=phase).bytes_sent
                                   for p in PARTIES for phase in ("online", "offline"))
                               for t in ("balanced", tradeoff))  # the passes' bytes
    assert (other_bytes < base_bytes) == (token_rounds[0] > 0)


def test_norm_gains_are_folded_into_the_next_weights() -> None:
    """The owner shares diag(g_attn) [Wq | Wk | Wv] and diag(g_ffn) [W_gate | W_up] (no gains
    of their own); only the final norm's gain is shared as a vector."""
    tensors = dict(zip((name for name, _ in weight_plan(CONFIG)), weight_tensors(WEIGHTS),
                       strict=True))
    for i, layer in enumerate(WEIGHTS.layers):
        qkv = np.concatenate([layer.wq, layer.wk, layer.wv], axis=1)
        gate_up = np.concatenate([layer.w_gate, layer.w_up], axis=1)
        scale = 2.0**FOLDED_EXTRA_BITS  # shared at 6 more fractional bits
        assert np.array_equal(tensors[f"layer{i}.wqkv"], scale * layer.attn_norm[:, None] * qkv)
        assert np.array_equal(tensors[f"layer{i}.w_gate_up"],
                              scale * layer.ffn_norm[:, None] * gate_up)
    assert [name for name, shape in weight_plan(CONFIG) if len(shape) == 1] == ["final_norm"]
    assert np.array_equal(tensors["final_norm"], WEIGHTS.final_norm)


FX = FixedPoint(18)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), log2_rms=st.floats(-4, 13), log2_q=st.floats(-3, 5),
       start=st.integers(0, tiny_config().context_length - 3))
@example(seed=1, log2_rms=13, log2_q=5.5, start=61)  # |x W'| near 2^19 (headroom)
@example(seed=2, log2_rms=-4, log2_q=5, start=0)  # rho = 16: the rotation's rounding x 16
def test_normalised_qkv_rotates_before_rho(evaluate, seed: int, log2_rms: float, log2_q: float,
                                           start: int) -> None:
    """rho RoPE(x W'qkv) against float64 on rows of one scale (tiny model's shape)."""
    config, n = tiny_config(), 3
    rng = np.random.default_rng(seed)
    x = np.clip(rng.normal(0, 2.0**log2_rms, (n, config.hidden)), -MAX_ABS, MAX_ABS)
    check_normalised_qkv(evaluate, config, x, random_folded(rng, config, log2_q), start)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), log2_outlier=st.floats(5, 15), log2_rms=st.floats(-2, 3),
       log2_q=st.floats(-2, 4), rows=st.integers(1, 7), start=st.integers(0, 8189))
@example(seed=3, log2_outlier=9.7, log2_rms=1.3, log2_q=3, rows=1, start=0)  # SmolLM2's ~830
@example(seed=4, log2_outlier=14.6, log2_rms=0, log2_q=4, rows=7, start=8189)  # its ~25,000
@example(seed=5, log2_outlier=5.2, log2_rms=1.3, log2_q=4, rows=6, start=100)  # |x_507| ~ 36
def test_normalised_qkv_on_rows_with_an_outlier(evaluate, seed: int, log2_outlier: float,
                                                log2_rms: float, log2_q: float, rows: int,
                                                start: int) -> None:
    """rho RoPE(x W'qkv) against float64 at SmolLM2's shape on rows whose one dimension holds
    a massive activation (SmolLM2's dimension 507: ~800 in layers 3-10, ~25,000 from layer
    11 on, ~36 on ordinary rows), the others at unit-ish scale; ``rows``: which of the three
    rows (bits) carry it. Their rho is 1/|outlier| sqrt(576) and x W' is the outlier's row of
    W' times the outlier: the docstring's bound holds (rsqrt's wide path above rms 241)."""
    config, n = SMOLLM2_ARCHITECTURE, 3
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 2.0**log2_rms, (n, config.hidden))
    dim = int(rng.integers(config.hidden))
    carry = np.array([(rows >> i) & 1 for i in range(n)], dtype=bool)
    x[carry, dim] = rng.choice([-1.0, 1.0], carry.sum()) * 2.0**log2_outlier
    check_normalised_qkv(evaluate, config, x, random_folded(rng, config, log2_q), start)


def random_folded(rng: np.random.Generator, config: LlamaConfig,
                  log2_q: float) -> npt.NDArray[np.float64]:
    """A random W'qkv with the gains folded in (FOLDED_EXTRA_BITS): |q| about 2^log2_q."""
    h = config.hidden
    w = rng.normal(0, 2.0**log2_q / np.sqrt(h), (h, config.q_dim + 2 * config.kv_dim))
    return 2.0**FOLDED_EXTRA_BITS * rng.uniform(0.1, 1.0, h)[:, None] * w


MULTI_HEAD = dataclasses.replace(tiny_config(), n_kv_heads=4)  # q + 2 kv = 3 hidden


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), log2_rms=st.floats(-4, 13), log2_q=st.floats(-3, 5),
       rows=st.integers(1, 4), start=st.integers(0, tiny_config().context_length - 4))
@example(seed=1, log2_rms=13, log2_q=5.5, rows=3, start=60)  # |x| at MAX_ABS's scale
@example(seed=2, log2_rms=-4, log2_q=5, rows=1, start=0)  # rho = 16
def test_normalised_qkv_scales_the_input_for_multi_head(evaluate, seed: int, log2_rms: float,
                                                        log2_q: float, rows: int,
                                                        start: int) -> None:
    """Multi-head attention (q + 2 kv = 3 hidden) takes the rho-first path: RoPE(x rho @
    W'qkv) against float64 within its docstring's bound, in 9 rounds."""
    assert llama.normalises_input(MULTI_HEAD) and not llama.normalises_input(tiny_config())
    rng = np.random.default_rng(seed)
    x = np.clip(rng.normal(0, 2.0**log2_rms, (rows, MULTI_HEAD.hidden)), -MAX_ABS, MAX_ABS)
    check_normalised_qkv(evaluate, MULTI_HEAD, x, random_folded(rng, MULTI_HEAD, log2_q), start)


def check_normalised_qkv(evaluate, config: LlamaConfig, x: npt.NDArray[np.float64],
                         folded: npt.NDArray[np.float64], start: int) -> None:
    """normalised_qkv on x (n, hidden) and W' against float64 (on the encoded x and W'):
    RoPE commutes with rho, the query heads carry 1/sqrt(head_dim), and the error is within
    the docstring's bound of the path the balanced plan takes for the config (rho after:
    rsqrt's relative error, rho (sqrt(2) s + 1) 2^-22 + 2^-18, the cos and sin tables'
    rounding and rho's resolution, 6 rounds; rho first: x rho's error through W', RoPE's,
    9 rounds)."""
    n, h, d = x.shape[0], config.hidden, config.head_dim
    heads, groups = config.n_heads, config.n_kv_heads
    first = llama.layer_plan(config).normalise_input
    k = wide_shift(h, MAX_ABS, FX.frac_bits)
    enc_x, enc_w = FX.encode(x), FX.encode(folded)
    wide = (enc_x.view(np.int64) >> k).view(np.uint64)

    async def qkv(ctx, xs, wides, ws):
        weight = SecureWeight(stack_right(ws))
        layer = SecureLayer(weight, weight, weight, weight)
        return await normalised_qkv(ctx, config, layer, Stream(xs, wides),
                                    Rope.at(ctx, config, start, n), first)

    ev = evaluate(qkv, enc_x, wide, enc_w)
    got = FX.decode(ev.outputs[0])
    w = FX.decode(enc_w) / 2.0**FOLDED_EXTRA_BITS
    xq = FX.decode(enc_x)
    raw = xq @ w
    rho = 1 / np.sqrt(np.mean(xq * xq, axis=-1, keepdims=True) + config.rms_eps)
    cos, sin = rope_tables(config, np.arange(start, start + n))
    split = (heads + groups) * d
    qk = apply_rope(raw[:, :split].reshape(n, heads + groups, d).transpose(1, 0, 2), cos, sin)
    s = np.array([d**-0.5] * heads + [1.0] * groups)[:, None, None]
    want = rho * np.concatenate([(qk * s).transpose(1, 0, 2).reshape(n, split), raw[:, split:]],
                                axis=-1)
    scale = np.concatenate([np.repeat(s.ravel(), d), np.zeros(config.kv_dim)])
    rotated = np.arange(raw.shape[1]) < split
    # rsqrt: 1.3e-6 relative on the precise path (sum of squares below 2^24), else 2e-5;
    # cos and sin rounded to 2^-19 (x s): rho (|a| + |b|) 2^-19 on a rotated pair (a, b)
    rel = np.where(np.sum(xq * xq, axis=-1, keepdims=True) < 2.0**24, 1.3e-6, 2e-5)
    pairs = np.abs(raw) + np.abs(np.roll(raw.reshape(n, -1, d), d // 2, axis=-1).reshape(n, -1))
    tables = np.where(rotated, rho * pairs * 2.0**-19, 0.0)
    if first:
        # h = x rho within rel and rho's resolution, plus one ulp (at QKV_RAW_FRAC bits);
        # through W', plus the product's ulp (e_j), rotated (sqrt(2) s max over the pair)
        # plus RoPE's ulp
        rho_bits = HEADROOM_BITS - FX.frac_bits - int(np.ceil(np.log2(np.sqrt(h))))
        h_error = np.abs(xq) * (rel * rho + 2.0**-rho_bits) + 2.0**-QKV_RAW_FRAC
        e = h_error @ np.abs(w) + 2.0**-18
        pair_max = np.maximum(e, np.roll(e.reshape(n, -1, d), d // 2, axis=-1).reshape(n, -1))
        bound = np.where(rotated, np.sqrt(2) * scale * pair_max + 2.0**-18, e) + tables
        # rms_norm 6 (rho 4, x rho 2), x rho @ W' 2, RoPE 1: its truncation is one block
        # here, its dealer's message in the product's last round (2 where blocks rotate)
        rounds = 9
    else:
        added = rho * (np.sqrt(2) * scale + 1) * 2.0**-QKV_RAW_FRAC + 2.0**-18
        bound = rel * np.abs(want) + tables + added + np.abs(want / rho) * 2.0**-QKV_RHO_FRAC
        rounds = 6  # rho 4 (x W'qkv and its rotation beside it), x rho 2
    assert np.all(np.abs(got - want) <= bound), np.max(np.abs(got - want) - bound)
    assert ev.cost().rounds == rounds


def test_causal_mask_rows_by_group() -> None:
    mask = causal_mask(start=2, n=2, total=4, repeats=2)
    want = np.array([[1, 1, 1, 0], [1, 1, 1, 1]] * 2, dtype=bool)
    assert np.array_equal(mask, want)


@pytest.mark.parametrize("stop_at_eos", [False, True])
def test_eos_ends_the_text_and_the_passes_go_on(stop_at_eos: bool) -> None:
    """After EOS the client runs the remaining passes (discarded) unless it stops at EOS."""
    prompt = [4, 5]
    first = greedy_generate(WEIGHTS, prompt, 1)[0]
    options = GenerationOptions(eos_id=first, stop_at_eos=stop_at_eos)
    result = run_session(WEIGHTS, [prompt, prompt], options, max_new_tokens=3)
    for index, generated in enumerate(result.prompts):
        assert generated.tokens == [first]
        discarded = [r.discarded for r in generated.records]
        assert discarded == ([False] if stop_at_eos else [False, True, True])
        passes = [s for s in result.stats[0].scopes() if s.startswith(f"p{index}.t")
                  and s.count(".") == 1]
        assert len(passes) == len(discarded)  # what the parties see: the number of passes


def test_pick_token() -> None:
    logits = np.array([0.0, 3.0, 3.0, -1.0])
    assert pick_token(logits, 0.0, np.random.default_rng(0)) == 1  # first on ties
    draws = [pick_token(logits, 1.0, np.random.default_rng(7)) for _ in range(3)]
    assert len(set(draws)) == 1  # seeded: reproducible
    many = np.random.default_rng(1)
    seen = {pick_token(logits, 1.0, many) for _ in range(200)}
    assert {1, 2} <= seen and seen <= {0, 1, 2, 3}
    assert pick_token(logits * 100, 0.01, np.random.default_rng(0)) in (1, 2)


@pytest.fixture
def no_run(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("the session must not start")

    monkeypatch.setattr(inprocess, "run_local", fail)


def test_too_long_prompt_fails_before_anything_runs(no_run: None) -> None:
    """A prompt of n tokens and m new ones needs n + m - 1 positions."""
    prompt = [1] * (CONFIG.context_length - 1)
    with pytest.raises(ContextLengthError, match="context length"):
        run_session(WEIGHTS, [prompt], max_new_tokens=3)


@pytest.mark.parametrize("prompt", [[1, CONFIG.vocab], [-1], []])
def test_bad_token_ids_fail_before_anything_runs(no_run: None, prompt: list[int]) -> None:
    with pytest.raises(ValueError, match="prompt 0"):
        run_session(WEIGHTS, [prompt])


def test_wrong_model_file(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"not a model at all")
    with pytest.raises(ModelFileError):
        load_gguf(bad)
    assert main(["--model", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "not a GGUF file" in err and "Traceback" not in err


def test_cli_context_length_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--model", "tiny", "--prompt", "x" * 70]) == 2
    assert "context length" in capsys.readouterr().err


def test_cli_max_pass_positions(capsys: pytest.CaptureFixture[str]) -> None:
    """``--max-pass-positions 3``: the prompt of 11 in passes of 3 and then 1 (3 x 4 pairs
    would exceed 9), each named on stderr, the tokens plaintext's; the prompt's step counts
    the rounds of all its passes; 0 is a one-line error."""
    assert main(["--model", "tiny", "--prompt", "hello world", "--max-new-tokens", "2",
                 "--max-pass-positions", "3", "--compare", "--json"]) == 0
    out, err = capsys.readouterr()
    assert "prompt 0: positions 0-2 sent (a pass of their own)" in err
    assert "prompt 0: position 9 sent" in err and "position 10 sent" not in err
    (prompt,) = json.loads(out)["prompts"]
    assert prompt["generated_ids"] == prompt["plaintext_ids"]
    assert main(["--model", "tiny", "--prompt", "hello world", "--max-new-tokens", "2",
                 "--json"]) == 0
    (whole,) = json.loads(capsys.readouterr().out)["prompts"]
    assert prompt["steps"][0]["rounds"] > 5 * whole["steps"][0]["rounds"]
    assert main(["--model", "tiny", "--max-pass-positions", "0"]) == 2
    assert "max_pass_positions must be >= 1, got 0" in capsys.readouterr().err


def test_cli_tradeoff(capsys: pytest.CaptureFixture[str]) -> None:
    """``--tradeoff fewer-bytes``: the same tokens as the plaintext model; per new token 11
    rounds more per layer at this width and 3 in the head, in the prompt pass 3 per layer
    (:func:`test_tradeoffs_give_the_same_tokens`'s less SiLU's Horner split: the tiny model
    declares no gate bounds, so SiLU's bits are opened to all and its dot product is one);
    an unknown tradeoff is a usage error."""
    rounds = {}
    for tradeoff in ("balanced", "fewer-bytes"):
        assert main(["--model", "tiny", "--prompt", "abc", "--max-new-tokens", "2", "--compare",
                     "--json", "--tradeoff", tradeoff]) == 0
        (prompt,) = json.loads(capsys.readouterr().out)["prompts"]
        assert prompt["generated_ids"] == prompt["plaintext_ids"]
        rounds[tradeoff] = [step["rounds"] for step in prompt["steps"]]
    layers = tiny_config().n_layers
    prompt_pass, *tokens = rounds["balanced"]
    assert rounds["fewer-bytes"] == [prompt_pass + 3 * layers, *(r + 11 * layers + 3
                                                                 for r in tokens)]
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", "tiny", "--tradeoff", "fast"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'fast'" in capsys.readouterr().err


def test_cli_json_with_compare(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--model", "tiny", "--prompt", "abc", "--max-new-tokens", "2", "--compare",
                 "--json", "--seed", "0"]) == 0
    data = json.loads(capsys.readouterr().out)
    (prompt,) = data["prompts"]
    assert prompt["generated_ids"] == prompt["plaintext_ids"]
    assert prompt["top1_agreement"] == 1.0 and prompt["max_logit_error"] < LOGIT_BOUND
    assert 0 <= prompt["max_kl"] < 1e-5 and prompt["near_ties"] >= 0
    profile = data["error_profile"]
    assert {"layer0.qkv", "layer1.residual", "final_norm", "logits"} <= set(profile)
    assert profile["logits"]["max_error"] == pytest.approx(prompt["max_logit_error"])
    assert profile["layer0.silu"]["rms_error"] <= profile["layer0.silu"]["max_error"]
    assert [s["kind"] for s in prompt["steps"]] == ["prompt", "token"]
    for step in prompt["steps"]:
        assert step["seconds"] > 0 and step["rounds"] > 0
        assert all(step["bytes_sent"][p] > 0 for p in ("P0", "P1", "P2"))


def test_untied_head_logits_match_plaintext() -> None:
    """An untied head (x @ W_head, its own weight): the client's logits (the head's
    untruncated product at 36 bits, opened at 18) within the same bound."""
    config = dataclasses.replace(tiny_config(), n_layers=1, tied_embeddings=False)
    weights = random_weights(config, seed=5)
    result = run_session(weights, [PROMPTS[1]], max_new_tokens=2)
    (generated,) = result.prompts
    cache = KVCache.empty(config)
    reference = [forward(weights, PROMPTS[1], cache)[-1],
                 forward(weights, generated.tokens[:1], cache)[-1]]
    errors = [np.abs(r.logits - ref).max() for r, ref in zip(generated.records, reference,
                                                              strict=True)]
    assert max(errors) < LOGIT_BOUND, errors


def test_embedding_product_made_ahead_is_exact() -> None:
    """P_0's embedding product made ahead (both halves of its share from the input seeds) is
    z_0 = (a + b) E_0 + a E_1, exactly."""
    rng = np.random.default_rng(5)
    vocab, hidden = 300, 8
    table = rng.integers(0, 2**64, (vocab, 2 * hidden), dtype=np.uint64, endpoint=False)
    table[:3] = [2**64 - 1], [2**63], [1]
    a, b = (rng.integers(0, 2**64, (1, vocab), dtype=np.uint64, endpoint=False) for _ in "ab")
    model = SimpleNamespace(embed=table)
    ahead = embed_ahead(model, b"label", AShare(a, b))  # type: ignore[arg-type]
    exact = ((a + b).astype(object) @ table[:, :hidden].astype(object)
             + a.astype(object) @ table[:, hidden:].astype(object)) % 2**64
    assert ahead.label == b"label"
    assert np.array_equal(ahead.part, exact.astype(np.uint64))


ENTROPY = {role: bytes([role]) * 32 for role in ALL_ROLES}


def test_embedding_made_ahead_changes_no_message(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the same entropy, a session where P_0 makes its new tokens' embedding products
    during the pass before (session.programs) reveals the very same logits, bit for bit, as
    one where it makes each when the row arrives."""
    with_terms = run_session(WEIGHTS, PROMPTS[:1], max_new_tokens=NEW, entropy=ENTROPY)
    original, used = llama.embed_tokens, []

    async def whole(ctx: Any, model: Any, one_hot: Any, ahead: Any = None) -> Any:
        used.append(ahead is not None)
        return await original(ctx, model, one_hot)

    monkeypatch.setattr(llama, "embed_tokens", whole)
    without = run_session(WEIGHTS, PROMPTS[:1], max_new_tokens=NEW, entropy=ENTROPY)
    assert sum(used) == NEW - 1  # P0's, every pass but the prompt's
    for a, b in zip(with_terms.prompts[0].records, without.prompts[0].records, strict=True):
        assert np.array_equal(a.logits, b.logits)
