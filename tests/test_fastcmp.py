"""Fast comparison against plaintext numpy: thresholds sharing leaves, bounded chains at their
edges, equality, the first maximum, rotation of roles, and the offline material."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from puma_async.context import Context
from puma_async.evaluate import evaluate, evaluation_program
from puma_async.protocols import carrytree, fastcmp
from puma_async.protocols.arith import mul_local
from puma_async.protocols.carrytree import boundary_plan, comparison_plan
from puma_async.protocols.compare import to_arith
from puma_async.protocols.randomness import setup_keys, zero_share
from puma_async.protocols.ring import RING_DTYPE
from puma_async.protocols.shares import AShare, concatenate, public_share
from puma_async.protocols.trunc import ROTATE_MIN_ELEMENTS
from puma_async.roles import CLIENT, PARTIES
from puma_async.runner import run_local

LO, HI = -(2**63), 2**63 - 1
EDGES = [0, 1, -1, 2, -2, 2**62, -(2**62), 2**62 - 1, 1 - 2**62, LO, HI, LO + 1, HI - 1,
         2**31, -(2**31), 2**18]
SLOW = settings(max_examples=25, deadline=None)
int64s = st.one_of(st.sampled_from(EDGES), st.integers(LO, HI), st.integers(-(2**20), 2**20))


def _signed(out: np.ndarray) -> np.ndarray:
    return out.view(np.int64)


def _msb_of_difference(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """MSB of x - t mod 2^64 per element and threshold: [x < t] wherever x - t does not wrap."""
    d = x.view(np.uint64)[:, None] - t.view(np.uint64)[None, :]
    return (d >> np.uint64(63)).astype(np.int64)


def _bits(**options: Any) -> Any:
    """A secure function: compare_thresholds(x, **options) opened as arithmetic bits."""
    async def fn(ctx: Context, x: AShare) -> AShare:
        return await to_arith(ctx, await fastcmp.compare_thresholds(ctx, x, **options))

    return fn


@SLOW
@given(st.lists(int64s, min_size=1, max_size=300), st.lists(int64s, min_size=1, max_size=4))
def test_thresholds_share_leaves_and_match_numpy(xs: list[int], ts: list[int]) -> None:
    x, t = np.array(xs, np.int64), np.array(ts, np.int64)
    less, equal = evaluate(
        lambda ctx, a: _both(ctx, a, t), x).outputs
    assert np.array_equal(_signed(less), _msb_of_difference(x, t))
    wide = np.array([[LO <= a - b <= HI for b in ts] for a in xs])
    assert np.array_equal(_signed(less)[wide], (x[:, None] < t[None, :])[wide])
    assert np.array_equal(_signed(equal), (x[:, None] == t[None, :]).astype(np.int64))


async def _both(ctx: Context, x: AShare, t: np.ndarray) -> list[AShare]:
    return [await _bits(thresholds=t)(ctx, x), await _bits(thresholds=t, kind="equal")(ctx, x)]


@pytest.mark.parametrize("bits", [2, 3, 5, 16, 17, 21, 30, 33, 63, 64])
def test_bounded_comparisons_are_exact_up_to_their_edges(bits: int) -> None:
    """[x < t] with bits - 1 chain bits is exact for x - t in [-2^(bits-1), 2^(bits-1))."""
    rng = np.random.default_rng(bits)
    half = 1 << (bits - 1)
    d = np.concatenate([[-half, -half + 1, -1, 0, 1, half - 2, half - 1],
                        rng.integers(-half, half, 193, dtype=np.int64)])
    t = np.array([0, 12345, -(2**40)], np.int64)
    x = d + t[rng.integers(0, 3, d.size)]  # x - t for the threshold used is d
    got = _signed(evaluate(_bits(thresholds=t, bits=bits), x).outputs[0])
    diff = np.array([[int(a) - int(b) for b in t] for a in x], dtype=object)
    inside = (diff >= -half) & (diff < half)
    assert inside.sum() >= x.size
    assert np.array_equal(got[inside], (x[:, None] < t[None, :])[inside])


@SLOW
@given(st.integers(1, 20), st.integers(22, 64), st.booleans(),
       st.lists(st.integers(-(2**21), 2**21), min_size=1, max_size=200),
       st.lists(st.integers(-(2**40), 2**40), min_size=1, max_size=3))
def test_dropped_bits_blur_only_the_threshold_s_upper_side(
        drop: int, bits: int, rotate: bool, offsets: list[int], ts: list[int]) -> None:
    """With ``drop``, [x < t + c 2^drop] for a carry c in {0, 1}: exact where x - t lies
    outside [0, 2^drop), either bit inside; the chain is ``bits - drop`` long. Offsets near
    the threshold (and the edges of the blurred band) on one part or three."""
    t = np.array(ts, np.int64)
    band = [0, 1, -1, (1 << drop) - 1, 1 << drop, -(1 << drop)]
    d = np.array(offsets + band, np.int64)
    d = np.tile(d, 12288 // d.size + 1)[:12288] if rotate else d
    x = d + t[np.arange(d.size) % t.size]
    got = _signed(evaluate(_bits(thresholds=t, bits=bits, drop=drop), x).outputs[0])
    diff = x[:, None].astype(object) - t[None, :].astype(object)
    inside = (diff >= -(1 << (bits - 2))) & (diff < (1 << (bits - 2)))
    blurred = (diff >= 0) & (diff < (1 << drop))
    exact = inside & ~blurred
    assert np.array_equal(got[exact], (x[:, None] < t[None, :])[exact])
    assert set(np.unique(got[inside & blurred])) <= {0, 1}


def test_dropped_bits_shorten_the_chain() -> None:
    """Dropping 10 of 27 bits: a 17-bit chain, one tree level less (3 rounds to the opened
    bits instead of 4), fewer bytes; a bad ``drop`` is refused before any message."""
    x = np.arange(-4096, 4096, dtype=np.int64) << 10
    t = np.array([0, 5 << 18, -(3 << 18)], np.int64)
    runs = [evaluate(_bits(thresholds=t, bits=27, drop=k), x) for k in (0, 10)]
    rounds = [max(ev.cost(p).rounds for p in PARTIES) for ev in runs]
    sent = [sum(ev.cost(p).bytes_sent for p in PARTIES) for ev in runs]
    assert rounds == [4, 3] and sent[1] < 0.6 * sent[0]
    for bad in ({"bits": 27, "drop": 26}, {"kind": "equal", "drop": 3}):
        with pytest.raises(ValueError, match="low bits"):
            fastcmp.CompareSpec(8, **bad)


def test_bounded_comparisons_are_garbage_outside_their_bound() -> None:
    """Outside |x - t| < 2^(bits-1) a bounded comparison is NOT bit bits-1 of x - t +
    2^(bits-1), which is not [x < t]: callers may use it only where their documented input
    range implies the bound (normalise, segments)."""
    bits, half = 20, 1 << 19
    x = np.array([half, half + 5, -half - 1, 3 * half, -3 * half], np.int64)
    got = _signed(evaluate(_bits(thresholds=[0], bits=bits), x).outputs[0])[:, 0]
    shifted = (x + half) & ((1 << bits) - 1)
    assert np.array_equal(got, 1 - (shifted >> (bits - 1)))
    assert not np.array_equal(got, (x < 0).astype(np.int64))


def test_values_select_their_thresholds_and_shapes_follow() -> None:
    rng = np.random.default_rng(3)
    x = rng.integers(-1000, 1000, (3, 5, 2))  # two values per element
    t, of = np.array([-7, 0, 500, 1]), np.array([0, 1, 1, 0])
    got = _signed(evaluate(_bits(thresholds=t, of=of), x).outputs[0])
    assert got.shape == (3, 5, 4)
    assert np.array_equal(got, (x[..., of] < t).astype(np.int64))
    with pytest.raises(Exception, match="of"):
        evaluate(_bits(thresholds=t, of=[0, 2, 1, 0]), x)


@pytest.mark.parametrize("n", [12288, 12500])
def test_long_arrays_rotate_roles_and_every_party_sends_the_same(n: int) -> None:
    rng = np.random.default_rng(n)
    x = rng.integers(LO, HI, n, dtype=np.int64, endpoint=True)
    ev = evaluate(_bits(thresholds=[0, -5]), x)
    assert np.array_equal(_signed(ev.outputs[0]), (x[:, None] < np.array([0, -5])).astype(int))
    sent = [ev.cost(p).bytes_sent for p in PARTIES]
    assert len(set(sent)) == 1 and max(ev.cost(p).rounds for p in PARTIES) == 4


@pytest.mark.parametrize("n", [200, 12288])
def test_three_out_of_three_input_starts_in_its_resharing_round(n: int) -> None:
    """x given as 3-out-of-3 shares (a product's, masked by a zero-sharing): the same bits,
    in the same 4 rounds counted from the local shares (the evaluators' swap beside S's
    leaves), 16 bytes per value more than from replicated x; one part or three."""
    rng = np.random.default_rng(n)
    x = rng.integers(-(2**40), 2**40, (n, 2), dtype=np.int64)
    t, of = np.array([0, 5, -(2**39), 2**30]), np.array([0, 1, 1, 0])

    async def fn(ctx: Context, a: AShare, additive: bool) -> AShare:
        z = mul_local(a, public_share(ctx.role, np.ones(a.shape, np.uint64)))
        z = z + await zero_share(ctx, z.shape)
        return await to_arith(ctx, await fastcmp.compare_thresholds(
            ctx, z if additive else a, t, of=of, bits=42))

    runs = [evaluate(lambda ctx, a, m=m: fn(ctx, a, m), x) for m in (False, True)]
    for ev in runs:
        assert np.array_equal(_signed(ev.outputs[0]), (x[..., of] < t).astype(np.int64))
        assert max(ev.cost(p).rounds for p in PARTIES) == 4
    extra = sum(runs[1].cost(p).bytes_sent for p in PARTIES) - sum(
        runs[0].cost(p).bytes_sent for p in PARTIES)
    assert extra == 16 * x.size


def test_empty_and_single_elements() -> None:
    async def fn(ctx: Context, a: AShare) -> list[AShare]:
        empty = await fastcmp.compare_thresholds(ctx, a[:0], [1, 2])
        assert empty.shape == (0, 2)
        assert (await fastcmp.open_masked(ctx, empty)).shape == (0, 2)
        return [await _bits(thresholds=[1, 2])(ctx, a[:1])]

    assert _signed(evaluate(fn, np.array([1, 5])).outputs[0]).tolist() == [[0, 1]]


def test_plans_and_their_costs() -> None:
    full = comparison_plan("less")
    assert full.widths == (3,) + (4,) * 15 and full.monomials == 233
    assert [len(level.outputs) for level in full.tree] == [7, 1]  # G x 4 + P x 3, then G
    equal = comparison_plan("equal")
    assert equal.widths == (4,) * 16 and [lv.inputs for lv in equal.tree] == [16, 4]
    assert len(comparison_plan("less", 17).tree) == 1  # 16-bit chain: 4 leaves
    assert len(comparison_plan("less", 33, levels=1).tree[0].outputs) == 1
    with pytest.raises(ValueError, match="bits"):
        comparison_plan("less", 65)
    with pytest.raises(ValueError, match="fan-in 16"):
        comparison_plan("less", 64, levels=1)
    with pytest.raises(ValueError, match="levels"):
        comparison_plan("less", 64, levels=0)


def _plain_tree(plan: Any, a: list[int], b: list[int]) -> list[list[int]]:
    """A "less" plan evaluated on plain bits: its leaves' (G, P) from a and b, then every
    level's monomials; the root's outputs per element."""
    out = []
    for x, y in zip(a, b, strict=True):
        gs, ps, bit = [], [], 0
        for w in plan.widths:
            g, p = 0, 1
            for i in range(bit, bit + w):  # carry-lookahead of the block, from its lowest bit
                ai, bi = (x >> i) & 1, (y >> i) & 1
                g, p = (ai & bi) | ((ai ^ bi) & g), p & (ai ^ bi)
            gs.append(g)
            ps.append(p)
            bit += w
        wires = gs + ps[1:]
        for level in plan.tree:
            wires = [sum(all(wires[i] for i in m) for m in o) & 1 for o in level.outputs]
        out.append(wires)
    return out


@pytest.mark.parametrize("boundary", range(1, 63))
def test_boundary_plans_output_both_carries(boundary: int) -> None:
    """:func:`.carrytree.boundary_plan` on plain bits: its root gives the carries of
    a + b (63-bit chain) into bit 63 and into the boundary, at edges and at random."""
    plan = boundary_plan(boundary)
    assert sum(plan.widths) == 63 and len(plan.tree) == 2
    assert boundary in np.cumsum(plan.widths)
    top, f = 2**63 - 1, 2**boundary
    pairs = [(0, 0), (top, 1), (top, 0), (f - 1, 1), (f - 1, 0), (top - f + 1, f - 1),
             (top - f + 1, f), (f - 1, top - f + 1), (top, top)]
    rng = np.random.default_rng(boundary).integers(0, 2**63, (24, 2), dtype=np.int64)
    a, b = zip(*pairs, *((int(x), int(y)) for x, y in rng), strict=True)
    low = f - 1
    want = [[(x + y) >> 63, ((x & low) + (y & low)) >> boundary] for x, y in zip(a, b, strict=True)]
    assert _plain_tree(plan, a, b) == want



@pytest.mark.parametrize("boundary", [1, 18, 20, 38, 40, 62])
def test_the_boundary_plan_table_is_the_searched_optimum(boundary: int) -> None:
    """:data:`.carrytree.BOUNDARY_PLANS` (made offline so that no pass waits on the search)
    sends as few bits as the search's best, at the widths TP1 uses and the range ends (every
    boundary in the slow tier)."""
    best = carrytree._boundary(boundary, *carrytree.search_boundary_plan(boundary))
    assert carrytree._plan_bits(boundary_plan(boundary)) == carrytree._plan_bits(best)


@pytest.mark.slow
@pytest.mark.parametrize("boundary", range(1, 63))
def test_every_boundary_plan_in_the_table_is_the_searched_optimum(boundary: int) -> None:
    best = carrytree._boundary(boundary, *carrytree.search_boundary_plan(boundary))
    assert carrytree._plan_bits(boundary_plan(boundary)) == carrytree._plan_bits(best)

@SLOW
@given(st.integers(2, 17).flatmap(lambda m: st.lists(
    st.lists(st.one_of(st.sampled_from([-(2**62), 0, 1, 2**62 - 1]),
                       st.integers(-(2**62), 2**62 - 1), st.integers(-3, 3)),
             min_size=m, max_size=m), min_size=1, max_size=4)))
def test_first_maximum_marks_exactly_the_first_maximum(rows: list[list[int]]) -> None:
    x = np.array(rows, np.int64)

    async def fn(ctx: Context, a: AShare) -> AShare:
        return await to_arith(ctx, await fastcmp.first_maximum(ctx, a))

    got = _signed(evaluate(fn, x).outputs[0])
    want = np.zeros_like(got)
    want[np.arange(x.shape[0]), x.argmax(axis=-1)] = 1
    assert np.array_equal(got, want)


# ------------------------------------------------------------------------ offline material


def _run(fn: Any, x: np.ndarray, label: str) -> Any:
    """``fn`` on x with every role's entropy fixed by ``label`` (reproducible randomness)."""
    program = evaluation_program(fn, x)
    entropy = {role: hashlib.sha256(f"{label}/{role}".encode()).digest()
               for role in (*PARTIES, CLIENT)}
    return run_local({role: program for role in (*PARTIES, CLIENT)}, entropy=entropy,
                     session=b"fastcmp-material").results[CLIENT]


