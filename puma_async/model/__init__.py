"""LLaMA-architecture models in plaintext: configuration, weights, GGUF loading, tokenizer and
the float64 numpy reference forward pass that the secure model is measured against."""

from puma_async.model.config import LlamaConfig, llama7b_block_config, tiny_config
from puma_async.model.gguf_loader import default_model_path, load_gguf
from puma_async.model.reference import KVCache, forward, greedy_generate
from puma_async.model.rope import apply_rope, rope_tables
from puma_async.model.tokenizer import TinyTokenizer, Tokenizer
from puma_async.model.weights import LayerWeights, LlamaWeights, random_weights

__all__ = [
    "KVCache",
    "LayerWeights",
    "LlamaConfig",
    "LlamaWeights",
    "TinyTokenizer",
    "Tokenizer",
    "apply_rope",
    "default_model_path",
    "forward",
    "greedy_generate",
    "llama7b_block_config",
    "load_gguf",
    "random_weights",
    "rope_tables",
    "tiny_config",
]
