"""``python -m puma_async.party certs``: the cluster's certificates, as commands.

Nobody holds every key: the CA holder creates the CA, each role creates its own key and a
signing request on its own machine, and the CA holder signs the requests::

    ca-holder$ python -m puma_async.party certs ca --cluster-file cluster.toml
    P1's host$ python -m puma_async.party certs request --cluster-file cluster.toml --role P1
               (send pki/role-1.csr to the CA holder; pki/role-1.key stays here)
    ca-holder$ python -m puma_async.party certs sign --cluster-file cluster.toml role-1.csr
               (send role-1.pem and pki/ca.pem back to P1's host, into its pki folder)

``sign`` refuses a request that does not name exactly this cluster's role URI and that role's
host from the cluster file, or that asks for anything else (see
:func:`puma_async.certificates.check_request`). ``certs all`` does all of it on one machine,
which then holds every key: for trials on a single machine only. Keys are written 0600 and
nothing is overwritten without ``--force``.

The commands are added to the party CLI by :func:`add_commands`; the certificate machinery
itself is :mod:`puma_async.certificates`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from puma_async.certificates import (
    CaFiles,
    CertificateRequestError,
    certificate_pem,
    create_ca,
    create_cluster_pki,
    create_request,
    load_request,
    sign_request,
)
from puma_async.cluster import Cluster, ClusterFileError, load_cluster, parse_role
from puma_async.files import write_private
from puma_async.roles import role_name


def ca_files(cluster: Cluster) -> CaFiles:
    """Where the cluster file puts the CA certificate; the CA key is ``ca.key`` in its pki."""
    return CaFiles(cluster.ca_cert, cluster.pki / "ca.key")


def request_path(cluster: Cluster, role: int) -> Path:
    """Where ``certs request`` writes ``role``'s signing request: beside its certificate."""
    return cluster.endpoint(role).cert.with_suffix(".csr")


def _command_ca(args: argparse.Namespace) -> int:
    cluster = load_cluster(args.cluster_file)
    files = ca_files(cluster)
    create_ca(cluster.name, cert_path=files.cert, key_path=files.key, valid_days=args.days,
              force=args.force)
    print(f"cluster {cluster.name!r}: CA certificate {files.cert} (give it to every role) and "
          f"CA key {files.key} (keep it here, off the party machines; it only signs)")
    return 0


def _command_request(args: argparse.Namespace) -> int:
    cluster = load_cluster(args.cluster_file)
    role = parse_role(args.role)
    endpoint = cluster.endpoint(role)
    csr = request_path(cluster, role)
    create_request(cluster.name, role, endpoint.host, key_path=endpoint.key, csr_path=csr,
                   force=args.force)
    print(f"{role_name(role)}: private key {endpoint.key} (keep it on this machine) and "
          f"signing request {csr} for host {endpoint.host}: send the request to the CA holder "
          f"(certs sign) and put the certificate it returns at {endpoint.cert}")
    return 0


def _command_sign(args: argparse.Namespace) -> int:
    cluster = load_cluster(args.cluster_file)
    path: Path = args.request
    out: Path = args.out or path.with_suffix(".pem")
    hosts = {role: endpoint.host for role, endpoint in cluster.endpoints.items()}
    ca = ca_files(cluster)
    for what, file in (("CA key", ca.key), ("CA certificate", ca.cert)):
        if not file.is_file():
            raise ClusterFileError(f"{what} {file} not found: sign on the CA holder's machine "
                                   "(certs ca creates the CA there)")
    try:
        role, cert = sign_request(load_request(path.read_bytes()), ca, cluster.name, hosts,
                                  valid_days=args.days)
    except CertificateRequestError as exc:
        raise CertificateRequestError(f"{path}: refused: {exc}") from None
    write_private(out, certificate_pem(cert), force=args.force)
    print(f"{role_name(role)}: certificate {out} for host {hosts[role]}: send it with "
          f"{cluster.ca_cert} to {role_name(role)} (its cluster file expects them at "
          f"{cluster.endpoint(role).cert} and {cluster.ca_cert})")
    return 0


def _command_all(args: argparse.Namespace) -> int:
    cluster = load_cluster(args.cluster_file)
    pki = cluster.pki
    paths = [(cluster.ca_cert, pki / "ca.pem")]
    for role, endpoint in cluster.endpoints.items():
        paths.append((endpoint.cert, pki / f"role-{role}.pem"))
        paths.append((endpoint.key, pki / f"role-{role}.key"))
    custom = [str(given) for given, default in paths if given != default]
    if custom:
        raise ClusterFileError(
            f"{cluster.path}: certs all writes only the default paths under {pki}, and this "
            f"cluster file names others ({', '.join(custom)}): use certs ca, request and sign"
        )
    hosts = {role: endpoint.host for role, endpoint in cluster.endpoints.items()}
    created = create_cluster_pki(pki, cluster.roles, cluster.name, hosts=hosts,
                             valid_days=args.days, force=args.force)
    print(f"cluster {created.cluster!r}: CA, keys and certificates of "
          f"{', '.join(role_name(r) for r in created.roles)} written to {pki}. "
          "This machine now holds every role's key: for trials on one machine only")
    return 0


def add_commands(commands: Any) -> None:
    """Add the certificate commands to the party CLI's sub-parsers (``handler`` defaults)."""
    certs = commands.add_parser(
        "certs", help="certificates: ca, request (each role), sign (the CA holder), all",
        description="\n\n".join(__doc__.split("\n\n")[1:3]).replace("::", ":"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    steps = certs.add_subparsers(dest="certs_command", required=True)

    def step(name: str, summary: str, handler: Any) -> argparse.ArgumentParser:
        command = steps.add_parser(name, help=summary, description=summary)
        command.add_argument("--cluster-file", required=True, type=Path)
        command.add_argument("--force", action="store_true",
                             help="overwrite existing files (never done silently)")
        command.set_defaults(handler=handler)
        return command

    ca = step("ca", "the CA holder: create the cluster CA (ca.key stays with the CA holder)",
              _command_ca)
    ca.add_argument("--days", type=int, default=365, help="validity of the CA (days)")
    request = step("request", "a role, on its own machine: create its key and a signing "
                   "request naming its role and its host", _command_request)
    request.add_argument("--role", required=True,
                         help="P0, P1, P2, model-owner or client")
    sign = step("sign", "the CA holder: check a signing request against the cluster file "
                "and issue its certificate", _command_sign)
    sign.add_argument("request", type=Path, metavar="CSR", help="a role's role-<n>.csr")
    sign.add_argument("--out", type=Path, metavar="PEM",
                      help="where to write the certificate (default: the CSR's name, .pem)")
    sign.add_argument("--days", type=int, default=365,
                      help="validity of the certificate (days; never beyond the CA's)")
    every = step("all", "trials on one machine only: the CA and every role's key and "
                 "certificate, here (this machine then holds every key)", _command_all)
    every.add_argument("--days", type=int, default=365, help="validity (days)")
