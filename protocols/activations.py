"""GeLU and SiLU as piecewise polynomials (PUMA's, and more accurate ones).

Two evaluators, both exact outside their outermost breakpoints for every |x| < 2^62 (0 below,
x above: garbage polynomial values there are multiplied by an exact 0):

- :class:`PiecewisePolynomial` (GeLU, PUMA's SiLU): breakpoints, and per interval a piece that
  is 0, x, or c0 + a x + sum_k c_k u^k in a variable u = x / s or u = (x / s)^2 with |u| <= 1
  on the pieces' intervals. The breakpoint comparisons (one batched comparison) and the
  polynomials run concurrently (:func:`~.polynomial.piecewise`); all pieces share one set of
  powers and one truncation, and the selection's multiplications run alongside the
  comparisons' opening, so rounds = max(comparison (3), pieces) + 1. ``method="accurate"`` GeLU uses
  GeLU(x) - x/2 being *even*: one polynomial in u = (x/T)^2 on [-T, T], 0 below -T and x above
  T, i.e. two comparisons instead of PUMA's three. Fit (offline, numpy): Lawson's
  iteratively reweighted least squares (minimax) of f(x) - x/2 on 20,001 points of [-T, T],
  T chosen on a 0.01 grid so that the polynomial's error equals the tail error |f(x) - relu(x)|
  at T.
- :class:`TablePolynomial` (SiLU, ``method="accurate"``, and :func:`.exp.neg_exp`): a
  polynomial of degree d in v = x / s (s a power of two) on each of the intervals between
  thresholds t_0 < ... < t_m, 0 below t_0, and from t_m on x (SiLU) or the last polynomial
  (negExp). The comparisons [x >= t_k] (one batch sharing its leaves,
  :func:`.fastcmp.compare_thresholds`, opened as arithmetic 0/1 shares) select each
  element's row of a public coefficient table locally, C = sum_k [x >= t_k] (row_k -
  row_{k-1}); the powers of v run alongside the comparisons, and the result is one dot
  product C . (1, v, ..., v^d) with one truncation. v's powers and the coefficients carry
  fractional bits of their own per table (headroom and precision differ: SiLU 28 and 27,
  negExp 25 and 32). SiLU's identity x = scale v is one more row, (0, scale, 0, ..., 0), when
  a bound on |x| leaves the dot product room for it (the coefficients then at 25 bits for
  |x| <= 2^8); without a bound it is the ring product [x >= t_m] x beside the dot product.
  Rounds: max(comparison (4; 3 on chains of one tree level), powers (2 per level)) + dot
  product (2): 6 for SiLU and negExp (degree 4: v^2, then v^3 and v^4).
  Where the whole selection is a row of the table (SiLU with a bound, negExp), the bits can
  instead be opened to the comparisons' two evaluators only (``selection="evaluators"``:
  :mod:`.evaluators`), who then hold the selected row as additive shares and exchange it
  masked for the dot product's cross terms, 66 bytes per element fewer for SiLU's 8
  thresholds (the bits' arithmetic sharing offline, 24 per bit, becomes 8 per bit; the
  exchange adds 64 online). The exchange needs the bits only, so it runs beside the powers:
  no round more where the comparisons' tree has one level (16-bit chains or shorter: SiLU
  with |x| <= 2^7, 6 rounds), one more where it has two (2^8: 7 rounds), unless x comes
  from a truncated product, whose dealer holds its components a round early, so the
  leaves start in the product's last round (a LLaMA layer's gate: 6 rounds either way).
  There, ``horner=True`` makes v^2 only and splits the dot product as A + v^2 B (A the
  terms up to v^2, B = C_3 v + C_4 v^2 truncated apart to the coefficients' bits,
  :func:`.evaluators.selected_horner`): v^3 and v^4 (87 bytes per element) give way to B's
  truncation (43.5), for 2 rounds more (the tradeoff "fewer-bytes" of
  :func:`.llama.layer_plan`). Its error is the dot product's plus B's rounding, < 2^-25
  |v^2| < 6e-8 (|B| <= 12.5 on its rows' intervals, |v^2 B| <= 2.6: far inside the ring).
  SiLU in a LLaMA layer takes the evaluators (:func:`.llama.mlp`); negExp keeps its bits
  opened to all (its 54-bit chains' two tree levels would put the exchange a round after
  the powers, and the softmax is on every layer's critical path).
  Fit (offline, numpy): per interval, Lawson's minimax of SiLU on 8,001 points in the interval's
  own variable w in [-1, 1], converted to powers of v; thresholds by a greedy search from -11
  on a 0.025 grid (each piece as wide as a fit error of 2.6e-5 where it meets [-3, 3], 1.55e-4
  elsewhere, allows): 7 pieces of degree 4 (the earlier table: 4 of degree 6, 8 rounds).
  Each piece is fit on its interval extended by :attr:`TablePolynomial.slack` = 2^-8 above
  its end (largest fit error on [-3, 3] 2.61e-5 instead of 2.60e-5; 1.54e-4 elsewhere, as
  before), so that the comparisons may ignore x's 10 lowest bits (at 18 fractional bits;
  ``drop`` of :func:`.fastcmp.compare_thresholds`): an x less than 2^-8 above a threshold
  may take the row below it, which holds there (above -11 the zero row: |SiLU| <= 1.844e-4
  there, the tail's own error). The chains are 10 bits shorter: 17 instead of 27 for |x| <=
  2^8, 16 and one tree level fewer for |x| <= 2^7 (SmolLM2's layers but two), 53 instead of
  63 without a bound.

Measured (errors: tests/test_nonlinear_activations.py, 320,001 points of [-16, 16] plus
+-2^16; costs: ``costs.py``; rounds below / from 12,288 elements; bytes per element sent by
all parties together, online + offline):

=============  ========================  ==================  =======  ======  ==============
function       breakpoints               powers              rounds   bytes   max error (at)
=============  ========================  ==================  =======  ======  ==============
GeLU accurate  -3.15, 3.15               u, u^2, u^3, u^4    8 / 9    300.88  0.0026 (3.15)
                                                                      + 72
GeLU puma      -4, -1.95, 3              x^2, x^3, x^4, x^6  8 / 9    361.13  0.0199 (3.00)
                                                                      + 108
SiLU accurate  -11, -4.875, -2.825,       v^2, v^3, v^4       6 / 6    294.0   1.8e-4 (11)
               -0.875, 0.875, 2.975,                                  + 260
               5.175, 11
 |x| <= 2^8    (17-bit chains, the bits                      7 / 7    270.88  same
               opened to the evaluators)                              + 72
 |x| <= 2^7    (16-bit chains: one tree                      6 / 6    260.88  same
               level; the evaluators)                                 + 79
 2^8, Horner   (the evaluators; A + v^2 B) v^2                9 / 9    227.38  same
                                                                      + 72
 2^7, Horner   (one tree level)           v^2                 8 / 8    217.38  same
                                                                      + 79
SiLU puma      -8, -4, 4                 x^2, x^4, x^6       8 / 9    316.88  0.0719 (4.00)
                                                                      + 108
=============  ========================  ==================  =======  ======  ==============

SiLU accurate: max error 2.9e-5 on [-3, 3] (1.1e-4 on [3, 11), 1.6e-4 on [-11 + 2^-8, -3],
the tail's 1.8e-4 at +-11 and in the slack above -11). Its bytes: the comparisons' shared
leaves (24.6) and per threshold 9 online and 32.5 offline (8.5), about 43.5 per power (3;
v^2 41.75: v = x / 8 is x itself read at 21 bits, so v v is truncated by 14 bits, not 28:
:func:`.polynomial.powers`), 45 for the dot product, 24 for [x >= 11] x. With a bound on
|x| (``silu(..., bound=B)``) the comparisons run on L-bit chains, (B + slack + 11) 2^18 <
2^L, less the 10 dropped bits: for B = 2^8, 5 leaves of at most 4 bits (7.75 shared) and
per threshold 3.5 online and 1 + 24 offline (the tree keeps 2 levels: the same rounds;
opened to the evaluators, :mod:`.evaluators`: per threshold 3.25 online and 1 + 8 offline,
and 64 online per element for the selected row's exchange, 7 rounds); and x is the table's
last row, no product: its value x 2^(25 + 28) stays below the truncation's 2^62 wherever
the chains are exact (-(501 - 2^-8) <= x < 501 = 2^9 - 11), the coefficients at 25 bits
instead of 27 (their rounding adds at most 1.6e-7, measured 3.6e-8; the dot product
truncates 2 bits fewer, 0.25 bytes).
The identity stays exact: x 2^(25 + 28 - 18) truncates with no remainder.

The other errors are those of the approximations on the whole real line (fixed-point rounding
adds < 1e-4). Per element: the comparisons' shared leaves
(29.1) and per breakpoint 10 online and 36 offline, about 44 per fused
multiplication+truncation (one per power, one more for u = (x/T)^2), 27 for the truncation of
all pieces together, 24 per breakpoint for the selection.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Literal, NamedTuple

import numpy as np

from puma_async.context import Context, protocol

from . import ring
from .arith import dot_fxp, mul, mul_fxp
from .compare import to_arith
from .evaluators import (
    EvaluatorCompare,
    SelectedRows,
    compare_for_evaluators,
    exchange_rows,
    selected_dot,
    selected_horner,
)
from .fastcmp import CompareMaterial, CompareSpec, bounded_bits, compare_thresholds
from .fixedpoint import fixed_point
from .offload import offload
from .polynomial import Term, linear_forms, piecewise, powers, zeros_like
from .ring import RingArray, to_ring
from .shares import AShare, public_share, stack

WORK_FRAC = 30
"""Fractional bits of u and its powers (|u| <= 1 where it matters)."""
EVEN_SCALE_BITS = 24  # u = X^2 * round(2^24 / T^2), then truncated
MIN_ROW_FRAC = 24
"""A table's identity above its last threshold becomes a row of coefficients (no product of
its own) when the row's value fits the ring with the coefficients at >= 24 fractional bits:
their rounding then adds at most 2^-25 sum_k |v|^k (3.1e-7 for SiLU, |v| <= 11/8)."""
ZERO, IDENTITY = "zero", "x"
Piece = str | tuple[float, ...]  # ZERO, IDENTITY or (c0, a, c1, ..., cn)
Method = Literal["accurate", "puma"]
Selection = Literal["opened", "evaluators"]


@dataclasses.dataclass(frozen=True)
class PiecewisePolynomial:
    """Pieces on (-inf, t_0), [t_0, t_1), ..., [t_{n-1}, inf); u = x/s, or (x/s)^2 if even."""

    breakpoints: tuple[float, ...]
    pieces: tuple[Piece, ...]
    scale: float
    even: bool


@dataclasses.dataclass(frozen=True)
class TablePolynomial:
    """0 below breakpoints[0]; between breakpoints[i] and breakpoints[i + 1] the polynomial
    sum_k coefficients[i][k] v^k, v = x / scale (a power of two); from breakpoints[-1] on, x
    (``identity_above``: one row fewer) or the last polynomial. v and its powers carry
    ``power_frac`` fractional bits, the coefficients at most ``coefficient_frac``: the dot
    product's value at their sum must stay below 2^62 on the domain, and |v^a v^b|
    2^(2 power_frac) too. ``slack``: every row holds to its fit's error up to this far (real
    units) above its interval's end, so the comparisons may ignore x's bits below it
    (:meth:`dropped_bits`)."""

    breakpoints: tuple[float, ...]
    scale: float
    coefficients: tuple[tuple[float, ...], ...]
    identity_above: bool
    power_frac: int
    coefficient_frac: int
    slack: float = 0.0

    def __post_init__(self) -> None:
        assert len(self.coefficients) == len(self.breakpoints) - self.identity_above

    @property
    def degree(self) -> int:
        return len(self.coefficients[0]) - 1

    def dropped_bits(self, frac: int) -> int:
        """The low bits of x (at ``frac`` fractional bits) the comparisons may ignore: the
        most with 2^drop units <= ``slack`` (:func:`.fastcmp.compare_thresholds`' ``drop``:
        x within 2^drop units above a threshold may take the row below it)."""
        return max(0, math.floor(math.log2(self.slack)) + frac) if self.slack else 0

    @functools.cache  # noqa: B019 (the specs are module constants)
    def table(self, frac: int, identity_row: bool) -> RingArray:
        """Coefficient rows at ``frac`` fractional bits, one per interval with a zero row
        below and, if ``identity_above``, one above: x = scale v (``identity_row``) or zero
        (the identity added apart): (breakpoints + 1, degree + 1). Made once per (frac,
        identity_row): read-only."""
        zero = (0.0,) * (self.degree + 1)
        above = (0.0, self.scale, *zero[2:]) if identity_row else zero
        rows = [zero, *self.coefficients, *[above] * self.identity_above]
        scaled = [[round(c * 2.0**frac) for c in row] for row in rows]
        table = to_ring(np.array(scaled, dtype=object))
        table.flags.writeable = False
        return table

    @functools.cache  # noqa: B019 (the specs are module constants)
    def steps(self, frac: int, identity_row: bool) -> RingArray:
        """What each threshold adds to the selected row: :meth:`table`'s row differences
        (breakpoints, degree + 1), read-only."""
        table = self.table(frac, identity_row)
        steps = ring.sub(table[1:], table[:-1])
        steps.flags.writeable = False
        return steps


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
SILU_ACCURATE = TablePolynomial(
    (-11.0, -4.875, -2.825, -0.875, 0.875, 2.975, 5.175, 11.0), 8.0,
    ((-0.5659825508141461, -1.8894218541338175, -2.3989374460065696, -1.3657042294712505,
      -0.2929438651860516),
     (-0.4620508510546465, -0.5695105245567114, 2.349782371780865, 5.436665662211713,
      3.16015197675485),
     (0.02140753315140155, 4.64821852590349, 23.73069236180184, 44.87941758982541,
      30.796091643886445),
     (2.5799974310985852e-05, 3.9999999880745225, 15.960535147914939, 1.0080681028118432e-06,
      -76.30381413445767),
     (0.021259501720146082, 3.3546169414605806, 23.711264084400582, -44.82276357267785,
      30.73650516926349),
     (-0.5361582203707962, 9.191531218607368, 0.4098711796772818, -2.7721569106920967,
      1.799966577322637),
     (-0.5325671592895335, 9.75334957634305, -2.1954690058569186, 1.2331262005004207,
      -0.2611351843192404)),
    identity_above=True, power_frac=28, coefficient_frac=27,  # |v^k| < 4, |terms| sum < 2^61
    slack=2.0**-8,
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
APPROXIMATIONS: dict[tuple[str, str], PiecewisePolynomial | TablePolynomial] = {
    ("gelu", "accurate"): GELU_ACCURATE, ("gelu", "puma"): GELU_PUMA,
    ("silu", "accurate"): SILU_ACCURATE, ("silu", "puma"): SILU_PUMA,
}


async def _variable(ctx: Context, x: AShare, spec: PiecewisePolynomial, f: int
                    ) -> tuple[AShare, int]:
    """u and its fractional bits: x / s (s a power of two) is x itself read at f + log2 s
    bits (exact; :func:`.polynomial.powers` scales it to WORK_FRAC), (x / s)^2 is one
    multiplication and truncation to WORK_FRAC bits."""
    if not spec.even:
        log_scale = int(spec.scale).bit_length() - 1
        assert spec.scale == 2**log_scale and f + log_scale <= WORK_FRAC
        return x, f + log_scale
    k = round(2.0**EVEN_SCALE_BITS / spec.scale**2)
    return (await mul_fxp(ctx, x, x.scale(k), bits=2 * f + EVEN_SCALE_BITS - WORK_FRAC),
            WORK_FRAC)


async def piece_values(ctx: Context, x: AShare, spec: PiecewisePolynomial) -> list[AShare]:
    """All of spec's pieces at every element of x: one set of powers, one truncation."""
    f = fixed_point(ctx).frac_bits
    polys = [p for p in spec.pieces if isinstance(p, tuple)]
    used = sorted({k for p in polys for k, c in enumerate(p[2:], start=1) if c})
    u, u_frac = await _variable(ctx, x, spec, f)
    pw = await powers(ctx, u, used, frac=WORK_FRAC, u_frac=u_frac)
    terms = [Term(x, f, max(abs(t) for t in spec.breakpoints))]
    terms += [Term(pw[k], WORK_FRAC, 1.0) for k in used]
    rows = [[p[1]] + [p[k + 1] if k + 1 < len(p) else 0.0 for k in used] for p in polys]
    values = iter(await linear_forms(ctx, terms, rows, [p[0] for p in polys], frac_out=f))
    return [
        zeros_like(x) if p == ZERO else x if p == IDENTITY else next(values) for p in spec.pieces
    ]


