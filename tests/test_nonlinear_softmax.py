"""Max along an axis and softmax (with a public mask) against float64 numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from puma_async.context import Context
from puma_async.errors import RunFailedError
from puma_async.protocols.arith import mul_fxp, mul_local
from puma_async.protocols.llama import attend
from puma_async.protocols.randomness import zero_share
from puma_async.protocols.shares import AShare
from puma_async.protocols.softmax import (
    ALL_PAIRS_MAX,
    GROUP,
    max_along,
    max_of_product,
    normalise_after,
    softmax,
)

MAX_ERROR = 5e-5  # documented max abs error per probability (measured 1.7e-5 to 3.4e-5)


def _reference(fxp, x: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    z = fxp.quantised(x)
    if mask is not None:
        z = np.where(mask, z, -np.inf)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _softmax(mask: np.ndarray | None = None):
    async def fn(ctx: Context, x: AShare) -> AShare:
        return await softmax(ctx, x, mask=mask)

    return fn


@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 4, 128), (1, 1)])
@pytest.mark.parametrize("axis", [-1, 0])
def test_max_is_exact(evaluate, shape: tuple[int, ...], axis: int) -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(-2**61, 2**61, size=shape, dtype=np.int64)
    x.flat[0] = x.flat[-1]  # a tie
    ev_x = x.view(np.uint64)

    async def fn(ctx: Context, a: AShare) -> AShare:
        return await max_along(ctx, a, axis=axis)

    got = evaluate(fn, ev_x).outputs[0].view(np.int64)
    assert np.array_equal(got, x.max(axis=axis))


def _max_rounds(n: int) -> int:
    """Groups of GROUP reduced by one all-pairs step each (5 rounds: groups of 8) until at
    most ALL_PAIRS_MAX entries are left, then one all-pairs step: 4 rounds and one per level
    of the AND of an entry's m - 1 beats (none for 2 entries, one up to 9, two up to 17)."""
    rounds = 0
    while n > ALL_PAIRS_MAX:
        n, rounds = -(-n // GROUP), rounds + 5
    return rounds + (0 if n == 1 else 4 if n == 2 else 5 if n <= 9 else 6)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 9, 16, 17, 32, 40, 128])
def test_max_rounds(fxp, n: int) -> None:
    _, ev = fxp.run(lambda ctx, a: max_along(ctx, a), np.zeros((2, n)))
    rounds = max(ev.cost(p).rounds for p in range(3))
    assert rounds == _max_rounds(n)
    if n >= 3:  # fewer than a halving tree's 4 rounds per level
        assert rounds < 4 * math.ceil(math.log2(n))


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 3).flatmap(lambda rows: st.integers(1, 40).flatmap(
        lambda n: hnp.arrays(np.int64, (rows, n), elements=st.one_of(
            st.integers(-(2**62), 2**62 - 1), st.sampled_from([-(2**62), 0, 1, 2**62 - 1]),
        ))
    ))
)
def test_max_is_exact_with_ties_and_range_ends(evaluate, x: np.ndarray) -> None:
    async def fn(ctx: Context, a: AShare) -> AShare:
        return await max_along(ctx, a)

    got = evaluate(fn, x.view(np.uint64)).outputs[0].view(np.int64)
    assert np.array_equal(got, x.max(axis=-1))


def _rows(rng: np.random.Generator) -> np.ndarray:
    x = np.concatenate([rng.normal(0, s, (8, 64)) for s in (0.1, 1, 3, 10, 100)])
    x[0, :] = 0.0  # uniform
    x[1, 5] = 50.0  # one dominant entry
    x[2, :] = -2.0**16
    x[2, 9] = 2.0**16 - 1  # massive values, one dominant
    x[3, :2] = 7.0  # two equal maxima
    return x


def test_dense_rows(fxp) -> None:
    x = _rows(np.random.default_rng(2))
    got, _ = fxp.run(_softmax(), x)
    assert np.max(np.abs(got - _reference(fxp, x))) <= MAX_ERROR


def test_causal_mask_and_single_unmasked_entries(fxp) -> None:
    rng = np.random.default_rng(3)
    n = 48
    x = rng.normal(0, 4, (3, n, n))
    mask = np.tril(np.ones((n, n), dtype=bool))
    mask = np.broadcast_to(mask, x.shape).copy()
    mask[1] = False
    mask[1, np.arange(n), rng.integers(0, n, n)] = True  # one unmasked entry per row
    x[2, :, 0] = 1e4  # a masked-out huge value must not matter (rows > 0 of head 2)
    x[2, 0, 0] = 0.0
    got, _ = fxp.run(_softmax(mask), x)
    assert np.max(np.abs(got - _reference(fxp, x, mask))) <= MAX_ERROR
    assert np.all(got[~mask] == 0)
    assert np.max(np.abs(got[1][mask[1]] - 1)) <= MAX_ERROR


