"""Certificates without a single key holder: ca / request / sign, its refusals, TLS with them.

Ports come from binding port 0; timeouts are hang guards only.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import stat
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from puma_async.certificates import (
    CaFiles,
    CertificateRequestError,
    create_ca,
    create_cluster_pki,
    create_request,
    load_request,
    role_subject,
    role_uri,
    sign_request,
)
from puma_async.cluster import load_cluster, write_cluster
from puma_async.errors import HandshakeError
from puma_async.party import main
from puma_async.roles import ALL_ROLES, CLIENT, MODEL_OWNER, P0, P1, P2
from puma_async.session import SessionSettings
from puma_async.transports.tcp import open_tcp_transport
from puma_async.transports.tls import TlsConfig

CLUSTER = "demo"
HOSTS = {P0: "10.0.0.1", P1: "10.0.0.2", P2: "party-2.example", MODEL_OWNER: "10.0.0.1",
         CLIENT: "10.0.0.4"}
HANG_GUARD = 60.0


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(autouse=True)
def permissive_umask() -> Iterator[None]:
    old = os.umask(0o000)  # the worst case: files are private only if created so
    yield
    os.umask(old)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CaFiles:
    folder = tmp_path_factory.mktemp("ca")
    return create_ca(CLUSTER, cert_path=folder / "ca.pem", key_path=folder / "ca.key")


def make_request(folder: Path, role: int, host: str, cluster: str = CLUSTER
                 ) -> x509.CertificateSigningRequest:
    return create_request(cluster, role, host, key_path=folder / f"role-{role}.key",
                          csr_path=folder / f"role-{role}.csr")


def custom_request(
    sans: list[x509.GeneralName], *, role: int = P1,
    extra: Callable[[x509.CertificateSigningRequestBuilder],
                    x509.CertificateSigningRequestBuilder] = lambda b: b,
) -> x509.CertificateSigningRequest:
    """A request as another tool could make it: any names, any extensions."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(role_subject(CLUSTER, role))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return extra(builder).sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())


def p1_uri() -> x509.UniformResourceIdentifier:
    return x509.UniformResourceIdentifier(role_uri(CLUSTER, P1))


def p1_ip() -> x509.IPAddress:
    return x509.IPAddress(ipaddress.ip_address(HOSTS[P1]))


# ----------------------------------------------------------------------------- issuing


def test_request_and_sign(tmp_path: Path, ca: CaFiles) -> None:
    assert mode(ca.key) == 0o600
    csr = make_request(tmp_path, P2, HOSTS[P2])
    assert mode(tmp_path / "role-2.key") == 0o600 and mode(tmp_path / "role-2.csr") == 0o600
    assert load_request((tmp_path / "role-2.csr").read_bytes()) == csr
    role, cert = sign_request(csr, ca, CLUSTER, HOSTS)
    assert role == P2
    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    cert.verify_directly_issued_by(ca_cert)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(sans) == [x509.UniformResourceIdentifier(role_uri(CLUSTER, P2)),
                          x509.DNSName(HOSTS[P2])]  # its own host only
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.public_key() == csr.public_key()
    assert cert.not_valid_after_utc <= ca_cert.not_valid_after_utc


def test_nothing_is_overwritten_without_force(tmp_path: Path) -> None:
    make_request(tmp_path, P1, HOSTS[P1])
    key = (tmp_path / "role-1.key").read_bytes()
    with pytest.raises(FileExistsError, match=r"role-1\.key exists"):
        make_request(tmp_path, P1, HOSTS[P1])
    assert (tmp_path / "role-1.key").read_bytes() == key
    create_request(CLUSTER, P1, HOSTS[P1], key_path=tmp_path / "role-1.key",
                   csr_path=tmp_path / "role-1.csr", force=True)
    assert (tmp_path / "role-1.key").read_bytes() != key
    assert mode(tmp_path / "role-1.key") == 0o600


def _tampered(csr: x509.CertificateSigningRequest) -> x509.CertificateSigningRequest:
    der = csr.public_bytes(serialization.Encoding.DER)
    assert der.count(b"demo role 1") == 1
    return x509.load_der_x509_csr(der.replace(b"demo role 1", b"demo role 2"))


