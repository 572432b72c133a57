"""RMSNorm and LayerNorm with one rsqrt per row, correct for massive activations.

RMSNorm(x) = x / sqrt(mean(x^2) + eps) * w;  LayerNorm(x) = (x - mean x) / sqrt(var + eps)
* w + b. Real models have rows with |x| ~ 2^15 (SmolLM2's first token), whose squares
overflow the ring at 2 x 18 fractional bits (x^2 2^36 > 2^63); PUMA's implementation gets
such rows wrong. Here every row is right for |x| <= ``max_abs`` (default 2^16), by two
sums of squares per row, both in one dot product (one ring element per row on the wire):

- *precise*: S_p = sum v^2 exactly in the ring (36 fractional bits, no truncation), valid
  while sum v^2 < 2^25; full precision for small rows (eps = 1e-5 alone is 6.9e5 units).
- *wide*: S_w = sum (v / 2^k)^2 with v / 2^k truncated first (k = 8 for RMSNorm rows of 576
  values up to 2^16), valid for every row up to ``max_abs``.

rsqrt of both is one :func:`.segments.segmented_power` over a chain of two ranges (all
comparisons in one batch, all candidates in another), sqrt(n) of the mean and each path's
exponent folded into the candidates' coefficients. The wide range starts at S_w = 2^j
(j = 60 - 2k) and its first comparison [S_w >= 2^j] *is* the selection: below it the precise
path's result is taken (then S_p < 2^61, in the precise range), above it the wide path's,
whose relative error is then below sqrt(n) / 2^(j/2) (5.7e-6 for RMSNorm's 576 values, 1.3e-5
for LayerNorm's 768: the truncations' error in S_w, halved by the square root); the precise
path's garbage on rows too large for it cancels exactly.

LayerNorm first forms d = n x - sum x exactly (local), then v = d / 2^s (s = ceil(log2 n),
one truncation beside the wide path's: v = a (x - mean) with a = n / 2^s), and normalises v
with eps a^2. Then y = v rsqrt (one fused multiplication+truncation, rsqrt carried at
61 - f - log2 sqrt(n) fractional bits), then * w (public: local scale and truncation; secret:
a fixed-point multiplication), then + b.

Cost (3 parties together; ``costs.py``): 14 rounds from 12,288 elements on (+2 with a
weight): truncation 2, sums 1, rsqrt 7 + 2 (one round per path), product 2; 13 rounds on
fewer elements, where the truncations leave their dealer idle. 19 messages sent by P0 for
RMSNorm (8, 576), 30 for LayerNorm (128, 768). Bytes per element: 111.87 for RMSNorm
(8, 576) (114.80 for one row), 129.31 for LayerNorm (8, 768): per element the truncation(s)
(25 bytes each) and the product (45); per row 24 kB, the rsqrt's (152 comparisons with
their products, 153 candidates, 51 octaves).
Accuracy (tests/test_nonlinear_norms.py, rows from all zeros to every entry at 2^16, one
entry at 22,500, a mean of 2^15, sums of squares on both sides of the switch between the
paths): rsqrt's relative error is <= 1.3e-6 on the precise path and below the wide path's
bound above (the tests allow 2e-5), so RMSNorm's output is within 2e-5 |y| + 4 units
(measured on SmolLM2-like rows (8, 576): max abs 1.4e-5; relative <= 2.3e-6 where |y| > 2).
LayerNorm adds the rounding of v (one unit of x - mean), which 1/sigma amplifies: 1.4e-3 for
a row with sigma = 0.001 (1/sigma = 300); 2 units for sigma >= 1.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from puma_async.context import Context, protocol

from .arith import dot_fxp, mul_fxp
from .fixedpoint import fixed_point
from .polynomial import HEADROOM_BITS, repeat_last
from .reciprocal import RSQRT_SEGMENTS
from .segments import Exponents, plan_segments, segmented_power
from .shares import AShare, stack
from .trunc import truncate

Weight = AShare | npt.ArrayLike | None


@protocol
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


@protocol
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
    f = fixed_point(ctx).frac_bits
    n = d.shape[-1]
    a = n / 2**s if s else 1.0
    eps_a = eps * a * a
    v_bound = d_bound / 2**s
    # the wide path's shift: n (v_bound / 2^k)^2 2^(2f) < 2^62
    k = max(0, math.floor((math.log2(n) + 2 * math.log2(v_bound) + 2 * f - 62) / 2) + 1)
    j_select = 60 - 2 * k
    rho_frac = HEADROOM_BITS - f - math.ceil(math.log2(math.sqrt(n)))  # |v rho| <= sqrt(n)
    eps_units = [round(n * eps_a * 2.0 ** (2 * (f - shift))) for shift in (0, k)]
    lo = max(0, min(eps_units[0].bit_length() - 1, j_select - 1))
    plan = plan_segments(RSQRT_SEGMENTS, (
        # the precise path: S_p < 2^(j_select + 2k + 1) whenever S_w < 2^j_select
        Exponents(lo, j_select + 2 * k, 2 * f, math.sqrt(n)),
        Exponents(j_select, 61, 2 * f - 2 * k, math.sqrt(n)),
    ), rho_frac)
    v, v_wide = await ctx.gather(
        lambda c: truncate(c, d, bits=s), lambda c: truncate(c, d, bits=s + k)
    )
    both = stack([v, v_wide])
    sums = (await dot_fxp(ctx, both, both, 0)).add_public(
        ctx.role, np.array(eps_units, dtype=np.uint64).reshape(2, *[1] * (len(d.shape) - 1))
    )
    rho = await segmented_power(ctx, sums, plan)
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
