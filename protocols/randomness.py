"""Correlated randomness from pairwise keys: zero-sharings, random shares, input seeds.

Key layout: P_j draws key k_j and gives it to P_{j-1}, so P_i holds (k_i, k_{i+1}) — the same
pattern as the shares — and k_i is unknown to P_{i+1}. A common key known to all three parties
serves public randomness. Every draw is a pure function of (key, label, shape), the label
naming the step path (:meth:`Context.label`), so concurrent steps never desynchronise streams.

The keys (:class:`PartyKeys`) and the input owners' seeds (:class:`InputSeeds`) are per-party
state (:meth:`Context.state`): a step that needs them before their set-up ran gets a
:class:`~puma_async.errors.ProtocolError` naming the set-up to run.

Costs (set-up, once per session): :func:`setup_keys` 1 round, 16-byte keys in Seed messages
of 20 bytes: P_1 and P_2 send one, P_0 three (its key, and the common key to both others);
:func:`setup_input_seeds` 1 round, 4 seeds from the input owner. Draws are local: 0 rounds.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import ClassVar

from puma_async.codec import Seed
from puma_async.context import Context
from puma_async.errors import ProtocolError
from puma_async.roles import PARTIES, next_party, prev_party, role_name

from . import ring
from .offload import offload
from .prg import Prg
from .ring import RingArray
from .shares import AShare, BShare


@dataclasses.dataclass(frozen=True)
class PartyKeys:
    """P_i's PRGs (per-party state): ``own`` = k_i (shared with P_{i-1}), ``next`` = k_{i+1}
    (with P_{i+1}), ``common`` (all three parties)."""

    own: Prg
    next: Prg
    common: Prg
    SETUP: ClassVar[str] = "run protocols.randomness.setup_keys(ctx) at P0, P1 and P2 first"

    def key(self, role: int, j: int) -> Prg:
        """The PRG of pairwise key k_j (held by P_j and P_{j-1}) at party ``role``."""
        if j % 3 == role:
            return self.own
        if j % 3 == next_party(role):
            return self.next
        raise ValueError(f"{role_name(role)} does not hold key k_{j % 3}")


@dataclasses.dataclass(frozen=True)
class InputSeeds:
    """The PRGs of input owners' share components (per-party state): ``prgs[owner, j]`` draws
    component x_j of every input of ``owner`` (held by the owner and P_0 for j = 0, 1; by P_1
    for j = 1; by P_2 for j = 0)."""

    prgs: Mapping[tuple[int, int], Prg] = dataclasses.field(default_factory=dict)
    SETUP: ClassVar[str] = "run protocols.randomness.setup_input_seeds(ctx, owner) first"

    def adding(self, owner: int, prgs: Mapping[int, Prg]) -> InputSeeds:
        """These seeds and those of ``owner`` (component j -> PRG)."""
        return InputSeeds({**self.prgs, **{(owner, j): prg for j, prg in prgs.items()}})


async def setup_keys(ctx: Context) -> PartyKeys:
    """Agree the pairwise and common keys among P_0, P_1, P_2 (run by the three parties)."""
    me = ctx.role
    own = ctx.fresh_key()
    await ctx.send(prev_party(me), Seed(own))
    common = ctx.fresh_key() if me == 0 else b""
    if me == 0:
        for peer in (1, 2):
            await ctx.send(peer, Seed(common))
    nxt = (await ctx.recv_message(next_party(me), Seed)).key
    if me != 0:
        common = (await ctx.recv_message(0, Seed)).key
    keys = PartyKeys(Prg(own), Prg(nxt), Prg(common))
    ctx.install(keys)
    return keys


def party_keys(ctx: Context) -> PartyKeys:
    """This party's :class:`PartyKeys` (a protocol error if :func:`setup_keys` did not run)."""
    return ctx.state(PartyKeys)


def key_prg(ctx: Context, j: int) -> Prg:
    """The PRG of pairwise key k_j, held by P_j and P_{j-1} (an error at the third party)."""
    try:
        return party_keys(ctx).key(ctx.role, j)
    except ValueError as exc:
        raise ProtocolError(str(exc), step=ctx.step_name) from None


async def zero_share(ctx: Context, shape: tuple[int, ...]) -> RingArray:
    """alpha_i with alpha_0 + alpha_1 + alpha_2 = 0 (3-out-of-3), fresh for this label (drawn
    in a worker thread when large, as :func:`random_share`: a long pass's TP1 tuples carry
    one, :mod:`.trunc1`)."""
    return await offload(_zero, party_keys(ctx), ctx.label(b"zero"), shape,
                         size=math.prod(shape))


