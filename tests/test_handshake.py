"""The TCP handshake state machine without sockets: bytes in, events and bytes out.

Two :class:`Handshake` machines are wired to each other in memory; every check of
:func:`check_hello`, every failure before and after the Hello and every misuse of the
machine is exercised here, the same way whatever sizes the bytes arrive in.
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from puma_async.transports.framing import HEADER_BYTES, length_prefix
from puma_async.transports.handshake import (
    MAX_HANDSHAKE_BYTES,
    MAX_ID_BYTES,
    MAX_REASON_CHARS,
    NEED_DATA,
    TRANSITIONS,
    WIRE_VERSION,
    Accepted,
    Failed,
    Handshake,
    HandshakeUsageError,
    Hello,
    PeerHello,
    Rejected,
    State,
    Verdict,
    check_hello,
    decode_hello,
    decode_verdict,
    encode_hello,
    encode_verdict,
)

SESSION = b"s" * 16
DIGEST = b"d" * 32
LIMIT = 1 << 20


def hello(role: int, **change: object) -> Hello:
    return dataclasses.replace(Hello(WIRE_VERSION, SESSION, role, DIGEST, LIMIT), **change)


def machines(lower: Hello | None = None, higher: Hello | None = None, *, tls: bool = False,
             cert_roles: tuple[int | None, int | None] = (None, None)
             ) -> tuple[Handshake, Handshake]:
    """The listening side (role 0, expecting role 1) and the dialling side (role 1)."""
    listener = Handshake(lower or hello(0), expected={1}, cert_role=cert_roles[0], tls=tls)
    dialler = Handshake(higher or hello(1), expected={0}, cert_role=cert_roles[1], tls=tls)
    return listener, dialler


def feed(machine: Handshake, data: bytes, chunk: int | None = None) -> object:
    """Give ``data`` to ``machine`` in chunks of ``chunk`` bytes (all at once if None); the
    first event that is not NEED_DATA (or NEED_DATA if none came)."""
    if not data:
        machine.receive_data(b"")  # the end of the stream
        return machine.next_event()
    step = chunk or len(data)
    for start in range(0, len(data), step):
        machine.receive_data(data[start:start + step])
        event = machine.next_event()
        if event is not NEED_DATA:
            return event
    return machine.next_event()


def run(a: Handshake, b: Handshake, *, reasons: tuple[str | None, str | None] = (None, None),
        chunk: int | None = None) -> tuple[object, object]:
    """Both sides exchange Hellos, then verdicts (``reasons``: a caller's own rejection
    added to the checks' verdict); each side's final event."""
    to_b, to_a = a.send(a.ours), b.send(b.ours)
    seen = [feed(a, to_a, chunk), feed(b, to_b, chunk)]
    if not all(isinstance(e, PeerHello) for e in seen):
        return seen[0], seen[1]
    verdicts = [m.send(Verdict(e.problem or r))  # type: ignore[union-attr]
                for m, e, r in zip((a, b), seen, reasons, strict=True)]
    return feed(a, verdicts[1], chunk), feed(b, verdicts[0], chunk)


# ----------------------------------------------------------------------------- wire format


@given(st.integers(0, 2**16 - 1), st.binary(max_size=MAX_ID_BYTES), st.integers(0, 255),
       st.binary(max_size=MAX_ID_BYTES), st.integers(0, 2**64 - 1))
def test_hello_round_trip(version: int, session: bytes, role: int, digest: bytes,
                          limit: int) -> None:
    original = Hello(version, session, role, digest, limit)
    assert decode_hello(encode_hello(original)) == original


@given(st.none() | st.text(max_size=2 * MAX_REASON_CHARS))
def test_verdict_round_trip(reason: str | None) -> None:
    decoded = decode_verdict(encode_verdict(Verdict(reason)))
    assert decoded == Verdict(None if reason is None else reason[:MAX_REASON_CHARS])
    assert len(encode_verdict(Verdict(reason))) + HEADER_BYTES <= MAX_HANDSHAKE_BYTES


def test_hello_fields_are_bounded() -> None:
    for change in ({"role": 256}, {"role": -1}, {"version": 1 << 16},
                   {"session": bytes(MAX_ID_BYTES + 1)}, {"config_digest": bytes(65)},
                   {"max_frame_bytes": 1 << 64}):
        with pytest.raises(ValueError):
            dataclasses.replace(hello(0), **change)


@pytest.mark.parametrize(("body", "named"), [
    (b"", "not a puma-async handshake message"),
    (b"HTTP/1.1 200", "not a puma-async handshake message"),
    (b"PUMA\x02", "expected a Hello, got handshake message kind 2"),
    (b"PUMA\x01\x01\x00", "truncated Hello"),
    (encode_hello(hello(0))[:-1], "wrong length"),
    (encode_hello(hello(0)) + b"x", "wrong length"),
    (encode_hello(hello(0))[:17] + b"\xff", "truncated Hello"),
])
def test_malformed_hellos(body: bytes, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        decode_hello(body)


@pytest.mark.parametrize("body", [b"", b"PUMX\x02", b"PUMA\x01", b"PUMA\x02extra", b"PUMA\x09"])
def test_malformed_verdicts(body: bytes) -> None:
    with pytest.raises(ValueError):
        decode_verdict(body)


def test_a_rejection_reason_of_invalid_utf8_is_shown_replaced() -> None:
    assert decode_verdict(b"PUMA\x03bad \xff byte") == Verdict("bad \ufffd byte")


# ----------------------------------------------------------------------------- outcomes


@pytest.mark.parametrize("chunk", [None, 1, 7])
def test_matching_hellos_are_accepted_whatever_the_chunks(chunk: int | None) -> None:
    listener, dialler = machines()
    assert run(listener, dialler, chunk=chunk) == (Accepted(1), Accepted(0))
    assert listener.state is dialler.state is State.ACCEPTED
    assert listener.next_event() is NEED_DATA  # the terminal event came once


def test_bytes_after_the_verdict_are_the_first_frame() -> None:
    listener, dialler = machines()
    to_dialler, to_listener = listener.send(listener.ours), dialler.send(dialler.ours)
    assert isinstance(feed(listener, to_listener), PeerHello)
    assert isinstance(feed(dialler, to_dialler), PeerHello)
    dialler.send(Verdict())
    first_frame = length_prefix(3) + b"abc"
    assert feed(dialler, listener.send(Verdict()) + first_frame) == Accepted(0)
    assert dialler.trailing_data == first_frame
    assert listener.trailing_data == b""


@pytest.mark.parametrize(("change", "named", "answer"), [
    ({"version": WIRE_VERSION + 1}, "handshake version 2, expected 1",
     "handshake version 1, expected 2"),
    ({"session": b"x" * 16}, "session id 7878", "differs from ours 7878"),
    ({"role": 2}, "peer says it is P2, expected P1 on this connection",
     "peer rejected the handshake: peer says it is P2"),
    ({"config_digest": b"e" * 32}, "configuration digest 6565", "differs from ours 6565"),
    ({"max_frame_bytes": 2 * LIMIT}, "frame limit of 2097152 bytes, ours is 1048576",
     "frame limit of 1048576 bytes, ours is 2097152"),
])
def test_each_mismatch_rejects_on_both_sides(change: dict[str, object], named: str,
                                             answer: str) -> None:
    """Each side names the mismatch it sees; a side that saw none learns the other's."""
    listener, dialler = machines(higher=dataclasses.replace(hello(1), **change))
    on_listener, on_dialler = run(listener, dialler)
    assert isinstance(on_listener, Rejected) and named in on_listener.reason
    assert on_listener.peer == change.get("role", 1)
    assert isinstance(on_dialler, Rejected) and answer in on_dialler.reason
    assert on_dialler.peer == 0
    assert listener.state is dialler.state is State.REJECTED


def test_a_certificate_of_another_role_is_rejected() -> None:
    listener, dialler = machines(tls=True, cert_roles=(2, 0))
    on_listener, on_dialler = run(listener, dialler)
    assert on_listener == Rejected("peer certificate is for P2 but its Hello claims P1", 1)
    assert on_dialler == Rejected("peer rejected the handshake: peer certificate is for P2 "
                                  "but its Hello claims P1", 0)


def test_check_hello_accepts_what_matches() -> None:
    assert check_hello(hello(0), hello(1), {1, 2}, cert_role=1) is None
    assert check_hello(hello(0), hello(1), {1}, cert_role=None) is None
    assert "expected none" in str(check_hello(hello(0), hello(1), set(), cert_role=None))


def test_the_callers_own_rejection() -> None:
    """A Hello that passed the checks may still be refused (a role already connected)."""
    listener, dialler = machines()
    on_listener, on_dialler = run(listener, dialler, reasons=("P1 is already connected", None))
    assert on_listener == Rejected("P1 is already connected", 1)
    assert on_dialler == Rejected("peer rejected the handshake: P1 is already connected", 0)


def test_both_sides_rejecting_keep_their_own_reasons() -> None:
    listener, dialler = machines()
    assert run(listener, dialler, reasons=("mine", "theirs")) == (
        Rejected("mine", 1), Rejected("theirs", 0)
    )


# ----------------------------------------------------------------------------- failures


def awaiting_hello(*, tls: bool = False) -> Handshake:
    machine = Handshake(hello(0), expected={1}, tls=tls)
    machine.send(machine.ours)
    return machine


@pytest.mark.parametrize(("tls", "reason"), [
    (False, "connection closed during the handshake (does the peer require TLS?)"),
    (True, "connection closed during the handshake"),
])
def test_closed_before_the_hello_is_transient(tls: bool, reason: str) -> None:
    machine = awaiting_hello(tls=tls)
    assert feed(machine, b"") == Failed(reason, transient=True)
    assert machine.state is State.FAILED


@pytest.mark.parametrize(("data", "reason"), [
    (b"\x05\x00\x00", "closed after 3 of 8 bytes of a handshake message"),
    (length_prefix(20) + b"PUMA", "closed after 4 of 20 bytes of a handshake message"),
])
def test_closed_inside_a_message_is_not_transient(data: bytes, reason: str) -> None:
    machine = awaiting_hello()
    machine.receive_data(data)
    assert machine.next_event() is NEED_DATA
    assert feed(machine, b"") == Failed(f"connection {reason}")


@pytest.mark.parametrize(("tls", "data", "reason"), [
    (False, b"\x16\x03\x01\x02\x00\x01\x00\x01", "peer started a TLS handshake but this side "
                                                "runs plain TCP"),
    (True, b"\x16\x03\x01\x02\x00\x01\x00\x01", "handshake message of 72058693583176470 bytes "
                                               "is too large"),
    (False, length_prefix(MAX_HANDSHAKE_BYTES + 1), "handshake message of 4097 bytes is too "
                                                    "large"),
    (False, b"GET / HTTP/1.1\r\n\r\n", "too large"),
    (False, length_prefix(5) + b"PUMA\x02", "expected a Hello, got handshake message kind 2"),
    (False, length_prefix(5) + b"HELLO", "not a puma-async handshake message"),
])
def test_junk_before_the_hello_fails_at_once(tls: bool, data: bytes, reason: str) -> None:
    machine = awaiting_hello(tls=tls)
    event = feed(machine, data)
    assert isinstance(event, Failed) and reason in event.reason and not event.transient
    assert machine.state is State.FAILED


@given(st.binary(max_size=300), st.booleans(), st.booleans())
def test_arbitrary_bytes_end_in_an_event_never_an_exception(data: bytes, framed: bool,
                                                            closed: bool) -> None:
    for machine in (awaiting_hello(), awaiting_verdict()):
        machine.receive_data(length_prefix(len(data)) + data if framed else data)
        if closed:
            machine.receive_data(b"")
        event = machine.next_event()
        assert event is NEED_DATA or isinstance(event, PeerHello | Failed | Accepted | Rejected)
        assert not closed or event is not NEED_DATA


def awaiting_verdict(reason: str | None = None) -> Handshake:
    listener, dialler = machines()
    listener.send(listener.ours)
    assert isinstance(feed(listener, dialler.send(dialler.ours)), PeerHello)
    listener.send(Verdict(reason))
    return listener


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "connection failed during the handshake: connection closed"),
    (length_prefix(6) + b"PUMA\x02!", "peer sent no valid handshake verdict"),
    (length_prefix(MAX_HANDSHAKE_BYTES + 1), "connection failed during the handshake: "
                                             "handshake message of 4097 bytes is too large"),
])
def test_failures_after_the_hello_reject(data: bytes, reason: str) -> None:
    machine = awaiting_verdict()
    assert feed(machine, data) == Rejected(reason, 1)
    assert machine.state is State.REJECTED


