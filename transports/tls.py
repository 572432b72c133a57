"""Mutual-TLS contexts for the TCP transport, and the role a peer's certificate names.

Every cluster (one deployment of the five roles) has its own certificate authority. Each role
has an ECDSA P-256 key and a certificate signed by that CA which names the role twice:

* subject CN ``<cluster> role <n>`` (for people reading certificates), and
* a SAN URI ``puma-async://<cluster>/role/<n>``, which is what :func:`peer_role_from_cert`
  reads: after the TLS handshake verified the chain against the cluster CA, the role in the
  peer's certificate must equal the role it claims in its ``Hello`` (checked by
  :func:`puma_async.transports.handshake.check_hello`).

A role certificate also names the one host its role runs at (a DNS or IP SAN, from the
cluster file), and nothing else: the dialling side checks the address it dialled against it
(hostname checking stays on), and a stolen certificate cannot pass for a role at another
host. Both sides require a certificate from the cluster CA, and only TLS 1.3 is accepted.

Certificates are issued by :mod:`puma_async.certificates` (``python -m puma_async.party certs``).
"""

from __future__ import annotations

import dataclasses
import os
import re
import ssl
from pathlib import Path
from typing import Protocol

from cryptography import x509

from puma_async.errors import HandshakeError

URI_SCHEME = "puma-async"
ROLE_URI = re.compile(rf"^{URI_SCHEME}://(?P<cluster>[^/]+)/role/(?P<role>[0-9]+)$")
"""A role's SAN URI: ``puma-async://<cluster>/role/<n>``."""


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
        """The configuration of ``role`` in a directory of role certificates
        (:func:`puma_async.certificates.create_cluster_pki` writes one)."""
        base = Path(pki_dir)
        return cls(
            ca_cert=base / "ca.pem", cert=base / f"role-{role}.pem",
            key=base / f"role-{role}.key", **options,  # type: ignore[arg-type]
        )


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
        m for m in (ROLE_URI.match(uri) for uri in sans.get_values_for_type(
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
