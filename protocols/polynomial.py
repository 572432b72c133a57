"""Polynomials and piecewise polynomials of secret fixed-point values.

One evaluator serves every polynomial approximation in puma-async (GeLU, SiLU, negExp,
reciprocal, rsqrt; the last two finish with :func:`.arith.dot_fxp` instead of a linear
form, and rsqrt selects among many candidate pieces, :func:`.segments.segmented_power`):

- :func:`powers` computes the powers u^k a polynomial needs with the least multiplicative
  depth: u^k in round ceil(log2 k), all products of one depth in one batched multiplication
  and one batched truncation (u^k = u^(2^(d-1)) * u^(k - 2^(d-1))).
- :func:`linear_forms` takes public linear combinations of shares (the powers, and any other
  term such as x/2) with a single truncation for all of them: coefficients are scaled as far
  as the ring allows (term bounds are public), so no precision is lost to rounding them.
- :func:`piecewise` evaluates the breakpoint comparisons (one batch sharing its leaves,
  :func:`.fastcmp.compare_thresholds`) and the pieces *concurrently*
  (:meth:`Context.gather`); each comparison bit multiplies the difference of its
  neighbouring pieces *alongside* the opening (:func:`.compare.sign_times`: c = bit ^ r
  opened beside r times the factor).

Costs (bytes sent by all parties together, per element): powers of degree n: ceil(log2 n)
levels of one fused multiplication+truncation (:func:`.arith.mul_fxp`: 2 rounds, ~44 bytes
per power); linear_forms: one truncation (2 rounds, ~27 bytes per form); piecewise:
max(comparison (3), pieces) + 1 rounds; 29.125 bytes per element for the shared leaves and
per breakpoint 10 online (tree and opening) + 36 offline (dealt products and a random bit)
+ 24 for its product. Pieces that are garbage
outside their interval (overflowing powers of large inputs) are fine: ring arithmetic is
exact, so b * (P_i - P_{i-1}) cancels them exactly.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Awaitable, Callable, Iterable, Sequence

import numpy as np

from puma_async.context import Context

from .arith import mul_fxp
from .compare import sign_times
from .fastcmp import bounded_bits, compare_thresholds
from .fixedpoint import fixed_point
from .offload import offload
from .ring import RING_DTYPE
from .shares import AShare, stack
from .trunc import truncate

HEADROOM_BITS = 61
"""Linear combinations are scaled to stay below 2^61 in magnitude (truncation needs < 2^62)."""

Pieces = Callable[[Context], Awaitable[Sequence[AShare]]]


def zeros_like(x: AShare) -> AShare:
    """A sharing of zero of x's shape (no communication)."""
    return AShare(np.zeros(x.shape, RING_DTYPE), np.zeros(x.shape, RING_DTYPE))


def repeat_last(share: AShare, n: int) -> AShare:
    """Repeat a share of shape s as shape (*s, n) (local)."""
    return share.map(lambda a: np.repeat(a[..., None], n, axis=-1))


def _plan(degrees: Iterable[int]) -> list[list[tuple[int, int, int]]]:
    """Products (k, a, b) with k = a + b, grouped by depth, that yield every wanted power."""
    wanted = {int(k) for k in degrees if k > 1}
    steps: dict[int, tuple[int, int]] = {}
    while wanted:
        k = wanted.pop()
        if k in steps:
            continue
        a = 1 << ((k - 1).bit_length() - 1)
        steps[k] = (a, k - a)
        wanted |= {p for p in (a, k - a) if p > 1 and p not in steps}
    levels: dict[int, list[tuple[int, int, int]]] = {}
    for k, (a, b) in sorted(steps.items()):
        levels.setdefault((k - 1).bit_length(), []).append((k, a, b))
    return [levels[d] for d in sorted(levels)]


async def powers(
    ctx: Context, u: AShare, degrees: Iterable[int], *, frac: int, u_frac: int | None = None
) -> dict[int, AShare]:
    """u^k for every k in ``degrees`` (and u^1), all with ``frac`` fractional bits.

    ``u_frac``: u's own fractional bits when u is exact at fewer (x / 2^s of an x at f bits
    is x itself read at f + s bits): the first level's square u u is then truncated by
    2 u_frac - frac bits instead of frac (the same value: u at frac bits is u 2^(frac -
    u_frac), exact), i.e. frac - u_frac bits fewer dealt per element, and u is scaled to frac
    bits locally for the rest.

    Cost: ceil(log2 max k) rounds of one multiplication and one truncation; one element
    (of each) per power computed. Needs |u^a * u^b| * 2^(2 frac) < 2^62 on the valid range.
    """
    low = frac if u_frac is None else u_frac
    if not (frac + 1) / 2 <= low <= frac:
        raise ValueError(f"u_frac must lie in [(frac + 1) / 2, frac], got {low} for {frac}")
    out = {1: u if low == frac else u.scale(np.uint64(1 << (frac - low)))}
    for depth, level in enumerate(_plan(degrees)):
        if depth == 0:  # u^2 = u u, the only product of the first level
            out[2] = await mul_fxp(ctx, u, u, bits=2 * low - frac)
            continue
        lhs, rhs = await offload(_operands, out, level, size=len(level) * u.size)
        prods = await mul_fxp(ctx, lhs, rhs, bits=frac)
        for i, (k, _, _) in enumerate(level):
            out[k] = prods[i]
    return out


