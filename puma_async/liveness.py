"""Liveness: heartbeats and dead-peer detection instead of receive deadlines.

A party waits for a message for as long as its sender is alive, however long that is: a
forward pass of a 7B layer on a small machine takes minutes, and a client may think for hours
between two tokens. What it must not do is wait for a peer that is gone. So peers show that
they are alive:

- a party sends a **heartbeat**, the empty frame ``b""`` (never a valid runtime frame: every
  frame holds at least one envelope), to each peer it has sent nothing to for
  ``heartbeat_interval`` seconds, until it has sent that peer its end of stream;
- a party declares a peer **dead** when it has heard nothing from it (no frame, no heartbeat,
  and where the transport can tell, not one byte of a large frame still arriving) for
  ``dead_after`` seconds, unless that peer has finished (sent its end of stream): its silence
  is then expected. The party fails with :class:`~puma_async.errors.PeerDisconnectedError`
  naming the peer ("P1 silent for 10 s").

So a peer that stops (crashed without closing its connections, frozen, cut off) is reported
within ``dead_after + heartbeat_interval`` seconds of the last thing heard from it (the
watchdog looks at least once per interval), plus however long our own event loop was busy;
a live peer is never reported, as long as no event loop (its or ours) runs for ``dead_after``
seconds without looking at its timers and I/O (Trio looks once per scheduler batch, after
every task that was ready has run its step; long local work runs in worker threads,
:mod:`puma_async.protocols.offload`).

**Our own stalls.** If our event loop was blocked (a long synchronous computation, a
suspended process), the watchdog wakes late; frames that arrived meanwhile have not been read
yet, so the time we were not looking is not the peer's silence. When the watchdog wakes more
than one interval late, every peer is credited with that lateness.

Shape: :class:`PeerMonitor` is the sans-IO core (pure state; the caller passes the time in).
:class:`LiveTransport` is the thin Trio layer, a transport wrapper that
:func:`~puma_async.runtime.open_party` puts directly over the network transport, under any
wrapper of the caller (recording), so that traces never hold heartbeats. :class:`StepTimer`
measures the longest synchronous stretch of an event loop (what must stay well below
``dead_after``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Sequence

import structlog
import trio

from puma_async.errors import PeerDisconnectedError, ProtocolError
from puma_async.roles import role_name
from puma_async.transports.base import DecodedTarget, Target, Transport

HEARTBEAT = b""
"""The heartbeat frame: empty, which no runtime frame is."""

log = structlog.get_logger("puma_async.liveness")


@dataclasses.dataclass(frozen=True)
class Liveness:
    """How peers show that they are alive: a heartbeat to a peer after ``heartbeat_interval``
    seconds of not sending it anything; a peer silent for ``dead_after`` seconds is dead.

    ``dead_after`` must be at least twice the interval, so that one late heartbeat is not a
    death.
    """

    heartbeat_interval: float = 1.0
    dead_after: float = 10.0

    def __post_init__(self) -> None:
        if not 0 < self.heartbeat_interval < math.inf:
            raise ValueError(
                f"heartbeat_interval must be a positive number of seconds, "
                f"got {self.heartbeat_interval}"
            )
        if not 2 * self.heartbeat_interval <= self.dead_after < math.inf:
            raise ValueError(
                f"dead_after must be finite and at least twice heartbeat_interval "
                f"({2 * self.heartbeat_interval:g} s), got {self.dead_after}"
            )


DEFAULT_LIVENESS = Liveness()
"""A heartbeat every second; a peer silent for 10 s is dead."""


@dataclasses.dataclass(frozen=True)
class Poll:
    """What the watchdog must do now (:meth:`PeerMonitor.poll`).

    ``heartbeats``: peers to send a heartbeat to now. ``dead``: (peer, seconds of silence)
    of the peers now declared dead. ``wake_at``: when to poll next. ``stall``: seconds the
    watchdog woke late and credited to every peer (0.0 if it was on time).
    """

    heartbeats: tuple[int, ...]
    dead: tuple[tuple[int, float], ...]
    wake_at: float
    stall: float


class PeerMonitor:
    """The liveness state of one party: when each peer was last heard and last sent to.

    Pure state: every method takes the current time (any monotonic clock in seconds) from
    the caller. Watched peers are those not finished; heartbeats go to peers whose stream we
    have not closed and to which no send is in progress.
    """

    def __init__(self, peers: Sequence[int], liveness: Liveness, now: float):
        self.liveness = liveness
        self.last_heard = dict.fromkeys(peers, now)
        self.last_sent = dict.fromkeys(peers, now)
        self.watched = set(peers)
        self.beating = set(peers)
        self._in_flight = dict.fromkeys(peers, 0)
        self._wake_at = now

    def heard(self, peer: int, now: float) -> None:
        """Something (a frame, a heartbeat, some bytes) arrived from ``peer``."""
        if now > self.last_heard[peer]:
            self.last_heard[peer] = now

    def sent(self, peer: int, now: float) -> None:
        """A frame to ``peer`` was handed over at once (no send in progress)."""
        if now > self.last_sent[peer]:
            self.last_sent[peer] = now

    def send_started(self, peer: int) -> None:
        """A send to ``peer`` that may take a while began (no heartbeat while it lasts)."""
        self._in_flight[peer] += 1

    def send_ended(self, peer: int, now: float) -> None:
        """A send begun with :meth:`send_started` ended (done or failed)."""
        self._in_flight[peer] -= 1
        self.sent(peer, now)

    def finished(self, peer: int) -> None:
        """``peer`` sent its end of stream: its silence from now on is expected."""
        self.watched.discard(peer)

    def closed(self, peer: int) -> None:
        """We sent ``peer`` our end of stream: it expects nothing more, heartbeats included."""
        self.beating.discard(peer)

    def poll(self, now: float) -> Poll:
        """Heartbeats due, peers dead, the next wake-up; credits our own stall first.

        Heartbeats returned are taken as sent at ``now``.
        """
        interval, dead_after = self.liveness.heartbeat_interval, self.liveness.dead_after
        stall = now - self._wake_at
        if stall > interval:  # we were not looking: that is not the peers' silence
            for peer, heard in self.last_heard.items():
                self.last_heard[peer] = min(heard + stall, now)
        else:
            stall = 0.0
        dead = tuple(
            (peer, now - self.last_heard[peer]) for peer in sorted(self.watched)
            if now - self.last_heard[peer] >= dead_after
        )
        heartbeats = tuple(
            peer for peer in sorted(self.beating)
            if not self._in_flight[peer] and now - self.last_sent[peer] >= interval
        )
        for peer in heartbeats:
            self.last_sent[peer] = now
        wake_at = now + interval  # at least once per interval: stalls, transport progress
        for peer in self.watched:
            deadline = self.last_heard[peer] + dead_after
            if now < deadline < wake_at:  # (a peer dead already is in ``dead`` now)
                wake_at = deadline
        for peer in self.beating:
            if not self._in_flight[peer]:
                wake_at = min(wake_at, self.last_sent[peer] + interval)
        if not self.watched and not self.beating:
            wake_at = math.inf
        self._wake_at = wake_at
        return Poll(heartbeats, dead, wake_at, stall)


class LiveTransport(Transport):
    """``inner`` with heartbeats and dead-peer detection (run :meth:`watch` beside it).

    Drops incoming heartbeats, notes whatever arrives from each peer and whatever is sent to
    it, and counts bytes of a frame still arriving where ``inner`` reports them
    (:meth:`Transport.last_received`). Made and run by
    :func:`~puma_async.runtime.open_party`.
    """

    def __init__(self, inner: Transport, liveness: Liveness):
        self.inner = inner
        self.role = inner.role
        self.peers = tuple(inner.peers)
        self.immediate = inner.immediate
        self.monitor = PeerMonitor(self.peers, liveness, trio.current_time())
        self._heard: set[int] = set()  # heard since the last poll (no clock read per frame)
        self._sent: set[int] = set()  # handed over at once since the last poll

    # -- the Transport interface ---------------------------------------------------------

    async def send(self, peer: int, frame: bytes) -> None:
        self.monitor.send_started(peer)
        try:
            await self.inner.send(peer, frame)
        finally:
            self.monitor.send_ended(peer, trio.current_time())

    def send_immediately(self, peer: int, frame: bytes) -> None:
        self.inner.send_immediately(peer, frame)
        self._sent.add(peer)

    def push_to(self, deliver: Target, fail: Callable[[ProtocolError], None]) -> bool:
        heard = self._heard.add
        monitor = self.monitor

        def on_frame(peer: int, frame: bytes | None) -> None:
            heard(peer)
            if frame is None:
                monitor.finished(peer)
            elif not frame:
                return  # a heartbeat
            deliver(peer, frame)

        return self.inner.push_to(on_frame, fail)

    def push_decoded_to(self, deliver: DecodedTarget) -> bool:
        heard = self._heard.add

        def on_item(peer: int, item: object) -> None:
            heard(peer)
            deliver(peer, item)

        return self.inner.push_decoded_to(on_item)

    def takes_decoded(self, peer: int) -> bool:
        return self.inner.takes_decoded(peer)

    def hand_over_decoded(self, peer: int, item: object) -> None:
        self.inner.hand_over_decoded(peer, item)
        self._sent.add(peer)

    async def receive(self) -> tuple[int, bytes | None]:
        while True:
            peer, frame = await self.inner.receive()
            self._heard.add(peer)
            if frame is None:
                self.monitor.finished(peer)
            if frame != HEARTBEAT:
                return peer, frame

    async def close_peer(self, peer: int) -> None:
        self.monitor.closed(peer)
        await self.inner.close_peer(peer)

    async def aclose(self) -> None:
        for peer in self.peers:
            self.monitor.closed(peer)
        await self.inner.aclose()

    def last_received(self, peer: int) -> float | None:
        return self.inner.last_received(peer)

    # -- the watchdog --------------------------------------------------------------------

    async def watch(self, on_dead: Callable[[ProtocolError], None]) -> None:
        """Send heartbeats and watch the peers until cancelled; ``on_dead(error)`` once a
        watched peer has been silent for ``dead_after`` seconds (then return)."""
        monitor = self.monitor
        async with trio.open_nursery() as sends:
            while True:
                now = trio.current_time()
                for peer in self._heard:
                    monitor.heard(peer, now)
                for peer in self._sent:
                    monitor.sent(peer, now)
                self._heard.clear()
                self._sent.clear()
                for peer in monitor.watched:
                    arrived = self.inner.last_received(peer)
                    if arrived is not None:
                        monitor.heard(peer, arrived)
                poll = monitor.poll(now)
                if poll.stall:
                    log.warning("event loop stalled", role=role_name(self.role),
                                seconds=round(poll.stall, 1))
                if poll.dead:
                    peer, silence = poll.dead[0]
                    on_dead(PeerDisconnectedError(
                        f"{role_name(peer)} silent for {silence:.3g} s (no data, no heartbeat)",
                        peer=peer,
                    ))
                    sends.cancel_scope.cancel()
                    return
                for peer in poll.heartbeats:
                    if self.immediate:
                        self._beat_now(peer)
                    else:
                        sends.start_soon(self._beat, peer)
                await trio.sleep_until(poll.wake_at)

    def _beat_now(self, peer: int) -> None:
        # A link that is gone is reported by the transport, not here.
        with contextlib.suppress(ProtocolError):
            self.inner.send_immediately(peer, HEARTBEAT)

    async def _beat(self, peer: int) -> None:
        self.monitor.send_started(peer)
        try:
            with contextlib.suppress(ProtocolError):
                await self.inner.send(peer, HEARTBEAT)
        finally:
            self.monitor.send_ended(peer, trio.current_time())


class StepTimer(trio.abc.Instrument):
    """A Trio instrument: how long the event loop went without looking for I/O and timers.

    ``longest_batch``: the longest time between two waits for I/O, in which every task that
    was ready ran its step; nothing (a heartbeat, a frame) moves in that time: this is what
    must stay below ``dead_after`` (the watchdog's timer is only looked at between batches,
    so many short steps ready together delay it as one long step does).
    ``longest_batch_cpu``: the most CPU time the loop thread spent in one batch: the loop's
    own work, whatever the host's load (a batch's wall time also counts the time the thread
    waited for a core or the GIL). ``longest_step``: the longest time one task ran without
    yielding (``longest_task``: its name): which task to look at. ``longest_late_wake``: the
    longest a wait for I/O overran its timeout (the loop thread did not get the CPU or the
    GIL back, e.g. from a worker thread holding it). With all roles on one loop a batch holds
    every role's ready steps: one party's own batches need a loop per role
    (:func:`~puma_async.runner.run_threaded`, one timer per role).
    Install it with ``trio.lowlevel.add_instrument`` or ``trio.run(..., instruments=[...])``.
    """

    def __init__(self) -> None:
        self._step_started = self._batch_started = self._wait_started = time.perf_counter()
        self._batch_cpu_started = time.thread_time()
        self._wait_timeout = 0.0
        self.restart()

    def restart(self) -> None:
        """Forget the figures so far (to measure one phase of a run)."""
        self.longest_step = 0.0
        self.longest_task = ""
        self.longest_batch = 0.0
        self.longest_batch_cpu = 0.0
        self.longest_late_wake = 0.0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._step_started = time.perf_counter()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        took = time.perf_counter() - self._step_started
        if took > self.longest_step:
            self.longest_step = took
            self.longest_task = task.name

    def before_io_wait(self, timeout: float) -> None:
        self._wait_started = time.perf_counter()
        self._wait_timeout = timeout
        self.longest_batch = max(self.longest_batch, self._wait_started - self._batch_started)
        self.longest_batch_cpu = max(self.longest_batch_cpu,
                                     time.thread_time() - self._batch_cpu_started)

    def after_io_wait(self, timeout: float) -> None:
        self._batch_started = time.perf_counter()
        self._batch_cpu_started = time.thread_time()
        late = self._batch_started - self._wait_started - self._wait_timeout
        self.longest_late_wake = max(self.longest_late_wake, late)
