"""x^e of positive fixed-point values by segments: every candidate alongside the comparisons.

factor * x^e for x = X / 2^frac_in with an integer X known to lie in [2^lo, 2^(hi+1)) (public
bounds from the caller's input range, :class:`Exponents`, up to :data:`EXTENSION` beyond
them), in 4 rounds, with many bytes per element (meant for per-row values:
:mod:`.reciprocal`'s 1/x and 1/sqrt(x), the norms).

Every octave [2^m, 2^(m+1)) is cut into segments (three, from X / 2^m = 1, 323/256 and
406/256: nearly geometric, :data:`.reciprocal.RSQRT_SEGMENTS`, :data:`.RECIPROCAL_SEGMENTS`)
and X is compared with every segment start T_j, all in one batch sharing its leaves
(:func:`.fastcmp.compare_thresholds`, bounded by the range: 3 rounds to the masked bits).
Alongside, a *candidate* R_j per segment is computed from X as if X lay in that segment,
every truncation by TP1 (:mod:`.trunc1`: one online round from an offline tuple; 2 or 3
rounds):

1. t_m = 4 X / 2^(m+1) - 3 for every octave m, exact at W fractional bits: X 2^(W+1-m) -
   3 2^W, local. *Direct* plan, W = max(F, hi - 1) <= :data:`DIRECT_MAX_FRAC` = 30 (inputs
   below 2^32 units: the softmax's row sums, rsqrt of small ranges): t_m^2 squared from it
   (below (1 + 4 EXTENSION)^2 2^60 < 2^61 before its truncation to F =
   :data:`SEGMENT_FRAC` = 20 bits) beside t_m's own truncation to F bits: 1 round. Else
   W = 60 and t_m is truncated to F bits first, then squared: 2 rounds.
2. With s = t_m - centre (a multiple of 1/2 per segment, so that s and s^2 are local), the
   segment's degree-4 polynomial times the octave's scale factor 2^(e(m+1-frac_in)) (its
   power-of-two part a shift after the truncation, the rest rho in [0.5, 1) in the
   coefficients) is one fused dot product [s^2, 1] . [a_2 + a_3 s + a_4 s^2, a_0 + a_1 s]
   with public integer coefficients (a_1 s from the exact t_m at W bits on the direct plan,
   the rest from the F-bit values), 2^K rho P (K = 60: 2^K max |rho P| < 2^61), truncated by
   :data:`DOT_BITS` = 38: 1 round.

The candidates of the wrong octaves overflow, which does not matter: the result is
R_last - sum_j [X < T_j] (R_j - R_{j-1}), each difference multiplied by its comparison bit
in the round that opens the comparison (:func:`.compare.sign_times`), and ring arithmetic
is exact, so the sum telescopes to exactly X's candidate. Inputs just below the lowest
octave or above the highest (by at most EXTENSION) take its first or last candidate, whose
polynomial holds there too (fits in :mod:`.reciprocal`).

Two input ranges (X given per range: RMSNorm's precise and wide sums of squares) share the
comparisons and the candidates, and the second range's first threshold T'_0 selects between
them in the same opening round. With a = [X' < T'_0], the second range's bits h_k and steps
d'_k, the first range's l_i and d_i (candidates R, R'), the result is R'_last - sum_(k >= 1)
h_k d'_k - a (R'_0 - R_last) - sum_i a l_i d_i. The h_k need no product with a: the
thermometer is monotone (a = 1 makes every h_k 1, and the telescoping sum is R'_0 then). The
l_i do: X is only known to lie in the first range where a = 1 (the caller's precondition;
elsewhere the norms' precise sum may have wrapped around the ring, so l_i is an arbitrary
bit), so every a l_i is a true product of two opened-masked bits: a l_i d_i = c_a (l_i d_i)
+ (1 - 2 c_a) r_a (l_i d_i) and r_a (l_i d_i) = c_i (r_a d_i) + (1 - 2 c_i) (r_a r_i) d_i,
i.e. two more products per threshold of the first range (r_a d_i, (r_a r_i) d_i) beside the
opening, r_a r_i made offline (one product of the random bits, after them).

Cost: 4 rounds, on either plan and with one range or two: the comparisons' 3 beside the
candidates' 2 or 3, then the opening with the selection. Bytes per element, all parties, per
segment: a comparison (10 online and 36 offline beyond the leaves each value's thresholds
share), its product (24) and a candidate's dot product (48 online, 112.5 offline: TP1 at 38
bits); per octave t's truncation (24 online) and t^2 (48) with their TP1 tuples (about
100-130 offline each, by the bits truncated): about 300 online and 600 offline per octave of
three segments (2,709.75 and 5,435 for [0.5, 129]); with two ranges, per threshold of the first
range 48 more online (two products) and 24 offline (r_a r_i). The offline material (TP1
tuples, the comparisons' dealt products and random bits, r_a r_i) can be made ahead
(:func:`prepare_segments`, 4 offline rounds), so that no online round waits on an offline
one, or made without the TP1 tuples (``tuples=False``: every truncation of the candidates
then takes :mod:`.trunc`'s 2 rounds, with no offline material: 5 rounds on the direct plan,
7 on the wide one, and per octave of three segments about 570 bytes fewer offline); inline,
the TP1 tuples' 4 offline rounds run beside the comparisons, but r_a r_i takes one offline
round after them, which the opening waits for (a latency of wall time, no
online round).

Error, relative to the output y: the fit's (3.25e-7 for rsqrt, 1.34e-6 for 1/x); P's
truncation, < 2^-22 / rho <= 4.8e-7 |y| where the output has at least 2^(K - 38) rho units
(else the coefficients are scaled down to the output's own bits: < 1 unit, and the integer
a_3, a_4 at 2^(K - 40) then add <= 0.5 (w^3 + w^4) 2^2 <= 0.375 units, |s| <= w <= 0.5);
s^2's rounding, < 2^-19 (t^2's and the centre times t's), times |a_2 + a_3 s + a_4 s^2| <=
0.16 |y| for 1/x: 3.9e-7 |y|; the integer coefficients' rounding otherwise (<= 1e-7 |y|);
on the wide plan also t's rounding (< 2^-20, times |y'/y| <= 1/2 for 1/x, 1/4 for
1/sqrt(x)). So 1/x: |error| <= 1.9e-6 |y| + max(1.4 units, 4.8e-7 |y|) (direct plan);
1/sqrt(x): relative <= 1.3e-6 wherever the output has at least 2^22 units at ``frac_out``,
and within that + 1.25 units everywhere (tests/test_nonlinear_reciprocal.py).
"""

