"""Getting secrets in and out: input sharing by an owner, opening to parties or a role.

Inputs: the owner (model owner, client, or any role outside the three parties) derives x_0 and
x_1 from the seeds of :func:`.randomness.setup_input_seeds` (the parties' typed
:class:`~.randomness.InputSeeds` state) and sends only x_2 = x - x_0 - x_1 to P_1 and P_2:
2 elements per input element from the owner, 1 round, 0 from the parties. Every received
array is checked against its public shape (a protocol error naming the sender if not).

Openings (1 round each):
- :func:`reveal`: to all three parties; each party sends 1 element per element.
- :func:`reveal_to_party`: to one party P_j; P_{j+1} sends 1 element per element.
- :func:`reveal_to`: to an output role (the client); P_0 sends x_0 + x_1, P_1 sends x_2:
  2 elements per element in all.
- :func:`reveal_product_to`: a product's untruncated 3-out-of-3 shares
  (:class:`~.shares.ProductShare`, at F fractional bits) to an output role, which gets it at
  the session's f: each party sends bits [F - f, 64) of its share, packed (46 bits at
  F = 36, f = 18: 17.25 bytes per element in all), and no truncation before it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from puma_async.context import ArraySpec, Context
from puma_async.roles import PARTIES, next_party, prev_party

from . import ring
from .bitpack import pack_low_bits, packed_size, unpack_low_bits
from .fixedpoint import FixedPoint, fixed_point
from .offload import offload
from .prg import Prg
from .randomness import input_prg
from .ring import RING_DTYPE, RingArray, to_ring
from .shares import AShare, ProductShare


async def share_input(
    ctx: Context, owner: int, shape: Sequence[int], value: RingArray | None = None
) -> AShare | None:
    """Secret-share ``value`` (ring elements, known to ``owner`` only) among P_0, P_1, P_2.

    Run by the owner (with ``value``) and by the three parties (with the public ``shape``);
    the parties get their :class:`AShare`, the owner gets None. The pseudorandom halves of a
    large input are drawn in a worker thread.
    """
    shape = tuple(int(d) for d in shape)
    size = int(np.prod(shape, dtype=np.int64))
    label = ctx.label(b"input")
    if ctx.role == owner:
        if value is None or np.shape(value) != shape:
            raise ValueError(f"input owner must give a value of shape {shape}")
        s0, s1 = input_prg(ctx, owner, 0), input_prg(ctx, owner, 1)
        x2 = await offload(_third_share, value, s0, s1, label, shape, size=size)
        for party in (1, 2):
            await ctx.send_arrays(party, x2)
        return None
    if ctx.role not in PARTIES:
        return None
    me = ctx.role
    if me == 0:
        first, second = input_prg(ctx, owner, 0), input_prg(ctx, owner, 1)
        return AShare(*await offload(_draw_pair, first, second, label, shape, size=size))
    x2 = await ctx.recv_array(owner, ArraySpec.ring(shape))
    seed = input_prg(ctx, owner, 1 if me == 1 else 0)
    mine = await offload(seed.ring, label, shape, size=size)
    return AShare(mine, x2) if me == 1 else AShare(x2, mine)


def input_ahead(ctx: Context, owner: int, shape: Sequence[int]) -> tuple[bytes, AShare]:
    """P_0's share of the next input ``ctx`` receives from ``owner`` (its next
    :func:`share_input`, of ``shape``), drawn before the owner has it: both of P_0's halves,
    x_0 and x_1, come from the owner's input seeds. Returns the input's label and the share
    :func:`share_input` will return."""
    if ctx.role != 0:
        raise ValueError("only P0 draws both halves of its input shares from the seeds")
    label, shape = ctx.next_label(b"input"), tuple(int(d) for d in shape)
    first, second = input_prg(ctx, owner, 0), input_prg(ctx, owner, 1)
    return label, AShare(first.ring(label, shape), second.ring(label, shape))


def _third_share(value: RingArray, s0: Prg, s1: Prg, label: bytes, shape: tuple[int, ...]
                 ) -> RingArray:
    """x_2 = x - x_0 - x_1, with x_0 and x_1 drawn from the input seeds."""
    return ring.sub(ring.sub(to_ring(value), s0.ring(label, shape)), s1.ring(label, shape))


def _draw_pair(s0: Prg, s1: Prg, label: bytes, shape: tuple[int, ...]
               ) -> tuple[RingArray, RingArray]:
    return s0.ring(label, shape), s1.ring(label, shape)


async def reveal(ctx: Context, x: AShare) -> RingArray:
    """Open x to all three parties (each sends its second half to the previous party)."""
    me = ctx.role
    await ctx.send_arrays(prev_party(me), x.second)
    missing = await ctx.recv_array(next_party(me), ArraySpec.ring(x.shape))
    return ring.add(ring.add(x.first, x.second), missing)


async def reveal_to_party(ctx: Context, x: AShare, party: int) -> RingArray | None:
    """Open x to party ``party`` only; the others get None."""
    me = ctx.role
    if me == next_party(party):
        await ctx.send_arrays(party, x.second)
    if me != party:
        return None
    missing = await ctx.recv_array(next_party(me), ArraySpec.ring(x.shape))
    return ring.add(ring.add(x.first, x.second), missing)


async def reveal_to(
    ctx: Context, x: AShare | None, role: int, shape: Sequence[int]
) -> RingArray | None:
    """Open x to ``role`` (outside the parties, e.g. the client), which gets the value.

    Run by the three parties (with their share) and by ``role`` (with ``x=None`` and the
    public ``shape``).
    """
    me = ctx.role
    if me == 0 and x is not None:
        await ctx.send_arrays(role, ring.add(x.first, x.second))
    elif me == 1 and x is not None:
        await ctx.send_arrays(role, x.second)
    if me != role:
        return None
    spec = ArraySpec.ring(shape)
    return ring.add(await ctx.recv_array(0, spec), await ctx.recv_array(1, spec))


def dropped_bits(frac_bits: int, fx: FixedPoint) -> int:
    """The low bits d = frac_bits - f each party drops from its share of a product at
    ``frac_bits`` fractional bits opened at ``fx``'s f (:func:`reveal_product_to`): 1..63."""
    d = frac_bits - fx.frac_bits
    if not 1 <= d <= 63:
        raise ValueError(f"a product at {frac_bits} fractional bits cannot be opened at "
                         f"{fx.frac_bits}: each party must drop 1..63 low bits, not {d}")
    return d


