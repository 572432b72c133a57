"""Recording transport: wraps any transport and writes every frame to a trace file.

**The trace holds key material and secret shares** (see :mod:`puma_async.trace.format`, which
also describes what is written): it is created 0600 and an existing one is replaced only with
``force``.

Each frame is recorded with its envelopes' steps (read by :func:`puma_async.codec.decode_frame`;
a frame that does not decode is recorded with none), from the task that sends or receives it,
so records are in event order. The trace is finished (trailer written, file closed) by
:meth:`RecordingTransport.close`, by :meth:`~RecordingTransport.aclose`, on leaving
``async with``, or by itself once every peer's stream has ended both ways.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from puma_async.codec import decode_frame
from puma_async.errors import ProtocolError
from puma_async.trace.format import Direction, Event, TraceStep, TraceWriter
from puma_async.transports.base import Transport


def frame_steps(frame: bytes) -> list[TraceStep] | None:
    """The step, sequence number, round and message type of each envelope of ``frame``, or
    None if it does not decode."""
    try:
        envelopes = decode_frame(frame, max_bytes=max(len(frame), 1))
    except ProtocolError:
        return None
    return [TraceStep(e.path, e.seq, e.round, type(e.message).__name__) for e in envelopes]


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
        self._sent_end: set[int] = set()
        self._received_end: set[int] = set()
        self._writer = TraceWriter(self.path, role=self.role, peers=self.peers, session=session,
                                   config=config, digest_over=digest_over, force=force)

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
        self._writer.close()

    async def __aenter__(self) -> RecordingTransport:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    def _record(
        self, direction: Direction, event: Event, peer: int, frame: bytes | None = None,
        *, error: str | None = None,
    ) -> None:
        if self._writer.closed:
            return  # finished: later events (a caller's extra close_peer) are not part of it
        steps = None if frame is None else frame_steps(frame)
        self._writer.write(direction, event, peer, frame, steps=steps, error=error)
        everyone = set(self.peers)
        if self._sent_end >= everyone and self._received_end >= everyone:
            self.close()
