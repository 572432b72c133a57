"""Benchmark secure operations: time, bytes (all parties together) and rounds.

A registry of named benchmarks (:data:`BENCHMARKS`, add one with :func:`benchmark`); each runs
its op with the three parties and the client in one process (in-memory transport, no
latency) through :func:`~puma_async.evaluate.evaluate` and reports the op alone:
seconds from the first party entering it to the last one leaving it (best of ``--repeats``,
and the median of them: this shared machine's load swings), payload bytes sent by P0, P1 and
P2 together and rounds (critical path) online, and the same of the offline part (correlated
randomness a party deals ahead; these bytes cross the network too). Where SPU 0.9.5 (PUMA's
implementation) was measured on the same op and inputs (``benchmarks/measure_spu.py`` ->
``benchmarks/results/spu.json``; same setting: three parties in one process), its figures are
printed and recorded beside ours, with that file's name and date. A 10^7-step Python loop is
timed first and recorded, to tell a busy host from a slow change.

    python benchmarks/ops.py [--only NAME ...] [--repeats N] [--out PATH]

Results go to ``benchmarks/results/ops.json`` (merged: ``--only`` updates its entries and keeps
the others).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import reporting

from puma_async.context import Context
from puma_async.evaluate import OP_SCOPE, Evaluation, SecureFn, evaluate
from puma_async.protocols import compare
from puma_async.protocols.activations import gelu, silu
from puma_async.protocols.arith import matmul_fxp, mul_fxp
from puma_async.protocols.fixedpoint import FixedPoint
from puma_async.protocols.norms import layer_norm, rms_norm
from puma_async.protocols.ringmatmul import ring_matmul
from puma_async.protocols.shares import AShare
from puma_async.protocols.softmax import softmax
from puma_async.roles import PARTIES

_erf = np.vectorize(math.erf)
Result = dict[str, Any]


@dataclass(frozen=True)
class Benchmark:
    """A named benchmark: ``run(repeats)`` returns its figures."""

    name: str
    description: str
    run: Callable[[int], Result]


BENCHMARKS: dict[str, Benchmark] = {}


def benchmark(
    name: str, description: str
) -> Callable[[Callable[[int], Result]], Callable[[int], Result]]:
    """Decorator: register ``run(repeats) -> figures`` under ``name``."""

    def register(run: Callable[[int], Result]) -> Callable[[int], Result]:
        if name in BENCHMARKS:
            raise ValueError(f"benchmark {name!r} registered twice")
        BENCHMARKS[name] = Benchmark(name, description, run)
        return run

    return register


def measure_op(fn: SecureFn, *inputs: np.ndarray, repeats: int) -> tuple[Result, Evaluation]:
    """Run ``fn`` on secret-shared ``inputs`` ``repeats`` times; figures of the fastest run,
    and the median time of all runs."""
    spans: dict[int, tuple[float, float]] = {}

    async def timed(ctx: Context, *shares: Any) -> Any:
        start = time.perf_counter()
        out = await fn(ctx, *shares)
        spans[ctx.role] = (start, time.perf_counter())
        return out

    best: tuple[float, Evaluation] | None = None
    times = []
    for _ in range(repeats):
        spans.clear()
        e = evaluate(timed, *inputs)
        seconds = max(s[1] for s in spans.values()) - min(s[0] for s in spans.values())
        times.append(seconds)
        if best is None or seconds < best[0]:
            best = (seconds, e)
    assert best is not None
    seconds, e = best
    return {
        "seconds": seconds,
        "median_seconds": statistics.median(times),
        "bytes_all_parties": e.bytes_all_parties(),
        "bytes_per_party": [e.cost(p).bytes_sent for p in range(3)],
        "rounds": max(e.cost(p).rounds for p in range(3)),
        "messages_p0": e.cost(0).messages_sent,
        **offline_figures(e),
    }, e


def offline_figures(e: Evaluation) -> Result:
    """The op's offline part (correlated randomness dealt ahead): rounds and bytes of P0-P2."""
    offline = [e.stats[p].totals(phase="offline", scope=OP_SCOPE) for p in PARTIES]
    return {"offline_rounds": max(c.rounds for c in offline),
            "offline_bytes_all_parties": sum(c.bytes_sent for c in offline)}


def _max_ulp_error(got: np.ndarray, exact_scaled: np.ndarray) -> float:
    return float(np.max(np.abs(got.view(np.int64) - exact_scaled))) if got.size else 0.0


