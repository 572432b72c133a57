"""RMSNorm and LayerNorm with one rsqrt per row, correct for massive activations.

RMSNorm(x) = x / sqrt(mean(x^2) + eps) * w;  LayerNorm(x) = (x - mean x) / sqrt(var + eps)
* w + b. Real models have rows with |x| ~ 2^15 (SmolLM2's first token), whose squares
overflow the ring at 2 x 18 fractional bits (x^2 2^36 > 2^63); PUMA's implementation gets
such rows wrong. Here every row is right for |x| <= ``max_abs`` (default 2^16), by two
paths computed side by side and selected securely per row:

- *precise*: S_p = sum v^2 exactly in the ring (36 fractional bits, no truncation), valid
  while sum v^2 < 2^26; full precision for small rows (eps = 1e-5 alone is 6.9e5 units).
- *wide*: S_w = sum (v / 2^k)^2 with v / 2^k truncated first (k = 8 for RMSNorm rows of 576
  values up to 2^16), valid for every row up to ``max_abs``.
- Both sums go through one batched normalisation (:func:`.reciprocal.normalise`: the
  comparisons [S >= 2^j]); the wide path's comparison at j = 60 - 2k *is* the selection bit
  b = [S_w >= 2^(60-2k)] (then S_p < 2^61, so the precise path is valid whenever b = 0), and
  when b = 1 the wide path's relative error is below 2 sqrt(n) / 2^(30-k) (1.1e-5). The
  wide path's scale table is zero below j, so b * scale_w is local; (1 - b) * scale_p is one
  multiplication off the critical path. rsqrt(S) = sum over paths of c^(-1/2)(t) * scale,
  with the sqrt(n) of the mean and the paths' exponents folded into the public tables; the
  unused path's scale is exactly 0, so its (garbage) polynomial is cancelled exactly.

LayerNorm first forms d = n x - sum x exactly (local), then v = d / 2^s (s = ceil(log2 n),
one truncation: v = a (x - mean) with a = n / 2^s), and normalises v with eps a^2. Then
y = v rsqrt (one fused multiplication+truncation, rsqrt carried at 61 - f - log2 sqrt(n)
fractional bits), then * w (public: local scale and truncation; secret: a fixed-point
multiplication), then + b.

Cost (measured, 3 parties together): 23 rounds (+2 with weights); RMSNorm (8, 576) 127 and
LayerNorm (128, 768) 151 bytes per element: per element a truncation (the wide path; and
LayerNorm's v, in the same round), 2 squares and one fused product; per row ~50
comparisons (one batch for both paths), 7 fused products, 8 multiplications and one dot
product (:func:`.reciprocal.dot_fxp`).
Accuracy (tests/test_nonlinear_norms.py, rows from all zeros to every entry at 2^16, one
entry at 22,500, a mean of 2^15): rsqrt's relative error is <= 2e-5 on every row, so
RMSNorm's output is within 2e-5 |y| + 4 units (measured max abs 7e-5 at |y| = 24, relative
6.8e-5 where |y| > 0.05, i.e. the output's own rounding). LayerNorm adds the rounding of
v (one unit of x - mean), which 1/sigma amplifies: 1.3e-3 for a row with sigma = 0.001
(1/sigma = 300); 2 units for sigma >= 1.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from puma_async.runtime import Context

from .arith import fixed_point, mul, mul_fxp, truncate
from .polynomial import HEADROOM_BITS, repeat_last
from .reciprocal import (
    RSQRT_COEFFICIENTS,
    Exponents,
    dot_fxp,
    normalise,
    plan_scale,
    power_terms,
)
from .shares import AShare, concatenate, stack

Weight = AShare | npt.ArrayLike | None


async def rms_norm(
    ctx: Context,
    x: AShare,
    weight: Weight = None,
    *,
    eps: float = 1e-5,
    max_abs: float = 2.0**16,
) -> AShare:
    """RMSNorm of fixed-point x over its last axis, times ``weight`` (public, secret or None).

    Correct for |x| <= max_abs (and eps > 0 for all-zero rows). Cost and accuracy: module
    docstring.
    """
    return await _normalise_rows(ctx, x, 0, eps, max_abs, weight, None)


async def layer_norm(
    ctx: Context,
    x: AShare,
    weight: Weight = None,
    bias: Weight = None,
    *,
    eps: float = 1e-5,
    max_abs: float = 2.0**16,
) -> AShare:
    """LayerNorm of fixed-point x over its last axis, then ``* weight + bias``.

    Correct for |x| <= max_abs (and eps > 0 for constant rows). Cost and accuracy: module
    docstring.
    """
    n = x.shape[-1]
    s = math.ceil(math.log2(n))
    d = x.scale(n) - repeat_last(x.sum(axis=-1), n)  # n (x - mean), exact
    return await _normalise_rows(ctx, d, s, eps, 2 * max_abs * n, weight, bias)


async def _normalise_rows(
    ctx: Context,
    d: AShare,
    s: int,
    eps: float,
    d_bound: float,
    weight: Weight,
    bias: Weight,
) -> AShare:
    """v w / sqrt(mean(v^2) + a^2 eps) (+ bias) for v = d / 2^s, a = n / 2^s (s = 0: a = 1)."""
    fx = fixed_point(ctx)
    f = fx.frac_bits
    n = d.shape[-1]
    a = n / 2**s if s else 1.0
    eps_a = eps * a * a
    v_bound = d_bound / 2**s
    # the wide path's shift: n (v_bound / 2^k)^2 2^(2f) < 2^62
    k = max(0, math.floor((math.log2(n) + 2 * math.log2(v_bound) + 2 * f - 62) / 2) + 1)
    j_select = 60 - 2 * k
    rho_frac = HEADROOM_BITS - f - math.ceil(math.log2(math.sqrt(n)))  # |v rho| <= sqrt(n)

    v, v_wide = await ctx.gather(
        lambda c: truncate(c, d, bits=s), lambda c: truncate(c, d, bits=s + k)
    )
    squares = await mul(ctx, stack([v, v_wide]), stack([v, v_wide]))
    sums = squares.sum(axis=-1)
    eps_units = [round(n * eps_a * 2.0 ** (2 * f)), round(n * eps_a * 2.0 ** (2 * f - 2 * k))]
    precise_sum = sums[0].add_public(ctx.role, eps_units[0])
    wide_sum = sums[1].add_public(ctx.role, eps_units[1])
    lo = min(eps_units[0].bit_length() - 1, j_select - 1)
    ranges = (
        Exponents(max(0, lo), 61, 2 * f, math.sqrt(n)),
        Exponents(j_select - 1, 61, 2 * f - 2 * k, math.sqrt(n)),
    )
    plan = plan_scale(-0.5, RSQRT_COEFFICIENTS, ranges, rho_frac)
    # both paths in one normalisation; the wide path's tables are 0 below 2^j_select
    wide_tables = plan.tables[1].copy()
    wide_tables[:, 0] = 0
    width = 62 - ranges[0].lo
    padded = np.zeros((len(RSQRT_COEFFICIENTS), width), dtype=np.uint64)
    padded[:, width - wide_tables.shape[1]:] = wide_tables
    norm = await normalise(
        ctx, stack([precise_sum, wide_sum]), ranges[0].lo, 61, plan.poly_frac
    )
    use_wide = norm.steps[1, ..., j_select - ranges[0].lo - 1]  # [S_w >= 2^j_select]
    scales = norm.select(np.stack([plan.tables[0], padded])[:, None])  # (2, rows, K + 1)
    degree = len(RSQRT_COEFFICIENTS) - 1

    async def gated(c: Context) -> AShare:  # (1 - use_wide) * the precise path's scales
        keep = repeat_last((-use_wide).add_public(c.role, 1), degree + 1)
        return await mul(c, keep, scales[0])

    precise_scales, terms = await ctx.gather(
        gated, lambda c: power_terms(c, norm.t, degree, plan.poly_frac)
    )
    # the unused path's scales are exactly 0: its (garbage) powers cancel exactly
    rho = await dot_fxp(
        ctx, concatenate([terms[0], terms[1]], axis=-1),
        concatenate([precise_scales, scales[1]], axis=-1), plan.shift,
    )
    y = await mul_fxp(ctx, v, repeat_last(rho, n), bits=rho_frac)
    return _add_bias(ctx, await _apply_weight(ctx, y, weight), bias)


async def _apply_weight(ctx: Context, v: AShare, weight: Weight) -> AShare:
    """v * weight at f bits (v itself when there is no weight): 0, 1 or 2 rounds."""
    if weight is None:
        return v
    if isinstance(weight, AShare):
        return await mul_fxp(ctx, v, AShare(*(np.broadcast_to(h, v.shape).copy()
                                              for h in (weight.first, weight.second))))
    fx = fixed_point(ctx)
    return await truncate(ctx, v.scale(fx.encode(np.broadcast_to(weight, v.shape))),
                          bits=fx.frac_bits)


def _add_bias(ctx: Context, y: AShare, bias: Weight) -> AShare:
    if bias is None:
        return y
    if isinstance(bias, AShare):
        return y + AShare(*(np.broadcast_to(h, y.shape) for h in (bias.first, bias.second)))
    return y.add_public(ctx.role, fixed_point(ctx).encode(np.broadcast_to(bias, y.shape)))


__all__ = ["layer_norm", "rms_norm"]
