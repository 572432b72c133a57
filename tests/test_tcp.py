"""TCP transport over loopback: mutual TLS, handshake checks, framing limits, disconnects.

Every role runs in the same ``trio.run``; ports come from binding port 0. Timeouts are hang
guards only, except where a test waits for a deadline on purpose (kept short).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import stat
import struct
import subprocess
import sys
import textwrap
import time
import tracemalloc
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import structlog
import trio
import trio.testing

from puma_async.certificates import ClusterPki, create_cluster_pki
from puma_async.codec import Arrays
from puma_async.context import ArraySpec, Context
from puma_async.errors import (
    DecodeError,
    HandshakeError,
    PeerDisconnectedError,
    ProtocolError,
)
from puma_async.evaluate import evaluation_program
from puma_async.protocols.arith import mul_fxp
from puma_async.protocols.compare import less_than
from puma_async.protocols.fixedpoint import FixedPoint
from puma_async.protocols.shares import AShare
from puma_async.roles import CLIENT
from puma_async.runtime import PartyOptions, run_party
from puma_async.transports import link
from puma_async.transports.base import DEFAULT_MAX_FRAME_BYTES
from puma_async.transports.framing import HEADER_BYTES, FrameReader
from puma_async.transports.handshake import WIRE_VERSION, Hello, encode_hello
from puma_async.transports.tcp import TcpSetupError, TcpTransport, open_tcp_transport
from puma_async.transports.tls import TlsConfig, peer_role_from_cert

# Real sockets throughout (the few PKI checks share the module's certificates).
pytestmark = pytest.mark.system
HANG_GUARD = 60.0
SESSION = b"s" * 16
DIGEST = b"d" * 32

Body = Callable[[TcpTransport], Awaitable[Any]]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> ClusterPki:
    return create_cluster_pki(tmp_path_factory.mktemp("pki"), [0, 1, 2, 3, 4], "test")


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> ClusterPki:
    return create_cluster_pki(tmp_path_factory.mktemp("other-pki"), [0, 1, 2], "other")


def free_addresses(roles: list[int]) -> dict[int, tuple[str, int]]:
    """Loopback addresses on ports the kernel just handed out (all bound at once)."""
    socks = []
    try:
        for _ in roles:
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        ports = [sock.getsockname()[1] for sock in socks]
        return {role: ("127.0.0.1", port) for role, port in zip(roles, ports, strict=True)}
    finally:
        for sock in socks:
            sock.close()


async def run_roles(
    bodies: Mapping[int, Body],
    options: Mapping[int, dict[str, Any]],
    addresses: Mapping[int, tuple[str, int]] | None = None,
) -> dict[int, Any]:
    """Open a transport per role and run its body; each role's result or exception."""
    addresses = addresses or free_addresses(sorted(bodies))
    results: dict[int, Any] = {}

    async def run(role: int) -> None:
        kwargs = {"session": SESSION, "config_digest": DIGEST, **options[role]}
        try:
            async with open_tcp_transport(role, addresses, **kwargs) as transport:
                results[role] = await bodies[role](transport)
        except Exception as exc:
            results[role] = exc

    with trio.fail_after(HANG_GUARD):
        async with trio.open_nursery() as nursery:
            for role in bodies:
                nursery.start_soon(run, role)
    return results


def tls_options(pki: ClusterPki, roles: list[int], **extra: Any) -> dict[int, dict[str, Any]]:
    return {r: {"tls": pki.tls_config(r), **extra} for r in roles}


async def nothing(transport: TcpTransport) -> None:
    """A body that ends at once (the transport then closes cleanly)."""


async def drain(transport: TcpTransport) -> dict[int, list[bytes]]:
    """Receive until every peer has finished."""
    got: dict[int, list[bytes]] = defaultdict(list)
    done: set[int] = set()
    while done != set(transport.peers):
        peer, frame = await transport.receive()
        if frame is None:
            done.add(peer)
        else:
            got[peer].append(frame)
    return got


