"""Communication accounting: bytes, messages and rounds per phase, scope and peer.

*Bytes* are payload bytes (the raw bytes of the arrays a message carries; the encoded size for
other messages), which is what MPC papers and SPU report; *wire bytes* add the envelope and
frame overhead. *Rounds* are the critical-path depth of communication: a message sent after
receiving one of round r is in round r + 1. A scope's rounds are the growth of that depth
while the scope was open, summed over its entries (the scope's *span*: scopes that run side
by side each count the rounds they share; :mod:`puma_async.critical_path` attributes each
round to one scope instead); scopes are inclusive (``layer3`` contains
``layer3.attn``). A phase's rounds (``setup``, ``online``) span from the first to the last
round of its messages, so phases are meant to follow one another; offline work counts from
round 0 wherever it runs (:meth:`~puma_async.context.Context.phase`), so the rounds of phase
``offline`` (of any scope) are the latest round of its messages: the deepest preparation's.

*Frames* are what the party handed to the transport (a frame may hold several envelopes:
:mod:`puma_async.runtime`).

**Message records** (``PartyOptions(record_messages=True)``): every message sent, with its
round, its *parent* (the received message that last raised the sender's clock), its phase,
scope, payload bytes and the frame it left in. :mod:`puma_async.critical_path` walks them
back across the parties to attribute each round of a step to exactly one scope. Off by
default: a record per message grows with the session.
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, NamedTuple

from puma_async.codec import StepPath

OFFLINE_PHASE = "offline"
"""The phase of material made before (or beside) the input, on a round clock of its own."""
MessageId = tuple[int, int, StepPath, int]
"""(sender, receiver, step path, per-step sequence number): one message of a session."""


@dataclasses.dataclass(frozen=True)
class Totals:
    """Summed counts of one selection (a phase, a scope, a peer, or everything)."""

    bytes_sent: int = 0
    bytes_received: int = 0
    messages_sent: int = 0
    messages_received: int = 0
    rounds: int = 0


@dataclasses.dataclass(frozen=True)
class TrafficEntry:
    phase: str
    scope: str
    peer: int
    bytes_sent: int
    bytes_received: int
    messages_sent: int
    messages_received: int
    last_round: int = 0
    """The latest round of a message sent or received in this entry."""


@dataclasses.dataclass(frozen=True)
class RoundsEntry:
    """A scope's rounds and wall seconds (inclusive of nested scopes, summed over entries)."""

    phase: str
    scope: str
    rounds: int
    seconds: float = 0.0


class MessageRecord(NamedTuple):
    """One message a party sent (its sender is the statistics' role)."""

    receiver: int
    path: StepPath
    seq: int
    round: int
    parent: MessageId | None
    """The received message that set the sender's clock (None: the clock it started with)."""
    phase: str
    scope: str
    nbytes: int
    frame: int
    """Serial number of the frame (to this receiver) the message left in; -1 if never sent."""


def _in_scope(scope: str, prefix: str | None) -> bool:
    return prefix is None or scope == prefix or scope.startswith(prefix + ".")


@dataclasses.dataclass(frozen=True)
class PartyStats:
    """Immutable statistics of one role: traffic, rounds and the program's wall time."""

    role: int
    traffic: tuple[TrafficEntry, ...]
    scope_rounds: tuple[RoundsEntry, ...]
    phase_rounds: tuple[tuple[str, int], ...]
    max_round: int
    wire_bytes_sent: tuple[tuple[int, int], ...]
    frames_sent: tuple[tuple[int, int], ...]
    seconds: float = 0.0
    messages: tuple[MessageRecord, ...] = ()
    """Every message sent, if recorded (module docstring), else empty."""

    def totals(
        self, *, phase: str | None = None, scope: str | None = None, peer: int | None = None
    ) -> Totals:
        """Counts of the entries matching ``phase``, ``scope`` (prefix) and ``peer``.

        Rounds: of the scope when one is given (that exact scope), else of the phase, else the
        whole run's critical-path depth; a ``peer`` selection has no rounds of its own (0).
        Phase ``offline`` (with a scope or not): the latest round of a selected message, since
        offline work counts its rounds from 0 wherever it runs (module docstring).
        """
        sums = [0, 0, 0, 0]
        last = 0
        for e in self.traffic:
            if (phase is None or e.phase == phase) and _in_scope(e.scope, scope) and (
                peer is None or e.peer == peer
            ):
                for i, v in enumerate(
                    (e.bytes_sent, e.bytes_received, e.messages_sent, e.messages_received)
                ):
                    sums[i] += v
                last = max(last, e.last_round)
        if peer is not None:
            rounds = 0
        elif phase == OFFLINE_PHASE:
            rounds = last
        elif scope is not None:
            rounds = sum(
                r.rounds for r in self.scope_rounds
                if r.scope == scope and (phase is None or r.phase == phase)
            )
        elif phase is not None:
            rounds = dict(self.phase_rounds).get(phase, 0)
        else:
            rounds = self.max_round
        return Totals(*sums, rounds=rounds)

    def scope_seconds(self, scope: str, phase: str | None = None) -> float:
        """Wall seconds spent inside ``scope`` (summed over its entries)."""
        return sum(
            r.seconds for r in self.scope_rounds
            if r.scope == scope and (phase is None or r.phase == phase)
        )

    def scopes(self) -> list[str]:
        return sorted({e.scope for e in self.traffic} | {r.scope for r in self.scope_rounds})

    def to_dict(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "seconds": self.seconds,
            "max_round": self.max_round,
            "phase_rounds": dict(self.phase_rounds),
            "totals": dataclasses.asdict(self.totals()),
            "phases": {
                phase: dataclasses.asdict(self.totals(phase=phase))
                for phase in sorted({e.phase for e in self.traffic} | set(dict(self.phase_rounds)))
            },
            "traffic": [dataclasses.asdict(e) for e in self.traffic],
            "scope_rounds": [dataclasses.asdict(r) for r in self.scope_rounds],
            "wire_bytes_sent": {str(p): b for p, b in self.wire_bytes_sent},
            "frames_sent": {str(p): n for p, n in self.frames_sent},
        }

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)


