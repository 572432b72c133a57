"""Length-prefixed units on a byte stream: the TCP transport's wire format.

Every unit on a connection (a handshake message or a frame) is an 8-byte little-endian length
followed by that many bytes. The length ``2**64 - 1`` is reserved: it marks the end of the
stream (:data:`END_OF_STREAM`). An in-band marker rather than a TCP half-close, because TLS
streams cannot be half-closed in Trio and because, under TLS, the marker is authenticated: a
connection that ends without it (a crash, a reset, a truncation by an attacker) is a
disconnect, never mistaken for a clean end.

:class:`FrameReader` reads units, buffering what it reads ahead. The caller checks a length
against its limit before reading the unit, and the reader allocates a large unit's buffer only
as its bytes arrive, so a peer that declares a huge frame and sends little costs little.
"""

from __future__ import annotations

import errno

import trio

from puma_async.errors import PeerDisconnectedError

HEADER_BYTES = 8
END_OF_STREAM = (1 << 64) - 1
RECEIVE_CHUNK = 1 << 16
"""Read at least this much at a time: many small frames per system call."""
_MAX_RECEIVE = 1 << 20  # read at most this much at a time: recv() allocates what it is asked
_FIRST_ALLOCATION = 4 << 20  # a large unit's buffer starts at this size (one allocation ...
_MAX_GROWTH = 16 << 20  # ... up to it), then grows by at most this much, as its bytes arrive
_ZEROS = memoryview(bytes(_MAX_GROWTH))  # what a buffer grows by (calloc'd: costs no memory)
_COALESCE_BYTES = 1 << 16  # below this, prefix and unit go out in one write


def length_prefix(length: int) -> bytes:
    """The 8 bytes announcing a unit of ``length`` bytes (or :data:`END_OF_STREAM`)."""
    return length.to_bytes(HEADER_BYTES, "little")


END_MARKER = length_prefix(END_OF_STREAM)


async def write_unit(stream: trio.abc.Stream, data: bytes) -> None:
    """Send ``data`` as one unit: with its prefix in one write when small, else in two (a
    large unit is not copied to join them)."""
    if len(data) < _COALESCE_BYTES:
        await stream.send_all(length_prefix(len(data)) + data)
    else:
        await stream.send_all(length_prefix(len(data)))
        await stream.send_all(data)


class StreamEnded(Exception):
    """The stream ended (EOF) on a unit boundary."""


class FrameReader:
    """Reads length-prefixed units from one stream, buffering what it reads ahead.

    ``buffered`` are bytes already read from the stream (what followed the handshake). On a
    plain socket, units of :data:`RECEIVE_CHUNK` bytes or more are received straight into
    their own buffer (no copy after the kernel's); otherwise chunks are joined.
    """

    def __init__(self, stream: trio.abc.Stream, buffered: bytes = b""):
        self.stream = stream
        self._buffer = bytearray(buffered)
        self._recv_into = stream.socket.recv_into if isinstance(stream, trio.SocketStream) else None
        self.last_data = trio.current_time()
        """When bytes last arrived (liveness: a large frame in progress is a sign of life)."""

    async def read_length(self) -> int:
        """The next length prefix; :class:`StreamEnded` on EOF before any byte of it."""
        if not self._buffer:
            data = await self.stream.receive_some(RECEIVE_CHUNK)
            if not data:
                raise StreamEnded
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
        if self._recv_into is not None and count >= RECEIVE_CHUNK:
            return await self._read_into(count)
        chunks = [bytes(buffer)]
        have = len(buffer)
        buffer.clear()
        while have < count:
            want = count - have
            data = await self.stream.receive_some(min(max(want, RECEIVE_CHUNK), _MAX_RECEIVE))
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


def cause(exc: BaseException) -> str:
    """The underlying OS or SSL error of a Trio resource error, for messages."""
    underlying = exc.__cause__ or exc.__context__
    if underlying is None:
        return str(exc) or "closed"
    return f"{type(underlying).__name__}: {underlying}"
