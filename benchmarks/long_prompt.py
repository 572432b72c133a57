"""Long prompts with all five roles in one process: peak memory and time by prompt length.

A pass's memory grows with its positions (every layer's offline material is made at its
start), so a prompt longer than the session's ``max_pass_positions`` runs as Prefill passes
of its first positions, then the Run of the rest (``puma_async.session.programs``). Each
prompt length runs in a process of its own (its peak resident memory is the process's):
SmolLM2 (or ``--tiny``), the first L tokens of ``benchmarks/prompts/pride-and-prejudice-ch1.txt``,
then ``--tokens`` new tokens. Prints and writes per length: passes, the prompt's seconds
(from its first pass to its first token), rounds and bytes (P0's, online, all its passes),
the new tokens' seconds, and the peak memory. ``--per-pass N`` sets the positions per pass
(``--per-pass 0``: one pass per prompt, as before passes had a bound). A length whose
process fails (for want of memory, say) is recorded with its exit code, and the script
then exits 1.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import reporting

from puma_async.session.settings import DEFAULT_PASS_POSITIONS

TEXT = Path(__file__).resolve().parent / "prompts" / "pride-and-prejudice-ch1.txt"


def measure(length: int, per_pass: int, tokens: int, tiny: bool) -> dict[str, Any]:
    """One session over the text's first ``length`` tokens (in this process)."""
    from puma_async.session import in_process_settings, run_session
    from puma_async.session.accounting import prompt_scopes

    if tiny:
        from puma_async.model import TinyTokenizer, random_weights, tiny_config

        config = tiny_config()
        weights, tokenizer = random_weights(config, seed=0), TinyTokenizer()
    else:
        from puma_async.session.models import SMOLLM2, resolve_model

        source = resolve_model(SMOLLM2)
        weights, tokenizer = source.load_weights(), source.load_tokenizer()
    # the tiny tokenizer knows letters, digits, space and '.': the text's others go
    text = TEXT.read_text() if not tiny else "".join(
        c for c in TEXT.read_text().replace("\n", " ") if c.isalnum() or c in " .")
    prompt = tokenizer.encode(text)[:length]
    if len(prompt) < length:
        raise SystemExit(f"the text has {len(prompt)} tokens, fewer than {length}")
    settings = in_process_settings(weights.config, tokens + 1,
                                   max_pass_positions=per_pass or length)
    started = time.perf_counter()
    result = run_session(weights, [prompt], settings=settings)
    records = result.prompts[0].records
    cost = result.step_cost(0, 0, 0)  # P0's, the prompt's passes up to its first token
    return {
        "length": length, "max_pass_positions": settings.max_pass_positions,
        "passes": len(prompt_scopes(result.stats[0], 0)),
        "prompt_seconds": records[0].seconds,
        "prompt_rounds": cost.rounds,
        "prompt_bytes_sent_p0": cost.bytes_sent,
        "new_token_seconds": [r.seconds for r in records[1:]],
        "session_seconds": time.perf_counter() - started,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="5,64,200",
                        help="prompt lengths in tokens, comma-separated (default 5,64,200)")
    parser.add_argument("--per-pass", type=int, default=DEFAULT_PASS_POSITIONS,
                        help=f"positions per pass (default {DEFAULT_PASS_POSITIONS}, the "
                             "session's; 0: one pass per prompt)")
    parser.add_argument("--tokens", type=int, default=2, help="new tokens after each prompt")
    parser.add_argument("--tiny", action="store_true", help="the tiny model, random weights")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)  # one length, JSON out
    reporting.add_out_argument(parser, "long_prompt")
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args.child, args.per_pass, args.tokens, args.tiny)))
        return
    results: dict[str, Any] = {"machine": reporting.machine(),
                               "model": "tiny" if args.tiny else "smollm2",
                               "per_pass": args.per_pass, "runs": []}
    for length in (int(n) for n in args.lengths.split(",")):
        command = [sys.executable, __file__, "--child", str(length), "--per-pass",
                   str(args.per_pass), "--tokens", str(args.tokens),
                   *(["--tiny"] if args.tiny else [])]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode:
            run = {"length": length, "failed": done.returncode,
                   "stderr_tail": done.stderr.strip().splitlines()[-3:]}
            print(f"{length} tokens: failed with exit code {done.returncode}")
        else:
            run = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{length} tokens in {run['passes']} pass(es) of <= "
                  f"{run['max_pass_positions']}: prompt {run['prompt_seconds']:.1f} s, "
                  f"{run['prompt_rounds']} rounds, {run['prompt_bytes_sent_p0'] / 1e6:.1f} MB "
                  f"sent by P0; new tokens "
                  f"{reporting.span(run['new_token_seconds'], '.2f')} s; peak memory "
                  f"{run['peak_rss_bytes'] / 2**30:.1f} GiB")
        results["runs"].append(run)
    reporting.write(Path(args.out), results)
    if any("failed" in run for run in results["runs"]):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
