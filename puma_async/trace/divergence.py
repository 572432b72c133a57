"""What differs between a replayed party and its recording, said without its secrets.

A :class:`Divergence` names where a replayed party first differed from its trace (peer, step
path, seq, round) and how: message types, array dtypes and shapes, how many elements differ and
the position of the first, or which fields of a message differ. It shows no value by default,
although the trace's owner holds them all: a report is made to be pasted into an issue, and
the values are shares, keys or opened data. ``show_values=True`` (``replay --show-values``)
adds the first differing elements, for the trace's owner only.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from puma_async.codec import Arrays, Envelope, format_path
from puma_async.errors import ProtocolError
from puma_async.roles import role_name


@dataclasses.dataclass(frozen=True)
class Divergence:
    """Where a replayed party first differed from its recording, and how."""

    peer: int
    path: tuple[int, ...]
    seq: int
    round: int | None
    what: str

    def __str__(self) -> str:
        step = format_path(self.path) or "<root>"
        rnd = f", round {self.round}" if self.round is not None else ""
        return f"step {step} (seq {self.seq}) to {role_name(self.peer)}{rnd}: {self.what}"


class DivergenceError(ProtocolError):
    """A replayed party sent something other than what it sent in the recording."""

    def __init__(self, divergence: Divergence):
        self.divergence = divergence
        super().__init__(f"replay diverges at {divergence}", peer=divergence.peer,
                         step=format_path(divergence.path))


def describe_difference(got: Envelope, want: Envelope, *, show_values: bool = False) -> str:
    """What differs between a sent envelope and the recorded one with the same key.

    Types, shapes, counts and positions only; with ``show_values`` also the first differing
    elements (or fields), which are secret (see the module docstring).
    """
    if got.round != want.round:
        return f"round {got.round}, recorded {want.round}"
    got_type, want_type = type(got.message).__name__, type(want.message).__name__
    if got_type != want_type:
        return f"message {got_type}, recorded {want_type}"
    if isinstance(got.message, Arrays) and isinstance(want.message, Arrays):
        a, b = got.message.arrays, want.message.arrays
        if len(a) != len(b):
            return f"{len(a)} arrays, recorded {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if x.dtype != y.dtype or x.shape != y.shape:
                return f"array {i} is {x.dtype}{list(x.shape)}, recorded {y.dtype}{list(y.shape)}"
            differ = np.flatnonzero(x.ravel() != y.ravel())
            if differ.size:
                j = int(differ[0])
                values = f": {x.ravel()[j]} vs recorded {y.ravel()[j]}" if show_values else ""
                return (f"array {i} {x.dtype}{list(x.shape)}: {differ.size} elements differ, "
                        f"first at flat index {j}{values}")
    if dataclasses.is_dataclass(got.message):
        fields = [f.name for f in dataclasses.fields(got.message)
                  if not _same(getattr(got.message, f.name), getattr(want.message, f.name))]
        if fields:
            values = (f": {got.message!r:.200} vs recorded {want.message!r:.200}"
                      if show_values else "")
            return f"{got_type} field(s) {', '.join(fields)} differ{values}"
    return f"{got_type} payload differs"


def _same(a: object, b: object) -> bool:
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return bool(np.array_equal(a, b)) and np.asarray(a).dtype == np.asarray(b).dtype
    return a == b
