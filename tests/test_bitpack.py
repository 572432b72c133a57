"""Dense packing of small values: exact round trips against a numpy bit-stream reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from puma_async.protocols.bitpack import (
    gather_bit_runs,
    pack_low_bits,
    packed_size,
    packed_words,
    padding_bits,
    split_bit_columns,
    unpack_bits,
    unpack_low_bits,
    unpack_rows_into,
)


def _reference(values: np.ndarray, bits: int) -> np.ndarray:
    planes = (values[:, None] >> np.arange(bits, dtype=np.uint64)) & np.uint64(1)
    return np.packbits(planes.astype(np.uint8).reshape(-1), bitorder="little")


words = hnp.arrays(
    np.uint64, st.integers(0, 300),
    elements=st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, 1, 2**63, 2**64 - 1])),
)


@settings(max_examples=300)
@given(words, st.integers(1, 63))
def test_pack_matches_the_bit_stream_and_round_trips(values: np.ndarray, bits: int) -> None:
    packed = pack_low_bits(values, bits)
    assert packed.dtype == np.uint8 and packed.size == packed_size(values.size, bits)
    np.testing.assert_array_equal(packed, _reference(values, bits))
    low = values & np.uint64((1 << bits) - 1)
    np.testing.assert_array_equal(unpack_low_bits(packed, bits, values.size), low)


def test_read_only_input_from_the_wire_unpacks() -> None:
    values = np.arange(1000, dtype=np.uint64) * np.uint64(2654435761)
    packed = pack_low_bits(values, 30)
    packed.flags.writeable = False
    np.testing.assert_array_equal(
        unpack_low_bits(packed, 30, 1000), values & np.uint64((1 << 30) - 1)
    )


@pytest.mark.parametrize("bits", [0, 64])
def test_bits_out_of_range_are_refused(bits: int) -> None:
    with pytest.raises(ValueError, match="bits must be in"):
        pack_low_bits(np.zeros(3, np.uint64), bits)
    with pytest.raises(ValueError, match="bits must be in"):
        unpack_low_bits(np.zeros(3, np.uint8), bits, 3)


def test_wrong_packed_size_is_refused() -> None:
    with pytest.raises(ValueError, match="need 7 packed bytes"):
        unpack_low_bits(np.zeros(6, np.uint8), 18, 3)


@settings(max_examples=300)
@given(st.integers(1, 4), st.integers(1, 5), st.integers(1, 200),
       st.lists(st.integers(0, 4), min_size=1, max_size=9), st.integers(0, 2**32))
def test_gather_bit_runs_matches_moving_unpacked_bits(
    rows: int, values: int, n: int, picks: list[int], seed: int
) -> None:
    """Runs of n bits (n across word boundaries, 64 and not) picked and repeated, padding 0."""
    of = np.array([p % values for p in picks])
    packed = np.random.default_rng(seed).integers(
        0, 2**64, (rows, packed_words(values * n)), dtype=np.uint64, endpoint=False)
    bits = np.unpackbits(packed.view(np.uint8), axis=-1, bitorder="little")[:, : values * n]
    moved = bits.reshape(rows, values, n)[:, of].reshape(rows, -1)
    padded = np.zeros((rows, 64 * packed_words(of.size * n)), np.uint8)
    padded[:, : moved.shape[1]] = moved
    expected = np.packbits(padded, axis=-1, bitorder="little").view("<u8")
    np.testing.assert_array_equal(gather_bit_runs(packed, n, of), expected)


@settings(max_examples=300)
@given(st.integers(1, 4), st.integers(1, 160), st.integers(1, 90), st.data(),
       st.integers(0, 2**32))
def test_split_bit_columns_matches_slicing_the_unpacked_matrix(
    rows: int, m: int, c: int, data: st.DataObject, seed: int
) -> None:
    """Columns of packed bit matrices, several pieces in one call (of one column, many,
    none; overlapping or not), matrices across word boundaries; the padding bits are the
    matrix's bits from the piece's ``spare`` on, column by column, or 0 without."""
    pairs = data.draw(st.lists(st.tuples(st.integers(0, c), st.integers(0, c)).map(sorted),
                               min_size=1, max_size=5))
    bounds = []
    for start, stop in pairs:
        room = m * c - padding_bits(m, stop - start)
        bounds.append((start, stop, data.draw(st.integers(-1, room)) if room >= 0 else -1))
    packed = np.random.default_rng(seed).integers(
        0, 2**64, (rows, packed_words(m * c)), dtype=np.uint64, endpoint=False)
    bits = np.unpackbits(packed.view(np.uint8), axis=-1, bitorder="little")[:, : m * c]
    matrix = bits.reshape(rows, m, c)
    got = split_bit_columns(packed, (m, c), bounds)
    assert len(got) == len(bounds)
    for (start, stop, spare), piece in zip(bounds, got, strict=True):
        taken = matrix[:, :, start:stop].reshape(rows, -1)
        padded = np.zeros((rows, 64 * packed_words(taken.shape[1])), np.uint8)
        padded[:, : taken.shape[1]] = taken
        if spare >= 0:  # bit g: row g % m, column g // m
            fill = matrix.transpose(0, 2, 1).reshape(rows, -1)[:, spare:]
            padded[:, taken.shape[1] :] = fill[:, : padded.shape[1] - taken.shape[1]]
        expected = np.packbits(padded, axis=-1, bitorder="little").view("<u8")
        np.testing.assert_array_equal(piece, expected)


def test_split_bit_columns_refuses_columns_outside_the_matrix() -> None:
    with pytest.raises(ValueError, match=r"columns \[2, 5\) of a matrix of 4 columns"):
        split_bit_columns(np.zeros((1, 1), np.uint64), (3, 4), [(0, 1, -1), (2, 5, -1)])
    with pytest.raises(ValueError, match="padding bits from 3 beyond a matrix of 3 x 4"):
        split_bit_columns(np.zeros((1, 1), np.uint64), (3, 4), [(0, 1, 3)])


@settings(max_examples=200)
@given(st.integers(1, 5), st.integers(1, 200), st.integers(0, 3), st.integers(0, 2**64 - 1))
def test_unpack_rows_into_a_block_of_columns_matches_unpack_bits(
    rows: int, n: int, left: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    packed = rng.integers(0, 2**64, packed_words(rows * n), dtype=np.uint64, endpoint=False)
    wide = np.full((rows, left + n + 2), 7, np.uint64)
    unpack_rows_into(packed, wide[:, left : left + n])
    np.testing.assert_array_equal(wide[:, left : left + n],
                                  unpack_bits(packed, rows * n).reshape(rows, n))
    assert (wide[:, :left] == 7).all() and (wide[:, left + n :] == 7).all()
