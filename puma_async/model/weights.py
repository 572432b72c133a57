"""Weights of a LLaMA-architecture model, oriented for ``x @ W``.

Every matrix is stored as (in_features, out_features), so a row vector of activations ``x``
is projected with ``x @ W`` (the transpose of the PyTorch ``nn.Linear`` layout). The secure model
multiplies shares in the same orientation, so nothing is transposed twice.

The query/key projections are in the Hugging Face ("rotate-half") rotary layout: within each head
the first ``head_dim // 2`` output columns pair with the last ``head_dim // 2``. The GGUF loader
un-permutes llama.cpp's interleaved layout into this one (see ``gguf_loader``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
import numpy.typing as npt

from puma_async.model.config import LlamaConfig

Array = npt.NDArray[np.floating]


@dataclass(frozen=True)
class LayerWeights:
    """One decoder block: RMSNorm gains, attention projections and the SwiGLU MLP."""

    attn_norm: Array  # (hidden,)
    wq: Array  # (hidden, n_heads * head_dim)
    wk: Array  # (hidden, n_kv_heads * head_dim)
    wv: Array  # (hidden, n_kv_heads * head_dim)
    wo: Array  # (n_heads * head_dim, hidden)
    ffn_norm: Array  # (hidden,)
    w_gate: Array  # (hidden, ffn)
    w_up: Array  # (hidden, ffn)
    w_down: Array  # (ffn, hidden)

    @staticmethod
    def expected_shapes(config: LlamaConfig) -> dict[str, tuple[int, ...]]:
        """The shape of every field for ``config``."""
        h, q, kv, f = config.hidden, config.q_dim, config.kv_dim, config.ffn
        return {
            "attn_norm": (h,), "wq": (h, q), "wk": (h, kv), "wv": (h, kv), "wo": (q, h),
            "ffn_norm": (h,), "w_gate": (h, f), "w_up": (h, f), "w_down": (f, h),
        }

    def astype(self, dtype: npt.DTypeLike) -> LayerWeights:
        """A copy with every array converted to ``dtype``."""
        return LayerWeights(**{f.name: getattr(self, f.name).astype(dtype) for f in fields(self)})


@dataclass(frozen=True)
class LlamaWeights:
    """A whole model. For tied embeddings ``lm_head`` is ``embed.T`` (a view, not a copy).

    Shapes are checked against ``config`` on construction (ValueError on mismatch).
    """

    config: LlamaConfig
    embed: Array  # (vocab, hidden)
    layers: tuple[LayerWeights, ...]
    final_norm: Array  # (hidden,)
    lm_head: Array  # (hidden, vocab)

    def __post_init__(self) -> None:
        c = self.config
        if len(self.layers) != c.n_layers:
            raise ValueError(f"expected {c.n_layers} layers, got {len(self.layers)}")
        expected = {
            "embed": (c.vocab, c.hidden), "final_norm": (c.hidden,), "lm_head": (c.hidden, c.vocab),
        }
        for name, shape in expected.items():
            if getattr(self, name).shape != shape:
                raise ValueError(f"{name} has shape {getattr(self, name).shape}, expected {shape}")
        layer_shapes = LayerWeights.expected_shapes(c)
        for i, layer in enumerate(self.layers):
            for name, shape in layer_shapes.items():
                if getattr(layer, name).shape != shape:
                    raise ValueError(
                        f"layer {i} {name} has shape {getattr(layer, name).shape}, expected {shape}"
                    )

    def astype(self, dtype: npt.DTypeLike) -> LlamaWeights:
        """A copy with every array converted to ``dtype``; a tied head stays a view of ``embed``."""
        embed = self.embed.astype(dtype)
        return replace(
            self,
            embed=embed,
            layers=tuple(layer.astype(dtype) for layer in self.layers),
            final_norm=self.final_norm.astype(dtype),
            lm_head=embed.T if self.config.tied_embeddings else self.lm_head.astype(dtype),
        )


def random_weights(
    config: LlamaConfig, seed: int = 0, dtype: npt.DTypeLike = np.float64
) -> LlamaWeights:
    """Random weights for tests and cost measurements (float64 by default, or float32).

    Projections are N(0, 1/fan_in) so every projection keeps unit-scale inputs at unit scale;
    embeddings are N(0, 1) so the residual stream is O(1) from the start; norm gains are
    1 + N(0, 0.1^2) so they are exercised but harmless. A tied head therefore gives logits of
    standard deviation about sqrt(hidden); an untied head is N(0, 1/hidden) and gives O(1) logits.
    This is ``numpy.random`` on purpose: test data, never protocol randomness.
    """
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")

    def normal(shape: tuple[int, ...], std: float) -> Array:
        a = rng.standard_normal(shape, dtype=dtype)
        a *= std
        return a

    def gain(shape: tuple[int, ...]) -> Array:
        return 1.0 + normal(shape, 0.1)

    layers = []
    for _ in range(config.n_layers):
        arrays = {
            name: gain(shape) if len(shape) == 1 else normal(shape, shape[0] ** -0.5)
            for name, shape in LayerWeights.expected_shapes(config).items()
        }
        layers.append(LayerWeights(**arrays))
    embed = normal((config.vocab, config.hidden), 1.0)
    final_norm = gain((config.hidden,))
    lm_head = (
        embed.T if config.tied_embeddings
        else normal((config.hidden, config.vocab), config.hidden ** -0.5)
    )
    return LlamaWeights(config, embed, tuple(layers), final_norm, lm_head)
