"""Local work off the event loop: numpy releases the GIL, so the three parties of one process
(and the liveness watchdog) keep running while a large array is processed in a worker thread.

Every pure local step on long arrays goes through :func:`offload` (share arithmetic, PRG
draws, bit packing, the carry trees' kernels), so that a party's event loop looks at its
timers and I/O often even in a long prompt's pass: its heartbeats leave on time and a live
peer is not declared dead (:mod:`puma_async.liveness`; ``benchmarks/stalls.py`` measures the
stretches). Only the local work moves: messages and PRG labels (drawn on the loop, in program
order) stay the same. The worker threads run below the loop's CPU priority
(:mod:`puma_async.workers`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from puma_async.workers import in_thread

T = TypeVar("T")

OFFLOAD_MIN_ELEMENTS = 1 << 16
"""Local work on at least this many elements runs in a worker thread (numpy releases the GIL),
so that the three parties of one process keep both cores busy."""


async def offload(fn: Callable[..., T], *args: Any, size: int) -> T:
    """fn(*args), in a worker thread when ``size`` (elements) makes that worth it."""
    if size >= OFFLOAD_MIN_ELEMENTS:
        return await in_thread(fn, *args)
    return fn(*args)


__all__ = ["OFFLOAD_MIN_ELEMENTS", "offload"]
