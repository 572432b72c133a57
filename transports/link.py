"""One TCP connection between two roles made ready for frames: TLS, then the handshake.

:func:`handshake` secures a fresh connection (TLS 1.3 with the cluster CA's certificates on
both sides, :mod:`puma_async.transports.tls`; the role in the peer's certificate is read) and
runs the handshake state machine (:mod:`puma_async.transports.handshake`) over it. A failure
before the peer's valid Hello is a :class:`RejectedConnection` (listeners drop such a
connection and keep waiting, diallers may retry); one after it is a :class:`HandshakeError`
that fails the transport's open. :class:`Setup` holds what every connection of a role shares
(its Hello, its TLS contexts built once, its timeouts).
"""

from __future__ import annotations

import dataclasses
import socket
import ssl
from collections.abc import Callable, Collection, Mapping

import trio

from puma_async.errors import HandshakeError, PumaError
from puma_async.transports.framing import RECEIVE_CHUNK, FrameReader, cause
from puma_async.transports.handshake import (
    Accepted,
    Failed,
    Handshake,
    Hello,
    NeedData,
    PeerHello,
    Rejected,
    Verdict,
)
from puma_async.transports.tls import TlsConfig, client_context, peer_role_from_cert, server_context


class TcpSetupError(PumaError):
    """The TCP transport could not be set up: a port in use, a peer that never came up."""


class AddressInUseError(TcpSetupError):
    """A role cannot listen on its address: another socket listens there (a role of an
    earlier session, another program); ports are never shared (no ``SO_REUSEPORT``)."""


class RejectedConnection(Exception):
    """A connection failed before a valid Hello: a listener drops it and keeps waiting; a
    dialler tries again if it is ``transient`` (closed or reset, as when a listener sheds a
    flood), else fails. ``secured``: it failed after the TLS handshake had completed on this
    side (with TLS 1.3 the server checks the client's certificate after that, so a dialler
    dropped there again and again is most likely being refused, not shed)."""

    def __init__(self, reason: str, *, transient: bool = False, secured: bool = False):
        super().__init__(reason)
        self.transient = transient
        self.secured = secured


@dataclasses.dataclass
class Connection:
    """One established, handshaken connection to a peer."""

    peer: int
    address: str
    stream: trio.abc.Stream
    reader: FrameReader
    send_lock: trio.Lock = dataclasses.field(default_factory=trio.Lock)
    send_closed: bool = False


@dataclasses.dataclass(frozen=True)
class Setup:
    """Everything the connection setup of one role needs (TLS contexts built once)."""

    role: int
    addresses: Mapping[int, tuple[str, int]]
    hello: Hello
    tls: TlsConfig | None
    server_tls: ssl.SSLContext | None
    client_tls: ssl.SSLContext | None
    connect_timeout: float
    handshake_timeout: float
    retry_initial: float
    retry_max: float
    max_handshakes: int


def tls_contexts(
    tls: TlsConfig | None, *, server: bool, client: bool
) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
    """The server and client contexts a role needs (None where it needs none), each built
    once: loading the CA, certificate and key costs more than a TLS handshake."""
    if tls is None:
        return None, None
    try:
        return (
            server_context(tls) if server else None, client_context(tls) if client else None
        )
    except OSError as exc:  # ssl.SSLError too
        raise TcpSetupError(
            f"cannot load the TLS files {tls.ca_cert}, {tls.cert}, {tls.key}: {exc}"
        ) from None


def format_address(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def nodelay(stream: trio.SocketStream) -> None:
    """Frames are written whole; do not let Nagle hold back a small one."""
    stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)


_TRANSIENT = (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError, ssl.SSLZeroReturnError)
"""Causes of a broken handshake that a listener shedding load also produces (it dropped the
connection): the dialling side tries again."""


async def handshake(
    setup: Setup,
    stream: trio.SocketStream,
    *,
    expected: Collection[int],
    server_hostname: str | None,
    on_hello: Callable[[Hello], None] = lambda hello: None,
) -> tuple[int, trio.abc.Stream, FrameReader]:
    """Secure the connection, exchange and check Hellos and verdicts; the peer's role, the
    (secured) stream and its frame reader.

    Raises :class:`RejectedConnection` for failures before a valid Hello arrived and
    :class:`HandshakeError` for a mismatching Hello or a peer's rejection. ``on_hello`` may
    raise HandshakeError to reject a Hello that passed the checks (e.g. a duplicate role).
    ``server_hostname`` None means the listening side.
    """
    secured: trio.abc.Stream = stream
    cert_role: int | None = None
    try:
        if setup.tls is not None:
            context = setup.client_tls if server_hostname is not None else setup.server_tls
            assert context is not None
            ssl_stream = trio.SSLStream(
                stream, context, server_side=server_hostname is None,
                server_hostname=server_hostname,
            )
            secured = ssl_stream
            await ssl_stream.do_handshake()
            cert_role = peer_role_from_cert(ssl_stream, cluster=setup.tls.cluster)
    except HandshakeError as exc:
        raise RejectedConnection(str(exc), secured=True) from exc
    except trio.BrokenResourceError as exc:
        raise _broken(setup, exc, secured=False) from exc

    machine = Handshake(setup.hello, expected=expected, cert_role=cert_role,
                        tls=setup.tls is not None)
    event = await _exchange(setup, secured, machine, machine.send(setup.hello))
    if isinstance(event, Failed):
        raise RejectedConnection(event.reason, transient=event.transient,
                                 secured=cert_role is not None)
    assert isinstance(event, PeerHello)
    problem = event.problem
    if problem is None:
        try:
            on_hello(event.hello)
        except HandshakeError as exc:
            problem = exc.reason
    event = await _exchange(setup, secured, machine, machine.send(Verdict(problem)))
    if isinstance(event, Rejected):
        raise HandshakeError(event.reason, peer=event.peer)
    assert isinstance(event, Accepted)
    return event.role, secured, FrameReader(secured, machine.trailing_data)


async def _exchange(setup: Setup, stream: trio.abc.Stream, machine: Handshake, data: bytes
                    ) -> PeerHello | Accepted | Rejected | Failed:
    """Send ``data``, then receive until the machine has the peer's next event."""
    try:
        await stream.send_all(data)
        while isinstance(event := machine.next_event(), NeedData):
            machine.receive_data(await stream.receive_some(RECEIVE_CHUNK))
    except trio.BrokenResourceError as exc:
        if machine.theirs is not None:
            return machine.connection_lost(cause(exc))
        error = _broken(setup, exc, secured=machine.cert_role is not None)
        return machine.connection_lost(str(error), transient=error.transient)
    return event


def _broken(setup: Setup, exc: trio.BrokenResourceError, *, secured: bool
            ) -> RejectedConnection:
    """A connection that broke before the peer's Hello (under TLS 1.3, a refused client
    certificate shows only here, after the TLS handshake seemed to succeed)."""
    transient = isinstance(exc.__cause__ or exc.__context__, _TRANSIENT)
    hint = (
        " (does the peer run without TLS, or with a certificate of another cluster CA?)"
        if setup.tls is not None and (secured or not transient) else ""
    )
    return RejectedConnection(
        f"{'TLS handshake' if setup.tls is not None else 'connection'} failed: "
        f"{cause(exc)}{hint}",
        transient=transient, secured=secured,
    )
