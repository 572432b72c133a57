"""The session's conversation as a sans-IO state machine (in h11's style).

Both ends of the control conversation run one :class:`SessionState`: the client checks each
command before it sends it, every party checks each command it receives, so a client bug
and a misbehaving client are caught the same way, before any secret moves. Phases and
events (messages of :mod:`.messages`, plus the local :class:`PassDone`)::

    SETUP --Ready--> IDLE --Run--> RUN --PassDone--> IDLE --NextPrompt--> IDLE
                      IDLE --Prefill--> RUN
                      IDLE --End--> END

(``Ready``: the party's own set-up is done, or, at the client, every party's.) Public bounds
checked on top of the transition table: a prompt's first pass covers at least one position,
each later pass exactly one (the token just generated); a pass of more than one position
fits the session's ``max_pass_positions`` N (:func:`fits_one_pass`: at most N positions and
N^2 query-key pairs, since a pass's memory grows with both: a longer prompt comes as
``Prefill`` passes of its first positions, :func:`prompt_passes`, before its first ``Run``,
which no ``Prefill`` follows); a prompt's positions stay within the session's context; a prompt has
at most ``max_new_tokens`` passes (``Run`` s: a ``Prefill`` is part of the prompt's first);
``NextPrompt`` and ``End`` come after a prompt's first pass. Anything else raises
:class:`SessionStateError` and leaves the state unchanged.
"""

from __future__ import annotations

import dataclasses
import enum

from puma_async.errors import PumaError
from puma_async.session.messages import End, NextPrompt, Prefill, Ready, Run


class SessionStateError(PumaError):
    """An event that the session's state does not allow (the message says why)."""


class Phase(enum.Enum):
    SETUP = "setup"
    IDLE = "idle"
    RUN = "run"
    END = "end"


@dataclasses.dataclass(frozen=True)
class PassDone:
    """A local event: the forward pass of the last :class:`Run` has finished."""


Event = Ready | Run | Prefill | NextPrompt | End | PassDone

TRANSITIONS: dict[tuple[Phase, type], Phase] = {
    (Phase.SETUP, Ready): Phase.IDLE,
    (Phase.IDLE, Run): Phase.RUN,
    (Phase.IDLE, Prefill): Phase.RUN,
    (Phase.RUN, PassDone): Phase.IDLE,
    (Phase.IDLE, NextPrompt): Phase.IDLE,
    (Phase.IDLE, End): Phase.END,
}


class SessionState:
    """Where a session is: its phase, the current prompt, its passes and positions so far."""

    def __init__(self, context: int, max_new_tokens: int, max_pass_positions: int | None = None):
        self.context = context
        self.max_new_tokens = max_new_tokens
        self.max_pass_positions = context if max_pass_positions is None else max_pass_positions
        """The most positions one pass may cover (None: the context)."""
        self.phase = Phase.SETUP
        self.prompt = 0
        """Index of the current prompt."""
        self.passes = 0
        """Passes (``Run`` s) of the current prompt so far (the running one included)."""
        self.positions = 0
        """Positions of the current prompt so far (the running pass's included)."""

    def handle(self, event: Event) -> None:
        """Apply ``event``, or raise :class:`SessionStateError` (and change nothing)."""
        following = TRANSITIONS.get((self.phase, type(event)))
        if following is None:
            raise SessionStateError(
                f"{type(event).__name__} is not allowed in phase {self.phase.value}"
            )
        if isinstance(event, Run | Prefill):
            self._check_run(event)
            self.passes += isinstance(event, Run)
            self.positions += event.positions
        elif isinstance(event, NextPrompt | End):
            if self.passes == 0:
                raise SessionStateError(f"{type(event).__name__} before the prompt's first pass")
            if isinstance(event, NextPrompt):
                self.prompt, self.passes, self.positions = self.prompt + 1, 0, 0
        self.phase = following

    def _check_run(self, event: Run | Prefill) -> None:
        positions = event.positions
        if isinstance(event, Prefill) and self.passes:
            raise SessionStateError("Prefill after the prompt's first pass")
        if self.passes >= self.max_new_tokens:
            raise SessionStateError(
                f"pass {self.passes + 1} of a prompt exceeds max_new_tokens "
                f"{self.max_new_tokens}"
            )
        if self.passes and positions != 1:
            raise SessionStateError(f"a pass after the prompt's first has 1 position, "
                                    f"not {positions}")
        if positions < 1 or self.positions + positions > self.context:
            raise SessionStateError(
                f"{self.positions} + {positions} positions exceed the session's context of "
                f"{self.context}"
            )
        if not fits_one_pass(self.positions, positions, self.max_pass_positions):
            raise SessionStateError(
                f"a pass of {positions} positions after {self.positions} exceeds the "
                f"session's {self.max_pass_positions} positions or "
                f"{self.max_pass_positions ** 2} query-key pairs per pass")


def fits_one_pass(start: int, positions: int, max_pass_positions: int) -> bool:
    """Whether one pass may cover ``positions`` after ``start`` cached ones: one position
    always (a token's pass, whose memory is small), else at most N = ``max_pass_positions``
    positions attending to at most N^2 (query, key) pairs, since a pass's memory grows with
    its positions (norms, products, SiLU) and with its pairs (its softmax's material, made
    for every layer at its start)."""
    n = max_pass_positions
    return positions == 1 or (positions <= n and positions * (start + positions) <= n * n)


def prompt_passes(length: int, max_pass_positions: int) -> list[int]:
    """The positions of each pass of a prompt of ``length`` (:func:`fits_one_pass`): each the
    most that fits after the ones before (N, then fewer as the cache grows: 64, 39, 30, 25,
    22, 20 for 200 positions at N = 64)."""
    sizes: list[int] = []
    start = 0
    while start < length:
        size = min(max_pass_positions, length - start)
        while not fits_one_pass(start, size, max_pass_positions):
            size -= 1
        sizes.append(size)
        start += size
    return sizes


__all__ = [
    "TRANSITIONS", "Event", "PassDone", "Phase", "SessionState", "SessionStateError",
    "fits_one_pass", "prompt_passes",
]
