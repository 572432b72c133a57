"""What a party is doing right now, for diagnosing a hung or slow party.

:meth:`PartyRuntime.statistics() <puma_async.runtime.PartyRuntime.statistics>` gathers, as
Trio's ``ParkingLot.statistics()`` does for its waiters: the mailbox's parked receives (by
peer and step) and the envelopes nobody took yet
(:class:`~puma_async.mailbox.MailboxStatistics`), and per peer the frames and bytes queued
for the writer task and the frame being sent. The runtime logs it when the session fails
(a peer declared dead, an abort, a bad frame), before the failure wakes the receives.

It holds roles, step paths and counts, never a payload or a key, so it may be logged.
"""

from __future__ import annotations

import dataclasses

from puma_async.mailbox import MailboxStatistics
from puma_async.roles import role_name


@dataclasses.dataclass(frozen=True)
class OutboxStatistics:
    """Frames queued for one peer's writer task and not handed to the transport yet
    (``frames``, ``bytes``), and the size of the frame the transport is sending now
    (``sending``; 0 when idle). Transports that take frames at once queue nothing."""

    peer: int
    frames: int
    bytes: int
    sending: int


@dataclasses.dataclass(frozen=True)
class RuntimeStatistics:
    """One party's mailbox and outboxes at one moment, and the peers that finished."""

    role: int
    mailbox: MailboxStatistics
    outboxes: tuple[OutboxStatistics, ...]
    finished_peers: tuple[int, ...]

    def describe(self) -> str:
        """One line for a log."""
        parts = [f"{role_name(self.role)}: {self.mailbox.describe()}"]
        busy = [o for o in self.outboxes if o.frames or o.sending]
        if busy:
            parts.append("queued: " + ", ".join(
                f"to {role_name(o.peer)} {o.frames} frame(s), {o.bytes} B"
                + (f" (sending {o.sending} B)" if o.sending else "") for o in busy))
        if self.finished_peers:
            parts.append("finished: " + ", ".join(map(role_name, self.finished_peers)))
        return "; ".join(parts)
