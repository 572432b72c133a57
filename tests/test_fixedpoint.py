"""Fixed-point encoding: round-trip precision, exactness, range errors at the exact edges."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from puma_async.errors import FixedPointRangeError
from puma_async.protocols.fixedpoint import FixedPoint

FRAC_BITS = [0, 12, 18, 40]


@st.composite
def format_and_values(draw: st.DrawFn) -> tuple[FixedPoint, list[float]]:
    f = draw(st.sampled_from(FRAC_BITS))
    edge = 2.0 ** (63 - f)
    inside = st.floats(-edge, edge, exclude_max=True, allow_nan=False, allow_subnormal=True)
    return FixedPoint(f), draw(st.lists(inside, min_size=1, max_size=30))


@given(format_and_values())
def test_round_trip_within_half_ulp(case: tuple[FixedPoint, list[float]]) -> None:
    fp, values = case
    x = np.array(values)
    enc = fp.encode(x)
    assert enc.dtype == np.uint64 and enc.shape == x.shape
    err = np.abs(fp.decode(enc) - x)
    assert (err <= 2.0 ** -(fp.frac_bits + 1)).all()
    # the encoding is round-to-nearest, checked with exact rational arithmetic
    for v, e in zip(values, enc.view(np.int64).tolist(), strict=True):
        assert abs(e - v * 2**fp.frac_bits) <= 0.5


@given(st.integers(-(2**50), 2**50))
def test_multiples_of_ulp_are_exact(units: int) -> None:
    fp = FixedPoint()
    x = units / 2**18
    assert int(fp.encode(x).view(np.int64)) == units
    assert fp.decode(fp.encode(x)) == x  # |x| < 2^35: every step exact


def test_default_and_scalar_shapes() -> None:
    fp = FixedPoint()
    assert fp.frac_bits == 18 and fp.scale == 2.0**18
    assert fp.encode(1.0).shape == ()
    assert int(fp.encode(-1.0)) == 2**64 - 2**18
    assert fp.encode(np.zeros((2, 0))).shape == (2, 0)
    assert fp.decode(np.array(2**63, np.uint64)) == -(2.0**45)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fp.frac_bits = 3  # type: ignore[misc]


@pytest.mark.parametrize("f", FRAC_BITS)
def test_range_edges(f: int) -> None:
    fp = FixedPoint(f)
    edge = 2.0 ** (63 - f)
    assert int(fp.encode(-edge).view(np.int64)) == -(2**63)
    below = math.nextafter(edge, 0.0)
    assert int(fp.encode(below).view(np.int64)) == int(below * 2**f)
    for bad in (edge, math.nextafter(-edge, -math.inf), 1e300, -1e300):
        with pytest.raises(FixedPointRangeError, match="out of the fixed-point range"):
            fp.encode(bad)


def test_rounding_into_the_edge_is_rejected() -> None:
    fp = FixedPoint(62)  # x * 2^62 rounds to 2^63 for x just below 2
    assert int(fp.encode(1.5).view(np.int64)) == 3 * 2**61
    with pytest.raises(FixedPointRangeError):
        fp.encode(2.0)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 1.25e30])
def test_bad_values_are_counted_and_placed_never_shown(bad: float) -> None:
    x = np.zeros((2, 3))
    x[1, 2] = x[0, 1] = bad
    with pytest.raises(FixedPointRangeError, match=r"^2 of 6 values are not finite or out of "
                       r"the fixed-point range \[-2\^45, 2\^45\) for frac_bits=18; the first "
                       r"at position \(0, 1\)$") as info:
        FixedPoint().encode(x)
    for text in (repr(bad), str(bad), "1.25", "e+30", "nan", "inf"):
        assert text not in str(info.value)
    with pytest.raises(FixedPointRangeError, match=r"the first at position 1$"):
        FixedPoint().encode([0.0, bad])
    with pytest.raises(FixedPointRangeError, match=r"=18$"):  # a scalar has no position
        FixedPoint().encode(bad)


def test_bad_integers_are_counted_and_placed_never_shown() -> None:
    secret = 2**50 + 12345
    with pytest.raises(FixedPointRangeError, match=r"^1 of 3 integers are out of the "
                       r"fixed-point range .*; the first at position 2$") as info:
        FixedPoint().encode_int([1, 2, secret])
    assert str(secret) not in str(info.value) and "12345" not in str(info.value)


@given(st.sampled_from(FRAC_BITS), st.data())
def test_encode_int_is_exact(f: int, data: st.DataObject) -> None:
    fp = FixedPoint(f)
    limit = 2 ** (63 - f)
    values = data.draw(st.lists(st.integers(-limit, limit - 1), min_size=1, max_size=20))
    got = fp.encode_int(values)
    assert got.dtype == np.uint64
    assert got.view(np.int64).tolist() == [v * 2**f for v in values]
    small = [v for v in values if abs(v) < 2**40]
    assert (fp.encode_int(small) == fp.encode(np.array(small, dtype=np.float64))).all()


@pytest.mark.parametrize("f", FRAC_BITS)
def test_encode_int_edges(f: int) -> None:
    fp = FixedPoint(f)
    limit = 2 ** (63 - f)
    assert fp.encode_int(np.array([-limit, limit - 1])).view(np.int64).tolist() == [
        -(2**63),
        2**63 - 2**f,
    ]
    for bad in ([limit], [0, -limit - 1], [2**70], np.array([2**64 - 1], np.uint64)):
        with pytest.raises(FixedPointRangeError, match="out of the fixed-point range"):
            fp.encode_int(bad)


def test_encode_int_rejects_floats_and_bad_formats() -> None:
    with pytest.raises(TypeError):
        FixedPoint().encode_int([1.5])
    for f in (-1, 63):
        with pytest.raises(ValueError):
            FixedPoint(f)