def high_part(share: RingArray, drop: int) -> RingArray:
    """What a party sends of its 3-out-of-3 share: bits [drop, 64), i.e. share >> drop."""
    return np.asarray(share, RING_DTYPE) >> np.uint64(drop)


def add_high_parts(total: RingArray, drop: int) -> RingArray:
    """The opened value from ``total``, the sum (mod 2^64 or mod 2^(64 - drop)) of the three
    parties' :func:`high_part`: that sum mod 2^(64 - drop), sign-extended to a ring element,
    i.e. floor(z / 2^drop) - e with e in {0, 1, 2} (:func:`reveal_product_to`)."""
    shifted = (np.asarray(total, RING_DTYPE) << np.uint64(drop)).view(np.int64)
    return (shifted >> np.int64(drop)).view(RING_DTYPE)


async def reveal_product_to(
    ctx: Context, z: ProductShare | None, role: int, shape: Sequence[int], frac_bits: int
) -> RingArray | None:
    """Open a product z at ``frac_bits`` (F) fractional bits to ``role`` (outside the parties)
    from its 3-out-of-3 shares, at the session's f (:func:`.fixedpoint.fixed_point`).

    Run by the three parties (with their :class:`ProductShare` at F, masked by a fresh
    zero-sharing) and by ``role`` (with ``z=None``, the public ``shape`` and F). Each party
    drops its share's low d = F - f bits and sends bits [d, 64) (:func:`high_part`, packed:
    :func:`.bitpack.pack_low_bits`); ``role`` adds the three mod 2^(64 - d)
    (:func:`add_high_parts`) and gets, as a ring element at f fractional bits, exactly

        floor(z / 2^d) - e,  e in {0, 1, 2}  (the carries of the three dropped low parts),

    so that z / 2^F - 3 * 2^-f < opened <= z / 2^F: at f fractional bits (for the logits,
    F = 36 and f = 18: the precision they had when truncated before being opened) and at most
    2 units of 2^-f below the floor. The wrap-around stays consistent (2^64 / 2^d =
    2^(64 - d)). Headroom: -2^63 + 2^(d + 1) <= z < 2^63 read as two's complement (|z| < 2^63
    but for its lowest 2^(d + 1) values), i.e. |z / 2^F| < 2^(63 - F) (2^27 at F = 36).
    ``role`` learns that value only: the shares are uniform but for their sum, and what a
    party sends is a function of its share (the dropped bits are just not sent).
    Cost: 1 round; each party sends 64 - d bits per element (46 at d = 18: 17.25 bytes per
    element in all, against 24 for whole shares), instead of a truncation (2 rounds, ~42
    bytes per element) and an opening.
    """
    drop = dropped_bits(frac_bits, fixed_point(ctx))
    bits = 64 - drop
    n = int(np.prod(shape, dtype=np.int64))
    me = ctx.role
    if me in PARTIES and z is not None:
        if z.frac_bits != frac_bits or z.shape != tuple(shape):
            raise ValueError(f"share at {z.frac_bits} bits of {z.shape}, "
                             f"expected {frac_bits} bits of {tuple(shape)}")
        await ctx.send_arrays(role, pack_low_bits(high_part(z.value, drop), bits))
    if me != role:
        return None
    spec = ArraySpec.of(np.uint8, packed_size(n, bits))
    total = np.zeros(n, RING_DTYPE)
    for party in PARTIES:
        total = ring.add(total, unpack_low_bits(await ctx.recv_array(party, spec), bits, n))
    return add_high_parts(total, drop).reshape(tuple(shape))
