"""Fuzz benchmark: a million hostile inputs through the decoder, counted by outcome.

Runs the generators of ``tests/fuzz/inputs.py`` (random bytes, mutated frames, wrong-typed
fields, deep nesting, huge declared lengths and shapes, memory amplifiers) over consecutive
seeds, decoding each input as a frame and, if that fails, as a message, with tracemalloc on.
Prints, per generator: the inputs, their outcomes (a valid frame or message, or the typed
error), the untyped exceptions and hangs (both must be 0), the worst ratio of peak decode
memory to the decode budget (``max(4 x size, 2 MiB)``, must be <= 1) and to the input's size
(for inputs of 512 KiB and more, where the fixed costs of small inputs do not dominate), and
the worst CPU time of one input.

Usage: ``python benchmarks/fuzz.py [--inputs N] [--seed S] [--out PATH]``; writes JSON
(default ``benchmarks/results/fuzz.json``). Exits 1 if an input broke the invariant.
"""

from __future__ import annotations

import argparse
import collections
import random
import signal
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import reporting

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fuzz.inputs import GENERATORS, check

from puma_async import codec

SHARES = {  # fraction of the inputs each generator makes (the costly ones are rarer)
    "random_bytes": 0.30, "mutated_frame": 0.30, "wrong_types": 0.20, "deep_nesting": 0.08,
    "huge_declarations": 0.118, "amplifiers": 0.002,
}
HANG_SECONDS = 10.0
LARGE = 512 << 10


class Hang(BaseException):
    """One input took longer than HANG_SECONDS (raised by the interval timer)."""


def _alarm(signum: int, frame: object) -> None:
    raise Hang


def run_generator(name: str, count: int, first_seed: int) -> dict[str, Any]:
    """Decode ``count`` inputs of generator ``name``; its figures."""
    make = GENERATORS[name]
    outcomes: collections.Counter[str] = collections.Counter()
    failures: list[str] = []
    worst_budget = worst_large = worst_cpu = 0.0
    largest = 0
    for seed in range(first_seed, first_seed + count):
        data = make(random.Random(seed))
        largest = max(largest, len(data))
        start = time.process_time()
        signal.setitimer(signal.ITIMER_REAL, HANG_SECONDS)
        try:
            outcome = check(data)
        except Hang:
            outcomes["hang"] += 1
            failures.append(f"{name} seed {seed}: hang")
            continue
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        worst_cpu = max(worst_cpu, time.process_time() - start)
        outcomes[outcome.kind] += 1
        if not outcome.typed:
            failures.append(f"{name} seed {seed}: {outcome.kind}")
        worst_budget = max(worst_budget, outcome.peak_bytes / codec.decode_budget(len(data)))
        if len(data) >= LARGE:
            worst_large = max(worst_large, outcome.peak_bytes / len(data))
    return {
        "inputs": count, "first_seed": first_seed, "outcomes": dict(outcomes),
        "untyped": sum(n for kind, n in outcomes.items() if kind.startswith("untyped:")),
        "hangs": outcomes["hang"], "largest_input_bytes": largest,
        "worst_peak_over_budget": worst_budget, "worst_peak_over_size_512k_plus": worst_large,
        "worst_cpu_seconds": worst_cpu, "failures": failures[:20],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--inputs", type=int, default=1_000_000, help="inputs in total")
    parser.add_argument("--seed", type=int, default=0, help="first seed of every generator")
    reporting.add_out_argument(parser, "fuzz")
    args = parser.parse_args()
    machine = reporting.machine()
    signal.signal(signal.SIGALRM, _alarm)
    tracemalloc.start()
    results: dict[str, Any] = {}
    started = time.perf_counter()
    header = (f"{'generator':<18} {'inputs':>8} {'untyped':>7} {'hangs':>5} "
              f"{'peak/budget':>11} {'peak/size':>9} {'cpu ms':>7}  outcomes")
    print(header)
    for name, share in SHARES.items():
        figures = run_generator(name, max(1, round(args.inputs * share)), args.seed)
        results[name] = figures
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(figures["outcomes"].items()))
        print(f"{name:<18} {figures['inputs']:>8} {figures['untyped']:>7} "
              f"{figures['hangs']:>5} {figures['worst_peak_over_budget']:>11.3f} "
              f"{figures['worst_peak_over_size_512k_plus']:>9.2f} "
              f"{figures['worst_cpu_seconds'] * 1e3:>7.1f}  {outcomes}", flush=True)
    tracemalloc.stop()
    totals = {
        "inputs": sum(r["inputs"] for r in results.values()),
        "untyped": sum(r["untyped"] for r in results.values()),
        "hangs": sum(r["hangs"] for r in results.values()),
        "worst_peak_over_budget": max(r["worst_peak_over_budget"] for r in results.values()),
        "worst_peak_over_size_512k_plus": max(
            r["worst_peak_over_size_512k_plus"] for r in results.values()
        ),
        "seconds": time.perf_counter() - started,
    }
    print(f"total: {totals['inputs']} inputs in {totals['seconds']:.0f} s, "
          f"{totals['untyped']} untyped exceptions, {totals['hangs']} hangs, worst peak decode "
          f"memory {totals['worst_peak_over_budget']:.3f} of the budget "
          f"({totals['worst_peak_over_size_512k_plus']:.2f}x the size for inputs >= 512 KiB)")
    for figures in results.values():
        for failure in figures["failures"]:
            print(f"FAILED {failure}")
    reporting.write(args.out, {
        "benchmark": "fuzz",
        "settings": {"inputs": args.inputs, "seed": args.seed, "shares": SHARES,
                     "hang_seconds": HANG_SECONDS,
                     "budget": "decode_budget(n) = max(4 n, 2 MiB)"},
        "machine": machine,
        "results": results,
        "totals": totals,
    })
    if totals["untyped"] or totals["hangs"] or totals["worst_peak_over_budget"] > 1:
        sys.exit(1)


if __name__ == "__main__":
    main()
