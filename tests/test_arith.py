"""Multiplication and matmul of shares against plaintext numpy, with exact costs."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from puma_async.context import Context
from puma_async.protocols import arith
from puma_async.protocols.arith import (
    finish_product_wide,
    matmul,
    matmul_fxp,
    matmul_public,
    matmul_public_fxp,
    mul,
    mul_fxp,
    mul_public_fxp,
    square,
    square_fxp,
    stack_left,
    stack_right,
    stacked_share,
)
from puma_async.protocols.fixedpoint import FixedPoint
from puma_async.protocols.shares import AShare

F = 18
FX = FixedPoint(F)
seeds = st.integers(0, 2**32 - 1)


def ring(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(0, 2**64, shape, dtype=np.uint64, endpoint=False)


def signed(a: np.ndarray) -> np.ndarray:
    return a.view(np.int64)


def assert_within_ulp(got: np.ndarray, exact: np.ndarray) -> None:
    """got - floor(exact / 2^F) in {0, 1} for the exact (int64) ring product."""
    assert got.shape == exact.shape
    diff = signed(got) - (exact >> F)
    assert set(np.unique(diff).tolist()) <= {0, 1}, np.unique(diff)


def operands(rng: np.random.Generator, shape: tuple[int, ...], bits: int) -> np.ndarray:
    """Signed ring values with log-uniform magnitudes below 2^bits."""
    mags = np.floor(2.0 ** rng.uniform(0, bits, shape)).astype(np.int64)
    return np.where(rng.random(shape) < 0.5, -mags, mags)


shapes = st.lists(st.integers(0, 5), min_size=0, max_size=3).map(tuple)


@settings(max_examples=30, deadline=None)
@given(seed=seeds, shape=shapes, broadcast=st.booleans())
def test_ring_mul_and_square(evaluate, seed: int, shape: tuple[int, ...], broadcast: bool) -> None:
    rng = np.random.default_rng(seed)
    x = ring(rng, shape)
    y = ring(rng, shape[1:] if broadcast else shape)

    async def fn(ctx: Context, a: AShare, b: AShare) -> list[AShare]:
        return [await mul(ctx, a, b), await mul(ctx, b, a), await square(ctx, a)]

    e = evaluate(fn, x, y)
    for got, want in zip(e.outputs, (x * y, y * x, x * x), strict=True):
        np.testing.assert_array_equal(got, want)


@settings(max_examples=25, deadline=None)
@given(
    seed=seeds,
    batch=st.sampled_from([(), (2,), (2, 3)]),
    batch_y=st.booleans(),
    m=st.integers(1, 20),
    k=st.integers(1, 9),
    n=st.integers(1, 6),
)
def test_ring_matmul(evaluate,
    seed: int, batch: tuple[int, ...], batch_y: bool, m: int, k: int, n: int
) -> None:
    rng = np.random.default_rng(seed)
    x, y = ring(rng, (*batch, m, k)), ring(rng, (*(batch if batch_y else ()), k, n))
    w = ring(rng, (k, m))

    async def fn(ctx: Context, a: AShare, b: AShare) -> list[AShare]:
        return [
            await matmul(ctx, a, b),
            await matmul_public(ctx, a, y),
            await matmul_public(ctx, w, a),
        ]

    e = evaluate(fn, x, y)
    for got, want in zip(e.outputs, (x @ y, x @ y, w @ x), strict=True):
        np.testing.assert_array_equal(got, want)


@settings(max_examples=30, deadline=None)
@given(seed=seeds, shape=shapes.filter(lambda s: len(s) > 0), bits_x=st.integers(0, 61))
def test_mul_fxp_within_one_ulp(evaluate, seed: int, shape: tuple[int, ...], bits_x: int) -> None:
    """Magnitudes from tiny to |x y| < 2^62, both orders, and squares (|x| < 2^31)."""
    rng = np.random.default_rng(seed)
    x = operands(rng, shape, bits_x)
    y = operands(rng, shape, 62 - bits_x)
    exact = x * y
    edge = np.array([2**31 - 1, -(2**31)], np.int64)

    async def fn(ctx: Context, a: AShare, b: AShare, c: AShare) -> list[AShare]:
        return [
            await mul_fxp(ctx, a, b),
            await mul_fxp(ctx, b, a),
            await square_fxp(ctx, c),
            await mul_fxp(ctx, c, c),
        ]

    sq = x.ravel() >> max(0, bits_x - 31)
    e = evaluate(fn, x, y, np.concatenate([sq, edge]))
    assert_within_ulp(e.outputs[0], exact)
    assert_within_ulp(e.outputs[1], exact)
    sq_exact = np.concatenate([sq, edge]) ** 2
    assert_within_ulp(e.outputs[2], sq_exact)
    assert_within_ulp(e.outputs[3], sq_exact)


@settings(max_examples=25, deadline=None)
@given(
    seed=seeds,
    batch=st.sampled_from([(), (3,)]),
    m=st.integers(1, 20),
    k=st.integers(1, 40),
    n=st.integers(1, 6),
    scale=st.floats(1e-3, 1e3),
)
def test_matmul_fxp_within_one_ulp(evaluate,
    seed: int, batch: tuple[int, ...], m: int, k: int, n: int, scale: float
) -> None:
    rng = np.random.default_rng(seed)
    x = FX.encode(rng.normal(0, scale, (*batch, m, k)))
    y = FX.encode(rng.normal(0, 1 / scale, (*batch, k, n)))
    wf = rng.normal(0, 1, (k, n))
    exact = signed(x) @ signed(y)
    exact_pub = signed(x) @ signed(FX.encode(wf))
    exact_left = signed(FX.encode(wf.T)) @ signed(x).swapaxes(-1, -2)

    async def fn(ctx: Context, a: AShare, b: AShare) -> list[AShare]:
        return [
            await matmul_fxp(ctx, a, b),
            await matmul_public_fxp(ctx, a, wf),
            await matmul_public_fxp(ctx, wf.T, a.transpose(*range(a.first.ndim - 2),
                                                          a.first.ndim - 1, a.first.ndim - 2)),
        ]

    e = evaluate(fn, x, y)
    assert_within_ulp(e.outputs[0], exact)
    assert_within_ulp(e.outputs[1], exact_pub)
    assert_within_ulp(e.outputs[2], exact_left)


@settings(max_examples=30, deadline=None)
@given(seed=seeds, m=st.integers(1, 6), k=st.integers(1, 12), n=st.integers(1, 8),
       bits=st.sampled_from([0, 18]), shift=st.integers(0, 20), bits_x=st.integers(0, 40))
def test_finish_product_wide(evaluate, seed: int, m: int, k: int, n: int, bits: int,
                             shift: int, bits_x: int) -> None:
    """p = floor(z / 2^bits) + {0, 1} and, in p's rounds, w = floor((2^bits r + z) /
    2^(bits + shift)) + {0, 1}, from tiny values up to |2^bits r + z| near 2^62 (the last
    two rows: the range's ends), with and without a residual r."""
    rng = np.random.default_rng(seed)
    top = 61 - bits  # |2^bits r + z| < 2^62: both below 2^61
    x = operands(rng, (m, k), min(bits_x, top // 2))
    y = operands(rng, (k, n), top // 2 - 4)  # |x @ y| < k 2^(top - 4) < 2^top
    r = operands(rng, (m, n), top - bits if bits else top)
    r[-1] = (2**top - 1 - np.abs(x @ y)[-1]) >> bits
    z = signed(x) @ signed(y)

    async def fn(ctx: Context, a: AShare, b: AShare, c: AShare) -> list[AShare]:
        share = await stacked_share(stack_left(a), stack_right(b))
        p, w = await finish_product_wide(ctx, share, bits, c, shift)
        q, v = await finish_product_wide(ctx, share, bits, None, shift)
        return [p, w, q, v]

    e = evaluate(fn, x, y, r)
    rounds = 2 if bits or shift else 1
    assert max(e.cost(p).rounds for p in range(3)) == 2 * rounds
    for got, exact in zip(e.outputs, [z >> bits, ((r << bits) + z) >> (bits + shift),
                                      z >> bits, z >> (bits + shift)], strict=True):
        assert set(np.unique(signed(got) - exact).tolist()) <= {0, 1}


@pytest.mark.parametrize(("m", "n", "bits", "shift"),
                         [(16, 16, 18, 8), (96, 128, 24, 5), (16, 16, 0, 8)])
def test_finish_product_wide_bytes(evaluate, m: int, n: int, bits: int, shift: int) -> None:
    """The wide copy's bytes: with bits > 0 it shares the product's opening (a twin of its
    truncation: 24 + (bits + shift)/8 per element beside the product's 40 + bits/8, in both
    role layouts: one block below 12,288 elements, three from there); with bits = 0 a
    truncation of its own (40 + shift/8 beside the reshare's 24). Values as exact as before:
    the residual at its range's end too."""
    rng = np.random.default_rng(m + n + bits)
    top = 61 - bits
    x = operands(rng, (m, 4), top // 2 - 2)
    y = operands(rng, (4, n), top // 2 - 2)
    z = signed(x) @ signed(y)
    r = operands(rng, (m, n), top - bits - 1)
    r[0, 0] = (2**top - 1 - abs(int(z[0, 0]))) >> bits

    async def fn(ctx: Context, a: AShare, b: AShare, c: AShare) -> list[AShare]:
        share = await stacked_share(stack_left(a), stack_right(b))
        return list(await finish_product_wide(ctx, share, bits, c, shift))

    e = evaluate(fn, x, y, r)
    for got, exact in zip(e.outputs, [z >> bits, ((r << bits) + z) >> (bits + shift)],
                          strict=True):
        assert set(np.unique(signed(got) - exact).tolist()) <= {0, 1}
    product = 40 + bits / 8 if bits else 24
    wide = 24 + (bits + shift) / 8 if bits else 40 + shift / 8
    assert e.bytes_all_parties() == (product + wide) * m * n
    assert max(e.cost(p).rounds for p in range(3)) == 2


@settings(max_examples=25, deadline=None)
@given(seed=seeds, n=st.integers(1, 30), broadcast=st.booleans())
def test_mul_public_fxp(evaluate, seed: int, n: int, broadcast: bool) -> None:
    rng = np.random.default_rng(seed)
    x = FX.encode(rng.normal(0, 100, (2, n)))
    c = rng.normal(0, 100, n if broadcast else (2, n))

    async def fn(ctx: Context, a: AShare) -> AShare:
        return await mul_public_fxp(ctx, a, c)

    e = evaluate(fn, x)
    assert_within_ulp(e.outputs[0], signed(x) * signed(np.broadcast_to(FX.encode(c), x.shape)))


def test_mul_and_matmul_costs(evaluate) -> None:
    rng = np.random.default_rng(0)
    x, y = ring(rng, (4, 30)), ring(rng, (30, 5))

    async def elementwise(ctx: Context, a: AShare) -> AShare:
        return await mul(ctx, a, a)

    async def product(ctx: Context, a: AShare, b: AShare) -> AShare:
        return await matmul(ctx, a, b)

    async def local(ctx: Context, a: AShare) -> AShare:
        return await matmul_public(ctx, a, y)

    e_mul, e_mm, e_loc = evaluate(elementwise, x), evaluate(product, x, y), evaluate(local, x)
    for p in range(3):
        assert e_mul.cost(p).rounds == 1 and e_mul.cost(p).messages_sent == 1
        assert e_mul.cost(p).bytes_sent == 8 * x.size  # one element per element
        assert e_mm.cost(p).rounds == 1 and e_mm.cost(p).messages_sent == 1
        assert e_mm.cost(p).bytes_sent == 8 * 4 * 5  # one element per output element
        assert e_loc.cost(p).bytes_sent == 0 and e_loc.cost(p).rounds == 0


def test_matmul_fxp_cost_and_public_needs_one_secret(evaluate) -> None:
    rng = np.random.default_rng(1)
    x, y = FX.encode(rng.normal(size=(6, 8))), FX.encode(rng.normal(size=(8, 4)))

    async def fn(ctx: Context, a: AShare, b: AShare) -> AShare:
        return await matmul_fxp(ctx, a, b)

    e = evaluate(fn, x, y)
    assert max(e.cost(p).rounds for p in range(3)) == 2  # the dealer P_2 is done after 1
    assert e.bytes_all_parties() == 40 * 24 + F * 24 // 8

    async def bad(ctx: Context, a: AShare, b: AShare) -> AShare:
        return await matmul_public(ctx, a, b)

    with pytest.raises(Exception, match="one secret"):
        evaluate(bad, x, y)


@pytest.mark.parametrize(("left", "right", "in_thread"), [
    ((1, 1152), (1152, 576), True),  # a new token's output projection: a 5.3 MB weight read
    ((1, 1152), (1152, 3072), True),
    ((3, 3, 128), (3, 128, 7), False),  # a new token's attention scores: kept on the loop
])
def test_weight_sized_products_leave_the_event_loop(
    monkeypatch: pytest.MonkeyPatch, left: tuple[int, ...], right: tuple[int, ...],
    in_thread: bool,
) -> None:
    """A product whose right operand is large runs in a worker thread even when its
    multiply-adds are few (one row of a): it reads all of b, which for a weight is not in
    cache."""
    ran_in: list[threading.Thread] = []

    def product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        ran_in.append(threading.current_thread())
        return np.zeros((*a.shape[:-1], b.shape[-1]), np.uint64)

    monkeypatch.setattr(arith, "ring_matmul", product)
    a, b = np.zeros(left, np.uint64), np.zeros(right, np.uint64)
    trio.run(stacked_share, a, b)
    assert (ran_in[0] is not threading.main_thread()) == in_thread
