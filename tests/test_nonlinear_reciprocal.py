"""Reciprocal and rsqrt against float64 numpy over their documented ranges."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from puma_async.context import Context
from puma_async.protocols.reciprocal import (
    RECIPROCAL_SEGMENTS,
    RSQRT_SEGMENTS,
    exponents,
    reciprocal,
    reciprocal_tuples,
    rsqrt,
)
from puma_async.protocols.segments import (
    EXTENSION,
    SEGMENT_FRAC,
    Exponents,
    Segments,
    plan_segments,
    prepare_segment_batches,
)
from puma_async.protocols.shares import AShare

REL = 2.6e-6  # reciprocal: documented relative error (+ 1 unit; alone where the output has
# 2^20 units; measured 2.2e-6; segments alone 1.33e-6)
REL_BITS = 2.4e-6  # reciprocal: the analytic bound where the output has 2^21 units (direct plan)
RSQRT_REL = 1.3e-6  # rsqrt: the documented bound (measured 8.3e-7; segments alone 3.25e-7)


def _log_grid(lo: float, hi: float, n: int = 20001) -> np.ndarray:
    return np.exp(np.linspace(np.log(lo), np.log(hi), n))


def _check(got: np.ndarray, want: np.ndarray, frac_out: int, rel: float = REL,
           units: float = 1.25) -> None:
    tolerance = rel * np.abs(want) + units * 2.0**-frac_out
    assert np.all(np.abs(got - want) <= tolerance), np.max(np.abs(got - want) / tolerance)


def _check_reciprocal(got: np.ndarray, want: np.ndarray, frac_out: int,
                      direct: bool = True) -> None:
    """REL + 1.5 units everywhere, REL alone from 2^20 units; on the direct plan, REL_BITS
    from 2^21 units."""
    _check(got, want, frac_out, REL, 1.5)
    err = np.abs(got - want)
    for bits, rel in ((20, REL), (21, REL_BITS if direct else REL)):
        big = want * 2.0**frac_out >= 2**bits
        assert np.all(err[big] <= rel * want[big]), np.max(err[big] / want[big])


def _segment_starts(lo: float, hi: float) -> np.ndarray:
    """Every segment start of the octaves in [lo, hi], one unit below and above too."""
    units = [math.ceil(start * 2**m) + d for m in range(62) for start in RSQRT_SEGMENTS.starts
             for d in (-1, 0, 1)]
    x = np.array(units, dtype=np.float64) / 2**18
    return x[(x >= lo) & (x <= hi)]


def _direct(hi: float) -> bool:
    """Whether t_m is exact at 30 bits (X < 2^32): the direct plan (t_m's rounding is not
    in the error)."""
    return hi * 2**18 < 2**32


ROUNDS = 4
"""Both plans: the comparisons 3 beside the candidates (2 or 3 with TP1), the opening."""


@pytest.mark.parametrize(("lo", "hi", "frac_out"), [
    (0.5, 129.0, 32),
    (1 - 2.0**-17, 8 * (1 + 2.0**-17), 32),  # softmax row sums, rows of 8
    (1 - 2.0**-17, 2048 * (1 + 2.0**-17), 32),  # rows of 2048
    pytest.param(2.0**-18, 2.0**20, 18, marks=pytest.mark.slow),  # everything from one unit up
    (1e-3, 1e3, 24),
    (2.0**10, 2.0**20, 38),  # outputs near 2^20 units
    (2.0**13, 2.0**17, 40),  # beyond 2^32 / 2^18: the wide plan (t_m truncated)
])
def test_reciprocal_grid(fxp, lo: float, hi: float, frac_out: int) -> None:
    x = np.concatenate([_log_grid(lo, hi), _segment_starts(lo, hi), [lo, hi]])

    async def fn(ctx: Context, a: AShare) -> AShare:
        return await reciprocal(ctx, a, min_value=lo, max_value=hi, frac_out=frac_out)

    got, ev = fxp.run(fn, x, frac_out=frac_out)
    _check_reciprocal(got, 1 / fxp.quantised(x), frac_out, _direct(hi))
    assert [ev.cost(p).rounds for p in range(3)] == [ROUNDS] * 3


@pytest.mark.parametrize("ahead", [True, False])
@pytest.mark.parametrize(("lo", "hi", "frac_out", "rounds"), [
    (1 - 2.0**-17, 8 * (1 + 2.0**-17), 32, 5),  # the direct plan: t and t^2, then the dots
    (2.0**13, 2.0**17, 40, 7),  # the wide plan: t, t^2, the dots one after another
])
def test_reciprocal_without_tuples(fxp, lo: float, hi: float, frac_out: int, rounds: int,
                                   ahead: bool) -> None:
    """Material made without TP1 tuples (``prepare_segment_batches(..., tuples=False)``
    ahead, or by ``reciprocal(..., tuples=False)`` itself): the candidates' truncations take
    2 rounds each, so 5 rounds on the direct plan and 7 on the wide one instead of 4, the
    same bounds, and offline only the comparisons' material."""
    x = np.concatenate([_log_grid(lo, hi, 4001), _segment_starts(lo, hi), [lo, hi]])
    bounds = {"min_value": lo, "max_value": hi, "frac_out": frac_out}

    async def fn(ctx: Context, a: AShare) -> AShare:
        if not ahead:
            return await reciprocal(ctx, a, **bounds, tuples=False)
        (pre,) = await prepare_segment_batches(ctx, [reciprocal_tuples(ctx, a.size, **bounds)],
                                               tuples=False)
        return await reciprocal(ctx, a, **bounds, pre=pre)

    got, ev = fxp.run(fn, x, frac_out=frac_out)
    _check_reciprocal(got, 1 / fxp.quantised(x), frac_out, _direct(hi))
    assert [ev.cost(p).rounds for p in range(3)] == [rounds] * 3
    offline = max(ev.stats[p].totals(phase="offline").rounds for p in range(3))
    assert offline == 2  # the comparisons' random bits only: no TP1 tuple's 4 rounds


