"""Exact matrix products over Z_2^64 (uint64, wrapping), fast enough for secure inference.

numpy's ``uint64`` matmul has no BLAS behind it (about 20 times slower than these kernels).
This module runs numba kernels instead (``nogil=True``, ``cache=True``, compiled once for
one explicit signature, read-only or writable C-contiguous inputs alike, when this module is
imported: several seconds the first time, then loaded from numba's on-disk cache):

- ``_dot_rows`` (m >= ``PANEL_MIN_ROWS``): the columns of ``b`` are packed, 32 at a time, into
  a row-major panel, then each output is a dot product of a row of ``a`` with a panel row,
  four rows of ``a`` at a time so that four accumulators stay in registers. LLVM vectorises
  the reductions with AVX-512VL ``vpmullq`` (256-bit: LLVM prefers ymm on these CPUs); this
  runs at about the multiplier's throughput (ymm ``vpmullq``: 4 lanes per 1.5 cycles).
  A panel holds at most 2048 rows of ``b`` (512 KiB, in L2); a longer k is cut into blocks
  whose partial sums accumulate in ``out``: with whole-k panels (12 MiB at k = 49152, a
  prompt's embedding) every four rows of ``a`` re-read the panel from memory.
- ``_axpy_rows`` (fewer rows): out[i, :] += a[i, p:p+4] @ b[p:p+4, :] on L1-resident
  accumulators (32 KiB: tiles of 4096 / r columns for passes of r <= 8 rows), which reads
  ``b`` once per eight rows and needs no packing (packing costs as much as the product when
  m is small); memory-bound for m = 1. Wide tiles and four rows of ``b`` per update matter
  when m is 1 or 2 (every new token's products): (2, 49152) @ (49152, 1152), the
  embedding, took 82 ms (one thread) with tiles of 512 columns and one row of ``b``, 46 ms
  with tiles of 2048 and 42 ms with four rows of ``b`` per update.

Both are exact by construction (wrapping 64-bit integer arithmetic, no range assumption).

Rates (multiply-adds per CPU-second, per shape) are measured by
``benchmarks/ring_matmul.py`` (results in ``benchmarks/results/``); products with one row are
memory-bound (8 bytes of ``b`` per multiply-add).

The alternative, an exact float64-BLAS limb split (3 balanced limbs of 22/22/20 bits, 6
DGEMMs with k chunked at 2048 so partial sums stay below 2^53), is not used: it matches these
kernels on large products at best, is several times slower for m <= 8, where the 3x larger
float copies of the weight dominate, and degrades when another process keeps a core busy
(OpenBLAS threads wait on each other). ``benchmarks/ring_matmul.py`` measures a plain-numpy
version of it beside these kernels.

Threads: each call is cut into blocks run on one process-wide pool of
``os.sched_getaffinity`` workers: of the batch; for one product with few rows of ``a``
(``_axpy_rows``), of the rows of ``b`` (each worker streams whole rows of ``b``, contiguous,
and the partial products are added; blocks of columns read every row in strided pieces: a
new token's embedding (2, 49152) @ (49152, 1152), two parties at once on two cores, best of
7 84 -> 63 ms, median 92 -> 80 ms); else of the output columns. One call thus uses every
core, and concurrent calls queue on the same workers instead of oversubscribing the cores.
Nothing here touches BLAS or its threads. Small products (< 2^20 multiply-adds) run inline
in the calling thread.

Where several callers make their products at the same time (all three parties in one
process: :func:`puma_async.runner.run_local`), :func:`shared_by` says how many: a product
is then cut into cores // callers blocks, and with no more cores than callers it runs whole
in its caller's thread. A new token's products come three at once, one per party, and
cutting each in two for the pool cost more than it gained: the hand-over to the pool and
back for each of the ~360 weight products, and two blocks per product queued behind the
other parties'. Three parties' (1, 1152) @ (1152, {960, 576, 3072}) and (1, 3072) @
(3072, 576) products, ten layers of distinct cold matrices, one thread per party: 92 ms on
the pool, 82 ms whole in each thread (one party alone: 40-47 ms on the pool, 52-54 ms
whole, so a party alone in its process keeps the pool). A SmolLM2 token in one process
(four alternating pairs of ``benchmarks/token_time.py --tokens 8``): means 1.18-1.21 s
against 1.26-1.31 s, the loop idle 0.32-0.33 s against 0.36 s, the workers' CPU 0.68 s
against 0.73-0.74 s.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import numpy as np
from numba import njit, types

from puma_async.workers import lower_this_thread

from .ring import RING_DTYPE, RingArray

PANEL_MIN_ROWS = 16
"""From this many rows of ``a`` on, ``_dot_rows`` (packed panels) is used, else ``_axpy_rows``."""

_PANEL = 32  # columns of b per packed panel (32 * k words; 147 KiB at k = 576)
_PANEL_DEPTH = 2048  # rows of b per packed panel at most (512 KiB: it stays in L2)
_ACC_WORDS = 4096  # accumulator words per pass in _axpy_rows (32 KiB): rows * tile columns
_AXPY_ROWS = 8  # rows of a per pass over a tile of b in _axpy_rows
_PARALLEL_MIN_WORK = 1 << 20  # multiply-adds below which the calling thread does it all

_IN = types.Array(types.uint64, 2, "C", readonly=True)  # also accepts writable arrays
_OUT = types.Array(types.uint64, 2, "C")
_SIGNATURE = (_IN, _IN, _OUT, types.int64, types.int64)


@njit(nogil=True)  # compiled (and cached) as part of _kernel
def _dot_rows(a: RingArray, b: RingArray, out: RingArray, j0: int, j1: int) -> None:
    m, k = a.shape
    panel = np.empty((_PANEL, min(k, _PANEL_DEPTH)), np.uint64)
    for jb in range(j0, j1, _PANEL):
        w = min(_PANEL, j1 - jb)
        out[:, jb : jb + w] = 0
        for kb in range(0, k, _PANEL_DEPTH):  # one block of k unless k > _PANEL_DEPTH
            kc = min(_PANEL_DEPTH, k - kb)
            for p in range(kc):
                row = b[kb + p, jb : jb + w]
                for jj in range(w):
                    panel[jj, p] = row[jj]
            i = 0
            while i + 4 <= m:
                a0 = a[i, kb : kb + kc]
                a1 = a[i + 1, kb : kb + kc]
                a2 = a[i + 2, kb : kb + kc]
                a3 = a[i + 3, kb : kb + kc]
                for jj in range(w):
                    s0 = out[i, jb + jj]
                    s1 = out[i + 1, jb + jj]
                    s2 = out[i + 2, jb + jj]
                    s3 = out[i + 3, jb + jj]
                    bj = panel[jj]
                    for p in range(kc):
                        y = bj[p]
                        s0 += a0[p] * y
                        s1 += a1[p] * y
                        s2 += a2[p] * y
                        s3 += a3[p] * y
                    out[i, jb + jj] = s0
                    out[i + 1, jb + jj] = s1
                    out[i + 2, jb + jj] = s2
                    out[i + 3, jb + jj] = s3
                i += 4
            for r in range(i, m):
                ar = a[r, kb : kb + kc]
                for jj in range(w):
                    s = out[r, jb + jj]
                    bj = panel[jj]
                    for p in range(kc):
                        s += ar[p] * bj[p]
                    out[r, jb + jj] = s


@njit(nogil=True)  # compiled (and cached) as part of _kernel
def _axpy_rows(a: RingArray, b: RingArray, out: RingArray, j0: int, j1: int) -> None:
    m, k = a.shape
    tile = _ACC_WORDS // max(1, min(_AXPY_ROWS, m))
    for t0 in range(j0, j1, tile):
        t1 = min(j1, t0 + tile)
        for i in range(0, m, _AXPY_ROWS):
            rows = min(_AXPY_ROWS, m - i)
            acc = np.zeros((rows, t1 - t0), np.uint64)
            p = 0
            while p + 4 <= k:  # four rows of b per update: a quarter of the accumulator traffic
                b0 = b[p, t0:t1]
                b1 = b[p + 1, t0:t1]
                b2 = b[p + 2, t0:t1]
                b3 = b[p + 3, t0:t1]
                for r in range(rows):
                    x0 = a[i + r, p]
                    x1 = a[i + r, p + 1]
                    x2 = a[i + r, p + 2]
                    x3 = a[i + r, p + 3]
                    acc_r = acc[r]
                    for j in range(t1 - t0):
                        acc_r[j] += x0 * b0[j] + x1 * b1[j] + x2 * b2[j] + x3 * b3[j]
                p += 4
            for q in range(p, k):
                bq = b[q, t0:t1]
                for r in range(rows):
                    x = a[i + r, q]
                    acc_r = acc[r]
                    for j in range(t1 - t0):
                        acc_r[j] += x * bq[j]
            out[i : i + rows, t0:t1] = acc


@njit(_SIGNATURE, nogil=True, cache=True)
def _kernel(a: RingArray, b: RingArray, out: RingArray, j0: int, j1: int) -> None:
    """out[:, j0:j1] = a @ b[:, j0:j1] mod 2^64 (2-D C-contiguous uint64 arrays)."""
    if a.shape[0] >= PANEL_MIN_ROWS:
        _dot_rows(a, b, out, j0, j1)
    else:
        _axpy_rows(a, b, out, j0, j1)


@cache
def _workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    """The process-wide kernel pool (a forked child gets its own: threads do not survive fork),
    its threads below the event loop's priority (:mod:`puma_async.workers`)."""
    pid = os.getpid()
    with _pools_lock:
        if pid not in _pools:
            _pools.clear()
            _pools[pid] = ThreadPoolExecutor(_workers(), thread_name_prefix="ring-matmul",
                                             initializer=lower_this_thread)
        return _pools[pid]


