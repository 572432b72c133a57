"""Structured logging that never writes a secret.

Every log record passes :func:`redact_secrets`: values under names that hold secrets (keys,
seeds, shares, entropy, weights, tokens, logits, prompts) and every value that is raw bytes
or a numpy array are replaced by ``"<redacted>"``, whatever the caller passed. The library
modules log through ``structlog.get_logger``; importing this module installs the
configuration once (the CLIs and the runtime import it).
"""

from __future__ import annotations

import re
import sys
from collections.abc import MutableMapping
from typing import Any

import numpy as np
import structlog

REDACTED = "<redacted>"
SECRET_NAMES = re.compile(
    r"key|seed|share|entropy|secret|weight|token|logit|prompt|frame|payload", re.IGNORECASE
)


def redact_secrets(
    logger: Any, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: drop secret-named fields, raw bytes and arrays from a record."""
    for name, value in list(event.items()):
        if name == "event":
            continue
        if SECRET_NAMES.search(name) or isinstance(value, (bytes, bytearray, memoryview,
                                                           np.ndarray, np.generic)):
            event[name] = REDACTED
    return event


def configure() -> None:
    """Install the redacting processor in front of structlog's default rendering, writing to
    stderr (stdout carries results only): the stderr of the moment of each record (log
    records are rare, so loggers are not cached)."""
    structlog.configure(
        processors=[
            redact_secrets,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        logger_factory=lambda *args: structlog.PrintLogger(sys.stderr),
        cache_logger_on_first_use=False,
    )


configure()
