"""The party runtime: each role is a Trio task graph of protocol steps.

A protocol step is ``async def step(ctx: Context, ...)``. All computing parties run the same
program (SPMD) and name every message by its *step path* — the parent's path plus the child
index, fixed when a child step is created by :meth:`Context.gather` — and a per-step sequence
number. So the parties agree on every message key whatever order Trio schedules tasks in, and
independent steps run concurrently (round overlapping) without any coordination.

Around the program, :func:`open_party` files incoming frames in the
:class:`~puma_async.mailbox.Mailbox` (pushed there by the transport, or pulled by a reader
task), runs one writer task per peer (merging the small frames ready for that peer; the
in-process transports send from the step itself) and the liveness watchdog
(:mod:`puma_async.liveness`: heartbeats, dead peers). A receive waits for as long as its sender
is alive; no step and no session has a deadline. If the program fails, the party sends an
``Abort`` to its peers, which stop with :class:`~puma_async.errors.PeerAbortedError` naming it
and the step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import secrets
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeVar

import numpy as np
import structlog
import trio

from puma_async import codec, logs
from puma_async.codec import Abort, Arrays, Envelope, Message, StepPath, format_path
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
TransportWrapper = Callable[[Transport], Transport]
DEFAULT_PHASE = "online"
COALESCE_BYTES = 64 << 10
"""Small envelopes ready together share a frame up to this size; a larger one travels in a
frame of its own, which is sent without another copy."""
ENCODE_OFFLOAD_BYTES = 1 << 20
"""A message of this many payload bytes or more is encoded (copied into its frame) in a
worker thread, so that the event loop keeps moving heartbeats and other frames."""
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
    are not live parties (a replay's recording).
    """

    session: bytes
    max_frame_bytes: int = codec.DEFAULT_MAX_FRAME_BYTES
    entropy: bytes | None = None
    sequential: bool = False
    liveness: Liveness | None = DEFAULT_LIVENESS


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
        self.shared: dict[str, Any] = {}
        self._outboxes = {}
        self._outbox_receivers = {}
        for peer in self.peers:
            send, receive = trio.open_memory_channel[bytes](math.inf)
            self._outboxes[peer] = send
            self._outbox_receivers[peer] = receive
        self._queued = {peer: [0, 0] for peer in self.peers}  # frames, bytes not yet sent
        self._sending = dict.fromkeys(self.peers, 0)  # size of the frame being sent
        self.finished_peers: set[int] = set()
        self.reader_done = trio.Event()
        self.final_stats: PartyStats | None = None
        """The statistics of a run that finished cleanly (set by :func:`open_party`)."""
        self.observer: Callable[[MessageKey, str, str], None] | None = None
        """If set, told ``(("send" or "recv", peer, step path, seq), phase, scope)`` of every
        message sent and received (replay's per-scope summary)."""

    # -- I/O tasks ---------------------------------------------------------------------

    def enqueue(self, env: Envelope) -> None:
        """Send an envelope as a frame of its own (:meth:`enqueue_frame`). Encodes it now, so
        later changes to the message's arrays do not matter."""
        self.enqueue_frame(env.receiver, codec.encode_frame([env]))

    def enqueue_frame(self, peer: int, frame: bytes) -> None:
        """Send an encoded frame: at once on an immediate transport, else via the peer's
        writer task (which coalesces small frames that are ready together)."""
        if peer not in self._outboxes:
            raise ProtocolError(f"{role_name(peer)} is not a peer of {role_name(self.role)}")
        if self.transport.immediate:
            self.stats.frame_sent(peer, len(frame))
            self.transport.send_immediately(peer, frame)
        else:
            self._queue(peer, frame)

    def _queue(self, peer: int, frame: bytes) -> None:
        self._outboxes[peer].send_nowait(frame)
        queued = self._queued[peer]
        queued[0] += 1
        queued[1] += len(frame)

    async def write_frames(self, peer: int) -> None:
        """Send everything queued for ``peer``, merging the frames that are ready into frames
        of up to :data:`COALESCE_BYTES` (a larger one travels alone, as it is)."""
        receive = self._outbox_receivers[peer]
        held: bytes | None = None
        while True:
            if held is None:
                try:
                    held = await receive.receive()
                except trio.EndOfChannel:
                    break
            batch, size, held = [held], len(held), None
            while size < COALESCE_BYTES:
                try:
                    item = receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                if size + len(item) > COALESCE_BYTES:
                    held = item  # starts the next frame
                    break
                batch.append(item)
                size += len(item)
            frame = codec.merge_frames(batch)
            self.stats.frame_sent(peer, len(frame))
            queued = self._queued[peer]
            queued[0] -= len(batch)
            queued[1] -= size
            self._sending[peer] = len(frame)
            try:
                await self.transport.send(peer, frame)
                self._sending[peer] = 0
            except Exception as exc:  # any transport failure means this peer is gone
                self._sending[peer] = 0
                self.fail(PeerDisconnectedError(f"send failed: {exc}", peer=peer))
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
                self._queue(peer, codec.encode_frame([env]))
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


