"""Liveness, not deadlines: heartbeats, dead peers, slow live peers, sessions of hours.

The in-process tests run on Trio's MockClock (virtual time, autojump), so bounds are asserted
exactly and nothing depends on the machine's speed. The TCP tests at the end use real
processes, signals and real time (marked ``system``): generous bounds, never a lower one tighter
than the configured ``dead_after``.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from puma_async.context import ArraySpec, Context
from puma_async.errors import PeerAbortedError, PeerDisconnectedError
from puma_async.liveness import (
    DEFAULT_LIVENESS,
    HEARTBEAT,
    Liveness,
    LiveTransport,
    PeerMonitor,
    StepTimer,
)
from puma_async.model import random_weights, tiny_config
from puma_async.roles import ALL_ROLES, CLIENT, MODEL_OWNER, PARTIES, next_party, prev_party
from puma_async.runner import run_local
from puma_async.runtime import PartyOptions, run_party
from puma_async.session import Progress, in_process_settings
from puma_async.session.factory import build_program
from puma_async.trace.format import read_trace
from puma_async.trace.recorder import RecordingTransport
from puma_async.transports.base import Transport
from puma_async.transports.framing import HEADER_BYTES, FrameReader
from puma_async.transports.memory import open_memory_network

INTERVAL = DEFAULT_LIVENESS.heartbeat_interval
DEAD_AFTER = DEFAULT_LIVENESS.dead_after
HOUR = 3600.0


def mock_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


# ----------------------------------------------------------------------------- the sans-IO core


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="heartbeat_interval"):
        Liveness(heartbeat_interval=0)
    with pytest.raises(ValueError, match="twice heartbeat_interval"):
        Liveness(heartbeat_interval=1.0, dead_after=1.5)
    with pytest.raises(ValueError, match="dead_after"):
        Liveness(dead_after=math.inf)


def test_heartbeat_only_to_peers_not_sent_to_for_an_interval() -> None:
    monitor = PeerMonitor([1, 2, 3], Liveness(1.0, 10.0), now=0.0)
    first = monitor.poll(0.5)
    assert first.heartbeats == () and first.wake_at == 1.0
    monitor.sent(1, 0.8)
    monitor.send_started(2)  # a long send in progress: no heartbeat behind it
    monitor.closed(3)  # we ended our stream to 3: it expects nothing more
    assert monitor.poll(1.0).heartbeats == ()
    assert monitor.poll(1.8).heartbeats == (1,)
    monitor.send_ended(2, 5.0)
    assert monitor.poll(6.0).heartbeats == (1, 2)


def test_a_silent_peer_is_dead_after_dead_after_unless_it_finished() -> None:
    monitor = PeerMonitor([0, 1, 2], Liveness(1.0, 10.0), now=0.0)
    monitor.finished(2)  # silence after its end of stream is expected
    now = 0.0
    while not (poll := monitor.poll(now)).dead:
        assert now < 10.0
        if now <= 4.0:
            monitor.heard(1, now)
        now = poll.wake_at
    assert now == 10.0  # woken exactly at P0's deadline
    assert poll.dead == ((0, 10.0),)
    assert [len(monitor.poll(t).dead) for t in (11.0, 12.0, 13.0, 14.0)] == [1, 1, 1, 2]
    assert monitor.poll(15.0).dead == ((0, 15.0), (1, 11.0))


def test_our_own_stall_is_not_the_peers_silence() -> None:
    monitor = PeerMonitor([1], Liveness(1.0, 10.0), now=0.0)
    monitor.heard(1, 5.0)
    assert monitor.poll(5.0).wake_at == 6.0
    late = monitor.poll(36.0)  # the loop was blocked for 30 s: the frames are not read yet
    assert late.stall == 30.0 and late.dead == ()
    assert monitor.last_heard[1] == 35.0
    # The silence before and after the stall still counts: dead 10 s after 5 s + 30 s.
    now = late.wake_at
    while not (poll := monitor.poll(now)).dead:
        assert poll.stall == 0.0
        now = poll.wake_at
    assert now == 45.0


def test_nothing_to_watch_sleeps_until_woken() -> None:
    monitor = PeerMonitor([1], Liveness(1.0, 10.0), now=0.0)
    monitor.finished(1)
    monitor.closed(1)
    assert monitor.poll(3.0).wake_at == math.inf


@settings(deadline=None)
@given(
    gaps=st.lists(st.floats(0.01, 5.99), min_size=1, max_size=50),
    lateness=st.lists(st.floats(0.0, 40.0), min_size=1, max_size=30),
)
def test_a_peer_heard_every_few_seconds_is_never_dead_however_late_we_are(
    gaps: list[float], lateness: list[float]
) -> None:
    """The peer's frames arrive on its own schedule (at most dead_after - 4 intervals apart);
    our watchdog wakes late by any amount, and the frames that arrived since its previous
    wake-up are read only after it looked (the reader is behind it in the batch). The peer
    is never declared dead."""
    monitor = PeerMonitor([1], Liveness(1.0, 10.0), now=0.0)
    arrival, previous, now = 0.0, 0.0, 0.0
    for i, late in enumerate(lateness * 4):
        read = False
        while arrival <= previous:  # read by the reader after the previous poll
            read = True
            arrival += gaps[i % len(gaps)]
        if read:
            monitor.heard(1, now)
        poll = monitor.poll(now)
        assert poll.dead == ()
        previous, now = now, poll.wake_at + late


def test_step_timer_measures_the_longest_synchronous_stretch() -> None:
    timer = StepTimer()

    async def main() -> None:
        await trio.sleep(0)
        time.sleep(0.05)  # blocks the event loop, as a long computation on it would
        await trio.sleep(0)

    trio.run(main, instruments=[timer])
    assert timer.longest_step >= 0.05 and timer.longest_batch >= 0.05
    assert timer.longest_task.endswith("main")
    assert timer.longest_batch_cpu < 0.04  # a thread that sleeps does no work


def test_step_timer_measures_the_loop_threads_cpu_in_one_batch() -> None:
    timer = StepTimer()

    async def busy() -> None:
        await trio.sleep(0)
        started = time.thread_time()
        while time.thread_time() - started < 0.05:  # a long computation on the loop
            pass

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(3):  # ready together: one batch of three steps of 50 ms
                nursery.start_soon(busy)

    trio.run(main, instruments=[timer])
    # the three steps' CPU in one batch (wall times also count waits for a busy host's cores)
    assert timer.longest_batch_cpu >= 0.15 and timer.longest_batch >= 0.15


# ----------------------------------------------------------------------------- in one process


async def _ring_once(ctx: Context) -> int:
    await ctx.send_arrays(next_party(ctx.role), np.full(2, ctx.role, np.uint64))
    return int((await ctx.recv_array(prev_party(ctx.role), ArraySpec.ring(2)))[0])


def test_a_slow_live_peer_is_never_declared_dead() -> None:
    """P1's pass takes half an hour (its loop stays alive): everyone waits, nobody is dead."""

    async def program(ctx: Context) -> int:
        if ctx.role == 1:
            await trio.sleep(HOUR / 2)  # stands for local work in worker threads
        return await _ring_once(ctx)

    clock = mock_clock()
    run = run_local({p: program for p in PARTIES}, clock=clock)
    assert run.results == {0: 2, 1: 0, 2: 1}
    assert clock.current_time() >= HOUR / 2


