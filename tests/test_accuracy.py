"""Error profiles, next-token metrics and perplexity (puma_async.accuracy), on the tiny model.

The secure values come from the probes of a real in-process session; every probe point of
every layer must be reconstructed, match the reference's shape, and lie close to it (the
tiny model's activations are O(1) and its logits O(6): every point is within 0.002 of the
reference, as test_secure_llama bounds the logits; the revealed logits equal the probed
ones exactly).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from puma_async.accuracy import (
    NEAR_TIE,
    ErrorProfile,
    SessionComparison,
    ShareCollector,
    perplexity,
    profile_table,
    token_metrics,
)
from puma_async.model import KVCache, forward, random_weights, tiny_config
from puma_async.protocols.llama import PROBE_POINTS
from puma_async.protocols.shares import AShare
from puma_async.roles import PARTIES
from puma_async.session import GenerationOptions, Progress, in_process_settings, run_session

CONFIG = dataclasses.replace(tiny_config(), n_layers=2)
WEIGHTS = random_weights(CONFIG, seed=5)
PROMPT = [3, 1, 4, 1, 5]
NEW = 3
POINTS = [f"layer{i}.{p}" for i in range(CONFIG.n_layers) for p in PROBE_POINTS]
POINTS += ["final_norm", "logits"]


@pytest.fixture(scope="module")
def probed() -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]], object]:
    """Per pass: the secure values (collected after each pass) and the reference's."""
    collector = ShareCollector()
    secure: list[dict[str, np.ndarray]] = []

    def progress(event: Progress) -> None:
        if event.kind == "token":
            secure.append(collector.take())

    result = run_session(WEIGHTS, [PROMPT], GenerationOptions(), max_new_tokens=NEW,
                         progress=progress, probe=collector)
    reference: list[dict[str, np.ndarray]] = []
    cache = KVCache.empty(CONFIG)
    for tokens in [PROMPT, *([t] for t in result.prompts[0].tokens[:-1])]:
        points: dict[str, np.ndarray] = {}
        forward(WEIGHTS, tokens, cache, probe=points.__setitem__)
        reference.append(points)
    return secure, reference, result


def test_every_point_is_probed_on_both_sides(probed) -> None:
    secure, reference, _ = probed
    assert len(secure) == len(reference) == NEW
    for s, r in zip(secure, reference, strict=True):
        assert list(s) == POINTS
        assert set(r) == set(POINTS)


def test_probed_logits_are_the_revealed_ones(probed) -> None:
    secure, _, result = probed
    for s, record in zip(secure, result.prompts[0].records, strict=True):
        assert np.array_equal(s["logits"][0], record.logits)


def test_secure_points_are_close_to_the_reference(probed) -> None:
    secure, reference, _ = probed
    profile = ErrorProfile()
    for s, r in zip(secure, reference, strict=True):
        profile.add(s, r)
    summary = profile.summary()
    assert list(summary) == POINTS
    for point, figures in summary.items():
        assert figures["max_error"] < 0.002, point
        assert figures["rms_error"] <= figures["max_error"]
        assert figures["reference_rms"] > 0, point
    table = profile_table(summary)
    assert table.splitlines()[1].startswith("layer0")
    assert "silu_up" in table.splitlines()[0]


@pytest.mark.parametrize("per_pass", [64, 2])
def test_session_comparison_follows_the_secure_tokens(per_pass: int) -> None:
    """The reference follows the secure run's tokens; with at most 2 positions per pass,
    also its passes (each prompt's first positions in Prefill passes, then the rest and the
    tokens), every point of every pass close to it."""
    prompts = [PROMPT, [9, 8, 7]]
    collector = ShareCollector()
    comparison = SessionComparison(WEIGHTS, prompts, collector)
    settings = in_process_settings(CONFIG, NEW, max_pass_positions=per_pass)
    result = run_session(WEIGHTS, prompts, GenerationOptions(), settings=settings,
                         progress=comparison, probe=collector)
    comparison.wait()
    assert [len(p) for p in comparison.positions] == [NEW, NEW]
    for positions, secure in zip(comparison.positions, result.prompts, strict=True):
        assert [p["token"] for p in positions] == secure.tokens
        assert all(p["top1_equal"] and p["max_logit_error"] < 0.002 for p in positions)
    summary = comparison.profile.summary()
    assert list(summary) == POINTS
    assert all(figures["max_error"] < 0.002 for figures in summary.values())


def test_probe_is_installed_in_every_computing_party() -> None:
    roles: set[int] = set()
    run_session(WEIGHTS, [PROMPT], max_new_tokens=1,
                probe=lambda role, point, share: roles.add(role))
    assert roles == set(PARTIES)


def test_reference_probe_does_not_change_the_logits() -> None:
    plain = forward(WEIGHTS, PROMPT)
    probed = forward(WEIGHTS, PROMPT, probe=lambda point, value: None)
    assert np.array_equal(plain, probed)


def test_collector_sums_first_components_of_three_parties() -> None:
    collector = ShareCollector()
    parts = [np.array([5, 7], np.uint64), np.array([1, 2], np.uint64),
             np.array([2**18 - 6, -9 + 2**18], np.int64).view(np.uint64)]
    for role in range(3):
        collector(role, "x", AShare(parts[role], parts[(role + 1) % 3]))
        taken = collector.take()
        assert (taken == {}) == (role < 2)
    assert np.array_equal(taken["x"], [1.0, 1.0])


def test_token_metrics() -> None:
    plain = np.array([1.0, 3.0, 2.95, -1.0])
    same = token_metrics(plain, plain)
    assert same["top1_equal"] and same["kl"] == 0 and same["max_logit_error"] == 0
    assert same["near_tie"] and same["plain_margin"] == pytest.approx(0.05)
    flipped = token_metrics(plain, plain + np.array([0, 0, 0.2, 0]))
    assert not flipped["top1_equal"] and flipped["max_logit_error"] == pytest.approx(0.2)
    assert flipped["kl"] > 0
    assert not token_metrics(np.array([0.0, NEAR_TIE + 1e-9]), np.zeros(2))["near_tie"]


def test_perplexity() -> None:
    assert perplexity(np.zeros((3, 10)), [1, 2, 3]) == pytest.approx(10.0)
    sharp = np.full((2, 4), -1e3)
    sharp[[0, 1], [2, 0]] = 0.0
    assert perplexity(sharp, [2, 0]) == pytest.approx(1.0)
