"""The party runtime: one role's I/O around its program, and the program's lifecycle.

:class:`PartyRuntime` is the state every step of a role shares (:mod:`.context` is the step's
handle on it): incoming frames are filed in the :class:`~puma_async.mailbox.Mailbox` (pushed
there by the transport, or pulled by a reader task), one writer task per peer sends what the
steps queue (merging the small frames ready for that peer; the in-process transports send from
the step itself), and per-party state installed by set-up steps (keys, seeds) lives here.

:func:`open_party` runs those tasks and the liveness watchdog (:mod:`puma_async.liveness`:
heartbeats, dead peers) around the program. A receive waits for as long as its sender is
alive; no step and no session has a deadline. If the program fails, the party sends an
``Abort`` to its peers, which stop with :class:`~puma_async.errors.PeerAbortedError` naming it
and the step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import structlog
import trio

from puma_async import codec, logs
from puma_async.codec import Abort, Arrays, Envelope, StepPath, format_path
from puma_async.context import Context, Step
from puma_async.diagnosis import OutboxStatistics, RuntimeStatistics
from puma_async.errors import PeerAbortedError, PeerDisconnectedError, ProtocolError
from puma_async.liveness import DEFAULT_LIVENESS, Liveness, LiveTransport
from puma_async.mailbox import Mailbox
from puma_async.roles import role_name
from puma_async.stats import PartyStats, StatsRecorder
from puma_async.transports.base import Transport

T = TypeVar("T")
MessageKey = tuple[str, int, StepPath, int]
"""A message as the runtime's observer sees it: (direction, peer, step path, seq)."""
_Queued = tuple[bytes, tuple[tuple[int, StepPath, int], ...]]
"""An encoded frame waiting for its peer's writer, with its envelopes' (receiver, path, seq)
(for the statistics' message records)."""
TransportWrapper = Callable[[Transport], Transport]
COALESCE_BYTES = 64 << 10
"""Small envelopes ready together share a frame up to this size; a larger one travels in a
frame of its own, which is sent without another copy."""
ABORT_GRACE = 5.0
"""Seconds a failing party spends handing its ``Abort`` to its peers' links (a dead peer's
link may never take it)."""

log = structlog.get_logger("puma_async.runtime")


@dataclasses.dataclass(frozen=True)
class PartyOptions:
    """How one party runs; what :func:`open_party` and :func:`run_party` take.

    ``session``: the id every envelope must carry. ``max_frame_bytes``: the largest frame
    decoded. ``entropy``: 32 bytes seeding the party's fresh keys (random if None; give it to
    replay a trace). ``sequential``: :meth:`Context.gather` runs its steps one after the other
    (same messages; measures what round overlapping saves). ``liveness``: heartbeats and when
    a silent peer is dead (:class:`~puma_async.liveness.Liveness`); None only where the peers
    are not live parties (a replay's recording). ``record_messages``: keep a record of every
    message sent in the statistics (:mod:`puma_async.stats`; benchmarks and tests, for the
    critical path; it grows with the session).
    """

    session: bytes
    max_frame_bytes: int = codec.DEFAULT_MAX_FRAME_BYTES
    entropy: bytes | None = None
    sequential: bool = False
    liveness: Liveness | None = DEFAULT_LIVENESS
    record_messages: bool = False


