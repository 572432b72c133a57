"""Comparison bits opened to the evaluators only, and a public table selected by them.

:func:`.fastcmp.compare_thresholds` opens c = bit ^ rho to all three parties, with rho a
random bit that *no* party knows, so that [bit] = c + (1 - 2c) [rho] is local; rho's
arithmetic sharing costs 24 bytes per bit, offline (:func:`.boolean.bit_to_arith`). When the
bits only select a row of a public table for a dot product with shared powers (SiLU's
:class:`.activations.TablePolynomial`: 8 thresholds, one row of 5 coefficients), they can be
opened to the evaluators only, with a rho that S knows: 8 bytes per bit offline, and one
exchange of the selected row per element (1 round). Per part of the comparisons (S = P_s,
E1 = P_{s+1}, E2 = P_{s+2}; keys k(S, E1) = k_{s+1}, k(S, E2) = k_s, as :mod:`.fastcmp`):

1. *Offline* (:func:`prepare_evaluator_bits`, 1 round): pads a (from k_{s+1}: S and E1) and
   a' (k_s: S and E2) per bit, so rho = a ^ a' is known to S alone; y1 from k_{s+1}, and S
   sends E2 y2 = rho - y1 (mod 2^64): additive shares of rho held by E1 and E2.
2. *Opening* (:func:`open_to_evaluators`, 1 round): E1 sends E2 s1 ^ a, E2 sends E1 s2 ^ a'
   (s1, s2 their XOR-halves of the bit): both learn c = bit ^ rho, and hold additive shares
   of the bit, u1 = c + (1 - 2c) y1 (E1) and u2 = (1 - 2c) y2 (E2). S learns nothing.
3. *Selection and dot product* (:func:`exchange_rows`, 1 round, needing the bits only, so
   it runs beside whatever makes the powers; then :func:`selected_dot`, local, and the
   truncation's 2 rounds):
   with the steps 1 - bit_k selecting coefficient rows, C = sum_k (1 - bit_k) D_k (D_k the
   table's row differences) is split as C1 (E1) + C2 (E2). For the dot product C . V with
   replicated V = (1, v, ..., v^d) (components V_s, V_{s+1}, V_{s+2}), E1 holds V_{s+1} and
   V_{s+2}, E2 V_{s+2} and V_s; the missing cross terms C1 . V_s and C2 . V_{s+1} go through
   masks of S's keys: E1 sends E2 M1 = C1 + m1 (m1 from k_{s+1}), E2 sends E1 M2 = C2 + m2
   (m2 from k_s), for the d non-constant entries. Then z_E1 = C1 . (V_{s+1} + V_{s+2}) +
   M2 . V_{s+1}, z_E2 = C2 . (V_{s+2} + V_s) + M1 . V_s and z_S = -(m1 . V_s + m2 .
   V_{s+1}) (constant entries: C_0 2^frac at E1 and E2) are 3-out-of-3 shares of C . V,
   masked by a zero-sharing and truncated as every product (:func:`.arith.finish_product`).
   :func:`selected_horner` computes the same value from v .. v^h only (h = ceil(d / 2)):
   the same shares over two column ranges, A + v^h B with B truncated apart (2 rounds
   more, d - h powers fewer).

**Security** (semi-honest, one corruption): E2 receives y2 (uniform: y1 is a stream of k_{s+1},
which E2 lacks), s1 ^ a (a: k_{s+1}) and M1 (m1: k_{s+1}); E1 receives s2 ^ a' (a': k_s) and
M2 (m2: k_s); S receives nothing here. c = bit ^ rho is uniform to E1 and E2, who each know
one of rho's two pads (and E2's y2 is masked by y1, E1's y1 is independent of rho). Every
stream has a fresh label per step, part and purpose. The truncation's messages are masked by
its own zero-sharing (:mod:`.trunc`).

**Costs** per element, all parties together, for m thresholds and a row of d + 1 entries
(:func:`.activations.evaluate_table`; SiLU: m = 8, d = 4): the opening m / 4 bytes (two bits
per bit, packed), the exchange 16 d, the truncation 40 + bits / 8 (as any product), and 8 m
offline. Against :func:`.fastcmp.open_masked` and the dot product of replicated shares:
online 16 d - m / 4 more (SiLU: 62), offline 16 m less (128); the exchange's round is one
more only where it does not fit beside the powers (SiLU: 7 rounds instead of 6 on
comparison trees of two levels, 6 on one). Exact: ring arithmetic, no probabilistic step but
the truncation's last bit.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np

from puma_async.context import OFFLINE_PHASE, ArraySpec, Context, Ready, Step

from . import ring
from .arith import finish_product, mul_local
from .bitpack import split_bit_columns, unpack_rows_into
from .fastcmp import (
    CompareSpec,
    Part,
    Piece,
    TreeMaterial,
    prepare_trees,
    split_trees,
    threshold_halves,
)
from .offload import offload
from .prg import Prg
from .randomness import key_prg
from .ring import RING_DTYPE, RingArray
from .shares import AShare

_ONE = np.uint64(1)


@dataclasses.dataclass(frozen=True)
class EvaluatorMaterial:
    """One part's offline material at this party: as E1 the pads a (packed words) and y1,
    as E2 the pads a' and y2 (rows, part elements); S keeps nothing (None)."""

    pads: RingArray | None = None
    shares: RingArray | None = None

    def split(self, bounds: Sequence[Piece]) -> list[EvaluatorMaterial]:
        """The material of elements [start, stop) of a part, for each (start, stop, spare)
        of ``bounds`` (:meth:`EvaluatorCompare.split`)."""
        if self.pads is None or self.shares is None:
            return [self] * len(bounds)
        pads = split_bit_columns(self.pads.reshape(1, -1), self.shares.shape, bounds)
        return [EvaluatorMaterial(p.reshape(-1), self.shares[:, start:stop])
                for p, (start, stop, _) in zip(pads, bounds, strict=True)]


