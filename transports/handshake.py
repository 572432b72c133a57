"""The TCP handshake as a sans-IO state machine: bytes in, events and bytes out, no sockets.

After TLS (:mod:`puma_async.transports.link` drives this machine over a stream), both sides of
a connection run the same steps, each message a length-prefixed unit as on the wire after it
(:mod:`puma_async.transports.framing`):

1. send our :class:`Hello` (wire version, session id, role, configuration digest, frame
   limit);
2. await the peer's Hello and check it (:func:`check_hello`: the same wire version, session,
   digest and frame limit, the role expected on this connection and, with TLS, the role of the
   peer's certificate); the caller may add a reason of its own (a role already connected);
3. send our verdict (:class:`Verdict`: accept, or reject with the reason);
4. await the peer's verdict: accepted if both accepted, else rejected with the first reason.

Waiting for the peer's verdict also lets a rejection reach the peer before the connection
closes, so a rejected side learns why, and no frame moves before both accepted. The shape
follows h11: :meth:`Handshake.send` turns our events into bytes, :meth:`Handshake.receive_data`
takes what arrived (``b""`` for the end of the stream) and :meth:`Handshake.next_event` returns
the peer's next event or :data:`NEED_DATA`; :data:`TRANSITIONS` is the whole state machine.

A connection that fails before a valid Hello ends in :class:`Failed` (the listener drops it
and keeps waiting; a dialler retries if ``transient``); one that fails after it ends in
:class:`Rejected`, which fails the transport's open on both sides.

Wire format (version 1)
-----------------------
Every message starts with ``b"PUMA"`` and a kind byte. A Hello is ``PUMA 0x01 | version (u16)
| role (u8) | frame limit (u64) | session length (u8) | session | digest length (u8) | digest``
(integers little-endian, session and digest at most 64 bytes each); an accepting verdict is
``PUMA 0x02``; a rejecting one ``PUMA 0x03 | reason`` (UTF-8, the rest of the unit). A
message longer than :data:`MAX_HANDSHAKE_BYTES` is refused before it is read. The handshake is
the transport's own: it names no protocol message, and the version of the messages a session
exchanges is part of the configuration digest its roles compare.
"""

from __future__ import annotations

import dataclasses
import enum
import struct
from collections.abc import Collection
from typing import Final, TypeVar

from puma_async.roles import role_name
from puma_async.transports.framing import HEADER_BYTES, length_prefix

WIRE_VERSION = 1
MAX_HANDSHAKE_BYTES = 4096
MAX_ID_BYTES = 64
"""The longest session id and configuration digest a Hello carries."""
MAX_REASON_CHARS = 1000
"""A rejection's reason is cut to this many characters (at most 4000 bytes of UTF-8)."""

_MAGIC = b"PUMA"
_HELLO, _ACCEPT, _REJECT = 1, 2, 3
_HELLO_FIXED = struct.Struct("<4sBHBQ")  # magic, kind, version, role, frame limit
_TLS_RECORD = 0x0316  # a TLS handshake record (16 03 ..) read as a little-endian length


@dataclasses.dataclass(frozen=True)
class Hello:
    """What a side states about itself; both sides must state the same but for the role."""

    version: int
    session: bytes
    role: int
    config_digest: bytes
    max_frame_bytes: int

    def __post_init__(self) -> None:
        if not (0 <= self.version < 1 << 16 and 0 <= self.role < 1 << 8
                and 0 <= self.max_frame_bytes < 1 << 64):
            raise ValueError("Hello: version, role or frame limit out of range")
        if len(self.session) > MAX_ID_BYTES or len(self.config_digest) > MAX_ID_BYTES:
            raise ValueError(f"Hello: session id and digest hold at most {MAX_ID_BYTES} bytes")


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Our answer to the peer's Hello: accept (``reason`` None) or reject, saying why."""

    reason: str | None = None


@dataclasses.dataclass(frozen=True)
class PeerHello:
    """The peer's Hello arrived, well formed; ``problem`` is why the checks refuse it."""

    hello: Hello
    problem: str | None


@dataclasses.dataclass(frozen=True)
class Accepted:
    """Both sides accepted: frames may flow."""

    role: int


@dataclasses.dataclass(frozen=True)
class Rejected:
    """After a valid Hello, a side rejected or the connection failed: ``reason`` says why."""

    reason: str
    peer: int


@dataclasses.dataclass(frozen=True)
class Failed:
    """The connection failed before a valid Hello (closed, reset, junk, too large)."""

    reason: str
    transient: bool = False
    """Closed or reset, as a listener shedding a flood does: worth dialling again."""


class NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData()
"""What :meth:`Handshake.next_event` returns until a whole message has arrived."""

Event = Hello | Verdict | PeerHello | Accepted | Rejected | Failed
_E = TypeVar("_E", Hello, Verdict, PeerHello, Accepted, Rejected, Failed)


