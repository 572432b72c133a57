"""Comparisons and selection by a secret bit on arithmetic shares.

Results are arithmetic shares of 0 or 1 (ring values; for a fixed-point 1.0 multiply by the
public 2^f). A comparison is :func:`.fastcmp.compare_thresholds` (3 rounds to masked bits,
with a random bit r per bit prepared alongside); the bit c = result ^ r is then opened
(:func:`.fastcmp.open_masked`) and the arithmetic result is c + r - 2 c r (:func:`to_arith`),
so the conversion adds a single round. The same opening *selects*: bit * f =
c f + (1 - 2c) r f needs only the product r f, computed beside the opening
(:func:`sign_times`), so [x < 0] * f costs the comparison's 4 rounds and one multiplication
(:func:`relu`; piecewise functions, the maximum and the segment selection of rsqrt use
:func:`sign_times` on several bits at once).

**Range.** ``less_than(x, y)`` is [x < y] for x, y read as two's-complement signed integers,
computed as the MSB of x - y mod 2^64. It is exact (never wrong: no probabilistic step)
whenever the true difference x - y lies in [-2^63, 2^63); ``greater_than`` (the MSB of y - x)
whenever it lies in (-2^63, 2^63]. So every comparison is exact when |x - y| < 2^63, in
particular whenever x and y both lie in [-2^62, 2^62]; outside, the result is the MSB of the
wrapped difference. (No single MSB can be exact on all 2^64 differences for both: [d < 0]
splits them in halves, [d > 0] does not.) Equality is exact for all ring values. Fixed-point
values compare as their encodings do.

Costs per element (all three parties together; offline: material independent of the data,
:func:`.fastcmp.prepare_compare`; declared and tested in :mod:`.costs`):

=========================  ======  =======================  =====================
function                   rounds  online bytes             offline bytes
=========================  ======  =======================  =====================
``less_than`` & co.        4       39.125                   36 (12 dealt + 24 r)
``equal`` & co.            4       35.5                     30.875
``select``                 1       24 (one multiplication)
``relu``                   4       63.125                   36
``sign_times``             1       24 + 4 bits (opening)
=========================  ======  =======================  =====================
"""

from __future__ import annotations

from typing import Any

import numpy as np

from puma_async.context import Context, protocol

from .arith import mul
from .fastcmp import MaskedBits, compare_thresholds, open_masked
from .offload import offload
from .ring import RING_DTYPE, RingArray, neg, to_ring
from .shares import AShare

_ONE = np.uint64(1)


async def masked_sign(ctx: Context, x: AShare) -> MaskedBits:
    """[x < 0] (x's MSB) masked and ready to open, x's shape: 3 rounds
    (:func:`.fastcmp.compare_thresholds` with the threshold 0)."""
    return (await compare_thresholds(ctx, x, [0])).reshape(x.shape)


def sign_product(c: RingArray, f: AShare, rf: AShare) -> AShare:
    """bit * f = c f + (1 - 2c) r f from the opened c and the product rf = r * f (local)."""
    return f.scale(c) + rf.scale(to_ring(np.int64(1) - (c.view(np.int64) << 1)))


async def to_arith(ctx: Context, bits: MaskedBits) -> AShare:
    """Arithmetic 0/1 shares of masked bits: c opened (1 round), then c + (1 - 2c) r."""
    c = await open_masked(ctx, bits)
    return await offload(_bit_arith, ctx.role, c, bits.r_arith, size=c.size)


def _bit_arith(party: int, c: RingArray, r: AShare) -> AShare:
    """c + (1 - 2c) r (local): :func:`sign_product` with f = 1, the public c entering x_0
    (P_0's first half, P_2's second) without the products by f's ones and zeros."""
    s = np.subtract(_ONE, c << _ONE, dtype=RING_DTYPE)  # a ufunc: 0-d c wraps silently
    first, second = r.first * s, r.second * s
    if party == 0:
        first += c
    elif party == 2:
        second += c
    return AShare(first, second)


