"""GeLU and SiLU (accurate and PUMA methods) against float64 numpy; GeLU's round overlap."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _nonlinear import quantised, run
from hypothesis import given, settings
from hypothesis import strategies as st

from puma_async.context import Context
from puma_async.protocols.activations import APPROXIMATIONS, gelu, piece_values, silu
from puma_async.protocols.compare import is_negative
from puma_async.protocols.shares import AShare, stack

_erf = np.vectorize(math.erf)
EXACT = {
    "gelu": lambda x: 0.5 * x * (1 + _erf(x / math.sqrt(2))),
    "silu": lambda x: x * 0.5 * (1 + np.tanh(x / 2)),
}
FUNCTIONS = {"gelu": gelu, "silu": silu}
# documented max errors (approximation on the real line) + 1e-4 for fixed-point rounding
MAX_ERROR = {
    ("gelu", "accurate"): 0.0027, ("gelu", "puma"): 0.0201,
    ("silu", "accurate"): 2e-4, ("silu", "puma"): 0.0721,
}
CASES = sorted(MAX_ERROR)


def _fn(name: str, method: str):
    async def fn(ctx: Context, x: AShare) -> AShare:
        return await FUNCTIONS[name](ctx, x, method=method)  # type: ignore[arg-type]

    return fn


def _inputs() -> np.ndarray:
    breakpoints = [t for spec in APPROXIMATIONS.values() for t in spec.breakpoints]
    near = [t + d for t in breakpoints for d in (-2**-18, 0.0, 2**-18)]
    huge = [-2.0**16, 2.0**16, -22500.0, 22500.0, -1e3, 1e3, -2.0**20, 2.0**20]
    return np.concatenate([np.linspace(-16, 16, 64001), near, huge])


@pytest.mark.parametrize(("name", "method"), CASES)
def test_dense_grid(name: str, method: str) -> None:
    x = _inputs()
    got, _ = run(_fn(name, method), x)
    err = np.abs(got - EXACT[name](quantised(x)))
    assert err.max() <= MAX_ERROR[name, method]


def test_accurate_silu_beats_puma_by_far() -> None:
    assert MAX_ERROR["silu", "accurate"] <= 0.01 < MAX_ERROR["silu", "puma"]


def test_accurate_silu_near_zero_and_its_cost() -> None:
    """Where a SwiGLU's gates mostly are, [-3, 3]: within 4e-5 (documented 3.3e-5); 8 rounds."""
    x = np.linspace(-3, 3, 60001)
    got, ev = run(_fn("silu", "accurate"), x)
    assert np.max(np.abs(got - EXACT["silu"](quantised(x)))) <= 4e-5
    assert ev.cost(0).rounds == 8
    offline = sum(ev.stats[p].totals(phase="offline").bytes_sent for p in range(3))
    assert (ev.bytes_all_parties() + offline) / x.size < 550


@settings(max_examples=5, deadline=None)
@given(st.lists(st.floats(-2.0**16, 2.0**16), min_size=1, max_size=200))
def test_hypothesis_samples(xs: list[float]) -> None:
    x = np.array(xs)
    for name, method in CASES:
        got, _ = run(_fn(name, method), x)
        assert np.max(np.abs(got - EXACT[name](quantised(x)))) <= MAX_ERROR[name, method]


@pytest.mark.parametrize("method", ["accurate", "puma"])
def test_gelu_rounds_are_those_of_its_longest_branch(method: str) -> None:
    """Comparisons and polynomials overlap: rounds = max(comparisons, polynomials + 1), the 1
    being the selection's multiplication (it runs alongside the comparison's last round)."""
    spec = APPROXIMATIONS["gelu", method]
    x = np.linspace(-5, 5, 256)

    async def comparisons(ctx: Context, a: AShare) -> AShare:
        return await is_negative(ctx, stack([a] * len(spec.breakpoints)))

    async def polynomials(ctx: Context, a: AShare) -> list[AShare]:
        return await piece_values(ctx, a, spec)

    rounds = {
        name: run(fn, x)[1].cost(0).rounds
        for name, fn in [("gelu", _fn("gelu", method)), ("comparisons", comparisons),
                         ("polynomials", polynomials)]
    }
    assert rounds["gelu"] == max(rounds["comparisons"], rounds["polynomials"] + 1), rounds
    assert rounds["gelu"] < rounds["comparisons"] + rounds["polynomials"], rounds