_callers = 1
"""How many callers make products at the same time in this process (:func:`shared_by`)."""


@contextlib.contextmanager
def shared_by(callers: int) -> Iterator[None]:
    """Within the block, ``callers`` callers (threads) make their products at the same time:
    each product is cut into at most cores // callers blocks for the pool, and runs whole in
    its caller's thread where that is one (module docstring). Restores the count before."""
    global _callers
    if callers < 1:
        raise ValueError(f"products need at least one caller, got {callers}")
    before, _callers = _callers, callers
    try:
        yield
    finally:
        _callers = before


def _cut(n: int, parts: int, align: int = 1) -> list[tuple[int, int]]:
    """[0, n) cut into at most ``parts`` nearly equal blocks, boundaries multiples of align."""
    step = max(align, -(-n // (parts * align)) * align)
    return [(lo, min(n, lo + step)) for lo in range(0, n, step)]


def _matmul_batch(a: RingArray, b: RingArray, out: RingArray, inline: bool = False) -> None:
    """out[t] = a[t] @ b[t] for C-contiguous (T, m, k), (T, k, n), (T, m, n) uint64 arrays
    (``inline``: all in the calling thread; else in up to cores // :func:`shared_by`'s
    callers blocks)."""
    count, m, k = a.shape
    n = b.shape[2]
    parts = (max(1, _workers() // _callers)
             if count * m * k * n >= _PARALLEL_MIN_WORK and not inline else 1)
    tasks: list[Callable[[], None]] = []
    if count == 1 and parts > 1 and m < PANEL_MIN_ROWS and k >= parts:
        _sum_of_row_blocks(a[0], b[0], out[0], parts)
        return
    if count % parts == 0 or count >= 4 * parts:  # whole products per task, balanced enough
        for lo, hi in _cut(count, parts):
            tasks.append(lambda lo=lo, hi=hi: _each(a, b, out, lo, hi))
    else:  # blocks of columns of every product
        for t in range(count):
            for j0, j1 in _cut(n, parts, align=_PANEL):
                tasks.append(lambda t=t, j0=j0, j1=j1: _kernel(a[t], b[t], out[t], j0, j1))
    if len(tasks) == 1:
        tasks[0]()
        return
    for future in [_pool().submit(task) for task in tasks]:
        future.result()


def _sum_of_row_blocks(a: RingArray, b: RingArray, out: RingArray, parts: int) -> None:
    """out = a @ b for few rows of a: each worker streams one block of rows of b (whole rows,
    contiguous: blocks of columns would read every row of b in strided pieces) against the
    matching columns of a, and the partial products are added (mod 2^64)."""
    m, n = out.shape
    blocks = _cut(b.shape[0], parts, align=4)  # _axpy_rows takes 4 rows of b at a time
    partials = [out, *(np.empty((m, n), RING_DTYPE) for _ in blocks[1:])]
    futures = [
        _pool().submit(_kernel, np.ascontiguousarray(a[:, lo:hi]), b[lo:hi], part, 0, n)
        for (lo, hi), part in zip(blocks, partials, strict=True)
    ]
    for future in futures:
        future.result()
    for part in partials[1:]:
        out += part


def _each(a: RingArray, b: RingArray, out: RingArray, lo: int, hi: int) -> None:
    for t in range(lo, hi):
        _kernel(a[t], b[t], out[t], 0, b.shape[2])


def batch_shape(shape_a: tuple[int, ...], shape_b: tuple[int, ...]) -> tuple[int, ...]:
    """The batch shape of a product of operands of shapes (..., m, k) and (..., k, n): their
    leading dimensions broadcast (equal ones, the usual case, without numpy's broadcasting)."""
    if shape_a[:-2] == shape_b[:-2]:
        return shape_a[:-2]
    return np.broadcast_shapes(shape_a[:-2], shape_b[:-2])


def ring_matmul(a: RingArray, b: RingArray, *, inline: bool = False) -> RingArray:
    """a @ b mod 2^64 for uint64 arrays (..., m, k) @ (..., k, n), numpy broadcasting.
    ``inline``: in the calling thread only, not on the pool (background work, which must not
    queue before the products that something waits for).

    Exact for all inputs. Both operands need at least two dimensions. A 2-D ``b`` against a
    batched ``a`` is one (batch * m, k) @ (k, n) product; otherwise operands whose batch
    dimensions broadcast are materialised at the full batch shape (copies). The kernels
    release the GIL, so concurrent calls from several threads overlap (see the module
    docstring for the costs).
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.dtype != RING_DTYPE or b.dtype != RING_DTYPE:
        raise TypeError(f"ring_matmul needs uint64 operands, got {a.dtype} and {b.dtype}")
    if a.ndim < 2 or b.ndim < 2:
        raise ValueError(f"ring_matmul needs operands with >= 2 dimensions: {a.shape}, {b.shape}")
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"ring_matmul shape mismatch: {a.shape} @ {b.shape}")
    batch = batch_shape(a.shape, b.shape)
    m, k = a.shape[-2:]
    n = b.shape[-1]
    if b.ndim == 2:  # fold the batch of a into its rows
        a3 = np.ascontiguousarray(a).reshape(1, math.prod(batch) * m, k)
        b3 = np.ascontiguousarray(b).reshape(1, k, n)
    else:
        count = math.prod(batch)
        a3, b3 = (np.ascontiguousarray(x if x.shape[:-2] == batch
                                       else np.broadcast_to(x, (*batch, *x.shape[-2:]))
                                       ).reshape(count, *x.shape[-2:]) for x in (a, b))
    out = np.empty((a3.shape[0], a3.shape[1], n), RING_DTYPE)
    _matmul_batch(a3, b3, out, inline)
    return out.reshape((*batch, m, n))
