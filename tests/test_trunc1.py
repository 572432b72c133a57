"""TP1 (one-round exact truncation) against plaintext numpy: floor or floor + 1 over the whole
range |x| < 2^62 for both input forms, 1 online round, the offline tuple's rounds and bytes,
tuples prepared ahead, and a schedule without overlapping."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from puma_async.context import Context
from puma_async.evaluate import Evaluation, evaluation_program
from puma_async.protocols.arith import dot_fxp, finish_product, mul_fxp, mul_local
from puma_async.protocols.ring import RING_DTYPE
from puma_async.protocols.shares import AShare, public_share
from puma_async.protocols.trunc import ROTATE_MIN_ELEMENTS
from puma_async.protocols.trunc1 import (
    Trunc1Spec,
    prepare_trunc1,
    prepare_trunc1_batches,
    truncate1,
)
from puma_async.roles import CLIENT, PARTIES
from puma_async.runner import run_local

LIMIT = 2**62
EDGES = [0, -1, 1, LIMIT - 1, -LIMIT, LIMIT - 2, 1 - LIMIT, 2**18, -(2**18), 2**18 - 1,
         -(2**18) - 1, 2**38, -(2**38) + 1, 2**60 - 1, -(2**60)]
values = st.one_of(st.sampled_from(EDGES), st.integers(-LIMIT, LIMIT - 1),
                   st.integers(-(2**20), 2**20))
BITS = st.sampled_from([1, 18, 38, 60, 62])
OFFLINE_BYTES = {1: 86.25, 18: 98.125, 38: 112.5, 60: 131.375, 62: 134.25}
"""Offline bytes per element (all parties, multiples of 64 elements) by f: the carry tree's
split at f (:func:`.carrytree.boundary_plan`) and the (f + 1)-bit ring of c_63 and m."""


def run(fn: Any, *inputs: np.ndarray, sequential: bool = False) -> Evaluation:
    """``evaluate`` with the runtime's options (``sequential``: no ``gather`` overlaps)."""
    program = evaluation_program(fn, *inputs)
    result = run_local({role: program for role in (*PARTIES, CLIENT)}, sequential=sequential)
    return Evaluation(result.results[CLIENT], dict(result.stats), result.seconds)


def assert_floor_or_next(got: np.ndarray, x: np.ndarray, bits: int) -> np.ndarray:
    """got - floor(x / 2^bits) is 0 or 1 everywhere; returns the differences."""
    diff = got.view(np.int64) - (x.view(np.int64) >> bits)
    assert set(np.unique(diff).tolist()) <= {0, 1}, np.unique(diff)
    return diff


async def _additive(ctx: Context, x: AShare, bits: int) -> AShare:
    """x as the 3-out-of-3 product x * 1, truncated by TP1 (:func:`.arith.finish_product`)."""
    one = public_share(ctx.role, np.ones(x.shape, RING_DTYPE))
    return await finish_product(ctx, mul_local(x, one), bits, rounds=1)


@settings(max_examples=80, deadline=None)
@given(st.lists(values, max_size=70), BITS, st.sampled_from([(-1,), (1, -1), (-1, 1)]),
       st.booleans())
def test_floor_or_next_over_the_whole_range(
    xs: list[int], bits: int, shape: tuple[int, ...], additive: bool
) -> None:
    x = np.array(xs, np.int64).reshape(shape).view(RING_DTYPE)

    async def fn(ctx: Context, a: AShare) -> AShare:
        return await (_additive(ctx, a, bits) if additive else truncate1(ctx, a, bits))

    got = run(fn, x).outputs[0]
    assert got.shape == x.shape
    assert_floor_or_next(got, x, bits)


@settings(max_examples=10, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.sampled_from([10, 18, 38])), min_size=1,
                max_size=6), st.integers(0, 2**32 - 1))
def test_batched_tuples_serve_each_request(requests: list[tuple[int, int]], seed: int) -> None:
    """:func:`prepare_trunc1_batches`: one preparation per width, sliced back in order (with a
    None among the specs); every slice truncates its own request's values exactly, and the
    offline cost is one preparation's depth (4 rounds) for all."""
    rng = np.random.default_rng(seed)
    xs = [rng.integers(-LIMIT, LIMIT, size, dtype=np.int64) for size, _ in requests]
    flat = np.concatenate([*xs, np.zeros(1, np.int64)])

    async def fn(ctx: Context, x: AShare) -> list[AShare]:
        specs = [Trunc1Spec(size, bits) for size, bits in requests]
        made = await prepare_trunc1_batches(ctx, [*specs, None])
        assert made[-1] is None
        outs, start = [], 0
        for (size, bits), pre in zip(requests, made, strict=False):
            assert pre is not None and pre.spec == Trunc1Spec(size, bits)
            outs.append(await truncate1(ctx, x[start : start + size], bits, pre=pre))
            start += size
        return outs

    ev = run(fn, flat.view(RING_DTYPE))
    for got, x, (_, bits) in zip(ev.outputs, xs, requests, strict=True):
        assert_floor_or_next(got, x.view(RING_DTYPE), bits)
    assert max(ev.stats[p].totals(phase="offline", scope="op").rounds for p in PARTIES) == (
        4 if any(size for size, _ in requests) else 0)


