""":class:`~puma_async.scopetime.ScopeTimer`: the event loop's time per phase and scope, from
the step whose scope the running task entered last (:data:`~puma_async.context.CURRENT_STEP`)."""

from __future__ import annotations

import numpy as np
import trio

from puma_async.context import CURRENT_STEP, DEFAULT_PHASE, OFFLINE_PHASE, ArraySpec, Context
from puma_async.roles import PARTIES, next_party, prev_party
from puma_async.scopetime import ScopeTimer


async def _exchange(ctx: Context) -> None:
    await ctx.send_arrays(next_party(ctx.role), np.arange(4, dtype=np.uint64))
    await ctx.recv_array(prev_party(ctx.role), ArraySpec.ring(4))


def test_task_steps_count_to_the_scope_they_ended_in(spmd) -> None:
    seen = []

    def note(ctx: Context) -> None:
        step = CURRENT_STEP.get()
        seen.append(None if step is None else (step is ctx, step.scope_name))

    async def program(ctx: Context) -> None:
        note(ctx)
        with ctx.scope("layer0"):
            with ctx.scope("attn"):
                await _exchange(ctx)
                note(ctx)
            with ctx.phase(OFFLINE_PHASE), ctx.scope("tuples"):
                await _exchange(ctx)
            await ctx.gather(_exchange, _exchange)  # spawned tasks start in layer0's scope
        note(ctx)

    timer = ScopeTimer()
    spmd(program, instruments=[timer])
    assert seen.count(None) == 2 * len(PARTIES)  # outside any scope, before and after
    assert [step for step in seen if step is not None] == [(True, "layer0.attn")] * len(PARTIES)
    for key in ((DEFAULT_PHASE, "layer0.attn"), (OFFLINE_PHASE, "layer0.tuples"),
                (DEFAULT_PHASE, "layer0")):
        assert timer.seconds[key] > 0, key
    assert all(seconds >= 0 for seconds in timer.seconds.values())


async def test_current_step_is_per_task() -> None:
    """A task's scope does not leak into a sibling started before it entered it."""
    inside = trio.Event()
    seen = []

    class Step:  # stands in for a Context: only the contextvar matters here
        pass

    async def entering() -> None:
        token = CURRENT_STEP.set(Step())  # type: ignore[arg-type]
        inside.set()
        await trio.sleep(0)
        CURRENT_STEP.reset(token)

    async def looking() -> None:
        await inside.wait()
        seen.append(CURRENT_STEP.get())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(looking)
        nursery.start_soon(entering)
    assert seen == [None]
