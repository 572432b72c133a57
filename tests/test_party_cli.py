"""``python -m puma_async.party``: cluster files, options checked before anything loads,
handshakes, and how processes behave (a failing neighbour, a killed peer, Ctrl-C).

Ports come from binding port 0; timeouts are hang guards only (no timing asserts).
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import signal
import socket
import tomllib
from pathlib import Path

import pytest
import trio

from puma_async.certificates import create_cluster_pki
from puma_async.cluster import (
    Cluster,
    ClusterFileError,
    RoleEndpoint,
    load_cluster,
    parse_cluster,
    write_cluster,
)
from puma_async.context import Context
from puma_async.errors import HandshakeError
from puma_async.liveness import Liveness, LiveTransport
from puma_async.model import tiny_config
from puma_async.party import main
from puma_async.roles import ALL_ROLES, CLIENT, role_name
from puma_async.session import SessionSettings, network
from puma_async.session.models import ModelSource, architecture_from_table, model_table
from puma_async.session.network import RolePlan

SETTINGS = SessionSettings("cli-test", max_new_tokens=2, connect_timeout=60.0)
HEAD = "[cluster]\nname = 'x'\n[session]\nid = 's'\n"
TABLE = model_table("m", tiny_config(), None)


# ----------------------------------------------------------------------------- cluster files


def test_cluster_file_round_trip(processes, tmp_path: Path) -> None:
    path = processes.make_cluster(tmp_path, SETTINGS)
    cluster = load_cluster(path)
    assert cluster.roles == ALL_ROLES
    assert cluster.settings == SETTINGS
    assert cluster.tls_config(CLIENT).cert == tmp_path / "pki" / "role-4.pem"


def test_digest_covers_the_public_settings_only() -> None:
    digest = SETTINGS.config_digest("c", ALL_ROLES)
    for change in ({"max_new_tokens": 3}, {"context": 32}, {"model_seed": 1},
                   {"input_block_bytes": 4096}, {"session_id": "other"},
                   {"heartbeat_interval": 2.0}, {"dead_after": 20.0},
                   {"reveal_logits": "all"}, {"tradeoff": "fewer-rounds"},
                   {"max_pass_positions": 8}):
        assert dataclasses.replace(SETTINGS, **change).config_digest("c", ALL_ROLES) != digest
    other = dataclasses.replace(tiny_config(), rope_theta=5000.0)
    assert SessionSettings("cli-test", model="mine", architecture=other, max_new_tokens=2
                           ).config_digest("c", ALL_ROLES) != digest
    bounded = [SessionSettings("cli-test", model="mine", max_new_tokens=2, architecture=(
        dataclasses.replace(tiny_config(), gate_bounds=bounds))).config_digest("c", ALL_ROLES)
        for bounds in ((), (16, 16), (16, 32))]
    assert len(set(bounded)) == 3  # the certified gate bounds are digested
    local = dataclasses.replace(SETTINGS, connect_timeout=1.0, handshake_timeout=1.0)
    assert local.config_digest("c", ALL_ROLES) == digest  # timeouts are local


def test_liveness_settings_round_trip(tmp_path: Path) -> None:
    settings = dataclasses.replace(SETTINGS, heartbeat_interval=0.5, dead_after=3.0)
    path = write_cluster(tmp_path / "c.toml", name="x", settings=settings,
                         addresses={r: ("127.0.0.1", 7000 + r) for r in ALL_ROLES})
    loaded = load_cluster(path).settings
    assert loaded == settings
    assert (loaded.liveness.heartbeat_interval, loaded.liveness.dead_after) == (0.5, 3.0)
    assert loaded.config_digest("c", ALL_ROLES) == settings.config_digest("c", ALL_ROLES)


def test_reveal_logits_in_the_cluster_file(tmp_path: Path) -> None:
    settings = dataclasses.replace(SETTINGS, reveal_logits="all")
    path = write_cluster(tmp_path / "c.toml", name="x", settings=settings,
                         addresses={r: ("127.0.0.1", 7000 + r) for r in ALL_ROLES})
    assert load_cluster(path).settings == settings
    text = path.read_text().replace('reveal_logits = "all"', "")
    assert parse_cluster(text, path).settings.reveal_logits == "last"


def test_tradeoff_in_the_cluster_file(tmp_path: Path) -> None:
    settings = dataclasses.replace(SETTINGS, tradeoff="fewer-bytes")
    path = write_cluster(tmp_path / "c.toml", name="x", settings=settings,
                         addresses={r: ("127.0.0.1", 7000 + r) for r in ALL_ROLES})
    assert load_cluster(path).settings == settings
    assert load_cluster(path).settings.plan.normalise_input
    text = path.read_text().replace('tradeoff = "fewer-bytes"', "")
    assert parse_cluster(text, path).settings.tradeoff == "balanced"


def test_max_pass_positions_in_the_cluster_file(tmp_path: Path) -> None:
    settings = dataclasses.replace(SETTINGS, max_pass_positions=16)
    path = write_cluster(tmp_path / "c.toml", name="x", settings=settings,
                         addresses={r: ("127.0.0.1", 7000 + r) for r in ALL_ROLES})
    assert load_cluster(path).settings == settings
    text = path.read_text().replace("max_pass_positions = 16", "")
    assert parse_cluster(text, path).settings.max_pass_positions == 64


def test_model_table_round_trip(tmp_path: Path) -> None:
    """An exported [model] table describes the architecture in the cluster file."""
    config = dataclasses.replace(tiny_config(), n_layers=3, rms_eps=9.999999747378752e-06,
                                 gate_bounds=(16, 8, 256))
    table = model_table("my-model", config, "ab" * 32)
    assert "gate_bounds = [16, 8, 256]" in table
    assert "gate_bounds" not in TABLE  # none declared: full comparison chains
    assert architecture_from_table(tomllib.loads(table)["model"], "t") == (
        "my-model", config, "ab" * 32)
    settings = SessionSettings("s", model="my-model", architecture=config, model_sha256="ab" * 32)
    path = write_cluster(tmp_path / "c.toml", name="x", settings=settings,
                         addresses={r: ("127.0.0.1", 7000 + r) for r in ALL_ROLES})
    assert load_cluster(path).settings == settings


@pytest.mark.parametrize(("text", "message"), [
    (HEAD, "no \\[roles.X\\] table for P0"),
    (HEAD + "bogus = 1\n", "unknown setting"),
    (HEAD + "[roles.P9]\nport = 1\n", "unknown role"),
    (HEAD + "max_new_tokens = 0\n", "max_new_tokens"),
    (HEAD + "reveal_logits = 'rows'\n", "reveal_logits must be one of last, all"),
    (HEAD + "tradeoff = 'speed'\n",
     "tradeoff must be one of balanced, fewer-rounds, fewer-bytes, got 'speed'"),
    (HEAD + "max_new_tokens = 64\n", "context must be above max_new_tokens"),
    (HEAD + "max_pass_positions = 0\n", "max_pass_positions must be >= 1, got 0"),
    (HEAD + "max_pass_positions = 'all'\n", "'max_pass_positions' must be a int"),
    (HEAD + "context = 65\n", "at most the model's context length 64"),
    (HEAD + "[roles.P0]\nport = 'a'\n", "must be a int"),
    (HEAD + "heartbeat_interval = 0\n", "heartbeat_interval must be a positive number"),
    (HEAD + "dead_after = 1.5\n", "dead_after must be finite and at least twice"),
    (HEAD + "dead_after = true\n", "'dead_after' must be a int/float"),
    ("[cluster\n", "not valid TOML"),
    (HEAD + "[client]\nprompt = 'my secret'\n", "holds no prompt"),
    (HEAD + "prompt = 'my secret'\n", "holds no prompt"),
    (HEAD + "model = 'weights.gguf'\n", "not a preset .* export"),
    (HEAD + "model = 'tiny'\n[model]\nname = 'm'\n", "not both"),
    ("[cluster]\nname = 'x'\n[session]\nid = 's'\n[model]\nname = 'm'\nn_layers = 2\n",
     "missing setting"),
    (HEAD + TABLE.replace("n_layers = 2", "n_layers = 'two'"), "'n_layers' must be an integer"),
    (HEAD + TABLE.replace("n_heads = 4", "n_heads = 3"), "multiple of n_kv_heads"),
    (HEAD + TABLE + "gate_bounds = 16\n", "'gate_bounds' must be a list of integers"),
    (HEAD + TABLE + "gate_bounds = [16, 12]\n", "one power of two per layer"),
    (HEAD + TABLE + "gate_bounds = [16]\n", "one power of two per layer"),
])
def test_bad_cluster_files(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ClusterFileError, match=message):
        parse_cluster(text, tmp_path / "c.toml")


def test_a_prompt_is_refused_without_echoing_it(tmp_path: Path) -> None:
    with pytest.raises(ClusterFileError) as info:
        parse_cluster(HEAD + "[client]\nprompt = 'my secret'\n", tmp_path / "c.toml")
    assert "my secret" not in str(info.value)
    assert "prompts belong to the client process alone" in str(info.value)


# ----------------------------------------------------------------------------- options


@pytest.fixture
def cluster(processes, tmp_path: Path) -> Path:
    return processes.make_cluster(tmp_path, SETTINGS)


@pytest.fixture
def nothing_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a model or connecting is a test failure."""

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("nothing may load or connect")

    monkeypatch.setattr(ModelSource, "load_weights", fail)
    monkeypatch.setattr(ModelSource, "open", fail)
    monkeypatch.setattr("puma_async.party.run_roles_over_tcp", fail)


