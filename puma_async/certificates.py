"""Issuing a cluster's certificates: the CA, per-role keys and signing requests, signing.

The certificates are those :mod:`puma_async.transports.tls` builds its mutual-TLS contexts on:
each names its role in a SAN URI (:func:`role_uri`) and the one host its role runs at.

Issuing certificates: nobody holds every key
--------------------------------------------
1. The CA holder runs :func:`create_ca`: ``ca.key`` (0600; needed only to sign) and
   ``ca.pem`` (public; every role needs it).
2. Each role, on its own machine, runs :func:`create_request`: its private key (0600; it never
   leaves that machine) and a certificate signing request (``role-<n>.csr``) naming its role
   URI and its own host, signed with that key.
3. The CA holder runs :func:`sign_request` on each CSR it receives: it checks the request's
   signature, that its role URI names this cluster and a role of it, that its one host is that
   role's host in the cluster file, and that nothing else is requested (no other names, no
   extensions, the expected subject). A request that fails any check is refused with a
   :class:`CertificateRequestError` naming what was wrong; otherwise the certificate
   ``role-<n>.pem`` goes back to the role.

:func:`create_cluster_pki` runs the three steps in one directory, for tests and trials on a
single machine: **that machine then holds every role's key** (and the CA key), so it is no
deployment. Every file is written through :mod:`puma_async.files` (0600, never overwritten
without ``force``). Command line: ``python -m puma_async.party certs`` (:mod:`puma_async.pki`).

One module of about 440 lines: what a request may ask for (:func:`create_request`) and what the
CA accepts (:func:`check_request`) are one policy, read and changed together.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from puma_async.errors import PumaError
from puma_async.files import write_private
from puma_async.roles import role_name
from puma_async.transports.tls import ROLE_URI, URI_SCHEME, TlsConfig

DEFAULT_HOST = "127.0.0.1"
ORGANIZATION = "puma-async"
CLOCK_SKEW = datetime.timedelta(minutes=5)
"""Certificates are valid from this long before they are issued (clocks differ a little)."""
_CLUSTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_EC_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
_MIN_RSA_BITS = 2048


class CertificateRequestError(PumaError, ValueError):
    """A certificate signing request is refused: the message names what was wrong."""


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


def check_cluster_name(cluster: str) -> None:
    """Raise ValueError unless ``cluster`` can name a cluster in certificates and URIs."""
    if not _CLUSTER_NAME.match(cluster):
        raise ValueError(f"cluster name {cluster!r} must be 1-63 letters, digits, '.', '_' or '-'")


def role_subject(cluster: str, role: int) -> x509.Name:
    """The subject of ``role``'s certificate (and of its signing request)."""
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
        x509.NameAttribute(NameOID.COMMON_NAME, f"{cluster} role {role}"),
    ])


def host_name(host: str) -> x509.GeneralName:
    """The SAN entry of a host: an IP address SAN for an address, else a DNS name."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host.lower())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _check_days(valid_days: int) -> None:
    if valid_days < 1:
        raise ValueError(f"validity must be at least 1 day, got {valid_days}")


def _refuse_existing(paths: Sequence[Path], force: bool) -> None:
    """Refuse before anything is written if any target exists (so nothing is half done)."""
    if not force:
        for path in paths:
            if path.exists():
                raise FileExistsError(f"{path} exists (use --force to overwrite it)")


# ----------------------------------------------------------------------------- 1: the CA


@dataclasses.dataclass(frozen=True)
class CaFiles:
    """The CA's certificate and key files."""

    cert: Path
    key: Path


def create_ca(
    cluster: str, *, cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str],
    valid_days: int = 365, force: bool = False,
) -> CaFiles:
    """Create the CA of ``cluster``: its key (0600, at ``key_path``) and certificate.

    Refuses (FileExistsError) if either file exists, unless ``force``.
    """
    check_cluster_name(cluster)
    _check_days(valid_days)
    files = CaFiles(Path(cert_path), Path(key_path))
    _refuse_existing([files.cert, files.key], force)
    for folder in {files.cert.parent, files.key.parent}:
        folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
        x509.NameAttribute(NameOID.COMMON_NAME, f"{cluster} cluster CA"),
    ])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    write_private(files.key, _key_pem(key), force=force)
    write_private(files.cert, cert.public_bytes(serialization.Encoding.PEM), force=force)
    return files


# ----------------------------------------------------------------------------- 2: a role


