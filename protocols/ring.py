"""Element-wise arithmetic in the ring Z_2^64, held as numpy ``uint64`` arrays.

Every share in puma-async is a ``uint64`` array; arithmetic wraps modulo 2^64. numpy already
wraps for arrays, but operations that produce numpy *scalars* (0-d results) warn on overflow,
and mixing ``uint64`` with Python ints or signed arrays silently promotes to ``float64`` or
``int64``. These helpers coerce to ``uint64`` first and call the ufuncs directly, so they never
warn and never leave the ring (0-d inputs give ``np.uint64`` scalars). Each costs one pass over
its operands.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
import numpy.typing as npt

RING_BITS = 64
RING_DTYPE = np.dtype(np.uint64)
RING_MODULUS = 1 << RING_BITS
_MASK = RING_MODULUS - 1
_ARRAY = np.ndarray

RingArray = npt.NDArray[np.uint64]


def to_ring(x: Any) -> RingArray:
    """Map integers (numpy integer arrays, Python ints or nested lists of them) into Z_2^64.

    Negative values map to their two's complement, values >= 2^64 are reduced mod 2^64. A
    ``uint64`` array is returned as is and an ``int64`` one reinterpreted (both share memory
    with the input); narrower integers are widened. Python ints beyond 64 bits go through an
    object array (slow; meant for tests and constants). Floats and bools are rejected: encode
    reals with ``FixedPoint.encode``.
    """
    if isinstance(x, np.ndarray) and x.dtype == RING_DTYPE:
        return x
    arr = np.asarray(x)
    if arr.dtype.kind == "f" and isinstance(x, (list, tuple)):
        # numpy reads a list mixing ints below and above 2^63 as float64: keep them exact
        arr = np.array(x, dtype=object)
    if arr.dtype == object:
        flat = [operator.index(v) & _MASK for v in arr.ravel()]
        return np.array(flat, dtype=RING_DTYPE).reshape(arr.shape)
    kind = arr.dtype.kind  # "i" signed, "u" unsigned integers (np.issubdtype costs more)
    if kind not in ("i", "u"):
        raise TypeError(f"to_ring needs integers, got dtype {arr.dtype}")
    if arr.dtype.itemsize < 8:
        arr = arr.astype(np.int64 if kind == "i" else np.uint64)
    return arr.view(RING_DTYPE)


def to_signed(x: RingArray) -> npt.NDArray[np.int64]:
    """Read ring elements as two's-complement signed integers in [-2^63, 2^63) (a view)."""
    return np.asarray(x, dtype=RING_DTYPE).view(np.int64)


def add(x: Any, y: Any) -> RingArray:
    """x + y mod 2^64."""
    if type(x) is _ARRAY and type(y) is _ARRAY and x.dtype is RING_DTYPE is y.dtype:
        return np.add(x, y)  # uint64 arrays already (the common case): no coercion
    return np.add(to_ring(x), to_ring(y), dtype=RING_DTYPE)


def sub(x: Any, y: Any) -> RingArray:
    """x - y mod 2^64."""
    if type(x) is _ARRAY and type(y) is _ARRAY and x.dtype is RING_DTYPE is y.dtype:
        return np.subtract(x, y)  # uint64 arrays already (the common case): no coercion
    return np.subtract(to_ring(x), to_ring(y), dtype=RING_DTYPE)


def neg(x: Any) -> RingArray:
    """-x mod 2^64."""
    if type(x) is _ARRAY and x.dtype is RING_DTYPE:
        return np.negative(x)
    return np.subtract(np.zeros((), RING_DTYPE), to_ring(x), dtype=RING_DTYPE)


def mul(x: Any, y: Any) -> RingArray:
    """x * y mod 2^64 (element-wise; see ``ringmatmul`` for matrix products)."""
    if type(x) is _ARRAY and type(y) is _ARRAY and x.dtype is RING_DTYPE is y.dtype:
        return np.multiply(x, y)  # uint64 arrays already (the common case): no coercion
    return np.multiply(to_ring(x), to_ring(y), dtype=RING_DTYPE)
