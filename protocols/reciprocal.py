"""Reciprocal and reciprocal square root of positive fixed-point values.

Both compute factor * x^e (e = -1 or -1/2) for x = X / 2^frac_in with an integer X known to
lie in [2^lo, 2^(hi+1)) (public bounds from the caller's input range), from comparisons of X
with public thresholds, all in one batched comparison (8 rounds, 66 bytes per comparison in
all, see :mod:`.compare`). The comparisons [X >= 2^j], j = lo+1..hi, are a thermometer code of
X's top bit m, so any public table w_m is selected *locally* as
w_lo + sum_j [X >= 2^j] (w_j - w_{j-1}); no A2B, prefix-OR or bit-to-arithmetic of the top
bit. Two methods build on that:

**Normalise, then one polynomial** (:func:`power`; :func:`reciprocal`): few bytes per element,
17-18 rounds.

1. c = X / 2^(m+1) in [0.5, 1) is X times the selected 2^(top-m-1) (:func:`normalise`): one
   multiplication, fused with its truncation when hi >= F (top = max(hi + 1, F)), giving c
   with F fractional bits (F = ``ScalePlan.poly_frac``, chosen per call: up to 30); t = 4c - 3.
2. 1/c = sum_k a_k t^k, a degree-7 polynomial: 3 levels of powers (:mod:`.polynomial`).
   Coefficients: minimax *relative* error on t in [-1, 1], fitted offline by Lawson's
   iteratively reweighted least squares on 20,001 points (numpy): 1.5e-6.
3. factor * 2^(e (m + 1 - frac_in)) is folded into one public table per coefficient,
   a_k * scale(m), selected locally, and the result is the dot product
   sum_k t^k * table_k(m), truncated once (:func:`dot_fxp`).

Cost: 8 (comparisons) + 1 or 2 (c) + 3 x 2 (powers) + 2 (dot product) = 17 or 18 rounds.
Bytes per element, all parties: 66.25 per comparison (hi - lo of them, i.e.
log2(max_value / min_value)), about 44 per fused multiplication+truncation (8 of them):
857 for x in [0.5, 129], 2,857 for [2^-18, 2^20] (measured). Relative error <= 2.6e-6
(measured on 40,001-point log grids, tests/test_nonlinear_reciprocal.py) wherever the output
has at least 2^20 units at ``frac_out``; <= 5e-6 relative + 2 units (the bound tested)
everywhere.

**Segments, every candidate alongside the comparisons** (:func:`segmented_power`;
:func:`rsqrt` and the norms): 8 rounds, more bytes per element (meant for per-row values).
Every octave [2^m, 2^(m+1)) is cut into segments (for x^(-1/2) three, from X / 2^m = 1,
323/256 and 406/256: nearly geometric) and X is compared with every segment start T_j. While
the comparisons run (their MSB takes 7 rounds), a *candidate* R_j per segment is computed
from X as if X lay in that segment (6 rounds):

1. t_m = 4 X / 2^(m+1) - 3 for every octave m: X 2^(61-m) - 3 2^60 truncated to
   F = ``SEGMENT_FRAC`` = 20 fractional bits, all octaves in one truncation; then t_m^2.
2. With s = t_m - centre (a multiple of 1/2 per segment, so that s and s^2 are local), the
   segment's degree-4 polynomial times the octave's scale factor 2^(e(m+1-frac_in)) (its
   power-of-two part a shift after the truncation, the rest in the coefficients) is one
   fused dot product [s^2, 1] . [a_2 + a_3 s + a_4 s^2, a_0 + a_1 s] with public integer
   coefficients, 2^K P (K = 60 for rsqrt), truncated by ``DOT_BITS``.

The candidates of the wrong octaves overflow, which does not matter: the result is
R_last - sum_j [X < T_j] (R_j - R_{j-1}), each difference multiplied by its comparison bit
in the round that opens the comparison (:func:`.polynomial.sign_times`), and ring arithmetic
is exact, so the sum telescopes to exactly X's candidate. A chain of input ranges (X given
per range) shares the comparisons and candidates: range i + 1's first threshold selects
range i's result below it (RMSNorm's two sums of squares), one more round per range.
Coefficients: minimax relative error of c^(-1/2) on each segment (Lawson, 20,001 points):
3.25e-7.

Cost: 8 rounds (one range). Bytes per element, all parties: 135 per segment (a comparison
with its product, 90.25; a candidate's dot product, 44.75) and 71.5 per octave (t and t^2):
477 per octave, 18,493 for x in [2^-18, 2^20] and 4,198 for [0.5, 129] (measured).
Error of rsqrt: relative <= 1.3e-6 (bound: the fit 3.25e-7, t's rounding 2.4e-7, P's 4.8e-7,
the coefficients' and t^2's 2.7e-7; measured <= 8.3e-7 on 40,001-point log grids) wherever
the output has at least 2^22 units at ``frac_out``, and within that + 1.25 units everywhere.
"""