async def evaluate_piecewise(ctx: Context, x: AShare, spec: PiecewisePolynomial,
                             bound: float | None = None) -> AShare:
    """spec's piece of each element of x (fixed point); exact selection for |x| < 2^62, or
    for |x| <= ``bound`` (shorter comparison chains: :func:`.polynomial.piecewise`)."""
    return await piecewise(ctx, x, spec.breakpoints, lambda c: piece_values(c, x, spec), bound)


async def evaluate_table(ctx: Context, x: AShare, spec: TablePolynomial,
                         bound: float | None = None, selection: Selection = "opened",
                         horner: bool = False,
                         pre: CompareMaterial | EvaluatorCompare | None = None) -> AShare:
    """spec's polynomial of each element of x (fixed point); exact 0 below, x above if
    ``spec.identity_above`` (from the last threshold plus ``spec.slack`` on: the comparisons
    drop x's bits below the slack, :meth:`TablePolynomial.dropped_bits`, so within it x may
    take the row below). With ``bound``, the comparisons' chains are just long enough for
    |x| <= bound (:func:`.fastcmp.bounded_bits`, the slack included): the precondition,
    beyond which the selected row is arbitrary.

    The identity x is the row (0, scale, 0, ..., 0) of the table when, wherever the
    comparisons are exact (|x| 2^f < 2^(L - 1) on L-bit chains), its value x 2^(c + p) stays
    below the truncation's 2^62 with coefficients at c >= :data:`MIN_ROW_FRAC` bits (p =
    power_frac; bound 2^8: c = 25 instead of 27); else (no bound) it is the ring product
    [x >= t_m] x beside the dot product. The garbage powers of large v meet exact zeros in
    that row.

    ``selection="evaluators"``: the bits opened to the comparisons' evaluators, who select
    the row as additive shares and exchange it masked for the dot product
    (:func:`.evaluators.exchange_rows` beside the powers, then
    :func:`.evaluators.selected_dot`: 16 d - m / 4 bytes per element more online, 16 m fewer
    offline), wherever the table holds the whole selection (with a bound, or without an
    identity above); else as ``"opened"``. There, ``horner``: the powers only up to v^h, h
    = ceil(d / 2), and the dot product as A + v^h B (:func:`.evaluators.selected_horner`):
    for degree 4, v^3 and v^4 fewer (87 bytes per element) for B's truncation (43.5), 2
    rounds more. ``pre``: the comparisons' material, made ahead for the selection this call
    makes (:func:`table_compare_spec`; else a ValueError); None: made beside the
    comparisons' leaves (phase ``offline``, no round of its own).

    Cost: max(comparison (4, 3 on one tree level), powers) + dot product (2) rounds, 6 rounds
    up to degree 4 and 8 up to degree 8; selected by the evaluators max(comparison + 1,
    powers) + 2 (6 or 7 for SiLU); per element one comparison per threshold, one fused
    product per power, one dot product, and, apart, one ring product for the identity
    (module docstring).
    """
    f = fixed_point(ctx).frac_bits
    role, m, d, frac = ctx.role, len(spec.breakpoints), spec.degree, spec.power_frac
    shift = frac - f - (int(spec.scale).bit_length() - 1)
    assert spec.scale == 2 ** (int(spec.scale).bit_length() - 1) and shift >= 0
    thresholds, chain, drop, room, in_table, by_evaluators = _comparisons(ctx, spec, bound,
                                                                          selection)
    coefficient_frac = min(spec.coefficient_frac, room) if in_table else spec.coefficient_frac
    row_steps = spec.steps(coefficient_frac, in_table)
    bits = coefficient_frac + frac - f
    if pre is not None and isinstance(pre, EvaluatorCompare) != by_evaluators:
        raise ValueError("comparisons' material made for the other selection (opened to all "
                         "three or to the evaluators: table_compare_spec)")
    top = (d + 1) // 2 if by_evaluators and horner else d  # the highest power made

    async def compared(c: Context) -> AShare | SelectedRows:
        if by_evaluators:  # the rows' exchange needs the bits only: beside the powers
            assert pre is None or isinstance(pre, EvaluatorCompare)
            bits_ = await compare_for_evaluators(c, x, thresholds, bits=chain, drop=drop,
                                                 pre=pre)
            return await exchange_rows(c, bits_, row_steps)
        assert pre is None or isinstance(pre, CompareMaterial)
        return await _below(c, x, thresholds, chain, drop, pre)

    below, pw = await ctx.gather(
        compared,
        # v = x / scale is x itself read at frac - shift bits (exact); pw[1]: v at frac
        lambda c: powers(c, x, range(2, top + 1), frac=frac, u_frac=frac - shift),
    )
    if isinstance(below, SelectedRows):
        basis = await offload(lambda: stack([pw[k] for k in range(1, top + 1)], axis=-1),
                              size=top * x.size)
        finish = selected_horner if top < d else selected_dot
        return await finish(ctx, below, basis, frac, bits)
    steps, coefficients, basis = await offload(_table_terms, role, below, row_steps, pw, frac,
                                               size=(m + d + 1) * x.size)

    async def dot(c: Context) -> AShare:
        return await dot_fxp(c, coefficients, basis, bits)

    if in_table or not spec.identity_above:
        return await dot(ctx)
    poly, identity = await ctx.gather(dot, lambda c: mul(c, steps[..., m - 1], x))
    return poly + identity


