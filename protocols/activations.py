"""GeLU and SiLU as piecewise polynomials (PUMA's, and more accurate ones at lower cost).

Every approximation here is a :class:`PiecewisePolynomial`: breakpoints, and per interval a
piece that is 0, x, or c0 + a x + sum_k c_k u^k in a variable u = x / s or u = (x / s)^2 with
|u| <= 1 on the pieces' intervals. The breakpoint comparisons (one batched comparison) and the
polynomials run concurrently (:func:`~.polynomial.piecewise`); all pieces share one set of
powers and one truncation, and the selection's multiplications run alongside the comparison,
so rounds = max(comparison (8), pieces + 1). Pieces take a round more from 12,288 elements
on, where the truncations rotate their roles (the dealer joins the critical path).

``method="accurate"`` (default) uses GeLU(x) - x/2 and SiLU(x) - x/2 being *even*: one
polynomial in u = (x/T)^2 on [-T, T], 0 below -T and x above T, i.e. two comparisons instead
of PUMA's three. Fits (offline, numpy): Lawson's iteratively reweighted least squares
(minimax) of f(x) - x/2 on 20,001 points of [-T, T], T chosen on a 0.01 grid so that the
polynomial's error equals the tail error |f(x) - relu(x)| at T.

Measured (errors: tests/test_nonlinear_activations.py, 320,001 points of [-16, 16] plus
+-2^16; costs: ``costs.py``; rounds below / from 12,288 elements; bytes per element sent by
all parties together):

=============  ============  ====================  ======  ======  ===================
function       breakpoints   powers                rounds  bytes   max error (at x)
=============  ============  ====================  ======  ======  ===================
GeLU accurate  -3.15, 3.15   u, u^2, u^3, u^4      8 / 9   384.25  0.0026 (3.15)
GeLU puma      -4, -1.95, 3  x^2, x^3, x^4, x^6    8 / 9   503.25  0.0199 (3.00)
SiLU accurate  -7.22, 7.22   u, u^2, ..., u^6      10 / 11 471.25  0.0053 (4.14)
SiLU puma      -8, -4, 4     x^2, x^4, x^6         8 / 9   458.75  0.0719 (4.00)
=============  ============  ====================  ======  ======  ===================

The errors are those of the approximations on the whole real line (fixed-point rounding adds
< 1e-4); every |x| < 2^62 is handled exactly outside [-T, T] (0 or x, garbage polynomial
values cancel exactly). Per element: 66.25 bytes per comparison (one per breakpoint), about
44 per fused multiplication+truncation (one per power, one more for u = (x/T)^2), 27 for the
truncation of all pieces together, 24 per breakpoint for the selection.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from puma_async.context import Context, protocol

from .arith import mul_fxp
from .fixedpoint import fixed_point
from .polynomial import Term, linear_forms, piecewise, powers, zeros_like
from .shares import AShare

WORK_FRAC = 30
"""Fractional bits of u and its powers (|u| <= 1 where it matters)."""
EVEN_SCALE_BITS = 24  # u = X^2 * round(2^24 / T^2), then truncated
ZERO, IDENTITY = "zero", "x"
Piece = str | tuple[float, ...]  # ZERO, IDENTITY or (c0, a, c1, ..., cn)
Method = Literal["accurate", "puma"]


@dataclasses.dataclass(frozen=True)
class PiecewisePolynomial:
    """Pieces on (-inf, t_0), [t_0, t_1), ..., [t_{n-1}, inf); u = x/s, or (x/s)^2 if even."""

    breakpoints: tuple[float, ...]
    pieces: tuple[Piece, ...]
    scale: float
    even: bool


def _in_u(coefficients_of_x: tuple[float, ...], scale: float) -> tuple[float, ...]:
    """(c0, 0, c1 s, c2 s^2, ...) for c0 + c1 x + c2 x^2 + ..., x = s u."""
    c0, *rest = coefficients_of_x
    return (c0, 0.0, *(c * scale ** (k + 1) for k, c in enumerate(rest)))


GELU_ACCURATE = PiecewisePolynomial(
    (-3.15, 3.15),
    (ZERO, (0.0025549729572699217, 0.5, 3.80698314124406, -5.074599766186182,
            4.308677860886687, -1.4737406982635266), IDENTITY),
    3.15, even=True,
)
SILU_ACCURATE = PiecewisePolynomial(
    (-7.22, 7.22),
    (ZERO, (0.005286630053055941, 0.5, 12.267073385553832, -37.622066787954545,
            88.63399616078637, -122.10021974567915, 87.6276881255878, -25.212319764713932),
     IDENTITY),
    7.22, even=True,
)
GELU_PUMA = PiecewisePolynomial(
    (-4.0, -1.95, 3.0),
    (ZERO,
     _in_u((-0.5054031199708174, -0.42226581151983866, -0.11807612951181953,
            -0.011034134030615728), 4.0),
     _in_u((0.008526321541038084, 0.5, 0.3603292692789629, 0.0, -0.037688200365904236, 0.0,
            0.0018067462606141187), 4.0),
     IDENTITY),
    4.0, even=False,
)
SILU_PUMA = PiecewisePolynomial(
    (-8.0, -4.0, 4.0),
    (ZERO,
     _in_u((-0.3067541139982155, -0.0819767021525476, -0.0055465625580307), 8.0),
     _in_u((0.0085064025895951, 0.5, 0.2281430841728270, 0.0, -0.011113046708173, 0.0,
            0.0002743776353465), 8.0),
     IDENTITY),
    8.0, even=False,
)
APPROXIMATIONS = {
    ("gelu", "accurate"): GELU_ACCURATE, ("gelu", "puma"): GELU_PUMA,
    ("silu", "accurate"): SILU_ACCURATE, ("silu", "puma"): SILU_PUMA,
}


async def _variable(ctx: Context, x: AShare, spec: PiecewisePolynomial, f: int) -> AShare:
    """u at WORK_FRAC bits: x / s (s a power of two: exact) or (x / s)^2 (1 mult + trunc)."""
    if not spec.even:
        shift = WORK_FRAC - f - (int(spec.scale).bit_length() - 1)
        assert spec.scale == 2 ** (int(spec.scale).bit_length() - 1) and shift >= 0
        return x.scale(1 << shift)
    k = round(2.0**EVEN_SCALE_BITS / spec.scale**2)
    return await mul_fxp(ctx, x, x.scale(k), bits=2 * f + EVEN_SCALE_BITS - WORK_FRAC)


async def piece_values(ctx: Context, x: AShare, spec: PiecewisePolynomial) -> list[AShare]:
    """All of spec's pieces at every element of x: one set of powers, one truncation."""
    f = fixed_point(ctx).frac_bits
    polys = [p for p in spec.pieces if isinstance(p, tuple)]
    used = sorted({k for p in polys for k, c in enumerate(p[2:], start=1) if c})
    u = await _variable(ctx, x, spec, f)
    pw = await powers(ctx, u, used, frac=WORK_FRAC)
    terms = [Term(x, f, max(abs(t) for t in spec.breakpoints))]
    terms += [Term(pw[k], WORK_FRAC, 1.0) for k in used]
    rows = [[p[1]] + [p[k + 1] if k + 1 < len(p) else 0.0 for k in used] for p in polys]
    values = iter(await linear_forms(ctx, terms, rows, [p[0] for p in polys], frac_out=f))
    return [
        zeros_like(x) if p == ZERO else x if p == IDENTITY else next(values) for p in spec.pieces
    ]


