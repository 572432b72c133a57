"""MSB and zero test of arithmetic shares: 2-input carry leaves and a log-depth carry tree.

With x = x_0 + x_1 + x_2, P_0 knows a = x_0 + x_1 and P_1, P_2 both know b = x_2, so
x = a + b is a sum of two summands and MSB(x) = a_63 ^ b_63 ^ carry_63, where carry_63 is the
carry out of the 63-bit sum of the low bits: a 2-input carry, no 3-to-2 reduction needed. The
63 low bits form 21 blocks of 3 bits. The (generate, propagate) pair of a block is a
polynomial XOR_S a^S & c_S(b) over the 8 monomials a^S of its a-bits, with coefficients
c_S(b) that P_1 and P_2 compute locally. So P_0 sends P_2 its 7 non-constant monomials per
block masked with a pad it shares with P_1 (plus a_63), P_1 and P_2 then each hold one
XOR-half of every block's (G, P), and two messages turn those into replicated shares: 2
rounds and 7 + 2 + 2 bits per block in all instead of about 24 with bitwise ANDs. A log-depth
tree of (G, P) combinations (21 -> 11 -> 6 -> 3 -> 2 -> 1 nodes, the AND count halving per
level, one AND less per level on the branch that holds bit 0) gives the carry: 35 ANDs. The
zero test is the same with P only (x = 0 iff a XOR (b - 1) is all ones) and a plain AND tree.
The knower of a sends the most, so from :data:`ROTATE_MIN_WORDS` words per row on the leaves
cut the words in three parts and rotate the roles: P_t plays P_0 in part t, and every party
sends the same (up to rounding of the parts). Shorter rows stay in one part (P_0 sends the
148 monomial bits per element, P_1 and P_2 41 or 21): a third of the steps, which is what
small inputs cost.

Both are exact for every ring value. Costs per element (bits sent; W-word rows, so n
elements cost ceil(n / 64) words a row; "each party" with rotated leaves):

===================  ======  ====================================  =====================
function             rounds  each party (leaves/3 + tree)          all parties
===================  ======  ====================================  =====================
``msb_packed``       7       (148 + 41 + 41) / 3 + 35 = 111.7      335 bits = 41.9 bytes
``is_zero_packed``   7       (148 + 21 + 21) / 3 + 21 = 84.3       253 bits = 31.6 bytes
===================  ======  ====================================  =====================
"""

from __future__ import annotations

from functools import partial
from itertools import combinations

import numpy as np

from puma_async.context import ArraySpec, Context

from .bitpack import WORD_BITS, bit_slices, packed_words, unpack_bits
from .boolean import ALL_ONES, and_, and_tree, concat
from .prg import Prg
from .randomness import key_prg
from .ring import RING_DTYPE, RingArray, to_ring
from .shares import AShare, BShare
from .trunc import ROTATE_MIN_ELEMENTS

ROTATE_MIN_WORDS = ROTATE_MIN_ELEMENTS // WORD_BITS
"""Leaves of fewer packed words are computed in one part, not three (the same length at which
truncation starts rotating its roles)."""

_K = 3  # bits per leaf block

_LOW_BITS = 63  # the carry into bit 63 depends on bits 0..62

_BLOCKS = _LOW_BITS // _K

_SUBSETS: tuple[frozenset[int], ...] = tuple(
    frozenset(c) for r in range(_K + 1) for c in combinations(range(_K), r)
)  # the a-monomials of a block; _SUBSETS[0] is the empty one (the constant 1)


def _g_coefficient(s: frozenset[int]) -> frozenset[int] | None:
    """The b-monomial multiplying a^S in G = XOR_i a_i b_i prod_{j>i} (a_j ^ b_j) (None: 0)."""
    if not s:
        return None
    i = min(s)
    return frozenset({i} | {j for j in range(i + 1, _K) if j not in s})


def _p_coefficient(s: frozenset[int]) -> frozenset[int]:
    """The b-monomial multiplying a^S in P = prod_j (a_j ^ b_j)."""
    return frozenset(range(_K)) - s


def _monomials(bits: RingArray) -> dict[frozenset[int], RingArray]:
    """All products of subsets of the rows ``bits[0..K-1]`` (each (blocks, W); {} = ones)."""
    out = {frozenset(): np.full(bits.shape[1:], ALL_ONES)}
    for s in _SUBSETS[1:]:
        i = max(s)
        rest = s - {i}
        out[s] = bits[i] if not rest else out[rest] & bits[i]
    return out


