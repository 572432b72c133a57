"""Boolean shares: packing, AND and opening against plaintext numpy, with costs."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from puma_async.context import Context
from puma_async.evaluate import evaluate
from puma_async.protocols import bitpack, boolean
from puma_async.protocols.randomness import random_bshare
from puma_async.protocols.ring import RING_DTYPE
from puma_async.protocols.shares import AShare, BShare, public_share

MOD = 2**64
EDGES = [0, 1, 2, 3, 2**62 - 1, 2**62, 2**62 + 1, 2**63 - 1, 2**63, 2**63 + 1,
         2**64 - 2**62, 2**64 - 2, 2**64 - 1]
words = st.one_of(st.sampled_from(EDGES), st.integers(0, MOD - 1), st.integers(0, 2**20))
word_lists = st.lists(words, min_size=1, max_size=200)
SLOW = settings(max_examples=25, deadline=None)


def _words(values: list[int]) -> np.ndarray:
    return np.array(values, dtype=RING_DTYPE)


def _expected_bits(x: np.ndarray, bit: int) -> np.ndarray:
    return (x >> np.uint64(bit)) & np.uint64(1)


# ----------------------------------------------------------------------- local packing


@given(hnp.arrays(RING_DTYPE, st.integers(0, 300)))
def test_bit_slices_and_packing_round_trip(x: np.ndarray) -> None:
    slices = bitpack.bit_slices(x)
    assert slices.shape == (64, -(-x.size // 64))
    for j in range(64):
        assert np.array_equal(bitpack.unpack_bits(slices[j], x.size), _expected_bits(x, j))
    assert np.array_equal(bitpack.pack_bits(x), slices[0])


@given(hnp.arrays(RING_DTYPE, hnp.array_shapes(max_dims=3, max_side=9)))
def test_pack_bits_packs_each_row_of_the_last_axis(x: np.ndarray) -> None:
    packed = bitpack.pack_bits(x)
    assert packed.shape == (*x.shape[:-1], bitpack.packed_words(x.shape[-1]))
    for row in np.ndindex(x.shape[:-1]):
        assert np.array_equal(bitpack.unpack_bits(packed[row], x.shape[-1]), x[row] & 1)


# ----------------------------------------------------------------------- AND and opening


def _opened(ctx: Context, value: np.ndarray) -> AShare:
    """Return a value every party knows, so that evaluate hands it to the client."""
    return public_share(ctx.role, value)


async def _secret_words(ctx: Context, value: np.ndarray) -> BShare:
    """Fresh random boolean shares of ``value`` (a test device: it opens a random pad)."""
    pad = random_bshare(ctx, value.shape)
    return pad.xor_public(ctx.role, value ^ await boolean.open_bits(ctx, pad))


@SLOW
@given(word_lists, word_lists, st.integers(0, 2**32))
def test_and_xor_not_match_numpy(xs: list[int], ys: list[int], seed: int) -> None:
    n = min(len(xs), len(ys))
    x, y = _words(xs[:n]), _words(ys[:n])

    async def fn(ctx: Context, dummy: AShare) -> list[AShare]:
        u, v = [await _secret_words(ctx, w) for w in (x, y)]
        with ctx.scope("and"):
            uv = await boolean.and_(ctx, u, v)
        got = [await boolean.open_bits(ctx, s) for s in (uv, u ^ v, boolean.not_(ctx, u))]
        return [_opened(ctx, w) for w in got]

    ev = evaluate(fn, np.zeros(1, RING_DTYPE))
    got_and, got_xor, got_not = ev.outputs
    assert np.array_equal(got_and, x & y)
    assert np.array_equal(got_xor, x ^ y)
    assert np.array_equal(got_not, ~x)
    for p in range(3):
        cost = ev.stats[p].totals(phase="online", scope="op.and")
        assert (cost.bytes_sent, cost.rounds) == (8 * n, 1)
