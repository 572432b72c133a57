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
intervals need about 1.2e-6: with the output's unit, more than 4.7e-6).

Cost: comparison (4 rounds) beside the powers (2 levels of a product and a truncation, 4
rounds), then the dot product (2): 6 rounds; per element the comparisons' shared leaves and
9 thresholds, 3 powers and one dot product: 291.88 bytes online and 324 offline (measured).
Max abs error (tests/test_nonlinear_exp.py, 200,001 points of [-20, 0]): 4.5e-6, the fit's
6.8e-7 and the output's rounding at 18 fractional bits (one unit, 3.8e-6).
"""

from __future__ import annotations

from puma_async.context import Context, protocol

from .activations import TablePolynomial, evaluate_table
from .shares import AShare

CUTOFF = -14.0
"""e^x is taken as 0 below this (e^-14 = 8.3e-7, a fifth of one unit at 18 bits)."""
NEG_EXP = TablePolynomial(
    (CUTOFF, -9.015625, -6.546875, -4.90625, -3.671875, -2.6875, -1.859375, -1.15625,
     -0.53125), 2.0,
    ((0.01484879046142017, 0.009410829440462638, 0.0022446791410533416,
      0.0002385155779872124, 9.516904764461778e-06),
     (0.12188986371952346, 0.10667722162284965, 0.035578019557059304,
      0.0053423693248157355, 0.0003039781384241668),
     (0.33342791260203475, 0.36730243622601544, 0.1565346678329667, 0.030400644594065798,
      0.0022588169384862972),
     (0.5811616452979063, 0.7723532142240608, 0.40593925482289894, 0.0989376527557844,
      0.009350259924495183),
     (0.7900856594689877, 1.2267829652502744, 0.7783146990447234, 0.2351774424211846,
      0.028126624058485858),
     (0.9226088764926368, 1.6191797920805433, 1.2165574939788288, 0.4539787958479746,
      0.06932776452616929),
     (0.9823568558715987, 1.8724350661398157, 1.6225641670784636, 0.7457913784876675,
      0.14866319792260077),
     (0.9985257788434423, 1.9806084696582684, 1.898334836759738, 1.0635875768876075,
      0.2883671060493661),
     (1.0, 1.9999271083037877, 1.997280658798762, 1.3015385138672197, 0.5167337276594013)),
    identity_above=False, power_frac=25, coefficient_frac=32,
)
"""Thresholds t_0 = CUTOFF < ... < t_8 and the coefficients of v^0 .. v^4, v = x / 2, on
[t_k, t_(k+1)) (the last piece from -0.53125 on)."""


@protocol
async def neg_exp(ctx: Context, x: AShare) -> AShare:
    """e^x for fixed-point x <= 0 (0 below -14); garbage for x > 0 (not in the domain).

    Cost: 6 rounds, 291.88 bytes per element online, 324 offline. Max abs error 4.5e-6
    (measured).
    """
    return await evaluate_table(ctx, x, NEG_EXP)


__all__ = ["CUTOFF", "NEG_EXP", "neg_exp"]