class PartyRuntime:
    """State shared by all steps of one role: transport, mailbox, outboxes, statistics."""

    def __init__(self, transport: Transport, options: PartyOptions):
        self.transport = transport
        self.options = options
        self.entropy = options.entropy if options.entropy is not None else secrets.token_bytes(32)
        self.role = transport.role
        self.peers = tuple(transport.peers)
        self.session = options.session
        self.mailbox = Mailbox(self.role)
        self.stats = StatsRecorder(self.role)
        if options.record_messages:
            self.stats.record()
        self.states: dict[type, object] = {}
        """Per-party state by type (:meth:`Context.state <puma_async.context.Context.state>`)."""
        self._outboxes = {}
        self._outbox_receivers = {}
        for peer in self.peers:
            send, receive = trio.open_memory_channel[_Queued](math.inf)
            self._outboxes[peer] = send
            self._outbox_receivers[peer] = receive
        self._queued = {peer: [0, 0] for peer in self.peers}  # frames, bytes not yet sent
        self._sending = dict.fromkeys(self.peers, 0)  # size of the frame being sent
        self.finished_peers: set[int] = set()
        self.reader_done = trio.Event()
        if not self.peers:  # a role alone has nobody's end of stream to wait for
            self.reader_done.set()
        self.final_stats: PartyStats | None = None
        """The statistics of a run that finished cleanly (set by :func:`open_party`)."""
        self.observer: Callable[[MessageKey, str, str], None] | None = None
        """If set, told ``(("send" or "recv", peer, step path, seq), phase, scope)`` of every
        message sent and received (replay's per-scope summary)."""

    # -- I/O tasks ---------------------------------------------------------------------

    def enqueue(self, env: Envelope) -> None:
        """Send an envelope: an array message to a peer in this event loop that takes it
        decoded, as that peer would decode it (:func:`.codec.detached`: copies of its arrays,
        its frame's exact size counted), else as a frame of its own (:meth:`enqueue_frame`).
        Either way now, so later changes to the message's arrays do not matter."""
        peer = env.receiver
        if type(env.message) is Arrays and self.transport.takes_decoded(peer):
            item, size = codec.detached(env)
            self.stats.frame_sent(peer, size, ((peer, env.path, env.seq),))
            self.transport.hand_over_decoded(peer, item)
            return
        self.enqueue_frame(peer, codec.encode_frame([env]), env.path, env.seq)

    def enqueue_frame(self, peer: int, frame: bytes, path: StepPath, seq: int) -> None:
        """Send an encoded frame of one envelope (``path``, ``seq``): at once on an immediate
        transport, else via the peer's writer task (which coalesces small frames that are
        ready together)."""
        if peer not in self._outboxes:
            raise ProtocolError(f"{role_name(peer)} is not a peer of {role_name(self.role)}")
        key = (peer, path, seq)
        if self.transport.immediate:
            self.stats.frame_sent(peer, len(frame), (key,))
            self.transport.send_immediately(peer, frame)
        else:
            self._queue(peer, (frame, (key,)))

    def _queue(self, peer: int, item: _Queued) -> None:
        self._outboxes[peer].send_nowait(item)
        queued = self._queued[peer]
        queued[0] += 1
        queued[1] += len(item[0])

    async def write_frames(self, peer: int) -> None:
        """Send everything queued for ``peer``, merging the frames that are ready into frames
        of up to :data:`COALESCE_BYTES` (a larger one travels alone, as it is)."""
        receive = self._outbox_receivers[peer]
        held: _Queued | None = None
        while True:
            if held is None:
                try:
                    held = await receive.receive()
                except trio.EndOfChannel:
                    break
            batch, size, held = [held], len(held[0]), None
            while size < COALESCE_BYTES:
                try:
                    item = receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                if size + len(item[0]) > COALESCE_BYTES:
                    held = item  # starts the next frame
                    break
                batch.append(item)
                size += len(item[0])
            frame = codec.merge_frames([part for part, _ in batch])
            self.stats.frame_sent(peer, len(frame), [key for _, keys in batch for key in keys])
            queued = self._queued[peer]
            queued[0] -= len(batch)
            queued[1] -= size
            self._sending[peer] = len(frame)
            try:
                await self.transport.send(peer, frame)
                self._sending[peer] = 0
            except Exception as exc:  # the frame cannot reach this peer
                self._sending[peer] = 0
                self.fail(exc if isinstance(exc, ProtocolError)  # refused (e.g. too large)
                          else PeerDisconnectedError(f"send failed: {exc}", peer=peer))
                async for _ in receive:  # keep accepting (and dropping) until closed
                    pass
                return
        with contextlib.suppress(Exception):  # a peer that is already gone needs no goodbye
            await self.transport.close_peer(peer)

    async def read_frames(self) -> None:
        """Pull incoming frames from the transport into the mailbox until every peer has
        finished (transports that push frames call :meth:`on_frame` themselves)."""
        while not self.reader_done.is_set():
            try:
                peer, frame = await self.transport.receive()
            except ProtocolError as exc:
                self.fail(exc)
                return
            self.on_frame(peer, frame)

    def on_frame(self, peer: int, frame: bytes | None) -> None:
        """File one incoming frame (None: ``peer`` has finished) in the mailbox.

        Failures (a bad frame, an ``Abort``) fail the mailbox, so every pending and future
        receive raises them, naming the peer and the step; nothing raises to the caller.
        """
        if self.reader_done.is_set():
            return
        if frame is None:
            self.finished_peers.add(peer)
            self.mailbox.fail_peer(
                peer, PeerDisconnectedError("peer finished or disconnected", peer=peer)
            )
            if self.finished_peers >= set(self.peers):
                self.reader_done.set()
            return
        try:
            for env in codec.decode_frame(
                frame, session=self.session, sender=peer, receiver=self.role,
                max_bytes=self.options.max_frame_bytes,
            ):
                if isinstance(env.message, Abort):
                    raise PeerAbortedError(
                        f"peer aborted: {env.message.reason}", peer=peer,
                        step=env.message.step,
                    )
                self.mailbox.deliver(env)
        except ProtocolError as exc:
            self.fail(exc)

    def on_decoded(self, peer: int, env: object) -> None:
        """File one envelope that ``peer``, in this event loop, handed over decoded
        (:meth:`enqueue`): :meth:`on_frame` without the decoding, so with its checks of the
        session and addresses (and of duplicates, the mailbox's)."""
        if self.reader_done.is_set():
            return
        assert isinstance(env, Envelope)
        try:
            codec.check_addressed(env, self.session, peer, self.role)
            self.mailbox.deliver(env)
        except ProtocolError as exc:
            self.fail(exc)

    def fail(self, error: ProtocolError) -> None:
        """The session is over: every pending and future receive raises ``error``.

        The first failure logs what the party was waiting for (:meth:`statistics`)."""
        if self.mailbox.failure is None:
            log.warning("session failing", role=role_name(self.role),
                        error=logs.public_error_text(error), state=self.statistics().describe())
        self.mailbox.fail_all(error)
        self.reader_done.set()

    async def close_outboxes(self) -> None:
        for send in self._outboxes.values():
            await send.aclose()

    async def abort(self, reason: str, step: str) -> None:
        """Queue an ``Abort`` after whatever is still queued for each peer, then close."""
        for peer in self._outboxes:
            env = Envelope(self.session, self.role, peer, (), 0, 0, Abort(reason, step))
            with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
                self._queue(peer, (codec.encode_frame([env]), ()))
        await self.close_outboxes()

    def statistics(self) -> RuntimeStatistics:
        """What this party is doing now: receives waiting by peer and step, envelopes not
        taken, frames and bytes queued per peer (:mod:`puma_async.diagnosis`)."""
        return RuntimeStatistics(
            role=self.role,
            mailbox=self.mailbox.statistics(),
            outboxes=tuple(
                OutboxStatistics(peer, *self._queued[peer], self._sending[peer])
                for peer in self.peers
            ),
            finished_peers=tuple(sorted(self.finished_peers)),
        )

    def check_unexpected(self) -> None:
        leftover = self.mailbox.unexpected()
        if leftover:
            sender, path, seq = leftover[0]
            raise ProtocolError(
                f"{len(leftover)} unexpected message(s) never received, first seq {seq}",
                peer=sender, step=format_path(path),
            )


