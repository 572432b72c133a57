"""What each protocol costs, declared once, as data: rounds and bytes per element.

Every entry names an op (``module.function`` under ``puma_async.protocols``) and the cases it
was measured on: input shapes (public), online rounds (critical path, the most any party
saw) and online bytes per element sent by P0, P1 and P2 together, plus an offline part:
material that depends on no input (the comparisons' dealt mask products and random bits,
:func:`.fastcmp.prepare_compare`), which ops prepare inline for now, beside their online
rounds, with its traffic counted in phase ``offline`` on a round clock of its own (it never
moves the online clock). Its rounds are the preparation's depth (2: the random bits). Costs do
not depend on the secret values, only on the public shapes and parameters, so
``tests/test_costs.py`` runs every case through :func:`puma_async.evaluate.evaluate` and
compares exactly, online and offline: rounds equal, bytes per element equal to the two
decimals declared. Each op's docstring (or its module's) must state
the rounds of its cases; the test checks that too, so the prose cannot drift from the
figures.

How the figures scale is part of each entry (``scaling``). Two effects recur: packed bits
travel in 64-bit words, so element-wise bytes are exact per element for every multiple of 64
elements; and from :data:`.trunc.ROTATE_MIN_ELEMENTS` = 12,288 elements on, truncations and
comparisons rotate their roles over three blocks, so that every party sends the same, which
makes the dealer of a truncation part of the critical path: some ops take a round more on
large inputs than on small ones (both cases are listed).

:func:`rows` yields the table (one row per case) from which the README's cost table is made.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, Literal

Shapes = tuple[tuple[int, ...], ...]
SMALL = 256
"""Elements of the small case of element-wise ops (below the rotation of roles)."""
LARGE = 12288
"""Elements of the large case (roles rotate from here on: :data:`.trunc.ROTATE_MIN_ELEMENTS`)."""


@dataclasses.dataclass(frozen=True)
class Cost:
    """Rounds and bytes per element of one phase, all three parties together."""

    rounds: int = 0
    bytes: float = 0.0


FREE = Cost()
PREPARED = 2
"""Rounds of the comparisons' offline material (the random bits' conversion)."""


@dataclasses.dataclass(frozen=True)
class Case:
    """Input shapes and what the op costs on them (online; offline: prepared ahead)."""

    shapes: Shapes
    online: Cost
    offline: Cost = FREE


@dataclasses.dataclass(frozen=True)
class OpCost:
    """An op's declared costs: ``op`` is ``module.function`` under ``puma_async.protocols``,
    called as ``function(ctx, *shares, **kwargs)`` on shares of ``case.shapes``; bytes are
    per element of the first input (``per="element"``) or of the output."""

    op: str
    cases: tuple[Case, ...]
    error: str
    scaling: str
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    variant: str = ""
    per: Literal["element", "output element"] = "element"

    def __post_init__(self) -> None:
        object.__setattr__(self, "kwargs", MappingProxyType(dict(self.kwargs)))

    @property
    def name(self) -> str:
        """The function's name, with the variant if any (``gelu (method="puma")``)."""
        function = self.op.rsplit(".", 1)[1]
        return f"{function} ({self.variant})" if self.variant else function

    def function(self) -> Callable[..., Any]:
        """The protocol function itself (imported on demand: this module imports none)."""
        module, function = self.op.rsplit(".", 1)
        fn: Callable[..., Any] = getattr(
            importlib.import_module(f"puma_async.protocols.{module}"), function
        )
        return fn


def _elementwise(rounds: int, bytes_: float, inputs: int = 1, large_rounds: int | None = None,
                 offline: float = 0.0, offline_rounds: int = PREPARED) -> tuple[Case, ...]:
    """The small and the large case of an element-wise op of ``inputs`` same-shape inputs,
    with ``offline`` bytes per element prepared ahead (``offline_rounds`` deep, 2 by default:
    :data:`PREPARED`)."""
    prepared = Cost(offline_rounds, offline) if offline else FREE
    return (
        Case(((SMALL,),) * inputs, Cost(rounds, bytes_), prepared),
        Case(((LARGE,),) * inputs, Cost(rounds if large_rounds is None else large_rounds, bytes_),
             prepared),
    )


