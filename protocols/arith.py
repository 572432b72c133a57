"""Multiplication and matrix products of shares, in the ring and in fixed point.

Secret x secret (ABY3): P_i computes its 3-out-of-3 share of the product from its two pairs,
z_i = (x_i + x_{i+1}) y_i + x_i y_{i+1}, masks it with a fresh zero-sharing alpha_i, and

- in the ring (:func:`mul`, :func:`square`, :func:`matmul`) sends z_i to P_{i-1}:
  1 round, one ring element per output element per party (8 bytes);
- in fixed point (:func:`mul_fxp`, :func:`square_fxp`, :func:`matmul_fxp`, and
  :func:`dot_fxp` for sums of products) feeds z_i straight into the truncation
  (:func:`.trunc.truncate_additive`, whose own streams mask it: no zero-sharing to draw)
  instead of resharing it:
  2 rounds in all, 40 + f/8 bytes per output element from all parties together (f = bits,
  18 by default: 42.25 bytes, 14.1 per party), versus 3 rounds and 50.25 bytes for
  :func:`mul` followed by :func:`.trunc.truncate`.

The fixed-point product of values with f fractional bits has 2f; it is truncated by ``bits``
(default: the session's :func:`.fixedpoint.fixed_point`) to floor(p / 2^bits) + e, e in {0, 1}
(one ulp at most), which needs the ring product p in [-2^62, 2^62) as a signed value.

Secret x public: :func:`matmul_public` is local (0 rounds); the ``*_public_fxp`` variants take
real public operands, encode them with the session's fixed point, multiply locally and
truncate (:func:`.trunc.truncate`: 2 rounds, 24 + f/8 bytes per output element in all).

Matrix products (..., m, k) @ (..., k, n) follow numpy broadcasting. Each party's products run
in :func:`.ringmatmul.ring_matmul` in a worker thread (it releases the GIL), so the three
parties of one process overlap theirs; secret x secret costs one ring matmul of inner size 2k
per party. Costs are declared and tested in :mod:`.costs`.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np

from puma_async.context import Context

from . import ring
from .fixedpoint import fixed_point
from .offload import offload
from .randomness import masked_share
from .ring import RingArray, to_ring
from .ringmatmul import batch_shape, ring_matmul
from .shares import AShare
from .trunc import resolve_bits, truncate, truncate_additive, truncate_additive_twin
from .trunc1 import Trunc1Material, truncate1_additive

Rounds = Literal[1, 2]
"""Rounds of a fixed-point product: 2 (TP2, :func:`.trunc.truncate_additive`) or 1 (TP1,
:func:`.trunc1.truncate1_additive`: offline tuples, 48 bytes online per element)."""

MACS_PER_ELEMENT = 16
"""A ring multiply-add in a matmul kernel costs about 1/16 of an element-wise op's pass, so a
matmul is offloaded to a thread from 16 x OFFLOAD_MIN_ELEMENTS multiply-adds (a thread hop
costs more than a small product), or from OFFLOAD_MIN_ELEMENTS elements of its right operand
(:func:`_matmul_work`)."""


def mul_local(x: AShare, y: AShare) -> RingArray:
    """P_i's additive share of x * y (element-wise, broadcasting): (x_i + x_{i+1}) y_i +
    x_i y_{i+1}. Local; a product's one round is the reshare of these shares."""
    return ring.add(ring.mul(ring.add(x.first, x.second), y.first), ring.mul(x.first, y.second))


def _square_local(x: AShare) -> RingArray:
    return ring.mul(x.first, ring.add(x.first, ring.add(x.second, x.second)))