@asynccontextmanager
async def open_party(
    transport: Transport, options: PartyOptions, *, wrap: TransportWrapper | None = None
) -> AsyncIterator[Context]:
    """Run the reader and writer tasks of one role around the block; yields the root step.

    ``transport`` is the network's; unless ``options.liveness`` is None it gets heartbeats and
    dead-peer detection (:class:`~puma_async.liveness.LiveTransport`), and ``wrap`` (e.g.
    recording) goes on top of that, so it sees the runtime's frames and never a heartbeat.

    On a clean exit every queued frame is flushed, peers are told we are done, and we wait for
    every peer to finish too, for as long as they are alive, so that a late failure of a peer
    or a message nobody received is reported (:class:`ProtocolError`) instead of lost. On an
    error, peers get an ``Abort`` naming the error and the step, and the error propagates.
    """
    live = None if options.liveness is None else LiveTransport(transport, options.liveness)
    stacked = live or transport
    runtime = PartyRuntime(stacked if wrap is None else wrap(stacked), options)
    root = Context(runtime)
    failure: BaseException | None = None
    async with trio.open_nursery() as nursery:
        if live is not None:
            nursery.start_soon(live.watch, runtime.fail)
        if not runtime.transport.push_to(runtime.on_frame, runtime.fail):
            nursery.start_soon(runtime.read_frames)
        else:  # frames are pushed: peers in this loop may hand over decoded messages too
            runtime.transport.push_decoded_to(runtime.on_decoded)
        writers_done = trio.Event()

        async def run_writers() -> None:
            async with trio.open_nursery() as inner:
                for peer in runtime.peers:
                    inner.start_soon(runtime.write_frames, peer)
            writers_done.set()

        nursery.start_soon(run_writers)
        started = trio.current_time()
        try:
            yield root
            elapsed = trio.current_time() - started
            await runtime.close_outboxes()
            await runtime.reader_done.wait()  # every peer finished, or the session failed
            if runtime.mailbox.failure is None:
                await writers_done.wait()
            if runtime.mailbox.failure is not None:
                raise runtime.mailbox.failure
            runtime.check_unexpected()
            runtime.final_stats = runtime.stats.snapshot(elapsed)
        except BaseException as exc:
            failure = exc
            step = exc.step if isinstance(exc, ProtocolError) and exc.step else root.step_name
            reason = _describe(exc, runtime.role)
            log.warning("party failed", role=role_name(runtime.role), error=reason, step=step)
            with trio.CancelScope(shield=True), trio.move_on_after(ABORT_GRACE):
                await runtime.abort(reason, step)
                await writers_done.wait()
        nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure


def _describe(exc: BaseException, role: int) -> str:
    if isinstance(exc, trio.Cancelled):
        return f"{role_name(role)} was cancelled"
    return f"{role_name(role)}: {logs.public_error_text(exc)}"


async def run_party(
    program: Step[T], transport: Transport, options: PartyOptions,
    *, wrap: TransportWrapper | None = None,
) -> tuple[T, PartyStats]:
    """Run ``program`` as one role over ``transport`` (``wrap``: see :func:`open_party`); its
    result and statistics."""
    async with open_party(transport, options, wrap=wrap) as ctx:
        result = await program(ctx)
    assert ctx.runtime.final_stats is not None  # open_party raises unless it finished cleanly
    return result, ctx.runtime.final_stats
