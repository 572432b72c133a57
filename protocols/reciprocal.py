"""Reciprocal and reciprocal square root of positive fixed-point values.

Both compute factor * x^e (e = -1 or -1/2) for x = X / 2^frac_in with an integer X known to
lie in [2^lo, 2^(hi+1)) (public bounds from the caller's input range):

1. **Normalisation by the highest set bit** (:func:`normalise`). The hi - lo comparisons
   [X >= 2^j], j = lo+1..hi, run as one batched comparison (8 rounds, 66 bytes per comparison
   in all, see :mod:`.compare`); they form a thermometer code of the top bit m, so any public
   table w_m is selected *locally* as w_lo + sum_j [X >= 2^j] (w_j - w_{j-1}). This replaces
   A2B, prefix-OR, bit reversal and bit-to-arithmetic of the top bit by one comparison round
   set, and makes every exponent-dependent constant free.
2. c = X / 2^(m+1) in [0.5, 1) is X times the selected 2^(top-m-1): one multiplication,
   fused with its truncation when hi >= F (top = max(hi + 1, F)), giving c with F
   fractional bits (F = ``ScalePlan.poly_frac``, chosen per call: up to 30); t = 4c - 3.
3. c^e = sum_k a_k t^k, a degree-7 polynomial: 3 levels of powers (:mod:`.polynomial`).
   Coefficients: minimax *relative* error on t in [-1, 1], fitted offline by Lawson's
   iteratively reweighted least squares on 20,001 points (numpy): 1.5e-6 for 1/c, 3.0e-7
   for 1/sqrt(c).
4. factor * 2^(e (m + 1 - frac_in)), odd exponents' sqrt(2) included, is folded into one
   public table per coefficient, a_k * scale(m), selected locally (step 1), and the result
   is the dot product sum_k t^k * table_k(m), truncated once (:func:`dot_fxp`). There is no
   separate parity compensation and no truncation of the polynomial itself.

Cost: 8 (comparisons) + 1 or 2 (c) + 3 x 2 (powers) + 2 (dot product) = 17 or 18 rounds.
Bytes per element, all parties: 66.25 per comparison (hi - lo of them, i.e.
log2(max_value / min_value)), about 44 per fused multiplication+truncation (8 of them):
857 for x in [0.5, 129], 2,857 for [2^-18, 2^20] (measured).
Errors (measured on 40,001-point log grids, tests/test_nonlinear_reciprocal.py): relative
error <= 2.6e-6 (reciprocal) and <= 1.2e-6 (rsqrt) wherever the output has at least 2^20
units at ``frac_out``; <= 5e-6 relative + 2 units (the bound tested) everywhere.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

from puma_async.runtime import Context

from .arith import fixed_point, matmul_fxp, mul_fxp
from .compare import is_negative
from .polynomial import HEADROOM_BITS, powers, repeat_last
from .ring import RingArray, neg, to_ring
from .shares import AShare, public_share, stack

NORM_FRAC = 30
"""The most fractional bits of t and its powers (:func:`plan_scale` may choose fewer)."""

RECIPROCAL_COEFFICIENTS = (
    1.3333313307334649, -0.4444437769773076, 0.148212007658832, -0.04940400204943655,
    0.01614759698826384, -0.005382533297901583, 0.002306813250085488, -0.0007689372139334981,
)
"""1/c = sum_k a_k t^k, t = 4c - 3, c in [0.5, 1]: max relative error 1.5e-6."""

RSQRT_COEFFICIENTS = (
    1.154700197445497, -0.1924496182518805, 0.048123282133797046, -0.013370895867175707,
    0.003845461910411435, -0.0011470033216300106, 0.00043747942398270875,
    -0.00013920194499317565,
)
"""1/sqrt(c) = sum_k a_k t^k, t = 4c - 3, c in [0.5, 1]: max relative error 3.0e-7 (SPU's
degree-4 polynomial: 8.2e-5; degree 4 here would save one round of powers at 7.4e-5)."""


@dataclasses.dataclass(frozen=True)
class Normalised:
    """x normalised by its top bit m in [lo, hi]: t = 4 x / 2^(m+1) - 3 and m's thermometer."""

    t: AShare
    steps: AShare  # [X >= 2^j] for j = lo+1..hi along the last axis (0/1 ring values)
    role: int

    def select(self, tables: RingArray) -> AShare:
        """Shares of tables[..., k, m - lo] for each element and k (local), shape (*x, K).

        ``tables`` (ring values) has hi - lo + 1 entries on its last axis, K on the one before,
        and its leading axes broadcast against x's.
        """
        return select_by_top_bit(self.steps.map(lambda a: a[..., None, :]), tables, self.role)