def create_request(
    cluster: str, role: int, host: str, *, key_path: str | os.PathLike[str],
    csr_path: str | os.PathLike[str], force: bool = False,
) -> x509.CertificateSigningRequest:
    """Create ``role``'s private key (0600, at ``key_path``) and its signing request.

    The request (PEM at ``csr_path``) names the role's URI and its one ``host``, and carries
    the subject :func:`role_subject`. Run it on the role's own machine: the key never has to
    leave it. Refuses (FileExistsError) if either file exists, unless ``force``.
    """
    check_cluster_name(cluster)
    if role < 0:
        raise ValueError(f"role must be >= 0, got {role}")
    key_file, csr_file = Path(key_path), Path(csr_path)
    _refuse_existing([key_file, csr_file], force)
    for folder in {key_file.parent, csr_file.parent}:
        folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(role_subject(cluster, role))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(role_uri(cluster, role)), host_name(host)]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    write_private(key_file, _key_pem(key), force=force)
    write_private(csr_file, csr.public_bytes(serialization.Encoding.PEM), force=force)
    return csr


# ----------------------------------------------------------------------------- 3: signing


def load_request(data: bytes) -> x509.CertificateSigningRequest:
    """A PEM signing request, or CertificateRequestError if ``data`` is not one."""
    try:
        return x509.load_pem_x509_csr(data)
    except ValueError:
        raise CertificateRequestError("not a PEM certificate signing request") from None


def _describe_extension(extension: x509.Extension[x509.ExtensionType]) -> str:
    kind = type(extension.value).__name__
    return kind if kind != "UnrecognizedExtension" else f"OID {extension.oid.dotted_string}"


_NAME_KINDS = {x509.DNSName: "DNS", x509.IPAddress: "IP", x509.UniformResourceIdentifier: "URI",
               x509.RFC822Name: "email"}


def _describe_name(name: x509.GeneralName) -> str:
    return f"{_NAME_KINDS.get(type(name), type(name).__name__)}:{name.value}"


def check_request(
    csr: x509.CertificateSigningRequest, cluster: str, hosts: Mapping[int, str]
) -> int:
    """The role a signing request may be issued for; CertificateRequestError if it may not.

    ``hosts`` maps every role of the cluster to its host (from the cluster file). The request
    must carry a valid signature, an accepted key, the subject :func:`role_subject`, and one
    extension, its SAN: exactly the role URI of a role of ``cluster`` and that role's host.
    """
    try:
        signed = csr.is_signature_valid
    except UnsupportedAlgorithm:
        signed = False
    if not signed:
        raise CertificateRequestError(
            "the request's signature does not verify (it was corrupted or tampered with)"
        )
    try:
        key = csr.public_key()
        extensions = list(csr.extensions)
    except (ValueError, UnsupportedAlgorithm) as exc:  # DuplicateExtension is a ValueError
        raise CertificateRequestError(f"the request is malformed: {exc}") from None
    _check_key(key)
    others = [e for e in extensions if not isinstance(e.value, x509.SubjectAlternativeName)]
    if others:
        names = ", ".join(_describe_extension(e) for e in others)
        raise CertificateRequestError(
            f"the request asks for extension(s) {names}: a role certificate's extensions are "
            "set by the CA, and it is never a CA certificate"
        )
    if not extensions:
        raise CertificateRequestError("the request names no role (no subject alternative names)")
    sans = list(extensions[0].value)
    uris = [n for n in sans if isinstance(n, x509.UniformResourceIdentifier)]
    roles = [m for m in (ROLE_URI.match(u.value) for u in uris) if m is not None]
    if len(uris) != 1 or len(roles) != 1:
        listed = ", ".join(u.value for u in uris) or "none"
        raise CertificateRequestError(
            f"the request must name exactly one {URI_SCHEME} role URI, it names: {listed}"
        )
    match = roles[0]
    if match["cluster"] != cluster:
        raise CertificateRequestError(
            f"the request is for cluster {match['cluster']!r}, this CA signs for {cluster!r}"
        )
    role = int(match["role"])
    if role not in hosts:
        raise CertificateRequestError(
            f"the request is for {role_name(role)}, which is not a role of cluster {cluster!r}"
        )
    expected = host_name(hosts[role])
    others_named = [n for n in sans if n != uris[0] and n != expected]
    if others_named:
        listed = ", ".join(_describe_name(n) for n in others_named)
        raise CertificateRequestError(
            f"the request for {role_name(role)} names {listed}, but a role certificate names "
            f"only its role's host ({hosts[role]} in the cluster file)"
        )
    if expected not in sans:
        raise CertificateRequestError(
            f"the request for {role_name(role)} does not name its host {hosts[role]} "
            "(from the cluster file)"
        )
    if len(sans) != 2:
        raise CertificateRequestError(
            f"the request for {role_name(role)} names its role or host more than once"
        )
    if csr.subject != role_subject(cluster, role):
        raise CertificateRequestError(
            f"the request's subject is {csr.subject.rfc4514_string()!r}, expected "
            f"{role_subject(cluster, role).rfc4514_string()!r}"
        )
    return role


