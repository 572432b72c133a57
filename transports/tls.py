"""Cluster PKI and mutual-TLS contexts for the TCP transport.

Every cluster (one deployment of the five roles) has its own certificate authority. Each role
gets an ECDSA P-256 key and a certificate signed by that CA which names the role twice:

* subject CN ``<cluster> role <n>`` (for people reading certificates), and
* a SAN URI ``puma-async://<cluster>/role/<n>``, which is what :func:`peer_role_from_cert`
  reads: after the TLS handshake verified the chain against the cluster CA, the role in the
  peer's certificate must equal the role it claims in its ``Hello`` (checked in ``tcp.py``).

The certificates also carry DNS/IP SANs for the hosts the roles run on (``localhost`` and
``127.0.0.1`` by default), so the client side keeps hostname checking on. Both sides require
a certificate from the cluster CA, and only TLS 1.3 is accepted.

Files written by :func:`create_cluster_pki` (keys with mode 0600)::

    ca.pem  ca.key  role-<n>.pem  role-<n>.key

``ca.key`` is needed only to issue certificates: keep it off the party machines. A party needs
``ca.pem`` plus its own ``role-<n>.pem`` and ``role-<n>.key``.

Command line::

    python -m puma_async.transports.tls DIR --roles 0 1 2 3 4 --cluster NAME \\
        [--host localhost --host 127.0.0.1 ...] [--days 365] [--force]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import ipaddress
import os
import re
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from puma_async.errors import HandshakeError

URI_SCHEME = "puma-async"
DEFAULT_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1")
_ROLE_URI = re.compile(rf"^{URI_SCHEME}://(?P<cluster>[^/]+)/role/(?P<role>[0-9]+)$")
_CLUSTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


@dataclasses.dataclass(frozen=True)
class TlsConfig:
    """What one role needs for mutual TLS: the cluster CA, its own certificate and key.

    ``cluster``, if set, must also match the cluster named in the peer's certificate (the CA
    check already ties a certificate to its cluster; this guards against a reused CA).
    ``check_hostname`` makes the connecting side also check the address it dialled against the
    peer certificate's DNS/IP SANs.
    """

    ca_cert: Path
    cert: Path
    key: Path
    cluster: str | None = None
    check_hostname: bool = True

    @classmethod
    def for_role(cls, pki_dir: str | os.PathLike[str], role: int, **options: object) -> TlsConfig:
        """The configuration of ``role`` in a directory written by :func:`create_cluster_pki`."""
        base = Path(pki_dir)
        return cls(
            ca_cert=base / "ca.pem", cert=base / f"role-{role}.pem",
            key=base / f"role-{role}.key", **options,  # type: ignore[arg-type]
        )


@dataclasses.dataclass(frozen=True)
class ClusterPki:
    """Paths written by :func:`create_cluster_pki`."""

    directory: Path
    cluster: str
    ca_cert: Path
    ca_key: Path
    roles: tuple[int, ...]

    def tls_config(self, role: int, *, check_hostname: bool = True) -> TlsConfig:
        """The :class:`TlsConfig` of ``role`` (naming this cluster)."""
        return TlsConfig.for_role(
            self.directory, role, cluster=self.cluster, check_hostname=check_hostname
        )


def role_uri(cluster: str, role: int) -> str:
    """The SAN URI that names ``role`` of ``cluster`` in its certificate."""
    return f"{URI_SCHEME}://{cluster}/role/{role}"


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by its owner only (0600, also if it existed)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _host_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def create_cluster_pki(
    out_dir: str | os.PathLike[str],
    roles: Sequence[int],
    cluster_name: str,
    *,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    valid_days: int = 365,
    overwrite: bool = False,
) -> ClusterPki:
    """Create a CA and one certificate/key per role in ``out_dir`` (see the module docstring).

    ``hosts`` are the DNS names / IP addresses the roles are reached at (one list for all
    roles). Refuses to overwrite an existing PKI unless ``overwrite``.
    """
    if not _CLUSTER_NAME.match(cluster_name):
        raise ValueError(
            f"cluster name {cluster_name!r} must be 1-63 letters, digits, '.', '_' or '-'"
        )
    if not roles or len(set(roles)) != len(roles) or any(r < 0 for r in roles):
        raise ValueError(f"roles must be distinct integers >= 0, got {list(roles)}")
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert_path, ca_key_path = directory / "ca.pem", directory / "ca.key"
    if ca_key_path.exists() and not overwrite:
        raise FileExistsError(f"{ca_key_path} exists; pass overwrite=True (--force) to replace")

    now = datetime.datetime.now(datetime.UTC)
    not_before = now - datetime.timedelta(minutes=5)  # tolerate small clock skew
    not_after = now + datetime.timedelta(days=valid_days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "puma-async"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"{cluster_name} cluster CA"),
    ])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(ca_key_path, _key_pem(ca_key))
    ca_cert_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))

    for role in roles:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "puma-async"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{cluster_name} role {role}"),
        ])
        sans = [x509.UniformResourceIdentifier(role_uri(cluster_name, role)), *_host_names(hosts)]
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=False,
                    crl_sign=False, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        _write_private(directory / f"role-{role}.key", _key_pem(key))
        (directory / f"role-{role}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return ClusterPki(directory, cluster_name, ca_cert_path, ca_key_path, tuple(roles))


def _base_context(purpose: int, config: TlsConfig) -> ssl.SSLContext:
    context = ssl.SSLContext(purpose)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    context.load_verify_locations(cafile=os.fspath(config.ca_cert))
    context.load_cert_chain(os.fspath(config.cert), os.fspath(config.key))
    return context


def server_context(config: TlsConfig) -> ssl.SSLContext:
    """TLS 1.3 context for the accepting side; requires a client certificate from the CA."""
    return _base_context(ssl.PROTOCOL_TLS_SERVER, config)


def client_context(config: TlsConfig) -> ssl.SSLContext:
    """TLS 1.3 context for the connecting side; verifies the server against the cluster CA."""
    context = _base_context(ssl.PROTOCOL_TLS_CLIENT, config)
    context.check_hostname = config.check_hostname
    return context


class _HasPeerCert(Protocol):
    def getpeercert(self, binary_form: bool = ...) -> object: ...


def peer_role_from_cert(ssl_object: _HasPeerCert, *, cluster: str | None = None) -> int:
    """The role named in the verified peer certificate of a TLS connection.

    ``ssl_object`` is an ``ssl.SSLObject``/``SSLSocket`` (or a ``trio.SSLStream``) whose
    handshake has completed, so the chain was already verified against the cluster CA. Raises
    :class:`HandshakeError` if the certificate names no role, several roles, or (with
    ``cluster``) another cluster.
    """
    der = ssl_object.getpeercert(binary_form=True)
    if not isinstance(der, bytes) or not der:
        raise HandshakeError("peer presented no certificate")
    cert = x509.load_der_x509_certificate(der)
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise HandshakeError("peer certificate has no subject alternative names") from None
    found = [
        m for m in (_ROLE_URI.match(uri) for uri in sans.get_values_for_type(
            x509.UniformResourceIdentifier
        )) if m is not None
    ]
    if len(found) != 1:
        raise HandshakeError(
            f"peer certificate names {len(found)} puma-async roles, expected exactly one"
        )
    match = found[0]
    if cluster is not None and match["cluster"] != cluster:
        raise HandshakeError(
            f"peer certificate is for cluster {match['cluster']!r}, expected {cluster!r}"
        )
    return int(match["role"])


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: create a cluster PKI directory."""
    parser = argparse.ArgumentParser(
        prog="python -m puma_async.transports.tls",
        description="Create a cluster CA and per-role certificates for mutual TLS. "
        "ca.key is only needed to issue certificates: keep it off the party machines.",
    )
    parser.add_argument("directory", type=Path)
    parser.add_argument("--roles", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--cluster", required=True, help="cluster name (in every certificate)")
    parser.add_argument(
        "--host", action="append", dest="hosts",
        help="DNS name or IP address of the party machines (repeatable; "
        f"default: {' '.join(DEFAULT_HOSTS)})",
    )
    parser.add_argument("--days", type=int, default=365, help="validity in days")
    parser.add_argument("--force", action="store_true", help="overwrite an existing PKI")
    args = parser.parse_args(argv)
    try:
        pki = create_cluster_pki(
            args.directory, args.roles, args.cluster, hosts=args.hosts or DEFAULT_HOSTS,
            valid_days=args.days, overwrite=args.force,
        )
    except (ValueError, FileExistsError) as exc:
        parser.error(str(exc))
    print(f"cluster {pki.cluster!r}: CA and roles {list(pki.roles)} written to {pki.directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
