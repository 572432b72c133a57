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
  (:class:`~.shares.ProductShare`) to an output role; each party sends its share: 3 elements
  per element in all, and no truncation before it (the role gets the product at 2f bits).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from puma_async.context import ArraySpec, Context
from puma_async.roles import PARTIES, next_party, prev_party

from . import ring
from .offload import offload
from .prg import Prg
from .randomness import input_prg
from .ring import RingArray, to_ring
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


async def reveal_product_to(
    ctx: Context, z: ProductShare | None, role: int, shape: Sequence[int]
) -> RingArray | None:
    """Open a product z to ``role`` (outside the parties) from its 3-out-of-3 shares.

    Run by the three parties (with their :class:`ProductShare`, masked by a fresh
    zero-sharing) and by ``role`` (with ``z=None`` and the public ``shape``), which gets
    z = z_0 + z_1 + z_2 mod 2^64 at the shares' ``frac_bits`` (2f for a product of two values
    at f; decode with that format) and learns nothing else: the three values it receives
    are uniform but for their sum. Instead of truncating z (2 rounds, ~42 bytes per element
    in all) and opening the result (2 elements per element): 1 round, 1 element per element
    from each party (24 bytes per element in all); the role gets z without the truncation's
    rounding. Headroom: z must satisfy |z| < 2^63 (read as two's complement), i.e.
    |value| < 2^(63 - frac_bits) (2^27 at 36 bits).
    """
    me = ctx.role
    if me in PARTIES and z is not None:
        await ctx.send_arrays(role, z.value)
    if me != role:
        return None
    spec = ArraySpec.ring(shape)
    total = await ctx.recv_array(0, spec)
    for party in PARTIES[1:]:
        total = ring.add(total, await ctx.recv_array(party, spec))
    return total
