"""Reciprocal and rsqrt against float64 numpy over their documented ranges."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from puma_async.context import Context
from puma_async.protocols.normalise import plan_scale
from puma_async.protocols.reciprocal import (
    RECIPROCAL_COEFFICIENTS,
    RSQRT_SEGMENTS,
    reciprocal,
    rsqrt,
)
from puma_async.protocols.segments import SEGMENT_FRAC, Exponents, plan_segments
from puma_async.protocols.shares import AShare

REL = 5e-6  # reciprocal: documented relative error where the output has the bits (polynomial:
# 1.5e-6)
RSQRT_REL = 1.3e-6  # rsqrt: the documented bound (measured 8.3e-7; segments alone 3.25e-7)


def _log_grid(lo: float, hi: float, n: int = 20001) -> np.ndarray:
    return np.exp(np.linspace(np.log(lo), np.log(hi), n))


def _check(got: np.ndarray, want: np.ndarray, frac_out: int, rel: float = REL) -> None:
    tolerance = rel * np.abs(want) + 2.0 ** (1 - frac_out)
    assert np.all(np.abs(got - want) <= tolerance), np.max(np.abs(got - want) / tolerance)


def _segment_starts(lo: float, hi: float) -> np.ndarray:
    """Every segment start of rsqrt's octaves in [lo, hi], one unit below and above too."""
    units = [math.ceil(start * 2**m) + d for m in range(62) for start in RSQRT_SEGMENTS.starts
             for d in (-1, 0, 1)]
    x = np.array(units, dtype=np.float64) / 2**18
    return x[(x >= lo) & (x <= hi)]


@pytest.mark.parametrize(("lo", "hi", "frac_out"), [
    (0.5, 129.0, 32),  # a softmax row sum
    pytest.param(2.0**-18, 2.0**20, 18, marks=pytest.mark.slow),  # everything from one unit up
    (1e-3, 1e3, 24),
])
def test_reciprocal_grid(fxp, lo: float, hi: float, frac_out: int) -> None:
    x = np.concatenate([_log_grid(lo, hi), [lo, hi]])

    async def fn(ctx: Context, a: AShare) -> AShare:
        return await reciprocal(ctx, a, min_value=lo, max_value=hi, frac_out=frac_out)

    got, _ = fxp.run(fn, x, frac_out=frac_out)
    _check(got, 1 / fxp.quantised(x), frac_out)


@pytest.mark.parametrize(("lo", "hi", "frac_out"), [
    pytest.param(2.0**-18, 2.0**20, 18, marks=pytest.mark.slow), (1e-5, 1e5, 18),
    pytest.param(2.0**-18, 2.0**20, 30, marks=pytest.mark.slow), (0.5, 129.0, 32),
])
def test_rsqrt_grid(fxp, lo: float, hi: float, frac_out: int) -> None:
    # rsqrt costs a candidate per octave of the range for every element, so the grid between
    # the segment starts (each checked one unit below, at and above) is sparser than
    # reciprocal's: still about 100 points per octave on the widest range.
    x = np.concatenate([_log_grid(lo, hi, 4001), _segment_starts(lo, hi), [lo, hi]])

    async def fn(ctx: Context, a: AShare) -> AShare:
        return await rsqrt(ctx, a, min_value=lo, max_value=hi, frac_out=frac_out)

    got, ev = fxp.run(fn, x, frac_out=frac_out)
    want = 1 / np.sqrt(fxp.quantised(x))
    _check(got, want, frac_out, RSQRT_REL)
    big = want * 2.0**frac_out >= 2**22  # the relative error alone where the output has bits
    assert np.all(np.abs(got - want)[big] <= RSQRT_REL * want[big])
    assert [ev.cost(p).rounds for p in range(3)] == [7, 7, 7]


