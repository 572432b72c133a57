"""negExp: e^x for x <= 0, as PUMA's softmax needs it.

e^x = 0 below -14, else a polynomial of degree 4 in v = x / 2 on each of 9 intervals of
[-14, 0] (the last one reaching on above 0, outside the domain), evaluated as a table
polynomial (:func:`.activations.evaluate_table`): the 9 comparisons [x >= t_k] (one batch
sharing its leaves) select each element's coefficient row locally while v^2, v^3, v^4 are
computed alongside, then one dot product truncated once. (PUMA uses (1 + x/32)^32: max abs
error 0.0085 and a relative error of -x^2/64, -14% at x = -3.)

Fixed point: v and its powers at 25 fractional bits (|v| <= 7 on [-14, 0]: |v^2 v^2| 2^50 <
2^62), coefficients at 32 (the terms |c_k v^k| add up to < 7.5 on their intervals: < 2^60
before the truncation). v = 0 gives exactly the constant 1 of the top piece: e^0 = 1 exactly.

Fit (offline, numpy): per interval, Lawson's iteratively reweighted least squares (minimax)
of e^x on 4,001 points, in Chebyshev polynomials of the interval's own variable w in
[-1, 1], converted to powers of v; the top piece is pinned to p(0) = 1. Thresholds on a 1/64
grid, greedily from 0 down (each interval as wide as a max error eps allows, 1,001 points
per trial fit), eps the least (bisection) for which 9 intervals reach -14: 6.8e-7 (8
intervals need about 1.2e-6: with the output's unit, more than 4.7e-6). Then every piece
below the top one is refit on its interval extended by the slack 2^-8 above its end (fit
errors 6.4e-7 to 6.94e-7), so that the comparisons may ignore x's 10 lowest bits
(:attr:`.activations.TablePolynomial.slack`): an x less than 2^-8 above a threshold may take
the row below it (above -14 the zero row: e^x < 8.4e-7 there, below one unit).

Cost: comparison (4 rounds) beside the powers (2 levels of a product and a truncation, 4
rounds), then the dot product (2): 6 rounds; per element the comparisons' shared leaves and
9 thresholds (54-bit chains: 64 less the slack's 10), 3 powers and one dot product: 278.38
bytes online and 292.5 offline (measured; 291.88 and 324 on the full chains).
Max abs error (tests/test_nonlinear_exp.py, 200,001 points of [-20, 0]): 4.5e-6, the fit's
6.9e-7 and the output's rounding at 18 fractional bits (one unit, 3.8e-6).
"""

from __future__ import annotations

from puma_async.context import Context, protocol

from .activations import TablePolynomial, evaluate_table, table_compare_spec
from .fastcmp import CompareMaterial, CompareSpec
from .shares import AShare

CUTOFF = -14.0
"""e^x is taken as 0 below this (e^-14 = 8.3e-7, a fifth of one unit at 18 bits)."""
NEG_EXP = TablePolynomial(
    (CUTOFF, -9.015625, -6.546875, -4.90625, -3.671875, -2.6875, -1.859375, -1.15625,
     -0.53125), 2.0,
    ((0.014875948466077153, 0.009429660799634181, 0.002249542121203626, 0.0002390699725730741,
      9.540451753873649e-06),
     (0.12205332743830075, 0.10684402571379539, 0.035641618981201835, 0.005353108583795349,
      0.00030465580540124714),
     (0.3337694410269101, 0.3677756819074119, 0.1567798590279875, 0.03045694192041213,
      0.002263650559808022),
     (0.581597531484626, 0.7731594988649098, 0.406496892667909, 0.09910856439673976,
      0.009369847674576342),
     (0.7904775076355379, 1.2277606723765349, 0.7792263851182546, 0.23555400789229433,
      0.02818475928159597),
     (0.9228604850776052, 1.6200583763316616, 1.21770249687779, 0.45463892381370286,
      0.06946983920388065),
     (0.982461205041788, 1.8729860688194115, 1.6236466555929157, 0.7467293620524915,
      0.14896575893031527),
     (0.9985454329479792, 1.9807976396253, 1.8990034522481367, 1.064617534158038,
      0.28895144400820777),
     (1.0, 1.9999271083037877, 1.997280658798762, 1.3015385138672197, 0.5167337276594013)),
    identity_above=False, power_frac=25, coefficient_frac=32, slack=2.0**-8,
)
"""Thresholds t_0 = CUTOFF < ... < t_8 and the coefficients of v^0 .. v^4, v = x / 2, on
[t_k, t_(k+1)) (the last piece from -0.53125 on)."""


@protocol
async def neg_exp(ctx: Context, x: AShare, pre: CompareMaterial | None = None) -> AShare:
    """e^x for fixed-point x <= 0 (0 below -14); garbage for x > 0 (not in the domain).

    ``pre``: the comparisons' material made ahead (:func:`neg_exp_compare_spec`), or None:
    made beside the comparisons (its offline bytes the same).
    Cost: 6 rounds, 278.38 bytes per element online, 292.5 offline. Max abs error 4.5e-6
    (measured).
    """
    return await evaluate_table(ctx, x, NEG_EXP, pre=pre)


def neg_exp_compare_spec(ctx: Context, size: int) -> CompareSpec:
    """What the comparisons' material of :func:`neg_exp` on ``size`` elements is for (make it
    with :func:`.fastcmp.prepare_compare_batches`)."""
    return table_compare_spec(ctx, size, NEG_EXP)[0]


__all__ = ["CUTOFF", "NEG_EXP", "neg_exp", "neg_exp_compare_spec"]
