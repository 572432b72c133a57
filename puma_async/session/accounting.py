"""One pass's cost as the benchmarks report it: online and offline, per component of a layer.

A pass (the prompt pass or one new token) is the session's scope ``p{prompt}.t{step}``
(:mod:`.programs`; a long prompt's Prefill passes come before its pass 0, in scopes of their
own: :func:`prompt_scopes`): its ``io`` (the client's one-hot rows in, the logits out) and
the scopes of :func:`~puma_async.protocols.llama.forward_scopes` (``embed``,
``layer{i}.attn.norm``, ..., ``head``). Every message of the pass is in exactly one of them, so:

- *online rounds* per component come from the critical path (:mod:`puma_async.critical_path`)
  and sum exactly to the pass's rounds;
- *bytes* (payload, sent by P0, P1 and P2 together) per component sum to the pass's bytes;
- *offline* rounds are how deep each component's preparation is (offline work counts its own
  rounds from 0) and the pass's offline rounds the deepest of them;
- *frames per peer per round*: the most frames any party sent to one peer during the pass,
  over the pass's online rounds (1 or less when every party sends one frame per peer per
  round).

Needs the statistics of a session run with ``record_messages=True``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from puma_async.context import DEFAULT_PHASE, OFFLINE_PHASE
from puma_async.critical_path import (
    bytes_by_scope,
    depth_by_scope,
    group,
    link_traffic,
    rounds_by_scope,
)
from puma_async.protocols.llama import COMPONENTS, forward_scopes
from puma_async.roles import PARTIES, role_name
from puma_async.stats import PartyStats

IO = "io"
"""The session's own scope in a pass: input rows in, logits out."""


def pass_scope(prompt: int, step: int) -> str:
    """The scope of prompt ``prompt``'s pass ``step`` (0: the prompt pass)."""
    return f"p{prompt}.t{step}"


def prefill_scope(prompt: int, start: int) -> str:
    """The scope of prompt ``prompt``'s Prefill pass from position ``start`` (a prompt
    longer than a pass: its first positions, before its pass 0)."""
    return f"p{prompt}.prefill{start}"


def prompt_scopes(stats: PartyStats, prompt: int) -> list[str]:
    """The scopes of prompt ``prompt``'s passes up to its first token, in order: its Prefill
    passes (if any), then its pass 0."""
    prefix = prefill_scope(prompt, 0)[:-1]
    starts = sorted(int(s[len(prefix):]) for s in stats.scopes()
                    if s.startswith(prefix) and s[len(prefix):].isdigit())
    return [*(prefill_scope(prompt, start) for start in starts), pass_scope(prompt, 0)]


def component_rows(n_layers: int) -> dict[str, tuple[str, ...]]:
    """Each row of a component table and the scopes it covers: ``io``, ``embed``, ``tuples``
    (the pass's offline material made ahead: TP1 tuples and comparisons' material), one per
    layer component (its scope in every layer, in
    layer order) and ``head``."""
    rows: dict[str, tuple[str, ...]] = {IO: (IO,), "embed": ("embed",), "tuples": ("tuples",)}
    for name in COMPONENTS:
        rows[name] = tuple(f"layer{i}.{name}" for i in range(n_layers))
    rows["head"] = ("head",)
    return rows


def account_pass(stats: Mapping[int, PartyStats], scope: str, n_layers: int) -> dict[str, Any]:
    """The pass in ``scope`` (of a model of ``n_layers``): ``online`` and ``offline`` rounds
    and bytes, ``components`` (row -> phase -> ``rounds`` and ``bytes``, a list with one
    figure per layer for layer components) and the online ``links`` (``P0->P1``: messages,
    frames, rounds used). Plain data, for JSON."""
    names = (IO, *forward_scopes(n_layers))
    parties = {p: stats[p] for p in PARTIES}
    figures = {
        DEFAULT_PHASE: (
            group(rounds_by_scope(stats, phase=DEFAULT_PHASE, scope=scope), names),
            group(bytes_by_scope(parties, phase=DEFAULT_PHASE, scope=scope), names),
        ),
        OFFLINE_PHASE: (
            group(depth_by_scope(stats, phase=OFFLINE_PHASE, scope=scope), names, max),
            group(bytes_by_scope(parties, phase=OFFLINE_PHASE, scope=scope), names),
        ),
    }
    online_rounds = sum(figures[DEFAULT_PHASE][0].values())
    links = link_traffic(stats, phase=DEFAULT_PHASE, scope=scope, roles=frozenset(PARTIES))
    most_frames = max((link.frames for link in links.values()), default=0)
    return {
        DEFAULT_PHASE: {
            "rounds": online_rounds,
            "bytes": sum(figures[DEFAULT_PHASE][1].values()),
            "frames_per_peer_per_round": most_frames / online_rounds if online_rounds else 0.0,
        },
        OFFLINE_PHASE: {
            "rounds": max(figures[OFFLINE_PHASE][0].values(), default=0),
            "bytes": sum(figures[OFFLINE_PHASE][1].values()),
        },
        "components": {
            row: {
                phase: {"rounds": [rounds[s] for s in scopes], "bytes": [sent[s] for s in scopes]}
                for phase, (rounds, sent) in figures.items()
            }
            for row, scopes in component_rows(n_layers).items()
        },
        "links": {
            f"{role_name(a)}->{role_name(b)}": dataclasses.asdict(link)
            for (a, b), link in links.items()
        },
    }


__all__ = [
    "IO", "account_pass", "component_rows", "pass_scope", "prefill_scope", "prompt_scopes",
]
