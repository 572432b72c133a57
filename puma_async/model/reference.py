"""Plaintext float64 forward pass of a LLaMA-architecture model: the accuracy baseline.

The secure model computes the same function on secret shares; this module is what its logits
are compared with, and it must itself agree with Hugging Face transformers (see the slow tests).
Arithmetic is float64 throughout: float32 weights are promoted exactly (float32 -> float64 is
lossless), so the only differences from a float32 implementation are its rounding errors.

Rotary embeddings (:mod:`.rope`, shared with the secure model) use the Hugging Face
"rotate-half" layout, matching the un-permuted weights from ``gguf_loader``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from puma_async.errors import ContextLengthError
from puma_async.model.config import LlamaConfig
from puma_async.model.rope import apply_rope, rope_tables
from puma_async.model.weights import LayerWeights, LlamaWeights

F64 = npt.NDArray[np.float64]
Probe = Callable[[str, F64], None]
"""``probe(point, array)``: called at the secure model's probe points (``protocols.llama``'s
``PROBE_POINTS``, same names and layouts), for error profiles (``puma_async.accuracy``)."""


@dataclass
class KVCache:
    """Rotated keys and values of every layer for the positions seen so far.

    ``keys[i]`` and ``values[i]`` have shape (n_kv_heads, length, head_dim); ``forward`` appends
    to them, so new tokens continue at position ``length``.
    """

    keys: list[F64] = field(default_factory=list)
    values: list[F64] = field(default_factory=list)

    @classmethod
    def empty(cls, config: LlamaConfig) -> KVCache:
        """A cache with no positions."""
        shape = (config.n_kv_heads, 0, config.head_dim)
        return cls(
            keys=[np.zeros(shape) for _ in range(config.n_layers)],
            values=[np.zeros(shape) for _ in range(config.n_layers)],
        )

    @property
    def length(self) -> int:
        """Number of positions cached."""
        return int(self.keys[0].shape[1]) if self.keys else 0


def rms_norm(x: F64, gain: npt.NDArray[np.floating], eps: float) -> F64:
    """``x / sqrt(mean(x^2) + eps) * gain`` over the last axis."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * gain


def silu(x: F64) -> F64:
    """``x * sigmoid(x)``, written with tanh so that it never overflows."""
    return x * 0.5 * (1.0 + np.tanh(0.5 * x))


def exp_shifted(x: F64) -> F64:
    """``exp(x - max x)`` over the last axis: softmax's numerators (e / sum e is softmax)."""
    return np.exp(x - np.max(x, axis=-1, keepdims=True))