class StatsRecorder:
    """The mutable counters a party runtime updates; :meth:`snapshot` freezes them."""

    def __init__(self, role: int):
        self.role = role
        self._traffic: dict[tuple[str, str, int], list[int]] = defaultdict(
            lambda: [0, 0, 0, 0, 0]
        )
        self._scope_rounds: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0])
        self._phase_span: dict[str, list[int]] = {}
        self._wire: dict[int, list[int]] = defaultdict(lambda: [0, 0])
        self.max_round = 0
        self.log: dict[tuple[int, StepPath, int], list[Any]] | None = None
        """Message records by (receiver, path, seq) while recording (:meth:`record`)."""

    def record(self) -> None:
        """Keep a record of every message sent from now on (module docstring)."""
        if self.log is None:
            self.log = {}

    def log_sent(
        self, peer: int, path: StepPath, seq: int, round_: int, parent: MessageId | None,
        phase: str, scope: str, nbytes: int,
    ) -> None:
        """Record one message sent (while recording); its frame is filled in when it goes."""
        assert self.log is not None
        self.log[(peer, path, seq)] = [round_, parent, phase, scope, nbytes, -1]

    def message(
        self, phase: str, scope: str, peer: int, nbytes: int, round_: int, received: bool
    ) -> None:
        """Count one message sent to (or ``received`` from) ``peer`` at clock ``round_``."""
        counts = self._traffic[(phase, scope, peer)]
        counts[received] += nbytes  # bytes sent, bytes received, msgs sent, received, last round
        counts[2 + received] += 1
        if round_ > counts[4]:
            counts[4] = round_
        if round_ > self.max_round:
            self.max_round = round_
        span = self._phase_span.get(phase)
        if span is None:
            self._phase_span[phase] = [round_, round_]
        elif round_ < span[0]:
            span[0] = round_
        elif round_ > span[1]:
            span[1] = round_

    def frame_sent(
        self, peer: int, nbytes: int, keys: Sequence[tuple[int, StepPath, int]] = ()
    ) -> None:
        """Count one frame of ``nbytes`` sent to ``peer``; ``keys`` (receiver, path, seq) are
        its envelopes, whose records (if any) learn the frame's serial number."""
        wire = self._wire[peer]
        if self.log is not None:
            for key in keys:
                entry = self.log.get(key)
                if entry is not None:
                    entry[5] = wire[1]
        wire[0] += nbytes
        wire[1] += 1

    def scope_exit(self, phase: str, scope: str, rounds: int, seconds: float) -> None:
        """Count one entry of a scope: the rounds and wall seconds it took."""
        entry = self._scope_rounds[(phase, scope)]
        entry[0] += rounds
        entry[1] += seconds

    def snapshot(self, seconds: float = 0.0) -> PartyStats:
        """Freeze the counters; ``seconds`` is the program's wall time."""
        return PartyStats(
            seconds=seconds,
            role=self.role,
            traffic=tuple(
                TrafficEntry(phase, scope, peer, *counts)
                for (phase, scope, peer), counts in sorted(self._traffic.items())
            ),
            scope_rounds=tuple(
                RoundsEntry(phase, scope, int(n), seconds)
                for (phase, scope), (n, seconds) in sorted(self._scope_rounds.items())
            ),
            phase_rounds=tuple(
                (phase, high - low + 1) for phase, (low, high) in sorted(self._phase_span.items())
            ),
            max_round=self.max_round,
            wire_bytes_sent=tuple(sorted((p, w[0]) for p, w in self._wire.items())),
            frames_sent=tuple(sorted((p, w[1]) for p, w in self._wire.items())),
            messages=() if self.log is None else tuple(
                MessageRecord(peer, path, seq, *entry)
                for (peer, path, seq), entry in self.log.items()
            ),
        )
