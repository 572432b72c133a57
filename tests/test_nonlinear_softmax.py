"""Max along an axis and softmax (with a public mask) against float64 numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _nonlinear import quantised, run
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from puma_async.context import Context
from puma_async.evaluate import evaluate
from puma_async.protocols.shares import AShare
from puma_async.protocols.softmax import ALL_PAIRS_MAX, GROUP, max_along, softmax

MAX_ERROR = 5e-5  # documented max abs error per probability (measured 1.7e-5 to 3.4e-5)


def _reference(x: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    z = quantised(x)
    if mask is not None:
        z = np.where(mask, z, -np.inf)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _softmax(mask: np.ndarray | None = None):
    async def fn(ctx: Context, x: AShare) -> AShare:
        return await softmax(ctx, x, mask=mask)

    return fn


@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 4, 128), (1, 1)])
@pytest.mark.parametrize("axis", [-1, 0])
def test_max_is_exact(shape: tuple[int, ...], axis: int) -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(-2**61, 2**61, size=shape, dtype=np.int64)
    x.flat[0] = x.flat[-1]  # a tie
    ev_x = x.view(np.uint64)

    async def fn(ctx: Context, a: AShare) -> AShare:
        return await max_along(ctx, a, axis=axis)

    got = evaluate(fn, ev_x).outputs[0].view(np.int64)
    assert np.array_equal(got, x.max(axis=axis))


def _max_rounds(n: int) -> int:
    """Groups of GROUP reduced by one all-pairs step each (5 rounds: groups of 8) until at
    most ALL_PAIRS_MAX entries are left, then one all-pairs step: 4 rounds and one per level
    of the AND of an entry's m - 1 beats (none for 2 entries, one up to 9, two up to 17)."""
    rounds = 0
    while n > ALL_PAIRS_MAX:
        n, rounds = -(-n // GROUP), rounds + 5
    return rounds + (0 if n == 1 else 4 if n == 2 else 5 if n <= 9 else 6)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 9, 16, 17, 32, 40, 128])
def test_max_rounds(n: int) -> None:
    _, ev = run(lambda ctx, a: max_along(ctx, a), np.zeros((2, n)))
    rounds = max(ev.cost(p).rounds for p in range(3))
    assert rounds == _max_rounds(n)
    if n >= 3:  # fewer than a halving tree's 4 rounds per level
        assert rounds < 4 * math.ceil(math.log2(n))


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 3).flatmap(lambda rows: st.integers(1, 40).flatmap(
        lambda n: hnp.arrays(np.int64, (rows, n), elements=st.one_of(
            st.integers(-(2**62), 2**62 - 1), st.sampled_from([-(2**62), 0, 1, 2**62 - 1]),
        ))
    ))
)
def test_max_is_exact_with_ties_and_range_ends(x: np.ndarray) -> None:
    async def fn(ctx: Context, a: AShare) -> AShare:
        return await max_along(ctx, a)

    got = evaluate(fn, x.view(np.uint64)).outputs[0].view(np.int64)
    assert np.array_equal(got, x.max(axis=-1))


def _rows(rng: np.random.Generator) -> np.ndarray:
    x = np.concatenate([rng.normal(0, s, (8, 64)) for s in (0.1, 1, 3, 10, 100)])
    x[0, :] = 0.0  # uniform
    x[1, 5] = 50.0  # one dominant entry
    x[2, :] = -2.0**16
    x[2, 9] = 2.0**16 - 1  # massive values, one dominant
    x[3, :2] = 7.0  # two equal maxima
    return x


def test_dense_rows() -> None:
    x = _rows(np.random.default_rng(2))
    got, _ = run(_softmax(), x)
    assert np.max(np.abs(got - _reference(x))) <= MAX_ERROR


def test_causal_mask_and_single_unmasked_entries() -> None:
    rng = np.random.default_rng(3)
    n = 48
    x = rng.normal(0, 4, (3, n, n))
    mask = np.tril(np.ones((n, n), dtype=bool))
    mask = np.broadcast_to(mask, x.shape).copy()
    mask[1] = False
    mask[1, np.arange(n), rng.integers(0, n, n)] = True  # one unmasked entry per row
    x[2, :, 0] = 1e4  # a masked-out huge value must not matter (rows > 0 of head 2)
    x[2, 0, 0] = 0.0
    got, _ = run(_softmax(mask), x)
    assert np.max(np.abs(got - _reference(x, mask))) <= MAX_ERROR
    assert np.all(got[~mask] == 0)
    assert np.max(np.abs(got[1][mask[1]] - 1)) <= MAX_ERROR


def test_rows_without_unmasked_entries_are_rejected() -> None:
    with pytest.raises(Exception, match="unmasked"):
        run(_softmax(np.zeros((2, 3), dtype=bool)), np.zeros((2, 3)))


@settings(max_examples=6, deadline=None)
@given(hnp.arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(1, 40)),
                  elements=st.floats(-1e3, 1e3)))
def test_hypothesis_rows(x: np.ndarray) -> None:
    got, _ = run(_softmax(), x)
    assert np.max(np.abs(got - _reference(x))) <= MAX_ERROR
    assert np.all(np.abs(got.sum(axis=-1) - 1) <= x.shape[-1] * MAX_ERROR)
