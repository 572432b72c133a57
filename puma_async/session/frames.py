"""The largest legitimate frame of a session, and the row blocks inputs are shared in.

Every role receives frames no larger than :func:`max_frame_bytes`, a function of the public
architecture and of the session's context (positions per prompt); it is part of the
configuration digest and the TCP transport refuses a larger frame before allocating it. So
a peer cannot make a role allocate gigabytes, and the limit stays in the tens of MB for a
model like SmolLM2 (about 26 MB for a context of 256 positions) instead of the codec's
default of 256 MiB.

What makes frames large:

- **Inputs** (the model owner's weights, the client's one-hot rows) are shared in blocks of
  whole rows of at most :data:`INPUT_BLOCK_BYTES` (one row at least): :func:`row_blocks`.
- **A forward pass** of n new positions over T cached + new ones sends, per message, a few
  arrays of at most n x (the widest per-position tensor) ring elements: the fused gate/up
  projection (2 ffn), Q/K/V (q + 2 kv), attention scores of every head (n_heads x T), the
  norms' per-row rsqrt candidates (under :data:`NORM_ROW_ELEMENTS`); the head's product is
  local (no message of vocab elements). With n, T <= context the bound below is that product times
  :data:`FRAME_SAFETY` (measured: the largest message is at most 2.8 times it;
  ``tests/test_session.py`` checks the bound on whole sessions).
- **Logits** (of the last position, or of every one in a session that reveals them all,
  ``reveal_logits="all"``): each party sends the client its share of them in row blocks of
  at most the input block (one row at least: one element per logit per party), so the
  limit does not grow with the context times the vocabulary.
- **Offline material** made for a whole pass at once (its TP1 tuples) goes in preparations of
  at most :data:`puma_async.protocols.trunc1.BATCH_ELEMENTS` elements (messages of ~2.2 MB),
  so it does not grow with the number of layers times the positions.
- Small envelopes ready together are merged into frames of at most 64 KiB
  (:data:`~puma_async.runtime.COALESCE_BYTES`), inside :data:`FRAME_SLACK`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

from puma_async.model.config import LlamaConfig

ELEMENT_BYTES = 8
"""Bytes of one ring element (uint64)."""
INPUT_BLOCK_BYTES = 16 << 20
"""Inputs are shared in blocks of whole rows of at most this many bytes (one row at least),
unless the session sets another size."""
NORM_ROW_ELEMENTS = 512
"""An upper bound on the ring elements per row of a norm's largest message (rsqrt's
comparisons and candidates)."""
FRAME_SAFETY = 4
FRAME_SLACK = 1 << 20
"""Added to every bound: envelope heads and merged small frames."""


def row_block_rows(shape: Sequence[int], block_bytes: int) -> int:
    """How many rows (along axis 0) of an input of ``shape`` go in one block (at least 1)."""
    row_bytes = ELEMENT_BYTES * math.prod(shape[1:])
    return max(1, block_bytes // max(1, row_bytes))


def row_blocks(shape: Sequence[int], block_bytes: int) -> Iterator[slice]:
    """The row slices of an input of ``shape``, in order, each within one block."""
    rows = row_block_rows(shape, block_bytes)
    for start in range(0, shape[0], rows):
        yield slice(start, min(start + rows, shape[0]))


def _online_elements(config: LlamaConfig, context: int) -> int:
    """Ring elements of a forward pass's largest array, before :data:`FRAME_SAFETY`."""
    per_position = max(2 * config.ffn, config.q_dim + 2 * config.kv_dim, config.hidden,
                       config.n_heads * context, NORM_ROW_ELEMENTS)
    return context * per_position


def max_frame_bytes(config: LlamaConfig, context: int, block_bytes: int) -> int:
    """The largest frame a role of a session may receive (see the module docstring).

    ``context`` is the session's bound on positions per prompt (prompt + new tokens),
    ``block_bytes`` the size of the row blocks inputs are shared (and logits opened) in.
    """
    widest_row = max(2 * config.ffn, config.q_dim + 2 * config.kv_dim, config.hidden,
                     config.vocab)
    inputs = max(block_bytes, ELEMENT_BYTES * widest_row)
    online = FRAME_SAFETY * ELEMENT_BYTES * _online_elements(config, context)
    return max(inputs, online) + FRAME_SLACK


__all__ = [
    "ELEMENT_BYTES", "FRAME_SAFETY", "FRAME_SLACK", "INPUT_BLOCK_BYTES", "NORM_ROW_ELEMENTS",
    "max_frame_bytes", "row_block_rows", "row_blocks",
]
