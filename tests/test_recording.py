"""Recording transport and trace files: round trip, validation, digest-only frames."""

from __future__ import annotations

import itertools
import os
import stat
from pathlib import Path

import msgpack
import numpy as np
import pytest
import trio

from puma_async import codec
from puma_async.codec import Arrays, Envelope
from puma_async.context import ArraySpec, Context
from puma_async.errors import TraceError
from puma_async.runner import run_roles
from puma_async.trace.format import FORMAT, TraceRecord, frame_digest, read_trace
from puma_async.trace.recorder import RecordingTransport
from puma_async.transports.base import Transport
from puma_async.transports.memory import open_memory_network

SESSION = b"r" * 16
CONFIG = {"model": "tiny", "frac_bits": 18, "addresses": {0: ["127.0.0.1", 5000]}}


def frame_for(sender: int, receiver: int, path: tuple[int, ...], size: int) -> bytes:
    array = np.arange(size, dtype=np.uint8)
    env = Envelope(SESSION, sender, receiver, path, 0, 1, Arrays((array,)))
    return codec.encode_frame([env])


async def record_pair(tmp_path: Path, digest_over: int | None = None) -> Path:
    """Role 0 (recorded) and role 1 swap a small and a large frame, then finish."""
    path = tmp_path / "role0.trace"
    async with open_memory_network([0, 1]) as network:
        recorder = RecordingTransport(
            network.endpoint(0), path, CONFIG, session=SESSION, digest_over=digest_over
        )
        other = network.endpoint(1)
        await recorder.send(1, frame_for(0, 1, (1,), 10))
        await recorder.send(1, frame_for(0, 1, (2, 3), 5000))
        await recorder.close_peer(1)
        await other.send(0, b"not a frame")
        await other.send(0, frame_for(1, 0, (4,), 20))
        await other.close_peer(0)
        assert (await recorder.receive())[1] == b"not a frame"
        assert (await recorder.receive())[1] == frame_for(1, 0, (4,), 20)
        assert await recorder.receive() == (1, None)  # the last event finishes the trace
    return path


async def test_round_trip(tmp_path: Path) -> None:
    header, records = read_trace(await record_pair(tmp_path))
    assert (header.role, header.peers, header.session) == (0, (1,), SESSION)
    assert header.config == CONFIG
    assert header.digest_over is None
    got = list(records)
    assert [(r.direction, r.event, r.peer, r.size) for r in got] == [
        ("send", "frame", 1, len(frame_for(0, 1, (1,), 10))),
        ("send", "frame", 1, len(frame_for(0, 1, (2, 3), 5000))),
        ("send", "end", 1, 0),
        ("recv", "frame", 1, len(b"not a frame")),
        ("recv", "frame", 1, len(frame_for(1, 0, (4,), 20))),
        ("recv", "end", 1, 0),
    ]
    assert got[1].frame == frame_for(0, 1, (2, 3), 5000)
    assert got[1].steps is not None and got[1].steps[0].path == (2, 3)
    assert got[1].steps[0].step == "2.3"
    assert (got[1].steps[0].seq, got[1].steps[0].round, got[1].steps[0].message) == (
        0, 1, "Arrays"
    )
    assert got[3].steps is None  # undecodable frames are recorded as they came
    assert all(a.time <= b.time for a, b in itertools.pairwise(got))


async def test_digest_only_frames(tmp_path: Path) -> None:
    header, records = read_trace(await record_pair(tmp_path, digest_over=1000))
    assert header.digest_over == 1000
    frames = [r for r in records if r.event == "frame"]
    large = [r for r in frames if r.size > 1000]
    assert len(large) == 1
    assert large[0].frame is None
    assert large[0].digest == frame_digest(frame_for(0, 1, (2, 3), 5000))
    assert large[0].steps is not None  # still shows which steps it carried
    assert all(r.frame is not None and r.digest is None for r in frames if r.size <= 1000)


