"""Maximum along an axis and softmax along the last axis (PUMA's Alg. 2, with a public mask).

softmax(x)_i = e^(x_i - max x) / sum_j e^(x_j - max x), with e^ by :func:`.exp.neg_exp`
and one reciprocal per row (:func:`.reciprocal.reciprocal`, at 32 fractional bits), multiplied
back. Its parts are public for callers that normalise later (attention: softmax(x) @ V as
(e @ V) x r, the product with V beside the reciprocal, :func:`normalise_after`):
:func:`exp_rows`, :func:`row_reciprocals`, :func:`scale_rows`, :func:`probabilities`.
A public mask (True = attend; e.g. causal attention) is exact: masked entries are left
out of the maximum, contribute exactly zero to the sum and come out exactly zero. PUMA's
-1e-6 before negExp is dropped: it is 0.26 units at 18 fractional bits, and negExp(0) is exact
enough (the maximum is one of the entries exactly).

Costs, rows of n (bytes per element sent by the 3 parties together, online + offline;
``costs.py``):
- :func:`max_along`: rows of at most :data:`ALL_PAIRS_MAX` = 17 entries in one all-pairs
  step (:func:`.fastcmp.first_maximum`, then the selection: 4 rounds for 2 entries, 5 up to
  9, 6 up to 17); longer rows in groups of :data:`GROUP` = 8 first (5 rounds per step):
  5 rounds and 161.4 + 81 bytes per element for rows of 8; 11 rounds and 201.3 + 96 for
  rows of 128 (all pairs cost more bytes than a halving tree of comparisons, 97 per element,
  for far fewer rounds: a halving level takes 4).
- :func:`softmax`, rows of 8 (a decoding step at 8 keys): 17 rounds (max 5, negExp 6,
  reciprocal 4, product 2; 16 rounds below 12,288 elements, where the reciprocal's
  comparisons' sender is negExp's last truncation's dealer, whose share is ready a round
  early),
  586.2 + 575.8 bytes per element. Rows of 128: 23 rounds (max 11, negExp 6, reciprocal 4,
  product 2; 22 rounds below 12,288 elements), 540.9 + 423.4 bytes per element. The reciprocal's
  range is [1 - 2^-17, n (1 + 2^-17)]: every e is within one unit of [0, 1] and the
  maximum's is e^0 = 1 exactly, so the row sum's octaves are 0 .. log2 n (3 for rows of 8,
  at about 840 + 1,700 bytes per row, mostly TP1 tuples offline).
Error (tests/test_nonlinear_softmax.py; rows of scale 0.1 to 100, a dominant entry, +-2^16
entries, causal and single-entry masks): max abs error 1.7e-5 per probability; 3.4e-5 to
4.1e-5 on (12, 128, 128) rows of scale 3, where the rounding of every e (one unit at 18 bits)
adds up in the row sum (PUMA's (1 + x/32)^32 gives 0.04 to 0.065 on the same rows).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from puma_async.context import Context, protocol

from .arith import mul_fxp, product_share, stack_left, stack_right
from .compare import sign_times
from .exp import neg_exp
from .fastcmp import (
    CompareMaterial,
    MaskedBits,
    MaximumMaterial,
    MaximumSpec,
    first_maximum,
    maximum_after_leaves,
    maximum_leaves,
)
from .offload import offload
from .polynomial import repeat_last
from .reciprocal import reciprocal, reciprocal_tuples
from .ring import RingArray
from .segments import SegmentMaterial, SegmentPlan
from .shares import AShare, concatenate
from .trunc import (
    Opened,
    close_product,
    dealer_summands,
    open_product,
    product_blocks,
    resolve_bits,
)

RECIPROCAL_FRAC = 32
"""Fractional bits of the row sums' reciprocals (e * r stays below 2^51)."""


ALL_PAIRS_MAX = 17
"""Rows of at most this many entries take their maximum from all pairs at once."""
GROUP = 8
"""Longer rows are cut into groups of this many entries first (the group maxima then go on)."""