@dataclasses.dataclass(frozen=True)
class EvaluatorCompare:
    """The offline material of :func:`compare_for_evaluators` made ahead
    (:func:`prepare_evaluator_compare`): the comparisons' trees and, per part, the bits'
    pads and shares."""

    spec: CompareSpec
    trees: tuple[TreeMaterial, ...]
    evaluators: tuple[EvaluatorMaterial, ...]

    def split(self, bounds: Sequence[Piece]) -> list[EvaluatorCompare]:
        """The material of elements [start, stop) for each (start, stop, spare) of
        ``bounds``, of a batch in one part, as :meth:`.fastcmp.CompareMaterial.split` (the
        pads' padding from the spare elements too; :func:`.fastcmp.split_trees`)."""
        pieces = split_trees(self.spec, self.trees, bounds)
        per_part = [m.split(bounds) for m in self.evaluators]
        return [EvaluatorCompare(piece, trees, tuple(m[i] for m in per_part[: len(trees)]))
                for i, (piece, trees) in enumerate(pieces)]


async def prepare_evaluator_compare(ctx: Context, spec: CompareSpec) -> EvaluatorCompare:
    """:func:`compare_for_evaluators`' material for ``spec`` (public parameters only; its
    comparisons' trees and the bits' pads and shares, step 1): phase ``offline``, 1 round.
    Make a pass's all at once with :func:`.fastcmp.prepare_compare_batches` (its
    ``prepare``)."""
    with ctx.phase(OFFLINE_PHASE):
        trees, *evaluators = await ctx.gather(
            lambda c: prepare_trees(c, spec.plan.tree, spec.parts, spec.thresholds),
            *(functools.partial(prepare_evaluator_bits, rows=spec.thresholds, part=part)
              for part in spec.parts))
    return EvaluatorCompare(spec, trees, tuple(evaluators))


@dataclasses.dataclass(frozen=True)
class EvaluatorBits:
    """Comparison bits opened to the evaluators (:func:`compare_for_evaluators`): per part
    this party's additive share of them as E1 or E2 (thresholds, part elements; None as
    S); the bits' logical shape (an element's thresholds last)."""

    shares: tuple[RingArray | None, ...]
    parts: tuple[Part, ...]
    shape: tuple[int, ...]