def big_frame(sender: int, receiver: int) -> bytes:
    pattern = bytes(range(256)) * (5 * 1024 * 1024 // 256)
    return bytes([sender, receiver]) + pattern


async def exchange(transport: TcpTransport) -> dict[int, list[bytes]]:
    """Send 300 small frames and one 5 MB frame to every peer while receiving theirs."""

    async def send_to(peer: int) -> None:
        for i in range(300):
            await transport.send(peer, f"{transport.role}->{peer}:{i}".encode())
        await transport.send(peer, big_frame(transport.role, peer))
        await transport.close_peer(peer)

    async with trio.open_nursery() as nursery:
        for peer in transport.peers:
            nursery.start_soon(send_to, peer)
        return await drain(transport)


def check_exchange(results: dict[int, Any]) -> None:
    for role, got in results.items():
        assert not isinstance(got, Exception), got
        assert set(got) == set(results) - {role}
        for peer, frames in got.items():
            assert frames[:-1] == [f"{peer}->{role}:{i}".encode() for i in range(300)]
            assert frames[-1] == big_frame(peer, role)


# ----------------------------------------------------------------------------- PKI


def test_pki_files_and_permissions(pki: ClusterPki) -> None:
    for role in pki.roles:
        config = pki.tls_config(role)
        assert config.cert.exists()
        assert stat.S_IMODE(os.stat(config.key).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(pki.ca_key).st_mode) == 0o600
    with pytest.raises(FileExistsError):
        create_cluster_pki(pki.directory, [0], "test")


@dataclasses.dataclass
class _FakeSsl:
    der: bytes

    def getpeercert(self, binary_form: bool = False) -> bytes:
        return self.der


def _der(path: Path) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    return x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(Encoding.DER)


def test_peer_role_from_cert(pki: ClusterPki) -> None:
    der = _der(pki.tls_config(3).cert)
    assert peer_role_from_cert(_FakeSsl(der)) == 3
    assert peer_role_from_cert(_FakeSsl(der), cluster="test") == 3
    with pytest.raises(HandshakeError, match="cluster 'test'"):
        peer_role_from_cert(_FakeSsl(der), cluster="prod")
    with pytest.raises(HandshakeError, match="no subject alternative names"):
        peer_role_from_cert(_FakeSsl(_der(pki.ca_cert)))


# ----------------------------------------------------------------------------- data moves


async def test_tls_three_roles_exchange(pki: ClusterPki) -> None:
    roles = [0, 1, 2]
    results = await run_roles(dict.fromkeys(roles, exchange), tls_options(pki, roles))
    check_exchange(results)


async def test_plain_two_roles_exchange() -> None:
    options = {r: {"tls": None, "allow_plain": True} for r in (0, 1)}
    check_exchange(await run_roles({0: exchange, 1: exchange}, options))


async def test_party_runtime_over_tls(pki: ClusterPki) -> None:
    """Three parties pass arrays around a ring through the party runtime."""

    async def program(ctx: Context) -> int:
        nxt, prev = (ctx.role + 1) % 3, (ctx.role + 2) % 3
        await ctx.send(nxt, Arrays((np.arange(8, dtype=np.uint64) + ctx.role,)))
        array = await ctx.recv_array(prev, ArraySpec.ring(8))
        return int(array[0])

    async def body(transport: TcpTransport) -> int:
        result, _ = await run_party(program, transport, PartyOptions(SESSION))
        return result

    results = await run_roles(dict.fromkeys([0, 1, 2], body), tls_options(pki, [0, 1, 2]))
    assert results == {0: 2, 1: 0, 2: 1}


async def test_secure_protocols_over_tls_match_in_memory(pki: ClusterPki) -> None:
    """Fixed-point products and comparisons between three parties and a client over TLS."""
    fx = FixedPoint()
    rng = np.random.default_rng(5)
    x, y = fx.encode(rng.normal(0, 50, 500)), fx.encode(rng.normal(0, 50, 500))

    async def fn(ctx: Context, a: AShare, b: AShare) -> list[AShare]:
        return await ctx.gather(lambda c: mul_fxp(c, a, b), lambda c: less_than(c, a, b))

    program = evaluation_program(fn, x, y)

    async def body(transport: TcpTransport) -> Any:
        result, _ = await run_party(program, transport, PartyOptions(SESSION))
        return result

    roles = [0, 1, 2, CLIENT]
    results = await run_roles(dict.fromkeys(roles, body), tls_options(pki, roles))
    product, less = results[CLIENT]
    exact = (x.view(np.int64) * y.view(np.int64)) >> fx.frac_bits
    assert np.max(np.abs(product.view(np.int64) - exact)) <= 1
    np.testing.assert_array_equal(less, x.view(np.int64) < y.view(np.int64))


# ----------------------------------------------------------------------------- handshake


async def test_certificate_of_another_ca_is_rejected(
    pki: ClusterPki, other_pki: ClusterPki
) -> None:
    options = tls_options(pki, [0, 1])
    options[0]["connect_timeout"] = 3.0
    foreign = other_pki.tls_config(1)
    options[1]["tls"] = dataclasses.replace(foreign, ca_cert=pki.ca_cert, cluster="test")
    results = await run_roles({0: nothing, 1: nothing}, options)
    assert isinstance(results[1], HandshakeError)
    assert "TLS handshake failed" in str(results[1])
    assert isinstance(results[0], HandshakeError)
    assert "rejected connections" in str(results[0])


async def test_server_certificate_of_another_ca_is_rejected(
    pki: ClusterPki, other_pki: ClusterPki
) -> None:
    options = tls_options(pki, [0, 1])
    options[0]["connect_timeout"] = 3.0
    options[1]["tls"] = other_pki.tls_config(1)  # trusts only the other CA
    results = await run_roles({0: nothing, 1: nothing}, options)
    assert isinstance(results[1], HandshakeError)
    assert "certificate verify failed" in str(results[1])
    assert isinstance(results[0], HandshakeError)


async def test_certificate_of_another_role_is_rejected(pki: ClusterPki) -> None:
    options = tls_options(pki, [0, 2])
    options[2]["tls"] = pki.tls_config(1)  # role 2 presents role 1's certificate
    results = await run_roles({0: nothing, 2: nothing}, options)
    for role in (0, 2):
        assert isinstance(results[role], HandshakeError)
        assert "certificate is for P1 but its Hello claims P2" in str(results[role])
    assert "peer rejected the handshake" in str(results[2])


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("session", b"x" * 16, "session id"),
        ("config_digest", b"e" * 32, "configuration digest"),
    ],
)
async def test_mismatch_is_rejected_by_both_sides(
    pki: ClusterPki, field: str, value: bytes, named: str
) -> None:
    options = tls_options(pki, [0, 1])
    options[1][field] = value
    results = await run_roles({0: nothing, 1: nothing}, options)
    for role in (0, 1):
        assert isinstance(results[role], HandshakeError), results[role]
        assert named in str(results[role])


