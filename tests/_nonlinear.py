"""Helpers of the non-linear protocol tests: fixed-point in, evaluate, fixed-point out."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from puma_async.evaluate import Evaluation, SecureFn, evaluate
from puma_async.protocols.fixedpoint import FixedPoint

FX = FixedPoint(18)
ULP = 2.0**-18


def quantised(x: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """x as the parties see it: rounded to 18 fractional bits."""
    return FX.decode(FX.encode(x))


def run(fn: SecureFn, *xs: npt.ArrayLike, frac_out: int = 18, **kwargs: Any) -> tuple[
    npt.NDArray[np.float64], Evaluation
]:
    """fn on fixed-point encodings of xs; its (single) output decoded from ``frac_out`` bits."""
    ev = evaluate(fn, *[FX.encode(x) for x in xs], **kwargs)
    return ev.outputs[0].view(np.int64) / 2.0**frac_out, ev
