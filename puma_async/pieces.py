"""Pieces: a large message of arrays split into messages of at most :data:`PIECE_BYTES`.

Sans-IO (numpy only). :meth:`Context.send_arrays <puma_async.context.Context.send_arrays>`
sends a message of arrays whose payload is above :data:`PIECE_BYTES` as consecutive messages
of the same step (so of the same round), each an ``Arrays`` of 1-d segments of the arrays
flattened in C order, of at most :data:`PIECE_BYTES` together, the first led by a header of
the message's shapes (:func:`layout_header`: 8 bytes per dimension and per array, plus 8);
the receiver, who knows the arrays' public dtypes and shapes (its ``ArraySpec``\\ s), plans
the same pieces, checks the header and each piece's segments (dtype, length), and copies them
into arrays of the expected shapes: it refuses what :meth:`Context.recv_arrays
<puma_async.context.Context.recv_arrays>` refuses of a whole message. A message within
:data:`PIECE_BYTES` travels whole, as it always did. So no message, hence no frame, outgrows a
bound that depends on nothing but this constant (:mod:`puma_async.session.frames`), however
long the prompt.

The plan (:func:`plan_pieces`) is a pure function of the layout (each array's dtype and shape)
and of the piece size: segments fill a piece greedily in array order (the arrays' elements
in C order, one array's segment ending where the piece is full and the next piece going on
with it), so both sides agree without a word. Empty arrays have no segment (the receiver
makes them); a 0-d array is one element.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np

PIECE_BYTES = 4 << 20
"""The most payload bytes of one message (4 MiB). A larger message of arrays travels in
pieces of at most this size. Why 4 MiB: large enough that a piece's costs beside its bytes
(an envelope of ~40 bytes and 16 per segment; tens of microseconds of Python at either end)
are lost in the copying of its bytes (about a millisecond), and above every message of the
tiny model (its recorded traces replay unchanged) and of short SmolLM2 prompts, which stay
whole (the largest, negExp's offline bits, is 9 heads x n x T x 72 bytes: 0.66 MB at
n = T = 32); small enough that a frame is written in ~35 ms at 1 Gbit/s (heartbeats and
other steps' frames interleave with a long message's pieces) and that a receiver's decoding
budget per frame (4 times the frame) stays at ~20 MB, where a ~400-token prompt's 112 MB
message needed 450 MB at once."""


class Layout(Protocol):
    """What the plan reads of an array or of an ``ArraySpec``: dtype and shape (a None
    dimension: unknown to the receiver, so such a message is never planned in pieces)."""

    @property
    def dtype(self) -> np.dtype[Any]: ...

    @property
    def shape(self) -> tuple[int | None, ...]: ...


class Segment(NamedTuple):
    """Elements ``start:stop`` (C order) of array ``array`` of the message."""

    array: int
    start: int
    stop: int


Plan = tuple[tuple[Segment, ...], ...]
"""The pieces of a message, in order, each its segments in order."""


def layout_header(layout: Sequence[Layout]) -> np.ndarray:
    """The first piece's first array: the message's shapes, ``[count, ndim_0, *shape_0,
    ndim_1, ...]`` (uint64), which the receiver compares with its own (each segment's dtype
    and length are checked as it comes; the header tells a shape apart from another of as
    many elements, and names the empty arrays, which have no segment)."""
    words = [len(layout)]
    for item in layout:
        words += [len(item.shape), *item.shape]
    return np.array(words, np.uint64)


def read_header(words: np.ndarray) -> list[tuple[int, ...]] | None:
    """The shapes a :func:`layout_header` names (None if it is not one)."""
    values = [int(w) for w in words]
    if not values:
        return None
    shapes, pos = [], 1
    for _ in range(values[0]):
        if pos >= len(values) or pos + 1 + values[pos] > len(values):
            return None
        shapes.append(tuple(values[pos + 1 : pos + 1 + values[pos]]))
        pos += 1 + values[pos]
    return shapes if pos == len(values) else None


def travels_whole(payload_bytes: int, piece_bytes: int | None = None) -> bool:
    """Whether a message of ``payload_bytes`` of arrays goes as one message: at most
    ``piece_bytes`` (default :data:`PIECE_BYTES`). The one test of :func:`plan_pieces` that
    a sender of known arrays can make without a plan."""
    return payload_bytes <= (PIECE_BYTES if piece_bytes is None else piece_bytes)


def plan_pieces(layout: Sequence[Layout], piece_bytes: int | None = None) -> Plan | None:
    """The pieces of a message of arrays of ``layout``, or None if it travels whole: its
    payload is at most ``piece_bytes`` (default :data:`PIECE_BYTES`), or a dimension is None.

    The first piece starts with the :func:`layout_header` (not in the plan: it is implied).
    Every piece holds at most ``piece_bytes``, header included (but for a header larger than
    that, alone in the first piece, or an element larger than that, alone in its piece), and
    every piece but a first one of the header alone holds at least one segment."""
    limit = PIECE_BYTES if piece_bytes is None else piece_bytes
    sizes = []
    total = 0
    for item in layout:
        if None in item.shape:
            return None
        size = math.prod(item.shape)  # type: ignore[arg-type]
        sizes.append(size)
        total += size * item.dtype.itemsize
    if travels_whole(total, limit):
        return None
    pieces: list[tuple[Segment, ...]] = []
    current: list[Segment] = []
    room = limit - 8 * (1 + sum(1 + len(item.shape) for item in layout))  # the header's
    for index, (item, size) in enumerate(zip(layout, sizes, strict=True)):
        itemsize, start = item.dtype.itemsize, 0
        while start < size:
            take = min(size - start, room // itemsize)
            if take <= 0:  # the piece is full
                if current or not pieces:  # (the first piece holds the header)
                    pieces.append(tuple(current))
                    current, room = [], limit
                    continue
                take = 1  # an element larger than a piece: alone in its piece
            current.append(Segment(index, start, start + take))
            start += take
            room -= take * itemsize
    if current:
        pieces.append(tuple(current))
    return tuple(pieces)


def split_pieces(arrays: Sequence[np.ndarray], plan: Plan) -> list[tuple[np.ndarray, ...]]:
    """The pieces' arrays (the header first; then 1-d views of the arrays, flattened; a copy
    of a non-contiguous one), in the order of ``plan``."""
    flat = [np.ascontiguousarray(a).reshape(-1) for a in arrays]
    out = [tuple(flat[s.array][s.start : s.stop] for s in piece) for piece in plan]
    out[0] = (layout_header(arrays), *out[0])
    return out


class Joiner:
    """The receiving side: arrays of ``layout`` (concrete shapes) filled piece by piece.

    :meth:`expected` tells what piece k must hold (the caller checks dtypes and lengths; and
    first :meth:`foreign_shapes`, the shapes the sender's header names if not these),
    :meth:`put` copies it in; :attr:`arrays` are the message once every piece is in."""

    def __init__(self, layout: Sequence[Layout], plan: Plan):
        self.plan = plan
        self.header = layout_header(layout)
        self.arrays = tuple(np.empty(item.shape, item.dtype)  # type: ignore[arg-type]
                            for item in layout)
        self._flat = [a.reshape(-1) for a in self.arrays]  # views (the arrays are new)

    def expected(self, k: int) -> tuple[tuple[np.dtype[Any], int], ...]:
        """Piece k's arrays: (dtype, length) of each of its 1-d arrays."""
        segments = tuple((self.arrays[s.array].dtype, s.stop - s.start) for s in self.plan[k])
        return ((self.header.dtype, self.header.size), *segments) if k == 0 else segments

    def foreign_shapes(self, arrays: Sequence[np.ndarray]) -> list[tuple[int, ...]] | None:
        """The shapes that the first piece's header names, if it is a header of other shapes
        than this message's (None if it is this message's or no header at all: then what
        :meth:`expected` says tells)."""
        first = arrays[0] if arrays else None
        if (first is None or first.dtype != self.header.dtype or first.ndim != 1
                or np.array_equal(first, self.header)):
            return None
        return read_header(first)

    def put(self, k: int, arrays: Sequence[np.ndarray]) -> None:
        """Copy piece k's arrays (as :meth:`expected` says) into place (ValueError if the
        first piece's header is not this message's)."""
        if k == 0:
            if not np.array_equal(arrays[0], self.header):
                raise ValueError("a malformed layout header")
            arrays = arrays[1:]
        for s, got in zip(self.plan[k], arrays, strict=True):
            self._flat[s.array][s.start : s.stop] = got


__all__ = ["PIECE_BYTES", "Joiner", "Layout", "Plan", "Segment", "layout_header",
           "plan_pieces", "read_header", "split_pieces", "travels_whole"]
