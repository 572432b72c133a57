"""Transport benchmark: small-message round-trip latency and one-way throughput.

Measured between two roles in one process (one ``trio.run``, so both ends share one core) on
loopback, at three levels:

* ``raw_trio``: bare Trio memory channels and a bare Trio TCP stream (the floor);
* ``transport``: ``Transport.send``/``receive`` of the in-memory, plain TCP and TLS transports;
* ``runtime``: ``ctx.send``/``ctx.recv`` of the party runtime over the same transports
  (envelope encoding and decoding, writer task, mailbox, statistics).

Latency: median round trip of a frame/message of 8 uint64 (64 bytes of payload).
Throughput: one way, 1 MiB arrays (frames of ~1 MiB), until an acknowledgement returns.

Usage: ``python benchmarks/transport.py [--rounds N] [--mib M] [--out PATH]``; prints a table
and writes JSON (default ``benchmarks/results/transport.json``).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import reporting
import trio

from puma_async.certificates import ClusterPki, create_cluster_pki
from puma_async.context import ArraySpec, Context
from puma_async.runtime import PartyOptions, run_party
from puma_async.transports.base import Transport
from puma_async.transports.memory import open_memory_network
from puma_async.transports.tcp import open_tcp_transport

SESSION = b"benchmark-sessio"
MIB = 1 << 20
SMALL = np.arange(8, dtype=np.uint64)
SMALL_SPEC = ArraySpec.of(SMALL.dtype, SMALL.shape)
WARMUP = 50

Pair = dict[int, Transport]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@asynccontextmanager
async def open_pair(kind: str, pki: ClusterPki) -> AsyncIterator[Pair]:
    """Transports of roles 0 and 1 connected by ``kind`` ('memory', 'tcp' or 'tls')."""
    if kind == "memory":
        async with open_memory_network([0, 1]) as network:
            yield {0: network.endpoint(0), 1: network.endpoint(1)}
        return
    addresses = {0: ("127.0.0.1", _free_port()), 1: ("127.0.0.1", _free_port())}
    pair: Pair = {}
    ready = trio.Event()
    done = trio.Event()

    async def role(r: int) -> None:
        tls = pki.tls_config(r) if kind == "tls" else None
        async with open_tcp_transport(
            r, addresses, session=SESSION, config_digest=b"bench", tls=tls,
            allow_plain=tls is None,
        ) as transport:
            pair[r] = transport
            if len(pair) == 2:
                ready.set()
            await done.wait()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(role, 0)
        nursery.start_soon(role, 1)
        await ready.wait()
        try:
            yield pair
        finally:
            done.set()


async def median_round_trip_us(rounds: int, round_trip: Callable[[], Awaitable[object]]) -> float:
    """Median microseconds of ``round_trip()`` over ``rounds`` calls, after :data:`WARMUP`."""
    times = []
    for i in range(rounds + WARMUP):
        start = time.perf_counter()
        await round_trip()
        if i >= WARMUP:
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


# ----------------------------------------------------------------------------- raw trio


async def raw_memory(rounds: int) -> dict[str, float]:
    """Ping-pong and streaming over bare Trio memory channels (no copies)."""
    to_b, at_b = trio.open_memory_channel[bytes](1)
    to_a, at_a = trio.open_memory_channel[bytes](1)
    small = SMALL.tobytes()

    async def echo() -> None:
        async for msg in at_b:
            await to_a.send(msg)

    async def round_trip() -> None:
        await to_b.send(small)
        await at_a.receive()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(echo)
        rtt_us = await median_round_trip_us(rounds, round_trip)
        nursery.cancel_scope.cancel()
    return {"rtt_us": rtt_us}


async def raw_tcp(rounds: int, mib: int) -> dict[str, float]:
    """Ping-pong of 64 bytes and one-way 1 MiB writes over a bare Trio TCP stream."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listeners[0].accept()
    small = SMALL.tobytes()

    async def echo() -> None:
        while data := await server.receive_some():
            await server.send_all(data)

    async def round_trip() -> None:
        await client.send_all(small)
        got = 0
        while got < len(small):
            got += len(await client.receive_some())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(echo)
        rtt_us = await median_round_trip_us(rounds, round_trip)
        nursery.cancel_scope.cancel()

    block = bytes(MIB)
    total = mib * MIB

    async def sink() -> None:
        got = 0
        while got < total:
            got += len(await server.receive_some(MIB))
        await server.send_all(b"k")

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sink)
        for _ in range(mib):
            await client.send_all(block)
        await client.receive_some()
    seconds = time.perf_counter() - start
    for resource in (client, server, *listeners):
        await resource.aclose()
    return {"rtt_us": rtt_us, "gib_per_s": total / seconds / (1 << 30)}