async def prepare_evaluator_bits(ctx: Context, rows: int, part: Part) -> EvaluatorMaterial:
    """Step 1 of the module docstring for ``rows`` bits per element of ``part``: 1 round,
    8 bytes per bit (S to E2)."""
    role = part.role(ctx.role)
    labels = ctx.label(b"ev.a"), ctx.label(b"ev.b"), ctx.label(b"ev.y")
    words, shape = (part.words(rows),), (rows, part.size)
    if role == 1:
        k1 = key_prg(ctx, part.sender + 1)
        return await offload(lambda: EvaluatorMaterial(k1.bits(labels[0], words),
                                                       k1.ring(labels[2], shape)),
                             size=rows * part.size)
    if role == 2:
        pads = key_prg(ctx, part.sender).bits(labels[1], words)
        return EvaluatorMaterial(pads, await ctx.recv_array(part.sender, ArraySpec.ring(shape)))
    dealt = await offload(_dealt, key_prg(ctx, part.sender + 1), key_prg(ctx, part.sender),
                          labels, words, shape, size=rows * part.size)
    await ctx.send_arrays(part.party(2), dealt)
    return EvaluatorMaterial()


def _dealt(k1: Prg, k2: Prg, labels: tuple[bytes, bytes, bytes], words: tuple[int],
           shape: tuple[int, int]) -> RingArray:
    """S: y2 = rho - y1, rho = a ^ a' as 0/1 ring values (rows, part elements)."""
    rho = np.empty(shape, RING_DTYPE)
    unpack_rows_into(k1.bits(labels[0], words) ^ k2.bits(labels[1], words), rho)
    rho -= k1.ring(labels[2], shape)
    return rho


async def compare_for_evaluators(
    ctx: Context, x: AShare, thresholds: RingArray, *, bits: int, drop: int = 0,
    pre: EvaluatorCompare | None = None,
) -> EvaluatorBits:
    """[x < t] for every element of x and each public threshold t (ring values, (m,)),
    opened to the evaluators (steps 1 and 2): the comparisons of
    :func:`.fastcmp.compare_thresholds` (3 rounds, exact within ``bits``, ignoring ``drop``
    low bits), their material made ahead (``pre``: :func:`prepare_evaluator_compare` for
    this call's :class:`.fastcmp.CompareSpec`) or beside the leaves (phase ``offline``),
    then the opening (1 round)."""
    rows = thresholds.size

    def material(parts: tuple[Part, ...]) -> Step[tuple[EvaluatorMaterial, ...]]:
        if pre is not None:
            return Ready(pre.evaluators)

        async def step(c: Context) -> tuple[EvaluatorMaterial, ...]:
            with c.phase(OFFLINE_PHASE):
                return tuple(await c.gather(*(
                    functools.partial(prepare_evaluator_bits, rows=rows, part=part)
                    for part in parts)))
        return step

    made, halves, parts, shape = await threshold_halves(ctx, x, thresholds, material, bits=bits,
                                                       drop=drop, pre=pre)
    shares = await ctx.gather(*(
        functools.partial(open_to_evaluators, part=part, half=half, material=m)
        for part, half, m in zip(parts, halves, made, strict=True)))
    return EvaluatorBits(tuple(shares), parts, shape)


async def open_to_evaluators(
    ctx: Context, part: Part, half: RingArray | None, material: EvaluatorMaterial
) -> RingArray | None:
    """Step 2 for one part: this evaluator's additive share of its bits (rows, part
    elements), None at S. 1 round, one bit each way per bit."""
    role = part.role(ctx.role)
    if role == 0:
        return None
    assert half is not None and material.pads is not None and material.shares is not None
    other = part.party(3 - role)
    await ctx.send_arrays(other, half ^ material.pads)
    got = await ctx.recv_array(other, ArraySpec.ring(half.shape))
    return await offload(_bit_shares, half ^ got ^ material.pads, material.shares, role == 1,
                         size=material.shares.size)


def _bit_shares(opened: RingArray, y: RingArray, first: bool) -> RingArray:
    """c + (1 - 2c) y1 (E1, ``first``) or (1 - 2c) y2 (E2), c unpacked from ``opened``."""
    c = np.empty(y.shape, RING_DTYPE)
    unpack_rows_into(opened, c)
    out = np.subtract(_ONE, c << _ONE, dtype=RING_DTYPE)
    out *= y
    if first:
        out += c
    return out


