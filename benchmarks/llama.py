"""Benchmark secure LLaMA inference: SmolLM2-135M-Instruct, and one LLaMA-7B-shape block.

Parts (each in its own subprocess, so that each peak memory, resource.getrusage maxrss, is
its own; all five roles in one process, in-memory transport, no emulated latency):

- ``smollm2``: one session (weights shared once: the set-up cost), then a prompt of 5 tokens
  ("The capital of France is") and one of 32 tokens, 8 new tokens each (EOS ignored): time
  (client-side wall time), bytes sent per party and rounds of the prompt pass and of every
  new token.
- ``block7b``: a model of one decoder block of LLaMA-7B's shape (hidden 4096, 32 heads,
  FFN 11008, random weights; vocabulary 256, so its embedding and head are negligible) over
  8 tokens, 1 output token; from it, LLaMA-7B (8 -> 1) = 32 blocks + embedding/head (vocab
  32000, estimated: bytes exactly from the protocol's per-element costs, time by multiply-add
  count relative to the block), set beside PUMA's published 200.473 s and 1.794 GB.

Reference (SPU 0.9.5, same machine class, 3 parties in one process): SmolLM2-135M forward over
"The capital of France is" 12.8 s and 296 MB (all parties), peak memory 8.2 GB; one
LLaMA-7B-shape block over 8 tokens 44.4 s and 123 MB. The machine may be shared with other
work: the load average at start is recorded.

    python benchmarks/llama.py [--quick] [--out PATH]     (--quick: SmolLM2, 5 tokens, 2 new)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from typing import Any

import numpy as np
import reporting

from puma_async.roles import PARTIES
from puma_async.session import SessionResult, run_session

SPU_REFERENCE = {
    "smollm2_forward_5_tokens": {"seconds": 12.8, "bytes_all_parties": 296e6,
                                 "peak_memory_bytes": 8.2e9},
    "llama7b_block_8_tokens": {"seconds": 44.4, "bytes_all_parties": 123e6},
}
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


def step_figures(result: SessionResult, prompt: int, step: int) -> dict[str, Any]:
    record = result.prompts[prompt].records[step]
    costs = [result.step_cost(prompt, step, p) for p in PARTIES]
    return {
        "seconds": record.seconds,
        "bytes_sent": {f"P{p}": c.bytes_sent for p, c in zip(PARTIES, costs, strict=True)},
        "bytes_all_parties": sum(c.bytes_sent for c in costs),
        "rounds": max(c.rounds for c in costs),
    }


def run_smollm2(quick: bool) -> dict[str, Any]:
    from puma_async.model import Tokenizer, default_model_path, load_gguf
    from puma_async.model.gguf_loader import open_gguf

    reader = open_gguf(default_model_path())
    weights = load_gguf(reader)
    tokenizer = Tokenizer.from_reader(reader)
    prompts = [tokenizer.encode("The capital of France is")]
    if not quick:
        prompts.append(tokenizer.encode(LONG_PROMPT)[:32])
        assert len(prompts[1]) == 32
    new = 2 if quick else 8
    result = run_session(weights, prompts, max_new_tokens=new)
    out: dict[str, Any] = {
        "setup": {
            "seconds": result.setup_seconds,
            "model_owner_bytes_sent": result.owner_setup_bytes(),
            "parties_bytes_sent": {f"P{p}": result.setup_cost(p).bytes_sent for p in PARTIES},
        },
        "prompts": [],
    }
    for i, prompt in enumerate(result.prompts):
        tokens = [step_figures(result, i, t) for t in range(1, len(prompt.records))]
        out["prompts"].append({
            "prompt_tokens": len(prompt.prompt_ids),
            "generated": tokenizer.decode(prompt.tokens),
            "prompt_pass": step_figures(result, i, 0),
            "new_tokens": tokens,
            "new_token_mean": {
                "seconds": float(np.mean([t["seconds"] for t in tokens])),
                "bytes_all_parties": float(np.mean([t["bytes_all_parties"] for t in tokens])),
                "rounds": float(np.mean([t["rounds"] for t in tokens])),
            },
        })
    out["peak_memory_bytes"] = peak_memory()
    return out


def run_block7b() -> dict[str, Any]:
    from puma_async.model import llama7b_block_config, random_weights

    config = llama7b_block_config()
    weights = random_weights(config, seed=0, dtype=np.float32)
    prompt = list(np.random.default_rng(0).integers(0, config.vocab, LLAMA7B["tokens"]))
    result = run_session(weights, [prompt], max_new_tokens=1)
    block = [result.stats[p].totals(phase="online", scope="p0.t0.layer0") for p in PARTIES]
    head = [result.stats[p].totals(phase="online", scope="p0.t0.head") for p in PARTIES]
    return {
        "config": {"hidden": config.hidden, "heads": config.n_heads, "ffn": config.ffn,
                   "vocab": config.vocab, "tokens": LLAMA7B["tokens"]},
        "setup_seconds": result.setup_seconds,
        "forward": step_figures(result, 0, 0),
        "block": {
            "bytes_sent": {f"P{p}": c.bytes_sent for p, c in zip(PARTIES, block, strict=True)},
            "bytes_all_parties": sum(c.bytes_sent for c in block),
            "rounds": max(c.rounds for c in block),
        },
        "head_bytes_all_parties": sum(c.bytes_sent for c in head),
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
    # embedding: 1 reshare element per output per party; head: the measured final RMSNorm
    # and head at vocab 256, rescaled to 32000 logits; opening: 2 elements per logit
    embed_bytes = 3 * 8 * n * h
    head_bytes = block["head_bytes_all_parties"] + (v - small_vocab) * WEIGHT_MATMUL_BYTES
    open_bytes = 2 * 8 * v
    total_bytes = layers * block["block"]["bytes_all_parties"] + embed_bytes + head_bytes \
        + open_bytes
    lines = [
        f"block (8 tokens): {block_seconds:.1f} s, "
        f"{block['block']['bytes_all_parties'] / 1e6:.1f} MB all parties, "
        f"{block['block']['rounds']} rounds",
        f"time  = 32 x {block_seconds:.1f} s + embedding/head {io_seconds:.1f} s "
        f"(= block time x {embed_head_macs / 1e9:.2f} / {block_macs / 1e9:.2f} G multiply-adds"
        f" per party) = {seconds:.0f} s   [PUMA: {PUMA_LLAMA7B_8_TO_1['seconds']} s]",
        f"bytes = 32 x {block['block']['bytes_all_parties'] / 1e6:.1f} MB + embedding "
        f"{embed_bytes / 1e6:.2f} MB + norm/head {head_bytes / 1e6:.2f} MB + opening "
        f"{open_bytes / 1e6:.2f} MB = {total_bytes / 1e9:.3f} GB   "
        f"[PUMA: {PUMA_LLAMA7B_8_TO_1['bytes'] / 1e9} GB]",
    ]
    return {"seconds": seconds, "bytes_all_parties": total_bytes, "derivation": lines,
            "puma": PUMA_LLAMA7B_8_TO_1}


def run_part(part: str, quick: bool) -> dict[str, Any]:
    """Run one part in a fresh interpreter (its own peak memory); its JSON result."""
    cmd = [sys.executable, __file__, "--part", part] + (["--quick"] if quick else [])
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout)


def print_summary(results: dict[str, Any]) -> None:
    mb = 1e6
    s = results["smollm2"]
    print(f"SmolLM2-135M set-up: {s['setup']['seconds']:.1f} s, model owner sent "
          f"{s['setup']['model_owner_bytes_sent'] / mb:.0f} MB")
    for p in s["prompts"]:
        pp, mean = p["prompt_pass"], p["new_token_mean"]
        print(f"  prompt of {p['prompt_tokens']} tokens: {pp['seconds']:.1f} s, "
              f"{pp['bytes_all_parties'] / mb:.1f} MB all parties "
              f"({', '.join(f'{k} {b / mb:.1f}' for k, b in pp['bytes_sent'].items())}), "
              f"{pp['rounds']} rounds; per new token {mean['seconds']:.2f} s, "
              f"{mean['bytes_all_parties'] / mb:.2f} MB, {mean['rounds']:.0f} rounds; "
              f"-> {p['generated']!r}")
    print(f"  peak memory {s['peak_memory_bytes'] / 1e9:.2f} GB   [SPU: forward over 5 tokens "
          f"12.8 s, 296 MB, peak 8.2 GB]")
    if "block7b" in results:
        b = results["block7b"]
        print(f"LLaMA-7B-shape block, 8 tokens: {b['forward']['seconds']:.1f} s, "
              f"{b['block']['bytes_all_parties'] / mb:.1f} MB all parties, "
              f"{b['block']['rounds']} rounds, peak memory {b['peak_memory_bytes'] / 1e9:.2f} GB"
              f"   [SPU: 44.4 s, 123 MB]")
        print("LLaMA-7B (8 -> 1), derived:")
        for line in results["llama7b_derived"]["derivation"]:
            print(f"  {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="SmolLM2 only, 5 tokens, 2 new")
    reporting.add_out_argument(parser, "llama")
    parser.add_argument("--part", choices=["smollm2", "block7b"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:
        out = run_smollm2(args.quick) if args.part == "smollm2" else run_block7b()
        print(json.dumps(out))
        return
    results: dict[str, Any] = {
        "machine": reporting.machine(),
        "quick": args.quick,
        "spu_reference": SPU_REFERENCE,
    }
    started = time.perf_counter()
    results["smollm2"] = run_part("smollm2", args.quick)
    if not args.quick:
        results["block7b"] = run_part("block7b", args.quick)
        results["llama7b_derived"] = derive_llama7b(results["block7b"])
    results["benchmark_seconds"] = time.perf_counter() - started
    print_summary(results)
    reporting.write(args.out, results)


if __name__ == "__main__":
    main()
