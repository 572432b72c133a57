"""Tiny GGUF files written as llama.cpp would (the ``write_gguf`` fixture): no binary test
data in the repository."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from puma_async.model import LlamaWeights

Q8_0 = gguf.GGMLQuantizationType.Q8_0
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# A toy byte-level BPE vocabulary of exactly tiny_config().vocab (64) tokens.
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["Ġ", "Ċ", "!", "1", "2"]
MERGES = ["h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "Ġwor l", "Ġworl d", "Ġ t"]
TOKENS = SPECIAL + LETTERS + [m.replace(" ", "") for m in MERGES]
TOKENS += [f"<unused{i}>" for i in range(64 - len(TOKENS))]
TYPES = [3] * len(SPECIAL) + [1] * (len(LETTERS) + len(MERGES))
TYPES += [4] * (64 - len(TYPES))


def llamacpp_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation of q/k rows (the inverse of the loader's)."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(
        w.shape
    )


def write_gguf(
    path: Path, weights: LlamaWeights, *, arch: str = "llama", drop: frozenset[str] = frozenset(),
    substitute: dict[str, np.ndarray] | None = None, skip_keys: frozenset[str] = frozenset(),
    eos_id: int = 2,
) -> Path:
    """Write ``weights`` as llama.cpp would: (out, in) rows, permuted q/k, Q8_0 embedding.

    ``drop`` leaves tensors out, ``substitute`` replaces raw tensors, ``skip_keys`` leaves
    architecture metadata keys out: the knobs for the malformed-file tests.
    """
    c = weights.config
    writer = gguf.GGUFWriter(str(path), arch=arch)
    meta = {
        "block_count": writer.add_block_count, "context_length": writer.add_context_length,
        "embedding_length": writer.add_embedding_length,
        "feed_forward_length": writer.add_feed_forward_length,
        "head_count": writer.add_head_count, "head_count_kv": writer.add_head_count_kv,
    }
    values = {
        "block_count": c.n_layers, "context_length": c.context_length, "embedding_length": c.hidden,
        "feed_forward_length": c.ffn, "head_count": c.n_heads, "head_count_kv": c.n_kv_heads,
    }
    for name, add in meta.items():
        if name not in skip_keys:
            add(values[name])
    writer.add_rope_freq_base(c.rope_theta)
    writer.add_layer_norm_rms_eps(c.rms_eps)
    writer.add_rope_dimension_count(c.head_dim)
    writer.add_vocab_size(c.vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(TOKENS)
    writer.add_token_types(TYPES)
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(eos_id)
    writer.add_add_bos_token(False)
    writer.add_chat_template(SMOLLM2_TEMPLATE)

    tensors: dict[str, np.ndarray] = {
        "token_embd.weight": gguf.quants.quantize(weights.embed.astype(np.float32), Q8_0),
        "output_norm.weight": weights.final_norm,
    }
    if not c.tied_embeddings:
        tensors["output.weight"] = weights.lm_head.T
    for i, layer in enumerate(weights.layers):
        p = f"blk.{i}."
        tensors |= {
            p + "attn_norm.weight": layer.attn_norm,
            p + "attn_q.weight": llamacpp_permute(layer.wq.T, c.n_heads),
            p + "attn_k.weight": llamacpp_permute(layer.wk.T, c.n_kv_heads),
            p + "attn_v.weight": layer.wv.T, p + "attn_output.weight": layer.wo.T,
            p + "ffn_norm.weight": layer.ffn_norm, p + "ffn_gate.weight": layer.w_gate.T,
            p + "ffn_up.weight": layer.w_up.T, p + "ffn_down.weight": layer.w_down.T,
        }
    tensors |= substitute or {}
    for name, array in tensors.items():
        if name in drop:
            continue
        if array.dtype == np.uint8:
            writer.add_tensor(name, array, raw_dtype=Q8_0)
        else:
            writer.add_tensor(name, np.ascontiguousarray(array, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


class GgufWriter:
    """:func:`write_gguf` as a fixture; ``tokens``: the toy vocabulary it writes."""

    tokens = TOKENS

    def __call__(self, path: Path, weights: LlamaWeights, **knobs: object) -> Path:
        return write_gguf(path, weights, **knobs)  # type: ignore[arg-type]
