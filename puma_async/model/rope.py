"""Rotary position embeddings: the architecture's public tables and their rotate-half layout.

Both the float64 reference (:mod:`.reference`) and the secure model
(:mod:`puma_async.protocols.llama`, which encodes the tables in fixed point) take the tables
from here. Layout: the Hugging Face "rotate-half" one, matching the un-permuted weights from
``gguf_loader``: within a head, dimension ``j < head_dim/2`` rotates together with
``j + head_dim/2`` by the angle ``position * rope_theta ** (-2j / head_dim)``. Positions are
public, so applying the rotation to secret shares is a public linear map (no communication
but the truncation of the fixed-point products).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from puma_async.model.config import LlamaConfig

F64 = npt.NDArray[np.float64]


def rope_tables(config: LlamaConfig, positions: npt.ArrayLike) -> tuple[F64, F64]:
    """Public rotary tables ``(cos, sin)``, each of shape (len(positions), head_dim).

    Rotate-half layout: column ``j`` and ``j + head_dim/2`` hold the same angle
    ``position * rope_theta ** (-2j / head_dim)``, so ``apply_rope`` is
    ``x * cos + rotate_half(x) * sin`` — a public linear map that the secure model can apply
    to shares without communication.
    """
    half = config.head_dim // 2
    inv_freq = config.rope_theta ** (-np.arange(half, dtype=np.float64) * 2.0 / config.head_dim)
    angles = np.outer(np.asarray(positions, dtype=np.float64), inv_freq)
    angles = np.concatenate([angles, angles], axis=-1)
    return np.cos(angles), np.sin(angles)


def rotate_half(x: F64) -> F64:
    """``[-x2, x1]`` for ``x = [x1, x2]`` split in halves along the last axis."""
    x1, x2 = np.split(x, 2, axis=-1)
    return np.concatenate([-x2, x1], axis=-1)


def apply_rope(x: F64, cos: F64, sin: F64) -> F64:
    """Rotate ``x`` (..., n_positions, head_dim) by the tables of ``rope_tables``."""
    return x * cos + rotate_half(x) * sin


__all__ = ["apply_rope", "rope_tables", "rotate_half"]
