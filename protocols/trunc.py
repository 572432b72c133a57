"""Truncation of replicated shares with stochastic rounding: one unit of error, never more.

``truncate(x, f)`` returns a sharing of floor(x / 2^f) + e with e in {0, 1}, for every x with
-2^62 <= x < 2^62 read as a signed ring value: the result is within one unit in the last place
of x / 2^f, and it cannot fail (ABY3's "share truncation I", which gives a large error with
probability ~|x| / 2^64 per element, is not offered). This is the TruncPr of Dalskov, Escudero
and Keller (arXiv 1910.12435, sec. 3.2.2: open c = x + 2^62 + r, correct the wrap with the top
bit of r), "probabilistic" in the literature only in that the last bit is rounded up at
random (below); the correlated randomness is dealt by the third party from its share of x, so
that no preprocessing round exists.

The protocol, for one block of elements with openers A = P_j, B = P_{j+1} and dealer
D = P_{j+2} (the three role assignments j = 0, 1, 2 run side by side on three thirds of the
elements, so that every party does the same work and sends the same bytes; arrays shorter
than :data:`ROTATE_MIN_ELEMENTS` are one block, j = 0, and a party skips the roles it does
not play):

1. A and B learn c = x + 2^62 + r' and D knows r'. For a replicated x, A and B both hold
   x_{j+1}: c = x_{j+1} + 2^62 and r' = -(x_{j+2} + x_j), no message. For a product (fused
   with the multiplication, :func:`truncate_additive`), each party holds a 3-out-of-3 share
   z_i, which it masks here (:func:`_masked`): A adds u_A (key k_j: A, D), B adds u_B (key
   k_{j+2}: B, D), D subtracts both; A and B swap z_j + u_A and z_{j+1} + u_B, and
   r' = -(z_{j+2} - u_A - u_B).
2. D splits r' = 2^63 m + l and sends B its additive shares (A's come from the key k_j that A
   and D share) of G = 2^(63-f) m - (l >> f) (64 bits) and of m modulo 2^f (f bits, packed).
   This message is computable at once, so it travels in the same round as step 1.
3. With y = x + 2^62 in [0, 2^63), c_m = msb(c) and w = c_m xor m (the carry of y + l):
   floor(y / 2^f) + e = (c mod 2^63 >> f) - (l >> f) + 2^(63-f) w, and 2^(63-f) w =
   2^(63-f) c_m + 2^(63-f) m - c_m 2^(64-f) m is linear in the shared G and m given the public
   c_m. A and B hold additive shares s_A + s_B of the result; the output components j and j+2
   are fresh PRG values t_A (key k_j: A, D) and t_B (key k_{j+2}: B, D), and component j+1 =
   public(c) + (s_A - t_A) + (s_B - t_B) is learnt by swapping the two brackets (round 2).

Error: e = 1 exactly when (y mod 2^f) + (l mod 2^f) >= 2^f. For products, l is uniform, so
P(e = 1) = (x mod 2^f) / 2^f: stochastic rounding, E[result] = x / 2^f. For
:func:`truncate`, l comes from the share components of x (uniform whenever x is freshly
shared or computed); e is in {0, 1} whatever they are.

Security (semi-honest, one corruption): every value a party receives is masked by a PRG
stream of a key it does not hold (A never sees k_{j+2}, B never sees k_j, D receives
nothing), and c is known to A and B anyway (a share component, or x plus the dealer's secret).
The product's masks (u_A, u_B, -u_A - u_B) are a zero-sharing that costs no draw of its own:
they are further words of the streams A, B and D draw anyway. They are the usual zero-sharing
(alpha_i = R_i - R_{i+1}, :func:`.randomness.masked_share`) without the term R_{j+1}, which A
and B both hold: in the swap that term hid nothing from either, so each party's view is the
same as with a separate zero-sharing, for two draws fewer per party and product.

Costs (n elements, f = bits; per party, from 12,288 elements on: each sends a third of the
total; below, the same total with the dealer's part from P_2 and the openers' from P_0, P_1):
- :func:`truncate`: 2 rounds; 3 elements + f bits per element in all (24 + f/8 bytes),
  8 + f/24 bytes per party per element.
- :func:`truncate_additive` (with the product): 2 rounds in all for multiply + truncate;
  5 elements + f bits per element in all (40 + f/8 bytes), about 1.76 elements per party;
  PRG words drawn per element: 4 (A) + 2 (B) + 6 (D), the product's masks included.
- :func:`truncate_additive_twin`: a second truncation, of the product plus a replicated
  value, opened by the first's swap: 3 elements + f' bits more (24 + f'/8 bytes), 2 rounds.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit, types

from puma_async.context import ArraySpec, Context
from puma_async.roles import next_party, prev_party

from .bitpack import pack_low_bits, packed_size, unpack_low_bits
from .fixedpoint import fixed_point
from .offload import offload
from .prg import Prg
from .randomness import masked_share, party_keys
from .ring import RING_DTYPE, RingArray
from .shares import AShare

MAX_TRUNC_BITS = 62
"""Truncation needs -2^62 <= x < 2^62, so at most 62 bits can be removed."""
_EMPTY = np.zeros(0, RING_DTYPE)  # what a party holds of a block where it has no role
_EMPTY.flags.writeable = False
_SIXTY_THREE = np.uint64(63)


def resolve_bits(ctx: Context, bits: int | None) -> int:
    """``bits``, or the session's fractional bits when None; checked against the range."""
    bits = fixed_point(ctx).frac_bits if bits is None else int(bits)
    if not 0 <= bits <= MAX_TRUNC_BITS:
        raise ValueError(f"truncation bits must be in [0, {MAX_TRUNC_BITS}], got {bits}")
    return bits


