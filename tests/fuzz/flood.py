"""A bounded connection flood against listening ports, for the flood tests.

Usage: ``python tests/fuzz/flood.py PORT [PORT ...] [--total N] [--concurrent C]
[--seconds S] [--seed X]``. Opens ``--total`` connections in all (at most ``--concurrent`` at
once) to ``127.0.0.1:PORT``, round robin over the ports, each one of three kinds:

* ``plain``: random bytes (sometimes a length prefix declaring a huge frame), then waits for
  the listener to close the connection;
* ``tls``: a TLS 1.3 handshake without a client certificate, then random bytes;
* ``slowloris``: one byte every ``--drip`` seconds until the listener closes it.

Ports that are not open yet are retried (the flood may start before the listeners). The flood
stops by itself after ``--total`` connections or ``--seconds``, whichever comes first, and
prints one JSON line: the connections made per kind, and whether it ran out of time.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import ssl

import trio

KINDS = ("plain", "tls", "slowloris")


def _client_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # an attacker does not care who the listener is
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    return context


async def _connect(port: int) -> trio.SocketStream:
    while True:
        try:
            return await trio.open_tcp_stream("127.0.0.1", port)
        except OSError:
            await trio.sleep(0.05)


async def _until_closed(stream: trio.abc.Stream) -> None:
    while await stream.receive_some(1 << 16):
        pass


async def attack(kind: str, port: int, rng: random.Random, drip: float) -> None:
    """One connection of ``kind``; returns when the listener closed it."""
    stream = await _connect(port)
    try:
        if kind == "plain":
            junk = rng.randbytes(rng.randrange(1, 200))
            if rng.random() < 0.5:
                junk = (1 << rng.randrange(20, 63)).to_bytes(8, "little") + junk
            await stream.send_all(junk)
            await _until_closed(stream)
        elif kind == "tls":
            secured = trio.SSLStream(stream, _client_context(), server_hostname="localhost")
            await secured.do_handshake()
            await secured.send_all(rng.randbytes(rng.randrange(1, 200)))
            await _until_closed(secured)
        else:
            while True:
                await stream.send_all(bytes([rng.randrange(256)]))
                with trio.move_on_after(drip):
                    if not await stream.receive_some(1 << 16):
                        return
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass  # the listener dropped it: what a flood expects
    finally:
        await trio.aclose_forcefully(stream)


async def flood(ports: list[int], total: int, concurrent: int, seconds: float, seed: int,
                drip: float) -> dict[str, object]:
    made: collections.Counter[str] = collections.Counter()
    rng = random.Random(seed)
    slots = trio.Semaphore(concurrent)
    with trio.move_on_after(seconds) as scope:
        async with trio.open_nursery() as nursery:
            for index in range(total):
                await slots.acquire()
                kind = KINDS[index % len(KINDS)]
                made[kind] += 1

                async def one(kind: str = kind, index: int = index) -> None:
                    try:
                        await attack(kind, ports[index % len(ports)],
                                     random.Random(rng.random()), drip)
                    finally:
                        slots.release()

                nursery.start_soon(one)
    return {"made": dict(made), "total": sum(made.values()), "timed_out": scope.cancelled_caught}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("ports", type=int, nargs="+")
    parser.add_argument("--total", type=int, default=1000)
    parser.add_argument("--concurrent", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--drip", type=float, default=2.0, help="slowloris: seconds per byte")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result = trio.run(flood, args.ports, args.total, args.concurrent, args.seconds, args.seed,
                      args.drip)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