def _table_terms(party: int, below: AShare, row_steps: RingArray, pw: dict[int, AShare],
                 frac: int) -> tuple[AShare, AShare, AShare]:
    """:func:`evaluate_table`'s local work: the steps [x >= t_k] (*x, m), each element's
    coefficients (*x, d + 1: ``row_steps``, :meth:`TablePolynomial.steps`, selected) and
    its basis (1, v, ..., v^d) (*x, d + 1)."""
    steps = (-below).add_public(party, 1)
    coefficients = steps.map(np.matmul, row_steps)
    one = public_share(party, np.full(pw[1].shape, 1 << frac, dtype=np.uint64))
    basis = stack([one, *(pw[k] for k in range(1, row_steps.shape[1]))], axis=-1)
    return steps, coefficients, basis


async def _below(ctx: Context, x: AShare, thresholds: RingArray, bits: int, drop: int,
                 pre: CompareMaterial | None) -> AShare:
    """[x < t_k] for every threshold, (*x, m), ignoring ``drop`` low bits: one batch sharing
    its leaves (4 rounds; ``pre``: its material made ahead, or None)."""
    return await to_arith(ctx, await compare_thresholds(ctx, x, thresholds, bits=bits,
                                                        drop=drop, pre=pre))


class _Comparisons(NamedTuple):
    """How :func:`evaluate_table` compares and selects (public: from the table, the bound and
    the selection asked for)."""

    thresholds: RingArray
    chain: int
    """The comparisons' bits (:func:`.fastcmp.bounded_bits`)."""
    drop: int
    """The low bits they ignore (:meth:`TablePolynomial.dropped_bits`)."""
    room: int
    """Fractional bits the coefficients can have: |x| 2^(room + frac) <= 2^62 wherever the
    chain is exact."""
    in_table: bool
    """Whether the identity above the last threshold is a row of the table."""
    by_evaluators: bool
    """Whether the comparisons' bits are opened to their evaluators only."""


