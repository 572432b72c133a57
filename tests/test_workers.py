"""Worker threads run below the event loop's CPU priority (:mod:`puma_async.workers`), so a
busy pass's kernels do not starve the loop that sends the heartbeats."""

from __future__ import annotations

import os
import sys
import threading

import numpy as np
import pytest
import trio

from puma_async.protocols.offload import OFFLOAD_MIN_ELEMENTS, offload
from puma_async.protocols.ringmatmul import _pool
from puma_async.workers import WORKER_NICENESS, in_thread, lower_this_thread

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice values")


def _own_nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def _expected() -> int:
    return min(os.getpriority(os.PRIO_PROCESS, os.getpid()) + WORKER_NICENESS, 19)


@linux_only
def test_offloaded_steps_run_nicer_than_the_loop() -> None:
    async def main() -> tuple[int, int, int, int]:
        big = await offload(_own_nice, size=OFFLOAD_MIN_ELEMENTS)
        small = await offload(_own_nice, size=1)  # inline: the loop's own thread
        again = await in_thread(_own_nice)  # a reused thread stays lowered, once
        return big, small, again, _own_nice()

    big, small, again, loop = trio.run(main)
    assert big == again == _expected()
    assert small == loop == os.getpriority(os.PRIO_PROCESS, os.getpid())


@linux_only
def test_the_kernel_pool_runs_nicer_than_the_loop() -> None:
    assert _pool().submit(_own_nice).result() == _expected()


def test_offloaded_results_are_the_functions() -> None:
    async def main() -> np.ndarray:
        return await offload(np.add, np.arange(4), 1, size=OFFLOAD_MIN_ELEMENTS)

    assert trio.run(main).tolist() == [1, 2, 3, 4]


@linux_only
def test_a_refused_priority_change_leaves_the_work_running(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> None:
        raise PermissionError("setpriority refused")

    monkeypatch.setattr(os, "setpriority", refuse)

    def fresh_thread() -> int:
        result: list[int] = []
        thread = threading.Thread(target=lambda: (lower_this_thread(), result.append(1)))
        thread.start()
        thread.join()
        return len(result)

    assert fresh_thread() == 1
