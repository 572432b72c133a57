"""What every benchmark records besides its figures: where it writes them, the machine, and how
busy the machine was while it ran (figures scale with that on a shared host).

Benchmarks run as scripts (``python benchmarks/NAME.py``), so they import this as ``reporting``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
QUIET_LOOP_SECONDS = 0.36
"""The 10^7-step Python loop of :func:`python_loop_seconds` on this machine class when quiet."""


def add_out_argument(parser: argparse.ArgumentParser, name: str) -> None:
    """``--out PATH``: where the JSON goes (default ``benchmarks/results/<name>.json``)."""
    parser.add_argument("--out", type=Path, default=RESULTS / f"{name}.json",
                        help=f"JSON output (default: benchmarks/results/{name}.json)")


def python_loop_seconds() -> float:
    """Seconds of a 10^7-step pure-Python loop (best of 3): how fast this shared machine is
    right now, since Python's speed bounds the small operations."""
    runs = []
    for _ in range(3):
        start = time.perf_counter()
        total = 0
        for i in range(10**7):
            total += i
        runs.append(time.perf_counter() - start)
    return min(runs)


MEMORY_PROBE_BYTES = 256 << 20
"""Bytes of each weight-like matrix :func:`memory_read_gbps` reads: past what this host's
caches keep for one process (it reads three in turn)."""


def memory_read_gbps() -> float | None:
    """GB/s at which a one-row ring product (:func:`~puma_async.protocols.ringmatmul.
    ring_matmul`, its worker threads) reads a cold 256 MiB matrix, best of 3: how fast this
    host's memory is right now. A new token's weight products read about 7.8 GB of shares
    (SmolLM2, three parties), memory-bound; the host's memory speed moves from hour to hour
    independently of its Python speed (10-20% between two days of one host). None
    where the kernel's numba is not installed (``benchmarks/measure_spu.py``'s environment)."""
    import numpy as np

    try:
        from puma_async.protocols.ringmatmul import ring_matmul
    except ImportError:
        return None

    cols = 2048
    rows = MEMORY_PROBE_BYTES // (8 * cols)
    matrices = [np.full((rows, cols), k + 1, dtype=np.uint64) for k in range(3)]  # real pages
    x = np.ones((1, rows), dtype=np.uint64)
    ring_matmul(x[:, :64], matrices[0][:64])  # compiled, threads started; nothing big read
    runs = []
    for matrix in matrices:
        start = time.perf_counter()
        ring_matmul(x, matrix)
        runs.append(time.perf_counter() - start)
    return MEMORY_PROBE_BYTES / min(runs) / 1e9


def machine() -> dict[str, Any]:
    """The host's facts and its speeds now (printed too, so a slow run explains itself)."""
    speed, memory = python_loop_seconds(), memory_read_gbps()
    print(f"machine speed: a 10^7-step Python loop takes {speed:.2f} s (quiet: "
          f"~{QUIET_LOOP_SECONDS} s; slower means a busy host and proportionally slower figures); "
          + (f"a one-row ring product reads {memory:.1f} GB/s of a cold matrix"
             if memory is not None else "no memory check (the ring kernel needs numba)"))
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "python_loop_1e7_seconds": speed,
        "memory_read_gbps": memory,
    }


def span(values: Sequence[float], fmt: str) -> str:
    """The values' min-max in ``fmt`` (one value when both ends format alike; "-" for none,
    as in a run without new tokens)."""
    if not values:
        return "-"
    low, high = format(min(values), fmt), format(max(values), fmt)
    return low if low == high else f"{low}-{high}"


def spu_figures(path: Path = RESULTS / "spu.json") -> dict[str, Any] | None:
    """SPU 0.9.5's figures as ``benchmarks/measure_spu.py`` measured them on this host (None when
    ``path`` is absent): its model workloads (``smollm2_forward_5_tokens``,
    ``llama7b_block_8_tokens``, each left out when that run was skipped) and ``ops`` by name,
    with ``source`` (the file) and ``date`` (of the run) for the benchmarks to quote."""
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    figures: dict[str, Any] = {"source": f"benchmarks/results/{path.name}",
                               "date": data["date"], "spu_version": data["spu_version"]}
    for key in ("smollm2_forward_5_tokens", "llama7b_block_8_tokens"):
        if "seconds" in data.get(key, {}):
            figures[key] = data[key]
    figures["ops"] = data.get("ops", {})
    return figures


def spu_op(figures: dict[str, Any] | None, benchmark: str) -> dict[str, Any] | None:
    """SPU's figures for the op set beside ``benchmarks/ops.py``'s ``benchmark`` (None if none),
    with ``source`` and ``date``."""
    for op in (figures or {}).get("ops", {}).values():
        if benchmark in op["ops_benchmarks"]:
            return {"source": figures["source"], "date": figures["date"], **op}
    return None


def spu_summary(figures: dict[str, Any] | None, key: str) -> str:
    """``SPU (source, date): seconds, MB, messages`` for a workload, or why there is none."""
    if figures is None:
        return "SPU: not measured (python benchmarks/measure_spu.py, in SPU's venv)"
    run = figures.get(key) or spu_op(figures, key)
    if run is None:
        return f"SPU: {key} not in {figures['source']}"
    return (f"SPU {figures['spu_version']} ({figures['source']}, {figures['date']}): "
            f"{run['seconds']:.3g} s, {run['bytes_all_parties'] / 1e6:.3g} MB all parties, "
            f"{run['send_actions_max']} messages per party (max)"
            + (f", peak {run['peak_memory_bytes'] / 1e9:.1f} GB"
               if "peak_memory_bytes" in run else ""))


def write(path: Path, results: dict[str, Any]) -> None:
    """Write ``results`` as indented JSON to ``path`` (making its directory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {path}")
