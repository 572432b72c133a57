"""Build the program of one role from what that role may hold, and nothing more.

A computing party gets the public settings (the architecture) only; the model owner alone
gets weights; the client alone gets prompts and decoding options. Giving a role what is not
its own is a :class:`ValueError`, so a process that runs some roles never builds, loads or
holds the secrets of the others.
"""

from __future__ import annotations

from collections.abc import Sequence

from puma_async.context import Program
from puma_async.model.weights import LlamaWeights
from puma_async.roles import CLIENT, MODEL_OWNER, PARTIES, role_name
from puma_async.session.generation import GenerationOptions, ProgressFn
from puma_async.session.programs import client_program, owner_program, party_program
from puma_async.session.settings import SessionSettings


def build_program(
    settings: SessionSettings,
    role: int,
    *,
    weights: LlamaWeights | None = None,
    prompts: Sequence[Sequence[int]] | None = None,
    options: GenerationOptions | None = None,
    progress: ProgressFn | None = None,
) -> Program:
    """The program of ``role``: ``weights`` for the model owner only, ``prompts`` (and
    ``options``) for the client only; ``progress`` for a party or the client."""
    if weights is not None and role != MODEL_OWNER:
        raise ValueError(f"{role_name(role)} must not get the weights")
    if (prompts is not None or options is not None) and role != CLIENT:
        raise ValueError(f"{role_name(role)} must not get the client's prompts")
    if role in PARTIES:
        return party_program(settings, progress)
    if role == MODEL_OWNER:
        if weights is None:
            raise ValueError("the model owner's program needs the weights")
        return owner_program(settings, weights)
    if role == CLIENT:
        if prompts is None:
            raise ValueError("the client's program needs its prompts")
        return client_program(settings, prompts, options or GenerationOptions(), progress)
    raise ValueError(f"unknown role {role_name(role)}")


__all__ = ["build_program"]
