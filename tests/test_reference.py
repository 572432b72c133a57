"""The numpy reference forward pass on tiny random models: against a naive per-token, per-head
implementation, KV-cache consistency, causality, RoPE properties, GQA and input checks."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from puma_async.errors import ContextLengthError
from puma_async.model import (
    KVCache,
    LayerWeights,
    LlamaWeights,
    apply_rope,
    forward,
    greedy_generate,
    llama7b_block_config,
    random_weights,
    rope_tables,
    tiny_config,
)
from puma_async.model.gguf_loader import _unpermute_rotary

CONFIG = tiny_config()
WEIGHTS = random_weights(CONFIG, seed=11)
PROMPT = [5, 17, 3, 60, 42, 8, 8, 1, 33, 0]


def naive_forward(weights: LlamaWeights, ids: list[int]) -> np.ndarray:
    """Textbook LLaMA: a loop over positions and heads, interleaved-pair complex RoPE applied
    to the llama.cpp layout (the un-permuted layout's inverse), no cache."""
    c = weights.config
    n, half = len(ids), c.head_dim // 2
    inv_freq = c.rope_theta ** (-np.arange(half) * 2.0 / c.head_dim)

    def norm(x: np.ndarray, g: np.ndarray) -> np.ndarray:
        return x / np.sqrt(np.mean(x**2) + c.rms_eps) * g

    def rope(vec: np.ndarray, pos: int) -> np.ndarray:
        # to llama.cpp's layout (pairs 2j, 2j+1), rotate as complex numbers, and back
        inter = vec.reshape(2, half).T.reshape(-1)
        z = (inter[0::2] + 1j * inter[1::2]) * np.exp(1j * pos * inv_freq)
        inter = np.stack([z.real, z.imag], axis=-1).reshape(-1)
        return _unpermute_rotary(inter[:, None], 1)[:, 0]

    x = weights.embed[ids].astype(np.float64)
    for layer in weights.layers:
        keys = np.zeros((n, c.n_kv_heads, c.head_dim))
        vals = np.zeros((n, c.n_kv_heads, c.head_dim))
        out = np.zeros((n, c.hidden))
        for t in range(n):
            h = norm(x[t], layer.attn_norm)
            q = (h @ layer.wq).reshape(c.n_heads, c.head_dim)
            k = (h @ layer.wk).reshape(c.n_kv_heads, c.head_dim)
            vals[t] = (h @ layer.wv).reshape(c.n_kv_heads, c.head_dim)
            keys[t] = [rope(k[g], t) for g in range(c.n_kv_heads)]
            heads = []
            for hd in range(c.n_heads):
                g = hd * c.n_kv_heads // c.n_heads
                s = np.array([rope(q[hd], t) @ keys[j, g] for j in range(t + 1)])
                p = np.exp(s / np.sqrt(c.head_dim) - s.max() / np.sqrt(c.head_dim))
                heads.append((p / p.sum()) @ vals[: t + 1, g])
            out[t] = np.concatenate(heads) @ layer.wo
        x = x + out
        for t in range(n):
            h = norm(x[t], layer.ffn_norm)
            gate = h @ layer.w_gate
            x[t] = x[t] + (gate / (1 + np.exp(-gate)) * (h @ layer.w_up)) @ layer.w_down
    return np.stack([norm(row, weights.final_norm) @ weights.lm_head for row in x])


def test_matches_naive_implementation() -> None:
    logits = forward(WEIGHTS, PROMPT)
    assert logits.shape == (len(PROMPT), CONFIG.vocab) and logits.dtype == np.float64
    np.testing.assert_allclose(logits, naive_forward(WEIGHTS, PROMPT), rtol=0, atol=1e-10)


def test_untied_and_float32_weights() -> None:
    config = replace(CONFIG, tied_embeddings=False)
    weights = random_weights(config, seed=2, dtype=np.float32)
    assert weights.lm_head.base is not weights.embed
    np.testing.assert_allclose(
        forward(weights, PROMPT), naive_forward(weights, PROMPT), rtol=0, atol=1e-10
    )
    # float32 weights are promoted exactly: same logits as the float64 copy
    np.testing.assert_array_equal(
        forward(weights, PROMPT), forward(weights.astype(np.float64), PROMPT)
    )


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 4), min_size=1, max_size=10))
def test_cache_matches_full_pass(chunks: list[int]) -> None:
    """Feeding the prompt in arbitrary chunks through a cache gives the full pass's logits."""
    full = forward(WEIGHTS, PROMPT)
    cache = KVCache.empty(CONFIG)
    pieces, start = [], 0
    for size in chunks:
        if start >= len(PROMPT):
            break
        pieces.append(forward(WEIGHTS, PROMPT[start : start + size], cache))
        start += size
        assert cache.length == min(start, len(PROMPT))
    np.testing.assert_allclose(np.concatenate(pieces), full[:start], rtol=0, atol=1e-10)
    assert cache.keys[0].shape == (CONFIG.n_kv_heads, cache.length, CONFIG.head_dim)
    assert len(cache.keys) == len(cache.values) == CONFIG.n_layers


def test_causal() -> None:
    """Changing a later token leaves the logits of earlier positions unchanged."""
    a = forward(WEIGHTS, PROMPT)
    b = forward(WEIGHTS, [*PROMPT[:-1], (PROMPT[-1] + 1) % CONFIG.vocab])
    np.testing.assert_array_equal(a[:-1], b[:-1])
    assert not np.allclose(a[-1], b[-1])