def select_by_top_bit(steps: AShare, w: RingArray, role: int) -> AShare:
    """w_lo + sum_j steps_j (w_j - w_{j-1}): table entry of the top bit, from its thermometer."""
    return steps.scale(w[..., 1:] - w[..., :-1]).sum(axis=-1).add_public(role, w[..., 0])


async def normalise(ctx: Context, x: AShare, lo: int, hi: int, frac: int) -> Normalised:
    """Normalise positive integers X in [2^lo, 2^(hi+1)), hi < 62 (garbage outside); t has
    ``frac`` fractional bits.

    Cost: one batched comparison of hi - lo values per element (8 rounds), then one
    multiplication (1 round) fused with a truncation (2 in all) when hi >= frac.
    """
    if not 0 <= lo < hi < 62:
        raise ValueError(f"need 0 <= lo < hi < 62, got lo={lo}, hi={hi}")
    role = ctx.role
    thresholds = np.array([1 << j for j in range(lo + 1, hi + 1)], dtype=np.uint64)
    below = await is_negative(ctx, repeat_last(x, hi - lo).add_public(role, neg(thresholds)))
    steps = (-below).add_public(role, 1)
    # c = X 2^(frac-m-1) exactly, or X 2^(hi-m) in [2^hi, 2^(hi+1)) truncated to frac bits
    top = max(hi + 1, frac)
    shifts = np.array([1 << (top - m - 1) for m in range(lo, hi + 1)], dtype=np.uint64)
    c = await mul_fxp(ctx, x, select_by_top_bit(steps, shifts, role), bits=top - frac)
    t = c.scale(4).add_public(role, neg(3 << frac))
    return Normalised(t, steps, role)


@dataclasses.dataclass(frozen=True)
class Exponents:
    """Inputs x = X / 2^frac_in with integer X in [2^lo, 2^(hi+1)); output factor * x^e."""

    lo: int
    hi: int
    frac_in: int
    factor: float = 1.0


@dataclasses.dataclass(frozen=True)
class ScalePlan:
    """How factor * x^e = sum_k a_k t^k * scale(m) is assembled in the ring.

    t^k is computed with ``poly_frac`` fractional bits (t^0 = 1 too), its coefficient times
    the scale is the selected integer tables[r][k, m - lo] of its range r, and the products'
    sum (one dot product) is truncated by ``shift`` bits.
    """

    poly_frac: int
    shift: int
    tables: tuple[RingArray, ...]


@functools.cache
def plan_scale(
    exponent: float, coefficients: tuple[float, ...], ranges: tuple[Exponents, ...],
    frac_out: int,
) -> ScalePlan:
    """Fixed-point plan for factor * x^e on the given input ranges, output at ``frac_out``
    (cached: the tables are shared, read-only).

    The dot product stays below 2^61 on every range; poly_frac balances the relative
    precision of t^k against that of the smallest table entry, but never leaves the rounding
    of the tables more than 1/4 unit of the output in all (capped at NORM_FRAC).
    """
    size = math.log2(sum(abs(a) for a in coefficients))
    top = max(math.log2(r.factor) + exponent * (r.lo + 1 - r.frac_in) + size for r in ranges)
    shift = HEADROOM_BITS - frac_out - math.ceil(top)
    low = min(math.log2(r.factor) + exponent * (r.hi + 1 - r.frac_in) for r in ranges)
    poly_frac = min(
        NORM_FRAC,
        max(math.floor((low + frac_out + shift) / 2),
            shift - 3 - math.ceil(math.log2(len(coefficients)))),
    )
    if shift < 0 or poly_frac < 8:
        raise ValueError(f"output range too wide for the ring at {frac_out} fractional bits")

    def scale(r: Exponents, m: int) -> float:
        return 2.0 ** (
            math.log2(r.factor) + exponent * (m + 1 - r.frac_in) + frac_out + shift - poly_frac
        )

    tables = tuple(
        to_ring(np.array([[round(a * scale(r, m)) for m in range(r.lo, r.hi + 1)]
                          for a in coefficients], dtype=object))
        for r in ranges
    )
    for table in tables:
        table.flags.writeable = False
    return ScalePlan(poly_frac, shift, tables)


