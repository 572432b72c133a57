"""Thread transport: each role runs its own ``trio.run`` in its own OS thread.

All roles stay in one process, as with the in-memory transport, but each has an event loop
of its own, so the numpy kernels of different parties (which release the GIL) run on
different cores at once. A frame is handed to the receiving loop with
``TrioToken.run_sync_soon``; frames sent before the receiver's loop has started wait in a
buffer. Frames are passed by reference, like the in-memory transport (no copy).
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Sequence

import trio

from puma_async.errors import PeerDisconnectedError
from puma_async.transports.base import Transport

_Item = tuple[int, bytes | None]


class _Inbox:
    """A role's incoming frames, reachable from any thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.buffer: list[_Item] = []
        self.token: trio.lowlevel.TrioToken | None = None
        self.channel: trio.MemorySendChannel[_Item] | None = None

    def put(self, item: _Item) -> None:
        with self.lock:
            if self.token is None or self.channel is None:
                self.buffer.append(item)
                return
            token, channel = self.token, self.channel
        # A role that has finished listens no more: dropping its frames is what a closed
        # connection would do.
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(channel.send_nowait, item)

    def attach(self) -> trio.MemoryReceiveChannel[_Item]:
        """Called in the receiving role's own ``trio.run``: start delivering there."""
        send, receive = trio.open_memory_channel[_Item](math.inf)
        with self.lock:
            for item in self.buffer:
                send.send_nowait(item)
            self.buffer.clear()
            self.token, self.channel = trio.lowlevel.current_trio_token(), send
        return receive


class ThreadTransport(Transport):
    """One role's endpoint of a :class:`ThreadNetwork`; create it inside that role's loop."""

    def __init__(self, role: int, peers: Sequence[int], network: ThreadNetwork):
        self.role = role
        self.peers = tuple(peers)
        self._network = network
        self._incoming = network.inboxes[role].attach()
        self._closed: set[int] = set()

    immediate = True

    async def send(self, peer: int, frame: bytes) -> None:
        self.send_immediately(peer, frame)
        await trio.lowlevel.checkpoint()

    def send_immediately(self, peer: int, frame: bytes) -> None:
        if peer in self._closed:
            raise PeerDisconnectedError("send after the link was closed", peer=peer)
        self._network.inboxes[peer].put((self.role, frame))

    async def receive(self) -> tuple[int, bytes | None]:
        return await self._incoming.receive()

    async def close_peer(self, peer: int) -> None:
        if peer not in self._closed:
            self._closed.add(peer)
            self._network.inboxes[peer].put((self.role, None))
        await trio.lowlevel.checkpoint()


class ThreadNetwork:
    """Fully connected roles, one event loop (thread) each."""

    def __init__(self, roles: Sequence[int]):
        self.roles = tuple(roles)
        self.inboxes = {role: _Inbox() for role in self.roles}

    def endpoint(self, role: int) -> ThreadTransport:
        return ThreadTransport(role, [r for r in self.roles if r != role], self)
