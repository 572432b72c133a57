"""GeLU and SiLU (accurate and PUMA methods) against float64 numpy; GeLU's round overlap."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from puma_async.context import Context
from puma_async.errors import RunFailedError
from puma_async.protocols.activations import (
    APPROXIMATIONS,
    MIN_ROW_FRAC,
    SILU_ACCURATE,
    Selection,
    gelu,
    piece_values,
    silu,
    table_compare_spec,
)
from puma_async.protocols.compare import is_negative
from puma_async.protocols.evaluators import EvaluatorCompare, prepare_evaluator_compare
from puma_async.protocols.exp import NEG_EXP
from puma_async.protocols.fastcmp import bounded_bits, prepare_compare
from puma_async.protocols.fixedpoint import FixedPoint
from puma_async.protocols.shares import AShare, concatenate, stack

_erf = np.vectorize(math.erf)
EXACT = {
    "gelu": lambda x: 0.5 * x * (1 + _erf(x / math.sqrt(2))),
    "silu": lambda x: x * 0.5 * (1 + np.tanh(x / 2)),
}
FUNCTIONS = {"gelu": gelu, "silu": silu}
# documented max errors (approximation on the real line) + 1e-4 for fixed-point rounding
MAX_ERROR = {
    ("gelu", "accurate"): 0.0027, ("gelu", "puma"): 0.0201,
    ("silu", "accurate"): 2e-4, ("silu", "puma"): 0.0721,
}
CASES = sorted(MAX_ERROR)


def _fn(name: str, method: str):
    async def fn(ctx: Context, x: AShare) -> AShare:
        return await FUNCTIONS[name](ctx, x, method=method)  # type: ignore[arg-type]

    return fn


def _inputs() -> np.ndarray:
    breakpoints = [t for spec in APPROXIMATIONS.values() for t in spec.breakpoints]
    near = [t + d for t in breakpoints for d in (-2**-18, 0.0, 2**-18)]
    huge = [-2.0**16, 2.0**16, -22500.0, 22500.0, -1e3, 1e3, -2.0**20, 2.0**20]
    return np.concatenate([np.linspace(-16, 16, 64001), near, huge])


@pytest.mark.parametrize(("name", "method"), CASES)
def test_dense_grid(fxp, name: str, method: str) -> None:
    x = _inputs()
    got, _ = fxp.run(_fn(name, method), x)
    err = np.abs(got - EXACT[name](fxp.quantised(x)))
    assert err.max() <= MAX_ERROR[name, method]


def test_accurate_silu_beats_puma_by_far() -> None:
    assert MAX_ERROR["silu", "accurate"] <= 0.01 < MAX_ERROR["silu", "puma"]


@pytest.mark.parametrize(("bound", "selection", "horner", "rounds", "most_bytes"), [
    (None, "evaluators", False, 6, 560), (256, "evaluators", False, 7, 343),
    (256, "opened", False, 6, 409), (128, "evaluators", False, 6, 341),
    (256, "evaluators", True, 9, 300), (128, "evaluators", True, 8, 297),
    (None, "evaluators", True, 6, 560)])
def test_accurate_silu_near_zero_and_its_cost(fxp, bound: int | None, selection: Selection,
                                              horner: bool, rounds: int, most_bytes: int
                                              ) -> None:
    """Where a SwiGLU's gates mostly are, [-3, 3]: within 3.3e-5 (documented 2.9e-5) also with
    the bound's coefficients at 25 bits; 6 rounds; with the bound's bits opened to the
    evaluators (:mod:`.evaluators`, 66 bytes per element fewer than opened to all three) 7
    where the comparisons' tree has 2 levels (2^8: 17-bit chains), 6 where it has one (2^7:
    16 bits), the rows' exchange then beside the powers (without a bound the table lacks the
    identity: opened to all). By Horner's split (v^2 only: 43.5 bytes fewer) 2 rounds more
    after the exchange; without a bound, no evaluators, so no Horner either."""
    x = np.linspace(-3, 3, 60001)
    got, ev = fxp.run(_bounded_silu(bound, selection, horner), x)
    assert np.max(np.abs(got - EXACT["silu"](fxp.quantised(x)))) <= 3.3e-5
    assert ev.cost(0).rounds == rounds
    offline = sum(ev.stats[p].totals(phase="offline").bytes_sent for p in range(3))
    assert (ev.bytes_all_parties() + offline) / x.size < most_bytes


@settings(max_examples=5, deadline=None)
@given(st.lists(st.floats(-2.0**16, 2.0**16), min_size=1, max_size=200))
def test_hypothesis_samples(fxp, xs: list[float]) -> None:
    x = np.array(xs)
    for name, method in CASES:
        got, _ = fxp.run(_fn(name, method), x)
        assert np.max(np.abs(got - EXACT[name](fxp.quantised(x)))) <= MAX_ERROR[name, method]


@pytest.mark.parametrize("method", ["accurate", "puma"])
def test_gelu_rounds_are_those_of_its_longest_branch(fxp, method: str) -> None:
    """Comparisons and polynomials overlap: rounds = max(comparisons, polynomials + 1), the 1
    being the selection's multiplication (it runs alongside the comparison's last round)."""
    spec = APPROXIMATIONS["gelu", method]
    x = np.linspace(-5, 5, 256)

    async def comparisons(ctx: Context, a: AShare) -> AShare:
        return await is_negative(ctx, stack([a] * len(spec.breakpoints)))

    async def polynomials(ctx: Context, a: AShare) -> list[AShare]:
        return await piece_values(ctx, a, spec)

    rounds = {
        name: fxp.run(fn, x)[1].cost(0).rounds
        for name, fn in [("gelu", _fn("gelu", method)), ("comparisons", comparisons),
                         ("polynomials", polynomials)]
    }
    assert rounds["gelu"] == max(rounds["comparisons"], rounds["polynomials"] + 1), rounds
    assert rounds["gelu"] < rounds["comparisons"] + rounds["polynomials"], rounds


def test_silu_coefficients_at_fewer_bits_lose_little() -> None:
    """The table's coefficients rounded to MIN_ROW_FRAC..27 bits (a bound's identity row takes
    the room: 25 bits for 2^8) move each piece by at most 2^-(frac+1) sum_k (11/8)^k (3.1e-7 at
    24 bits), far below the fit's 2.9e-5: float64 on 20,001 points of every interval."""
    t, spec = SILU_ACCURATE.breakpoints, SILU_ACCURATE
    for frac in range(MIN_ROW_FRAC, spec.coefficient_frac + 1):
        bound = 2.0 ** -(frac + 1) * sum((11 / 8) ** k for k in range(spec.degree + 1))
        for i, row in enumerate(spec.coefficients):
            v = np.linspace(t[i], t[i + 1], 20001) / spec.scale
            exact = np.polyval(row[::-1], v)
            rounded = np.polyval([round(c * 2.0**frac) / 2.0**frac for c in row[::-1]], v)
            assert np.max(np.abs(rounded - exact)) <= bound <= 3.2e-7, (frac, i)


