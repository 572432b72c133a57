"""TP1: exact truncation in one online round, from an offline bit extraction.

``truncate1(x, f)`` returns a sharing of floor(x / 2^f) + e with e in {0, 1} for every x with
-2^62 <= x < 2^62 (signed), like :func:`.trunc.truncate`, but in **1 online round** instead
of 2. Why a second round is otherwise needed (docs/round-reduction-design.md, section 2):
the exact truncation opens c = x + 2^62 + r and corrects the wrap with m = msb(r); if a
dealer knows r, c must be hidden from it, and c_m m (c_m = msb(c)) then needs one more
message. Here r is unknown to *every* party, so c is opened to all three and the correction
is linear in shares of m and of l >> f (l = r mod 2^63) made offline.

**Offline tuple** (:func:`prepare_trunc1`, public parameters only; phase ``offline``).
r is a replicated random sharing (PRG components r_0, r_1, r_2: free). Per part of the
elements (:class:`.fastcmp.Part`, the comparisons' parts and roles) r = a + b with
a = r_s + r_{s+1} known to S = P_s and b = r_{s+2} known to E1, E2. With a' = a mod 2^63,
b' = b mod 2^63 and the carries c_f (into bit f) and c_63 (into bit 63) of a + b:

    l >> f = (a' >> f) + (b' >> f) + c_f - 2^(63-f) c_63,    m = a_63 ^ b_63 ^ c_63.

One fast-comparison carry tree on (a, b) (:func:`.fastcmp.carry_halves`: leaves, dealer-
masked levels) on the 63-bit chain, its leaf blocks split at bit f and its root with a
second output (:func:`.carrytree.boundary_plan`), gives XOR-halves at E1, E2 of c_63, of
c_f and of a_63 ^ b_63 (the MSB comparison's top bit); the three bits c_f, c_63, m are
opened against random bits (:func:`.fastcmp.open_masked`) and become arithmetic: c_f in the
full ring, c_63 and m modulo 2^(f+1) only (below). S shares a' >> f (E2 gets (a' >> f) - R,
R from k(S, E1)); b' >> f is the component E1, E2 hold. Then [G] = 2^(63-f) [m] - [l >> f],
the G of :mod:`.trunc`, and the tuple is ([r], [G], [m]), with
this party's share of a fresh zero-sharing (PRG values only), which masks a 3-out-of-3 input
online (below) without that step's two draws.

*Small rings.* c_63 enters [l >> f], hence [G], as 2^(63-f) c_63; m enters [G] as
2^(63-f) m and the output (below) as c_m 2^(64-f) m, nowhere else. A sharing of either bit
modulo 2^(f+1) (upper bits of the components arbitrary) therefore gives exactly the same
[G] and output in the 64-bit ring: 2^(63-f) (v + 2^(f+1) k) = 2^(63-f) v (mod 2^64). So their
random bits rho are converted modulo 2^(f+1) (:func:`.boolean.bit_to_arith` with
``ring_bits`` = f + 1: 3 (f + 1) bits per bit instead of 192), and [bit] = c + (1 - 2c)[rho]
holds modulo 2^(f+1). c_f enters [l >> f] unscaled and keeps the full ring. [m] in the
tuple is thus m modulo 2^(f+1) only.

**Online** (:func:`truncate1`, :func:`truncate1_additive`), 1 round: all three parties learn
c = x + r (+ 2^62, added publicly):

- replicated x: P_i sends x_{i+1} + r_{i+1} to P_{i-1} (the component it lacks): 24 bytes;
- 3-out-of-3 z (a product's local shares masked by a fresh zero-sharing,
  :func:`.arith.finish_product`): P_i sends w_i = z_i + r_i to both others: 48 bytes.

Then, with y = x + 2^62 in [0, 2^63), r = 2^63 m + l and c_m = msb(c) = w ^ m (w the carry
of y + l into bit 63): floor(y / 2^f) + e = ((c mod 2^63) >> f) - (l >> f) + 2^(63-f) w and
2^(63-f) w = 2^(63-f) (c_m + m) - c_m 2^(64-f) m, so

    out = ((c mod 2^63) >> f) + 2^(63-f) c_m - 2^(62-f) + [G] - c_m 2^(64-f) [m],

local given the public c (:func:`.trunc.opened_terms`). e = 1 exactly when
(y mod 2^f) + (l mod 2^f) >= 2^f: l is uniform, so P(e = 1) = (x mod 2^f) / 2^f
(stochastic rounding). Never anything but floor or floor + 1 in the range: no
probabilistic failure.

**Security** (semi-honest, one corruption). Offline: the fast comparison's argument
(:mod:`.fastcmp`: every received array masked by a PRG stream of a key the receiver lacks,
the opened bits masked by random bits unknown to all), and E2's (a' >> f) - R (R from
k(S, E1)). The small-ring conversion is :func:`.boolean.bit_to_arith` read modulo 2^(f+1):
each of its messages is a value plus a PRG value of a key the receiver lacks, uniform
modulo 2^(f+1) (the low bits of a uniform word), and only those bits travel; rho itself
stays the XOR of three components, each unknown to one party, so it is uniform in every
party's view and the opened c = bit ^ rho is too. No party learns anything of r beyond its
two components, and each lacks one: r_{i+2} at P_i, drawn under its own label. Online:
P_{i-1} receives x_{i+1} + r_{i+1} (or z_i + r_i, z_i masked by the zero-sharing's k_{i+1}
stream, and z_{i+1} + r_{i+1}); r_{i+1} is unknown to it, so what it receives is uniform,
and c = x + 2^62 + r is uniform. A party's view is simulated from random values (and its
components of the tuple, themselves uniform).

**Costs** per element, all parties together (declared in :mod:`.costs`): online 1 round,
24 bytes (replicated x) or 48 bytes (3-out-of-3 z); offline 4 rounds (leaves, two tree levels,
the bits' opening; the random bits in rounds 1-2 beside), bytes for f = 18: leaves 24.875
(18 blocks of 3 or 4 bits, split at bit 18), dealt products 14.5, tree 11 (level-1 groups
3, 3, 4, 4, 4), opening 1.5, random bits 24 (c_f) + 2 x 3 (f + 1) / 8 (c_63, m: 14.25),
S's share 8: 98.125 bytes. f enters through the tree's shape and the small ring: 86.25 at
f = 1, 112.5 at f = 38, 131.375 at f = 60, 134.25 at f = 62. (With a separate f-bit chain and
every bit in the full ring: 132.375, 144.125, 160, 179.625, 182.25.) Versus
:func:`.trunc.truncate`: 2 rounds, 26.25 bytes; :func:`.trunc.truncate_additive`: 2 rounds,
42.25 bytes. TP1 pays where the round is on the critical path and the elements are few.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np

from puma_async.context import ArraySpec, Context
from puma_async.roles import next_party, prev_party

from .bitpack import pack_bits, unpack_bits
from .carrytree import boundary_plan
from .fastcmp import CompareSpec, MaskedBits, Part, carry_halves, open_masked, prepare_random_bits
from .offload import offload
from .randomness import key_prg, masked_share, random_share, zero_share
from .ring import RING_DTYPE, RingArray, to_ring
from .shares import AShare, concatenate, public_share
from .trunc import MAX_TRUNC_BITS, opened_terms, reshare, resolve_bits

_LOW63 = np.uint64((1 << 63) - 1)
BITS_PER_ELEMENT = 3
"""Bits extracted per element: c_f, c_63, m (in this order in the opened rows)."""


@dataclasses.dataclass(frozen=True)
class Trunc1Spec:
    """The public parameters of a batch of TP1 tuples: ``size`` elements, ``bits`` (f)."""

    size: int
    bits: int

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= MAX_TRUNC_BITS:
            raise ValueError(f"TP1 truncates by 1 to {MAX_TRUNC_BITS} bits, got {self.bits}")

    @property
    def parts(self) -> tuple[Part, ...]:
        """The elements' parts and roles (as the comparisons': :class:`.fastcmp.Part`)."""
        return CompareSpec(self.size).parts


@dataclasses.dataclass(frozen=True)
class Trunc1Material:
    """TP1 tuples (flat, ``spec.size``): [r] random, [G] = 2^(63-f) [m] - [l >> f], and [m]
    modulo 2^(f+1) (the components' upper bits arbitrary: only 2^(63-f) [m] is used); and
    this party's share of a fresh zero-sharing, which masks a 3-out-of-3 input
    (:func:`truncate1_additive`) as one drawn online would, without the online draws."""

    spec: Trunc1Spec
    r: AShare
    g: AShare
    m: AShare
    zero: RingArray

    def take(self, start: int, stop: int) -> Trunc1Material:
        """The tuples of elements [start, stop): a batch's slice serves a smaller one."""
        return Trunc1Material(Trunc1Spec(stop - start, self.spec.bits), self.r[start:stop],
                              self.g[start:stop], self.m[start:stop], self.zero[start:stop])


async def prepare_trunc1(ctx: Context, spec: Trunc1Spec) -> Trunc1Material:
    """TP1 tuples for ``spec`` (public parameters only), in phase ``offline`` (its own round
    clock: start it early, e.g. in a ``gather`` beside earlier work, and pass the result as
    ``pre``). Cost: 4 rounds; 98.125 bytes per element for f = 18 (module docstring)."""
    return await _derive(ctx, spec, *await _draws(ctx, spec))


async def _draws(ctx: Context, spec: Trunc1Spec) -> tuple[AShare, RingArray]:
    """The tuples' PRG values: [r] and this party's share of a zero-sharing (no messages)."""
    return await random_share(ctx, (spec.size,)), await zero_share(ctx, (spec.size,))


async def prepare_trunc1_batches(
    ctx: Context, specs: Sequence[Trunc1Spec | None]
) -> list[Trunc1Material | None]:
    """Tuples for every spec (None: none), made in one preparation per width f of all its
    specs' elements side by side, and sliced: a preparation costs the same few protocol steps
    whatever its size, so a pass's hundreds of small batches cost as much local time as a
    handful. (A long pass's messages are large: they travel in pieces, as every message does
    above :data:`puma_async.pieces.PIECE_BYTES`.) Cost: 4 rounds; the bytes of the specs'
    elements."""
    by_width: dict[int, list[tuple[int, Trunc1Spec]]] = {}
    for i, s in enumerate(specs):
        if s is not None:
            by_width.setdefault(s.bits, []).append((i, s))
    batches = [by_width[bits] for bits in sorted(by_width)]
    made = await ctx.gather(*(functools.partial(prepare_trunc1, spec=Trunc1Spec(
        sum(s.size for _, s in batch), batch[0][1].bits)) for batch in batches))
    out: list[Trunc1Material | None] = [None] * len(specs)
    for material, batch in zip(made, batches, strict=True):
        start = 0
        for i, s in batch:
            out[i] = material.take(start, start + s.size)
            start += s.size
    return out


async def _derive(ctx: Context, spec: Trunc1Spec, r: AShare, zero: RingArray
                  ) -> Trunc1Material:
    """The tuple's [G] and [m] from [r] (module docstring), in phase ``offline``: 4 rounds;
    ``zero`` joins the tuple as it is."""
    parts, f = spec.parts, spec.bits
    with ctx.phase("offline"):
        rho, *pieces = await ctx.gather(
            lambda c: prepare_random_bits(c, BITS_PER_ELEMENT, parts, (64, f + 1, f + 1)),
            *(functools.partial(_extract, part=part, r=r, bits=f) for part in parts),
        )
        shape = (spec.size, BITS_PER_ELEMENT)
        masked = MaskedBits(tuple(h for h, _ in pieces), parts, rho, shape)
        c = await open_masked(ctx, masked)
    return await offload(_material, ctx.role, spec, r, zero, c, masked.r_arith,
                         [share for _, share in pieces], size=c.size)


def _material(party: int, spec: Trunc1Spec, r: AShare, zero: RingArray, c: RingArray,
              rho: AShare, low_parts: list[AShare]) -> Trunc1Material:
    """The tuple from the opened c = bit ^ rho and the parts' [(a' >> f) + (b' >> f)]
    (:func:`_derive`'s local end)."""
    f = spec.bits
    # [bit] = c + (1 - 2c) [rho], as .compare.to_arith (which this module cannot import:
    # compare imports arith, which imports this module)
    one_minus = to_ring(np.int64(1) - (c.view(np.int64) << 1))
    bits = rho.scale(one_minus) + public_share(party, c)
    c_f, c_63, m = (bits[:, k] for k in range(BITS_PER_ELEMENT))
    low = (concatenate(low_parts) if low_parts
           else AShare(np.zeros(0, RING_DTYPE), np.zeros(0, RING_DTYPE)))
    shifted = low + c_f - c_63.scale(np.uint64(1 << (63 - f)))  # [l >> f]
    return Trunc1Material(spec, r, m.scale(np.uint64(1 << (63 - f))) - shifted, m, zero)


async def _extract(
    ctx: Context, part: Part, r: AShare, bits: int
) -> tuple[RingArray | None, AShare]:
    """One part: this evaluator's XOR-halves of (c_f, c_63, m), packed row by row (None at
    S), and the part's replicated [(a' >> f) + (b' >> f)]."""
    role = part.role(ctx.role)
    own, low = await offload(_own_and_low, role, r[part.lo : part.hi], bits, size=part.size)
    view = own.reshape(1, -1)  # S: a; E1, E2: b (its b' is b itself: no threshold)
    shifted = None if role == 0 else view
    of = np.zeros(1, np.intp)
    label = ctx.label(b"trunc1.low")

    async def share_low(c: Context) -> AShare:
        """S's a' >> f as components (s: v - R, s+1: R), b' >> f as component s+2."""
        if role == 2:
            return AShare(low, await c.recv_array(part.sender, ArraySpec.ring(part.size)))
        prg = key_prg(c, part.sender + 1)  # k(S, E1)
        mask = await offload(prg.ring, label, part.size, size=part.size)
        if role == 1:
            return AShare(mask, low)
        masked = await offload(np.subtract, low, mask, size=part.size)
        await c.send_arrays(part.party(2), masked)
        return AShare(masked, mask)

    carries, shared = await ctx.gather(
        lambda c: carry_halves(c, boundary_plan(bits), part, view, shifted, of), share_low)
    if carries is None:
        return None, shared
    return await offload(_packed_rows, *carries, part.size, size=part.size), shared


def _own_and_low(role: int, mine: AShare, bits: int) -> tuple[RingArray, RingArray]:
    """This evaluator's summand of r in the part (S: a = r_0 + r_1; E1, E2: their b) and its
    low 63 bits shifted right by f (:func:`_extract`'s local start)."""
    own = mine.first + mine.second if role == 0 else (mine.second if role == 1 else mine.first)
    return own, (own & _LOW63) >> np.uint64(bits)


def _packed_rows(tree: np.ndarray, top: np.ndarray, size: int) -> np.ndarray:
    """The XOR-halves of (c_f, c_63, m) packed row by row from the carry tree's rows (the
    carries into bit 63 and into bit f) and a_63 ^ b_63 (:func:`_extract`'s local end)."""
    rows = [unpack_bits(h, size, np.uint8) for h in (tree[1:], tree[:1], tree[:1] ^ top)]
    return pack_bits(np.concatenate(rows, axis=1))[0]


async def truncate1(
    ctx: Context, x: AShare, bits: int | None = None, *, pre: Trunc1Material | None = None
) -> AShare:
    """floor(x / 2^bits) + e, e in {0, 1}, for -2^62 <= x < 2^62 (bits: default frac_bits),
    in 1 round: 24 bytes per element online; offline 4 rounds, 98.125 bytes (``pre``:
    tuples from :func:`prepare_trunc1` for ``Trunc1Spec(x.size, bits)``; None: inline)."""
    bits = resolve_bits(ctx, bits)
    if bits == 0 and pre is None:
        return x
    return (await _truncate1(ctx, x.reshape(-1), bits, pre)).reshape(x.shape)


async def truncate1_additive(
    ctx: Context, z: RingArray, bits: int, *, pre: Trunc1Material | None = None
) -> AShare:
    """Replicated floor(z / 2^bits) + e from this party's 3-out-of-3 share z of a product
    (unmasked, as for :func:`.trunc.truncate_additive`; masked here by a fresh zero-sharing,
    the tuples' own), sum in [-2^62, 2^62): 1 round, 48 bytes per element online (bits = 0:
    the plain reshare, 1 round, 24 bytes); offline as :func:`truncate1`."""
    if bits == 0 and pre is None:
        return await reshare(ctx, await masked_share(ctx, z))
    return (await _truncate1(ctx, z.reshape(-1), bits, pre)).reshape(z.shape)


async def _truncate1(
    ctx: Context, value: AShare | RingArray, bits: int, pre: Trunc1Material | None
) -> AShare:
    """The online round on flat ``value`` (replicated or 3-out-of-3), then the local output."""
    spec = Trunc1Spec(value.size, bits)
    if pre is not None and pre.spec != spec:
        raise ValueError(f"TP1 tuples prepared for {pre.spec}, used for {spec}")
    if pre is None:  # the tuple's derivation beside the online round
        r, zero = await _draws(ctx, spec)
        material, c = await ctx.gather(
            lambda c_: _derive(c_, spec, r, zero), lambda c_: _open(c_, value, r, zero))
    else:
        material, c = pre, await _open(ctx, value, pre.r, pre.zero)
    g, m = material.g, material.m
    public, first = opened_terms(c, g.first, m.first, np.uint64(0), bits)
    _, second = opened_terms(c, g.second, m.second, np.uint64(0), bits)
    return AShare(first, second).add_public(ctx.role, public)


async def _open(ctx: Context, value: AShare | RingArray, r: AShare, zero: RingArray
                ) -> RingArray:
    """c = value + r to all three parties: 1 round (module docstring); a 3-out-of-3 value is
    masked by ``zero``, this party's share of a fresh zero-sharing, before it leaves."""
    nxt, prv = next_party(ctx.role), prev_party(ctx.role)
    spec = ArraySpec.ring(r.size)
    if isinstance(value, AShare):
        await ctx.send_arrays(prv, value.second + r.second)
        return value.first + r.first + value.second + r.second + await ctx.recv_array(nxt, spec)
    w = value + r.first + zero
    await ctx.send_arrays(nxt, w)
    await ctx.send_arrays(prv, w)
    return w + await ctx.recv_array(nxt, spec) + await ctx.recv_array(prv, spec)


__all__ = [
    "Trunc1Material", "Trunc1Spec", "prepare_trunc1", "prepare_trunc1_batches", "truncate1",
    "truncate1_additive",
]