async def evaluate_piecewise(ctx: Context, x: AShare, spec: PiecewisePolynomial) -> AShare:
    """spec's piece of each element of x (fixed point); exact selection for |x| < 2^62."""
    return await piecewise(ctx, x, spec.breakpoints, lambda c: piece_values(c, x, spec))


@protocol
async def gelu(ctx: Context, x: AShare, method: Method = "accurate") -> AShare:
    """GeLU(x) = x Phi(x). Max error 0.0026 ("accurate") or 0.0199 ("puma", PUMA eq. 2-3).

    Cost (either method): 8 rounds below 12,288 elements, 9 rounds from there on; 384.25
    ("accurate") or 503.25 ("puma") bytes per element in all.
    """
    return await evaluate_piecewise(ctx, x, APPROXIMATIONS["gelu", method])


@protocol
async def silu(ctx: Context, x: AShare, method: Method = "accurate") -> AShare:
    """SiLU(x) = x sigmoid(x). Max error 0.0053 ("accurate") or 0.0719 ("puma", SPU's LLaMA).

    Cost: "accurate" 10 rounds below 12,288 elements, 11 rounds from there on, 471.25 bytes
    per element in all; "puma" 8 rounds, then 9 rounds, 458.75 bytes.
    """
    return await evaluate_piecewise(ctx, x, APPROXIMATIONS["silu", method])


__all__ = [
    "APPROXIMATIONS", "GELU_ACCURATE", "GELU_PUMA", "SILU_ACCURATE", "SILU_PUMA", "Method",
    "PiecewisePolynomial", "evaluate_piecewise", "gelu", "piece_values", "silu",
]