def causal_attention(
    q: F64, k: F64, v: F64, start: int, probe: Probe | None = None, name: str = ""
) -> F64:
    """Grouped-query causal attention of new queries against all cached keys.

    ``q`` is (n_heads, n, head_dim) for positions ``start .. start+n-1``; ``k`` and ``v`` are
    (n_kv_heads, start+n, head_dim). Query head ``h`` reads key/value head ``h // n_rep``.
    Returns (n, n_heads * head_dim), heads concatenated in order. ``probe`` (if given) sees
    the scores and softmax's numerators as ``{name}.scores`` and ``{name}.exp``.
    """
    n_heads, n, head_dim = q.shape
    n_kv, total, _ = k.shape
    qg = q.reshape(n_kv, n_heads // n_kv, n, head_dim)
    scores = qg @ k[:, None].swapaxes(-1, -2) / np.sqrt(head_dim)  # (n_kv, n_rep, n, total)
    visible = np.arange(total)[None, :] <= start + np.arange(n)[:, None]  # public causal mask
    e = exp_shifted(np.where(visible, scores, -np.inf))  # 0 where masked
    probs = e / np.sum(e, axis=-1, keepdims=True)
    if probe is not None:
        probe(f"{name}.scores", scores)
        probe(f"{name}.exp", e)
    out = (probs @ v[:, None]).reshape(n_heads, n, head_dim)
    return out.transpose(1, 0, 2).reshape(n, n_heads * head_dim)


def decoder_layer(
    config: LlamaConfig, layer: LayerWeights, x: F64, cos: F64, sin: F64,
    cache: KVCache, index: int, probe: Probe | None = None,
) -> F64:
    """One block on the residual stream ``x`` (n, hidden); appends its k, v to ``cache``.

    ``probe`` (if given) sees every probe point ``layer{index}.*`` of the secure model.
    """
    n, d = x.shape[0], config.head_dim
    h = rms_norm(x, layer.attn_norm, config.rms_eps)
    qkv = h @ layer.wq, h @ layer.wk, h @ layer.wv
    q = apply_rope(qkv[0].reshape(n, config.n_heads, d).transpose(1, 0, 2), cos, sin)
    k = apply_rope(qkv[1].reshape(n, config.n_kv_heads, d).transpose(1, 0, 2), cos, sin)
    v = qkv[2].reshape(n, config.n_kv_heads, d).transpose(1, 0, 2)
    start = cache.keys[index].shape[1]
    cache.keys[index] = np.concatenate([cache.keys[index], k], axis=1)
    cache.values[index] = np.concatenate([cache.values[index], v], axis=1)
    name = f"layer{index}"
    attn = causal_attention(q, cache.keys[index], cache.values[index], start, probe, name)
    o_proj = attn @ layer.wo
    x = x + o_proj
    unit2 = rms_norm(x, np.ones(1), config.rms_eps)
    h2 = unit2 * layer.ffn_norm
    gate, up = h2 @ layer.w_gate, h2 @ layer.w_up
    activated = silu(gate)
    down = (activated * up) @ layer.w_down
    if probe is not None:
        points = {
            "qkv": np.concatenate([q / np.sqrt(d), k, v], axis=0).transpose(1, 0, 2)
            .reshape(n, -1),
            "attn_out": attn, "o_proj": o_proj, "attn_residual": x, "ffn_norm": unit2,
            "gate_up": np.concatenate([gate, up], axis=-1), "silu": activated,
            "silu_up": activated * up, "down": down, "residual": x + down,
        }
        for point, value in points.items():
            probe(f"{name}.{point}", value)
    return x + down


def forward(
    weights: LlamaWeights, token_ids: Sequence[int] | npt.ArrayLike, cache: KVCache | None = None,
    probe: Probe | None = None,
) -> F64:
    """Logits (n_tokens, vocab) for ``token_ids`` placed after the ``cache``'s positions.

    The cache (if given) is extended with the new tokens' keys and values. Raises
    ``ContextLengthError`` if the cache plus the new tokens exceed the context length, and
    ValueError for an empty or out-of-vocabulary input. float32 weights are promoted per call;
    for repeated calls pass ``weights.astype(np.float64)`` (about 4x faster on SmolLM2).
    ``probe`` (if given) sees every probe point of the secure model (``final_norm`` and
    ``logits`` for all n rows).
    """
    config = weights.config
    ids = _check_ids(config, token_ids)
    if cache is None:
        cache = KVCache.empty(config)
    start = cache.length
    if start + len(ids) > config.context_length:
        raise ContextLengthError(
            f"{start} cached + {len(ids)} new tokens exceed the context length "
            f"{config.context_length}"
        )
    cos, sin = rope_tables(config, np.arange(start, start + len(ids)))
    x = weights.embed[ids].astype(np.float64)
    for index, layer in enumerate(weights.layers):
        x = decoder_layer(config, layer, x, cos, sin, cache, index, probe)
    h = rms_norm(x, weights.final_norm, config.rms_eps)
    logits = h @ weights.lm_head
    if probe is not None:
        probe("final_norm", h)
        probe("logits", logits)
    return logits


def greedy_generate(
    weights: LlamaWeights, prompt_ids: Sequence[int] | npt.ArrayLike, max_new_tokens: int,
    eos_id: int | None = None,
) -> list[int]:
    """The ``max_new_tokens`` greedy (argmax, first index on ties) tokens after the prompt.

    Stops early after emitting ``eos_id`` (which is included). Uses a KV cache: the prompt is
    one vectorised pass, then one pass per new token. Raises ``ContextLengthError`` if
    prompt + ``max_new_tokens`` exceeds the context length. The weights are converted to float64
    once here, so the passes do not each promote them again.
    """
    config = weights.config
    ids = _check_ids(config, prompt_ids)
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if len(ids) + max_new_tokens > config.context_length:
        raise ContextLengthError(
            f"prompt of {len(ids)} + {max_new_tokens} new tokens exceeds the context length "
            f"{config.context_length}"
        )
    if max_new_tokens == 0:
        return []
    weights = weights.astype(np.float64)
    cache = KVCache.empty(config)
    logits = forward(weights, ids, cache)
    out: list[int] = []
    while True:
        token = int(np.argmax(logits[-1]))
        out.append(token)
        if token == eos_id or len(out) == max_new_tokens:
            return out
        logits = forward(weights, [token], cache)


def _check_ids(
    config: LlamaConfig, token_ids: Sequence[int] | npt.ArrayLike
) -> npt.NDArray[np.int64]:
    ids = np.asarray(token_ids)
    if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(
            f"token ids must be a non-empty 1-D integer sequence, got {ids.dtype} {ids.shape}"
        )
    bad = np.flatnonzero((ids < 0) | (ids >= config.vocab))
    if bad.size:  # counted and placed, never quoted: token ids are the client's secret
        raise ValueError(f"token ids must lie in [0, {config.vocab}): {bad.size} of {ids.size} "
                         f"do not, the first at position {int(bad[0])}")
    return ids.astype(np.int64)
