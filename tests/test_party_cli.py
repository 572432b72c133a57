"""``python -m puma_async.party``: cluster files, roles as OS processes over TLS, clear failures.

Ports come from binding port 0; timeouts are hang guards only (no timing asserts).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import trio

from puma_async.cluster import (
    Cluster,
    ClusterFileError,
    RoleEndpoint,
    SessionSettings,
    load_cluster,
    parse_cluster,
    write_cluster,
)
from puma_async.errors import HandshakeError
from puma_async.party import build_programs, main, role_entropy, run_role, run_roles_over_tcp
from puma_async.roles import ALL_ROLES, CLIENT, role_name
from puma_async.runner import run_roles
from puma_async.transports.tls import create_cluster_pki

HANG_GUARD = 300.0
ENTROPY = "5eed"
SETTINGS = SessionSettings("cli-test", prompt="hello", max_new_tokens=2,
                           connect_timeout=60.0)


def free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def make_cluster(directory: Path, settings: SessionSettings = SETTINGS) -> Path:
    ports = free_ports(len(ALL_ROLES))
    path = write_cluster(
        directory / "cluster.toml", name="cli-test", settings=settings,
        addresses={r: ("127.0.0.1", p) for r, p in zip(ALL_ROLES, ports, strict=True)},
    )
    assert main(["certs", "--cluster-file", os.fspath(path)]) == 0
    return path


def start(cluster: Path, role: int, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "puma_async.party", "run", "--cluster-file", os.fspath(cluster),
         "--role", role_name(role), "--entropy", ENTROPY, *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=HANG_GUARD)
    return proc.returncode, out, err


# ----------------------------------------------------------------------------- cluster files


def test_cluster_file_round_trip(tmp_path: Path) -> None:
    path = make_cluster(tmp_path)
    cluster = load_cluster(path)
    assert cluster.roles == ALL_ROLES
    assert cluster.settings == SETTINGS
    assert cluster.tls_config(CLIENT).cert == tmp_path / "pki" / "role-4.pem"
    other = dataclasses.replace(SETTINGS, max_new_tokens=3)
    assert other.config_digest("c", ALL_ROLES) != SETTINGS.config_digest("c", ALL_ROLES)
    # The prompt and the timeouts are local: they do not change the digest.
    local = dataclasses.replace(SETTINGS, prompt="other", connect_timeout=5.0)
    assert local.config_digest("c", ALL_ROLES) == SETTINGS.config_digest("c", ALL_ROLES)


@pytest.mark.parametrize(("text", "message"), [
    ("[cluster]\nname = 'x'\n[session]\nid = 's'\n", "no \\[roles.X\\] table for P0"),
    ("[cluster]\nname = 'x'\n[session]\nid = 's'\nbogus = 1\n", "unknown setting"),
    ("[cluster]\nname = 'x'\n[session]\nid = 's'\n[roles.P9]\nport = 1\n", "unknown role"),
    ("[cluster]\nname = 'x'\n[session]\nid = 's'\nmax_new_tokens = 0\n", "max_new_tokens"),
    ("[cluster]\nname = 'x'\n[session]\nid = 's'\n[roles.P0]\nport = 'a'\n", "must be a int"),
    ("[cluster\n", "not valid TOML"),
])
def test_bad_cluster_files(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ClusterFileError, match=message):
        parse_cluster(text, tmp_path / "c.toml")


# ----------------------------------------------------------------------------- processes


def test_processes_match_in_process_run(tmp_path: Path) -> None:
    """Five OS processes over loopback TLS compute what one in-process run computes."""
    cluster = make_cluster(tmp_path)
    procs = {
        role: start(cluster, role, "--output-json", os.fspath(tmp_path / f"{role}.json"))
        for role in ALL_ROLES
    }
    results = {role: finish(proc) for role, proc in procs.items()}
    for role, (code, _out, err) in results.items():
        assert code == 0, f"{role_name(role)} failed: {err}"
        assert "Traceback" not in err
    client = json.loads((tmp_path / f"{CLIENT}.json").read_text())["client"]
    assert json.loads(results[CLIENT][1]) == client["result"]

    local = trio.run(lambda: run_roles(
        build_programs(SETTINGS), session=SETTINGS.session,
        entropy={role: role_entropy(ENTROPY, role) for role in ALL_ROLES},
    ))
    assert client["result"]["token_ids"] == list(local.results[CLIENT]["token_ids"])
    assert len(client["result"]["token_ids"]) == SETTINGS.max_new_tokens


def test_client_stops_at_the_models_eos(tmp_path: Path) -> None:
    """The EOS of the model file ends generation early in the party programs too."""
    from test_model_loading import write_gguf

    from puma_async.model import Tokenizer, greedy_generate, load_gguf, random_weights, tiny_config

    weights = random_weights(tiny_config(), seed=7, dtype=np.float32)
    probe = write_gguf(tmp_path / "probe.gguf", weights)
    prompt = Tokenizer.from_gguf(probe).encode(SETTINGS.prompt)
    (first,) = greedy_generate(load_gguf(probe), prompt, max_new_tokens=1)
    model = write_gguf(tmp_path / "eos.gguf", weights, eos_id=first)
    settings = dataclasses.replace(SETTINGS, model=os.fspath(model), max_new_tokens=4)
    result = trio.run(lambda: run_roles(build_programs(settings), session=settings.session))
    assert list(result.results[CLIENT]["token_ids"]) == [first]


def test_killed_party_stops_the_others(tmp_path: Path) -> None:
    """SIGKILL one party mid-run: every other role exits 1 naming a failed peer."""
    long_run = dataclasses.replace(SETTINGS, max_new_tokens=50)
    cluster = make_cluster(tmp_path, long_run)
    procs = {role: start(cluster, role) for role in ALL_ROLES}
    victim = procs[1]
    assert victim.stderr is not None
    deadline = time.monotonic() + HANG_GUARD
    while "running the session" not in victim.stderr.readline():
        assert time.monotonic() < deadline and victim.poll() is None
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=HANG_GUARD)
    for role, proc in procs.items():
        if role == 1:
            continue
        code, _out, err = finish(proc)
        assert code == 1, f"{role_name(role)}: {err}"
        assert "Traceback" not in err
        assert "error:" in err and "peer" in err


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path)
    host, port = load_cluster(cluster).addresses[0]
    with socket.socket() as busy:
        busy.bind((host, port))
        busy.listen()
        code, _out, err = finish(start(cluster, 0))
    assert code == 1
    assert "Traceback" not in err
    assert f"cannot listen on 127.0.0.1:{port}" in err


def test_peer_that_never_comes_up(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = dataclasses.replace(SETTINGS, connect_timeout=1.0)
    cluster = make_cluster(tmp_path, settings)
    assert main(["run", "--cluster-file", os.fspath(cluster), "--role", "client"]) == 1
    err = capsys.readouterr().err
    assert re.search(r"client: TcpSetupError: peer \d at 127\.0\.0\.1:\d+ never came up", err)


def test_missing_certificates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ports = free_ports(len(ALL_ROLES))
    path = write_cluster(tmp_path / "c.toml", name="x", settings=SETTINGS,
                         addresses={r: ("127.0.0.1", p) for r, p in zip(ALL_ROLES, ports,
                                                                         strict=True)})
    assert main(["run", "--cluster-file", os.fspath(path), "--role", "P0"]) == 1
    assert "party certs --cluster-file" in capsys.readouterr().err


# ----------------------------------------------------------------------------- handshakes


def two_role_cluster(directory: Path, pki: Path, *, cert_of: dict[int, Path] | None = None
                     ) -> Cluster:
    """A cluster of P0 and P1 only (enough for handshake failures)."""
    ports = free_ports(2)
    cert_of = cert_of or {}
    endpoints = {
        role: RoleEndpoint(role, "127.0.0.1", ports[role],
                           cert=cert_of.get(role, pki) / f"role-{role}.pem",
                           key=cert_of.get(role, pki) / f"role-{role}.key")
        for role in (0, 1)
    }
    settings = dataclasses.replace(SETTINGS, connect_timeout=3.0, handshake_timeout=3.0)
    return Cluster(directory / "c.toml", "cli-test", pki, pki / "ca.pem", endpoints, settings)


@pytest.fixture(scope="module")
def pkis(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    ours = tmp_path_factory.mktemp("ours")
    theirs = tmp_path_factory.mktemp("theirs")
    create_cluster_pki(ours, [0, 1, 2], "cli-test")
    create_cluster_pki(theirs, [0, 1, 2], "cli-test")  # same name, another CA
    return ours, theirs


async def test_certificate_of_another_cluster(tmp_path: Path, pkis: tuple[Path, Path]) -> None:
    ours, theirs = pkis
    cluster = two_role_cluster(tmp_path, ours, cert_of={1: theirs})
    _outcomes, errors = await run_roles_over_tcp(
        cluster, [0, 1], cluster.settings, entropy={0: b"0" * 32, 1: b"1" * 32}, record=None
    )
    assert isinstance(errors[1], HandshakeError)
    assert "TLS handshake failed" in str(errors[1])
    assert isinstance(errors[0], HandshakeError)
    assert "rejected connections" in str(errors[0])


async def test_peer_claiming_the_wrong_role(tmp_path: Path, pkis: tuple[Path, Path]) -> None:
    ours, _ = pkis
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "role-1.pem").write_bytes((ours / "role-2.pem").read_bytes())
    (wrong / "role-1.key").write_bytes((ours / "role-2.key").read_bytes())
    cluster = two_role_cluster(tmp_path, ours, cert_of={1: wrong})
    _outcomes, errors = await run_roles_over_tcp(
        cluster, [0, 1], cluster.settings, entropy={0: b"0" * 32, 1: b"1" * 32}, record=None
    )
    assert "certificate is for role 2 but its Hello claims role 1" in str(errors[0])
    assert isinstance(errors[1], HandshakeError)


async def test_mismatched_configuration(tmp_path: Path, pkis: tuple[Path, Path]) -> None:
    """A role with another model seed is refused at the handshake, before any secret moves."""
    ours, _ = pkis
    cluster = two_role_cluster(tmp_path, ours)
    other = dataclasses.replace(cluster.settings, model_seed=1)
    errors: dict[int, BaseException] = {}

    async def one(role: int, settings: SessionSettings) -> None:
        with pytest.raises(HandshakeError) as info:
            await run_role(cluster, role, settings, entropy=b"e" * 32)
        errors[role] = info.value

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, 0, cluster.settings)
        nursery.start_soon(one, 1, other)
    assert "configuration digest" in str(errors[0])
    assert "configuration digest" in str(errors[1]) or "rejected" in str(errors[1])
