"""TCP transport: length-prefixed frames over Trio streams, mutual TLS between roles.

Wire format
-----------
Every unit on a connection is an 8-byte little-endian length followed by that many bytes.
The length ``2**64 - 1`` is reserved: it marks the end of the stream (what
:meth:`TcpTransport.close_peer` sends). An in-band marker rather than a TCP half-close,
because TLS streams cannot be half-closed in Trio and because, under TLS, the marker is
authenticated: a connection that ends without it (a crash, a reset, a truncation by an
attacker) is reported as :class:`PeerDisconnectedError`, never mistaken for a clean end.
The receiver checks a length against ``max_frame_bytes`` before allocating anything, and
allocates a frame's buffer only as its bytes arrive.

Topology
--------
``addresses`` maps every role of the session to its ``(host, port)``. For each pair of roles
the **higher role connects to the lower one**: role r listens on its own address for the roles
above it (the highest role does not listen) and dials the roles below it. Dialling retries with
exponential backoff until ``connect_timeout``, also when the listener drops the connection
before its Hello (as it does to shed a flood); accepting waits as long.

Handshake (per connection, bounded by ``handshake_timeout``)
------------------------------------------------------------
1. With TLS: a TLS 1.3 handshake, both sides presenting certificates of the cluster CA
   (:mod:`puma_async.transports.tls`); the role in the peer's certificate is read.
2. Both sides send a :class:`~puma_async.codec.Hello` (protocol version, session id, role,
   configuration digest, frame limit) and check the peer's: same version, session, digest and
   frame limit, the role expected on this connection, and (with TLS) the role of its
   certificate.
3. Both sides send a verdict, :class:`~puma_async.codec.Accept` or
   ``Abort(reason, "handshake")``, and wait for the peer's, so a rejected side learns why and
   no protocol frame moves before both accepted.

A mismatch in step 2 (a peer of this cluster with another session, configuration, version,
frame limit or role) fails the open on both sides with :class:`HandshakeError`. A connection
that fails earlier (no TLS, a certificate of another CA, garbage, silence) is dropped and the
listener keeps waiting; if the expected peers have not connected by the deadline, the error
counts those rejected connections and names the first few. Plain TCP needs
``allow_plain=True``: it authenticates nobody and encrypts nothing, so it is for tests and
benchmarks on a trusted host only.

Floods
------
A listener runs at most ``max_handshakes`` handshakes at once, each within
``handshake_timeout``; a connection arriving beyond that drops the oldest one that has not
sent a valid Hello yet, so idle and slow (slowloris) connections cannot hold the door, and the
peers, which retry, get in once a flood relents. Running out of file descriptors
(EMFILE/ENFILE) or buffers on ``accept`` drops the oldest handshake, backs off and logs a
warning, never raises. Rejections are logged one by one for the first few, then as a count
at most every 10 s.

Leave :func:`open_tcp_transport` after ``receive()`` has returned ``(peer, None)`` for every
peer (the party runtime does): on a clean exit the end marker is sent to every peer and the
connections are closed; on an exception they are dropped without it, so peers see
:class:`PeerDisconnectedError`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import math
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager

import structlog
import trio

from puma_async.codec import (
    DEFAULT_MAX_FRAME_BYTES,
    VERSION,
    Abort,
    Accept,
    Hello,
    decode_message,
    encode_message,
)
from puma_async.errors import (
    DecodeError,
    HandshakeError,
    PeerDisconnectedError,
    ProtocolError,
    PumaError,
)
from puma_async.roles import role_name
from puma_async.transports.base import Target, Transport, drain
from puma_async.transports.tls import TlsConfig, client_context, peer_role_from_cert, server_context

HEADER_BYTES = 8
END_OF_STREAM = (1 << 64) - 1
MAX_HANDSHAKE_BYTES = 4096
_RECEIVE_CHUNK = 1 << 16  # read at least this much at a time: many small frames per syscall
_MAX_RECEIVE = 1 << 20  # read at most this much at a time: recv() allocates what it is asked
_FIRST_ALLOCATION = 4 << 20  # a large frame's buffer starts at this size (one allocation ...
_MAX_GROWTH = 16 << 20  # ... up to it), then grows by at most this much, as its bytes arrive
_ZEROS = memoryview(bytes(_MAX_GROWTH))  # what a buffer grows by (calloc'd: costs no memory)
_COALESCE_BYTES = 1 << 16  # below this, header and frame go out in one write
_CLOSE_TIMEOUT = 5.0
_REJECTIONS_SHOWN = 5  # rejected connections named in the error and logged one by one
_LOG_INTERVAL = 10.0  # then at most one log line about them per this many seconds
_BACKOFF_MIN, _BACKOFF_MAX = 0.01, 1.0  # accept() back-off when out of descriptors
_MAX_DROPS_AFTER_TLS = 3  # a dialler dropped this often after its TLS handshake gives up

log = structlog.get_logger("puma_async.transports.tcp")

_Item = tuple[int, bytes | None] | ProtocolError


class TcpSetupError(PumaError):
    """The TCP transport could not be set up: a port in use, a peer that never came up."""


class _RejectedConnection(Exception):
    """A connection failed before a valid Hello: a listener drops it and keeps waiting; a
    dialler tries again if it is ``transient`` (closed or reset, as when a listener sheds a
    flood), else fails. ``secured``: it failed after the TLS handshake had completed on this
    side (with TLS 1.3 the server checks the client's certificate after that, so a dialler
    dropped there again and again is most likely being refused, not shed)."""

    def __init__(self, reason: str, *, transient: bool = False, secured: bool = False):
        super().__init__(reason)
        self.transient = transient
        self.secured = secured


class _StreamEnded(Exception):
    """The stream ended (EOF) on a frame boundary."""


class _FrameReader:
    """Reads length-prefixed units from one stream, buffering what it reads ahead.

    On a plain socket, units of :data:`_RECEIVE_CHUNK` bytes or more are received straight
    into their own buffer (no copy after the kernel's); otherwise chunks are joined.
    """

    def __init__(self, stream: trio.abc.Stream):
        self.stream = stream
        self._buffer = bytearray()
        self._recv_into = stream.socket.recv_into if isinstance(stream, trio.SocketStream) else None
        self.last_data = trio.current_time()
        """When bytes last arrived (liveness: a large frame in progress is a sign of life)."""

    async def read_length(self) -> int:
        """The next length prefix; :class:`_StreamEnded` on EOF before any byte of it."""
        if not self._buffer:
            data = await self.stream.receive_some(_RECEIVE_CHUNK)
            if not data:
                raise _StreamEnded
            self.last_data = trio.current_time()
            self._buffer += data
        return int.from_bytes(await self.read_exactly(HEADER_BYTES), "little")

    async def read_exactly(self, count: int) -> bytes:
        """``count`` bytes; :class:`PeerDisconnectedError` if the stream ends before."""
        buffer = self._buffer
        if len(buffer) >= count:
            data = bytes(buffer[:count])
            del buffer[:count]
            return data
        if self._recv_into is not None and count >= _RECEIVE_CHUNK:
            return await self._read_into(count)
        chunks = [bytes(buffer)]
        have = len(buffer)
        buffer.clear()
        while have < count:
            want = count - have
            data = await self.stream.receive_some(min(max(want, _RECEIVE_CHUNK), _MAX_RECEIVE))
            if not data:
                raise _truncated(have, count)
            self.last_data = trio.current_time()
            if len(data) > want:
                chunks.append(data[:want])
                buffer += memoryview(data)[want:]
                have = count
            else:
                chunks.append(data)
                have += len(data)
        return b"".join(chunks)

    async def _read_into(self, count: int) -> bytes:
        """``count`` bytes received straight into one buffer, which grows as they arrive
        (first :data:`_FIRST_ALLOCATION`, then doubling by at most :data:`_MAX_GROWTH`), so
        a peer that declares a large frame and sends less never gets it allocated."""
        assert self._recv_into is not None
        have = len(self._buffer)
        unit = bytearray(max(have, min(count, _FIRST_ALLOCATION)))
        unit[:have] = self._buffer
        self._buffer.clear()
        while have < count:
            if have == len(unit):
                unit += _ZEROS[:min(count - have, have, _MAX_GROWTH)]
            with memoryview(unit)[have:] as free:  # released before the buffer grows
                try:
                    got = await self._recv_into(free)
                except OSError as exc:  # translated as trio.SocketStream.receive_some does
                    if exc.errno == errno.EBADF:
                        raise trio.ClosedResourceError("this socket was already closed") from None
                    raise trio.BrokenResourceError(f"socket connection broken: {exc}") from exc
            if not got:
                raise _truncated(have, count)
            self.last_data = trio.current_time()
            have += got
        return unit  # type: ignore[return-value]  # bytes-like; decoders accept it


def _truncated(have: int, count: int) -> PeerDisconnectedError:
    return PeerDisconnectedError(f"connection closed after {have} of {count} bytes of a frame")


@dataclasses.dataclass
class _Connection:
    """One established, handshaken connection to a peer."""

    peer: int
    address: str
    stream: trio.abc.Stream
    reader: _FrameReader
    send_lock: trio.Lock = dataclasses.field(default_factory=trio.Lock)
    send_closed: bool = False


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
        connections: Mapping[int, _Connection],
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
        header = len(frame).to_bytes(HEADER_BYTES, "little")
        async with conn.send_lock:
            if conn.send_closed:
                raise PeerDisconnectedError("send after the connection was closed", peer=peer)
            try:
                if len(frame) < _COALESCE_BYTES:
                    await conn.stream.send_all(header + frame)
                else:
                    await conn.stream.send_all(header)
                    await conn.stream.send_all(frame)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                conn.send_closed = True
                raise PeerDisconnectedError(
                    f"connection to {conn.address} broke while sending: {_cause(exc)}", peer=peer
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
                await conn.stream.send_all(END_OF_STREAM.to_bytes(HEADER_BYTES, "little"))
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise PeerDisconnectedError(
                    f"connection to {conn.address} broke while closing: {_cause(exc)}", peer=peer
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

    def _connection(self, peer: int) -> _Connection:
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
                    f"connection from {self._connections[peer].address} broke: {_cause(exc)}",
                    peer=peer,
                ))
            except ProtocolError as exc:
                await self._hand(inbox, type(exc)(exc.reason, peer=peer))

    async def _read_frames(self, peer: int, inbox: trio.MemorySendChannel[_Item]) -> None:
        conn = self._connections[peer]
        while True:
            try:
                length = await conn.reader.read_length()
            except _StreamEnded:
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


def _cause(exc: BaseException) -> str:
    """The underlying OS or SSL error of a Trio resource error, for messages."""
    cause = exc.__cause__ or exc.__context__
    return f"{type(cause).__name__}: {cause}" if cause is not None else str(exc) or "closed"


def _format_address(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclasses.dataclass(frozen=True)
class _Setup:
    """Everything the connection setup of one role needs (TLS contexts built once)."""

    role: int
    addresses: Mapping[int, tuple[str, int]]
    hello: Hello
    hello_bytes: bytes
    tls: TlsConfig | None
    server_tls: ssl.SSLContext | None
    client_tls: ssl.SSLContext | None
    connect_timeout: float
    handshake_timeout: float
    retry_initial: float
    retry_max: float
    max_handshakes: int


def _tls_contexts(
    tls: TlsConfig | None, *, server: bool, client: bool
) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
    """The server and client contexts a role needs (None where it needs none), each built
    once: loading the CA, certificate and key costs more than a TLS handshake."""
    if tls is None:
        return None, None
    try:
        return (
            server_context(tls) if server else None, client_context(tls) if client else None
        )
    except OSError as exc:  # ssl.SSLError too
        raise TcpSetupError(
            f"cannot load the TLS files {tls.ca_cert}, {tls.cert}, {tls.key}: {exc}"
        ) from None


def _hello_mismatch(setup: _Setup, hello: Hello, expected: set[int], cert_role: int | None
                    ) -> str | None:
    """Why a peer's Hello is not acceptable on this connection, or None."""
    ours = setup.hello
    if hello.version != ours.version:
        return f"protocol version {hello.version}, expected {ours.version}"
    if hello.session != ours.session:
        return f"session id {hello.session.hex()} differs from ours {ours.session.hex()}"
    if hello.role not in expected:
        wanted = " or ".join(map(role_name, sorted(expected))) or "none"
        return f"peer says it is {role_name(hello.role)}, expected {wanted} on this connection"
    if cert_role is not None and cert_role != hello.role:
        return (f"peer certificate is for {role_name(cert_role)} but its Hello claims "
                f"{role_name(hello.role)}")
    if hello.config_digest != ours.config_digest:
        return (
            f"configuration digest {hello.config_digest.hex()} differs from ours "
            f"{ours.config_digest.hex()}"
        )
    if hello.max_frame_bytes != ours.max_frame_bytes:
        return (
            f"peer states a frame limit of {hello.max_frame_bytes} bytes, ours is "
            f"{ours.max_frame_bytes} (every role of a session must use the same)"
        )
    return None


async def _send_unit(stream: trio.abc.Stream, data: bytes) -> None:
    await stream.send_all(len(data).to_bytes(HEADER_BYTES, "little") + data)


async def _read_unit(reader: _FrameReader, *, tls: bool) -> bytes:
    """One small handshake unit; a TLS record arriving at a plain side is named as such."""
    try:
        length = await reader.read_length()
    except _StreamEnded:
        hint = "" if tls else " (does the peer require TLS?)"
        raise _RejectedConnection(
            f"connection closed during the handshake{hint}", transient=True
        ) from None
    if length > MAX_HANDSHAKE_BYTES:
        if not tls and length & 0xFFFF == 0x0316:  # a TLS handshake record: 16 03 ..
            raise HandshakeError("peer started a TLS handshake but this side runs plain TCP")
        raise HandshakeError(f"handshake message of {length} bytes is too large")
    return await reader.read_exactly(length)


_TRANSIENT = (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError, ssl.SSLZeroReturnError)
"""Causes of a broken handshake that a listener shedding load also produces (it dropped the
connection): the dialling side tries again."""


async def _handshake(
    setup: _Setup,
    stream: trio.SocketStream,
    *,
    expected: set[int],
    server_hostname: str | None,
    on_hello: Callable[[Hello], None] = lambda hello: None,
) -> tuple[int, trio.abc.Stream, _FrameReader]:
    """Secure the connection, exchange and check Hellos and verdicts; the peer's role.

    Raises :class:`_RejectedConnection` for failures before a valid Hello arrived and
    :class:`HandshakeError` for a mismatching Hello or a peer's rejection. ``on_hello`` may
    raise HandshakeError to reject a Hello that passed the checks (e.g. a duplicate role).
    """
    secured: trio.abc.Stream = stream
    cert_role: int | None = None
    try:
        if setup.tls is not None:
            context = setup.client_tls if server_hostname is not None else setup.server_tls
            assert context is not None
            ssl_stream = trio.SSLStream(
                stream, context, server_side=server_hostname is None,
                server_hostname=server_hostname,
            )
            secured = ssl_stream
            await ssl_stream.do_handshake()
            cert_role = peer_role_from_cert(ssl_stream, cluster=setup.tls.cluster)
        reader = _FrameReader(secured)
        await _send_unit(secured, setup.hello_bytes)
        hello = decode_message(
            await _read_unit(reader, tls=setup.tls is not None), max_bytes=MAX_HANDSHAKE_BYTES
        )
        if not isinstance(hello, Hello):
            raise HandshakeError(f"expected a Hello, got {type(hello).__name__}")
    except _RejectedConnection as exc:
        exc.secured = cert_role is not None
        raise
    except (HandshakeError, DecodeError, PeerDisconnectedError) as exc:
        raise _RejectedConnection(str(exc)) from exc
    except trio.BrokenResourceError as exc:
        transient = isinstance(exc.__cause__ or exc.__context__, _TRANSIENT)
        hint = (
            " (does the peer run without TLS, or with a certificate of another cluster CA?)"
            if setup.tls is not None and (cert_role is not None or not transient) else ""
        )
        raise _RejectedConnection(
            f"{'TLS handshake' if setup.tls is not None else 'connection'} failed: "
            f"{_cause(exc)}{hint}",
            transient=transient, secured=cert_role is not None,
        ) from exc

    problem = _hello_mismatch(setup, hello, expected, cert_role)
    if problem is None:
        try:
            on_hello(hello)
        except HandshakeError as exc:
            problem = exc.reason
    verdict = Accept() if problem is None else Abort(problem, "handshake")
    try:
        await _send_unit(secured, encode_message(verdict))
        # Waiting for the peer's verdict also lets our rejection reach it before we close.
        answer = decode_message(
            await _read_unit(reader, tls=setup.tls is not None), max_bytes=MAX_HANDSHAKE_BYTES
        )
    except (_RejectedConnection, HandshakeError, DecodeError, PeerDisconnectedError,
            trio.BrokenResourceError) as exc:
        if problem is not None:
            raise HandshakeError(problem, peer=hello.role) from None
        raise HandshakeError(
            f"connection failed during the handshake: {exc}", peer=hello.role
        ) from exc
    if problem is not None:
        raise HandshakeError(problem, peer=hello.role)
    if isinstance(answer, Abort):
        raise HandshakeError(f"peer rejected the handshake: {answer.reason}", peer=hello.role)
    if not isinstance(answer, Accept):
        raise HandshakeError("peer sent no valid handshake verdict", peer=hello.role)
    return hello.role, secured, reader


def _nodelay(stream: trio.SocketStream) -> None:
    """Frames are written whole; do not let Nagle hold back a small one."""
    stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)


