"""Cluster files: where each role of a session runs, its certificates and the session settings.

A cluster file is TOML, copied to every machine of the cluster; relative paths in it are
relative to the file itself::

    [cluster]
    name = "demo"                 # cluster name, written into every certificate
    pki = "pki"                   # ca.pem and role-<n>.pem / role-<n>.key (certs commands)

    [session]
    id = "demo-1"                 # session id (any string; hashed to 16 bytes)
    model = "tiny"                # a preset: "tiny" (public random weights) or "smollm2"
    model_seed = 0                # tiny only: the public seed of its weights
    model_sha256 = ""             # optional: SHA-256 of the model file, checked by the owner
    max_new_tokens = 4            # passes per prompt (every prompt runs them all)
    context = 256                 # optional: positions per prompt (default: the model's, <= 512)
    reveal_logits = "last"        # optional: "all" reveals every prompt position's logits to
                                  # the client (more about the model: the owner's consent)
    tradeoff = "balanced"         # optional: "fewer-rounds" (high latency between the parties)
                                  # or "fewer-bytes" (low bandwidth): the layers' protocols
    max_pass_positions = 64       # optional: positions per pass at most (a pass's memory grows
                                  # with them; longer prompts run in several passes)
    heartbeat_interval = 1.0      # a heartbeat to a peer we sent nothing for this many seconds
    dead_after = 10.0             # a peer silent this long (seconds) is dead; >= 2 x the interval
    connect_timeout = 600.0       # how long to wait for the peers to come up (seconds)
    handshake_timeout = 10.0

    [model]                       # instead of a preset: the table the model owner exports
    name = "SmolLM2-135M-Instruct.Q4_1"   # (python -m puma_async.party export), with the
    sha256 = "..."                        # architecture's fields and the file's SHA-256
    n_layers = 30
    # ...

    [roles.P0]                    # P0 P1 P2 model-owner client; one table per role
    host = "10.0.0.1"
    port = 7000
    # cert = "..."  key = "..."   # optional: override the pki paths of this role

Everything that must agree between the roles (cluster name, session id, model and
architecture, model seed and hash, token budget, context, positions per pass, frame limit,
prompt logits, tradeoff, liveness, the set of roles) is hashed into the **configuration
digest** that the TCP handshake compares before any secret moves
(:meth:`~puma_async.session.settings.SessionSettings.config_digest`). Timeouts and hosts
are local. A cluster file never holds a prompt: prompts exist only in the client
process (its command line, a file or stdin), so a file with one is refused.

Liveness (:mod:`puma_async.liveness`): no step and no session has a deadline. A role waits
for a peer for as long as that peer is alive, however slow; a peer that has sent nothing,
not even a heartbeat, for ``dead_after`` seconds is dead, so a dead or vanished peer is
reported within about ``dead_after + heartbeat_interval`` (11 s by default) and a slow live
peer never. The two are agreed by every role: a role whose interval exceeded a peer's
``dead_after`` would be declared dead by it.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

from puma_async.errors import SettingsError
from puma_async.liveness import DEFAULT_LIVENESS
from puma_async.roles import ALL_ROLES, role_name
from puma_async.session.models import (
    PRESETS,
    TINY,
    architecture_from_table,
    model_table,
    toml_value,
)
from puma_async.session.settings import DEFAULT_PASS_POSITIONS, SessionSettings
from puma_async.transports.tls import TlsConfig

_ROLE_IDS = {role_name(r).lower(): r for r in ALL_ROLES}
_SESSION_KEYS = {
    "id", "model", "model_seed", "model_sha256", "max_new_tokens", "context", "reveal_logits",
    "tradeoff", "max_pass_positions", "heartbeat_interval", "dead_after", "connect_timeout",
    "handshake_timeout",
}
PROMPT_REFUSED = (
    "a cluster file is copied to every machine, so it holds no prompt: prompts belong to the "
    "client process alone (its --prompt TEXT, --prompt-file FILE, or stdin)"
)


class ClusterFileError(SettingsError):
    """A cluster file is missing, not TOML, or has a missing, unknown or invalid setting."""


def parse_role(text: str) -> int:
    """A role id from its name ('P0', 'p1', 'model-owner', 'client') or number ('0'..'4')."""
    key = text.strip().lower()
    if key in _ROLE_IDS:
        return _ROLE_IDS[key]
    if key.isdigit() and int(key) in ALL_ROLES:
        return int(key)
    names = ", ".join(role_name(r) for r in ALL_ROLES)
    raise ClusterFileError(f"unknown role {text!r} (expected one of {names})")


@dataclasses.dataclass(frozen=True)
class RoleEndpoint:
    """Where one role listens and its certificate and key."""

    role: int
    host: str
    port: int
    cert: Path
    key: Path


@dataclasses.dataclass(frozen=True)
class Cluster:
    """A parsed and validated cluster file."""

    path: Path
    name: str
    pki: Path
    ca_cert: Path
    endpoints: Mapping[int, RoleEndpoint]
    settings: SessionSettings

    @property
    def roles(self) -> tuple[int, ...]:
        return tuple(sorted(self.endpoints))

    @property
    def addresses(self) -> dict[int, tuple[str, int]]:
        return {r: (e.host, e.port) for r, e in self.endpoints.items()}

    def config_digest(self) -> bytes:
        return self.settings.config_digest(self.name, self.roles)

    def tls_config(self, role: int) -> TlsConfig:
        """The mutual-TLS configuration of ``role``; the files must exist."""
        endpoint = self.endpoint(role)
        for what, path in (("CA certificate", self.ca_cert), ("certificate", endpoint.cert),
                           ("key", endpoint.key)):
            if not path.is_file():
                raise ClusterFileError(
                    f"{role_name(role)}: {what} {path} not found (create the key with: "
                    f"python -m puma_async.party certs request --cluster-file {self.path} "
                    f"--role {role_name(role)}, and have the CA holder sign it: certs sign)"
                )
        return TlsConfig(self.ca_cert, endpoint.cert, endpoint.key, cluster=self.name)

    def endpoint(self, role: int) -> RoleEndpoint:
        try:
            return self.endpoints[role]
        except KeyError:
            raise ClusterFileError(
                f"{self.path}: role {role_name(role)} has no [roles.{role_name(role)}] table"
            ) from None


def _get(table: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str,
         default: Any = ...) -> Any:
    if key not in table:
        if default is ...:
            raise ClusterFileError(f"{where}: missing setting {key!r}")
        return default
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ClusterFileError(f"{where}: {key!r} must be a {names}, got {value!r}")
    return value


def _table(data: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ClusterFileError(f"{where}: [{key}] must be a table")
    return value


def _check_keys(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ClusterFileError(f"{where}: unknown setting(s) {', '.join(unknown)}")


def _refuse_prompts(data: Mapping[str, Any], where: str, prefix: str = "") -> None:
    """:class:`ClusterFileError` if any table of the file is a [client] one or holds a prompt."""
    for key, value in data.items():
        name = f"{prefix}{key}"
        if (key == "client" and not prefix) or "prompt" in key.lower():
            raise ClusterFileError(f"{where}: [{name}] refused: {PROMPT_REFUSED}")
        if isinstance(value, dict):
            _refuse_prompts(value, where, f"{name}.")


def _settings(data: Mapping[str, Any], where: str) -> SessionSettings:
    """The [session] (and [model]) tables as settings."""
    session = _table(data, "session", where)
    swhere = f"{where} [session]"
    _check_keys(session, _SESSION_KEYS, swhere)
    model = _table(data, "model", where)
    sha = _get(session, "model_sha256", str, swhere, "") or None
    fields: dict[str, Any] = {"model": _get(session, "model", str, swhere, TINY)}
    if model:
        if "model" in session or sha is not None:
            raise ClusterFileError(f"{where}: give the model as [session] model (a preset, with "
                                   f"model_sha256) or as a [model] table, not both")
        try:
            fields["model"], fields["architecture"], sha = architecture_from_table(
                model, f"{where} [model]")
        except SettingsError as exc:
            raise ClusterFileError(str(exc)) from None
    context = _get(session, "context", int, swhere, 0)
    try:
        return SessionSettings(
            session_id=_get(session, "id", str, swhere),
            model_seed=_get(session, "model_seed", int, swhere, 0),
            model_sha256=sha.lower() if sha else None,
            max_new_tokens=_get(session, "max_new_tokens", int, swhere, 4),
            context=context or None,
            reveal_logits=_get(session, "reveal_logits", str, swhere, "last"),
            tradeoff=_get(session, "tradeoff", str, swhere, "balanced"),
            max_pass_positions=_get(session, "max_pass_positions", int, swhere,
                                    DEFAULT_PASS_POSITIONS),
            heartbeat_interval=float(_get(session, "heartbeat_interval", (int, float), swhere,
                                          DEFAULT_LIVENESS.heartbeat_interval)),
            dead_after=float(_get(session, "dead_after", (int, float), swhere,
                                  DEFAULT_LIVENESS.dead_after)),
            connect_timeout=float(_get(session, "connect_timeout", (int, float), swhere, 600.0)),
            handshake_timeout=float(_get(session, "handshake_timeout", (int, float), swhere,
                                         10.0)),
            **fields,
        )
    except SettingsError as exc:
        raise ClusterFileError(f"{where}: {exc}") from None


def parse_cluster(text: str, path: Path) -> Cluster:
    """Parse and validate the TOML ``text`` of the cluster file at ``path``."""
    where = os.fspath(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ClusterFileError(f"{where}: not valid TOML: {exc}") from None
    _refuse_prompts(data, where)
    _check_keys(data, {"cluster", "session", "model", "roles"}, where)
    base = path.parent
    cluster = _table(data, "cluster", where)
    _check_keys(cluster, {"name", "pki", "ca"}, f"{where} [cluster]")
    name = _get(cluster, "name", str, f"{where} [cluster]")
    pki_name = PurePath(_get(cluster, "pki", str, f"{where} [cluster]", "pki"))
    pki = base / pki_name  # the defaults below are relative to the file too, as given paths are
    ca_cert = base / _get(cluster, "ca", str, f"{where} [cluster]",
                          os.fspath(pki_name / "ca.pem"))
    settings = _settings(data, where)

    endpoints: dict[int, RoleEndpoint] = {}
    seen: dict[tuple[str, int], str] = {}
    for key, table in _table(data, "roles", where).items():
        role = parse_role(key)
        rwhere = f"{where} [roles.{key}]"
        if not isinstance(table, dict):
            raise ClusterFileError(f"{rwhere} must be a table")
        if role in endpoints:
            raise ClusterFileError(f"{rwhere}: role {role_name(role)} is given twice")
        _check_keys(table, {"host", "port", "cert", "key"}, rwhere)
        host = _get(table, "host", str, rwhere, "127.0.0.1")
        port = _get(table, "port", int, rwhere)
        if not 0 < port < 65536:
            raise ClusterFileError(f"{rwhere}: port {port} is not in 1..65535")
        if (host, port) in seen:
            raise ClusterFileError(f"{rwhere}: {host}:{port} is also used by {seen[host, port]}")
        seen[(host, port)] = key
        endpoints[role] = RoleEndpoint(
            role, host, port,
            cert=base / _get(table, "cert", str, rwhere, os.fspath(pki_name / f"role-{role}.pem")),
            key=base / _get(table, "key", str, rwhere, os.fspath(pki_name / f"role-{role}.key")),
        )
    missing = [role_name(r) for r in ALL_ROLES if r not in endpoints]
    if missing:
        raise ClusterFileError(f"{where}: no [roles.X] table for {', '.join(missing)}")
    return Cluster(path, name, pki, ca_cert, endpoints, settings)


def load_cluster(path: str | os.PathLike[str]) -> Cluster:
    """Read and validate a cluster file (:class:`ClusterFileError` naming what is wrong)."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ClusterFileError(f"cannot read cluster file {file}: {exc.strerror or exc}") from None
    return parse_cluster(text, file)