def test_gqa_equals_mha_with_repeated_kv_heads() -> None:
    """Query head h reads KV head h // n_rep: repeating KV columns that way gives plain MHA."""
    mha_config = replace(CONFIG, n_kv_heads=CONFIG.n_heads)
    hd, rep = CONFIG.head_dim, CONFIG.n_rep

    def repeat(w: np.ndarray) -> np.ndarray:
        return np.repeat(w.reshape(w.shape[0], -1, hd), rep, axis=1).reshape(w.shape[0], -1)

    layers = tuple(replace(la, wk=repeat(la.wk), wv=repeat(la.wv)) for la in WEIGHTS.layers)
    mha = replace(WEIGHTS, config=mha_config, layers=layers)
    np.testing.assert_allclose(forward(mha, PROMPT), forward(WEIGHTS, PROMPT), rtol=0, atol=1e-12)


def test_rope_tables() -> None:
    positions = np.array([0, 1, 7, 63])
    cos, sin = rope_tables(CONFIG, positions)
    assert cos.shape == sin.shape == (4, CONFIG.head_dim)
    np.testing.assert_array_equal(cos[0], 1.0)
    np.testing.assert_array_equal(sin[0], 0.0)
    np.testing.assert_allclose(cos**2 + sin**2, 1.0, atol=1e-15)
    half = CONFIG.head_dim // 2
    np.testing.assert_array_equal(cos[:, :half], cos[:, half:])  # rotate-half layout
    inv_freq = CONFIG.rope_theta ** (-np.arange(half) / half)
    np.testing.assert_allclose(sin[1, :half], np.sin(inv_freq))


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 60), st.integers(0, 60), st.integers(0, 3), st.integers(0, 2**32 - 1))
def test_rope_is_a_relative_rotation(m: int, n: int, shift: int, seed: int) -> None:
    """RoPE preserves norms and <rope(q, m), rope(k, n)> depends only on m - n."""
    rng = np.random.default_rng(seed)
    q, k = rng.standard_normal((2, CONFIG.head_dim))

    def rot(x: np.ndarray, pos: int) -> np.ndarray:
        cos, sin = rope_tables(CONFIG, [pos])
        return apply_rope(x[None], cos, sin)[0]

    assert np.linalg.norm(rot(q, m)) == pytest.approx(np.linalg.norm(q), rel=1e-12)
    assert rot(q, m) @ rot(k, n) == pytest.approx(rot(q, m + shift) @ rot(k, n + shift), abs=1e-9)


def test_greedy_generate_matches_recomputation() -> None:
    new = greedy_generate(WEIGHTS, PROMPT[:4], 6)
    ids = list(PROMPT[:4])
    for _ in range(6):
        ids.append(int(np.argmax(forward(WEIGHTS, ids)[-1])))
    assert new == ids[4:]
    assert greedy_generate(WEIGHTS, PROMPT[:4], 0) == []
    assert greedy_generate(WEIGHTS, PROMPT[:4], 6, eos_id=new[2]) == new[: new.index(new[2]) + 1]


def test_context_length() -> None:
    ctx = CONFIG.context_length
    with pytest.raises(ContextLengthError):
        forward(WEIGHTS, [1] * (ctx + 1))
    assert forward(WEIGHTS, [1] * ctx).shape == (ctx, CONFIG.vocab)
    cache = KVCache.empty(CONFIG)
    forward(WEIGHTS, [1] * (ctx - 2), cache)
    with pytest.raises(ContextLengthError):
        forward(WEIGHTS, [1, 2, 3], cache)
    assert cache.length == ctx - 2  # a refused call leaves the cache as it was
    with pytest.raises(ContextLengthError):
        greedy_generate(WEIGHTS, [1] * (ctx - 3), 4)
    assert len(greedy_generate(WEIGHTS, [1] * (ctx - 3), 3)) == 3


@pytest.mark.parametrize("bad", [[], [CONFIG.vocab], [-1], [[1, 2]], [1.5]])
def test_bad_token_ids(bad: list) -> None:
    with pytest.raises(ValueError, match="token ids"):
        forward(WEIGHTS, bad)


def test_random_weights() -> None:
    again = random_weights(CONFIG, seed=11)
    np.testing.assert_array_equal(again.layers[1].w_down, WEIGHTS.layers[1].w_down)
    assert WEIGHTS.lm_head.base is WEIGHTS.embed
    # tied head: logits of standard deviation about sqrt(hidden) (see random_weights)
    assert 0.3 < float(np.std(forward(WEIGHTS, PROMPT))) / np.sqrt(CONFIG.hidden) < 3
    with pytest.raises(ValueError, match="shape"):
        replace(WEIGHTS, final_norm=np.ones(CONFIG.hidden + 1))
    with pytest.raises(ValueError, match="dtype"):
        random_weights(CONFIG, dtype=np.int64)


def test_llama7b_block_shapes() -> None:
    c = llama7b_block_config()
    assert (c.hidden, c.n_heads, c.n_kv_heads, c.head_dim, c.ffn, c.n_layers) == (
        4096, 32, 32, 128, 11008, 1,
    )
    shapes = LayerWeights.expected_shapes(c)
    assert shapes["wq"] == (4096, 4096) and shapes["w_gate"] == (4096, 11008)
    assert shapes["w_down"] == (11008, 4096)