async def _dial(setup: _Setup, peer: int, deadline: float) -> _Connection:
    """Connect to ``peer`` and handshake, retrying with backoff until ``deadline`` while it
    is not up or drops the connection before its Hello (a listener shedding a flood)."""
    host, port = setup.addresses[peer]
    where = _format_address((host, port))
    delay = setup.retry_initial
    attempts = refusals = 0
    last_error: str | None = None
    while True:
        attempts += 1
        stream: trio.SocketStream | None = None
        with trio.move_on_at(deadline):
            try:
                stream = await trio.open_tcp_stream(host, port)
            except OSError as exc:
                last_error = str(exc)
        if stream is not None:
            try:
                _nodelay(stream)
                with trio.fail_after(setup.handshake_timeout):
                    role, secured, reader = await _handshake(
                        setup, stream, expected={peer}, server_hostname=host,
                    )
                return _Connection(role, where, secured, reader)
            except _RejectedConnection as exc:
                await trio.aclose_forcefully(stream)
                refusals += exc.secured
                if not exc.transient or refusals >= _MAX_DROPS_AFTER_TLS:
                    raise HandshakeError(
                        f"handshake with {where} failed: {exc}", peer=peer
                    ) from exc.__cause__
                last_error = f"handshake failed: {exc}"
            except trio.TooSlowError:
                await trio.aclose_forcefully(stream)
                last_error = f"no handshake within {setup.handshake_timeout:g} s"
            except OSError as exc:  # the connection broke before the handshake began
                await trio.aclose_forcefully(stream)
                last_error = str(exc)
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
        if trio.current_time() + delay > deadline:
            reason = f" (last error: {last_error})" if last_error is not None else ""
            error = HandshakeError if stream is not None else TcpSetupError
            raise error(
                f"peer {role_name(peer)} at {where} never came up after {attempts} attempts "
                f"in {setup.connect_timeout:g} s{reason}"
            )
        await trio.sleep(delay)
        delay = min(delay * 2, setup.retry_max)


