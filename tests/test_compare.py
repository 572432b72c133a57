"""Comparisons and bit-to-arithmetic against plaintext numpy: boundaries, range ends, costs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from puma_async.context import Context
from puma_async.evaluate import Evaluation
from puma_async.protocols import compare
from puma_async.protocols.boolean import bit_to_arith, open_bits
from puma_async.protocols.randomness import random_bshare
from puma_async.protocols.ring import RING_DTYPE
from puma_async.protocols.shares import AShare

LO, HI = -(2**63), 2**63 - 1
EDGES = [0, 1, -1, 2, -2, 2**62, -(2**62), 2**62 - 1, 1 - 2**62, 2**62 + 1, -(2**62) - 1,
         LO, HI, LO + 1, HI - 1, 2**31, -(2**31), 2**18]
SLOW = settings(max_examples=25, deadline=None)

int64s = st.one_of(
    st.sampled_from(EDGES), st.integers(-(2**20), 2**20), st.integers(LO, HI),
    st.integers(-(2**62), 2**62),
)


def _partner(x: int) -> st.SearchStrategy[int]:
    """y with |x - y| < 2^63: where all comparisons must be exact (ends: see below)."""
    near = [v for v in (x, x + 1, x - 1, -x, 0, 2**62, -(2**62), LO, HI, x - HI, x + HI)
            if LO <= v <= HI and abs(x - v) <= HI]
    return st.one_of(
        st.sampled_from(near),
        st.integers(max(LO, x - HI), min(HI, x + HI)),
        st.integers(max(LO, x - 2**20), min(HI, x + 2**20)),
    )


pairs = st.lists(int64s.flatmap(lambda x: st.tuples(st.just(x), _partner(x))),
                 min_size=1, max_size=300)


def _arrays(ps: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([x for x, _ in ps], np.int64), np.array([y for _, y in ps], np.int64)


def _bits(out: np.ndarray) -> np.ndarray:
    return out.view(np.int64)


@SLOW
@given(pairs)
def test_secret_secret_comparisons_exact(evaluate, ps: list[tuple[int, int]]) -> None:
    x, y = _arrays(ps)

    async def fn(ctx: Context, a: AShare, b: AShare) -> list[AShare]:
        return [await f(ctx, a, b) for f in (compare.less_than, compare.greater_than,
                                             compare.equal)]

    lt, gt, eq = (_bits(o) for o in evaluate(fn, x, y).outputs)
    assert np.array_equal(lt, (x < y).astype(np.int64))
    assert np.array_equal(gt, (x > y).astype(np.int64))
    assert np.array_equal(eq, (x == y).astype(np.int64))


@SLOW
@given(pairs)
def test_secret_public_comparisons_exact(evaluate, ps: list[tuple[int, int]]) -> None:
    x, c = _arrays(ps)

    async def fn(ctx: Context, a: AShare) -> list[AShare]:
        return [
            await compare.less_than_public(ctx, a, c),
            await compare.greater_than_public(ctx, a, c),
            await compare.equal_public(ctx, a, c),
            await compare.is_negative(ctx, a),
        ]

    lt, gt, eq, neg = (_bits(o) for o in evaluate(fn, x).outputs)
    assert np.array_equal(lt, (x < c).astype(np.int64))
    assert np.array_equal(gt, (x > c).astype(np.int64))
    assert np.array_equal(eq, (x == c).astype(np.int64))
    assert np.array_equal(neg, (x < 0).astype(np.int64))


def test_shapes_scalars_and_empty_arrays(evaluate) -> None:
    x = np.arange(-30, 30, dtype=np.int64).reshape(3, 4, 5)

    async def fn(ctx: Context, a: AShare) -> list[AShare]:
        out = [await compare.less_than_public(ctx, a, 7), await compare.equal_public(ctx, a, -3),
               await compare.is_negative(ctx, a[0, 0, 0]), await compare.is_negative(ctx, a[:0])]
        assert [o.shape for o in out] == [a.shape, a.shape, (), (0, 4, 5)]
        return [*out[:2], out[2].reshape(1)]  # evaluate's opening does not take 0-d arrays

    lt, eq, neg = evaluate(fn, x).outputs
    assert np.array_equal(_bits(lt), (x < 7).astype(np.int64))
    assert np.array_equal(_bits(eq), (x == -3).astype(np.int64))
    assert neg.tolist() == [1]


@SLOW
@given(st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=200),
       st.sampled_from([64, 63, 19, 2, 1]))
def test_bit_to_arith_uses_bit_zero_only(evaluate, values: list[int], ring_bits: int) -> None:
    """Shares modulo 2^ring_bits: 2^(64 - ring_bits) times the bit is exact in the ring,
    each message ring_bits bits (packed)."""
    words = np.array(values, RING_DTYPE)

    async def fn(ctx: Context, dummy: AShare) -> AShare:
        pad = random_bshare(ctx, words.shape)  # fresh shares of `words`, then convert bit 0
        shares = pad.xor_public(ctx.role, words ^ await open_bits(ctx, pad))
        with ctx.scope("b2a"):
            out = await bit_to_arith(ctx, shares, ring_bits)
        return out.scale(np.uint64(1 << (64 - ring_bits)))

    ev = evaluate(fn, np.zeros(1, RING_DTYPE))
    scaled = (words & np.uint64(1)) << np.uint64(64 - ring_bits)
    assert np.array_equal(ev.outputs[0], scaled)
    costs = [ev.stats[p].totals(phase="online", scope="op.b2a") for p in range(3)]
    assert [c.bytes_sent for c in costs] == [-(-ring_bits * words.size // 8)] * 3
    assert max(c.rounds for c in costs) == 2


def _costs_of(ev: Evaluation) -> tuple[list[int], int]:
    """Bytes sent by each party and rounds (critical path: the most any party saw)."""
    costs = [ev.cost(p) for p in range(3)]
    return [c.bytes_sent for c in costs], max(c.rounds for c in costs)


def _costs(evaluate, fn: Callable[..., Awaitable[AShare]], n: int) -> tuple[list[int], int]:
    return _costs_of(evaluate(fn, np.arange(n), np.arange(n)[::-1]))


@SLOW
@given(pairs)
def test_select_and_relu(evaluate, ps: list[tuple[int, int]]) -> None:
    x, y = _arrays(ps)

    async def fn(ctx: Context, a: AShare, b: AShare) -> list[AShare]:
        below = await compare.less_than(ctx, a, b)
        return [await compare.select(ctx, below, a, b), await compare.relu(ctx, a)]

    smaller, relu = (_bits(o) for o in evaluate(fn, x, y).outputs)
    assert np.array_equal(smaller, np.minimum(x, y))
    assert np.array_equal(relu, np.maximum(x, 0))
    ev = evaluate(compare.select, (x < y).astype(np.int64), x, y)  # alone, for its cost
    assert np.array_equal(_bits(ev.outputs[0]), np.where(x < y, x, y))
    assert _costs_of(ev) == ([8 * x.size] * 3, 1)


def test_comparison_costs(evaluate) -> None:
    # 12,500 elements: three parts of 4,166, 4,167, 4,167 elements (66 words per packed row),
    # each party the sender S in one (its monomial rows) and an evaluator in two (its tree
    # wires and the opening's two rows); ring elements on top (multiplications)
    n, words = 12500, 66

    def expected(monomials: int, evaluator_rows: int, elements: int) -> list[int]:
        return [8 * words * (monomials + 2 * evaluator_rows) + 8 * elements * n] * 3

    # less: 233 monomial rows; tree wires 31 + 7 per evaluator, opening 2
    assert _costs(evaluate, compare.less_than, n) == (expected(233, 40, 0), 4)
    # equal: 240 monomial rows; AND-tree wires 16 + 4, opening 2
    assert _costs(evaluate, compare.equal, n) == (expected(240, 22, 0), 4)

    async def relu(ctx: Context, a: AShare, b: AShare) -> AShare:
        return await compare.relu(ctx, a)

    assert _costs(evaluate, relu, n) == (expected(233, 40, 1), 4)


def test_million_comparisons_never_wrong(evaluate) -> None:
    rng = np.random.default_rng(20240607)
    n = 10**6
    x = rng.integers(LO, HI, n, endpoint=True)
    d = rng.integers(-(2**62), 2**62, n)
    y = x - d
    wrapped = (d > 0) & (y > x) | (d < 0) & (y < x)
    y[wrapped] = x[wrapped] + d[wrapped]  # so that |x - y| <= 2^62 everywhere
    y[::7] = x[::7]
    y[1::7] = x[1::7] + 1
    y[2::7] = x[2::7] - 1
    y[3::7] = rng.integers(-(2**62), 2**62, y[3::7].size)
    x[3::7] = rng.integers(-(2**62), 2**62, x[3::7].size)
    edges = np.array(EDGES, np.int64)
    x[4::7] = rng.choice(edges, x[4::7].size)
    y[4::7] = rng.choice(edges, y[4::7].size)
    diff = x[4::7].astype(object) - y[4::7].astype(object)
    y[4::7][np.array([abs(d) > HI for d in diff])] = 0  # keep |x - y| < 2^63
    ev = evaluate(compare.less_than, x, y)
    assert np.array_equal(_bits(ev.outputs[0]), (x < y).astype(np.int64))


def test_range_ends_are_exact(evaluate) -> None:
    # less_than is exact for x - y in [-2^63, 2^63), greater_than for x - y in (-2^63, 2^63]
    x = np.array([LO, HI, LO, 0, -1, HI, LO + 1, 0, HI], np.int64)
    y = np.array([0, 0, -1, LO + 1, HI, 1, 0, HI, -1], np.int64)
    diff = [int(a) - int(b) for a, b in zip(x, y, strict=True)]

    async def fn(ctx: Context, a: AShare, b: AShare) -> list[AShare]:
        return [await compare.less_than(ctx, a, b), await compare.greater_than(ctx, a, b)]

    lt, gt = (_bits(o) for o in evaluate(fn, x, y).outputs)
    lt_ok = np.array([LO <= d <= HI for d in diff])
    gt_ok = np.array([LO < d <= HI + 1 for d in diff])
    assert lt_ok.sum() == 8 and gt_ok.sum() == 7  # ends: -2^63 (lt only), 2^63 (gt only)
    assert np.array_equal(lt[lt_ok], (x < y)[lt_ok].astype(np.int64))
    assert np.array_equal(gt[gt_ok], (x > y)[gt_ok].astype(np.int64))