def test_silu_pieces_hold_across_their_slack() -> None:
    """Every piece of the SiLU table meets the fit's targets (2.6e-5 on [-3, 3], 1.55e-4
    elsewhere, each raised by less than 1% by the slack: 2.62e-5 and 1.56e-4) on its interval
    extended by the slack, in float64 on 20,001 points; the zero
    row below -11 stays within the tail's 1.85e-4 there. The comparisons may then drop 10
    bits at 18 fractional bits, none where the slack is below one unit (negExp's table has
    the same slack)."""
    t, spec = SILU_ACCURATE.breakpoints, SILU_ACCURATE
    for i, row in enumerate(spec.coefficients):
        x = np.linspace(t[i], t[i + 1] + spec.slack, 20001)
        error = np.abs(np.polyval(row[::-1], x / spec.scale) - EXACT["silu"](x))
        assert np.max(error) <= 1.56e-4 and np.max(error[np.abs(x) <= 3], initial=0) <= 2.62e-5, i
    assert np.max(np.abs(EXACT["silu"](np.linspace(t[0], t[0] + spec.slack, 101)))) <= 1.85e-4
    assert [spec.dropped_bits(f) for f in (18, 12, 8, 7)] == [10, 4, 0, 0]
    assert NEG_EXP.dropped_bits(18) == 10