async def sign_times(ctx: Context, bits: MaskedBits, f: AShare) -> AShare:
    """bit * f elementwise (f of the bits' shape): 1 round, :func:`.fastcmp.open_masked`
    beside one multiplication r * f (one ring element per element per party). Exact."""
    c, rf = await ctx.gather(
        lambda c_: open_masked(c_, bits), lambda c_: mul(c_, bits.r_arith, f)
    )
    return await offload(sign_product, c, f, rf, size=c.size)


@protocol
async def is_negative(ctx: Context, x: AShare) -> AShare:
    """[x < 0] for x read as a signed 64-bit value (its MSB): exact for every ring value.

    Cost: 4 rounds; 39.125 bytes per element online, 36 offline (all parties together).
    """
    return await to_arith(ctx, await masked_sign(ctx, x))


@protocol
async def less_than(ctx: Context, x: AShare, y: AShare) -> AShare:
    """[x < y], exact when x - y (as integers) is in [-2^63, 2^63).

    Cost: as :func:`is_negative` (4 rounds).
    """
    return await to_arith(ctx, await masked_sign(ctx, x - y))


@protocol
async def greater_than(ctx: Context, x: AShare, y: AShare) -> AShare:
    """[x > y], exact when x - y is in (-2^63, 2^63].

    Cost: as :func:`is_negative` (4 rounds).
    """
    return await to_arith(ctx, await masked_sign(ctx, y - x))


@protocol
async def less_than_public(ctx: Context, x: AShare, c: Any) -> AShare:
    """[x < c] for public ring values c (broadcast), exact when x - c is in [-2^63, 2^63).

    Cost: as :func:`is_negative` (4 rounds).
    """
    return await to_arith(ctx, await masked_sign(ctx, x.add_public(ctx.role, neg(c))))


@protocol
async def greater_than_public(ctx: Context, x: AShare, c: Any) -> AShare:
    """[x > c] for public ring values c, exact when x - c is in (-2^63, 2^63].

    Cost: as :func:`is_negative` (4 rounds).
    """
    return await to_arith(ctx, await masked_sign(ctx, (-x).add_public(ctx.role, c)))


@protocol
async def equal(ctx: Context, x: AShare, y: AShare) -> AShare:
    """[x == y] (mod 2^64): exact for all ring values.

    Cost: 4 rounds; 35.5 bytes per element online, 30.875 offline (all parties together).
    """
    return await _is_zero(ctx, x - y)


@protocol
async def equal_public(ctx: Context, x: AShare, c: Any) -> AShare:
    """[x == c] for public ring values c (broadcast).

    Cost: as :func:`equal` (4 rounds).
    """
    return await _is_zero(ctx, x.add_public(ctx.role, neg(c)))


async def _is_zero(ctx: Context, x: AShare) -> AShare:
    """[x == 0] as arithmetic 0/1 shares of x's shape (4 rounds)."""
    bits = await compare_thresholds(ctx, x, [0], kind="equal")
    return await to_arith(ctx, bits.reshape(x.shape))


async def select(ctx: Context, b: AShare, x: AShare, y: AShare) -> AShare:
    """b ? x : y = y + b (x - y) for arithmetic 0/1 shares b (any x, y: no truncation).

    Cost: 1 round, one multiplication (one ring element per element per party).
    """
    return y + await mul(ctx, b, x - y)


@protocol
async def relu(ctx: Context, x: AShare) -> AShare:
    """max(x, 0) = x - [x < 0] x, exact for every ring value read as signed (no truncation).

    The product r x runs beside the opening (:func:`sign_times`), so it costs no extra round.
    Cost: 4 rounds; is_negative's bytes plus one ring element per element per party
    (63.125 bytes per element online, 36 offline, all parties together).
    """
    return x - await sign_times(ctx, await masked_sign(ctx, x), x)


__all__ = [
    "equal", "equal_public", "greater_than", "greater_than_public", "is_negative",
    "less_than", "less_than_public", "masked_sign", "relu", "select", "sign_product",
    "sign_times", "to_arith",
]
