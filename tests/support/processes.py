"""Roles as OS processes over loopback TLS (the ``processes`` fixture; system tests only).

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

from .sealed import SEALED

HERE = Path(__file__).parent


class Processes:
    """Cluster files with certificates, and ``python -m puma_async.party`` processes.

    ``hang_guard``: seconds a test waits for a process before failing (never a timing
    assert). ``entropy``: what every started role gets as ``--entropy``. ``sealed_text``: in
    the error of a sealed role that tried to read a model (``support/sealed.py``).
    """

    hang_guard = 300.0
    entropy = "5eed"
    sealed_text = SEALED

    @staticmethod
    def script(name: str) -> Path:
        """The path of a helper script of this folder (``sealed``, ``tcp_ring``)."""
        return HERE / f"{name}.py"

    @staticmethod
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

    def make_cluster(self, directory: Path, settings: SessionSettings) -> Path:
        """A cluster file of every role on loopback, with its certificates."""
        ports = self.free_ports(len(ALL_ROLES))
        path = write_cluster(
            directory / "cluster.toml", name="cli-test", settings=settings,
            addresses={r: ("127.0.0.1", p) for r, p in zip(ALL_ROLES, ports, strict=True)},
        )
        assert main(["certs", "all", "--cluster-file", os.fspath(path)]) == 0
        return path

    def start(self, cluster: Path, roles: int | list[int], *extra: str, sealed: bool = False
              ) -> subprocess.Popen[str]:
        """``puma_async.party run`` of ``roles`` in a new process (``sealed``: unable to read
        a model, see ``sealed.py``)."""
        launcher = [os.fspath(self.script("sealed"))] if sealed else ["-m", "puma_async.party"]
        role_args = [arg for r in ([roles] if isinstance(roles, int) else roles)
                     for arg in ("--role", role_name(r))]
        return subprocess.Popen(
            [sys.executable, *launcher, "run", "--cluster-file", os.fspath(cluster), *role_args,
             "--entropy", self.entropy, *extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    def finish(self, proc: subprocess.Popen[str]) -> tuple[int, str, str]:
        out, err = proc.communicate(timeout=self.hang_guard)
        return proc.returncode, out, err

    def wait_for_line(self, proc: subprocess.Popen[str], text: str) -> None:
        """Read ``proc``'s stderr until a line containing ``text`` (the process must live on)."""
        assert proc.stderr is not None
        deadline = time.monotonic() + self.hang_guard
        while text not in proc.stderr.readline():
            assert time.monotonic() < deadline and proc.poll() is None, f"no {text!r}"