def _bounded_silu(bound: float | None, selection: Selection = "evaluators",
                  horner: bool = False) -> Any:
    async def fn(ctx: Context, x: AShare) -> AShare:
        return await silu(ctx, x, bound=bound, selection=selection, horner=horner)

    return fn


def _exact_region(bound: float) -> float:
    """Where the bounded SiLU's comparisons are all exact: x - t and x - t - slack in
    [-2^(L-18), 2^(L-18)) for every threshold (L = chain bits; the slack: the carry of the
    dropped bits), i.e. -(E - slack) <= x < E with E = 2^(L-18) - 11, beyond the bound."""
    t = FixedPoint(18).encode(SILU_ACCURATE.breakpoints)
    return 2.0 ** (bounded_bits(bound + SILU_ACCURATE.slack, t, 18) - 1 - 18) - 11


@pytest.mark.parametrize(("selection", "horner"), [
    ("evaluators", False), ("opened", False), ("evaluators", True)])
@pytest.mark.parametrize("bound", [32, 256, 1024])
def test_bounded_silu_is_exact_within_its_bound(fxp, bound: int, selection: Selection,
                                                horner: bool) -> None:
    """Near every threshold (and across the slack above it, where the comparisons ignore
    x's low bits), on a grid of [-B, B] and at +-B: the unbounded SiLU's error, and exactly x
    from 11 + slack on (the table's identity row up to 2^9; 2^10 leaves it no room: the
    product apart, as without a bound), with the bits opened either way, and by Horner's
    split."""
    slack = SILU_ACCURATE.slack
    band = np.linspace(0.0, slack, 65)
    near = [t + d for t in SILU_ACCURATE.breakpoints for d in (-2**-18, *band, slack + 2**-18)]
    edges = [-bound, -bound + 2**-18, bound - 2**-18, bound]
    x = fxp.quantised(np.concatenate([np.linspace(-bound, bound, 20001), near, edges]))
    got, _ = fxp.run(_bounded_silu(bound, selection, horner), x)
    assert np.max(np.abs(got - EXACT["silu"](x))) <= MAX_ERROR["silu", "accurate"]
    assert np.array_equal(got[x >= 11 + slack], x[x >= 11 + slack])


@settings(max_examples=10, deadline=None)
@given(st.sampled_from([32, 64, 128, 256, 1024]), st.lists(
    st.one_of(st.floats(-1.0, 1.0), st.sampled_from(SILU_ACCURATE.breakpoints),
              st.floats(-11.5, 11.5)), min_size=1, max_size=100),
       st.floats(-1.0, 1.0), st.sampled_from(["evaluators", "opened"]), st.booleans())
def test_bounded_silu_hypothesis(fxp, bound: int, xs: list[float], edge: float,
                                 selection: Selection, horner: bool) -> None:
    """Values near the thresholds and near +-B (scaled from [-1, 1]), the bits opened
    either way, by Horner's split or not: the documented error."""
    x = np.array([*xs, edge * bound, math.copysign(bound, edge)])
    got, _ = fxp.run(_bounded_silu(bound, selection, horner), x)
    assert np.max(np.abs(got - EXACT["silu"](fxp.quantised(x)))) <= MAX_ERROR["silu", "accurate"]
    above = fxp.quantised(x) >= 11 + SILU_ACCURATE.slack
    assert np.array_equal(got[above], fxp.quantised(x)[above])


def test_bounded_silu_is_garbage_only_outside_its_exact_region(fxp) -> None:
    """Bound 2^8: exact on [-(501 - slack), 501), 501 = 2^9 - 11 (beyond the bound: the
    chain's power of two; the identity row's x 2^53 too), wrong from 501 + slack on and below
    -501 (a comparison's x - t, less the dropped bits' carry, reaches 2^9); in between it
    depends on that carry."""
    edge, slack = _exact_region(256), SILU_ACCURATE.slack
    assert edge == 501
    inside = np.array([-edge + slack, -edge + slack + 2**-18, 300.0, -300.0, edge - 2**-18])
    got, _ = fxp.run(_bounded_silu(256), inside)
    assert np.max(np.abs(got - EXACT["silu"](fxp.quantised(inside)))) <= MAX_ERROR["silu",
                                                                                   "accurate"]
    for outside in (edge + slack, -edge - 2**-18, 1000.0, -1000.0):
        got, _ = fxp.run(_bounded_silu(256), np.array([outside]))
        assert abs(got[0] - EXACT["silu"](np.array([outside]))[0]) > 1.0, outside


