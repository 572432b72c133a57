"""The one small interface every transport implements.

A transport moves opaque frames (``bytes``) between roles. It knows nothing of protocols,
messages or step paths: the party runtime encodes frames and runs one writer task per peer,
so ``send`` is only ever called by one task per peer at a time. Where two roles share one
event loop, a transport may also hand over the runtime's decoded messages as they are
(:meth:`Transport.takes_decoded`), opaque objects to it as frames are: the encoding and
decoding of a frame are then skipped, not its checks or its accounting (the runtime's).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import Any

import trio

from puma_async.errors import ProtocolError

DEFAULT_MAX_FRAME_BYTES = 256 << 20
"""The frame limit where none is given: 256 MiB. A session over TCP states its own limit,
derived from its public architecture (:func:`puma_async.session.frames.max_frame_bytes`), to
the transport and the runtime; in-process runs use this one."""

Target = Callable[[int, bytes | None], None]
"""Where a role's incoming frames go: ``target(sender, frame)``, frame None when the sender
has finished."""
DecodedTarget = Callable[[int, object], None]
"""Where a role's incoming decoded messages go: ``target(sender, item)``."""


class Transport(abc.ABC):
    """Frames between this role and its peers.

    ``receive`` yields frames from any peer in arrival order (per peer, frames arrive in the
    order they were sent). It returns ``(peer, None)`` once when a peer's side has ended, and
    raises :class:`~puma_async.errors.PeerDisconnectedError` for a connection that broke.
    """

    role: int
    peers: Sequence[int]
    immediate: bool = False
    """True if :meth:`send_immediately` works: frames are handed over without waiting (the
    in-process transports), so the runtime sends from the sending step itself, without a
    writer task in between."""

    @abc.abstractmethod
    async def send(self, peer: int, frame: bytes) -> None:
        """Send one frame to ``peer`` (may wait for flow control or emulated bandwidth)."""

    def send_immediately(self, peer: int, frame: bytes) -> None:
        """Hand one frame to ``peer`` at once (only where :attr:`immediate` is True)."""
        raise NotImplementedError(f"{type(self).__name__} cannot send without waiting")

    def push_to(self, deliver: Target, fail: Callable[[ProtocolError], None]) -> bool:
        """Ask the transport to call ``deliver(peer, frame)`` for every incoming frame (and
        ``fail(error)`` for a broken connection) instead of being polled with :meth:`receive`,
        which saves a task hop per frame; True if it will, False if the caller must keep
        receiving."""
        return False

    def push_decoded_to(self, deliver: DecodedTarget) -> bool:
        """Let peers in this event loop hand this role their messages decoded: call
        ``deliver(peer, item)`` for each (called after :meth:`push_to` returned True, so
        frames and items from a peer arrive in the order sent); True if the transport will."""
        return False

    def takes_decoded(self, peer: int) -> bool:
        """True if a message for ``peer`` may go decoded (:meth:`hand_over_decoded`): the
        peer shares this event loop, took :meth:`push_decoded_to`, and nothing between us
        reads frames (no emulated link, no recording); else it must be sent as a frame."""
        return False

    def hand_over_decoded(self, peer: int, item: object) -> None:
        """Hand one decoded message to ``peer`` at once (only where :meth:`takes_decoded`)."""
        raise NotImplementedError(f"{type(self).__name__} hands over frames only")

    @abc.abstractmethod
    async def receive(self) -> tuple[int, bytes | None]:
        """The next frame from any peer, or ``(peer, None)`` when that peer has finished."""

    def last_received(self, peer: int) -> float | None:
        """When (``trio.current_time()``) bytes from ``peer`` last arrived, part of a frame
        included; None if the transport hands over whole frames only. Liveness counts a large
        frame still arriving over a slow link as a sign of life."""
        return None

    @abc.abstractmethod
    async def close_peer(self, peer: int) -> None:
        """Tell ``peer`` we will send nothing more (it then receives ``(our role, None)``)."""

    async def aclose(self) -> None:
        """Release the transport's resources; further sends fail."""
        for peer in self.peers:
            await self.close_peer(peer)


def drain(channel: trio.MemoryReceiveChannel[Any], handle: Callable[[Any], None]) -> None:
    """Hand every item already waiting in ``channel`` to ``handle``, in order (what a
    transport does before it starts pushing frames)."""
    while True:
        try:
            item = channel.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel):
            return
        handle(item)