def _comparisons(ctx: Context, spec: TablePolynomial, bound: float | None,
                 selection: Selection) -> _Comparisons:
    """:func:`evaluate_table`'s comparisons and selection (:class:`_Comparisons`)."""
    f = fixed_point(ctx).frac_bits
    thresholds = fixed_point(ctx).encode(spec.breakpoints)
    chain = bounded_bits(None if bound is None else bound + spec.slack, thresholds, f)
    room = 63 + f - chain - spec.power_frac
    in_table = spec.identity_above and room >= MIN_ROW_FRAC
    return _Comparisons(thresholds, chain, min(spec.dropped_bits(f), chain - 2), room,
                        in_table, selection == "evaluators" and (
                            in_table or not spec.identity_above))


def table_compare_spec(ctx: Context, size: int, spec: TablePolynomial,
                       bound: float | None = None, selection: Selection = "opened"
                       ) -> tuple[CompareSpec, bool]:
    """What the comparisons' material of :func:`evaluate_table` on ``size`` elements is for
    (public), and whether it is the evaluators' (their selection: make it with
    :func:`.evaluators.prepare_evaluator_compare`) or not (:func:`.fastcmp.prepare_compare`;
    a pass's all at once: :func:`.fastcmp.prepare_compare_batches`); pass it as ``pre``."""
    plan = _comparisons(ctx, spec, bound, selection)
    return (CompareSpec(size, plan.thresholds.size, "less", plan.chain, drop=plan.drop),
            plan.by_evaluators)


