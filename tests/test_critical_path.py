"""Round accounting: message parents, critical-path attribution and the offline clock
(deterministic: no timing is involved)."""

from __future__ import annotations

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
    link_traffic,
    rounds_by_scope,
)
from puma_async.roles import PARTIES, next_party, prev_party
from puma_async.runner import run_local
from puma_async.stats import MessageId, MessageRecord, PartyStats


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
