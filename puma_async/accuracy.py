"""Accuracy of the secure pass against the float64 reference: next-token metrics, perplexity
and the error profile (max and RMS error at every probe point of every layer).

The error profile compares the secure pass's intermediate values with the reference's on
the *same tokens*. The secure values come from probes (``protocols.llama``'s ``LayerProbe``):
with every role in one process, :class:`ShareCollector` receives each party's share at every
probe point and sums the three parties' first components, x = x_0 + x_1 + x_2, with no
protocol message added (at ``logits`` their 3-out-of-3 shares at 2f bits, opened as the
client opens them: each share's bits [f, 64) added mod 2^(64 - f), decoded at f). **Only
for in-process measurements**: the collector holds the secrets (activations, logits) of the
run; a deployed party never installs a probe
(``session.run_session(..., probe=collector)`` does, in-process).

Next-token metrics per position (plaintext p, secure q, both softmax of their logits):
top-1 agreement, max |logit error|, KL(p || q) and whether plaintext's top two logits are
within :data:`NEAR_TIE` (a near tie, where a flip of the greedy token is allowed).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt

from puma_async.model import KVCache, LlamaWeights, forward
from puma_async.protocols.fixedpoint import FixedPoint
from puma_async.protocols.io import add_high_parts, dropped_bits, high_part
from puma_async.protocols.ring import RING_DTYPE, RingArray
from puma_async.protocols.shares import AShare, ProductShare
from puma_async.roles import PARTIES
from puma_async.session import Progress

F64 = npt.NDArray[np.float64]

NEAR_TIE = 0.1
"""Plaintext top-two logits closer than this make a position a near tie."""


# ----------------------------------------------------------------------------- probes


class ShareCollector:
    """A probe for all three parties of one process: reconstructs every probed value.

    Called as ``collector(role, point, share)`` by each party (``protocols.llama.probe``);
    the k-th call of a point by each party is the same value, complete once all three
    parties have given their share. :meth:`take` returns (and forgets) the complete values,
    decoded from fixed point at ``fixed_point``'s f (a :class:`ProductShare` opened from
    its shares' high parts, as the client opens it: ``io.reveal_product_to``), in the order
    they were completed.
    """

    def __init__(self, fixed_point: FixedPoint | None = None):
        self.fixed_point = fixed_point or FixedPoint()
        self._calls: dict[tuple[int, str], int] = {}
        self._partial: dict[tuple[str, int], tuple[RingArray, int]] = {}
        self._complete: list[tuple[str, RingArray]] = []

    def __call__(self, role: int, point: str, share: AShare | ProductShare) -> None:
        k = self._calls.get((role, point), 0)
        self._calls[role, point] = k + 1
        key = (point, k)
        total, count = self._partial.pop(key, (np.zeros(share.shape, RING_DTYPE), 0))
        drop = 0
        if isinstance(share, ProductShare):  # the high parts of z_0, z_1, z_2, as the client
            drop = dropped_bits(share.frac_bits, self.fixed_point)
            total = total + high_part(share.value, drop)
        else:  # x = x_0 + x_1 + x_2 (mod 2^64)
            total = total + share.first
        if count + 1 == len(PARTIES):
            self._complete.append((point, add_high_parts(total, drop) if drop else total))
        else:
            self._partial[key] = (total, count + 1)

    def take(self) -> dict[str, F64]:
        """The values completed since the last call, by point (a point probed twice in that
        time raises ValueError: take after every pass, or :meth:`take_passes`)."""
        passes = self.take_passes()
        if len(passes) > 1:
            raise ValueError(f"probe point {next(iter(passes[1]))!r} completed twice since "
                             f"the last take")
        return passes[0] if passes else {}

    def take_passes(self) -> list[dict[str, F64]]:
        """The values completed since the last call, by pass (a new one wherever a point
        comes again: every point of a pass completes before any of the next, since each
        party gives all its shares of a pass before any of the next), by point."""
        passes: list[dict[str, F64]] = []
        for point, value in self._complete:
            if not passes or point in passes[-1]:
                passes.append({})
            passes[-1][point] = self.fixed_point.decode(value)
        self._complete.clear()
        return passes


# ----------------------------------------------------------------------------- profile


@dataclasses.dataclass
class PointError:
    """Errors at one probe point, pooled over every value compared so far."""

    max_error: float = 0.0
    sum_squares: float = 0.0
    reference_sum_squares: float = 0.0
    reference_max: float = 0.0
    count: int = 0

    def add(self, secure: F64, reference: F64) -> None:
        error = np.abs(secure - reference)
        self.max_error = max(self.max_error, float(error.max(initial=0.0)))
        self.sum_squares += float(np.sum(error * error))
        self.reference_sum_squares += float(np.sum(reference * reference))
        self.reference_max = max(self.reference_max, float(np.abs(reference).max(initial=0.0)))
        self.count += error.size

    def summary(self) -> dict[str, float]:
        """max and RMS error, and the reference's max |value| and RMS (for scale)."""
        n = max(self.count, 1)
        return {
            "max_error": self.max_error,
            "rms_error": math.sqrt(self.sum_squares / n),
            "reference_max": self.reference_max,
            "reference_rms": math.sqrt(self.reference_sum_squares / n),
        }


class ErrorProfile:
    """Max and RMS error of the secure values at every probe point, over many passes."""

    def __init__(self) -> None:
        self.points: dict[str, PointError] = {}

    def add(self, secure: Mapping[str, F64], reference: Mapping[str, F64]) -> None:
        """Compare one pass's probed values; the reference may have more rows (the secure
        ``final_norm`` and ``logits`` cover the last rows only): its last rows are used."""
        for point, value in secure.items():
            ref = np.asarray(reference[point])
            if ref.shape != value.shape:
                ref = ref[ref.shape[0] - value.shape[0] :]
            if ref.shape != value.shape:
                raise ValueError(
                    f"probe point {point!r}: secure shape {value.shape}, reference {ref.shape}"
                )
            self.points.setdefault(point, PointError()).add(value, ref)

    def summary(self) -> dict[str, dict[str, float]]:
        """Per point (in the order first seen): :meth:`PointError.summary`."""
        return {point: e.summary() for point, e in self.points.items()}


