"""Where a new token's time goes with all five roles in one process: the event loop's CPU,
the worker threads' CPU, and the loop's idle time.

All five roles share one event loop (one thread): a token's seconds are that thread's CPU
(every role's Python, and the local work it keeps) plus the time it waits, with nothing
else to run, for worker threads (the large ring products, which use the other core). This
script runs one SmolLM2 session as ``python -m puma_async.local`` runs it ("The capital of
France is", balanced, greedy; each measured token makes the next one's offline material, as
all but a session's last do) and, between consecutive new tokens, reads the loop thread's CPU
time (``time.thread_time`` in the loop's thread), the whole process's (``time.process_time``)
and the loop's time in its waits for I/O (a Trio instrument on those waits only: no per-step
cost). Per new token it writes:

- ``seconds``: the client's wall time of the token;
- ``loop_cpu_seconds``: the event loop thread's CPU;
- ``workers_cpu_seconds``: the process's CPU less the loop thread's (ring products, PRG draws
  and other large local steps in worker threads, Trio's thread pool);
- ``loop_idle_seconds``: the loop's time blocked in waits for I/O (nothing ready to run).

``--components`` also times every task step (:class:`~puma_async.scopetime.ScopeTimer`) and
writes, per component of a layer (its scope with the pass and the layer left out:
``attn.norm``, ``mlp.silu``, ...; offline work apart), the loop's seconds per token: which
protocols' Python a token is made of. Timing every step slows the loop a little (two clock
readings and a dictionary update per step), so the other figures of such a run are high.

``--timeline`` also records when the loop works and when it waits: per new token, in windows of
20 ms from its start (the first 160 ms) and to its end (the last 100 ms), and over the rest,
the loop's seconds in online steps, in offline steps (the next pass's material) and idle
(blocked: waiting for worker threads). It shows where a token waits: for the new row's
embedding at its start (P_1's and P_2's products on arrival, beside the offline material's
steps), for each layer's weight products, and for the head's product at its end.

``--recorded`` runs the session as ``benchmarks/llama.py``'s accounting run does (every
message recorded, a step timer on every task step), which shows what that instrumentation
costs a token. ``--tiny``: the tiny model (random weights), to check the script itself.

    python benchmarks/token_time.py [--tokens N] [--components] [--timeline] [--recorded]
                                    [--tiny] [--out PATH]
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import reporting
import trio

from puma_async.context import CURRENT_STEP, OFFLINE_PHASE
from puma_async.liveness import StepTimer
from puma_async.protocols.llama import COMPONENTS
from puma_async.scopetime import ScopeTimer
from puma_async.session import Progress, in_process_settings, run_session

PROMPT = "The capital of France is"


def thread_cpu() -> tuple[float, float]:
    """CPU seconds so far of the calling thread (the loop's, from ``progress``) and of every
    other thread of this process, ended ones included."""
    loop = time.thread_time()
    return loop, time.process_time() - loop


class IdleClock(trio.abc.Instrument):
    """The event loop's total time in its waits for I/O; with ``keep``, also each wait's
    (start, end), in time order (``waits``: a :class:`Timeline`'s)."""

    def __init__(self, keep: bool = False) -> None:
        self.idle = 0.0
        self.waits: list[tuple[float, float]] | None = [] if keep else None
        self._started = 0.0

    def before_io_wait(self, timeout: float) -> None:
        self._started = time.perf_counter()

    def after_io_wait(self, timeout: float) -> None:
        now = time.perf_counter()
        self.idle += now - self._started
        if self.waits is not None:
            self.waits.append((self._started, now))


def _overlap(lo: float, hi: float, start: float, end: float) -> float:
    """The seconds [lo, hi) and [start, end) share."""
    return max(0.0, min(hi, end) - max(lo, start))


class Timeline(trio.abc.Instrument):
    """Every task step's (start, end, offline?), beside ``waits``, the loop's waits for I/O
    (an :class:`IdleClock`'s, kept)."""

    def __init__(self, waits: list[tuple[float, float]]) -> None:
        self.steps: list[tuple[float, float, bool]] = []
        self.waits = waits
        self._started = 0.0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._started = time.perf_counter()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        step = task.context.get(CURRENT_STEP)
        offline = step is not None and step.phase_name == OFFLINE_PHASE
        self.steps.append((self._started, time.perf_counter(), offline))

    def within(self, start: float, end: float) -> Timeline:
        """The steps and waits that overlap [start, end) (both lists are in time order, and
        at most one of each began before ``start`` and runs on into it)."""
        part = Timeline([])
        for mine, theirs in ((self.steps, part.steps), (self.waits, part.waits)):
            first = max(0, bisect.bisect_left(mine, (start,)) - 1)
            theirs.extend(mine[first:bisect.bisect_left(mine, (end,), lo=first)])
        return part

    def split(self, start: float, end: float) -> tuple[float, float, float]:
        """The loop's seconds in [start, end): online steps, offline steps, idle."""
        online = offline = 0.0
        for lo, hi, is_offline in self.steps:
            if is_offline:
                offline += _overlap(lo, hi, start, end)
            else:
                online += _overlap(lo, hi, start, end)
        return online, offline, sum(_overlap(lo, hi, start, end) for lo, hi in self.waits)


WINDOW = 0.02
HEAD_WINDOWS, TAIL_WINDOWS = 8, 5  # the first 160 ms and the last 100 ms of a token


def token_timeline(timeline: Timeline, start: float, end: float) -> dict[str, Any]:
    """A token's loop time (online, offline, idle) in :data:`WINDOW` s windows from its start
    and to its end, and over the rest (``between``); in a token shorter than the windows they
    overlap, and those past its other end are empty."""
    timeline = timeline.within(start, end)
    head_end = min(end, start + HEAD_WINDOWS * WINDOW)
    tail_start = max(head_end, end - TAIL_WINDOWS * WINDOW)
    def at(offset: float) -> float:  # a window's edge, within the token
        return min(end, max(start, offset))

    return {
        "from_start": [timeline.split(at(start + i * WINDOW), at(start + (i + 1) * WINDOW))
                       for i in range(HEAD_WINDOWS)],
        "to_end": [timeline.split(at(end - (i + 1) * WINDOW), at(end - i * WINDOW))
                   for i in reversed(range(TAIL_WINDOWS))],
        "between": timeline.split(head_end, tail_start),
    }


def component(phase: str, scope: str) -> str:
    """The row of ``benchmarks/llama.py``'s component tables a scope belongs to (the longest
    of :data:`~puma_async.protocols.llama.COMPONENTS` that contains it, in any layer; else
    its first part: ``io``, ``embed``, ``tuples``, ``head``; "attn (other)" for attention's
    own steps), "(offline)" added in the offline phase; "(pass)" in a pass outside those,
    "(runtime)" outside any scope."""
    rest = re.sub(r"^p\d+\.t\d+\.?", "", scope)
    layer = re.match(r"layer\d+\.?", rest)
    if layer is None:
        name = rest.split(".")[0] or ("(pass)" if scope else "(runtime)")
    else:
        rest = rest[layer.end():]
        matches = [c for c in COMPONENTS if rest == c or rest.startswith(c + ".")]
        name = max(matches, key=len) if matches else f"{rest.split('.')[0] or 'layer'} (other)"
    return f"{name} (offline)" if phase == OFFLINE_PHASE else name


def measure(weights: Any, prompt: list[int], tokens: int, recorded: bool, components: bool,
            timeline: bool = False) -> list[dict[str, Any]]:
    """One session; per new token its seconds and the split above (and with ``components``
    the loop's seconds per component, with ``timeline`` :func:`token_timeline`)."""
    idle = IdleClock(keep=timeline)
    scopes = ScopeTimer() if components else None
    steps = Timeline(idle.waits) if idle.waits is not None else None
    marks: list[tuple[float, float, float, float, Counter[tuple[str, str]]]] = []

    def progress(event: Progress) -> None:  # runs in the loop's thread
        if event.kind == "token":
            by_scope = Counter(scopes.seconds) if scopes is not None else Counter()
            marks.append((time.perf_counter(), *thread_cpu(), idle.idle, by_scope))

    instruments: list[trio.abc.Instrument] = [
        i for i in (idle, scopes, steps) if i is not None]
    options: dict[str, Any] = {"instruments": instruments}
    if recorded:
        options = {"instruments": [*instruments, StepTimer()], "record_messages": True}
    # one token more than measured: a session's last pass makes no next pass's material
    run_session(weights, [prompt], progress=progress,
                settings=in_process_settings(weights.config, tokens + 2), **options)
    per_token: list[dict[str, Any]] = []
    # marks[0] ends the prompt pass, each later one a new token
    for a, b in itertools.pairwise(marks[: tokens + 1]):
        figures: dict[str, Any] = {
            "seconds": b[0] - a[0], "loop_cpu_seconds": b[1] - a[1],
            "workers_cpu_seconds": b[2] - a[2], "loop_idle_seconds": b[3] - a[3]}
        if components:
            spent: Counter[str] = Counter()
            for (phase, scope), seconds in (b[4] - a[4]).items():
                spent[component(phase, scope)] += seconds
            figures["loop_seconds_by_component"] = dict(spent.most_common())
        if steps is not None:
            figures["timeline"] = token_timeline(steps, a[0], b[0])
        per_token.append(figures)
    return per_token


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=8, help="new tokens measured (default 8)")
    parser.add_argument("--components", action="store_true",
                        help="also the loop's seconds per component (times every task step)")
    parser.add_argument("--timeline", action="store_true",
                        help="also the loop's online, offline and idle time in 20 ms windows "
                             "at each token's start and end")
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
                               "prompt": PROMPT, "recorded": args.recorded,
                               "components": args.components, "timeline": args.timeline}
    per_token = measure(weights, tokenizer.encode(PROMPT), args.tokens, args.recorded,
                        args.components, args.timeline)
    results["new_tokens"] = per_token
    keys = ("seconds", "loop_cpu_seconds", "workers_cpu_seconds", "loop_idle_seconds")
    results["mean"] = mean = {key: float(np.mean([t[key] for t in per_token])) for key in keys}
    print(f"{len(per_token)} new tokens ({'recorded' if args.recorded else 'as local runs'}): "
          f"{reporting.span([t['seconds'] for t in per_token], '.2f')} s, mean "
          f"{mean['seconds']:.2f} s; event loop CPU {mean['loop_cpu_seconds']:.2f} s, worker "
          f"threads' CPU {mean['workers_cpu_seconds']:.2f} s, loop idle "
          f"{mean['loop_idle_seconds']:.2f} s per token")
    if args.components:
        names = {name for t in per_token for name in t["loop_seconds_by_component"]}
        by_component = {name: float(np.mean([t["loop_seconds_by_component"].get(name, 0.0)
                                             for t in per_token])) for name in names}
        mean["loop_seconds_by_component"] = dict(
            sorted(by_component.items(), key=lambda item: -item[1]))
        total = sum(by_component.values())
        print(f"the loop's task steps per token, by component ({total:.2f} s in all):")
        for name, seconds in mean["loop_seconds_by_component"].items():
            print(f"  {name:<36} {seconds * 1e3:8.1f} ms  {100 * seconds / total:5.1f}%")
    if args.timeline:
        mean["timeline"] = timeline = {
            key: np.mean([t["timeline"][key] for t in per_token], axis=0).tolist()
            for key in ("from_start", "to_end", "between")}
        print("the loop per 20 ms window (mean over the tokens), ms online / offline / idle:")
        for name, rows, first in (("from start", timeline["from_start"], 0),
                                  ("to end", timeline["to_end"], -TAIL_WINDOWS)):
            for i, row in enumerate(rows):
                at = (first + i) * WINDOW * 1e3
                print(f"  {name} {at:+5.0f} ms: " + " / ".join(f"{v * 1e3:5.1f}" for v in row))
        print("  between: " + " / ".join(f"{v * 1e3:6.1f}" for v in timeline["between"]))
    reporting.write(Path(args.out), results)


if __name__ == "__main__":
    main()
