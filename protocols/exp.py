"""negExp: e^x for x <= 0, as PUMA's softmax needs it.

e^x = 0 below -14, else q(x)^32 by squarings, where PUMA uses q(x) = 1 + x/32 (one truncation
and five squarings, max abs error 0.0085 and a *relative* error of -x^2/64: -14% at x = -3,
which is what limits a softmax's accuracy). Here q is a quadratic, q(x) = c (x + h)^2 + k:
one more squaring, (x + h)^2, whose product is scaled by the integer C = c 2^25 and truncated
once straight to 30 fractional bits; the five squarings then run at 30 bits (negligible
rounding) and the last one truncates to 18. Fitted offline: minimise max |q(x)^32 - e^x| on
14,001 points of [-14, 0] (random search over a, b for each integer C, q = a + b x + c x^2):
C = 15718 (c = C / 2^25), a = 0.99999896, b = 0.03123472; error 4.8e-5, against PUMA's
0.0085; relative error 0.2% at x = -4, 5% at x = -8 (PUMA's: -24% at -4 and -70% at -8).

Cost: max(comparison + 1, 6 fused multiplications+truncations + 1) = 13 rounds; per element
one comparison with its selection alongside (:func:`.compare.below_times`) and 6 fused
multiplications: 354 bytes in all (measured). Measured max abs error on a 200,001-point grid
of [-20, 0] (tests/test_nonlinear_exp.py): 5.2e-5.
"""

from __future__ import annotations

from puma_async.context import Context, protocol

from .arith import mul_fxp, square_fxp
from .fixedpoint import fixed_point
from .polynomial import piecewise, zeros_like
from .shares import AShare

CUTOFF = -14.0
"""e^x is taken as 0 below this (e^-14 = 8.3e-7, a fifth of one unit at 18 bits)."""
SQUARINGS = 5
C_BITS = 25
C_INT = 15718  # c = C_INT / 2^C_BITS
A, B = 0.9999989599340146, 0.031234720481806887
H = B / (2 * C_INT / 2**C_BITS)  # q(x) = c (x + h)^2 + k
K = A - B * B / (4 * C_INT / 2**C_BITS)
WORK_FRAC = 30  # fractional bits of the squaring chain (values in [0, 1])


@protocol
async def neg_exp(ctx: Context, x: AShare) -> AShare:
    """e^x for fixed-point x <= 0 (0 below -14); garbage for x > 0 (not in the domain).

    Cost: 13 rounds, 354 bytes per element in all. Max abs error 5.2e-5 (measured).
    """
    fx = fixed_point(ctx)
    f = fx.frac_bits

    async def pieces(c: Context) -> list[AShare]:
        z = x.add_public(c.role, fx.encode(H))  # x + h in [19.3, 33.4] on [-14, 0]
        cz2 = await mul_fxp(c, z, z.scale(C_INT), bits=2 * f + C_BITS - WORK_FRAC)  # < 2^61
        y = cz2.add_public(c.role, _fixed(K, WORK_FRAC))
        for i in range(SQUARINGS):
            out_frac = f if i == SQUARINGS - 1 else WORK_FRAC
            y = await square_fxp(c, y, bits=2 * WORK_FRAC - out_frac)
        return [zeros_like(x), y]

    return await piecewise(ctx, x, [CUTOFF], pieces)


def _fixed(v: float, frac: int) -> int:
    return round(v * 2.0**frac)


__all__ = ["CUTOFF", "neg_exp"]