async def truncate(ctx: Context, x: AShare, bits: int | None = None) -> AShare:
    """floor(x / 2^bits) + e, e in {0, 1}, for -2^62 <= x < 2^62 (bits: default frac_bits).

    Cost: 2 rounds; per element 24 + bits/8 bytes from all parties together (8 + bits/24
    bytes, about one ring element, per party).
    """
    bits = resolve_bits(ctx, bits)
    if bits == 0:
        return x
    first, second = x.first.reshape(-1), x.second.reshape(-1)
    out = await _truncate(ctx, bits, second, first, first + second, exchange=False)
    return out.reshape(x.shape)


async def truncate_additive(ctx: Context, z: RingArray, bits: int) -> AShare:
    """Replicated floor(z / 2^bits) + e from this party's 3-out-of-3 share z of a product
    (unmasked: the masks are the truncation's own, module docstring).

    z_0 + z_1 + z_2 must lie in [-2^62, 2^62) as a signed value. With bits = 0 this is the
    plain reshare of a multiplication under a fresh zero-sharing (1 round, one element per
    party per element); else 2 rounds and 40 + bits/8 bytes per element from all parties
    together.
    """
    if bits == 0:
        return await reshare(ctx, await masked_share(ctx, z))
    flat = z.reshape(-1)
    out = await _truncate(ctx, bits, flat, flat, flat, exchange=True)
    return out.reshape(z.shape)


