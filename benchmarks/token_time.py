"""Where a new token's time goes with all five roles in one process: the event loop's CPU,
the worker threads' CPU, and the loop's idle time.

All five roles share one event loop (one thread): a token's seconds are that thread's CPU
(every role's Python, and the local work it keeps) plus the time it waits, with nothing
else to run, for worker threads (the large ring products, which use the other core). This
script runs one SmolLM2 session as ``python -m puma_async.local`` runs it ("The capital of
France is", balanced, greedy) and, between consecutive new tokens, reads every thread's CPU
time from ``/proc/self/task`` (Linux) and the loop's time in its waits for I/O (a Trio
instrument on those waits only: no per-step cost). Per new token it writes:

- ``seconds``: the client's wall time of the token;
- ``loop_cpu_seconds``: the event loop thread's CPU;
- ``workers_cpu_seconds``: every other thread's CPU (ring products, PRG draws and other
  large local steps in worker threads, Trio's thread pool);
- ``loop_idle_seconds``: the loop's time blocked in waits for I/O (nothing ready to run).

``--recorded`` runs the session as ``benchmarks/llama.py``'s accounting run does (every
message recorded, a step timer on every task step), which shows what that instrumentation
costs a token. ``--tiny``: the tiny model (random weights), to check the script itself.

    python benchmarks/token_time.py [--tokens N] [--recorded] [--tiny] [--out PATH]
"""

from __future__ import annotations

import argparse
import itertools
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import reporting
import trio

from puma_async.liveness import StepTimer
from puma_async.session import Progress, in_process_settings, run_session

PROMPT = "The capital of France is"
_TICKS = os.sysconf("SC_CLK_TCK")


def thread_cpu(loop_thread: int) -> tuple[float, float]:
    """CPU seconds so far of the loop's thread and of every other thread of this process."""
    loop = others = 0.0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # the thread ended since the listing
            continue
        seconds = (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime
        if int(tid) == loop_thread:
            loop += seconds
        else:
            others += seconds
    return loop, others


class IdleClock(trio.abc.Instrument):
    """The event loop's total time in its waits for I/O."""

    def __init__(self) -> None:
        self.idle = 0.0
        self._started = 0.0

    def before_io_wait(self, timeout: float) -> None:
        self._started = time.perf_counter()

    def after_io_wait(self, timeout: float) -> None:
        self.idle += time.perf_counter() - self._started


def measure(weights: Any, prompt: list[int], tokens: int, recorded: bool) -> list[dict[str, float]]:
    """One session; per new token its seconds and the split above."""
    idle, loop_thread = IdleClock(), threading.get_native_id()
    marks: list[tuple[float, float, float, float]] = []

    def progress(event: Progress) -> None:  # runs in the loop's thread
        if event.kind == "token":
            marks.append((time.perf_counter(), *thread_cpu(loop_thread), idle.idle))

    options: dict[str, Any] = {"instruments": [idle]}
    if recorded:
        options = {"instruments": [idle, StepTimer()], "record_messages": True}
    run_session(weights, [prompt], progress=progress,
                settings=in_process_settings(weights.config, tokens + 1), **options)
    # marks[0] ends the prompt pass; each later mark ends a new token
    return [{"seconds": b[0] - a[0], "loop_cpu_seconds": b[1] - a[1],
             "workers_cpu_seconds": b[2] - a[2], "loop_idle_seconds": b[3] - a[3]}
            for a, b in itertools.pairwise(marks)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=8, help="new tokens measured (default 8)")
    parser.add_argument("--recorded", action="store_true",
                        help="record every message and time every task step (llama.py's "
                             "accounting run)")
    parser.add_argument("--tiny", action="store_true", help="the tiny model, random weights")
    reporting.add_out_argument(parser, "token_time")
    args = parser.parse_args()
    if args.tokens < 1:
        parser.error("--tokens must be at least 1")
    if args.tiny:
        from puma_async.model import TinyTokenizer, random_weights, tiny_config

        weights, tokenizer = random_weights(tiny_config(), seed=0), TinyTokenizer()
    else:
        from puma_async.session.models import SMOLLM2, resolve_model

        source = resolve_model(SMOLLM2)
        weights, tokenizer = source.load_weights(), source.load_tokenizer()
    results: dict[str, Any] = {"machine": reporting.machine(),
                               "model": "tiny" if args.tiny else "smollm2",
                               "prompt": PROMPT, "recorded": args.recorded}
    per_token = measure(weights, tokenizer.encode(PROMPT), args.tokens, args.recorded)
    results["new_tokens"] = per_token
    results["mean"] = {key: float(np.mean([t[key] for t in per_token])) for key in per_token[0]}
    mean = results["mean"]
    print(f"{len(per_token)} new tokens ({'recorded' if args.recorded else 'as local runs'}): "
          f"{reporting.span([t['seconds'] for t in per_token], '.2f')} s, mean "
          f"{mean['seconds']:.2f} s; event loop CPU {mean['loop_cpu_seconds']:.2f} s, worker "
          f"threads' CPU {mean['workers_cpu_seconds']:.2f} s, loop idle "
          f"{mean['loop_idle_seconds']:.2f} s per token")
    reporting.write(Path(args.out), results)


if __name__ == "__main__":
    main()