from __future__ import annotations

import dataclasses
import fractions
import functools
import math

import numpy as np
import numpy.typing as npt

from puma_async.context import Context

from . import ring
from .arith import (
    finish_product,
    mul,
    mul_fxp,
    mul_local,
    square_fxp,
)
from .compare import is_negative
from .fixedpoint import fixed_point
from .polynomial import (
    HEADROOM_BITS,
    masked_sign,
    open_sign,
    powers,
    repeat_last,
    sign_product,
)
from .ring import RingArray, neg, to_ring
from .shares import AShare, concatenate, public_share, stack
from .trunc import offload, truncate

NORM_FRAC = 30
"""The most fractional bits of t and its powers (:func:`plan_scale` may choose fewer)."""

RECIPROCAL_COEFFICIENTS = (
    1.3333313307334649, -0.4444437769773076, 0.148212007658832, -0.04940400204943655,
    0.01614759698826384, -0.005382533297901583, 0.002306813250085488, -0.0007689372139334981,
)
"""1/c = sum_k a_k t^k, t = 4c - 3, c in [0.5, 1]: max relative error 1.5e-6."""

SEGMENT_FRAC = 20
"""Fractional bits of t and t^2 in :func:`segmented_power`."""


@dataclasses.dataclass(frozen=True)
class Segments:
    """c^exponent for c = X / 2^(m+1) in [0.5, 1), piecewise in every octave.

    Segment i takes X / 2^m in [starts[i], starts[i+1]) (starts[0] = 1, the last up to 2),
    where c^exponent ~ sum_k coefficients[i][k] (t - centres[i])^k, t = 4c - 3 (degree <= 4;
    the centres are multiples of 1/2).
    """

    exponent: float
    starts: tuple[float, ...]
    centres: tuple[float, ...]
    coefficients: tuple[tuple[float, ...], ...]


RSQRT_SEGMENTS = Segments(
    -0.5,
    starts=(1.0, 323 / 256, 406 / 256),
    centres=(-0.5, 0.0, 0.5),
    coefficients=(
        (1.2649108519959171, -0.25296604525320177, 0.07627753902686303,
         -0.02293541807733916, 0.014126657594134373),
        (1.1547007489451204, -0.19245489388591372, 0.04807712178148777,
         -0.01319467692336495, 0.005007148092608543),
        (1.069044678922237, -0.15271836454352977, 0.03274696404311703,
         -0.007862975888474052, 0.001775293564788286),
    ),
)
"""1/sqrt(c) in three segments per octave: max relative error 3.25e-7, 3.0e-7, 3.2e-7
(SPU's one degree-4 polynomial: 8.2e-5)."""


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
    """sum over the last axis of a * b (broadcasting), truncated once by ``bits``: 2 rounds
    (1 if bits = 0), the bytes of one product (:func:`.arith.mul_fxp`) per sum."""
    z = await offload(_dot_local, a, b, size=max(a.size, b.size))
    return await finish_product(ctx, z, bits)


def _dot_local(a: AShare, b: AShare) -> RingArray:
    """This party's additive share of sum_k a_k b_k (the products of :func:`.arith.mul`)."""
    return np.sum(mul_local(a, b), axis=-1, dtype=np.uint64)


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

    Garbage outside that range. Cost: 8 rounds, 477 bytes per element and octave of
    [min_value, max_value]. Relative error <= 1.3e-6 + 1.25 units (module docstring).
    """
    out = fixed_point(ctx).frac_bits if frac_out is None else frac_out
    plan = plan_segments(RSQRT_SEGMENTS, (exponents(ctx, min_value, max_value),), out)
    return await segmented_power(ctx, x.map(lambda a: a[None]), plan)


DOT_BITS = 2 * SEGMENT_FRAC - 2
"""Truncation of a candidate's dot product 2^K P (module docstring): P keeps K - 38 bits."""


