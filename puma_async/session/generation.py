"""The client's side of generation: decoding options, prompt checks, token choice, results.

All of it stays in the client process: the parties see only how many positions each pass
has. Length hiding: by default every prompt runs ``max_new_tokens`` passes; tokens after the
first EOS are still generated (and fed back, as any token) but marked ``discarded`` and left
out of the result's text, so the parties cannot tell where the text ended.
``stop_at_eos`` ends a prompt at its EOS instead, which reveals the output length.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from puma_async.errors import ContextLengthError, SettingsError
from puma_async.model.config import LlamaConfig


@dataclasses.dataclass(frozen=True)
class GenerationOptions:
    """The client's decoding options: greedy when ``temperature`` is 0, else sampled from
    its own generator seeded with ``seed``; ``eos_id`` ends the text; ``stop_at_eos`` ends
    the passes there too (revealing the length; see the module docstring)."""

    temperature: float = 0.0
    seed: int | None = None
    eos_id: int | None = None
    stop_at_eos: bool = False

    def __post_init__(self) -> None:
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise SettingsError(f"temperature must be a finite number >= 0, "
                                f"got {self.temperature}")
        if self.seed is not None and self.seed < 0:
            raise SettingsError(f"seed must be >= 0, got {self.seed}")


@dataclasses.dataclass(frozen=True)
class Progress:
    """A progress event: ``kind`` is 'setup' (done), 'token' (one pass: ``step`` 0 is the
    prompt's) or 'prefill' (a pass of a long prompt's ``positions`` first positions from
    position ``step``: ``programs``' Prefill, no token; at the client, ``seconds`` is the
    time to send it, since nothing comes back from such a pass: the prompt's first token's
    ``seconds`` count from the first)."""

    kind: str
    seconds: float
    prompt: int = -1
    step: int = -1
    token: int = -1
    discarded: bool = False
    positions: int = 0

    @property
    def span(self) -> str:
        """A prefill pass's positions, as its progress lines name them."""
        if self.positions == 1:
            return f"position {self.step}"
        return f"positions {self.step}-{self.step + self.positions - 1}"


ProgressFn = Callable[[Progress], None]


@dataclasses.dataclass(frozen=True)
class TokenRecord:
    """One pass as the client saw it: the token it chose, the wall time, the logits it chose
    from (vocab,) (the pass's last position), whether the token comes after the EOS
    (``discarded``: generated only to hide the length), and ``all_logits`` (n, vocab), the
    logits of each of the pass's n new positions (``logits`` is its last row) if the session
    reveals them (``SessionSettings.reveal_logits`` "all"), else None."""

    token: int
    seconds: float
    logits: npt.NDArray[np.float64]
    discarded: bool = False
    all_logits: npt.NDArray[np.float64] | None = None


@dataclasses.dataclass(frozen=True)
class PromptResult:
    """A prompt's token ids and its passes (record 0 follows the prompt pass)."""

    prompt_ids: tuple[int, ...]
    records: tuple[TokenRecord, ...]

    @property
    def tokens(self) -> list[int]:
        """The generated tokens, up to and including the first EOS."""
        return [r.token for r in self.records if not r.discarded]


def check_prompts(config: LlamaConfig, context: int, max_new_tokens: int,
                  prompts: Sequence[Sequence[int]]) -> list[list[int]]:
    """The prompts as lists of ints, or ContextLengthError / ValueError (nothing is sent).

    A prompt of n tokens needs n + max_new_tokens - 1 positions (the last token is not fed
    back) within the session's ``context``.
    """
    if not prompts:
        raise ValueError("no prompt given")
    checked = []
    for i, prompt in enumerate(prompts):
        ids = [int(t) for t in prompt]
        if not ids:
            raise ValueError(f"prompt {i} is empty")
        bad = [t for t in ids if not 0 <= t < config.vocab]
        if bad:
            raise ValueError(f"prompt {i}: token ids {bad} are not in [0, {config.vocab})")
        if len(ids) + max_new_tokens - 1 > context:
            raise ContextLengthError(
                f"prompt {i}: {len(ids)} tokens + {max_new_tokens} new tokens exceed the "
                f"context length {context}"
            )
        checked.append(ids)
    return checked


def one_hot(ids: Sequence[int], vocab: int) -> npt.NDArray[np.uint64]:
    """Rows e_{id} (n, vocab) as ring integers (scale 1: the embedding needs no truncation)."""
    rows = np.zeros((len(ids), vocab), np.uint64)
    rows[np.arange(len(ids)), ids] = 1
    return rows


def pick_token(
    logits: npt.NDArray[np.float64], temperature: float, rng: np.random.Generator
) -> int:
    """Argmax (first on ties) when temperature is 0, else a sample of softmax(logits / T)."""
    if temperature == 0:
        return int(np.argmax(logits))
    z = (logits - logits.max()) / temperature
    p = np.exp(z)
    return int(rng.choice(len(p), p=p / p.sum()))


__all__ = [
    "GenerationOptions", "Progress", "ProgressFn", "PromptResult", "TokenRecord",
    "check_prompts", "one_hot", "pick_token",
]
