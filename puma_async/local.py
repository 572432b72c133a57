"""``python -m puma_async.local``: secure generation with all five roles in this process.

With no arguments it runs SmolLM2-135M-Instruct on "The capital of France is" and generates
4 tokens securely (the weights are shared once, then the prompt pass and one pass per new
token on a secret-shared KV cache), printing progress to stderr, then (stdout) the text and,
per pass, its wall time, bytes sent by each party and rounds.

Options: ``--prompt TEXT`` (repeatable), ``--prompt-file FILE`` (one prompt a line, ``-``:
stdin; all in one session), ``--chat`` (the model's chat template), ``--max-new-tokens N``,
``--temperature T`` and ``--seed S`` (sampling on the client; 0 = greedy),
``--stop-at-eos`` (end a prompt at its EOS; by default its passes continue to N and the
tokens after EOS are discarded, so the parties cannot tell the output's length),
``--model tiny|smollm2|PATH`` (a LLaMA GGUF; ``tiny`` = a small model with public random
weights and a one-character-per-token tokenizer), ``--compare`` (also the plaintext float64
reference: its own generation; on the secure run's own prefixes, top-1 agreement, max |logit
error|, KL and near ties of the secure logits; and the error profile, max and RMS error of
every component of every layer, from probes that exist only because every role runs in this
process: ``puma_async.accuracy``), ``--json`` (machine-readable results on stdout),
``--record DIR`` (one trace per role in DIR, to replay with ``python -m puma_async.replay``;
traces hold keys and shares: DIR is created 0700, reused only with ``--force``),
``--entropy HEX`` (fixed keys: tests only). Errors (a bad option, model file or prompt) are
one line on stderr, exit status 2, before anything loads where possible; a failed run exits
1; Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from puma_async.accuracy import SessionComparison, ShareCollector, profile_table
from puma_async.errors import ModelFileError, RunFailedError, SettingsError
from puma_async.model import KVCache, forward
from puma_async.protocols.llama import TRADEOFFS
from puma_async.roles import ALL_ROLES, CLIENT, MODEL_OWNER, PARTIES
from puma_async.session import (
    GenerationOptions,
    Progress,
    SessionResult,
    SessionSettings,
    in_process_settings,
    pick_token,
    run_session,
)
from puma_async.session.models import PRESETS, SMOLLM2, check_tokenizer, resolve_model
from puma_async.session.options import (
    add_client_options,
    encode_prompts,
    generation_options,
    read_prompts,
    with_eos,
)
from puma_async.session.recording import (
    client_inputs,
    local_recording,
    owner_inputs,
    prepare_record_dir,
    role_entropy,
)
from puma_async.session.report import format_text, prompt_entries
from puma_async.session.settings import DEFAULT_PASS_POSITIONS

PROG = "python -m puma_async.local"
DEFAULT_PROMPT = "The capital of France is"
DEFAULT_NEW_TOKENS = 4


def compare(result: SessionResult, options: GenerationOptions, comparison: SessionComparison,
            max_new_tokens: int) -> list[dict[str, Any]]:
    """Per prompt: the plaintext generation (same options and seed) and, from ``comparison``
    (the secure run's own prefixes), top-1 agreement, max |logit error|, KL and near ties."""
    comparison.wait()
    w64 = comparison.weights
    rng = np.random.default_rng(options.seed)
    out = []
    for prompt, positions in zip(result.prompts, comparison.positions, strict=True):
        plain: list[int] = []
        cache = KVCache.empty(w64.config)
        logits = forward(w64, list(prompt.prompt_ids), cache)[-1]
        while True:
            plain.append(pick_token(logits, options.temperature, rng))
            if plain[-1] == options.eos_id or len(plain) == max_new_tokens:
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


def report(result: SessionResult, model: str, tokenizer: Any,
           comparison: list[dict[str, Any]] | None,
           profile: dict[str, dict[str, float]] | None = None) -> dict[str, Any]:
    """Machine-readable results (what ``--json`` prints): the client's, with every party's
    bytes and rounds per pass; ``profile``: the error profile
    (:meth:`puma_async.accuracy.ErrorProfile.summary`) with ``--compare``."""
    prompts = prompt_entries(result.prompts, tokenizer)
    for i, prompt in enumerate(prompts):
        for t, step in enumerate(prompt["steps"]):
            costs = [result.step_cost(i, t, p) for p in PARTIES]
            step["bytes_sent"] = {f"P{p}": c.bytes_sent for p, c in zip(PARTIES, costs,
                                                                        strict=True)}
            step["rounds"] = max(c.rounds for c in costs)
        if comparison is not None:
            prompt.update(comparison[i])
    data = {
        "model": model,
        "setup": {
            "seconds": result.setup_seconds,
            "bytes_sent": {f"P{p}": result.setup_cost(p).bytes_sent for p in PARTIES},
            "model_owner_bytes_sent": result.owner_setup_bytes(),
        },
        "seconds": result.seconds,
        "prompts": prompts,
    }
    if profile is not None:
        data["error_profile"] = profile
    return data


def format_report(data: dict[str, Any]) -> str:
    """:func:`~puma_async.session.report.format_text`, then the error profile if any."""
    text = format_text(data)
    if "error_profile" in data:
        text += ("\n\nerror profile, max |secure - float64| per layer and component:\n"
                 + profile_table(data["error_profile"]))
    return text


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Secure LLaMA generation, three parties + model owner + client in-process.",
    )
    add_client_options(parser)
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_NEW_TOKENS)
    parser.add_argument("--model", default=SMOLLM2,
                        help="'tiny', 'smollm2' (the default: SmolLM2-135M-Instruct) or a GGUF")
    parser.add_argument("--tradeoff", choices=TRADEOFFS, default="balanced",
                        help="the layers' protocols where two trade rounds for bytes: "
                             "'fewer-rounds' for high latency between parties, 'fewer-bytes' "
                             "for low bandwidth (default: balanced, which takes the fewer "
                             "bytes in prompt passes)")
    parser.add_argument("--max-pass-positions", type=int, default=DEFAULT_PASS_POSITIONS,
                        metavar="N",
                        help="positions one pass covers at most (and N^2 query-key pairs): "
                             "a longer prompt runs in several passes (a pass's memory grows "
                             f"with both; default {DEFAULT_PASS_POSITIONS})")
    parser.add_argument("--compare", action="store_true", help="also run the plaintext model")
    parser.add_argument("--json", action="store_true", help="print JSON results on stdout")
    parser.add_argument("--record", metavar="DIR",
                        help="write one trace per role to DIR (holds keys and shares)")
    parser.add_argument("--force", action="store_true", help="reuse a non-empty --record DIR")
    parser.add_argument("--entropy", metavar="HEX",
                        help="fix the seed of the roles' keys (tests only: insecure)")
    return parser.parse_args(argv)


