"""2-out-of-3 replicated secret shares (ABY3) and the local operations on them.

A secret x in Z_2^64 is split as x = x_0 + x_1 + x_2; party P_i holds the pair
(x_i, x_{i+1}) (indices mod 3), so any two parties can reconstruct and any one learns nothing.
Boolean shares are the same with XOR over uint64 words (64 bits packed per word).

Everything here is local: no messages, 0 rounds. Fixed-point values carry ``frac_bits``
fractional bits by convention of the caller (see :mod:`.fixedpoint`); additions keep the
scale, products with public integers keep it, products with public fixed-point values need a
truncation (:mod:`.arith`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Self

import numpy as np

from . import ring
from .ring import RING_DTYPE, RingArray, to_ring

_ZERO = np.zeros((), RING_DTYPE)


@dataclasses.dataclass(frozen=True, init=False)
class _SharePair:
    """The two halves one party holds: ``first`` = x_i, ``second`` = x_{i+1}."""

    first: RingArray
    second: RingArray

    def __init__(self, first: RingArray, second: RingArray) -> None:
        # written into __dict__ directly: frozen dataclasses' generated __init__ (one
        # object.__setattr__ per field) and a __post_init__ cost twice as much, and protocols
        # make tens of thousands of shares per token
        if first.shape != second.shape:
            raise ValueError(
                f"share halves of different shapes {np.shape(first)} and {np.shape(second)}"
            )
        fields = self.__dict__
        fields["first"] = first
        fields["second"] = second

    @property
    def shape(self) -> tuple[int, ...]:
        return self.first.shape

    @property
    def size(self) -> int:
        return int(self.first.size)

    def map(self, fn: Any, *args: Any, **kwargs: Any) -> Self:
        """Apply the same linear, shape-only or indexing function to both halves."""
        return type(self)(fn(self.first, *args, **kwargs), fn(self.second, *args, **kwargs))

    def __getitem__(self, index: Any) -> Self:
        return type(self)(self.first[index], self.second[index])

    def reshape(self, *shape: Any) -> Self:
        return type(self)(self.first.reshape(*shape), self.second.reshape(*shape))

    def transpose(self, *axes: int) -> Self:
        return type(self)(self.first.transpose(*axes), self.second.transpose(*axes))


@dataclasses.dataclass(frozen=True, init=False)
class AShare(_SharePair):
    """One party's arithmetic replicated share: ``first`` = x_i, ``second`` = x_{i+1}."""

    def __add__(self, other: AShare) -> AShare:
        return AShare(ring.add(self.first, other.first), ring.add(self.second, other.second))

    def __sub__(self, other: AShare) -> AShare:
        return AShare(ring.sub(self.first, other.first), ring.sub(self.second, other.second))

    def __neg__(self) -> AShare:
        return AShare(ring.neg(self.first), ring.neg(self.second))

    def sum(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> AShare:
        return self.map(np.add.reduce, axis=axis, dtype=RING_DTYPE, keepdims=keepdims)

    def scale(self, k: Any) -> AShare:
        """Multiply by a public integer array or scalar (broadcasting), mod 2^64."""
        return AShare(ring.mul(self.first, k), ring.mul(self.second, k))

    def add_public(self, party: int, c: Any) -> AShare:
        """x + c for a public ring value c (broadcasting to x's shape): c is added to x_0
        only (so the other halves gain 0: fresh arrays all the same, as from a sum)."""
        c = to_ring(c)
        if c.ndim and c.shape != self.shape:
            c = np.broadcast_to(c, self.shape)
        return AShare(ring.add(self.first, c if party == 0 else _ZERO),
                      ring.add(self.second, c if party == 2 else _ZERO))


@dataclasses.dataclass(frozen=True, init=False)
class BShare(_SharePair):
    """One party's boolean replicated share, XOR-shared uint64 words: (b_i, b_{i+1})."""

    def __xor__(self, other: BShare) -> BShare:
        return BShare(self.first ^ other.first, self.second ^ other.second)

    def xor_public(self, party: int, c: Any) -> BShare:
        """b XOR c for public words c: c enters b_0 (held by P_0 and P_2)."""
        c = to_ring(c)
        first = self.first ^ c if party == 0 else self.first
        second = self.second ^ c if party == 2 else self.second
        return BShare(first, second)

    def and_public(self, c: Any) -> BShare:
        c = to_ring(c)
        return BShare(self.first & c, self.second & c)

    def shift_left(self, k: int) -> BShare:
        return BShare(self.first << np.uint64(k), self.second << np.uint64(k))

    def shift_right(self, k: int) -> BShare:
        return BShare(self.first >> np.uint64(k), self.second >> np.uint64(k))



@dataclasses.dataclass(frozen=True)
class ProductShare:
    """One party's 3-out-of-3 additive share ``value`` = z_i of a product z = z_0 + z_1 + z_2
    that is not truncated: z carries ``frac_bits`` fractional bits (2f for a product of two
    values at f). Made by :func:`.arith.product_share`, masked by a fresh zero-sharing: the
    three shares are uniform but for their sum, so whoever gets all three learns z only;
    :func:`.io.reveal_product_to` opens it at the session's f (each party sends its share's
    bits [frac_bits - f, 64): the role gets floor(z / 2^(frac_bits - f)) - e, e in {0, 1, 2})."""

    value: RingArray
    frac_bits: int

    @property
    def shape(self) -> tuple[int, ...]:
        return self.value.shape

    def __getitem__(self, index: Any) -> ProductShare:
        return ProductShare(self.value[index], self.frac_bits)


def stack(shares: Sequence[AShare], axis: int = 0) -> AShare:
    """Stack arithmetic shares along a new axis (local)."""
    return AShare(
        np.stack([s.first for s in shares], axis), np.stack([s.second for s in shares], axis)
    )


def concatenate(shares: Sequence[AShare], axis: int = 0) -> AShare:
    """Concatenate arithmetic shares along an existing axis (local)."""
    return AShare(
        np.concatenate([s.first for s in shares], axis),
        np.concatenate([s.second for s in shares], axis),
    )


def public_share(party: int, value: Any) -> AShare:
    """A sharing of a public ring value (x_0 = value, x_1 = x_2 = 0), without communication."""
    value = to_ring(value)
    zero = np.zeros_like(value)
    return AShare(value if party == 0 else zero, value if party == 2 else zero)
