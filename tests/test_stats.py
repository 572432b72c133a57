"""Communication accounting on its own: the recorder's counters and the frozen statistics."""

from __future__ import annotations

import dataclasses
import json

import pytest

from puma_async.stats import PartyStats, RoundsEntry, StatsRecorder, Totals, TrafficEntry


def recorded() -> StatsRecorder:
    """A small run of role 0: set-up with P1, then two layers of online traffic."""
    rec = StatsRecorder(0)
    rec.message("setup", "keys", 1, 16, 1, received=False)
    rec.message("setup", "keys", 1, 16, 1, received=True)
    rec.message("online", "layer3.attn", 1, 100, 2, received=False)
    rec.message("online", "layer3.attn", 2, 40, 3, received=True)
    rec.message("online", "layer3.mlp", 2, 7, 5, received=False)
    rec.message("online", "layer30", 1, 1000, 6, received=False)  # not inside layer3
    rec.message("online", "", 1, 1, 4, received=True)  # the root scope
    rec.scope_exit("online", "layer3.attn", 2, 0.25)
    rec.scope_exit("online", "layer3.attn", 1, 0.5)  # a second entry adds up
    rec.scope_exit("online", "layer3", 4, 1.0)
    rec.frame_sent(1, 130)
    rec.frame_sent(1, 1020)
    rec.frame_sent(2, 30)
    return rec


def test_totals_by_phase_scope_and_peer() -> None:
    stats = recorded().snapshot(seconds=2.5)
    assert stats.totals() == Totals(1123, 57, 4, 3, rounds=6)
    assert stats.totals(phase="setup") == Totals(16, 16, 1, 1, rounds=1)
    assert stats.totals(phase="online") == Totals(1107, 41, 3, 2, rounds=5)  # rounds 2..6
    assert stats.totals(scope="layer3") == Totals(107, 40, 2, 1, rounds=4)  # inclusive
    assert stats.totals(scope="layer3.attn") == Totals(100, 40, 1, 1, rounds=3)
    assert stats.totals(scope="layer30").bytes_sent == 1000
    assert stats.totals(scope="layer3.mlp").rounds == 0  # no scope_exit recorded for it
    assert stats.totals(peer=2) == Totals(7, 40, 1, 1, rounds=0)  # a peer has no rounds
    assert stats.totals(phase="online", scope="layer3", peer=1) == Totals(100, 0, 1, 0)
    assert stats.totals(phase="setup", scope="layer3") == Totals()
    assert stats.totals(phase="offline") == Totals()
    assert stats.seconds == 2.5 and stats.role == 0


def test_rounds_and_seconds_of_scopes_add_up_over_entries() -> None:
    stats = recorded().snapshot()
    assert stats.scope_seconds("layer3.attn") == 0.75
    assert stats.scope_seconds("layer3.attn", phase="setup") == 0.0
    assert stats.scope_rounds == (RoundsEntry("online", "layer3", 4, 1.0),
                                  RoundsEntry("online", "layer3.attn", 3, 0.75))
    assert dict(stats.phase_rounds) == {"online": 5, "setup": 1}
    assert stats.max_round == 6
    assert stats.scopes() == ["", "keys", "layer3", "layer3.attn", "layer3.mlp", "layer30"]


def test_wire_bytes_and_frames_per_peer() -> None:
    stats = recorded().snapshot()
    assert stats.wire_bytes_sent == ((1, 1150), (2, 30))
    assert stats.frames_sent == ((1, 2), (2, 1))


def test_a_snapshot_is_frozen() -> None:
    rec = recorded()
    stats = rec.snapshot()
    rec.message("online", "layer4", 1, 10**6, 99, received=False)
    rec.frame_sent(1, 10**6)
    assert stats.totals().bytes_sent == 1123 and stats.max_round == 6
    assert rec.snapshot().totals().bytes_sent == 1123 + 10**6
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.max_round = 0  # type: ignore[misc]
    assert stats.traffic[0] == TrafficEntry("online", "", 1, 0, 1, 0, 1, last_round=4)  # sorted


def test_a_phase_spans_its_first_to_its_last_round() -> None:
    rec = StatsRecorder(1)
    for round_ in (7, 3, 9, 5):  # recorded out of order (concurrent steps)
        rec.message("online", "x", 0, 8, round_, received=False)
    assert dict(rec.snapshot().phase_rounds) == {"online": 7}


def test_empty_statistics() -> None:
    stats = StatsRecorder(2).snapshot()
    assert stats.totals() == Totals()
    assert stats.scopes() == [] and stats.max_round == 0
    assert json.loads(stats.to_json())["totals"] == dataclasses.asdict(Totals())


def test_json_holds_every_figure() -> None:
    stats = recorded().snapshot(seconds=2.5)
    data = json.loads(stats.to_json(indent=1))
    assert data == stats.to_dict()
    assert data["role"] == 0 and data["seconds"] == 2.5 and data["max_round"] == 6
    assert data["phase_rounds"] == {"online": 5, "setup": 1}
    assert data["totals"] == dataclasses.asdict(stats.totals())
    assert data["phases"]["online"] == dataclasses.asdict(stats.totals(phase="online"))
    assert data["wire_bytes_sent"] == {"1": 1150, "2": 30}
    assert data["frames_sent"] == {"1": 2, "2": 1}
    rebuilt = PartyStats(
        role=data["role"],
        traffic=tuple(TrafficEntry(**e) for e in data["traffic"]),
        scope_rounds=tuple(RoundsEntry(**r) for r in data["scope_rounds"]),
        phase_rounds=tuple(sorted(data["phase_rounds"].items())),
        max_round=data["max_round"],
        wire_bytes_sent=tuple((int(p), b) for p, b in data["wire_bytes_sent"].items()),
        frames_sent=tuple((int(p), n) for p, n in data["frames_sent"].items()),
        seconds=data["seconds"],
    )
    assert rebuilt == stats  # nothing lost on the way through JSON
