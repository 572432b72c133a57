"""Round accounting: message parents, critical-path attribution, the offline clock, and a
pass's per-component figures on the tiny model (deterministic: no timing is involved)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import pytest
import trio.testing

from puma_async.context import OFFLINE_PHASE, ArraySpec, Context
from puma_async.critical_path import (
    bytes_by_scope,
    critical_path,
    depth_by_scope,
    group,
    in_scope,
    link_traffic,
    relative_scope,
    rounds_by_scope,
)
from puma_async.model import random_weights, tiny_config
from puma_async.protocols.costs import PREPARED, cost
from puma_async.protocols.llama import COMPONENTS, forward_scopes
from puma_async.roles import PARTIES, next_party, prev_party
from puma_async.runner import run_local
from puma_async.session import SessionResult, run_session
from puma_async.session.accounting import account_pass, component_rows, pass_scope
from puma_async.stats import MessageId, MessageRecord, PartyStats

CONFIG = dataclasses.replace(tiny_config(), n_layers=2)
PROMPT = [1, 2, 3, 4, 5, 6, 7]
"""7 tokens: the first new token's attention rows have 8 entries, as costs.py's softmax case."""


def run(program, **kw):
    return run_local(dict.fromkeys(PARTIES, program),
                     clock=trio.testing.MockClock(autojump_threshold=0), record_messages=True,
                     **kw)


async def ring_rounds(ctx: Context, rounds: int) -> int:
    """``rounds`` hops around the ring: each party sends, then waits for its neighbour."""
    total = 0
    for i in range(rounds):
        await ctx.send_arrays(next_party(ctx.role), np.full(1, i, np.uint64))
        total += int((await ctx.recv_array(prev_party(ctx.role), ArraySpec.ring(1)))[0])
    return total


async def offline_rounds(ctx: Context, rounds: int) -> int:
    with ctx.phase(OFFLINE_PHASE):
        return await ring_rounds(ctx, rounds)


# -- hand-made records ----------------------------------------------------------------------

def record(receiver: int, path: tuple[int, ...], round_: int, parent: MessageId | None,
           scope: str, *, seq: int = 0, nbytes: int = 8, phase: str = "online",
           frame: int = 0) -> MessageRecord:
    return MessageRecord(receiver, path, seq, round_, parent, phase, scope, nbytes, frame)


def stats_of(records: Mapping[int, list[MessageRecord]]) -> dict[int, PartyStats]:
    return {role: PartyStats(role, (), (), (), 0, (), (), messages=tuple(sent))
            for role, sent in records.items()}


def chain() -> dict[int, PartyStats]:
    """P0 -> P1 (round 1, scope s.a), P1 -> P2 (2, s.b), P2 -> P0 (3, s.b.x), and beside them
    P0 -> P2 (round 1, s.a, nobody's parent) and an offline pair; s.pre is before the step."""
    return stats_of({
        0: [record(1, (0,), 1, (2, 0, (9,), 0), "s.a", nbytes=16, frame=0),
            record(2, (1,), 1, None, "s.a", frame=0),
            record(1, (5,), 1, None, "s.a", phase=OFFLINE_PHASE, nbytes=100),
            record(1, (0,), 0, None, "pre", seq=1)],
        1: [record(2, (0,), 2, (0, 1, (0,), 0), "s.b", nbytes=32, frame=0),
            record(0, (5,), 2, (0, 1, (5,), 0), "s.b", phase=OFFLINE_PHASE, nbytes=100)],
        2: [record(0, (0,), 3, (1, 2, (0,), 0), "s.b.x", frame=0),
            record(0, (9,), 0, None, "pre")],
    })


def test_critical_path_follows_parents_across_parties() -> None:
    stats = chain()
    path = critical_path(stats, phase="online", scope="s")
    assert [(hop.sender, hop.record.round) for hop in path] == [(2, 3), (1, 2), (0, 1)]
    assert rounds_by_scope(stats, phase="online", scope="s") == {"b.x": 1, "b": 1, "a": 1}
    # the walk stops at a parent outside the scope asked for
    assert rounds_by_scope(stats, phase="online", scope="s.b") == {"x": 1, "": 1}


def test_scopes_group_into_the_longest_name_and_sum() -> None:
    stats = chain()
    rounds = rounds_by_scope(stats, phase="online", scope="s")
    assert group(rounds, ["a", "b"]) == {"a": 1, "b": 2}
    assert group(rounds, ["a", "b", "b.x"]) == {"a": 1, "b": 1, "b.x": 1}
    with pytest.raises(ValueError, match=r"'b\.x' is in none"):
        group(rounds, ["a", "b.y"])
    assert bytes_by_scope(stats, phase="online", scope="s") == {"a": 24, "b": 32, "b.x": 8}


def test_offline_records_are_apart() -> None:
    stats = chain()
    assert len(critical_path(stats, phase=OFFLINE_PHASE, scope="s")) == 2
    assert depth_by_scope(stats, phase=OFFLINE_PHASE, scope="s") == {"a": 1, "b": 2}
    assert group(depth_by_scope(stats, phase=OFFLINE_PHASE, scope="s"), ["a", "b", "c"],
                 max) == {"a": 1, "b": 2, "c": 0}
    assert critical_path(stats, phase=OFFLINE_PHASE, scope="s.c") == []


def test_inconsistent_parents_are_refused() -> None:
    stats = stats_of({0: [record(1, (0,), 3, (1, 0, (1,), 0), "s")],
                      1: [record(0, (1,), 1, None, "s")]})
    with pytest.raises(ValueError, match="inconsistent"):
        critical_path(stats, phase="online", scope="s")


def test_link_traffic_counts_frames_and_rounds() -> None:
    links = link_traffic(chain(), phase="online", scope="s")
    assert {link: (t.messages, t.frames, t.rounds) for link, t in links.items()} == {
        (0, 1): (1, 1, 1), (0, 2): (1, 1, 1), (1, 2): (1, 1, 1), (2, 0): (1, 1, 1)}


# -- the runtime's records ---------------------------------------------------------------------

def test_offline_work_keeps_its_own_clock() -> None:
    async def program(ctx: Context) -> tuple[int, int, int]:
        await ring_rounds(ctx, 2)
        before = ctx.clock
        prepared = await offline_rounds(ctx, 5)
        after = ctx.clock
        await ring_rounds(ctx, 1)
        return before, after, prepared

    done = run(program)
    for p in PARTIES:
        assert done.results[p] == (2, 2, 10)
        stats = done.stats[p]
        assert stats.totals(phase="online").rounds == 3
        assert stats.totals(phase=OFFLINE_PHASE).rounds == 5
        offline = [m for m in stats.messages if m.phase == OFFLINE_PHASE]
        assert sorted(m.round for m in offline) == [1, 2, 3, 4, 5]
        assert offline[0].parent is None  # the offline clock starts afresh, not from online
        assert max(m.round for m in stats.messages if m.phase == "online") == 3


def test_offline_work_beside_online_rounds_moves_no_online_clock() -> None:
    async def program(ctx: Context) -> tuple[int, int, int]:
        prepared, online = await ctx.gather(lambda c: offline_rounds(c, 4),
                                            lambda c: ring_rounds(c, 2))
        return prepared, online, ctx.clock

    done = run(program)
    assert all(done.results[p] == (6, 1, 2) for p in PARTIES)
    assert all(done.stats[p].totals(phase=OFFLINE_PHASE).rounds == 4 for p in PARTIES)
    assert len(critical_path(done.stats, phase="online", scope="")) == 2
    assert len(critical_path(done.stats, phase=OFFLINE_PHASE, scope="")) == 4


# -- a tiny-model session ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def session() -> SessionResult:
    weights = random_weights(CONFIG, seed=5)
    return run_session(weights, [PROMPT], max_new_tokens=3, record_messages=True)


def test_parents_are_consistent_across_parties(session: SessionResult) -> None:
    """Every parent is a message its child's sender received, one round before the child, and
    offline messages descend from offline ones only."""
    sent = {(sender, m.receiver, m.path, m.seq): m
            for sender, stats in session.stats.items() for m in stats.messages}
    assert len(sent) == sum(len(s.messages) for s in session.stats.values())
    with_parent = 0
    for (sender, *_), message in sent.items():
        if message.parent is None:
            continue
        with_parent += 1
        parent = sent[message.parent]
        assert message.parent[1] == sender  # received by the child's sender
        assert parent.round == message.round - 1
        assert (parent.phase == OFFLINE_PHASE) == (message.phase == OFFLINE_PHASE)
    # without a parent: the setup's messages and every offline block's first round (the
    # comparisons' random bits, the norms' products of two of them, the TP1 tuples' leaves
    # and shares): 25% of them here
    assert with_parent > 0.7 * len(sent)


@pytest.mark.parametrize("step", [0, 1, 2])
def test_components_sum_to_the_pass(session: SessionResult, step: int) -> None:
    scope = pass_scope(0, step)
    span = max(session.step_cost(0, step, p).rounds for p in PARTIES)
    path = critical_path(session.stats, phase="online", scope=scope)
    assert len(path) == span > 0
    assert [hop.record.round for hop in path] == list(
        range(path[0].record.round, path[0].record.round - span, -1))
    # every message of the pass is in io or one of forward's scopes
    group(rounds_by_scope(session.stats, phase="online", scope=scope),
          ("io", *forward_scopes(CONFIG.n_layers)))

    account = account_pass(session.stats, scope, CONFIG.n_layers)
    online, rows = account["online"], account["components"]
    assert list(rows) == list(component_rows(CONFIG.n_layers))
    assert online["rounds"] == span
    assert sum(sum(r["online"]["rounds"]) for r in rows.values()) == span
    assert online["bytes"] == sum(session.step_cost(0, step, p).bytes_sent for p in PARTIES)
    assert sum(sum(r["online"]["bytes"]) for r in rows.values()) == online["bytes"]
    assert all(len(rows[c]["online"]["rounds"]) == CONFIG.n_layers for c in COMPONENTS)
    assert online["frames_per_peer_per_round"] > 0
    offline = account["offline"]
    assert offline["bytes"] == sum(
        session.stats[p].totals(phase=OFFLINE_PHASE, scope=scope).bytes_sent for p in PARTIES)
    assert offline["rounds"] == max(
        (max(r["offline"]["rounds"]) for r in rows.values()), default=0)



@pytest.mark.parametrize("step", [1, 2])
def test_a_new_tokens_material_is_made_during_the_pass_before(
    session: SessionResult, step: int
) -> None:
    """A new token's prepared offline material (scope ``tuples``: the TP1 tuples and the
    comparisons' material of :data:`TUPLES_AHEAD` and the head) is made beside the pass
    before (``session.programs``, ``llama.prepare_tuples``): on every link it all left
    before the pass's first online message, so no online round of the pass waits on it (the
    prompt pass makes its own beside the embedding)."""
    scope = pass_scope(0, step)
    ahead = ("tuples",)

    def prepared(m: MessageRecord) -> bool:
        return m.phase == OFFLINE_PHASE and any(
            in_scope(relative_scope(m.scope, scope), name) for name in ahead)

    links = 0
    for sender in PARTIES:
        mine = [m for m in session.stats[sender].messages if in_scope(m.scope, scope)]
        for receiver in set(PARTIES) - {sender}:
            made = [m.frame for m in mine if m.receiver == receiver and prepared(m)]
            online = [m.frame for m in mine
                      if m.receiver == receiver and m.phase != OFFLINE_PHASE]
            if made:
                links += 1
                assert max(made) < min(online), (sender, receiver)
    assert links >= 3  # every party sends some of it

DECLARED = {
    "attn.norm": ("rms_norm",),  # its gain is folded into W_qkv
    "attn.qkv": ("mul_fxp",),  # RoPE(x W'qkv) rho; x W'qkv beside the norm
    "attn.rope": ("truncate",),  # on x W'qkv, beside the norm
    "attn.scores": ("matmul_fxp",),
    "attn.softmax.max_along": ("max_along (rows of 8)",),
    "attn.softmax.neg_exp": ("neg_exp",),
    "attn.softmax.reciprocal": ("reciprocal (x in [0.5, 129])",),
    "attn.softmax": ("mul_fxp",),  # (e @ V) x 1/sum
    "attn.pv": ("matmul_fxp",),  # e @ V, beside the reciprocal (one new row)
    "attn.o": ("matmul_fxp",),
    "mlp.norm": ("rms_norm",),  # its gain is folded into W_gate_up
    "mlp.gate_up": ("matmul_fxp",),
    "mlp.silu": ("silu",),
    "mlp.silu_up": ("mul_fxp",),
    "mlp.down": ("matmul_fxp",),
}
"""The ops of each component of a layer (``costs.py`` names), one after the other."""
OVERLAPS = {"attn.softmax.max_along": 1, "attn.softmax.reciprocal": 1}
"""Rounds a component shares with the product before it (counted there): its first messages
come from that product's dealer, whose output components are ready after the product's first
round (the reciprocal's: its comparisons' leaves, sent by negExp's last dealer)."""
AHEAD = {"attn.scores": 1}
"""Rounds of a component that run beside the next one's (counted there): the scores'
truncation's second round beside the maximum's first tree level, whose leaves travel in the
truncation's first round (``protocols.softmax.max_of_product``)."""
WIDE = {"attn.norm": 2, "mlp.norm": 2}
"""Rounds of a component's op that the product before it does: the norms' wide copy (the
standalone rms_norm's own truncation) comes from the product that makes the residual stream
(the embedding, the down and O projections: ``protocols.llama.residual_matmul``)."""
DEFERRED = {"attn.norm": 2}
"""Rounds of a component's op done in the next component: the attention norm's product x rho
becomes the product of x W'qkv by rho (``protocols.llama.normalised_qkv``)."""
TUPLES_AHEAD = ("attn.norm", "attn.softmax.max_along", "attn.softmax.neg_exp",
                "attn.softmax.reciprocal", "mlp.norm", "mlp.silu")
"""Components whose offline material the pass makes at its start
(``protocols.llama.prepare_tuples``), all of it in scope ``tuples``: their TP1 tuples (4
offline rounds) and their comparisons' material, one preparation per kind of comparison
(:data:`.costs.PREPARED` rounds; the norms' one more: the products of two of its random
bits, ``protocols.segments.prepare_selections``); none in their own scope."""
BESIDE = {"attn.rope", "attn.pv"}
"""Components off the critical path: RoPE rotates x W'qkv beside the attention norm's rsqrt
(``protocols.llama.normalised_qkv``), and a new token's e @ V runs beside the softmax's
reciprocal (``protocols.llama.attend``), so their rounds are the norm's and the
reciprocal's."""


def test_layer_rounds_are_the_declared_costs(session: SessionResult) -> None:
    """A new token's layer components take the rounds their ops declare (costs.py), online
    minus :data:`OVERLAPS`, :data:`AHEAD`, :data:`WIDE` and :data:`DEFERRED`, offline the
    deepest preparation's."""
    def declared(name: str, phase: str) -> int:
        rounds = {getattr(c, phase).rounds for c in cost(name).cases}
        assert len(rounds) == 1, name  # the tiny model's arrays are the small cases
        return rounds.pop()

    rows = account_pass(session.stats, pass_scope(0, 1), CONFIG.n_layers)["components"]
    assert set(DECLARED) == set(COMPONENTS)
    for i in range(CONFIG.n_layers):
        online = {c: 0 if c in BESIDE else sum(declared(op, "online") for op in ops)
                  - OVERLAPS.get(c, 0) - AHEAD.get(c, 0) - WIDE.get(c, 0)
                  - DEFERRED.get(c, 0)
                  for c, ops in DECLARED.items()}
        offline = {c: 0 if c in TUPLES_AHEAD else max(declared(op, "offline") for op in ops)
                   for c, ops in DECLARED.items()}
        assert {c: rows[c]["online"]["rounds"][i] for c in COMPONENTS} == online, i
        assert {c: rows[c]["offline"]["rounds"][i] for c in COMPONENTS} == offline, i
    assert rows["tuples"]["online"]["rounds"] == [0]
    assert rows["tuples"]["offline"]["rounds"] == [max(declared("truncate1", "offline"),
                                                       PREPARED + 1)]
    softmax = [c for c in COMPONENTS if c.startswith("attn.softmax")]
    assert sum(declared(DECLARED[c][0], "online") - OVERLAPS.get(c, 0) * (c != softmax[0])
               for c in softmax) == cost("softmax (rows of 8)").cases[0].online.rounds  # small