@dataclasses.dataclass(frozen=True)
class SelectedRows:
    """The selected rows after their exchange (:func:`exchange_rows`), per part at this
    party: as E1 or E2 its additive share C_E of the rows (part elements, d + 1) and the
    other evaluator's masked M (part elements, d); as S its masks m1, m2 (part elements,
    d). The parts, the rows' logical shape (x's) and their degree d."""

    held: tuple[tuple[RingArray, RingArray], ...]
    parts: tuple[Part, ...]
    shape: tuple[int, ...]
    degree: int


async def exchange_rows(ctx: Context, below: EvaluatorBits, steps: RingArray) -> SelectedRows:
    """The first half of step 3: each evaluator's share of C = sum_k (1 - [x < t_k])
    steps[k] (the table's row differences, (m, d + 1), public), and the masked exchange of
    its non-constant entries, 1 round, 16 d bytes per element; S draws the masks. Needs the
    bits only, so it runs beside whatever makes the powers."""
    held = await ctx.gather(*(
        functools.partial(_exchange_part, part=part, u=u, steps=steps)
        for part, u in zip(below.parts, below.shares, strict=True)))
    return SelectedRows(tuple(held), below.parts, below.shape[:-1], steps.shape[1] - 1)


async def selected_dot(
    ctx: Context, rows: SelectedRows, powers: AShare, frac: int, bits: int
) -> AShare:
    """sum_j C_j V_j, truncated by ``bits``, for the exchanged rows C (:func:`exchange_rows`)
    and V = (2^frac, v, ..., v^d) (``powers``: v^1 .. v^d, (*x, d)): the rest of step 3,
    local, then the truncation's 2 rounds; x's shape out."""
    flat = powers.reshape(-1, powers.shape[-1])
    z = await _selected_share(ctx, rows, flat, frac, slice(None), constant=True)
    return (await finish_product(ctx, z, bits)).reshape(rows.shape)


async def selected_horner(
    ctx: Context, rows: SelectedRows, powers: AShare, frac: int, bits: int
) -> AShare:
    """:func:`selected_dot`'s value from the lower powers only, v^1 .. v^h (``powers``,
    (*x, h), 2 h >= d): sum_j C_j V_j = A + v^h B with A = sum_(j <= h) C_j V_j and B =
    sum_(j > h) C_j v^(j - h), both local as in step 3; B is truncated by ``frac`` (to the
    coefficients' own bits, c), then v^h B + A (at c + frac bits) by ``bits``.

    Why: the powers above v^h cost a multiplication and a truncation each (SiLU's degree 4:
    v^3 and v^4, 87 bytes per element), B's truncation one (43.5): 43.5 bytes fewer, for
    2 rounds more (4 after the exchange instead of 2). Needs |B| 2^(c + frac) < 2^62 (B is
    part of the dot product's terms, whose sum of magnitudes the table keeps below 2^61)
    and |v^h B| too. Error: B's truncation adds less than one unit at c bits times |v^h|
    (SiLU: 2^-25 x 1.9 < 6e-8) to the dot product's."""
    h, degree = powers.shape[-1], rows.degree
    if not degree - h <= h < degree:
        raise ValueError(f"Horner's split needs d / 2 <= h < d, got h = {h} for d = {degree}")
    flat = powers.reshape(-1, h)
    low = await _selected_share(ctx, rows, flat, frac, slice(0, h), constant=True)
    high = await _selected_share(ctx, rows, flat[:, : degree - h], frac, slice(h, degree),
                                 constant=False)
    b = await finish_product(ctx, high, frac)
    z = await offload(lambda: ring.add(low, mul_local(b, flat[:, h - 1])), size=low.size)
    return (await finish_product(ctx, z, bits)).reshape(rows.shape)


async def _selected_share(
    ctx: Context, rows: SelectedRows, basis: AShare, frac: int, columns: slice, constant: bool
) -> RingArray:
    """This party's 3-out-of-3 share of sum_j C_j basis_j over the rows' non-constant
    ``columns`` (C_1 .. C_d, 0-based), plus C_0 2^frac if ``constant``: flat elements."""
    parts = [
        await offload(_dot_share, part.role(ctx.role), held, basis[part.lo : part.hi], frac,
                      columns, constant, size=basis[part.lo : part.hi].size)
        for part, held in zip(rows.parts, rows.held, strict=True)]
    return np.concatenate(parts) if parts else np.zeros(0, RING_DTYPE)


