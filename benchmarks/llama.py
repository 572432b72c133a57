"""Benchmark secure LLaMA inference: SmolLM2-135M-Instruct, and one LLaMA-7B-shape block.

Parts (each in its own subprocess, so that each peak memory, resource.getrusage maxrss, is
its own; all five roles in one process, in-memory transport, no emulated latency):

- ``smollm2``: one session (weights shared once: the set-up cost), then a prompt of 5 tokens
  ("The capital of France is") and one of 32 tokens, 8 new tokens each (EOS ignored): time
  (client-side wall time), bytes sent per party and rounds of the prompt pass and of every
  new token.
- ``block7b``: a model of one decoder block of LLaMA-7B's shape (hidden 4096, 32 heads,
  FFN 11008, random weights; vocabulary 256, so its embedding and head are negligible) over
  8 tokens, 1 output token; from it, LLaMA-7B (8 -> 1) = 32 blocks (online and offline
  bytes: both cross the network) + embedding/head (vocab 32000, estimated: bytes exactly from
  the protocol's per-element costs, time by multiply-add count relative to the block), set
  beside PUMA's published 200.473 s and 1.794 GB.

Each part runs its session twice: recorded, for the accounting and the stalls below, then as
``python -m puma_async.local`` runs it (no message records, no instrument: together they cost
a SmolLM2 token 0.12-0.13 s of its ~1.6 s, ``benchmarks/token_time.py`` against its
``--recorded``), for every time and event-loop CPU figure.

Both parts also account each pass (:mod:`puma_async.session.accounting`): online and offline
rounds and bytes, frames per peer per round, and per component of a layer (``attn.norm``, ...,
``mlp.down``, with ``io``, ``embed`` and ``head``) the critical-path rounds and the bytes, so
that the components' rows sum to the pass; printed for the prompt pass and the first new token
(mean per layer, min-max across layers, and over all layers). ``--baseline PATH`` prints a
previous run's JSON beside this one's (before -> now).

Both parts also record the event loop's longest synchronous stretches per phase (set-up,
prompt pass, new token; :class:`~puma_async.liveness.StepTimer`): the longest task step (a
lower bound of what delays a party's heartbeats in a process of its own, where its own ready
steps make its batches: ``benchmarks/stalls.py`` measures those, a loop per role), the longest
scheduler batch (all five roles' ready steps back to back, what delays them here) and the
longest late wake-up (the loop thread waiting for the CPU or the GIL). They must stay well
below the liveness bound (a peer silent for 10 s is dead).

SPU 0.9.5 (PUMA's implementation) beside these: its figures for the same SmolLM2 forward over
"The capital of France is" and the same 7B-shape block, as ``benchmarks/measure_spu.py``
measured them on this host (3 parties in one process, in SPU's own venv), are read from
``benchmarks/results/spu.json`` when present and recorded as ``spu_reference`` with that file's
name and date. The machine may be shared with other work: the load average at start is recorded.

    python benchmarks/llama.py [--quick] [--tiny] [--tradeoff T] [--baseline PATH] [--out PATH]

``--quick``: SmolLM2 only, 5 tokens, 2 new. ``--tiny``: the session part on the tiny model
(random weights, public seed) instead of SmolLM2, in seconds (checks the benchmark itself;
implies ``--quick``). ``--tradeoff``: the sessions' layer protocols (balanced, the default;
fewer-rounds; fewer-bytes: ``protocols.llama.layer_plan``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import reporting

from puma_async.liveness import StepTimer
from puma_async.protocols.llama import COMPONENTS, TRADEOFFS
from puma_async.roles import PARTIES
from puma_async.session import Progress, SessionResult, in_process_settings, run_session
from puma_async.session.accounting import account_pass, pass_scope

PUMA_LLAMA7B_8_TO_1 = {"seconds": 200.473, "bytes": 1.794e9}
LLAMA7B = {"layers": 32, "hidden": 4096, "ffn": 11008, "vocab": 32000, "tokens": 8}
LONG_PROMPT = (
    "Once upon a time, in a small village at the edge of a great forest, there lived an old "
    "clockmaker who repaired every clock in the land, and one winter morning a stranger"
)
WEIGHT_MATMUL_BYTES = 40 + 18 / 8  # per output element, all parties (arith/trunc docs)


def peak_memory() -> int:
    """Peak resident set of this process (bytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PassClock:
    """Each pass's event-loop CPU seconds (:meth:`run` runs a session measured so, as
    ``python -m puma_async.local`` runs it: no message records, no instrument). All five roles
    share this thread's event loop, so a pass's seconds are its CPU time (every role's Python,
    and the local work it does not hand to worker threads) plus the time it waits for worker
    threads (the large ring products) with nothing else to run."""

    def __init__(self) -> None:
        self.loop_cpu_marks: list[float] = []

    def loop_cpu_per_pass(self) -> list[float]:
        """The event loop's CPU seconds of each pass, in the order they ran."""
        return [float(seconds) for seconds in np.diff(self.loop_cpu_marks)]

    def progress(self, event: Progress) -> None:
        self.loop_cpu_marks.append(time.thread_time())  # progress runs in the loop's thread

    def run(self, weights: Any, prompts: list[list[int]], new: int, tradeoff: str
            ) -> SessionResult:
        settings = in_process_settings(weights.config, new, tradeoff=tradeoff)
        return run_session(weights, prompts, settings=settings, progress=self.progress,
                           **self.run_options())

    def run_options(self) -> dict[str, Any]:
        return {}


class LoopStalls(PassClock):
    """:class:`PassClock` in a run that records every message (for the accounting) and the
    event loop's longest task step and scheduler batch per phase: set-up, prompt pass, new
    token. Both cost the loop time (0.12-0.13 s of a SmolLM2 token's ~1.6 s: module
    docstring), so passes are timed in a run of their own (:func:`measured_runs`)."""

    def __init__(self) -> None:
        super().__init__()
        self.timer = StepTimer()
        self.phases: dict[str, dict[str, float]] = {}

    def progress(self, event: Progress) -> None:
        super().progress(event)
        phase = ("setup" if event.kind == "setup" else
                 "prompt_pass" if event.kind == "prefill" or event.step == 0 else "new_token")
        longest = self.phases.setdefault(phase, dict.fromkeys(
            ("longest_step_seconds", "longest_batch_seconds", "longest_late_wake_seconds"), 0.0
        ))
        for name, value in (("longest_step_seconds", self.timer.longest_step),
                            ("longest_batch_seconds", self.timer.longest_batch),
                            ("longest_late_wake_seconds", self.timer.longest_late_wake)):
            longest[name] = max(longest[name], value)
        self.timer.restart()

    def run_options(self) -> dict[str, Any]:
        return {"instruments": [self.timer], "record_messages": True}


@dataclasses.dataclass(frozen=True)
class MeasuredRuns:
    """The same session twice (:func:`measured_runs`): ``accounted`` recorded (bytes, rounds,
    components, links, stalls: ``stalls``), then ``timed`` as users run it (seconds and loop
    CPU per pass: ``clock``)."""

    accounted: SessionResult
    stalls: LoopStalls
    timed: SessionResult
    clock: PassClock

    def figures(self, prompt: int, step: int, n_layers: int) -> dict[str, Any]:
        """:func:`step_figures` of one pass: its time from the timed run."""
        passes = [len(p.records) for p in self.timed.prompts]
        loop_cpu = self.clock.loop_cpu_per_pass()[sum(passes[:prompt]) + step]
        return step_figures(self.accounted, prompt, step, n_layers, loop_cpu,
                            self.timed.prompts[prompt].records[step].seconds)


def measured_runs(weights: Any, prompts: list[list[int]], new: int, tradeoff: str
                  ) -> MeasuredRuns:
    """The session recorded, then timed: the first run also warms what both read (the model's
    pages, compiled kernels). A pass's messages depend on its shapes only, never on the token
    values (the two runs' masks differ, so a near tie may pick another token), so the recorded
    run's accounting is the timed run's as long as both ran the same passes (EOS is ignored:
    RuntimeError otherwise)."""
    stalls, clock = LoopStalls(), PassClock()
    accounted = stalls.run(weights, prompts, new, tradeoff)
    timed = clock.run(weights, prompts, new, tradeoff)
    if [len(p.records) for p in timed.prompts] != [len(p.records) for p in accounted.prompts]:
        raise RuntimeError("the timed run made other passes than the accounted run")
    return MeasuredRuns(accounted, stalls, timed, clock)


def format_stalls(phases: dict[str, dict[str, float]]) -> str:
    return ", ".join(f"{phase} {f['longest_step_seconds']:.2f} s (batch "
                     f"{f['longest_batch_seconds']:.2f} s, late wake "
                     f"{f['longest_late_wake_seconds']:.2f} s)" for phase, f in phases.items())


def step_figures(result: SessionResult, prompt: int, step: int, n_layers: int,
                 loop_cpu: float, seconds: float) -> dict[str, Any]:
    """One pass: ``seconds`` (and of them ``loop_cpu``, the event loop's CPU time), then from
    ``result`` (recorded) its online bytes per party and rounds, and its accounting
    (``online``, ``offline``, ``components``, ``links``: :func:`account_pass`)."""
    costs = [result.step_cost(prompt, step, p) for p in PARTIES]
    return {
        "seconds": seconds,
        "event_loop_cpu_seconds": loop_cpu,
        "bytes_sent": {f"P{p}": c.bytes_sent for p, c in zip(PARTIES, costs, strict=True)},
        "bytes_all_parties": sum(c.bytes_sent for c in costs),
        "rounds": max(c.rounds for c in costs),
        **account_pass(result.stats, pass_scope(prompt, step), n_layers),
    }


def run_session_part(quick: bool, tiny: bool, tradeoff: str) -> dict[str, Any]:
    """SmolLM2 (or the tiny model): set-up, then every prompt's passes."""
    if tiny:
        from puma_async.model import TinyTokenizer, random_weights, tiny_config

        weights, tokenizer = random_weights(tiny_config(), seed=0), TinyTokenizer()
        quick = True
    else:
        from puma_async.session.models import SMOLLM2, resolve_model

        source = resolve_model(SMOLLM2)  # its certified gate bounds, as `local` runs it
        weights, tokenizer = source.load_weights(), source.load_tokenizer()
    prompts = [tokenizer.encode("The capital of France is")]
    if not quick:
        prompts.append(tokenizer.encode(LONG_PROMPT)[:32])
        assert len(prompts[1]) == 32
    new = 2 if quick else 8
    runs = measured_runs(weights, prompts, new, tradeoff)
    result = runs.accounted
    layers = weights.config.n_layers
    out: dict[str, Any] = {
        "model": "tiny" if tiny else "smollm2",
        "layers": layers,
        "setup": {
            "seconds": runs.timed.setup_seconds,
            "model_owner_bytes_sent": result.owner_setup_bytes(),
            "parties_bytes_sent": {f"P{p}": result.setup_cost(p).bytes_sent for p in PARTIES},
        },
        "prompts": [],
    }
    for i, prompt in enumerate(result.prompts):
        passes = [runs.figures(i, t, layers) for t in range(len(prompt.records))]
        tokens = passes[1:]
        out["prompts"].append({
            "prompt_tokens": len(prompt.prompt_ids),
            "generated": tokenizer.decode(prompt.tokens),
            "prompt_pass": passes[0],
            "new_tokens": tokens,
            "new_token_mean": {
                "seconds": float(np.mean([t["seconds"] for t in tokens])),
                "event_loop_cpu_seconds": float(np.mean([t["event_loop_cpu_seconds"]
                                                         for t in tokens])),
                "bytes_all_parties": float(np.mean([t["bytes_all_parties"] for t in tokens])),
                "rounds": float(np.mean([t["rounds"] for t in tokens])),
                **{phase: {key: float(np.mean([t[phase][key] for t in tokens]))
                           for key in ("rounds", "bytes")} for phase in ("online", "offline")},
            },
        })
    out["event_loop"] = runs.stalls.phases
    out["peak_memory_bytes"] = peak_memory()
    return out


def run_block7b(tradeoff: str) -> dict[str, Any]:
    from puma_async.model import llama7b_block_config, random_weights
    from puma_async.model.bounds import certify_gate_bounds

    config = llama7b_block_config()
    weights = random_weights(config, seed=0, dtype=np.float32)
    # the gate bound its weights certify, as a model owner's export declares it
    bounded = dataclasses.replace(config, gate_bounds=certify_gate_bounds(weights))
    weights = dataclasses.replace(weights, config=bounded)
    prompt = list(np.random.default_rng(0).integers(0, config.vocab, LLAMA7B["tokens"]))
    runs = measured_runs(weights, [prompt], 1, tradeoff)
    result = runs.accounted
    block = [result.stats[p].totals(phase="online", scope="p0.t0.layer0") for p in PARTIES]
    # the block's offline material: its own (SiLU's) and what the pass made at its start for
    # its one layer (scope tuples: the norms', reciprocal's, exponential's and maximum's,
    # with the head norm's few kB, which are counted here and not in the head's)
    block_offline = [result.stats[p].totals(phase="offline", scope=scope)
                     for p in PARTIES for scope in ("p0.t0.layer0", "p0.t0.tuples")]
    forward = runs.figures(0, 0, config.n_layers)
    head = [result.stats[p].totals(scope="p0.t0.head") for p in PARTIES]  # online + offline
    return {
        "config": {"hidden": config.hidden, "heads": config.n_heads, "ffn": config.ffn,
                   "vocab": config.vocab, "tokens": LLAMA7B["tokens"]},
        "setup_seconds": runs.timed.setup_seconds,
        "forward": forward,
        "block": {
            "bytes_sent": {f"P{p}": c.bytes_sent for p, c in zip(PARTIES, block, strict=True)},
            "bytes_all_parties": sum(c.bytes_sent for c in block),
            "rounds": max(c.rounds for c in block),
            "offline": {"bytes": sum(c.bytes_sent for c in block_offline),
                        "rounds": max(c.rounds for c in block_offline)},
        },
        "head_bytes_all_parties": sum(c.bytes_sent for c in head),
        "event_loop": runs.stalls.phases,
        "peak_memory_bytes": peak_memory(),
    }


def derive_llama7b(block: dict[str, Any]) -> dict[str, Any]:
    """LLaMA-7B (8 -> 1) from one measured block; returns the figures and the derivation."""
    n, h, f, v, layers = (LLAMA7B[k] for k in ("tokens", "hidden", "ffn", "vocab", "layers"))
    small_vocab = block["config"]["vocab"]
    # per-party multiply-adds (inner size doubled by the replicated product)
    block_macs = 2 * n * (4 * h * h + 3 * h * f)
    embed_head_macs = 2 * n * v * 2 * h + v * 2 * h  # [o_i + o_i+1; o_i] @ [E_i | E_i+1]; E @ x^T
    block_seconds = block["forward"]["seconds"]  # includes the vocab-256 embedding and head
    io_seconds = block_seconds * embed_head_macs / block_macs
    seconds = layers * block_seconds + io_seconds
    # block: online and offline bytes (both cross the network); embedding: 1 reshare element
    # per output per party; head: the measured final RMSNorm and head at vocab 256 (online and
    # offline), rescaled to 32000 logits; opening: 2 elements per logit
    online, offline = block["block"]["bytes_all_parties"], block["block"]["offline"]["bytes"]
    embed_bytes = 3 * 8 * n * h
    head_bytes = block["head_bytes_all_parties"] + (v - small_vocab) * WEIGHT_MATMUL_BYTES
    open_bytes = 2 * 8 * v
    total_bytes = layers * (online + offline) + embed_bytes + head_bytes + open_bytes
    lines = [
        f"block (8 tokens): {block_seconds:.1f} s, {online / 1e6:.1f} MB online + "
        f"{offline / 1e6:.1f} MB offline all parties, {block['block']['rounds']} rounds",
        f"time  = 32 x {block_seconds:.1f} s + embedding/head {io_seconds:.1f} s "
        f"(= block time x {embed_head_macs / 1e9:.2f} / {block_macs / 1e9:.2f} G multiply-adds"
        f" per party) = {seconds:.0f} s   [PUMA: {PUMA_LLAMA7B_8_TO_1['seconds']} s]",
        f"bytes = 32 x ({online / 1e6:.1f} + {offline / 1e6:.1f}) MB + embedding "
        f"{embed_bytes / 1e6:.2f} MB + norm/head {head_bytes / 1e6:.2f} MB + opening "
        f"{open_bytes / 1e6:.2f} MB = {total_bytes / 1e9:.3f} GB   "
        f"[PUMA: {PUMA_LLAMA7B_8_TO_1['bytes'] / 1e9} GB]",
    ]
    return {"seconds": seconds, "bytes_all_parties": total_bytes, "derivation": lines,
            "puma": PUMA_LLAMA7B_8_TO_1}


def run_part(part: str, quick: bool, tradeoff: str, tiny: bool = False) -> dict[str, Any]:
    """Run one part in a fresh interpreter (its own peak memory); its JSON result."""
    cmd = [sys.executable, __file__, "--part", part, "--tradeoff", tradeoff] \
        + (["--quick"] if quick else []) + (["--tiny"] if tiny else [])
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout)