@settings(max_examples=25, deadline=None)
@given(
    st.sampled_from([(1 - 2.0**-17, 9 * (1 + 2.0**-17)), (0.5, 129.0), (1.0, 2048.01),
                     (3.0, 5.0)]),
    st.lists(st.tuples(st.integers(0, 12), st.integers(0, 3), st.integers(-3, 3)),
             min_size=1, max_size=40),
)
def test_reciprocal_at_boundaries(evaluate, bounds: tuple[float, float],
                                  points: list[tuple[int, int, int]]) -> None:
    """Inputs (in units) a few units from a segment start or octave boundary of the range,
    or from its ends, the extended ends included."""
    lo, hi = bounds
    lo_int, hi_int = math.ceil(lo * 2**18), math.floor(hi * 2**18)
    starts = (*RECIPROCAL_SEGMENTS.starts, 2.0)
    units = []
    for octave, start, d in points:
        m = lo_int.bit_length() - 1 + octave
        base = (lo_int, hi_int)[octave % 2] if start == 3 else math.ceil(starts[start] * 2**m)
        units.append(min(max(base + d, lo_int), hi_int))
    x = np.array(units, dtype=np.int64)
    frac_out = 32

    async def fn(ctx: Context, a: AShare) -> AShare:
        return await reciprocal(ctx, a, min_value=lo, max_value=hi, frac_out=frac_out)

    ev = evaluate(fn, x.view(np.uint64))
    got = ev.outputs[0].view(np.int64) / 2.0**frac_out
    _check_reciprocal(got, 2.0**18 / x, frac_out)


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
    assert [ev.cost(p).rounds for p in range(3)] == [ROUNDS] * 3


@settings(max_examples=6, deadline=None)
@given(st.lists(st.floats(2.0**-10, 2.0**12), min_size=1, max_size=100))
def test_hypothesis_samples(fxp, xs: list[float]) -> None:
    x = np.array(xs)

    async def fn(ctx: Context, a: AShare) -> list[AShare]:
        return [await reciprocal(ctx, a, min_value=2.0**-10, max_value=2.0**12, frac_out=24),
                await rsqrt(ctx, a, min_value=2.0**-10, max_value=2.0**12, frac_out=24)]

    _, ev = fxp.run(fn, x, frac_out=24)
    rec, rsq = (o.view(np.int64) / 2.0**24 for o in ev.outputs)
    _check_reciprocal(rec, 1 / fxp.quantised(x), 24)
    _check(rsq, 1 / np.sqrt(fxp.quantised(x)), 24, RSQRT_REL)


def test_exponents_drop_an_end_octave_reached_by_the_extension_only() -> None:
    class Ctx:  # exponents() reads only the session's fixed-point format (the default)
        def state(self, kind: type, default: object) -> object:
            return default

    ctx: Any = Ctx()
    assert exponents(ctx, 1 - 2.0**-17, 8 * (1 + 2.0**-17)) == Exponents(18, 20, 18)
    assert exponents(ctx, 1 - 2.0**-17, 1 + 2.0**-17) == Exponents(18, 18, 18)
    assert exponents(ctx, 0.5, 129.0) == Exponents(17, 25, 18)
    assert exponents(ctx, 1 - 2.0**-10, 8.5) == Exponents(17, 21, 18)
    assert exponents(ctx, 0.5, 8.0) == Exponents(17, 20, 18)


