"""The deployment of ``python -m puma_async.party``, measured: five processes over loopback TLS.

One OS process per role (P0, P1, P2, model-owner, client) on 127.0.0.1, each with its own
certificate of the cluster's CA, as on five machines: the model owner exports the client's
tokenizer, then loads its model file; the parties get the architecture from the cluster file
only; the client alone has the prompt. Reports:

- time to first token from start: from launching the processes to the client's first token
  (process start-up, the owner's loading, connecting, the weights' set-up, the prompt pass);
- the set-up as the client saw it (connected until every party stored its shares);
- per new token (the passes after the prompt pass): the client's seconds, and MB sent by the
  three parties together, online and offline (the correlated randomness dealt for the pass);
- each computing party's CPU time per pass, read from ``/proc`` when the party logs the end
  of its set-up and of each pass: the whole process (event loop, worker threads, kernels) and
  its event-loop thread alone (Linux; elsewhere not reported);
- the peak memory (maximum resident set) of every process, from ``os.wait4``.

Usage: ``python benchmarks/deployment.py [--model smollm2|tiny] [--max-new-tokens 4]
[--prompt TEXT] [--out benchmarks/results/deployment.json]`` (SmolLM2: about 9 GB in all).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

import reporting

from puma_async.cluster import load_cluster, write_cluster
from puma_async.party import main as party
from puma_async.roles import ALL_ROLES, CLIENT, MODEL_OWNER, PARTIES, role_name
from puma_async.session import SessionSettings
from puma_async.session.models import TINY, export_model

MB = 1e6


def free_ports(count: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(count)]
    for sock in socks:
        sock.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for sock in socks:
        sock.close()
    return ports


PROGRESS_LINE = re.compile(r"set-up done in|: pass \d+ done in")
"""A computing party's stderr lines that end its set-up and each of its passes."""


def cpu_seconds(pid: int, thread: int | None = None) -> float | None:
    """User + system CPU seconds of a process (all its threads) or of one of its threads,
    from ``/proc`` (None where there is none: not Linux, or the process is gone)."""
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    try:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


class Role:
    """One role's process: its stderr lines with their arrival times, stdout, max RSS, and for
    a computing party its CPU seconds (process, event-loop thread) at each progress line."""

    def __init__(self, role: int, args: list[str], started: float):
        self.role = role
        self.started = started
        self.lines: list[tuple[float, str]] = []
        self.cpu_marks: list[tuple[float | None, float | None]] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "puma_async.party", "run", "--role", role_name(role), *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.stdout = ""
        self.readers = [threading.Thread(target=self._read_stderr),
                        threading.Thread(target=self._read_stdout)]
        for reader in self.readers:
            reader.start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        pid = self.proc.pid  # a Python process's event loop runs in its main thread: tid = pid
        for line in self.proc.stderr:
            self.lines.append((time.monotonic() - self.started, line.rstrip("\n")))
            if self.role in PARTIES and PROGRESS_LINE.search(line):
                self.cpu_marks.append((cpu_seconds(pid), cpu_seconds(pid, pid)))

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        self.stdout = self.proc.stdout.read()

    def wait(self) -> tuple[int, int]:
        """The exit status and the peak memory in bytes."""
        for reader in self.readers:
            reader.join()
        _pid, status, usage = os.wait4(self.proc.pid, 0)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        return self.proc.returncode, usage.ru_maxrss * 1024  # Linux reports KiB

    def cpu_per_pass(self) -> dict[str, list[float]] | None:
        """CPU seconds of each pass (the prompt pass first), of the process and of its event
        loop; None if ``/proc`` could not be read."""
        marks = self.cpu_marks
        if len(marks) < 2 or any(None in mark for mark in marks):
            return None
        return {what: [round(after[i] - before[i], 2) for before, after in pairwise(marks)]
                for i, what in enumerate(("process", "event_loop"))}

    def first(self, text: str) -> float:
        """Seconds from the start to the first stderr line containing ``text``."""
        return next(t for t, line in self.lines if text in line)


def step_bytes(stats: dict[str, Any], scope: str, phase: str) -> int:
    """Payload bytes a role sent in a scope (nested scopes included) in ``phase``
    ("online", or "offline": the correlated randomness dealt for that pass)."""
    return sum(e["bytes_sent"] for e in stats["traffic"] if e["phase"] == phase
               and (e["scope"] == scope or e["scope"].startswith(scope + ".")))


def pass_mb(stats: dict[int, dict[str, Any]], scope: str) -> dict[str, float]:
    """MB the three parties sent for one pass, online and offline."""
    return {phase: sum(step_bytes(stats[p], scope, phase) for p in PARTIES) / MB
            for phase in ("online", "offline")}