@dataclasses.dataclass(frozen=True)
class SegmentPlan:
    """Public constants of :func:`segmented_power` for a chain of input ranges.

    Per octave (all ranges': ``octave_range`` says whose): ``scales`` = 2^(61 - m). Per
    threshold: its value and range; every segment start but the first range's lowest.
    Per candidate: its octave (an index), twice its centre, its integer coefficients
    (``coefficients[:, j]``: a_0 .. a_4 scaled for the dot product) and the power of two it
    is multiplied by after the truncation; ``candidates`` holds each range's slice of them.
    """

    octave_range: npt.NDArray[np.intp]
    scales: RingArray
    threshold_range: npt.NDArray[np.intp]
    thresholds: RingArray
    octave: npt.NDArray[np.intp]
    halves: RingArray
    coefficients: RingArray
    shifts: RingArray
    candidates: tuple[slice, ...]


@functools.cache
def plan_segments(fit: Segments, ranges: tuple[Exponents, ...], frac_out: int) -> SegmentPlan:
    """The plan of factor * x^e (e = ``fit.exponent``) at ``frac_out`` bits on a chain of
    ranges, each after the first taking over from its 2^lo on (cached: shared, read-only).

    A candidate's dot product is 2^K P with 2^K max |P| < 2^61; truncated by DOT_BITS it
    keeps K - DOT_BITS fractional bits of P (22 for rsqrt), or the output's own bits where the
    output has fewer (the coefficients are then scaled down).
    """
    f = SEGMENT_FRAC
    ends = (*fit.starts[1:], 2.0)
    widths = [max(abs(2 * a - 3 - c), abs(2 * b - 3 - c))  # of s = t - centre
              for a, b, c in zip(fit.starts, ends, fit.centres, strict=True)]
    size = max(sum(abs(a) * w**k for k, a in enumerate(coef))
               for coef, w in zip(fit.coefficients, widths, strict=True))
    k_bits = HEADROOM_BITS - math.ceil(math.log2(size))
    kept = k_bits - DOT_BITS
    octave_range: list[int] = []  # per octave
    scales: list[int] = []
    threshold_range: list[int] = []  # per threshold
    thresholds: list[int] = []
    octave: list[int] = []  # per candidate
    halves: list[int] = []
    coefficients: list[list[int]] = []
    shifts: list[int] = []
    candidates: list[slice] = []  # per range
    for index, r in enumerate(ranges):
        if not 0 <= r.lo <= r.hi <= 61:
            raise ValueError(f"need 0 <= lo <= hi <= 61, got lo={r.lo}, hi={r.hi}")
        first = len(octave)
        for m in range(r.lo, r.hi + 1):
            # the octave's factor 2^(e (m + 1 - frac_in)) = 2^top rho with rho in [0.5, 1)
            log = math.log2(r.factor) + fit.exponent * (m + 1 - r.frac_in)
            top = math.floor(log) + 1
            if top + frac_out < 1 or top + frac_out + math.log2(size) > HEADROOM_BITS:
                raise ValueError(f"output range too wide for the ring at {frac_out} bits")
            q = frac_out + top - kept  # > 0: shift left after truncating; < 0: scale down
            k = k_bits + min(0, q)
            octave_range.append(index)
            scales.append(1 << (61 - m))
            for start, centre, coef in zip(fit.starts, fit.centres, fit.coefficients,
                                           strict=True):
                if index or m > r.lo or start > 1:
                    threshold_range.append(index)
                    thresholds.append(math.ceil(fractions.Fraction(start) * 2**m))
                a = [v * 2.0 ** (log - top) for v in (*coef, 0.0, 0.0, 0.0, 0.0)[:5]]
                octave.append(len(scales) - 1)
                halves.append(round(2 * centre))
                coefficients.append([round(a[0] * 2.0**k), round(a[1] * 2.0 ** (k - f)),
                                     round(a[2] * 2.0 ** (k - f)),
                                     round(a[3] * 2.0 ** (k - 2 * f)),
                                     round(a[4] * 2.0 ** (k - 2 * f))])
                shifts.append(1 << max(0, q))
        candidates.append(slice(first, len(octave)))

    def ring_constant(values: list[int] | list[list[int]]) -> RingArray:
        out = to_ring(np.array(values, dtype=object))
        out.flags.writeable = False
        return out

    def indices(values: list[int]) -> npt.NDArray[np.intp]:
        out = np.array(values, dtype=np.intp)
        out.flags.writeable = False
        return out

    return SegmentPlan(
        indices(octave_range), ring_constant(scales), indices(threshold_range),
        ring_constant(thresholds), indices(octave), ring_constant(halves),
        ring_constant(np.array(coefficients, dtype=object).T.tolist()), ring_constant(shifts),
        tuple(candidates),
    )


