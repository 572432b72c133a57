"""RMSNorm and LayerNorm against float64 numpy, ordinary rows beside massive ones."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from puma_async.context import Context
from puma_async.errors import RunFailedError
from puma_async.protocols.norms import MAX_ABS, layer_norm, rms_norm, rms_norm_tuples, wide_shift
from puma_async.protocols.segments import prepare_segment_batches
from puma_async.protocols.shares import AShare, concatenate
from puma_async.protocols.softmax import row_reciprocals_tuples

EPS = 1e-5
REL = 2e-5  # documented relative error of the row's rsqrt (the wide path's bound, LayerNorm)
SWITCH = 2.0**24  # sum of v^2 where the wide path takes over (2^60 at 36 fractional bits)


def _rows(rng: np.random.Generator, n_rows: int, d: int, a: float = 1.0) -> np.ndarray:
    """Rows of every kind; those from 6 on have sum (a (x - mean))^2 = SWITCH (1 + e)."""
    scales = np.exp(rng.uniform(np.log(1e-3), np.log(2.0**14), n_rows))[:, None]
    x = rng.normal(0, 1, (n_rows, d)) * scales
    x[0] = 0.0  # all zero: eps alone
    x[1] = 1e-3  # tiny and constant
    x[2] = rng.normal(0, 1, d)
    x[2, 0] = 22500.0  # SmolLM2's first-token outlier
    x[3] = 2.0**16 * np.sign(rng.normal(size=d))  # every entry at the bound
    x[4] = 0.0
    x[4, 7] = -(2.0**16)  # one dominant entry
    x[5] = rng.normal(0, 1, d) + 2.0**15  # a large mean (LayerNorm must centre it)
    for i, e in enumerate([-0.3, -1e-3, -1e-6, 1e-6, 1e-3, 0.3, 0.0]):  # both sides of the switch
        r = rng.normal(0, 1, d)
        r -= r.mean()
        x[6 + i] = r * np.sqrt(SWITCH * (1 + e) / np.sum(r * r)) / a
    return np.clip(x, -(2.0**16), 2.0**16)


def _rms(fxp, x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    xq = fxp.quantised(x)
    inv = 1 / np.sqrt(np.mean(xq * xq, axis=-1, keepdims=True) + EPS)
    return xq * inv * w, inv


def _layer(fxp, x: np.ndarray, w: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c = fxp.quantised(x) - fxp.quantised(x).mean(axis=-1, keepdims=True)
    inv = 1 / np.sqrt(np.mean(c * c, axis=-1, keepdims=True) + EPS)
    return c * inv * w + b, inv


def _tolerance(fxp, want: np.ndarray, inv: np.ndarray, w: np.ndarray, centred: bool) -> np.ndarray:
    """REL |y| + the rounding of the normalised value and of its product with w; LayerNorm's
    mean costs one more unit of x - mean, which the row's 1/sigma amplifies."""
    ulp = fxp.ulp
    return REL * np.abs(want) + (2 + np.abs(w)) * ulp * 2 + (2 * inv * np.abs(w) * ulp if centred
                                                             else 0)


WEIGHTS = ["none", "public", "secret"]


@pytest.mark.parametrize("kind", WEIGHTS)
def test_rms_norm_rows(fxp, kind: str) -> None:
    rng = np.random.default_rng(5)
    x = _rows(rng, 24, 576)
    w = fxp.quantised(rng.uniform(-3, 3, 576)) if kind != "none" else np.ones(576)

    async def fn(ctx: Context, a: AShare, *secret: AShare) -> AShare:
        weight = secret[0] if secret else (w if kind == "public" else None)
        return await rms_norm(ctx, a, weight, eps=EPS)

    got, ev = fxp.run(fn, x, *([w] if kind == "secret" else []))
    want, inv = _rms(fxp, x, w)
    assert np.all(np.abs(got - want) <= _tolerance(fxp, want, inv, w, centred=False))
    # truncation, rsqrt from the sums' local shares (the candidates 3 + the opening with the
    # selection: the sums' resharing round is the comparisons' and TP1's first), product; a
    # weight: one more product
    assert max(ev.cost(p).rounds for p in range(3)) == (8 if kind == "none" else 10)


