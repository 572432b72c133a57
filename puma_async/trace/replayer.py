"""Replay transport: re-runs one party against its trace and checks what it sends.

A :class:`ReplayTransport` plays the peers of the party that recorded a trace
(:mod:`puma_async.trace.recorder`):

* ``receive`` hands the party the frames its peers sent in the recording, in the recorded
  order, and each one only once the party has sent every envelope it had sent before that
  frame arrived in the recording. So a replay sees the same causal order as the run (a peer's
  ``Abort`` or disconnect arrives at the same point, not before the party did its work).
* ``send`` splits each frame into envelopes and checks each against the recording by its key
  (peer, step path, seq), since how envelopes are coalesced into frames varies between runs:
  same round, same message type, same bytes. Frames stored by digest only are checked once
  all their envelopes were sent (re-built in the recorded grouping, hashed, compared).
* ``close_peer`` checks that nothing recorded for that peer is still missing.

The first difference is kept as :attr:`ReplayTransport.divergence` (and raised to the sender)
as a :class:`~puma_async.trace.divergence.Divergence`: the step path, peer, round and what
differs, without secret values unless ``show_values`` (:mod:`puma_async.trace.divergence`).

Frames stored by digest only (``digest_over``: the weight shares of a real model) are
re-derived: if the peer that sent them is replayed alongside from its own trace (a *source*,
see :meth:`ReplayTransport.derive_from`), the envelopes it sends us are regrouped as recorded,
checked against the recorded digest and fed. Without a source such a frame stops the replay
with a :class:`ReplayFeedError`.

A replay has no deadline. A party that waits for a frame the recording delivers only after an
envelope the party never sends would wait forever; :func:`watch_for_deadlock`, run beside the
replays, notices that nothing can happen any more (every task waits, no worker thread runs,
no timer is set) and makes that never-sent envelope the divergence.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence

import trio
import trio.testing

from puma_async.codec import Abort, Envelope, decode_frame, frame_from_encoded, split_frame
from puma_async.errors import PeerDisconnectedError, ProtocolError, TraceError
from puma_async.roles import role_name
from puma_async.trace.divergence import Divergence, DivergenceError, describe_difference
from puma_async.trace.format import TraceHeader, TraceRecord, frame_digest, read_trace
from puma_async.transports.base import Transport

Key = tuple[int, tuple[int, ...], int]  # (peer, step path, seq)
DEADLOCK_CUSHION = 0.05
"""Seconds (real time) every task must have been waiting before a replay counts as stuck."""


class ReplayFeedError(ProtocolError):
    """A recorded frame cannot be fed to the replay (stored by digest only, no source)."""


@dataclasses.dataclass
class _Expected:
    """One recorded sent envelope."""

    record: int  # index of its send record
    round: int
    message: str
    raw: bytes | None  # the encoded envelope (None: stored by digest only)
    seen: bool = False


@dataclasses.dataclass
class _DigestFrame:
    """A sent frame stored by digest only: checked once all its envelopes were sent."""

    peer: int
    keys: list[Key]
    digest: bytes
    got: dict[Key, bytes] = dataclasses.field(default_factory=dict)


class ReplayTransport(Transport):
    """The peers of one recorded party, played back from its trace (module docstring)."""

    def __init__(self, header: TraceHeader, records: Sequence[TraceRecord], *,
                 truncated: bool = False, show_values: bool = False):
        self.header = header
        self.show_values = show_values
        self.role = header.role
        self.peers = tuple(header.peers)
        self.records = tuple(records)
        self.truncated = truncated
        self.divergence: Divergence | None = None
        self.sent_envelopes = 0
        self._expected: dict[Key, _Expected] = {}
        self._digest_frames: dict[Key, _DigestFrame] = {}
        self._incoming: list[tuple[int, TraceRecord]] = []
        self._pending: dict[int, int] = {}  # send record -> its envelopes not yet sent
        self._pending_records: list[int] = []  # send records with envelopes, in order
        self._cursor = 0  # into _pending_records: the oldest record maybe not fully sent
        self._progress = trio.Event()
        for index, record in enumerate(records):
            if record.direction == "recv":
                self._incoming.append((index, record))
            elif record.event == "frame":
                self._expect(index, record)
        self._next = 0
        self.total_envelopes = len(self._expected)
        self._forward: dict[int, ReplayTransport] = {}  # receiver -> its replay (we are a source)
        self._derived: dict[tuple[int, tuple[int, ...], int], bytes] = {}  # from sources
        self._sources: set[int] = set()
        self._derived_event = trio.Event()
        self.feed_error: ReplayFeedError | None = None
        self._waiting = False  # receive waits for the party to send or for a source
        self._stuck = False

    def derive_from(self, source: ReplayTransport) -> None:
        """Take the frames ``source``'s party sends us (replayed) instead of recorded bytes."""
        source._forward[self.role] = self
        self._sources.add(source.role)

    def needs_sources(self) -> set[int]:
        """Peers whose frames to us are stored by digest only (their replay must feed us)."""
        return {r.peer for _, r in self._incoming if r.event == "frame" and r.frame is None}

    def _provide(self, sender: int, env: Envelope, raw: bytes) -> None:
        self._derived[(sender, env.path, env.seq)] = raw
        self._derived_event.set()
        self._derived_event = trio.Event()

    async def _rederive(self, index: int, record: TraceRecord) -> bytes:
        if record.peer not in self._sources or record.steps is None:
            self.feed_error = ReplayFeedError(
                f"record {index}: the frame from {role_name(record.peer)} is stored by digest "
                f"only; replay {role_name(record.peer)}'s trace alongside to re-derive it"
            )
            raise self.feed_error
        keys = [(record.peer, step.path, step.seq) for step in record.steps]
        while not all(k in self._derived for k in keys):
            await self._wait(self._derived_event)
            if self._stuck:
                self.feed_error = ReplayFeedError(
                    f"record {index}: the frame from {role_name(record.peer)} was never "
                    f"re-derived: {role_name(record.peer)}'s replay stopped before sending it"
                )
                raise self.feed_error
        frame = frame_from_encoded([self._derived.pop(k) for k in keys])
        if frame_digest(frame) != record.digest:
            self.feed_error = ReplayFeedError(
                f"record {index}: the frame re-derived from {role_name(record.peer)} does not "
                "match the recorded digest"
            )
            raise self.feed_error
        return frame

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, show_values: bool = False
                  ) -> ReplayTransport:
        """Read a trace; a trace cut short (no trailer) replays up to where it ends."""
        header, iterator = read_trace(path)
        records: list[TraceRecord] = []
        try:
            records.extend(iterator)
        except TraceError as exc:
            if "truncated" not in str(exc):
                raise
            return cls(header, records, truncated=True, show_values=show_values)
        return cls(header, records, show_values=show_values)

    def _expect(self, index: int, record: TraceRecord) -> None:
        peer = record.peer
        if record.frame is not None:
            try:
                envelopes = split_frame(record.frame)
            except ProtocolError as exc:
                raise TraceError(f"send record {index}: the recorded frame does not decode: "
                                 f"{exc}") from None
            for raw, env in envelopes:
                self._add(index, (peer, env.path, env.seq), env.round,
                          type(env.message).__name__, raw)
            return
        if record.steps is None or record.digest is None:
            raise TraceError(f"send record {index} has neither its frame nor its steps")
        frame = _DigestFrame(peer, [], record.digest)
        for step in record.steps:
            key = (peer, step.path, step.seq)
            self._add(index, key, step.round, step.message, None)
            frame.keys.append(key)
            self._digest_frames[key] = frame

    def _add(self, index: int, key: Key, round_: int, message: str, raw: bytes | None) -> None:
        if key in self._expected:
            raise TraceError(f"send record {index}: envelope {key} recorded twice")
        self._expected[key] = _Expected(index, round_, message, raw)
        if index not in self._pending:
            self._pending[index] = 0
            self._pending_records.append(index)
        self._pending[index] += 1

    def _oldest_unsent(self) -> int | None:
        """The index of the oldest send record with an envelope not sent yet, or None."""
        while (self._cursor < len(self._pending_records)
               and self._pending[self._pending_records[self._cursor]] == 0):
            self._cursor += 1
        if self._cursor == len(self._pending_records):
            return None
        return self._pending_records[self._cursor]

    # -- the Transport interface ---------------------------------------------------------

    async def send(self, peer: int, frame: bytes) -> None:
        await trio.lowlevel.checkpoint()
        if self.divergence is not None:
            raise DivergenceError(self.divergence)
        for raw, env in split_frame(frame):
            self._check(peer, raw, env)
        self._progress.set()
        self._progress = trio.Event()

    def _check(self, peer: int, raw: bytes, env: Envelope) -> None:
        key = (peer, env.path, env.seq)
        want = self._expected.get(key)
        if isinstance(env.message, Abort) and self.feed_error is not None:
            return  # the replay could not go on: not a divergence of the party
        if isinstance(env.message, Abort) and (want is None or want.message != "Abort"):
            self._diverge(Divergence(peer, env.path, env.seq, env.round,
                                     f"the party aborted: {env.message.reason}"))
        if want is None:
            what = type(env.message).__name__
            if isinstance(env.message, Abort):
                what += f" ({env.message.reason})"
            self._diverge(Divergence(peer, env.path, env.seq, env.round,
                                     f"{what} not in the recording"))
        elif want.seen:
            self._diverge(Divergence(peer, env.path, env.seq, env.round, "sent twice"))
        elif want.raw is not None and raw != want.raw:
            (recorded,) = decode_frame(frame_from_encoded([want.raw]))
            self._diverge(Divergence(peer, env.path, env.seq, env.round,
                                     describe_difference(env, recorded,
                                                         show_values=self.show_values)))
        elif want.raw is None and (want.round, want.message) != (
            env.round, type(env.message).__name__
        ):
            self._diverge(Divergence(
                peer, env.path, env.seq, env.round,
                f"{type(env.message).__name__} in round {env.round}, recorded {want.message} "
                f"in round {want.round}",
            ))
        want.seen = True
        self.sent_envelopes += 1
        if peer in self._forward:
            self._forward[peer]._provide(self.role, env, raw)
        self._pending[want.record] -= 1
        digest_frame = self._digest_frames.get(key)
        if digest_frame is not None:
            digest_frame.got[key] = raw
            if len(digest_frame.got) == len(digest_frame.keys):
                rebuilt = frame_from_encoded([digest_frame.got[k] for k in digest_frame.keys])
                if frame_digest(rebuilt) != digest_frame.digest:
                    first = digest_frame.keys[0]
                    self._diverge(Divergence(
                        peer, first[1], first[2], None,
                        f"the frame of {len(digest_frame.keys)} envelopes stored by digest "
                        "only differs (payload bytes)",
                    ))

    def _diverge(self, divergence: Divergence) -> None:
        if self.divergence is None:
            self.divergence = divergence
        raise DivergenceError(self.divergence)

    async def receive(self) -> tuple[int, bytes | None]:
        if self._next >= len(self._incoming):
            await trio.lowlevel.checkpoint()
            raise PeerDisconnectedError(
                "the recording ends here" + (" (the trace was cut short)" if self.truncated
                                             else "")
            )
        index, record = self._incoming[self._next]
        while (oldest := self._oldest_unsent()) is not None and oldest < index:
            await self._wait(self._progress)
            if self._stuck:
                raise DivergenceError(self._never_sent(oldest))
        self._next += 1
        await trio.lowlevel.checkpoint()
        if record.event == "end":
            return record.peer, None
        if record.event == "error":
            raise PeerDisconnectedError(record.error or "receive failed in the recording",
                                        peer=None if record.peer < 0 else record.peer)
        if record.frame is None:
            return record.peer, await self._rederive(index, record)
        return record.peer, record.frame

    async def close_peer(self, peer: int) -> None:
        await trio.lowlevel.checkpoint()
        if self.divergence is not None or self.feed_error is not None:
            return
        missing = [k for k, e in self._expected.items() if k[0] == peer and not e.seen]
        if missing:
            peer_, path, seq = min(missing, key=lambda k: self._expected[k].record)
            want = self._expected[(peer_, path, seq)]
            self._diverge(Divergence(peer, path, seq, want.round,
                                     f"recorded {want.message} was never sent"))

    async def _wait(self, event: trio.Event) -> None:
        self._waiting = True
        try:
            await event.wait()
        finally:
            self._waiting = False

    def _never_sent(self, record: int) -> Divergence:
        """The divergence of a stuck replay: the first envelope of send record ``record``
        that the party never sent."""
        if self.divergence is None:
            peer, path, seq = next(
                k for k, e in self._expected.items() if e.record == record and not e.seen
            )
            want = self._expected[(peer, path, seq)]
            self.divergence = Divergence(
                peer, path, seq, want.round,
                f"recorded {want.message} was never sent (the party waits for a later message)",
            )
        return self.divergence

    def give_up(self) -> bool:
        """Nothing can happen any more: a waiting :meth:`receive` raises the envelope the
        party never sent as the divergence (or the frame no source re-derived as a feed
        error). False if :meth:`receive` is not waiting."""
        if not self._waiting:
            return False
        self._stuck = True
        self._progress.set()
        self._derived_event.set()
        return True

    def unsent(self) -> list[Key]:
        """Recorded envelopes the replay has not sent (in recorded order)."""
        keys = [k for k, e in self._expected.items() if not e.seen]
        return sorted(keys, key=lambda k: self._expected[k].record)


async def watch_for_deadlock(replays: Sequence[ReplayTransport]) -> None:
    """Run beside the replays (until cancelled): whenever nothing can happen any more (every
    task waits, no worker thread runs, no timer is set), the waiting replays give up."""
    limiter = trio.to_thread.current_default_thread_limiter()
    while True:
        await trio.testing.wait_all_tasks_blocked(DEADLOCK_CUSHION)
        stats = trio.lowlevel.current_statistics()
        idle = (
            stats.seconds_to_next_deadline == math.inf and not stats.run_sync_soon_queue_size
            and not limiter.borrowed_tokens
        )
        if not (idle and any([replay.give_up() for replay in replays])):
            await trio.sleep(DEADLOCK_CUSHION)  # a thread or a timer may still move things