@settings(max_examples=6, deadline=None)
@given(st.lists(st.lists(st.one_of(st.floats(-11.5, 11.5),
                                   st.sampled_from(SILU_ACCURATE.breakpoints)),
                         min_size=1, max_size=40), min_size=1, max_size=3),
       st.sampled_from([128, 256, 1024]), st.sampled_from(["evaluators", "opened"]))
def test_silu_given_slices_of_one_batch_of_material(fxp, rows: list[list[float]], bound: int,
                                                    selection: Selection) -> None:
    """Several SiLUs given slices of one batch of their comparisons' material, made for the
    selection each makes (:func:`.activations.table_compare_spec`: the evaluators' with
    :func:`.evaluators.prepare_evaluator_compare`; a bound of 2^10 leaves the identity no
    room in the table, so its bits are opened to all three), as a pass's layers get theirs:
    the documented error, and no offline message of their own; the slices' packed pads
    tile the batch's."""
    x = np.concatenate([np.array(r) for r in rows])

    async def fn(ctx: Context, a: AShare) -> AShare:
        made = []
        for r in rows:
            spec, by_evaluators = table_compare_spec(ctx, len(r), SILU_ACCURATE, bound,
                                                     selection)
            made.append((spec, by_evaluators))
        prepare = prepare_evaluator_compare if made[0][1] else prepare_compare
        batch = await prepare(ctx, dataclasses.replace(made[0][0], size=x.size))
        stops = np.cumsum([len(r) for r in rows]).tolist()
        pieces = batch.split([(a, b, -1) for a, b in zip([0, *stops[:-1]], stops, strict=True)])
        out, start = [], 0
        for r, pre in zip(rows, pieces, strict=True):
            if made[0][1]:
                _assert_pads_tile(batch, pre, start)
            with ctx.scope("online"):
                out.append(await silu(ctx, a[start : start + len(r)], bound=bound,
                                      selection=selection, pre=pre))
            start += len(r)
        return concatenate(out)

    got, ev = fxp.run(fn, x)
    assert np.max(np.abs(got - EXACT["silu"](fxp.quantised(x)))) <= MAX_ERROR["silu", "accurate"]
    assert all(ev.stats[p].totals(phase="offline", scope="op.online").messages_sent == 0
               for p in range(3))


def _assert_pads_tile(batch: EvaluatorCompare, piece: EvaluatorCompare, start: int) -> None:
    """The piece's pads and shares are the batch's columns from ``start`` on."""
    for whole, part in zip(batch.evaluators, piece.evaluators, strict=True):
        if whole.shares is None:
            assert part.shares is None and part.pads is None
            continue
        rows, size = part.shares.shape
        np.testing.assert_array_equal(part.shares, whole.shares[:, start : start + size])
        bits = np.unpackbits(whole.pads.view(np.uint8), bitorder="little")
        mine = np.unpackbits(part.pads.view(np.uint8), bitorder="little")[: rows * size]
        wide = bits[: rows * whole.shares.shape[1]].reshape(rows, -1)
        np.testing.assert_array_equal(mine.reshape(rows, size),
                                      wide[:, start : start + size])


def test_silu_refuses_material_for_the_other_selection(fxp) -> None:
    async def fn(ctx: Context, a: AShare) -> AShare:
        spec, by_evaluators = table_compare_spec(ctx, a.size, SILU_ACCURATE, 128, "evaluators")
        assert by_evaluators
        return await silu(ctx, a, bound=128, selection="opened",
                          pre=await prepare_evaluator_compare(ctx, spec))

    with pytest.raises(RunFailedError, match="made for the other selection"):
        fxp.run(fn, np.zeros(5))