async def test_plain_tcp_needs_allow_plain() -> None:
    with pytest.raises(ValueError, match="allow_plain"):
        async with open_tcp_transport(
            0, free_addresses([0, 1]), session=SESSION, config_digest=DIGEST, tls=None
        ):
            pass


@pytest.mark.parametrize("plain_role", [0, 1])
async def test_plain_and_tls_do_not_mix(pki: ClusterPki, plain_role: int) -> None:
    options = tls_options(pki, [0, 1], connect_timeout=3.0)
    options[plain_role] = {"tls": None, "allow_plain": True, "connect_timeout": 3.0}
    results = await run_roles({0: nothing, 1: nothing}, options)
    assert isinstance(results[1], HandshakeError)  # the dialling side fails at once
    assert isinstance(results[0], HandshakeError)  # the listener at its deadline
    assert "rejected connections" in str(results[0])


async def test_junk_connection_does_not_stop_the_listener() -> None:
    addresses = free_addresses([0, 1])
    options = {r: {"tls": None, "allow_plain": True} for r in (0, 1)}
    with trio.fail_after(HANG_GUARD):
        async with trio.open_nursery() as nursery:
            results: dict[int, Any] = {}

            async def listener() -> None:
                results.update(await run_roles({0: exchange}, options, addresses))

            async def junk_then_peer() -> None:
                while True:
                    try:
                        junk = await trio.open_tcp_stream(*addresses[0])
                        break
                    except OSError:
                        await trio.sleep(0.01)
                await junk.send_all(b"GET / HTTP/1.1\r\n\r\n")
                assert await junk.receive_some() != b""  # the listener's Hello, then EOF
                results.update(await run_roles({1: exchange}, options, addresses))

            nursery.start_soon(listener)
            nursery.start_soon(junk_then_peer)
    check_exchange(results)