def test_a_stall_of_our_whole_event_loop_kills_nobody() -> None:
    """Every role's event loop stops for a minute at once (one process, one loop): every
    watchdog wakes a minute late, and that minute is nobody's silence."""

    async def program(ctx: Context) -> int:
        if ctx.role == 0:
            await trio.sleep(5)
            clock.jump(60)  # synchronously: no task runs while virtual time moves on
        return await _ring_once(ctx)

    clock = mock_clock()
    assert run_local({p: program for p in PARTIES}, clock=clock).results == {0: 2, 1: 0, 2: 1}


class _Thinking(Transport):
    """The client's link, with a client that thinks ``seconds`` before each frame to P0 after
    the first (its part of the set-up)."""

    def __init__(self, inner: Transport, seconds: float):
        self.inner, self.seconds = inner, seconds
        self.role, self.peers = inner.role, inner.peers
        self.frames_to_p0 = 0

    async def send(self, peer: int, frame: bytes) -> None:
        if peer == PARTIES[0]:
            if self.frames_to_p0:
                await trio.sleep(self.seconds)
            self.frames_to_p0 += 1
        await self.inner.send(peer, frame)

    async def receive(self) -> tuple[int, bytes | None]:
        return await self.inner.receive()

    async def close_peer(self, peer: int) -> None:
        await self.inner.close_peer(peer)


