"""Evaluate one secure function on plaintext inputs, all roles in one process.

The client secret-shares the inputs, the three parties run ``fn`` on the shares inside the
scope ``op`` (phase ``online``), and the client alone learns the outputs. Used by tests (to
compare a protocol with plaintext numpy) and by benchmarks (to measure it); key and seed
set-up are in phase ``setup``, input sharing and output opening in scope ``io``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np

from puma_async.context import ArraySpec, Context
from puma_async.errors import ProtocolError
from puma_async.protocols.io import reveal_to, share_input
from puma_async.protocols.randomness import setup_input_seeds, setup_keys
from puma_async.protocols.ring import RingArray, to_ring
from puma_async.protocols.shares import AShare
from puma_async.roles import CLIENT, PARTIES
from puma_async.runner import run_local
from puma_async.stats import PartyStats, Totals

SecureFn = Callable[..., Awaitable[AShare | Sequence[AShare]]]
OP_SCOPE = "op"


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Opened outputs (ring elements) and the run's statistics by role."""

    outputs: tuple[RingArray, ...]
    stats: dict[int, PartyStats]
    seconds: float

    def cost(self, party: int = 0) -> Totals:
        """Bytes, messages and rounds of ``fn`` alone at ``party``."""
        return self.stats[party].totals(phase="online", scope=OP_SCOPE)

    def bytes_all_parties(self) -> int:
        """Bytes sent by P_0, P_1 and P_2 together inside ``fn``."""
        return sum(self.cost(p).bytes_sent for p in PARTIES)


async def _setup(ctx: Context) -> None:
    with ctx.phase("setup"):
        if ctx.role in PARTIES:
            await setup_keys(ctx)
        await setup_input_seeds(ctx, CLIENT)


def evaluation_program(fn: SecureFn, *inputs: Any, **kwargs: Any) -> Callable[[Context], Any]:
    """The program every role runs to evaluate ``fn`` on ``inputs`` (any transport).

    The client's result is the tuple of opened outputs; the parties' is None.
    """
    arrays = [to_ring(np.asarray(x)) for x in inputs]

    async def program(ctx: Context) -> Any:
        await _setup(ctx)
        with ctx.scope("io"):
            shares = [
                await share_input(ctx, CLIENT, a.shape, a if ctx.role == CLIENT else None)
                for a in arrays
            ]
        if ctx.role == CLIENT:
            (header,) = await ctx.recv_arrays(0, ArraySpec.ring((None,)))
            shapes = _read_shapes(header, ctx)
            with ctx.scope("io"):
                return tuple([await reveal_to(ctx, None, CLIENT, s) for s in shapes])
        with ctx.scope(OP_SCOPE):
            out = await fn(ctx, *shares, **kwargs)
        outs = [out] if isinstance(out, AShare) else list(out)
        if ctx.role == 0:
            await ctx.send_arrays(CLIENT, _shapes_header([o.shape for o in outs]))
        with ctx.scope("io"):
            for o in outs:
                await reveal_to(ctx, o, CLIENT, o.shape)
        return None

    return program


def _shapes_header(shapes: Sequence[tuple[int, ...]]) -> RingArray:
    """The outputs' public shapes as one vector: their count, their ranks, their dimensions."""
    dims = [d for shape in shapes for d in shape]
    return np.array([len(shapes), *map(len, shapes), *dims], dtype=np.uint64)


def _read_shapes(header: RingArray, ctx: Context) -> list[tuple[int, ...]]:
    """The shapes of :func:`_shapes_header` (a protocol error naming P0 if malformed)."""
    values = [int(v) for v in header]
    count = values[0] if values else -1
    ranks, dims = values[1 : 1 + count], values[1 + count :]
    if count < 0 or len(ranks) != count or sum(ranks) != len(dims):
        raise ProtocolError("malformed list of output shapes", peer=0, step=ctx.step_name)
    shapes, start = [], 0
    for rank in ranks:
        shapes.append(tuple(dims[start : start + rank]))
        start += rank
    return shapes


def evaluate(
    fn: SecureFn, *inputs: Any, latency: float = 0.0, **kwargs: Any
) -> Evaluation:
    """Run ``fn(ctx, *shares, **kwargs)`` on secret-shared ``inputs`` (ring arrays).

    ``fn`` returns one :class:`AShare` or a sequence of them; the client gets them opened.
    """
    program = evaluation_program(fn, *inputs, **kwargs)
    run = run_local({role: program for role in (*PARTIES, CLIENT)}, latency=latency)
    return Evaluation(run.results[CLIENT], dict(run.stats), run.seconds)