def issue_certificates(cluster: Path) -> None:
    """The per-role flow, as on five machines: the CA, then each role's own key and signing
    request, signed by the CA holder (here all in one folder)."""
    party(["certs", "ca", "--cluster-file", os.fspath(cluster)])
    pki = load_cluster(cluster).pki
    for role in ALL_ROLES:
        party(["certs", "request", "--cluster-file", os.fspath(cluster), "--role",
               role_name(role)])
        party(["certs", "sign", "--cluster-file", os.fspath(cluster),
               os.fspath(pki / f"role-{role}.csr")])


def run(model: str, prompt: str, max_new_tokens: int, directory: Path) -> dict[str, Any]:
    settings = SessionSettings("deployment-benchmark", model=model,
                               max_new_tokens=max_new_tokens)
    cluster = write_cluster(
        directory / "cluster.toml", name="bench", settings=settings,
        addresses={r: ("127.0.0.1", p) for r, p in zip(ALL_ROLES, free_ports(5), strict=True)},
    )
    issue_certificates(cluster)
    client_args = ["--prompt", prompt, "--json"]
    if model != TINY:
        export_model(model, directory / "tokenizer")  # the model owner's export
        client_args += ["--tokenizer", os.fspath(directory / "tokenizer")]
    started = time.monotonic()
    roles = {
        role: Role(role, ["--cluster-file", os.fspath(cluster), "--output-json",
                          os.fspath(directory / f"{role_name(role)}.json"),
                          *(client_args if role == CLIENT else [])], started)
        for role in ALL_ROLES
    }
    memory = {}
    for role, process in roles.items():
        code, memory[role] = process.wait()
        if code != 0:
            sys.exit(f"{role_name(role)} failed ({code}):\n" +
                     "\n".join(line for _, line in process.lines))
    (result,) = json.loads(roles[CLIENT].stdout)["prompts"]
    stats = {role: json.loads((directory / f"{role_name(role)}.json").read_text())
             [role_name(role)]["stats"] for role in ALL_ROLES}
    tokens = range(1, len(result["steps"]))
    return {
        "model": model, "prompt_tokens": len(result["prompt_ids"]),
        "max_new_tokens": max_new_tokens, "text": result["text"],
        "max_frame_bytes": settings.max_frame_bytes,
        "time_to_first_token_seconds": roles[CLIENT].first("prompt pass"),
        "owner_loaded_seconds": roles[MODEL_OWNER].first("loaded in"),
        "setup_seconds_client": json.loads(roles[CLIENT].stdout)["setup"]["seconds"],
        "prompt_pass": {"seconds": result["steps"][0]["seconds"],
                        "mb_parties": pass_mb(stats, "p0.t0")},
        "per_token_seconds": [result["steps"][t]["seconds"] for t in tokens],
        "per_token_mb_parties": [pass_mb(stats, f"p0.t{t}") for t in tokens],
        "peak_memory_bytes": {role_name(r): m for r, m in memory.items()},
        "cpu_seconds_per_pass": {role_name(p): roles[p].cpu_per_pass() for p in PARTIES},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2", help="'smollm2' or 'tiny'")
    parser.add_argument("--prompt", default="The capital of France is")
    parser.add_argument("--max-new-tokens", type=int, default=4)
    reporting.add_out_argument(parser, "deployment")
    args = parser.parse_args()
    machine = reporting.machine()
    with tempfile.TemporaryDirectory() as directory:
        figures = run(args.model, args.prompt, args.max_new_tokens, Path(directory))
    print(f"{args.model}: {figures['prompt_tokens']}-token prompt -> {figures['text']!r}")
    print(f"time to first token from start: {figures['time_to_first_token_seconds']:.1f} s "
          f"(owner loaded its file at {figures['owner_loaded_seconds']:.1f} s; set-up as the "
          f"client saw it {figures['setup_seconds_client']:.1f} s)")
    mb = figures["prompt_pass"]["mb_parties"]
    print(f"prompt pass: {figures['prompt_pass']['seconds']:.2f} s, {mb['online']:.1f} MB "
          f"online + {mb['offline']:.1f} MB offline (three parties)")
    for t, (s, mb) in enumerate(zip(figures["per_token_seconds"],
                                    figures["per_token_mb_parties"], strict=True), 1):
        print(f"token {t}: {s:.2f} s, {mb['online']:.1f} MB online + {mb['offline']:.1f} MB "
              "offline (three parties)")
    for role, cpu in figures["cpu_seconds_per_pass"].items():
        if cpu is not None:
            process, loop = cpu["process"], cpu["event_loop"]
            print(f"{role} CPU: prompt pass {process[0]:.2f} s (event loop {loop[0]:.2f} s); "
                  f"per new token {reporting.span(process[1:], '.2f')} s (event loop "
                  f"{reporting.span(loop[1:], '.2f')} s)")
    for role, peak in figures["peak_memory_bytes"].items():
        print(f"peak memory {role}: {peak / 2**30:.2f} GiB")
    reporting.write(args.out, {"benchmark": "deployment", "machine": machine, **figures})


if __name__ == "__main__":
    main()