def _silu_error(bound: int | None = None) -> str:
    """SiLU's error, and its precondition where a bound shortens the comparisons."""
    error = "1.8e-4; 2.9e-5 on [-3, 3]"
    return error if bound is None else f"{error}; for |x| <= {bound} (garbage beyond)"


def _per_value(online: Cost, offline: Cost) -> tuple[Case, ...]:
    """64 and :data:`SMALL` values of a per-value op (the reciprocals: the same per element,
    no rotation of roles below :data:`LARGE`)."""
    return tuple(Case(((n,),), online, offline) for n in (64, SMALL))


_MATMUL_SMALL: Shapes = ((16, 32), (32, 16))
_MATMUL_LARGE: Shapes = ((768, 32), (32, 16))
_LINEAR = "the same per element for any multiple of 64 elements"
_ONE_ULP = "floor or floor + 1 (1 unit) while the value truncated lies in [-2^62, 2^62)"
_RANGE = {"min_value": 0.5, "max_value": 129.0}
_SOFTMAX_ERROR = "1.7e-5 per probability; 4.1e-5 on (12, 128, 128) rows of scale 3"
TRUNC1_OFFLINE = Cost(4, 98.125)
"""TP1's tuple at f = 18 (:mod:`.trunc1`): 4 rounds deep (leaves, two tree levels, opening)."""
_TRUNC1_SCALING = ("offline per element 86.25 (f = 1), 98.13 (f = 18), 112.5 (f = 38), "
                   "131.38 (f = 60), 134.25 (f = 62): the carry tree's split at f and the "
                   "(f + 1)-bit ring of two bits; " + _LINEAR)


def _trunc1(online: float, inputs: int = 1) -> tuple[Case, ...]:
    """The small and the large case of an element-wise TP1 op (1 round, tuples inline)."""
    return tuple(Case(((n,),) * inputs, Cost(1, online), TRUNC1_OFFLINE) for n in (SMALL, LARGE))