def phase_figures(step: dict[str, Any], phase: str) -> dict[str, Any] | None:
    """A pass's ``online`` or ``offline`` figures; for a run that predates the accounting,
    its online rounds and bytes (and no offline figures)."""
    if phase in step:
        return dict(step[phase])
    if phase == "online":
        return {"rounds": step["rounds"], "bytes": step["bytes_all_parties"]}
    return None


def cell(now: float, before: float | None, fmt: str) -> str:
    """``now`` as ``fmt``, or ``before -> now`` beside a baseline."""
    return fmt.format(now) if before is None else f"{fmt.format(before)} -> {fmt.format(now)}"


def print_passes(passes: list[tuple[str, dict[str, Any], dict[str, Any] | None]]) -> None:
    """One line per pass: online and offline rounds and MB, frames per peer per round."""
    print(f"    {'pass':<12} {'online rounds':>15} {'online MB':>15} {'offline rounds':>15} "
          f"{'offline MB':>15} {'frames/peer/round':>18}")
    for name, now, old in passes:
        cells = []
        for phase, key, scale, fmt in (("online", "rounds", 1, "{:.0f}"),
                                       ("online", "bytes", 1e6, "{:.2f}"),
                                       ("offline", "rounds", 1, "{:.0f}"),
                                       ("offline", "bytes", 1e6, "{:.2f}"),
                                       ("online", "frames_per_peer_per_round", 1, "{:.2f}")):
            figures = phase_figures(now, phase)
            before = None if old is None else phase_figures(old, phase)
            value = None if before is None else before.get(key)
            cells.append(cell(figures[key] / scale, None if value is None else value / scale,
                              fmt))
        print(f"    {name:<12} {cells[0]:>15} {cells[1]:>15} {cells[2]:>15} {cells[3]:>15} "
              f"{cells[4]:>18}")