@protocol
async def max_along(ctx: Context, x: AShare, axis: int = -1) -> AShare:
    """Maximum of x along ``axis`` (removed), exact for entries in [-2^62, 2^62) (their
    differences must not wrap).

    Rows of at most :data:`ALL_PAIRS_MAX` entries: every pair compared at once, the first
    maximum found by one dealt AND level and selected (:func:`_pick`: 5 rounds for up to 9
    entries, 6 for 10 to 17). Longer rows: groups of :data:`GROUP` first (the last padded
    with its row's last entry), each reduced the same way, until the row is short.
    """
    x = x.map(np.moveaxis, axis, -1)
    while x.shape[-1] > ALL_PAIRS_MAX:
        groups = -(-x.shape[-1] // GROUP)
        padded = concatenate([x, *[x[..., -1:]] * (groups * GROUP - x.shape[-1])], axis=-1)
        x = await _pick(ctx, padded.reshape(*x.shape[:-1], groups, GROUP))
    if x.shape[-1] == 1:
        return x[..., 0]
    return await _pick(ctx, x)


async def _pick(ctx: Context, x: AShare) -> AShare:
    """The first maximum along the last axis (2 to 17 entries): [entry wins] from
    :func:`.fastcmp.first_maximum` (4 rounds; 5 from 10 entries), then sum_i [i wins] x_i
    (:func:`.compare.sign_times`: 1 round). Per row of m: 50.6 bytes per pair, and per entry
    its share of the AND's dealt products, a random bit and one multiplication."""
    wins = await first_maximum(ctx, x)
    selected = await sign_times(ctx, wins, x)
    return await offload(selected.sum, -1, size=selected.size)


def _groups(m: int) -> tuple[int, npt.NDArray[np.intp]]:
    """The first step of :func:`max_along` on rows of m: entries per compared row (m, or
    :data:`GROUP` for longer rows, cut into groups padded with the row's last entry) and
    each compared entry's column."""
    if m <= ALL_PAIRS_MAX:
        return m, np.arange(m)
    groups = -(-m // GROUP)
    return GROUP, np.minimum(np.arange(groups * GROUP), m - 1)


def product_maximum_spec(size: int, m: int, bits: int) -> MaximumSpec:
    """The first step's :class:`.fastcmp.MaximumSpec` of :func:`max_of_product` (and
    :func:`matmul_max`) on a product of ``size`` entries in rows of m > 1, truncated by
    ``bits``: make its material ahead (:func:`.fastcmp.prepare_maximum_batches`) and pass it
    as ``pre`` (rows of one entry need none: they are their own maxima)."""
    width, columns = _groups(m)
    return MaximumSpec(size // m * (columns.size // width), width, bits=64 - bits)


async def max_of_product(
    ctx: Context, z: RingArray, bits: int, keep: npt.NDArray[np.bool_] | None, *,
    product_scope: str, max_scope: str, pre: MaximumMaterial | None = None,
) -> tuple[AShare, AShare]:
    """x = z truncated by ``bits`` (z: this party's 3-out-of-3 shares of a product, masked
    by a zero-sharing; :func:`.trunc.open_product`) and x's maximum along the last axis over
    the ``keep`` entries (None: all), as :func:`max_along`, with the comparisons' leaves in
    the product's first round: S = the truncation's dealer knows G, the openers public(c),
    and x = G + public(c) modulo 2^(64 - bits) (:class:`.trunc.Opened`), which is all a
    comparison of x's differences reads: |x| < 2^(62 - bits), so they lie in
    (-2^(63 - bits), 2^(63 - bits)) and a chain of 64 - bits bits is exact. The comparisons
    are on the truncated x itself: the maximum is exactly an entry of x, and x's largest.

    Rounds: the product's 2 (scope ``product_scope``) and the maximum's (``max_scope``) end
    together 5 rounds after the product (rows of up to 9; 6 up to 17): the leaves beside the
    truncation's first round, the tree's first level beside its second; 2 fewer than
    :func:`.arith.finish_product` then :func:`max_along`, for the same bytes. Longer rows: the
    first step of groups this way, then :func:`max_along` on the group maxima. ``pre``: the
    first step's material (:func:`product_maximum_spec`), or None: made beside its leaves.
    Rows of one entry: the product alone (2 rounds), its entries their own maxima.
    """
    _check_kept(keep)
    m = z.shape[-1]
    if m == 1:  # rows of one entry (a one-position prompt's pass): it is their maximum
        with ctx.scope(product_scope):
            x = (await close_product(ctx, await open_product(ctx, z.reshape(-1), bits))
                 ).reshape(z.shape)
        return x, x[..., 0]
    rows = z.size // m
    width, columns = _groups(m)
    per_row = columns.size // width
    spec = product_maximum_spec(z.size, m, bits)
    # the truncation's blocks: the elements of the compared rows of each part of spec
    cuts = [(p.lo // width // per_row) * m + min(p.lo // width % per_row * width, m)
            for p in spec.parts] + [z.size]
    sizes = [0, 0, 0]
    for p, lo, hi in zip(spec.parts, cuts, cuts[1:], strict=False):
        sizes[(p.sender - 2) % 3] = hi - lo
    blocks = product_blocks((sizes[0], sizes[1], sizes[2]))

    def entries(a: RingArray) -> RingArray:
        a = a.reshape(rows, m)
        if keep is not None:
            a = _fill(a, keep.reshape(rows, m))
        return a[:, columns].reshape(-1)

    async def leaves(c: Context) -> tuple[RingArray | None, ...]:
        with c.scope(max_scope):
            own = await offload(lambda: entries(dealer_summands(z.reshape(-1), bits)),
                                size=z.size)
            return await maximum_leaves(c, spec, own)

    async def opened(c: Context) -> Opened:
        with c.scope(product_scope):
            return await open_product(c, z.reshape(-1), bits, blocks)

    sent, first = await ctx.gather(leaves, opened)

    async def close(c: Context) -> AShare:
        with c.scope(product_scope):
            return (await close_product(c, first)).reshape(z.shape)

    async def wins(c: Context) -> MaskedBits:
        with c.scope(max_scope):
            own = await offload(entries, first.summands, size=z.size)
            return await maximum_after_leaves(c, spec, sent, own, pre)

    x, won = await ctx.gather(close, wins)
    with ctx.scope(max_scope):
        def compared_entries() -> AShare:
            filled = x if keep is None else x.map(lambda a: _fill(a, keep))
            return filled[..., columns].reshape(rows * per_row, width)

        compared = await offload(compared_entries, size=x.size)
        selected = await sign_times(ctx, won, compared)
        top = await offload(lambda: selected.sum(axis=-1).reshape(*z.shape[:-1], per_row),
                            size=selected.size)
        if per_row > 1:
            top = await max_along(ctx, top)
        else:
            top = top[..., 0]
    return x, top


async def matmul_max(
    ctx: Context, x: AShare, y: AShare, mask: npt.ArrayLike | None = None, *,
    bits: int | None = None, product_scope: str = "product", max_scope: str = "max",
    pre: MaximumMaterial | None = None,
) -> tuple[AShare, AShare]:
    """s = x @ y truncated by ``bits`` (default frac_bits) and s's maximum along its last axis
    over the ``mask`` entries (None: all), by :func:`max_of_product` (the attention's scores
    and their maximum; ``pre``: its material). Rounds: 5 for rows of up to 9 (2 fewer than
    :func:`.arith.matmul_fxp` then :func:`max_along`), 6 up to 17."""
    z = await product_share(ctx, stack_left(x), stack_right(y))
    keep = _keep(mask, z.shape)
    return await max_of_product(ctx, z, resolve_bits(ctx, bits), keep,
                                product_scope=product_scope, max_scope=max_scope, pre=pre)


def _fill(a: RingArray, keep: npt.NDArray[np.bool_]) -> RingArray:
    """Masked entries of each row replaced by its first kept entry (left out of the
    maximum); linear, so the same on shares and on summands."""
    first = keep.argmax(axis=-1)[..., None]
    return np.where(keep, a, np.take_along_axis(a, first, axis=-1))


@protocol
async def softmax(
    ctx: Context, x: AShare, mask: npt.ArrayLike | None = None
) -> AShare:
    """Softmax of fixed-point x along the last axis; ``mask`` (public, broadcast to x) keeps
    the True entries, and every row needs at least one. Cost and error: module docstring.
    """
    keep = _keep(mask, x.shape)
    return await probabilities(ctx, await exp_rows(ctx, x, keep), keep)


def _keep(mask: npt.ArrayLike | None, shape: tuple[int, ...]) -> npt.NDArray[np.bool_] | None:
    return None if mask is None else np.broadcast_to(np.asarray(mask, dtype=bool), shape)


def _check_kept(keep: npt.NDArray[np.bool_] | None) -> None:
    """A row whose entries are all masked has no maximum and no softmax: refused."""
    if keep is not None and not keep.any(axis=-1).all():
        raise ValueError("softmax: every row needs at least one unmasked entry")


async def exp_rows(
    ctx: Context, x: AShare, mask: npt.ArrayLike | None = None, top: AShare | None = None,
    pre: CompareMaterial | None = None,
) -> AShare:
    """e = exp(x - max x) along the last axis (the maximum over the kept entries), exactly 0
    where ``mask`` is False: softmax's numerators, in [0, 1] at f bits, the row's first
    maximum exactly 1 up to negExp's error. :func:`max_along` (unless ``top`` gives it:
    :func:`max_of_product`) then :func:`.exp.neg_exp` (``pre``: its comparisons' material,
    :func:`.exp.neg_exp_compare_spec` of x's size)."""
    keep = _keep(mask, x.shape)
    _check_kept(keep)
    if top is None:
        top = await max_along(ctx, x if keep is None else await offload(
            lambda: x.map(lambda a: _fill(a, keep)), size=x.size))
    e = await neg_exp(ctx, await offload(lambda: x - repeat_last(top, x.shape[-1]),
                                         size=x.size), pre)
    return e if keep is None else await offload(e.scale, keep.astype(np.uint64), size=x.size)


async def row_reciprocals(
    ctx: Context, e: AShare, pre: SegmentMaterial | None = None
) -> AShare:
    """r = 1 / sum(e) per row of :func:`exp_rows`' e, at :data:`RECIPROCAL_FRAC` fractional
    bits. Every e is within one unit of [0, 1] and the maximum's is e^0 = 1 exactly, so the
    sum lies in [1 - 2^-17, n (1 + 2^-17)]: :func:`.reciprocal.reciprocal` on that range
    (its octaves 0 .. log2 n). ``pre``: its TP1 tuples (:func:`row_reciprocals_tuples`)."""
    return await reciprocal(ctx, e.sum(axis=-1), **_reciprocal_range(e.shape[-1]), pre=pre)


def row_reciprocals_tuples(ctx: Context, rows: int, n: int) -> tuple[SegmentPlan, int]:
    """What the TP1 tuples of :func:`row_reciprocals` on ``rows`` rows of n entries are for
    (public; :func:`.segments.prepare_segments`)."""
    return reciprocal_tuples(ctx, rows, **_reciprocal_range(n))


def _reciprocal_range(n: int) -> dict[str, float | int]:
    """The row sums' range and r's bits (:func:`row_reciprocals`)."""
    return {"min_value": 1 - 2.0**-17, "max_value": n * (1 + 2.0**-17),
            "frac_out": RECIPROCAL_FRAC}


async def scale_rows(ctx: Context, y: AShare, r: AShare) -> AShare:
    """y * r with r per row (:func:`row_reciprocals`, at :data:`RECIPROCAL_FRAC` bits): one
    truncated product, 2 rounds, 44 bytes per element of y (3 parties; 40 + 32/8).

    Headroom: the truncated value is |y r| 2^(f + 32), below 2^62 while |y r| < 2^12: always
    for probabilities, and for (e @ V) r (a weighted mean of V's rows) while |V| < 2^12.
    """
    return await mul_fxp(ctx, y, repeat_last(r, y.shape[-1]), bits=RECIPROCAL_FRAC)


async def probabilities(
    ctx: Context, e: AShare, mask: npt.ArrayLike | None = None,
    pre: SegmentMaterial | None = None,
) -> AShare:
    """e / sum(e) per row (:func:`row_reciprocals`, ``pre`` its tuples; :func:`scale_rows`),
    0 where masked."""
    keep = _keep(mask, e.shape)
    out = await scale_rows(ctx, e, await row_reciprocals(ctx, e, pre))
    return out if keep is None else out.scale(keep.astype(np.uint64))


def normalise_after(new_rows: int, keys: int, width: int) -> bool:
    """Whether softmax(x) @ V is better computed as ((e @ V) r) than as (e r) @ V, from the
    public shapes: rows of ``keys`` entries, V's rows of ``width`` values, ``new_rows`` rows
    per head.

    Both orders cost 2 rounds for the product with V and 2 for the product with r; the late
    order runs e @ V *beside* :func:`row_reciprocals` (2 rounds fewer on the critical path)
    and multiplies ``width`` values per row by r instead of ``keys`` (:func:`scale_rows`:
    44 (keys - width) bytes per row fewer, or more when keys < width). Taken when it costs no
    more bytes (width <= keys), and for one new row (a decoding step, where rounds dominate:
    SmolLM2, width 64, 9 heads, keys 8: +22.2 kB per layer, +0.67 MB per token, 1.6% of
    its 41 MB).

    Precision: the late order is not worse. (e r) @ V rounds every probability (one unit u
    each, times |v_j|: up to u sum_j |v_j|) and then the product (u); (e @ V) r rounds e @ V
    (u, times r <= 1 + 2.6e-6) and the product (u): <= 2 u + |out| 2.6e-6 (r's relative
    error, which both orders carry). Headroom of the late order: e @ V's truncated value is
    sum(e) |V| 2^(2f) <= keys |V| 2^36 (below 2^62 while keys |V| < 2^26), and
    :func:`scale_rows` needs |V| < 2^12 (|out| <= max |V|).
    """
    return width <= keys or new_rows == 1


__all__ = [
    "ALL_PAIRS_MAX", "RECIPROCAL_FRAC", "exp_rows", "matmul_max", "max_along", "max_of_product",
    "normalise_after", "probabilities", "product_maximum_spec", "row_reciprocals",
    "row_reciprocals_tuples", "scale_rows", "softmax",
]
