"""TCP transport over loopback: mutual TLS, handshake checks, framing limits, disconnects.

Every role runs in the same ``trio.run``; ports come from binding port 0. Timeouts are hang
guards only, except where a test waits for a deadline on purpose (kept short).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import stat
import struct
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio

from puma_async.codec import Arrays
from puma_async.context import ArraySpec, Context
from puma_async.errors import DecodeError, HandshakeError, PeerDisconnectedError
from puma_async.evaluate import evaluation_program
from puma_async.protocols.arith import mul_fxp
from puma_async.protocols.compare import less_than
from puma_async.protocols.fixedpoint import FixedPoint
from puma_async.protocols.shares import AShare
from puma_async.roles import CLIENT
from puma_async.runtime import PartyOptions, run_party
from puma_async.transports.tcp import (
    HEADER_BYTES,
    TcpSetupError,
    TcpTransport,
    _FrameReader,
    open_tcp_transport,
)
from puma_async.transports.tls import (
    ClusterPki,
    TlsConfig,
    create_cluster_pki,
    peer_role_from_cert,
)

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
        with pytest.raises(TcpSetupError, match=r"cannot listen on 127\.0\.0\.1"):
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
    options[1]["max_frame_bytes"] = 1000

    async def sender(transport: TcpTransport) -> None:
        await transport.send(1, b"x" * 1000)
        await transport.send(1, b"y" * 1001)
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
    reader = _FrameReader(server)
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