@pytest.mark.parametrize("low", [-1, 0, 1])
def test_rms_norm_given_the_wide_copy(fxp, low: int) -> None:
    """A wide copy made elsewhere (a product's: floor(x' / 2^k) + {0, 1} for x' within a unit
    of x, i.e. x / 2^k - 1 - 2^-k < wide < x / 2^k + 1) keeps the bounds; 2 rounds fewer."""
    rng = np.random.default_rng(7)
    x = _rows(rng, 24, 576)
    units = fxp.fx.encode(x).view(np.int64)
    k = wide_shift(576, MAX_ABS, 18)
    wide = (units + low) >> k  # the extremes: x' = x - 1, x, x + 1
    got, ev = fxp.run(lambda ctx, a, b: rms_norm(ctx, a, eps=EPS, wide=b), x, wide * fxp.ulp)
    want, inv = _rms(fxp, x, np.ones(576))
    assert np.all(np.abs(got - want) <= _tolerance(fxp, want, inv, np.ones(576), centred=False))
    assert max(ev.cost(p).rounds for p in range(3)) == 6


def test_rms_norm_at_more_fractional_bits(fxp) -> None:
    """``out_frac`` = f + 4: the same rows within the same relative bound and a unit 16
    times smaller (x rho truncated by 4 bits fewer), in the same rounds; outside [f, f +
    rho's bits] a ValueError before any message."""
    rng = np.random.default_rng(9)
    x = _rows(rng, 24, 576)
    got, ev = fxp.run(lambda ctx, a: rms_norm(ctx, a, eps=EPS, out_frac=22), x)
    got = got / 2.0**4  # decoded at 18 bits
    want, _ = _rms(fxp, x, np.ones(576))
    assert np.all(np.abs(got - want) <= REL * np.abs(want) + 2 * fxp.ulp / 2.0**4)
    assert max(ev.cost(p).rounds for p in range(3)) == 8
    for bad in (17, 18 + 41):
        with pytest.raises(RunFailedError) as info:
            fxp.run(lambda ctx, a, bad=bad: rms_norm(ctx, a, eps=EPS, out_frac=bad), x)
        for party in range(3):
            error = info.value.errors[party]
            assert isinstance(error, ValueError) and "out_frac must be in" in str(error)


@pytest.mark.parametrize("ahead", [True, False])
@pytest.mark.parametrize(("tuples", "rounds", "offline_per_row"), [
    (True, 8, (34_000, 37_000)), (False, 11, (7_000, 8_500))])
def test_rms_norm_with_tuples_made_ahead(fxp, tuples: bool, rounds: int,
                                         offline_per_row: tuple[int, int], ahead: bool) -> None:
    """The rsqrt's material made before the norm (:func:`rms_norm_tuples`, offline; or by
    the norm itself, ``ahead`` False) gives the same bounds: with TP1 tuples in the same
    online rounds (8), about 35 kB per row offline; without (``tuples=False``: the
    candidates truncated in 2 rounds each) 3 rounds more, and only the comparisons' material
    offline, about 7.6 kB per row (rows of 576; online about 61 kB either way, the product
    x rho's 26 kB included)."""
    rng = np.random.default_rng(8)
    x = _rows(rng, 24, 576)

    async def fn(ctx: Context, a: AShare) -> AShare:
        if not ahead:
            return await rms_norm(ctx, a, eps=EPS, tuples=tuples)
        plan, rows = rms_norm_tuples(ctx, a.shape, eps=EPS)
        (pre,) = await prepare_segment_batches(ctx, [(plan, rows)], tuples=tuples)
        return await rms_norm(ctx, a, eps=EPS, pre=pre)

    got, ev = fxp.run(fn, x)
    want, inv = _rms(fxp, x, np.ones(576))
    assert np.all(np.abs(got - want) <= _tolerance(fxp, want, inv, np.ones(576), centred=False))
    assert max(ev.cost(p).rounds for p in range(3)) == rounds
    offline = sum(ev.stats[p].totals(phase="offline").bytes_sent for p in range(3)) / len(x)
    assert offline_per_row[0] < offline < offline_per_row[1], offline