@pytest.mark.parametrize("bits", [1, 18, 38, 60, 62])
@pytest.mark.parametrize("additive", [False, True])
def test_one_online_round_and_the_tuple_cost(bits: int, additive: bool) -> None:
    n = 256
    x = np.random.default_rng(bits).integers(-LIMIT, LIMIT, n, dtype=np.int64).view(RING_DTYPE)

    async def fn(ctx: Context, a: AShare) -> AShare:
        return await (_additive(ctx, a, bits) if additive else truncate1(ctx, a, bits))

    ev = run(fn, x)
    assert_floor_or_next(ev.outputs[0], x, bits)
    online = [ev.stats[p].totals(phase="online", scope="op") for p in PARTIES]
    offline = [ev.stats[p].totals(phase="offline", scope="op") for p in PARTIES]
    assert max(t.rounds for t in online) == 1
    # replicated: P_i sends the component P_{i-1} lacks; additive: w_i to both others
    assert [t.bytes_sent for t in online] == [(16 if additive else 8) * n] * 3
    assert max(t.rounds for t in offline) == 4
    assert sum(t.bytes_sent for t in offline) / n == OFFLINE_BYTES[bits]


def test_long_arrays_rotate_the_extraction_and_every_party_sends_the_same() -> None:
    n = ROTATE_MIN_ELEMENTS + 7
    x = np.random.default_rng(1).integers(-LIMIT, LIMIT, n, dtype=np.int64).view(RING_DTYPE)
    ev = run(lambda ctx, a: truncate1(ctx, a, 18), x)
    assert_floor_or_next(ev.outputs[0], x, 18)
    for phase in ("online", "offline"):
        sent = [ev.stats[p].totals(phase=phase, scope="op").bytes_sent for p in PARTIES]
        assert max(sent) - min(sent) <= 0.01 * max(sent), (phase, sent)


