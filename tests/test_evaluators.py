"""Comparison bits opened to the evaluators, and the table row they select for a dot product
(``protocols/evaluators.py``), against plaintext numpy: exact selection, one truncation."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from puma_async.context import Context
from puma_async.evaluate import Evaluation, evaluation_program
from puma_async.protocols.evaluators import (
    SelectedRows,
    compare_for_evaluators,
    exchange_rows,
    selected_dot,
    selected_horner,
)
from puma_async.protocols.fastcmp import bounded_bits
from puma_async.protocols.ring import RING_DTYPE, to_ring
from puma_async.protocols.shares import AShare
from puma_async.protocols.trunc import ROTATE_MIN_ELEMENTS
from puma_async.roles import CLIENT, PARTIES
from puma_async.runner import run_local

FRAC = 18
BOUND = 2**8
THRESHOLDS = np.array([-11.0, -2.5, 0.0, 0.875, 5.0])


def run(fn: Any, *inputs: np.ndarray, sequential: bool = False) -> Evaluation:
    """``evaluate`` with the runtime's options (``sequential``: no ``gather`` overlaps)."""
    program = evaluation_program(fn, *inputs)
    result = run_local({role: program for role in (*PARTIES, CLIENT)}, sequential=sequential)
    return Evaluation(result.results[CLIENT], dict(result.stats), result.seconds)


def encode(values: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(values, float) * 2**FRAC).astype(np.int64).view(RING_DTYPE)


def program(steps: np.ndarray, frac: int, bits: int, horner: bool = False) -> Any:
    thresholds = encode(THRESHOLDS)
    chain = bounded_bits(BOUND, thresholds, FRAC)
    finish = selected_horner if horner else selected_dot

    async def fn(ctx: Context, x: AShare, powers: AShare) -> AShare:
        below = await compare_for_evaluators(ctx, x, thresholds, bits=chain)
        rows = await exchange_rows(ctx, below, to_ring(steps))
        return await finish(ctx, rows, powers, frac, bits)

    return fn


def expected(x: np.ndarray, steps: np.ndarray, powers: np.ndarray, frac: int) -> np.ndarray:
    """sum_j C_j V_j (integers), C = sum_k [x >= t_k] steps[k], V = (2^frac, powers)."""
    at = (x[:, None] >= THRESHOLDS[None, :]).astype(object)
    rows = at @ steps.astype(object)
    basis = np.concatenate([np.full((x.size, 1), 2**frac, dtype=object),
                            powers.astype(object)], axis=1)
    return np.sum(rows * basis, axis=1)


def assert_floor_or_next(got: np.ndarray, exact: np.ndarray, bits: int) -> None:
    floor = np.array([int(v) >> bits for v in exact], dtype=object)
    diff = got.view(np.int64).astype(object) - floor
    assert set(diff.tolist()) <= {0, 1}, diff


near = st.sampled_from([t + d for t in THRESHOLDS for d in (-2.0**-FRAC, 0.0, 2.0**-FRAC)])
values = st.one_of(near, st.floats(-BOUND, BOUND), st.sampled_from([-BOUND, BOUND]))


@settings(max_examples=30, deadline=None)
@given(xs=st.lists(values, min_size=1, max_size=80), seed=st.integers(0, 2**32 - 1),
       degree=st.integers(1, 5), sequential=st.booleans(), horner=st.booleans())
@example(xs=[-11.0, 5.0 - 2.0**-FRAC, 256.0, -256.0], seed=0, degree=4, sequential=True,
         horner=False)
@example(xs=[-11.0, 5.0 - 2.0**-FRAC, 256.0, -256.0], seed=0, degree=4, sequential=True,
         horner=True)
