"""The protocol kit: typed per-party state, checked receives, and protocol boundaries."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
import pytest
import trio
import trio.testing

from puma_async.codec import Value
from puma_async.context import ArraySpec, Context, protocol
from puma_async.errors import ProtocolError, RunFailedError
from puma_async.protocols.fixedpoint import DEFAULT_FIXED_POINT, FixedPoint, fixed_point
from puma_async.protocols.randomness import PartyKeys, input_prg, party_keys
from puma_async.roles import CLIENT, PARTIES, next_party, prev_party
from puma_async.runner import run_local


def run(programs):
    return run_local(programs, clock=trio.testing.MockClock(autojump_threshold=0))


def spmd(program):
    return dict.fromkeys(PARTIES, program)


# ----------------------------------------------------------------------------- state


@dataclasses.dataclass(frozen=True)
class Counter:
    value: int
    SETUP: ClassVar[str] = "install a Counter in the test's set-up"


def test_state_is_per_party_typed_and_replaceable() -> None:
    async def program(ctx: Context) -> tuple[int, int, FixedPoint]:
        ctx.install(Counter(ctx.role))
        first = ctx.state(Counter).value
        ctx.install(Counter(10 + ctx.role))
        child = ctx.child()  # every step of the party sees the same state
        return first, child.state(Counter).value, fixed_point(child)

    results = run(spmd(program)).results
    assert results == {p: (p, 10 + p, DEFAULT_FIXED_POINT) for p in PARTIES}


def test_missing_state_names_the_type_the_role_and_the_set_up() -> None:
    async def program(ctx: Context) -> None:
        me = f"P{ctx.role}"
        with pytest.raises(ProtocolError) as info:
            ctx.state(Counter)
        assert f"Counter is not set up at {me}" in str(info.value)
        assert "install a Counter in the test's set-up" in str(info.value)
        with pytest.raises(ProtocolError, match=f"PartyKeys is not set up at {me}: .*setup_keys"):
            party_keys(ctx)
        with pytest.raises(ProtocolError, match="InputSeeds is not set up"):
            input_prg(ctx, CLIENT, 0)
        assert ctx.state(Counter, Counter(-1)) == Counter(-1)

    run(spmd(program))


def test_state_holds_keys_after_set_up() -> None:
    from puma_async.protocols.randomness import setup_keys

    async def program(ctx: Context) -> bool:
        keys = await setup_keys(ctx)
        return ctx.state(PartyKeys) is keys

    assert all(run(spmd(program)).results.values())


# ----------------------------------------------------------------------------- receives


@pytest.mark.parametrize(
    ("sent", "specs", "got"),
    [
        ([np.zeros(3, np.uint64)], [ArraySpec.ring(4)], "uint64 (3,)"),
        ([np.zeros(3, np.uint8)], [ArraySpec.ring(3)], "uint8 (3,)"),
        ([np.zeros((2, 2), np.uint64)], [ArraySpec.ring(4)], "uint64 (2, 2)"),
        ([np.zeros(3, np.uint64)] * 2, [ArraySpec.ring(3)], "uint64 (3,), uint64 (3,)"),
        ([np.zeros(3, np.uint64)], [ArraySpec.ring(3), ArraySpec.of(np.uint8, 2)],
         "uint64 (3,)"),
    ],
)
def test_recv_arrays_refuses_other_counts_dtypes_and_shapes(
    sent: list[np.ndarray], specs: list[ArraySpec], got: str
) -> None:
    async def program(ctx: Context) -> None:
        if ctx.role == 0:
            await ctx.send_arrays(1, *sent)
        elif ctx.role == 1:
            await ctx.recv_arrays(0, *specs)

    with pytest.raises(RunFailedError) as info:
        run(spmd(program))
    error = info.value.errors[1]
    assert isinstance(error, ProtocolError) and error.peer == 0
    expected = ", ".join(map(str, specs))
    assert f"expected arrays [{expected}], got [{got}]" in str(error)
    assert "peer P0" in str(error) and "step <root>" in str(error)


def test_recv_arrays_returns_the_arrays_of_their_specs() -> None:
    async def program(ctx: Context) -> list[int]:
        await ctx.send_arrays(
            next_party(ctx.role), np.full(2, ctx.role, np.uint64), np.ones(5, np.uint8)
        )
        words, packed = await ctx.recv_arrays(
            prev_party(ctx.role), ArraySpec.ring(2), ArraySpec.of(np.uint8, (5,))
        )
        return [int(words[0]), int(packed.sum())]

    assert run(spmd(program)).results == {p: [prev_party(p), 5] for p in PARTIES}


def test_a_dimension_of_none_takes_any_length() -> None:
    spec = ArraySpec.ring((None, 2))
    assert spec.matches(np.zeros((5, 2), np.uint64))
    assert not spec.matches(np.zeros((5, 3), np.uint64))
    assert not spec.matches(np.zeros(10, np.uint64))
    assert str(spec) == "uint64 (*, 2)" and str(ArraySpec.ring(3)) == "uint64 (3,)"


def test_recv_message_refuses_another_type() -> None:
    async def program(ctx: Context) -> None:
        if ctx.role == 0:
            await ctx.send_arrays(1, np.zeros(1, np.uint64))
        elif ctx.role == 1:
            await ctx.recv_message(0, Value)

    with pytest.raises(RunFailedError, match="expected Value, got Arrays"):
        run(spmd(program))


# ----------------------------------------------------------------------------- protocols


@protocol
async def ping(ctx: Context, value: int) -> int:
    """One exchange around the ring: 1 round."""
    await ctx.send_arrays(next_party(ctx.role), np.full(1, value, np.uint64))
    return int((await ctx.recv_array(prev_party(ctx.role), ArraySpec.ring(1)))[0])


@protocol
async def ping_twice(ctx: Context) -> tuple[int, int]:
    """Two pings one after the other: 2 rounds, scopes ping_twice.ping."""
    return await ping(ctx, 1), await ping(ctx, 2)


def test_protocol_scopes_its_traffic_and_keeps_the_rounds() -> None:
    async def program(ctx: Context) -> tuple[int, int]:
        with ctx.scope("layer0"):
            return await ping_twice(ctx)

    result = run(spmd(program))
    assert all(r == (1, 2) for r in result.results.values())
    stats = result.stats[0]
    assert stats.max_round == 2
    assert stats.totals(scope="layer0").rounds == 2
    assert stats.totals(scope="layer0.ping_twice").rounds == 2
    assert stats.totals(scope="layer0.ping_twice.ping").rounds == 2  # two entries, 1 each
    assert stats.totals(scope="layer0.ping_twice.ping").messages_sent == 2
    assert ping.__name__ == "ping" and "1 round" in (ping.__doc__ or "")


def test_protocol_paths_follow_the_call_order_not_the_schedule() -> None:
    """Two calls made in one order and awaited concurrently, one party delayed: every party
    gives each call the same child path (taken at the call)."""

    async def program(ctx: Context) -> list[int]:
        first, second = ping(ctx, 10), ping(ctx, 20)
        results: dict[str, int] = {}

        async def wait(name: str, call, delay: float) -> None:
            await trio.sleep(delay)
            results[name] = await call

        late = 0.01 if ctx.role == 1 else 0.0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait, "second", second, late)  # first to start, but at P1
            nursery.start_soon(wait, "first", first, 0.0)
        return [results["first"], results["second"]]

    assert all(r == [10, 20] for r in run(spmd(program)).results.values())


@pytest.mark.parametrize("sequential", [False, True])
def test_run_children_runs_steps_in_children_made_earlier_in_other_scopes(
    sequential: bool,
) -> None:
    """A child made for a later scope (:meth:`Context.child` with ``scope``) sends in that
    whole scope, whatever the scope its step runs in; :meth:`Context.run_children` runs it
    beside another step (rounds of the longest) and joins both."""

    async def program(ctx: Context) -> list[int]:
        with ctx.scope("p0.t0"):
            children = [ctx.child(), ctx.child("p0.t1")]
            got = await ctx.run_children(
                children, [lambda c: ping(c, 1), lambda c: ping(c, 2)])
        return [*got, ctx.clock]

    result = run_local(spmd(program), clock=trio.testing.MockClock(autojump_threshold=0),
                       sequential=sequential)
    assert all(r == [1, 2, 2 if sequential else 1] for r in result.results.values())
    stats = result.stats[0]
    assert stats.totals(scope="p0.t0.ping").messages_sent == 1
    assert stats.totals(scope="p0.t1.ping").messages_sent == 1
    assert stats.totals(scope="p0.t0.p0.t1").messages_sent == 0