class State(enum.Enum):
    SEND_HELLO = "send Hello"
    AWAIT_HELLO = "await Hello"
    SEND_VERDICT = "send verdict"
    AWAIT_VERDICT = "await verdict"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    FAILED = "failed"


TRANSITIONS: Final[dict[tuple[State, type], State]] = {
    (State.SEND_HELLO, Hello): State.AWAIT_HELLO,
    (State.SEND_HELLO, Failed): State.FAILED,
    (State.AWAIT_HELLO, PeerHello): State.SEND_VERDICT,
    (State.AWAIT_HELLO, Failed): State.FAILED,
    (State.SEND_VERDICT, Verdict): State.AWAIT_VERDICT,
    (State.SEND_VERDICT, Rejected): State.REJECTED,
    (State.AWAIT_VERDICT, Accepted): State.ACCEPTED,
    (State.AWAIT_VERDICT, Rejected): State.REJECTED,
}
"""(state, event) -> next state: events we send (Hello, Verdict) and the peer's (the rest)."""


class HandshakeUsageError(RuntimeError):
    """The caller sent an event the current state does not allow (a bug, not the peer's)."""


# ----------------------------------------------------------------------------- wire format


def encode_hello(hello: Hello) -> bytes:
    """A Hello's body (without its length prefix)."""
    return (
        _HELLO_FIXED.pack(_MAGIC, _HELLO, hello.version, hello.role, hello.max_frame_bytes)
        + bytes((len(hello.session),)) + hello.session
        + bytes((len(hello.config_digest),)) + hello.config_digest
    )


def decode_hello(body: bytes) -> Hello:
    """The Hello in ``body``; ValueError saying what is wrong with it."""
    _check_magic(body)
    if body[4] != _HELLO:
        raise ValueError(f"expected a Hello, got handshake message kind {body[4]}")
    if len(body) < _HELLO_FIXED.size + 2:
        raise ValueError("truncated Hello")
    _, _, version, role, max_frame = _HELLO_FIXED.unpack_from(body)
    pos = _HELLO_FIXED.size
    session_end = pos + 1 + body[pos]
    if session_end >= len(body):
        raise ValueError("truncated Hello")
    digest_end = session_end + 1 + body[session_end]
    if digest_end != len(body):
        raise ValueError("Hello of the wrong length")
    return Hello(version, body[pos + 1:session_end], role, body[session_end + 1:digest_end],
                 max_frame)


def encode_verdict(verdict: Verdict) -> bytes:
    """A verdict's body (without its length prefix)."""
    if verdict.reason is None:
        return _MAGIC + bytes((_ACCEPT,))
    return _MAGIC + bytes((_REJECT,)) + verdict.reason[:MAX_REASON_CHARS].encode()


def decode_verdict(body: bytes) -> Verdict:
    """The verdict in ``body``; ValueError if it is none."""
    _check_magic(body)
    if body[4] == _ACCEPT and len(body) == 5:
        return Verdict()
    if body[4] == _REJECT:
        return Verdict(body[5:].decode(errors="replace")[:MAX_REASON_CHARS])
    raise ValueError("not a handshake verdict")


def _check_magic(body: bytes) -> None:
    if len(body) < 5 or body[:4] != _MAGIC:
        raise ValueError("not a puma-async handshake message")


def check_hello(ours: Hello, theirs: Hello, expected: Collection[int],
                cert_role: int | None) -> str | None:
    """Why the peer's Hello is not acceptable on this connection, or None."""
    if theirs.version != ours.version:
        return f"handshake version {theirs.version}, expected {ours.version}"
    if theirs.session != ours.session:
        return f"session id {theirs.session.hex()} differs from ours {ours.session.hex()}"
    if theirs.role not in expected:
        wanted = " or ".join(map(role_name, sorted(expected))) or "none"
        return f"peer says it is {role_name(theirs.role)}, expected {wanted} on this connection"
    if cert_role is not None and cert_role != theirs.role:
        return (f"peer certificate is for {role_name(cert_role)} but its Hello claims "
                f"{role_name(theirs.role)}")
    if theirs.config_digest != ours.config_digest:
        return (f"configuration digest {theirs.config_digest.hex()} differs from ours "
                f"{ours.config_digest.hex()}")
    if theirs.max_frame_bytes != ours.max_frame_bytes:
        return (f"peer states a frame limit of {theirs.max_frame_bytes} bytes, ours is "
                f"{ours.max_frame_bytes} (every role of a session must use the same)")
    return None


# ----------------------------------------------------------------------------- the machine


