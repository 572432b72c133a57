"""Ring helpers: wrapping arithmetic against Python-int references, coercions, no warnings."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from puma_async.protocols import ring

MOD = 2**64
SPECIAL = [0, 1, 2**63 - 1, 2**63, 2**64 - 1]
words = st.one_of(st.sampled_from(SPECIAL), st.integers(0, MOD - 1))
pairs = st.lists(st.tuples(words, words), min_size=1, max_size=20)


def _arrays(ps: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([x for x, _ in ps], np.uint64), np.array([y for _, y in ps], np.uint64)


@given(pairs)
def test_ops_match_python_ints(ps: list[tuple[int, int]]) -> None:
    x, y = _arrays(ps)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = [ring.add(x, y), ring.sub(x, y), ring.mul(x, y), ring.neg(x)]
    want = [
        [(a + b) % MOD for a, b in ps],
        [(a - b) % MOD for a, b in ps],
        [(a * b) % MOD for a, b in ps],
        [(-a) % MOD for a, _ in ps],
    ]
    for g, w in zip(got, want, strict=True):
        assert g.dtype == np.uint64
        assert [int(v) for v in g] == w


@given(words, words)
def test_scalars_do_not_warn(x: int, y: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert int(ring.mul(np.uint64(x), np.uint64(y))) == x * y % MOD
        assert int(ring.add(x, y)) == (x + y) % MOD
        assert int(ring.neg(np.uint64(x))) == -x % MOD


@given(st.lists(st.integers(-(2**70), 2**70), min_size=1, max_size=20))
def test_to_ring_reduces_any_int(values: list[int]) -> None:
    got = ring.to_ring(values)
    assert got.dtype == np.uint64
    assert [int(v) for v in got] == [v % MOD for v in values]
    assert [int(v) for v in ring.to_signed(got)] == [(v + 2**63) % MOD - 2**63 for v in values]


def test_to_ring_numpy_dtypes() -> None:
    x = np.array([1, 2**63], np.uint64)
    assert ring.to_ring(x) is x
    assert ring.to_ring(np.array([-1, 5], np.int8)).tolist() == [MOD - 1, 5]
    assert ring.to_ring(np.array([-2], np.int64)).tolist() == [MOD - 2]
    assert ring.to_ring(np.array([7], np.uint16)).tolist() == [7]
    assert ring.to_ring(np.zeros((2, 0), np.int32)).shape == (2, 0)
    assert ring.to_signed(np.array([MOD - 1, 2**63], np.uint64)).tolist() == [-1, -(2**63)]


@pytest.mark.parametrize("bad", [np.array([1.5]), np.array([True]), [0.5], [[1, 2.0]]])
def test_to_ring_rejects_non_integers(bad: object) -> None:
    with pytest.raises(TypeError):
        ring.to_ring(bad)
