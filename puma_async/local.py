"""``python -m puma_async.local``: secure generation with all five roles in this process.

With no arguments it runs SmolLM2-135M-Instruct on "The capital of France is" and generates
4 tokens securely (the weights are shared once, then the prompt pass and one pass per new
token on a secret-shared KV cache), printing progress to stderr, then the text and, per
token, its wall time, bytes sent by each party and rounds.

Options: ``--prompt TEXT`` (repeatable), ``--prompt-file FILE`` (one prompt a line; all in
one session), ``--chat`` (wrap prompts in the model's chat template), ``--max-new-tokens N``,
``--temperature T`` and ``--seed S`` (sampling on the client; 0 = greedy), ``--model PATH``
(a LLaMA GGUF; ``tiny`` = a small random-weight model with a byte tokenizer, ids = bytes mod
64), ``--compare`` (also the plaintext float64 reference: its own generation; on the secure
run's own prefixes, top-1 agreement, max |logit error|, KL and near ties of the secure logits;
and the error profile, max and RMS error of every component of every layer, from probes that
exist only because every role runs in this process: ``puma_async.accuracy``), ``--json``
(machine-readable results on stdout), ``--record DIR`` (one trace per role in DIR, to replay
the parties with ``python -m puma_async.replay``; traces hold keys and shares: keep them
private). Errors (a bad model file, a too-long prompt) are reported in one line, exit status 2.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from puma_async.accuracy import SessionComparison, ShareCollector, profile_table
from puma_async.cluster import TINY_MODEL, SessionSettings
from puma_async.errors import ContextLengthError, ModelFileError, RunFailedError
from puma_async.model import (
    KVCache,
    LlamaWeights,
    Tokenizer,
    default_model_path,
    forward,
    load_gguf,
    random_weights,
    tiny_config,
)
from puma_async.model.gguf_loader import open_gguf
from puma_async.party import SMOLLM2, local_recording
from puma_async.roles import PARTIES
from puma_async.session import (
    GenerationOptions,
    Progress,
    SessionResult,
    check_prompts,
    pick_token,
    run_session,
)

DEFAULT_PROMPT = "The capital of France is"
DEFAULT_NEW_TOKENS = 4


class ByteTokenizer:
    """The ``tiny`` model's stand-in tokenizer: ids = UTF-8 bytes mod vocab."""

    def __init__(self, vocab: int):
        self.vocab = vocab
        self.eos_id: int | None = None

    def encode(self, text: str) -> list[int]:
        return [b % self.vocab for b in text.encode()]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(f"<{i}>" for i in ids)

    def apply_chat_template(self, text: str) -> str:
        return text


@dataclass
class Loaded:
    weights: LlamaWeights
    tokenizer: Tokenizer | ByteTokenizer
    name: str


def load_model(spec: str | None) -> Loaded:
    """The model named by ``--model`` (None: SmolLM2-135M-Instruct); ModelFileError if bad."""
    if spec == TINY_MODEL:
        weights = random_weights(tiny_config(), seed=0)
        return Loaded(weights, ByteTokenizer(weights.config.vocab), "tiny (random weights)")
    reader = open_gguf(default_model_path() if spec is None else spec)
    weights = load_gguf(reader)
    tokenizer = Tokenizer.from_reader(reader)
    return Loaded(weights, tokenizer, Path(spec).name if spec else "SmolLM2-135M-Instruct")


def read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt or [])
    if args.prompt_file:
        try:
            text = Path(args.prompt_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"cannot read prompt file: {exc}") from exc
        prompts += [line for line in text.splitlines() if line.strip()]
    return prompts or [DEFAULT_PROMPT]


