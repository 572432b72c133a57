"""Maximum along an axis and softmax along the last axis (PUMA's Alg. 2, with a public mask).

softmax(x)_i = e^(x_i - max x) / sum_j e^(x_j - max x), with e^ by :func:`.exp.neg_exp`
and one reciprocal per row (:func:`.reciprocal.reciprocal`, at 32 fractional bits), multiplied
back. A public mask (True = attend; e.g. causal attention) is exact: masked entries are left
out of the maximum, contribute exactly zero to the sum and come out exactly zero. PUMA's
-1e-6 before negExp is dropped: it is 0.26 units at 18 fractional bits, and negExp(0) is exact
enough (the maximum is one of the entries exactly).

Costs, rows of n (bytes per element sent by the 3 parties together; ``costs.py``):
- :func:`max_along`: halving levels of one comparison with its selection alongside
  (:func:`.compare.below_times`: <= 8 rounds, 90 bytes per comparison) down to
  :data:`ALL_PAIRS_MAX` = 8 entries, then one all-pairs level (8 + ceil(log2(m - 1))
  rounds, 28 comparisons for m = 8): 8-11 rounds for n <= 8 (11 rounds and 1,577.5 bytes
  per row of 8; a halving tree: 8 per level), 42 for n = 128 (a halving tree: 54).
- :func:`softmax`, rows of 8 (a decoding step at 8 keys): 43 rounds, 668.75 bytes per
  element. Rows of 128: 73 rounds (75 rounds for (12, 128, 128), where the first halving
  levels have enough comparisons to rotate their roles: max 42, negExp 13, reciprocal 17,
  product 2), 501-502 bytes per element (max 97, negExp 353, product 44, the row's
  reciprocal 7).
Error (tests/test_nonlinear_softmax.py; rows of scale 0.1 to 100, a dominant entry, +-2^16
entries, causal and single-entry masks): max abs error 1.7e-5 per probability; 3.4e-5 to
4.1e-5 on (12, 128, 128) rows of scale 3, where the rounding of every e (one unit at 18 bits)
adds up in the row sum (PUMA's (1 + x/32)^32 gives 0.04 to 0.065 on the same rows).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

import numpy as np
import numpy.typing as npt

from puma_async.context import Context, protocol

from .arith import mul_fxp
from .bitpack import pack_bits, unpack_bits
from .boolean import and_tree, random_bit
from .compare import MaskedSign, below_times, sign_times
from .exp import neg_exp
from .msb import msb_packed
from .polynomial import repeat_last
from .reciprocal import reciprocal
from .shares import AShare, concatenate

RECIPROCAL_FRAC = 32
"""Fractional bits of the row sums' reciprocals (e * r stays below 2^51)."""


ALL_PAIRS_MAX = 8
"""Rows of at most this many entries take their maximum in one all-pairs level."""


@protocol
async def max_along(ctx: Context, x: AShare, axis: int = -1) -> AShare:
    """Maximum of x along ``axis`` (removed), exact for entries in [-2^62, 2^62) (their
    differences must not wrap).

    Halving levels (one batched comparison with its selection alongside: 8 rounds, 90 bytes
    per comparison in all) until at most :data:`ALL_PAIRS_MAX` entries are left, then one
    all-pairs level (:func:`_max_all_pairs`: 8 + ceil(log2(m - 1)) rounds for m entries).
    Rows of n <= 8: 10-11 rounds instead of 8 ceil(log2 n); longer rows save 13 rounds.
    """
    x = x.map(np.moveaxis, axis, -1)
    while x.shape[-1] > ALL_PAIRS_MAX:
        n = x.shape[-1]
        a, b = x[..., 0 : n - 1 : 2], x[..., 1:n:2]
        best = a + await below_times(ctx, a - b, _constant(b - a))
        x = concatenate([best, x[..., n - 1 :]], axis=-1) if n % 2 else best
    if x.shape[-1] == 1:
        return x[..., 0]
    return await _max_all_pairs(ctx, x)


@functools.cache
def _tournament(m: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.uint64]]:
    """For entry i and opponent slot k (opponent j = k + [k >= i]): the index of the pair
    {i, j} among the pairs i < j (np.triu_indices order), and 1 where i < j (i beats j iff
    NOT [x_i < x_j]) or 0 where j < i (i beats j iff [x_j < x_i])."""
    first, second = np.triu_indices(m, 1)
    pair = np.zeros((m, m), np.intp)
    pair[first, second] = pair[second, first] = np.arange(first.size)
    slots = np.arange(m - 1)
    opponent = slots[None, :] + (slots[None, :] >= np.arange(m)[:, None])
    index = pair[np.arange(m)[:, None], opponent]
    negate = (opponent > np.arange(m)[:, None]).astype(np.uint64)
    for table in (index, negate):
        table.flags.writeable = False
    return index, negate


async def _max_all_pairs(ctx: Context, x: AShare) -> AShare:
    """Maximum along the last axis (m >= 2 entries) from all m (m - 1) / 2 comparisons.

    Entry i wins when it beats every other entry j: x_i >= x_j for j > i and x_i > x_j for
    j < i, so exactly one entry (the first maximum) wins. The MSBs of all differences
    x_i - x_j (i < j) run in one batch with a random bit per entry; each entry's m - 1
    "beats" bits are ANDed in a tree of ceil(log2(m - 1)) rounds (packed, 1 bit each); the
    result is sum_i [i wins] x_i (:func:`.compare.sign_times`: 1 round).
    Cost: 8 + ceil(log2(m - 1)) rounds; per row about 42 bytes per pair (the MSBs) and 24
    bytes per entry, all parties together.
    """
    rows, m = x.shape[:-1], x.shape[-1]
    flat = x.reshape(-1, m)
    first, second = np.triu_indices(m, 1)
    diffs = flat[:, first] - flat[:, second]  # MSB: [x_i < x_j]
    below, (r_bool, r_arith) = await ctx.gather(
        lambda c: msb_packed(c, diffs.reshape(-1)),
        lambda c: random_bit(c, flat.size),
    )
    index, negate = _tournament(m)
    # (m - 1, rows * m): row k holds, for every entry, whether it beats its k-th opponent
    beats = below.map(lambda row: unpack_bits(row, diffs.size).reshape(diffs.shape)[:, index])
    beats = beats.xor_public(ctx.role, np.broadcast_to(negate, beats.shape))
    beats = beats.map(lambda bits: pack_bits(np.moveaxis(bits, -1, 0).reshape(m - 1, -1)))
    wins = (await and_tree(ctx, beats))[0]
    picked = await sign_times(ctx, MaskedSign(wins, r_bool, r_arith.reshape(flat.shape)), flat)
    return picked.sum(axis=-1).reshape(rows)


def _constant(value: AShare) -> Callable[[Context], Awaitable[AShare]]:
    async def get(_: Context) -> AShare:
        return value

    return get


@protocol
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


__all__ = ["ALL_PAIRS_MAX", "RECIPROCAL_FRAC", "max_along", "softmax"]
