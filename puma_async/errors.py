"""Typed errors of puma-async.

Every failure a user or a peer can cause maps to one of these, each naming what was wrong:
the peer and the protocol step where there is one. Nothing else escapes the decoder, the
transports or the party runtime.
"""

from __future__ import annotations

import trio

from puma_async.roles import role_name


class PumaError(Exception):
    """Base class of every error raised on purpose by puma-async."""


class ProtocolError(PumaError):
    """A protocol went wrong: a bad frame, an unexpected or duplicate message, a peer failure.

    ``peer`` is the role id of the other side (or None), named in the message by its role name
    (P0, P1, P2, model-owner, client); ``step`` the step path as a dotted string (or None)
    where the error was noticed.
    """

    def __init__(self, message: str, *, peer: int | None = None, step: str | None = None):
        self.peer = peer
        self.step = step
        where = []
        if peer is not None:
            where.append(f"peer {role_name(peer)}")
        if step is not None:
            where.append(f"step {step or '<root>'}")
        super().__init__(f"{message} ({', '.join(where)})" if where else message)
        self.reason = message


class DecodeError(ProtocolError):
    """Bytes that are not a valid frame, envelope or message (malformed, truncated, too large)."""


class SessionMismatchError(ProtocolError):
    """A frame or handshake from another session, sender or protocol version."""


class HandshakeError(ProtocolError):
    """A peer failed the handshake: wrong version, session, role, configuration or certificate."""


class PeerAbortedError(ProtocolError):
    """A peer failed and told us so; its reason is in the message."""


class PeerDisconnectedError(ProtocolError):
    """A peer's connection ended before the protocol did."""


class FixedPointRangeError(PumaError, ValueError):
    """A value does not fit the fixed-point encoding (too large in magnitude, or not finite)."""


class SettingsError(PumaError, ValueError):
    """A session setting or command-line option is missing, out of range or inconsistent."""


class ModelFileError(PumaError):
    """A model file is missing, malformed or not the architecture it claims to be."""


class ContextLengthError(PumaError, ValueError):
    """A prompt (plus the tokens to generate) is longer than the model's context."""


class TraceError(PumaError):
    """A trace file is malformed, of an unknown version, or does not match the run replaying it."""


class RunFailedError(PumaError):
    """One or more roles of a run failed; ``errors`` maps each failed role to its error.

    The message leads with the root cause (an error that is not just a reaction to another
    party's failure).
    """

    def __init__(self, errors: dict[int, BaseException]):
        self.errors = errors
        reactions = (PeerAbortedError, PeerDisconnectedError)
        ordered = sorted(errors.items(), key=lambda kv: (isinstance(kv[1], reactions), kv[0]))
        self.root_role, self.root_cause = ordered[0]
        lines = [f"{role_name(role)}: {type(err).__name__}: {err}" for role, err in ordered]
        super().__init__("run failed; " + "; ".join(lines))


def first_error(group: BaseExceptionGroup) -> BaseException:
    """The first error of a nursery's group that is not a cancellation (the group's first
    leaf if all are): what a failing task raised, rather than the cancellations it caused."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    real = [e for e in leaves if not isinstance(e, trio.Cancelled)]
    return (real or leaves)[0]