def test_a_session_of_hours_survives(tiny_session, tmp_path: Path) -> None:
    """Tiny model on virtual time: the client thinks for an hour before each of its frames to
    P0 after the set-up, so the set-up ends hours before the last token and the model owner,
    finished after the set-up, waits all that time. Nothing times out, results are those of
    a quick session, and the traces (recorded above the heartbeats) hold no heartbeat.
    Heartbeats every minute, a peer dead after ten: hours of virtual time stay cheap, and the
    wait is still six times ``dead_after``."""
    quick = tiny_session()
    events: list[tuple[str, float]] = []

    def progress(event: Progress) -> None:
        events.append((event.kind, trio.current_time()))

    def wrap(transport: Transport) -> Transport:
        recorded = RecordingTransport(transport, tmp_path / f"{transport.role}.trace", {},
                                      session=b"s" * 16)
        return _Thinking(recorded, HOUR) if transport.role == CLIENT else recorded

    slow = tiny_session(session=b"s" * 16, progress=progress, wrap_transport=wrap,
                        liveness=Liveness(heartbeat_interval=60.0, dead_after=600.0))
    assert [p.tokens for p in slow.prompts] == [p.tokens for p in quick.prompts]
    for fast_prompt, slow_prompt in zip(quick.prompts, slow.prompts, strict=True):
        for a, b in zip(fast_prompt.records, slow_prompt.records, strict=True):
            np.testing.assert_array_equal(a.logits, b.logits)
    (setup_done,) = [t for kind, t in events if kind == "setup"]
    last_token = events[-1][1]
    assert last_token - setup_done >= 2 * HOUR
    for role in ALL_ROLES:
        _, records = read_trace(tmp_path / f"{role}.trace")
        sizes = [r.size for r in records if r.event == "frame"]
        assert sizes and min(sizes) > len(HEARTBEAT)


def test_a_peer_that_stops_dead_mid_pass_is_reported_by_everyone() -> None:
    """P1 freezes during the first new token's pass, its links left open (no end of stream,
    no error): every other role, the model owner that finished long before included, fails
    within dead_after + one interval, naming P1."""
    settings = in_process_settings(tiny_config(), 4)
    weights = random_weights(settings.config, seed=1)
    latency = 0.001
    token_started = trio.Event()

    def progress(event: Progress) -> None:
        if event.kind == "token" and event.step == 0:
            token_started.set()

    programs = {p: build_program(settings, p) for p in PARTIES}
    programs[MODEL_OWNER] = build_program(settings, MODEL_OWNER, weights=weights)
    programs[CLIENT] = build_program(settings, CLIENT, prompts=[[1, 2, 3]], progress=progress)
    errors: dict[int, tuple[BaseException, float]] = {}
    frozen_at = math.nan

    async def main() -> None:
        nonlocal frozen_at
        session = settings.session
        async with open_memory_network(ALL_ROLES, latency=latency) as network:

            async def role(r: int) -> None:
                try:
                    await run_party(programs[r], network.endpoint(r), PartyOptions(session))
                except Exception as exc:
                    errors[r] = (exc, trio.current_time())

            async def freeze() -> None:
                nonlocal frozen_at
                await token_started.wait()
                await trio.sleep(100 * latency)  # well inside the pass of the next token
                network.freeze(1)
                frozen_at = trio.current_time()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(freeze)
                for r in ALL_ROLES:
                    nursery.start_soon(role, r)

    trio.run(main, clock=mock_clock())
    assert set(errors) == set(ALL_ROLES)
    for r in ALL_ROLES:
        if r == 1:
            continue
        error, when = errors[r]
        assert frozen_at + DEAD_AFTER - INTERVAL <= when <= frozen_at + DEAD_AFTER + INTERVAL
        if isinstance(error, PeerDisconnectedError):
            assert error.peer == 1, error
        else:  # a peer that noticed first told us why it stopped
            assert isinstance(error, PeerAbortedError), error
        assert "P1 silent for" in str(error)


class _Trickle(Transport):
    """A link on which one large frame from peer 1 arrives byte by byte, never completing
    until ``stop`` (only :meth:`last_received` shows it); nothing else moves."""

    def __init__(self) -> None:
        self.role, self.peers = 0, (1,)
        self.arrived = 0.0
        self.sent: list[bytes] = []

    async def send(self, peer: int, frame: bytes) -> None:
        self.sent.append(frame)

    async def receive(self) -> tuple[int, bytes | None]:
        await trio.sleep_forever()
        raise AssertionError

    async def close_peer(self, peer: int) -> None:
        pass

    def last_received(self, peer: int) -> float | None:
        return self.arrived


