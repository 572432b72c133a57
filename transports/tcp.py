"""TCP transport: length-prefixed frames over Trio streams, mutual TLS between roles.

:func:`open_tcp_transport` connects one role to every other role of a session and yields a
:class:`TcpTransport` over those connections. Its parts, one job each:

* :mod:`~puma_async.transports.framing`: the wire format (8-byte length prefixes, an in-band
  end-of-stream marker, buffers that grow only as a frame's bytes arrive);
* :mod:`~puma_async.transports.handshake`: the handshake as a sans-IO state machine (Hello with
  version, session, role, configuration digest and frame limit; then both sides' verdicts);
* :mod:`~puma_async.transports.link`: one connection secured with mutual TLS 1.3 and
  handshaken;
* :mod:`~puma_async.transports.connect`: the topology (the higher role dials the lower one),
  dialling with retry and backoff, listeners that survive floods.

Every frame is checked against ``max_frame_bytes`` before anything is allocated for it, on
both sides; every role states the limit in its Hello and all must agree. Plain TCP needs
``allow_plain=True``: it authenticates nobody and encrypts nothing, so it is for tests and
benchmarks on a trusted host only.

Shutdown
--------
Leave :func:`open_tcp_transport` after ``receive()`` has returned ``(peer, None)`` for every
peer (the party runtime does): on a clean exit the end marker is sent to every peer and the
connections are closed; on an exception they are dropped without it, so peers see
:class:`PeerDisconnectedError`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager

import trio

from puma_async.errors import DecodeError, PeerDisconnectedError, ProtocolError
from puma_async.transports.base import DEFAULT_MAX_FRAME_BYTES, Target, Transport, drain
from puma_async.transports.connect import connect_all
from puma_async.transports.framing import (
    END_MARKER,
    END_OF_STREAM,
    StreamEnded,
    cause,
    write_unit,
)
from puma_async.transports.handshake import WIRE_VERSION, Hello
from puma_async.transports.link import (
    AddressInUseError,
    Connection,
    Setup,
    TcpSetupError,
    tls_contexts,
)
from puma_async.transports.tls import TlsConfig

_CLOSE_TIMEOUT = 5.0

_Item = tuple[int, bytes | None] | ProtocolError

__all__ = ["AddressInUseError", "TcpSetupError", "TcpTransport", "open_tcp_transport"]


class TcpTransport(Transport):
    """Frames to and from the peers of one role over established connections.

    Made by :func:`open_tcp_transport`, which also runs one reader task per connection. The
    readers feed a bounded channel (``max_buffered_frames``) that :meth:`receive` reads, so a
    party that stops receiving pushes back on its peers through TCP flow control; after
    :meth:`push_to` they hand each frame to the given callback instead (the party runtime's
    mailbox), saving a task hop per frame.
    """

    def __init__(
        self,
        role: int,
        connections: Mapping[int, Connection],
        *,
        max_frame_bytes: int,
        max_buffered_frames: int,
    ):
        self.role = role
        self.peers = tuple(sorted(connections))
        self.max_frame_bytes = max_frame_bytes
        self._connections = dict(connections)
        self._inbox_send, self._inbox = trio.open_memory_channel[_Item](max_buffered_frames)
        self._readers_scope = trio.CancelScope()
        self._readers_done = trio.Event()
        self._deliver: Target | None = None
        self._fail: Callable[[ProtocolError], None] | None = None

    def push_to(self, deliver: Target, fail: Callable[[ProtocolError], None]) -> bool:
        self._deliver, self._fail = deliver, fail
        drain(self._inbox, self._push)  # what already arrived first, in order
        return True

    async def send(self, peer: int, frame: bytes) -> None:
        conn = self._connection(peer)
        if len(frame) > self.max_frame_bytes:
            raise ProtocolError(
                f"frame of {len(frame)} bytes exceeds the limit of {self.max_frame_bytes}",
                peer=peer,
            )
        async with conn.send_lock:
            if conn.send_closed:
                raise PeerDisconnectedError("send after the connection was closed", peer=peer)
            try:
                await write_unit(conn.stream, frame)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                conn.send_closed = True
                raise PeerDisconnectedError(
                    f"connection to {conn.address} broke while sending: {cause(exc)}", peer=peer
                ) from exc

    async def receive(self) -> tuple[int, bytes | None]:
        try:
            item = await self._inbox.receive()
        except trio.EndOfChannel:
            raise PeerDisconnectedError("every peer connection has ended") from None
        if isinstance(item, ProtocolError):
            raise item
        return item

    async def close_peer(self, peer: int) -> None:
        """Send the end-of-stream marker after any frame being sent (idempotent)."""
        conn = self._connection(peer)
        async with conn.send_lock:
            if conn.send_closed:
                return
            conn.send_closed = True
            try:
                await conn.stream.send_all(END_MARKER)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise PeerDisconnectedError(
                    f"connection to {conn.address} broke while closing: {cause(exc)}", peer=peer
                ) from exc

    def last_received(self, peer: int) -> float | None:
        return self._connection(peer).reader.last_data

    async def aclose(self) -> None:
        """Send the end marker to every peer still open, stop the readers, close everything."""
        with trio.CancelScope(shield=True):
            for peer in self.peers:
                # A peer already gone needs no end marker.
                with trio.move_on_after(_CLOSE_TIMEOUT), contextlib.suppress(PeerDisconnectedError):
                    await self.close_peer(peer)
            self._readers_scope.cancel()
            await self._readers_done.wait()
            for conn in self._connections.values():
                with trio.move_on_after(_CLOSE_TIMEOUT) as scope:
                    await conn.stream.aclose()
                if scope.cancelled_caught:
                    await trio.aclose_forcefully(conn.stream)

    async def abort(self) -> None:
        """Drop every connection without the end marker (peers see a disconnect)."""
        self._readers_scope.cancel()
        for conn in self._connections.values():
            conn.send_closed = True
            await trio.aclose_forcefully(conn.stream)

    def _connection(self, peer: int) -> Connection:
        try:
            return self._connections[peer]
        except KeyError:
            raise ProtocolError(f"role {peer} is not a peer of role {self.role}") from None

    async def run_readers(self) -> None:
        """Run one reader task per connection until they end or the transport is closed."""
        try:
            with self._readers_scope, self._inbox_send:
                async with trio.open_nursery() as nursery:
                    for peer in self.peers:
                        nursery.start_soon(self._read, peer, self._inbox_send.clone())
        finally:
            self._readers_done.set()

    async def _read(self, peer: int, inbox: trio.MemorySendChannel[_Item]) -> None:
        """Reader task of one connection: frames to the inbox or the pushed-to callback, then
        its end or its failure."""
        async with inbox:
            try:
                await self._read_frames(peer, inbox)
            except trio.ClosedResourceError:
                return  # we closed this connection ourselves
            except trio.BrokenResourceError as exc:
                await self._hand(inbox, PeerDisconnectedError(
                    f"connection from {self._connections[peer].address} broke: {cause(exc)}",
                    peer=peer,
                ))
            except ProtocolError as exc:
                await self._hand(inbox, type(exc)(exc.reason, peer=peer))

    async def _read_frames(self, peer: int, inbox: trio.MemorySendChannel[_Item]) -> None:
        conn = self._connections[peer]
        while True:
            try:
                length = await conn.reader.read_length()
            except StreamEnded:
                raise PeerDisconnectedError(
                    f"connection from {conn.address} closed without an end-of-stream marker"
                ) from None
            if length == END_OF_STREAM:
                await self._hand(inbox, (peer, None))
                return
            if length > self.max_frame_bytes:
                raise DecodeError(
                    f"frame of {length} bytes exceeds the limit of {self.max_frame_bytes}",
                    peer=peer,
                )
            await self._hand(inbox, (peer, await conn.reader.read_exactly(length)))

    async def _hand(self, inbox: trio.MemorySendChannel[_Item], item: _Item) -> None:
        """Queue ``item`` for :meth:`receive`, or push it once :meth:`push_to` was called."""
        if self._deliver is None:
            await inbox.send(item)
        else:
            self._push(item)

    def _push(self, item: _Item) -> None:
        assert self._deliver is not None and self._fail is not None
        if isinstance(item, ProtocolError):
            self._fail(item)
        else:
            self._deliver(*item)


@asynccontextmanager
async def open_tcp_transport(
    role: int,
    addresses: Mapping[int, tuple[str, int]],
    *,
    session: bytes,
    config_digest: bytes,
    tls: TlsConfig | None,
    allow_plain: bool = False,
    connect_timeout: float = 60.0,
    handshake_timeout: float = 10.0,
    retry_initial: float = 0.05,
    retry_max: float = 2.0,
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    max_buffered_frames: int = 64,
    max_handshakes: int = 32,
) -> AsyncIterator[TcpTransport]:
    """Connect ``role`` to every other role in ``addresses``; yields the transport.

    Topology, retries and floods: :mod:`~puma_async.transports.connect`; the handshake:
    :mod:`~puma_async.transports.handshake`; shutdown: the module docstring. ``tls=None`` is
    refused unless ``allow_plain``. ``session`` and ``config_digest`` hold at most 64 bytes
    each. ``max_frame_bytes`` is the largest frame received (checked before anything is
    allocated for it) and sent; it is stated in the Hello, and every role of a session must
    state the same (the session derives it from its public architecture).
    ``max_buffered_frames`` bounds the received frames waiting for
    :meth:`TcpTransport.receive` (0: unbounded). ``max_handshakes`` bounds the incoming
    connections in their handshake at once. Raises
    :class:`HandshakeError` for a peer that fails the handshake, :class:`AddressInUseError`
    (a :class:`TcpSetupError`) for a port in use, and :class:`TcpSetupError` for unreadable
    TLS files, a peer that never came up or a listener at its address that never answers.
    """
    if role not in addresses:
        raise ValueError(f"role {role} has no address in {dict(addresses)}")
    if len(addresses) < 2:
        raise ValueError("a TCP transport needs at least one peer")
    if tls is None and not allow_plain:
        raise ValueError(
            "plain TCP is refused: pass tls=TlsConfig(...) (see puma_async.transports.tls), "
            "or allow_plain=True for tests on a trusted host"
        )
    if not 0 < max_frame_bytes < END_OF_STREAM:
        raise ValueError(f"max_frame_bytes must be in 1..2**64-2, got {max_frame_bytes}")
    if max_handshakes < 1:
        raise ValueError(f"max_handshakes must be at least 1, got {max_handshakes}")
    server_tls, client_tls = tls_contexts(
        tls, server=any(p > role for p in addresses), client=any(p < role for p in addresses)
    )
    hello = Hello(WIRE_VERSION, session, role, config_digest, max_frame_bytes)
    setup = Setup(
        role, dict(addresses), hello, tls, server_tls, client_tls, connect_timeout,
        handshake_timeout, retry_initial, retry_max, max_handshakes,
    )
    connections = await connect_all(setup)
    transport = TcpTransport(
        role, connections, max_frame_bytes=max_frame_bytes,
        max_buffered_frames=max_buffered_frames if max_buffered_frames > 0 else math.inf,
    )
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(transport.run_readers)
            try:
                yield transport
            except BaseException:
                with trio.CancelScope(shield=True):
                    await transport.abort()
                raise
            await transport.aclose()
    except BaseExceptionGroup as group:
        # Readers never raise, so the group holds the body's own exception: re-raise it bare.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