def compare(
    result: SessionResult, options: GenerationOptions, comparison: SessionComparison
) -> list[dict[str, Any]]:
    """Per prompt: the plaintext generation (same options and seed) and, from ``comparison``
    (the secure run's own prefixes), top-1 agreement, max |logit error|, KL and near ties."""
    w64 = comparison.weights
    rng = np.random.default_rng(options.seed)
    out = []
    for prompt, positions in zip(result.prompts, comparison.positions, strict=True):
        plain: list[int] = []
        cache = KVCache.empty(w64.config)
        logits = forward(w64, list(prompt.prompt_ids), cache)[-1]
        while True:
            plain.append(pick_token(logits, options.temperature, rng))
            if plain[-1] == options.eos_id or len(plain) == options.max_new_tokens:
                break
            logits = forward(w64, [plain[-1]], cache)[-1]
        errors = [p["max_logit_error"] for p in positions]
        out.append({
            "plaintext_ids": plain,
            "top1_agreement": sum(p["top1_equal"] for p in positions) / len(positions),
            "max_logit_error": max(errors),
            "logit_errors": errors,
            "max_kl": max(p["kl"] for p in positions),
            "near_ties": sum(p["near_tie"] for p in positions),
        })
    return out


def report(result: SessionResult, loaded: Loaded, comparison: list[dict[str, Any]] | None,
           profile: dict[str, dict[str, float]] | None = None) -> dict[str, Any]:
    """Machine-readable results (what ``--json`` prints); ``profile``: the error profile
    (:meth:`puma_async.accuracy.ErrorProfile.summary`) with ``--compare``."""
    setup = {f"P{p}": result.setup_cost(p).bytes_sent for p in PARTIES}
    prompts = []
    for i, prompt in enumerate(result.prompts):
        steps = []
        for t, record in enumerate(prompt.records):
            costs = [result.step_cost(i, t, p) for p in PARTIES]
            steps.append({
                "token": record.token,
                "text": loaded.tokenizer.decode([record.token]),
                "kind": "prompt" if t == 0 else "token",
                "positions": len(prompt.prompt_ids) if t == 0 else 1,
                "seconds": record.seconds,
                "bytes_sent": {f"P{p}": c.bytes_sent for p, c in zip(PARTIES, costs, strict=True)},
                "rounds": max(c.rounds for c in costs),
            })
        entry: dict[str, Any] = {
            "prompt_ids": list(prompt.prompt_ids),
            "generated_ids": prompt.tokens,
            "text": loaded.tokenizer.decode(prompt.tokens),
            "steps": steps,
        }
        if comparison is not None:
            entry.update(comparison[i])
        prompts.append(entry)
    data = {
        "model": loaded.name,
        "setup": {
            "seconds": result.setup_seconds,
            "bytes_sent": setup,
            "model_owner_bytes_sent": result.owner_setup_bytes(),
        },
        "seconds": result.seconds,
        "prompts": prompts,
    }
    if profile is not None:
        data["error_profile"] = profile
    return data


def print_human(data: dict[str, Any]) -> None:
    mb = 1e6
    print(f"model: {data['model']}")
    setup = data["setup"]
    print(f"setup: {setup['seconds']:.1f} s, model owner sent "
          f"{setup['model_owner_bytes_sent'] / mb:.1f} MB (weights, once per session)")
    for i, prompt in enumerate(data["prompts"]):
        print(f"\nprompt {i}: {len(prompt['prompt_ids'])} tokens")
        print(f"generated: {prompt['text']!r}  ids {prompt['generated_ids']}")
        print(f"  {'step':<10}{'token':<16}{'seconds':>8}{'P0 MB':>9}{'P1 MB':>9}{'P2 MB':>9}"
              f"{'rounds':>8}")
        for t, s in enumerate(prompt["steps"]):
            name = f"prompt({s['positions']})" if t == 0 else f"token {t}"
            b = s["bytes_sent"]
            print(f"  {name:<10}{s['text']!r:<16}{s['seconds']:>8.2f}{b['P0'] / mb:>9.2f}"
                  f"{b['P1'] / mb:>9.2f}{b['P2'] / mb:>9.2f}{s['rounds']:>8}")
        if "plaintext_ids" in prompt:
            print(f"plaintext: ids {prompt['plaintext_ids']}; top-1 agreement "
                  f"{prompt['top1_agreement']:.0%}; max |logit error| "
                  f"{prompt['max_logit_error']:.4f}; max KL {prompt['max_kl']:.1e}; "
                  f"near ties {prompt['near_ties']}")
    if "error_profile" in data:
        print("\nerror profile, max |secure - float64| per layer and component:")
        print(profile_table(data["error_profile"]))