@pytest.mark.parametrize(("roles", "options", "message"), [
    (["client"], ["--prompt", "hi", "--seed", "-5"], "seed must be >= 0"),
    (["client"], ["--prompt", "hi", "--temperature", "-1"], "temperature must be"),
    (["client", "model-owner"], ["--prompt", "hi", "--max-new-tokens", "0"],
     "max-new-tokens must be >= 1"),
    (["P0"], ["--prompt", "hi"], "--prompt: the client's option"),
    (["client"], ["--prompt", "hi", "--model-file", "x.gguf"], "the model-owner's option"),
    (["client", "model-owner"], ["--prompt", "x" * 70], "exceed the context length 64"),
    (["client"], ["--prompt", "hi!"], "tiny model's tokenizer knows"),
    (["model-owner"], ["--model-file", "x.gguf"], "public seed: give no --model-file"),
    (["client"], ["--prompt-file", "/nonexistent/prompts"], "cannot read prompt file"),
])
def test_bad_options_fail_before_anything_loads(
    cluster: Path, nothing_loads: None, capsys: pytest.CaptureFixture[str],
    roles: list[str], options: list[str], message: str,
) -> None:
    args = ["run", "--cluster-file", os.fspath(cluster), *[a for r in roles
                                                             for a in ("--role", r)], *options]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_no_prompt_at_all(cluster: Path, nothing_loads: None, monkeypatch: pytest.MonkeyPatch,
                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["run", "--cluster-file", os.fspath(cluster), "--role", "client"]) == 2
    assert "no prompt: give --prompt TEXT" in capsys.readouterr().err