async def truncate_additive_twin(
    ctx: Context, z: RingArray, bits: int, s: AShare, twin_bits: int
) -> tuple[AShare, AShare]:
    """:func:`truncate_additive` of z by ``bits`` (> 0) and, from the same opening, of z + s
    by ``twin_bits``, for a replicated s of z's shape: z_0 + z_1 + z_2 and z + s in
    [-2^62, 2^62) as signed values (z unmasked, as for :func:`truncate_additive`).

    The openers A = P_j and B = P_{j+1} both hold s_{j+1}: having swapped their parts of
    c = z + 2^62 + r' (r' = -z_D), they add it and hold c' = c + s_{j+1} = (z + s) + 2^62 + r''
    with r'' = -(z_D + s_{j+2} + s_j), which the dealer D = P_{j+2} knows. So the second
    truncation needs no swap of its own: D deals G and m for r'' beside those for r' (one
    more ring element and ``twin_bits`` bits to B), and A and B swap its brackets in round 2.
    Nothing new reaches A or B in round 1 (c' is c plus a component they hold); every other
    message is masked by a fresh PRG stream of a key its receiver lacks, as in the module
    docstring. Both results are floor or floor + 1; l'' is uniform with z_D (masked by the
    truncation's masks), so the second rounds stochastically too.
    Cost: 2 rounds; 40 + bits/8 bytes per element for the first, 24 + twin_bits/8 for the
    second (versus 40 + twin_bits/8 as a truncate_additive of its own).
    """
    if bits == 0 or twin_bits == 0:
        raise ValueError("truncate_additive_twin truncates both by > 0 bits (0: a reshare)")
    bits, twin_bits = resolve_bits(ctx, bits), resolve_bits(ctx, twin_bits)
    flat = z.reshape(-1)
    states = await _open(ctx, bits, flat, flat, flat, True, _bounds(flat.size),
                         (twin_bits, s.map(np.ravel)), mask=True)
    first, second = await _close(ctx, *states)
    return first.reshape(z.shape), second.reshape(z.shape)


async def reshare(ctx: Context, z: RingArray) -> AShare:
    """3-out-of-3 z_i, masked by a zero-sharing -> replicated (z_i, z_{i+1}): P_i sends z_i
    to P_{i-1}. 1 round."""
    me = ctx.role
    await ctx.send_arrays(prev_party(me), z)
    return AShare(z, await ctx.recv_array(next_party(me), ArraySpec.ring(z.shape)))


ROTATE_MIN_ELEMENTS = 12288
"""Below this many elements one block holds everything (openers P_0, P_1, dealer P_2)."""


