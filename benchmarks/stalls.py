"""Event-loop stretches of each party on a long prompt: what delays its heartbeats.

A SmolLM2-shaped model with random weights (few layers, a small vocabulary; the stretches are
per layer) runs one prompt pass of ``--prompt`` tokens at context ``--context``, each role in
its own thread and event loop (:func:`~puma_async.runner.run_threaded`), as in a process of
its own. Per role, a :class:`~puma_async.liveness.StepTimer` reports the longest scheduler
batch (wall time between two looks at timers and I/O: what must stay well below
``dead_after``), the most CPU time the loop thread spent in one batch (the loop's own work,
whatever the host's load), the longest task step and the longest late wake-up.
``--where`` samples the stack of every loop that has been in one batch for more than 50 ms
(every 20 ms) and prints the places most seen, per role: where the loop's time goes.

Threads of one process share the GIL and, here, two cores: a batch's wall time counts the
time its thread waited for them (on a busy host, several times its CPU time).

    python benchmarks/stalls.py [--layers 1] [--prompt 400] [--context 512] [--where]
        [--out benchmarks/results/stalls.json]

Peak memory: about 6 GB at the defaults.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import sys
import threading
import time
import traceback

import numpy as np
import reporting

from puma_async.liveness import StepTimer
from puma_async.model import random_weights
from puma_async.roles import CLIENT, MODEL_OWNER, PARTIES, role_name
from puma_async.session import in_process_settings, run_session
from puma_async.session.models import SMOLLM2_ARCHITECTURE

ROLES = (*PARTIES, MODEL_OWNER, CLIENT)


class WhereTimer(StepTimer):
    """A StepTimer that also notes its loop's thread and when its current batch began."""

    def __init__(self) -> None:
        super().__init__()
        self.thread: int | None = None
        self.batch_began: float | None = None

    def after_io_wait(self, timeout: float) -> None:
        super().after_io_wait(timeout)
        self.thread = threading.get_ident()
        self.batch_began = time.perf_counter()

    def before_io_wait(self, timeout: float) -> None:
        super().before_io_wait(timeout)
        self.batch_began = None


def sample(timers: dict[int, WhereTimer], seen: collections.Counter[tuple[int, str]]) -> None:
    """Forever: every 20 ms, the stack of each loop 50 ms or more into one batch."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    while True:
        time.sleep(0.02)
        frames = sys._current_frames()
        now = time.perf_counter()
        for role, timer in timers.items():
            began = timer.batch_began
            if began is None or now - began < 0.05 or timer.thread not in frames:
                continue
            ours = [f for f in traceback.extract_stack(frames[timer.thread])
                    if f.filename.startswith(here)]
            seen[role, " <- ".join(f"{os.path.basename(f.filename)}:{f.name}:{f.lineno}"
                                   for f in ours[::-1][:5])] += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--prompt", type=int, default=400, help="prompt tokens")
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--where", action="store_true", help="sample where the loops are")
    reporting.add_out_argument(parser, "stalls")
    args = parser.parse_args()
    machine = reporting.machine()
    config = dataclasses.replace(SMOLLM2_ARCHITECTURE, n_layers=args.layers, vocab=args.vocab,
                                 gate_bounds=(128,) * args.layers)
    weights = random_weights(config, seed=0, dtype=np.float32)
    # a generous dead_after: the stretches are measured, not enforced
    settings = dataclasses.replace(in_process_settings(config, 1, context=args.context),
                                   dead_after=600.0)
    timers = {role: WhereTimer() for role in ROLES}
    seen: collections.Counter[tuple[int, str]] = collections.Counter()
    if args.where:
        threading.Thread(target=sample, args=(timers, seen), daemon=True).start()
    load = os.getloadavg()[0]
    started = time.perf_counter()
    prompt = [1 + i % (args.vocab - 1) for i in range(args.prompt)]
    run_session(weights, [prompt], max_new_tokens=1, settings=settings, threaded=True,
                role_instruments={r: [t] for r, t in timers.items()})
    seconds = time.perf_counter() - started
    print(f"{args.layers} layer(s), prompt {args.prompt}, context {args.context}, vocab "
          f"{args.vocab}: {seconds:.1f} s, load average {load:.1f} at "
          f"start, {os.getloadavg()[0]:.1f} at the end")
    places = {role: [(where, 20 * n) for (r, where), n in seen.most_common() if r == role][:5]
              for role in timers}
    for role, timer in timers.items():
        print(f"{role_name(role):>11}: longest batch {timer.longest_batch:.2f} s "
              f"(most CPU in one batch {timer.longest_batch_cpu:.3f} s), longest step "
              f"{timer.longest_step:.2f} s ({timer.longest_task}), late wake "
              f"{timer.longest_late_wake:.2f} s")
        for where, ms in places[role]:
            print(f"{'':>13}{ms:>5} ms  {where}")
    reporting.write(args.out, {
        "benchmark": "stalls", "machine": machine, "layers": args.layers,
        "prompt_tokens": args.prompt, "context": args.context, "vocab": args.vocab,
        "seconds": seconds, "load_average_start": load,
        "roles": {role_name(role): {
            "longest_batch_seconds": timer.longest_batch,
            "longest_batch_cpu_seconds": timer.longest_batch_cpu,
            "longest_step_seconds": timer.longest_step,
            "longest_late_wake_seconds": timer.longest_late_wake,
            "places_ms": dict(places[role]),
        } for role, timer in timers.items()},
    })


if __name__ == "__main__":
    main()