def test_rounding_is_stochastic_and_unbiased() -> None:
    """e = 1 exactly when (y mod 2^f) + (l mod 2^f) >= 2^f, l uniform: P(e = 1) = x mod 2^f
    over 2^f, so the mean of x / 2^f is kept."""
    n, bits = 4096, 18
    x = np.full(n, (5 << bits) + (1 << bits) // 4, np.int64).view(RING_DTYPE)
    diff = assert_floor_or_next(run(lambda ctx, a: truncate1(ctx, a, bits), x).outputs[0],
                                x, bits)
    assert 0.2 < diff.mean() < 0.3
    exact = np.full(n, -(7 << bits), np.int64).view(RING_DTYPE)
    got = run(lambda ctx, a: truncate1(ctx, a, bits), exact).outputs[0]
    assert np.all(got.view(np.int64) == -7)  # a multiple of 2^f is never rounded up


def test_products_in_one_round_match_numpy() -> None:
    rng = np.random.default_rng(2)
    a, b = (rng.integers(-(2**29), 2**29, (40, 9), dtype=np.int64) for _ in range(2))

    async def fn(ctx: Context, x: AShare, y: AShare) -> list[AShare]:
        return await ctx.gather(lambda c: mul_fxp(c, x, y, rounds=1),
                                lambda c: dot_fxp(c, x, y, 18, rounds=1))

    ev = run(fn, a.view(RING_DTYPE), b.view(RING_DTYPE))
    exact = a.astype(object) * b.astype(object)
    for got, want in ((ev.outputs[0], exact), (ev.outputs[1], exact.sum(axis=-1))):
        diff = got.view(np.int64).astype(object) - np.vectorize(lambda v: v >> 18)(want)
        assert set(np.unique(diff.astype(np.int64)).tolist()) <= {0, 1}
    assert max(ev.cost(p).rounds for p in PARTIES) == 1
    with pytest.raises(Exception, match="rounds"):
        run(lambda ctx, x, y: mul_fxp(ctx, x, y, rounds=3), a.view(RING_DTYPE),
            b.view(RING_DTYPE))


def test_tuples_prepared_ahead_overlap_earlier_work() -> None:
    """A caller prepares the tuples beside earlier work (a 2-round product here): the
    truncation afterwards costs 1 online round and no offline traffic of its own."""
    rng = np.random.default_rng(3)
    a = rng.integers(-(2**20), 2**20, (6, 5), dtype=np.int64).view(RING_DTYPE)

    async def fn(ctx: Context, x: AShare) -> AShare:
        pre, p = await ctx.gather(lambda c: prepare_trunc1(c, Trunc1Spec(x.size, 18)),
                                  lambda c: mul_fxp(c, x, x))
        return await mul_fxp(ctx, p, x, bits=18, rounds=1, pre=pre)

    ev = run(fn, a)
    assert max(ev.cost(p).rounds for p in PARTIES) == 3
    want = ((a.view(np.int64).astype(object) ** 2) >> 18) * a.view(np.int64) >> 18
    diff = ev.outputs[0].view(np.int64) - want.astype(np.int64)
    assert np.all(np.abs(diff) <= 5)  # the first rounding times |x| / 2^18 <= 4, and 1
    with pytest.raises(Exception, match="prepared for"):
        run(_mismatched, a)


async def _mismatched(ctx: Context, x: AShare) -> AShare:
    pre = await prepare_trunc1(ctx, Trunc1Spec(x.size, 17))
    return await truncate1(ctx, x, 18, pre=pre)


def test_tuples_prepared_before_any_input_exists() -> None:
    """The preparation takes public parameters only: the parties prepare with nothing but
    their keys, then truncate a public value shared afterwards."""
    from puma_async.protocols.randomness import setup_keys

    x = np.arange(-64, 64, dtype=np.int64) * 12345

    async def program(ctx: Context) -> Any:
        if ctx.role == CLIENT:
            return None
        await setup_keys(ctx)
        pre = await prepare_trunc1(ctx, Trunc1Spec(x.size, 10))
        out = await truncate1(ctx, public_share(ctx.role, x.view(RING_DTYPE)), 10, pre=pre)
        return out

    results = run_local({role: program for role in (*PARTIES, CLIENT)}).results
    total = results[0].first + results[1].first + results[2].first
    assert_floor_or_next(total, x.view(RING_DTYPE), 10)


def test_a_product_share_leaves_masked_by_the_tuples_zero_sharing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With tuples made ahead, a 3-out-of-3 input is masked by the tuple's own zero-sharing
    (no draw online): P_i sends w_i = z_i + r_i + alpha_i, where P_(i-1), which holds r_i,
    would otherwise learn z_i. The alphas sum to zero, so the output is still right."""
    from puma_async.protocols.randomness import setup_keys
    from puma_async.protocols.trunc1 import truncate1_additive

    x = np.arange(-64, 64, dtype=np.int64) * 4099
    sent: dict[int, list[np.ndarray]] = {}
    original = Context.send_arrays

    async def send_arrays(self: Context, to: int, *arrays: np.ndarray) -> None:
        if self.phase_name != "offline":
            sent.setdefault(self.role, []).extend(a.copy() for a in arrays)
        await original(self, to, *arrays)

    async def program(ctx: Context) -> Any:
        if ctx.role == CLIENT:
            return None
        await setup_keys(ctx)
        pre = await prepare_trunc1(ctx, Trunc1Spec(x.size, 10))
        z = x.view(RING_DTYPE) if ctx.role == 0 else np.zeros(x.size, RING_DTYPE)
        monkeypatch.setattr(Context, "send_arrays", send_arrays)
        out = await truncate1_additive(ctx, z, 10, pre=pre)
        return out, z, pre.r.first, pre.zero

    results = run_local({role: program for role in (*PARTIES, CLIENT)}).results
    zeros = [results[p][3] for p in PARTIES]
    assert not (zeros[0] + zeros[1] + zeros[2]).any() and all(z.any() for z in zeros)
    for p in PARTIES:
        _, z, r_own, zero = results[p]
        assert len(sent[p]) == 2  # w_i, to each of the others
        assert all((w == z + r_own + zero).all() for w in sent[p])
    total = sum((results[p][0].first for p in PARTIES), np.zeros(x.size, RING_DTYPE))
    assert_floor_or_next(total, x.view(RING_DTYPE), 10)


@pytest.mark.parametrize("additive", [False, True])
def test_a_schedule_without_overlap_gives_the_same_function(additive: bool) -> None:
    x = np.array(EDGES, np.int64).view(RING_DTYPE)

    async def fn(ctx: Context, a: AShare) -> AShare:
        return await (_additive(ctx, a, 18) if additive else truncate1(ctx, a, 18))

    assert_floor_or_next(run(fn, x, sequential=True).outputs[0], x, 18)


def test_bits_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError, match="1 to 62"):
        Trunc1Spec(4, 63)
    with pytest.raises(ValueError, match="1 to 62"):
        Trunc1Spec(4, 0)