def _bounds(n: int) -> list[slice]:
    """Block j of [0, n) has openers P_j, P_{j+1} and dealer P_{j+2}: three nearly equal
    blocks, so that every party does the same work and sends the same bytes, or for short
    arrays one block, so that each party plays one role (a third of the steps; per-step
    Python cost is what short arrays cost)."""
    cuts = [n * j // 3 for j in range(4)] if n >= ROTATE_MIN_ELEMENTS else [0, n, n, n]
    return [slice(cuts[j], cuts[j + 1]) for j in range(3)]


def dealer_summands(z: RingArray, bits: int) -> RingArray:
    """G = 2^(63-f) m - (l >> f) for r' = -z = 2^63 m + l: the dealer's summand of the
    result modulo 2^(64-f) (:class:`Opened`), local to the dealer. Computed as
    2^(64-f) m - (r' >> f) (2^63 m >> f = 2^(63-f) m; numpy shifts by 64 give 0, so f = 0
    holds too); :func:`_deal` computes the same beside B's shares."""
    r = np.negative(z)
    return ((r >> _SIXTY_THREE) << np.uint64(64 - bits)) - (r >> np.uint64(bits))


# The dealer's and the openers' local steps: one numba pass each instead of 6-8 numpy calls
# and their temporaries, the same results bit for bit (wrapping uint64 arithmetic; a shift
# by 64, f = 0, gives 0 as numpy's does, where the hardware's would not). Measured (this
# host, one thread): 600 elements 12.0 -> 4.4 us (_deal) and 6.1 -> 4.7 us (opened_terms);
# 200,000 elements 4.5 -> 2.0 ms and 2.9 -> 1.5 ms.
_IN = types.Array(types.uint64, 1, "A", readonly=True)
_OUT = types.Array(types.uint64, 1, "C")


@njit(types.void(_IN, _IN, _IN, types.int64, _OUT, _OUT), nogil=True, cache=True)
def _deal_kernel(z, g_a, h_a, bits, summands, h):  # pragma: no cover - compiled
    mask = (np.uint64(1) << np.uint64(bits)) - np.uint64(1)
    up, down = np.uint64(64 - bits), np.uint64(bits)
    for i in range(z.size):
        r = np.uint64(0) - z[i]
        m = r >> np.uint64(63)
        h[i] = (m - h_a[i]) & mask
        summands[i] = (m << up if bits else np.uint64(0)) - (r >> down) - g_a[i]


def _deal(
    z: RingArray, g_a: RingArray, h_a: RingArray, bits: int
) -> tuple[RingArray, np.ndarray]:
    """Dealer: B's shares of G = 2^(63-f) m - (l >> f) and of m mod 2^f, for r' = -z (of
    A's share h_a of m only the low f bits count)."""
    summands, h = np.empty(z.size, RING_DTYPE), np.empty(z.size, RING_DTYPE)
    _deal_kernel(z, g_a, h_a, bits, summands, h)
    return summands, pack_low_bits(h, bits)


@njit(types.void(_IN, _IN, _IN, _IN, types.int64, _OUT, _OUT), nogil=True, cache=True)
def _opened_kernel(c, g, h, t, bits, public, send):  # pragma: no cover - compiled
    half, offset = np.uint64(1 << 62), np.uint64(1 << (62 - bits))
    up, down = np.uint64(64 - bits), np.uint64(bits)
    for i in range(c.size):
        v = c[i] + half
        public[i] = (v >> down) - offset
        send[i] = g[i] - (v >> np.uint64(63)) * (h[i] << up if bits else np.uint64(0)) - t[i]


def opened_terms(
    c: RingArray, g: RingArray, h: RingArray, t: RingArray, bits: int
) -> tuple[RingArray, RingArray]:
    """The output from the opened c = x + r' (2^62 is added here): its public part and
    s - t, s = g - c_m 2^(64-f) h for shares g of G and h of m (step 3; also :mod:`.trunc1`):
    of h only the low f bits count. The public part ((c mod 2^63) >> f) + 2^(63-f) c_m -
    2^(62-f) is (c >> f) - 2^(62-f): 2^63 c_m >> f = 2^(63-f) c_m exactly. Flat arrays
    (``t`` may be a scalar); 0 <= bits <= 62."""
    public, send = np.empty(c.size, RING_DTYPE), np.empty(c.size, RING_DTYPE)
    if t.shape != c.shape:  # a scalar: filled (np.broadcast_to costs several times more)
        t = np.full(c.size, t, RING_DTYPE)
    _opened_kernel(c, g, h, t, bits, public, send)
    return public, send


def _packed(bits: int, n: int) -> ArraySpec:
    """n values of ``bits`` bits, densely packed (:mod:`.bitpack`)."""
    return ArraySpec.of(np.uint8, packed_size(n, bits))


class Opened(NamedTuple):
    """:func:`truncate_additive` after its first round (:func:`open_product`).

    ``size``: the elements (flat). ``summands`` (:func:`open_product`'s only; None for the
    truncations that finish at once): per element, what this party knows of the result y
    modulo 2^(64 - bits) in the element's block: G (:func:`dealer_summands`) as its dealer D,
    the public part of c as an opener A or B; y = G + public(c) (mod 2^(64 - bits)). That is
    the form x = a + b of :mod:`.fastcmp` with S = D, E1 = A, E2 = B, known after round 1
    (D's at once). The other fields are round 2's state (:func:`close_product`), per block
    where this party is A, B and D.
    """

    blocks: tuple[slice, slice, slice]
    size: int
    summands: RingArray | None
    public: tuple[RingArray, RingArray]
    brackets: tuple[RingArray, RingArray]
    components: tuple[RingArray, RingArray, RingArray]  # t_A as A, t_B as B, D's (t_B, t_A)
    dealt: RingArray


async def _truncate(
    ctx: Context, bits: int, a: RingArray, b: RingArray, dealt: RingArray, *, exchange: bool
) -> AShare:
    """The protocol of the module docstring on flat arrays (see :func:`truncate`); a
    product's share (``exchange``) is masked here."""
    (state,) = await _open(ctx, bits, a, b, dealt, exchange, _bounds(dealt.size),
                           mask=exchange)
    (out,) = await _close(ctx, state)
    return out


class _Streams(NamedTuple):
    """One truncation's PRG streams at this party: as A (t_A, A's shares of G and m, and the
    product's mask u_A), as B (t_B and u_B) and as D (A's four streams, t_B and u_B). The
    masks are empty unless the truncation opens a product (:func:`_masked`)."""

    t_a: RingArray
    g_a: RingArray
    h_a: RingArray
    u_a: RingArray
    t_b: RingArray
    u_b: RingArray
    dt_a: RingArray
    dg_a: RingArray
    dh_a: RingArray
    du_a: RingArray
    dt_b: RingArray
    du_b: RingArray


def _split(stream: RingArray, sizes: tuple[int, ...]) -> list[RingArray]:
    """Consecutive parts of ``stream`` of ``sizes`` words."""
    parts, start = [], 0
    for size in sizes:
        parts.append(stream[start : start + size])
        start += size
    return parts


async def _streams(ctx: Context, sizes: tuple[int, int, int], masks: bool) -> _Streams:
    """Draw one truncation's streams for blocks of ``sizes`` elements where this party is A,
    B and D; with ``masks``, one more word per element in A's and B's streams for the
    product's masks. One draw per key: k_j's holders, P_j and P_(j-1), draw label j for
    block j's A streams (P_j as A, P_(j-1) as D) followed by block j+1's B streams (P_(j-1)
    as B, P_j as D), so both get the same words in the same places: at most two draws per
    party, one where its roles leave a key's blocks empty (a new token's one block)."""
    me, nxt = ctx.role, next_party(ctx.role)
    na, nb, nd = sizes
    ua, ub, ud = (na, nb, nd) if masks else (0, 0, 0)
    keys = party_keys(ctx)
    labels = [ctx.label(b"trunc") for _ in range(3)]

    def draw(prg: Prg, label: bytes, sizes: tuple[int, ...]) -> list[RingArray]:
        n = sum(sizes)
        return _split(prg.ring(label, n), sizes) if n else [_EMPTY] * len(sizes)

    def draws() -> _Streams:
        t_a, g_a, h_a, u_a, dt_b, du_b = draw(keys.own, labels[me], (na, na, na, ua, nd, ud))
        dt_a, dg_a, dh_a, du_a, t_b, u_b = draw(keys.next, labels[nxt],
                                                (nd, nd, nd, ud, nb, ub))
        return _Streams(t_a, g_a, h_a, u_a, t_b, u_b, dt_a, dg_a, dh_a, du_a, dt_b, du_b)

    return await offload(draws, size=3 * na + nb + 4 * nd + ua + ub + 2 * ud)


def _masked(z: RingArray, blocks: tuple[slice, slice, slice], st: _Streams) -> RingArray:
    """This party's share of the product z under the truncation's masks: + u_A where it is
    A, + u_B where it is B, - u_A - u_B where it deals (a zero-sharing, module docstring)."""
    ba, bb, bd = blocks
    out = np.empty_like(z)
    if st.u_a.size:  # (a new token's one block: one role per party, the others empty)
        np.add(z[ba], st.u_a, out=out[ba])
    if st.u_b.size:
        np.add(z[bb], st.u_b, out=out[bb])
    if st.du_a.size:
        part = out[bd]
        np.subtract(z[bd], st.du_a, out=part)
        part -= st.du_b
    return out


async def _open(
    ctx: Context, bits: int, a: RingArray, b: RingArray, dealt: RingArray, exchange: bool,
    blocks: list[slice], twin: tuple[int, AShare] | None = None, *, mask: bool = False,
    summands: bool = False,
) -> list[Opened]:
    """Round 1 of the module docstring: the swap of c's parts (products only) and the
    dealer's message. ``a`` / ``b``: this party's part of c - 2^62 as opener A / B (the whole
    of it when not ``exchange``, else its 3-out-of-3 share to swap); ``dealt``: minus r' as
    dealer; ``blocks[j]``: the elements of openers P_j, P_{j+1} and dealer P_{j+2}.
    ``mask``: a, b and dealt are one unmasked 3-out-of-3 share z, masked here (:func:`_masked`).
    ``summands``: fill :attr:`Opened.summands` (a comparison starts from them).

    ``twin`` = (bits', s), s replicated (flat): also the truncation of x + s by bits', opened
    by the same swap (:func:`truncate_additive_twin`): A and B both hold s_{j+1} and add it
    to their c, D adds s_{j+2} + s_j to its dealt value; only D's message grows. One
    :class:`Opened` per truncation."""
    me, nxt, prv = ctx.role, next_party(ctx.role), prev_party(ctx.role)
    ba, bb, bd = blocks[me], blocks[prv], blocks[nxt]  # where I am A, B, D
    na, nb, nd = ba.stop - ba.start, bb.stop - bb.start, bd.stop - bd.start
    streams = [await _streams(ctx, (na, nb, nd), mask)]
    if mask:
        a = b = dealt = await offload(_masked, dealt, (ba, bb, bd), streams[0], size=dealt.size)
    # per truncation: bits, what A and B add to the opened c (None: nothing), D's dealt value
    specs: list[tuple[int, RingArray | None, RingArray | None, RingArray]] = [
        (bits, None, None, dealt)]
    if twin is not None:
        twin_bits, s = twin
        specs.append((twin_bits, s.second, s.first,
                      await offload(_sum, dealt, s.first, s.second, size=dealt.size)))
        streams.append(await _streams(ctx, (na, nb, nd), False))
    # A message leaves out the arrays of empty blocks, and one with none left is not sent
    # (all parties know the sizes: a new token's arrays are one block, so each party plays
    # one role, :func:`_bounds`).
    if exchange and na:
        await ctx.send_arrays(nxt, a[ba])
    if (exchange and nb) or nd:
        deals = []
        if nd:
            for (f, _, _, value), st in zip(specs, streams, strict=True):
                deals += await offload(_deal, value[bd], st.dg_a, st.dh_a, f, size=nd)
        await ctx.send_arrays(prv, *([b[bb]] if exchange and nb else []), *deals)
    c_a, c_b = a[ba], b[bb]
    from_dealer = [(_EMPTY, _EMPTY)] * len(specs)
    swapped = exchange and na
    if swapped or nb:  # from my next party: B of my A block, dealer of my B block
        dealt_specs = [spec for f, *_ in specs
                       for spec in (ArraySpec.ring(nb), _packed(f, nb))] if nb else []
        from_next = await ctx.recv_arrays(
            nxt, *([ArraySpec.ring(na)] if swapped else []), *dealt_specs)
        if swapped:
            c_a = await offload(np.add, c_a, from_next[0], size=na)
        if nb:
            dealt_b = from_next[1:] if swapped else from_next
            from_dealer = [
                (dealt_b[2 * i],
                 await offload(unpack_low_bits, dealt_b[2 * i + 1], f, nb, size=nb))
                for i, (f, *_) in enumerate(specs)
            ]
    if exchange and nb:
        z_a = await ctx.recv_array(prv, ArraySpec.ring(nb))
        c_b = await offload(np.add, c_b, z_a, size=nb)
    out = []
    for (f, add_a, add_b, value), st, (g_b, h_b) in zip(specs, streams, from_dealer,
                                                      strict=True):
        opened_a = c_a if add_a is None else await offload(np.add, c_a, add_a[ba], size=na)
        opened_b = c_b if add_b is None else await offload(np.add, c_b, add_b[bb], size=nb)
        pub_a, send_a = (await offload(opened_terms, opened_a, st.g_a, st.h_a, st.t_a, f,
                                       size=na)
                         if na else (_EMPTY, _EMPTY))
        pub_b, send_b = (await offload(opened_terms, opened_b, g_b, h_b, st.t_b, f, size=nb)
                         if nb else (_EMPTY, _EMPTY))
        known = (await offload(_summands, value, (ba, bb, bd), pub_a, pub_b, f,
                               size=dealt.size) if summands else None)
        out.append(Opened((ba, bb, bd), dealt.size, known, (pub_a, pub_b), (send_a, send_b),
                          (st.t_a, st.t_b, st.dt_b), st.dt_a))
    return out


def _sum(*terms: RingArray) -> RingArray:
    """The terms' sum (mod 2^64)."""
    total = terms[0].copy()
    for term in terms[1:]:
        total += term
    return total


def _summands(dealt: RingArray, blocks: tuple[slice, slice, slice], pub_a: RingArray,
              pub_b: RingArray, bits: int) -> RingArray:
    """:class:`Opened`'s summands: the public parts where this party opens, G where it deals."""
    ba, bb, bd = blocks
    summands = np.empty(dealt.size, RING_DTYPE)
    summands[ba], summands[bb] = pub_a, pub_b
    summands[bd] = dealer_summands(dealt[bd], bits)
    return summands


async def _close(ctx: Context, *states: Opened) -> list[AShare]:
    """Round 2 of the module docstring: A and B swap their brackets s - t of component
    j + 1; components j and j + 2 are t_A and t_B. Several truncations opened together
    (same blocks: :func:`_open`'s twin) swap theirs in one message each way."""
    nxt, prv = next_party(ctx.role), prev_party(ctx.role)
    pub_a, pub_b = states[0].public
    na, nb = pub_a.size, pub_b.size
    if na:
        await ctx.send_arrays(nxt, *(state.brackets[0] for state in states))
    if nb:
        await ctx.send_arrays(prv, *(state.brackets[1] for state in states))
    empty = [_EMPTY] * len(states)
    from_a = await ctx.recv_arrays(nxt, *[ArraySpec.ring(na)] * len(states)) if na else empty
    from_b = await ctx.recv_arrays(prv, *[ArraySpec.ring(nb)] * len(states)) if nb else empty
    return [await offload(_closed, state, other_a, other_b, size=state.size)
            for state, other_a, other_b in zip(states, from_a, from_b, strict=True)]


def _closed(state: Opened, other_a: RingArray, other_b: RingArray) -> AShare:
    """The result's replicated share from round 2's brackets (:func:`_close`'s local end)."""
    ba, bb, bd = state.blocks
    (pub_a, pub_b), (send_a, send_b) = state.public, state.brackets
    t_a, t_b, dt_b = state.components
    first = np.empty(state.size, RING_DTYPE)
    second = np.empty(state.size, RING_DTYPE)
    if pub_a.size:  # sums written in place: no temporaries
        first[ba], part = t_a, second[ba]
        np.add(pub_a, send_a, out=part)
        part += other_a
    if pub_b.size:
        part, second[bb] = first[bb], t_b
        np.add(pub_b, send_b, out=part)
        part += other_b
    if dt_b.size:
        first[bd], second[bd] = dt_b, state.dealt
    return AShare(first, second)


def product_blocks(sizes: tuple[int, int, int]) -> list[slice]:
    """Blocks of ``sizes[j]`` consecutive elements with openers P_j, P_{j+1}, dealer P_{j+2}."""
    cuts = np.cumsum([0, *sizes])
    return [slice(int(cuts[j]), int(cuts[j + 1])) for j in range(3)]


async def open_product(
    ctx: Context, z: RingArray, bits: int, blocks: list[slice] | None = None
) -> Opened:
    """Round 1 of :func:`truncate_additive` (bits > 0) on flat 3-out-of-3 shares z already
    masked by a zero-sharing (:func:`.arith.product_share`: the caller computes the dealer's
    summands from them beside this round), in ``blocks`` (default: as
    :func:`truncate_additive`'s; :func:`product_blocks`), stopping where a comparison can
    start (:class:`Opened`). :func:`close_product` finishes it."""
    blocks = _bounds(z.size) if blocks is None else blocks
    (state,) = await _open(ctx, resolve_bits(ctx, bits), z, z, z, True, blocks, summands=True)
    return state


async def close_product(ctx: Context, state: Opened) -> AShare:
    """Round 2 of :func:`truncate_additive` from :func:`open_product`'s state (flat)."""
    (out,) = await _close(ctx, state)
    return out


__all__ = [
    "MAX_TRUNC_BITS", "ROTATE_MIN_ELEMENTS", "Opened", "close_product", "dealer_summands",
    "open_product", "opened_terms", "product_blocks", "reshare", "resolve_bits", "truncate",
    "truncate_additive", "truncate_additive_twin",
]