class Handshake:
    """One side of one connection's handshake (module docstring).

    ``expected`` are the roles this connection may come from; ``cert_role`` the role named by
    the peer's TLS certificate (None without TLS); ``tls`` whether the connection is secured
    (it only words the reasons of failures).
    """

    def __init__(self, ours: Hello, *, expected: Collection[int], cert_role: int | None = None,
                 tls: bool = False):
        self.ours = ours
        self.expected = frozenset(expected)
        self.cert_role = cert_role
        self.tls = tls
        self.state = State.SEND_HELLO
        self.theirs: Hello | None = None
        self._problem: str | None = None
        self._buffer = bytearray()
        self._closed = False

    @property
    def trailing_data(self) -> bytes:
        """Bytes received after the peer's verdict: the start of its first frame."""
        return bytes(self._buffer) if self.state is State.ACCEPTED else b""

    def send(self, event: Hello | Verdict) -> bytes:
        """The bytes that send ``event``: our Hello (:attr:`ours`, which the peer's is checked
        against) first, then our verdict."""
        self._advance(event)
        if isinstance(event, Hello):
            body = encode_hello(event)
        else:
            self._problem = event.reason
            body = encode_verdict(event)
        return length_prefix(len(body)) + body

    def receive_data(self, data: bytes) -> None:
        """Bytes from the peer; ``b""`` when its stream ended."""
        if data:
            self._buffer += data
        else:
            self._closed = True

    def next_event(self) -> PeerHello | Accepted | Rejected | Failed | NeedData:
        """The peer's next event, or :data:`NEED_DATA` until one has arrived whole. A
        terminal event (Accepted, Rejected, Failed) is returned once; :data:`NEED_DATA` after."""
        if self.state is State.AWAIT_HELLO:
            return self._hello_event()
        if self.state is State.AWAIT_VERDICT:
            return self._verdict_event()
        return NEED_DATA

    def connection_lost(self, reason: str, *, transient: bool = False) -> Rejected | Failed:
        """The stream broke (reset, TLS failure) while sending or receiving: the outcome."""
        if self.theirs is None:
            return self._advance(Failed(reason, transient))
        return self._advance(self._rejected(f"connection failed during the handshake: {reason}"))

    # -- events ----------------------------------------------------------------------------

    def _advance(self, event: _E) -> _E:
        try:
            self.state = TRANSITIONS[self.state, type(event)]
        except KeyError:
            raise HandshakeUsageError(
                f"{type(event).__name__} in state '{self.state.value}'"
            ) from None
        return event

    def _hello_event(self) -> PeerHello | Failed | NeedData:
        body = self._unit()
        if isinstance(body, NeedData):
            return body
        if isinstance(body, Failed):
            return self._advance(body)
        try:
            theirs = decode_hello(body)
        except ValueError as exc:
            return self._advance(Failed(str(exc)))
        self.theirs = theirs
        problem = check_hello(self.ours, theirs, self.expected, self.cert_role)
        return self._advance(PeerHello(theirs, problem))

    def _verdict_event(self) -> Accepted | Rejected | NeedData:
        body = self._unit()
        if isinstance(body, NeedData):
            return body
        if isinstance(body, Failed):
            reason = f"connection failed during the handshake: {body.reason}"
        else:
            try:
                verdict = decode_verdict(body)
            except ValueError:
                reason = "peer sent no valid handshake verdict"
            else:
                if verdict.reason is None and self._problem is None:
                    assert self.theirs is not None
                    return self._advance(Accepted(self.theirs.role))
                reason = f"peer rejected the handshake: {verdict.reason}"
        return self._advance(self._rejected(reason))

    def _rejected(self, reason: str) -> Rejected:
        """Rejected for our own reason if we rejected (whatever the peer did), else for
        ``reason``."""
        assert self.theirs is not None
        return Rejected(self._problem if self._problem is not None else reason, self.theirs.role)

    def _unit(self) -> bytes | Failed | NeedData:
        """The next whole message's body (consumed from the buffer), a failure, or NEED_DATA."""
        buffer = self._buffer
        if len(buffer) < HEADER_BYTES:
            return self._ended(len(buffer), HEADER_BYTES) if self._closed else NEED_DATA
        length = int.from_bytes(buffer[:HEADER_BYTES], "little")
        if length > MAX_HANDSHAKE_BYTES:
            if not self.tls and length & 0xFFFF == _TLS_RECORD:
                return Failed("peer started a TLS handshake but this side runs plain TCP")
            return Failed(f"handshake message of {length} bytes is too large")
        end = HEADER_BYTES + length
        if len(buffer) < end:
            return self._ended(len(buffer) - HEADER_BYTES, length) if self._closed else NEED_DATA
        body = bytes(buffer[HEADER_BYTES:end])
        del buffer[:end]
        return body

    def _ended(self, have: int, count: int) -> Failed:
        """The stream ended with ``have`` of ``count`` bytes of a message (of its length
        prefix while the buffer holds less than one)."""
        if self._buffer:
            return Failed(f"connection closed after {have} of {count} bytes of a handshake "
                          "message")
        if self.theirs is not None:
            return Failed("connection closed")
        hint = "" if self.tls else " (does the peer require TLS?)"
        return Failed(f"connection closed during the handshake{hint}", transient=True)