class Context:
    """One protocol step's handle on its party: send/receive, child steps, scopes, labels.

    Attributes: ``role`` (this party's role id), ``path`` (the step path), ``clock`` (rounds on
    this step's causal path so far).
    """

    def __init__(
        self,
        runtime: PartyRuntime,
        path: StepPath = (),
        *,
        clock: int = 0,
        scope: tuple[str, ...] = (),
        phase: str = DEFAULT_PHASE,
    ):
        self.runtime = runtime
        self.path = path
        self.clock = clock
        self.frontier = clock
        self._set_scope(scope)
        self._phase = phase
        self._children = 0
        self._send_seq: dict[int, int] = defaultdict(int)
        self._recv_seq: dict[int, int] = defaultdict(int)
        self._labels: dict[bytes, int] = defaultdict(int)

    # -- identity ----------------------------------------------------------------------

    @property
    def role(self) -> int:
        return self.runtime.role

    @property
    def session(self) -> bytes:
        return self.runtime.session

    @property
    def shared(self) -> dict[str, Any]:
        """Per-party state shared by all steps (e.g. the protocol layer's PRG keys)."""
        return self.runtime.shared

    @property
    def scope_name(self) -> str:
        return self._scope_name

    @property
    def step_name(self) -> str:
        return format_path(self.path)

    # -- messages ----------------------------------------------------------------------

    async def send(self, to: int, message: Message) -> None:
        """Send ``message`` to role ``to`` as the next message of this step to that peer.

        The message is encoded before this returns (so later changes to its arrays do not
        matter; a large one in a worker thread, :data:`ENCODE_OFFLOAD_BYTES`), then handed to
        an in-process peer at once, or queued for the peer's writer task. It never waits for
        the peer.
        """
        nbytes = codec.message_nbytes(message)
        if nbytes < ENCODE_OFFLOAD_BYTES:
            self.runtime.enqueue(self._stamp(to, message, nbytes))
        else:
            env = self._stamp(to, message, nbytes)
            frame = await trio.to_thread.run_sync(codec.encode_frame, [env])
            self.runtime.enqueue_frame(to, frame)

    def _stamp(self, to: int, message: Message, nbytes: int) -> Envelope:
        """The envelope of the next message of this step to ``to``, accounted for (every
        send goes through here)."""
        seq = self._send_seq[to]
        self._send_seq[to] = seq + 1
        round_ = self.clock + 1
        runtime = self.runtime
        if round_ > self.frontier:
            self.frontier = round_
        runtime.stats.message(self._phase, self._scope_name, to, nbytes, round_, False)
        if runtime.observer is not None:
            runtime.observer(("send", to, self.path, seq), self._phase, self._scope_name)
        return Envelope(runtime.session, runtime.role, to, self.path, seq, round_, message)

    async def recv(self, frm: int) -> Message:
        """Receive the next message of this step from role ``frm`` (waits for as long as
        ``frm`` is alive)."""
        seq = self._recv_seq[frm]
        self._recv_seq[frm] = seq + 1
        key = (frm, self.path, seq)
        env = self.runtime.mailbox.take_ready(key)
        if env is None:  # not here yet: wait for it
            env = await self.runtime.mailbox.wait_for(key)
        self.clock = max(self.clock, env.round)
        self.frontier = max(self.frontier, self.clock)
        self.runtime.stats.message(
            self._phase, self._scope_name, frm, codec.message_nbytes(env.message), env.round,
            True,
        )
        if self.runtime.observer is not None:
            self.runtime.observer(("recv", *key), self._phase, self._scope_name)
        return env.message

    async def send_arrays(self, to: int, *arrays: np.ndarray) -> None:
        """Send arrays (numpy scalars become 0-d arrays) as one :class:`Arrays` message."""
        await self.send(to, Arrays(tuple(map(np.asarray, arrays))))

    async def recv_arrays(self, frm: int, count: int | None = None) -> tuple[np.ndarray, ...]:
        """Receive an :class:`Arrays` message (optionally checking how many arrays it holds)."""
        msg = await self.recv(frm)
        if not isinstance(msg, Arrays) or (count is not None and len(msg.arrays) != count):
            raise ProtocolError(
                f"expected {count if count is not None else 'some'} arrays, "
                f"got {type(msg).__name__}",
                peer=frm, step=self.step_name,
            )
        return msg.arrays

    async def recv_array(self, frm: int) -> np.ndarray:
        (array,) = await self.recv_arrays(frm, 1)
        return array

    # -- structure ---------------------------------------------------------------------

    def child(self) -> Context:
        """A new child step (path = this path + next child index), starting at this clock."""
        index = self._children
        self._children += 1
        return Context(
            self.runtime, (*self.path, index), clock=self.clock, scope=self._scope,
            phase=self._phase,
        )

    def join(self, children: Sequence[Context]) -> None:
        """Merge finished children's round clocks back into this step (and let the mailbox
        forget the keys they received)."""
        for c in children:
            self.clock = max(self.clock, c.clock)
            self.frontier = max(self.frontier, c.frontier)
            self.runtime.mailbox.forget(c.path)

    async def gather(self, *steps: Callable[[Context], Awaitable[Any]]) -> list[Any]:
        """Run independent steps concurrently, each in its own child step; their results.

        Child paths are fixed here, in argument order, before any of them starts, so all
        parties agree on them. Rounds of the whole equal those of the longest step. With the
        runtime's ``sequential`` switch on, the steps run one after the other instead (same
        messages; used to measure what overlapping saves).
        """
        if self.runtime.options.sequential:
            return await self.run_sequentially(*steps)
        children = [self.child() for _ in steps]
        results: list[Any] = [None] * len(steps)

        async def run(i: int) -> None:
            results[i] = await steps[i](children[i])

        try:
            async with trio.open_nursery() as nursery:
                for i in range(1, len(steps)):
                    nursery.start_soon(run, i)
                if steps:  # the first step runs in this task: one task spawn (~23 us) fewer
                    await run(0)
        except BaseExceptionGroup as group:
            raise _first_error(group) from None
        self.join(children)
        return results

    async def run_sequentially(
        self, *steps: Callable[[Context], Awaitable[Any]]
    ) -> list[Any]:
        """Like :meth:`gather` (same child paths and messages) but one after the other."""
        results = []
        for step in steps:
            child = self.child()
            results.append(await step(child))
            self.join([child])
        return results

    def _set_scope(self, scope: tuple[str, ...]) -> None:
        self._scope = scope
        self._scope_name = ".".join(scope)  # joined once: every message is accounted to it

    @contextmanager
    def scope(self, name: str) -> Iterator[None]:
        """Attribute traffic, rounds and wall time inside to the nested scope ``outer.name``."""
        outer = self._scope
        self._set_scope((*outer, *name.split(".")))
        start, started = self.clock, time.perf_counter()
        try:
            yield
        finally:
            self.runtime.stats.scope_exit(
                self._phase, self.scope_name, self.frontier - start,
                time.perf_counter() - started,
            )
            self._set_scope(outer)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Attribute traffic and rounds inside to phase ``name`` ('setup', 'online')."""
        outer = self._phase
        self._phase = name
        try:
            yield
        finally:
            self._phase = outer

    def label(self, purpose: bytes = b"") -> bytes:
        """A label for a PRG draw, unique within the session and equal at every party.

        It names this step path, the purpose and how many labels of that purpose this step
        drew before; parties that share a key must draw the same labels in the same order
        within a step (child steps keep concurrent draws apart).
        """
        count = self._labels[purpose]
        self._labels[purpose] = count + 1
        return codec.packb([list(self.path), purpose, count])

    def fresh_key(self, size: int = 16) -> bytes:
        """A new secret key for this party (PRG keys, input seeds).

        Derived from the party's ``entropy`` (32 random bytes per run unless given) and a label
        of this step, so a party re-run from a trace with the same entropy draws the same keys.
        """
        return hashlib.blake2b(
            self.label(b"key"), key=self.runtime.entropy, digest_size=size
        ).digest()


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


def _first_error(group: BaseExceptionGroup) -> BaseException:
    """The first real error of a nursery's group (what a failing child step raised)."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    real = [e for e in leaves if not isinstance(e, trio.Cancelled)]
    return (real or leaves)[0]


def _describe(exc: BaseException, role: int) -> str:
    if isinstance(exc, trio.Cancelled):
        return f"{role_name(role)} was cancelled"
    return f"{role_name(role)}: {logs.public_error_text(exc)}"


async def run_party(
    program: Callable[[Context], Awaitable[T]], transport: Transport, options: PartyOptions,
    *, wrap: TransportWrapper | None = None,
) -> tuple[T, PartyStats]:
    """Run ``program`` as one role over ``transport`` (``wrap``: see :func:`open_party`); its
    result and statistics."""
    async with open_party(transport, options, wrap=wrap) as ctx:
        result = await program(ctx)
    assert ctx.runtime.final_stats is not None  # open_party raises unless it finished cleanly
    return result, ctx.runtime.final_stats