def recording(args: argparse.Namespace, prompts: list[list[int]]) -> dict[str, Any]:
    """``run_session`` options that record every role's trace to ``--record DIR``.

    The trace headers name the session as ``python -m puma_async.party`` would (model, token
    count), so ``python -m puma_async.replay`` rebuilds the parties' and the model owner's
    programs from them.
    """
    if not args.record:
        return {}
    settings = SessionSettings(
        session_id=f"local-{secrets.token_hex(8)}",
        model=TINY_MODEL if args.model == TINY_MODEL else (args.model or SMOLLM2),
        max_new_tokens=args.max_new_tokens,
        prompt=" ".join(map(str, prompts[0])) if args.model == TINY_MODEL else None,
    )
    wrap, entropy = local_recording(args.record, settings)
    return {"wrap_transport": wrap, "entropy": entropy, "session": settings.session}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m puma_async.local",
        description="Secure LLaMA generation, three parties + model owner + client in-process.",
    )
    parser.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    parser.add_argument("--prompt-file", help="a file of prompts, one a line")
    parser.add_argument("--chat", action="store_true", help="use the model's chat template")
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_NEW_TOKENS)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--seed", type=int, default=None, help="the client's sampling seed")
    parser.add_argument("--model", default=None,
                        help="GGUF path, or 'tiny' (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--compare", action="store_true", help="also run the plaintext model")
    parser.add_argument("--json", action="store_true", help="print JSON results on stdout")
    parser.add_argument("--record", metavar="DIR",
                        help="write one trace per role to DIR (holds keys and shares)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    try:
        texts = read_prompts(args)
        started = time.perf_counter()
        loaded = load_model(args.model)
        tokenizer = loaded.tokenizer
        options = GenerationOptions(args.max_new_tokens, args.temperature, args.seed,
                                    tokenizer.eos_id)
        if args.chat:
            texts = [tokenizer.apply_chat_template(t) for t in texts]
        prompts = check_prompts(loaded.weights.config, [tokenizer.encode(t) for t in texts],
                                options)
        say(f"loaded {loaded.name} in {time.perf_counter() - started:.1f} s; "
            f"{len(prompts)} prompt(s) of {[len(p) for p in prompts]} tokens; sharing weights...")

        def progress(event: Progress) -> None:
            if event.kind == "setup":
                say(f"setup done in {event.seconds:.1f} s")
            elif event.step == 0:
                say(f"prompt {event.prompt}: prompt pass {event.seconds:.2f} s -> "
                    f"{tokenizer.decode([event.token])!r}")
            else:
                say(f"prompt {event.prompt}: token {event.step} {event.seconds:.2f} s -> "
                    f"{tokenizer.decode([event.token])!r}")

        collector = ShareCollector() if args.compare else None
        checks = None if collector is None else SessionComparison(
            loaded.weights.astype(np.float64), prompts, collector)

        def progress_and_checks(event: Progress) -> None:
            progress(event)
            if checks is not None:
                checks(event)

        result = run_session(loaded.weights, prompts, options, progress=progress_and_checks,
                             probe=collector, **recording(args, prompts))
        comparison = None
        if checks is not None:
            say("running the plaintext reference...")
            comparison = compare(result, options, checks)
    except (ModelFileError, ContextLengthError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RunFailedError as exc:
        print(f"error: secure run failed: {type(exc.root_cause).__name__}: {exc.root_cause}",
              file=sys.stderr)
        return 1
    data = report(result, loaded, comparison,
                  None if checks is None else checks.profile.summary())
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print_human(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