@benchmark(
    "matmul_fxp_128x768x768",
    "secret x secret (128x768)@(768x768) fixed-point matmul with truncation",
)
def bench_matmul_fxp(repeats: int) -> Result:
    fx = FixedPoint()
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, (128, 768))
    w = rng.uniform(-0.1, 0.1, (768, 768))
    xe, we = fx.encode(x), fx.encode(w)
    result, e = measure_op(matmul_fxp, xe, we, repeats=repeats)
    exact = xe.view(np.int64) @ we.view(np.int64)  # |sum| < 2^62: int64 exact
    result["max_error_ulp"] = _max_ulp_error(e.outputs[0], exact >> fx.frac_bits)
    return result


@benchmark("mul_fxp_1e6", "10^6 fixed-point multiplications with truncation")
def bench_mul_fxp(repeats: int) -> Result:
    fx = FixedPoint()
    rng = np.random.default_rng(1)
    n = 10**6
    x, y = fx.encode(rng.normal(0, 100, n)), fx.encode(rng.normal(0, 100, n))
    result, e = measure_op(mul_fxp, x, y, repeats=repeats)
    exact = (x.view(np.int64) * y.view(np.int64)) >> fx.frac_bits
    result["max_error_ulp"] = _max_ulp_error(e.outputs[0], exact)
    result["per_second"] = n / result["seconds"]
    return result


CHAIN_STEPS = 100
"""Dependent products in a chain benchmark: a step's cost, not its arithmetic."""


def _bench_product_chain(width: int, repeats: int) -> Result:
    """:data:`CHAIN_STEPS` dependent fixed-point products of one row (1, ``width``), each
    waiting for the last: what a new token's sequential steps cost per step (its rows are
    576-1536 elements wide), and ``seconds_per_product``. Error in ulps against float64 on
    the encoded inputs: each truncation adds at most 1 and |y| <= 1 scales the earlier ones
    down, so at most :data:`CHAIN_STEPS`."""
    fx = FixedPoint()
    rng = np.random.default_rng(4)
    x, y = fx.encode(rng.uniform(-2, 2, (1, width))), fx.encode(rng.uniform(0.98, 1.0, width))

    async def chain(ctx: Context, a: AShare, b: AShare) -> AShare:
        for _ in range(CHAIN_STEPS):
            a = await mul_fxp(ctx, a, b)
        return a

    result, e = measure_op(chain, x, y, repeats=repeats)
    exact = fx.decode(x) * fx.decode(y) ** CHAIN_STEPS
    result["max_error_ulp"] = float(np.max(np.abs(fx.decode(e.outputs[0]) - exact))
                                    * 2**fx.frac_bits)
    result["seconds_per_product"] = result["seconds"] / CHAIN_STEPS
    return result


@benchmark(f"mul_fxp_chain_{CHAIN_STEPS}x576",
           f"{CHAIN_STEPS} dependent fixed-point products of one row (1, 576), in sequence")
def bench_chain_576(repeats: int) -> Result:
    return _bench_product_chain(576, repeats)


@benchmark(f"mul_fxp_chain_{CHAIN_STEPS}x4608",
           f"{CHAIN_STEPS} dependent fixed-point products of one row (1, 4608), in sequence")
def bench_chain_4608(repeats: int) -> Result:
    return _bench_product_chain(4608, repeats)


