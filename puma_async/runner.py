"""Run several roles in one ``trio.run`` over the in-memory transport.

Used by tests, ``python -m puma_async.local`` and the benchmarks. Every role runs its own
program with its own :class:`~puma_async.runtime.Context`; a role that fails does not cancel
the others: they learn of it through its ``Abort`` (as they would across machines) and stop
with an error naming it, and :class:`~puma_async.errors.RunFailedError` reports them all.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import trio

from puma_async.errors import RunFailedError
from puma_async.runtime import DEFAULT_TIMEOUT, Context, run_party
from puma_async.stats import PartyStats
from puma_async.transports.base import Transport
from puma_async.transports.memory import open_memory_network

Program = Callable[[Context], Awaitable[Any]]
TransportWrapper = Callable[[Transport], Transport]


@dataclasses.dataclass(frozen=True)
class LocalRun:
    """What each role returned and its statistics, by role id."""

    results: Mapping[int, Any]
    stats: Mapping[int, PartyStats]

    @property
    def seconds(self) -> float:
        """Wall time of the slowest role's program (set-up of the network excluded)."""
        return max(s.seconds for s in self.stats.values())


async def run_roles(
    programs: Mapping[int, Program],
    *,
    session: bytes | None = None,
    latency: float = 0.0,
    bandwidth: float = 0.0,
    timeout: float = DEFAULT_TIMEOUT,
    wrap_transport: TransportWrapper | None = None,
    entropy: Mapping[int, bytes] | None = None,
    sequential: bool = False,
) -> LocalRun:
    """Run ``programs`` (role id -> program) concurrently; see :func:`run_local`."""
    session = session if session is not None else secrets.token_bytes(16)
    results: dict[int, Any] = {}
    stats: dict[int, PartyStats] = {}
    errors: dict[int, BaseException] = {}
    async with open_memory_network(
        list(programs), latency=latency, bandwidth=bandwidth
    ) as network:

        async def run_role(role: int) -> None:
            transport: Transport = network.endpoint(role)
            if wrap_transport is not None:
                transport = wrap_transport(transport)
            try:
                results[role], stats[role] = await run_party(
                    programs[role], transport, session=session, timeout=timeout,
                    entropy=entropy.get(role) if entropy else None, sequential=sequential,
                )
            except Exception as exc:
                errors[role] = exc

        async with trio.open_nursery() as nursery:
            for role in programs:
                nursery.start_soon(run_role, role)
    if errors:
        raise RunFailedError(errors)
    return LocalRun(results, stats)


def run_local(
    programs: Mapping[int, Program], *, clock: trio.abc.Clock | None = None, **options: Any
) -> LocalRun:
    """Run ``programs`` in a fresh ``trio.run`` over the in-memory transport.

    Options: ``session`` (bytes; random by default), ``latency`` and ``bandwidth`` (emulated
    per link), ``timeout`` (receive timeout, seconds), ``wrap_transport`` (e.g. recording),
    ``clock`` (a Trio clock, e.g. ``trio.testing.MockClock`` for virtual time in tests),
    ``entropy`` (role -> 32 bytes seeding that role's fresh keys, for reproducible runs),
    ``sequential`` (no round overlapping: every ``gather`` runs its steps one by one).
    """
    return trio.run(lambda: run_roles(programs, **options), clock=clock)