def _check_key(key: object) -> None:
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, _EC_CURVES):
            raise CertificateRequestError(
                f"the request's key is on curve {key.curve.name}; accepted: "
                f"{', '.join(c.name for c in _EC_CURVES)}"
            )
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < _MIN_RSA_BITS:
            raise CertificateRequestError(
                f"the request's RSA key has {key.key_size} bits; at least {_MIN_RSA_BITS} needed"
            )
    else:
        raise CertificateRequestError(
            f"the request's key is a {type(key).__name__}; accepted: ECDSA or RSA"
        )


def sign_request(
    csr: x509.CertificateSigningRequest,
    ca: CaFiles,
    cluster: str,
    hosts: Mapping[int, str],
    *,
    valid_days: int = 365,
) -> tuple[int, x509.Certificate]:
    """Check ``csr`` (:func:`check_request`) and issue its certificate with the CA in ``ca``.

    Returns the role and its certificate, valid for ``valid_days`` but never beyond the CA.
    """
    role = check_request(csr, cluster, hosts)
    _check_days(valid_days)
    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    ca_key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{ca.key} is not an ECDSA key")
    if ca_key.public_key() != ca_cert.public_key():
        raise ValueError(f"{ca.key} is not the key of {ca.cert}")
    now = datetime.datetime.now(datetime.UTC)
    not_after = min(now + datetime.timedelta(days=valid_days), ca_cert.not_valid_after_utc)
    public_key = csr.public_key()
    assert isinstance(public_key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey))
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(role_subject(cluster, role)).issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW).not_valid_after(not_after)
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
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(role_uri(cluster, role)),
                 host_name(hosts[role])]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return role, cert


def certificate_pem(cert: x509.Certificate) -> bytes:
    """The PEM encoding of a certificate (what :func:`sign_request` issued)."""
    return cert.public_bytes(serialization.Encoding.PEM)


# ----------------------------------------------------------------------------- all in one


def create_cluster_pki(
    out_dir: str | os.PathLike[str],
    roles: Sequence[int],
    cluster_name: str,
    *,
    hosts: Mapping[int, str] | None = None,
    valid_days: int = 365,
    force: bool = False,
) -> ClusterPki:
    """Run the three steps for ``roles`` in ``out_dir``: one machine then holds every key.

    For tests and single-machine trials only (see the module docstring). ``hosts`` maps each
    role to its host (default :data:`DEFAULT_HOST` for every role). Writes ``ca.pem``,
    ``ca.key`` and ``role-<n>.key``/``.csr``/``.pem``; refuses to overwrite any of them
    unless ``force``.
    """
    if not roles or len(set(roles)) != len(roles) or any(r < 0 for r in roles):
        raise ValueError(f"roles must be distinct integers >= 0, got {list(roles)}")
    role_hosts = {r: (hosts or {}).get(r, DEFAULT_HOST) for r in roles}
    directory = Path(out_dir)
    targets = [directory / f"role-{r}.{ext}" for r in roles for ext in ("key", "csr", "pem")]
    _refuse_existing(targets, force)
    ca = create_ca(cluster_name, cert_path=directory / "ca.pem", key_path=directory / "ca.key",
                   valid_days=valid_days, force=force)
    for role in roles:
        csr = create_request(
            cluster_name, role, role_hosts[role], key_path=directory / f"role-{role}.key",
            csr_path=directory / f"role-{role}.csr", force=force,
        )
        _, cert = sign_request(csr, ca, cluster_name, role_hosts, valid_days=valid_days)
        write_private(directory / f"role-{role}.pem", certificate_pem(cert), force=force)
    return ClusterPki(directory, cluster_name, ca.cert, ca.key, tuple(roles))
