"""The shared polynomial machinery: power plans, one-truncation linear forms, piecewise."""

from __future__ import annotations

import numpy as np

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