def test_rows_without_unmasked_entries_are_rejected(fxp) -> None:
    with pytest.raises(Exception, match="unmasked"):
        fxp.run(_softmax(np.zeros((2, 3), dtype=bool)), np.zeros((2, 3)))


@settings(max_examples=6, deadline=None)
@given(hnp.arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(1, 40)),
                  elements=st.floats(-1e3, 1e3)))
def test_hypothesis_rows(fxp, x: np.ndarray) -> None:
    got, _ = fxp.run(_softmax(), x)
    assert np.max(np.abs(got - _reference(fxp, x))) <= MAX_ERROR
    assert np.all(np.abs(got.sum(axis=-1) - 1) <= x.shape[-1] * MAX_ERROR)


def _attention(fxp, x: np.ndarray, v: np.ndarray, mask: np.ndarray, n: int) -> np.ndarray:
    """``llama.attend``: softmax(x) @ v per group; n = 1 normalises after the product."""
    async def fn(ctx: Context, a: AShare, b: AShare) -> AShare:
        return await attend(ctx, a, b, mask, n, "test")

    return fxp.run(fn, x, v)[0]


def _attention_bound(fxp, v: np.ndarray) -> np.ndarray:
    """The late order's bound per output (:func:`normalise_after`): negExp's error (4.7e-6
    per e, < 1e-5 |v_j| each, the row sum >= 1), r's relative error (< 5e-6 |out|, |out| <=
    max |v|) and 3 units of rounding."""
    weights = np.abs(fxp.quantised(v)).sum(axis=-2, keepdims=True)  # (groups, 1, d)
    return 1e-5 * weights + 5e-6 * np.abs(v).max(axis=-2, keepdims=True) + 3 * fxp.ulp


