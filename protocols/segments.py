"""x^e of positive fixed-point values by segments: every candidate alongside the comparisons.

factor * x^e for x = X / 2^frac_in with an integer X known to lie in [2^lo, 2^(hi+1)) (public
bounds from the caller's input range, :class:`Exponents`), in 7 rounds, with many bytes per
element (meant for per-row values: :func:`.reciprocal.rsqrt` and the norms).

Every octave [2^m, 2^(m+1)) is cut into segments (for x^(-1/2) three, from X / 2^m = 1,
323/256 and 406/256: nearly geometric, :data:`.reciprocal.RSQRT_SEGMENTS`) and X is compared
with every segment start T_j, all in one batch sharing its leaves
(:func:`.fastcmp.compare_thresholds`, bounded by the range: 3 rounds to the masked bits).
Alongside, a *candidate* R_j per segment is computed from X as if X lay in that segment
(6 rounds):

1. t_m = 4 X / 2^(m+1) - 3 for every octave m: X 2^(61-m) - 3 2^60 truncated to
   F = :data:`SEGMENT_FRAC` = 20 fractional bits, all octaves in one truncation; then t_m^2.
2. With s = t_m - centre (a multiple of 1/2 per segment, so that s and s^2 are local), the
   segment's degree-4 polynomial times the octave's scale factor 2^(e(m+1-frac_in)) (its
   power-of-two part a shift after the truncation, the rest in the coefficients) is one
   fused dot product [s^2, 1] . [a_2 + a_3 s + a_4 s^2, a_0 + a_1 s] with public integer
   coefficients, 2^K P (K = 60 for rsqrt), truncated by :data:`DOT_BITS`.

The candidates of the wrong octaves overflow, which does not matter: the result is
R_last - sum_j [X < T_j] (R_j - R_{j-1}), each difference multiplied by its comparison bit
in the round that opens the comparison (:func:`.compare.sign_times`), and ring arithmetic
is exact, so the sum telescopes to exactly X's candidate. A chain of input ranges (X given
per range) shares the comparisons and candidates: range i + 1's first threshold selects
range i's result below it (RMSNorm's two sums of squares), one more round per range.

Cost: 7 rounds (one range; one more per further range): the candidates' 6 and the opening.
Bytes per element, all parties, per segment: a comparison (10 online and 36 offline beyond
the leaves each value's thresholds share), its product (24) and a candidate's dot product
(44.75); per octave 71.5 (t and t^2): about 290 online and 82 offline per octave of three
segments. Error: the fit's (3.25e-7 relative
for rsqrt's segments) plus the roundings of t (2.4e-7), of P (4.8e-7) and of the coefficients
and t^2 (2.7e-7): relative <= 1.3e-6 wherever the output has at least 2^22 units at
``frac_out``, and within that + 1.25 units everywhere (tests/test_nonlinear_reciprocal.py).
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
from .arith import dot_fxp, mul, square_fxp
from .compare import sign_product
from .fastcmp import compare_thresholds, open_masked
from .polynomial import HEADROOM_BITS
from .ring import RingArray, neg, to_ring
from .shares import AShare, concatenate, public_share, stack
from .trunc import truncate

SEGMENT_FRAC = 20
"""Fractional bits of t and t^2 in :func:`segmented_power`."""

DOT_BITS = 2 * SEGMENT_FRAC - 2
"""Truncation of a candidate's dot product 2^K P (module docstring): P keeps K - 38 bits."""


@dataclasses.dataclass(frozen=True)
class Exponents:
    """Inputs x = X / 2^frac_in with integer X in [2^lo, 2^(hi+1)); output factor * x^e."""

    lo: int
    hi: int
    frac_in: int
    factor: float = 1.0


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


@dataclasses.dataclass(frozen=True)
class SegmentPlan:
    """Public constants of :func:`segmented_power` for a chain of input ranges.

    Per octave (all ranges': ``octave_range`` says whose): ``scales`` = 2^(61 - m). Per
    threshold: its value and range; every segment start but the first range's lowest.
    Per candidate: its octave (an index), twice its centre, its integer coefficients
    (``coefficients[:, j]``: a_0 .. a_4 scaled for the dot product) and the power of two it
    is multiplied by after the truncation; ``candidates`` holds each range's slice of them.
    ``bits``: the comparisons' bound (every range's X and thresholds lie below 2^(hi+1)).
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
    bits: int


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
        tuple(candidates), max(r.hi for r in ranges) + 2,
    )


async def segmented_power(ctx: Context, x: AShare, plan: SegmentPlan) -> AShare:
    """factor * X^e for X of shape (ranges, *shape), X[i] in the plan's range i, each range
    after the first taking over from its 2^lo on (module docstring; the earlier ranges'
    garbage, where X is beyond them, cancels exactly).

    Cost: the comparisons in one batch beside all candidates (6 rounds), then one round per
    range: 7 rounds for one range. Bytes: module docstring.
    """
    by_range = x.map(lambda a: np.moveaxis(a, 0, -1))
    sign, values = await ctx.gather(
        lambda c: compare_thresholds(c, by_range, plan.thresholds, of=plan.threshold_range,
                                     bits=plan.bits),
        lambda c: segment_candidates(c, by_range, plan),
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
                lambda c: open_masked(c, sign), lambda c, r=r[..., part], f=steps: mul(c, r, f)
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
    "DOT_BITS", "SEGMENT_FRAC", "Exponents", "SegmentPlan", "Segments", "plan_segments",
    "segment_candidates", "segmented_power",
]
