"""Fast fuzz tier: hostile inputs of every generator end in a valid result or a typed error,
within a memory budget and an amount of work proportional to their size.

Each example draws a generator and a seed; ``benchmarks/fuzz.py`` runs the same generators
over millions of seeds.
"""

from __future__ import annotations

import random
import tracemalloc
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from puma_async import codec

from .inputs import GENERATORS, amplifiers, check, count_calls, valid_frame

CALLS_PER_BYTE = 2
CALLS_SLACK = 200


@pytest.fixture(autouse=True)
def traced() -> Iterator[None]:
    tracemalloc.start()
    yield
    tracemalloc.stop()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(GENERATORS)), st.integers(0, 2**32))
def test_hostile_inputs_end_in_a_typed_error_or_a_valid_result(name: str, seed: int) -> None:
    data = GENERATORS[name](random.Random(seed))
    outcome = check(data)
    assert outcome.typed, f"{name} seed {seed}: {outcome.kind}"
    assert outcome.peak_bytes <= codec.decode_budget(len(data)), (name, seed, len(data))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(GENERATORS)), st.integers(0, 2**32))
def test_decoding_work_is_proportional_to_the_size(name: str, seed: int) -> None:
    data = GENERATORS[name](random.Random(seed))
    assert count_calls(data) <= CALLS_SLACK + CALLS_PER_BYTE * len(data), (name, seed)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32))
def test_valid_frames_decode(seed: int) -> None:
    assert check(valid_frame(random.Random(seed))).kind == "frame"


def test_the_amplifiers_reach_the_budget_or_stay_valid() -> None:
    """The costliest frames per byte: each is either refused by the budget or decoded, and
    some of each kind are refused (the budget is what stops them)."""
    kinds = {check(amplifiers(random.Random(seed))).kind for seed in range(24)}
    assert kinds == {"frame", "DecodeError"}