async def test_peer_that_never_comes_up() -> None:
    addresses = free_addresses([0, 1])
    with pytest.raises(TcpSetupError, match=r"peer P0 at 127\.0\.0\.1:\d+ never came up after \d+"):
        async with open_tcp_transport(
            1, addresses, session=SESSION, config_digest=DIGEST, tls=None, allow_plain=True,
            connect_timeout=0.5, retry_initial=0.01, retry_max=0.1,
        ):
            pass


async def test_port_in_use() -> None:
    addresses = free_addresses([0, 1])
    blocker = socket.socket()
    blocker.bind(addresses[0])
    blocker.listen()
    try:
        with pytest.raises(link.AddressInUseError,
                           match=r"^P0 cannot listen on 127\.0\.0\.1:\d+: in use by another"):
            async with open_tcp_transport(
                0, addresses, session=SESSION, config_digest=DIGEST, tls=None, allow_plain=True
            ):
                pass
    finally:
        blocker.close()


# ----------------------------------------------------------------------------- failures


@pytest.mark.parametrize("use_tls", [True, False])
async def test_oversize_frame_is_a_decode_error(pki: ClusterPki, use_tls: bool) -> None:
    options: dict[int, dict[str, Any]] = (
        tls_options(pki, [0, 1]) if use_tls
        else {r: {"tls": None, "allow_plain": True} for r in (0, 1)}
    )
    for role in (0, 1):
        options[role]["max_frame_bytes"] = 1000

    async def sender(transport: TcpTransport) -> None:
        await transport.send(1, b"x" * 1000)
        with pytest.raises(ProtocolError, match="exceeds the limit of 1000"):
            await transport.send(1, b"y" * 1001)
        oversize = (1001).to_bytes(HEADER_BYTES, "little") + b"y" * 1001  # a peer ignoring it
        await transport._connections[1].stream.send_all(oversize)
        await transport.close_peer(1)
        await drain(transport)

    async def receiver(transport: TcpTransport) -> str:
        assert await transport.receive() == (0, b"x" * 1000)
        with pytest.raises(DecodeError, match="exceeds the limit of 1000") as info:
            await transport.receive()
        assert info.value.peer == 0
        return "ok"

    results = await run_roles({0: sender, 1: receiver}, options)
    assert results == {0: None, 1: "ok"}


@pytest.mark.parametrize("use_tls", [True, False])
async def test_abrupt_disconnect(pki: ClusterPki, use_tls: bool) -> None:
    options: dict[int, dict[str, Any]] = (
        tls_options(pki, [0, 1]) if use_tls
        else {r: {"tls": None, "allow_plain": True} for r in (0, 1)}
    )

    async def crasher(transport: TcpTransport) -> None:
        await transport.send(0, b"last words")
        raise RuntimeError("crash")

    async def survivor(transport: TcpTransport) -> str:
        assert await transport.receive() == (1, b"last words")
        with pytest.raises(PeerDisconnectedError) as info:
            await transport.receive()
        assert info.value.peer == 1
        return "ok"

    results = await run_roles({0: survivor, 1: crasher}, options)
    assert results[0] == "ok"
    assert isinstance(results[1], RuntimeError)


