"""ring_matmul is exact: Python-int references, both kernels, large k, batches, threads."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from puma_async.protocols import ringmatmul
from puma_async.protocols.ringmatmul import PANEL_MIN_ROWS, ring_matmul, shared_by

MOD = 2**64
SPECIAL = [0, 1, 2**21, 2**63 - 1, 2**63, 2**64 - 1]
words = st.one_of(st.sampled_from(SPECIAL), st.integers(0, MOD - 1))


def reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact product with Python ints (object arrays), reduced mod 2^64."""
    return np.vectorize(lambda v: v % MOD, otypes=[object])(
        np.matmul(a.astype(object), b.astype(object))
    ).astype(np.uint64)


def matrix(shape: tuple[int, ...]) -> st.SearchStrategy[np.ndarray]:
    return hnp.arrays(np.uint64, shape, elements=words)


@st.composite
def operands(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    m = draw(st.integers(1, 2 * PANEL_MIN_ROWS + 3))  # both kernels, with leftover rows
    k = draw(st.integers(1, 40))
    n = draw(st.integers(1, 70))  # several packed panels
    return draw(matrix((m, k))), draw(matrix((k, n)))


@settings(deadline=None, max_examples=60)
@given(operands())
def test_matches_python_ints(ab: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = ab
    got = ring_matmul(a, b)
    assert got.dtype == np.uint64
    assert (got == reference(a, b)).all()


@pytest.mark.parametrize("k", [4096, 11008])
@pytest.mark.parametrize("m", [2, PANEL_MIN_ROWS + 1])
def test_large_k(m: int, k: int) -> None:
    rng = np.random.default_rng(k + m)
    a = rng.integers(0, MOD, (m, k), dtype=np.uint64, endpoint=False)
    b = rng.integers(0, MOD, (k, 3), dtype=np.uint64, endpoint=False)
    a[0, :5] = b[:5, 0] = [0, 2**63, 2**64 - 1, 2**63 - 1, 1]
    assert (ring_matmul(a, b) == reference(a, b)).all()
    ones = np.full((m, k), MOD - 1, np.uint64)  # (-1) * (-1) summed k times
    assert (ring_matmul(ones, ones.T.copy()) == k).all()


@pytest.mark.parametrize(
    ("m", "n"), [(1, 1100), (2, 4500), (5, 1100), (PANEL_MIN_ROWS, 1100), (33, 200)]
)  # (2, 4500), (5, 1100): several column tiles of _axpy_rows (4096 / rows columns)
def test_wide_and_parallel(m: int, n: int) -> None:
    rng = np.random.default_rng(n)
    a = rng.integers(0, MOD, (m, 256), dtype=np.uint64, endpoint=False)
    b = rng.integers(0, MOD, (256, n), dtype=np.uint64, endpoint=False)
    want = reference(a, b)
    assert (ring_matmul(a, b) == want).all()
    with ThreadPoolExecutor(3) as pool:  # concurrent callers share the kernel pool
        for got in pool.map(lambda _: ring_matmul(a, b), range(3)):
            assert (got == want).all()


@pytest.mark.parametrize(
    ("m", "k", "n"), [(3, 5001, 100), (1, 4099, 300), (3000, 256, 3), (PANEL_MIN_ROWS, 9, 7000)]
)  # blocks of rows of b (few rows of a, k not a multiple of the blocks' 4), of columns
def test_parallel_cuts(m: int, k: int, n: int) -> None:
    """Each way of cutting one product among the workers gives the exact product."""
    rng = np.random.default_rng(m + k + n)
    a = rng.integers(0, MOD, (m, k), dtype=np.uint64, endpoint=False)
    b = rng.integers(0, MOD, (k, n), dtype=np.uint64, endpoint=False)
    a[0, -3:] = b[-3:, 0] = [2**63, 2**64 - 1, 1]
    want = a.astype(object) @ b.astype(object) % MOD if m * n < 10**4 else None
    got = ring_matmul(a, b)
    assert (ring_matmul(a, b, inline=True) == got).all()  # all in the calling thread
    if want is not None:
        assert (got == want.astype(np.uint64)).all()
    rows = [0, m // 2, m - 1]
    sub = a[rows].astype(object) @ b.astype(object) % MOD
    assert (got[rows] == sub.astype(np.uint64)).all()


class _PoolSpy:
    """Stands in for the kernel pool: runs each block at once and counts the blocks."""

    def __init__(self) -> None:
        self.blocks = 0

    def submit(self, fn, *args):  # type: ignore[no-untyped-def]
        self.blocks += 1
        done: Future[object] = Future()
        done.set_result(fn(*args))
        return done


@pytest.mark.parametrize(("cores", "callers", "blocks"),
                         [(4, 1, 4), (4, 2, 2), (4, 3, 0), (2, 3, 0), (2, 2, 0), (2, 1, 2)])
@pytest.mark.parametrize(("m", "k", "n"), [(1, 1200, 1000), (20, 300, 200)])  # rows, columns
def test_products_shared_by_callers_are_cut_for_them(
    monkeypatch: pytest.MonkeyPatch, cores: int, callers: int, blocks: int, m: int, k: int,
    n: int,
) -> None:
    """With ``shared_by(callers)`` a product goes to the pool in cores // callers blocks, or,
    where that is one, whole in the calling thread (no pool at all); exact either way."""
    rng = np.random.default_rng(cores * 10 + callers)
    a = rng.integers(0, MOD, (m, k), dtype=np.uint64, endpoint=False)
    b = rng.integers(0, MOD, (k, n), dtype=np.uint64, endpoint=False)
    want = ring_matmul(a, b, inline=True)
    spy = _PoolSpy()
    monkeypatch.setattr(ringmatmul, "_workers", lambda: cores)
    monkeypatch.setattr(ringmatmul, "_pool", lambda: spy)
    with shared_by(callers):
        got = ring_matmul(a, b)
    assert (got == want).all()
    assert spy.blocks == blocks
    assert ringmatmul._callers == 1  # restored


def test_shared_by_refuses_no_callers_and_restores_on_failure() -> None:
    with pytest.raises(ValueError, match="at least one caller"), shared_by(0):
        pass
    with pytest.raises(RuntimeError, match="inside"), shared_by(3):
        assert ringmatmul._callers == 3
        with shared_by(2):
            assert ringmatmul._callers == 2
        assert ringmatmul._callers == 3
        raise RuntimeError("inside")
    assert ringmatmul._callers == 1


@settings(deadline=None, max_examples=25)
@given(st.data())
def test_batched_broadcasting(data: st.DataObject) -> None:
    m, k, n = (data.draw(st.integers(1, 6)) for _ in range(3))
    batches = [((2, 3), ()), ((2, 3), (2, 3)), ((1, 3), (2, 1)), ((4,), (3, 1, 1)), ((), (2,))]
    batch_a, batch_b = data.draw(st.sampled_from(batches))
    a = data.draw(matrix((*batch_a, m, k)))
    b = data.draw(matrix((*batch_b, k, n)))
    got = ring_matmul(a, b)
    assert got.shape == (*np.broadcast_shapes(batch_a, batch_b), m, n)
    assert (got == reference(a, b)).all()


def test_big_batch_runs_in_parallel_blocks() -> None:
    rng = np.random.default_rng(7)
    a = rng.integers(0, MOD, (6, 20, 96), dtype=np.uint64, endpoint=False)
    b = rng.integers(0, MOD, (6, 96, 100), dtype=np.uint64, endpoint=False)
    assert (ring_matmul(a, b) == reference(a, b)).all()


def test_read_only_and_strided_inputs() -> None:
    """Decoded messages are read-only buffers; views may be non-contiguous."""
    rng = np.random.default_rng(3)
    a = rng.integers(0, MOD, (5, 12), dtype=np.uint64, endpoint=False)
    b = rng.integers(0, MOD, (24, 7), dtype=np.uint64, endpoint=False)
    frozen = np.frombuffer(a.tobytes(), np.uint64).reshape(a.shape)
    assert not frozen.flags.writeable
    want = reference(a, b[::2])
    assert (ring_matmul(frozen, b[::2]) == want).all()
    assert (ring_matmul(a.T.copy().T, b[::2]) == want).all()


def test_empty_and_errors() -> None:
    z = np.zeros
    assert (ring_matmul(z((2, 0), np.uint64), z((0, 3), np.uint64)) == 0).all()
    assert ring_matmul(z((0, 4), np.uint64), z((4, 3), np.uint64)).shape == (0, 3)
    assert ring_matmul(z((2, 4), np.uint64), z((4, 0), np.uint64)).shape == (2, 0)
    assert ring_matmul(z((0, 2, 4), np.uint64), z((4, 3), np.uint64)).shape == (0, 2, 3)
    with pytest.raises(TypeError):
        ring_matmul(z((2, 2), np.int64), z((2, 2), np.uint64))
    with pytest.raises(ValueError, match="dimensions"):
        ring_matmul(z(2, np.uint64), z((2, 2), np.uint64))
    with pytest.raises(ValueError, match="mismatch"):
        ring_matmul(z((2, 3), np.uint64), z((2, 2), np.uint64))