def write_cluster(
    path: str | os.PathLike[str],
    *,
    name: str,
    addresses: Mapping[int, tuple[str, int]],
    settings: SessionSettings,
    pki: str = "pki",
) -> Path:
    """Write a cluster file (used by tests and examples); the inverse of :func:`load_cluster`."""

    lines = [
        "[cluster]", f"name = {toml_value(name)}", f"pki = {toml_value(pki)}", "",
        "[session]", f"id = {toml_value(settings.session_id)}",
        f"model_seed = {settings.model_seed}", f"max_new_tokens = {settings.max_new_tokens}",
        f"context = {settings.positions}", f"reveal_logits = {toml_value(settings.reveal_logits)}",
        f"tradeoff = {toml_value(settings.tradeoff)}",
        f"max_pass_positions = {settings.max_pass_positions}",
        f"heartbeat_interval = {settings.heartbeat_interval!r}",
        f"dead_after = {settings.dead_after!r}",
        f"connect_timeout = {settings.connect_timeout!r}",
        f"handshake_timeout = {settings.handshake_timeout!r}",
    ]
    if settings.model in PRESETS:
        lines += [f"model = {toml_value(settings.model)}",
                  f"model_sha256 = {toml_value(settings.model_sha256 or '')}", ""]
    else:
        lines += ["", model_table(settings.model, settings.config, settings.model_sha256)]
    for role in sorted(addresses):
        host, port = addresses[role]
        lines += [f"[roles.{role_name(role)}]", f"host = {toml_value(host)}", f"port = {port}", ""]
    file = Path(path)
    file.write_text("\n".join(lines), encoding="utf-8")
    return file