def recording(args: argparse.Namespace, settings: SessionSettings, model_file: str | None,
              prompts: list[list[int]], options: GenerationOptions) -> dict[str, Any]:
    """``run_session`` options for ``--record`` and ``--entropy`` (``model_file``: the GGUF
    the model owner's trace names, None for a preset)."""
    if not args.record:
        if args.entropy is None:
            return {}
        return {"entropy": {role: role_entropy(args.entropy, role) for role in ALL_ROLES}}
    inputs = {MODEL_OWNER: owner_inputs(model_file), CLIENT: client_inputs(prompts, options)}
    wrap, entropy = local_recording(args.record, settings, inputs, seed=args.entropy,
                                    force=args.force)
    return {"wrap_transport": wrap, "entropy": entropy}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    try:
        options = generation_options(args)
        texts = read_prompts(args, default=DEFAULT_PROMPT)
        if args.record:
            prepare_record_dir(args.record, force=args.force)
        if args.entropy:
            role_entropy(args.entropy, CLIENT)  # a bad hex string fails here, not after loading
        started = time.perf_counter()
        source = resolve_model(args.model)
        settings = in_process_settings(source.architecture, args.max_new_tokens,
                                       model=source.name, tradeoff=args.tradeoff,
                                       max_pass_positions=args.max_pass_positions)
        tokenizer = source.load_tokenizer()
        check_tokenizer(tokenizer, settings.config, source.name)
        options = with_eos(options, tokenizer)
        prompts = encode_prompts(texts, tokenizer, chat=args.chat, config=settings.config,
                                 context=settings.positions, max_new_tokens=args.max_new_tokens)
        say(f"loading {source.name}...")
        weights = source.load_weights()
        say(f"loaded {source.name} in {time.perf_counter() - started:.1f} s; "
            f"{len(prompts)} prompt(s) of {[len(p) for p in prompts]} tokens; sharing weights...")

        def progress(event: Progress) -> None:
            if event.kind == "setup":
                say(f"setup done in {event.seconds:.1f} s")
                return
            if event.kind == "prefill":
                say(f"prompt {event.prompt}: {event.span} sent (a pass of their own)")
                return
            text = repr(tokenizer.decode([event.token]))
            note = " (after EOS: discarded)" if event.discarded else ""
            if event.step == 0:
                say(f"prompt {event.prompt}: prompt pass {event.seconds:.2f} s -> {text}")
            else:
                say(f"prompt {event.prompt}: token {event.step} {event.seconds:.2f} s -> "
                    f"{text}{note}")

        collector = ShareCollector() if args.compare else None  # in-process only
        checks = None if collector is None else SessionComparison(
            weights.astype(np.float64), prompts, collector)

        def progress_and_checks(event: Progress) -> None:
            progress(event)
            if checks is not None:
                checks(event)

        result = run_session(weights, prompts, options, settings=settings,
                             progress=progress_and_checks, probe=collector,
                             **recording(args, settings, None if args.model in PRESETS
                                         else args.model, prompts, options))
        comparison = None
        if checks is not None:
            say("running the plaintext reference...")
            comparison = compare(result, options, checks, args.max_new_tokens)
    except (ModelFileError, SettingsError, ValueError, OSError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except RunFailedError as exc:
        print(f"{PROG}: error: secure run failed: {type(exc.root_cause).__name__}: "
              f"{exc.root_cause}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    data = report(result, settings.model, tokenizer, comparison,
                  None if checks is None else checks.profile.summary())
    print(json.dumps(data, indent=2) if args.json else format_report(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
