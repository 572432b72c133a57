"""Sharing, opening and correlated randomness: against plaintext, with exact costs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from puma_async.accuracy import ShareCollector
from puma_async.context import Context
from puma_async.protocols.arith import product_share, stack_left, stack_right, stacked_share
from puma_async.protocols.bitpack import packed_size
from puma_async.protocols.fixedpoint import FixedPoint
from puma_async.protocols.io import (
    dropped_bits,
    reveal,
    reveal_product_to,
    reveal_to_party,
    share_input,
)
from puma_async.protocols.randomness import (
    common_random,
    random_bshare,
    random_share,
    setup_input_seeds,
    setup_keys,
    zero_bits,
    zero_share,
)
from puma_async.protocols.shares import AShare, ProductShare, concatenate, public_share, stack
from puma_async.roles import CLIENT, PARTIES

ring_arrays = hnp.arrays(
    np.uint64, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6),
    elements=st.integers(0, 2**64 - 1),
)


@settings(max_examples=25, deadline=None)
@given(ring_arrays, ring_arrays)
def test_share_and_open_round_trip_with_local_ops(evaluate, x: np.ndarray, y: np.ndarray) -> None:
    async def fn(ctx: Context, a: AShare, b: AShare) -> list[AShare]:
        outs = [a, -a, a + a, a.add_public(ctx.role, 5), a.scale(3), a.sum()]
        if a.shape == b.shape:
            outs.append(a - b)
        return outs

    e = evaluate(fn, x, y)
    with np.errstate(over="ignore"):
        expected = [x, -x, x + x, x + np.uint64(5), x * np.uint64(3), x.sum(dtype=np.uint64)]
        if x.shape == y.shape:
            expected.append(x - y)
    for got, want in zip(e.outputs, expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_input_and_output_costs(evaluate) -> None:
    x = np.arange(1000, dtype=np.uint64)

    async def fn(ctx: Context, a: AShare) -> AShare:
        return a

    e = evaluate(fn, x)
    client = e.stats[CLIENT]
    assert client.totals(scope="io").bytes_sent == 2 * 8000  # x_2 to P1 and P2
    assert client.totals(scope="io").bytes_received == 2 * 8000  # x0 + x1 from P0, x2 from P1
    assert e.stats[2].totals(scope="io").bytes_sent == 0
    assert e.cost(0).bytes_sent == 0 and e.cost(0).rounds == 0


def _run_parties(spmd, program):
    async def wrapped(ctx: Context):
        with ctx.phase("setup"):
            if ctx.role in PARTIES:
                await setup_keys(ctx)
            await setup_input_seeds(ctx, CLIENT)
        return await program(ctx)

    return spmd(wrapped, roles=(*PARTIES, CLIENT))


def test_randomness_is_consistent_and_reveals_correctly(spmd) -> None:
    shape = (4, 5)
    secret = np.arange(20, dtype=np.uint64).reshape(shape) * np.uint64(2**60 + 7)

    async def program(ctx: Context):
        x = await share_input(ctx, CLIENT, shape, secret if ctx.role == CLIENT else None)
        if ctx.role not in PARTIES:
            return None
        r = await random_share(ctx, shape)
        b = random_bshare(ctx, shape)
        opened = await reveal(ctx, x)
        to_p1 = await reveal_to_party(ctx, x, 1)
        return dict(
            zero=await zero_share(ctx, shape), zbits=zero_bits(ctx, shape), r=r, b=b,
            common=common_random(ctx, shape), opened=opened, to_p1=to_p1,
        )

    run = _run_parties(spmd, program)
    res = [run.results[p] for p in PARTIES]
    np.testing.assert_array_equal(sum(r["zero"] for r in res), 0)
    np.testing.assert_array_equal(res[0]["zbits"] ^ res[1]["zbits"] ^ res[2]["zbits"], 0)
    for p in PARTIES:  # replicated: P_i's second half is P_{i+1}'s first half
        q = (p + 1) % 3
        np.testing.assert_array_equal(res[p]["r"].second, res[q]["r"].first)
        np.testing.assert_array_equal(res[p]["b"].second, res[q]["b"].first)
        np.testing.assert_array_equal(res[p]["opened"], secret)
        np.testing.assert_array_equal(res[p]["common"], res[0]["common"])
    assert res[0]["r"].first.std() > 0 and not np.array_equal(res[0]["zero"], res[1]["zero"])
    np.testing.assert_array_equal(res[1]["to_p1"], secret)
    assert res[0]["to_p1"] is None and res[2]["to_p1"] is None
    for p in PARTIES:
        assert run.stats[p].totals(phase="setup").rounds == 1


def test_stack_concatenate_and_public_share(evaluate) -> None:
    async def fn(ctx: Context, a: AShare) -> list[AShare]:
        return [
            stack([a, a]), concatenate([a, a], axis=1), a + public_share(ctx.role, a.first * 0 + 1)
        ]

    x = np.arange(6, dtype=np.uint64).reshape(2, 3)
    e = evaluate(fn, x)
    np.testing.assert_array_equal(e.outputs[0], np.stack([x, x]))
    np.testing.assert_array_equal(e.outputs[1], np.concatenate([x, x], axis=1))
    np.testing.assert_array_equal(e.outputs[2], x + np.uint64(1))


matrix_shapes = st.tuples(st.integers(1, 5), st.integers(1, 6), st.integers(0, 5))


@settings(max_examples=20, deadline=None)
@given(matrix_shapes, st.integers(0, 2**32))
def test_reveal_product_to_gives_the_product_in_a_fresh_sharing(spmd, dims, seed: int) -> None:
    """The client gets x @ y at 36 fractional bits opened at 18: floor(z / 2^18) - e with e in
    {0, 1, 2}, mod 2^46 and sign-extended, from the parties' 3-out-of-3 shares' bits
    [18, 64), in 1 round (here two reveals side by side), 46 bits per element from each
    party; what it receives is masked by a fresh zero-sharing: the same product revealed
    twice gives other values, and no party sends its unmasked share."""
    m, k, n = dims
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 2**64, (m, k), dtype=np.uint64)
    y = rng.integers(0, 2**64, (k, n), dtype=np.uint64)

    async def program(ctx: Context):
        a = await share_input(ctx, CLIENT, x.shape, x if ctx.role == CLIENT else None)
        b = await share_input(ctx, CLIENT, y.shape, y if ctx.role == CLIENT else None)
        with ctx.scope("io"):
            if ctx.role == CLIENT:
                return [await reveal_product_to(ctx, None, CLIENT, (m, n), 36) for _ in range(2)]
            raw = await stacked_share(stack_left(a), stack_right(b))
            sent = [ProductShare(await product_share(ctx, stack_left(a), stack_right(b)), 36)
                    for _ in range(2)]
            for z in sent:
                assert await reveal_product_to(ctx, z, CLIENT, (m, n), 36) is None
            return raw, [z.value for z in sent]

    run = _run_parties(spmd, program)
    with np.errstate(over="ignore"):
        want = x @ y  # numpy's uint64 product wraps mod 2^64
    for got in run.results[CLIENT]:
        assert got.shape == want.shape
        carry = (got - (want >> np.uint64(18))) % np.uint64(2**46)  # -e mod 2^46
        assert set(carry.ravel().tolist()) <= {0, 2**46 - 1, 2**46 - 2}
        np.testing.assert_array_equal(got.view(np.int64) >> 45, got.view(np.int64) >> 63)
    if m * n:
        for p in PARTIES:
            raw, (once, twice) = run.results[p]
            assert not np.array_equal(once, twice) and not np.array_equal(once, raw)
    packed = packed_size(m * n, 46)  # ceil(46 m n / 8) bytes
    for p in PARTIES:
        io = run.stats[p].totals(scope="io")
        assert io.bytes_sent == 2 * packed and io.rounds == 1  # the two reveals side by side
    assert run.stats[CLIENT].totals(scope="io").bytes_received == 2 * 3 * packed


D = 18  # the low bits each party drops from a product at 36 fractional bits opened at 18
LOWEST = -(2**63) + 2 ** (D + 1)  # the headroom's ends: -2^63 + 2^(d + 1) <= z < 2^63
near = st.sampled_from([0, -1, 1, 2**62, -(2**62), LOWEST, 2**63 - 1, 2**D, -(2**D)])
products = st.one_of(
    st.builds(lambda c, t: max(LOWEST, min(2**63 - 1, c + t)), near, st.integers(-2**20, 2**20)),
    st.integers(LOWEST, 2**63 - 1),
)


@settings(max_examples=40, deadline=None)
@given(hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=5), st.data())
def test_reveal_product_to_opens_floor_less_carry(spmd, shape, data) -> None:
    """For any z in the headroom and any split z = z_0 + z_1 + z_2 (mod 2^64), the client's
    value is floor(z / 2^18) - e with e in {0, 1, 2} (read as int64): the logits at 18
    fractional bits, at most 3 units of 2^-18 below z / 2^36, never above; the probe's
    decoding (ShareCollector) gives the same value."""
    size = int(np.prod(shape, dtype=np.int64))
    z = np.array(data.draw(st.lists(products, min_size=size, max_size=size)),
                 dtype=np.int64).reshape(shape)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32)))
    z0, z1 = (rng.integers(0, 2**64, shape, dtype=np.uint64) for _ in range(2))
    with np.errstate(over="ignore"):
        splits = [z0, z1, z.view(np.uint64) - z0 - z1]
    collector = ShareCollector()

    async def program(ctx: Context):
        if ctx.role == CLIENT:
            return await reveal_product_to(ctx, None, CLIENT, shape, 36)
        share = ProductShare(splits[ctx.role], 36)
        collector(ctx.role, "logits", share)
        return await reveal_product_to(ctx, share, CLIENT, shape, 36)

    got = np.asarray(_run_parties(spmd, program).results[CLIENT])
    assert got.shape == shape and got.dtype == np.uint64
    e = (z >> D) - got.view(np.int64)  # floor(z / 2^18) - got
    assert np.isin(e, (0, 1, 2)).all(), e
    value = z / 2.0**36
    opened = FixedPoint(18).decode(got)
    assert (opened <= value).all() and (opened > value - 3 * 2.0**-18).all()
    np.testing.assert_array_equal(collector.take()["logits"], opened)


def test_reveal_product_to_refuses_a_format_it_cannot_open(spmd) -> None:
    """The product's fractional bits must exceed f by 1..63; the parties' shares must be at
    the bits the client expects."""
    with pytest.raises(ValueError, match=r"drop 1\.\.63"):
        dropped_bits(18, FixedPoint(18))

    async def program(ctx: Context):
        if ctx.role == CLIENT:
            return None
        with pytest.raises(ValueError, match="expected 36 bits"):
            await reveal_product_to(ctx, ProductShare(np.zeros(3, np.uint64), 30), CLIENT,
                                    (3,), 36)
        return True

    assert _run_parties(spmd, program).results[0]