def test_the_selected_rows_dot_product(xs: list[float], seed: int, degree: int,
                                       sequential: bool, horner: bool) -> None:
    """Exact selection at and next to every threshold and at the bound's ends, any degree,
    with and without overlapping steps: floor or floor + 1 of the exact dot product. By
    Horner's split (degree >= 2), from the powers V_1 .. V_h only (h = ceil(d / 2)): floor
    or floor + 1 of A + q V_h, A = sum_(j <= h) C_j V_j, for q = floor(B / 2^frac) or that
    + 1, B = sum_(j > h) C_j V_(j-h) (exact integers)."""
    horner = horner and degree >= 2
    rng = np.random.default_rng(seed)
    x = np.round(np.array(xs) * 2**FRAC) / 2**FRAC
    h = (degree + 1) // 2 if horner else degree
    steps = rng.integers(-(2**20), 2**20, (THRESHOLDS.size, degree + 1))
    powers = rng.integers(-(2**24), 2**24, (x.size, h))
    frac, bits = 24, 20  # |C| < 5 * 2^20, |V| < 2^24: |C V| < 6 * 5 * 2^44 < 2^62
    got = run(program(steps, frac, bits, horner), encode(x),
              powers.astype(np.int64).view(RING_DTYPE), sequential=sequential).outputs[0]
    if not horner:
        assert_floor_or_next(got, expected(x, steps, powers, frac), bits)
        return
    low = expected(x, steps[:, : h + 1], powers, frac)
    high = np.sum(((x[:, None] >= THRESHOLDS[None, :]).astype(object) @ steps[:, h + 1 :]
                   .astype(object)) * powers[:, : degree - h].astype(object), axis=1)
    top = powers[:, h - 1].astype(object)
    for i, value in enumerate(got.view(np.int64).tolist()):
        q = int(high[i]) >> frac
        allowed = {(int(low[i] + (q + e) * top[i]) >> bits) + d for e in (0, 1) for d in (0, 1)}
        assert value in allowed, (i, value, allowed)


def test_horner_refuses_a_split_that_leaves_powers_out() -> None:
    """h must satisfy d / 2 <= h < d (B's powers v^1 .. v^(d-h) among those given, and at
    least one coefficient above h): the error names both, before the protocol's first step
    (no context is touched)."""
    for h, degree in [(1, 4), (4, 4)]:
        powers = AShare(np.zeros((4, h), RING_DTYPE), np.zeros((4, h), RING_DTYPE))
        step = selected_horner(None, SelectedRows((), (), (4,), degree), powers, 24, 20)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=f"d / 2 <= h < d, got h = {h} for d = {degree}"):
            step.send(None)


def test_three_parts_and_their_costs() -> None:
    """From ROTATE_MIN_ELEMENTS elements on, the comparisons' roles rotate over three parts:
    still exact; 7 rounds online (3 comparison, the opening, the exchange, 2 truncation); per
    element 16 d (the exchange) + m / 4 (the opening) + the leaves, tree and truncation, and
    8 m offline plus the trees' dealt products."""
    rng = np.random.default_rng(1)
    n, degree = ROTATE_MIN_ELEMENTS + 64, 4
    x = rng.uniform(-20, 20, n).round(6)
    x[: THRESHOLDS.size] = THRESHOLDS
    steps = rng.integers(-(2**20), 2**20, (THRESHOLDS.size, degree + 1))
    powers = rng.integers(-(2**24), 2**24, (n, degree))
    ev = run(program(steps, 24, 20), encode(x), powers.astype(np.int64).view(RING_DTYPE))
    assert_floor_or_next(ev.outputs[0], expected(encode(x).view(np.int64) / 2**FRAC, steps,
                                                 powers, 24), 20)
    assert max(ev.cost(p).rounds for p in PARTIES) == 7
    sent = {p: ev.cost(p).bytes_sent for p in PARTIES}
    assert max(sent.values()) - min(sent.values()) < 0.01 * max(sent.values())  # balanced
    offline = sum(ev.stats[p].totals(phase="offline").bytes_sent for p in PARTIES)
    assert offline / n == pytest.approx(8 * THRESHOLDS.size + 1.75 * THRESHOLDS.size, abs=0.1)


def test_the_dealer_of_a_part_receives_nothing() -> None:
    """One part (S = P2): S sends the leaves' monomials and deals the truncation, and
    receives nothing online: the opening and the exchange go between the evaluators P0 and
    P1 only (module docstring: S learns nothing)."""
    x = np.linspace(-12, 12, 256)
    steps = np.ones((THRESHOLDS.size, 3), np.int64)
    powers = np.ones((x.size, 2), np.int64)
    ev = run(program(steps, 24, 20), encode(x), powers.view(RING_DTYPE))
    dealer = ev.stats[2].totals(phase="online", scope="op")
    assert (dealer.messages_received, dealer.messages_sent) == (0, 2)
    assert all(ev.stats[p].totals(phase="online", scope="op").messages_received > 0
               for p in (0, 1))
