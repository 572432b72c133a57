"""Fast comparison (FC): [x < t], [x == t] and a row's first maximum in 4 rounds.

**Form.** From replicated shares, x = a + b (mod 2^64) with a = x_s + x_{s+1} known to one
party S = P_s and b = x_{s+2} known to both others, E1 = P_{s+1} and E2 = P_{s+2}. Keys:
k(S, E1) = k_{s+1}, k(S, E2) = k_s, k(E1, E2) = k_{s+2} (:mod:`.randomness`). [x < t] for a
public t with x - t in [-2^L, 2^L) is NOT bit L of x - t + 2^L = a + b', b' = b - t + 2^L:
a_L ^ b'_L ^ (the carry of the L-bit chain a + b' into bit L). L = 63 is the MSB of x - t
(exact for every x - t in [-2^63, 2^63)); a shorter chain (``bits`` = L + 1 < 64) is the
*bounded* comparison, exact when |x - t| < 2^L (and meaningless otherwise: callers that use
it state that bound as their precondition). [x == t] is the AND of all 64 propagate bits of
a + (b - t - 1) (a = ~(b - t - 1) exactly when a + b = t).

**Protocol** (one part of the elements; :func:`_parts`):

1. *Leaves (round 1).* The chain is cut into blocks of :data:`LEAF_BITS` bits (the lowest one
   shorter). A block's (generate, propagate) pair is a polynomial XOR_T a^T c_T(b') in S's
   bits, with coefficients c_T that E1 and E2 compute from b'. S sends E2 every monomial a^T
   XOR a pad from k_{s+1} (and a_L XOR a pad); E1 takes the pads, E2 the masked monomials, and
   each evaluates XOR_T (its value of a^T) c_T(b') (E2 also the constant term): XOR-halves of
   every block's (G, P), held by E1 and E2. The monomials do not depend on t, so several
   thresholds on one value share them (:func:`compare_thresholds`).
2. *Tree levels (1 round each).* Nodes of fan-in up to 4 (``levels`` sets the depth): G = XOR_i
   G_i AND_{j>i} P_j and P = AND_j P_j. Each wire w carries a mask alpha_w = alpha^1_w ^ alpha^2_w
   (alpha^1 from k_{s+1}: S and E1; alpha^2 from k_s: S and E2). E1 sends E2 w^1 ^ alpha^1 and
   E2 sends E1 w^2 ^ alpha^2, so both learn d_w = w ^ alpha_w. A monomial AND_{w in M} w is
   XOR_{T subset M} (AND_{w in M \\ T} d_w) alpha_T with alpha_T = AND_{w in T} alpha_w: linear
   in the alpha_T. S, who knows every mask, *deals* the products with |T| >= 2 (E1's XOR-share
   from k_{s+1}, E2's sent by S; data-independent: offline material, :func:`prepare_compare`),
   so each evaluator computes its XOR-half of every node output locally (E1 adds the pure-d
   term). The root gives XOR-halves s1 (E1), s2 (E2) of the result bit.
3. *Opening (1 round), to arithmetic shares.* With a random bit rho unknown to all, shared
   replicated (rho_s, rho_{s+1}, rho_{s+2}) and arithmetic (offline material): E2 -> E1:
   s2 ^ rho_s; E1 -> E2: s1 ^ rho_{s+1}; E1 -> S: s1 ^ rho_{s+2} ^ sigma; E2 -> S: s2 ^ sigma
   (sigma from k_{s+2}, E1 and E2 only). Everyone learns c = bit ^ rho, and [bit] =
   c + (1 - 2c)[rho] locally; bit * f = c f + (1 - 2c) rho f takes one product rho f, computed
   beside the opening (:func:`.compare.sign_times`).

**Security** (semi-honest, one corruption): every array a party receives is masked by a PRG
stream of a key it does not hold. E2 receives the monomials (pads of k_{s+1}), the dealt
products (masked by E1's shares, k_{s+1}), the d's (alpha^1, k_{s+1}) and s1 ^ rho_{s+1}
(rho_{s+1} is unknown to E2). E1 receives the d's (alpha^2, k_s) and s2 ^ rho_s (k_s). S, who
knows every mask, never receives an evaluator's plain half: it gets s1 ^ rho_{s+2} ^ sigma and
s2 ^ sigma, uniform (sigma), whose XOR is c ^ rho_s ^ rho_{s+1}, i.e. the public c. Every mask
is drawn once (a fresh label per level, part and threshold), so each view is simulated by
uniform values and the opened c = bit ^ rho, itself uniform.

**Rotation.** S sends the most (the monomials). From :data:`.trunc.ROTATE_MIN_ELEMENTS`
elements (rows, for :func:`first_maximum`) on, the elements are cut into three parts with
S = P_2, P_0, P_1 (the truncation's dealers of the same blocks); shorter arrays are one part
with S = P_2.

**Batches of material.** Every mask, product and random bit of the offline material belongs
to one element (and threshold) and is drawn independently of every other's, so material
made for a batch of n elements in one part, sliced to elements [a, b)
(:meth:`CompareMaterial.split`, :meth:`MaximumMaterial.split`: the packed bits move, nothing
is sent), is distributed exactly as material made for those elements alone, with the same
roles. :func:`prepare_compare_batches` and :func:`prepare_maximum_batches` make a pass's
dozens of small batches in one preparation per kind (below the rotation's threshold), which
costs the protocol steps of one.

**Costs** per element and threshold, all parties together (bytes; packed bits travel in
64-bit words, so these are exact for multiples of 64 elements), declared in :mod:`.costs`:

=======================  ======  =====================================  ====================
what                     rounds  online                                 offline
=======================  ======  =====================================  ====================
[x < t], 63-bit chain    4       29.125 leaves (once per value)         12 dealt products +
(16 leaves, [4x4], [4])          + 9.5 tree + 0.5 opening               24 random bit
[x == t] (16 leaves,     4       30 leaves + 5 tree + 0.5 opening       6.875 + 24
AND [4x4], [4])
=======================  ======  =====================================  ====================

Several thresholds on one value: the leaves once, the rest per threshold. A bounded chain of
L bits has ceil(L / 4) leaves (15 monomial bits per 4-bit block): 4 rounds for L <= 64 with
fan-in 4, 3 rounds for L <= 16. Exact: no probabilistic step; the bounded comparison within
its bound.

One module (about 1,050 lines): the online steps and the dealer's offline material
(``prepare_*``) must agree on every mask's layout, part and key, so they stay side by side;
the local bit algebra they share is :mod:`.carrytree`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from puma_async.context import ArraySpec, Context, Ready, Step

from .bitpack import (
    WORD_BITS,
    bit_slices,
    gather_bit_runs,
    pack_bits,
    packed_words,
    padding_bits,
    split_bit_columns,
    unpack_bits,
    unpack_rows_into,
)
from .boolean import ALL_ONES, bit_to_arith
from .carrytree import (
    Compiled,
    Kind,
    Level,
    Plan,
    and_tree,
    comparison_plan,
    compile_level,
    deal,
    evaluate_level,
    leaf_halves,
    sender_monomials,
)
from .offload import offload
from .prg import Prg
from .randomness import key_prg, random_bshare
from .ring import RING_DTYPE, RingArray, to_ring
from .shares import AShare, BShare
from .trunc import ROTATE_MIN_ELEMENTS

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Part:
    """Elements [lo, hi) with S = P_sender, E1 = P_{sender+1}, E2 = P_{sender+2}."""

    lo: int
    hi: int
    sender: int

    @property
    def size(self) -> int:
        return self.hi - self.lo

    def words(self, rows: int = 1) -> int:
        """Words of ``rows`` bits per element of the part, packed densely row by row."""
        return packed_words(rows * self.size)

    def role(self, party: int) -> int:
        """0 for S, 1 for E1, 2 for E2."""
        return (party - self.sender) % 3

    def party(self, role: int) -> int:
        return (self.sender + role) % 3


def _parts(rows: int, unit: int = 1) -> tuple[Part, ...]:
    """Rows of ``unit`` elements in one part (S = P_2), or from ROTATE_MIN_ELEMENTS elements
    on in three (S = P_2, P_0, P_1), cut between rows. No parts for no elements."""
    n = rows * unit
    cuts = ([unit * (rows * j // 3) for j in range(4)] if n >= ROTATE_MIN_ELEMENTS
            else [0, n, n, n])
    return tuple(Part(cuts[j], cuts[j + 1], (j + 2) % 3) for j in range(3)
                 if cuts[j + 1] > cuts[j])


@dataclasses.dataclass(frozen=True)
class TreeMaterial:
    """One part's dealt masks for one tree, as this party's role holds them: per level the
    evaluator's mask halves (inputs, M) and product shares (products, M); S holds none."""

    alphas: tuple[RingArray, ...] = ()
    products: tuple[RingArray, ...] = ()

    def split(self, shape: tuple[int, int], bounds: Sequence[Piece]) -> list[TreeMaterial]:
        """The masks of elements [start, stop) for each (start, stop, spare) of ``bounds``
        (the padding from the spare elements: :func:`.bitpack.split_bit_columns`), of a part
        whose rows are packed bit matrices of ``shape`` (rows of bits per element,
        elements): :meth:`CompareMaterial.split`."""
        def cut(arrays: tuple[RingArray, ...]) -> list[tuple[RingArray, ...]]:
            per_array = [split_bit_columns(a, shape, bounds) for a in arrays]
            return [tuple(pieces[p] for pieces in per_array) for p in range(len(bounds))]
        return [TreeMaterial(a, b) for a, b in zip(cut(self.alphas), cut(self.products),
                                                   strict=True)]


