"""Round overlapping across machines: the same session with and without overlapped steps.

Runs the session of ``python -m puma_async.local`` (every role in one process, in-memory
transport with an emulated one-way delay per link) twice per delay: with round overlapping
(independent steps of every ``ctx.gather`` run concurrently) and with every gather forced
sequential (``sequential=True``: same messages, one step after the other). Reports, per run,
the critical-path rounds (the deepest round any role reached), P0's rounds and bytes of the
prompt pass (scope ``p0.t0``), the prompt pass's wall time at P0 (the set-up of the weights,
whose time varies by seconds between runs, excluded), each new token's pass at P0 (scopes
``p0.t1``, ...; ``--max-new-tokens 2`` or more) and the whole run's wall time; the delay makes
every round cost at least one latency, which is what overlapping saves.
``--model smollm2`` runs the real model (about five minutes for the four runs); the default
tiny model takes seconds.

Usage: ``python benchmarks/overlap.py [--model tiny|smollm2|FILE.gguf] [--max-new-tokens 1]
[--delays-ms 1 10] [--tradeoff balanced] [--out benchmarks/results/overlap.json]``.
"""

from __future__ import annotations

import argparse
from typing import Any

import reporting

from puma_async.model import LlamaWeights
from puma_async.protocols.llama import TRADEOFFS
from puma_async.roles import ALL_ROLES
from puma_async.session import in_process_settings, run_session
from puma_async.session.models import resolve_model
from puma_async.session.recording import role_entropy


def measure(weights: LlamaWeights, prompt: list[int], new_tokens: int, delay: float,
            sequential: bool, tradeoff: str) -> dict[str, Any]:
    """One run: critical-path rounds, P0's online rounds and bytes, wall time."""
    run = run_session(
        weights, [prompt], latency=delay, sequential=sequential,
        settings=in_process_settings(weights.config, new_tokens, tradeoff=tradeoff),
        entropy={role: role_entropy("0e", role) for role in ALL_ROLES},
    )
    prompt_pass = run.stats[0].totals(phase="online", scope="p0.t0")
    return {
        "delay_ms": delay * 1e3,
        "overlap": not sequential,
        "critical_path_rounds": max(s.max_round for s in run.stats.values()),
        "p0_prompt_pass_rounds": prompt_pass.rounds,
        "p0_prompt_pass_bytes_sent": prompt_pass.bytes_sent,
        "p0_prompt_pass_seconds": run.stats[0].scope_seconds("p0.t0", phase="online"),
        "p0_new_token_seconds": [run.stats[0].scope_seconds(f"p0.t{step}", phase="online")
                                 for step in range(1, new_tokens)],
        "seconds": run.seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--prompt", default="The capital of France is")
    parser.add_argument("--max-new-tokens", type=int, default=1)
    parser.add_argument("--delays-ms", type=float, nargs="+", default=[1.0, 10.0])
    parser.add_argument("--tradeoff", choices=TRADEOFFS, default="balanced",
                        help="the session's layer protocols (local --tradeoff)")
    reporting.add_out_argument(parser, "overlap")
    args = parser.parse_args()
    machine = reporting.machine()
    source = resolve_model(args.model)
    weights = source.load_weights()
    prompt = source.load_tokenizer().encode(args.prompt)
    rows = []
    print(f"{'delay':>8} {'mode':>10} {'crit. rounds':>12} {'P0 p0.t0':>10} "
          f"{'p0.t0 s':>9} {'token s':>9} {'run s':>9}")
    for delay_ms in args.delays_ms:
        for sequential in (False, True):
            row = measure(weights, prompt, args.max_new_tokens, delay_ms / 1e3, sequential,
                          args.tradeoff)
            rows.append(row)
            mode = "overlap" if row["overlap"] else "sequential"
            print(f"{delay_ms:>6g}ms {mode:>10} {row['critical_path_rounds']:>12} "
                  f"{row['p0_prompt_pass_rounds']:>10} {row['p0_prompt_pass_seconds']:>9.2f} "
                  f"{max(row['p0_new_token_seconds'], default=float('nan')):>9.2f} "
                  f"{row['seconds']:>9.2f}")
    result = {
        "benchmark": "overlap", "model": args.model, "max_new_tokens": args.max_new_tokens,
        "tradeoff": args.tradeoff,
        "machine": machine,
        "runs": rows,
    }
    reporting.write(args.out, result)


if __name__ == "__main__":
    main()
