"""Secure generation with the real SmolLM2-135M-Instruct equals plaintext greedy generation.

One session per tradeoff (the weights are shared once in each: balanced, the default, whose
prompt passes take SiLU by Horner's split and the candidates without TP1 tuples;
fewer-bytes, whose protocols differ everywhere: the attention norm first, SiLU by Horner's
split, the norms' candidates truncated without TP1 tuples; fewer-rounds: the MLP norm's rho
after the gate/up product, on the raw residual's product) with three prompts and a few
tokens each. Bounds,
secure logits vs the float64 reference on the same prefix, at every position: issue 13's
goals, max |logit error| <= 0.05 and KL(plaintext || secure) <= 1e-4 (measured 0.0030 and
7.8e-8 on logits up to 25; " Paris" 17.372 vs 17.371).
"""

from __future__ import annotations

import numpy as np
import pytest

from puma_async.accuracy import token_metrics
from puma_async.errors import ModelFileError
from puma_async.model import KVCache, Tokenizer, forward, greedy_generate, load_gguf
from puma_async.session import GenerationOptions, in_process_settings, run_session

pytestmark = pytest.mark.slow

MAX_LOGIT_ERROR = 0.05
MAX_KL = 1e-4
PROMPTS = ["The capital of France is", "The capital of Germany is", "One, two, three,"]
NEW_TOKENS = 2
PARIS = 7042


@pytest.mark.parametrize("tradeoff", ["balanced", "fewer-bytes", "fewer-rounds"])
def test_secure_greedy_generation_equals_plaintext(tradeoff: str) -> None:
    try:
        weights = load_gguf()
        tokenizer = Tokenizer.from_gguf()
    except ModelFileError as exc:
        pytest.skip(f"real model not installed: {exc}")
    w64 = weights.astype(np.float64)
    prompts = [tokenizer.encode(text) for text in PROMPTS]
    assert prompts[0] == [504, 3575, 282, 4649, 314]
    options = GenerationOptions(eos_id=tokenizer.eos_id)
    settings = in_process_settings(weights.config, NEW_TOKENS, tradeoff=tradeoff)
    result = run_session(weights, prompts, options, settings=settings)
    metrics = []
    for text, prompt, secure in zip(PROMPTS, prompts, result.prompts, strict=True):
        plain = greedy_generate(w64, prompt, NEW_TOKENS, tokenizer.eos_id)
        assert secure.tokens == plain, text
        cache = KVCache.empty(weights.config)
        logits = forward(w64, prompt, cache)[-1]
        for record in secure.records:
            metrics.append(token_metrics(logits, record.logits))
            logits = forward(w64, [record.token], cache)[-1]
    assert result.prompts[0].tokens[0] == PARIS
    assert max(m["max_logit_error"] for m in metrics) <= MAX_LOGIT_ERROR, metrics
    assert max(m["kl"] for m in metrics) <= MAX_KL, metrics
    assert all(m["top1_equal"] for m in metrics)
