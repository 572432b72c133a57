"""Connecting the roles of a session: diallers that retry, listeners that survive floods.

Topology
--------
``addresses`` maps every role of the session to its ``(host, port)``. For each pair of roles
the **higher role connects to the lower one**: role r listens on its own address for the roles
above it (the highest role does not listen) and dials the roles below it
(:func:`connect_all`). Dialling retries with exponential backoff until ``connect_timeout``,
also when the listener drops the connection before its Hello (as it does to shed a flood), but
gives up after a few drops that follow its own TLS handshake (that is a listener refusing its
certificate); accepting waits as long. Each connection is secured and handshaken by
:func:`puma_async.transports.link.handshake`.

A mismatching Hello (a peer of this cluster with another session, configuration, version,
frame limit or role) fails the open on both sides with :class:`HandshakeError`. A connection
that fails earlier (no TLS, a certificate of another CA, garbage, silence) is dropped and the
listener keeps waiting; if the expected peers have not connected by the deadline, the error
counts those rejected connections and names the first few.

Floods
------
A listener runs at most ``max_handshakes`` handshakes at once, each within
``handshake_timeout``; a connection arriving beyond that drops the oldest one that has not
sent a valid Hello yet, so idle and slow (slowloris) connections cannot hold the door, and the
peers, which retry, get in once a flood relents. Running out of file descriptors
(EMFILE/ENFILE) or buffers on ``accept`` drops the oldest handshake, backs off and logs a
warning, never raises. Rejections are logged one by one for the first few, then as a count
at most every 10 s.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Awaitable, Callable

import structlog
import trio

from puma_async.errors import HandshakeError
from puma_async.roles import role_name
from puma_async.transports.handshake import Hello
from puma_async.transports.link import (
    Connection,
    RejectedConnection,
    Setup,
    TcpSetupError,
    format_address,
    handshake,
    nodelay,
)

_REJECTIONS_SHOWN = 5  # rejected connections named in the error and logged one by one
_LOG_INTERVAL = 10.0  # then at most one log line about them per this many seconds
_BACKOFF_MIN, _BACKOFF_MAX = 0.01, 1.0  # accept() back-off when out of descriptors
_MAX_DROPS_AFTER_TLS = 3  # a dialler dropped this often after its TLS handshake gives up

log = structlog.get_logger("puma_async.transports.connect")


async def dial(setup: Setup, peer: int, deadline: float) -> Connection:
    """Connect to ``peer`` and handshake, retrying with backoff until ``deadline`` while it
    is not up or drops the connection before its Hello (a listener shedding a flood)."""
    host, port = setup.addresses[peer]
    where = format_address((host, port))
    delay = setup.retry_initial
    attempts = refusals = 0
    last_error: str | None = None
    while True:
        attempts += 1
        stream: trio.SocketStream | None = None
        with trio.move_on_at(deadline):
            try:
                stream = await trio.open_tcp_stream(host, port)
            except OSError as exc:
                last_error = str(exc)
        if stream is not None:
            try:
                nodelay(stream)
                with trio.fail_after(setup.handshake_timeout):
                    role, secured, reader = await handshake(
                        setup, stream, expected={peer}, server_hostname=host,
                    )
                return Connection(role, where, secured, reader)
            except RejectedConnection as exc:
                await trio.aclose_forcefully(stream)
                refusals += exc.secured
                if not exc.transient or refusals >= _MAX_DROPS_AFTER_TLS:
                    raise HandshakeError(
                        f"handshake with {where} failed: {exc}", peer=peer
                    ) from exc.__cause__
                last_error = f"handshake failed: {exc}"
            except trio.TooSlowError:
                await trio.aclose_forcefully(stream)
                last_error = f"no handshake within {setup.handshake_timeout:g} s"
            except OSError as exc:  # the connection broke before the handshake began
                await trio.aclose_forcefully(stream)
                last_error = str(exc)
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
        if trio.current_time() + delay > deadline:
            reason = f" (last error: {last_error})" if last_error is not None else ""
            error = HandshakeError if stream is not None else TcpSetupError
            raise error(
                f"peer {role_name(peer)} at {where} never came up after {attempts} attempts "
                f"in {setup.connect_timeout:g} s{reason}"
            )
        await trio.sleep(delay)
        delay = min(delay * 2, setup.retry_max)


class _Rejections:
    """The connections a listener dropped before a valid Hello: counted, the first few kept
    for the error, and logged at a bounded rate (a flood must not flood the log)."""

    def __init__(self, role: int):
        self.role = role
        self.count = 0
        self.first: list[str] = []
        self._summarised = 0
        self._next_summary = -math.inf
        self._exhausted = 0
        self._next_exhausted = -math.inf

    def add(self, remote: str, reason: str) -> None:
        self.count += 1
        if len(self.first) < _REJECTIONS_SHOWN:
            self.first.append(f"{remote}: {reason}")
            log.warning("rejected connection", role=role_name(self.role), remote=remote,
                        error=reason)
            self._summarised = self.count
        elif trio.current_time() >= self._next_summary:
            self.summarise()

    def summarise(self) -> None:
        """Log how many connections were rejected since the last line about them."""
        if self.count > self._summarised:
            log.warning("rejected connections", role=role_name(self.role),
                        count=self.count - self._summarised, total=self.count)
            self._summarised = self.count
            self._next_summary = trio.current_time() + _LOG_INTERVAL

    def exhausted(self, exc: OSError) -> None:
        """accept() failed for lack of resources (descriptors, buffers)."""
        self._exhausted += 1
        if trio.current_time() >= self._next_exhausted:
            log.warning("cannot accept connections, backing off", role=role_name(self.role),
                        error=exc.strerror or str(exc), times=self._exhausted)
            self._exhausted = 0
            self._next_exhausted = trio.current_time() + _LOG_INTERVAL

    def describe(self) -> str:
        shown = "; ".join(self.first)
        more = f"; first {len(self.first)}: " if self.count > len(self.first) else ": "
        return f"{self.count} rejected connections{more}{shown}"


@dataclasses.dataclass(eq=False)
class _Attempt:
    """An incoming connection in its handshake; the listener may drop it (oldest first)
    until a valid Hello claimed a role for it."""

    scope: trio.CancelScope
    dropped: bool = False
    role: int | None = None

    def drop(self) -> None:
        self.dropped = True
        self.scope.cancel()


async def accept(
    setup: Setup, listeners: list[trio.SocketListener], expected: set[int], deadline: float
) -> dict[int, Connection]:
    """Accept and handshake the roles in ``expected`` until all came or ``deadline`` passed.

    At most ``setup.max_handshakes`` handshakes run at once, each within the handshake
    timeout; a connection beyond that drops the oldest one that has not sent a valid Hello yet
    (a flood cannot starve the peers, which retry; a peer past its Hello is not dropped).
    Running out of descriptors or buffers drops the oldest handshake too and backs off.
    Nothing an incoming connection does raises out of here but a peer's failed Hello check.
    """
    connections: dict[int, Connection] = {}
    rejections = _Rejections(setup.role)
    attempts: dict[_Attempt, None] = {}  # in arrival order
    fatal: list[HandshakeError] = []
    pending = set(expected)
    claimed: set[int] = set()
    where = format_address(setup.addresses[setup.role])

    def drop_oldest() -> None:
        for attempt in attempts:
            if not attempt.dropped and attempt.role is None:
                attempt.drop()
                return

    async with trio.open_nursery() as nursery:

        async def handle(stream: trio.SocketStream) -> None:
            attempt = _Attempt(trio.CancelScope(
                deadline=trio.current_time() + setup.handshake_timeout
            ))
            attempts[attempt] = None
            remote = "<unknown>"

            def claim(hello: Hello) -> None:
                if hello.role in claimed:
                    raise HandshakeError(f"{role_name(hello.role)} is already connected")
                claimed.add(hello.role)
                attempt.role = hello.role

            try:
                with attempt.scope:
                    remote = format_address(stream.socket.getpeername()[:2])
                    nodelay(stream)
                    role, secured, reader = await handshake(
                        setup, stream, expected=expected, server_hostname=None, on_hello=claim
                    )
                    connections[role] = Connection(role, remote, secured, reader)
                    pending.discard(role)
                    if not pending:
                        nursery.cancel_scope.cancel()
                    return
                reason = (
                    f"dropped: {setup.max_handshakes} handshakes in progress or no descriptors"
                    if attempt.dropped else
                    f"no handshake within {setup.handshake_timeout:g} s"
                )
            except HandshakeError as exc:
                await trio.aclose_forcefully(stream)
                fatal.append(HandshakeError(f"handshake from {remote} failed: {exc.reason}",
                                            peer=exc.peer))
                nursery.cancel_scope.cancel()
                return
            except (RejectedConnection, OSError, trio.BrokenResourceError) as exc:
                reason = str(exc) or type(exc).__name__
            finally:
                del attempts[attempt]
            claimed.discard(attempt.role)  # it may try again
            rejections.add(remote, reason)
            await trio.aclose_forcefully(stream)

        async def serve(listener: trio.SocketListener) -> None:
            delay = _BACKOFF_MIN
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:  # EMFILE, ENFILE, ENOBUFS, ENOMEM
                    rejections.exhausted(exc)
                    drop_oldest()
                    await trio.sleep(delay)
                    delay = min(delay * 2, _BACKOFF_MAX)
                    continue
                delay = _BACKOFF_MIN
                if len(attempts) >= setup.max_handshakes:
                    drop_oldest()
                nursery.start_soon(handle, stream)

        nursery.cancel_scope.deadline = deadline
        for listener in listeners:
            nursery.start_soon(serve, listener)

    rejections.summarise()
    if fatal or pending:
        for conn in connections.values():
            await trio.aclose_forcefully(conn.stream)
    if fatal:
        raise fatal[0]
    if pending:
        message = (
            f"peers {', '.join(map(role_name, sorted(pending)))} did not connect to {where} within "
            f"{setup.connect_timeout:g} s"
        )
        if rejections.count:
            raise HandshakeError(f"{message}; {rejections.describe()}")
        raise TcpSetupError(message)
    return connections


async def connect_all(setup: Setup) -> dict[int, Connection]:
    """All connections of one role: listen for higher roles, dial lower ones, concurrently."""
    role = setup.role
    higher = {p for p in setup.addresses if p > role}
    lower = sorted(p for p in setup.addresses if p < role)
    deadline = trio.current_time() + setup.connect_timeout
    listeners: list[trio.SocketListener] = []
    if higher:
        host, port = setup.addresses[role]
        try:
            listeners = await trio.open_tcp_listeners(port, host=host)
        except OSError as exc:
            raise TcpSetupError(
                f"{role_name(role)} cannot listen on {format_address((host, port))}: "
                f"{exc.strerror or exc}"
            ) from exc

    connections: dict[int, Connection] = {}
    errors: list[Exception] = []
    async with trio.open_nursery() as nursery:

        async def guarded(task: Callable[[], Awaitable[dict[int, Connection]]]) -> None:
            try:
                connections.update(await task())
            except Exception as exc:  # first failure wins; the others are cancelled
                errors.append(exc)
                nursery.cancel_scope.cancel()

        if higher:
            nursery.start_soon(guarded, lambda: accept(setup, listeners, higher, deadline))
        for peer in lower:
            async def dial_peer(peer: int = peer) -> dict[int, Connection]:
                return {peer: await dial(setup, peer, deadline)}
            nursery.start_soon(guarded, dial_peer)
    for listener in listeners:
        await listener.aclose()
    if errors:
        for conn in connections.values():
            await trio.aclose_forcefully(conn.stream)
        raise _leaf(errors[0])
    return connections


def _leaf(error: BaseException) -> BaseException:
    """An error without the exception groups of the nurseries it went through (a group of
    several keeps its first leaf as the one to report)."""
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error