# ----------------------------------------------------------------------------- transports


async def transport_level(pair: Pair, rounds: int, mib: int) -> dict[str, float]:
    """Round trips and one-way throughput with ``Transport.send``/``receive`` directly."""
    a, b = pair[0], pair[1]
    small = SMALL.tobytes()
    block = bytes(MIB)

    async def echo() -> None:
        for _ in range(rounds + WARMUP):
            _, frame = await b.receive()
            assert frame is not None
            await b.send(0, frame)
        for _ in range(mib):
            await b.receive()
        await b.send(0, b"k")

    async def round_trip() -> None:
        await a.send(1, small)
        await a.receive()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(echo)
        rtt_us = await median_round_trip_us(rounds, round_trip)
        start = time.perf_counter()
        for _ in range(mib):
            await a.send(1, block)
        await a.receive()
        seconds = time.perf_counter() - start
    return {"rtt_us": rtt_us, "gib_per_s": mib * MIB / seconds / (1 << 30)}


async def runtime_level(pair: Pair, rounds: int, mib: int) -> dict[str, float]:
    """The same through the party runtime: ``ctx.send``/``ctx.recv`` of arrays."""
    big = np.zeros(MIB // 8, dtype=np.uint64)
    measured: dict[str, float] = {}

    async def pinger(ctx: Context) -> None:
        async def round_trip() -> None:
            await ctx.send_arrays(1, SMALL)
            await ctx.recv_array(1, SMALL_SPEC)

        measured["rtt_us"] = await median_round_trip_us(rounds, round_trip)
        start = time.perf_counter()
        for _ in range(mib):
            await ctx.send_arrays(1, big)
        await ctx.recv_array(1, SMALL_SPEC)
        measured["gib_per_s"] = mib * MIB / (time.perf_counter() - start) / (1 << 30)

    async def ponger(ctx: Context) -> None:
        for _ in range(rounds + WARMUP):
            array = await ctx.recv_array(0, SMALL_SPEC)
            await ctx.send_arrays(0, array)
        for _ in range(mib):
            await ctx.recv_array(0, ArraySpec.of(big.dtype, big.shape))
        await ctx.send_arrays(0, SMALL)

    programs: dict[int, Callable[[Context], Awaitable[None]]] = {0: pinger, 1: ponger}
    async with trio.open_nursery() as nursery:
        for role, program in programs.items():
            nursery.start_soon(_run, program, pair[role])
    return measured


async def _run(program: Callable[[Context], Awaitable[None]], transport: Transport) -> None:
    await run_party(program, transport, PartyOptions(SESSION))


async def measure(rounds: int, mib: int) -> dict[str, Any]:
    results: dict[str, Any] = {"raw_trio": {}, "transport": {}, "runtime": {}}
    results["raw_trio"]["memory"] = await raw_memory(rounds)
    results["raw_trio"]["tcp"] = await raw_tcp(rounds, mib)
    with tempfile.TemporaryDirectory() as tmp:
        pki = create_cluster_pki(tmp, [0, 1], "bench")
        for kind in ("memory", "tcp", "tls"):
            async with open_pair(kind, pki) as pair:
                results["transport"][kind] = await transport_level(pair, rounds, mib)
            async with open_pair(kind, pki) as pair:
                results["runtime"][kind] = await runtime_level(pair, rounds, mib)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2000, help="round trips to time")
    parser.add_argument("--mib", type=int, default=256, help="MiB sent one way")
    reporting.add_out_argument(parser, "transport")
    args = parser.parse_args()
    machine = reporting.machine()
    results = trio.run(measure, args.rounds, args.mib)
    print(f"{'level':<10} {'link':<7} {'round trip (us)':>16} {'one way (GiB/s)':>16}")
    for level, links in results.items():
        for link, figures in links.items():
            rate = figures.get("gib_per_s")
            print(f"{level:<10} {link:<7} {figures['rtt_us']:>16.1f} "
                  f"{'' if rate is None else f'{rate:.3f}':>16}")
    report = {
        "benchmark": "transport",
        "settings": {"rounds": args.rounds, "mib": args.mib, "small_payload": "8 x uint64",
                     "large_payload": "1 MiB uint64 array", "process": "both roles, one trio.run"},
        "machine": machine,
        "results": results,
    }
    reporting.write(args.out, report)


if __name__ == "__main__":
    main()
