"""Run several roles in one process: one ``trio.run`` over the in-memory transport, or one
event loop per role in threads (:func:`run_threaded`).

Used by tests, ``python -m puma_async.local`` and the benchmarks. Every role runs its own
program with its own :class:`~puma_async.context.Context`; a role that fails does not cancel
the others: they learn of it through its ``Abort`` (as they would across machines) and stop
with an error naming it, and :class:`~puma_async.errors.RunFailedError` reports them all.
"""

from __future__ import annotations

import dataclasses
import secrets
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import trio

from puma_async.codec import DEFAULT_MAX_FRAME_BYTES
from puma_async.context import Program
from puma_async.errors import RunFailedError
from puma_async.liveness import DEFAULT_LIVENESS, Liveness
from puma_async.protocols.ringmatmul import shared_by
from puma_async.roles import PARTIES
from puma_async.runtime import PartyOptions, TransportWrapper, run_party
from puma_async.stats import PartyStats
from puma_async.transports.base import Transport
from puma_async.transports.memory import OnTimeClock, open_memory_network
from puma_async.transports.threads import ThreadNetwork


@dataclasses.dataclass(frozen=True)
class LocalRun:
    """What each role returned and its statistics, by role id."""

    results: Mapping[int, Any]
    stats: Mapping[int, PartyStats]

    @property
    def seconds(self) -> float:
        """Wall time of the slowest role's program (set-up of the network excluded)."""
        return max(s.seconds for s in self.stats.values())


@dataclasses.dataclass
class _Roles:
    """The roles of one run and what became of each; :meth:`run_role` runs one of them."""

    programs: Mapping[int, Program]
    options: PartyOptions
    """Every role's options but its entropy, which ``entropy`` gives (role -> bytes)."""
    entropy: Mapping[int, bytes]
    wrap_transport: TransportWrapper | None
    results: dict[int, Any] = dataclasses.field(default_factory=dict)
    stats: dict[int, PartyStats] = dataclasses.field(default_factory=dict)
    errors: dict[int, BaseException] = dataclasses.field(default_factory=dict)

    async def run_role(self, role: int, transport: Transport) -> None:
        options = dataclasses.replace(self.options, entropy=self.entropy.get(role))
        try:
            self.results[role], self.stats[role] = await run_party(
                self.programs[role], transport, options, wrap=self.wrap_transport
            )
        except Exception as exc:
            self.errors[role] = exc

    def outcome(self) -> LocalRun:
        if self.errors:
            raise RunFailedError(self.errors)
        return LocalRun(self.results, self.stats)


def _roles(
    programs: Mapping[int, Program],
    session: bytes | None,
    liveness: Liveness | None,
    wrap_transport: TransportWrapper | None,
    entropy: Mapping[int, bytes] | None,
    sequential: bool,
    max_frame_bytes: int,
    record_messages: bool,
) -> _Roles:
    session = session if session is not None else secrets.token_bytes(16)
    options = PartyOptions(session, sequential=sequential, liveness=liveness,
                           max_frame_bytes=max_frame_bytes, record_messages=record_messages)
    return _Roles(programs, options, entropy or {}, wrap_transport)


async def run_roles(
    programs: Mapping[int, Program],
    *,
    session: bytes | None = None,
    latency: float = 0.0,
    bandwidth: float = 0.0,
    liveness: Liveness | None = DEFAULT_LIVENESS,
    wrap_transport: TransportWrapper | None = None,
    entropy: Mapping[int, bytes] | None = None,
    sequential: bool = False,
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    record_messages: bool = False,
) -> LocalRun:
    """Run ``programs`` (role id -> program) concurrently in this event loop; see
    :func:`run_local`."""
    roles = _roles(programs, session, liveness, wrap_transport, entropy, sequential,
                   max_frame_bytes, record_messages)
    async with open_memory_network(
        list(programs), latency=latency, bandwidth=bandwidth
    ) as network, trio.open_nursery() as nursery:
        for role in programs:
            nursery.start_soon(roles.run_role, role, network.endpoint(role))
    return roles.outcome()


def run_threaded(
    programs: Mapping[int, Program],
    *,
    session: bytes | None = None,
    liveness: Liveness | None = DEFAULT_LIVENESS,
    wrap_transport: TransportWrapper | None = None,
    entropy: Mapping[int, bytes] | None = None,
    sequential: bool = False,
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    record_messages: bool = False,
    role_instruments: Mapping[int, Sequence[trio.abc.Instrument]] | None = None,
) -> LocalRun:
    """Run each role in its own thread and event loop (:mod:`~puma_async.transports.threads`).

    Same results as :func:`run_local`, but the parties' numpy work (which releases the GIL)
    runs on several cores at once; ring products are cut as in :func:`run_local`. No
    emulated latency; options as for :func:`run_local`, and ``role_instruments`` (role ->
    Trio instruments of that role's own loop, e.g. a :class:`~puma_async.liveness.StepTimer`
    each: what delays one party's heartbeats).
    """
    roles = _roles(programs, session, liveness, wrap_transport, entropy, sequential,
                   max_frame_bytes, record_messages)
    network = ThreadNetwork(list(programs))

    def run_in_thread(role: int) -> None:
        async def main() -> None:
            await roles.run_role(role, network.endpoint(role))

        trio.run(main, instruments=(role_instruments or {}).get(role, ()))

    threads = [
        threading.Thread(target=run_in_thread, args=(role,), name=f"puma-role-{role}")
        for role in programs
    ]
    with shared_by(_computing(programs)):
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return roles.outcome()


def run_local(
    programs: Mapping[int, Program], *, clock: trio.abc.Clock | None = None,
    instruments: Sequence[trio.abc.Instrument] = (), **options: Any,
) -> LocalRun:
    """Run ``programs`` in a fresh ``trio.run`` over the in-memory transport.

    Options: ``session`` (bytes; random by default), ``latency`` and ``bandwidth`` (emulated
    per link), ``liveness`` (heartbeats and dead-peer detection,
    :class:`~puma_async.liveness.Liveness`), ``wrap_transport`` (e.g. recording; it sees the
    runtime's frames, not the heartbeats), ``clock`` (a Trio clock, e.g.
    ``trio.testing.MockClock`` for virtual time in tests), ``instruments`` (Trio instruments,
    e.g. :class:`~puma_async.liveness.StepTimer`), ``entropy`` (role -> 32 bytes seeding that
    role's fresh keys, for reproducible runs), ``max_frame_bytes`` (the largest frame a role
    decodes; a session passes its own, :mod:`puma_async.session.frames`), ``sequential`` (no
    round overlapping: every ``gather`` runs its steps one by one), ``record_messages`` (every
    role keeps a record of each message it sends, for :mod:`puma_async.critical_path`).
    Emulated links run on :class:`~puma_async.transports.memory.OnTimeClock` unless given
    another clock. The computing parties run make their ring products at the same time, so
    each product is cut into cores // parties blocks (on two cores: whole in its party's
    worker thread; :func:`~puma_async.protocols.ringmatmul.shared_by`).
    """
    if clock is None and (options.get("latency", 0.0) > 0 or options.get("bandwidth", 0.0) > 0):
        clock = OnTimeClock()
    with shared_by(_computing(programs)):
        return trio.run(lambda: run_roles(programs, **options), clock=clock,
                        instruments=instruments)


def _computing(programs: Mapping[int, Program]) -> int:
    """How many of the roles run are computing parties (their products come at once)."""
    return max(1, sum(role in PARTIES for role in programs))
