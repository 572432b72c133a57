"""Comparisons and selection by a secret bit on arithmetic shares.

Results are arithmetic shares of 0 or 1 (ring values; for a fixed-point 1.0 multiply by the
public 2^f). A comparison takes the MSB (or the zero test) of the difference with
:mod:`.msb`, which all three parties run while they prepare a random bit r in both boolean
and arithmetic form (:func:`masked_sign`); the bit c = result ^ r is then opened
(:func:`open_sign`) and the arithmetic result is c + r - 2 c r, so the conversion adds a
single round. The same opening *selects*: bit * f = c f + (1 - 2c) r f needs only the product
r f, computed beside the opening (:func:`sign_times`), so [x < 0] * f costs the comparison's
8 rounds and one multiplication (:func:`below_times`, which piecewise functions, the maximum
and the segment selection of rsqrt are built on).

**Range.** ``less_than(x, y)`` is [x < y] for x, y read as two's-complement signed integers,
computed as the MSB of x - y mod 2^64. It is exact (never wrong: no probabilistic step)
whenever the true difference x - y lies in [-2^63, 2^63); ``greater_than`` (the MSB of y - x)
whenever it lies in (-2^63, 2^63]. So every comparison is exact when |x - y| < 2^63, in
particular whenever x and y both lie in [-2^62, 2^62]; outside, the result is the MSB of the
wrapped difference. (No single MSB can be exact on all 2^64 differences for both: [d < 0]
splits them in halves, [d > 0] does not.) Equality is exact for all ring values. Fixed-point
values compare as their encodings do.

Costs per element (all three parties together; per-party splits in each docstring; declared
and tested in :mod:`.costs`):

=========================  ======  ==================================================
function                   rounds  bytes (all parties)
=========================  ======  ==================================================
``less_than`` & co.        8       66.25 (41.9 MSB + 24 random bit + 3 bits opened)
``equal`` & co.            8       56 (31.6 zero test + 24 + 3 bits)
``select``                 1       24 (one multiplication)
``relu``                   8       90.25 (is_negative + one multiplication alongside)
``sign_times``             1       24 + 3 bits (the opening beside one multiplication)
=========================  ======  ==================================================
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from puma_async.context import Context, protocol

from .arith import mul
from .bitpack import unpack_bits
from .boolean import open_bits, random_bit
from .msb import is_zero_packed, msb_packed
from .ring import RingArray, neg, to_ring
from .shares import AShare, BShare, public_share

PackedTest = Callable[[Context, AShare], Awaitable[BShare]]
"""A test of an arithmetic share giving one packed row of boolean shares (:mod:`.msb`)."""


@dataclasses.dataclass(frozen=True)
class MaskedSign:
    """A test bit of x (its MSB: [x < 0]) ready to open or to multiply a factor: the bit as
    one packed row of boolean shares and a random bit r per element, packed boolean and
    arithmetic (x's shape)."""

    bit: BShare
    r_bool: BShare
    r_arith: AShare


async def masked_sign(ctx: Context, x: AShare, test: PackedTest = msb_packed) -> MaskedSign:
    """x's MSB (or another packed ``test`` of x) alongside a random bit per element.

    Cost: 7 rounds; the bytes of :func:`is_negative` (or :func:`equal`) but the opening
    (3 bits per element).
    """
    n = x.size
    bit, (r_bool, r_arith) = await ctx.gather(
        lambda c: test(c, x.reshape(n)), lambda c: random_bit(c, n)
    )
    return MaskedSign(bit, r_bool, r_arith.reshape(x.shape))


async def open_sign(ctx: Context, sign: MaskedSign) -> RingArray:
    """c = bit ^ r opened, a 0/1 ring value per element (x's shape): 1 round, 1 bit per element
    per party. It reveals nothing (r is uniform); the bit times f is then :func:`sign_product`
    of c, f and r * f."""
    r = sign.r_arith
    return unpack_bits(await open_bits(ctx, sign.bit ^ sign.r_bool), r.size).reshape(r.shape)


def sign_product(c: RingArray, f: AShare, rf: AShare) -> AShare:
    """bit * f = c f + (1 - 2c) r f from the opened c and the product rf = r * f (local)."""
    return f.scale(c) + rf.scale(to_ring(np.int64(1) - (c.view(np.int64) << 1)))


async def sign_times(ctx: Context, sign: MaskedSign, f: AShare) -> AShare:
    """bit * f elementwise (f of x's shape): 1 round, :func:`open_sign` beside one
    multiplication r * f (one ring element per element per party). Exact."""
    c, rf = await ctx.gather(
        lambda c_: open_sign(c_, sign), lambda c_: mul(c_, sign.r_arith, f)
    )
    return sign_product(c, f, rf)


async def below_times(
    ctx: Context, x: AShare, factor: Callable[[Context], Awaitable[AShare]]
) -> AShare:
    """[x < 0] * factor elementwise (x signed; factor of x's shape, computed concurrently).

    :func:`masked_sign` runs alongside factor(ctx), then :func:`sign_times`.
    Rounds: max(MSB + 1, factor + 1) (the comparison's 8 when factor is ready in time).
    Bytes: those of :func:`is_negative` plus one multiplication.
    """
    sign, f = await ctx.gather(lambda c: masked_sign(c, x), factor)
    return await sign_times(ctx, sign, f)


async def _test_to_arith(ctx: Context, x: AShare, test: PackedTest) -> AShare:
    """[test(x)] as arithmetic 0/1 shares of x's shape: the masked test (7 rounds), then
    c = bit ^ r opened (1 round) and [bit] = c + (1 - 2c) r, local."""
    sign = await masked_sign(ctx, x, test)
    one = public_share(ctx.role, np.ones(x.shape, np.uint64))
    return sign_product(await open_sign(ctx, sign), one, sign.r_arith)


@protocol
async def is_negative(ctx: Context, x: AShare) -> AShare:
    """[x < 0] for x read as a signed 64-bit value (its MSB): exact for every ring value.

    Cost: 8 rounds; 22.1 bytes per element sent by each party (66.25 in all: 41.9 for the
    MSB, 24 for the random bit, 3 bits opened).
    """
    return await _test_to_arith(ctx, x, msb_packed)


@protocol
async def less_than(ctx: Context, x: AShare, y: AShare) -> AShare:
    """[x < y], exact when x - y (as integers) is in [-2^63, 2^63).

    Cost: as :func:`is_negative` (8 rounds, 66.25 bytes per element in all).
    """
    return await _test_to_arith(ctx, x - y, msb_packed)


@protocol
async def greater_than(ctx: Context, x: AShare, y: AShare) -> AShare:
    """[x > y], exact when x - y is in (-2^63, 2^63].

    Cost: as :func:`is_negative` (8 rounds, 66.25 bytes per element in all).
    """
    return await _test_to_arith(ctx, y - x, msb_packed)


@protocol
async def less_than_public(ctx: Context, x: AShare, c: Any) -> AShare:
    """[x < c] for public ring values c (broadcast), exact when x - c is in [-2^63, 2^63).

    Cost: as :func:`is_negative` (8 rounds, 66.25 bytes per element in all).
    """
    return await _test_to_arith(ctx, x.add_public(ctx.role, neg(c)), msb_packed)


@protocol
async def greater_than_public(ctx: Context, x: AShare, c: Any) -> AShare:
    """[x > c] for public ring values c, exact when x - c is in (-2^63, 2^63].

    Cost: as :func:`is_negative` (8 rounds, 66.25 bytes per element in all).
    """
    return await _test_to_arith(ctx, (-x).add_public(ctx.role, c), msb_packed)


@protocol
async def equal(ctx: Context, x: AShare, y: AShare) -> AShare:
    """[x == y] (mod 2^64): exact for all ring values.

    Cost: 8 rounds; 18.7 bytes per element sent by each party (56 in all).
    """
    return await _test_to_arith(ctx, x - y, is_zero_packed)


@protocol
async def equal_public(ctx: Context, x: AShare, c: Any) -> AShare:
    """[x == c] for public ring values c (broadcast).

    Cost: as :func:`equal` (8 rounds, 56 bytes per element in all).
    """
    return await _test_to_arith(ctx, x.add_public(ctx.role, neg(c)), is_zero_packed)


async def select(ctx: Context, b: AShare, x: AShare, y: AShare) -> AShare:
    """b ? x : y = y + b (x - y) for arithmetic 0/1 shares b (any x, y: no truncation).

    Cost: 1 round, one multiplication (one ring element per element per party).
    """
    return y + await mul(ctx, b, x - y)


@protocol
async def relu(ctx: Context, x: AShare) -> AShare:
    """max(x, 0) = x - [x < 0] x, exact for every ring value read as signed (no truncation).

    The product r x runs beside the opening (:func:`sign_times`), so it costs no extra round.
    Cost: 8 rounds; is_negative's bytes plus one ring element per element per party
    (90.25 bytes per element in all).
    """
    return x - await sign_times(ctx, await masked_sign(ctx, x), x)


__all__ = [
    "MaskedSign", "below_times", "equal", "equal_public", "greater_than", "greater_than_public",
    "is_negative", "less_than", "less_than_public", "masked_sign", "open_sign", "relu", "select",
    "sign_product", "sign_times",
]