BATCH_MESSAGES = [21, 21, 20]
"""Offline messages per party of one norm's and one reciprocal's material (TP1 tuples of
three widths, two selections): as many for any number of norms."""


@pytest.mark.parametrize("rows", [(13,), (1, 1, 1, 10), (4, 1, 8)])
def test_norms_given_slices_of_one_batch_of_material(fxp, rows: tuple[int, ...]) -> None:
    """A pass's norms get their rsqrt's comparisons' material from one preparation, sliced
    (:func:`.segments.prepare_segment_batches`, a reciprocal's request between theirs, as
    :func:`.llama.prepare_tuples` asks): the same bounds for every norm, and the
    preparation's messages do not grow with the number of norms."""
    x = _rows(np.random.default_rng(9), sum(rows), 576)

    async def fn(ctx: Context, a: AShare) -> AShare:
        requests = [rms_norm_tuples(ctx, (n, 576), eps=EPS) for n in rows]
        requests.insert(1, row_reciprocals_tuples(ctx, 9, 6))
        made = await prepare_segment_batches(ctx, requests)
        del made[1]
        out, start = [], 0
        for n, pre in zip(rows, made, strict=True):
            out.append(await rms_norm(ctx, a[start : start + n], eps=EPS, pre=pre))
            start += n
        return concatenate(out)

    got, ev = fxp.run(fn, x)
    want, inv = _rms(fxp, x, np.ones(576))
    assert np.all(np.abs(got - want) <= _tolerance(fxp, want, inv, np.ones(576), centred=False))
    messages = [ev.stats[p].totals(phase="offline").messages_sent for p in range(3)]
    assert messages == BATCH_MESSAGES


@settings(max_examples=4, deadline=None)
@given(st.integers(0, 2**32), st.integers(-3 * 10**8, 3 * 10**8), st.integers(-1, 1))
@example(1, 5 * 10**7, -1)
@example(2, -5 * 10**7, 1)
def test_rms_norm_without_tuples_at_the_switch(fxp, seed: int, offset: int, low: int) -> None:
    """:func:`test_rms_norm_at_the_switch`'s rows, the rsqrt's candidates truncated in 2
    rounds each (material without TP1 tuples): the same bounds on both paths."""
    units, wide = _switch_rows(seed, offset, low)
    x = units * fxp.ulp

    async def fn(ctx: Context, a: AShare, b: AShare) -> AShare:
        plan, rows = rms_norm_tuples(ctx, a.shape, eps=EPS)
        (pre,) = await prepare_segment_batches(ctx, [(plan, rows)], tuples=False)
        return await rms_norm(ctx, a, eps=EPS, wide=b, pre=pre)

    got, _ = fxp.run(fn, x, wide * fxp.ulp)
    want, inv = _rms(fxp, x, np.ones(576))
    assert np.all(np.abs(got - want) <= _tolerance(fxp, want, inv, np.ones(576), centred=False))


@pytest.mark.parametrize("kind", WEIGHTS)
def test_layer_norm_rows(fxp, kind: str) -> None:
    rng = np.random.default_rng(6)
    x = _rows(rng, 16, 768, a=768 / 1024)
    w = fxp.quantised(rng.uniform(-3, 3, 768)) if kind != "none" else np.ones(768)
    b = fxp.quantised(rng.normal(0, 1, 768)) if kind != "none" else np.zeros(768)

    async def fn(ctx: Context, a: AShare, *secret: AShare) -> AShare:
        if secret:
            return await layer_norm(ctx, a, secret[0], secret[1], eps=EPS)
        return await layer_norm(ctx, a, w if kind == "public" else None,
                                b if kind == "public" else None, eps=EPS)

    got, ev = fxp.run(fn, x, *([w, b] if kind == "secret" else []))
    want, inv = _layer(fxp, x, w, b)
    assert np.all(np.abs(got - want) <= _tolerance(fxp, want, inv, w, centred=True))
    assert max(ev.cost(p).rounds for p in range(3)) == (8 if kind == "none" else 10)


