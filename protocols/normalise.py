"""x^e of positive fixed-point values by normalisation, then one polynomial.

factor * x^e for x = X / 2^frac_in with an integer X known to lie in [2^lo, 2^(hi+1)) (public
bounds, :class:`.segments.Exponents`), with few bytes per element and 13-14 rounds
(:func:`.reciprocal.reciprocal`). The comparisons [X >= 2^j], j = lo+1..hi (one batch sharing
its leaves, :func:`.fastcmp.compare_thresholds`, bounded by the range: exact on it) are a
thermometer code of X's top bit m, so any public table w_m is selected *locally* as
w_lo + sum_j [X >= 2^j] (w_j - w_{j-1}) (:func:`select_by_top_bit`); no A2B, prefix-OR or
bit-to-arithmetic of the top bit.

1. c = X / 2^(m+1) in [0.5, 1) is X times the selected 2^(top-m-1) (:func:`normalise`): one
   multiplication, fused with its truncation when hi >= F (top = max(hi + 1, F)), giving c
   with F fractional bits (F = ``ScalePlan.poly_frac``, chosen per call: up to
   :data:`NORM_FRAC`); t = 4c - 3.
2. c^e = sum_k a_k t^k, a polynomial on t in [-1, 1] (for 1/c of degree 7: 3 levels of powers,
   :func:`.polynomial.powers`).
3. factor * 2^(e (m + 1 - frac_in)) is folded into one public table per coefficient,
   a_k * scale(m), selected locally, and the result is the dot product
   sum_k t^k * table_k(m), truncated once (:func:`.arith.dot_fxp`).

Cost (degree 7): 4 (comparisons) + 1 or 2 (c) + 3 x 2 (powers) + 2 (dot product) = 13 or 14
rounds. Bytes per element, all parties: the comparisons' leaves once (fewer than 30.1,
their chain being hi + 1 bits), per comparison 10 online and 36 offline (hi - lo of them,
i.e. log2(max_value / min_value)), about 44 per fused multiplication+truncation (8 of them).
Error: the polynomial's relative error plus the roundings of t^k and of the tables, which
:func:`plan_scale` keeps below 1/4 unit of the output in all.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

from puma_async.context import Context

from .arith import dot_fxp, mul_fxp
from .compare import to_arith
from .fastcmp import compare_thresholds
from .polynomial import HEADROOM_BITS, powers
from .ring import RingArray, neg, to_ring
from .segments import Exponents
from .shares import AShare, public_share, stack

NORM_FRAC = 30
"""The most fractional bits of t and its powers (:func:`plan_scale` may choose fewer)."""


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

    Cost: one batch of hi - lo comparisons per element sharing their leaves (4 rounds), then
    one multiplication (1 round) fused with a truncation (2 in all) when hi >= frac.
    """
    if not 0 <= lo < hi < 62:
        raise ValueError(f"need 0 <= lo < hi < 62, got lo={lo}, hi={hi}")
    role = ctx.role
    thresholds = np.array([1 << j for j in range(lo + 1, hi + 1)], dtype=np.uint64)
    # |X - 2^j| < 2^(hi+1) on the domain: a bounded comparison of hi + 2 bits is exact there
    below = await to_arith(ctx, await compare_thresholds(ctx, x, thresholds, bits=hi + 2))
    steps = (-below).add_public(role, 1)
    # c = X 2^(frac-m-1) exactly, or X 2^(hi-m) in [2^hi, 2^(hi+1)) truncated to frac bits
    top = max(hi + 1, frac)
    shifts = np.array([1 << (top - m - 1) for m in range(lo, hi + 1)], dtype=np.uint64)
    c = await mul_fxp(ctx, x, select_by_top_bit(steps, shifts, role), bits=top - frac)
    t = c.scale(4).add_public(role, neg(3 << frac))
    return Normalised(t, steps, role)


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


__all__ = [
    "NORM_FRAC", "Normalised", "ScalePlan", "normalise", "plan_scale", "power", "power_terms",
    "select_by_top_bit",
]
