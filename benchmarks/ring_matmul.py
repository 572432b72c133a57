"""Benchmark the local ring layer: exact uint64 matmul mod 2^64 and the AES-CTR PRG.

Prints a table and writes JSON (default ``benchmarks/results/ring_matmul.json``). Rates are
G multiply-adds/s (m*k*n per second) from the best of ``--repeats`` runs; "3 threads" is
three concurrent calls (three parties in one process), counted as 3*m*k*n over the wall time,
with ``ratio`` = wall time of the three / time of one (1.0 = perfect overlap, 3.0 = no gain
over running them one after another; with one call already using every core, ~3 is the
expected value and anything above it means oversubscription). "per CPU-s" is the single call's
rate per second of process CPU time, i.e. per busy core: robust when the machine is shared.

Methods: ``numpy`` (uint64 matmul, first shape only: it is slow); ``ring_matmul`` (this
package); ``kernel-1-core`` (its kernel in the calling thread only: three threads should take
~1.5x one call on 2 cores, which shows that the GIL is released); ``limb-split`` (the exact
float64-BLAS method that ringmatmul's docstring describes and rejects, kept here so that the
comparison can be re-run; OpenBLAS threads as configured by the environment). The machine
may be shared: the load average at start is recorded.

    python benchmarks/ring_matmul.py [--repeats N] [--out PATH]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import reporting

from puma_async.protocols.prg import Prg
from puma_async.protocols.ringmatmul import _kernel, ring_matmul

SHAPES = [(128, 576, 1536), (128, 768, 768), (8, 4096, 11008), (1, 576, 49152)]


def limb_split_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact 2-D a @ b mod 2^64 with 6 float64 GEMMs on 22/22/20-bit balanced limbs."""

    def limbs(x: np.ndarray) -> list[np.ndarray]:
        s = x.view(np.int64)
        l0 = (s << 42) >> 42
        r = (s - l0) >> 22
        l1 = (r << 42) >> 42
        l2 = (((r - l1) >> 22) << 44) >> 44
        return [v.astype(np.float64) for v in (l0, l1, l2)]

    k = a.shape[1]
    step = -(-k // -(-k // 2048))  # chunks of <= 2048: every limb product stays below 2^53
    out = np.zeros((a.shape[0], b.shape[1]), np.uint64)
    al, bl = limbs(a), limbs(b)
    for k0 in range(0, k, step):
        ks = slice(k0, k0 + step)
        for shift, pairs in enumerate([[(0, 0)], [(0, 1), (1, 0)], [(0, 2), (1, 1), (2, 0)]]):
            for i, j in pairs:
                prod = (al[i][:, ks] @ bl[j][ks]).astype(np.int64).view(np.uint64)
                out += prod << np.uint64(22 * shift)
    return out


def kernel_in_calling_thread(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """ring_matmul's kernel without the pool: one core per call, to show it releases the GIL."""
    out = np.empty((a.shape[0], b.shape[1]), np.uint64)
    _kernel(a, b, out, 0, b.shape[1])
    return out


def best_time(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of the fastest of ``repeats`` runs after a warm-up.

    CPU seconds give a per-core rate that stays meaningful when other processes share the
    machine (no SMT here: one thread per core).
    """
    fn()  # warm-up (page faults, caches)
    runs = []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        runs.append((time.perf_counter() - wall, time.process_time() - cpu))
    return min(runs)


def measure(
    fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
    a: np.ndarray,
    b: np.ndarray,
    pool: ThreadPoolExecutor,
    repeats: int,
) -> tuple[float, float, float]:
    """Best wall and CPU seconds of one call, and wall seconds of three concurrent calls."""
    one, cpu = best_time(lambda: fn(a, b), repeats)
    three, _ = best_time(lambda: list(pool.map(lambda _: fn(a, b), range(3))), repeats)
    return one, cpu, three


def bench_matmul(repeats: int) -> list[dict[str, object]]:
    rng = np.random.default_rng(0)
    rows: list[dict[str, object]] = []
    pool = ThreadPoolExecutor(3)
    for index, (m, k, n) in enumerate(SHAPES):
        a = rng.integers(0, 2**64, (m, k), dtype=np.uint64, endpoint=False)
        b = rng.integers(0, 2**64, (k, n), dtype=np.uint64, endpoint=False)
        want = ring_matmul(a, b)
        methods: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
            "ring_matmul": ring_matmul,
            "kernel-1-core": kernel_in_calling_thread,
            "limb-split": limb_split_matmul,
        }
        if index == 0:
            methods["numpy"] = np.matmul
        for name, fn in methods.items():
            assert (fn(a, b) == want).all(), f"{name} is not exact on {(m, k, n)}"
            one, cpu, three = measure(fn, a, b, pool, 1 if name == "numpy" else repeats)
            row = {
                "shape": [m, k, n],
                "method": name,
                "seconds_1": one,
                "gmacs_1": m * k * n / one / 1e9,
                "cpu_seconds_1": cpu,
                "gmacs_per_cpu_second": m * k * n / cpu / 1e9,
                "seconds_3_threads": three,
                "gmacs_3_threads": 3 * m * k * n / three / 1e9,
                "ratio_3_over_1": three / one,
            }
            rows.append(row)
            print(
                f"({m}x{k})@({k}x{n})  {name:13s} 1 call {row['gmacs_1']:6.2f} G/s  "
                f"3 threads {row['gmacs_3_threads']:6.2f} G/s  ratio {row['ratio_3_over_1']:.2f}  "
                f"per CPU-s {row['gmacs_per_cpu_second']:6.2f} G/s"
            )
    pool.shutdown()
    return rows


def bench_prg(repeats: int) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for key_size in (16, 32):
        prg = Prg(bytes(range(key_size)))
        for words in (1 << 14, 1 << 20, 1 << 23):
            seconds, _ = best_time(lambda prg=prg, words=words: prg.ring(b"bench", words), repeats)
            rate = 8 * words / seconds / 1e9
            rows.append({"aes_bits": 8 * key_size, "bytes": 8 * words, "gbytes_per_s": rate})
            print(f"PRG AES-{8 * key_size} ring({words} words = {8 * words} B)  {rate:6.2f} GB/s")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    reporting.add_out_argument(parser, "ring_matmul")
    args = parser.parse_args()
    result = {
        "machine": {
            **reporting.machine(),
            "numpy": np.__version__,
            "numba": numba.__version__,
            "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
            "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
        },
        "matmul": bench_matmul(args.repeats),
        "prg": bench_prg(args.repeats),
    }
    reporting.write(args.out, result)


if __name__ == "__main__":
    main()
