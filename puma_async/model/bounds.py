"""Certified bounds on the SiLU inputs, computed by the model owner from the weights.

The gate input of layer i is g = h @ W'_gate with h = x / sqrt(mean(x^2) + eps), the RMSNorm
output (its gain is folded into W'_gate = diag(g_ffn) W_gate: ``protocols.llama.weight_tensors``).
||h||_2^2 = sum x^2 / (sum x^2 / n + eps) <= n for every input x, so by Cauchy-Schwarz

    |g_j| <= sqrt(n) ||W'_gate[:, j]||_2 <= sqrt(n) max_j ||W'_gate[:, j]||_2 =: C_i

for every token of every prompt: a rigorous bound that depends on the weights alone. The secure
pass computes g with fixed-point errors (the norm's relative error ~2e-5 plus 4 units per element,
each weight's encoding rounding of 2^-19, the product's truncation: below 2e-3 in all for n = 576),
so the published bound is B_i = the power of two >= 1.01 C_i + 1 (:data:`MARGIN`). SiLU compares
its input on a carry chain just long enough for |g| < B_i (``protocols.activations.silu``).

What it reveals: one number per layer about the weights, a power of two above the largest
column norm of W'_gate times sqrt(n). The model owner publishes it in the architecture table
(``python -m puma_async.party export``), where every role digests it; the owner checks the
declared bounds against its weights before sharing them (:func:`check_gate_bounds`).

SmolLM2-135M-Instruct: C_i from 26.9 (layer 0) to 187.8 (layer 28), i.e. B_i = 32 to 256
(``session.models.SMOLLM2_ARCHITECTURE``); the largest |g| measured on text is 52 (the design's
``magnitudes.py``): the bound is ~3.6x loose, two chain bits at most.
"""

from __future__ import annotations

import math

import numpy as np

from puma_async.errors import ModelFileError
from puma_async.model.config import LlamaConfig
from puma_async.model.weights import LlamaWeights

MARGIN = (1.01, 1.0)
"""B = the power of two >= MARGIN[0] C + MARGIN[1]: room for the fixed-point errors."""


def gate_norm_bounds(weights: LlamaWeights) -> tuple[float, ...]:
    """C_i = sqrt(n) max_j ||diag(g_ffn) W_gate[:, j]||_2 per layer (float64)."""
    n = weights.config.hidden
    bounds = []
    for layer in weights.layers:
        folded = np.asarray(layer.ffn_norm, np.float64)[:, None] * np.asarray(
            layer.w_gate, np.float64)
        bounds.append(math.sqrt(n) * float(np.sqrt((folded * folded).sum(axis=0)).max()))
    return tuple(bounds)


def certify_gate_bounds(weights: LlamaWeights) -> tuple[int, ...]:
    """The published bounds B_i: powers of two >= 1.01 C_i + 1 (module docstring)."""
    scale, extra = MARGIN
    return tuple(1 << max(0, math.ceil(math.log2(scale * c + extra)))
                 for c in gate_norm_bounds(weights))


def check_gate_bounds(weights: LlamaWeights, config: LlamaConfig, where: str) -> None:
    """:class:`ModelFileError` unless every bound ``config`` declares is at least the one the
    weights certify (no declared bounds: nothing to check)."""
    if not config.gate_bounds:
        return
    certified = certify_gate_bounds(weights)
    low = [f"layer {i}: {d} < {c}" for i, (d, c) in
           enumerate(zip(config.gate_bounds, certified, strict=True)) if d < c]
    if low:
        raise ModelFileError(f"{where}: the declared gate bounds are below what the weights "
                             f"certify ({'; '.join(low)})")


__all__ = ["MARGIN", "certify_gate_bounds", "check_gate_bounds", "gate_norm_bounds"]
