"""In-memory transport: all roles in one process over Trio memory channels.

Optional emulation of a network link (per direction): one-way ``latency`` in seconds and
``bandwidth`` in bytes per second, with frames serialised on the link as on a real wire. With
both left at zero frames are handed over directly, which is what tests and
``python -m puma_async.local`` use; benchmarks set them to show round overlapping, on
:class:`OnTimeClock` (an emulated frame arrives when it is due, as a real one would, not up
to a millisecond later).

Direct links also take decoded messages (:meth:`~.base.Transport.takes_decoded`): the party
runtime hands an array message to a peer in this loop as the peer would decode it, with its
exact frame size counted (:func:`puma_async.codec.detached`), and no frame is made: a new
SmolLM2 token's ~6,100 array messages in one process cost 0.05-0.10 s less of the event
loop's CPU (of ~1 s) that way (``python benchmarks/token_time.py``, README).

:meth:`MemoryNetwork.freeze` is a test hook: a role that stops dead without closing its links
(a frozen or unplugged machine), which only the peers' liveness watchdogs can notice.
"""

from __future__ import annotations

import abc
import functools
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import trio
import trio.abc

from puma_async.errors import PeerDisconnectedError, ProtocolError
from puma_async.transports.base import DecodedTarget, Target, Transport, drain

_Item = tuple[int, bytes | None]


class _Link:
    """One direction between two roles. ``put(sender, frame)`` hands a frame to the receiver's
    current target at once, or (emulated) after serialisation and latency, FIFO."""

    def __init__(self, latency: float, bandwidth: float, target: Target):
        self.latency = latency
        self.bandwidth = bandwidth
        self.free_at = 0.0
        self.emulated = latency > 0 or bandwidth > 0
        self.pending_send, self.pending_receive = trio.open_memory_channel[
            tuple[float, _Item]
        ](math.inf)
        self.target = target
        self.put: Target = self._schedule if self.emulated else target
        self.frozen = False

    def retarget(self, target: Target) -> None:
        """Deliver to ``target`` from now on."""
        if self.frozen:
            return
        self.target = target
        if not self.emulated:
            self.put = target  # direct links call the receiver's target with no hop between

    def freeze(self) -> None:
        """Drop every frame from now on (those in flight too), as a cut cable would."""
        self.frozen = True
        self.put = self.target = _drop

    def _schedule(self, sender: int, frame: bytes | None) -> None:
        now = trio.current_time()
        size = len(frame) if frame is not None else 0
        start = max(now, self.free_at)
        self.free_at = start + (size / self.bandwidth if self.bandwidth > 0 else 0.0)
        self.pending_send.send_nowait((self.free_at + self.latency, (sender, frame)))

    async def deliver(self) -> None:
        async for deliver_at, (sender, frame) in self.pending_receive:
            await trio.sleep_until(deliver_at)
            self.target(sender, frame)


class OnTimeClock(trio.abc.Clock):
    """Trio's system clock, but timers fire on time: for emulated links, whose frames are
    timers.

    Trio sleeps in ``epoll_wait``, whose timeout is whole milliseconds rounded up, so a timer
    fires up to 1 ms late (measured: a 10 ms ``sleep_until`` wakes a median 0.3 ms late on a
    quiet 2-core host). A frame from a real network wakes the loop as soon as it arrives; an
    emulated one should too, or every round of a latency run costs that lateness as well
    (~0.4 s per SmolLM2 token at 1,271 rounds). So the loop sleeps until a millisecond before
    the next timer and polls (no sleep) for the rest: it spins at most 1 ms per timer, and only
    while nothing else is ready. Measured the same way: median 0.09 ms late.
    """

    SPIN = 1e-3
    """The last stretch before a timer, in seconds, polled instead of slept."""

    def start_clock(self) -> None:
        """Nothing to start: the clock is ``time.perf_counter``."""

    def current_time(self) -> float:
        return time.perf_counter()

    def deadline_to_sleep_time(self, deadline: float) -> float:
        return max(0.0, deadline - time.perf_counter() - self.SPIN)


def _drop(sender: int, frame: bytes | None) -> None:
    """Where a frozen link's frames go."""


