"""In-memory transport: all roles in one process over Trio memory channels.

Optional emulation of a network link (per direction): one-way ``latency`` in seconds and
``bandwidth`` in bytes per second, with frames serialised on the link as on a real wire. With
both left at zero frames are handed over directly, which is what tests and
``python -m puma_async.local`` use; benchmarks set them to show round overlapping.
"""

from __future__ import annotations

import abc
import functools
import math
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import trio

from puma_async.errors import PeerDisconnectedError, ProtocolError
from puma_async.transports.base import Transport, drain

_Item = tuple[int, bytes | None]


class _Link:
    """One direction between two roles: FIFO delivery after emulated serialisation + latency."""

    def __init__(self, latency: float, bandwidth: float, deliver: Callable[[_Item], None]):
        self.latency = latency
        self.bandwidth = bandwidth
        self.deliver_now = deliver
        self.free_at = 0.0
        self.emulated = latency > 0 or bandwidth > 0
        self.pending_send, self.pending_receive = trio.open_memory_channel[
            tuple[float, _Item]
        ](math.inf)

    def schedule(self, item: _Item) -> None:
        now = trio.current_time()
        size = len(item[1]) if item[1] is not None else 0
        start = max(now, self.free_at)
        self.free_at = start + (size / self.bandwidth if self.bandwidth > 0 else 0.0)
        self.pending_send.send_nowait((self.free_at + self.latency, item))

    async def deliver(self) -> None:
        async for deliver_at, item in self.pending_receive:
            await trio.sleep_until(deliver_at)
            self.deliver_now(item)


class InProcessTransport(Transport):
    """What the in-process transports share: frames are handed over at once (no waiting),
    and each link to a peer is closed once. Subclasses say how an item is handed over."""

    immediate = True

    def __init__(self, role: int, peers: Sequence[int]):
        self.role = role
        self.peers = tuple(peers)
        self._closed: set[int] = set()

    @abc.abstractmethod
    def hand_over(self, peer: int, item: _Item) -> None:
        """Deliver ``item`` (our role, frame or None) to ``peer`` without waiting."""

    async def send(self, peer: int, frame: bytes) -> None:
        self.send_immediately(peer, frame)
        await trio.lowlevel.checkpoint()

    def send_immediately(self, peer: int, frame: bytes) -> None:
        if peer in self._closed:
            raise PeerDisconnectedError("send after the link was closed", peer=peer)
        self.hand_over(peer, (self.role, frame))

    async def close_peer(self, peer: int) -> None:
        if peer not in self._closed:
            self._closed.add(peer)
            self.hand_over(peer, (self.role, None))
        await trio.lowlevel.checkpoint()


class MemoryTransport(InProcessTransport):
    """One role's endpoint of a :class:`MemoryNetwork`."""

    def __init__(self, role: int, peers: Sequence[int], network: MemoryNetwork):
        super().__init__(role, peers)
        self._network = network

    def hand_over(self, peer: int, item: _Item) -> None:
        self._network.put(self.role, peer, item)

    async def receive(self) -> tuple[int, bytes | None]:
        return await self._network.inboxes_receive[self.role].receive()

    def push_to(
        self, deliver: Callable[[int, bytes | None], None], fail: Callable[[ProtocolError], None]
    ) -> bool:
        self._network.push_to(self.role, deliver)
        return True


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
        self.receivers: dict[int, Callable[[int, bytes | None], None]] = {}
        self.links = {
            (a, b): _Link(latency, bandwidth, functools.partial(self.deliver, b))
            for a in self.roles for b in self.roles if a != b
        }

    def deliver(self, receiver: int, item: _Item) -> None:
        """Hand ``item`` to ``receiver``: to its pushed-to callback, else into its inbox."""
        callback = self.receivers.get(receiver)
        if callback is None:
            self.inboxes_send[receiver].send_nowait(item)
        else:
            callback(*item)

    def push_to(self, role: int, deliver: Callable[[int, bytes | None], None]) -> None:
        """From now on call ``deliver`` for ``role``'s frames (after what is queued)."""
        drain(self.inboxes_receive[role], lambda item: deliver(*item))
        self.receivers[role] = deliver

    def put(self, sender: int, receiver: int, item: _Item) -> None:
        link = self.links[(sender, receiver)]
        if link.emulated:
            link.schedule(item)
        else:
            link.deliver_now(item)

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
