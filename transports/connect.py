"""Connecting the roles of a session: diallers that retry, listeners that survive floods.

Topology
--------
``addresses`` maps every role of the session to its ``(host, port)``. For each pair of roles
the **higher role connects to the lower one**: role r listens on its own address for the roles
above it (the highest role does not listen) and dials the roles below it
(:func:`connect_all`). Dialling tries every address the peer's host resolves to in turn (not
only the first that accepts: ``localhost`` may be ``[::1]`` and ``127.0.0.1``), each within
``handshake_timeout`` for connecting and handshaking, and retries in rounds with exponential
backoff until ``connect_timeout`` while the peer is not up or drops the connection before its
Hello (as it does to shed a flood); accepting waits as long. A round in which no address was
the peer and one proved not to be fails at once, naming each address and what it got: a
listener that refused our certificate or Hello, or dropped us after our TLS handshake a few
times, or accepted 3 connections and answered none (a stale, stopped or foreign process on the
port: a peer's listener answers at once). Each failed attempt is logged when its outcome
changes, so waiting is never silent. Each connection is secured and handshaken by
:func:`puma_async.transports.link.handshake`.

Listening binds every address of the role's host with ``SO_REUSEADDR`` (TIME_WAIT leftovers of
an earlier session do not block a port; on Linux it never lets two sockets listen on one
address) and never ``SO_REUSEPORT``: a port another socket listens on fails at once with
:class:`~puma_async.transports.link.AddressInUseError` naming the address (:func:`listen`).
These timeouts only bound establishing connections; a session has no deadline.

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
import errno
import math
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
import trio

from puma_async.errors import HandshakeError, PumaError
from puma_async.roles import role_name
from puma_async.transports.handshake import Hello
from puma_async.transports.link import (
    AddressInUseError,
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
_MAX_SILENT = 3  # an address that accepted this many connections in a row, answering none, is
# not the peer (a peer's listener answers at once; a stale or stopped process never does)

log = structlog.get_logger("puma_async.transports.connect")


@dataclasses.dataclass
class _Target:
    """One resolved address of a peer and what dialling it met so far."""

    family: int
    sockaddr: tuple[Any, ...]
    where: str
    answered: bool = False  # a listener there accepted a connection at least once
    silent: int = 0  # connections accepted there in a row that never answered the handshake
    drops: int = 0  # connections dropped there after our TLS handshake
    last: str | None = None  # what the last attempt there got
    fatal: str | None = None  # why this address is not the peer (checked after a round)

    def note(self, what: str, peer: int, *, retrying: bool = True) -> None:
        """Record what an attempt got; log it when it differs from the last (bounded)."""
        if what != self.last:
            if retrying:
                log.warning("peer not reached", peer=role_name(peer), address=self.where,
                            error=what)
            else:
                log.warning("not the peer", peer=role_name(peer), address=self.where, error=what)
        self.last = what


async def _targets(host: str, port: int, known: dict[tuple[Any, ...], _Target]
                   ) -> list[_Target]:
    """Every address ``host`` resolves to, in resolver order (their records kept across
    rounds in ``known``)."""
    targets = []
    for family, _type, _proto, _name, sockaddr in await trio.socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM
    ):
        key = (family, sockaddr[:2])
        if key not in known:
            known[key] = _Target(family, sockaddr, format_address(sockaddr[:2]))
        if known[key] not in targets:
            targets.append(known[key])
    return targets


async def _attempt(setup: Setup, peer: int, host: str, target: _Target) -> Connection | None:
    """Connect to one address of ``peer`` and handshake, within the handshake timeout; the
    connection, or None with what went wrong in ``target`` (``target.fatal`` if this address
    is not the peer: it refused us, is not of this cluster or session, or kept accepting
    connections without ever answering)."""
    sock = trio.socket.socket(target.family, socket.SOCK_STREAM)
    stream: trio.SocketStream | None = None
    connected = False
    try:
        with trio.fail_after(setup.handshake_timeout):
            try:
                await sock.connect(target.sockaddr)
            except OSError as exc:  # refused, unreachable: not up (yet)
                target.note(os.strerror(exc.errno) if exc.errno else str(exc), peer)
                return None
            stream = trio.SocketStream(sock)
            target.answered = True
            nodelay(stream)
            role, secured, reader = await handshake(
                setup, stream, expected={peer}, server_hostname=host,
            )
        target.silent = 0
        name = format_address((host, target.sockaddr[1]))
        where = name if name == target.where else f"{name} ({target.where})"
        connected = True
        return Connection(role, where, secured, reader)
    except trio.TooSlowError:
        if stream is None:
            target.note(f"connecting took over {setup.handshake_timeout:g} s", peer)
            return None
        target.silent += 1
        what = (f"accepted the connection but did not answer the handshake within "
                f"{setup.handshake_timeout:g} s ({target.silent} of {_MAX_SILENT} times)")
        if target.silent >= _MAX_SILENT:
            target.fatal = (
                f"{target.where} accepted {_MAX_SILENT} connections but answered none within "
                f"the handshake timeout of {setup.handshake_timeout:g} s: another process, not "
                f"{role_name(peer)}, listens there (a role of an earlier session, stopped or "
                f"stuck?)"
            )
        target.note(what, peer, retrying=target.fatal is None)
        return None
    except RejectedConnection as exc:
        target.silent = 0
        target.drops += exc.secured
        if not exc.transient or target.drops >= _MAX_DROPS_AFTER_TLS:
            target.fatal = f"handshake with {target.where} failed: {exc}"
        target.note(f"handshake failed: {exc}", peer, retrying=target.fatal is None)
        return None
    except HandshakeError as exc:  # a puma-async role of this cluster refused us, or we it
        target.silent = 0
        target.fatal = f"handshake with {target.where} failed: {exc.reason}"
        target.note(exc.reason, peer, retrying=False)
        return None
    except OSError as exc:  # the connection broke before the handshake began
        target.silent = 0
        target.note(exc.strerror or str(exc), peer)
        return None
    finally:
        if stream is not None and not connected:
            await trio.aclose_forcefully(stream)
        elif stream is None:
            sock.close()


def _not_the_peer(peer: int, name: str, target: _Target, targets: list[_Target]
                  ) -> PumaError:
    """The error for an address of ``name`` that is not ``peer`` (after every other address
    of it was tried too): a setup error for a silent listener, else a handshake error."""
    others = "; ".join(f"{t.where}: {t.last}" for t in targets if t is not target)
    message = f"{target.fatal}{f' (other addresses of {name}: {others})' if others else ''}"
    if target.silent >= _MAX_SILENT:
        return TcpSetupError(message)
    return HandshakeError(message, peer=peer)


async def dial(setup: Setup, peer: int, deadline: float) -> Connection:
    """Connect to ``peer`` and handshake, trying every address its host resolves to in turn,
    in rounds with backoff until ``deadline`` while it is not up or drops the connection
    before its Hello (a listener shedding a flood). After a round in which no address was the
    peer and one proved not to be (see :func:`_attempt`), fails at once naming each address
    and what it got: a stale or foreign listener does not hold a role until the deadline."""
    host, port = setup.addresses[peer]
    name = format_address((host, port))
    known: dict[tuple[Any, ...], _Target] = {}
    delay = setup.retry_initial
    rounds = 0
    unresolved: str | None = None
    while True:
        rounds += 1
        with trio.move_on_at(deadline):
            try:
                targets = await _targets(host, port, known)
            except OSError as exc:  # socket.gaierror: the name does not resolve (yet)
                unresolved = f"cannot resolve {host}: {exc.strerror or exc}"
                targets = []
            for target in targets:
                connection = await _attempt(setup, peer, host, target)
                if connection is not None:
                    return connection
            for target in targets:
                if target.fatal is not None:
                    raise _not_the_peer(peer, name, target, targets)
        if trio.current_time() + delay > deadline:
            got = "; ".join(f"{t.where}: {t.last}" for t in known.values() if t.last) or unresolved
            reason = f" ({got})" if got else ""
            answered = any(t.answered for t in known.values())
            raise (HandshakeError if answered else TcpSetupError)(
                f"peer {role_name(peer)} at {name} never came up after {rounds} attempts in "
                f"{setup.connect_timeout:g} s{reason}"
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
    claimed: dict[int, str] = {}  # role -> the address its connection came from
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
                    raise HandshakeError(
                        f"{role_name(hello.role)} is already connected from "
                        f"{claimed[hello.role]} (a role of an earlier session with this session "
                        f"id still running?)"
                    )
                claimed[hello.role] = remote
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
            if attempt.role is not None:
                del claimed[attempt.role]  # it may try again
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


async def listen(role: int, host: str, port: int) -> list[trio.SocketListener]:
    """Listen on every address ``host`` resolves to, or fail at once naming the address that
    cannot be bound: :class:`AddressInUseError` if another socket listens there. Like
    :func:`trio.open_tcp_listeners`: ``SO_REUSEADDR`` (a port whose earlier connections linger
    in TIME_WAIT binds at once; on Linux it never lets two sockets listen on one address) and
    IPv6 sockets IPv6-only, but never ``SO_REUSEPORT``. An address of a family this host lacks
    is skipped if another one binds."""
    what = f"{role_name(role)} cannot listen on {format_address((host, port))}"
    try:
        found = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                              flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise TcpSetupError(f"{what}: {exc.strerror or exc}") from exc
    listeners: list[trio.SocketListener] = []
    skipped: list[str] = []
    try:
        for family, type_, proto, _name, sockaddr in found:
            where = format_address(sockaddr[:2])
            sock = trio.socket.socket(family, type_, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                await sock.bind(sockaddr)
                sock.listen(socket.SOMAXCONN)
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EADDRINUSE:
                    which = "" if where == format_address((host, port)) else f"{where} is "
                    raise AddressInUseError(
                        f"{what}: {which}in use by another socket (a role of an earlier session "
                        f"still running?)"
                    ) from exc
                if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                    skipped.append(f"{where}: {exc.strerror or exc}")
                    continue
                raise TcpSetupError(f"{what}: {where}: {exc.strerror or exc}") from exc
            listeners.append(trio.SocketListener(sock))
        if not listeners:
            raise TcpSetupError(f"{what}: {'; '.join(skipped)}")
    except BaseException:
        for listener in listeners:
            listener.socket.close()
        raise
    return listeners


async def connect_all(setup: Setup) -> dict[int, Connection]:
    """All connections of one role: listen for higher roles, dial lower ones, concurrently."""
    role = setup.role
    higher = {p for p in setup.addresses if p > role}
    lower = sorted(p for p in setup.addresses if p < role)
    deadline = trio.current_time() + setup.connect_timeout
    listeners: list[trio.SocketListener] = []
    if higher:
        listeners = await listen(role, *setup.addresses[role])

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
