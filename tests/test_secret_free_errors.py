"""No secret value in any error, ``Abort`` reason or log line, even when a secret is bad.

A tiny-model session whose model owner holds a weight that cannot be encoded (1.2345...e30,
NaN, -inf) fails at set-up. Every text it produces is read: each log line (stderr and stdout),
the text and ``repr`` of every role's error and of their causes, and the reason and step of
every ``Abort`` any role sent or received (from recorded traces). None may contain the bad
value or another secret in a form we can check:

* the weights: ``repr`` and 6 significant digits of each, their fixed-point encodings as
  signed and unsigned integers (6 digits or more: shorter numbers occur as positions and
  counts) and in hex;
* the shares on the wire (every uint64 element any role sent), as integers and in hex;
* the keys: every seed sent, and each role's entropy, in hex, base64 and ``repr``;
* the prompt (its token list).

Numbers are compared as whole tokens, after the log lines' timestamps are removed, so that a
number that merely contains the digits of a secret does not count.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import math
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from puma_async.codec import Abort, Arrays, Seed, decode_frame
from puma_async.errors import FixedPointRangeError, RunFailedError
from puma_async.model import random_weights, tiny_config
from puma_async.protocols.fixedpoint import FixedPoint
from puma_async.protocols.llama import weight_tensors
from puma_async.roles import ALL_ROLES, MODEL_OWNER, role_name
from puma_async.session import run_session
from puma_async.trace.format import read_trace
from puma_async.trace.recorder import RecordingTransport
from puma_async.transports.base import Transport

SESSION = b"secret-free-run!"
PROMPT = [17, 42, 5, 33]
BAD_AT = 17  # in final_norm, the last tensor the owner shares: all others are on the wire
ENTROPY = {role: hashlib.sha256(f"secret-free/{role}".encode()).digest() for role in ALL_ROLES}
_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z?")
_NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")
_HEX = re.compile(r"(?:0x)?([0-9a-fA-F]{8,})")


@dataclasses.dataclass
class Secrets:
    """The textual forms of every secret of the run (see the module docstring)."""

    numbers: set[str] = dataclasses.field(default_factory=set)
    hexes: set[str] = dataclasses.field(default_factory=set)
    strings: set[str] = dataclasses.field(default_factory=set)
    words: list[re.Pattern[str]] = dataclasses.field(default_factory=list)

    def add_floats(self, values: np.ndarray) -> None:
        for value in values.ravel().tolist():
            self.numbers.update((repr(value), f"{value:.6g}"))

    def add_ring(self, values: np.ndarray) -> None:
        unsigned = values.astype(np.uint64).ravel()
        for u, s in zip(unsigned.tolist(), unsigned.view(np.int64).tolist(), strict=True):
            self.numbers.update(str(v) for v in (u, s) if abs(v) >= 100_000)
            if u >= 1 << 32:
                self.hexes.add(f"{u:x}")

    def add_bytes(self, data: bytes) -> None:
        self.strings.update((data.hex(), data.hex().upper(), base64.b64encode(data).decode(),
                             repr(data)[2:-1]))

    def found_in(self, text: str) -> list[str]:
        """The secrets ``text`` shows (empty if none)."""
        text = _TIMESTAMP.sub(" ", text)
        found = [n for n in _NUMBER.findall(text) if n.lstrip("+") in self.numbers]
        found += [h for h in _HEX.findall(text) if h.lower().lstrip("0") in self.hexes]
        found += [s for s in self.strings if s in text]
        found += [w.pattern for w in self.words if w.search(text)]
        return found


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, RunFailedError):
            todo.extend(current.errors.values())
        todo.extend(e for e in (current.__cause__, current.__context__) if e is not None)


@pytest.mark.parametrize("bad", [1.2345678901234567e30, math.nan, -math.inf],
                         ids=["huge", "nan", "-inf"])
def test_a_bad_weight_leaks_nothing(bad: float, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    weights = random_weights(tiny_config(), seed=7)
    final_norm = weights.final_norm.copy()
    final_norm[BAD_AT] = bad
    weights = dataclasses.replace(weights, final_norm=final_norm)

    recorders: list[RecordingTransport] = []

    def record(transport: Transport) -> Transport:
        path = tmp_path / f"{role_name(transport.role)}.trace"
        recorders.append(RecordingTransport(transport, path, {}, session=SESSION))
        return recorders[-1]

    capsys.readouterr()
    with pytest.raises(RunFailedError) as info:
        run_session(weights, [PROMPT], max_new_tokens=1, session=SESSION,
                    entropy=ENTROPY, wrap_transport=record)
    captured = capsys.readouterr()
    for recorder in recorders:  # a failed run leaves the traces to their owner to finish
        recorder.close()

    owner_error = info.value.errors[MODEL_OWNER]
    assert isinstance(owner_error, FixedPointRangeError)
    assert str(owner_error).endswith(f"the first at position {BAD_AT}")
    texts = [("log", captured.out + captured.err)]
    for exc in _chain(info.value):
        texts += [(f"{type(exc).__name__} text", str(exc)), (type(exc).__name__, repr(exc))]

    secrets = Secrets()
    fx = FixedPoint()
    for tensor in weight_tensors(weights):
        secrets.add_floats(tensor)
        finite = tensor[np.isfinite(tensor) & (np.abs(tensor) < 1e12)]
        secrets.add_ring(fx.encode(finite))
    secrets.numbers.update((f"{bad:e}", f"{bad:g}", f"{bad:.17g}"))
    if math.isfinite(bad):
        secrets.numbers.update(str(v) for v in (int(bad * fx.scale), int(bad)))
        secrets.hexes.add(f"{int(bad * fx.scale):x}")
    else:
        secrets.words.append(re.compile(r"\b(nan|inf|infinity)\b", re.IGNORECASE))
    secrets.strings.update((str(PROMPT), ", ".join(map(str, PROMPT))))
    for entropy in ENTROPY.values():
        secrets.add_bytes(entropy)

    aborts = 0
    for role in ALL_ROLES:
        _header, records = read_trace(tmp_path / f"{role_name(role)}.trace")
        for record in records:
            if record.error is not None:
                texts.append((f"{role_name(role)} trace error", record.error))
            if record.frame is None:
                continue
            for env in decode_frame(record.frame):
                message = env.message
                if isinstance(message, Abort):
                    aborts += 1
                    texts.append((f"{role_name(role)} {record.direction} Abort",
                                  f"{message.reason} at {message.step}"))
                elif isinstance(message, Seed):
                    secrets.add_bytes(message.key)
                elif isinstance(message, Arrays) and record.direction == "send":
                    for array in message.arrays:
                        if array.dtype == np.uint64:
                            secrets.add_ring(array)
    assert aborts >= 2 * (len(ALL_ROLES) - 1)  # the owner's, sent and received, at least
    assert len(secrets.numbers) > 10_000 and secrets.hexes and secrets.strings

    leaks = [(where, found) for where, text in texts if (found := secrets.found_in(text))]
    assert not leaks, f"secret values in error, abort or log texts: {leaks}"

    # The checks would have seen the value the old error message quoted, and a share.
    assert secrets.found_in(f"value {bad!r} at position {BAD_AT} is out of range")
    share = next(iter(secrets.hexes))
    assert secrets.found_in(f"elements differ: {int(share, 16)} vs recorded 0")