def _attention_reference(fxp, x: np.ndarray, v: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return _reference(fxp, x, mask) @ fxp.quantised(v)


def test_normalise_after_by_shapes() -> None:
    assert normalise_after(1, 8, 64)  # a decoding step: 2 rounds fewer for 22 kB more
    assert not normalise_after(5, 8, 64)  # more bytes for prompt rows
    assert normalise_after(5, 64, 64) and normalise_after(5, 100, 64)  # no more bytes


@pytest.mark.parametrize(("keys", "width", "scale"), [(8, 64, 1.0), (8, 64, 2000.0),
                                                       (40, 64, 2000.0), (40, 8, 1.0)])
def test_normalised_after_the_product_within_the_bound(fxp, keys, width, scale) -> None:
    rng = np.random.default_rng(keys + width)
    groups, rows = 3, 24
    x = rng.normal(0, 3, (groups, rows, keys))
    v = rng.normal(0, scale, (groups, keys, width)).clip(-4000, 4000)
    mask = np.ones(x.shape, dtype=bool)
    mask[..., -2:] = rng.random((groups, rows, 2)) < 0.5
    got = _attention(fxp, x, v, mask, 1)
    assert np.all(np.abs(got - _attention_reference(fxp, x, v, mask)) <= _attention_bound(fxp, v))


@pytest.mark.parametrize("keys", [8, 40])
def test_normalised_after_the_product_rounds_less(fxp, keys: int) -> None:
    """Uniform rows (every e = 1, probabilities 1/keys) of values up to 2000: (e r) @ V
    rounds every probability (one unit times |v_j|, summed: measured 3,800 units at 8 keys,
    12,000 at 40), (e @ V) r rounds twice (600 and 210 units measured, mostly r's relative
    error): at least 3 times smaller."""
    rng = np.random.default_rng(keys)
    x = np.zeros((3, 24, keys))
    v = rng.choice([-2000.0, 2000.0], (3, keys, 64)) * rng.random((3, keys, 64))
    mask = np.ones(x.shape, dtype=bool)
    want = _attention_reference(fxp, x, v, mask)
    late = np.abs(_attention(fxp, x, v, mask, 1) - want).max()
    early = np.abs(_attention(fxp, x, v, mask, 24) - want).max()  # 24 rows: (e r) @ V
    assert not normalise_after(24, keys, 64)
    assert 3 * late <= early


@settings(max_examples=8, deadline=None)
@given(st.integers(1, 12), st.integers(0, 2**32 - 1), st.sampled_from([1.0, 100.0, 4095.0]))
def test_hypothesis_normalised_after_near_the_headroom(fxp, keys: int, seed: int,
                                                       top: float) -> None:
    """|V| up to 4095 (scale_rows' headroom: |out| < 2^12), rows of one entry up to 12, one
    dominant or all-equal scores."""
    rng = np.random.default_rng(seed)
    x = rng.choice([rng.normal(0, 5, (2, 3, keys)), np.zeros((2, 3, keys))])
    v = rng.choice([-top, top], (2, keys, 4)) * rng.choice([1.0, rng.random()])
    mask = np.ones(x.shape, dtype=bool)
    got = np.abs(_attention(fxp, x, v, mask, 1) - _attention_reference(fxp, x, v, mask))
    assert np.all(got <= _attention_bound(fxp, v))


def _product_max(keep: np.ndarray | None):
    """x = a * b truncated by f, and its row maxima, by max_of_product (the comparisons'
    leaves in the truncation's first round)."""

    async def fn(ctx: Context, a: AShare, b: AShare) -> list[AShare]:
        z = mul_local(a, b) + await zero_share(ctx, a.shape)
        x, top = await max_of_product(
            ctx, z, FRAC, None if keep is None else np.broadcast_to(keep, a.shape),
            product_scope="product", max_scope="max")
        return [x, top]

    return fn


FRAC = 18


def _check_product_max(evaluate, a: np.ndarray, b: np.ndarray, keep: np.ndarray | None):
    ev = evaluate(_product_max(keep), a.view(np.uint64), b.view(np.uint64))
    x, top = (o.view(np.int64) for o in ev.outputs)
    exact = a.astype(object) * b.astype(object)
    floor = np.vectorize(lambda v: v >> FRAC, otypes=[object])(exact)
    assert np.all((x - floor == 0) | (x - floor == 1))  # the truncation, unchanged
    low = np.iinfo(np.int64).min
    kept = x if keep is None else np.where(np.broadcast_to(keep, x.shape), x, low)
    assert np.array_equal(top, kept.max(axis=-1))  # exactly the largest truncated entry
    return ev


@settings(max_examples=30, deadline=None)
@given(
    st.integers(1, 3).flatmap(lambda rows: st.integers(1, 30).flatmap(
        lambda n: st.tuples(
            hnp.arrays(np.int64, (rows, n), elements=st.one_of(
                st.integers(-(2**31), 2**31 - 1),
                st.sampled_from([-(2**31), -1, 0, 1, 2**31 - 1]))),
            hnp.arrays(np.int64, (rows, n), elements=st.one_of(
                st.integers(-(2**30), 2**30), st.sampled_from([-(2**30), 1, 2**18, 2**30]))),
            st.booleans(),
        )
    ))
)
def test_max_of_product_is_exact(evaluate, args) -> None:
    """Products up to |a b| = 2^61 (range ends), ties and near-ties of the truncated values
    (products one unit apart straddle the truncation's rounding), a causal-style mask, and
    rows of one entry (a one-token prompt's scores: the product alone)."""
    a, b, masked = args
    keep = None
    if masked:
        keep = np.tril(np.ones((a.shape[0], a.shape[1]), bool),
                       k=max(0, a.shape[1] - a.shape[0]))  # every row keeps an entry
    _check_product_max(evaluate, a, b, keep)


def test_max_of_product_refuses_a_row_with_nothing_kept(evaluate) -> None:
    a = np.zeros((3, 2), np.int64)
    keep = np.tril(np.ones((3, 2), bool), k=-1)  # the first row keeps nothing
    with pytest.raises(RunFailedError, match="at least one unmasked entry"):
        _check_product_max(evaluate, a, a, keep)


@pytest.mark.parametrize("n", [2, 8, 9, 17, 25])
def test_max_of_product_near_ties_and_rounds(evaluate, n: int) -> None:
    """Products a few units apart around multiples of 2^f, where the truncation's random
    rounding reorders them: the maximum is still the largest truncated entry. Rounds: one
    fewer than the product then max_along (2 + max_along's - 1: the leaves from the dealer's
    output components already travel in the product's first round; now the evaluators' tree
    starts in its second)."""
    rng = np.random.default_rng(n)
    base = rng.integers(-2**20, 2**20, size=(4, 1), dtype=np.int64) << FRAC
    a = base + rng.integers(-3, 4, size=(4, n), dtype=np.int64)
    b = np.ones((4, n), np.int64) << FRAC
    ev = _check_product_max(evaluate, a, b, None)
    rounds = max(ev.cost(p).rounds for p in range(3))
    assert rounds == 2 + _max_rounds(n) - 2

    async def before(ctx: Context, a_: AShare, b_: AShare) -> AShare:
        return await max_along(ctx, await mul_fxp(ctx, a_, b_))

    old = evaluate(before, a.view(np.uint64), b.view(np.uint64))
    assert max(old.cost(p).rounds for p in range(3)) == rounds + 1
