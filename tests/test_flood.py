"""A session completes while its listeners are flooded, in a process limited to 256 file
descriptors: 1,000 connections in all, up to 200 at once, of plain garbage, TLS without a
certificate and slowloris clients (``tests/fuzz/flood.py``, which stops by itself).

The outcome does not depend on timing: listeners drop the oldest handshakes and back off when
out of descriptors, diallers retry until their generous connect deadline, and the flood ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio
from _cluster import make_cluster

from puma_async import codec
from puma_async.cluster import load_cluster
from puma_async.errors import ProtocolError
from puma_async.roles import ALL_ROLES, CLIENT, role_name
from puma_async.session import SessionSettings
from puma_async.transports.tcp import open_tcp_transport

FLOOD = Path(__file__).parent / "fuzz" / "flood.py"
SETTINGS = SessionSettings("flood-test", max_new_tokens=2, connect_timeout=300.0)
HANG_GUARD = 600.0
DESCRIPTORS = 256


def run_flood(ports: list[int], *, total: int = 1000, concurrent: int = 200,
              seconds: float = 60.0) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, os.fspath(FLOOD), *map(str, ports), "--total", str(total),
         "--concurrent", str(concurrent), "--seconds", str(seconds)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def run_session(cluster: Path, roles: list[int], *extra: str, descriptors: int
                ) -> subprocess.Popen[str]:
    """``python -m puma_async.party run`` of ``roles`` in one process with few descriptors."""
    argv = ["run", "--cluster-file", os.fspath(cluster), *extra]
    for role in roles:
        argv += ["--role", role_name(role)]
    script = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_NOFILE, ({descriptors}, {descriptors}))
        from puma_async.party import main
        sys.exit(main({argv!r}))
    """)
    return subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_session_completes_during_a_flood(tmp_path: Path) -> None:
    """The listening roles (P0, P1, P2, model-owner) run in one process, connect among
    themselves during the flood and keep listening for the client, whose process starts
    once the whole flood has hit them."""
    cluster = make_cluster(tmp_path, SETTINGS)
    listening = [role for role in ALL_ROLES if role != CLIENT]
    addresses = load_cluster(cluster).addresses
    flood = run_flood([addresses[role][1] for role in listening], seconds=240.0)
    servers = run_session(cluster, listening, descriptors=DESCRIPTORS)
    client: subprocess.Popen[str] | None = None
    try:
        flood_out, flood_err = flood.communicate(timeout=HANG_GUARD)
        client = run_session(cluster, [CLIENT], "--prompt", "hello", "--json",
                             descriptors=DESCRIPTORS)
        out, err = client.communicate(timeout=HANG_GUARD)
        _, servers_err = servers.communicate(timeout=HANG_GUARD)
    finally:
        for proc in (flood, servers, client):
            if proc is not None:
                proc.kill()
    report = json.loads(flood_out)
    assert report == {"made": {"plain": 334, "tls": 333, "slowloris": 333}, "total": 1000,
                      "timed_out": False}, flood_err
    for code, text in ((client.returncode, err), (servers.returncode, servers_err)):
        assert code == 0, text
        assert "Traceback" not in text
    assert len(json.loads(out)["prompts"]) == 1


# ----------------------------------------------------------------------------- CLI failures


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "error:" in line]


def test_cli_with_a_flooded_listener_whose_peers_never_come(tmp_path: Path) -> None:
    """P0 waits in vain under a flood: one short line naming the count, exit 1."""
    settings = dataclasses.replace(SETTINGS, connect_timeout=3.0)
    cluster = make_cluster(tmp_path, settings)
    flood = run_flood([load_cluster(cluster).addresses[0][1]], total=300, concurrent=50,
                      seconds=10.0)
    session = run_session(cluster, [0], descriptors=64)
    try:
        _, err = session.communicate(timeout=HANG_GUARD)
        flood.communicate(timeout=HANG_GUARD)
    finally:
        session.kill()
        flood.kill()
    assert session.returncode == 1
    assert "Traceback" not in err
    (line,) = error_lines(err)
    assert "P0 failed" in line and len(line) < 2500
    assert "rejected connections" in line or "did not connect" in line


async def test_cli_with_a_peer_sending_deep_nesting(tmp_path: Path) -> None:
    """Roles 1-4 complete the handshake with P0 (a CLI process), then P1 sends a frame nested
    a thousand deep: P0 exits 1 with one line naming the decode error and P1."""
    cluster_path = make_cluster(tmp_path, SETTINGS)
    cluster = load_cluster(cluster_path)
    head = codec.packb([codec.VERSION, cluster.settings.session, 1, 0, [], 0, 0, None])[:-1]
    nested = codec.frame_from_encoded([head + b"\x92\x05" + b"\x91" * 1000 + b"\x00"])
    p0 = await trio.lowlevel.open_process(
        [sys.executable, "-m", "puma_async.party", "run", "--cluster-file",
         os.fspath(cluster_path), "--role", "P0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )

    async def peer(role: int) -> None:
        with contextlib.suppress(ProtocolError):
            async with open_tcp_transport(
                role, cluster.addresses, session=cluster.settings.session,
                config_digest=cluster.config_digest(), tls=cluster.tls_config(role),
                max_frame_bytes=cluster.settings.max_frame_bytes, connect_timeout=60.0,
            ) as transport:
                if role == 1:
                    await transport.send(0, nested)
                while (await transport.receive())[1] is not None:
                    pass

    with trio.fail_after(HANG_GUARD):
        async with trio.open_nursery() as nursery:
            for role in ALL_ROLES[1:]:
                nursery.start_soon(peer, role)
        assert p0.stderr is not None
        err = (await p0.stderr.receive_some(1 << 20) or b"").decode()
        while (more := await p0.stderr.receive_some(1 << 20)):
            err += more.decode()
        assert await p0.wait() == 1
    assert "Traceback" not in err
    (line,) = error_lines(err)
    assert "P0 failed: DecodeError" in line and "peer P1" in line
