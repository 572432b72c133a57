"""A whole session with all five roles in this process (tests, benchmarks, ``puma_async.local``).

Every role runs the program :func:`~.factory.build_program` gives it, over the in-memory
transport (:func:`puma_async.runner.run_local`): the same programs and messages as five
processes over TCP. Only here can a probe (``protocols.llama``'s :class:`LayerProbe`) be
installed in the computing parties, for accuracy measurements: it sees their shares.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from puma_async.context import Context, Program
from puma_async.model.config import LlamaConfig
from puma_async.model.weights import LlamaWeights
from puma_async.protocols.llama import LayerProbe, Probe
from puma_async.roles import CLIENT, MODEL_OWNER, PARTIES
from puma_async.runner import run_local, run_threaded
from puma_async.session.accounting import pass_scope, prompt_scopes
from puma_async.session.factory import build_program
from puma_async.session.generation import GenerationOptions, ProgressFn, PromptResult
from puma_async.session.programs import ClientResult
from puma_async.session.settings import SessionSettings
from puma_async.stats import PartyStats, Totals

IN_PROCESS_MODEL = "in-process"


@dataclasses.dataclass(frozen=True)
class SessionResult:
    """The client's results and every role's statistics."""

    prompts: tuple[PromptResult, ...]
    stats: Mapping[int, PartyStats]
    setup_seconds: float
    seconds: float

    def step_cost(self, prompt: int, step: int, party: int) -> Totals:
        """Bytes, messages and rounds of one pass at one party; step 0: the prompt's passes
        up to its first token (its Prefill passes too, whose rounds follow each other)."""
        stats = self.stats[party]
        scopes = prompt_scopes(stats, prompt) if step == 0 else [pass_scope(prompt, step)]
        each = [stats.totals(phase="online", scope=scope) for scope in scopes]
        return Totals(*(sum(getattr(t, field.name) for t in each)
                        for field in dataclasses.fields(Totals)))

    def setup_cost(self, party: int) -> Totals:
        """Bytes, messages and rounds of the set-up at one party (weights included)."""
        return self.stats[party].totals(phase="setup")

    def owner_setup_bytes(self) -> int:
        """Bytes the model owner sent (the x_2 halves of the weights, and seeds)."""
        return self.stats[MODEL_OWNER].totals(phase="setup").bytes_sent


def in_process_settings(config: LlamaConfig, max_new_tokens: int = 4, *,
                        model: str = IN_PROCESS_MODEL, **fields: Any) -> SessionSettings:
    """Settings of an in-process session: a fresh session id and, unless ``fields`` says
    otherwise, the model's whole context."""
    fields.setdefault("context", config.context_length)
    return SessionSettings(f"local-{secrets.token_hex(8)}", model=model, architecture=config,
                           max_new_tokens=max_new_tokens, **fields)


def run_session(
    weights: LlamaWeights,
    prompts: Sequence[Sequence[int]],
    options: GenerationOptions | None = None,
    *,
    max_new_tokens: int = 4,
    settings: SessionSettings | None = None,
    progress: ProgressFn | None = None,
    probe: Probe | None = None,
    threaded: bool = False,
    **run_options: Any,
) -> SessionResult:
    """Generate for every prompt with all five roles in this process (one weight sharing).

    ``settings`` default to :func:`in_process_settings` of the weights' architecture with
    ``max_new_tokens`` (which given settings replace). ``run_options`` go to
    :func:`~puma_async.runner.run_local` (latency, bandwidth, entropy, wrap_transport, ...;
    the session id, liveness and frame limit default to the settings'), or with ``threaded``
    to :func:`~puma_async.runner.run_threaded` (a loop per role, in threads). ``probe`` (accuracy
    measurements: ``puma_async.accuracy``) is installed in P0, P1 and P2 as their
    :class:`~puma_async.protocols.llama.LayerProbe`; no other runner installs one. Raises
    ContextLengthError / ValueError before anything runs, RunFailedError if a role fails.
    """
    if settings is None:
        settings = in_process_settings(weights.config, max_new_tokens)
    programs = {role: build_program(settings, role) for role in PARTIES}
    if probe is not None:
        programs = {role: _probed(program, probe) for role, program in programs.items()}
    programs[MODEL_OWNER] = build_program(settings, MODEL_OWNER, weights=weights)
    programs[CLIENT] = build_program(settings, CLIENT, prompts=prompts,
                                     options=options or GenerationOptions(), progress=progress)
    run_options.setdefault("session", settings.session)
    run_options.setdefault("liveness", settings.liveness)
    run_options.setdefault("max_frame_bytes", settings.max_frame_bytes)
    run = (run_threaded if threaded else run_local)(programs, **run_options)
    client: ClientResult = run.results[CLIENT]
    results, setup_seconds = client
    return SessionResult(results, dict(run.stats), setup_seconds, run.seconds)


def _probed(program: Program, probe: Probe) -> Program:
    """``program`` with ``probe`` installed as the party's :class:`LayerProbe` first."""

    async def run(ctx: Context) -> Any:
        ctx.install(LayerProbe(probe))
        return await program(ctx)

    return run


__all__ = ["SessionResult", "in_process_settings", "run_session"]