from __future__ import annotations

import dataclasses
import fractions
import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from numba import njit, types

from puma_async.context import OFFLINE_PHASE, Context, Ready

from . import ring
from .arith import Rounds, dot_fxp, mul, square_fxp
from .compare import sign_product, sign_times
from .fastcmp import (
    CompareMaterial,
    CompareSpec,
    MaskedBits,
    compare_thresholds,
    open_masked,
    prepare_compare_batches,
)
from .offload import offload
from .polynomial import HEADROOM_BITS
from .ring import RING_DTYPE, RingArray, neg, to_ring
from .shares import AShare, concatenate
from .trunc import truncate, truncate_additive
from .trunc1 import (
    Trunc1Material,
    Trunc1Spec,
    prepare_trunc1_batches,
    truncate1,
    truncate1_additive,
)

SEGMENT_FRAC = 20
"""Fractional bits of t and t^2 in :func:`segmented_power`."""

DIRECT_MAX_FRAC = 30
"""t_m is squared directly, exact, when it fits at this many fractional bits (hi <= 31):
its square stays below 2^61 (|t_m| <= 1 + 4 EXTENSION on its octave)."""

EXTENSION = 2.0**-14
"""Inputs up to this fraction beyond the range's octaves are served by the end segments."""

DOT_BITS = 2 * SEGMENT_FRAC - 2
"""Truncation of a candidate's dot product 2^K P (module docstring): P keeps K - 38 bits."""


@dataclasses.dataclass(frozen=True)
class Exponents:
    """Inputs x = X / 2^frac_in with integer X in [2^lo (1 - e), 2^(hi+1) (1 + e)), e =
    :data:`EXTENSION`; output factor * x^e."""

    lo: int
    hi: int
    frac_in: int
    factor: float = 1.0


