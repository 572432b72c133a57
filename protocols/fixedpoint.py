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

All functions are vectorised, one or two passes over the data. A session's format is
per-party state (:func:`fixed_point`: the installed :class:`FixedPoint`, f = 18 unless a
session installs another), so every protocol step of the session reads the same one.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from puma_async.errors import FixedPointRangeError

from .ring import RING_DTYPE, RingArray

if TYPE_CHECKING:
    from puma_async.context import Context

_TWO63 = float(2**63)


def _range_error(bad: npt.NDArray[np.bool_], what: str, frac_bits: int) -> FixedPointRangeError:
    """The error for the elements ``bad`` marks: how many, and where the first one is.

    Never the values themselves: the text is logged and sent to every peer inside an
    ``Abort``, and the values may be secret (a weight, an input).
    """
    where = ""
    if bad.ndim:
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        where = f"; the first at position {index[0] if len(index) == 1 else index}"
    return FixedPointRangeError(
        f"{int(np.count_nonzero(bad))} of {bad.size} {what} the fixed-point range "
        f"[-2^{63 - frac_bits}, 2^{63 - frac_bits}) for frac_bits={frac_bits}{where}"
    )


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

        Refused: NaN, infinities, and values whose rounded scaled magnitude does not fit the
        signed 64-bit range. The error says how many there are and the position of the first,
        never a value.
        """
        arr = np.asarray(x, dtype=np.float64)
        with np.errstate(over="ignore"):  # overflow to inf is reported below
            scaled = np.rint(arr * self.scale)  # scaling by a power of two is exact
        bad = ~((scaled >= -_TWO63) & (scaled < _TWO63))  # also catches NaN
        if bad.any():
            raise _range_error(bad, "values are not finite or out of", self.frac_bits)
        return scaled.astype(np.int64).view(RING_DTYPE)

    def decode(self, x: RingArray) -> npt.NDArray[np.float64]:
        """Ring elements read as two's complement, divided by 2^f (exact below 2^53 units)."""
        return np.asarray(x, dtype=RING_DTYPE).view(np.int64) / self.scale

    def encode_int(self, x: Any) -> RingArray:
        """Exact encoding x * 2^f of integers (no float rounding); raises FixedPointRangeError.

        Accepts numpy integer arrays and Python ints (nested lists too) with
        x in [-2^(63-f), 2^(63-f)); the error says how many are outside and where the first
        is, never a value.
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
            raise _range_error(~ok, "integers are out of", self.frac_bits)
        return arr.astype(np.int64).view(RING_DTYPE) * np.uint64(1 << self.frac_bits)


DEFAULT_FIXED_POINT = FixedPoint()
"""18 fractional bits, PUMA's setting: the format of a session that installs none."""


def fixed_point(ctx: Context) -> FixedPoint:
    """The session's fixed-point format: the :class:`FixedPoint` installed as per-party state
    (``ctx.install(FixedPoint(12))``), else :data:`DEFAULT_FIXED_POINT`."""
    return ctx.state(FixedPoint, DEFAULT_FIXED_POINT)
