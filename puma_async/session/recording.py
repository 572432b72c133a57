"""Recording a session's roles into traces, and rebuilding a role's program from its trace.

``--record DIR`` writes ``DIR/<role>.trace`` per role (:mod:`puma_async.trace.format`).
**A trace holds the role's key entropy and every share it saw**, and its header holds what
its own program needs to run again: the public settings for every role, plus the model
file's path for the model owner and the prompts and decoding options for the client (only
in the client's own trace). So DIR is created 0700 (:func:`puma_async.files.create_private_dir`)
and a non-empty one is reused only with ``force``; keep traces as private as keys.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from puma_async.context import Program
from puma_async.errors import SettingsError, TraceError
from puma_async.files import create_private_dir
from puma_async.roles import ALL_ROLES, CLIENT, MODEL_OWNER, role_name
from puma_async.session.factory import build_program
from puma_async.session.generation import GenerationOptions
from puma_async.session.models import owner_model
from puma_async.session.settings import SessionSettings
from puma_async.trace.recorder import RecordingTransport
from puma_async.transports.base import Transport

TRACE_KIND = "puma-async-session"
ENTROPY_BYTES = 32
DIGEST_OVER = 1 << 20
"""Recorded frames above 1 MiB (weight shares) are stored by digest only."""
Wrapper = Callable[[Transport], Transport]


def role_entropy(text: str | None, role: int) -> bytes:
    """Random entropy for ``role``, or (for ``--entropy``) one derived from a hex seed."""
    if text is None:
        return secrets.token_bytes(ENTROPY_BYTES)
    try:
        seed = bytes.fromhex(text)
    except ValueError:
        raise SettingsError("--entropy must be hex digits") from None
    return hashlib.blake2b(seed, person=b"role%d" % role, digest_size=ENTROPY_BYTES).digest()


def client_inputs(prompts: Sequence[Sequence[int]], options: GenerationOptions
                  ) -> dict[str, Any]:
    """The client's trace-header inputs: its prompts (token ids) and decoding options."""
    return {
        "prompts": [[int(t) for t in p] for p in prompts], "temperature": options.temperature,
        "seed": options.seed, "eos_id": options.eos_id, "stop_at_eos": options.stop_at_eos,
    }


def owner_inputs(model_file: str | os.PathLike[str] | None) -> dict[str, Any]:
    """The model owner's trace-header inputs: its model file (None: the default or tiny)."""
    return {"model_file": None if model_file is None else os.fspath(model_file)}


def trace_config(settings: SessionSettings, role: int, entropy: bytes, *, cluster: str,
                 inputs: Mapping[str, Any] | None = None, sequential: bool = False
                 ) -> dict[str, Any]:
    """The trace header configuration: all a replay needs to re-run ``role``."""
    return {
        "kind": TRACE_KIND, "cluster": cluster, "settings": settings.to_dict(),
        "entropy": entropy, "sequential": sequential, "inputs": dict(inputs or {}),
    }


def trace_path(directory: str | os.PathLike[str], role: int) -> Path:
    """Where ``--record DIR`` writes the trace of ``role``."""
    return Path(directory) / f"{role_name(role)}.trace"


def prepare_record_dir(directory: str | os.PathLike[str], *, force: bool = False) -> Path:
    """Create the 0700 folder of ``--record`` before anything runs (see the module doc)."""
    return create_private_dir(directory, force=force)


def recorder(
    directory: str | os.PathLike[str] | None, settings: SessionSettings, role: int,
    entropy: bytes, *, cluster: str, inputs: Mapping[str, Any] | None = None,
    sequential: bool = False, digest_over: int | None = DIGEST_OVER, force: bool = False,
) -> Wrapper:
    """A transport wrapper that records ``role`` into ``directory`` (identity if None).

    The folder must exist (:func:`prepare_record_dir`). Frames larger than ``digest_over``
    bytes are stored by digest only (a replay re-derives them by replaying their sender).
    An existing trace of ``role`` is replaced only with ``force``.
    """
    if directory is None:
        return lambda transport: transport
    config = trace_config(settings, role, entropy, cluster=cluster, inputs=inputs,
                          sequential=sequential)

    def wrap(transport: Transport) -> Transport:
        return RecordingTransport(transport, trace_path(directory, role), config,
                                  session=settings.session, digest_over=digest_over,
                                  force=force)

    return wrap


def local_recording(
    directory: str | os.PathLike[str], settings: SessionSettings,
    inputs: Mapping[int, Mapping[str, Any]], *, seed: str | None = None, cluster: str = "local",
    sequential: bool = False, digest_over: int | None = DIGEST_OVER, force: bool = False,
) -> tuple[Wrapper, dict[int, bytes]]:
    """Recording for every role of an in-process run (``puma_async.local --record DIR``).

    ``inputs`` holds the model owner's and the client's trace inputs by role. Returns the
    ``wrap_transport`` and ``entropy`` arguments of :func:`puma_async.runner.run_roles`: each
    role's entropy (random, or derived from the hex ``seed``) is drawn here so that its trace
    header can hold it.
    """
    prepare_record_dir(directory, force=force)
    entropy = {role: role_entropy(seed, role) for role in ALL_ROLES}
    wrappers = {
        role: recorder(directory, settings, role, entropy[role], cluster=cluster,
                       inputs=inputs.get(role), sequential=sequential, digest_over=digest_over,
                       force=force)
        for role in ALL_ROLES
    }
    return (lambda transport: wrappers[transport.role](transport)), entropy


def program_from_trace(role: int, config: Mapping[str, Any]
                       ) -> tuple[SessionSettings, bytes, bool, Program]:
    """The settings, entropy, sequential switch and program of ``role`` from its trace
    header's configuration (the model owner's loads its weights: tiny's from the seed)."""
    if config.get("kind") != TRACE_KIND:
        raise TraceError(f"the trace is not of a session run (kind {config.get('kind')!r})")
    entropy = config.get("entropy")
    if not isinstance(entropy, bytes):
        raise TraceError("the trace header holds no entropy: it cannot be replayed")
    settings = SessionSettings.from_dict(config.get("settings", {}))
    inputs = config.get("inputs", {})
    try:
        if role == MODEL_OWNER:
            weights = owner_model(settings, inputs["model_file"]).load_weights()
            program = build_program(settings, role, weights=weights)
        elif role == CLIENT:
            options = GenerationOptions(inputs["temperature"], inputs["seed"], inputs["eos_id"],
                                        inputs["stop_at_eos"])
            program = build_program(settings, role, prompts=inputs["prompts"], options=options)
        else:
            program = build_program(settings, role)
    except (KeyError, TypeError) as exc:
        raise TraceError(f"the trace header's inputs of {role_name(role)} are incomplete: "
                         f"{exc}") from None
    return settings, entropy, bool(config.get("sequential", False)), program


__all__ = [
    "DIGEST_OVER", "ENTROPY_BYTES", "TRACE_KIND", "client_inputs", "local_recording",
    "owner_inputs", "prepare_record_dir", "program_from_trace", "recorder", "role_entropy",
    "trace_config", "trace_path",
]
