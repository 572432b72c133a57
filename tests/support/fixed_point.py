"""Fixed point in, a secure function, fixed point out: the ``fxp`` fixture."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from puma_async.protocols.fixedpoint import FixedPoint


class FixedPointRuns:
    """Runs a secure function on the 18-bit fixed-point encodings of float inputs, through
    the ``evaluate`` fixture (whose ``Evaluation`` it returns beside the decoded output).

    ``fx``: the format; ``ulp``: one unit in its last place.
    """

    fx = FixedPoint(18)
    ulp = 2.0**-18

    def __init__(self, evaluate: Callable[..., Any]):
        self._evaluate = evaluate

    def quantised(self, x: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """x as the parties see it: rounded to 18 fractional bits."""
        return self.fx.decode(self.fx.encode(x))

    def run(self, fn: Callable[..., Any], *xs: npt.ArrayLike, frac_out: int = 18,
            **kwargs: Any) -> tuple[npt.NDArray[np.float64], Any]:
        """fn on the encodings of xs; its (single) output decoded from ``frac_out`` bits, and
        the evaluation (costs, every output)."""
        ev = self._evaluate(fn, *[self.fx.encode(x) for x in xs], **kwargs)
        return ev.outputs[0].view(np.int64) / 2.0**frac_out, ev
