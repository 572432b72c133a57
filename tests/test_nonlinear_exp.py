"""negExp against float64 numpy: dense grid, thresholds, very negative inputs, hypothesis
samples near the thresholds and the range ends."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from puma_async.protocols.exp import CUTOFF, NEG_EXP, neg_exp

MAX_ERROR = 4.7e-6  # documented: measured 4.5e-6 (the fit's 6.9e-7, the output's unit 3.8e-6)
UNIT = 2.0**-18
SLACK = NEG_EXP.slack  # above a threshold by less, x may take the row below (dropped bits)
SPECIAL = [t + d for t in (*NEG_EXP.breakpoints, 0.0)
           for d in (-UNIT, 0.0, UNIT, SLACK / 2, SLACK - UNIT, SLACK) if t + d <= 0]


def _reference(fxp, x: np.ndarray) -> np.ndarray:
    xq = fxp.quantised(x)
    return np.where(xq < CUTOFF, 0.0, np.exp(xq))


def test_dense_grid_and_far_below_the_cutoff(fxp) -> None:
    x = np.concatenate([
        np.linspace(-20, 0, 200001), SPECIAL, [-33.3, -66.7, -1e4, -2.0**16, -2.0**30],
    ])
    got, ev = fxp.run(neg_exp, x)
    assert np.max(np.abs(got - _reference(fxp, x))) <= MAX_ERROR
    assert np.max(np.abs(got - np.exp(fxp.quantised(x)))) <= MAX_ERROR  # the cutoff too
    assert np.all(got[fxp.quantised(x) < CUTOFF] == 0)
    assert np.all(got[x == 0] == 1)  # e^0 exactly: the top piece's constant
    assert np.all(got >= -UNIT)
    assert max(ev.cost(p).rounds for p in range(3)) == 6


near_thresholds = st.builds(
    lambda t, k: t + k * UNIT, st.sampled_from([*NEG_EXP.breakpoints, 0.0]),
    st.integers(-64, round(SLACK / UNIT) + 64),  # across the slack above each threshold
).filter(lambda x: x <= 0)


@settings(max_examples=8, deadline=None)
@given(st.lists(st.one_of(st.floats(-2.0**16, 0.0), near_thresholds), min_size=1,
                max_size=200))
def test_hypothesis_samples(fxp, xs: list[float]) -> None:
    x = np.array(xs)
    got, _ = fxp.run(neg_exp, x)
    assert np.max(np.abs(got - _reference(fxp, x))) <= MAX_ERROR


def test_pieces_hold_across_their_slack() -> None:
    """Every piece below the top one meets the fit's 6.94e-7 on its interval extended by the
    slack (float64, 4,001 points), and the zero row below -14 is within 8.4e-7 of e^x there:
    the comparisons' dropped bits cost no accuracy beyond the documented bound."""
    t, spec = NEG_EXP.breakpoints, NEG_EXP
    for k, row in enumerate(spec.coefficients[:-1]):
        x = np.linspace(t[k], t[k + 1] + SLACK, 4001)
        assert np.max(np.abs(np.polyval(row[::-1], x / spec.scale) - np.exp(x))) <= 6.94e-7, k
    assert np.exp(CUTOFF + SLACK) <= 8.4e-7
