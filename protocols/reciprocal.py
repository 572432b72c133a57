"""Reciprocal and reciprocal square root of positive fixed-point values.

Both take the public range [min_value, max_value] of their input (its top-bit range,
:func:`exponents`; an end octave that only :data:`.segments.EXTENSION` of the range reaches is
left out, its neighbour's end segment serving it) and return garbage outside it. Both are
three degree-4 segments per octave, every candidate computed alongside the comparisons
(:func:`.segments.segmented_power`): :data:`RECIPROCAL_SEGMENTS`, :data:`RSQRT_SEGMENTS`.

Cost: 4 rounds (the comparisons 3, the candidates beside them with TP1 truncations, the
opening; :mod:`.segments`); bytes per element, all parties, about 300 online and 600
offline (mostly TP1 tuples) per octave of the range: 2,709.75 and 5,435 for [0.5, 129].
(With TP2 truncations, before: 5 rounds where the range's inputs stay below 2^32 units, else
7, and 2,586 + 669.5 bytes for [0.5, 129]; by normalisation and one degree-7 polynomial:
13 or 14 rounds, 383.5 + 206 bytes.)

- :func:`reciprocal`, error (analysis in :mod:`.segments`): |error| <= 1.9e-6 |y| +
  max(1.4 units, 4.8e-7 |y|) at ``frac_out`` where the range's inputs stay below 2^32 units
  (t_m exact: the direct plan), so relative <= 2.4e-6 wherever the output has at least
  2^21 units (the softmax's row sums: all of them); 4.8e-7 |y| more beyond (t's rounding).
  Measured (40,000-point log grids, the segment starts and range ends,
  tests/test_nonlinear_reciprocal.py): <= 2.2e-6 relative
  wherever the output has 2^20 units (the bound tested: 2.6e-6), within 2.6e-6 + 1.5 units
  everywhere.
- :func:`rsqrt`: relative error <= 1.3e-6 wherever the output has at least 2^22 units at
  ``frac_out``, and within that + 1.25 units everywhere (tested on both paths).

Fits (offline, numpy): minimax *relative* error by Lawson's iteratively reweighted least
squares (500 iterations) on 20,001 points of each segment, in s = t - centre: 1/c (1.32e-6)
and c^(-1/2) (3.25e-7; SPU's single degree-4 polynomial: 8.2e-5); on the end segments'
extensions 1.34e-6 and 3.3e-7.
"""

from __future__ import annotations

import math

from puma_async.context import Context, protocol

from .fixedpoint import fixed_point
from .segments import (
    EXTENSION,
    Exponents,
    SegmentMaterial,
    SegmentPlan,
    Segments,
    plan_segments,
    prepare_segments,
    segmented_power,
)
from .shares import AShare

RECIPROCAL_SEGMENTS = Segments(
    -1.0,
    starts=(1.0, 323 / 256, 406 / 256),
    centres=(-0.5, 0.0, 0.5),
    coefficients=(
        (1.5999988767680589, -0.6399170490491813, 0.25800370977341436,
         -0.08994516499833088, 0.06873420925502956),
        (1.333334372072864, -0.44446651972693435, 0.14797677835685524,
         -0.04859688253337428, 0.02171169477277739),
        (1.1428558530562412, -0.3265210118061276, 0.0933875706229748,
         -0.026957456087191762, 0.0068599487288561935),
    ),
)
"""1/c in three segments per octave: max relative error 1.32e-6, 1.22e-6, 1.31e-6 (1.34e-6
with :data:`.segments.EXTENSION` beyond the octave)."""

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


def exponents(ctx: Context, min_value: float | None, max_value: float) -> Exponents:
    """The top-bit range of fixed-point inputs in [min_value, max_value] (min: one unit),
    without an end octave that only :data:`.segments.EXTENSION` of the range reaches."""
    fx = fixed_point(ctx)
    lo_int = 1 if min_value is None else max(1, math.floor(min_value * fx.scale))
    hi_int = math.ceil(max_value * fx.scale)
    lo, hi = lo_int.bit_length() - 1, hi_int.bit_length() - 1
    if lo < hi and lo_int >= 2 ** (lo + 1) * (1 - EXTENSION):
        lo += 1
    if lo < hi and hi_int <= 2**hi * (1 + EXTENSION):
        hi -= 1
    return Exponents(lo, hi, fx.frac_bits)


@protocol
async def reciprocal(
    ctx: Context,
    x: AShare,
    *,
    max_value: float,
    min_value: float | None = None,
    frac_out: int | None = None,
    pre: SegmentMaterial | None = None,
    tuples: bool = True,
) -> AShare:
    """1/x for fixed-point x in [min_value (default one unit), max_value], at ``frac_out`` bits.

    Garbage outside that range. Cost: 4 rounds, about 300 bytes online and 600 offline per
    element and octave of [min_value, max_value]. Error <= 1.9e-6 |y| +
    max(1.4 units, 4.8e-7 |y|) (module docstring). ``pre``: the TP1 tuples from
    :func:`reciprocal_tuples` (None: prepared inline, or with ``tuples=False`` no tuples,
    only the comparisons' material: the candidates truncated in 2 rounds each, 5 rounds on
    the direct plan (x below 2^32 units) and 7 on the wide one, :mod:`.segments`).
    """
    plan = _plan(ctx, RECIPROCAL_SEGMENTS, min_value, max_value, frac_out)
    if pre is None and not tuples:
        pre = await prepare_segments(ctx, plan, x.size, tuples=False)
    return await segmented_power(ctx, x.map(lambda a: a[None]), plan, pre)


def reciprocal_tuples(
    ctx: Context, size: int, *, max_value: float, min_value: float | None = None,
    frac_out: int | None = None,
) -> tuple[SegmentPlan, int]:
    """What the TP1 tuples of :func:`reciprocal` on ``size`` elements are for (public): make
    them ahead with :func:`.segments.prepare_segments` and pass them as ``pre``."""
    return _plan(ctx, RECIPROCAL_SEGMENTS, min_value, max_value, frac_out), size


@protocol
async def rsqrt(
    ctx: Context,
    x: AShare,
    *,
    max_value: float,
    min_value: float | None = None,
    frac_out: int | None = None,
) -> AShare:
    """1/sqrt(x) for fixed-point x in [min_value (default one unit), max_value].

    Garbage outside that range. Cost: 4 rounds, about 300 bytes online and 600 offline per
    element and octave of [min_value, max_value]. Relative error
    <= 1.3e-6 + 1.25 units (module docstring).
    """
    plan = _plan(ctx, RSQRT_SEGMENTS, min_value, max_value, frac_out)
    return await segmented_power(ctx, x.map(lambda a: a[None]), plan)


def _plan(
    ctx: Context, fit: Segments, min_value: float | None, max_value: float,
    frac_out: int | None,
) -> SegmentPlan:
    """The plan of c^e by ``fit`` on [min_value, max_value] (:func:`.segments.plan_segments`)."""
    out = fixed_point(ctx).frac_bits if frac_out is None else frac_out
    return plan_segments(fit, (exponents(ctx, min_value, max_value),), out)


__all__ = [
    "RECIPROCAL_SEGMENTS", "RSQRT_SEGMENTS", "exponents", "reciprocal", "reciprocal_tuples",
    "rsqrt",
]
