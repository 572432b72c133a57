"""The event loop's time per scope: which protocols' Python a pass spends its time in.

With all roles in one process a pass is mostly the event loop's CPU (``benchmarks/
token_time.py``), spread over thousands of task steps of every protocol. :class:`ScopeTimer`
is a Trio instrument that times every task step and adds it to the phase and scope the task
was in when the step ended (:data:`~puma_async.context.CURRENT_STEP`: the step whose
:meth:`~puma_async.context.Context.scope` it entered last), so that the time a component
costs can be read beside its bytes and rounds. A step that leaves one scope and enters another
counts wholly to the second; steps outside any scope (the runtime's own tasks) count to
``("", "")``. Timing costs the loop two clock readings and a dictionary update per step.
"""

from __future__ import annotations

import time
from collections import Counter

import trio

from puma_async.context import CURRENT_STEP


class ScopeTimer(trio.abc.Instrument):
    """``seconds[(phase, scope)]``: the wall time of the task steps that ended there (the
    loop's thread runs one step at a time, so this is the loop's time)."""

    def __init__(self) -> None:
        self.seconds: Counter[tuple[str, str]] = Counter()
        self._started = 0.0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._started = time.perf_counter()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        took = time.perf_counter() - self._started
        step = task.context.get(CURRENT_STEP)
        key = ("", "") if step is None else (step.phase_name, step.scope_name)
        self.seconds[key] += took


__all__ = ["ScopeTimer"]