def spread(values: list[float], fmt: str) -> str:
    """``fmt`` of the value if all are equal, else the mean (1 decimal) and the min-max."""
    low, high = fmt.format(min(values)), fmt.format(max(values))
    return low if low == high else f"{float(np.mean(values)):.1f} ({low}-{high})"


def print_components(now: dict[str, Any], old: dict[str, Any] | None) -> None:
    """A pass's component table: per layer (mean, min-max) and over all layers, online and
    offline; the "all layers" columns of the rows sum to the pass's total row."""
    rows = now["components"]
    before = (old or {}).get("components", {})
    print(f"    {'component':<26} {'rounds/layer':>14} {'rounds':>12} {'KB/layer':>18} "
          f"{'KB':>18} {'offline rounds':>15} {'offline KB':>12}")
    layer_rounds = [0] * len(rows["attn.norm"]["online"]["rounds"])
    for row, figures in rows.items():
        on, off = figures["online"], figures["offline"]
        was = before.get(row, {}).get("online")
        layered = row in COMPONENTS  # else once per pass: io, embed, head
        if layered:
            layer_rounds = [a + b for a, b in zip(layer_rounds, on["rounds"], strict=True)]
        per_layer = spread(on["rounds"], "{:.0f}") if layered else ""
        kb_layer = spread([b / 1e3 for b in on["bytes"]], "{:.1f}") if layered else ""
        rounds = cell(sum(on["rounds"]), None if was is None else sum(was["rounds"]), "{:.0f}")
        kb = cell(sum(on["bytes"]) / 1e3, None if was is None else sum(was["bytes"]) / 1e3,
                  "{:.1f}")
        print(f"    {row:<26} {per_layer:>14} {rounds:>12} {kb_layer:>18} {kb:>18} "
              f"{max(off['rounds']):>15} {sum(off['bytes']) / 1e3:>12.1f}")
    online, offline = now["online"], now["offline"]
    print(f"    {'layer (its components)':<26} {spread(layer_rounds, '{:.0f}'):>14}")
    print(f"    {'total':<26} {'':>14} {online['rounds']:>12} {'':>18} "
          f"{online['bytes'] / 1e3:>18.1f} {offline['rounds']:>15} "
          f"{offline['bytes'] / 1e3:>12.1f}")


