"""A party's statistics of the moment (what it waits for, what is queued), and their log line
when a session fails."""

from __future__ import annotations

import numpy as np
import structlog
import trio
import trio.testing

from puma_async.context import ArraySpec, Context
from puma_async.errors import PeerDisconnectedError, ProtocolError
from puma_async.roles import PARTIES
from puma_async.runtime import PartyOptions, run_party
from puma_async.transports.base import Transport
from puma_async.transports.memory import open_memory_network

SESSION = b"diagnosis-test!!"
ONE = np.ones(1, np.uint64)


def test_statistics_show_the_receives_waiting_by_peer_and_step(spmd) -> None:
    released = trio.Event()
    seen = []

    async def program(ctx: Context) -> None:
        async def from_peer(peer: int):
            async def step(c: Context) -> None:
                if ctx.role == 0:
                    await c.recv_array(peer, ArraySpec.ring(1))
                elif ctx.role == peer:
                    await released.wait()
                    await c.send_arrays(0, ONE)

            return step

        async def watch(c: Context) -> None:
            if ctx.role == 0:
                await trio.testing.wait_all_tasks_blocked()
                seen.append(ctx.runtime.statistics())
                released.set()

        await ctx.gather(await from_peer(2), await from_peer(1), watch)

    spmd(program)
    (stats,) = seen
    assert stats.role == 0
    assert stats.mailbox.waiting == ((1, (1,), 0), (2, (0,), 0))
    assert all(o.frames == o.sending == 0 for o in stats.outboxes)
    assert stats.describe() == ("P0: 2 receive(s) waiting: P1 at step 1 seq 0, "
                                "P2 at step 0 seq 0")


class _Gated(Transport):
    """``inner`` behind a writer task (not immediate) whose sends wait for ``gate``."""

    def __init__(self, inner: Transport, gate: trio.Event):
        self.inner, self.gate = inner, gate
        self.role, self.peers = inner.role, inner.peers

    async def send(self, peer: int, frame: bytes) -> None:
        await self.gate.wait()
        await self.inner.send(peer, frame)

    def push_to(self, deliver, fail) -> bool:  # type: ignore[no-untyped-def]
        return self.inner.push_to(deliver, fail)

    async def receive(self) -> tuple[int, bytes | None]:
        return await self.inner.receive()

    async def close_peer(self, peer: int) -> None:
        await self.inner.close_peer(peer)


def test_statistics_show_the_frames_queued_per_peer(spmd) -> None:
    gate = trio.Event()
    seen = []

    async def program(ctx: Context) -> int:
        if ctx.role == 0:
            await ctx.send_arrays(1, ONE)  # the writer takes it and waits at the gate
            await trio.testing.wait_all_tasks_blocked()
            await ctx.send_arrays(1, ONE * 2)
            await ctx.send_arrays(1, np.zeros(100, np.uint64))
            seen.append(ctx.runtime.statistics())
            gate.set()
            return 0
        total = 0
        if ctx.role == 1:
            for _ in range(3):
                total += int((await ctx.recv_array(0, ArraySpec.ring([None]))).sum())
        return total

    run = spmd(program, wrap_transport=lambda t: _Gated(t, gate))
    assert run.results[1] == 3
    (stats,) = seen
    to_p1, to_p2 = stats.outboxes
    assert (to_p1.peer, to_p1.frames) == (1, 2) and to_p1.bytes > 800 and to_p1.sending > 0
    assert (to_p2.peer, to_p2.frames, to_p2.bytes, to_p2.sending) == (2, 0, 0, 0)
    assert f"queued: to P1 2 frame(s), {to_p1.bytes} B (sending {to_p1.sending} B)" in (
        stats.describe())


def test_a_dead_peer_is_logged_with_what_each_party_waited_for() -> None:
    """P2 freezes: P0 and P1, each waiting for it, log their state before failing."""
    errors: dict[int, BaseException] = {}

    async def main() -> None:
        async with open_memory_network(PARTIES) as network:

            async def program(ctx: Context) -> None:
                if ctx.role == 2:
                    network.freeze(2)  # it waits in vain too, and fails naming P0 or P1
                await ctx.recv_array(2 if ctx.role != 2 else 0, ArraySpec.ring(1))

            async def role(r: int) -> None:
                try:
                    await run_party(program, network.endpoint(r), PartyOptions(SESSION))
                except ProtocolError as exc:
                    errors[r] = exc

            async with trio.open_nursery() as nursery:
                for r in PARTIES:
                    nursery.start_soon(role, r)

    with structlog.testing.capture_logs() as logs:
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert all(isinstance(errors[r], PeerDisconnectedError) for r in (0, 1))
    failing = {e["role"]: e for e in logs if e["event"] == "session failing"}
    for name in ("P0", "P1"):
        assert "P2 silent for" in failing[name]["error"]
        assert failing[name]["state"] == (
            f"{name}: 1 receive(s) waiting: P2 at step <root> seq 0")
