"""Recording transport: wraps any transport and writes every frame to a trace file.

**A trace holds key material and secret shares** (PRG seeds, the shares of the weights and of
the client's input, everything this party saw): store it like a private key, and share it only
with whoever may see this party's view of the session. The file is created 0600 (whatever the
umask) and an existing one is never overwritten unless the caller passes ``force``
(:func:`puma_async.files.create_private_file`).

Trace format (``puma-async-trace``, version 1)
---------------------------------------------
A stream of msgpack maps (binary strings as msgpack bin):

1. Header: ``format`` (``"puma-async-trace"``), ``version`` (1), ``role``, ``peers``,
   ``session``, ``config`` (the caller's configuration: plain msgpack data), ``started_at``
   (wall clock, seconds since the Unix epoch), ``digest_over`` (see below, or nil).
2. One record per transport event, in the order this party saw them:
   ``dir`` (``"send"`` or ``"recv"``), ``event`` (``"frame"``; ``"end"``: we closed the
   stream to ``peer`` / ``peer`` finished; ``"error"``: receiving failed), ``peer``, ``t``
   (seconds since the start, monotonic clock; for a send, when the frame was handed to the
   transport), ``size`` (frame bytes), ``steps`` (``[path, seq, round, message type]`` of
   each envelope in the frame, or nil if it did not decode), ``frame`` (the bytes, or nil),
   ``digest`` (BLAKE2b-256 of the frame when it is stored by digest only, else nil) and
   ``error`` (the error message of an ``"error"`` event, else nil; its ``peer`` is -1 when
   the error names none).
3. Trailer: ``event`` ``"trailer"`` with ``records`` (how many came before) and ``t``. A trace
   without it was cut short (the party crashed or was killed).

With ``digest_over=N``, frames larger than N bytes are stored by digest only (the weight
sharing of the setup need not be stored byte for byte). Such a trace still shows every step
and checks every sent frame, but a replay can feed a party only received frames stored whole.

Replaying one party: feed it the ``recv`` frames of each peer in order (and ``end`` where the
peer finished) and compare what it sends with the ``send`` records. Envelopes ready in the same
scheduling tick are coalesced into one frame, so compare sent envelopes (``steps`` and
payload), not frame boundaries.

The file is written synchronously (into the page cache) from the task that sends or
receives, so records are in event order without locks. The trace is finished (trailer
written, file closed) by :meth:`RecordingTransport.close`, by :meth:`~RecordingTransport.aclose`,
on leaving ``async with``, or by itself once every peer's stream has ended both ways.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections.abc import Iterator, Mapping
from typing import IO, Any, Literal

import msgpack

from puma_async.codec import DEFAULT_MAX_FRAME_BYTES, decode_frame, format_path
from puma_async.errors import ProtocolError, TraceError
from puma_async.files import create_private_file
from puma_async.transports.base import Transport

FORMAT = "puma-async-trace"
FORMAT_VERSION = 1
DIGEST_BYTES = 32
_MAX_RECORD_BYTES = DEFAULT_MAX_FRAME_BYTES + (1 << 20)

Direction = Literal["send", "recv"]
Event = Literal["frame", "end", "error"]


@dataclasses.dataclass(frozen=True)
class TraceHeader:
    """What a trace says about its run: whose view it is, of which session, configured how."""

    role: int
    peers: tuple[int, ...]
    session: bytes
    config: Mapping[str, Any]
    started_at: float
    digest_over: int | None
    version: int = FORMAT_VERSION


@dataclasses.dataclass(frozen=True)
class TraceStep:
    """One envelope of a recorded frame: its step path, sequence number, round, message type."""

    path: tuple[int, ...]
    seq: int
    round: int
    message: str

    @property
    def step(self) -> str:
        return format_path(self.path)


@dataclasses.dataclass(frozen=True)
class TraceRecord:
    """One transport event of the recording party (see the module docstring)."""

    direction: Direction
    event: Event
    peer: int
    time: float
    size: int
    steps: tuple[TraceStep, ...] | None
    frame: bytes | None
    digest: bytes | None
    error: str | None


def frame_digest(frame: bytes) -> bytes:
    """The BLAKE2b-256 digest that stands for a frame stored by digest only."""
    return hashlib.blake2b(frame, digest_size=DIGEST_BYTES).digest()


def _steps(frame: bytes) -> list[list[Any]] | None:
    try:
        envelopes = decode_frame(frame, max_bytes=max(len(frame), 1))
    except ProtocolError:
        return None
    return [[list(e.path), e.seq, e.round, type(e.message).__name__] for e in envelopes]


class RecordingTransport(Transport):
    """Passes everything to ``inner`` and writes each frame and end of stream to ``path``.

    ``config`` is the run's configuration (plain msgpack data) stored in the header;
    ``digest_over`` stores frames larger than that many bytes by digest only. The trace is
    created 0600; an existing file at ``path`` is refused (FileExistsError) unless ``force``.
    """

    def __init__(
        self,
        inner: Transport,
        path: str | os.PathLike[str],
        config: Mapping[str, Any],
        *,
        session: bytes,
        digest_over: int | None = None,
        force: bool = False,
    ):
        self.inner = inner
        self.role = inner.role
        self.peers = tuple(inner.peers)
        self.path = os.fspath(path)
        self.digest_over = digest_over
        self._packer = msgpack.Packer(use_bin_type=True)
        self._start = time.monotonic()
        self._records = 0
        self._sent_end: set[int] = set()
        self._received_end: set[int] = set()
        header = {
            "format": FORMAT, "version": FORMAT_VERSION, "role": self.role,
            "peers": list(self.peers), "session": session, "config": dict(config),
            "started_at": time.time(), "digest_over": digest_over,
        }
        data = self._packer.pack(header)  # fails early if config is not plain data
        self._file: IO[bytes] | None = create_private_file(self.path, force=force)
        self._file.write(data)

    # -- the Transport interface ---------------------------------------------------------

    async def send(self, peer: int, frame: bytes) -> None:
        self._record("send", "frame", peer, frame)
        await self.inner.send(peer, frame)

    async def receive(self) -> tuple[int, bytes | None]:
        try:
            peer, frame = await self.inner.receive()
        except ProtocolError as exc:
            self._record("recv", "error", -1 if exc.peer is None else exc.peer, error=str(exc))
            raise
        if frame is None:
            self._received_end.add(peer)
            self._record("recv", "end", peer)
        else:
            self._record("recv", "frame", peer, frame)
        return peer, frame

    async def close_peer(self, peer: int) -> None:
        if peer not in self._sent_end:
            self._sent_end.add(peer)
            self._record("send", "end", peer)
        await self.inner.close_peer(peer)

    async def aclose(self) -> None:
        """Close every peer stream (recorded), the inner transport, then the trace."""
        try:
            for peer in self.peers:
                await self.close_peer(peer)
            await self.inner.aclose()
        finally:
            self.close()

    # -- the trace file ------------------------------------------------------------------

    def close(self) -> None:
        """Write the trailer and close the trace file (idempotent)."""
        if self._file is None:
            return
        file, self._file = self._file, None
        with file:
            file.write(self._packer.pack({
                "event": "trailer", "records": self._records,
                "t": time.monotonic() - self._start,
            }))

    async def __aenter__(self) -> RecordingTransport:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    def _record(
        self, direction: Direction, event: Event, peer: int, frame: bytes | None = None,
        *, error: str | None = None,
    ) -> None:
        if self._file is None:
            return  # finished: later events (a caller's extra close_peer) are not part of it
        elide = frame is not None and self.digest_over is not None and len(frame) > self.digest_over
        self._file.write(self._packer.pack({
            "dir": direction, "event": event, "peer": peer,
            "t": time.monotonic() - self._start,
            "size": 0 if frame is None else len(frame),
            "steps": None if frame is None else _steps(frame),
            "frame": None if elide else frame,
            "digest": frame_digest(frame) if elide and frame is not None else None,
            "error": error,
        }))
        self._records += 1
        everyone = set(self.peers)
        if self._sent_end >= everyone and self._received_end >= everyone:
            self.close()


# ----------------------------------------------------------------------------- reading


def _expect(record: Mapping[str, Any], key: str, types: type | tuple[type, ...],
            where: str, *, optional: bool = False) -> Any:
    value = record.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, types):
        raise TraceError(f"{where}: field {key!r} is missing or of the wrong type")
    return value


def _parse_header(obj: Any) -> TraceHeader:
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise TraceError(f"not a {FORMAT} file (bad header)")
    version = obj.get("version")
    if version != FORMAT_VERSION:
        raise TraceError(f"trace format version {version!r} is not supported (only 1)")
    peers = _expect(obj, "peers", list, "header")
    if not all(isinstance(p, int) for p in peers):
        raise TraceError("header: peers must be integers")
    return TraceHeader(
        role=_expect(obj, "role", int, "header"),
        peers=tuple(peers),
        session=_expect(obj, "session", bytes, "header"),
        config=_expect(obj, "config", dict, "header"),
        started_at=float(_expect(obj, "started_at", (int, float), "header")),
        digest_over=_expect(obj, "digest_over", int, "header", optional=True),
        version=version,
    )


def _parse_steps(value: Any, where: str) -> tuple[TraceStep, ...] | None:
    if value is None:
        return None
    try:
        return tuple(
            TraceStep(tuple(int(p) for p in path), int(seq), int(rnd), str(msg))
            for path, seq, rnd, msg in value
        )
    except (TypeError, ValueError):
        raise TraceError(f"{where}: malformed steps") from None


def _parse_record(obj: Any, index: int) -> TraceRecord:
    where = f"record {index}"
    if not isinstance(obj, dict):
        raise TraceError(f"{where} is not a map")
    direction = obj.get("dir")
    event = obj.get("event")
    if direction not in ("send", "recv") or event not in ("frame", "end", "error"):
        raise TraceError(f"{where}: unknown direction {direction!r} or event {event!r}")
    frame = _expect(obj, "frame", bytes, where, optional=True)
    digest = _expect(obj, "digest", bytes, where, optional=True)
    size = _expect(obj, "size", int, where)
    if event == "frame":
        if (frame is None) == (digest is None):
            raise TraceError(f"{where}: a frame record needs exactly one of frame and digest")
        if frame is not None and len(frame) != size:
            raise TraceError(f"{where}: frame of {len(frame)} bytes recorded as {size}")
    return TraceRecord(
        direction=direction, event=event, peer=_expect(obj, "peer", int, where),
        time=float(_expect(obj, "t", (int, float), where)), size=size,
        steps=_parse_steps(obj.get("steps"), where), frame=frame, digest=digest,
        error=_expect(obj, "error", str, where, optional=True),
    )


def read_trace(path: str | os.PathLike[str]) -> tuple[TraceHeader, Iterator[TraceRecord]]:
    """The header of a trace and an iterator over its records (read lazily).

    Raises :class:`TraceError` at once for a bad header or unknown version; the iterator
    raises it where the file is malformed or truncated (after the records before that point),
    including a trace that lacks its trailer.
    """
    file = open(path, "rb")  # noqa: SIM115 (closed by the iterator)
    unpacker = msgpack.Unpacker(
        file, raw=False, strict_map_key=False, max_buffer_size=_MAX_RECORD_BYTES
    )
    try:
        header = _parse_header(next(unpacker))
    except StopIteration:
        file.close()
        raise TraceError(f"{os.fspath(path)} is empty or truncated in its header") from None
    except TraceError as exc:
        file.close()
        raise TraceError(f"{os.fspath(path)}: {exc}") from None
    except (ValueError, msgpack.UnpackException) as exc:
        file.close()
        raise TraceError(f"{os.fspath(path)}: malformed trace header: {exc}") from None
    return header, _records(file, unpacker)


def _records(file: IO[bytes], unpacker: msgpack.Unpacker) -> Iterator[TraceRecord]:
    with file:
        index = 0
        try:
            for obj in unpacker:
                if isinstance(obj, dict) and obj.get("event") == "trailer":
                    if obj.get("records") != index:
                        raise TraceError(
                            f"trailer counts {obj.get('records')!r} records, found {index}"
                        )
                    if unpacker.tell() != os.fstat(file.fileno()).st_size:
                        raise TraceError("data after the trailer")
                    return
                yield _parse_record(obj, index)
                index += 1
        except (ValueError, msgpack.UnpackException) as exc:
            raise TraceError(f"malformed record {index}: {exc}") from None
        if unpacker.tell() != os.fstat(file.fileno()).st_size:
            raise TraceError(f"trace truncated in the middle of record {index}")
        raise TraceError(f"trace truncated after {index} records (no trailer)")