def profile_table(summary: Mapping[str, Mapping[str, float]], key: str = "max_error") -> str:
    """A text table of one figure: a row per layer, a column per component (and the head);
    column names are cut to 8 characters (``protocols.llama.PROBE_POINTS`` order)."""
    layers: dict[str, dict[str, float]] = {}
    columns: list[str] = []
    for point, figures in summary.items():
        row, _, column = point.rpartition(".")
        row = row or "head"
        if column not in columns:
            columns.append(column)
        layers.setdefault(row, {})[column] = figures[key]
    lines = [f"{key[:9]:<9}" + "".join(f"{c[:8]:>9}" for c in columns)]
    for row, values in layers.items():
        cells = "".join(f"{values[c]:>9.1e}" if c in values else " " * 9 for c in columns)
        lines.append(f"{row:<9}{cells}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- tokens


def log_softmax(logits: F64) -> F64:
    """log softmax over the last axis (float64, max-subtracted)."""
    z = logits - logits.max(axis=-1, keepdims=True)
    return z - np.log(np.sum(np.exp(z), axis=-1, keepdims=True))


def token_metrics(plain: F64, secure: F64) -> dict[str, Any]:
    """Next-token metrics of one position (module docstring) from two logit vectors."""
    top2 = np.sort(plain)[-2:]
    lp, lq = log_softmax(plain), log_softmax(secure)
    return {
        "top1_equal": int(np.argmax(plain)) == int(np.argmax(secure)),
        "max_logit_error": float(np.abs(plain - secure).max()),
        "kl": float(np.sum(np.exp(lp) * (lp - lq))),
        "near_tie": bool(top2[1] - top2[0] < NEAR_TIE),
        "plain_margin": float(top2[1] - top2[0]),
    }


class SessionComparison:
    """A session's progress callback that compares every secure pass with the reference.

    Use with ``run_session(weights, prompts, options, progress=comparison, probe=collector)``
    (``comparison = SessionComparison(weights64, prompts, collector)``), then
    :meth:`wait`. After each pass it takes the pass's probed values and hands them to one
    worker thread, which runs the reference on the same tokens (the prompt, in its passes,
    then each token the secure run chose), in order, and adds the pass to :attr:`profile`
    and, after a pass that ends with a token, its next-token metrics (:func:`token_metrics`,
    plus the token) to :attr:`positions` (one list per prompt). The float64 forward stays
    off the event loop, so the in-process roles are not stalled while it runs.
    """

    def __init__(self, weights: LlamaWeights, prompts: Sequence[Sequence[int]],
                 collector: ShareCollector):
        self.weights, self.prompts, self.collector = weights, prompts, collector
        self.profile = ErrorProfile()
        self.positions: list[list[dict[str, Any]]] = []
        self._cache = KVCache.empty(weights.config)
        self._last_token = -1
        self._prefills: list[int] = []  # the positions of the prompt's Prefill passes so far
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="reference")
        self._pending: list[Future[None]] = []

    def __call__(self, event: Progress) -> None:
        if event.kind == "prefill":  # its values are taken with the prompt's Run's (the
            self._prefills.append(event.positions)  # client does not wait for its end)
        elif event.kind == "token":
            prefills, self._prefills = self._prefills, []
            self._pending.append(self._worker.submit(self._compare, event, prefills,
                                                     self.collector.take_passes()))

    def wait(self) -> None:
        """Finish every comparison handed over so far (re-raising the first failure);
        :attr:`positions` and :attr:`profile` are complete afterwards."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def _compare(self, event: Progress, prefills: list[int], passes: list[dict[str, F64]]
                 ) -> None:
        if len(passes) != len(prefills) + 1:
            raise ValueError(f"{len(passes)} passes' probed values for {len(prefills) + 1} "
                             f"passes")
        if event.step == 0:
            self._cache = KVCache.empty(self.weights.config)
            self.positions.append([])
            prompt, fed = self.prompts[event.prompt], 0
            for positions, secure in zip(prefills, passes, strict=False):
                self._add(prompt[fed : fed + positions], secure)
                fed += positions
            tokens = list(prompt[fed:])
        else:
            tokens = [self._last_token]
        reference = self._add(tokens, passes[-1])
        metrics = token_metrics(reference["logits"][-1], passes[-1]["logits"][0])
        self.positions[-1].append({"token": event.token, **metrics})
        self._last_token = event.token

    def _add(self, tokens: Sequence[int], secure: dict[str, F64]) -> dict[str, F64]:
        """The reference's values of a pass over ``tokens`` (its cache extended), compared
        with the secure pass's into :attr:`profile`."""
        reference: dict[str, F64] = {}
        forward(self.weights, list(tokens), self._cache, probe=reference.__setitem__)
        self.profile.add(secure, reference)
        return reference


def perplexity(logits: F64, targets: npt.ArrayLike) -> float:
    """exp of the mean negative log-likelihood of ``targets`` (n,) under ``logits`` (n, vocab)."""
    t = np.asarray(targets)
    nll = -log_softmax(np.asarray(logits))[np.arange(t.size), t]
    return float(np.exp(nll.mean()))


__all__ = [
    "NEAR_TIE", "ErrorProfile", "PointError", "SessionComparison", "ShareCollector",
    "log_softmax", "perplexity", "profile_table", "token_metrics",
]
