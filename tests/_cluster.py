"""Helpers of the tests that run roles as OS processes over loopback TLS.

Ports come from binding port 0; the timeouts here are hang guards only (no timing asserts).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from puma_async.cluster import write_cluster
from puma_async.party import main
from puma_async.roles import ALL_ROLES, role_name
from puma_async.session import SessionSettings

HANG_GUARD = 300.0
ENTROPY = "5eed"
SEALED_LAUNCHER = Path(__file__).parent / "_sealed.py"


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


def make_cluster(directory: Path, settings: SessionSettings) -> Path:
    """A cluster file of every role on loopback, with its certificates."""
    ports = free_ports(len(ALL_ROLES))
    path = write_cluster(
        directory / "cluster.toml", name="cli-test", settings=settings,
        addresses={r: ("127.0.0.1", p) for r, p in zip(ALL_ROLES, ports, strict=True)},
    )
    assert main(["certs", "all", "--cluster-file", os.fspath(path)]) == 0
    return path


def start(cluster: Path, roles: int | list[int], *extra: str, sealed: bool = False
          ) -> subprocess.Popen[str]:
    """``puma_async.party run`` of ``roles`` in a new process (``sealed``: unable to read a
    model, see ``_sealed.py``)."""
    launcher = [os.fspath(SEALED_LAUNCHER)] if sealed else ["-m", "puma_async.party"]
    role_args = [arg for r in ([roles] if isinstance(roles, int) else roles)
                 for arg in ("--role", role_name(r))]
    return subprocess.Popen(
        [sys.executable, *launcher, "run", "--cluster-file", os.fspath(cluster), *role_args,
         "--entropy", ENTROPY, *extra],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=HANG_GUARD)
    return proc.returncode, out, err


def wait_for_line(proc: subprocess.Popen[str], text: str) -> None:
    """Read ``proc``'s stderr until a line containing ``text`` (the process must live on)."""
    assert proc.stderr is not None
    deadline = time.monotonic() + HANG_GUARD
    while text not in proc.stderr.readline():
        assert time.monotonic() < deadline and proc.poll() is None, f"no {text!r}"
