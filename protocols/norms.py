"""RMSNorm and LayerNorm with one rsqrt per row, correct for massive activations.

RMSNorm(x) = x / sqrt(mean(x^2) + eps) * w;  LayerNorm(x) = (x - mean x) / sqrt(var + eps)
* w + b. Real models have rows with |x| ~ 2^15 (SmolLM2's first token), whose squares
overflow the ring at 2 x 18 fractional bits (x^2 2^36 > 2^63); PUMA's implementation gets
such rows wrong. Here every row is right for |x| <= ``max_abs`` (default 2^16), by two
sums of squares per row, both in one dot product (one ring element per row on the wire):

- *precise*: S_p = sum v^2 exactly in the ring (36 fractional bits, no truncation), valid
  while sum v^2 < 2^25; full precision for small rows (eps = 1e-5 alone is 6.9e5 units).
- *wide*: S_w = sum (v / 2^k)^2 with v / 2^k truncated first (k = 8 for RMSNorm rows of 576
  values up to 2^16), valid for every row up to ``max_abs``. RMSNorm can be given this wide
  copy by the product that made x (``wide``: :func:`.arith.finish_product_wide`, within
  1 + 2^-k units of x / 2^k instead of 1: the bound below grows by that factor, 1.004).

rsqrt of both is one :func:`.segments.segmented_power` over two ranges (all comparisons in
one batch, all candidates in another), sqrt(n) of the mean and each path's exponent folded
into the candidates' coefficients. The wide range starts at S_w = 2^j (j = 60 - 2k) and its
first comparison a = [S_w < 2^j] *is* the selection, made in the comparisons' opening round:
where a = 1 the precise path's result is taken, else the wide path's, whose relative error is
then below sqrt(n) / 2^(j/2) (5.7e-6 for RMSNorm's 576 values, 1.3e-5 for LayerNorm's 768:
the truncations' error in S_w, halved by the square root). The precise range ends where S_p
can be while a = 1 (:func:`_precise_top`): with u = v / 2^k and the wide copy within
delta = 1 + 2^-k units of u, S_p < 2^2k (sqrt(2^j - eps_w) + delta sqrt(n))^2 + eps_p =
2^(j+2k) (1 + 1.2e-5) for RMSNorm's 576 (1 + 2.7e-5 for LayerNorm's 768), within the
extension (2^-14) of octave j + 2k - 1, its last. Which bits does a imply? The wide range's
all (a = 1 makes them 1: no product). The precise range's none: above the switch it has no
threshold, and below it, where a = 0, S_p may lie beyond the comparisons' bound 2^62 or
wrap around the ring (from sum v^2 = 2^26 at 18 fractional bits: a row with an entry of
2^13, or RMSNorm's of 576 with an rms of 341, as SmolLM2's first token), which makes its
comparisons arbitrary bits; so all of them (95 for RMSNorm's rows of 576) take the true
product with a (two products each beside the opening, :mod:`.segments`), and the precise
path's garbage on rows too large for it drops out exactly.

LayerNorm first forms d = n x - sum x exactly (local), then v = d / 2^s (s = ceil(log2 n),
one truncation beside the wide path's: v = a (x - mean) with a = n / 2^s), and normalises v
with eps a^2. Then y = v rsqrt (one fused multiplication+truncation, rsqrt carried at
61 - f - log2 sqrt(n) fractional bits), then * w (public: local scale and truncation; secret:
a fixed-point multiplication), then + b.

Cost (3 parties together; ``costs.py``): 8 rounds (+2 with a weight): truncation 2, rsqrt 4
(the comparisons 3 beside the candidates' 3 TP1 truncations, then the opening with both
paths' selection), product 2. The sums of squares cost no round of their own: their
3-out-of-3 shares (:func:`.arith.dot_share`) go straight into the rsqrt, whose first round
(the comparisons' leaves with the evaluators' swap of their shares, t_m's TP1 on
3-out-of-3 shares under a second zero-sharing: :func:`.segments.segmented_power`, whose
docstrings give the security argument) replaces their resharing. RMSNorm given its wide
copy (``wide``) skips the truncation: 6 rounds. Given material made without TP1 tuples
(:func:`.segments.prepare_segment_batches`' ``tuples=False``), the rsqrt truncates its
candidates in 2 rounds each: 3 rounds more (9 rounds given the wide copy, 11 rounds
without; ``rms_norm(..., tuples=False)`` makes such material itself), about 28 kB
fewer offline per row of 576 (35.9 -> 7.7 kB for (8, 576): the comparisons' material
only), online about the same. Bytes per element online + offline: 107.8
+ 62.37 for RMSNorm (8, 576) (111.28 + 68.18 for one row), 125.83 + 48.4 for LayerNorm
(8, 768): per element the truncation(s) (25 bytes each) and the product (45); per row of
576 the rsqrt's 22 kB online and 48 kB offline (149 comparisons with their products, 95 of
them with two more, 150 candidates, 50 octaves; offline mostly the candidates' TP1 tuples,
40 kB).
Accuracy (tests/test_nonlinear_norms.py, rows from all zeros to every entry at 2^16, one
entry at 22,500, a mean of 2^15, sums of squares on both sides of the switch between the
paths): rsqrt's relative error is <= 1.3e-6 on the precise path and below the wide path's
bound above (the tests allow 2e-5), so RMSNorm's output is within 2e-5 |y| + 4 units
(measured on SmolLM2-like rows (8, 576): max abs 1.4e-5; relative <= 2.3e-6 where |y| > 2).
LayerNorm adds the rounding of v (one unit of x - mean), which 1/sigma amplifies: 1.4e-3 for
a row with sigma = 0.001 (1/sigma = 300); 2 units for sigma >= 1.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import numpy.typing as npt

from puma_async.context import Context, Ready, protocol

from . import ring
from .arith import dot_share, mul_fxp
from .fixedpoint import fixed_point
from .polynomial import HEADROOM_BITS, repeat_last
from .reciprocal import RSQRT_SEGMENTS
from .ring import RingArray
from .segments import (
    EXTENSION,
    Exponents,
    SegmentMaterial,
    SegmentPlan,
    plan_segments,
    prepare_segments,
    segmented_power,
)
from .shares import AShare, stack
from .trunc import truncate

Weight = AShare | npt.ArrayLike | None
MAX_ABS = 2.0**16
"""The default bound on |x| the norms are correct for (SmolLM2's rows reach 2^15)."""


def wide_shift(n: int, max_abs: float, frac_bits: int) -> int:
    """k of the wide path for rows of n values |v| <= max_abs: n (max_abs / 2^k)^2 2^(2f) < 2^62."""
    return max(0, math.floor((math.log2(n) + 2 * math.log2(max_abs) + 2 * frac_bits - 62) / 2) + 1)


@protocol
async def rms_norm(
    ctx: Context,
    x: AShare,
    weight: Weight = None,
    *,
    eps: float = 1e-5,
    max_abs: float = MAX_ABS,
    wide: AShare | None = None,
    pre: SegmentMaterial | None = None,
    out_frac: int | None = None,
    tuples: bool = True,
) -> AShare:
    """RMSNorm of fixed-point x over its last axis, times ``weight`` (public, secret or None).

    Correct for |x| <= max_abs (and eps > 0 for all-zero rows). ``wide``: x / 2^k (k =
    :func:`wide_shift`) within 1 + 2^-k units, made by the product that made x
    (:func:`.arith.finish_product_wide`); None: truncated here (2 rounds). ``pre``: the
    rsqrt's offline material (TP1 tuples and the comparisons'), made ahead
    (:func:`rms_norm_tuples`) (None: beside the sums, with TP1 tuples unless ``tuples`` is
    False: then 11 rounds, module docstring). ``out_frac``: the output's fractional bits,
    from f (None) to f + rho's (x rho truncated by fewer bits: its unit smaller, at no cost,
    for a product that reads it; ValueError outside, before any message).
    Cost and accuracy: module docstring.
    """
    f = fixed_point(ctx).frac_bits
    rho_frac = _rho_frac(ctx, x.shape[-1])
    extra = 0 if out_frac is None else out_frac - f
    if not 0 <= extra <= rho_frac:
        raise ValueError(f"out_frac must be in [{f}, {f + rho_frac}], got {out_frac}")
    rho = await rms_rsqrt(ctx, x, wide, eps=eps, max_abs=max_abs, frac_bits=rho_frac, pre=pre,
                          tuples=tuples)
    return await _scale_rows(ctx, x, rho, rho_frac - extra, weight, None)


def rms_norm_tuples(
    ctx: Context, shape: tuple[int, ...], *, eps: float = 1e-5, max_abs: float = MAX_ABS,
    frac_bits: int | None = None,
) -> tuple[SegmentPlan, int]:
    """What the TP1 tuples of :func:`rms_norm` on x of ``shape`` are for (public): make them
    ahead with :func:`.segments.prepare_segments` (or a pass's all at once,
    :func:`.segments.prepare_segment_batches`) and pass them as ``pre``. ``frac_bits``: those
    of :func:`rms_rsqrt`'s rho when the tuples are for it (None: rms_norm's)."""
    n = shape[-1]
    k = wide_shift(n, max_abs, fixed_point(ctx).frac_bits)
    plan = _rsqrt_plan(ctx, n, k, eps, _rho_frac(ctx, n) if frac_bits is None else frac_bits)
    return plan, math.prod(shape[:-1])


async def rms_rsqrt(
    ctx: Context,
    x: AShare,
    wide: AShare | None = None,
    *,
    eps: float,
    max_abs: float,
    frac_bits: int,
    pre: SegmentMaterial | None = None,
    tuples: bool = True,
) -> AShare:
    """rho = 1 / sqrt(mean(x^2) + eps) per row (shape x.shape[:-1]) at ``frac_bits``: RMSNorm
    without its product x rho (``wide``, ``pre`` and ``tuples`` as :func:`rms_norm`'s).
    Relative error as the module docstring's rsqrt, plus rho's resolution 2^-frac_bits."""
    k = wide_shift(x.shape[-1], max_abs, fixed_point(ctx).frac_bits)
    if wide is None:
        wide = await truncate(ctx, x, bits=k)
    return await _rsqrt_rows(ctx, x, wide, k, eps, frac_bits, pre, tuples)


@protocol
async def layer_norm(
    ctx: Context,
    x: AShare,
    weight: Weight = None,
    bias: Weight = None,
    *,
    eps: float = 1e-5,
    max_abs: float = MAX_ABS,
) -> AShare:
    """LayerNorm of fixed-point x over its last axis, then ``* weight + bias``.

    Correct for |x| <= max_abs (and eps > 0 for constant rows). Cost and accuracy: module
    docstring.
    """
    n = x.shape[-1]
    s = math.ceil(math.log2(n))
    a = n / 2**s
    k = wide_shift(n, 2 * max_abs * a, fixed_point(ctx).frac_bits)  # |v| <= 2 max_abs a
    d = x.scale(n) - repeat_last(x.sum(axis=-1), n)  # n (x - mean), exact
    v, v_wide = await ctx.gather(
        lambda c: truncate(c, d, bits=s), lambda c: truncate(c, d, bits=s + k)
    )
    rho_frac = _rho_frac(ctx, n)
    rho = await _rsqrt_rows(ctx, v, v_wide, k, eps * a * a, rho_frac, None, True)
    return await _scale_rows(ctx, v, rho, rho_frac, weight, bias)


def _rho_frac(ctx: Context, n: int) -> int:
    """Fractional bits of rho for y = v rho: |v rho| <= sqrt(n) keeps v rho below 2^61."""
    return HEADROOM_BITS - fixed_point(ctx).frac_bits - math.ceil(math.log2(math.sqrt(n)))


def _rsqrt_plan(ctx: Context, n: int, k: int, eps: float, rho_frac: int) -> SegmentPlan:
    """The rsqrt's two ranges for rows of n (module docstring): the precise sum at 2f
    fractional bits below the switch, the wide sum from 2^j (j = 60 - 2k) on."""
    f = fixed_point(ctx).frac_bits
    j_select = 60 - 2 * k
    eps_units = _eps_units(ctx, n, k, eps)
    lo = max(0, min(eps_units[0].bit_length() - 1, j_select - 1))
    return plan_segments(RSQRT_SEGMENTS, (
        Exponents(lo, max(lo, _precise_top(n, k, j_select, *eps_units)), 2 * f, math.sqrt(n)),
        Exponents(j_select, 61, 2 * f - 2 * k, math.sqrt(n)),
    ), rho_frac)


def _eps_units(ctx: Context, n: int, k: int, eps: float) -> list[int]:
    """n eps in the precise and the wide sums' units."""
    f = fixed_point(ctx).frac_bits
    return [round(n * eps * 2.0 ** (2 * (f - shift))) for shift in (0, k)]


async def _rsqrt_rows(
    ctx: Context, v: AShare, v_wide: AShare, k: int, eps: float, rho_frac: int,
    pre: SegmentMaterial | None, tuples: bool,
) -> AShare:
    """1 / sqrt(mean(v^2) + eps) per row from v and v_wide = v / 2^k: the sums of squares
    (1 round) and the rsqrt on the two paths' ranges (module docstring); its offline
    material ``pre`` (:func:`.segments.prepare_segments`: the candidates' TP1 tuples, unless
    made without, and the comparisons' material), or prepared beside the sums when None
    (with TP1 tuples if ``tuples``; 4 offline rounds, which the rsqrt then waits for:
    latency, not online rounds)."""
    n = v.shape[-1]
    plan = _rsqrt_plan(ctx, n, k, eps, rho_frac)
    eps_units = np.array(_eps_units(ctx, n, k, eps), dtype=np.uint64)
    both = stack([v, v_wide])

    async def sums(c: Context) -> RingArray:
        """3-out-of-3 shares of the sums (+ eps at P_0), untruncated: no resharing round."""
        z = await dot_share(c, both, both)
        if c.role == 0:
            z = ring.add(z, eps_units.reshape(2, *[1] * (len(v.shape) - 1)))
        return z

    made = Ready(pre) if pre is not None else functools.partial(
        prepare_segments, plan=plan, rows=v.size // n, tuples=tuples)
    material, z = await ctx.gather(made, sums)
    return await segmented_power(ctx, z, plan, material)


def _precise_top(n: int, k: int, j: int, eps_p: int, eps_w: int) -> int:
    """The precise range's last octave: the first whose end, extended by
    :data:`.segments.EXTENSION`, is above every S_p of a row with S_w < 2^j.

    With u = v / 2^k and the wide copy w within delta = 1 + 2^-k units of u, sqrt(sum u^2) <=
    sqrt(sum w^2) + delta sqrt(n) (the triangle inequality), so S_w = sum w^2 + eps_w < 2^j
    gives S_p = 2^2k sum u^2 + eps_p < 2^2k (sqrt(2^j - eps_w) + delta sqrt(n))^2 + eps_p:
    2^(j+2k) (1 + 1.2e-5) for RMSNorm's rows of 576 (1 + 2.7e-5 for LayerNorm's 768), within
    the extension of octave j + 2k - 1.
    """
    delta = 1 + 2.0**-k
    bound = 4.0**k * (math.sqrt(2.0**j - eps_w) + delta * math.sqrt(n)) ** 2 + eps_p
    return math.ceil(math.log2(bound * (1 + 1e-12) / (1 + EXTENSION))) - 1


async def _scale_rows(
    ctx: Context, v: AShare, rho: AShare, bits: int, weight: Weight, bias: Weight
) -> AShare:
    """v rho (rho per row), truncated by ``bits`` (2 rounds), then * weight + bias."""
    y = await mul_fxp(ctx, v, repeat_last(rho, v.shape[-1]), bits=bits)
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


__all__ = ["MAX_ABS", "layer_norm", "rms_norm", "rms_norm_tuples", "rms_rsqrt", "wide_shift"]
