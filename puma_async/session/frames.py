"""The largest legitimate frame of a session, and the row blocks inputs are shared in.

Every role receives frames no larger than :func:`max_frame_bytes`: the piece size
(:data:`puma_async.pieces.PIECE_BYTES`, 4 MiB) plus :data:`FRAME_SLACK`, whatever the model,
the context or the prompt. It is part of the configuration digest and the TCP transport
refuses a larger frame before allocating it, so a peer cannot make a role allocate more than
that per frame (and its decoding at most 4 times that, :func:`puma_async.codec.decode_budget`).

Why no frame is larger:

- **Messages of arrays** (every share, opened value, dealt product, random bit, input block
  and logit a protocol sends) go through
  :meth:`~puma_async.context.Context.send_arrays`, which sends one whose payload is above
  the piece size as consecutive messages of at most that size (:mod:`puma_async.pieces`):
  the messages that grow with heads x n x T (negExp's offline random bits, the comparisons,
  bit_to_arith, the carry trees' dealt products), which had outgrown a limit proportional to
  the context on prompts of ~340 tokens at context 512, are split like any other.
- **Other messages** are small by their type: seeds (32 bytes), :class:`~puma_async.codec.Value`
  (at most 16 short scalars), aborts and the session's commands (a few fields).
- Small envelopes ready together are merged into frames of at most 64 KiB
  (:data:`~puma_async.runtime.COALESCE_BYTES`); a larger one travels alone. A piece's frame
  is its payload plus the envelope head (tens of bytes; the step path at most 64 items) and
  16 bytes per segment (at most :data:`~puma_async.codec.MAX_ARRAYS`): inside
  :data:`FRAME_SLACK`.

**Inputs** (the model owner's weights, the client's one-hot rows) are still shared in blocks
of whole rows of at most :data:`INPUT_BLOCK_BYTES` (one row at least; :func:`row_blocks`), and
logits opened in row blocks of that size. The blocks no longer bound the frames (a block above
the piece size travels in pieces too); the inputs' keep the owner making one block of shares
at a time.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

from puma_async import pieces

ELEMENT_BYTES = 8
"""Bytes of one ring element (uint64)."""
INPUT_BLOCK_BYTES = 16 << 20
"""Inputs are shared in blocks of whole rows of at most this many bytes (one row at least),
unless the session sets another size."""
FRAME_SLACK = 1 << 20
"""Added to the piece size: envelope heads, segment headers, merged small frames."""


def row_block_rows(shape: Sequence[int], block_bytes: int) -> int:
    """How many rows (along axis 0) of an input of ``shape`` go in one block (at least 1)."""
    row_bytes = ELEMENT_BYTES * math.prod(shape[1:])
    return max(1, block_bytes // max(1, row_bytes))


def row_blocks(shape: Sequence[int], block_bytes: int) -> Iterator[slice]:
    """The row slices of an input of ``shape``, in order, each within one block."""
    rows = row_block_rows(shape, block_bytes)
    for start in range(0, shape[0], rows):
        yield slice(start, min(start + rows, shape[0]))


def max_frame_bytes() -> int:
    """The largest frame a role of a session may receive (see the module docstring): the
    piece size (read when called) plus :data:`FRAME_SLACK`."""
    return pieces.PIECE_BYTES + FRAME_SLACK


__all__ = [
    "ELEMENT_BYTES", "FRAME_SLACK", "INPUT_BLOCK_BYTES", "max_frame_bytes", "row_block_rows",
    "row_blocks",
]
