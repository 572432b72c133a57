"""Maximum along an axis and softmax along the last axis (PUMA's Alg. 2, with a public mask).

softmax(x)_i = e^(x_i - max x) / sum_j e^(x_j - max x), with e^ by :func:`.exp.neg_exp`
and one reciprocal per row (:func:`.reciprocal.reciprocal`, at 32 fractional bits), multiplied
back. A public mask (True = attend; e.g. causal attention) is exact: masked entries are left
out of the maximum, contribute exactly zero to the sum and come out exactly zero. PUMA's
-1e-6 before negExp is dropped: it is 0.26 units at 18 fractional bits, and negExp(0) is exact
enough (the maximum is one of the entries exactly).

Costs, rows of n (measured, 3 parties together):
- :func:`max_along`: ceil(log2 n) levels of one comparison with its selection alongside
  (:func:`.polynomial.below_times`): <= 8 ceil(log2 n) rounds, 90 bytes per comparison,
  n - 1 comparisons per row.
- :func:`softmax` (12, 128, 128): 88 rounds (max ~54, negExp 13, reciprocal 17, product 2),
  495 bytes per element (max 90, negExp 354, product 44, the row's reciprocal 7).
Error (tests/test_nonlinear_softmax.py; rows of scale 0.1 to 100, a dominant entry, +-2^16
entries, causal and single-entry masks): max abs error 0.0017 per probability, from negExp's
relative error at x < -4 (PUMA's (1 + x/32)^32 gives 0.04 to 0.065 on the same rows).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import numpy as np
import numpy.typing as npt

from puma_async.runtime import Context

from .arith import mul_fxp
from .exp import neg_exp
from .polynomial import below_times, repeat_last
from .reciprocal import reciprocal
from .shares import AShare, concatenate

RECIPROCAL_FRAC = 32
"""Fractional bits of the row sums' reciprocals (e * r stays below 2^51)."""


async def max_along(ctx: Context, x: AShare, axis: int = -1) -> AShare:
    """Maximum of x along ``axis`` (removed), exact for entries in [-2^62, 2^62].

    Cost: ceil(log2 n) levels of one batched comparison (8 rounds) with the selection's
    multiplication alongside: n - 1 of each per reduced row, 90 bytes each in all.
    """
    x = x.map(np.moveaxis, axis, -1)
    while x.shape[-1] > 1:
        n = x.shape[-1]
        a, b = x[..., 0 : n - 1 : 2], x[..., 1:n:2]
        best = a + await below_times(ctx, a - b, _constant(b - a))
        x = concatenate([best, x[..., n - 1 :]], axis=-1) if n % 2 else best
    return x[..., 0]


def _constant(value: AShare) -> Callable[[Context], Awaitable[AShare]]:
    async def get(_: Context) -> AShare:
        return value

    return get


async def softmax(
    ctx: Context, x: AShare, mask: npt.ArrayLike | None = None
) -> AShare:
    """Softmax of fixed-point x along the last axis; ``mask`` (public, broadcast to x) keeps
    the True entries, and every row needs at least one. Cost and error: module docstring.
    """
    n = x.shape[-1]
    keep = None if mask is None else np.broadcast_to(np.asarray(mask, dtype=bool), x.shape)
    for_max = x
    if keep is not None:
        if not keep.any(axis=-1).all():
            raise ValueError("softmax: every row needs at least one unmasked entry")
        first = keep.argmax(axis=-1)[..., None]
        for_max = x.map(
            lambda a: np.where(keep, a, np.take_along_axis(a, first, axis=-1))
        )
    top = await max_along(ctx, for_max)
    e = await neg_exp(ctx, x - repeat_last(top, n))
    if keep is not None:
        e = e.scale(keep.astype(np.uint64))
    r = await reciprocal(
        ctx, e.sum(axis=-1), min_value=0.5, max_value=n + 1.0, frac_out=RECIPROCAL_FRAC
    )
    out = await mul_fxp(ctx, e, repeat_last(r, n), bits=RECIPROCAL_FRAC)
    return out if keep is None else out.scale(keep.astype(np.uint64))


__all__ = ["RECIPROCAL_FRAC", "max_along", "softmax"]