@pytest.mark.parametrize(("make", "refusal"), [
    pytest.param(lambda d: make_request(d, P1, HOSTS[P1], cluster="other"),
                 "the request is for cluster 'other', this CA signs for 'demo'",
                 id="another-cluster"),
    pytest.param(lambda d: make_request(d, P1, HOSTS[P2]),
                 r"request for P1 names DNS:party-2.example, but a role certificate names only "
                 r"its role's host \(10.0.0.2 in the cluster file\)",
                 id="another-roles-host"),
    pytest.param(lambda d: custom_request([p1_uri(), p1_ip(), x509.DNSName("evil.example")]),
                 "names DNS:evil.example, but a role certificate names only its role's host",
                 id="extra-san"),
    pytest.param(lambda d: custom_request([p1_uri()]),
                 r"does not name its host 10.0.0.2", id="no-host"),
    pytest.param(lambda d: custom_request([p1_uri(), x509.UniformResourceIdentifier(
        role_uri(CLUSTER, P0))]), "exactly one puma-async role URI", id="two-roles"),
    pytest.param(lambda d: custom_request([]), "names no role", id="no-names"),
    pytest.param(lambda d: custom_request(
        [p1_uri(), p1_ip()],
        extra=lambda b: b.add_extension(x509.BasicConstraints(ca=True, path_length=None),
                                        critical=True)),
                 r"asks for extension\(s\) BasicConstraints", id="ca-extension"),
    pytest.param(lambda d: make_request(d, 7, HOSTS[P1]), "role7, which is not a role",
                 id="unknown-role"),
    pytest.param(lambda d: _tampered(make_request(d, P1, HOSTS[P1])),
                 "signature does not verify", id="tampered"),
])
def test_refused_requests(
    tmp_path: Path, ca: CaFiles,
    make: Callable[[Path], x509.CertificateSigningRequest], refusal: str,
) -> None:
    with pytest.raises(CertificateRequestError, match=refusal):
        sign_request(make(tmp_path), ca, CLUSTER, HOSTS)


def test_refused_subject(ca: CaFiles) -> None:
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "evil")]))
           .add_extension(x509.SubjectAlternativeName([p1_uri(), p1_ip()]), critical=False)
           .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256()))
    with pytest.raises(CertificateRequestError, match="subject is 'CN=evil', expected"):
        sign_request(csr, ca, CLUSTER, HOSTS)


def test_not_a_request() -> None:
    with pytest.raises(CertificateRequestError, match="not a PEM certificate signing request"):
        load_request(b"-----BEGIN CERTIFICATE REQUEST-----\ngarbage\n")


# ----------------------------------------------------------------------------- command line


def machines(processes, tmp_path: Path, names: list[str]) -> dict[str, Path]:
    """One folder per machine, each with its own copy of the same cluster file."""
    ports = processes.free_ports(len(ALL_ROLES))
    files = {}
    for name in names:
        folder = tmp_path / name
        folder.mkdir()
        files[name] = write_cluster(
            folder / "cluster.toml", name=CLUSTER, settings=SessionSettings("pki-test"),
            addresses={r: ("127.0.0.1", p) for r, p in zip(ALL_ROLES, ports, strict=True)},
        )
    return files


async def exchange_once(configs: Mapping[int, TlsConfig],
                        addresses: Mapping[int, tuple[str, int]], **options: Any
                        ) -> dict[int, Any]:
    """Every role sends its name to every other over TLS; each role's frames or error."""
    results: dict[int, Any] = {}

    async def run(role: int) -> None:
        try:
            async with open_tcp_transport(role, addresses, session=b"s" * 16,
                                          config_digest=b"d" * 32, tls=configs[role],
                                          **options) as transport:
                for peer in transport.peers:
                    await transport.send(peer, f"from {role}".encode())
                    await transport.close_peer(peer)
                got = {}
                while len(got) < len(transport.peers):
                    peer, frame = await transport.receive()
                    if frame is not None:
                        got[peer] = frame
                results[role] = got
        except Exception as exc:
            results[role] = exc

    with trio.fail_after(HANG_GUARD):
        async with trio.open_nursery() as nursery:
            for role in configs:
                nursery.start_soon(run, role)
    return results


