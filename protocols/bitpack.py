"""Local bit layouts (no communication): packed bit rows, bit slices, dense small values.

- **Packed bit rows.** A single bit per element would waste 63 bits of every word on the wire,
  so the comparison machinery works on packed rows: element e at bit e % 64 of word e // 64
  (the padding bits of the last word are garbage and ignored). :func:`pack_bits` /
  :func:`unpack_bits` convert from / to one bit per element (in bit 0 of an element word).
- **Bit slices.** :func:`bit_slices` turns n words into 64 packed rows of
  ``W = ceil(n / 64)`` words, row j holding bit j of every element: one numba 64x64
  bit-matrix transpose per 64 elements.
- **Dense small values.** :func:`pack_low_bits` keeps the low ``bits`` bits of each value as
  one little-endian bit stream: value i occupies bits [i * bits, (i + 1) * bits) (byte k
  holds stream bits 8k..8k+7, least significant first), so n values take
  ceil(n * bits / 8) bytes: what a truncation dealer's ``m mod 2^f`` costs on the wire.

The kernels are numba loops (no GIL, compiled once and cached on disk): one pass per value,
where bit planes built with numpy need a pass per bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from numba import njit, types

from .ring import RING_DTYPE, RingArray

WORD_BITS = 64
MAX_BITS = 63


def packed_words(n: int) -> int:
    """Words per packed row of n bits."""
    return -(-n // WORD_BITS)


def pack_bits(bits: RingArray) -> RingArray:
    """Bit 0 of each word along the last axis into packed rows: (..., n) -> (..., W) words."""
    bits = np.asarray(bits)
    low = (bits & bits.dtype.type(1)).astype(np.uint8, copy=False)
    packed = np.packbits(low, axis=-1, bitorder="little")
    out = np.zeros((*bits.shape[:-1], 8 * packed_words(bits.shape[-1])), np.uint8)
    out[..., : packed.shape[-1]] = packed
    return out.view("<u8").astype(RING_DTYPE, copy=False)


def unpack_bits(rows: RingArray, n: int, dtype: npt.DTypeLike = RING_DTYPE) -> npt.NDArray[Any]:
    """The first n bits of each packed row (the last axis) as n values 0 or 1 of ``dtype``
    (ring words by default; uint8 for bits that are only moved and packed again):
    (..., W) words -> (..., n)."""
    raw = np.ascontiguousarray(rows, dtype="<u8").view(np.uint8)
    return np.unpackbits(raw, axis=-1, count=n, bitorder="little").astype(dtype, copy=False)

def unpack_rows_into(words: RingArray, out: RingArray) -> None:
    """Packed bits of out's rows, densely row after row (bit r n + j: row r, element j of
    out's n), as 0/1 ring values into ``out`` (rows, n): one pass, and ``out`` may be a
    block of columns of a wider array (a part of a batch's elements)."""
    _unpack_rows_kernel(np.ascontiguousarray(words, RING_DTYPE).reshape(-1), out)


@njit(types.void(types.Array(types.uint64, 1, "C", readonly=True),
                 types.Array(types.uint64, 2, "A")), nogil=True, cache=True)
def _unpack_rows_kernel(words: RingArray, out: RingArray) -> None:  # pragma: no cover
    rows, n = out.shape
    for r in range(rows):
        for j in range(n):
            i = r * n + j
            out[r, j] = (words[i >> 6] >> np.uint64(i & 63)) & np.uint64(1)


_TRANSPOSE_SIGNATURE = types.void(
    types.Array(types.uint64, 1, "C", readonly=True), types.Array(types.uint64, 2, "C")
)


@njit(_TRANSPOSE_SIGNATURE, nogil=True, cache=True)
def _transpose_kernel(words: RingArray, out: RingArray) -> None:  # pragma: no cover - numba
    n = words.shape[0]
    block = np.empty(64, np.uint64)
    for w in range(out.shape[1]):
        base = w * 64
        m = min(64, n - base)
        for i in range(m):
            block[i] = words[base + i]
        for i in range(m, 64):
            block[i] = 0
        # 64x64 bit-matrix transpose by swapping off-diagonal blocks (Hacker's Delight 7-3)
        j = np.uint64(32)
        mask = np.uint64(0x00000000FFFFFFFF)
        while j != 0:
            k = 0
            while k < 64:
                t = ((block[k] >> j) ^ block[k + j]) & mask
                block[k + j] ^= t
                block[k] ^= t << j
                k = (k + j + 1) & ~j
            j >>= np.uint64(1)
            mask ^= mask << j
        for i in range(64):
            out[i, w] = block[i]


def bit_slices(words: RingArray) -> RingArray:
    """Bit-slice n words (flattened) into 64 packed rows: row j holds bit j of every element.

    One pass (a numba 64x64 bit-matrix transpose per 64 elements).
    """
    flat = np.ascontiguousarray(np.ravel(words), dtype=RING_DTYPE)
    out = np.empty((WORD_BITS, packed_words(flat.size)), RING_DTYPE)
    _transpose_kernel(flat, out)
    return out


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


_RUNS_SIGNATURE = types.void(
    types.Array(types.uint64, 2, "C", readonly=True), types.int64,
    types.Array(types.int64, 1, "C", readonly=True), types.Array(types.uint64, 2, "C"),
)


@njit(nogil=True, cache=True, inline="always")
def _bit(src: RingArray, s: int) -> np.uint64:  # pragma: no cover (compiled)
    """Bit s of the packed row ``src``, as 0 or 1."""
    return (src[s >> 6] >> np.uint64(s & 63)) & np.uint64(1)


@njit(nogil=True, cache=True, inline="always")
def _copy_run(src: RingArray, s: int, n: int, dst: RingArray, d: int
              ) -> None:  # pragma: no cover (compiled)
    """Bits [s, s + n) of ``src`` OR-ed into bits [d, d + n) of ``dst`` (zeros there)."""
    k = 0
    while k < n:  # up to 64 bits at a time, up to the next destination word
        db = (d + k) & 63
        take = min(64 - db, n - k)
        sw, sb = (s + k) >> 6, (s + k) & 63
        v = src[sw] >> np.uint64(sb)
        if sb + take > 64:
            v |= src[sw + 1] << np.uint64(64 - sb)
        if take < 64:
            v &= (np.uint64(1) << np.uint64(take)) - np.uint64(1)
        dst[(d + k) >> 6] |= v << np.uint64(db)
        k += take


@njit(_RUNS_SIGNATURE, nogil=True, cache=True)
def _runs_kernel(  # pragma: no cover (compiled)
    rows: RingArray, n: int, starts: np.ndarray, out: RingArray
) -> None:
    for r in range(rows.shape[0]):
        for t in range(starts.shape[0]):
            _copy_run(rows[r], starts[t], n, out[r], t * n)


_BITS_SIGNATURE = types.void(
    types.Array(types.uint64, 2, "C", readonly=True),
    types.Array(types.int64, 1, "C", readonly=True), types.Array(types.uint64, 2, "C"),
)


@njit(_BITS_SIGNATURE, nogil=True, cache=True)
def _bits_kernel(  # pragma: no cover (compiled)
    rows: RingArray, starts: np.ndarray, out: RingArray
) -> None:
    count = starts.shape[0]
    for r in range(rows.shape[0]):
        src, dst = rows[r], out[r]
        for w in range(dst.shape[0]):  # each destination word gathered in a register
            word = np.uint64(0)
            for b in range(min(64, count - 64 * w)):
                word |= _bit(src, starts[64 * w + b]) << np.uint64(b)
            dst[w] = word


def gather_bit_runs(rows: RingArray, n: int, of: npt.NDArray[np.integer]) -> RingArray:
    """Packed rows holding runs of n bits -> rows of the runs ``of`` (in that order), packed:
    (R, >= packed_words(values * n)) -> (R, packed_words(of.size * n)), run t of an output
    row being run of[t] of its input row; the padding bits are 0 (as :func:`pack_bits`).
    Runs of one bit take a kernel of their own: five times faster than moving them as
    runs."""
    out = np.zeros((rows.shape[0], packed_words(of.size * n)), RING_DTYPE)
    rows = np.ascontiguousarray(rows, RING_DTYPE)
    starts = np.ascontiguousarray(np.asarray(of, np.int64) * n)
    if n == 1:
        _bits_kernel(rows, starts, out)
    else:
        _runs_kernel(rows, n, starts, out)
    return out


_SPLIT_SIGNATURE = types.void(
    types.Array(types.uint64, 2, "C", readonly=True), types.int64, types.int64,
    types.Array(types.int64, 2, "C", readonly=True), types.Array(types.uint64, 1, "C"),
)


@njit(_SPLIT_SIGNATURE, nogil=True, cache=True)
def _split_kernel(  # pragma: no cover (compiled)
    rows: RingArray, m: int, c: int, pieces: np.ndarray, out: RingArray
) -> None:
    for p in range(pieces.shape[0]):
        start, n, words, offset, spare = (pieces[p, 0], pieces[p, 1], pieces[p, 2],
                                          pieces[p, 3], pieces[p, 4])
        for r in range(rows.shape[0]):
            src, base = rows[r], offset + r * words
            if n == 1:  # one column: each destination word gathered in a register
                for w in range(words):
                    word = np.uint64(0)
                    for b in range(min(64, m - 64 * w)):
                        word |= _bit(src, (64 * w + b) * c + start) << np.uint64(b)
                    out[base + w] = word
            else:
                for i in range(m):  # matrix row i: bits [i c + start, + n) -> [i n, + n)
                    _copy_run(src, i * c + start, n, out, 64 * base + i * n)
            if spare >= 0:  # padding bit k: the matrix's bit spare + k, column by column
                for k in range(64 * words - m * n):
                    g, d = spare + k, m * n + k
                    out[base + (d >> 6)] |= _bit(src, (g % m) * c + g // m) << np.uint64(d & 63)


def padding_bits(m: int, n: int) -> int:
    """The unused bits of the last word of n columns of an m-row bit matrix, packed by
    :func:`split_bit_columns`."""
    return WORD_BITS * packed_words(m * n) - m * n


def split_bit_columns(rows: RingArray, shape: tuple[int, int],
                      bounds: Sequence[tuple[int, int, int]]) -> list[RingArray]:
    """Each row a packed bit matrix of ``shape`` (m, c), row by row (bit i c + j: matrix
    row i, column j, as :meth:`.fastcmp.Part.words` lays out a part's elements) -> for each
    (start, stop, spare) of ``bounds``, the matrices' columns [start, stop), packed the same
    way: (R, >= packed_words(m c)) -> (R, packed_words(m (stop - start))) each. The
    :func:`padding_bits` of the last word are the matrix's bits from ``spare`` on, counted
    column by column (bit g: row g % m, column g // m; spare < 0: zeros): a slice of random
    masks then has random padding, as the masks drawn for it alone had. One kernel call for
    all pieces (a pass's material is sliced into hundreds: per call, numpy's and numba's
    overhead would be most of the time); the pieces are views of one buffer."""
    m, c = shape
    pieces = np.zeros((len(bounds), 5), np.int64)
    offset = 0
    for p, (start, stop, spare) in enumerate(bounds):
        if not 0 <= start <= stop <= c:
            raise ValueError(f"columns [{start}, {stop}) of a matrix of {c} columns")
        if spare >= 0 and spare + padding_bits(m, stop - start) > m * c:
            raise ValueError(f"padding bits from {spare} beyond a matrix of {m} x {c}")
        words = packed_words(m * (stop - start))
        pieces[p] = start, stop - start, words, offset, spare
        offset += rows.shape[0] * words
    out = np.zeros(offset, RING_DTYPE)
    _split_kernel(np.ascontiguousarray(rows, RING_DTYPE), m, c, pieces, out)
    return [out[o : o + rows.shape[0] * w].reshape(rows.shape[0], w)
            for _, _, w, o, _ in pieces.tolist()]


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


__all__ = [
    "MAX_BITS", "WORD_BITS", "bit_slices", "gather_bit_runs", "pack_bits", "pack_low_bits",
    "packed_size", "packed_words", "padding_bits", "split_bit_columns", "unpack_bits",
    "unpack_low_bits", "unpack_rows_into",
]
