"""Reciprocal and rsqrt against float64 numpy over their documented ranges."""

from __future__ import annotations

import numpy as np
import pytest
from _nonlinear import ULP, quantised, run
from hypothesis import given, settings
from hypothesis import strategies as st

from puma_async.protocols.reciprocal import (
    RECIPROCAL_COEFFICIENTS,
    RSQRT_COEFFICIENTS,
    Exponents,
    plan_scale,
    reciprocal,
    rsqrt,
)
from puma_async.protocols.shares import AShare
from puma_async.runtime import Context

REL = 5e-6  # documented relative error where the output has the bits (polynomial: 1.5e-6)


def _log_grid(lo: float, hi: float, n: int = 20001) -> np.ndarray:
    return np.exp(np.linspace(np.log(lo), np.log(hi), n))


def _check(got: np.ndarray, want: np.ndarray, frac_out: int) -> None:
    tolerance = REL * np.abs(want) + 2.0 ** (1 - frac_out)
    assert np.all(np.abs(got - want) <= tolerance), np.max(np.abs(got - want) / tolerance)


@pytest.mark.parametrize(("lo", "hi", "frac_out"), [
    (0.5, 129.0, 32),  # a softmax row sum
    (2.0**-18, 2.0**20, 18),  # everything from one unit up
    (1e-3, 1e3, 24),
])
def test_reciprocal_grid(lo: float, hi: float, frac_out: int) -> None:
    x = np.concatenate([_log_grid(lo, hi), [lo, hi]])

    async def fn(ctx: Context, a: AShare) -> AShare:
        return await reciprocal(ctx, a, min_value=lo, max_value=hi, frac_out=frac_out)

    got, _ = run(fn, x, frac_out=frac_out)
    _check(got, 1 / quantised(x), frac_out)


@pytest.mark.parametrize(("lo", "hi"), [(2.0**-18, 2.0**20), (1e-5, 1e5)])
def test_rsqrt_grid(lo: float, hi: float) -> None:
    x = np.concatenate([_log_grid(lo, hi), [lo, hi]])

    async def fn(ctx: Context, a: AShare) -> AShare:
        return await rsqrt(ctx, a, min_value=lo, max_value=hi)

    got, _ = run(fn, x)
    _check(got, 1 / np.sqrt(quantised(x)), 18)


@settings(max_examples=6, deadline=None)
@given(st.lists(st.floats(2.0**-10, 2.0**12), min_size=1, max_size=100))
def test_hypothesis_samples(xs: list[float]) -> None:
    x = np.array(xs)

    async def fn(ctx: Context, a: AShare) -> list[AShare]:
        return [await reciprocal(ctx, a, min_value=2.0**-10, max_value=2.0**12, frac_out=24),
                await rsqrt(ctx, a, min_value=2.0**-10, max_value=2.0**12, frac_out=24)]

    _, ev = run(fn, x, frac_out=24)
    rec, rsq = (o.view(np.int64) / 2.0**24 for o in ev.outputs)
    _check(rec, 1 / quantised(x), 24)
    _check(rsq, 1 / np.sqrt(quantised(x)), 24)


def test_scale_plan_stays_in_the_ring() -> None:
    ranges = (Exponents(28, 61, 36, 24.0), Exponents(43, 61, 20, 24.0))  # RMSNorm's two paths
    plan = plan_scale(-0.5, RSQRT_COEFFICIENTS, ranges, 38)
    for table in plan.tables:
        dot_bound = np.abs(table.view(np.int64).astype(np.float64)).sum(axis=0).max()
        assert dot_bound * 2**plan.poly_frac < 2**61
    assert plan.poly_frac >= 16
    with pytest.raises(ValueError):
        plan_scale(-1.0, RECIPROCAL_COEFFICIENTS, (Exponents(0, 61, 18),), 40)


def test_one_unit_is_exact_enough() -> None:
    got, _ = run(lambda ctx, a: reciprocal(ctx, a, max_value=1.0), np.array([ULP, 1.0]))
    assert abs(got[0] - 2**18) <= REL * 2**18 and abs(got[1] - 1) <= 2 * ULP
