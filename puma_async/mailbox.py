"""Per-party mailbox: matches incoming envelopes with the receives waiting for them.

Sans-IO apart from parking Trio tasks: the transport ``deliver``s, protocol steps
``take_ready`` or ``wait_for``. A key is (sender, step path, per-step sequence). A receive may
come before or after its message; a key delivered twice is a protocol error, and keys nobody
took by the end are reported as unexpected messages. A waiting receive parks its task, which
the delivery reschedules directly (as Trio's own memory channels do).

A receive has no deadline: it waits until its message arrives or the mailbox is failed (the
sender finished or is dead, the session is over). Dead peers are the liveness watchdog's
business (:mod:`puma_async.liveness`).

:meth:`Mailbox.statistics` tells what a party is waiting for (as Trio's
``ParkingLot.statistics()`` does): the receives parked by peer and step, the envelopes that
arrived and wait to be taken, and which peers failed. It holds step paths and counts only,
never a payload, so it may be logged.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping

import outcome
import trio

from puma_async.codec import Envelope, StepPath, format_path
from puma_async.errors import ProtocolError
from puma_async.roles import role_name

Key = tuple[int, StepPath, int]


@dataclasses.dataclass(frozen=True)
class MailboxStatistics:
    """What a mailbox holds at one moment (:meth:`Mailbox.statistics`).

    ``waiting``: the (peer, step path, seq) of every parked receive, sorted. ``ready``: how
    many envelopes arrived and were not taken yet, by sender. ``failed_peers``: senders whose
    receives fail (finished or dead). ``failed``: every receive fails (the session is over).
    """

    waiting: tuple[Key, ...]
    ready: Mapping[int, int]
    failed_peers: tuple[int, ...]
    failed: bool

    @property
    def waiting_by_peer(self) -> dict[int, int]:
        """How many receives wait for each peer."""
        return dict(sorted(Counter(peer for peer, _, _ in self.waiting).items()))

    def waiting_by_step(self) -> dict[tuple[int, str], int]:
        """How many receives wait, by (peer, dotted step path)."""
        steps = Counter((peer, format_path(path)) for peer, path, _ in self.waiting)
        return dict(sorted(steps.items()))

    def describe(self, limit: int = 3) -> str:
        """One line for a log: the first ``limit`` waiting receives, the ready envelopes."""
        parts = []
        if self.waiting:
            shown = ", ".join(f"{role_name(peer)} at step {format_path(path) or '<root>'} seq {seq}"
                              for peer, path, seq in self.waiting[:limit])
            more = f" (+{len(self.waiting) - limit} more)" if len(self.waiting) > limit else ""
            parts.append(f"{len(self.waiting)} receive(s) waiting: {shown}{more}")
        else:
            parts.append("no receive waiting")
        if self.ready:
            counts = ", ".join(f"{role_name(p)}: {n}" for p, n in sorted(self.ready.items()))
            parts.append(f"{sum(self.ready.values())} envelope(s) not taken ({counts})")
        if self.failed_peers:
            parts.append("failed peers: " + ", ".join(map(role_name, self.failed_peers)))
        if self.failed:
            parts.append("failed")
        return "; ".join(parts)


class Mailbox:
    """Holds, for each key, either the delivered envelope or the task waiting for it."""

    def __init__(self, role: int):
        self.role = role
        self._ready: dict[Key, Envelope] = {}
        self._waiting: dict[Key, trio.lowlevel.Task] = {}
        self._taken: dict[StepPath, set[tuple[int, int]]] = {}  # path -> (sender, seq)
        self._peer_errors: dict[int, BaseException] = {}
        self._error: BaseException | None = None

    def deliver(self, env: Envelope) -> None:
        """File one envelope; wakes its waiter if a receive is already pending."""
        key = (env.sender, env.path, env.seq)  # (sender, step path, per-step sequence)
        if key in self._ready or self._was_taken(key):
            raise ProtocolError(
                f"duplicate message seq {env.seq}", peer=env.sender, step=format_path(env.path)
            )
        waiter = self._waiting.pop(key, None)
        if waiter is None:
            self._ready[key] = env
        else:
            self._mark_taken(key)
            trio.lowlevel.reschedule(waiter, outcome.Value(env))

    def take_ready(self, key: Key) -> Envelope | None:
        """The envelope with ``key`` if it has arrived (taking it), else None."""
        env = self._ready.pop(key, None)
        if env is not None:
            self._mark_taken(key)
        return env

    def _was_taken(self, key: Key) -> bool:
        taken = self._taken.get(key[1])
        return taken is not None and (key[0], key[2]) in taken

    def _mark_taken(self, key: Key) -> None:
        taken = self._taken.get(key[1])
        if taken is None:
            self._taken[key[1]] = {(key[0], key[2])}
        else:
            taken.add((key[0], key[2]))

    def forget(self, path: StepPath) -> None:
        """The step ``path`` has finished: drop its record of taken keys (so memory does not
        grow with the session). A message for it arriving later is reported as unexpected."""
        self._taken.pop(path, None)

    async def wait_for(self, key: Key) -> Envelope:
        """Wait for the envelope with ``key``, which :meth:`take_ready` did not find (or for
        the error that ends the wait: a finished or dead peer, a failed session)."""
        if self._error is not None:
            raise self._error
        peer_error = self._peer_errors.get(key[0])
        if peer_error is not None:
            raise peer_error
        if key in self._waiting or self._was_taken(key):
            raise ProtocolError(
                f"message seq {key[2]} received twice", peer=key[0], step=format_path(key[1])
            )
        waiter = trio.lowlevel.current_task()
        self._waiting[key] = waiter

        def abort(_: object) -> trio.lowlevel.Abort:  # the caller was cancelled
            if self._waiting.get(key) is waiter:
                del self._waiting[key]
            return trio.lowlevel.Abort.SUCCEEDED

        return await trio.lowlevel.wait_task_rescheduled(abort)  # type: ignore[no-any-return]

    def fail_peer(self, peer: int, error: BaseException) -> None:
        """Every pending and future receive from ``peer`` that has no message raises ``error``."""
        self._peer_errors.setdefault(peer, error)
        for key, waiter in list(self._waiting.items()):
            if key[0] == peer:
                self._wake_with(key, waiter, error)

    def fail_all(self, error: BaseException) -> None:
        """The session is over (a peer aborted or is dead, a frame was bad): every receive raises
        ``error``."""
        if self._error is None:
            self._error = error
        for key, waiter in list(self._waiting.items()):
            self._wake_with(key, waiter, self._error)

    @property
    def failure(self) -> BaseException | None:
        return self._error

    def unexpected(self) -> list[Key]:
        """Keys delivered but never taken (checked when a party finishes)."""
        return sorted(self._ready)

    def _wake_with(self, key: Key, waiter: trio.lowlevel.Task, error: BaseException) -> None:
        del self._waiting[key]
        trio.lowlevel.reschedule(waiter, outcome.Error(error))

    def statistics(self) -> MailboxStatistics:
        """What this mailbox holds now (see :class:`MailboxStatistics`)."""
        return MailboxStatistics(
            waiting=tuple(sorted(self._waiting)),
            ready=dict(sorted(Counter(sender for sender, _, _ in self._ready).items())),
            failed_peers=tuple(sorted(self._peer_errors)),
            failed=self._error is not None,
        )
