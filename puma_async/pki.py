"""``python -m puma_async.party certs``: the cluster's certificates, as commands.

The commands are added to the party CLI by :func:`add_commands`; the certificate machinery
itself is :mod:`puma_async.transports.tls`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from puma_async.cluster import ClusterFileError, load_cluster
from puma_async.roles import ALL_ROLES, role_name
from puma_async.transports.tls import create_cluster_pki


def _command_certs(args: argparse.Namespace) -> int:
    cluster = load_cluster(args.cluster_file)
    try:
        pki = create_cluster_pki(
            cluster.pki, list(ALL_ROLES), cluster.name, hosts=cluster.hosts,
            valid_days=args.days, overwrite=args.force,
        )
    except FileExistsError as exc:
        raise ClusterFileError(str(exc)) from None
    print(f"cluster {pki.cluster!r}: CA and certificates of roles "
          f"{', '.join(role_name(r) for r in pki.roles)} written to {pki.directory} "
          "(ca.key is only needed to issue certificates: keep it off the party machines)")
    return 0


def add_commands(commands: Any) -> None:
    """Add the certificate commands to the party CLI's sub-parsers (``handler`` defaults)."""
    certs = commands.add_parser("certs", help="create the cluster CA and role certificates")
    certs.add_argument("--cluster-file", required=True, type=Path)
    certs.add_argument("--days", type=int, default=365)
    certs.add_argument("--force", action="store_true", help="overwrite an existing PKI")
    certs.set_defaults(handler=_command_certs)
