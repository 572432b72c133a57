"""Every op's declared cost (``protocols/costs.py``) is what it measurably costs, and its
docstring says so."""

from __future__ import annotations

import inspect
import math
import re

import numpy as np
import pytest

from puma_async.evaluate import evaluate
from puma_async.protocols.costs import COSTS, OpCost, cost, elements, rows
from puma_async.protocols.fixedpoint import FixedPoint
from puma_async.roles import PARTIES

FX = FixedPoint()
BYTES_PRECISION = 0.005
"""Bytes per element are declared to two decimals."""


@pytest.mark.parametrize("entry", COSTS, ids=lambda e: e.name)
def test_declared_costs_are_measured(entry: OpCost) -> None:
    fn = entry.function()
    rng = np.random.default_rng(0)
    for case in entry.cases:
        # costs do not depend on the secret values: any inputs of the case's shapes will do
        inputs = [FX.encode(rng.uniform(0.5, 2.0, shape)) for shape in case.shapes]
        ev = evaluate(fn, *inputs, **entry.kwargs)
        count = elements(case.shapes) if entry.per == "element" else ev.outputs[0].size
        for phase, declared in (("online", case.online), ("offline", case.offline)):
            totals = [ev.stats[p].totals(phase=phase, scope="op") for p in PARTIES]
            measured = sum(t.bytes_sent for t in totals) / count
            assert max(t.rounds for t in totals) == declared.rounds, (phase, case.shapes)
            assert math.isclose(measured, declared.bytes, abs_tol=BYTES_PRECISION + 1e-9), (
                phase, case.shapes, measured)


@pytest.mark.parametrize("entry", COSTS, ids=lambda e: e.name)
def test_docstrings_state_the_declared_rounds(entry: OpCost) -> None:
    fn = entry.function()
    text = " ".join(" ".join((fn.__doc__ or "", inspect.getmodule(fn).__doc__ or "")).split())
    for case in entry.cases:
        rounds = case.online.rounds
        assert re.search(rf"\b{rounds} rounds?\b", text), f"{entry.name}: {rounds} rounds"


def test_rows_cover_every_case_and_names_are_unique() -> None:
    assert len(list(rows())) == sum(len(e.cases) for e in COSTS)
    names = [e.name for e in COSTS]
    assert len(set(names)) == len(names)
    assert cost("less_than").op == "compare.less_than"
    with pytest.raises(KeyError):
        cost("no_such_op")
