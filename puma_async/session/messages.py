"""The session's control messages: the client's commands to the parties, their ready signal.

Flat typed messages registered with :func:`puma_async.codec.message` (session tags 16-31);
each ``from_wire`` checks its fields' types and ranges, so a malformed command is a
:class:`~puma_async.errors.DecodeError` naming the peer. Whether a well-formed command may come
now (and within the session's bounds) is :mod:`.state`'s decision.

- :class:`Ready` (party -> client): the party has stored its weight shares.
- :class:`Run` (client -> parties): a forward pass over ``positions`` new positions follows.
- :class:`Prefill` (client -> parties): a pass over ``positions`` of a long prompt's first
  positions follows, which only fills the KV cache (the prompt's :class:`Run` comes after).
- :class:`NextPrompt` (client -> parties): the current prompt is over; drop the KV cache.
- :class:`End` (client -> parties): the session is over.
"""

from __future__ import annotations

from typing import Any, ClassVar

from puma_async.codec import Message, message
from puma_async.errors import DecodeError

MAX_POSITIONS = 1 << 31
"""Wire bound of :attr:`Run.positions` (the session's context is the real bound)."""


def _positions(cls: type, fields: list[Any]) -> int:
    """The one field of a pass's command: its positions, an integer in 1..MAX_POSITIONS."""
    (positions,) = fields
    if type(positions) is not int or not 1 <= positions <= MAX_POSITIONS:
        raise DecodeError(f"{cls.__name__}: positions must be an integer in 1..{MAX_POSITIONS}")
    return positions


@message
class Ready(Message):
    """A party's signal to the client that its set-up is done (its weights are stored)."""

    TAG: ClassVar[int] = 16

    @classmethod
    def from_wire(cls, fields: list[Any]) -> Ready:
        return cls()  # the codec has checked that there are no fields


@message
class Run(Message):
    """The client's command: one forward pass over ``positions`` new positions (>= 1)."""

    TAG: ClassVar[int] = 17
    positions: int

    @classmethod
    def from_wire(cls, fields: list[Any]) -> Run:
        return cls(_positions(cls, fields))


@message
class Prefill(Message):
    """The client's command: a pass over the next ``positions`` (>= 1) of a prompt longer
    than one pass may cover (``SessionSettings.max_pass_positions``), before the prompt's
    :class:`Run` of its last positions: it fills the KV cache and reveals nothing (the
    logits of its positions too where the session reveals every position's)."""

    TAG: ClassVar[int] = 20
    positions: int

    @classmethod
    def from_wire(cls, fields: list[Any]) -> Prefill:
        return cls(_positions(cls, fields))


@message
class NextPrompt(Message):
    """The client's command: the current prompt is done; the next one starts afresh."""

    TAG: ClassVar[int] = 18

    @classmethod
    def from_wire(cls, fields: list[Any]) -> NextPrompt:
        return cls()  # the codec has checked that there are no fields


@message
class End(Message):
    """The client's command: the session is over."""

    TAG: ClassVar[int] = 19

    @classmethod
    def from_wire(cls, fields: list[Any]) -> End:
        return cls()  # the codec has checked that there are no fields


Command = Run | Prefill | NextPrompt | End

__all__ = [
    "MAX_POSITIONS", "Command", "End", "NextPrompt", "Prefill", "Ready", "Run",
]
