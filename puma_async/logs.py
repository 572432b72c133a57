"""Structured logging that never writes a secret, to stderr.

Every log record passes :func:`redact_secrets` before it is rendered:

* values under names that hold secrets (keys, seeds, shares, entropy, weights, tokens, logits,
  prompts, texts, values, ...) become ``"<redacted>"``, whatever their type;
* only plain values pass: None, bools, ints, floats, strings, paths, and lists, tuples, sets
  and dicts of them. Anything else (bytes, numpy arrays and scalars, shares, messages, any
  object whose ``repr`` could print its contents) becomes ``"<redacted>"``;
* an exception, as a field or as ``exc_info``, is rendered by :func:`public_error_text`
  (its text only if it is a puma-async error, else its type) with the place it was raised;
  no traceback is rendered, since a traceback repeats exception texts;
* an event that is not a string is replaced by its type name.

What a runtime check cannot see is whether a string was formatted from a secret; so log calls
in this package take a constant event and pass data as fields, never an f-string (a test reads
the source to hold every log call to that). The texts of :class:`~puma_async.errors.PumaError`
are written to carry types, role names, step paths, shapes, counts and positions only, never a
value (tests inject bad secrets and read every log line, error and ``Abort``).

The library modules log through ``structlog.get_logger``; importing this module installs the
configuration once (the CLIs and the runtime import it). Log lines go to stderr, looked up at
each line, so stdout carries results only.
"""

from __future__ import annotations

import enum
import re
import sys
import traceback
from collections.abc import MutableMapping
from pathlib import PurePath
from typing import Any

import structlog

from puma_async.errors import PumaError

REDACTED = "<redacted>"
SECRET_NAMES = re.compile(
    r"key|seed|share|entropy|secret|weight|token|logit|prompt|frame|payload|activation|"
    r"embed|(?:^|_)(?:texts?|values?|outputs?|inputs?|samples?|hidden)(?:$|_)",
    re.IGNORECASE,
)
"""Field names whose values are redacted whatever they hold (``prompt_text``, ``value``,
``weights``; not ``context_length``)."""
_PLAIN = (type(None), bool, int, float, str, PurePath, enum.Enum)


def public_error_text(exc: BaseException) -> str:
    """``Type: text`` of a puma-async error, only ``Type`` of any other exception.

    The texts of :class:`~puma_async.errors.PumaError` are written never to carry a secret
    value; any other exception (a bug, a library's error) may quote the data it failed on, so
    only its type leaves the process in an ``Abort`` or a log line.
    """
    if isinstance(exc, PumaError):
        return f"{type(exc).__name__}: {exc}"
    if not str(exc):
        return type(exc).__name__
    return f"{type(exc).__name__} (its text is withheld: it may quote secret data)"


def _raised_at(exc: BaseException) -> str | None:
    """``file:line in function`` of the innermost frame of ``exc``'s traceback (code only)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return None
    last = frames[-1]
    return f"{PurePath(last.filename).name}:{last.lineno} in {last.name}"


def _is_plain(value: Any, depth: int = 0) -> bool:
    if isinstance(value, _PLAIN):
        return True
    if depth >= 4:
        return False
    if isinstance(value, (list, tuple, set, frozenset)):
        return all(_is_plain(item, depth + 1) for item in value)
    if isinstance(value, dict):
        return all(_is_plain(k, depth + 1) and _is_plain(v, depth + 1) for k, v in value.items())
    return False


def _exception_of(exc_info: Any) -> BaseException | None:
    if isinstance(exc_info, BaseException):
        return exc_info
    if isinstance(exc_info, tuple) and len(exc_info) == 3:
        return exc_info[1] if isinstance(exc_info[1], BaseException) else None
    if exc_info is True:
        return sys.exc_info()[1]
    return None


def redact_secrets(
    logger: Any, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: keep only what cannot carry a secret (see the module docstring)."""
    if "exc_info" in event:
        exc = _exception_of(event.pop("exc_info"))
        if exc is not None:
            event.setdefault("error", exc)
    for name, value in list(event.items()):
        if name == "event":
            if not isinstance(value, str):
                event[name] = f"<{type(value).__name__} event redacted>"
        elif SECRET_NAMES.search(name):
            event[name] = REDACTED
        elif isinstance(value, BaseException):
            event[name] = public_error_text(value)
            where = _raised_at(value)
            if where is not None:
                event[f"{name}_at"] = where
        elif not _is_plain(value):
            event[name] = REDACTED
    return event


class _StderrLogger:
    """Writes each rendered line to the current ``sys.stderr`` (so redirections apply)."""

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    log = debug = info = warn = warning = error = err = critical = exception = fatal = msg


def _stderr_logger(*args: Any) -> _StderrLogger:
    return _StderrLogger()


def configure() -> None:
    """Install the redacting processor in front of structlog's rendering, to stderr."""
    structlog.configure(
        processors=[
            redact_secrets,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=True,
    )


configure()