def _comparison_inputs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Uniform pairs in [-2^62, 2^62], a quarter equal and a quarter off by one."""
    rng = np.random.default_rng(3)
    x = rng.integers(-(2**62), 2**62, n, endpoint=True)
    y = rng.integers(-(2**62), 2**62, n, endpoint=True)
    y[::4] = x[::4]
    y[1::4] = x[1::4] + 1
    return x, y


@benchmark(
    "less_than_1e6",
    "10^6 secret < secret comparisons (a quarter equal, a quarter off by one)",
)
def bench_less_than(repeats: int) -> Result:
    x, y = _comparison_inputs(10**6)
    result, e = measure_op(compare.less_than, x, y, repeats=repeats)
    result["wrong"] = int(np.count_nonzero(e.outputs[0] != (x < y)))
    return result


@benchmark("equal_1e6", "10^6 secret == secret tests (a quarter equal)")
def bench_equal(repeats: int) -> Result:
    x, y = _comparison_inputs(10**6)
    result, e = measure_op(compare.equal, x, y, repeats=repeats)
    result["wrong"] = int(np.count_nonzero(e.outputs[0] != (x == y)))
    return result


@benchmark("ring_matmul_rate", "local exact ring matmul (128x1536)@(1536x768), one call")
def bench_ring_matmul(repeats: int) -> Result:
    rng = np.random.default_rng(2)
    m, k, n = 128, 1536, 768  # the shape one party multiplies in the matmul benchmark
    a = rng.integers(0, 2**64, (m, k), dtype=np.uint64, endpoint=False)
    b = rng.integers(0, 2**64, (k, n), dtype=np.uint64, endpoint=False)
    ring_matmul(a, b)  # warm-up
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        ring_matmul(a, b)
        runs.append(time.perf_counter() - start)
    return {"seconds": min(runs), "gmacs_per_second": m * k * n / min(runs) / 1e9}


# ---------------------------------------------------------------------------- non-linear


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1 + _erf(x / math.sqrt(2)))


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1 + np.exp(-x))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _rms(x: np.ndarray) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-5)


def _layer(x: np.ndarray) -> np.ndarray:
    c = x - x.mean(axis=-1, keepdims=True)
    return c / np.sqrt(np.mean(c * c, axis=-1, keepdims=True) + 1e-5)


def _normal(scale: float) -> Callable[[np.random.Generator, tuple[int, ...]], np.ndarray]:
    return lambda rng, shape: rng.normal(0, scale, shape)


def _residual_rows(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Residual-stream-like rows; the first carries a massive activation (SmolLM2: ~22,500)."""
    x = rng.normal(0, 1.0, shape)
    x[0, 0] = 22_500.0
    return x


def _with_method(fn: Callable[..., Any], method: str) -> SecureFn:
    async def op(ctx: Context, x: Any) -> Any:
        return await fn(ctx, x, method=method)

    return op


_NONLINEAR = [
    ("gelu_puma", (128, 3072), _with_method(gelu, "puma"), _normal(2.0), _gelu),
    ("gelu", (128, 3072), _with_method(gelu, "accurate"), _normal(2.0), _gelu),
    ("softmax", (12, 128, 128), softmax, _normal(3.0), _softmax),
    ("silu_puma", (8, 1536), _with_method(silu, "puma"), _normal(3.0), _silu),
    ("silu", (8, 1536), _with_method(silu, "accurate"), _normal(3.0), _silu),
    ("silu", (128, 1536), _with_method(silu, "accurate"), _normal(3.0), _silu),
    ("rms_norm", (8, 576), rms_norm, _residual_rows, _rms),
    ("layer_norm", (128, 768), layer_norm, _residual_rows, _layer),
]


def _register_nonlinear(
    name: str, shape: tuple[int, ...], op: SecureFn,
    inputs: Callable[[np.random.Generator, tuple[int, ...]], np.ndarray],
    reference: Callable[[np.ndarray], np.ndarray],
) -> None:
    fx = FixedPoint()

    @benchmark(f"{name}_{'x'.join(map(str, shape))}", f"{name} on {shape}")
    def run(repeats: int) -> Result:
        x = fx.encode(inputs(np.random.default_rng(0), shape))
        result, e = measure_op(op, x, repeats=repeats)
        error = np.abs(fx.decode(e.outputs[0]) - reference(fx.decode(x)))
        result["max_abs_error"] = float(error.max())
        return result


for _case in _NONLINEAR:
    _register_nonlinear(*_case)


def _show(bench: Benchmark, result: Result, spu: dict[str, Any] | None) -> None:
    figures = "  ".join(
        f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
        for key, value in result.items()
    )
    print(f"{bench.name}: {figures}")
    if reporting.spu_op(spu, bench.name):
        print(f"{'':{len(bench.name)}}  {reporting.spu_summary(spu, bench.name)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=sorted(BENCHMARKS), metavar="NAME",
                        help=f"run only these (repeatable): {', '.join(sorted(BENCHMARKS))}")
    parser.add_argument("--repeats", type=int, default=3)
    reporting.add_out_argument(parser, "ops")
    args = parser.parse_args()
    results = json.loads(args.out.read_text()) if args.out.exists() else {}  # other ops' runs
    results["machine"] = reporting.machine()
    spu = reporting.spu_figures()
    for name in args.only or list(BENCHMARKS):
        bench = BENCHMARKS[name]
        result = bench.run(args.repeats)
        _show(bench, result, spu)
        spu_op = reporting.spu_op(spu, name)
        results[name] = {"description": bench.description, **result,
                         **({"spu": spu_op} if spu_op else {})}
    reporting.write(args.out, results)


if __name__ == "__main__":
    main()