def test_bytes_of_a_frame_still_arriving_are_signs_of_life() -> None:
    """No frame completes for a minute, but bytes keep arriving: alive. Once they stop, the
    peer is dead after dead_after."""
    dead: list[tuple[float, str]] = []

    async def main() -> None:
        trickle = _Trickle()
        live = LiveTransport(trickle, DEFAULT_LIVENESS)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(live.watch, lambda error: dead.append(
                (trio.current_time(), str(error))))
            for _ in range(600):  # a minute of trickling, 0.1 s apart
                await trio.sleep(0.1)
                trickle.arrived = trio.current_time()
            stopped = trio.current_time()
            await trio.sleep(DEAD_AFTER + 2 * INTERVAL)
            nursery.cancel_scope.cancel()
        assert [when - stopped for when, _ in dead] == [pytest.approx(DEAD_AFTER)]
        assert "P1 silent for 10 s" in dead[0][1]
        assert set(trickle.sent) == {HEARTBEAT} and len(trickle.sent) >= 60

    trio.run(main, clock=mock_clock())


@pytest.mark.system
async def test_tcp_reader_notes_bytes_of_an_unfinished_frame() -> None:
    """The TCP reader's hook: every chunk of a large frame moves ``last_data``, long before
    the frame is whole."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    client = await trio.open_tcp_stream("127.0.0.1", listeners[0].socket.getsockname()[1])
    server = await listeners[0].accept()
    reader = FrameReader(server)
    size = 1 << 22
    got: list[bytes] = []
    async with trio.open_nursery() as nursery:

        async def read() -> None:
            assert await reader.read_length() == size
            got.append(await reader.read_exactly(size))

        nursery.start_soon(read)
        await client.send_all(size.to_bytes(HEADER_BYTES, "little"))
        for _ in range(4):
            before = reader.last_data
            await trio.sleep(0.01)  # the clock moves on: a later chunk has a later time
            await client.send_all(bytes(1 << 16))
            with trio.fail_after(SYSTEM_GUARD):
                while reader.last_data == before:
                    await trio.sleep(0.001)
            assert not got
        await client.send_all(bytes(size - 4 * (1 << 16)))
    assert len(got[0]) == size
    for resource in (client, server, *listeners):
        await resource.aclose()


# ----------------------------------------------------------------------------- over TCP

RING_DEAD_AFTER = 2.0
RING_INTERVAL = RING_DEAD_AFTER / 4  # what tests/support/tcp_ring.py configures
SYSTEM_BOUND = 30.0
"""Real time allowed for a report that takes dead_after + one interval on an idle machine."""
SYSTEM_GUARD = 120.0


def _start_ring(script: Path, ports: list[int], dead_after: float
                ) -> dict[int, subprocess.Popen[str]]:
    return {
        role: subprocess.Popen(
            [sys.executable, os.fspath(script), str(role), str(dead_after), *map(str, ports)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for role in PARTIES
    }


def _wait_running(procs: dict[int, subprocess.Popen[str]]) -> None:
    for proc in procs.values():
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "running", proc.stderr


@pytest.fixture
def ring(processes) -> Iterator[dict[int, subprocess.Popen[str]]]:
    """P0, P1, P2 passing a counter around over plain loopback TCP, all running."""
    procs = _start_ring(processes.script("tcp_ring"), processes.free_ports(len(PARTIES)),
                        RING_DEAD_AFTER)
    try:
        _wait_running(procs)
        yield procs
    finally:
        for proc in procs.values():
            proc.kill()  # SIGKILL ends a stopped process too
            proc.communicate(timeout=SYSTEM_GUARD)


def _outcome(proc: subprocess.Popen[str]) -> tuple[int, str]:
    _, err = proc.communicate(timeout=SYSTEM_GUARD)
    return proc.returncode, err


@pytest.mark.system
def test_a_frozen_process_is_reported_within_the_bound(
    ring: dict[int, subprocess.Popen[str]],
) -> None:
    """SIGSTOP P1: its sockets stay open and silent. P0 and P2 fail naming it, not before
    ``dead_after`` (less the interval of its last heartbeat) and well within the bound."""
    stopped = time.monotonic()
    ring[1].send_signal(signal.SIGSTOP)
    for role in (0, 2):
        code, err = _outcome(ring[role])
        elapsed = time.monotonic() - stopped
        assert code == 1, err
        assert "P1 silent for" in err, err
        assert elapsed >= RING_DEAD_AFTER - RING_INTERVAL
        assert elapsed <= SYSTEM_BOUND, err


@pytest.mark.system
def test_a_killed_process_is_reported_at_once(ring: dict[int, subprocess.Popen[str]]) -> None:
    """SIGKILL P1: the kernel closes its connections, so P0 and P2 fail without waiting for
    its silence, naming it."""
    killed = time.monotonic()
    ring[1].kill()
    for role in (0, 2):
        code, err = _outcome(ring[role])
        assert code == 1, err
        assert "PeerDisconnectedError" in err or "PeerAbortedError" in err, err
        assert "peer P1" in err, err
        assert time.monotonic() - killed <= SYSTEM_BOUND, err
