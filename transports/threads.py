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
from collections.abc import Callable, Sequence

import trio

from puma_async.errors import ProtocolError
from puma_async.transports.base import Target, drain
from puma_async.transports.memory import InProcessTransport

_Item = tuple[int, bytes | None]


class _Inbox:
    """A role's incoming frames, reachable from any thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.buffer: list[_Item] = []
        self.token: trio.lowlevel.TrioToken | None = None
        self.target: Target | None = None

    def put(self, item: _Item) -> None:
        with self.lock:
            if self.token is None or self.target is None:
                self.buffer.append(item)
                return
            token = self.token
        # A role that has finished listens no more: dropping its frames is what a closed
        # connection would do.
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(self._dispatch, item)

    def _dispatch(self, item: _Item) -> None:
        """In the receiving loop: hand ``item`` to the target of the moment."""
        assert self.target is not None
        self.target(*item)

    def attach(self, target: Target) -> None:
        """Called in the receiving role's own ``trio.run``: deliver there, to ``target``."""
        with self.lock:
            pending, self.buffer = self.buffer, []
            self.token, self.target = trio.lowlevel.current_trio_token(), target
        for item in pending:
            target(*item)


class ThreadTransport(InProcessTransport):
    """One role's endpoint of a :class:`ThreadNetwork`; create it inside that role's loop."""

    def __init__(self, role: int, peers: Sequence[int], network: ThreadNetwork):
        super().__init__(role, peers)
        self._network = network
        send, self._incoming = trio.open_memory_channel[_Item](math.inf)
        self._inbox = network.inboxes[role]
        self._inbox.attach(lambda peer, frame: send.send_nowait((peer, frame)))

    def hand_over(self, peer: int, frame: bytes | None) -> None:
        self._network.inboxes[peer].put((self.role, frame))

    async def receive(self) -> tuple[int, bytes | None]:
        return await self._incoming.receive()

    def push_to(self, deliver: Target, fail: Callable[[ProtocolError], None]) -> bool:
        drain(self._incoming, lambda item: deliver(*item))  # what already arrived first
        self._inbox.attach(deliver)
        return True


class ThreadNetwork:
    """Fully connected roles, one event loop (thread) each."""

    def __init__(self, roles: Sequence[int]):
        self.roles = tuple(roles)
        self.inboxes = {role: _Inbox() for role in self.roles}

    def endpoint(self, role: int) -> ThreadTransport:
        return ThreadTransport(role, [r for r in self.roles if r != role], self)