def exponents(ctx: Context, min_value: float | None, max_value: float) -> Exponents:
    """The top-bit range of fixed-point inputs in [min_value, max_value] (min: one unit)."""
    fx = fixed_point(ctx)
    lo_int = 1 if min_value is None else max(1, math.floor(min_value * fx.scale))
    hi_int = math.ceil(max_value * fx.scale)
    return Exponents(lo_int.bit_length() - 1, hi_int.bit_length() - 1, fx.frac_bits)


async def power(
    ctx: Context,
    x: AShare,
    exponent: float,
    coefficients: tuple[float, ...],
    ranges: Exponents,
    frac_out: int,
) -> AShare:
    """factor * x^exponent for x in ``ranges`` (see the module docstring for cost and error)."""
    plan = plan_scale(exponent, coefficients, (ranges,), frac_out)
    norm = await normalise(ctx, x, ranges.lo, ranges.hi, plan.poly_frac)
    terms = await power_terms(ctx, norm.t, len(coefficients) - 1, plan.poly_frac)
    return await dot_fxp(ctx, terms, norm.select(plan.tables[0]), plan.shift)


async def power_terms(ctx: Context, t: AShare, degree: int, frac: int) -> AShare:
    """(1, t, t^2, ..., t^degree) at ``frac`` bits along a new last axis (|t| <= 1)."""
    pw = await powers(ctx, t, range(2, degree + 1), frac=frac)
    one = public_share(ctx.role, np.full(t.shape, 1 << frac, dtype=np.uint64))
    return stack([one, *(pw[k] for k in range(1, degree + 1))], axis=-1)


async def dot_fxp(ctx: Context, a: AShare, b: AShare, bits: int) -> AShare:
    """sum over the last axis of a * b, truncated once by ``bits``: 2 rounds, one product."""
    prod = await matmul_fxp(ctx, a.map(lambda v: v[..., None, :]), b.map(lambda v: v[..., None]),
                            bits=bits)
    return prod[..., 0, 0]


async def reciprocal(
    ctx: Context,
    x: AShare,
    *,
    max_value: float,
    min_value: float | None = None,
    frac_out: int | None = None,
) -> AShare:
    """1/x for fixed-point x in [min_value (default one unit), max_value], at ``frac_out`` bits.

    Garbage outside that range. Cost: 17-18 rounds; log2(max_value / min_value) comparisons
    and 8 fused multiplications per element. Relative error <= 2.6e-6 (measured; module
    docstring).
    """
    out = fixed_point(ctx).frac_bits if frac_out is None else frac_out
    return await power(
        ctx, x, -1.0, RECIPROCAL_COEFFICIENTS, exponents(ctx, min_value, max_value), out
    )


async def rsqrt(
    ctx: Context,
    x: AShare,
    *,
    max_value: float,
    min_value: float | None = None,
    frac_out: int | None = None,
) -> AShare:
    """1/sqrt(x) for fixed-point x in [min_value (default one unit), max_value].

    Garbage outside that range. Cost: as :func:`reciprocal`. Relative error <= 1.2e-6
    (measured; module docstring).
    """
    out = fixed_point(ctx).frac_bits if frac_out is None else frac_out
    return await power(
        ctx, x, -0.5, RSQRT_COEFFICIENTS, exponents(ctx, min_value, max_value), out
    )


__all__ = [
    "NORM_FRAC", "RECIPROCAL_COEFFICIENTS", "RSQRT_COEFFICIENTS", "Exponents", "Normalised",
    "ScalePlan", "dot_fxp", "exponents", "normalise", "plan_scale", "power", "power_terms",
    "reciprocal", "rsqrt",
    "select_by_top_bit",
]