async def test_send_after_close_peer() -> None:
    options = {r: {"tls": None, "allow_plain": True} for r in (0, 1)}

    async def closer(transport: TcpTransport) -> str:
        await transport.close_peer(1)
        with pytest.raises(PeerDisconnectedError, match="after the connection was closed"):
            await transport.send(1, b"late")
        await drain(transport)
        return "ok"

    async def other(transport: TcpTransport) -> dict[int, list[bytes]]:
        await transport.close_peer(0)
        return await drain(transport)

    results = await run_roles({0: closer, 1: other}, options)
    assert results == {0: "ok", 1: {}}


def test_tls_config_for_role(tmp_path: Path, pki: ClusterPki) -> None:
    config = TlsConfig.for_role(pki.directory, 2)
    assert config.key == pki.directory / "role-2.key"
    assert config.cluster is None


@pytest.mark.parametrize("reset", [True, False])
async def test_large_frame_cut_short_on_a_plain_socket(reset: bool) -> None:
    """Large plain frames are received straight into their buffer; a connection that ends
    or is reset inside one is a disconnect, never a short frame."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listeners[0].accept()
    reader = FrameReader(server)
    size = 1 << 20
    await client.send_all(size.to_bytes(HEADER_BYTES, "little") + bytes(1000))
    if reset:  # an abortive close: the peer's kernel answers with RST
        client.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await client.aclose()
    assert await reader.read_length() == size
    with pytest.raises(trio.BrokenResourceError if reset else PeerDisconnectedError):
        await reader.read_exactly(size)
    for resource in (server, *listeners):
        await resource.aclose()


# ----------------------------------------------------------------------------- hostile peers


async def test_a_declared_frame_is_allocated_only_as_its_bytes_arrive() -> None:
    """A length prefix of 256 MiB followed by 8 MiB must not allocate 256 MiB."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listeners[0].accept()
    reader = FrameReader(server)
    size, sent = 256 << 20, 8 << 20
    async with trio.open_nursery() as nursery:

        async def send_part() -> None:
            await client.send_all(size.to_bytes(HEADER_BYTES, "little") + bytes(sent))
            await client.aclose()

        nursery.start_soon(send_part)
        assert await reader.read_length() == size
        tracemalloc.start()
        try:
            with pytest.raises(PeerDisconnectedError):
                await reader.read_exactly(size)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak <= 4 * sent
    for resource in (server, *listeners):
        await resource.aclose()


async def test_frame_limit_is_stated_in_the_hello(pki: ClusterPki) -> None:
    options = tls_options(pki, [0, 1])
    options[0]["max_frame_bytes"] = 1 << 20
    options[1]["max_frame_bytes"] = 1 << 21
    results = await run_roles({0: nothing, 1: nothing}, options)
    for role in (0, 1):
        assert isinstance(results[role], HandshakeError), results[role]
        assert "frame limit" in str(results[role])


async def test_tls_contexts_are_built_once_per_transport(
    pki: ClusterPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[str] = []
    for name in ("server_context", "client_context"):
        original = getattr(link, name)
        monkeypatch.setattr(link, name, lambda config, original=original, name=name: (
            built.append(name), original(config))[1])
    addresses = free_addresses([0, 1])
    options = tls_options(pki, [0, 1])
    with trio.fail_after(HANG_GUARD):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_roles, {0: nothing}, options, addresses)
            for _ in range(5):
                await junk_until_closed(addresses[0], b"\x16\x03\x01 not a client hello")
            await run_roles({1: nothing}, options, addresses)
    assert sorted(built) == ["client_context", "server_context"]