COSTS: tuple[OpCost, ...] = (
    OpCost("trunc.truncate", _elementwise(2, 26.25), _ONE_ULP,
           "24 + f/8 bytes per element (f = bits truncated, 18 here); " + _LINEAR),
    OpCost("trunc1.truncate1", _trunc1(24.0), _ONE_ULP, "online 3 elements; " + _TRUNC1_SCALING),
    OpCost("arith.mul", _elementwise(1, 24.0, 2), "exact (in the ring)", _LINEAR),
    OpCost("arith.square", _elementwise(1, 24.0), "exact (in the ring)", _LINEAR),
    OpCost("arith.matmul", (Case(_MATMUL_SMALL, Cost(1, 24.0)), Case(_MATMUL_LARGE, Cost(1, 24.0))),
           "exact (in the ring)", "per output element, whatever the inner size",
           per="output element"),
    OpCost("arith.mul_fxp", _elementwise(2, 42.25, 2), _ONE_ULP,
           "40 + f/8 bytes per element; " + _LINEAR),
    OpCost("arith.square_fxp", _elementwise(2, 42.25), _ONE_ULP,
           "40 + f/8 bytes per element; " + _LINEAR),
    OpCost("arith.mul_fxp", _trunc1(48.0, 2), _ONE_ULP, "online 6 elements; " + _TRUNC1_SCALING,
           kwargs={"rounds": 1}, variant="rounds=1"),
    OpCost("arith.square_fxp", _trunc1(48.0), _ONE_ULP, "as mul_fxp (rounds=1)",
           kwargs={"rounds": 1}, variant="rounds=1"),
    OpCost("arith.matmul_fxp",
           (Case(_MATMUL_SMALL, Cost(2, 42.25)), Case(_MATMUL_LARGE, Cost(2, 42.25))), _ONE_ULP,
           "40 + f/8 bytes per output element, whatever the inner size", per="output element"),
    OpCost("arith.matmul_fxp",
           (Case(_MATMUL_SMALL, Cost(1, 48.0), TRUNC1_OFFLINE),
            Case(_MATMUL_LARGE, Cost(1, 48.0), TRUNC1_OFFLINE)), _ONE_ULP,
           "as mul_fxp (rounds=1) per output element, whatever the inner size",
           kwargs={"rounds": 1}, variant="rounds=1", per="output element"),
    OpCost("arith.mul_public_fxp", _elementwise(2, 26.25), _ONE_ULP,
           "a local product and a truncation: as truncate", kwargs={"c": 1.5}),
    OpCost("arith.dot_fxp",
           (Case(((SMALL, 8), (SMALL, 8)), Cost(2, 42.25)),
            Case(((LARGE, 8), (LARGE, 8)), Cost(2, 42.25))), _ONE_ULP,
           "as mul_fxp per sum, whatever the length of the sums", kwargs={"bits": 18},
           per="output element"),
    OpCost("arith.dot_fxp",
           (Case(((SMALL, 8), (SMALL, 8)), Cost(1, 48.0), TRUNC1_OFFLINE),
            Case(((LARGE, 8), (LARGE, 8)), Cost(1, 48.0), TRUNC1_OFFLINE)), _ONE_ULP,
           "as mul_fxp (rounds=1) per sum, whatever the length of the sums",
           kwargs={"bits": 18, "rounds": 1}, variant="rounds=1", per="output element"),
    OpCost("compare.is_negative", _elementwise(4, 39.125, offline=36.0),
           "exact for every ring value",
           "online 29.125 leaves + 9.5 tree + 0.5 opening; offline 12 dealt products + 24 "
           "random bit; " + _LINEAR),
    OpCost("compare.less_than", _elementwise(4, 39.125, 2, offline=36.0),
           "exact for |x - y| < 2^63", "as is_negative"),
    OpCost("compare.greater_than", _elementwise(4, 39.125, 2, offline=36.0),
           "exact for |x - y| < 2^63", "as is_negative"),
    OpCost("compare.less_than_public", _elementwise(4, 39.125, offline=36.0),
           "exact for |x - c| < 2^63", "as is_negative", kwargs={"c": 5}),
    OpCost("compare.greater_than_public", _elementwise(4, 39.125, offline=36.0),
           "exact for |x - c| < 2^63", "as is_negative", kwargs={"c": 5}),
    OpCost("compare.equal", _elementwise(4, 35.5, 2, offline=30.875), "exact",
           "online 30 leaves + 5 AND tree + 0.5 opening; offline 6.875 dealt products + 24 "
           "random bit; " + _LINEAR),
    OpCost("compare.equal_public", _elementwise(4, 35.5, offline=30.875), "exact", "as equal",
           kwargs={"c": 5}),
    OpCost("compare.relu", _elementwise(4, 63.125, offline=36.0), "exact for every ring value",
           "is_negative and one multiplication; " + _LINEAR),
    OpCost("compare.select", _elementwise(1, 24.0, 3), "exact", "one multiplication"),
    OpCost("activations.gelu", _elementwise(8, 300.88, large_rounds=9, offline=72.0), "0.0026",
           _LINEAR),
    OpCost("activations.gelu", _elementwise(8, 361.13, large_rounds=9, offline=108.0),
           "0.0199", _LINEAR, kwargs={"method": "puma"}, variant='method="puma"'),
    OpCost("activations.silu", _elementwise(6, 294.0, offline=260.0),
           _silu_error(),
           "53-bit chains (the slack's 10 bits dropped); " + _LINEAR),
    OpCost("activations.silu", _elementwise(7, 270.88, offline=72.0, offline_rounds=1),
           _silu_error(256),
           "7.75 leaves + 3 per threshold (17-bit chains: 27 bits less the slack's 10), the "
           "bits opened to the evaluators (0.25 per threshold) who exchange the selected row "
           "(64), the identity a row of the table; offline 8 per threshold (S's share of its "
           "pads' bit) + 1 dealt product; " + _LINEAR,
           kwargs={"bound": 256}, variant="bound=256"),
    OpCost("activations.silu", _elementwise(6, 260.88, offline=79.0, offline_rounds=1),
           _silu_error(128),
           "as bound=256 on 16-bit chains (26 bits less the slack's 10): 7.625 leaves + "
           "1.75 per threshold, one tree level, so the selected rows' exchange runs beside "
           "the powers' second level; offline 8 + 1.875 per threshold; " + _LINEAR,
           kwargs={"bound": 128}, variant="bound=128"),
    OpCost("activations.silu", _elementwise(9, 227.38, offline=72.0, offline_rounds=1),
           _silu_error(256),
           "as bound=256, but v^2 only (v^3 and v^4 not made: 87) and the dot product by "
           "Horner's split, A + v^2 B, B truncated apart (43.5): 2 rounds more; " + _LINEAR,
           kwargs={"bound": 256, "horner": True}, variant="bound=256, horner=True"),
    OpCost("activations.silu", _elementwise(8, 217.38, offline=79.0, offline_rounds=1),
           _silu_error(128),
           "as bound=128 by Horner's split (as bound=256, horner=True): one tree level, so "
           "8 rounds; " + _LINEAR,
           kwargs={"bound": 128, "horner": True}, variant="bound=128, horner=True"),
    OpCost("activations.silu", _elementwise(6, 208.88, offline=200.0),
           _silu_error(256),
           "7.75 leaves + 3 per threshold (17-bit chains: 27 bits less the slack's 10), the "
           "bits opened to all three and shared arithmetically offline (24 per threshold), "
           "the identity a row of the table; " + _LINEAR,
           kwargs={"bound": 256, "selection": "opened"},
           variant='bound=256, selection="opened"'),
    OpCost("activations.silu", _elementwise(8, 316.88, large_rounds=9, offline=108.0),
           "0.0719", _LINEAR, kwargs={"method": "puma"}, variant='method="puma"'),
    OpCost("exp.neg_exp", _elementwise(6, 278.38, offline=292.5), "4.5e-6 on x <= 0",
           "54-bit chains (the slack's 10 bits dropped); " + _LINEAR),
    OpCost("reciprocal.reciprocal", _per_value(Cost(4, 2709.75), Cost(4, 5435.0)),
           "relative 2.4e-6 where the output has 2^21 units (measured 2.2e-6 from 2^20); "
           "2.6e-6 + 1.5 units everywhere",
           "per octave of [min_value, max_value] three comparisons with their products and "
           "three candidates (about 300 bytes online, 600 offline: TP1 tuples); 4 rounds on "
           "both plans",
           kwargs=_RANGE, variant="x in [0.5, 129]"),
    OpCost("reciprocal.reciprocal", _per_value(Cost(5, 2586.0), Cost(2, 669.5)),
           "as with the tuples",
           "as with the tuples, but every candidate truncated in 2 rounds (no TP1 tuple): "
           "offline only the comparisons' material (669.5 instead of 5,435); 5 rounds on "
           "the direct plan",
           kwargs={**_RANGE, "tuples": False}, variant="x in [0.5, 129], tuples=False"),
    OpCost("reciprocal.rsqrt", _per_value(Cost(4, 2709.75), Cost(4, 5435.0)),
           "relative 1.3e-6 + 1.25 units",
           "per octave of [min_value, max_value] three comparisons with their products and "
           "three candidates (about 300 bytes online, 600 offline: TP1 tuples); 4 rounds on "
           "both plans",
           kwargs=_RANGE, variant="x in [0.5, 129]"),
    OpCost("softmax.max_along",
           (Case(((32, 8),), Cost(5, 1291.5), Cost(PREPARED, 648.0)),
            Case(((LARGE // 8, 8),), Cost(5, 1291.5), Cost(PREPARED, 648.0))),
           "exact for entries in [-2^62, 2^62)",
           "per row of 8 (28 pairs, 8 entries); rows of n > 17: groups of 8 first "
           "(5 rounds each)", per="output element", variant="rows of 8"),
    OpCost("softmax.matmul_max",
           (Case(((32, 16), (16, 8)), Cost(5, 166.06), Cost(PREPARED, 67.0)),
            Case(((LARGE // 8, 16), (16, 8)), Cost(5, 166.06), Cost(PREPARED, 67.0))),
           "the product: " + _ONE_ULP + "; the maximum exact on the truncated entries",
           "per output element, rows of 8: the product's 42.25 and the maximum's (chains of "
           "64 - f bits)", per="output element"),
    OpCost("softmax.softmax",
           (Case(((32, 8),), Cost(16, 586.22), Cost(4, 575.75)),
            Case(((LARGE // 8, 8),), Cost(17, 585.02), Cost(4, 563.13))),
           _SOFTMAX_ERROR, "per element, for rows of 8 (a decoding step at 8 keys)",
           variant="rows of 8"),
    OpCost("softmax.softmax",
           (Case(((8, 128),), Cost(22, 540.9), Cost(4, 423.39)),
            Case(((LARGE // 128, 128),), Cost(23, 540.14), Cost(4, 421.76))),
           _SOFTMAX_ERROR,
           "per element, for rows of 128 (groups of 8, then all pairs of 16)",
           variant="rows of 128"),
    OpCost("norms.rms_norm",
           (Case(((1, 576),), Cost(8, 111.28), Cost(4, 68.18)),
            Case(((8, 576),), Cost(8, 107.8), Cost(4, 62.37))),
           "2e-5 |y| + 4 units for |x| <= 2^16",
           "per element about 70 bytes, per row of 576 about 21 kB online and 48 kB offline "
           "(the rsqrt)"),
    OpCost("norms.rms_norm",
           (Case(((1, 576),), Cost(11, 109.69), Cost(3, 14.17)),
            Case(((8, 576),), Cost(11, 106.22), Cost(3, 13.33))),
           "2e-5 |y| + 4 units for |x| <= 2^16",
           "as with the tuples, but the rsqrt's candidates truncated in 2 rounds each (no "
           "TP1 tuple): per row of 576 about 28 kB fewer offline (7.7 kB instead of 35.9), "
           "3 rounds more",
           kwargs={"tuples": False}, variant="tuples=False"),
    OpCost("norms.layer_norm",
           (Case(((8, 768),), Cost(8, 125.83), Cost(4, 48.4)),
            Case(((16, 768),), Cost(8, 125.63), Cost(4, 47.55))),
           "2 units for sigma >= 1 (1.4e-3 at sigma = 0.001)",
           "per element about 100 bytes, per row of 768 about 19 kB online and 50 kB offline "
           "(the rsqrt)"),
)
"""Every op's declared costs (module docstring)."""


def cost(name: str) -> OpCost:
    """The entry of ``name`` (:attr:`OpCost.name`, e.g. ``"less_than"``)."""
    for entry in COSTS:
        if entry.name == name:
            return entry
    raise KeyError(f"no declared cost for {name!r}")


def elements(shapes: Shapes) -> int:
    """Elements of the first input of a case."""
    return math.prod(shapes[0])


def rows() -> Iterator[dict[str, Any]]:
    """The cost table, one row per case: op, variant, shapes, online and offline rounds and
    bytes per element (or output element), the error bound and how the cost scales."""
    for entry in COSTS:
        for case in entry.cases:
            yield {
                "op": entry.op, "name": entry.name, "shapes": case.shapes, "per": entry.per,
                "online_rounds": case.online.rounds, "online_bytes": case.online.bytes,
                "offline_rounds": case.offline.rounds, "offline_bytes": case.offline.bytes,
                "error": entry.error, "scaling": entry.scaling,
            }


__all__ = ["COSTS", "FREE", "LARGE", "PREPARED", "SMALL", "Case", "Cost", "OpCost", "cost",
           "elements", "rows"]