class _Rejections:
    """The connections a listener dropped before a valid Hello: counted, the first few kept
    for the error, and logged at a bounded rate (a flood must not flood the log)."""

    def __init__(self, role: int):
        self.role = role
        self.count = 0
        self.first: list[str] = []
        self._summarised = 0
        self._next_summary = -math.inf
        self._exhausted = 0
        self._next_exhausted = -math.inf

    def add(self, remote: str, reason: str) -> None:
        self.count += 1
        if len(self.first) < _REJECTIONS_SHOWN:
            self.first.append(f"{remote}: {reason}")
            log.warning("rejected connection", role=role_name(self.role), remote=remote,
                        error=reason)
            self._summarised = self.count
        elif trio.current_time() >= self._next_summary:
            self.summarise()

    def summarise(self) -> None:
        """Log how many connections were rejected since the last line about them."""
        if self.count > self._summarised:
            log.warning("rejected connections", role=role_name(self.role),
                        count=self.count - self._summarised, total=self.count)
            self._summarised = self.count
            self._next_summary = trio.current_time() + _LOG_INTERVAL

    def exhausted(self, exc: OSError) -> None:
        """accept() failed for lack of resources (descriptors, buffers)."""
        self._exhausted += 1
        if trio.current_time() >= self._next_exhausted:
            log.warning("cannot accept connections, backing off", role=role_name(self.role),
                        error=exc.strerror or str(exc), times=self._exhausted)
            self._exhausted = 0
            self._next_exhausted = trio.current_time() + _LOG_INTERVAL

    def describe(self) -> str:
        shown = "; ".join(self.first)
        more = f"; first {len(self.first)}: " if self.count > len(self.first) else ": "
        return f"{self.count} rejected connections{more}{shown}"


