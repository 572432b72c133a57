"""Dense packing of small ring values: ``bits`` bits each, as one little-endian bit stream.

Value i occupies bits [i * bits, (i + 1) * bits) of the stream (byte k holds stream bits
8k..8k+7, least significant first), so n values take ceil(n * bits / 8) bytes: what a
truncation dealer's ``m mod 2^f`` costs on the wire. The kernels are numba loops (no GIL,
compiled once and cached on disk): 3-6 ns per value (packing, unpacking) on arrays of 10^5
elements, where bit planes built with numpy took 60-150 ns.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types

from .ring import RING_DTYPE, RingArray

MAX_BITS = 63

_PACK_SIGNATURE = types.void(
    types.Array(types.uint64, 1, "C", readonly=True), types.int64, types.Array(types.uint8, 1, "C")
)
_UNPACK_SIGNATURE = types.void(
    types.Array(types.uint8, 1, "C", readonly=True), types.int64, types.Array(types.uint64, 1, "C")
)


@njit(_PACK_SIGNATURE, nogil=True, cache=True)
def _pack_kernel(values: RingArray, bits: int, out: np.ndarray) -> None:  # pragma: no cover
    mask = (np.uint64(1) << np.uint64(bits)) - np.uint64(1)
    for i in range(values.shape[0]):
        offset = i * bits
        q, r = offset >> 3, offset & 7
        v = values[i] & mask
        low = v << np.uint64(r)  # the bits that land in bytes q..q+7
        touched = (r + bits + 7) >> 3
        for k in range(min(touched, 8)):
            out[q + k] |= np.uint8((low >> np.uint64(8 * k)) & np.uint64(0xFF))
        if touched > 8:  # r + bits > 64: the top bits spill into a ninth byte
            out[q + 8] |= np.uint8(v >> np.uint64(64 - r))


@njit(_UNPACK_SIGNATURE, nogil=True, cache=True)
def _unpack_kernel(packed: np.ndarray, bits: int, out: RingArray) -> None:  # pragma: no cover
    mask = (np.uint64(1) << np.uint64(bits)) - np.uint64(1)
    for i in range(out.shape[0]):
        offset = i * bits
        q, r = offset >> 3, offset & 7
        touched = (r + bits + 7) >> 3
        word = np.uint64(0)
        for k in range(min(touched, 8)):
            word |= np.uint64(packed[q + k]) << np.uint64(8 * k)
        v = word >> np.uint64(r)
        if touched > 8:
            v |= np.uint64(packed[q + 8]) << np.uint64(64 - r)
        out[i] = v & mask


def packed_size(count: int, bits: int) -> int:
    """Bytes of ``count`` packed values of ``bits`` bits."""
    return (count * bits + 7) // 8


def pack_low_bits(values: RingArray, bits: int) -> np.ndarray:
    """The low ``bits`` bits (1..63) of each value, densely packed (uint8, see module doc)."""
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits must be in [1, {MAX_BITS}], got {bits}")
    flat = np.ascontiguousarray(np.ravel(values), dtype=RING_DTYPE)
    out = np.zeros(packed_size(flat.size, bits), np.uint8)
    _pack_kernel(flat, bits, out)
    return out


def unpack_low_bits(packed: np.ndarray, bits: int, count: int) -> RingArray:
    """Inverse of :func:`pack_low_bits`: ``count`` values of ``bits`` bits each."""
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits must be in [1, {MAX_BITS}], got {bits}")
    if packed.dtype != np.uint8 or packed.size != packed_size(count, bits):
        raise ValueError(
            f"{count} values of {bits} bits need {packed_size(count, bits)} packed bytes, "
            f"got {packed.size} of {packed.dtype}"
        )
    out = np.empty(count, RING_DTYPE)
    _unpack_kernel(np.ascontiguousarray(packed.reshape(-1)), bits, out)
    return out


__all__ = ["MAX_BITS", "pack_low_bits", "packed_size", "unpack_low_bits"]
