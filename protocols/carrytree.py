"""The local algebra of the fast comparison's dealer-masked carry tree (no messages).

:mod:`.fastcmp` runs the protocol; this module holds what each party computes on its own:

- *plans* (:func:`comparison_plan`): the leaf blocks of a comparison's carry chain (their
  bit widths from the lowest) and its tree of :class:`Level` s, each output an XOR of
  monomials (ANDs) of the level's input wires: :func:`carry_level` combines (generate,
  propagate) nodes, :func:`and_level` ANDs wires (:func:`and_tree`); a plan's root may have
  several outputs (:func:`boundary_plan`: the carries into bit 63 and into a bit f, for
  :mod:`.trunc1`);
- *leaves*: S's monomials of its summand's block bits (:func:`sender_monomials`) and an
  evaluator's XOR-halves of every block's (G, P), from its halves of those monomials and
  the coefficients its summand gives them (:func:`leaf_halves`);
- *levels* as index arrays (:func:`compile_level`): the dealer's mask products
  (:func:`deal`) and an evaluator's XOR-halves of every output from the opened masked
  wires d = w ^ alpha (:func:`evaluate_level`), each monomial AND_{w in M} w expanded as
  XOR_{T subset M} (AND_{w in M \\ T} d_w) alpha_T.

Everything works on packed uint64 words (64 elements per word): plans and leaves with numpy,
one operation per monomial term vectorised over all nodes and elements; a level's evaluation
in one numba kernel (:func:`_evaluate_kernel`: no GIL, compiled once and cached on disk) that
builds the subset products and XORs every output's terms block by block of words, so that
nothing larger than a block of products is ever stored (numpy would materialise every term).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from itertools import combinations, product
from typing import Literal

import numpy as np
import numpy.typing as npt
from numba import njit, types

from .boolean import ALL_ONES
from .ring import RING_DTYPE, RingArray

Kind = Literal["less", "equal"]
LEAF_BITS = 4
"""Bits per leaf block: 15 monomials, one (G, P) pair."""
MAX_FANIN = 4
"""Tree nodes combine at most this many wires unless a caller asks for fewer levels."""
LARGEST_FANIN = 9
"""No node combines more wires: a node of fan-in f needs about 2^f dealt mask products."""

Monomial = tuple[int, ...]
"""Input wires ANDed together (indices into a level's inputs)."""


# ------------------------------------------------------------------------------ public plans


@dataclasses.dataclass(frozen=True)
class Level:
    """One tree level: ``outputs[o]`` is the XOR of its monomials over ``inputs`` wires."""

    inputs: int
    outputs: tuple[tuple[Monomial, ...], ...]


def _fanins(n: int, levels: int) -> list[list[int]]:
    """Group sizes per level (as even as possible, larger first) reducing n nodes to 1."""
    plan = []
    for remaining in range(levels, 0, -1):
        f = 1
        while f**remaining < n:
            f += 1
        if f > LARGEST_FANIN:
            raise ValueError(f"{n} nodes in {remaining} levels need nodes of fan-in {f}, "
                             f"more than {LARGEST_FANIN} (about 2^fan-in dealt products)")
        groups = -(-n // f)
        plan.append([n // groups + (1 if g < n % groups else 0) for g in range(groups)])
        n = groups
    return plan


def _depth(n: int, fanin: int) -> int:
    """The fewest levels of nodes of at most ``fanin`` inputs that reduce n nodes to 1."""
    depth, reach = 0, 1
    while reach < n:
        depth, reach = depth + 1, reach * fanin
    return depth


def carry_level(fanins: Sequence[int]) -> Level:
    """Combine (G, P) nodes in groups: inputs G_0..G_{n-1}, P_1..P_{n-1} (the lowest node's P
    is never needed); outputs the groups' G, then P of every group but the lowest."""
    n = sum(fanins)
    outputs_g: list[tuple[Monomial, ...]] = []
    outputs_p: list[tuple[Monomial, ...]] = []
    start = 0
    for group, f in enumerate(fanins):
        nodes = range(start, start + f)
        outputs_g.append(tuple((i, *(n - 1 + j for j in nodes if j > i)) for i in nodes))
        if group:
            outputs_p.append((tuple(n - 1 + j for j in nodes),))
        start += f
    return Level(2 * n - 1, (*outputs_g, *outputs_p))


def and_level(fanins: Sequence[int]) -> Level:
    """AND wires in groups of the given sizes (one output per group)."""
    outputs = []
    start = 0
    for f in fanins:
        outputs.append((tuple(range(start, start + f)),))
        start += f
    return Level(sum(fanins), tuple(outputs))


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one comparison computes: its leaf blocks (bit widths from the lowest) and tree."""

    kind: Kind
    chain: int
    widths: tuple[int, ...]
    tree: tuple[Level, ...]

    @property
    def top(self) -> bool:
        """Whether bit ``chain`` itself is read (comparisons: yes; equality: no)."""
        return self.kind == "less"

    @property
    def monomials(self) -> int:
        """Rows of S's leaf message: the non-empty monomials of every block (and a_L)."""
        return sum((1 << w) - 1 for w in self.widths) + self.top


@functools.cache
def comparison_plan(kind: Kind, bits: int = 64, levels: int | None = None) -> Plan:
    """The plan of [x < t] exact for |x - t| < 2^(bits-1) (``bits`` in [2, 64]; 64: every
    x - t in [-2^63, 2^63)), or of [x == t] (``bits`` must be 64), with ``levels`` tree levels
    (default: the fewest with fan-in <= :data:`MAX_FANIN`)."""
    if kind == "equal":
        if bits != 64:
            raise ValueError("equality tests every bit: bits must be 64")
        chain = 64
    elif kind == "less":
        if not 2 <= bits <= 64:
            raise ValueError(f"comparison bits must be in [2, 64], got {bits}")
        chain = bits - 1
    else:
        raise ValueError(f"unknown comparison kind {kind!r}")
    blocks = -(-chain // LEAF_BITS)
    widths = (chain - LEAF_BITS * (blocks - 1),) + (LEAF_BITS,) * (blocks - 1)
    depth = _depth(blocks, MAX_FANIN) if levels is None else levels
    if depth < 0 or (depth == 0) != (blocks == 1):
        raise ValueError(f"{blocks} leaves cannot be combined in {depth} levels")
    make = carry_level if kind == "less" else and_level
    return Plan(kind, chain, widths, tuple(make(f) for f in _fanins(blocks, depth)))


def _compositions(n: int, largest: int, parts: int) -> list[tuple[int, ...]]:
    """Every ordered split of n into at most ``parts`` parts of at most ``largest``."""
    if n == 0:
        return [()]
    return [(p, *rest) for p in range(1, min(largest, n) + 1) if parts
            for rest in _compositions(n - p, largest, parts - 1)]


def _even_widths(bits: int, cap: int) -> list[int]:
    """``bits`` in the fewest blocks of at most ``cap`` bits, as even as possible (the
    narrower ones lowest, as :func:`comparison_plan`'s)."""
    blocks = -(-bits // cap)
    base, wider = divmod(bits, blocks)
    return [base] * (blocks - wider) + [base + 1] * wider


def _boundary_tree(n: int, j: int, fanins: Sequence[int]) -> tuple[Level, Level]:
    """Two carry levels over n leaves (inputs G_0..G_{n-1}, P_1..P_{n-1}) grouped by
    ``fanins`` whose root outputs the carry out of every leaf, then the carry out of leaves
    0..j-1. Level 1 is :func:`carry_level`, plus, when leaf j is inside group g (not its
    first), the prefix (G, P) of that group's leaves below j (P only for g > 0: monomials
    that are subsets of the group's own, so no new dealt products). Level 2 combines the m
    groups (inputs G'_0.., P'_1.., then those extra wires) into the root G and the prefix G
    of groups 0..g-1 (and the partial group)."""
    first = carry_level(fanins)
    starts = [sum(fanins[:k]) for k in range(len(fanins))]
    m, g = len(fanins), max(k for k, st in enumerate(starts) if st <= j)
    extra: list[tuple[Monomial, ...]] = []
    if starts[g] != j:
        below = range(starts[g], j)
        extra.append(tuple((i, *(n - 1 + k for k in below if k > i)) for i in below))
        if g:
            extra.append((tuple(n - 1 + k for k in below),))
    partial = (2 * m,) if len(extra) == 2 else ()  # the partial group's P wire
    prefix = tuple((i, *(m - 1 + k for k in range(i + 1, g)), *partial) for i in range(g))
    prefix += ((2 * m - 1,),) if extra else ()
    root = carry_level([m])
    return (Level(first.inputs, (*first.outputs, *extra)),
            Level(root.inputs + len(extra), (*root.outputs, prefix)))


def _plan_bits(plan: Plan) -> int:
    """Bits per element the plan sends in all: leaves, dealt products, opened wires."""
    return plan.monomials + sum(len(_dealt_subsets(level)) + 2 * level.inputs
                                for level in plan.tree)


BOUNDARY_PLANS: dict[int, tuple[int, int, tuple[int, ...]]]
"""Per boundary f (1 to 62), the cheapest :func:`boundary_plan`'s parameters: the widest leaf
blocks below and above f and the level-1 group sizes. Found offline by
:func:`search_boundary_plan` over every block width (2 to 4) and grouping (at most 5 groups
of at most 5), the plan sending the fewest bits, first in search order among equals
(tests/test_fastcmp.py checks the table against the search): the search takes 0.1-0.4 s per
boundary, which a pass would otherwise spend the first time it meets a width."""
BOUNDARY_PLANS = {
    1: (2, 4, (4, 3, 3, 3, 4)), 2: (2, 4, (4, 3, 3, 3, 4)), 3: (3, 4, (4, 3, 3, 3, 3)),
    4: (4, 4, (4, 3, 3, 3, 3)), 5: (3, 4, (4, 3, 3, 3, 4)), 6: (3, 4, (4, 3, 3, 3, 4)),
    7: (4, 4, (4, 3, 3, 3, 3)), 8: (4, 4, (4, 3, 3, 3, 3)), 9: (3, 4, (4, 3, 3, 3, 4)),
    10: (4, 4, (4, 3, 3, 3, 4)), 11: (4, 4, (4, 3, 3, 3, 3)), 12: (3, 4, (4, 3, 3, 3, 4)),
    13: (4, 4, (4, 3, 3, 3, 4)), 14: (4, 4, (4, 3, 3, 3, 4)), 15: (4, 4, (4, 3, 3, 3, 3)),
    16: (4, 4, (4, 3, 3, 3, 3)), 17: (4, 4, (4, 3, 3, 3, 4)), 18: (3, 4, (3, 3, 4, 4, 4)),
    19: (4, 4, (4, 3, 3, 3, 3)), 20: (4, 4, (4, 3, 3, 3, 3)), 21: (3, 4, (4, 3, 3, 4, 4)),
    22: (4, 4, (3, 3, 3, 4, 4)), 23: (4, 4, (3, 3, 3, 3, 4)), 24: (3, 4, (4, 4, 3, 3, 4)),
    25: (4, 4, (4, 3, 3, 3, 4)), 26: (4, 4, (4, 3, 3, 3, 4)), 27: (4, 4, (4, 3, 3, 3, 3)),
    28: (4, 4, (4, 3, 3, 3, 3)), 29: (4, 4, (4, 4, 3, 3, 3)), 30: (4, 4, (4, 4, 3, 3, 3)),
    31: (4, 3, (4, 4, 3, 4, 4)), 32: (3, 4, (4, 3, 4, 4, 4)), 33: (3, 4, (4, 3, 4, 4, 4)),
    34: (4, 4, (3, 3, 3, 4, 4)), 35: (4, 4, (3, 3, 3, 3, 4)), 36: (3, 4, (4, 4, 4, 3, 4)),
    37: (4, 4, (4, 3, 3, 3, 4)), 38: (4, 4, (4, 3, 3, 3, 4)), 39: (4, 4, (4, 3, 3, 3, 3)),
    40: (4, 4, (4, 3, 3, 3, 3)), 41: (4, 4, (4, 3, 4, 3, 3)), 42: (4, 4, (4, 3, 4, 3, 3)),
    43: (4, 3, (4, 3, 4, 3, 4)), 44: (4, 4, (4, 3, 4, 2, 3)), 45: (4, 3, (4, 4, 4, 3, 3)),
    46: (4, 3, (4, 4, 4, 3, 3)), 47: (4, 4, (3, 3, 3, 3, 4)), 48: (3, 4, (4, 4, 4, 4, 4)),
    49: (4, 4, (4, 3, 3, 3, 4)), 50: (4, 4, (4, 3, 3, 3, 4)), 51: (4, 4, (4, 3, 3, 3, 3)),
    52: (4, 4, (4, 3, 3, 3, 3)), 53: (4, 4, (4, 3, 3, 4, 3)), 54: (4, 3, (4, 3, 3, 4, 3)),
    55: (4, 3, (4, 3, 3, 4, 3)), 56: (4, 4, (4, 3, 3, 4, 2)), 57: (4, 3, (4, 3, 4, 4, 2)),
    58: (4, 3, (4, 3, 4, 4, 2)), 59: (4, 2, (4, 3, 4, 4, 2)), 60: (4, 3, (4, 3, 4, 4, 1)),
    61: (4, 2, (4, 4, 4, 4, 1)), 62: (4, 2, (4, 4, 4, 4, 1)),
}


def _boundary(boundary: int, low: int, high: int, fanins: tuple[int, ...]) -> Plan:
    """The plan of leaf blocks of at most ``low`` bits below the boundary and ``high`` above,
    level 1 grouped by ``fanins``."""
    below, above = _even_widths(boundary, low), _even_widths(63 - boundary, high)
    return Plan("less", 63, (*below, *above),
                _boundary_tree(len(below) + len(above), len(below), fanins))


def search_boundary_plan(boundary: int) -> tuple[int, int, tuple[int, ...]]:
    """The parameters of the cheapest boundary plan (:data:`BOUNDARY_PLANS`' source)."""
    options = [(low, high, fanins)
               for low, high in product(range(2, LEAF_BITS + 1), repeat=2)
               for fanins in _compositions(len(_even_widths(boundary, low))
                                           + len(_even_widths(63 - boundary, high)), 5, 5)]
    return min(options, key=lambda o: _plan_bits(_boundary(boundary, *o)))


@functools.cache
def boundary_plan(boundary: int) -> Plan:
    """The 64-bit [x < t] plan (63-bit chain, :func:`comparison_plan`) whose root also
    outputs the carry into bit ``boundary`` (1 to 62): the tree's outputs are the carry into
    bit 63, then into bit ``boundary``. Leaf blocks of at most :data:`LEAF_BITS` bits split
    at the boundary, two levels (:func:`_boundary_tree`), as :data:`BOUNDARY_PLANS` gives.
    Costs about what the 63-bit chain alone costs (397 to 428 bits per element against 405),
    where a separate chain to ``boundary`` adds its own leaves and tree (2 to 401 bits)."""
    if not 1 <= boundary <= 62:
        raise ValueError(f"the boundary must be in [1, 62], got {boundary}")
    return _boundary(boundary, *BOUNDARY_PLANS[boundary])


@functools.cache
def and_tree(inputs: int, levels: int | None = None) -> tuple[Level, ...]:
    """Levels that AND ``inputs`` wires (default: the fewest with fan-in <= 8, which one
    dealt level affords for the :func:`first_maximum` of rows of up to 9)."""
    depth = _depth(inputs, 2 * MAX_FANIN) if levels is None else levels
    return tuple(and_level(f) for f in _fanins(inputs, depth))


# ------------------------------------------------------------------- compiled level algebra


@dataclasses.dataclass(frozen=True)
class Compiled:
    """A level as index arrays. Subsets of inputs are numbered: 0 the empty set, 1 + w the
    single wire w, then every larger subset any monomial needs (by size). Each larger subset
    is built as (subset without its last wire) AND (its last wire): ``parents`` / ``wires``
    list those two subsets for every larger subset in numbering order. Output o is the XOR
    over ``terms`` (o, d subset, alpha subset), its terms from ``starts[o]`` to
    ``starts[o + 1]``."""

    inputs: int
    outputs: int
    subsets: int
    parents: npt.NDArray[np.int64]
    wires: npt.NDArray[np.int64]
    term_d: npt.NDArray[np.int64]
    term_alpha: npt.NDArray[np.int64]
    starts: npt.NDArray[np.int64]

    @property
    def products(self) -> int:
        """Dealt mask products (subsets of two or more wires)."""
        return self.subsets - 1 - self.inputs


def _subsets_of(m: Monomial) -> list[tuple[int, ...]]:
    return [c for r in range(len(m) + 1) for c in combinations(sorted(m), r)]


@functools.cache
def _dealt_subsets(level: Level) -> list[tuple[int, ...]]:
    """The subsets of two or more wires of the level's monomials (by size): one dealt
    product each."""
    return sorted({s for out in level.outputs for m in out for s in _subsets_of(m)
                   if len(s) >= 2}, key=lambda s: (len(s), s))


@functools.cache
def compile_level(level: Level) -> Compiled:
    subsets_of = _subsets_of
    larger = _dealt_subsets(level)
    index = {(): 0, **{(w,): 1 + w for w in range(level.inputs)}}
    for s in larger:
        index[s] = len(index)
    terms = [(o, index[tuple(w for w in m if w not in t)], index[t])
             for o, out in enumerate(level.outputs) for m in out for t in subsets_of(m)]
    term_d = np.array([d for _, d, _ in terms], np.int64)
    term_alpha = np.array([a for _, _, a in terms], np.int64)
    outs = np.array([o for o, _, _ in terms], np.intp)
    starts = np.flatnonzero(np.r_[True, outs[1:] != outs[:-1], True]).astype(np.int64)
    parents = np.array([index[s[:-1]] for s in larger], np.int64)
    wires = np.array([1 + s[-1] for s in larger], np.int64)
    return Compiled(level.inputs, len(level.outputs), len(index), parents, wires,
                    term_d, term_alpha, starts)


_WORDS_IN = types.Array(types.uint64, 2, "C", readonly=True)  # also accepts writable arrays
_INDEX = types.Array(types.int64, 1, "C", readonly=True)


def _products(c: Compiled, wires: RingArray) -> RingArray:
    """Every subset product of ``wires`` (inputs, M) in the subset numbering (row 0: ones)."""
    out = np.empty((c.subsets, wires.shape[1]), RING_DTYPE)
    out[0] = ALL_ONES
    out[1 : 1 + c.inputs] = wires
    _subsets_kernel(out, 1 + c.inputs, c.parents, c.wires)
    return out


@njit(types.void(types.Array(types.uint64, 2, "C"), types.int64, _INDEX, _INDEX),
      nogil=True, cache=True)
def _subsets_kernel(  # pragma: no cover (compiled)
    out: RingArray, first: int, parents: npt.NDArray[np.int64], wires: npt.NDArray[np.int64]
) -> None:
    """out[first + k] = out[parents[k]] & out[wires[k]] for every k, in order: each larger
    subset's product from two made before it (one pass, no temporaries)."""
    for k in range(parents.shape[0]):
        p, w, row = parents[k], wires[k], out[first + k]
        for j in range(out.shape[1]):
            row[j] = out[p, j] & out[w, j]


def deal(c: Compiled, alpha: RingArray) -> RingArray:
    """The dealer's mask products alpha_T for every subset T of two or more wires."""
    return _products(c, alpha)[1 + c.inputs :]


def evaluate_level(
    c: Compiled, d: RingArray, alpha: RingArray, products: RingArray, first: bool
) -> RingArray:
    """An evaluator's XOR-half of every output from the opened d = w ^ alpha, its halves of
    the masks and of their products; ``first`` (E1) holds the empty product (1)."""
    out = np.empty((c.outputs, d.shape[1]), RING_DTYPE)
    _evaluate_kernel(np.ascontiguousarray(d, RING_DTYPE), np.ascontiguousarray(alpha, RING_DTYPE),
                     np.ascontiguousarray(products, RING_DTYPE), first, c.parents, c.wires,
                     c.term_d, c.term_alpha, c.starts, out)
    return out


_BLOCK_WORDS = 256
"""Words per block in :func:`_evaluate_kernel`: a block's products (at most a few hundred
subsets) stay in L2 while every output's terms are read from them."""
_EVALUATE_SIGNATURE = types.void(
    _WORDS_IN, _WORDS_IN, _WORDS_IN, types.boolean, _INDEX, _INDEX, _INDEX, _INDEX, _INDEX,
    types.Array(types.uint64, 2, "C"),
)


@njit(_EVALUATE_SIGNATURE, nogil=True, cache=True)
def _evaluate_kernel(  # pragma: no cover (compiled)
    d: RingArray, alpha: RingArray, products: RingArray, first: bool,
    parents: npt.NDArray[np.int64], wires: npt.NDArray[np.int64],
    term_d: npt.NDArray[np.int64], term_alpha: npt.NDArray[np.int64],
    starts: npt.NDArray[np.int64], out: RingArray,
) -> None:
    """:func:`evaluate_level`: subsets numbered as in :class:`Compiled`; the alpha side of
    subset s is 1 or 0 (s = 0, E1 or E2), alpha[s - 1] (single wires) or products[s - 1 -
    inputs]."""
    inputs, words = d.shape
    subsets = 1 + inputs + parents.shape[0]
    ones = ~np.uint64(0)
    block = np.empty((subsets, _BLOCK_WORDS), np.uint64)
    for w0 in range(0, words, _BLOCK_WORDS):
        n = min(_BLOCK_WORDS, words - w0)
        for j in range(n):
            block[0, j] = ones
        for i in range(inputs):
            for j in range(n):
                block[1 + i, j] = d[i, w0 + j]
        for s in range(parents.shape[0]):
            p, w, k = parents[s], wires[s], 1 + inputs + s
            for j in range(n):
                block[k, j] = block[p, j] & block[w, j]
        for o in range(starts.shape[0] - 1):
            row = out[o]
            for j in range(n):
                row[w0 + j] = 0
            for t in range(starts[o], starts[o + 1]):
                dv = block[term_d[t]]
                a = term_alpha[t]
                if a == 0:
                    if first:
                        for j in range(n):
                            row[w0 + j] ^= dv[j]
                elif a <= inputs:
                    av = alpha[a - 1]
                    for j in range(n):
                        row[w0 + j] ^= dv[j] & av[w0 + j]
                else:
                    pv = products[a - 1 - inputs]
                    for j in range(n):
                        row[w0 + j] ^= dv[j] & pv[w0 + j]


# ------------------------------------------------------------------------------- leaf algebra


@functools.cache
def _block_subsets(width: int) -> tuple[tuple[int, ...], ...]:
    """The monomials of a block of ``width`` bits, the empty one first, by size."""
    return tuple(c for r in range(width + 1) for c in combinations(range(width), r))


@functools.cache
def _block_terms(width: int) -> tuple[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]], ...]:
    """For G and P of a block: the (a-monomial, b-monomial) index pairs of their expansion
    XOR_S a^S c_S(b) (indices into :func:`_block_subsets`), as two index arrays each.

    G = XOR_i a_i b_i prod_{j>i} (a_j ^ b_j): a^S (i = min S) has the coefficient
    b^({i} + {j > i not in S}); P = prod_j (a_j ^ b_j): a^S has b^(complement of S).
    """
    subsets = _block_subsets(width)
    index = {s: k for k, s in enumerate(subsets)}
    g = [(k, index[(s[0], *(j for j in range(s[0] + 1, width) if j not in s))])
         for k, s in enumerate(subsets) if s]
    p = [(k, index[tuple(j for j in range(width) if j not in s)]) for k, s in enumerate(subsets)]
    return tuple((np.array([a for a, _ in t], np.int64), np.array([b for _, b in t], np.int64))
                 for t in (g, p))


_TERMS_SIGNATURE = types.void(
    _WORDS_IN, _WORDS_IN, _INDEX, _INDEX, types.boolean, types.Array(types.uint64, 1, "C"),
)


@njit(_TERMS_SIGNATURE, nogil=True, cache=True)
def _xor_terms(  # pragma: no cover (compiled)
    pads: RingArray, coefficients: RingArray, a_index: npt.NDArray[np.int64],
    b_index: npt.NDArray[np.int64], first: bool, out: RingArray,
) -> None:
    """out = XOR over terms t of pads[a_t - 1] & coefficients[b_t]; a_t = 0 is the constant
    monomial 1, E2's (``first`` False) alone. One pass per term, no temporaries."""
    n = out.shape[0]
    for j in range(n):
        out[j] = 0
    for t in range(a_index.shape[0]):
        c = coefficients[b_index[t]]
        a = a_index[t]
        if a:
            pad = pads[a - 1]
            for j in range(n):
                out[j] ^= pad[j] & c[j]
        elif not first:
            for j in range(n):
                out[j] ^= c[j]


def _groups(widths: tuple[int, ...]) -> list[tuple[int, int, int]]:
    """Runs of equal-width blocks: (width, blocks, first bit)."""
    runs: list[tuple[int, int, int]] = []
    bit = 0
    for w in widths:
        if runs and runs[-1][0] == w:
            runs[-1] = (w, runs[-1][1] + 1, runs[-1][2])
        else:
            runs.append((w, 1, bit))
        bit += w
    return runs


@functools.cache
def _monomial_steps(width: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """For each monomial of two or more bits of :func:`_block_subsets` (in order): the
    index of the monomial without its last bit, and that bit's (1 + bit: the numbering of
    :class:`Compiled`)."""
    subsets = _block_subsets(width)
    index = {s: k for k, s in enumerate(subsets)}
    larger = subsets[1 + width :]
    parents = np.array([index[s[:-1]] for s in larger], np.int64)
    wires = np.array([1 + s[-1] for s in larger], np.int64)
    for table in (parents, wires):
        table.flags.writeable = False
    return parents, wires


def _all_monomials(bits: RingArray) -> RingArray:
    """(blocks, width, M) bit rows -> (2^width, blocks, M) products over
    :func:`_block_subsets` (the larger ones in one numba pass)."""
    blocks, width, n = bits.shape
    out = np.empty((1 << width, blocks, n), RING_DTYPE)
    out[0] = ALL_ONES
    out[1 : 1 + width] = bits.transpose(1, 0, 2)
    _subsets_kernel(out.reshape(1 << width, -1), 1 + width, *_monomial_steps(width))
    return out


def sender_monomials(plan: Plan, slices: RingArray) -> RingArray:
    """S's message before masking: the non-empty monomials of each block, then a_L.

    ``slices``: (64, ...) bit rows of a. Out: (plan.monomials, ...).
    """
    rows = []
    for width, blocks, bit in _groups(plan.widths):
        mono = _all_monomials(slices[bit : bit + width * blocks].reshape(blocks, width, -1))[1:]
        rows.append(mono.reshape(-1, *slices.shape[1:]))
    if plan.top:
        rows.append(slices[plan.chain : plan.chain + 1])
    return np.concatenate(rows)


def leaf_halves(plan: Plan, mono: RingArray, slices: RingArray, first: bool) -> RingArray:
    """An evaluator's XOR-halves of the leaves and of the top bit.

    ``mono`` (plan.monomials, M): its halves of S's monomials (E1: the pads; E2: the masked
    monomials); ``slices`` (64, M): bit rows of b'. Out: for comparisons G of every block,
    P of every block but the lowest, then the top bit's half (a_L ^ b'_L); for equality P of
    every block. E2 holds the constant monomial 1 and adds b'_L.
    """
    gs, ps = [], []
    row = 0
    for width, blocks, bit in _groups(plan.widths):
        count = (1 << width) - 1
        pads = mono[row : row + count * blocks].reshape(count, blocks, -1)
        row += count * blocks
        coefficients = _all_monomials(slices[bit : bit + width * blocks].reshape(blocks, width, -1))
        flat_pads = np.ascontiguousarray(pads).reshape(count, -1)
        flat_coefficients = coefficients.reshape(coefficients.shape[0], -1)
        g_terms, p_terms = _block_terms(width)
        for (a_index, b_index), out in ((g_terms, gs), (p_terms, ps)):
            if out is gs and plan.kind == "equal":
                continue
            acc = np.empty(pads.shape[1:], RING_DTYPE)
            _xor_terms(flat_pads, flat_coefficients, a_index, b_index, first, acc.reshape(-1))
            out.append(acc)
    p = np.concatenate(ps)
    if plan.kind == "equal":
        return p
    top = mono[-1:] if first else mono[-1:] ^ slices[plan.chain : plan.chain + 1]
    return np.concatenate([np.concatenate(gs), p[1:], top])


__all__ = [
    "BOUNDARY_PLANS",
    "LARGEST_FANIN",
    "LEAF_BITS",
    "MAX_FANIN",
    "Compiled",
    "Kind",
    "Level",
    "Monomial",
    "Plan",
    "and_level",
    "and_tree",
    "boundary_plan",
    "carry_level",
    "comparison_plan",
    "compile_level",
    "deal",
    "evaluate_level",
    "leaf_halves",
    "search_boundary_plan",
    "sender_monomials",
]
