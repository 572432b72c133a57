"""Boolean replicated shares: AND, opening, and their conversion to arithmetic shares.

Boolean replicated shares (:class:`~.shares.BShare`) XOR-share uint64 words: P_i holds
(b_i, b_{i+1}). XOR, NOT and masking are local; bits of many elements travel packed 64 to a
word (:mod:`.bitpack`). Costs (each party; all three parties send the same):

- :func:`and_`: 1 round, one word per word (64 bits; 1 bit per packed bit).
- :func:`open_bits`: 1 round, one word per word.
- :func:`bit_to_arith`: 2 rounds, one ring element per bit (24 bytes per bit in all), or
  k bits modulo 2^k (3k / 8 bytes); applied to random boolean shares it gives the
  comparisons' random bits in both forms (:func:`.fastcmp.prepare_random_bits`).
"""

from __future__ import annotations

import numpy as np

from puma_async.context import ArraySpec, Context
from puma_async.roles import next_party, prev_party

from .bitpack import WORD_BITS, pack_low_bits, packed_size, unpack_low_bits
from .offload import offload
from .prg import Prg
from .randomness import key_prg, zero_bits
from .ring import RingArray
from .shares import AShare, BShare

_ONE = np.uint64(1)

ALL_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)


def not_(ctx: Context, b: BShare) -> BShare:
    """Bitwise NOT (local)."""
    return b.xor_public(ctx.role, ALL_ONES)


async def and_(ctx: Context, a: BShare, b: BShare) -> BShare:
    """Bitwise AND of boolean shares of equal shape.

    Cost: 1 round; each party sends one word per word (64 bits; 1 bit per bit-slice bit).
    """
    me = ctx.role
    a, b, shape = a.map(np.ravel), b.map(np.ravel), a.shape  # 0-d: send 1-d arrays
    z = (a.first & (b.first ^ b.second)) ^ (a.second & b.first) ^ zero_bits(ctx, a.shape)
    await ctx.send_arrays(prev_party(me), z)
    got = await ctx.recv_array(next_party(me), ArraySpec.ring(a.shape))
    return BShare(z, got).map(np.reshape, shape)


async def open_bits(ctx: Context, b: BShare) -> RingArray:
    """Open boolean shares to all three parties. Cost: 1 round, one word per word per party."""
    me = ctx.role
    flat = b.map(np.ravel)
    await ctx.send_arrays(prev_party(me), flat.second)
    missing = await ctx.recv_array(next_party(me), ArraySpec.ring(flat.shape))
    return (flat.first ^ flat.second ^ missing).reshape(b.shape)


async def bit_to_arith(ctx: Context, b: BShare, ring_bits: int = 64) -> AShare:
    """Arithmetic shares modulo 2^``ring_bits`` of the bit in bit 0 of each word of ``b``
    (other bits ignored; below 64 the shares' upper bits are garbage: only
    2^(64 - ring_bits) times the value is meaningful in the 64-bit ring).

    b = d ^ e with d = b_0 ^ b_1 known to P_0 and e = b_2 known to P_1, P_2, so
    b = d + e - 2 d e. P_0 shares d as (d - R, R, 0) with R from k_1 (sending d - R to P_2);
    then d e = R e + (d - R) e, whose halves P_1 and P_2 know, is reshared with masks from
    k_0 and k_2. Every message is masked by a PRG value of a key its receiver lacks, uniform
    modulo 2^ring_bits, so it travels as ``ring_bits`` bits (:func:`.bitpack.pack_low_bits`).
    Cost: 2 rounds; each party sends ``ring_bits`` bits per bit (3 ring_bits / 8 bytes in
    all: 24 for the full ring).
    """
    if not 1 <= ring_bits <= WORD_BITS:
        raise ValueError(f"ring bits must be in [1, {WORD_BITS}], got {ring_bits}")
    me = ctx.role
    shape, b = b.shape, b.map(np.ravel)  # 0-d: send 1-d arrays
    n = b.shape[0]
    label_r, label_m0, label_m2 = ctx.label(b"b2a.r"), ctx.label(b"b2a.m0"), ctx.label(b"b2a.m2")

    async def send(to: int, values: RingArray) -> None:
        await ctx.send_arrays(to, values if ring_bits == WORD_BITS
                              else await offload(pack_low_bits, values, ring_bits, size=n))

    async def recv(frm: int) -> RingArray:
        if ring_bits == WORD_BITS:
            return await ctx.recv_array(frm, ArraySpec.ring(n))
        got = await ctx.recv_array(frm, ArraySpec.of(np.uint8, packed_size(n, ring_bits)))
        return await offload(unpack_low_bits, got, ring_bits, n, size=n)

    if me == 0:
        d0, r, m0 = await offload(_dealer_local, b, key_prg(ctx, 1), label_r, key_prg(ctx, 0),
                                  label_m0, size=n)
        await send(2, d0)
        y1 = await recv(1)
        return await offload(_replicated, d0, m0, r, y1, shape, size=n)
    if me == 1:
        e, r, y1 = await offload(_first_evaluator_local, b, key_prg(ctx, 1), label_r,
                                 key_prg(ctx, 2), label_m2, size=n)
        await send(0, y1)
        y2 = await recv(2)
        return await offload(_replicated, r, y1, e, y2, shape, size=n)
    e, m2, m0 = await offload(_second_evaluator_local, b, key_prg(ctx, 2), label_m2,
                              key_prg(ctx, 0), label_m0, size=n)
    d0 = await recv(0)
    y2 = await offload(lambda: d0 * e + m2 - m0, size=n)
    await send(1, y2)
    return await offload(_replicated, e, y2, d0, m0, shape, size=n)


def _replicated(a: RingArray, ma: RingArray, b: RingArray, mb: RingArray,
                shape: tuple[int, ...]) -> AShare:
    """The share (a - 2 ma, b - 2 mb) of ``shape``: each half minus twice its d e term."""
    return AShare(a - (ma << _ONE), b - (mb << _ONE)).reshape(shape)


# The parties' local work in bit_to_arith (PRG draws and elementwise arithmetic: in a worker
# thread for long arrays, :func:`.offload.offload`, so that the event loop stays responsive).


def _dealer_local(b: BShare, k_r: Prg, label_r: bytes, k_m0: Prg, label_m0: bytes
                  ) -> tuple[RingArray, RingArray, RingArray]:
    """P_0: d - R (d = b_0 ^ b_1), R, and its mask m_0."""
    r = k_r.ring(label_r, b.shape)
    return ((b.first ^ b.second) & _ONE) - r, r, k_m0.ring(label_m0, b.shape)


def _first_evaluator_local(b: BShare, k_r: Prg, label_r: bytes, k_m2: Prg, label_m2: bytes
                           ) -> tuple[RingArray, RingArray, RingArray]:
    """P_1: e = b_2, R, and y_1 = R e - m_2."""
    e, r = b.second & _ONE, k_r.ring(label_r, b.shape)
    return e, r, r * e - k_m2.ring(label_m2, b.shape)


def _second_evaluator_local(b: BShare, k_m2: Prg, label_m2: bytes, k_m0: Prg, label_m0: bytes
                            ) -> tuple[RingArray, RingArray, RingArray]:
    """P_2: e = b_2 and its masks m_2, m_0."""
    return b.first & _ONE, k_m2.ring(label_m2, b.shape), k_m0.ring(label_m0, b.shape)


__all__ = ["ALL_ONES", "and_", "bit_to_arith", "not_", "open_bits"]
