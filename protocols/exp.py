"""negExp: e^x for x <= 0, as PUMA's softmax needs it.

e^x = 0 below -14, else q(z)^16 by four squarings, where q(z) ~ e^(x/16) is a degree-4
polynomial in z = (x + 7) / 16, in [-7/16, 7/16] on [-14, 0]. (PUMA uses (1 + x/32)^32:
max abs error 0.0085 and a relative error of -x^2/64, -14% at x = -3.)

q is one fused product: q = [z^2, 1] . [a2 + a3 z + a4 z^2, a0 + a1 z], a dot product of the
shares of z^2 and 1 with public integer combinations of z and z^2 (:func:`.arith.dot_fxp`),
truncated once to 30 fractional bits. z is x + 7 read with 4 more fractional bits (exact),
z^2 one squaring truncated to :data:`Z2_FRAC` = 22 bits; the dot product carries
:data:`DOT_FRAC` = 61 bits, so a3 and a4 (times z and z^2) are integers at 2^-17. The four
squarings then run at 30 bits (negligible rounding) and the last one truncates to 18.
Fit (offline, numpy): minimise max |q(z)^16 - e^x| on 28,001 points of [-14, 0]
(Gauss-Newton steps, each a Lawson-reweighted least-squares problem, from the Taylor series
of e^(-7/16) e^z): 1.64e-7; then a3 and a4 rounded to their 2^-17 integers and a0, a1, a2
refitted around them: 1.67e-7.

Cost: max(comparison, 6 fused multiplications+truncations) + 1 = 13 rounds; per element
one comparison with its selection beside the opening (:func:`.polynomial.piecewise`) and 6 fused
products (the squaring of z, the dot product, four squarings): 326.25 bytes online and 36
offline (measured).
Max abs error (tests/test_nonlinear_exp.py, 200,001 points of [-20, 0]): 4.7e-6, nearly all of
it the output's rounding at 18 fractional bits (one unit, 3.8e-6).
"""

from __future__ import annotations

import numpy as np

from puma_async.context import Context, protocol

from .arith import dot_fxp, square_fxp
from .fixedpoint import fixed_point
from .polynomial import piecewise, zeros_like
from .shares import AShare, public_share, stack

CUTOFF = -14.0
"""e^x is taken as 0 below this (e^-14 = 8.3e-7, a fifth of one unit at 18 bits)."""
CENTRE = 7.0  # z = (x + CENTRE) / 2^SQUARINGS
SQUARINGS = 4
COEFFICIENTS = (0.6456512008549276, 0.6455312515346298, 0.32400911167520545,
                13464 / 2**17, 4685 / 2**17)
"""a0 .. a4 of q(z) ~ e^(x/16); a3 and a4 are exact at 2^-17 (module docstring)."""
Z2_FRAC = 22
DOT_FRAC = 61
WORK_FRAC = 30  # fractional bits of the squaring chain (values in [0, 1])


@protocol
async def neg_exp(ctx: Context, x: AShare) -> AShare:
    """e^x for fixed-point x <= 0 (0 below -14); garbage for x > 0 (not in the domain).

    Cost: 13 rounds, 326.25 bytes per element online, 36 offline. Max abs error 4.7e-6
    (measured).
    """
    fx = fixed_point(ctx)
    f = fx.frac_bits
    z_frac = f + SQUARINGS

    async def pieces(c: Context) -> list[AShare]:
        z = x.add_public(c.role, fx.encode(CENTRE))  # (x + 7) at f bits = z at f + 4 bits
        z2 = await square_fxp(c, z, bits=2 * z_frac - Z2_FRAC)
        a0, a1, a2, a3, a4 = COEFFICIENTS
        high = (z.scale(_integer(a3, DOT_FRAC - Z2_FRAC - z_frac))
                + z2.scale(_integer(a4, DOT_FRAC - 2 * Z2_FRAC)))
        high = high.add_public(c.role, _integer(a2, DOT_FRAC - Z2_FRAC))
        low = z.scale(_integer(a1, DOT_FRAC - z_frac)).add_public(c.role,
                                                                 _integer(a0, DOT_FRAC))
        one = public_share(c.role, np.ones(x.shape, dtype=np.uint64))
        y = await dot_fxp(c, stack([z2, one], axis=-1), stack([high, low], axis=-1),
                          DOT_FRAC - WORK_FRAC)
        for i in range(SQUARINGS):
            out_frac = f if i == SQUARINGS - 1 else WORK_FRAC
            y = await square_fxp(c, y, bits=2 * WORK_FRAC - out_frac)
        return [zeros_like(x), y]

    return await piecewise(ctx, x, [CUTOFF], pieces)


def _integer(v: float, frac: int) -> np.uint64:
    """round(v 2^frac) as a ring element (two's complement)."""
    return np.int64(round(v * 2.0**frac)).view(np.uint64)


__all__ = ["CUTOFF", "neg_exp"]