@dataclasses.dataclass(eq=False)
class _Attempt:
    """An incoming connection in its handshake; the listener may drop it (oldest first)
    until a valid Hello claimed a role for it."""

    scope: trio.CancelScope
    dropped: bool = False
    role: int | None = None

    def drop(self) -> None:
        self.dropped = True
        self.scope.cancel()


async def _accept(
    setup: _Setup, listeners: list[trio.SocketListener], expected: set[int], deadline: float
) -> dict[int, _Connection]:
    """Accept and handshake the roles in ``expected`` until all came or ``deadline`` passed.

    At most ``setup.max_handshakes`` handshakes run at once, each within the handshake
    timeout; a connection beyond that drops the oldest one that has not sent a valid Hello yet
    (a flood cannot starve the peers, which retry; a peer past its Hello is not dropped).
    Running out of descriptors or buffers drops the oldest handshake too and backs off.
    Nothing an incoming connection does raises out of here but a peer's failed Hello check.
    """
    connections: dict[int, _Connection] = {}
    rejections = _Rejections(setup.role)
    attempts: dict[_Attempt, None] = {}  # in arrival order
    fatal: list[HandshakeError] = []
    pending = set(expected)
    claimed: set[int] = set()
    where = _format_address(setup.addresses[setup.role])

    def drop_oldest() -> None:
        for attempt in attempts:
            if not attempt.dropped and attempt.role is None:
                attempt.drop()
                return

    async with trio.open_nursery() as nursery:

        async def handle(stream: trio.SocketStream) -> None:
            attempt = _Attempt(trio.CancelScope(
                deadline=trio.current_time() + setup.handshake_timeout
            ))
            attempts[attempt] = None
            remote = "<unknown>"

            def claim(hello: Hello) -> None:
                if hello.role in claimed:
                    raise HandshakeError(f"{role_name(hello.role)} is already connected")
                claimed.add(hello.role)
                attempt.role = hello.role

            try:
                with attempt.scope:
                    remote = _format_address(stream.socket.getpeername()[:2])
                    _nodelay(stream)
                    role, secured, reader = await _handshake(
                        setup, stream, expected=expected, server_hostname=None, on_hello=claim
                    )
                    connections[role] = _Connection(role, remote, secured, reader)
                    pending.discard(role)
                    if not pending:
                        nursery.cancel_scope.cancel()
                    return
                reason = (
                    f"dropped: {setup.max_handshakes} handshakes in progress or no descriptors"
                    if attempt.dropped else
                    f"no handshake within {setup.handshake_timeout:g} s"
                )
            except HandshakeError as exc:
                await trio.aclose_forcefully(stream)
                fatal.append(HandshakeError(f"handshake from {remote} failed: {exc.reason}",
                                            peer=exc.peer))
                nursery.cancel_scope.cancel()
                return
            except (_RejectedConnection, OSError, trio.BrokenResourceError) as exc:
                reason = str(exc) or type(exc).__name__
            finally:
                del attempts[attempt]
            claimed.discard(attempt.role)  # it may try again
            rejections.add(remote, reason)
            await trio.aclose_forcefully(stream)

        async def serve(listener: trio.SocketListener) -> None:
            delay = _BACKOFF_MIN
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:  # EMFILE, ENFILE, ENOBUFS, ENOMEM
                    rejections.exhausted(exc)
                    drop_oldest()
                    await trio.sleep(delay)
                    delay = min(delay * 2, _BACKOFF_MAX)
                    continue
                delay = _BACKOFF_MIN
                if len(attempts) >= setup.max_handshakes:
                    drop_oldest()
                nursery.start_soon(handle, stream)

        nursery.cancel_scope.deadline = deadline
        for listener in listeners:
            nursery.start_soon(serve, listener)

    rejections.summarise()
    if fatal or pending:
        for conn in connections.values():
            await trio.aclose_forcefully(conn.stream)
    if fatal:
        raise fatal[0]
    if pending:
        message = (
            f"peers {', '.join(map(role_name, sorted(pending)))} did not connect to {where} within "
            f"{setup.connect_timeout:g} s"
        )
        if rejections.count:
            raise HandshakeError(f"{message}; {rejections.describe()}")
        raise TcpSetupError(message)
    return connections


