"""Accuracy of secure SmolLM2-135M-Instruct against the float64 reference (issue 13's goals).

All five roles run in this process with probes installed (``puma_async.accuracy``), so every
intermediate value of the secure pass is compared with the reference's on the same tokens.

- **Generation**: every prompt of ``--prompts`` (JSON lines ``{"text": ..., "chat": true}``;
  ``chat`` wraps the text in the model's chat template), ``--max-new-tokens`` greedy tokens
  (EOS ignored, so every prompt gives that many positions). Per position, against the
  reference on the secure run's own prefix: top-1 agreement, max |logit error|,
  KL(plaintext || secure), near ties (plaintext top two within 0.1). Error profile: max and
  RMS error at every probe point (every component of every layer), all passes pooled.
- **Perplexity** of ``--text`` (public-domain prose), teacher-forced: the tokens in windows
  of ``--window`` positions, each window one prompt pass on a fresh cache of a session that
  reveals the logits of every position (``SessionSettings(reveal_logits="all")``, context
  = the window); secure and plaintext perplexity of every position after the first of its
  window, from the logits the client opened, and the max |logit error| of every position
  of the text. Error profile as above, over the windows.

    python benchmarks/accuracy.py [--prompts FILE] [--text FILE] [--max-new-tokens N]
        [--window N] [--limit N] [--skip-generation] [--skip-perplexity] [--out PATH]

Goals (issue 13): max |logit error| <= 0.05 and KL <= 1e-4 at every position; greedy equal
except at near ties; perplexity within 0.1 %.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import reporting

from puma_async.accuracy import (
    ErrorProfile,
    SessionComparison,
    ShareCollector,
    log_softmax,
    profile_table,
)
from puma_async.model import LlamaWeights, Tokenizer, forward
from puma_async.session import GenerationOptions, Progress, in_process_settings, run_session
from puma_async.session.models import SMOLLM2, resolve_model

PROMPTS = Path(__file__).resolve().parent / "prompts"
GOALS = {"max_logit_error": 0.05, "kl": 1e-4, "perplexity_relative": 1e-3}


def read_prompts(path: Path, tokenizer: Tokenizer, limit: int | None) -> list[list[int]]:
    """Token ids of the prompts of a JSON-lines file (chat template where asked)."""
    prompts = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            entry = json.loads(line)
            text = entry["text"]
            if entry.get("chat"):
                text = tokenizer.apply_chat_template(text)
            prompts.append(tokenizer.encode(text))
    return prompts[:limit]


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_generation(weights: LlamaWeights, prompts: list[list[int]], new: int) -> dict[str, Any]:
    collector = ShareCollector()
    tracker = SessionComparison(weights, prompts, collector)
    started = time.perf_counter()

    def progress(event: Progress) -> None:
        tracker(event)
        if event.kind == "token" and event.step == new - 1:
            tracker.wait()  # this prompt's comparisons (they run in a worker thread)
            worst = max(p["max_logit_error"] for p in tracker.positions[-1])
            say(f"prompt {event.prompt + 1}/{len(prompts)}: max |logit error| {worst:.4f} "
                f"({time.perf_counter() - started:.0f} s)")

    result = run_session(weights, prompts, GenerationOptions(), max_new_tokens=new,
                         progress=progress, probe=collector)
    tracker.wait()
    positions = [p for prompt in tracker.positions for p in prompt]
    flips = [p for p in positions if not p["top1_equal"]]
    summary = {
        "prompts": len(prompts),
        "positions": len(positions),
        "max_logit_error": max(p["max_logit_error"] for p in positions),
        "median_logit_error": float(np.median([p["max_logit_error"] for p in positions])),
        "max_kl": max(p["kl"] for p in positions),
        "top1_disagreements": len(flips),
        "top1_disagreements_at_near_ties": sum(p["near_tie"] for p in flips),
        "near_ties": sum(p["near_tie"] for p in positions),
        "seconds": time.perf_counter() - started,
    }
    return {
        "summary": summary,
        "prompts": [
            {"prompt_ids": ids, "generated_ids": r.tokens, "positions": pos}
            for ids, r, pos in zip(prompts, result.prompts, tracker.positions, strict=True)
        ],
        "profile": tracker.profile.summary(),
    }


def run_perplexity(weights: LlamaWeights, ids: list[int], window: int) -> dict[str, Any]:
    windows = [ids[i : i + window] for i in range(0, len(ids) - 1, window)]
    windows = [w for w in windows if len(w) > 1]
    collector = ShareCollector()
    profile = ErrorProfile()

    def progress(event: Progress) -> None:
        if event.kind != "token":
            return
        reference: dict[str, np.ndarray] = {}
        forward(weights, windows[event.prompt], probe=reference.__setitem__)
        profile.add(collector.take(), reference)
        say(f"window {event.prompt + 1}/{len(windows)} ({time.perf_counter() - started:.0f} s)")

    started = time.perf_counter()
    settings = in_process_settings(weights.config, 1, context=window, reveal_logits="all")
    result = run_session(weights, windows, GenerationOptions(), settings=settings,
                         progress=progress, probe=collector)
    nll: dict[str, list[float]] = {"secure": [], "plain": []}
    errors: list[float] = []  # per position of the text: max |logit error|
    for tokens, prompt in zip(windows, result.prompts, strict=True):
        secure = prompt.records[0].all_logits
        assert secure is not None
        plain = forward(weights, tokens)
        errors.extend(np.abs(secure - plain).max(axis=1))
        targets = np.asarray(tokens[1:])
        rows = np.arange(targets.size)
        nll["secure"].extend(-log_softmax(secure[:-1])[rows, targets])
        nll["plain"].extend(-log_softmax(plain[:-1])[rows, targets])
    secure_ppl = float(np.exp(np.mean(nll["secure"])))
    plain_ppl = float(np.exp(np.mean(nll["plain"])))
    return {
        "summary": {
            "tokens": len(ids),
            "window": window,
            "windows": len(windows),
            "predicted_positions": len(nll["plain"]),
            "plaintext_perplexity": plain_ppl,
            "secure_perplexity": secure_ppl,
            "relative_difference": secure_ppl / plain_ppl - 1,
            "max_nll_difference": float(np.max(np.abs(np.subtract(nll["secure"],
                                                                  nll["plain"])))),
            "positions": len(errors),
            "max_logit_error": float(np.max(errors)),
            "median_logit_error": float(np.median(errors)),
            "seconds": time.perf_counter() - started,
        },
        "profile": profile.summary(),
    }


def print_summary(results: dict[str, Any]) -> None:
    if "generation" in results:
        g = results["generation"]["summary"]
        print(f"generation: {g['prompts']} prompts, {g['positions']} positions, "
              f"{g['seconds']:.0f} s")
        print(f"  max |logit error| {g['max_logit_error']:.4f} (median of positions "
              f"{g['median_logit_error']:.4f}; goal <= {GOALS['max_logit_error']})")
        print(f"  max KL {g['max_kl']:.2e} (goal <= {GOALS['kl']:.0e})")
        print(f"  top-1 disagreements {g['top1_disagreements']} "
              f"({g['top1_disagreements_at_near_ties']} at near ties); near ties "
              f"{g['near_ties']}")
        print("error profile (max |error| per layer and component, all passes):")
        print(profile_table(results["generation"]["profile"]))
    if "perplexity" in results:
        p = results["perplexity"]["summary"]
        print(f"perplexity: {p['predicted_positions']} positions in {p['windows']} windows of "
              f"{p['window']}: plaintext {p['plaintext_perplexity']:.4f}, secure "
              f"{p['secure_perplexity']:.4f} ({p['relative_difference']:+.2e}; goal "
              f"|.| <= {GOALS['perplexity_relative']:.0e}); max NLL difference "
              f"{p['max_nll_difference']:.2e}; max |logit error| {p['max_logit_error']:.4f} "
              f"over {p['positions']} positions (median {p['median_logit_error']:.4f}); "
              f"{p['seconds']:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=Path, default=PROMPTS / "accuracy.jsonl")
    parser.add_argument("--text", type=Path, default=PROMPTS / "pride-and-prejudice-ch1.txt")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--window", type=int, default=128)
    parser.add_argument("--limit", type=int, default=None, help="the first N prompts only")
    parser.add_argument("--skip-generation", action="store_true")
    parser.add_argument("--skip-perplexity", action="store_true")
    reporting.add_out_argument(parser, "accuracy")
    args = parser.parse_args()
    results: dict[str, Any] = {"machine": reporting.machine(), "goals": GOALS}
    # the session's model (with its certified gate bounds, as `local` runs it); float64: the
    # only copy, sessions need ~8 GB besides
    w64 = resolve_model(SMOLLM2).load_weights().astype(np.float64)
    tokenizer = Tokenizer.from_gguf()
    if not args.skip_generation:
        prompts = read_prompts(args.prompts, tokenizer, args.limit)
        results["generation"] = run_generation(w64, prompts, args.max_new_tokens)
    if not args.skip_perplexity:
        ids = tokenizer.encode(args.text.read_text(encoding="utf-8"))
        results["perplexity"] = run_perplexity(w64, ids, args.window)
    print_summary(results)
    reporting.write(args.out, results)


if __name__ == "__main__":
    main()