def _block_halves(
    pads: dict[frozenset[int], RingArray], b_bits: RingArray, want_g: bool
) -> RingArray:
    """One party's XOR-half of each block's G (if ``want_g``) and P rows: XOR_S pad_S & c_S(b).

    ``pads`` maps each monomial S to this party's half of a^S: P_1 holds the pad, P_2 the
    masked monomial (the constant 1 = a^{} is shared as (1, 0, 0): all ones at P_2, 0 at P_1).
    """
    cb = _monomials(b_bits)
    outputs = []
    coefficient_sets = ([_g_coefficient] if want_g else []) + [_p_coefficient]
    for coefficient in coefficient_sets:
        acc = np.zeros(b_bits.shape[1:], RING_DTYPE)
        for s, pad in pads.items():
            c = coefficient(s)
            if c is not None:
                acc ^= pad & cb[c]
        outputs.append(acc)
    return np.concatenate(outputs)


async def _leaves(
    ctx: Context, x: AShare, b_offset: int, want_g: bool
) -> tuple[BShare, BShare]:
    """Replicated shares of the blocks' (G, P) rows and of p_63 = a_63 ^ b'_63.

    a = x_0 + x_1, b' = x_2 + ``b_offset``; blocks cover bits 0..62. The first share holds G
    (if ``want_g``: 21 rows, then P of blocks 1..20) or P (21 rows). The knower of a sends
    the most, so the words are cut in three parts and P_t plays that role in part t (the
    parties' traffic is then balanced). Cost: 2 rounds; 148 + 2 x (21 or 41) bits per element
    in all, a third of it from each party.
    """
    x = x.reshape(x.size)
    w = packed_words(x.size)
    # rotating pays for balanced traffic with three times the steps: only for long rows
    cuts = [w * t // 3 for t in range(4)] if w >= ROTATE_MIN_WORDS else [0, w, w, w]
    parts = [t for t in range(3) if cuts[t + 1] > cuts[t] or t == 0]  # all agree: n is public
    results = await ctx.gather(*(
        partial(_leaves_part, x=x[64 * cuts[t] : 64 * cuts[t + 1]], b_offset=b_offset,
                want_g=want_g, rotation=t)
        for t in parts
    ))
    leaves = concat([r[0] for r in results], axis=1)
    return leaves, concat([r[1] for r in results], axis=1)


async def _leaves_part(
    ctx: Context, *, x: AShare, b_offset: int, want_g: bool, rotation: int
) -> tuple[BShare, BShare]:
    """:func:`_leaves` on one part, with P_{rotation} in the role of P_0 below.

    Roles (indices are virtual: party v here is P_{v + rotation}, key k_j is k_{j + rotation}
    and share x_j is x_{j + rotation}; a party's pair stays (x_i, x_{i+1}) in actual terms).
    Messages: P_0 -> P_2 the monomials XOR a pad from k_1 (unknown to P_2); P_1 -> P_0 its
    half XOR m_2 (k_2, unknown to P_0); P_2 -> P_1 its half XOR m_2 XOR m_0 (k_0, unknown to
    P_1). The result is the replicated sharing (m_0, y_1, y_2).
    """
    me = (ctx.role - rotation) % 3
    n = x.size

    def key(j: int) -> Prg:
        return key_prg(ctx, j + rotation)

    def peer(v: int) -> int:
        return (v + rotation) % 3

    w = packed_words(n)
    n_mono = len(_SUBSETS) - 1
    mono_shape = (n_mono * _BLOCKS + 1, w)
    out_rows = _BLOCKS * (2 if want_g else 1) - (1 if want_g else 0)
    out_shape = (out_rows, w)
    label_pad, label_m0, label_m2 = (ctx.label(p) for p in (b"leaf.pad", b"leaf.m0", b"leaf.m2"))

    def halves(pads: RingArray, b_slices: RingArray, constant: RingArray) -> RingArray:
        b_bits = b_slices[:_LOW_BITS].reshape(_BLOCKS, _K, w).transpose(1, 0, 2)
        by_subset = {frozenset(): constant}
        by_subset.update(zip(_SUBSETS[1:], pads[:-1].reshape(n_mono, _BLOCKS, w), strict=True))
        z = _block_halves(by_subset, b_bits, want_g)
        if not want_g:
            return z
        g, p = np.split(z, 2)
        return np.concatenate([g, p[1:]])

    if me == 0:
        a_bits = bit_slices(x.first + x.second)
        blocks = a_bits[:_LOW_BITS].reshape(_BLOCKS, _K, w).transpose(1, 0, 2)
        mono = _monomials(blocks)
        a_mono = np.concatenate([mono[s] for s in _SUBSETS[1:]] + [a_bits[_LOW_BITS:]])
        pad = key(1).bits(label_pad, mono_shape)
        masked = a_mono ^ pad
        await ctx.send_arrays(peer(2), masked)
        m0 = key(0).bits(label_m0, out_shape)
        y1 = await ctx.recv_array(peer(1), ArraySpec.ring(out_shape))
        return BShare(m0, y1), BShare(masked[-1:], pad[-1:])
    b_slices = bit_slices((x.second if me == 1 else x.first) + to_ring(b_offset))
    b_top = b_slices[_LOW_BITS:]
    m2 = key(2).bits(label_m2, out_shape)
    if me == 1:
        pad = key(1).bits(label_pad, mono_shape)
        y1 = halves(pad, b_slices, np.zeros((_BLOCKS, w), RING_DTYPE)) ^ m2
        await ctx.send_arrays(peer(0), y1)
        y2 = await ctx.recv_array(peer(2), ArraySpec.ring(out_shape))
        return BShare(y1, y2), BShare(pad[-1:], b_top)
    masked = await ctx.recv_array(peer(0), ArraySpec.ring(mono_shape))
    m0 = key(0).bits(label_m0, out_shape)
    y2 = halves(masked, b_slices, np.full((_BLOCKS, w), ALL_ONES)) ^ m2 ^ m0
    await ctx.send_arrays(peer(1), y2)
    return BShare(y2, m0), BShare(b_top, masked[-1:])


async def _carry_tree(ctx: Context, g: BShare, p: BShare) -> BShare:
    """The generate of all nodes together: g has a row per node, p a row per node but the first.

    Cost: ceil(log2 nodes) rounds, 2 * (nodes - 1) - rounds ANDs (one bit each per party).
    """
    while g.shape[0] > 1:
        nodes = g.shape[0]
        m = nodes // 2
        # node 2i+1 combines with node 2i: G = G_hi ^ P_hi G_lo, P = P_hi P_lo (p[j]: node j+1)
        xs = concat([p[0 : 2 * m : 2], p[2 : 2 * m : 2]])
        ys = concat([g[0 : 2 * m : 2], p[1 : 2 * m - 1 : 2]])
        prod = await and_(ctx, xs, ys)
        g_new, p_new = g[1 : 2 * m : 2] ^ prod[:m], prod[m:]
        if nodes % 2:
            g_new, p_new = concat([g_new, g[nodes - 1 :]]), concat([p_new, p[nodes - 2 :]])
        g, p = g_new, p_new
    return g


async def msb_packed(ctx: Context, x: AShare) -> BShare:
    """Packed boolean shares (one row of W words) of the most significant bit of each x.

    Exact for every ring value. Cost: 7 rounds; 111.7 bits per element sent by each party
    (41.9 bytes per element in all).
    """
    leaves, p_top = await _leaves(ctx, x, 0, want_g=True)
    carry = await _carry_tree(ctx, leaves[:_BLOCKS], leaves[_BLOCKS:])
    return (carry ^ p_top)[0]


async def is_zero_packed(ctx: Context, x: AShare) -> BShare:
    """Packed boolean shares (one row of W words) of [x == 0] for each element.

    Exact for every ring value. Cost: 7 rounds; 84.3 bits per element sent by each party
    (31.6 bytes per element in all).
    """
    leaves, p_top = await _leaves(ctx, x, -1, want_g=False)
    return (await and_tree(ctx, concat([leaves, p_top])))[0]


async def msb(ctx: Context, x: AShare) -> BShare:
    """Boolean shares of MSB(x) in bit 0 of one word per element (other bits 0), x's shape.

    Cost: that of :func:`msb_packed` (7 rounds, 42 bytes per element in all).
    """
    packed = await msb_packed(ctx, x)
    return packed.map(lambda row: unpack_bits(row, x.size).reshape(x.shape))


__all__ = ["ROTATE_MIN_WORDS", "is_zero_packed", "msb", "msb_packed"]