async def segmented_power(ctx: Context, x: AShare, plan: SegmentPlan) -> AShare:
    """factor * X^e for X of shape (ranges, *shape), X[i] in the plan's range i, each range
    after the first taking over from its 2^lo on (module docstring; the earlier ranges'
    garbage, where X is beyond them, cancels exactly).

    Cost: the comparisons in one batch beside all candidates (7 rounds), then one round per
    range: 8 rounds for one range. Bytes: module docstring.
    """
    role = ctx.role
    by_range = x.map(lambda a: np.moveaxis(a, 0, -1))
    diffs = by_range[..., plan.threshold_range].add_public(role, neg(plan.thresholds))
    sign, values = await ctx.gather(
        lambda c: masked_sign(c, diffs), lambda c: segment_candidates(c, by_range, plan)
    )
    r = sign.r_arith
    opened: RingArray | None = None
    result: AShare | None = None
    done = 0  # thresholds of the ranges before
    for candidates in plan.candidates:
        chain = values[..., candidates]
        if result is not None:  # below this range's first threshold: the range before's
            chain = concatenate([result.map(lambda a: a[..., None]), chain], axis=-1)
        steps = chain[..., 1:] - chain[..., :-1]
        part = slice(done, done + steps.shape[-1])
        done = part.stop
        if opened is None:  # open every comparison beside the first range's products
            opened, rf = await ctx.gather(
                lambda c: open_sign(c, sign), lambda c, r=r[..., part], f=steps: mul(c, r, f)
            )
        else:
            rf = await mul(ctx, r[..., part], steps)
        result = chain[..., -1] - sign_product(opened[..., part], steps, rf).sum(axis=-1)
    assert result is not None
    return result


async def segment_candidates(ctx: Context, x: AShare, plan: SegmentPlan) -> AShare:
    """Every candidate (module docstring) of x (shape (*shape, ranges)), shape
    (*shape, candidates): 6 rounds; per octave a truncation and a fused square, per candidate
    one dot product of length 2."""
    role, f = ctx.role, SEGMENT_FRAC
    u = x[..., plan.octave_range].scale(plan.scales).add_public(role, neg(3 << 60))
    t = await truncate(ctx, u, bits=60 - f)
    t2 = await square_fxp(ctx, t, bits=f)
    t, t2 = (a[..., plan.octave] for a in (t, t2))
    halves = plan.halves
    s = t.add_public(role, neg(ring.mul(halves, 1 << (f - 1))))
    s2 = (t2 - t.scale(halves)).add_public(role, ring.mul(ring.mul(halves, halves), 1 << (f - 2)))
    a = plan.coefficients
    one = public_share(role, np.ones(s.shape, dtype=np.uint64))
    lhs = stack([s2, one], axis=-1)
    rhs = stack([(s.scale(a[3]) + s2.scale(a[4])).add_public(role, a[2]),
                 s.scale(a[1]).add_public(role, a[0])], axis=-1)
    return (await dot_fxp(ctx, lhs, rhs, DOT_BITS)).scale(plan.shifts)


__all__ = [
    "DOT_BITS", "NORM_FRAC", "RECIPROCAL_COEFFICIENTS", "RSQRT_SEGMENTS", "SEGMENT_FRAC",
    "Exponents", "Normalised", "ScalePlan", "SegmentPlan", "Segments", "dot_fxp", "exponents",
    "normalise", "plan_scale", "plan_segments", "power", "power_terms", "reciprocal", "rsqrt",
    "segment_candidates", "segmented_power", "select_by_top_bit",
]