@protocol
async def gelu(ctx: Context, x: AShare, method: Method = "accurate") -> AShare:
    """GeLU(x) = x Phi(x). Max error 0.0026 ("accurate") or 0.0199 ("puma", PUMA eq. 2-3).

    Cost (either method): 8 rounds below 12,288 elements, 9 rounds from there on; 300.88
    ("accurate") or 361.13 ("puma") bytes per element online, 72 or 108 offline.
    """
    return await evaluate_piecewise(ctx, x, GELU_ACCURATE if method == "accurate" else GELU_PUMA)


@protocol
async def silu(ctx: Context, x: AShare, method: Method = "accurate",
               bound: float | None = None, selection: Selection = "evaluators",
               horner: bool = False,
               pre: CompareMaterial | EvaluatorCompare | None = None) -> AShare:
    """SiLU(x) = x sigmoid(x). Max error 1.8e-4, 2.9e-5 on [-3, 3] ("accurate"), or 0.0719
    ("puma", SPU's LLaMA).

    ``bound``: a certified bound on |x| (the model owner's, ``LlamaConfig.gate_bounds``).
    The comparisons then run on carry chains of L bits with (bound + 2^-8 + 11) 2^18 < 2^L
    (:func:`.fastcmp.bounded_bits`; 27 for bound 2^8 instead of 63), less the 10 low bits
    the table's slack lets them drop: exact as without a bound for every |x| <= bound (in
    fact while x - t and x - t - 2^-8 lie in [-2^(L-18), 2^(L-18)) for every threshold t),
    and *garbage* beyond (an arbitrary row of the table: the bound is the caller's
    precondition, as a comparison's own range is). None: the full chains (64 bits, less 10).
    ``pre`` ("accurate" only): the comparisons' material made ahead
    (:func:`table_compare_spec` of :data:`SILU_ACCURATE` with this call's bound and
    selection), or None: made beside the comparisons.

    Cost: "accurate" 6 rounds at any size, 294 bytes per element online and 260 offline
    (bound 2^8: 7 rounds, 270.88 online and 72 offline: the identity is a row of the
    table, and the comparisons' bits are opened to their evaluators, who select the row,
    :func:`evaluate_table`; with ``selection="opened"``, to all three: 6 rounds, 208.88
    and 200; ``horner``, where the evaluators select: v^3 and v^4 not made, the dot
    product by Horner's split, :func:`.evaluators.selected_horner`: 9 rounds, 227.38
    online and 72 offline, bound 2^7: 8 rounds, 217.38 and 79); "puma" 8 rounds
    below 12,288 elements, 9 rounds from there on, 316.88 and 108 bytes.
    """
    if method == "accurate":
        return await evaluate_table(ctx, x, SILU_ACCURATE, bound, selection=selection,
                                    horner=horner, pre=pre)
    if pre is not None:
        raise ValueError("comparisons' material made ahead serves the accurate SiLU only")
    return await evaluate_piecewise(ctx, x, SILU_PUMA, bound)


__all__ = [
    "APPROXIMATIONS", "GELU_ACCURATE", "GELU_PUMA", "SILU_ACCURATE", "SILU_PUMA", "Method",
    "PiecewisePolynomial", "Selection", "TablePolynomial", "evaluate_piecewise", "evaluate_table",
    "gelu", "piece_values", "silu", "table_compare_spec",
]
