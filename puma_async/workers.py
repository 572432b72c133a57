"""Worker threads below the event loop: lower CPU priority, so that heartbeats leave on time.

Every call of the package into a worker thread goes through :func:`in_thread` (large local
steps through :func:`puma_async.protocols.offload.offload`, the encoding of large frames,
the copying of received pieces, the embedding's products, the model owner's shares), and the
ring products' kernel pool starts its threads with :func:`lower_this_thread`. On Linux each
such thread runs :data:`WORKER_NICENESS` steps nicer than the process, so the kernel gives a
core to the event-loop thread whenever it is ready to run.

Why: a long prompt's pass keeps both cores busy with worker threads (a 400-token SmolLM2
prompt's embedding alone is 45 G ring multiply-adds per party). With equal priorities, three
parties' kernels on a 2-core host left each event loop a small share of a core: its batches
of small steps, a few seconds of CPU, took up to 20 s of wall time, and with ``dead_after =
10`` a live party was declared dead (five-process run, stacks sampled: the loop thread was
running its own steps, not waiting for the GIL). Elsewhere than Linux the priorities stay.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import trio

T = TypeVar("T")

WORKER_NICENESS = 10
"""How much nicer than its process a worker thread runs (CFS weight about 1/9 of the loop's)."""

_MAX_NICE = 19
_thread = threading.local()


def lower_this_thread() -> None:
    """Make the calling thread :data:`WORKER_NICENESS` nicer than its process, once (Linux:
    a thread's own nice value; elsewhere nothing). Raising niceness needs no privilege; where
    a sandbox refuses it anyway, the thread runs on at the process's priority."""
    if getattr(_thread, "lowered", False):
        return
    _thread.lowered = True
    if sys.platform != "linux":
        return
    nice = os.getpriority(os.PRIO_PROCESS, os.getpid()) + WORKER_NICENESS
    with contextlib.suppress(OSError):  # a sandbox that forbids it: the process's priority
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), min(nice, _MAX_NICE))


def _lowered(fn: Callable[..., T], *args: Any) -> T:
    lower_this_thread()
    return fn(*args)


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """fn(*args) in one of trio's worker threads, below the event loop's priority."""
    return await trio.to_thread.run_sync(_lowered, fn, *args)


__all__ = ["WORKER_NICENESS", "in_thread", "lower_this_thread"]
