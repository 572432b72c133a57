"""Per-party mailbox: matches incoming envelopes with the receives waiting for them.

Sans-IO apart from Trio events: the reader task ``deliver``s, protocol steps ``take``. A key is
(sender, step path, per-step sequence). A receive may come before or after its message; a key
delivered twice is a protocol error, and keys nobody took by the end are reported as
unexpected messages.
"""

from __future__ import annotations

import trio

from puma_async.codec import Envelope, StepPath, format_path
from puma_async.errors import ProtocolError

Key = tuple[int, StepPath, int]


class _Waiter:
    __slots__ = ("envelope", "error", "event")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.envelope: Envelope | None = None
        self.error: BaseException | None = None


class Mailbox:
    """Holds, for each key, either the delivered envelope or the waiter for it."""

    def __init__(self, role: int):
        self.role = role
        self._ready: dict[Key, Envelope] = {}
        self._waiting: dict[Key, _Waiter] = {}
        self._taken: set[Key] = set()
        self._peer_errors: dict[int, BaseException] = {}
        self._error: BaseException | None = None

    def deliver(self, env: Envelope) -> None:
        """File one envelope; wakes its waiter if a receive is already pending."""
        key = env.key
        if key in self._taken or key in self._ready:
            raise ProtocolError(
                f"duplicate message seq {env.seq}", peer=env.sender, step=format_path(env.path)
            )
        waiter = self._waiting.pop(key, None)
        if waiter is None:
            self._ready[key] = env
        else:
            self._taken.add(key)
            waiter.envelope = env
            waiter.event.set()

    def take_ready(self, key: Key) -> Envelope | None:
        """The envelope with ``key`` if it has arrived (taking it), else None."""
        env = self._ready.pop(key, None)
        if env is not None:
            self._taken.add(key)
        return env

    async def take(self, key: Key) -> Envelope:
        """Wait for the envelope with ``key`` (cancel the caller's scope to time out)."""
        env = self.take_ready(key)
        if env is not None:
            return env
        self._raise_if_failed(key[0])
        if key in self._waiting or key in self._taken:
            raise ProtocolError(
                f"message seq {key[2]} received twice", peer=key[0], step=format_path(key[1])
            )
        waiter = _Waiter()
        self._waiting[key] = waiter
        try:
            await waiter.event.wait()
        finally:
            if self._waiting.get(key) is waiter:
                del self._waiting[key]
        if waiter.error is not None:
            raise waiter.error
        assert waiter.envelope is not None
        return waiter.envelope

    def fail_peer(self, peer: int, error: BaseException) -> None:
        """Every pending and future receive from ``peer`` that has no message raises ``error``."""
        self._peer_errors.setdefault(peer, error)
        for key, waiter in list(self._waiting.items()):
            if key[0] == peer:
                self._wake_with(key, waiter, error)

    def fail_all(self, error: BaseException) -> None:
        """The session is over (a peer aborted, a frame was bad): every receive raises ``error``."""
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

    def _raise_if_failed(self, peer: int) -> None:
        if self._error is not None:
            raise self._error
        if peer in self._peer_errors:
            raise self._peer_errors[peer]

    def _wake_with(self, key: Key, waiter: _Waiter, error: BaseException) -> None:
        del self._waiting[key]
        waiter.error = error
        waiter.event.set()