def test_direct_plan() -> None:
    """t_m is exact at W = max(20, hi - 1) <= 30 fractional bits: its square (< 2^61) and
    the candidates' dot products stay in the ring; beyond, the truncated path (W = 60)."""
    plan = plan_segments(RECIPROCAL_SEGMENTS, (Exponents(18, 28, 18),), 32)
    assert plan.direct and plan.work == 27
    assert (1 + 4 * EXTENSION) ** 2 * 4.0**plan.work < 2**61
    _assert_in_ring(RECIPROCAL_SEGMENTS, plan, 32)
    assert plan_segments(RECIPROCAL_SEGMENTS, (Exponents(0, 8, 18),), 32).work == SEGMENT_FRAC
    assert plan_segments(RECIPROCAL_SEGMENTS, (Exponents(0, 31, 18),), 18).direct
    assert not plan_segments(RECIPROCAL_SEGMENTS, (Exponents(0, 32, 18),), 18).direct


def _assert_in_ring(fit: Segments, plan, frac_out: int) -> None:
    """Every candidate's dot product below 2^61 on its (extended) segment, and its output."""
    f = SEGMENT_FRAC
    low = plan.work if plan.direct else f
    firsts = (fit.starts[0] * (1 - EXTENSION), *fit.starts[1:])
    ends = (*fit.starts[1:], 2 * (1 + EXTENSION))
    width = np.array([max(abs(2 * a - 3 - c), abs(2 * b - 3 - c)) for a, b, c in
                      zip(firsts, ends, fit.centres, strict=True)])
    w = np.tile(width, plan.octave.size // width.size)
    a = np.abs(plan.coefficients.view(np.int64).astype(np.float64))
    s = w * 2**f
    s2 = w**2 * 2**f
    dot = s2 * (a[2] + a[3] * s + a[4] * s2) + a[0] + a[1] * w * 2**low
    assert dot.max() < 2**61
    assert np.all(plan.shifts.astype(np.float64) * dot / 2**38 < 2**61)


def test_reciprocal_segments_fit() -> None:
    """The stored polynomials against float64 on every segment, the extension beyond the
    octave's ends included (documented: 1.32e-6; 1.34e-6 with the extension)."""
    fit = RECIPROCAL_SEGMENTS
    firsts = (fit.starts[0] * (1 - EXTENSION), *fit.starts[1:])
    ends = (*fit.starts[1:], 2 * (1 + EXTENSION))
    for start, end, centre, coef in zip(firsts, ends, fit.centres, fit.coefficients,
                                        strict=True):
        t = np.linspace(2 * start - 3, 2 * end - 3, 100_001)
        exact = 4 / (t + 3)
        err = np.max(np.abs(np.polynomial.polynomial.polyval(t - centre, coef) / exact - 1))
        assert err <= 1.34e-6
        assert 2 * centre == round(2 * centre)


def test_rsqrt_segments_fit() -> None:
    """The stored polynomials against float64 on every segment (documented: 3.25e-7)."""
    firsts = (RSQRT_SEGMENTS.starts[0] * (1 - EXTENSION), *RSQRT_SEGMENTS.starts[1:])
    ends = (*RSQRT_SEGMENTS.starts[1:], 2 * (1 + EXTENSION))
    for start, end, centre, coef in zip(firsts, ends, RSQRT_SEGMENTS.centres,
                                        RSQRT_SEGMENTS.coefficients, strict=True):
        t = np.linspace(2 * start - 3, 2 * end - 3, 100_001)
        exact = ((t + 3) / 4) ** -0.5
        fit = np.polynomial.polynomial.polyval(t - centre, coef)
        assert np.max(np.abs(fit / exact - 1)) <= 3.3e-7
        assert 2 * centre == round(2 * centre)  # so that s and s^2 are local


def test_segment_plan_stays_in_the_ring() -> None:
    """RMSNorm's chain: every candidate's dot product below 2^61 on its segment, the
    thresholds ascending within each range, the outputs below 2^61."""
    ranges = (Exponents(28, 59, 36, 24.0), Exponents(44, 61, 20, 24.0))
    plan = plan_segments(RSQRT_SEGMENTS, ranges, 38)
    assert not plan.direct and plan.work == 60
    _assert_in_ring(RSQRT_SEGMENTS, plan, 38)
    for index in range(len(ranges)):
        t = plan.thresholds[plan.threshold_range == index].astype(np.float64)
        assert np.all(np.diff(t) > 0)
    assert [c.stop - c.start for c in plan.candidates] == [96, 54]
    assert plan.thresholds.size == 96 - 1 + 54
    with pytest.raises(ValueError):
        plan_segments(RSQRT_SEGMENTS, (*ranges, Exponents(60, 61, 10)), 38)
    with pytest.raises(ValueError):
        plan_segments(RSQRT_SEGMENTS, (Exponents(0, 62, 18),), 18)
    with pytest.raises(ValueError):
        plan_segments(RSQRT_SEGMENTS, (Exponents(0, 40, 18),), 60)


def test_one_unit_is_exact_enough(fxp) -> None:
    got, _ = fxp.run(lambda ctx, a: reciprocal(ctx, a, max_value=1.0), np.array([fxp.ulp, 1.0]))
    assert abs(got[0] - 2**18) <= REL * 2**18 and abs(got[1] - 1) <= fxp.ulp
