"""The session's conversation as a sans-IO state machine (in h11's style).

Both ends of the control conversation run one :class:`SessionState`: the client checks each
command before it sends it, every party checks each command it receives, so a client bug
and a misbehaving client are caught the same way, before any secret moves. Phases and
events (messages of :mod:`.messages`, plus the local :class:`PassDone`)::

    SETUP --Ready--> IDLE --Run--> RUN --PassDone--> IDLE --NextPrompt--> IDLE
                      IDLE --End--> END

(``Ready``: the party's own set-up is done, or, at the client, every party's.) Public bounds
checked on top of the transition table: a prompt's first pass covers at least one position,
each later pass exactly one (the token just generated); a prompt's positions stay within
the session's context; a prompt has at most ``max_new_tokens`` passes; ``NextPrompt`` and
``End`` come after a prompt's first pass. Anything else raises :class:`SessionStateError`
and leaves the state unchanged.
"""

from __future__ import annotations

import dataclasses
import enum

from puma_async.errors import PumaError
from puma_async.session.messages import End, NextPrompt, Ready, Run


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


Event = Ready | Run | NextPrompt | End | PassDone

TRANSITIONS: dict[tuple[Phase, type], Phase] = {
    (Phase.SETUP, Ready): Phase.IDLE,
    (Phase.IDLE, Run): Phase.RUN,
    (Phase.RUN, PassDone): Phase.IDLE,
    (Phase.IDLE, NextPrompt): Phase.IDLE,
    (Phase.IDLE, End): Phase.END,
}


class SessionState:
    """Where a session is: its phase, the current prompt, its passes and positions so far."""

    def __init__(self, context: int, max_new_tokens: int):
        self.context = context
        self.max_new_tokens = max_new_tokens
        self.phase = Phase.SETUP
        self.prompt = 0
        """Index of the current prompt."""
        self.passes = 0
        """Passes of the current prompt so far (the running one included)."""
        self.positions = 0
        """Positions of the current prompt so far (the running pass's included)."""

    def handle(self, event: Event) -> None:
        """Apply ``event``, or raise :class:`SessionStateError` (and change nothing)."""
        following = TRANSITIONS.get((self.phase, type(event)))
        if following is None:
            raise SessionStateError(
                f"{type(event).__name__} is not allowed in phase {self.phase.value}"
            )
        if isinstance(event, Run):
            self._check_run(event.positions)
            self.passes += 1
            self.positions += event.positions
        elif isinstance(event, NextPrompt | End):
            if self.passes == 0:
                raise SessionStateError(f"{type(event).__name__} before the prompt's first pass")
            if isinstance(event, NextPrompt):
                self.prompt, self.passes, self.positions = self.prompt + 1, 0, 0
        self.phase = following

    def _check_run(self, positions: int) -> None:
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


__all__ = ["TRANSITIONS", "Event", "PassDone", "Phase", "SessionState", "SessionStateError"]