@dataclasses.dataclass(frozen=True)
class RandomBits:
    """A random bit per (row, element) unknown to every party: per part, packed boolean
    shares (:meth:`Part.words`); and arithmetic shares (rows, elements) of all parts."""

    packed: tuple[BShare, ...]
    arith: AShare

    def split(self, bounds: Sequence[Piece]) -> list[RandomBits]:
        """The bits of elements [start, stop) for each (start, stop, spare) of ``bounds``, of
        bits made in one part (:meth:`CompareMaterial.split`; a piece of no elements has no
        part)."""
        shape = self.arith.shape
        halves = [[split_bit_columns(h.reshape(1, -1), shape, bounds)
                   for h in (p.first, p.second)] for p in self.packed]
        return [RandomBits(tuple(BShare(first[i].reshape(-1), second[i].reshape(-1))
                                 for first, second in halves) if stop > start else (),
                           self.arith[:, start:stop])
                for i, (start, stop, _) in enumerate(bounds)]


@dataclasses.dataclass(frozen=True)
class CompareSpec:
    """The public parameters a batch of comparisons' material depends on: ``size``
    elements (rows of ``unit`` are never split between parts), ``thresholds`` per element,
    and the plan (``kind``, ``bits``, ``levels``: :func:`comparison_plan`; ``drop``: the low
    bits the comparisons ignore, :func:`compare_thresholds`, which shorten the chain to
    ``bits - drop``)."""

    size: int
    thresholds: int = 1
    kind: Kind = "less"
    bits: int = 64
    levels: int | None = None
    unit: int = 1
    drop: int = 0

    def __post_init__(self) -> None:
        if self.drop and not (self.kind == "less" and 0 < self.drop <= self.bits - 2):
            raise ValueError(f"a comparison can ignore 0 .. bits - 2 low bits of x - t, and "
                             f"only for kind 'less'; got drop {self.drop} with bits "
                             f"{self.bits}, kind {self.kind!r}")

    @property
    def plan(self) -> Plan:
        return comparison_plan(self.kind, self.bits - self.drop, self.levels)

    @property
    def parts(self) -> tuple[Part, ...]:
        return _parts(self.size // self.unit, self.unit)


@dataclasses.dataclass(frozen=True)
class CompareMaterial:
    """Offline material of one batch of comparisons (:func:`prepare_compare`)."""

    spec: CompareSpec
    trees: tuple[TreeMaterial, ...]
    bits: RandomBits

    def split(self, bounds: Sequence[Piece]) -> list[CompareMaterial]:
        """The material of elements [start, stop) for each (start, stop, spare) of
        ``bounds`` (whole rows of ``spec.unit``): a batch's slices serve smaller batches, as
        :meth:`.trunc1.Trunc1Material.take` does. Only for a batch in one part (fewer than
        :data:`.trunc.ROTATE_MIN_ELEMENTS` elements), whose slices have its roles (S = P_2):
        each element's masks and bits are drawn independently of the others', so a slice is
        distributed as material made for it alone. That includes the padding bits of each
        packed row's last word, which travel masked by them: they are the batch's bits from
        ``spare`` on (:func:`.bitpack.split_bit_columns`: bits of spare elements that no
        slice uses as data, :func:`_compare_layout`; spare < 0: zeros, for tests), as the
        padding of material made alone comes from its masks' streams. Local: packed bits
        move, nothing is sent (:func:`split_trees`; one kernel call per array for all the
        pieces)."""
        pieces = split_trees(self.spec, self.trees, bounds)
        return [CompareMaterial(piece, trees, bits) for (piece, trees), bits
                in zip(pieces, self.bits.split(bounds), strict=True)]


Piece = tuple[int, int, int]
"""A slice of a batch of material: its elements [start, stop) and the first of the batch's
bits, counted column by column, that pad its packed rows (bits of elements no slice uses as
data; < 0: zeros): :func:`.bitpack.split_bit_columns`."""


def split_trees(spec: CompareSpec, trees: tuple[TreeMaterial, ...], bounds: Sequence[Piece]
                ) -> list[tuple[CompareSpec, tuple[TreeMaterial, ...]]]:
    """For each (start, stop, spare) of ``bounds``: the spec and the trees' masks of
    elements [start, stop) of material for ``spec`` in one part (:meth:`CompareMaterial.split`;
    ValueError for material in several parts or a slice that is not whole rows of
    ``spec.unit``). No elements: no part, no tree, as :func:`prepare_compare` makes them."""
    if len(spec.parts) > 1:
        raise ValueError(f"material in {len(spec.parts)} parts cannot be sliced")
    for start, stop, _ in bounds:
        if not (0 <= start <= stop <= spec.size and start % spec.unit == 0
                and stop % spec.unit == 0):
            raise ValueError(f"elements [{start}, {stop}) of a batch of {spec.size} in rows "
                             f"of {spec.unit}")
    shape = (spec.thresholds, spec.size)
    per_tree = [tree.split(shape, bounds) for tree in trees]
    return [(dataclasses.replace(spec, size=stop - start),
             tuple(pieces[i] for pieces in per_tree) if stop > start else ())
            for i, (start, stop, _) in enumerate(bounds)]


class MadeTrees(Protocol):
    """Material made ahead that holds the comparisons' trees (:class:`CompareMaterial`,
    :class:`.evaluators.EvaluatorCompare`): what :func:`threshold_halves` reads."""

    @property
    def spec(self) -> CompareSpec: ...

    @property
    def trees(self) -> tuple[TreeMaterial, ...]: ...


@dataclasses.dataclass(frozen=True)
class MaximumSpec:
    """The public shape of :func:`first_maximum`: ``rows`` rows of ``entries``, entries'
    differences bounded by ``bits`` (:func:`comparison_plan`)."""

    rows: int
    entries: int
    bits: int = 64
    levels: int | None = None

    @property
    def pairs(self) -> CompareSpec:
        m = self.entries
        return CompareSpec(self.rows * (m * (m - 1) // 2), bits=self.bits, levels=self.levels,
                           unit=m * (m - 1) // 2)

    @property
    def parts(self) -> tuple[Part, ...]:
        """The entries' parts: the same rows, and roles, as the pairs' parts."""
        per_row = self.entries * (self.entries - 1) // 2
        return tuple(Part(p.lo // per_row * self.entries, p.hi // per_row * self.entries,
                          p.sender) for p in self.pairs.parts)


@dataclasses.dataclass(frozen=True)
class MaximumMaterial:
    """Offline material of :func:`first_maximum`: the pairs' trees, the AND trees, and a
    random bit per entry."""

    spec: MaximumSpec
    pairs: tuple[TreeMaterial, ...]
    wins: tuple[TreeMaterial, ...]
    bits: RandomBits

    def split(self, bounds: Sequence[Piece]) -> list[MaximumMaterial]:
        """The material of rows [start, stop) for each (start, stop, spare) of ``bounds``
        (spare rows: :func:`spare_rows`), as :meth:`CompareMaterial.split` (a batch in one
        part only: fewer than :data:`.trunc.ROTATE_MIN_ELEMENTS` pairs)."""
        spec, m = self.spec, self.spec.entries
        if len(spec.parts) > 1:
            raise ValueError(f"material in {len(spec.parts)} parts cannot be sliced")
        for start, stop, _ in bounds:
            if not 0 <= start <= stop <= spec.rows:
                raise ValueError(f"rows [{start}, {stop}) of a batch of {spec.rows}")

        def scaled(k: int) -> list[Piece]:
            return [(a * k, b * k, sp * k if sp >= 0 else -1) for a, b, sp in bounds]

        per_row = spec.pairs.unit
        pairs = [t.split((1, spec.rows * per_row), scaled(per_row)) for t in self.pairs]
        wins = [t.split((1, spec.rows * m), scaled(m)) for t in self.wins]
        bits = self.bits.split(scaled(m))
        return [MaximumMaterial(dataclasses.replace(spec, rows=stop - start),
                                tuple(p[i] for p in pairs) if stop > start else (),
                                tuple(w[i] for w in wins) if stop > start else (), bits[i])
                for i, (start, stop, _) in enumerate(bounds)]


def spare_rows(spec: MaximumSpec) -> int:
    """Rows whose bits pad the packed rows of a slice of ``spec.rows`` rows
    (:meth:`MaximumMaterial.split`: its pairs' and its entries' arrays)."""
    return max(-(-padding_bits(1, spec.rows * k) // k)
               for k in (spec.pairs.unit, spec.entries))


async def _prepare_tree(
    ctx: Context, tree: tuple[Level, ...], words: int, part: Part
) -> TreeMaterial:
    """Masks and dealt products of ``tree`` on ``words`` words per row, for one part.

    S draws both mask halves, computes every product and sends E2 its XOR-shares (E1's come
    from k_{s+1}). Cost: 1 round; one bit per product per element, from S to E2.
    """
    levels = [(compile_level(level), ctx.label(b"fc.alpha1"), ctx.label(b"fc.alpha2"),
               ctx.label(b"fc.products")) for level in tree]
    role = part.role(ctx.role)
    rows = sum(c.products for c, *_ in levels)
    if role == 2:  # E2: alpha^2 from k_s, product shares from S
        k2 = key_prg(ctx, part.sender)
        got = (await ctx.recv_array(part.sender, ArraySpec.ring((rows, words))) if rows
               else np.zeros((0, words), RING_DTYPE))
        alphas = await offload(lambda: tuple(k2.bits(l2, (c.inputs, words))
                                             for c, _, l2, _ in levels),
                               size=sum(c.inputs for c, *_ in levels) * words)
        return TreeMaterial(alphas, _split(got, [c.products for c, *_ in levels]))
    alphas, shares = await offload(_draw_levels, levels, words, key_prg(ctx, part.sender + 1),
                                   size=rows * words)  # k_(s+1): S and E1
    if role == 1:
        return TreeMaterial(alphas, shares)
    if rows:
        dealt = await offload(_deal_levels, levels, alphas, shares, key_prg(ctx, part.sender),
                              size=rows * words)  # k_s: S and E2
        await ctx.send_arrays(part.party(2), dealt)
    return TreeMaterial()


def _split(a: RingArray, sizes: Iterable[int]) -> tuple[RingArray, ...]:
    """``a`` cut along its first axis into consecutive pieces of ``sizes`` (views)."""
    pieces, lo = [], 0
    for size in sizes:
        pieces.append(a[lo : lo + size])
        lo += size
    return tuple(pieces)


def _draw_levels(levels: list[tuple[Compiled, bytes, bytes, bytes]], words: int, k1: Prg
                 ) -> tuple[tuple[RingArray, ...], tuple[RingArray, ...]]:
    """S's and E1's halves of every level's masks and of its dealt products (key k_(s+1))."""
    return (tuple(k1.bits(l1, (c.inputs, words)) for c, l1, _, _ in levels),
            tuple(k1.bits(lp, (c.products, words)) for c, _, _, lp in levels))


def _deal_levels(levels: list[tuple[Compiled, bytes, bytes, bytes]],
                 alphas: tuple[RingArray, ...], shares: tuple[RingArray, ...], k2: Prg
                 ) -> RingArray:
    """S's local work in :func:`_prepare_tree`: every level's dealt products, masked, as
    one array (what E2 receives)."""
    return np.concatenate([deal(c, alpha ^ k2.bits(l2, alpha.shape)) ^ share
                           for (c, _, l2, _), alpha, share in zip(levels, alphas, shares,
                                                                  strict=True)])


async def prepare_trees(
    ctx: Context, tree: tuple[Level, ...], parts: tuple[Part, ...], rows: int
) -> tuple[TreeMaterial, ...]:
    """:func:`_prepare_tree` for every part, ``rows`` packed rows per part."""
    return tuple(await ctx.gather(*(
        functools.partial(_prepare_tree, tree=tree, words=part.words(rows), part=part)
        for part in parts
    )))


async def prepare_random_bits(
    ctx: Context, rows: int, parts: tuple[Part, ...], ring_bits: int | tuple[int, ...] = 64
) -> RandomBits:
    """``rows`` random bits per element of ``parts``, unknown to every party, packed per part
    and arithmetic: row k modulo 2^``ring_bits[k]`` (an int: every row; below 64 only
    2^(64 - ring_bits) times the bit is meaningful). Cost: 2 rounds, 3 ring_bits / 8 bytes
    per bit in all, 24 in the full ring (:func:`.boolean.bit_to_arith`)."""
    moduli = (ring_bits,) * rows if isinstance(ring_bits, int) else tuple(ring_bits)
    if len(moduli) != rows:
        raise ValueError(f"{len(moduli)} ring sizes for {rows} rows of random bits")
    if not parts:
        empty = np.zeros((rows, 0), RING_DTYPE)
        return RandomBits((), AShare(empty, empty))
    words = [part.words(rows) for part in parts]
    packed = random_bshare(ctx, (sum(words),))
    per_part = [BShare(f, s) for f, s in zip(_split(packed.first, words),
                                             _split(packed.second, words), strict=True)]
    bits = await offload(_unpack_parts, per_part, parts, rows, size=sum(words) * 64)
    groups = {k: [row for row, m in enumerate(moduli) if m == k] for k in sorted(set(moduli))}
    if len(groups) == 1:  # one ring: no child steps, so a comparison's messages keep their steps
        return RandomBits(tuple(per_part), await bit_to_arith(ctx, bits, moduli[0]))
    selected = await offload(lambda: [bits[rs] for rs in groups.values()], size=bits.size)
    converted = await ctx.gather(*(functools.partial(bit_to_arith, b=b, ring_bits=k)
                                   for k, b in zip(groups, selected, strict=True)))
    return RandomBits(tuple(per_part), await offload(_by_rows, bits.shape, groups.values(),
                                                      converted, size=bits.size))


def _by_rows(shape: tuple[int, ...], groups: Iterable[list[int]], shares: list[AShare]
             ) -> AShare:
    """Shares of the row groups ``groups`` put back in their rows."""
    first, second = np.empty(shape, RING_DTYPE), np.empty(shape, RING_DTYPE)
    for rows, share in zip(groups, shares, strict=True):
        first[rows], second[rows] = share.first, share.second
    return AShare(first, second)


async def prepare_compare(ctx: Context, spec: CompareSpec) -> CompareMaterial:
    """The offline material of a batch of comparisons: dealt mask products and a random bit
    per element and threshold. Takes public parameters only. Cost: 2 rounds; bytes per
    element and threshold: the dealt products (12 for a 63-bit chain) + 24."""
    parts = spec.parts
    trees, bits = await ctx.gather(
        lambda c: prepare_trees(c, spec.plan.tree, parts, spec.thresholds),
        lambda c: prepare_random_bits(c, spec.thresholds, parts),
    )
    return CompareMaterial(spec, trees, bits)


async def prepare_compare_batches(
    ctx: Context, specs: Sequence[CompareSpec],
    prepare: Callable[[Context, CompareSpec], Awaitable[SliceableT]] = prepare_compare,
) -> list[SliceableT]:
    """The material of every spec, made in one ``prepare`` (:func:`prepare_compare`, or
    :func:`.evaluators.prepare_evaluator_compare`) per batch of specs equal but for their
    sizes (fewer than :data:`.trunc.ROTATE_MIN_ELEMENTS` elements together: one part) and
    sliced (the material's ``split``, :meth:`CompareMaterial.split`); a spec as large alone
    gets its own. A preparation costs the same few protocol steps whatever its size, so a
    pass's dozens of small batches cost as much local time as a handful. Cost: 2 rounds (1
    for the evaluators'); the bytes of the specs' elements (and fewer messages)."""
    return await _in_batches(ctx, specs, prepare, _COMPARE_BATCHES)


async def prepare_maximum_batches(ctx: Context, specs: Sequence[MaximumSpec]
                                  ) -> list[MaximumMaterial]:
    """:func:`prepare_compare_batches` for :func:`first_maximum`'s material (batches of
    fewer than :data:`.trunc.ROTATE_MIN_ELEMENTS` pairs; :meth:`MaximumMaterial.split`).
    Cost: 2 rounds."""
    return await _in_batches(ctx, specs, prepare_maximum, _MAXIMUM_BATCHES)


class Sliceable(Protocol):
    """Offline material a batch's slices of which serve smaller batches."""

    def split(self, bounds: Sequence[Piece]) -> list[Any]: ...


SpecT = TypeVar("SpecT", CompareSpec, MaximumSpec)
SliceableT = TypeVar("SliceableT", bound=Sliceable)


def _compare_layout(specs: Sequence[CompareSpec]) -> tuple[int, list[Piece]]:
    """A batch's elements (its size) and its slices: the specs' elements side by side, then
    the spare elements whose bits pad the slices' packed rows, a pool they share (each
    slice its own bits of it): about as many masks as the slices' own last words hold."""
    thresholds, unit = specs[0].thresholds, specs[0].unit
    data = sum(spec.size for spec in specs)
    pads = [padding_bits(thresholds, spec.size) for spec in specs]
    pool = -(-sum(pads) // thresholds) if thresholds else 0
    pieces: list[Piece] = []
    start, spare = 0, data * thresholds  # the pool's first bit, counted column by column
    for spec, pad in zip(specs, pads, strict=True):
        pieces.append((start, start + spec.size, spare if pad else -1))
        start, spare = start + spec.size, spare + pad
    return data + -(-pool // unit) * unit, pieces


def _maximum_layout(specs: Sequence[MaximumSpec]) -> tuple[int, list[Piece]]:
    """A batch's rows and its slices: each spec's rows, then its :func:`spare_rows`."""
    pieces: list[Piece] = []
    start = 0
    for spec in specs:
        stop, extra = start + spec.rows, spare_rows(spec)
        pieces.append((start, stop, stop if extra else -1))
        start = stop + extra
    return start, pieces


@dataclasses.dataclass(frozen=True)
class _Batching:
    """How specs of one kind share preparations: ``resized(spec, n)`` is the spec for n
    elements (rows), ``elements(spec)`` the elements per unit of that size, ``layout`` a
    batch's size and slices (:func:`_compare_layout`, :func:`_maximum_layout`)."""

    resized: Callable[[Any, int], Any]
    elements: Callable[[Any], int]
    layout: Callable[[Sequence[Any]], tuple[int, list[Piece]]]


_COMPARE_BATCHES = _Batching(lambda s, n: dataclasses.replace(s, size=n), lambda s: 1,
                             _compare_layout)
_MAXIMUM_BATCHES = _Batching(lambda s, n: dataclasses.replace(s, rows=n),
                             lambda s: s.pairs.unit, _maximum_layout)

_Batch = tuple[tuple[int, ...], Any, tuple[Piece, ...]]
"""One preparation of :func:`_in_batches`: the indices of the specs it serves, the spec it is
made for, and each served spec's slice of it (none when it serves one spec whole)."""


@functools.lru_cache(maxsize=64)
def _batch_plan(specs: tuple[Any, ...], batching: _Batching) -> tuple[_Batch, ...]:
    """The preparations of :func:`_in_batches` for ``specs``: a spec joins the last one of
    specs equal to it but for their size while its size x ``elements`` stays below
    :data:`.trunc.ROTATE_MIN_ELEMENTS`, else starts one (a spec as large alone is prepared
    whole). Public, so every party computes the same plan, and cached: the three parties of
    one process and a session's passes of one shape ask for the same specs, and the greedy
    grouping lays a batch out again for every spec it admits (a pass's 30 layers: 465
    layouts per kind)."""
    batches: list[list[int]] = []
    open_batch: dict[Any, list[int]] = {}
    for i, spec in enumerate(specs):
        key = batching.resized(spec, 0)
        batch = open_batch.get(key)
        if batch is None or batching.layout([specs[j] for j in (*batch, i)])[0] * \
                batching.elements(spec) >= ROTATE_MIN_ELEMENTS:
            batch = open_batch[key] = []
            batches.append(batch)
        batch.append(i)
    plan = []
    for batch in batches:
        if len(batch) == 1:
            plan.append((tuple(batch), specs[batch[0]], ()))
            continue
        size, pieces = batching.layout([specs[i] for i in batch])
        plan.append((tuple(batch), batching.resized(specs[batch[0]], size), tuple(pieces)))
    return tuple(plan)


async def _in_batches(
    ctx: Context, specs: Sequence[SpecT],
    prepare: Callable[[Context, SpecT], Awaitable[SliceableT]], batching: _Batching,
) -> list[SliceableT]:
    """Each spec's material, from the preparations of :func:`_batch_plan`, each split by the
    material's ``split`` among the specs it serves."""
    plan = _batch_plan(tuple(specs), batching)
    made = await ctx.gather(*(functools.partial(prepare, spec=spec) for _, spec, _ in plan))
    out: dict[int, SliceableT] = {}
    for (batch, _, pieces), material in zip(plan, made, strict=True):
        out.update(zip(batch, material.split(pieces) if pieces else [material], strict=True))
    return [out[i] for i in range(len(specs))]


async def prepare_maximum(ctx: Context, spec: MaximumSpec) -> MaximumMaterial:
    """The offline material of :func:`first_maximum` (public parameters only): the pairs'
    dealt products, the AND tree's, and a random bit per entry. Cost: 2 rounds."""
    pairs, wins, bits = await ctx.gather(
        lambda c: prepare_trees(c, spec.pairs.plan.tree, spec.pairs.parts, 1),
        lambda c: prepare_trees(c, and_tree(spec.entries - 1), spec.parts, 1),
        lambda c: prepare_random_bits(c, 1, spec.parts),
    )
    return MaximumMaterial(spec, pairs, wins, bits)


# ---------------------------------------------------------------------------------- online


@dataclasses.dataclass(frozen=True)
class MaskedBits:
    """Bits ready to open (:func:`open_masked`): per part, this party's XOR-half as E1 or
    E2 (packed words, row by row: :meth:`Part.words`; None as S), and a random bit per bit.
    ``shape`` is the logical shape of the bits, element-major (an element's rows last)."""

    halves: tuple[RingArray | None, ...]
    parts: tuple[Part, ...]
    bits: RandomBits
    shape: tuple[int, ...]

    @property
    def r_arith(self) -> AShare:
        """Arithmetic shares of the random bits, in the logical shape."""
        return self.bits.arith.map(lambda a: a.T.reshape(self.shape))

    def reshape(self, shape: tuple[int, ...]) -> MaskedBits:
        """The same bits in another logical shape of the same size (element-major order)."""
        if int(np.prod(shape)) != int(np.prod(self.shape)):
            raise ValueError(f"cannot reshape bits of shape {self.shape} to {shape}")
        return dataclasses.replace(self, shape=tuple(shape))


async def _offline(ctx: Context, step: Step[T]) -> T:
    """Run a preparation step inline, its traffic counted in phase ``offline``."""
    with ctx.phase("offline"):
        return await step(ctx)


def _view(x: AShare, part: Part, role: int) -> RingArray:
    """The summand this party knows of each value of ``part``: a = x_s + x_{s+1} as S,
    b = x_{s+2} as E1 (its second component) or E2 (its first). ``x``: (values, n)."""
    sl = x[:, part.lo : part.hi]
    if role == 0:
        return sl.first + sl.second
    return sl.second if role == 1 else sl.first


def _unpack(per_part: Iterable[RingArray], parts: tuple[Part, ...], rows: int) -> RingArray:
    """Each part's packed bits (``rows`` rows of its elements, row by row: :meth:`Part.words`)
    as 0/1 values side by side, (rows, elements of all parts)."""
    out = np.empty((rows, parts[-1].hi if parts else 0), RING_DTYPE)
    for words, part in zip(per_part, parts, strict=True):
        unpack_rows_into(words, out[:, part.lo : part.hi])
    return out


def _unpack_parts(per_part: list[BShare], parts: tuple[Part, ...], rows: int) -> BShare:
    """Each part's packed random bits, one word per bit, side by side (rows, elements)."""
    return BShare(_unpack((p.first for p in per_part), parts, rows),
                  _unpack((p.second for p in per_part), parts, rows))


def _spread(mono: RingArray, values: int, of: npt.NDArray[np.intp], n: int) -> RingArray:
    """Rows of bits packed value by value (values x n) -> each threshold's copy of its
    value's bits, packed threshold by threshold (of.size x n)."""
    if values == 1 and of.size == 1:
        return mono
    if n % WORD_BITS == 0:  # whole words per value: move words
        return mono.reshape(mono.shape[0], values, -1)[:, of].reshape(mono.shape[0], -1)
    return gather_bit_runs(mono, n, of)


async def _leaves(
    ctx: Context, plan: Plan, part: Part, view: RingArray, shifted: RingArray | None,
    of: npt.NDArray[np.intp],
) -> RingArray | None:
    """Round 1, then this evaluator's XOR-halves of the leaves (and of the top bit, last;
    None at S). ``view``: S's a (values, size); ``shifted``: the evaluators' b' per threshold
    (thresholds, size); ``of``: each threshold's value."""
    values = view.shape[0]
    mono = await _exchange_leaves(ctx, plan, part, view, values)
    if mono is None:
        return None
    assert shifted is not None
    return await offload(_evaluator_leaves, plan, mono, values, of, part.size, shifted,
                         part.role(ctx.role) == 1, size=shifted.size)


def _evaluator_leaves(plan: Plan, mono: RingArray, values: int, of: npt.NDArray[np.intp],
                      n: int, shifted: RingArray, first: bool) -> RingArray:
    """An evaluator's local leaf work (:func:`_leaves`; in a worker thread for long arrays)."""
    return leaf_halves(plan, _spread(mono, values, of, n), bit_slices(shifted), first)


async def _exchange_leaves(
    ctx: Context, plan: Plan, part: Part, view: RingArray, values: int
) -> RingArray | None:
    """Round 1: S sends E2 its masked monomials of ``view`` (its a, (values, size); only S
    reads it); E1 draws their pads, E2 receives them: this evaluator's monomials (None at S)."""
    role = part.role(ctx.role)
    label = ctx.label(b"fc.pad")
    shape = (plan.monomials, part.words(values))
    if role == 0:
        masked = await offload(_masked_monomials, plan, view, key_prg(ctx, part.sender + 1),
                               label, shape, size=values * part.size)
        await ctx.send_arrays(part.party(2), masked)
        return None
    if role == 1:
        return await offload(key_prg(ctx, part.sender + 1).bits, label, shape,
                             size=values * part.size)
    return await ctx.recv_array(part.sender, ArraySpec.ring(shape))


def _masked_monomials(plan: Plan, view: RingArray, k1: Prg, label: bytes,
                      shape: tuple[int, int]) -> RingArray:
    """S's leaf monomials of ``view`` under E1's pads (key k_(s+1)): what E2 receives."""
    return sender_monomials(plan, bit_slices(view)) ^ k1.bits(label, shape)


async def _tree(
    ctx: Context, tree: tuple[Level, ...], part: Part, halves: RingArray,
    material: TreeMaterial,
) -> RingArray:
    """The evaluators' levels: one round each (module docstring). ``halves``: this
    evaluator's XOR-halves of the first level's inputs; returns those of the last outputs."""
    role = part.role(ctx.role)
    other = part.party(3 - role)
    for level, alpha, products in zip(tree, material.alphas, material.products, strict=True):
        mine = await offload(np.bitwise_xor, halves, alpha, size=halves.size)
        await ctx.send_arrays(other, mine)
        theirs = await ctx.recv_array(other, ArraySpec.ring(mine.shape))
        halves = await offload(_next_level, compile_level(level), mine, theirs, alpha,
                               products, role == 1, size=8 * mine.size)
    return halves


def _next_level(c: Compiled, mine: RingArray, theirs: RingArray, alpha: RingArray,
                products: RingArray, first: bool) -> RingArray:
    """One level's outputs (XOR-halves) from both evaluators' masked inputs."""
    return evaluate_level(c, mine ^ theirs, alpha, products, first)


async def carry_halves(
    ctx: Context, plan: Plan, part: Part, view: RingArray, shifted: RingArray | None,
    of: npt.NDArray[np.intp], material: TreeMaterial | None = None,
) -> tuple[RingArray, RingArray] | None:
    """Leaves and tree of one part (3 rounds): this evaluator's XOR-halves of the tree's
    output (``"less"``: the carry of a + b' into bit ``plan.chain``; ``"equal"``: the AND of
    the propagates) and of the top bit a_L ^ b'_L (``"less"``; no rows for ``"equal"``),
    (thresholds, words) each; None at S. ``view``, ``shifted``, ``of``: as for
    :func:`_leaves`. Without ``material`` its preparation runs beside the leaves."""

    async def leaves(c: Context) -> RingArray | None:
        return await _leaves(c, plan, part, view, shifted, of)

    if material is None:
        material, halves = await ctx.gather(
            lambda c: _offline(c, functools.partial(
                _prepare_tree, tree=plan.tree, words=part.words(of.size), part=part)),
            leaves,
        )
    else:
        halves = await leaves(ctx)
    if halves is None:
        return None
    if plan.kind == "equal":
        return await _tree(ctx, plan.tree, part, halves, material), halves[:0]
    return await _tree(ctx, plan.tree, part, halves[:-1], material), halves[-1:]


async def _swap(ctx: Context, z: RingArray, part: Part, role: int) -> RingArray:
    """x = a + b of one part from 3-out-of-3 shares ``z`` (values, n): S's a is its own z_S;
    E1 and E2 swap theirs for b = z_E1 + z_E2 (1 round, 8 bytes per value each, beside S's
    leaves)."""
    own = z[:, part.lo : part.hi]
    if role == 0:
        return own
    other = part.party(3 - role)
    await ctx.send_arrays(other, own)
    return own + await ctx.recv_array(other, ArraySpec.ring(own.shape))


async def _compare_part(
    ctx: Context, plan: Plan, part: Part, x: AShare | RingArray, thresholds: RingArray,
    of: npt.NDArray[np.intp], material: TreeMaterial | None, drop: int = 0,
) -> RingArray | None:
    """Leaves and tree of one part: this evaluator's XOR-half of the result bits (thresholds,
    words), or None at S. Without ``material`` its preparation runs beside the leaves. ``x``
    replicated, or 3-out-of-3 shares (:func:`_swap` in the leaves' round). ``drop``: both
    summands lose their low bits first (:func:`compare_thresholds`)."""
    role = part.role(ctx.role)
    view = _view(x, part, role) if isinstance(x, AShare) else await _swap(ctx, x, part, role)
    shifted = None
    if role:
        offset = to_ring(-1 if plan.kind == "equal" else 1 << plan.chain)
        shifted = await offload(_evaluator_summand, view[of], thresholds[:, None], offset,
                                drop, size=of.size * part.size)
    elif drop:
        view = view >> np.uint64(drop)
    got = await carry_halves(ctx, plan, part, view, shifted, of, material)
    if got is None:
        return None
    root, top = got
    if plan.kind == "equal":
        return root[0]
    below = root ^ top  # bit L of x - t + 2^L, i.e. [x >= t]; E1 flips it
    return (below ^ ALL_ONES if role == 1 else below)[0]


def _evaluator_summand(b: RingArray, t: RingArray, offset: np.uint64, drop: int
                       ) -> RingArray:
    """The evaluators' b' = (b - t) / 2^drop (rounded down) + 2^chain."""
    difference = b - t
    if drop:
        difference >>= np.uint64(drop)
    difference += offset
    return difference


async def compare_thresholds(
    ctx: Context,
    x: AShare | RingArray,
    thresholds: npt.ArrayLike,
    *,
    of: npt.ArrayLike | None = None,
    kind: Kind = "less",
    bits: int = 64,
    drop: int = 0,
    levels: int | None = None,
    pre: CompareMaterial | None = None,
) -> MaskedBits:
    """[x < t] (``kind="less"``) or [x == t] (``"equal"``) for every element of x and each
    public threshold t (ring values, shape (m,)), masked and ready to open; shape
    (*x.shape, m). With ``of`` (m indices), x has a last axis of values and threshold k
    compares value of[k] (shape (*x.shape[:-1], m)). All thresholds on one value share the
    leaves.

    ``x`` is replicated, or this party's 3-out-of-3 share z of it (a product's local shares
    masked by a fresh zero-sharing, :func:`.arith.dot_share`): then per part S's summand is
    its own z_S and E1, E2 swap theirs (b = z_E1 + z_E2) in the leaves' round, which needs
    only S's: the comparisons start in the product's resharing round, 16 bytes per value
    more. Each evaluator receives the other's z_E, masked by the zero-sharing's stream of the
    key it lacks (z_E1: k_(s+1); z_E2: k_s), so b and x = z_S + b stay hidden as with
    replicated x (module docstring).

    Exact: [x < t] when x - t lies in [-2^(bits-1), 2^(bits-1)) (bits = 64: any x - t in
    [-2^63, 2^63)); [x == t] for every ring value.

    ``drop`` (``"less"`` only): S and the evaluators shift their summands of x - t right by
    ``drop`` bits first, so that the chain is ``bits - drop`` bits long (fewer leaves, maybe a
    tree level less). The result is then [x < t + c 2^drop], with c in {0, 1} the carry of
    the two summands' dropped bits (secret, data-dependent): exact for x - t outside
    [0, 2^drop), either bit inside, while x - t - c 2^drop stays within the bound above. For
    callers whose answer may be either side of a threshold within 2^drop units
    (:class:`.activations.TablePolynomial`'s ``slack``).

    ``pre``: material from
    :func:`prepare_compare` with this call's :class:`CompareSpec`; None prepares it inline
    (its traffic in phase ``offline``, beside the leaves: no extra round).
    Cost: 3 rounds (4 with :func:`open_masked`); bytes: module docstring.
    """
    def random_bits(parts: tuple[Part, ...]) -> Step[RandomBits]:
        if pre is not None:
            return Ready(pre.bits)
        return functools.partial(_offline, step=functools.partial(
            prepare_random_bits, rows=rows, parts=parts))

    rows = np.asarray(thresholds).size
    rho, halves, parts, shape = await threshold_halves(
        ctx, x, thresholds, random_bits, of=of, kind=kind, bits=bits, drop=drop,
        levels=levels, pre=pre)
    return MaskedBits(halves, parts, rho, shape)


async def threshold_halves(
    ctx: Context,
    x: AShare | RingArray,
    thresholds: npt.ArrayLike,
    material: Callable[[tuple[Part, ...]], Step[T]],
    *,
    of: npt.ArrayLike | None = None,
    kind: Kind = "less",
    bits: int = 64,
    drop: int = 0,
    levels: int | None = None,
    pre: MadeTrees | None = None,
) -> tuple[T, tuple[RingArray | None, ...], tuple[Part, ...], tuple[int, ...]]:
    """The leaves and trees of :func:`compare_thresholds` (3 rounds), beside the step that
    ``material`` makes for the parts (the bits' opening material: a child step before the
    parts' own, so its messages keep their step paths): that step's result, this party's
    XOR-half of the bits per part (packed rows; None as S), the parts and the bits' logical
    shape (arguments as :func:`compare_thresholds`)."""
    t = to_ring(np.asarray(thresholds)).reshape(-1)
    if of is None:
        values, index, shape = x.reshape(1, -1), np.zeros(t.size, np.intp), (*x.shape, t.size)
    else:
        index = np.asarray(of, np.intp).reshape(-1)
        if index.size != t.size or not np.all((index >= 0) & (index < x.shape[-1])):
            raise ValueError("of: one value index per threshold, within x's last axis")
        values, shape = x.reshape(-1, x.shape[-1]).transpose(), (*x.shape[:-1], t.size)
    spec = CompareSpec(values.shape[1], t.size, kind, bits, levels, drop=drop)
    _check(pre, spec)
    plan, parts = spec.plan, spec.parts
    made, *halves = await ctx.gather(material(parts), *(
        functools.partial(_compare_part, plan=plan, part=part, x=values, thresholds=t,
                          of=index, material=None if pre is None else pre.trees[j],
                          drop=drop)
        for j, part in enumerate(parts)
    ))
    return made, tuple(halves), parts, shape


def bounded_bits(bound: float | None, thresholds: RingArray, frac: int) -> int:
    """The ``bits`` of :func:`compare_thresholds` exact for every x with |x| <= ``bound``
    (real units, ``frac`` fractional bits) against every threshold (ring values): the
    shortest chain L with |x - t| <= bound 2^frac + max |t| < 2^L, i.e. L + 1 bits (64, the
    full chain, without a bound or when it does not fit)."""
    if bound is None:
        return 64
    t = thresholds.view(np.int64).astype(object)
    reach = math.ceil(bound * 2**frac) + max((abs(int(v)) for v in t), default=0)
    return min(64, max(2, reach.bit_length() + 1))


def _check(pre: CompareMaterial | MaximumMaterial | None,
           spec: CompareSpec | MaximumSpec) -> None:
    if pre is not None and pre.spec != spec:
        raise ValueError(f"material prepared for {pre.spec}, used for {spec}")


@functools.cache
def _pairs(m: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """np.triu_indices(m, 1) (read-only, made once per m): the pairs i < j of m entries."""
    first, second = np.triu_indices(m, 1)
    for table in (first, second):
        table.flags.writeable = False
    return first, second


@functools.cache
def _tournament(m: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.bool_]]:
    """For entry i and opponent slot k (opponent j = k + [k >= i]): the index of the pair
    {i, j} among the pairs i < j (np.triu_indices order), and whether i < j (then i beats j
    iff NOT [x_i < x_j]; else iff [x_j < x_i])."""
    first, second = _pairs(m)
    pair = np.zeros((m, m), np.intp)
    pair[first, second] = pair[second, first] = np.arange(first.size)
    slots = np.arange(m - 1)
    opponent = slots[None, :] + (slots[None, :] >= np.arange(m)[:, None])
    index = pair[np.arange(m)[:, None], opponent]
    negate = opponent > np.arange(m)[:, None]
    for table in (index, negate):
        table.flags.writeable = False
    return index, negate


def summands(x: AShare, parts: tuple[Part, ...], party: int) -> RingArray:
    """What ``party`` knows of every element of x (flattened) in the form x = a + b of the
    element's part: a = x_s + x_{s+1} where it is S, x_{s+2} where it is E1 or E2."""
    flat = x.reshape(1, -1)
    out = np.empty(flat.shape[1], RING_DTYPE)
    for part in parts:
        out[part.lo : part.hi] = _view(flat, part, part.role(party))[0]
    return out


def _pair_differences(entries: RingArray, m: int) -> RingArray:
    """x_i - x_j of every pair i < j of every row of m entries (flat), as one row."""
    flat = entries.reshape(-1, m)
    first, second = _pairs(m)
    return (flat[:, first] - flat[:, second]).reshape(1, -1)


async def _offload_pair_differences(entries: RingArray, m: int) -> RingArray:
    """:func:`_pair_differences`, in a worker thread for many pairs."""
    return await offload(_pair_differences, entries, m, size=entries.size * (m - 1) // 2)


async def maximum_leaves(
    ctx: Context, spec: MaximumSpec, entries: RingArray
) -> tuple[RingArray | None, ...]:
    """Round 1 of :func:`first_maximum`: per part of :attr:`MaximumSpec.parts`, S sends the
    leaves' monomials of its rows' pair differences. ``entries``: this party's summands of
    the entries (rows x entries, flat; :func:`summands`), read only where it is S: so this
    round can start while the evaluators' summands are still being made (a product's first
    round: :func:`.trunc.open_product`). Returns this evaluator's monomials per part."""
    diffs = await _offload_pair_differences(entries, spec.entries)
    plan = spec.pairs.plan
    return tuple(await ctx.gather(*(
        functools.partial(_exchange_leaves, plan=plan, part=part,
                          view=diffs[:, part.lo : part.hi], values=1)
        for part in spec.pairs.parts
    )))


async def _maximum_part(
    ctx: Context, spec: MaximumSpec, pairs: Part, entries: Part, diffs: RingArray,
    mono: RingArray | None, material: tuple[TreeMaterial, TreeMaterial] | None,
) -> RingArray | None:
    """One part of :func:`first_maximum` after its leaves' round: the pairs' tree, each
    entry's beats, their AND. ``diffs``: this party's summands of x_i - x_j for every pair
    i < j of every row, (1, pairs); ``mono``: this evaluator's leaf monomials (None at S).
    This evaluator's XOR-half of [entry wins] (1, words), or None at S."""
    m = spec.entries
    plan, wins_tree = spec.pairs.plan, and_tree(m - 1)
    if material is None:
        material = tuple(await ctx.gather(
            lambda c: _offline(c, functools.partial(
                _prepare_tree, tree=plan.tree, words=pairs.words(), part=pairs)),
            lambda c: _offline(c, functools.partial(
                _prepare_tree, tree=wins_tree, words=entries.words(), part=entries)),
        ))
    if mono is None:
        return None
    pair_tree, win_tree = material
    role = pairs.role(ctx.role)
    halves = await offload(_pair_leaves, plan, mono, diffs[:, pairs.lo : pairs.hi], role == 1,
                           size=pairs.size)
    at_least = await _tree(ctx, plan.tree, pairs, halves[:-1], pair_tree)
    beats = await offload(_beats, at_least ^ halves[-1:], m, pairs, entries, role == 1,
                          size=pairs.size)
    return (await _tree(ctx, wins_tree, entries, beats, win_tree))[0]


def _pair_leaves(plan: Plan, mono: RingArray, diffs: RingArray, first: bool) -> RingArray:
    """An evaluator's leaf halves of the pairs' comparisons (:func:`_maximum_part`)."""
    return leaf_halves(plan, mono, bit_slices(diffs + to_ring(1 << plan.chain)), first)


def _beats(at_least: RingArray, m: int, pairs: Part, entries: Part, first: bool) -> RingArray:
    """XOR-halves of [x_i >= x_j] per pair i < j (packed) to [entry beats opponent k], packed
    (m - 1, words): entry i beats j > i on the pair's bit and j < i on its negation."""
    index, negate = _tournament(m)
    bits = unpack_bits(at_least, pairs.size).reshape(entries.size // m, -1)[:, index]
    if first:
        bits ^= (~negate).astype(RING_DTYPE)
    return pack_bits(bits.transpose(2, 0, 1).reshape(m - 1, -1))


async def maximum_after_leaves(
    ctx: Context, spec: MaximumSpec, leaves: tuple[RingArray | None, ...],
    entries: RingArray, pre: MaximumMaterial | None = None,
) -> MaskedBits:
    """:func:`first_maximum` after :func:`maximum_leaves`: ``entries`` now this party's
    summands of the entries where it is E1 or E2 too. 3 rounds (4 from 10 entries on);
    masked bits of shape (rows, entries)."""
    _check(pre, spec)
    diffs = await _offload_pair_differences(entries, spec.entries)

    random_bits = Ready(pre.bits) if pre is not None else functools.partial(
        _offline, step=functools.partial(prepare_random_bits, rows=1, parts=spec.parts))
    rho, *halves = await ctx.gather(random_bits, *(
        functools.partial(
            _maximum_part, spec=spec, pairs=pairs, entries=part, diffs=diffs, mono=mono,
            material=None if pre is None else (pre.pairs[j], pre.wins[j]))
        for j, (pairs, part, mono) in enumerate(
            zip(spec.pairs.parts, spec.parts, leaves, strict=True))
    ))
    return MaskedBits(tuple(halves), spec.parts, rho, (spec.rows, spec.entries))


async def first_maximum(
    ctx: Context, x: AShare, *, bits: int = 64, levels: int | None = None,
    pre: MaximumMaterial | None = None,
) -> MaskedBits:
    """[x_i is the first maximum of its row] along x's last axis (2 to 17 entries), masked
    and ready to open; shape x.shape.

    All pairs i < j are compared at once (:func:`compare_thresholds`'s leaves and tree,
    ``bits`` and ``levels`` as there: exact when the entries' differences lie in
    [-2^(bits-1), 2^(bits-1))); entry i wins when it beats every other (x_i >= x_j for
    j > i, x_i > x_j for j < i: exactly one entry wins), one more dealt AND level of fan-in
    up to 8 (two of up to 4 from 10 entries on). Cost: 4 rounds (5 with
    :func:`open_masked`; one more for rows of 10 to 17); per row 50.6 bytes per pair (online
    38.6) and per entry the AND's products (2^(m-1) - m bits), its 2 (m - 1) opened bits and
    a random bit (24 bytes). The leaves' round (:func:`maximum_leaves`) needs only S's
    summands, so it can travel in a product's first round (:func:`.softmax.max_of_product`).
    """
    m = x.shape[-1]
    if not 2 <= m <= 17:
        raise ValueError(f"first_maximum takes rows of 2 to 17 entries, got {m}")
    spec = MaximumSpec(x.size // m, m, bits, levels)
    own = summands(x, spec.parts, ctx.role)
    leaves = await maximum_leaves(ctx, spec, own)
    return (await maximum_after_leaves(ctx, spec, leaves, own, pre)).reshape(x.shape)


async def _open_part(
    ctx: Context, part: Part, half: RingArray | None, rho: BShare
) -> RingArray:
    """c = bit ^ rho for one part, to all three (module docstring, step 3): 1 round."""
    role = part.role(ctx.role)
    label = ctx.label(b"fc.sigma")
    shape = rho.shape
    if role == 0:
        from_e1 = await ctx.recv_array(part.party(1), ArraySpec.ring(shape))
        from_e2 = await ctx.recv_array(part.party(2), ArraySpec.ring(shape))
        return from_e1 ^ from_e2 ^ rho.first ^ rho.second
    assert half is not None
    sigma = key_prg(ctx, part.sender + 2).bits(label, shape)  # k_{s+2}: E1 and E2
    other = part.party(3 - role)
    # E1 holds (rho_{s+1}, rho_{s+2}), E2 (rho_{s+2}, rho_s)
    await ctx.send_arrays(other, half ^ (rho.first if role == 1 else rho.second))
    await ctx.send_arrays(part.sender, half ^ sigma ^ (rho.second if role == 1 else 0))
    got = await ctx.recv_array(other, ArraySpec.ring(shape))
    return half ^ got ^ rho.first ^ rho.second


async def open_masked(ctx: Context, masked: MaskedBits) -> RingArray:
    """Open c = bit ^ rho for every bit (0/1 ring values, the bits' logical shape): 1 round,
    4 bits per bit in all. It reveals nothing (rho is uniform); [bit] = c + (1 - 2c) rho
    and bit * f = c f + (1 - 2c) rho f follow locally (:mod:`.compare`)."""
    opened = await ctx.gather(*(
        functools.partial(_open_part, part=part, half=half, rho=rho)
        for part, half, rho in zip(masked.parts, masked.halves, masked.bits.packed, strict=True)
    ))
    if not opened:
        return np.zeros(masked.shape, RING_DTYPE)
    return await offload(_opened_bits, masked, opened, size=math.prod(masked.shape))


def _opened_bits(masked: MaskedBits, opened: list[RingArray]) -> RingArray:
    """The opened words of every part as 0/1 ring values of the bits' logical shape."""
    rows = masked.bits.arith.shape[0]
    c = _unpack(opened, masked.parts, rows)
    return c.reshape(rows, -1).T.reshape(masked.shape)


__all__ = [
    "CompareMaterial", "CompareSpec", "MadeTrees", "MaskedBits", "MaximumMaterial", "MaximumSpec",
    "Part", "Piece", "RandomBits", "TreeMaterial", "bounded_bits", "carry_halves",
    "compare_thresholds", "first_maximum", "maximum_after_leaves", "maximum_leaves", "open_masked",
    "prepare_compare", "prepare_compare_batches", "prepare_maximum", "prepare_maximum_batches",
    "prepare_random_bits", "prepare_trees", "spare_rows", "split_trees",
    "summands", "threshold_halves",
]