def print_accounting(session: dict[str, Any], baseline: dict[str, Any] | None) -> None:
    """Every prompt's passes, then the component tables of the first prompt's prompt pass and
    first new token (beside the baseline's, if given)."""
    for i, prompt in enumerate(session["prompts"]):
        old = None if baseline is None or i >= len(baseline["prompts"]) else \
            baseline["prompts"][i]
        passes = [("prompt pass", prompt["prompt_pass"], old and old["prompt_pass"])]
        for t, token in enumerate(prompt["new_tokens"]):
            was = old["new_tokens"][t] if old and t < len(old["new_tokens"]) else None
            passes.append((f"token {t + 1}", token, was))
        print(f"  prompt of {prompt['prompt_tokens']} tokens, per pass (all parties):")
        print_passes(passes)
    first = session["prompts"][0]
    old = None if baseline is None else baseline["prompts"][0]
    print("  prompt pass by component:")
    print_components(first["prompt_pass"], old and old["prompt_pass"])
    if first["new_tokens"]:
        print("  first new token by component:")
        print_components(first["new_tokens"][0],
                         old["new_tokens"][0] if old and old["new_tokens"] else None)


def print_summary(results: dict[str, Any], baseline: dict[str, Any] | None) -> None:
    mb = 1e6
    spu = results["spu_reference"]
    key = "tiny" if "tiny" in results else "smollm2"
    s = results[key]
    print(f"{'tiny model' if key == 'tiny' else 'SmolLM2-135M'} set-up: "
          f"{s['setup']['seconds']:.1f} s, model owner sent "
          f"{s['setup']['model_owner_bytes_sent'] / mb:.0f} MB")
    for p in s["prompts"]:
        pp, mean = p["prompt_pass"], p["new_token_mean"]
        print(f"  prompt of {p['prompt_tokens']} tokens: {pp['seconds']:.1f} s "
              f"(event loop CPU {pp['event_loop_cpu_seconds']:.2f} s), "
              f"{pp['bytes_all_parties'] / mb:.1f} MB all parties "
              f"({', '.join(f'{k} {b / mb:.1f}' for k, b in pp['bytes_sent'].items())}), "
              f"{pp['rounds']} rounds; per new token {mean['seconds']:.2f} s (event loop CPU "
              f"{mean['event_loop_cpu_seconds']:.2f} s), "
              f"{mean['bytes_all_parties'] / mb:.2f} MB, {mean['rounds']:.0f} rounds; "
              f"-> {p['generated']!r}")
    print(f"  peak memory {s['peak_memory_bytes'] / 1e9:.2f} GB")
    print(f"  [forward over 5 tokens, {reporting.spu_summary(spu, 'smollm2_forward_5_tokens')}]")
    print(f"  longest event loop step: {format_stalls(s['event_loop'])}")
    print_accounting(s, None if baseline is None else baseline.get(key))
    if "block7b" in results:
        b = results["block7b"]
        print(f"LLaMA-7B-shape block, 8 tokens: {b['forward']['seconds']:.1f} s, "
              f"{b['block']['bytes_all_parties'] / mb:.1f} MB online + "
              f"{b['block']['offline']['bytes'] / mb:.1f} MB offline all parties, "
              f"{b['block']['rounds']} rounds, peak memory {b['peak_memory_bytes'] / 1e9:.2f} GB")
        print(f"  [{reporting.spu_summary(spu, 'llama7b_block_8_tokens')}]")
        print(f"  longest event loop step: {format_stalls(b['event_loop'])}")
        old = None if baseline is None else baseline.get("block7b")
        print("  forward over 8 tokens (all parties):")
        print_passes([("forward", b["forward"], old and old["forward"])])
        print("  by component:")
        print_components(b["forward"], old and old["forward"])
        print("LLaMA-7B (8 -> 1), derived:")
        for line in results["llama7b_derived"]["derivation"]:
            print(f"  {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="SmolLM2 only, 5 tokens, 2 new")
    parser.add_argument("--tiny", action="store_true",
                        help="the tiny model instead of SmolLM2 (implies --quick)")
    parser.add_argument("--baseline", type=Path,
                        help="a previous run's JSON, printed beside this run (before -> now)")
    reporting.add_out_argument(parser, "llama")
    parser.add_argument("--tradeoff", choices=TRADEOFFS, default="balanced",
                        help="the sessions' layer protocols (local --tradeoff)")
    parser.add_argument("--part", choices=["smollm2", "block7b"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:
        out = run_session_part(args.quick, args.tiny, args.tradeoff) \
            if args.part == "smollm2" else run_block7b(args.tradeoff)
        print(json.dumps(out))
        return
    baseline = None if args.baseline is None else json.loads(args.baseline.read_text())
    quick = args.quick or args.tiny
    results: dict[str, Any] = {
        "machine": reporting.machine(),
        "quick": quick,
        "spu_reference": reporting.spu_figures(),
        "tradeoff": args.tradeoff,
    }
    started = time.perf_counter()
    results["tiny" if args.tiny else "smollm2"] = run_part("smollm2", quick, args.tradeoff,
                                                           args.tiny)
    if not quick:
        results["block7b"] = run_part("block7b", quick, args.tradeoff)
        results["llama7b_derived"] = derive_llama7b(results["block7b"])
    results["benchmark_seconds"] = time.perf_counter() - started
    print_summary(results, baseline)
    reporting.write(args.out, results)


if __name__ == "__main__":
    main()
