"""One party of a ring over plain loopback TCP, for the liveness tests (tests/test_liveness.py).

    python tests/support/tcp_ring.py ROLE DEAD_AFTER PORT0 PORT1 PORT2

P0, P1 and P2 pass a counter around the ring forever, with heartbeats every DEAD_AFTER / 4
seconds. Prints ``running`` on stdout after the first round; when the run fails, prints one
line ``error: TYPE: message`` on stderr and exits 1.
"""

from __future__ import annotations

import sys

import numpy as np
import trio

from puma_async.context import ArraySpec, Context
from puma_async.liveness import Liveness
from puma_async.roles import next_party, prev_party
from puma_async.runtime import PartyOptions, run_party
from puma_async.transports.tcp import open_tcp_transport

SESSION = b"liveness-ring-16"
COUNTER = ArraySpec.ring(1)


async def ring(ctx: Context) -> None:
    counter = np.zeros(1, np.uint64)
    announced = False
    while True:
        if ctx.role == 0:
            await ctx.send_arrays(next_party(0), counter)
            counter = await ctx.recv_array(prev_party(0), COUNTER) + np.uint64(1)
        else:
            counter = await ctx.recv_array(prev_party(ctx.role), COUNTER)
            await ctx.send_arrays(next_party(ctx.role), counter)
        if not announced:
            print("running", flush=True)
            announced = True
        await trio.sleep(0.05)


async def main(role: int, dead_after: float, ports: list[int]) -> None:
    addresses = {r: ("127.0.0.1", port) for r, port in enumerate(ports)}
    liveness = Liveness(heartbeat_interval=dead_after / 4, dead_after=dead_after)
    async with open_tcp_transport(role, addresses, session=SESSION, config_digest=bytes(32),
                                  tls=None, allow_plain=True) as transport:
        await run_party(ring, transport, PartyOptions(SESSION, liveness=liveness))


if __name__ == "__main__":
    role, dead_after, *ports = sys.argv[1:]
    try:
        trio.run(main, int(role), float(dead_after), [int(p) for p in ports])
    except Exception as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)