def _switch_rows(seed: int, offset: int, low: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of 576 (units) with sum (x / 2^k)^2 = 2^44 + offset (about), and a wide copy
    at one end of its contract (floor(x' / 2^k) + {0, 1} for x' within a unit of x): the
    smallest magnitudes (low = -1), floor(x / 2^k) (0), the largest (1). The last row is
    the extreme: every wide entry a unit below x / 2^k (low = -1; 1 + 2^-k above: low = 1),
    S_w the largest sum below 2^44 (the smallest from 2^44 on)."""
    rng = np.random.default_rng(seed)
    n, k = 576, wide_shift(576, MAX_ABS, 18)
    magnitude = np.ones((4, n))
    magnitude[1::2] = rng.uniform(0.5, 1.0, (2, n))
    scale = np.sqrt((2**44 + offset) / np.sum(magnitude**2, axis=-1, keepdims=True))
    units = np.floor(magnitude * scale * 2**k).astype(np.int64)
    units *= np.where(rng.random(units.shape) < 0.5, -1, 1)
    allowed = np.stack([((units + d) >> k) + e for d in (-1, 1) for e in (0, 1)])
    pick = {-1: np.argmin, 1: np.argmax}
    wide = (units >> k if low == 0 else
            np.take_along_axis(allowed, pick[low](np.abs(allowed), axis=0)[None], 0)[0])
    if low:  # the extreme row: w and x = 2^k (w + 1) (low = -1) or 2^k (w - 1) - 1 (1)
        target = 2**44 - round(n * EPS * 2.0 ** (2 * (18 - k))) - (low < 0)
        w = np.full(n, math.isqrt(target // n), np.int64)
        for t in range(n):  # one more unit per entry while below (or until reaching) target
            total = int(np.sum(w.astype(object) ** 2))
            if total + 2 * int(w[t]) + 1 > target if low < 0 else total >= target:
                break
            w[t] += 1
        wide[3] = w
        units[3] = 2**k * (w + 1) if low < 0 else 2**k * (w - 1) - 1
    return units, wide


@settings(max_examples=8, deadline=None)
@given(st.integers(0, 2**32), st.integers(-3 * 10**8, 3 * 10**8), st.integers(-1, 1))
@example(1, 5 * 10**7, -1)  # S_w < 2^44 while S_p > 2^60: the precise path, on its extension
@example(2, -5 * 10**7, 1)  # S_w >= 2^44 while S_p < 2^60: the wide path
def test_rms_norm_at_the_switch(fxp, seed: int, offset: int, low: int) -> None:
    """Rows whose wide sum S_w lies near 2^j (j = 44, the wide path's first threshold), where
    the precise sum S_p / 2^2k differs from it by the wide copy's error (up to
    2 (1 + 2^-k) sqrt(n S_w), about 2^27.6), given the wide copy at the ends of its contract
    (as test_rms_norm_given_the_wide_copy)."""
    units, wide = _switch_rows(seed, offset, low)
    x = units * fxp.ulp
    got, _ = fxp.run(lambda ctx, a, b: rms_norm(ctx, a, eps=EPS, wide=b), x, wide * fxp.ulp)
    want, inv = _rms(fxp, x, np.ones(576))
    assert np.all(np.abs(got - want) <= _tolerance(fxp, want, inv, np.ones(576), centred=False))


@settings(max_examples=6, deadline=None)
@given(st.integers(1, 64), st.floats(-16, 16), st.integers(0, 2**32))
def test_hypothesis_rows(fxp, d: int, log2_scale: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = np.clip(rng.normal(0, 2.0**log2_scale, (3, d)), -(2.0**16), 2.0**16)
    x[1] = np.clip(x[1] * 1e3, -(2.0**16), 2.0**16)
    ones = np.ones(d)
    got, _ = fxp.run(lambda ctx, a: rms_norm(ctx, a, eps=EPS), x)
    want, inv = _rms(fxp, x, ones)
    assert np.all(np.abs(got - want) <= _tolerance(fxp, want, inv, ones, centred=False))
    got, _ = fxp.run(lambda ctx, a: layer_norm(ctx, a, eps=EPS), x)
    want, inv = _layer(fxp, x, ones, np.zeros(d))
    assert np.all(np.abs(got - want) <= _tolerance(fxp, want, inv, ones, centred=True))