def _operands(out: dict[int, AShare], level: list[tuple[int, int, int]]
              ) -> tuple[AShare, AShare]:
    """The left and right factors of one level's products (k, a, b), stacked."""
    return stack([out[a] for _, a, _ in level]), stack([out[b] for _, _, b in level])


@dataclasses.dataclass(frozen=True)
class Term:
    """A share in a linear form: ``frac`` fractional bits, |value| <= ``bound`` where it matters."""

    share: AShare
    frac: int
    bound: float


async def linear_forms(
    ctx: Context,
    terms: Sequence[Term],
    coefficients: Sequence[Sequence[float]],
    constants: Sequence[float],
    *,
    frac_out: int,
) -> list[AShare]:
    """For each row i: constants[i] + sum_j coefficients[i][j] * terms[j], at ``frac_out`` bits.

    All rows share one scale 2^Q, the largest keeping every row below 2^61 given the terms'
    bounds; coefficient j is the integer round(c * 2^(Q - frac_j)). Cost: one truncation by
    Q - frac_out (0 rounds if Q == frac_out).
    """
    coef = np.asarray(coefficients, dtype=np.float64)
    const = np.asarray(constants, dtype=np.float64)
    bounds = np.array([t.bound for t in terms])
    peak = float(np.max(np.abs(coef) @ bounds + np.abs(const)))
    q = HEADROOM_BITS - max(0, math.ceil(math.log2(peak)))
    if q < frac_out or any(q - t.frac < 8 for t in terms):
        raise ValueError(f"linear form too large for the ring (scale 2^{q})")
    rows = await offload(_scaled_forms, ctx.role, terms, coef, const, q,
                         size=coef.size * terms[0].share.size)
    out = await truncate(ctx, rows, bits=q - frac_out) if q > frac_out else rows
    return [out[i] for i in range(coef.shape[0])]


def _scaled_forms(party: int, terms: Sequence[Term], coef: np.ndarray, const: np.ndarray,
                  q: int) -> AShare:
    """Every row of :func:`linear_forms` at 2^q, stacked (local)."""
    rows = []
    for i in range(coef.shape[0]):
        acc = zeros_like(terms[0].share).add_public(party, _ring_int(const[i] * 2.0**q))
        for c, t in zip(coef[i], terms, strict=True):
            if c:
                acc = acc + t.share.scale(_ring_int(c * 2.0 ** (q - t.frac)))
        rows.append(acc)
    return stack(rows)


def _ring_int(v: float) -> np.uint64:
    return np.int64(round(v)).view(np.uint64)


async def piecewise(
    ctx: Context, x: AShare, breakpoints: Sequence[float], pieces: Pieces,
    bound: float | None = None,
) -> AShare:
    """The piece of each element: pieces[i] on [t_{i-1}, t_i) (t_{-1} = -inf, t_n = +inf).

    ``pieces(ctx)`` returns the n + 1 piece values for all elements; it runs concurrently with
    the comparisons of x with the n breakpoints (:func:`.fastcmp.compare_thresholds`: one
    batch, the leaves shared), and the result P_n - sum_i [x < t_i] (P_{i+1} - P_i) costs one
    multiplication per breakpoint, beside the opening (:func:`.compare.sign_times`). Exact
    selection for |x| < 2^62, or with ``bound`` for |x| <= bound only (shorter comparison
    chains, :func:`.fastcmp.bounded_bits`; any piece's value beyond). Rounds: max(comparison
    (3), pieces) + 1.
    """
    fx = fixed_point(ctx)
    thresholds = fx.encode(breakpoints)
    bits = bounded_bits(bound, thresholds, fx.frac_bits)
    values: list[AShare] = []

    async def steps(c: Context) -> AShare:
        values.extend(await pieces(c))
        return await offload(
            lambda: stack([values[i + 1] - values[i] for i in range(len(breakpoints))], axis=-1),
            size=len(breakpoints) * x.size)

    below, diffs = await ctx.gather(
        lambda c: compare_thresholds(c, x, thresholds, bits=bits), steps
    )
    selected = await sign_times(ctx, below, diffs)
    return await offload(lambda: values[-1] - selected.sum(axis=-1), size=selected.size)


__all__ = [
    "HEADROOM_BITS", "Term", "linear_forms", "piecewise", "powers", "repeat_last", "zeros_like",
]
