"""This process's roles of a session over TCP with mutual TLS, standing or falling together.

Each role connects to its peers (:func:`~puma_async.transports.tcp.open_tcp_transport`, with
the session's configuration digest and frame limit) and runs its program. The roles of one
process are one :class:`RoleGroup`:

- when one fails, the others stop at once, whether connecting or running: a running
  program is stopped by a :class:`Stopped` error raised inside it, so its peers get an
  ``Abort`` saying which role of the process failed instead of blaming an innocent peer;
- Ctrl-C (SIGINT) stops every role the same way, as "interrupted"
  (:attr:`GroupOutcome.interrupted`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import trio

from puma_async.cluster import Cluster
from puma_async.context import Program
from puma_async.errors import PumaError, first_error
from puma_async.roles import role_name
from puma_async.runtime import PartyOptions, run_party
from puma_async.session.recording import Wrapper
from puma_async.session.settings import SessionSettings
from puma_async.stats import PartyStats
from puma_async.trace.recorder import RecordingTransport
from puma_async.transports.base import Transport
from puma_async.transports.tcp import open_tcp_transport

Say = Callable[[int, str], None]
"""How a role reports progress: (role, one line of text) -> None."""
INTERRUPTED = "interrupted (Ctrl-C)"


class Stopped(PumaError):
    """This role was stopped by its own process: a role beside it failed, or Ctrl-C."""


@dataclasses.dataclass(frozen=True)
class RolePlan:
    """What one role of this process runs: its program, its key entropy, its recording."""

    program: Program
    entropy: bytes
    wrap: Wrapper = lambda transport: transport


@dataclasses.dataclass(frozen=True)
class RoleOutcome:
    """What one role of this process returned and its statistics."""

    role: int
    result: Any
    stats: PartyStats


@dataclasses.dataclass
class GroupOutcome:
    """The roles that finished, the errors of those that did not, and why the group stopped:
    ``culprit`` is the role whose failure stopped the others (None if none did)."""

    outcomes: dict[int, RoleOutcome] = dataclasses.field(default_factory=dict)
    errors: dict[int, BaseException] = dataclasses.field(default_factory=dict)
    culprit: int | None = None
    interrupted: bool = False


async def run_role(cluster: Cluster, role: int, settings: SessionSettings, plan: RolePlan,
                   say: Say) -> RoleOutcome:
    """Connect ``role`` to its peers (mutual TLS), run its program, return its outcome."""
    tls = cluster.tls_config(role)
    say(role, f"connecting to {len(cluster.roles) - 1} peers")
    async with open_tcp_transport(
        role, cluster.addresses, session=settings.session,
        config_digest=settings.config_digest(cluster.name, cluster.roles), tls=tls,
        connect_timeout=settings.connect_timeout, handshake_timeout=settings.handshake_timeout,
        max_frame_bytes=settings.max_frame_bytes,
    ) as tcp:
        say(role, "connected; running the session")
        wrapped: list[Transport] = []

        def wrap(transport: Transport) -> Transport:  # keeps the recorder, to close it below
            wrapped.append(plan.wrap(transport))
            return wrapped[-1]

        try:
            result, stats = await run_party(plan.program, tcp, PartyOptions(
                settings.session, max_frame_bytes=settings.max_frame_bytes,
                entropy=plan.entropy, liveness=settings.liveness,
            ), wrap=wrap)
        finally:
            for transport in wrapped:
                if isinstance(transport, RecordingTransport):
                    transport.close()
    return RoleOutcome(role, result, stats)


class RoleGroup:
    """The roles of one process: they run together and stop together (module docstring)."""

    def __init__(self) -> None:
        self.outcome = GroupOutcome()
        self.reason: str | None = None
        """Why the group stops (None while it runs)."""
        self._stopping = trio.Event()
        self._scopes: dict[int, trio.CancelScope] = {}
        self._running: set[int] = set()

    def stop(self, reason: str) -> None:
        """Stop every role: raise :class:`Stopped` with ``reason`` in the running programs,
        cancel the others."""
        if self.reason is not None:
            return
        self.reason = reason
        self._stopping.set()
        for role, scope in self._scopes.items():
            if role not in self._running:
                scope.cancel()

    def interrupt(self) -> None:
        """Ctrl-C: stop every role as interrupted."""
        if self.reason is None:
            self.outcome.interrupted = True
        self.stop(INTERRUPTED)

    def guard(self, role: int, program: Program) -> Program:
        """``program``, stopped by :class:`Stopped` raised inside it when the group stops."""

        async def guarded(ctx: Any) -> Any:
            if self.reason is not None:
                raise Stopped(self.reason)

            async def watch() -> None:
                await self._stopping.wait()
                raise Stopped(self.reason)

            with self._running_as(role):
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(watch)
                        result = await program(ctx)
                        nursery.cancel_scope.cancel()
                except BaseExceptionGroup as group:
                    raise first_error(group) from None
            return result

        return guarded

    @contextlib.contextmanager
    def _running_as(self, role: int) -> Iterator[None]:
        self._running.add(role)
        try:
            yield
        finally:
            self._running.discard(role)

    async def run(self, role: int, body: Callable[[], Any]) -> None:
        """Run one role's ``body`` (connect and run); its failure stops the group."""
        with trio.CancelScope() as scope:
            self._scopes[role] = scope
            if self.reason is not None:
                scope.cancel()
            try:
                self.outcome.outcomes[role] = await body()
                return
            except Exception as exc:  # any failure of a role stops the group
                self.outcome.errors[role] = exc
                if not isinstance(exc, Stopped) and self.reason is None:
                    self.outcome.culprit = role
                    self.stop(f"stopped because {role_name(role)}, in the same process, "
                              f"failed")
        if scope.cancelled_caught:
            self.outcome.errors[role] = Stopped(self.reason)


async def run_roles_over_tcp(cluster: Cluster, settings: SessionSettings,
                             plans: Mapping[int, RolePlan], say: Say, *,
                             catch_interrupt: bool = True) -> GroupOutcome:
    """Run this process's roles as one :class:`RoleGroup`; with ``catch_interrupt``,
    Ctrl-C (SIGINT) interrupts them (main thread only)."""
    group = RoleGroup()

    async def watch_interrupts(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(signal.SIGINT) as signals:
            task_status.started()
            async for _ in signals:
                group.interrupt()

    async with trio.open_nursery() as outer:
        if catch_interrupt:
            await outer.start(watch_interrupts)
        async with trio.open_nursery() as nursery:
            for role, plan in plans.items():
                guarded = dataclasses.replace(plan, program=group.guard(role, plan.program))
                nursery.start_soon(group.run, role,
                                   lambda role=role, guarded=guarded: run_role(
                                       cluster, role, settings, guarded, say))
        outer.cancel_scope.cancel()
    return group.outcome


__all__ = [
    "INTERRUPTED", "GroupOutcome", "RoleGroup", "RoleOutcome", "RolePlan", "Say", "Stopped",
    "run_role", "run_roles_over_tcp",
]