def _zero(keys: PartyKeys, label: bytes, shape: tuple[int, ...]) -> RingArray:
    """This party's alpha_i of the zero-sharing of ``label``: k_i's draw minus k_{i+1}'s."""
    return ring.sub(keys.own.ring(label, shape), keys.next.ring(label, shape))


async def masked_share(ctx: Context, z: RingArray) -> RingArray:
    """This party's 3-out-of-3 share z plus a fresh zero-sharing (:func:`zero_share`'s): the
    same sum, each share uniform to the others (what every product's shares get before they
    leave the party). In a worker thread for long arrays."""
    keys = party_keys(ctx)
    label = ctx.label(b"zero")

    def masked() -> RingArray:
        return ring.add(z, _zero(keys, label, z.shape))

    return await offload(masked, size=z.size)


def zero_bits(ctx: Context, shape: tuple[int, ...]) -> RingArray:
    """Words beta_i with beta_0 ^ beta_1 ^ beta_2 = 0."""
    keys = party_keys(ctx)
    label = ctx.label(b"zerob")
    return keys.own.bits(label, shape) ^ keys.next.bits(label, shape)


async def random_share(ctx: Context, shape: tuple[int, ...]) -> AShare:
    """A replicated sharing of a uniformly random ring element unknown to every party (drawn
    in a worker thread when large: a long pass's TP1 tuples draw hundreds of MB at once)."""
    keys = party_keys(ctx)
    label = ctx.label(b"rand")

    def draw() -> AShare:
        return AShare(keys.own.ring(label, shape), keys.next.ring(label, shape))

    return await offload(draw, size=math.prod(shape))


def random_bshare(ctx: Context, shape: tuple[int, ...]) -> BShare:
    """A boolean replicated sharing of uniformly random words unknown to every party."""
    keys = party_keys(ctx)
    label = ctx.label(b"randb")
    return BShare(keys.own.bits(label, shape), keys.next.bits(label, shape))


def common_random(ctx: Context, shape: tuple[int, ...]) -> RingArray:
    """Random ring elements known to all three parties (not to the input/output roles)."""
    return party_keys(ctx).common.ring(ctx.label(b"common"), shape)


# --------------------------------------------------------------------------- input seeds


HELD_COMPONENTS = {0: (0, 1), 1: (1,), 2: (0,)}
"""The seeded share components of an input each party draws itself (x_2 comes from the owner)."""


async def setup_input_seeds(ctx: Context, owner: int) -> None:
    """Give the parties the seeds with which ``owner`` derives two of the three shares.

    Seed s_0 goes to the holders of x_0 (P_0, P_2), s_1 to those of x_1 (P_0, P_1); inputs then
    cost ``owner`` only x_2, sent to P_1 and P_2. Run by ``owner`` and the three parties.
    Cost: 1 round, 4 seeds (Seed messages of 20 bytes) from the owner.
    """
    if ctx.role == owner:
        seeds = {0: ctx.fresh_key(), 1: ctx.fresh_key()}
        for party in PARTIES:
            for j in HELD_COMPONENTS[party]:
                await ctx.send(party, Seed(seeds[j]))
        prgs = {j: Prg(seed) for j, seed in seeds.items()}
    elif ctx.role in PARTIES:
        prgs = {}
        for j in HELD_COMPONENTS[ctx.role]:
            prgs[j] = Prg((await ctx.recv_message(owner, Seed)).key)
    else:
        return
    ctx.install(ctx.state(InputSeeds, InputSeeds()).adding(owner, prgs))


def input_prg(ctx: Context, owner: int, j: int) -> Prg:
    """The PRG of component x_j of ``owner``'s inputs at this role (a protocol error naming
    the missing :func:`setup_input_seeds` if it did not run for ``owner``)."""
    prg = ctx.state(InputSeeds).prgs.get((owner, j))
    if prg is None:
        raise ProtocolError(
            f"no seed of {role_name(owner)}'s input component x_{j} at {role_name(ctx.role)}: "
            f"run protocols.randomness.setup_input_seeds(ctx, {role_name(owner)}) first",
            step=ctx.step_name,
        )
    return prg


__all__ = [
    "HELD_COMPONENTS", "InputSeeds", "PartyKeys", "common_random", "input_prg", "key_prg",
    "masked_share",
    "party_keys", "random_bshare", "random_share", "setup_input_seeds", "setup_keys",
    "zero_bits", "zero_share",
]
