"""Reciprocal and reciprocal square root of positive fixed-point values.

Both take the public range [min_value, max_value] of their input (its top-bit range,
:func:`exponents`) and return garbage outside it.

- :func:`reciprocal`: normalisation, then a degree-7 polynomial in t = 4c - 3
  (:mod:`.normalise`), :data:`RECIPROCAL_COEFFICIENTS`. Cost: 13 rounds, or 14 rounds where
  the range reaches 2^F (F = the polynomial's fractional bits, up to 30); bytes per element,
  all parties: one comparison per octave of the range (sharing their leaves) and about 44
  per fused multiplication+truncation (8): 383.5 online and 206 offline for x in
  [0.5, 129] (13 rounds), 604.75 and 1,083 for [2^-18, 2^20] (14 rounds).
  Relative error <= 2.6e-6 (measured on 40,001-point log grids,
  tests/test_nonlinear_reciprocal.py) wherever the output has at least 2^20 units at
  ``frac_out``; <= 5e-6 relative + 2 units (the bound tested) everywhere.
- :func:`rsqrt`: three degree-4 segments per octave, every candidate computed alongside the
  comparisons (:mod:`.segments`), :data:`RSQRT_SEGMENTS`. Cost: 7 rounds; bytes per element,
  all parties: 2,617.5 online and 669.5 offline for [0.5, 129], 11,580 and 3,306 for
  [2^-18, 2^20] (about 290 and 82 per octave). Relative error <= 1.3e-6 (measured
  <= 8.3e-7) wherever the output has at least 2^22 units at ``frac_out``, and within that
  + 1.25 units everywhere.

Fits (offline, numpy): minimax *relative* error by Lawson's iteratively reweighted least
squares on 20,001 points: 1/c on t in [-1, 1] (1.5e-6), c^(-1/2) on each segment (3.25e-7;
SPU's single degree-4 polynomial: 8.2e-5).
"""

from __future__ import annotations

import math

from puma_async.context import Context, protocol

from .fixedpoint import fixed_point
from .normalise import power
from .segments import Exponents, Segments, plan_segments, segmented_power
from .shares import AShare

RECIPROCAL_COEFFICIENTS = (
    1.3333313307334649, -0.4444437769773076, 0.148212007658832, -0.04940400204943655,
    0.01614759698826384, -0.005382533297901583, 0.002306813250085488, -0.0007689372139334981,
)
"""1/c = sum_k a_k t^k, t = 4c - 3, c in [0.5, 1]: max relative error 1.5e-6."""

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
    """The top-bit range of fixed-point inputs in [min_value, max_value] (min: one unit)."""
    fx = fixed_point(ctx)
    lo_int = 1 if min_value is None else max(1, math.floor(min_value * fx.scale))
    hi_int = math.ceil(max_value * fx.scale)
    return Exponents(lo_int.bit_length() - 1, hi_int.bit_length() - 1, fx.frac_bits)


@protocol
async def reciprocal(
    ctx: Context,
    x: AShare,
    *,
    max_value: float,
    min_value: float | None = None,
    frac_out: int | None = None,
) -> AShare:
    """1/x for fixed-point x in [min_value (default one unit), max_value], at ``frac_out`` bits.

    Garbage outside that range. Cost: 17 or 18 rounds; log2(max_value / min_value)
    comparisons and 8 fused multiplications per element (module docstring). Relative error
    <= 2.6e-6 (measured; module docstring).
    """
    out = fixed_point(ctx).frac_bits if frac_out is None else frac_out
    return await power(
        ctx, x, -1.0, RECIPROCAL_COEFFICIENTS, exponents(ctx, min_value, max_value), out
    )


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

    Garbage outside that range. Cost: 8 rounds, 477 bytes per element and octave of
    [min_value, max_value]. Relative error <= 1.3e-6 + 1.25 units (module docstring).
    """
    out = fixed_point(ctx).frac_bits if frac_out is None else frac_out
    plan = plan_segments(RSQRT_SEGMENTS, (exponents(ctx, min_value, max_value),), out)
    return await segmented_power(ctx, x.map(lambda a: a[None]), plan)


__all__ = ["RECIPROCAL_COEFFICIENTS", "RSQRT_SEGMENTS", "exponents", "reciprocal", "rsqrt"]
