"""What each protocol costs, declared once, as data: rounds and bytes per element.

Every entry names an op (``module.function`` under ``puma_async.protocols``) and the cases it
was measured on: input shapes (public), online rounds (critical path, the most any party
saw) and online bytes per element sent by P0, P1 and P2 together, plus an offline part
(material prepared before the input exists; none yet, so every offline cost is 0). Costs do
not depend on the secret values, only on the public shapes and parameters, so
``tests/test_costs.py`` runs every case through :func:`puma_async.evaluate.evaluate` and
compares exactly: rounds equal, bytes per element equal to the two decimals declared. Each
op's docstring (or its module's) must state the rounds of its cases; the test checks that
too, so the prose cannot drift from the figures.

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
                 ) -> tuple[Case, ...]:
    """The small and the large case of an element-wise op of ``inputs`` same-shape inputs."""
    return (
        Case(((SMALL,),) * inputs, Cost(rounds, bytes_)),
        Case(((LARGE,),) * inputs, Cost(rounds if large_rounds is None else large_rounds, bytes_)),
    )


_MATMUL_SMALL: Shapes = ((16, 32), (32, 16))
_MATMUL_LARGE: Shapes = ((768, 32), (32, 16))
_LINEAR = "the same per element for any multiple of 64 elements"
_ONE_ULP = "floor or floor + 1 (1 unit) while the value truncated lies in [-2^62, 2^62)"
_RANGE = {"min_value": 0.5, "max_value": 129.0}
_SOFTMAX_ERROR = "1.7e-5 per probability; 4.1e-5 on (12, 128, 128) rows of scale 3"

COSTS: tuple[OpCost, ...] = (
    OpCost("trunc.truncate", _elementwise(2, 26.25), _ONE_ULP,
           "24 + f/8 bytes per element (f = bits truncated, 18 here); " + _LINEAR),
    OpCost("arith.mul", _elementwise(1, 24.0, 2), "exact (in the ring)", _LINEAR),
    OpCost("arith.square", _elementwise(1, 24.0), "exact (in the ring)", _LINEAR),
    OpCost("arith.matmul", (Case(_MATMUL_SMALL, Cost(1, 24.0)), Case(_MATMUL_LARGE, Cost(1, 24.0))),
           "exact (in the ring)", "per output element, whatever the inner size",
           per="output element"),
    OpCost("arith.mul_fxp", _elementwise(2, 42.25, 2), _ONE_ULP,
           "40 + f/8 bytes per element; " + _LINEAR),
    OpCost("arith.square_fxp", _elementwise(2, 42.25), _ONE_ULP,
           "40 + f/8 bytes per element; " + _LINEAR),
    OpCost("arith.matmul_fxp",
           (Case(_MATMUL_SMALL, Cost(2, 42.25)), Case(_MATMUL_LARGE, Cost(2, 42.25))), _ONE_ULP,
           "40 + f/8 bytes per output element, whatever the inner size", per="output element"),
    OpCost("arith.mul_public_fxp", _elementwise(2, 26.25), _ONE_ULP,
           "a local product and a truncation: as truncate", kwargs={"c": 1.5}),
    OpCost("arith.dot_fxp",
           (Case(((SMALL, 8), (SMALL, 8)), Cost(2, 42.25)),
            Case(((LARGE, 8), (LARGE, 8)), Cost(2, 42.25))), _ONE_ULP,
           "as mul_fxp per sum, whatever the length of the sums", kwargs={"bits": 18},
           per="output element"),
    OpCost("compare.is_negative", _elementwise(8, 66.25), "exact for every ring value",
           "41.9 MSB + 24 random bit + 3 bits opened; " + _LINEAR),
    OpCost("compare.less_than", _elementwise(8, 66.25, 2), "exact for |x - y| < 2^63",
           "as is_negative"),
    OpCost("compare.greater_than", _elementwise(8, 66.25, 2), "exact for |x - y| < 2^63",
           "as is_negative"),
    OpCost("compare.less_than_public", _elementwise(8, 66.25), "exact for |x - c| < 2^63",
           "as is_negative", kwargs={"c": 5}),
    OpCost("compare.greater_than_public", _elementwise(8, 66.25), "exact for |x - c| < 2^63",
           "as is_negative", kwargs={"c": 5}),
    OpCost("compare.equal", _elementwise(8, 56.0, 2), "exact",
           "31.6 zero test + 24 random bit + 3 bits opened; " + _LINEAR),
    OpCost("compare.equal_public", _elementwise(8, 56.0), "exact", "as equal", kwargs={"c": 5}),
    OpCost("compare.relu", _elementwise(8, 90.25), "exact for every ring value",
           "is_negative and one multiplication; " + _LINEAR),
    OpCost("compare.select", _elementwise(1, 24.0, 3), "exact", "one multiplication"),
    OpCost("activations.gelu", _elementwise(8, 384.25, large_rounds=9), "0.0026", _LINEAR),
    OpCost("activations.gelu", _elementwise(8, 503.25, large_rounds=9), "0.0199", _LINEAR,
           kwargs={"method": "puma"}, variant='method="puma"'),
    OpCost("activations.silu", _elementwise(10, 617.38), "1.8e-4; 3.3e-5 on [-3, 3]", _LINEAR),
    OpCost("activations.silu", _elementwise(8, 458.75, large_rounds=9), "0.0719", _LINEAR,
           kwargs={"method": "puma"}, variant='method="puma"'),
    OpCost("exp.neg_exp", _elementwise(13, 353.38), "4.7e-6 on x <= 0", _LINEAR),
    OpCost("reciprocal.reciprocal",
           (Case(((64,),), Cost(17, 861.75)), Case(((SMALL,),), Cost(17, 861.75))),
           "relative 2.6e-6 where the output has 2^20 units; 5e-6 + 2 units everywhere",
           "66.25 bytes per octave of [min_value, max_value] and 8 fused products; "
           "18 rounds where the range reaches 2^f (2,857 bytes for [2^-18, 2^20])",
           kwargs=_RANGE, variant="x in [0.5, 129]"),
    OpCost("reciprocal.rsqrt",
           (Case(((64,),), Cost(8, 4198.25)), Case(((SMALL,),), Cost(8, 4198.25))),
           "relative 1.3e-6 + 1.25 units",
           "477 bytes per octave of [min_value, max_value] (18,493 for [2^-18, 2^20])",
           kwargs=_RANGE, variant="x in [0.5, 129]"),
    OpCost("softmax.max_along",
           (Case(((32, 8),), Cost(11, 1577.5)), Case(((LARGE // 8, 8),), Cost(11, 1577.5))),
           "exact for entries in [-2^62, 2^62)",
           "per row of 8 (28 comparisons); rows of n > 8: halving levels of 8 rounds first",
           per="output element", variant="rows of 8"),
    OpCost("softmax.softmax",
           (Case(((32, 8),), Cost(43, 668.75)), Case(((LARGE // 8, 8),), Cost(43, 668.75))),
           _SOFTMAX_ERROR, "per element, for rows of 8 (a decoding step at 8 keys)",
           variant="rows of 8"),
    OpCost("softmax.softmax",
           (Case(((8, 128),), Cost(73, 502.31)), Case(((LARGE // 128, 128),), Cost(73, 501.0))),
           _SOFTMAX_ERROR,
           "per element, for rows of 128; 75 rounds from 12,288 comparisons per level "
           "(12 x 128 rows of 128)", variant="rows of 128"),
    OpCost("norms.rms_norm",
           (Case(((1, 576),), Cost(13, 114.8)), Case(((8, 576),), Cost(13, 111.87))),
           "2e-5 |y| + 4 units for |x| <= 2^16",
           "per element about 70 bytes, per row of 576 about 24 kB (the rsqrt); "
           "14 rounds where truncations rotate"),
    OpCost("norms.layer_norm",
           (Case(((8, 768),), Cost(13, 129.31)), Case(((16, 768),), Cost(14, 129.31))),
           "2 units for sigma >= 1 (1.4e-3 at sigma = 0.001)",
           "per element about 100 bytes, per row of 768 about 24 kB (the rsqrt)"),
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


__all__ = ["COSTS", "FREE", "LARGE", "SMALL", "Case", "Cost", "OpCost", "cost", "elements",
           "rows"]