async def _exchange_part(
    ctx: Context, part: Part, u: RingArray | None, steps: RingArray
) -> tuple[RingArray, RingArray]:
    """One part of :func:`exchange_rows`: (C_E, the other's M) as an evaluator, (m1, m2) as S."""
    role = part.role(ctx.role)
    labels = ctx.label(b"ev.m1"), ctx.label(b"ev.m2")
    shape = (part.size, steps.shape[1] - 1)
    if role == 0:
        k1, k2 = key_prg(ctx, part.sender + 1), key_prg(ctx, part.sender)
        return await offload(lambda: (k1.ring(labels[0], shape), k2.ring(labels[1], shape)),
                             size=2 * part.size * shape[1])
    assert u is not None
    key, label = ((key_prg(ctx, part.sender + 1), labels[0]) if role == 1
                  else (key_prg(ctx, part.sender), labels[1]))
    rows, masked = await offload(_selected_rows, u, steps, role == 1, key, label, shape,
                                 size=u.size + part.size * shape[1])
    other = part.party(3 - role)
    await ctx.send_arrays(other, masked)
    return rows, await ctx.recv_array(other, ArraySpec.ring(shape))


def _dot_share(role: int, held: tuple[RingArray, RingArray], basis: AShare, frac: int,
               columns: slice, constant: bool) -> RingArray:
    """This party's 3-out-of-3 share of one part's dot products over ``columns`` (the end of
    step 3)."""
    if role == 0:
        return _dealer_share(held[0][:, columns], held[1][:, columns], basis)
    rows, got = held
    return _evaluator_share(rows[:, 1:][:, columns], got[:, columns], basis, role == 1,
                            rows[:, 0] << np.uint64(frac) if constant else None)


def _dealer_share(m1: RingArray, m2: RingArray, powers: AShare) -> RingArray:
    """S: -(m1 . V_s + m2 . V_{s+1}) (its halves are V_s, V_{s+1})."""
    total = np.sum(m1 * powers.first, axis=-1, dtype=RING_DTYPE)
    total += np.sum(m2 * powers.second, axis=-1, dtype=RING_DTYPE)
    return ring.neg(total)


def _selected_rows(u: RingArray, steps: RingArray, first: bool, key: Prg, label: bytes,
                   shape: tuple[int, ...]) -> tuple[RingArray, RingArray]:
    """An evaluator's C (elements, d + 1) from its bit shares u (m, elements), and what it
    sends: C's non-constant entries plus its mask."""
    rows = ring.neg(np.matmul(u.T, steps, dtype=RING_DTYPE))
    if first:
        rows += np.sum(steps, axis=0, dtype=RING_DTYPE)
    return rows, ring.add(rows[:, 1:], key.ring(label, shape))


def _evaluator_share(rows: RingArray, got: RingArray, powers: AShare, first: bool,
                     constant: RingArray | None) -> RingArray:
    """E1: C1_0 2^frac + C1 . (V_{s+1} + V_{s+2}) + M2 . V_{s+1}; E2: C2_0 2^frac + C2 .
    (V_{s+2} + V_s) + M1 . V_s (E1's first half is V_{s+1}, E2's second is V_s); ``rows``
    and ``got`` the non-constant entries taken, ``constant`` C_E0 2^frac or None."""
    mine = ring.add(powers.first, powers.second)
    total = np.sum(rows * mine, axis=-1, dtype=RING_DTYPE)
    total += np.sum(got * (powers.first if first else powers.second), axis=-1, dtype=RING_DTYPE)
    if constant is not None:
        total += constant
    return total


__all__ = [
    "EvaluatorBits", "EvaluatorCompare", "EvaluatorMaterial", "SelectedRows",
    "compare_for_evaluators", "exchange_rows", "open_to_evaluators", "prepare_evaluator_bits",
    "prepare_evaluator_compare", "selected_dot", "selected_horner",
]