@dataclasses.dataclass(frozen=True)
class Segments:
    """c^exponent for c = X / 2^(m+1) in [0.5, 1), piecewise in every octave.

    Segment i takes X / 2^m in [starts[i], starts[i+1]) (starts[0] = 1, the last up to 2),
    where c^exponent ~ sum_k coefficients[i][k] (t - centres[i])^k, t = 4c - 3 (degree <= 4;
    the centres are multiples of 1/2). The first and last segments hold to the fit's error
    (nearly) for :data:`EXTENSION` beyond the octave too.
    """

    exponent: float
    starts: tuple[float, ...]
    centres: tuple[float, ...]
    coefficients: tuple[tuple[float, ...], ...]


@dataclasses.dataclass(frozen=True)
class SegmentPlan:
    """Public constants of :func:`segmented_power` for one input range or two.

    ``work``: the fractional bits W of t_m = X 2^(W+1-m) / 2^W - 3, exact; ``direct``: whether
    t_m^2 is squared from it (W <= :data:`DIRECT_MAX_FRAC`; else W = 60 and t_m is truncated
    first). Per octave (all ranges': ``octave_range`` says whose): ``scales`` = 2^(W+1-m). Per
    threshold: its value and range; every segment start but the first range's lowest.
    Per candidate: its octave (an index), twice its centre, its integer coefficients
    (``coefficients[:, j]``: a_0 .. a_4 scaled for the dot product) and the power of two it
    is multiplied by after the truncation; ``candidates`` holds each range's slice of them.
    ``bits``: the comparisons' bound (every range's X and thresholds lie below 2^(hi+2)).
    """

    work: int
    direct: bool
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
    """The plan of factor * x^e (e = ``fit.exponent``) at ``frac_out`` bits on one range or
    two, the second taking over from its 2^lo on (cached: shared, read-only).

    A candidate's dot product is 2^K P rho (rho in [0.5, 1): the octave factor's mantissa)
    with 2^K max |P rho| < 2^61; truncated by DOT_BITS it keeps K - DOT_BITS fractional bits
    (22 for rsqrt and reciprocal), or the output's own bits where the output has fewer (the
    coefficients are then scaled down).
    """
    f = SEGMENT_FRAC
    if not 1 <= len(ranges) <= 2:
        raise ValueError(f"one range or a chain of two, got {len(ranges)}")
    if not all(0 <= r.lo <= r.hi <= 61 for r in ranges):
        raise ValueError(f"need 0 <= lo <= hi <= 61, got {ranges}")
    work = max(f, max(r.hi for r in ranges) - 1)
    direct = work <= DIRECT_MAX_FRAC
    work = work if direct else 60
    low = work if direct else f  # fractional bits of the s multiplied by a_1
    ends = (*fit.starts[1:], 2.0 * (1 + EXTENSION))
    firsts = (fit.starts[0] * (1 - EXTENSION), *fit.starts[1:])
    widths = [max(abs(2 * a - 3 - c), abs(2 * b - 3 - c))  # of s = t - centre
              for a, b, c in zip(firsts, ends, fit.centres, strict=True)]
    size = max(sum(abs(a) * w**k for k, a in enumerate(coef))
               for coef, w in zip(fit.coefficients, widths, strict=True))

    def mantissa_log(r: Exponents, m: int) -> tuple[float, int]:
        """log2 of the octave's factor 2^(e (m + 1 - frac_in)) and its top = floor + 1."""
        log = math.log2(r.factor) + fit.exponent * (m + 1 - r.frac_in)
        return log, math.floor(log) + 1

    largest = max(size * 2.0 ** (log - top) for r in ranges
                  for log, top in map(functools.partial(mantissa_log, r), range(r.lo, r.hi + 1)))
    k_bits = HEADROOM_BITS - 1 - math.floor(math.log2(largest))
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
        first = len(octave)
        for m in range(r.lo, r.hi + 1):
            # the octave's factor 2^(e (m + 1 - frac_in)) = 2^top rho with rho in [0.5, 1)
            log, top = mantissa_log(r, m)
            if top + frac_out + math.log2(size) > HEADROOM_BITS:  # (outputs < 1 unit: 0)
                raise ValueError(f"output range too wide for the ring at {frac_out} bits")
            q = frac_out + top - kept  # > 0: shift left after truncating; < 0: scale down
            k = k_bits + min(0, q)
            octave_range.append(index)
            scales.append(1 << (work + 1 - m))
            for start, centre, coef in zip(fit.starts, fit.centres, fit.coefficients,
                                           strict=True):
                if index or m > r.lo or start > 1:
                    threshold_range.append(index)
                    thresholds.append(math.ceil(fractions.Fraction(start) * 2**m))
                a = [v * 2.0 ** (log - top) for v in (*coef, 0.0, 0.0, 0.0, 0.0)[:5]]
                octave.append(len(scales) - 1)
                halves.append(round(2 * centre))
                coefficients.append([round(a[0] * 2.0**k), round(a[1] * 2.0 ** (k - low)),
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
        work, direct, indices(octave_range), ring_constant(scales), indices(threshold_range),
        ring_constant(thresholds), indices(octave), ring_constant(halves),
        ring_constant(np.array(coefficients, dtype=object).T.tolist()), ring_constant(shifts),
        tuple(candidates), max(r.hi for r in ranges) + 2,
    )


async def segmented_power(
    ctx: Context, x: AShare | RingArray, plan: SegmentPlan, pre: SegmentMaterial | None = None
) -> AShare:
    """factor * X^e for X of shape (ranges, *shape), X[i] in the plan's range i (one range,
    or two: the second taking over from its 2^lo on; module docstring, the first range's
    garbage, where X is beyond it, drops out exactly). ``pre``: the candidates' TP1 tuples
    (:func:`prepare_segments` for X[0]'s size); None: prepared inline.

    Cost: the comparisons in one batch (3 rounds) beside all candidates (2 rounds on the
    direct plan, else 3), then the opening with the selection: 4 rounds. Bytes: module
    docstring. With material made without TP1 tuples (:func:`prepare_segment_batches`'
    ``tuples=False``) the candidates take 4 or 6 rounds: 5 rounds on the direct plan, 7 on
    the wide one, and no offline bytes but the comparisons'.

    ``x`` may be this party's 3-out-of-3 share z of X (untruncated, masked by a fresh
    zero-sharing: :func:`.arith.dot_share`; not on the direct plan), so that everything
    starts in the product's resharing round, which it replaces: the comparisons' evaluators
    swap their z beside S's leaves (:func:`.fastcmp.compare_thresholds`), and t_m's TP1
    takes its 3-out-of-3 shares (:func:`segment_candidates`). The 4 rounds then count from
    the product's local step. Bytes per element: the swap's 16 instead of the reshare's 24,
    and per octave t_m's TP1 at 48 instead of 24.
    """
    move = functools.partial(np.moveaxis, source=0, destination=-1)
    by_range = x.map(move) if isinstance(x, AShare) else move(x)
    sign, values = await ctx.gather(
        lambda c: compare_thresholds(c, by_range, plan.thresholds, of=plan.threshold_range,
                                     bits=plan.bits, pre=None if pre is None else pre.compare),
        lambda c: segment_candidates(c, by_range, plan, pre),
    )
    low = values[..., plan.candidates[0]]
    steps = low[..., 1:] - low[..., :-1]
    if len(plan.candidates) == 1:
        return low[..., -1] - (await sign_times(ctx, sign, steps)).sum(axis=-1)
    return await _select_two(ctx, sign, low, values[..., plan.candidates[1]],
                             None if pre is None else pre.pairs)


async def _select_two(
    ctx: Context, sign: MaskedBits, low: AShare, high: AShare, pairs: AShare | None
) -> AShare:
    """The two ranges' selection, in the opening's round (module docstring): with the
    switch bit a = [X_1 < its first threshold] and the first range's bits l_i,
    R_high_last - sum_(k >= 1) h_k dh_k - a (R_high_0 - R_low_last) - sum_i a l_i dl_i.
    a l_i dl_i = c_a (l_i dl_i) + (1 - 2 c_a) r_a (l_i dl_i), and r_a (l_i dl_i) =
    c_i (r_a dl_i) + (1 - 2 c_i) (r_a r_i) dl_i: the products r_a dl_i and (r_a r_i) dl_i
    beside the opening, with ``pairs`` = r_a r_i made offline (:func:`prepare_segments`;
    None: here, one offline round after the comparisons, which the opening then waits for)."""
    n = low.shape[-1] - 1  # the first range's thresholds; threshold n is the switch
    steps = concatenate([low[..., 1:] - low[..., :-1], high[..., :1] - low[..., -1:],
                         high[..., 1:] - high[..., :-1]], axis=-1)
    r = sign.r_arith
    r_a = _switch_bits(r, n)
    if pairs is None:
        pairs = await _switch_pairs(ctx, r, n)
    below = steps[..., :n]
    opened, products = await ctx.gather(
        lambda c: open_masked(c, sign),
        lambda c: mul(c, concatenate([r, r_a, pairs.reshape(r_a.shape)], axis=-1),
                      concatenate([steps, below, below], axis=-1)),
    )
    m = steps.shape[-1]
    terms = sign_product(opened, steps, products[..., :m])  # every bit times its step
    switched = sign_product(opened[..., :n], products[..., m : m + n], products[..., m + n :])
    selected = sign_product(opened[..., n : n + 1], terms[..., :n], switched)  # a l_i dl_i
    return high[..., -1] - terms[..., n:].sum(axis=-1) - selected.sum(axis=-1)


def _switch_bits(r: AShare, n: int) -> AShare:
    """The switch's random bit r_a (threshold n of the last axis) beside each of the first
    range's n thresholds."""
    return r[..., n : n + 1].map(lambda a: np.repeat(a, n, axis=-1))


async def _switch_pairs(ctx: Context, r: AShare, n: int) -> AShare:
    """r_a r_i for the first range's n random bits r_i (``r``: every threshold's, last axis):
    phase ``offline``, 1 round."""
    with ctx.phase(OFFLINE_PHASE):
        return await mul(ctx, _switch_bits(r, n), r[..., :n])


@dataclasses.dataclass(frozen=True)
class SegmentMaterial:
    """The offline material of :func:`segmented_power` (:func:`prepare_segments`): the TP1
    tuples of :func:`segment_candidates` (t_m's truncation, None when W = F: no truncation;
    t_m^2's; the candidates' dot products'), or None for all three (made with ``tuples=False``:
    the candidates' truncations then take 2 rounds each, :mod:`.trunc`), the comparisons'
    material and, with two ranges, the products r_a r_i of their random bits
    (:func:`_select_two`; None with one range)."""

    t: Trunc1Material | None
    t2: Trunc1Material | None
    dot: Trunc1Material | None
    compare: CompareMaterial
    pairs: AShare | None

    @property
    def one_round(self) -> bool:
        """Whether the candidates' truncations take TP1's one round (their tuples here)."""
        return self.dot is not None


def segment_specs(plan: SegmentPlan, rows: int) -> tuple[Trunc1Spec | None, Trunc1Spec,
                                                          Trunc1Spec]:
    """The TP1 batches of ``rows`` rows (elements of X's shape without its ranges axis): t_m's
    (None on the direct plan's W = f), t_m^2's and the candidates' dot products'."""
    f, w = SEGMENT_FRAC, plan.work
    octaves, candidates = rows * plan.scales.size, rows * plan.octave.size
    return (Trunc1Spec(octaves, w - f) if w > f else None,
            Trunc1Spec(octaves, 2 * w - f if plan.direct else f),
            Trunc1Spec(candidates, DOT_BITS))


async def prepare_selections(
    ctx: Context, requests: Sequence[tuple[SegmentPlan, int]]
) -> list[tuple[CompareMaterial, AShare | None]]:
    """The comparisons' material of :func:`segmented_power` for each (plan, rows) request
    (:func:`.fastcmp.prepare_compare_batches`: one preparation per kind of comparison, 2
    rounds) and, with two ranges, r_a r_i from their random bits (1 round more, one product
    per kind of switch): phase ``offline``, 2 or 3 rounds."""
    with ctx.phase(OFFLINE_PHASE):
        materials = await prepare_compare_batches(ctx, [
            CompareSpec(rows, plan.thresholds.size, "less", plan.bits) for plan, rows in requests])
        switched: dict[tuple[int, int], list[int]] = {}
        for i, (plan, _) in enumerate(requests):
            if len(plan.candidates) > 1:
                n = plan.candidates[0].stop - plan.candidates[0].start - 1
                switched.setdefault((plan.thresholds.size, n), []).append(i)
        made = await ctx.gather(*(functools.partial(_switch_pairs, r=concatenate(
            [materials[i].bits.arith.map(np.transpose) for i in group]), n=n)
            for (_, n), group in switched.items()))  # r: (rows, thresholds) per request
    pairs: dict[int, AShare] = {}
    for group, products in zip(switched.values(), made, strict=True):
        start = 0
        for i in group:
            pairs[i] = products[start : start + requests[i][1]]
            start += requests[i][1]
    return [(materials[i], pairs.get(i)) for i in range(len(requests))]


async def prepare_segment_batches(
    ctx: Context, requests: Sequence[tuple[SegmentPlan, int]], *, tuples: bool = True,
) -> list[SegmentMaterial]:
    """The offline material of :func:`segmented_power` for each (plan, rows) request (public
    parameters only; phase ``offline``, 4 rounds): the TP1 tuples in one preparation per
    truncation width for all of them (:func:`.trunc1.prepare_trunc1_batches`), beside the
    comparisons' material in one preparation per kind of comparison
    (:func:`prepare_selections`). A preparation costs the same few protocol steps whatever
    its size, so a pass's 91 selections cost as much local time as two. Start it early,
    beside earlier work, and pass each as ``pre``: then no online round of the power waits
    on an offline one. ``tuples=False``: no TP1 tuples (the material's ``one_round`` False:
    the power then truncates its candidates in 2 rounds each, 3 rounds more on the wide
    plan, 1 more on the direct one, and about 100-130 bytes per truncation fewer offline)."""
    specs = [spec for plan, rows in requests for spec in segment_specs(plan, rows)
             ] if tuples else [None] * (3 * len(requests))
    got, selections = await ctx.gather(lambda c: prepare_trunc1_batches(c, specs),
                                       lambda c: prepare_selections(c, requests))
    return [SegmentMaterial(*got[3 * i : 3 * i + 3], *selections[i])
            for i in range(len(requests))]


async def prepare_segments(ctx: Context, plan: SegmentPlan, rows: int, tuples: bool = True
                           ) -> SegmentMaterial:
    """:func:`prepare_segment_batches` for one request."""
    return (await prepare_segment_batches(ctx, [(plan, rows)], tuples=tuples))[0]


async def segment_candidates(
    ctx: Context, x: AShare | RingArray, plan: SegmentPlan, pre: SegmentMaterial | None = None
) -> AShare:
    """Every candidate (module docstring) of x (shape (*shape, ranges)), shape
    (*shape, candidates), every truncation by TP1 (:mod:`.trunc1`; ``pre``: its tuples from
    :func:`prepare_segments`, None: prepared inline): per octave t_m (exact, local) and t_m,
    t_m^2 at SEGMENT_FRAC bits (1 round on the direct plan, t_m's truncation beside the
    square; else 2: truncation, then square), per candidate one dot product of length 2
    (1 round): 2 or 3 rounds. Material without tuples (``pre.one_round`` False): every
    truncation by :mod:`.trunc`'s in 2 rounds, 4 or 6 rounds.

    ``x`` as 3-out-of-3 shares z (:func:`segmented_power`; wide plan only): t_m's TP1 takes
    P_i's share z_i 2^(W+1-m) (- 3 2^W at P_0) + beta_i, beta a *second* fresh zero-sharing,
    one word per octave and element. Why the second mask: TP1 on 3-out-of-3 shares sends
    w_i = t_i + r_i to both others, and P_(i-1) knows r_i, so P_(i-1) learns t_i. With
    t_i = z_i 2^(W+1-m) + beta_i, what each party learns of z is masked twice over: E2 =
    P_(s+2) gets z_E1 (the comparisons' swap, masked by alpha_(s+1), from k_(s+1), which E2
    lacks) and t_(m,s) (masked by beta_(m,s) = F(k_s) - F(k_(s+1)): k_(s+1) again, under a
    fresh label, so independent of alpha and of the other octaves' betas); E1 = P_(s+1)
    gets z_E2 (alpha_(s+2), k_s) and t_(m,s+2) (beta, k_s); S = P_s gets t_(m,s+1) only
    (beta, k_(s+2)). Every received word is a value plus a fresh PRG word of a key the
    receiver lacks: uniform. With beta = alpha (or no beta) E2 would hold z_s, z_(s+1) and
    its own z_(s+2), i.e. X itself; the scales 2^(W+1-m) are powers of two, so even z_s
    2^(W+1-m) mod 2^64 would give X's low bits. The opened c = t + r stays uniform (r).
    Without tuples, :func:`.trunc.truncate_additive` takes t_i unmasked and masks it with
    fresh words of its own in beta's place (an opener's word comes from the key it shares with
    the dealer, which the other opener lacks), and sends each masked word to one opener only:
    a subset of the above."""
    role, f, w = ctx.role, SEGMENT_FRAC, plan.work
    trunc = _Truncations(pre)
    if not isinstance(x, AShare):
        if plan.direct:
            raise ValueError("3-out-of-3 input only on the wide plan (W = 60)")
        shares = ring.mul(x[..., plan.octave_range], plan.scales)
        if role == 0:
            shares = ring.add(shares, to_ring(neg(3 << w)))
        t = await trunc.additive(ctx, shares, w - f)
    else:
        exact = x[..., plan.octave_range].scale(plan.scales).add_public(role, neg(3 << w))
        if plan.direct:  # (W = F: t_m is exact already)
            t, t2 = await ctx.gather(
                Ready(exact) if w == f else lambda c: trunc.replicated(c, exact, w - f),
                lambda c: square_fxp(c, exact, bits=2 * w - f, **trunc.of("t2")))
            return await _candidates_from_t(ctx, plan, exact, t, w, trunc, t2)
        t = await trunc.replicated(ctx, exact, w - f)
    return await _candidates_from_t(ctx, plan, t, t, f, trunc)


class _Truncations:
    """How :func:`segment_candidates` truncates, by its material: TP1 (one round) from the
    tuples in ``pre`` (or made inline when None), or, material without tuples, the 2-round
    truncation of :mod:`.trunc`."""

    def __init__(self, pre: SegmentMaterial | None) -> None:
        self.pre = pre
        self.rounds: Rounds = 1 if pre is None or pre.one_round else 2

    def tuples(self, name: str) -> Trunc1Material | None:
        """The TP1 tuples of :class:`SegmentMaterial`'s field ``name`` (None: made inline)."""
        return None if self.pre is None else getattr(self.pre, name)

    def of(self, name: str) -> dict[str, Any]:
        """The ``rounds`` and ``pre`` arguments of a product's truncation (``name``: its
        tuples' field of :class:`SegmentMaterial`)."""
        return {"rounds": self.rounds, "pre": self.tuples(name)}

    async def replicated(self, ctx: Context, x: AShare, bits: int) -> AShare:
        if self.rounds == 2:
            return await truncate(ctx, x, bits)
        return await truncate1(ctx, x, bits, pre=self.tuples("t"))

    async def additive(self, ctx: Context, z: RingArray, bits: int) -> AShare:
        if self.rounds == 2:
            return await truncate_additive(ctx, z, bits)
        return await truncate1_additive(ctx, z, bits, pre=self.tuples("t"))


async def _candidates_from_t(
    ctx: Context, plan: SegmentPlan, exact: AShare, t: AShare, low: int, trunc: _Truncations,
    t2: AShare | None = None,
) -> AShare:
    """The candidates from t_m at SEGMENT_FRAC bits (``exact``: t_m at ``low`` bits, for
    a_1 s) and t_m^2 (squared here, 1 or 2 rounds, when None): the dot products (1 or 2
    rounds, by ``trunc``)."""
    if t2 is None:
        t2 = await square_fxp(ctx, t, bits=SEGMENT_FRAC, **trunc.of("t2"))
    lhs, rhs = await offload(_operands, plan, ctx.role, exact, t, t2, low, size=4 * t.size)
    dots = await dot_fxp(ctx, lhs, rhs, DOT_BITS, **trunc.of("dot"))
    return await offload(dots.scale, plan.shifts, size=dots.size)


_IN2 = types.Array(types.uint64, 2, "A", readonly=True)
_IN1 = types.Array(types.uint64, 1, "A", readonly=True)
_OUT3 = types.Array(types.uint64, 3, "C")


@njit(types.void(_IN2, _IN2, _IN2, types.Array(types.intp, 1, "A", readonly=True), _IN1, _IN1,
                 _IN1, _IN2, types.boolean, _OUT3, _OUT3), nogil=True, cache=True)
def _operands_kernel(e, u, u2, octave, halves, low_public, s_public, coefficients, public,
                     lhs, rhs):  # pragma: no cover - compiled
    one = np.uint64(1) if public else np.uint64(0)
    for j in range(octave.size):
        o, h = octave[j], halves[j]
        a0, a1, a2 = coefficients[0, j], coefficients[1, j], coefficients[2, j]
        a3, a4 = coefficients[3, j], coefficients[4, j]
        s2_public = h * h * s_public[1] if public else np.uint64(0)
        add_low = low_public[j] if public else np.uint64(0)
        add_s = s_public[0] * h if public else np.uint64(0)
        add_a0 = a0 if public else np.uint64(0)
        add_a2 = a2 if public else np.uint64(0)
        for r in range(e.shape[0]):
            s_low = e[r, o] + add_low
            s = u[r, o] - add_s
            s2 = u2[r, o] - u[r, o] * h + s2_public
            lhs[r, j, 0] = s2
            lhs[r, j, 1] = one
            rhs[r, j, 0] = s * a3 + s2 * a4 + add_a2
            rhs[r, j, 1] = s_low * a1 + add_a0


def _operands(plan: SegmentPlan, role: int, exact: AShare, t: AShare, squared: AShare,
              low: int) -> tuple[AShare, AShare]:
    """Every candidate's dot-product operands [s^2, 1] and [a_2 + a_3 s + a_4 s^2, a_0 + a_1 s]
    (shape (*rows, candidates, 2)), with s = t_m - centre at F bits (s from ``exact`` at
    ``low`` bits for a_1 s) and s^2 = t_m^2 - 2 centre t_m + centre^2 (module docstring): one
    numba pass per share component instead of about 40 numpy calls; public constants enter
    x_0 (P_0's first component, P_2's second)."""
    f, rows = SEGMENT_FRAC, t.shape[:-1]
    halves = plan.halves
    low_public = ring.neg(ring.mul(halves, 1 << (low - 1)))
    s_public = to_ring([1 << (f - 1), 1 << (f - 2)])
    shape = (*rows, plan.octave.size, 2)
    parts = []
    for component, public in ((0, role == 0), (1, role == 2)):
        lhs, rhs = np.empty(shape, RING_DTYPE), np.empty(shape, RING_DTYPE)
        e, u, u2 = (np.ascontiguousarray((a.first, a.second)[component]).reshape(-1, a.shape[-1])
                    for a in (exact, t, squared))
        _operands_kernel(e, u, u2, plan.octave, halves, low_public, s_public, plan.coefficients,
                         public, lhs.reshape(-1, *shape[-2:]), rhs.reshape(-1, *shape[-2:]))
        parts.append((lhs, rhs))
    (lhs0, rhs0), (lhs1, rhs1) = parts
    return AShare(lhs0, lhs1), AShare(rhs0, rhs1)


__all__ = [
    "DIRECT_MAX_FRAC", "DOT_BITS", "EXTENSION", "SEGMENT_FRAC", "Exponents", "SegmentMaterial",
    "SegmentPlan", "Segments", "plan_segments", "prepare_segment_batches", "prepare_segments",
    "prepare_selections", "segment_candidates", "segment_specs", "segmented_power",
]
