"""Fixed-point encoding of reals in Z_2^64 (two's complement, ``frac_bits`` fractional bits).

A real x is encoded as round(x * 2^f) mod 2^64, f = ``frac_bits`` (18 by default, PUMA's
setting). Precision and range, for f = 18:

- resolution 2^-f (about 3.8e-6); ``encode`` rounds to nearest (ties to even), so a round trip
  ``decode(encode(x))`` is within 2^-(f+1) of x, and exact when x is a multiple of 2^-f;
- ``decode`` is exact for ring values below 2^53 units in magnitude (|x| < 2^35 at f = 18);
  larger ones (e.g. unreduced products) are rounded to float64, relative error <= 2^-53;
- encodable range: round(x * 2^f) in [-2^63, 2^63), i.e. x in [-2^(63-f), 2^(63-f)) up to
  rounding (about +-3.5e13). This is the *encoding* range only: the protocols need much more
  head-room (a product of two encodings carries 2f fractional bits; truncation needs
  |x| < 2^62 of the ring value), which is their business, not this module's.

All functions are vectorised, one or two passes over the data.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from puma_async.errors import FixedPointRangeError

from .ring import RING_DTYPE, RingArray

_TWO63 = float(2**63)


def _position(index: tuple[int, ...]) -> str:
    return str(index[0]) if len(index) == 1 else str(tuple(int(i) for i in index))


@dataclass(frozen=True)
class FixedPoint:
    """The fixed-point format: ``frac_bits`` fractional bits in a 64-bit two's-complement ring."""

    frac_bits: int = 18

    def __post_init__(self) -> None:
        if not 0 <= self.frac_bits <= 62:
            raise ValueError(f"frac_bits must be in [0, 62], got {self.frac_bits}")

    @property
    def scale(self) -> float:
        """2^frac_bits as a float (the value of one unit in the last place is 1/scale)."""
        return float(1 << self.frac_bits)

    def encode(self, x: Any) -> RingArray:
        """round(x * 2^f) mod 2^64 for a float array (or scalar); raises FixedPointRangeError.

        The error names the first offending value and its position: a NaN or infinity, or a
        value whose rounded scaled magnitude does not fit the signed 64-bit range.
        """
        arr = np.asarray(x, dtype=np.float64)
        with np.errstate(over="ignore"):  # overflow to inf is reported below
            scaled = np.rint(arr * self.scale)  # scaling by a power of two is exact
        bad = ~((scaled >= -_TWO63) & (scaled < _TWO63))  # also catches NaN
        if bad.any():
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            value = float(arr[index])
            if np.isfinite(value):
                what = (
                    f"is out of the fixed-point range [-2^{63 - self.frac_bits}, "
                    f"2^{63 - self.frac_bits}) for frac_bits={self.frac_bits}"
                )
            else:
                what = "is not finite"
            where = f" at position {_position(index)}" if arr.ndim else ""
            raise FixedPointRangeError(f"value {value!r}{where} {what}")
        return scaled.astype(np.int64).view(RING_DTYPE)

    def decode(self, x: RingArray) -> npt.NDArray[np.float64]:
        """Ring elements read as two's complement, divided by 2^f (exact below 2^53 units)."""
        return np.asarray(x, dtype=RING_DTYPE).view(np.int64) / self.scale

    def encode_int(self, x: Any) -> RingArray:
        """Exact encoding x * 2^f of integers (no float rounding); raises FixedPointRangeError.

        Accepts numpy integer arrays and Python ints (nested lists too) with
        x in [-2^(63-f), 2^(63-f)).
        """
        arr = np.asarray(x)
        limit = 1 << (63 - self.frac_bits)
        if arr.size == 0:  # np.asarray([]) is float64
            return np.zeros(arr.shape, RING_DTYPE)
        if arr.dtype == object:  # Python ints beyond 64 bits
            in_range = np.frompyfunc(lambda v: -limit <= operator.index(v) < limit, 1, 1)
            ok = np.asarray(in_range(arr), dtype=bool)
        elif np.issubdtype(arr.dtype, np.integer):
            ok = (arr >= -limit) & (arr < limit)
        else:
            raise TypeError(f"encode_int needs integers, got dtype {arr.dtype}")
        if not ok.all():
            index = tuple(int(i) for i in np.argwhere(~ok)[0])
            where = f" at position {_position(index)}" if arr.ndim else ""
            raise FixedPointRangeError(
                f"integer {int(arr[index])}{where} is out of the fixed-point range "
                f"[-2^{63 - self.frac_bits}, 2^{63 - self.frac_bits}) for "
                f"frac_bits={self.frac_bits}"
            )
        return arr.astype(np.int64).view(RING_DTYPE) * np.uint64(1 << self.frac_bits)
