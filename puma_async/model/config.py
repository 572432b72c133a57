"""Shape and hyper-parameters of a LLaMA-architecture model.

The configuration is public in the secure setting (the architecture is not a secret), so it is a
plain frozen dataclass that every party and the plaintext reference share.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LlamaConfig:
    """Hyper-parameters of a LLaMA decoder (RMSNorm, RoPE, grouped-query attention, SwiGLU).

    ``head_dim`` is the width of one attention head (``hidden // n_heads`` for LLaMA);
    ``n_heads`` must be a multiple of ``n_kv_heads`` (grouped-query attention: query head ``h``
    reads key/value head ``h // (n_heads // n_kv_heads)``). ``bos_id``/``eos_id`` are the
    tokenizer's special ids where the model file gives them.

    ``gate_bounds``: per layer a power of two B_i with |h @ W'_gate| < B_i for every input,
    certified by the model owner from the weights (:mod:`puma_async.model.bounds`; it reveals
    one number per layer). SiLU then compares on a carry chain just long enough for it (less
    the 10 low bits its table's slack lets go); empty (no bounds): full 64-bit chains (less
    those 10). A model file's metadata has none: the owner's export
    computes them.
    """

    n_layers: int
    hidden: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    rope_theta: float = 10000.0
    rms_eps: float = 1e-5
    context_length: int = 2048
    tied_embeddings: bool = True
    bos_id: int | None = None
    eos_id: int | None = None
    gate_bounds: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "gate_bounds", tuple(self.gate_bounds))  # lists from tables
        if self.gate_bounds and (
            len(self.gate_bounds) != self.n_layers
            or not all(type(b) is int and b > 0 and b & (b - 1) == 0 for b in self.gate_bounds)
        ):
            raise ValueError(f"gate_bounds must be one power of two per layer, "
                             f"got {self.gate_bounds!r}")
        for name in ("n_layers", "hidden", "n_heads", "n_kv_heads", "head_dim", "ffn", "vocab",
                     "context_length"):
            if getattr(self, name) <= 0:
                raise ValueError(f"LlamaConfig.{name} must be positive, got {getattr(self, name)}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        if not (self.rope_theta > 0 and self.rms_eps > 0):
            raise ValueError("rope_theta and rms_eps must be positive")

    def gate_bound(self, layer: int) -> int | None:
        """The certified bound on layer ``layer``'s SiLU inputs, None if none is declared."""
        return self.gate_bounds[layer] if self.gate_bounds else None

    @property
    def q_dim(self) -> int:
        """Width of the concatenated query heads (``n_heads * head_dim``)."""
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Width of the concatenated key (or value) heads (``n_kv_heads * head_dim``)."""
        return self.n_kv_heads * self.head_dim

    @property
    def n_rep(self) -> int:
        """Query heads per key/value head (grouped-query attention)."""
        return self.n_heads // self.n_kv_heads


def tiny_config() -> LlamaConfig:
    """A 2-layer model small enough for exhaustive tests of the plaintext and secure paths."""
    return LlamaConfig(
        n_layers=2, hidden=32, n_heads=4, n_kv_heads=2, head_dim=8, ffn=64, vocab=64,
        rope_theta=10000.0, rms_eps=1e-5, context_length=64, tied_embeddings=True,
    )


def llama7b_block_config() -> LlamaConfig:
    """One decoder block of LLaMA-7B's shape (hidden 4096, 32 heads, FFN 11008), for cost runs.

    Only the block matters for cost measurements, so the vocabulary is kept small.
    """
    return LlamaConfig(
        n_layers=1, hidden=4096, n_heads=32, n_kv_heads=32, head_dim=128, ffn=11008, vocab=256,
        rope_theta=10000.0, rms_eps=1e-6, context_length=2048, tied_embeddings=False,
    )
