"""The shared polynomial machinery: power plans, one-truncation linear forms, piecewise."""

from __future__ import annotations

import numpy as np
import pytest

from puma_async.context import Context
from puma_async.protocols.polynomial import Term, _plan, linear_forms, piecewise, powers, zeros_like
from puma_async.protocols.shares import AShare


def test_power_plan_has_least_depth() -> None:
    plan = _plan([2, 3, 4, 6])  # PUMA's GeLU powers
    assert [sorted(k for k, _, _ in level) for level in plan] == [[2], [3, 4], [6]]
    for k in range(2, 17):
        assert len(_plan([k])) == (k - 1).bit_length()  # ceil(log2 k)
        computed = {1}
        for level in _plan([k]):
            assert all(a in computed and b in computed for _, a, b in level)
            computed |= {k2 for k2, _, _ in level}
        assert k in computed


def test_polynomial_matches_numpy(fxp) -> None:
    coefficients = (0.3, -1.25, 0.5, 2.0, -0.75, 0.125, 1.5, -0.5)
    u = np.linspace(-1, 1, 4001)

    async def fn(ctx: Context, x: AShare) -> AShare:
        u = x.scale(1 << 12)  # x at 18 bits -> u at 30 bits (exact)
        pw = await powers(ctx, u, range(2, 8), frac=30)
        terms = [Term(pw[k], 30, 1.0) for k in range(1, 8)]
        (out,) = await linear_forms(ctx, terms, [coefficients[1:]], [coefficients[0]],
                                    frac_out=18)
        return out

    got, ev = fxp.run(fn, u)
    want = np.polynomial.polynomial.polyval(fxp.quantised(u), coefficients)
    assert np.max(np.abs(got - want)) <= 2 * fxp.ulp
    assert ev.cost(0).rounds == ev.cost(1).rounds


@pytest.mark.parametrize("n", [256, 12288])
def test_powers_of_a_value_exact_at_fewer_bits(evaluate, n: int) -> None:
    """u = x / 2^12 at 30 bits is x itself at 18 (u_frac): u^2 truncated by 6 bits instead of
    30 is floor(u^2 2^30) + {0, 1} all the same, u^3 and u^4 within their usual unit of the
    exact products of those, and the square's truncation deals 24 bits fewer per element."""
    rng = np.random.default_rng(n)
    x = rng.integers(-(2**18), 2**18, n)  # x in [-1, 1) at 18 bits
    x[:2] = [2**18 - 1, -(2**18)]  # the range's ends

    async def fn(ctx: Context, a: AShare, exact: bool) -> list[AShare]:
        if exact:
            pw = await powers(ctx, a, range(2, 5), frac=30, u_frac=18)
        else:
            pw = await powers(ctx, a.scale(1 << 12), range(2, 5), frac=30)
        return [pw[k] for k in range(1, 5)]

    low, full = (evaluate(fn, x, exact=exact) for exact in (True, False))
    u1, u2, u3, u4 = (o.view(np.int64) for o in low.outputs)
    assert np.array_equal(u1, x << 12)
    assert set(np.unique(u2 - ((x * x) >> 6)).tolist()) <= {0, 1}
    for got, a, b in ((u3, u1, u2), (u4, u2, u2)):
        exact = (a.astype(object) * b.astype(object)) >> 30
        assert set(np.unique((got.astype(object) - exact).astype(np.int64)).tolist()) <= {0, 1}
    assert full.bytes_all_parties() - low.bytes_all_parties() == 24 / 8 * n
    assert low.cost(0).rounds == full.cost(0).rounds == 4


def test_piecewise_selects_and_cancels_garbage(fxp) -> None:
    x = np.concatenate([np.linspace(-5, 5, 1001), [-2.0**40, 2.0**40, -1.0, 1.0]])
    wild = np.uint64(0x9E3779B97F4A7C15)  # the middle piece overflows everywhere

    async def fn(ctx: Context, a: AShare) -> AShare:
        async def pieces(c: Context) -> list[AShare]:
            return [zeros_like(a), a.scale(wild), a.scale(3)]

        return await piecewise(ctx, a, [-1.0, 1.0], pieces)

    got, _ = fxp.run(fn, x)
    xq = fxp.quantised(x)
    inner = (xq >= -1) & (xq < 1)
    assert np.all(got[xq < -1] == 0)
    assert np.array_equal(got[xq >= 1], 3 * xq[xq >= 1])
    assert np.array_equal(got[inner], fxp.fx.decode(fxp.fx.encode(xq[inner]) * wild))
