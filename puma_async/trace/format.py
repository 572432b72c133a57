"""The trace file format: what a recording holds, how it is written and read back.

**A trace holds key material and secret shares** (PRG seeds, the shares of the weights and of
the client's input, everything this party saw): store it like a private key, and share it only
with whoever may see this party's view of the session. :class:`TraceWriter` creates the file
0600 (whatever the umask) and never overwrites an existing one unless the caller passes
``force`` (:func:`puma_async.files.create_private_file`).

Format (``puma-async-trace``, version 1)
----------------------------------------
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

Envelopes ready in the same scheduling tick are coalesced into one frame, so a replay compares
sent envelopes (``steps`` and payload), not frame boundaries
(:mod:`puma_async.trace.replayer`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any, Literal

import msgpack

from puma_async.codec import DEFAULT_MAX_FRAME_BYTES, format_path
from puma_async.errors import TraceError
from puma_async.files import create_private_file

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


class TraceWriter:
    """Writes one trace: the header at once, then one record per :meth:`write`, then the
    trailer on :meth:`close`.

    Records are written synchronously (into the page cache) by whoever calls :meth:`write`,
    so they are in call order without locks. ``config`` must be plain msgpack data (checked
    before the file is created). The file is created 0600; an existing one is refused
    (FileExistsError) unless ``force``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        role: int,
        peers: Sequence[int],
        session: bytes,
        config: Mapping[str, Any],
        digest_over: int | None = None,
        force: bool = False,
    ):
        self.digest_over = digest_over
        self.records = 0
        self._packer = msgpack.Packer(use_bin_type=True)
        self._start = time.monotonic()
        header = {
            "format": FORMAT, "version": FORMAT_VERSION, "role": role, "peers": list(peers),
            "session": session, "config": dict(config), "started_at": time.time(),
            "digest_over": digest_over,
        }
        data = self._packer.pack(header)  # fails early if config is not plain data
        self._file: IO[bytes] | None = create_private_file(path, force=force)
        self._file.write(data)

    @property
    def closed(self) -> bool:
        return self._file is None

    def write(
        self, direction: Direction, event: Event, peer: int, frame: bytes | None = None, *,
        steps: Sequence[TraceStep] | None = None, error: str | None = None,
    ) -> None:
        """Append one record (nothing once closed); a frame larger than ``digest_over`` is
        stored by its digest."""
        if self._file is None:
            return
        elide = frame is not None and self.digest_over is not None and len(frame) > self.digest_over
        self._file.write(self._packer.pack({
            "dir": direction, "event": event, "peer": peer,
            "t": time.monotonic() - self._start,
            "size": 0 if frame is None else len(frame),
            "steps": None if steps is None else [
                [list(s.path), s.seq, s.round, s.message] for s in steps
            ],
            "frame": None if elide else frame,
            "digest": frame_digest(frame) if elide and frame is not None else None,
            "error": error,
        }))
        self.records += 1

    def close(self) -> None:
        """Write the trailer and close the file (idempotent)."""
        if self._file is None:
            return
        file, self._file = self._file, None
        with file:
            file.write(self._packer.pack({
                "event": "trailer", "records": self.records, "t": time.monotonic() - self._start,
            }))


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