def _arrays(value: Any) -> list[np.ndarray]:
    """Every array in a material record (dataclasses, tuples, shares), in order."""
    if isinstance(value, np.ndarray):
        return [value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [a for f in dataclasses.fields(value) for a in _arrays(getattr(value, f.name))]
    if isinstance(value, tuple):
        return [a for item in value for a in _arrays(item)]
    return []


@pytest.mark.parametrize("prepare, spec", [
    (fastcmp.prepare_compare, fastcmp.CompareSpec(300, 3)),
    (fastcmp.prepare_compare, fastcmp.CompareSpec(13000, 1, "equal")),
    (fastcmp.prepare_maximum, fastcmp.MaximumSpec(5, 9)),
])
def test_material_takes_public_parameters_only(prepare: Any, spec: Any) -> None:
    """The preparation receives no share: with the same entropy, any input gives the same
    material at every party, and the material serves the online step it was made for."""
    materials: dict[str, dict[int, Any]] = {}

    def fn(name: str) -> Any:
        async def run(ctx: Context, a: AShare) -> AShare:
            pre = await prepare(ctx, spec)
            materials.setdefault(name, {})[ctx.role] = pre
            return a
        return run

    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        _run(fn(name), rng.integers(LO, HI, 40, dtype=np.int64), "same entropy")
    for party in PARTIES:
        first, second = (_arrays(materials[name][party]) for name in ("a", "b"))
        assert first and len(first) == len(second)
        assert all(np.array_equal(u, v) for u, v in zip(first, second, strict=True))


def test_material_prepared_ahead_gives_the_same_results() -> None:
    rng = np.random.default_rng(5)
    x = rng.integers(-(2**40), 2**40, 500)
    t = np.array([3, -(2**39)])
    spec = fastcmp.CompareSpec(x.size, t.size, bits=42)

    async def ahead(ctx: Context, a: AShare) -> AShare:
        pre = await fastcmp.prepare_compare(ctx, spec)
        return await to_arith(ctx, await fastcmp.compare_thresholds(ctx, a, t, bits=42, pre=pre))

    ev = evaluate(ahead, x)
    assert np.array_equal(_signed(ev.outputs[0]), (x[:, None] < t).astype(np.int64))
    with pytest.raises(Exception, match="material prepared for"):
        evaluate(lambda ctx, a: _mismatched(ctx, a, t), x)


@SLOW
@given(st.lists(st.integers(0, 70), min_size=1, max_size=4), st.integers(1, 4),
       st.sampled_from([64, 42, 9]), st.integers(0, 2**32))
def test_slices_of_one_batch_of_material_serve_smaller_batches(
    sizes: list[int], thresholds: int, bits: int, seed: int
) -> None:
    """One batch of material for all ``sizes`` (fewer than 64 elements or more: a slice's
    packed rows cross words), sliced (:meth:`CompareMaterial.split`): each slice gives its
    own comparisons the same results as material made for them alone, bounded chains too."""
    rng = np.random.default_rng(seed)
    bound = 2 ** (bits - 2)
    x = rng.integers(-bound, bound, sum(sizes))
    t = rng.integers(-bound, bound, thresholds)

    async def sliced(ctx: Context, a: AShare) -> AShare:
        batch = await fastcmp.prepare_compare(ctx, fastcmp.CompareSpec(a.size, t.size,
                                                                       bits=bits))
        pieces = batch.split([(start - size, start, -1)
                              for start, size in zip(np.cumsum(sizes), sizes, strict=True)])
        _assert_pieces_tile(batch, pieces)
        out, start = [], 0
        for size, pre in zip(sizes, pieces, strict=True):
            out.append(await to_arith(ctx, await fastcmp.compare_thresholds(
                ctx, a[start : start + size], t, bits=bits, pre=pre)))
            start += size
        return concatenate(out)

    got = evaluate(sliced, x).outputs[0]
    assert np.array_equal(_signed(got), (x[:, None] < t).astype(np.int64))


def _assert_pieces_tile(batch: fastcmp.CompareMaterial,
                        pieces: list[fastcmp.CompareMaterial]) -> None:
    """Every packed array of the pieces, its bit matrices' columns side by side, is the
    batch's: each element's masks and bits serve exactly one piece (a mask used twice would
    still compare correctly, and leak)."""
    def arrays(m: fastcmp.CompareMaterial) -> list[np.ndarray]:
        return [a for tree in m.trees for a in (*tree.alphas, *tree.products)]

    _assert_tiles(arrays(batch), [arrays(p) for p in pieces], batch.spec.thresholds,
                  [p.spec.size for p in pieces])
    _assert_bits_tile(batch.bits, [p.bits for p in pieces])


def _assert_bits_tile(batch: fastcmp.RandomBits, pieces: list[fastcmp.RandomBits]) -> None:
    rows = batch.arith.shape[0]
    _assert_tiles([h for p in batch.packed for h in (p.first, p.second)],
                  [[h for p in piece.packed for h in (p.first, p.second)] for piece in pieces],
                  rows, [piece.arith.shape[1] for piece in pieces])
    for h in ("first", "second"):
        assert np.array_equal(np.concatenate([getattr(p.arith, h) for p in pieces], -1),
                              getattr(batch.arith, h))


def _assert_tiles(whole: list[np.ndarray], pieces: list[list[np.ndarray]], rows: int,
                  sizes: list[int]) -> None:
    """Each array of ``whole`` (packed bit matrices of ``rows`` rows, sum(sizes) columns) is
    the pieces' arrays' matrices side by side."""
    def columns(a: np.ndarray, size: int) -> np.ndarray:
        bits = np.unpackbits(np.ascontiguousarray(a, "<u8").view(np.uint8), axis=-1,
                             bitorder="little")
        return bits[..., : rows * size].reshape(*a.shape[:-1], rows, size)

    kept = [(arrays, size) for arrays, size in zip(pieces, sizes, strict=True) if size]
    for k, array in enumerate(whole):
        joined = np.concatenate([columns(arrays[k], size) for arrays, size in kept], axis=-1)
        assert np.array_equal(joined, columns(array, sum(sizes))), k


@SLOW
@given(st.lists(st.integers(0, 6), min_size=1, max_size=4), st.integers(2, 9),
       st.integers(0, 2**32))
def test_maximum_batches_are_sliced_by_rows(sizes: list[int], entries: int, seed: int
                                            ) -> None:
    """Rows of several :func:`first_maximum` calls given slices of one batch
    (:func:`prepare_maximum_batches`, a larger spec between them alone): each marks its
    rows' first maxima, and the slices' packed masks tile the batch's."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-5, 5, (sum(sizes), entries))  # ties: the first maximum must win
    specs = [fastcmp.MaximumSpec(n, entries) for n in sizes]

    async def fn(ctx: Context, a: AShare) -> AShare:
        made = await fastcmp.prepare_maximum_batches(
            ctx, [*specs[:1], fastcmp.MaximumSpec(3000, 5), *specs[1:]])
        del made[1]
        batch = await fastcmp.prepare_maximum(ctx, fastcmp.MaximumSpec(sum(sizes), entries))
        rows = batch.split([(stop - n, stop, -1) for stop, n in zip(np.cumsum(sizes), sizes,
                                                                    strict=True)])
        for name, per_row in (("pairs", entries * (entries - 1) // 2), ("wins", entries)):
            def arrays(m: fastcmp.MaximumMaterial, name: str = name) -> list[np.ndarray]:
                return [a for tree in getattr(m, name) for a in (*tree.alphas, *tree.products)]
            _assert_tiles(arrays(batch), [arrays(p) for p in rows], 1,
                          [n * per_row for n in sizes])
        _assert_bits_tile(batch.bits, [p.bits for p in rows])
        out, start = [], 0
        for n, pre in zip(sizes, made, strict=True):
            bits = await fastcmp.first_maximum(ctx, a[start : start + n], pre=pre)
            out.append(await to_arith(ctx, bits))
            start += n
        return concatenate(out)

    got = _signed(evaluate(fn, x).outputs[0]).reshape(x.shape)
    first = np.zeros_like(x)
    first[np.arange(len(x)), np.argmax(x, axis=1)] = 1
    assert np.array_equal(got, first)


def test_a_batch_plan_is_public_and_made_once_per_list_of_specs() -> None:
    """:func:`fastcmp._batch_plan`: a spec joins the last preparation of specs equal to it
    but for their size, laid side by side, while that stays below
    :data:`.trunc.ROTATE_MIN_ELEMENTS` elements (a spec as large alone is prepared whole,
    and the next small one starts afresh); the plan depends on the specs only, so the three
    parties of one process and every pass of one shape get the same object, made once."""
    small, large = fastcmp.CompareSpec(3, 2), fastcmp.CompareSpec(ROTATE_MIN_ELEMENTS, 2)
    specs = (small, dataclasses.replace(small, size=5), large, small)
    plan = fastcmp._batch_plan(specs, fastcmp._COMPARE_BATCHES)
    (indices, spec, pieces), *alone = plan
    assert indices == (0, 1) and alone == [((2,), large, ()), ((3,), small, ())]
    assert [(start, stop) for start, stop, _ in pieces] == [(0, 3), (3, 8)]
    assert spec == dataclasses.replace(small, size=spec.size) and spec.size >= 8
    assert fastcmp._batch_plan(tuple(specs), fastcmp._COMPARE_BATCHES) is plan


def test_batched_slices_pad_their_rows_with_masks_no_slice_uses() -> None:
    """:func:`prepare_compare_batches`' slices of 1 element x 5 thresholds: the 59 padding
    bits of every packed row are masks too (a zero padding would leave the padding of the
    messages they mask readable: ``tests/test_privacy.py``), each slice's from its own spare
    elements, which no slice uses as data."""
    spec = fastcmp.CompareSpec(1, 5)

    async def fn(ctx: Context, a: AShare) -> AShare:
        pieces = await fastcmp.prepare_compare_batches(ctx, [spec] * 3)
        rows = [[a for tree in p.trees for a in (*tree.alphas, *tree.products)]
                + [h.reshape(1, -1) for b in p.bits.packed for h in (b.first, b.second)]
                for p in pieces]
        for arrays in rows:
            for array in arrays:
                assert (array >> np.uint64(5)).any()  # 2^-59 per row to fail by chance
        assert len({array.tobytes() for arrays in rows for array in arrays}) == sum(
            len(arrays) for arrays in rows)
        return a

    evaluate(fn, np.zeros(1, np.int64))


def test_only_material_in_one_part_slices_and_only_whole_rows() -> None:
    async def fn(ctx: Context, a: AShare) -> AShare:
        rotated = await fastcmp.prepare_compare(ctx, fastcmp.CompareSpec(13000))
        with pytest.raises(ValueError, match="material in 3 parts cannot be sliced"):
            rotated.split([(0, 10, -1)])
        big = await fastcmp.prepare_maximum(ctx, fastcmp.MaximumSpec(3000, 5))
        with pytest.raises(ValueError, match="material in 3 parts cannot be sliced"):
            big.split([(0, 10, -1)])
        pairs = await fastcmp.prepare_maximum(ctx, fastcmp.MaximumSpec(3, 4))
        with pytest.raises(ValueError, match=r"rows \[2, 4\) of a batch of 3"):
            pairs.split([(0, 1, -1), (2, 4, -1)])
        with pytest.raises(ValueError, match=r"elements \[1, 6\) of a batch of 18 in rows of 6"):
            fastcmp.CompareMaterial(pairs.spec.pairs, pairs.pairs, pairs.bits).split(
                [(1, 6, -1)])
        return a

    evaluate(fn, np.zeros(1, np.int64))


async def _mismatched(ctx: Context, a: AShare, t: np.ndarray) -> AShare:
    pre = await fastcmp.prepare_compare(ctx, fastcmp.CompareSpec(a.size, t.size))
    return await to_arith(ctx, await fastcmp.compare_thresholds(ctx, a, t, bits=42, pre=pre))


def test_material_prepared_before_any_input_exists() -> None:
    """The parties prepare with nothing but their keys; the input is shared afterwards."""
    x = np.arange(-64, 64)

    async def program(ctx: Context) -> Any:
        if ctx.role == CLIENT:
            return None
        await setup_keys(ctx)
        pre = await fastcmp.prepare_maximum(ctx, fastcmp.MaximumSpec(8, 16))
        share = public_share(ctx.role, x.reshape(8, 16).view(RING_DTYPE))
        bits = await fastcmp.first_maximum(ctx, share, pre=pre)
        return await fastcmp.open_masked(ctx, bits), bits.r_arith

    results = run_local({role: program for role in (*PARTIES, CLIENT)}).results
    c, r = results[0][0], sum(results[p][1].first for p in PARTIES)
    wins = c ^ (r & np.uint64(1))
    assert np.array_equal(wins, np.eye(16, dtype=np.uint64)[np.full(8, 15)])


@given(st.floats(0.0, 2.0**40), st.lists(st.integers(-(2**30), 2**30), max_size=5))
def test_bounded_bits_are_the_shortest_chain_covering_the_bound(
        bound: float, ts: list[int]) -> None:
    """|x| <= bound (18 fractional bits) and every t: |x - t| <= reach < 2^(bits-1), and one
    bit fewer would not do (up to the full chain)."""
    t = np.array(ts, np.int64).view(RING_DTYPE)
    bits = fastcmp.bounded_bits(bound, t, 18)
    reach = int(np.ceil(bound * 2**18)) + max((abs(v) for v in ts), default=0)
    assert bits == 64 or reach < 2 ** (bits - 1)
    assert reach >= 2 ** (bits - 2) or bits == 2
    assert fastcmp.bounded_bits(None, t, 18) == 64


def test_bounded_bits_of_silu_at_the_smollm2_bounds() -> None:
    t = np.array([-11, 11], np.int64).view(RING_DTYPE) << np.uint64(18)
    assert [fastcmp.bounded_bits(b, t, 18) for b in (32, 64, 128, 256)] == [25, 26, 27, 28]