async def junk_until_closed(address: tuple[str, int], data: bytes) -> None:
    """Connect (retrying until the port is open), send ``data``, wait for the listener to
    close the connection."""
    while True:
        try:
            stream = await trio.open_tcp_stream(*address)
            break
        except OSError:
            await trio.sleep(0.01)
    with contextlib.suppress(trio.BrokenResourceError):
        await stream.send_all(data)
        while await stream.receive_some():
            pass
    await stream.aclose()


async def test_many_rejected_connections_give_a_short_error_and_few_log_lines(
    mock_clock: trio.testing.MockClock,
) -> None:
    """300 junk connections used to give a 65,777-character error and 300 log lines."""
    mock_clock.autojump_threshold = 1.0  # the deadline passes once the junk is done
    addresses = free_addresses([0, 1])
    options = {0: {"tls": None, "allow_plain": True, "connect_timeout": 30.0}}
    with structlog.testing.capture_logs() as logs, trio.fail_after(HANG_GUARD):
        async with trio.open_nursery() as nursery:
            results: dict[int, Any] = {}

            async def listener() -> None:
                results.update(await run_roles({0: nothing}, options, addresses))

            nursery.start_soon(listener)
            for _ in range(300):
                await junk_until_closed(addresses[0], b"GET / HTTP/1.1\r\n\r\n")
    error = results[0]
    assert isinstance(error, HandshakeError)
    assert "300 rejected connections" in str(error)
    assert len(str(error)) < 2000
    assert len(logs) <= 10


@pytest.mark.parametrize("limit", [64])
def test_descriptor_exhaustion_does_not_crash_the_listener(limit: int) -> None:
    """Role 0 runs in a process limited to ``limit`` descriptors while 80 idle connections
    wait on its port; role 1 still connects, and the listener never raises."""
    addresses = free_addresses([0, 1])
    script = textwrap.dedent(f"""
        import resource, sys, trio
        from puma_async.transports.tcp import open_tcp_transport
        resource.setrlimit(resource.RLIMIT_NOFILE, ({limit}, {limit}))
        async def main():
            async with open_tcp_transport(
                0, {addresses!r}, session={SESSION!r}, config_digest={DIGEST!r}, tls=None,
                allow_plain=True, connect_timeout=60.0, handshake_timeout=1.0,
            ) as transport:
                print("connected", transport.peers, flush=True)
        trio.run(main)
    """)
    listener = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    idle: list[socket.socket] = []
    try:
        while len(idle) < 80:
            sock = socket.socket()
            try:
                sock.connect(addresses[0])
            except OSError:
                sock.close()
                time.sleep(0.02)
                continue
            idle.append(sock)
        options = {1: {"tls": None, "allow_plain": True, "connect_timeout": 60.0,
                       "retry_max": 0.2}}
        results = trio.run(run_roles, {1: nothing}, options, addresses)
        out, err = listener.communicate(timeout=HANG_GUARD)
    finally:
        listener.kill()
        for sock in idle:
            sock.close()
    assert results == {1: None}
    assert listener.returncode == 0, err
    assert out.splitlines()[-1] == "connected (1,)"  # after its log lines (structlog: stdout)
    assert "Traceback" not in err


async def test_a_peer_past_its_hello_is_not_dropped_and_may_try_again() -> None:
    """With room for one handshake, junk does not push out a connection whose Hello claimed
    role 1; when that connection times out, role 1 may connect again."""
    addresses = free_addresses([0, 1])
    options = {r: {"tls": None, "allow_plain": True, "max_handshakes": 1,
                   "handshake_timeout": 1.0} for r in (0, 1)}
    hello = encode_hello(Hello(WIRE_VERSION, SESSION, 1, DIGEST, DEFAULT_MAX_FRAME_BYTES))
    with structlog.testing.capture_logs() as logs, trio.fail_after(HANG_GUARD):
        async with trio.open_nursery() as nursery:
            results: dict[int, Any] = {}

            async def listener() -> None:
                results.update(await run_roles({0: exchange}, options, addresses))

            nursery.start_soon(listener)
            await junk_until_closed(addresses[0], b"")  # the listener is up
            stalled = await trio.open_tcp_stream(*addresses[0])
            await stalled.send_all(len(hello).to_bytes(HEADER_BYTES, "little") + hello)
            for _ in range(5):
                await junk_until_closed(addresses[0], b"junk")
            await junk_until_closed(addresses[0], b"")  # wait until it times out: the stalled
            with contextlib.suppress(trio.BrokenResourceError):
                while await stalled.receive_some():  # connection is closed by the listener
                    pass
            results.update(await run_roles({1: exchange}, options, addresses))
    check_exchange(results)
    reasons = [entry["error"] for entry in logs if entry.get("error")]
    assert "no handshake within 1 s" in reasons