def _matmul_work(a: AShare | RingArray, b: AShare | RingArray) -> int:
    """The work of a @ b in offload's element units: its multiply-adds (broadcast batch
    included) / :data:`MACS_PER_ELEMENT`, but at least the elements of b, which the product
    reads whole. With one row of a (a new token) a weight product is a pass over a weight that
    is not in cache: SmolLM2's output projection, (1, 1152) @ (1152, 576) stacked, reads 5.3 MB
    per party (0.4-0.5 ms) for 41,472 units of multiply-adds, and ran on the event loop, the
    three parties one after the other (about 40 ms of a token's loop; in worker threads they
    overlap)."""
    shape_a, shape_b = np.shape(a), np.shape(b)
    m, k = shape_a[-2:]
    n = shape_b[-1]
    macs = math.prod(batch_shape(shape_a, shape_b)) * m * k * n
    return max(macs // MACS_PER_ELEMENT, math.prod(shape_b))


def stack_left(x: AShare) -> RingArray:
    """[x_i + x_{i+1} | x_i] along the last axis: the left operand of a share product."""
    return np.concatenate([ring.add(x.first, x.second), x.first], axis=-1)


def stack_right(y: AShare) -> RingArray:
    """[y_i; y_{i+1}] along the second-to-last axis: the right operand of a share product.

    ``stack_left(x) @ stack_right(y)`` = (x_i + x_{i+1}) @ y_i + x_i @ y_{i+1}, P_i's
    additive share of x @ y, as one ring matmul of inner size 2k. A fixed operand (a weight)
    can be stacked once and reused.
    """
    return np.concatenate([y.first, y.second], axis=-2)


async def finish_product(
    ctx: Context, z: RingArray, bits: int, *, rounds: Rounds = 2,
    pre: Trunc1Material | None = None,
) -> AShare:
    """Replicated shares of a product from P_i's additive share ``z`` of it: reshare
    (``bits`` = 0: 1 round) or truncate (2 rounds; ``rounds`` = 1: TP1 in 1 round, its tuples
    ``pre`` from :func:`.trunc1.prepare_trunc1` with ``Trunc1Spec(z.size, bits)``, or prepared
    inline when None), each masking z with a zero-sharing of its own (the 2-round
    truncation's costs no draw: :mod:`.trunc`)."""
    if rounds not in (1, 2) or (rounds == 2 and pre is not None):
        raise ValueError(f"rounds must be 1 or 2 (tuples only with 1), got {rounds}")
    if rounds == 1:
        return await truncate1_additive(ctx, z, bits, pre=pre)
    return await truncate_additive(ctx, z, bits)


async def finish_product_wide(
    ctx: Context, z: RingArray, bits: int, residual: AShare | None, shift: int
) -> tuple[AShare, AShare]:
    """The product p of :func:`finish_product` and, in the same rounds, a wide copy of the
    sum s = residual + p: w = (2^bits residual + z) truncated by bits + shift.

    w is floor(s' / 2^shift) or that + 1, for s' = residual + z / 2^bits, the sum before p's
    rounding (so within 1 + 2^-shift units of s / 2^shift). What a norm of s needs when its
    squares would overflow at full scale (:func:`.norms.rms_norm`'s ``wide``), without a
    truncation of its own. |2^bits residual + z| < 2^62 (``residual`` None: zero).

    With bits > 0, w is p's truncation's twin (:func:`.trunc.truncate_additive_twin`): it is
    opened by p's swap, the residual's component that both openers hold added to it, so it
    costs 24 + (bits + shift)/8 bytes per element. With bits = 0 (p a plain reshare, no
    swap to share) w is a truncation of its own, the residual entering as 3-out-of-3 addends
    2^bits x_i under that truncation's own fresh masks (with p's mask, the swapped addends
    would reveal x_i): 40 + shift/8 bytes. Rounds: 2 (1 when bits = shift = 0).
    """
    if bits:
        zero = np.zeros_like(z)
        scaled = (AShare(zero, zero) if residual is None
                  else residual.scale(np.uint64(1 << bits)))
        return await truncate_additive_twin(ctx, z, bits, scaled, bits + shift)
    addends = z if residual is None else ring.add(z, residual.first)
    product, wide = await ctx.gather(
        lambda c: finish_product(c, z, 0),
        lambda c: truncate_additive(c, addends, shift),
    )
    return product, wide


async def dot_fxp(
    ctx: Context, a: AShare, b: AShare, bits: int, *, rounds: Rounds = 2,
    pre: Trunc1Material | None = None,
) -> AShare:
    """sum over the last axis of a * b (broadcasting), truncated once by ``bits``: 2 rounds
    (1 if bits = 0), the bytes of one product (:func:`.arith.mul_fxp`) per sum; ``rounds=1``:
    1 round with TP1 (:func:`finish_product`)."""
    z = await offload(_dot_local, a, b, size=max(a.size, b.size))
    return await finish_product(ctx, z, bits, rounds=rounds, pre=pre)


async def dot_share(ctx: Context, a: AShare, b: AShare) -> RingArray:
    """This party's 3-out-of-3 share of sum over the last axis of a * b (untruncated), masked
    by a fresh zero-sharing: for consumers that start in the product's resharing round
    (:func:`.fastcmp.compare_thresholds`, :func:`.segments.segmented_power`). Local."""
    return await masked_share(ctx, await offload(_dot_local, a, b, size=max(a.size, b.size)))


def _dot_local(a: AShare, b: AShare) -> RingArray:
    """This party's additive share of sum_k a_k b_k (the products of :func:`.arith.mul`)."""
    return np.add.reduce(mul_local(a, b), axis=-1, dtype=np.uint64)


async def mul(ctx: Context, x: AShare, y: AShare) -> AShare:
    """x * y in the ring (element-wise, broadcasting). 1 round, 1 element per party."""
    z = await offload(mul_local, x, y, size=max(x.size, y.size))
    return await finish_product(ctx, z, 0)


async def square(ctx: Context, x: AShare) -> AShare:
    """x * x in the ring. 1 round, 1 element per party."""
    return await finish_product(ctx, await offload(_square_local, x, size=x.size), 0)


async def matmul(ctx: Context, x: AShare, y: AShare) -> AShare:
    """x @ y in the ring. 1 round, 1 element per output element per party."""
    return await matmul_stacked(ctx, stack_left(x), stack_right(y), bits=0)


async def matmul_stacked(
    ctx: Context, left: RingArray, right: RingArray, bits: int | None = None, *,
    rounds: Rounds = 2, pre: Trunc1Material | None = None,
) -> AShare:
    """x @ y from stacked operands (:func:`stack_left`, :func:`stack_right`), truncated by
    ``bits`` (default frac_bits; 0: none). 2 rounds with truncation, else 1; as
    :func:`matmul_fxp` / :func:`matmul` per output element (``rounds=1``: TP1)."""
    bits = resolve_bits(ctx, bits)
    z = await stacked_share(left, right)
    return await finish_product(ctx, z, bits, rounds=rounds, pre=pre)


async def product_share(ctx: Context, left: RingArray, right: RingArray) -> RingArray:
    """This party's 3-out-of-3 share of x @ y from stacked operands, masked by a fresh
    zero-sharing: for a consumer that starts in the truncation's first round
    (:func:`.trunc.open_product`). Local."""
    return await masked_share(ctx, await stacked_share(left, right))


async def stacked_share(left: RingArray, right: RingArray) -> RingArray:
    """This party's additive share of x @ y from stacked operands (a worker thread if large)."""
    return await offload(ring_matmul, left, right, size=_matmul_work(left, right))


async def mul_fxp(
    ctx: Context, x: AShare, y: AShare, bits: int | None = None, *, rounds: Rounds = 2,
    pre: Trunc1Material | None = None,
) -> AShare:
    """Fixed-point x * y, truncated by ``bits`` (default frac_bits) within one ulp.

    Needs |x y| < 2^62 in ring units. 2 rounds; 40 + bits/8 bytes per element in all.
    ``rounds=1``: 1 round with TP1 (:func:`finish_product`), 48 bytes per element online and
    the offline tuple (:mod:`.trunc1`).
    """
    bits = resolve_bits(ctx, bits)
    z = await offload(mul_local, x, y, size=max(x.size, y.size))
    return await finish_product(ctx, z, bits, rounds=rounds, pre=pre)


async def square_fxp(
    ctx: Context, x: AShare, bits: int | None = None, *, rounds: Rounds = 2,
    pre: Trunc1Material | None = None,
) -> AShare:
    """Fixed-point x * x, truncated; as :func:`mul_fxp` (2 rounds, 40 + bits/8 bytes;
    ``rounds=1``: 1 round with TP1)."""
    bits = resolve_bits(ctx, bits)
    z = await offload(_square_local, x, size=x.size)
    return await finish_product(ctx, z, bits, rounds=rounds, pre=pre)


async def matmul_fxp(
    ctx: Context, x: AShare, y: AShare, bits: int | None = None, *, rounds: Rounds = 2,
    pre: Trunc1Material | None = None,
) -> AShare:
    """Fixed-point x @ y, truncated; every output needs |sum| < 2^62 in ring units.

    2 rounds; 40 + bits/8 bytes per output element from all parties together (``rounds=1``:
    1 round with TP1, 48 bytes online and the offline tuple per output element).
    """
    return await matmul_stacked(ctx, stack_left(x), stack_right(y), bits, rounds=rounds,
                                pre=pre)


def _matmul_public_local(a: AShare | RingArray, b: AShare | RingArray) -> AShare:
    """Both halves in one ring matmul, the share stacked on a new leading axis."""
    if isinstance(a, AShare):
        out = ring_matmul(np.stack([a.first, a.second]), to_ring(b))
    else:
        assert isinstance(b, AShare)
        out = ring_matmul(to_ring(a), np.stack([b.first, b.second]))
    return AShare(out[0], out[1])


async def matmul_public(
    ctx: Context, a: AShare | RingArray, b: AShare | RingArray
) -> AShare:
    """a @ b in the ring with exactly one operand public (a ring array). Local: 0 rounds."""
    if isinstance(a, AShare) == isinstance(b, AShare):
        raise TypeError("matmul_public needs one secret (AShare) and one public operand")
    return await offload(_matmul_public_local, a, b, size=_matmul_work(a, b))


async def matmul_public_fxp(
    ctx: Context, a: AShare | Any, b: AShare | Any, bits: int | None = None
) -> AShare:
    """Fixed-point a @ b with one public real operand (encoded here), truncated.

    2 rounds (the truncation); 24 + bits/8 bytes per output element in all.
    """
    fx = fixed_point(ctx)
    a = a if isinstance(a, AShare) else fx.encode(a)
    b = b if isinstance(b, AShare) else fx.encode(b)
    return await truncate(ctx, await matmul_public(ctx, a, b), bits)


async def mul_public_fxp(ctx: Context, x: AShare, c: Any, bits: int | None = None) -> AShare:
    """Fixed-point x * c for public reals c (broadcasting), truncated.

    2 rounds (the truncation); 24 + bits/8 bytes per element in all.
    """
    scaled = x.scale(fixed_point(ctx).encode(c))
    return await truncate(ctx, scaled, bits)


__all__ = [
    "Rounds", "dot_fxp", "dot_share", "finish_product", "finish_product_wide", "matmul",
    "matmul_fxp",
    "matmul_public", "matmul_public_fxp", "matmul_stacked", "mul", "mul_fxp", "mul_local",
    "mul_public_fxp", "product_share", "square", "square_fxp", "stack_left", "stack_right",
    "stacked_share",
]
