"""Shared fixtures and the test tiers.

Tiers (markers registered in ``pyproject.toml``):

- fast, the default: ``python -m pytest -m "not slow and not system"``; in-process, virtual
  time where time matters;
- ``system``: OS processes, signals, real TCP/TLS sockets, CLIs in subprocesses, real time.
  A test without the marker that connects or listens on an internet socket or starts a
  process fails at once (:func:`_system_only`), so the fast tier stays fast;
- ``slow``: the real model (SmolLM2, about 8 GB and minutes), the connection flood, and the
  widest in-process sweeps (the privacy statistics over several sessions, reciprocal and rsqrt
  over 2^-18..2^20), which the fast tier samples more sparsely.

``python -m pytest`` runs them all (what CI runs).

Fixtures (stateless, so session-scoped: hypothesis tests may use them too):

- ``spmd(program, roles=PARTIES, **options)``: run one program on every role in one
  ``trio.run`` over the in-memory transport, on virtual time (``MockClock``); the
  :class:`~puma_async.runner.LocalRun`;
- ``evaluate(fn, *ring_inputs, **kwargs)``: the client secret-shares the inputs, the parties
  run ``fn`` in scope ``op``, the client opens the outputs
  (:func:`puma_async.protocols.evaluate.evaluate`);
- ``fxp``: the same on fixed-point encodings of floats (``fxp.run``, ``fxp.quantised``,
  ``fxp.ulp``);
- ``tiny_weights``, ``tiny_session(prompts, **options)``: a session of the tiny model, all
  five roles in this process, on virtual time;
- ``write_gguf(path, weights, **knobs)``: a tiny GGUF file as llama.cpp writes them;
- ``processes``: cluster files and ``puma_async.party`` processes (system tests).

Their helpers live in ``tests/support/``; tests use the fixtures, not those modules.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
import trio.testing
from support.benchmark_scripts import BenchmarkScripts
from support.fixed_point import FixedPointRuns
from support.gguf_files import GgufWriter
from support.processes import Processes

from puma_async import evaluate as evaluation
from puma_async.model import LlamaWeights, random_weights, tiny_config
from puma_async.roles import ALL_ROLES, PARTIES
from puma_async.runner import LocalRun, Program, run_local
from puma_async.session import SessionResult, run_session

_INTERNET = (socket.AF_INET, socket.AF_INET6)


class SystemAccessError(AssertionError):
    """A test outside the ``system`` tier opened a connection or started a process."""


def _refuse(what: str) -> Any:
    def refused(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise SystemAccessError(f"{what} in a test not marked system (@pytest.mark.system)")

    return refused


def _guard_internet(original: Any, what: str) -> Any:
    def guarded(self: socket.socket, *args: Any) -> Any:
        if self.family in _INTERNET:
            raise SystemAccessError(f"{what} in a test not marked system (@pytest.mark.system)")
        return original(self, *args)

    return guarded


@pytest.fixture(autouse=True)
def _system_only(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
                 ) -> Iterator[None]:
    """Outside the ``system`` tier: no TCP connection, no listener, no subprocess."""
    if request.node.get_closest_marker("system") is None:
        for name in ("connect", "connect_ex", "listen"):
            monkeypatch.setattr(socket.socket, name,
                                _guard_internet(getattr(socket.socket, name), f"socket.{name}"))
        monkeypatch.setattr(subprocess.Popen, "__init__", _refuse("starting a process"))
    yield


def virtual_clock() -> trio.testing.MockClock:
    """Virtual time that jumps to the next timer as soon as every task waits."""
    return trio.testing.MockClock(autojump_threshold=0)


@pytest.fixture(scope="session")
def spmd() -> Callable[..., LocalRun]:
    """Run one program on every role of ``roles`` (the computing parties by default) on
    virtual time; ``options`` go to :func:`~puma_async.runner.run_local` (a ``clock`` of
    your own too)."""

    def run(program: Program, *, roles: Sequence[int] = PARTIES, **options: Any) -> LocalRun:
        options.setdefault("clock", virtual_clock())
        return run_local(dict.fromkeys(roles, program), **options)

    return run


@pytest.fixture(scope="session")
def evaluate() -> Callable[..., evaluation.Evaluation]:
    """Secret-share ring inputs, run a protocol, open its outputs to the client."""
    return evaluation.evaluate


@pytest.fixture(scope="session")
def fxp(evaluate: Callable[..., evaluation.Evaluation]) -> FixedPointRuns:
    """:func:`evaluate` on 18-bit fixed-point encodings of floats."""
    return FixedPointRuns(evaluate)


TINY_ENTROPY = {role: bytes([role]) * 32 for role in ALL_ROLES}
"""Fixed keys for the tiny sessions: the same session gives the same logits."""


@pytest.fixture(scope="session")
def tiny_weights() -> LlamaWeights:
    """The tiny model (public random weights, seed 3)."""
    return random_weights(tiny_config(), seed=3)


@pytest.fixture(scope="session")
def tiny_session(tiny_weights: LlamaWeights) -> Callable[..., SessionResult]:
    """Run a tiny-model session (default: prompt [1, 2, 3], two new tokens, the weights of
    ``tiny_weights``, fixed entropy) on virtual time; options go to
    :func:`~puma_async.session.run_session`."""

    def run(prompts: Sequence[Sequence[int]] = ((1, 2, 3),), **options: Any) -> SessionResult:
        options.setdefault("max_new_tokens", 2)
        options.setdefault("entropy", TINY_ENTROPY)
        options.setdefault("clock", virtual_clock())
        weights = options.pop("weights", tiny_weights)
        return run_session(weights, [list(p) for p in prompts], **options)

    return run


@pytest.fixture(scope="session")
def write_gguf() -> GgufWriter:
    return GgufWriter()


@pytest.fixture(scope="session")
def processes() -> Processes:
    return Processes()


@pytest.fixture(scope="session")
def benchmark_script() -> BenchmarkScripts:
    """Run a script of ``benchmarks/`` as a process: its JSON output and stdout."""
    return BenchmarkScripts()