def test_a_rejecting_side_keeps_its_reason_whatever_follows() -> None:
    accept = encode_verdict(Verdict())
    for data in (b"", length_prefix(len(accept)) + accept, b"junk" * 4):
        machine = awaiting_verdict("session id differs")
        assert feed(machine, data) == Rejected("session id differs", 1)


def test_a_broken_connection_before_and_after_the_hello() -> None:
    machine = awaiting_hello()
    assert machine.connection_lost("ConnectionResetError", transient=True) == Failed(
        "ConnectionResetError", transient=True)
    machine = awaiting_verdict()
    assert machine.connection_lost("BrokenPipeError") == Rejected(
        "connection failed during the handshake: BrokenPipeError", 1)
    listener, dialler = machines()
    listener.send(listener.ours)
    feed(listener, dialler.send(dialler.ours))
    assert listener.state is State.SEND_VERDICT
    assert listener.connection_lost("reset") == Rejected(
        "connection failed during the handshake: reset", 1)
    fresh = Handshake(hello(0), expected={1})
    assert fresh.connection_lost("TLS handshake failed") == Failed("TLS handshake failed")
    assert fresh.state is State.FAILED


# ----------------------------------------------------------------------------- the machine


def test_the_transition_table_is_followed() -> None:
    """Every state the table leads to is reachable, and nothing else is allowed."""
    assert {State.ACCEPTED, State.REJECTED, State.FAILED} == (
        set(State) - {state for state, _ in TRANSITIONS}
    )
    events = {Hello: hello(0), Verdict: Verdict(), Failed: Failed("x"),
              Rejected: Rejected("x", 1), Accepted: Accepted(1), PeerHello: None}
    for state, (kind, event) in itertools.product(State, events.items()):
        if kind not in (Hello, Verdict) or (state, kind) in TRANSITIONS:
            continue
        machine = Handshake(hello(0), expected={1})
        machine.state = state
        with pytest.raises(HandshakeUsageError, match=state.value):
            machine.send(event)  # type: ignore[arg-type]
    listener, dialler = machines()
    path = [listener.state]
    listener.send(listener.ours)
    path.append(listener.state)
    feed(listener, dialler.send(dialler.ours))
    path.append(listener.state)
    listener.send(Verdict())
    path.append(listener.state)
    feed(listener, length_prefix(5) + encode_verdict(Verdict()))
    path.append(listener.state)
    assert path == [State.SEND_HELLO, State.AWAIT_HELLO, State.SEND_VERDICT,
                    State.AWAIT_VERDICT, State.ACCEPTED]


def test_nothing_is_read_before_our_hello_is_sent() -> None:
    machine = Handshake(hello(0), expected={1})
    machine.receive_data(length_prefix(5) + b"PUMA\x02")
    assert machine.next_event() is NEED_DATA
    with pytest.raises(HandshakeUsageError, match="Verdict in state 'send Hello'"):
        machine.send(Verdict())
