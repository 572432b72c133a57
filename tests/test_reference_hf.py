"""The numpy reference on the real SmolLM2-135M-Instruct GGUF, alone and against Hugging Face
transformers loading the same file (needs torch, transformers and accelerate; skipped without)."""

from __future__ import annotations

import numpy as np
import pytest

from puma_async.model import (
    KVCache,
    LlamaWeights,
    Tokenizer,
    default_model_path,
    forward,
    greedy_generate,
    load_gguf,
)

pytestmark = pytest.mark.slow

PROMPT = "The capital of France is"
PROMPT_IDS = [504, 3575, 282, 4649, 314]
PARIS, THE = 7042, 260  # " Paris", " the": the top two next tokens
# Figures from transformers 5.24 / torch 2.13 (float32) on the same file.
PARIS_LOGIT, THE_LOGIT = 17.371, 14.889
GREEDY = [7042, 30, 198, 198, 504, 2988, 314, 42]  # " Paris.\n\nThe answer is:"


@pytest.fixture(scope="module")
def weights() -> LlamaWeights:
    return load_gguf()


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_gguf()


@pytest.fixture(scope="module")
def logits(weights: LlamaWeights) -> np.ndarray:
    return forward(weights, PROMPT_IDS)


def test_prompt_tokens(tokenizer: Tokenizer) -> None:
    assert tokenizer.encode(PROMPT) == PROMPT_IDS
    assert tokenizer.decode(PROMPT_IDS) == PROMPT
    assert tokenizer.decode([PARIS]) == " Paris" and tokenizer.decode([THE]) == " the"


def test_next_token_logits(logits: np.ndarray) -> None:
    assert logits.shape == (5, 49152)
    top2 = np.argsort(-logits[-1])[:2]
    assert top2.tolist() == [PARIS, THE]
    assert logits[-1, PARIS] == pytest.approx(PARIS_LOGIT, abs=1e-3)
    assert logits[-1, THE] == pytest.approx(THE_LOGIT, abs=1e-3)


def test_greedy_and_cache(weights: LlamaWeights, logits: np.ndarray, tokenizer: Tokenizer) -> None:
    new = greedy_generate(weights, PROMPT_IDS, len(GREEDY), eos_id=tokenizer.eos_id)
    assert new == GREEDY
    assert tokenizer.decode(new) == " Paris.\n\nThe answer is:"
    cache = KVCache.empty(weights.config)
    first = forward(weights, PROMPT_IDS[:3], cache)
    rest = forward(weights, PROMPT_IDS[3:], cache)
    np.testing.assert_allclose(np.concatenate([first, rest]), logits, rtol=0, atol=1e-9)


def test_matches_transformers(logits: np.ndarray) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    path = default_model_path()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    )
    model.eval()
    with torch.no_grad():
        hf = model(torch.tensor([PROMPT_IDS])).logits[0].double().numpy()
    assert np.abs(logits - hf).max() <= 1e-3
    assert hf[-1, PARIS] == pytest.approx(PARIS_LOGIT, abs=1e-3)
    assert hf[-1, THE] == pytest.approx(THE_LOGIT, abs=1e-3)