@settings(max_examples=6, deadline=None)
@given(st.lists(st.floats(2.0**-10, 2.0**12), min_size=1, max_size=100))
def test_hypothesis_samples(fxp, xs: list[float]) -> None:
    x = np.array(xs)

    async def fn(ctx: Context, a: AShare) -> list[AShare]:
        return [await reciprocal(ctx, a, min_value=2.0**-10, max_value=2.0**12, frac_out=24),
                await rsqrt(ctx, a, min_value=2.0**-10, max_value=2.0**12, frac_out=24)]

    _, ev = fxp.run(fn, x, frac_out=24)
    rec, rsq = (o.view(np.int64) / 2.0**24 for o in ev.outputs)
    _check(rec, 1 / fxp.quantised(x), 24)
    _check(rsq, 1 / np.sqrt(fxp.quantised(x)), 24, RSQRT_REL)


def test_scale_plan_stays_in_the_ring() -> None:
    ranges = (Exponents(0, 8, 18), Exponents(17, 25, 18))  # softmax's row sums, two scales
    plan = plan_scale(-1.0, RECIPROCAL_COEFFICIENTS, ranges, 32)
    for table in plan.tables:
        dot_bound = np.abs(table.view(np.int64).astype(np.float64)).sum(axis=0).max()
        assert dot_bound * 2**plan.poly_frac < 2**61
    assert plan.poly_frac >= 16
    with pytest.raises(ValueError):
        plan_scale(-1.0, RECIPROCAL_COEFFICIENTS, (Exponents(0, 61, 18),), 40)


def test_rsqrt_segments_fit() -> None:
    """The stored polynomials against float64 on every segment (documented: 3.25e-7)."""
    ends = (*RSQRT_SEGMENTS.starts[1:], 2.0)
    for start, end, centre, coef in zip(RSQRT_SEGMENTS.starts, ends, RSQRT_SEGMENTS.centres,
                                        RSQRT_SEGMENTS.coefficients, strict=True):
        t = np.linspace(2 * start - 3, 2 * end - 3, 100_001)
        exact = ((t + 3) / 4) ** -0.5
        fit = np.polynomial.polynomial.polyval(t - centre, coef)
        assert np.max(np.abs(fit / exact - 1)) <= 3.3e-7
        assert 2 * centre == round(2 * centre)  # so that s and s^2 are local


def test_segment_plan_stays_in_the_ring() -> None:
    """RMSNorm's chain: every candidate's dot product below 2^61 on its segment, the
    thresholds ascending within each range, the outputs below 2^61."""
    ranges = (Exponents(28, 60, 36, 24.0), Exponents(44, 61, 20, 24.0))
    plan = plan_segments(RSQRT_SEGMENTS, ranges, 38)
    f = SEGMENT_FRAC
    ends = (*RSQRT_SEGMENTS.starts[1:], 2.0)
    width = np.array([max(abs(2 * a - 3 - c), abs(2 * b - 3 - c)) for a, b, c in
                      zip(RSQRT_SEGMENTS.starts, ends, RSQRT_SEGMENTS.centres, strict=True)])
    w = np.tile(width, plan.octave.size // width.size)
    a = np.abs(plan.coefficients.view(np.int64).astype(np.float64))
    s = w * 2**f
    s2 = w**2 * 2**f
    dot = s2 * (a[2] + a[3] * s + a[4] * s2) + a[0] + a[1] * s
    assert dot.max() < 2**61
    assert np.all(plan.shifts.astype(np.float64) * dot / 2**38 < 2**61)
    for index in range(len(ranges)):
        t = plan.thresholds[plan.threshold_range == index].astype(np.float64)
        assert np.all(np.diff(t) > 0)
    assert [c.stop - c.start for c in plan.candidates] == [99, 54]
    assert plan.thresholds.size == 99 - 1 + 54
    with pytest.raises(ValueError):
        plan_segments(RSQRT_SEGMENTS, (Exponents(0, 62, 18),), 18)
    with pytest.raises(ValueError):
        plan_segments(RSQRT_SEGMENTS, (Exponents(0, 40, 18),), 60)


def test_one_unit_is_exact_enough(fxp) -> None:
    got, _ = fxp.run(lambda ctx, a: reciprocal(ctx, a, max_value=1.0), np.array([fxp.ulp, 1.0]))
    assert abs(got[0] - 2**18) <= REL * 2**18 and abs(got[1] - 1) <= 2 * fxp.ulp
