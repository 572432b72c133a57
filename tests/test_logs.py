"""Logs never carry secrets: the redacting processor, log calls in the source, a failing run."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import structlog

from puma_async.context import Context
from puma_async.errors import FixedPointRangeError
from puma_async.logs import REDACTED, public_error_text, redact_secrets
from puma_async.protocols.shares import AShare
from puma_async.runner import run_local

ROOT = Path(__file__).resolve().parents[1]
LOG_METHODS = {"debug", "info", "warning", "warn", "error", "err", "exception", "critical",
               "fatal", "msg", "log"}


def test_secret_fields_bytes_and_arrays_are_redacted() -> None:
    event = {
        "event": "something", "role": "P0", "key": b"0123456789abcdef",
        "share": np.arange(3), "entropy": "ab" * 16, "note": b"raw", "count": 3,
        "prompt_text": "my secret prompt", "value": 1.5, "context_length": 2048,
    }
    out = redact_secrets(None, "warning", dict(event))
    assert out["event"] == "something" and out["role"] == "P0" and out["count"] == 3
    assert out["context_length"] == 2048
    for name in ("key", "share", "entropy", "note", "prompt_text", "value"):
        assert out[name] == REDACTED


def test_only_plain_values_pass() -> None:
    share = AShare(np.arange(2, dtype=np.uint64), np.arange(2, dtype=np.uint64))
    event = {
        "event": "x", "peers": [0, 1, 2], "sizes": {"P0": 3, "P1": (4, 5.5)}, "path": Path("a"),
        "obj": share, "scalar": np.uint64(7), "nested": [1, [b"raw"]], "mapping": {1: share},
        "seconds": 1.25, "flag": True, "nothing": None,
    }
    out = redact_secrets(None, "info", dict(event))
    for name in ("peers", "sizes", "path", "seconds", "flag", "nothing"):
        assert out[name] == event[name]
    for name in ("obj", "scalar", "nested", "mapping"):
        assert out[name] == REDACTED


def test_exceptions_show_their_text_only_if_ours() -> None:
    secret = "0xdeadbeef 3.14159"
    assert public_error_text(FixedPointRangeError("1 of 2 values")) == (
        "FixedPointRangeError: 1 of 2 values")
    assert secret not in public_error_text(IndexError(secret))
    assert public_error_text(IndexError(secret)).startswith("IndexError")
    assert public_error_text(KeyboardInterrupt()) == "KeyboardInterrupt"  # nothing withheld
    try:
        raise KeyError(secret)
    except KeyError as exc:
        out = redact_secrets(None, "error", {"event": "failed", "exc_info": exc})
    assert "exc_info" not in out
    assert out["error"].startswith("KeyError") and secret not in out["error"]
    assert out["error_at"].startswith("test_logs.py:")
    out = redact_secrets(None, "info", {"event": np.float64(3.25)})
    assert "3.25" not in out["event"]


def test_lines_go_to_stderr_without_tracebacks(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        raise ValueError("the secret 12345")
    except ValueError:
        structlog.get_logger("test").exception("it failed", role="P1")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "it failed" in captured.err and "role=P1" in captured.err
    assert "12345" not in captured.err and "Traceback" not in captured.err


def _logger_names(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
                and isinstance(node.value.func, ast.Attribute)
                and node.value.func.attr == "get_logger"):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def test_log_calls_take_a_constant_event_and_no_formatted_strings() -> None:
    """What the runtime redactor cannot see: a value formatted into a string. So every log
    call in the package passes a constant event and plain fields, never an f-string,
    %-formatting or str.format."""
    checked = 0
    for source in sorted(p for d in ("puma_async", "protocols", "transports")
                         for p in (ROOT / d).rglob("*.py")):
        tree = ast.parse(source.read_text(), str(source))
        loggers = _logger_names(tree)
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in LOG_METHODS and isinstance(node.func.value, ast.Name)
                    and node.func.value.id in loggers):
                continue
            where = f"{source.relative_to(ROOT)}:{node.lineno}"
            assert node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str), f"{where}: event is not a constant"
            for arg in [*node.args, *(k.value for k in node.keywords)]:
                for inner in ast.walk(arg):
                    formatted = isinstance(inner, ast.JoinedStr) or (
                        isinstance(inner, ast.BinOp) and isinstance(inner.op, ast.Mod)) or (
                        isinstance(inner, ast.Call) and isinstance(inner.func, ast.Attribute)
                        and inner.func.attr == "format")
                    assert not formatted, f"{where}: a log call formats a string"
            checked += 1
    assert checked >= 2  # the runtime's and the TCP transport's


def test_runtime_logging_goes_through_the_redactor(capsys: pytest.CaptureFixture[str]) -> None:
    secret = np.uint64(0xDEADBEEFCAFE)

    async def program(ctx: Context) -> None:
        if ctx.role == 0:
            structlog.get_logger("test").warning("oops", weights=np.array([secret]))
            raise ValueError(f"boom {int(secret)}")
        await ctx.recv(0)

    with pytest.raises(Exception, match="boom"):  # the local exception keeps its text
        run_local({0: program, 1: program, 2: program})
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "party failed" in text and REDACTED in text
    assert "ValueError (its text is withheld" in text  # in P0's line and in P1's, P2's aborts
    assert str(int(secret)) not in text