@pytest.mark.system
async def test_flow_on_separate_machines_then_tls(processes, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    files = machines(processes, tmp_path, ["ca-holder", "P0", "P1"])
    ca_file = files["ca-holder"]
    assert main(["certs", "ca", "--cluster-file", os.fspath(ca_file)]) == 0
    ca_pki = ca_file.parent / "pki"
    assert mode(ca_pki / "ca.key") == 0o600
    for role, name in ((P0, "P0"), (P1, "P1")):
        own = files[name]
        assert main(["certs", "request", "--cluster-file", os.fspath(own), "--role", name]) == 0
        pki = own.parent / "pki"
        assert mode(pki / f"role-{role}.key") == 0o600
        inbox = ca_file.parent / f"from-{name}.csr"  # the request travels, the key does not
        shutil.copy(pki / f"role-{role}.csr", inbox)
        assert main(["certs", "sign", "--cluster-file", os.fspath(ca_file),
                     os.fspath(inbox)]) == 0
        shutil.copy(inbox.with_suffix(".pem"), pki / f"role-{role}.pem")
        shutil.copy(ca_pki / "ca.pem", pki / "ca.pem")
    assert sorted(p.name for p in ca_pki.iterdir()) == ["ca.key", "ca.pem"]
    assert "P1: certificate" in capsys.readouterr().out

    clusters = {role: load_cluster(files[name]) for role, name in ((P0, "P0"), (P1, "P1"))}
    configs = {role: c.tls_config(role) for role, c in clusters.items()}
    addresses = {r: clusters[P0].addresses[r] for r in (P0, P1)}
    results = await exchange_once(configs, addresses)
    assert results == {P0: {P1: b"from 1"}, P1: {P0: b"from 0"}}


def test_sign_refusals_on_the_command_line(processes, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    files = machines(processes, tmp_path, ["ca-holder", "P1"])
    ca_file = files["ca-holder"]
    assert main(["certs", "ca", "--cluster-file", os.fspath(ca_file)]) == 0
    assert main(["certs", "ca", "--cluster-file", os.fspath(ca_file)]) == 2
    assert "ca.pem exists (use --force" in capsys.readouterr().err

    without_ca = ["certs", "sign", "--cluster-file", os.fspath(files["P1"]), "x.csr"]
    assert main(without_ca) == 2
    assert "ca.key not found: sign on the CA holder's machine" in capsys.readouterr().err

    csr = tmp_path / "foreign.csr"
    make_request(tmp_path, P1, "127.0.0.1", cluster="elsewhere")
    shutil.move(tmp_path / "role-1.csr", csr)
    assert main(["certs", "sign", "--cluster-file", os.fspath(ca_file), os.fspath(csr)]) == 2
    err = capsys.readouterr().err
    assert "foreign.csr: refused: the request is for cluster 'elsewhere'" in err
    assert not csr.with_suffix(".pem").exists()

    assert main(["certs", "request", "--cluster-file", os.fspath(files["P1"]),
                 "--role", "P1"]) == 0
    request = files["P1"].parent / "pki" / "role-1.csr"
    args = ["certs", "sign", "--cluster-file", os.fspath(ca_file), os.fspath(request)]
    assert main(args) == 0
    assert main(args) == 2  # the certificate exists
    assert main([*args, "--force"]) == 0


def test_all_on_one_machine(processes, tmp_path: Path) -> None:
    (cluster_file,) = machines(processes, tmp_path, ["trial"]).values()
    assert main(["certs", "all", "--cluster-file", os.fspath(cluster_file)]) == 0
    cluster = load_cluster(cluster_file)
    for role in ALL_ROLES:
        config = cluster.tls_config(role)
        assert mode(config.key) == 0o600
    assert main(["certs", "all", "--cluster-file", os.fspath(cluster_file)]) == 2



def test_all_with_a_relative_cluster_file(processes, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A cluster file named relative to the working directory: the default pki paths are
    under its folder once (not the folder's path repeated)."""
    (cluster_file,) = machines(processes, tmp_path, ["trial"]).values()
    monkeypatch.chdir(tmp_path)
    relative = cluster_file.relative_to(tmp_path)
    assert relative.parent != Path(".")
    assert main(["certs", "all", "--cluster-file", os.fspath(relative)]) == 0
    cluster = load_cluster(relative)
    assert cluster.ca_cert == relative.parent / "pki" / "ca.pem"
    assert (cluster_file.parent / "pki" / "ca.pem").is_file()
    assert all(cluster.tls_config(role) for role in ALL_ROLES)

@pytest.mark.system
async def test_hostname_is_checked_against_the_role_host(processes, tmp_path: Path) -> None:
    """P0's certificate names only its host from the cluster file (here another address), so
    P1, which dials P0 at 127.0.0.1, refuses it."""
    pki = create_cluster_pki(tmp_path, [P0, P1], CLUSTER, hosts={P0: "10.9.9.9"})
    ports = processes.free_ports(2)
    addresses = dict(zip((P0, P1), (("127.0.0.1", p) for p in ports), strict=True))
    results = await exchange_once({r: pki.tls_config(r) for r in (P0, P1)}, addresses,
                                  connect_timeout=2.0)
    assert isinstance(results[P1], HandshakeError)
    assert "IP address mismatch" in str(results[P1])
    assert isinstance(results[P0], HandshakeError)