# ----------------------------------------------------------------------------- reused ports


class _DualStack(trio.abc.HostnameResolver):
    """``dual.test`` resolves to ``[::1]`` first, then ``127.0.0.1`` (as ``localhost`` does on
    many hosts); other names as usual."""

    async def getaddrinfo(self, host: bytes | None, port: bytes | str | int | None,
                          family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
                          ) -> list[Any]:
        assert host == b"dual.test", host
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", int(port or 0), 0, 0)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", int(port or 0)))]

    async def getnameinfo(self, sockaddr: tuple[Any, ...], flags: int) -> tuple[str, str]:
        raise NotImplementedError


def stray_listener(address: tuple[str, int], *, reuse_port: bool = False) -> socket.socket:
    """A socket listening on ``address`` that never accepts: the kernel completes TCP
    handshakes into its backlog, and nothing ever answers (a stopped or stuck process)."""
    sock = socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    sock.listen(16)
    return sock


PLAIN = {"tls": None, "allow_plain": True}


async def test_a_listener_that_never_answers_is_not_the_peer(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A dialler that reaches a listener accepting and never answering fails after 3 silent
    handshakes, naming the address, long before its connect timeout (it used to retry until
    then, silently)."""
    mock_clock.autojump_threshold = 0.5  # the stray never answers: time may jump
    addresses = free_addresses([0, 1])
    with contextlib.closing(stray_listener(addresses[0])), \
            structlog.testing.capture_logs() as logs:
        start = trio.current_time()
        with pytest.raises(TcpSetupError) as caught:
            async with open_tcp_transport(1, addresses, session=SESSION, config_digest=DIGEST,
                                          connect_timeout=3600.0, handshake_timeout=10.0,
                                          **PLAIN):
                pass
    where = link.format_address(addresses[0])
    assert str(caught.value) == (
        f"{where} accepted 3 connections but answered none within the handshake timeout of "
        "10 s: another process, not P0, listens there (a role of an earlier session, stopped "
        "or stuck?)"
    )
    assert trio.current_time() - start < 60.0  # virtual time: 3 handshakes and back-offs
    warnings = [entry["error"] for entry in logs if entry.get("address") == where]
    assert warnings == [f"accepted the connection but did not answer the handshake within 10 s "
                        f"({n} of 3 times)" for n in (1, 2, 3)]


@pytest.mark.parametrize("stale", ["silent", "other session"])
async def test_a_stale_listener_on_one_address_does_not_hide_the_peer_on_another(
    mock_clock: trio.testing.MockClock, stale: str
) -> None:
    """The peer's name resolves to [::1] and 127.0.0.1; a stale listener holds [::1] (one
    that never answers, or a role of another session), the peer listens on 127.0.0.1. The
    dialler tries both and connects to the peer; a stale role of another session fails on
    the session id."""
    mock_clock.autojump_threshold = 0.5  # the stale listener never answers (or at once)
    trio.socket.set_custom_hostname_resolver(_DualStack())
    port = free_addresses([0])[0][1]
    options = {r: {**PLAIN, "handshake_timeout": 10.0} for r in (0, 1)}
    results: dict[str, Any] = {}
    with structlog.testing.capture_logs() as logs, contextlib.ExitStack() as stack:
        async with trio.open_nursery() as nursery:
            if stale == "silent":
                stack.enter_context(contextlib.closing(stray_listener(("::1", port))))
            else:
                async def old_session() -> None:
                    old = {0: {**PLAIN, "session": b"o" * 16, "connect_timeout": 3600.0}}
                    results.update({"old": (await run_roles(
                        {0: nothing}, old, {0: ("::1", port), 1: ("::1", port + 1)}))[0]})
                nursery.start_soon(old_session)
                await junk_until_closed(("::1", port), b"")  # the stale listener is up
            new: dict[int, Any] = {}

            async def role(role: int, addresses: dict[int, tuple[str, int]]) -> None:
                new.update(await run_roles({role: exchange}, options, addresses))

            nursery.start_soon(role, 0, {0: ("127.0.0.1", port), 1: ("127.0.0.1", port + 1)})
            nursery.start_soon(role, 1, {0: ("dual.test", port), 1: ("127.0.0.1", port + 1)})
    check_exchange(new)
    reached = [entry["error"] for entry in logs if entry.get("address") == f"[::1]:{port}"]
    if stale == "silent":
        assert reached == ["accepted the connection but did not answer the handshake within "
                           "10 s (1 of 3 times)"]
    else:
        assert len(reached) == 1 and "session id" in reached[0]
        assert isinstance(results["old"], HandshakeError)
        assert "session id" in str(results["old"])


@pytest.mark.parametrize("taken", ["127.0.0.1", "::1"])
async def test_an_address_in_use_fails_at_once_naming_it(taken: str) -> None:
    """A listener with SO_REUSEPORT on the role's port (on one of the addresses its name
    resolves to) does not share it: the open fails at once naming that address."""
    trio.socket.set_custom_hostname_resolver(_DualStack())
    port = free_addresses([0])[0][1]
    with contextlib.closing(stray_listener((taken, port), reuse_port=True)), \
            pytest.raises(link.AddressInUseError) as caught:
        async with open_tcp_transport(0, {0: ("dual.test", port), 1: ("dual.test", 1)},
                                      session=SESSION, config_digest=DIGEST, **PLAIN):
            pass
    where = link.format_address((taken, port))
    assert str(caught.value) == (
        f"P0 cannot listen on dual.test:{port}: {where} is in use by another socket (a role of "
        "an earlier session still running?)"
    )


async def test_a_stale_session_on_the_same_ports_fails_both_at_once(
    pki: ClusterPki, mock_clock: trio.testing.MockClock
) -> None:
    """A role of an earlier session still listens on the new session's port: the new role
    there cannot listen (in use), the new dialler is refused on the session id, naming the
    address, and the stale role fails too; no one waits for a deadline (an hour here)."""
    mock_clock.autojump_threshold = 0.5  # the junk connection times out
    addresses = free_addresses([0, 1])
    results: dict[str, Any] = {}
    options = tls_options(pki, [0, 1], connect_timeout=3600.0)
    start = trio.current_time()
    async with trio.open_nursery() as nursery:

        async def old_session() -> None:
            old = {0: {**options[0], "session": b"o" * 16}}
            results["old"] = (await run_roles({0: nothing}, old, addresses))[0]

        nursery.start_soon(old_session)
        await junk_until_closed(addresses[0], b"\x16\x03\x01 junk")  # the stale one is up
        new = await run_roles({0: nothing, 1: nothing}, options, addresses)
    assert trio.current_time() - start < 60.0  # virtual time: the junk's handshake timeout
    assert isinstance(new[0], link.AddressInUseError)
    assert isinstance(new[1], HandshakeError)
    where = link.format_address(addresses[0])
    assert str(new[1]) == (f"handshake with {where} failed: session id {(b'o' * 16).hex()} "
                           f"differs from ours {SESSION.hex()} (peer P0)")
    assert isinstance(results["old"], HandshakeError)
    assert f"session id {SESSION.hex()} differs" in str(results["old"])
