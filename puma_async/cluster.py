"""Cluster files: where each role of a session runs, its certificates and the session settings.

A cluster file is TOML; relative paths in it are relative to the file itself::

    [cluster]
    name = "demo"                 # cluster name, written into every certificate
    pki = "pki"                   # ca.pem and role-<n>.pem / role-<n>.key (certs command)

    [session]
    id = "demo-1"                 # session id (any string; hashed to 16 bytes)
    model = "tiny"                # "tiny" (random weights), "smollm2", or a GGUF file path
    model_seed = 0                # tiny only: the seed of the random weights
    model_sha256 = ""             # optional: SHA-256 of the GGUF file, checked by the model owner
    max_new_tokens = 4
    connect_timeout = 60.0        # how long to wait for the peers to come up (seconds)
    handshake_timeout = 10.0

    [client]
    prompt = "The capital of France is"   # read by the client only (never hashed or sent)

    [roles.P0]                    # P0 P1 P2 model-owner client; one table per role
    host = "10.0.0.1"
    port = 7000
    # cert = "..."  key = "..."   # optional: override the pki paths of this role

Everything that must agree between the roles (cluster name, session id, model, model seed and
hash, number of tokens, the set of roles) is hashed into the **configuration digest** that the
TCP handshake compares before any secret moves (:meth:`SessionSettings.config_digest`).
Timeouts, hosts and the client's prompt are local and left out: a hash of the prompt would
let peers test guesses of it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from puma_async import codec
from puma_async.errors import PumaError
from puma_async.roles import ALL_ROLES, role_name
from puma_async.transports.tls import TlsConfig

DIGEST_VERSION = 1
TINY_MODEL = "tiny"
_ROLE_IDS = {role_name(r).lower(): r for r in ALL_ROLES}
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SESSION_KEYS = {
    "id", "model", "model_seed", "model_sha256", "max_new_tokens", "connect_timeout",
    "handshake_timeout",
}


class ClusterFileError(PumaError):
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
class SessionSettings:
    """What one session computes: model, number of tokens, and the local timeouts.

    ``prompt`` is the client's secret input (None for every other role).
    """

    session_id: str
    model: str = TINY_MODEL
    model_seed: int = 0
    model_sha256: str | None = None
    max_new_tokens: int = 4
    prompt: str | None = None
    connect_timeout: float = 60.0
    handshake_timeout: float = 10.0

    def __post_init__(self) -> None:
        if not self.session_id:
            raise ClusterFileError("session id must not be empty")
        if self.max_new_tokens < 1:
            raise ClusterFileError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        for name in ("connect_timeout", "handshake_timeout"):
            if not getattr(self, name) > 0:
                raise ClusterFileError(f"{name} must be positive, got {getattr(self, name)}")
        if self.model_sha256 is not None and not _SHA256.match(self.model_sha256):
            raise ClusterFileError("model_sha256 must be 64 lower-case hex digits")

    @property
    def session(self) -> bytes:
        """The 16-byte session id of the wire format."""
        return hashlib.blake2b(self.session_id.encode(), digest_size=16).digest()

    def public(self) -> dict[str, Any]:
        """The settings every role must agree on (no prompt, no timeouts): plain data."""
        return {
            "session_id": self.session_id, "model": self.model,
            "model_seed": self.model_seed if self.model == TINY_MODEL else None,
            "model_sha256": self.model_sha256, "max_new_tokens": self.max_new_tokens,
        }

    def config_digest(self, cluster: str, roles: tuple[int, ...]) -> bytes:
        """BLAKE2b-256 of the agreed settings, the cluster name and the roles (for the Hello)."""
        data = codec.packb([DIGEST_VERSION, cluster, sorted(roles), sorted(self.public().items())])
        return hashlib.blake2b(data, digest_size=32).digest()

    def to_dict(self) -> dict[str, Any]:
        """All fields as plain data (trace headers)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SessionSettings:
        """Inverse of :meth:`to_dict` (unknown keys are an error)."""
        try:
            return cls(**data)
        except TypeError as exc:
            raise ClusterFileError(f"bad session settings: {exc}") from None


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

    @property
    def hosts(self) -> list[str]:
        """Every host name of the cluster (for the certificates' SANs), localhost included."""
        hosts = ["localhost", "127.0.0.1"]
        for endpoint in self.endpoints.values():
            if endpoint.host not in hosts:
                hosts.append(endpoint.host)
        return hosts

    def config_digest(self) -> bytes:
        return self.settings.config_digest(self.name, self.roles)

    def tls_config(self, role: int) -> TlsConfig:
        """The mutual-TLS configuration of ``role``; the files must exist."""
        endpoint = self.endpoint(role)
        for what, path in (("CA certificate", self.ca_cert), ("certificate", endpoint.cert),
                           ("key", endpoint.key)):
            if not path.is_file():
                raise ClusterFileError(
                    f"{role_name(role)}: {what} {path} not found (create the cluster's "
                    f"certificates with: python -m puma_async.party certs --cluster-file "
                    f"{self.path})"
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


def parse_cluster(text: str, path: Path) -> Cluster:
    """Parse and validate the TOML ``text`` of the cluster file at ``path``."""
    where = os.fspath(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ClusterFileError(f"{where}: not valid TOML: {exc}") from None
    _check_keys(data, {"cluster", "session", "client", "roles"}, where)
    base = path.parent
    cluster = _table(data, "cluster", where)
    _check_keys(cluster, {"name", "pki", "ca"}, f"{where} [cluster]")
    name = _get(cluster, "name", str, f"{where} [cluster]")
    pki = base / _get(cluster, "pki", str, f"{where} [cluster]", "pki")
    ca_cert = base / _get(cluster, "ca", str, f"{where} [cluster]", os.fspath(pki / "ca.pem"))

    session = _table(data, "session", where)
    swhere = f"{where} [session]"
    _check_keys(session, _SESSION_KEYS, swhere)
    client = _table(data, "client", where)
    _check_keys(client, {"prompt"}, f"{where} [client]")
    sha = _get(session, "model_sha256", str, swhere, "") or None
    settings = SessionSettings(
        session_id=_get(session, "id", str, swhere),
        model=_get(session, "model", str, swhere, TINY_MODEL),
        model_seed=_get(session, "model_seed", int, swhere, 0),
        model_sha256=sha.lower() if sha else None,
        max_new_tokens=_get(session, "max_new_tokens", int, swhere, 4),
        prompt=_get(client, "prompt", str, f"{where} [client]", None),
        connect_timeout=float(_get(session, "connect_timeout", (int, float), swhere, 60.0)),
        handshake_timeout=float(_get(session, "handshake_timeout", (int, float), swhere, 10.0)),
    )

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
            cert=base / _get(table, "cert", str, rwhere, os.fspath(pki / f"role-{role}.pem")),
            key=base / _get(table, "key", str, rwhere, os.fspath(pki / f"role-{role}.key")),
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

    def quote(value: str) -> str:
        return json.dumps(value, ensure_ascii=False)  # also a valid TOML basic string

    lines = [
        "[cluster]", f"name = {quote(name)}", f"pki = {quote(pki)}", "",
        "[session]", f"id = {quote(settings.session_id)}", f"model = {quote(settings.model)}",
        f"model_seed = {settings.model_seed}",
        f"model_sha256 = {quote(settings.model_sha256 or '')}",
        f"max_new_tokens = {settings.max_new_tokens}",
        f"connect_timeout = {settings.connect_timeout!r}",
        f"handshake_timeout = {settings.handshake_timeout!r}", "",
    ]
    if settings.prompt is not None:
        lines += ["[client]", f"prompt = {quote(settings.prompt)}", ""]
    for role in sorted(addresses):
        host, port = addresses[role]
        lines += [f"[roles.{role_name(role)}]", f"host = {quote(host)}", f"port = {port}", ""]
    file = Path(path)
    file.write_text("\n".join(lines), encoding="utf-8")
    return file