class InProcessTransport(Transport):
    """What the in-process transports share: frames are handed over at once (no waiting),
    and each link to a peer is closed once. Subclasses say how a frame is handed over."""

    immediate = True

    def __init__(self, role: int, peers: Sequence[int]):
        self.role = role
        self.peers = tuple(peers)
        self._closed: set[int] = set()

    @abc.abstractmethod
    def hand_over(self, peer: int, frame: bytes | None) -> None:
        """Deliver ``frame`` (None: we have finished) to ``peer`` without waiting."""

    async def send(self, peer: int, frame: bytes) -> None:
        self.send_immediately(peer, frame)
        await trio.lowlevel.checkpoint()

    def send_immediately(self, peer: int, frame: bytes) -> None:
        if peer in self._closed:
            raise PeerDisconnectedError("send after the link was closed", peer=peer)
        self.hand_over(peer, frame)

    async def close_peer(self, peer: int) -> None:
        if peer not in self._closed:
            self._closed.add(peer)
            self.hand_over(peer, None)
        await trio.lowlevel.checkpoint()


class MemoryTransport(InProcessTransport):
    """One role's endpoint of a :class:`MemoryNetwork`."""

    def __init__(self, role: int, peers: Sequence[int], network: MemoryNetwork):
        super().__init__(role, peers)
        self._network = network
        self._links = {peer: network.links[(role, peer)] for peer in self.peers}

    def hand_over(self, peer: int, frame: bytes | None) -> None:
        self._links[peer].put(self.role, frame)

    async def receive(self) -> tuple[int, bytes | None]:
        return await self._network.inboxes_receive[self.role].receive()

    def push_to(self, deliver: Target, fail: Callable[[ProtocolError], None]) -> bool:
        self._network.push_to(self.role, deliver)
        return True

    def push_decoded_to(self, deliver: DecodedTarget) -> bool:
        self._network.decoded[self.role] = deliver
        return True

    def takes_decoded(self, peer: int) -> bool:
        link = self._links.get(peer)
        return link is not None and not link.emulated and peer in self._network.decoded

    def hand_over_decoded(self, peer: int, item: object) -> None:
        if peer in self._closed:
            raise PeerDisconnectedError("send after the link was closed", peer=peer)
        if not self._links[peer].frozen:  # a frozen link drops it, as it drops frames
            self._network.decoded[peer](self.role, item)


class MemoryNetwork:
    """Fully connected roles in one process; use :func:`open_memory_network`."""

    def __init__(self, roles: Sequence[int], latency: float, bandwidth: float):
        self.roles = tuple(roles)
        self.inboxes_send: dict[int, trio.MemorySendChannel[_Item]] = {}
        self.inboxes_receive: dict[int, trio.MemoryReceiveChannel[_Item]] = {}
        for role in self.roles:
            self.inboxes_send[role], self.inboxes_receive[role] = trio.open_memory_channel[
                _Item
            ](math.inf)
        self.links = {
            (a, b): _Link(latency, bandwidth, functools.partial(self._queue, b))
            for a in self.roles for b in self.roles if a != b
        }
        self.decoded: dict[int, DecodedTarget] = {}
        """Where each role that takes decoded messages has them delivered."""

    def _queue(self, receiver: int, sender: int, frame: bytes | None) -> None:
        """Until ``receiver`` asks for pushed frames, they wait in its inbox."""
        self.inboxes_send[receiver].send_nowait((sender, frame))

    def push_to(self, role: int, deliver: Target) -> None:
        """From now on call ``deliver`` for ``role``'s frames (after what is queued)."""
        drain(self.inboxes_receive[role], lambda item: deliver(*item))
        for (_, receiver), link in self.links.items():
            if receiver == role:
                link.retarget(deliver)

    def freeze(self, role: int) -> None:
        """Test hook: ``role`` stops dead. Nothing it sends arrives and nothing reaches it,
        but its links stay open (no end of stream, no error): as a frozen process, to which
        only the peers' liveness watchdogs can react."""
        for (sender, receiver), link in self.links.items():
            if role in (sender, receiver):
                link.freeze()

    def endpoint(self, role: int) -> MemoryTransport:
        return MemoryTransport(role, [r for r in self.roles if r != role], self)


@asynccontextmanager
async def open_memory_network(
    roles: Sequence[int], *, latency: float = 0.0, bandwidth: float = 0.0
) -> AsyncIterator[MemoryNetwork]:
    """A fully connected in-memory network of ``roles``; emulated links run in a nursery."""
    network = MemoryNetwork(roles, latency, bandwidth)
    async with trio.open_nursery() as nursery:
        if latency > 0 or bandwidth > 0:
            for link in network.links.values():
                nursery.start_soon(link.deliver)
        yield network
        nursery.cancel_scope.cancel()
