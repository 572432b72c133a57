"""Correlated randomness from pairwise keys: zero-sharings, random shares, input seeds.

Key layout: P_j draws key k_j and gives it to P_{j-1}, so P_i holds (k_i, k_{i+1}) — the same
pattern as the shares — and k_i is unknown to P_{i+1}. A common key known to all three parties
serves public randomness. Every draw is a pure function of (key, label, shape), the label
naming the step path (:meth:`Context.label`), so concurrent steps never desynchronise streams.

Costs (setup, once per session): 1 round; each party sends one 32-byte key (P_0 two).
Draws are local: 0 rounds.
"""

from __future__ import annotations

import dataclasses

from puma_async.codec import Seed
from puma_async.errors import ProtocolError
from puma_async.roles import PARTIES, next_party, prev_party, role_name
from puma_async.runtime import Context

from . import ring
from .prg import Prg
from .ring import RingArray
from .shares import AShare, BShare

_KEYS = "protocols.keys"
_INPUT_SEEDS = "protocols.input_seeds"


@dataclasses.dataclass(frozen=True)
class PartyKeys:
    """P_i's PRGs: ``own`` = k_i (shared with P_{i-1}), ``next`` = k_{i+1} (with P_{i+1})."""

    own: Prg
    next: Prg
    common: Prg


async def _recv_seed(ctx: Context, frm: int) -> bytes:
    msg = await ctx.recv(frm)
    if not isinstance(msg, Seed):
        raise ProtocolError(f"expected a Seed, got {type(msg).__name__}", peer=frm,
                            step=ctx.step_name)
    return msg.key


async def setup_keys(ctx: Context) -> PartyKeys:
    """Agree the pairwise and common keys among P_0, P_1, P_2 (run by the three parties)."""
    me = ctx.role
    own = ctx.fresh_key()
    await ctx.send(prev_party(me), Seed(own))
    common = ctx.fresh_key() if me == 0 else b""
    if me == 0:
        for peer in (1, 2):
            await ctx.send(peer, Seed(common))
    nxt = await _recv_seed(ctx, next_party(me))
    if me != 0:
        common = await _recv_seed(ctx, 0)
    keys = PartyKeys(Prg(own), Prg(nxt), Prg(common))
    ctx.shared[_KEYS] = keys
    return keys


def party_keys(ctx: Context) -> PartyKeys:
    try:
        return ctx.shared[_KEYS]
    except KeyError:
        raise ProtocolError("setup_keys was not run for this party", step=ctx.step_name) from None


def zero_share(ctx: Context, shape: tuple[int, ...]) -> RingArray:
    """alpha_i with alpha_0 + alpha_1 + alpha_2 = 0 (3-out-of-3), fresh for this label."""
    keys = party_keys(ctx)
    label = ctx.label(b"zero")
    return ring.sub(keys.own.ring(label, shape), keys.next.ring(label, shape))


def zero_bits(ctx: Context, shape: tuple[int, ...]) -> RingArray:
    """Words beta_i with beta_0 ^ beta_1 ^ beta_2 = 0."""
    keys = party_keys(ctx)
    label = ctx.label(b"zerob")
    return keys.own.bits(label, shape) ^ keys.next.bits(label, shape)


def random_share(ctx: Context, shape: tuple[int, ...]) -> AShare:
    """A replicated sharing of a uniformly random ring element unknown to every party."""
    keys = party_keys(ctx)
    label = ctx.label(b"rand")
    return AShare(keys.own.ring(label, shape), keys.next.ring(label, shape))


def random_bshare(ctx: Context, shape: tuple[int, ...]) -> BShare:
    """A boolean replicated sharing of uniformly random words unknown to every party."""
    keys = party_keys(ctx)
    label = ctx.label(b"randb")
    return BShare(keys.own.bits(label, shape), keys.next.bits(label, shape))


def common_random(ctx: Context, shape: tuple[int, ...]) -> RingArray:
    """Random ring elements known to all three parties (not to the input/output roles)."""
    return party_keys(ctx).common.ring(ctx.label(b"common"), shape)


# --------------------------------------------------------------------------- input seeds


async def setup_input_seeds(ctx: Context, owner: int) -> None:
    """Give the parties the seeds with which ``owner`` derives two of the three shares.

    Seed s_0 goes to the holders of x_0 (P_0, P_2), s_1 to those of x_1 (P_0, P_1); inputs then
    cost ``owner`` only x_2, sent to P_1 and P_2. Run by ``owner`` and the three parties.
    Cost: 1 round, 4 seeds of 32 bytes from the owner.
    """
    if ctx.role == owner:
        s0, s1 = ctx.fresh_key(), ctx.fresh_key()
        for party, seeds in ((0, [s0, s1]), (1, [s1]), (2, [s0])):
            for seed in seeds:
                await ctx.send(party, Seed(seed))
        ctx.shared.setdefault(_INPUT_SEEDS, {})[owner] = (Prg(s0), Prg(s1))
    elif ctx.role in PARTIES:
        me = ctx.role
        seeds: dict[int, Prg] = {}
        for index in {0: (0, 1), 1: (1,), 2: (0,)}[me]:
            seeds[index] = Prg(await _recv_seed(ctx, owner))
        ctx.shared.setdefault(_INPUT_SEEDS, {})[owner] = seeds


def input_seeds(ctx: Context, owner: int) -> object:
    try:
        return ctx.shared[_INPUT_SEEDS][owner]
    except KeyError:
        raise ProtocolError(
            f"setup_input_seeds was not run for input owner {role_name(owner)}",
            step=ctx.step_name,
        ) from None


__all__ = [
    "PartyKeys", "common_random", "input_seeds", "party_keys", "random_bshare", "random_share",
    "setup_input_seeds", "setup_keys", "zero_bits", "zero_share",
]
