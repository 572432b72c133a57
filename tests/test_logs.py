"""Logs never carry secrets: the redacting processor, and a failing run's log lines."""

from __future__ import annotations

import numpy as np
import pytest
import structlog

from puma_async.logs import REDACTED, redact_secrets
from puma_async.runner import run_local
from puma_async.runtime import Context


def test_secret_fields_bytes_and_arrays_are_redacted() -> None:
    event = {
        "event": "something", "role": "P0", "key": b"0123456789abcdef",
        "share": np.arange(3), "entropy": "ab" * 16, "note": b"raw", "count": 3,
        "prompt_text": "my secret prompt",
    }
    out = redact_secrets(None, "warning", dict(event))
    assert out["event"] == "something" and out["role"] == "P0" and out["count"] == 3
    for name in ("key", "share", "entropy", "note", "prompt_text"):
        assert out[name] == REDACTED


def test_runtime_logging_goes_through_the_redactor(capsys: pytest.CaptureFixture[str]) -> None:
    secret = np.uint64(0xDEADBEEFCAFE)

    async def program(ctx: Context) -> None:
        if ctx.role == 0:
            structlog.get_logger("test").warning("oops", weights=np.array([secret]))
            raise ValueError("boom")
        await ctx.recv(0)

    with pytest.raises(Exception, match="boom"):
        run_local({0: program, 1: program, 2: program})
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "party failed" in text and REDACTED in text
    assert str(int(secret)) not in text
