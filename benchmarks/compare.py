"""Benchmark secure comparisons: 10^6 ``less_than`` (and ``equal``), three parties, one process.

For each function: wall seconds of the whole ``evaluate`` (key set-up, the client sharing two
vectors, the comparisons, the opening to the client) and of the comparisons alone (first
party in to last party out), best of ``--repeats``; bytes sent by each party inside the
function and all together; rounds (critical path); wrong results against numpy. Inputs mix
uniform values in [-2^62, 2^62] with equal and off-by-one pairs. Beside it, the reference
figures of PUMA's SPU 0.9.5 (ABY3, 3 parties in one process, this machine class) for 10^6
comparisons: 1.62 s, 108 MB in all, 2 wrong results. The machine may be shared: the load
average at start is recorded.

    python benchmarks/compare.py [--n N] [--repeats R] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

from puma_async.protocols import compare
from puma_async.protocols.evaluate import evaluate
from puma_async.protocols.shares import AShare
from puma_async.roles import PARTIES
from puma_async.runtime import Context

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "compare.json"
SPU_REFERENCE = {"seconds": 1.62, "bytes_all_parties": 108e6, "wrong": 2, "n": 10**6}

Comparison = Callable[[Context, AShare, AShare], Awaitable[AShare]]


def _inputs(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.integers(-(2**62), 2**62, n, endpoint=True)
    y = rng.integers(-(2**62), 2**62, n, endpoint=True)
    y[::4] = x[::4]
    y[1::4] = x[1::4] + 1
    return x, y


def _measure(fn: Comparison, x: np.ndarray, y: np.ndarray, want: np.ndarray,
             repeats: int) -> dict[str, Any]:
    marks: list[float] = []

    async def timed(ctx: Context, a: AShare, b: AShare) -> AShare:
        marks.append(time.perf_counter())
        out = await fn(ctx, a, b)
        marks.append(time.perf_counter())
        return out

    runs = []
    for _ in range(repeats):
        marks.clear()
        ev = evaluate(timed, x, y)
        runs.append((ev.seconds, max(marks) - min(marks), ev))
    seconds, op_seconds, ev = min(runs, key=lambda r: r[1])
    costs = {p: ev.cost(p) for p in PARTIES}
    total = sum(c.bytes_sent for c in costs.values())
    return {
        "n": x.size,
        "seconds_evaluate": seconds,
        "seconds_op": op_seconds,
        "bytes_sent_by_party": {str(p): c.bytes_sent for p, c in costs.items()},
        "bytes_all_parties": total,
        "bytes_per_element_per_party": total / 3 / x.size,
        "rounds": max(c.rounds for c in costs.values()),
        "wrong": int(np.count_nonzero(ev.outputs[0].view(np.int64) != want)),
    }


def bench_comparisons(n: int = 10**6, repeats: int = 3) -> dict[str, Any]:
    """Measure ``less_than`` and ``equal`` on n pairs; the SPU reference beside them."""
    x, y = _inputs(n)
    return {
        "load_average_at_start": os.getloadavg()[0],
        "spu_0.9.5_reference": SPU_REFERENCE,
        "less_than": _measure(compare.less_than, x, y, (x < y).astype(np.int64), repeats),
        "equal": _measure(compare.equal, x, y, (x == y).astype(np.int64), repeats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10**6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    result = bench_comparisons(args.n, args.repeats)
    ref = result["spu_0.9.5_reference"]
    print(f"n = {args.n}, load average at start {result['load_average_at_start']:.2f}")
    print(f"{'function':<12}{'evaluate s':>11}{'op s':>8}{'MB (all)':>10}{'B/elt/party':>13}"
          f"{'rounds':>8}{'wrong':>7}")
    for name in ("less_than", "equal"):
        r = result[name]
        print(f"{name:<12}{r['seconds_evaluate']:>11.3f}{r['seconds_op']:>8.3f}"
              f"{r['bytes_all_parties'] / 1e6:>10.2f}{r['bytes_per_element_per_party']:>13.2f}"
              f"{r['rounds']:>8}{r['wrong']:>7}")
    print(f"{'SPU 0.9.5':<12}{ref['seconds']:>11.3f}{'':>8}{ref['bytes_all_parties'] / 1e6:>10.2f}"
          f"{ref['bytes_all_parties'] / 3 / ref['n']:>13.2f}{'':>8}{ref['wrong']:>7}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