def test_smollm2_client_needs_the_exported_tokenizer(processes,
    tmp_path: Path, nothing_loads: None, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = processes.make_cluster(tmp_path, dataclasses.replace(SETTINGS, model="smollm2",
                                                         architecture=None, context=None))
    assert main(["run", "--cluster-file", os.fspath(cluster), "--role", "client",
                 "--prompt", "hi"]) == 2
    assert "the client needs --tokenizer DIR" in capsys.readouterr().err


def test_missing_certificates(processes, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    ports = processes.free_ports(len(ALL_ROLES))
    path = write_cluster(tmp_path / "c.toml", name="x", settings=SETTINGS,
                         addresses={r: ("127.0.0.1", p) for r, p in zip(ALL_ROLES, ports,
                                                                         strict=True)})
    assert main(["run", "--cluster-file", os.fspath(path), "--role", "P0"]) == 2
    assert "party certs request --cluster-file" in capsys.readouterr().err


@pytest.mark.system
def test_peer_that_never_comes_up(processes, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    cluster = processes.make_cluster(tmp_path, dataclasses.replace(SETTINGS, connect_timeout=1.0))
    assert main(["run", "--cluster-file", os.fspath(cluster), "--role", "client",
                 "--prompt", "hi"]) == 1
    err = capsys.readouterr().err
    assert re.search(r"client failed: TcpSetupError: peer (P\d|model-owner) at \S+ never came "
                     r"up", err)


# ----------------------------------------------------------------------------- handshakes


def two_role_cluster(processes, directory: Path, pki: Path, *,
                     cert_of: dict[int, Path] | None = None) -> Cluster:
    """A cluster of P0 and P1 only (enough for handshake failures)."""
    ports = processes.free_ports(2)
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


async def idle(ctx: Context) -> None:
    pass


async def connect_both(cluster: Cluster, settings: dict[int, SessionSettings] | None = None
                       ) -> dict[int, BaseException]:
    """Run P0 and P1 (each with its own settings, if given); their errors."""
    errors: dict[int, BaseException] = {}

    async def one(role: int) -> None:
        try:
            await network.run_role(cluster, role, (settings or {}).get(role, cluster.settings),
                                   RolePlan(idle, bytes([role]) * 32), lambda r, t: None)
        except HandshakeError as exc:
            errors[role] = exc

    async with trio.open_nursery() as nursery:
        for role in (0, 1):
            nursery.start_soon(one, role)
    return errors


@pytest.mark.system
async def test_certificate_of_another_cluster(processes, tmp_path: Path,
                                              pkis: tuple[Path, Path]) -> None:
    ours, theirs = pkis
    errors = await connect_both(two_role_cluster(processes, tmp_path, ours, cert_of={1: theirs}))
    assert "TLS handshake failed" in str(errors[1])
    assert "rejected connections" in str(errors[0])


@pytest.mark.system
async def test_peer_claiming_the_wrong_role(processes, tmp_path: Path,
                                            pkis: tuple[Path, Path]) -> None:
    ours, _ = pkis
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "role-1.pem").write_bytes((ours / "role-2.pem").read_bytes())
    (wrong / "role-1.key").write_bytes((ours / "role-2.key").read_bytes())
    errors = await connect_both(two_role_cluster(processes, tmp_path, ours, cert_of={1: wrong}))
    assert "certificate is for P2 but its Hello claims P1" in str(errors[0])
    assert 1 in errors


@pytest.mark.system
async def test_the_settings_liveness_reaches_the_runtime(processes, tmp_path: Path,
                                                         pkis: tuple[Path, Path]) -> None:
    """The cluster file's heartbeat_interval and dead_after are what each role runs with."""
    ours, _ = pkis
    cluster = two_role_cluster(processes, tmp_path, ours)
    settings = dataclasses.replace(cluster.settings, heartbeat_interval=0.25, dead_after=2.0)

    async def liveness_of(ctx: Context) -> Liveness:
        transport = ctx.runtime.transport
        assert isinstance(transport, LiveTransport)
        return transport.monitor.liveness

    outcomes = {}

    async def one(role: int) -> None:
        outcomes[role] = await network.run_role(
            cluster, role, settings, RolePlan(liveness_of, bytes([role]) * 32),
            lambda r, t: None)

    async with trio.open_nursery() as nursery:
        for role in (0, 1):
            nursery.start_soon(one, role)
    assert {role: o.result for role, o in outcomes.items()} == dict.fromkeys(
        (0, 1), Liveness(0.25, 2.0))


@pytest.mark.system
@pytest.mark.parametrize("change", [{"model_seed": 1}, {"reveal_logits": "all"}])
async def test_mismatched_configuration(processes, tmp_path: Path, pkis: tuple[Path, Path],
                                        change: dict[str, object]) -> None:
    """A role with another model seed, or that would reveal every prompt position's logits
    where the others agreed to the last only, is refused at the handshake, before any secret
    moves."""
    ours, _ = pkis
    cluster = two_role_cluster(processes, tmp_path, ours)
    other = dataclasses.replace(cluster.settings, **change)
    errors = await connect_both(cluster, {1: other})
    assert "configuration digest" in str(errors[0])
    assert "configuration digest" in str(errors[1]) or "rejected" in str(errors[1])


# ----------------------------------------------------------------------------- processes


@pytest.mark.system
def test_port_in_use_is_a_clear_error(processes, cluster: Path) -> None:
    host, port = load_cluster(cluster).addresses[0]
    with socket.socket() as busy:
        busy.bind((host, port))
        busy.listen()
        code, out, err = processes.finish(processes.start(cluster, 0))
    assert code == 1 and out == ""
    assert "Traceback" not in err
    assert f"P0 cannot listen on 127.0.0.1:{port}" in err


@pytest.mark.system
def test_failing_role_stops_its_neighbour_at_once(processes, tmp_path: Path) -> None:
    """P1 cannot listen: P0 in the same process stops at once (not after its 600 s connect
    timeout), and one line names P1 as the cause."""
    cluster = processes.make_cluster(tmp_path, dataclasses.replace(SETTINGS, connect_timeout=600.0))
    host, port = load_cluster(cluster).addresses[1]
    with socket.socket() as busy:
        busy.bind((host, port))
        busy.listen()
        code, _out, err = processes.finish(processes.start(cluster, [0, 1]))
    assert code == 1 and "Traceback" not in err
    (line,) = [line for line in err.splitlines() if "error:" in line]
    assert "error: P1 failed: AddressInUseError: P1 cannot listen" in line
    assert line.endswith("stopped with it: P0")


@pytest.mark.system
def test_killed_party_stops_the_others(processes, tmp_path: Path) -> None:
    """SIGKILL one party mid-run: every other role exits 1 naming a failed peer."""
    cluster = processes.make_cluster(tmp_path, dataclasses.replace(SETTINGS, max_new_tokens=50))
    procs = {role: processes.start(cluster, role, *(["--prompt", "hi"] if role == CLIENT else []))
             for role in ALL_ROLES}
    victim = procs[1]
    processes.wait_for_line(victim, "pass 0 done")
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=processes.hang_guard)
    for role, proc in procs.items():
        if role == 1:
            continue
        code, _out, err = processes.finish(proc)
        assert code == 1, f"{role_name(role)}: {err}"
        assert "Traceback" not in err
        assert f"error: {role_name(role)} failed" in err and "peer P" in err


@pytest.mark.system
def test_ctrl_c_interrupts_and_tells_the_peers(processes, tmp_path: Path) -> None:
    """SIGINT to P1: it says "interrupted" and exits 130; every peer stops naming P1."""
    cluster = processes.make_cluster(tmp_path, dataclasses.replace(SETTINGS, max_new_tokens=50))
    procs = {role: processes.start(cluster, role, *(["--prompt", "hi"] if role == CLIENT else []))
             for role in ALL_ROLES}
    processes.wait_for_line(procs[1], "pass 1 done")
    procs[1].send_signal(signal.SIGINT)
    code, out, err = processes.finish(procs[1])
    assert code == 130 and out == ""
    assert err.rstrip().endswith("python -m puma_async.party: interrupted")
    assert "Traceback" not in err
    for role, proc in procs.items():
        if role == 1:
            continue
        code, _out, err = processes.finish(proc)
        assert code == 1, f"{role_name(role)}: {err}"
        assert "Traceback" not in err
        assert "P1: Stopped: interrupted (Ctrl-C)" in err