async def _connect_all(setup: _Setup) -> dict[int, _Connection]:
    """All connections of one role: listen for higher roles, dial lower ones, concurrently."""
    role = setup.role
    higher = {p for p in setup.addresses if p > role}
    lower = sorted(p for p in setup.addresses if p < role)
    deadline = trio.current_time() + setup.connect_timeout
    listeners: list[trio.SocketListener] = []
    if higher:
        host, port = setup.addresses[role]
        try:
            listeners = await trio.open_tcp_listeners(port, host=host)
        except OSError as exc:
            raise TcpSetupError(
                f"{role_name(role)} cannot listen on {_format_address((host, port))}: "
                f"{exc.strerror or exc}"
            ) from exc

    connections: dict[int, _Connection] = {}
    errors: list[Exception] = []
    async with trio.open_nursery() as nursery:

        async def guarded(task: Callable[[], Awaitable[dict[int, _Connection]]]) -> None:
            try:
                connections.update(await task())
            except Exception as exc:  # first failure wins; the others are cancelled
                errors.append(exc)
                nursery.cancel_scope.cancel()

        if higher:
            nursery.start_soon(guarded, lambda: _accept(setup, listeners, higher, deadline))
        for peer in lower:
            async def dial(peer: int = peer) -> dict[int, _Connection]:
                return {peer: await _dial(setup, peer, deadline)}
            nursery.start_soon(guarded, dial)
    for listener in listeners:
        await listener.aclose()
    if errors:
        for conn in connections.values():
            await trio.aclose_forcefully(conn.stream)
        raise _leaf(errors[0])
    return connections