async def test_truncated_trace(tmp_path: Path) -> None:
    path = await record_pair(tmp_path)
    data = path.read_bytes()
    for cut, complete in [(len(data) - 3, 6), (len(data) // 2, None)]:
        path.write_bytes(data[:cut])
        _header, records = read_trace(path)
        seen: list[TraceRecord] = []
        with pytest.raises(TraceError, match="truncated"):
            seen.extend(records)
        if complete is not None:
            assert len(seen) == complete


def test_bad_header(tmp_path: Path) -> None:
    path = tmp_path / "bad.trace"
    path.write_bytes(b"")
    with pytest.raises(TraceError, match="empty or truncated"):
        read_trace(path)
    path.write_bytes(msgpack.packb({"format": "something else", "version": 1}))
    with pytest.raises(TraceError, match="not a puma-async-trace file"):
        read_trace(path)
    path.write_bytes(msgpack.packb({"format": FORMAT, "version": 2}))
    with pytest.raises(TraceError, match="version 2 is not supported"):
        read_trace(path)
    path.write_bytes(b"\xc1garbage")
    with pytest.raises(TraceError, match="malformed trace header"):
        read_trace(path)


async def test_unfinished_trace_lacks_trailer(tmp_path: Path) -> None:
    path = tmp_path / "crashed.trace"
    async with open_memory_network([0, 1]) as network:
        recorder = RecordingTransport(network.endpoint(0), path, {}, session=SESSION)
        await recorder.send(1, b"abc")
        recorder._writer._file.flush()  # type: ignore[union-attr]  # as if the process died now
        header, records = read_trace(path)
        assert header.config == {}
        with pytest.raises(TraceError, match="no trailer"):
            list(records)
        recorder.close()
    assert len(list(read_trace(path)[1])) == 1


async def test_records_a_whole_run(tmp_path: Path) -> None:
    """Wrapping every role of a local run: each trace mirrors its peers' traces."""

    async def program(ctx: Context) -> None:
        nxt, prev = (ctx.role + 1) % 3, (ctx.role + 2) % 3
        await ctx.send_arrays(nxt, np.full(4, ctx.role, dtype=np.uint64))
        await ctx.recv_array(prev, ArraySpec.ring(4))

    def wrap(transport: Transport) -> Transport:
        path = tmp_path / f"role{transport.role}.trace"
        return RecordingTransport(transport, path, {"run": "ring"}, session=SESSION)

    await run_roles(dict.fromkeys([0, 1, 2], program), session=SESSION, wrap_transport=wrap)
    traces = {role: list(read_trace(tmp_path / f"role{role}.trace")[1]) for role in range(3)}
    for role in range(3):
        sent = [r.frame for r in traces[role] if r.direction == "send" and r.peer == (role + 1) % 3
                and r.event == "frame"]
        received = [r.frame for r in traces[(role + 1) % 3]
                    if r.direction == "recv" and r.peer == role and r.event == "frame"]
        assert sent == received and sent
        ends = {(r.direction, r.peer) for r in traces[role] if r.event == "end"}
        assert ends == {(d, p) for d in ("send", "recv") for p in range(3) if p != role}


async def test_config_must_be_plain_data(tmp_path: Path) -> None:
    async with open_memory_network([0, 1]) as network:
        with pytest.raises(TypeError):
            RecordingTransport(network.endpoint(0), tmp_path / "x", {"a": object()},
                               session=SESSION)
    await trio.lowlevel.checkpoint()


async def test_trace_is_private_and_never_overwritten_silently(tmp_path: Path) -> None:
    old = os.umask(0o000)  # the worst case: the trace is private only if created so
    try:
        path = await record_pair(tmp_path)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        recorded = path.read_bytes()
        async with open_memory_network([0, 1]) as network:
            with pytest.raises(FileExistsError, match=r"role0\.trace exists \(use --force"):
                RecordingTransport(network.endpoint(0), path, CONFIG, session=SESSION)
            assert path.read_bytes() == recorded
            os.chmod(path, 0o644)
            RecordingTransport(network.endpoint(0), path, CONFIG, session=SESSION,
                               force=True).close()
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        header, records = read_trace(path)
        assert header.role == 0 and list(records) == []
    finally:
        os.umask(old)
