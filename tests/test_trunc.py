"""Truncation: within one ulp over the whole range |x| < 2^62, exact costs, 10^6 products."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from puma_async.context import Context
from puma_async.evaluate import Evaluation
from puma_async.protocols.arith import mul, mul_fxp
from puma_async.protocols.bitpack import pack_low_bits, packed_size
from puma_async.protocols.fixedpoint import FixedPoint, fixed_point
from puma_async.protocols.shares import AShare
from puma_async.protocols.trunc import (
    ROTATE_MIN_ELEMENTS,
    _deal,
    opened_terms,
    truncate,
    truncate_additive,
)

LIMIT = 2**62


def signed(a: np.ndarray) -> np.ndarray:
    return a.view(np.int64)


def spread(rng: np.random.Generator, n: int, max_bits: int) -> np.ndarray:
    """n signed integers with magnitudes log-uniform up to 2^max_bits (plus 0 and the edges)."""
    mags = np.floor(2.0 ** rng.uniform(0, max_bits, n)).astype(np.int64)
    mags = np.minimum(mags, (1 << max_bits) - 1)
    values = np.where(rng.random(n) < 0.5, -mags, mags)
    values[: min(n, 3)] = [0, (1 << max_bits) - 1, -(1 << max_bits)][: min(n, 3)]
    return values


def assert_within_ulp(got: np.ndarray, x: np.ndarray, bits: int) -> np.ndarray:
    """got - floor(x / 2^bits) must be 0 or 1 everywhere; returns the differences."""
    diff = signed(got) - (signed(x) >> bits)
    assert set(np.unique(diff).tolist()) <= {0, 1}, np.unique(diff)
    return diff


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 40),
    bits=st.integers(0, 62),
    max_bits=st.integers(0, 62),
)
def test_truncate_within_one_ulp(evaluate, seed: int, n: int, bits: int, max_bits: int) -> None:
    x = spread(np.random.default_rng(seed), n, max_bits).view(np.uint64)

    async def fn(ctx: Context, a: AShare) -> AShare:
        return await truncate(ctx, a, bits)

    e = evaluate(fn, x)
    diff = assert_within_ulp(e.outputs[0], x, bits)
    if bits == 0:
        assert not diff.any()


def test_truncate_edges_and_shapes(evaluate) -> None:
    x = np.array([[-LIMIT, LIMIT - 1, -1, 0], [1, 2**40 + 3, -(2**40) - 3, 7]], np.int64)

    async def fn(ctx: Context, a: AShare) -> list[AShare]:
        return [await truncate(ctx, a, b) for b in (1, 18, 61, 62)] + [await truncate(ctx, a[0, 0])]

    e = evaluate(fn, x)
    for got, bits in zip(e.outputs, (1, 18, 61, 62), strict=False):
        assert got.shape == x.shape
        assert_within_ulp(got, x.view(np.uint64), bits)
    assert e.outputs[-1].shape == ()
    assert signed(e.outputs[-1]) in (-(2**44), -(2**44) + 1)


def test_truncate_cost(evaluate) -> None:
    bits = 18

    async def fn(ctx: Context, a: AShare) -> AShare:
        return await truncate(ctx, a, bits)

    # long arrays: three blocks, every party deals one (8 m + bits m / 8, packed) and opens
    # two (8 m each)
    n = ROTATE_MIN_ELEMENTS
    m = n // 3
    e = evaluate(fn, np.arange(n, dtype=np.uint64))
    for p in range(3):
        cost = e.cost(p)
        assert (cost.rounds, cost.messages_sent) == (2, 3)
        assert cost.bytes_sent == 24 * m + bits * m // 8
    assert e.bytes_all_parties() == 24 * n + bits * n // 8
    # short arrays: one block, P_0 and P_1 open (8 n each), P_2 deals; the same bytes in all
    n = 2400
    e = evaluate(fn, np.arange(n, dtype=np.uint64))
    assert max(e.cost(p).rounds for p in range(3)) == 2
    assert [e.cost(p).messages_sent for p in range(3)] == [1, 1, 1]
    assert [e.cost(p).bytes_sent for p in range(3)] == [8 * n, 8 * n, 8 * n + bits * n // 8]


def test_fused_mul_truncation_cost(evaluate) -> None:
    bits = 18

    async def fn(ctx: Context, a: AShare, b: AShare) -> AShare:
        return await mul_fxp(ctx, a, b)

    def run(n: int) -> Evaluation:
        return evaluate(fn, np.arange(n, dtype=np.uint64), np.arange(n, dtype=np.uint64))

    n = ROTATE_MIN_ELEMENTS
    m = n // 3
    e = run(n)
    for p in range(3):
        cost = e.cost(p)
        assert (cost.rounds, cost.messages_sent) == (2, 4)
        assert cost.bytes_sent == 40 * m + bits * m // 8
    # short arrays: the openers swap their parts of the product and their brackets, the
    # dealer sends once
    n = 2400
    e = run(n)
    assert max(e.cost(p).rounds for p in range(3)) == 2
    assert [e.cost(p).messages_sent for p in range(3)] == [2, 2, 1]
    assert [e.cost(p).bytes_sent for p in range(3)] == [16 * n, 16 * n, 8 * n + bits * n // 8]


def test_invalid_bits(evaluate) -> None:
    async def fn(ctx: Context, a: AShare) -> AShare:
        return await truncate(ctx, a, 63)

    with pytest.raises(Exception, match="truncation bits"):
        evaluate(fn, np.zeros(3, np.uint64))


def test_session_fixed_point_setting(evaluate) -> None:
    fx = FixedPoint(12)
    x, y = fx.encode([1.5, -2.25]), fx.encode([3.0, 0.5])

    async def fn(ctx: Context, a: AShare, b: AShare) -> AShare:
        ctx.install(fx)
        assert fixed_point(ctx) == fx
        return await mul_fxp(ctx, a, b)

    e = evaluate(fn, x, y)
    np.testing.assert_allclose(fx.decode(e.outputs[0]), [4.5, -1.125], atol=2**-12)


def test_million_truncations_never_exceed_one_ulp(evaluate) -> None:
    """10^6 fused products and 10^6 separate truncations, magnitudes up to |x y| < 2^62."""
    rng = np.random.default_rng(2024)
    n, f = 10**6, 18
    bx = rng.integers(0, 62, n)  # bits of x; y gets at most 61 - bx, so |x y| < 2^62
    x = spread(rng, n, 62) >> (62 - bx)
    y = spread(rng, n, 62) >> (62 - (61 - bx))
    product = x * y
    assert np.abs(product).max() < LIMIT

    async def fn(ctx: Context, a: AShare, b: AShare, p: AShare) -> list[AShare]:
        return [await mul_fxp(ctx, a, b), await truncate(ctx, p), await mul(ctx, a, b)]

    e = evaluate(fn, x, y, product)
    np.testing.assert_array_equal(e.outputs[2], product.view(np.uint64))
    fused = assert_within_ulp(e.outputs[0], product.view(np.uint64), f)
    assert_within_ulp(e.outputs[1], product.view(np.uint64), f)
    # stochastic rounding: rounds up with probability (x mod 2^f) / 2^f, so unbiased
    frac = (product & ((1 << f) - 1)) / 2.0**f
    assert abs(fused.mean() - frac.mean()) < 0.005


def test_stochastic_rounding_is_unbiased(evaluate) -> None:
    n, f = 60000, 18
    x = np.full(n, 13, np.int64)
    quarter = np.full(n, 1 << (f - 2), np.int64)  # x * quarter / 2^f = 3.25 ulps

    async def fn(ctx: Context, a: AShare, b: AShare) -> AShare:
        return await mul_fxp(ctx, a, b)

    e = evaluate(fn, x, quarter)
    diff = assert_within_ulp(e.outputs[0], (x * quarter).view(np.uint64), f)
    assert abs(diff.mean() - 0.25) < 0.01


def test_product_masks_hide_the_swapped_shares(evaluate, monkeypatch) -> None:
    """A truncated product's shares are masked by the truncation's own streams: with every
    party's unmasked share zero, what the openers P0 and P1 swap in round 1 is all mask
    (nonzero words, and their sum, the opened c - 2^62, nonzero too: the masks do not cancel
    between the openers), and the result is still floor(0) = 0."""
    n, sent = 37, []
    original = Context.send_arrays

    async def spy(self: Context, to: int, *arrays: np.ndarray) -> None:
        if {self.role, to} == {0, 1} and arrays[0].shape == (n,):
            sent.append((self.role, arrays[0].copy()))
        await original(self, to, *arrays)

    monkeypatch.setattr(Context, "send_arrays", spy)

    async def fn(ctx: Context) -> AShare:
        return await truncate_additive(ctx, np.zeros(n, np.uint64), 18)

    e = evaluate(fn)
    assert not e.outputs[0].any()
    swap = {role: words for role, words in reversed(sent)}  # each opener's first message
    assert set(swap) == {0, 1}
    assert np.count_nonzero(swap[0]) == n and np.count_nonzero(swap[1]) == n
    assert np.count_nonzero(swap[0] + swap[1]) == n


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 300), bits=st.integers(0, 62),
       scalar_t=st.booleans())
def test_local_kernels_equal_their_numpy_formulas(seed: int, n: int, bits: int,
                                                  scalar_t: bool) -> None:
    """The dealer's and the openers' numba passes give numpy's results bit for bit (shifts by
    64 at f = 0 included), on views with strides as the blocks of a flat array are."""
    rng = np.random.default_rng(seed)
    z, g, h, t = (rng.integers(0, 2**64, 2 * n, dtype=np.uint64)[::2] for _ in range(4))
    t = np.uint64(0) if scalar_t else t
    c = z + np.uint64(1 << 62)
    public = (c >> np.uint64(bits)) - np.uint64(1 << (62 - bits))
    send = g - (c >> np.uint64(63)) * (h << np.uint64(64 - bits)) - t
    got = opened_terms(z, g, h, t, bits)
    np.testing.assert_array_equal(got[0], public)
    np.testing.assert_array_equal(got[1], send)
    if bits:
        r = np.negative(z)
        m = r >> np.uint64(63)
        summands = (m << np.uint64(64 - bits)) - (r >> np.uint64(bits)) - g
        dealt = _deal(z, g, h, bits)
        np.testing.assert_array_equal(dealt[0], summands)
        np.testing.assert_array_equal(dealt[1], pack_low_bits((m - h) & np.uint64(
            (1 << bits) - 1), bits))


@pytest.mark.parametrize("n", [5, ROTATE_MIN_ELEMENTS])
def test_no_array_of_an_empty_block_travels(evaluate, monkeypatch: pytest.MonkeyPatch,
                                            n: int) -> None:
    """A truncated product below :data:`ROTATE_MIN_ELEMENTS` is one block (openers P_0, P_1,
    dealer P_2): no party sends an empty array for the roles it does not play, and each
    sends only what its roles need (the swap, the dealer's shares, the brackets). From it on,
    three blocks: every party plays every role."""
    sent: dict[int, list[tuple[int, ...]]] = {}
    original = Context.send_arrays

    async def send_arrays(self: Context, to: int, *arrays: np.ndarray) -> None:
        if self.scope_name.startswith("op"):
            sent.setdefault(self.role, []).append(tuple(a.size for a in arrays))
        await original(self, to, *arrays)

    monkeypatch.setattr(Context, "send_arrays", send_arrays)
    x = spread(np.random.default_rng(1), n, 40).view(np.uint64)
    y = np.ones(n, np.uint64)

    async def fn(ctx: Context, a: AShare, b: AShare) -> AShare:
        z = (a.first + a.second) * b.first + a.first * b.second  # x * y, 3-out-of-3
        return await truncate_additive(ctx, z, 8)

    e = evaluate(fn, x, y)
    assert_within_ulp(e.outputs[0], x, 8)
    assert all(size for sizes in sent.values() for message in sizes for size in message)
    if n < ROTATE_MIN_ELEMENTS:
        assert sent[0] == [(n,), (n,)]  # A: its swap to B, its bracket to B
        assert sent[1] == [(n,), (n,)]  # B: its swap to A, its bracket to A
        assert sent[2] == [(n, packed_size(n, 8))]  # D: B's shares of G and of m
    else:
        assert all(len(sent[p]) == 4 for p in range(3))