def _leaf(error: BaseException) -> BaseException:
    """An error without the exception groups of the nurseries it went through (a group of
    several keeps its first leaf as the one to report)."""
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


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

    See the module docstring for topology, handshake and shutdown. ``tls=None`` is refused
    unless ``allow_plain``. ``max_frame_bytes`` is the largest frame received (checked before
    anything is allocated for it) and sent; it is stated in the Hello, and every role of a
    session must state the same (the session derives it from its public architecture).
    ``max_buffered_frames`` bounds the received frames waiting for
    :meth:`TcpTransport.receive` (0: unbounded). ``max_handshakes`` bounds the incoming
    connections in their handshake at once (see :func:`_accept`). Raises
    :class:`HandshakeError` for a peer that fails the handshake and :class:`TcpSetupError`
    for a port in use, unreadable TLS files or a peer that never came up.
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
    server_tls, client_tls = _tls_contexts(
        tls, server=any(p > role for p in addresses), client=any(p < role for p in addresses)
    )
    hello = Hello(VERSION, session, role, config_digest, max_frame_bytes)
    setup = _Setup(
        role, dict(addresses), hello, encode_message(hello), tls, server_tls, client_tls,
        connect_timeout, handshake_timeout, retry_initial, retry_max, max_handshakes,
    )
    connections = await _connect_all(setup)
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
