"""Sharing, opening and correlated randomness: against plaintext, with exact costs."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from puma_async.context import Context
from puma_async.protocols.io import reveal, reveal_to_party, share_input
from puma_async.protocols.randomness import (
    common_random,
    random_bshare,
    random_share,
    setup_input_seeds,
    setup_keys,
    zero_bits,
    zero_share,
)
from puma_async.protocols.shares import AShare, concatenate, public_share, stack
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
        r = random_share(ctx, shape)
        b = random_bshare(ctx, shape)
        opened = await reveal(ctx, x)
        to_p1 = await reveal_to_party(ctx, x, 1)
        return dict(
            zero=zero_share(ctx, shape), zbits=zero_bits(ctx, shape), r=r, b=b,
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
