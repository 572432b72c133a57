"""Party runtime: message matching, concurrent steps, rounds and bytes, failures."""

from __future__ import annotations

import json
import threading
import time
from unittest import mock

import numpy as np
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from puma_async import codec
from puma_async.codec import Arrays, Envelope, StepPath, Value
from puma_async.context import ArraySpec, Context, Ready
from puma_async.errors import (
    PeerAbortedError,
    PeerDisconnectedError,
    ProtocolError,
    RunFailedError,
    SessionMismatchError,
)
from puma_async.protocols import ringmatmul
from puma_async.roles import CLIENT, MODEL_OWNER, PARTIES, next_party, prev_party
from puma_async.runner import run_local, run_threaded
from puma_async.transports.base import Transport
from puma_async.transports.memory import OnTimeClock, open_memory_network


@pytest.mark.parametrize("hops", [1, 2, 3, 7])
def test_value_passed_around_the_ring_counts_one_round_per_hop(spmd, hops: int) -> None:
    async def program(ctx: Context) -> int:
        value = np.zeros(4, dtype=np.uint64)
        for hop in range(hops):
            sender = hop % 3
            if ctx.role == sender:
                await ctx.send_arrays(next_party(sender), value + 1)
            elif ctx.role == next_party(sender):
                value = await ctx.recv_array(sender, ArraySpec.ring(4))
        return int(value[0])

    result = spmd(program)
    final_holder = hops % 3
    assert result.results[final_holder] == hops
    assert max(s.max_round for s in result.stats.values()) == hops
    for p in PARTIES:
        sends = sum(1 for h in range(hops) if h % 3 == p)
        totals = result.stats[p].totals()
        assert totals.messages_sent == sends
        assert totals.bytes_sent == 32 * sends
        assert totals.messages_received == sum(1 for h in range(hops) if (h + 1) % 3 == p)


def test_one_exchange_is_one_round_and_next_is_two(spmd) -> None:
    async def program(ctx: Context) -> int:
        for _ in range(2):
            await ctx.send_arrays(prev_party(ctx.role), np.arange(3, dtype=np.uint64))
            await ctx.recv_array(next_party(ctx.role), ArraySpec.ring(3))
        return ctx.clock

    result = spmd(program)
    assert all(r == 2 for r in result.results.values())
    for stats in result.stats.values():
        assert stats.totals() == stats.totals(phase="online")
        assert stats.totals().bytes_sent == stats.totals().bytes_received == 48
        assert stats.totals().rounds == 2


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.integers(0, 5), min_size=6, max_size=6), min_size=3, max_size=3),
       st.integers(2, 6))
def test_concurrent_steps_under_random_delays_get_their_own_messages(spmd,
    delays: list[list[int]], n_steps: int
) -> None:
    """Each child step sleeps a party-specific random time between its messages."""

    async def step(ctx: Context, index: int) -> list[int]:
        got = []
        for k in range(2):
            await trio.sleep(delays[ctx.role][(index + k) % 6] / 1000)
            await ctx.send(next_party(ctx.role), Value([index, k, ctx.role]))
            msg = await ctx.recv(prev_party(ctx.role))
            got.append(msg.value)
        return got

    async def program(ctx: Context) -> list:
        steps = [lambda c, i=i: step(c, i) for i in range(n_steps)]
        return await ctx.gather(*steps)

    result = spmd(program)
    for p in PARTIES:
        for index, got in enumerate(result.results[p]):
            assert got == [[index, k, prev_party(p)] for k in range(2)]
        assert result.stats[p].max_round == 2


def test_gather_overlaps_rounds_and_sequential_does_not(spmd) -> None:
    async def exchange(ctx: Context) -> None:
        await ctx.send_arrays(next_party(ctx.role), np.zeros(1, np.uint64))
        await ctx.recv_array(prev_party(ctx.role), ArraySpec.ring(1))

    async def concurrent(ctx: Context) -> None:
        await ctx.gather(exchange, exchange, exchange)

    async def sequential(ctx: Context) -> None:
        await ctx.run_sequentially(exchange, exchange, exchange)

    cases = [(concurrent, False, 1), (sequential, False, 3), (concurrent, True, 3)]
    for program, forced_sequential, rounds in cases:
        result = spmd(program, latency=0.01, sequential=forced_sequential)
        assert all(s.max_round == rounds for s in result.stats.values())
        assert result.seconds == pytest.approx(0.01 * rounds, abs=1e-6)


def test_ready_steps_take_their_child_paths_and_run_no_task(spmd) -> None:
    """A Ready step gives its value and takes its child path, so the other steps have the
    paths (and messages) they have beside a step that runs; with one step left to run, the
    gather spawns no task. Rounds are the running steps'."""

    async def exchange(ctx: Context) -> StepPath:
        await ctx.send_arrays(next_party(ctx.role), np.zeros(1, np.uint64))
        await ctx.recv_array(prev_party(ctx.role), ArraySpec.ring(1))
        return ctx.path

    async def quiet(ctx: Context) -> str:
        return "made"

    async def program(ctx: Context) -> list:
        ran = await ctx.gather(quiet, exchange, exchange)
        ready = await ctx.gather(Ready("made"), exchange, exchange)
        before = len(spawned)
        alone = await ctx.gather(exchange, Ready("made"))
        assert len(spawned) == before  # no nursery, no task
        return [ran, ready, alone]

    spawned: list[trio.lowlevel.Task] = []

    class Spawns(trio.abc.Instrument):
        def task_spawned(self, task: trio.lowlevel.Task) -> None:
            spawned.append(task)

    result = spmd(program, instruments=[Spawns()])
    for p in PARTIES:
        ran, ready, alone = result.results[p]
        assert ran[0] == ready[0] == alone[1] == "made"
        # child indices: 0-2 for the first gather, 3 (the Ready step) to 5, then 6 and 7
        assert [path[-1] for path in (*ran[1:], *ready[1:], alone[0])] == [1, 2, 4, 5, 6]
        assert result.stats[p].max_round == 3  # one round per gather


def test_emulated_bandwidth_serialises_frames(spmd) -> None:
    async def program(ctx: Context) -> None:
        if ctx.role == 0:
            await ctx.send_arrays(1, np.zeros(125_000, np.uint64))  # 1 MB
        elif ctx.role == 1:
            await ctx.recv_array(0, ArraySpec.ring(125_000))

    result = spmd(program, latency=0.001, bandwidth=100e6)
    assert result.seconds == pytest.approx(0.001 + 0.01, rel=0.01)


def test_on_time_clock_sleeps_until_just_before_the_deadline_then_polls(monkeypatch) -> None:
    clock = OnTimeClock()
    monkeypatch.setattr(time, "perf_counter", lambda: 100.0)
    assert clock.current_time() == 100.0
    assert clock.deadline_to_sleep_time(100.010) == pytest.approx(0.010 - OnTimeClock.SPIN)
    assert clock.deadline_to_sleep_time(100.0 + OnTimeClock.SPIN / 2) == 0.0  # poll
    assert clock.deadline_to_sleep_time(99.0) == 0.0  # overdue


@pytest.mark.parametrize(("options", "expected"), [
    ({"latency": 0.001}, OnTimeClock), ({"bandwidth": 1e9}, OnTimeClock), ({}, None),
])
def test_emulated_links_run_on_the_on_time_clock(options, expected) -> None:
    clocks: list[trio.abc.Clock] = []

    async def program(ctx: Context) -> None:
        clocks.append(trio.lowlevel.current_clock())

    run_local({role: program for role in PARTIES}, **options)
    assert (type(clocks[0]) is expected) if expected else not isinstance(clocks[0], OnTimeClock)


@pytest.mark.parametrize("runner", [run_local, run_threaded])
@pytest.mark.parametrize(("roles", "callers"),
                         [(PARTIES, 3), ((*PARTIES, MODEL_OWNER, CLIENT), 3), ((0,), 1),
                          ((MODEL_OWNER, CLIENT), 1)])
def test_the_parties_of_one_process_share_its_ring_products(runner, roles, callers) -> None:
    """Every computing party run in this process makes its products at the same time as the
    others (:func:`~puma_async.protocols.ringmatmul.shared_by`), for the run only."""
    async def program(ctx: Context) -> int:
        return ringmatmul._callers

    results = runner(dict.fromkeys(roles, program)).results
    assert results == dict.fromkeys(roles, callers)
    assert ringmatmul._callers == 1


def test_a_role_alone_finishes() -> None:
    async def program(ctx: Context) -> int:
        return ctx.role

    assert run_local({0: program}).results == {0: 0}


def test_scopes_and_phases_are_attributed(spmd) -> None:
    async def program(ctx: Context) -> None:
        with ctx.phase("setup"), ctx.scope("keys"):
            await ctx.send_arrays(next_party(ctx.role), np.zeros(2, np.uint64))
            await ctx.recv_array(prev_party(ctx.role), ArraySpec.ring(2))
        with ctx.scope("layer0"):
            with ctx.scope("attn.softmax"):
                for _ in range(3):
                    await ctx.send_arrays(next_party(ctx.role), np.zeros(1, np.uint64))
                    await ctx.recv_array(prev_party(ctx.role), ArraySpec.ring(1))
            with ctx.scope("mlp"):
                await ctx.send_arrays(next_party(ctx.role), np.zeros(4, np.uint64))
                await ctx.recv_array(prev_party(ctx.role), ArraySpec.ring(4))

    result = spmd(program)
    stats = result.stats[0]
    assert stats.totals(phase="setup").bytes_sent == 16
    assert stats.totals(phase="setup").rounds == 1
    assert stats.totals(phase="online").rounds == 4
    assert stats.totals(scope="layer0.attn.softmax").rounds == 3
    assert stats.totals(scope="layer0.attn.softmax").bytes_sent == 24
    assert stats.totals(scope="layer0").bytes_sent == 56
    assert stats.totals(scope="layer0").rounds == 4
    assert stats.totals(scope="layer0.mlp").rounds == 1
    assert stats.scope_seconds("layer0") >= stats.scope_seconds("layer0.mlp") > 0
    assert stats.max_round == 5
    assert stats.totals(peer=1).bytes_sent == 72
    data = json.loads(stats.to_json())
    assert data["phases"]["setup"]["bytes_sent"] == 16
    assert data["phase_rounds"] == {"online": 4, "setup": 1}
    assert "layer0.attn.softmax" in stats.scopes()
    with pytest.raises(AttributeError):
        stats.max_round = 3  # type: ignore[misc]


def test_labels_are_deterministic_and_distinct(spmd) -> None:
    async def program(ctx: Context) -> list[bytes]:
        ahead = [ctx.next_label(b"a"), ctx.next_label(b"a")]  # draws none
        labels = [ctx.label(b"a"), ctx.label(b"a"), ctx.label(b"b")]
        assert ahead == [labels[0], labels[0]] and ctx.next_label(b"b") != labels[2]
        children = await ctx.gather(
            lambda c: _label(c), lambda c: _label(c)
        )
        return labels + children

    async def _label(ctx: Context) -> bytes:
        await trio.sleep(0.001 * ctx.role)
        return ctx.label(b"a")

    result = spmd(program)
    first = result.results[0]
    assert len(set(first)) == len(first)
    assert all(result.results[p] == first for p in PARTIES)


# ---------------------------------------------------------------------- failures


def test_failing_party_aborts_the_others_naming_it(spmd) -> None:
    async def program(ctx: Context) -> None:
        if ctx.role == 1:
            child = ctx.child()
            child.child()
            raise ValueError("boom")
        await ctx.recv_array(1, ArraySpec.ring(1))

    with pytest.raises(RunFailedError) as info:
        spmd(program)
    errors = info.value.errors
    assert info.value.root_role == 1
    assert isinstance(info.value.root_cause, ValueError)
    for p in (0, 2):
        assert isinstance(errors[p], PeerAbortedError)
        assert errors[p].peer == 1
        assert "P1: ValueError" in str(errors[p])
        assert "boom" not in str(errors[p])  # only puma-async errors send their text


def test_crashed_peer_without_abort_is_a_disconnect(spmd) -> None:
    async def program(ctx: Context) -> None:
        if ctx.role == 2:  # vanish without an abort, as a killed process would
            for peer in (0, 1):
                await ctx.runtime.transport.close_peer(peer)
            return
        await ctx.recv(2)

    with pytest.raises(RunFailedError) as info:
        spmd(program)
    for p in (0, 1):
        assert isinstance(info.value.errors[p], PeerDisconnectedError)
        assert info.value.errors[p].peer == 2


class _Tamper(Transport):
    """Wraps a transport and rewrites the frames this role sends."""

    def __init__(self, inner: Transport, rewrite):
        self.inner, self.rewrite = inner, rewrite
        self.role, self.peers = inner.role, inner.peers

    async def send(self, peer: int, frame: bytes) -> None:
        for out in self.rewrite(self.role, peer, frame):
            await self.inner.send(peer, out)

    async def receive(self):
        return await self.inner.receive()

    async def close_peer(self, peer: int) -> None:
        await self.inner.close_peer(peer)


async def _exchange(ctx: Context) -> None:
    await ctx.send_arrays(next_party(ctx.role), np.zeros(2, np.uint64))
    await ctx.recv_array(prev_party(ctx.role), ArraySpec.ring(2))


def _run_tampered(spmd, rewrite):
    return spmd(_exchange, wrap_transport=lambda t: _Tamper(t, rewrite))


class _Refusing(_Tamper):
    """Refuses to send any frame, as TCP refuses one above the frame limit."""

    async def send(self, peer: int, frame: bytes) -> None:
        raise ProtocolError(f"frame of {len(frame)} bytes exceeds the limit of 1", peer=peer)


def test_a_refused_send_fails_with_the_transports_error_not_a_disconnect(spmd) -> None:
    with pytest.raises(RunFailedError) as info:
        spmd(_exchange, wrap_transport=lambda t: _Refusing(t, None))
    error = info.value.errors[0]
    assert type(error) is ProtocolError and error.peer == 1
    assert str(error).count("(peer P1)") == 1 and "exceeds the limit of 1" in str(error)


def test_duplicate_message_is_a_protocol_error(spmd) -> None:
    with pytest.raises(RunFailedError) as info:
        _run_tampered(spmd, lambda role, peer, frame: [frame, frame] if role == 0 else [frame])
    assert isinstance(info.value.errors[1], ProtocolError)
    assert "duplicate" in str(info.value.errors[1])


def test_mailbox_memory_does_not_grow_with_finished_steps(spmd) -> None:
    async def program(ctx: Context) -> list[int]:
        remembered = []
        for _ in range(20):
            await ctx.gather(_exchange, _exchange)
            remembered.append(len(ctx.runtime.mailbox._taken))
        return remembered

    for remembered in spmd(program).results.values():
        assert remembered == [0] * 20


def test_duplicate_of_a_finished_step_is_an_unexpected_message(spmd) -> None:
    async def program(ctx: Context) -> None:
        await ctx.gather(_exchange)  # step 0 finishes (forgotten), then its duplicate arrives
        await trio.sleep(1)

    def duplicate(role: int, peer: int, frame: bytes) -> list[bytes]:
        return [frame, frame] if role == 0 else [frame]

    with pytest.raises(RunFailedError) as info:
        spmd(program, wrap_transport=lambda t: _Tamper(t, duplicate))
    assert isinstance(info.value.errors[1], ProtocolError)
    assert "duplicate" in str(info.value.errors[1]) or "unexpected" in str(info.value.errors[1])


def test_unexpected_message_is_a_protocol_error(spmd) -> None:
    def add_extra(role: int, peer: int, frame: bytes) -> list[bytes]:
        envs = codec.decode_frame(frame)
        extra = Envelope(envs[0].session, role, peer, (7,), 0, 1, Value(1))
        return [codec.encode_frame([*envs, extra])]

    with pytest.raises(RunFailedError) as info:
        _run_tampered(spmd, add_extra)
    assert "unexpected message" in str(info.value.errors[1])
    assert info.value.errors[1].step == "7"


def test_garbage_frame_fails_with_decode_error_naming_peer(spmd) -> None:
    with pytest.raises(RunFailedError) as info:
        _run_tampered(spmd, lambda role, peer, frame: [b"\xc1garbage"] if role == 2 else [frame])
    err = info.value.errors[0]
    assert "DecodeError" in type(err).__name__ and err.peer == 2


def test_wrong_session_is_refused(spmd) -> None:
    def resession(role: int, peer: int, frame: bytes) -> list[bytes]:
        envs = codec.decode_frame(frame)
        return [codec.encode_frame([
            Envelope(b"other", e.sender, e.receiver, e.path, e.seq, e.round, e.message)
            for e in envs
        ])]

    with pytest.raises(RunFailedError) as info:
        _run_tampered(spmd, lambda r, p, f: resession(r, p, f) if r == 0 else [f])
    assert "session" in str(info.value.errors[1])


def test_recv_arrays_checks_the_message_type(spmd) -> None:
    async def program(ctx: Context) -> None:
        await ctx.send(next_party(ctx.role), Value("not arrays"))
        await ctx.recv_array(prev_party(ctx.role), ArraySpec.ring(1))

    with pytest.raises(RunFailedError, match="expected Arrays, got Value"):
        spmd(program)


def test_arrays_are_copied_at_send_time(spmd) -> None:
    async def program(ctx: Context) -> int:
        a = np.zeros(3, np.uint64)
        await ctx.send(next_party(ctx.role), Arrays((a,)))
        a[:] = 9
        got = await ctx.recv_array(prev_party(ctx.role), ArraySpec.ring(3))
        return int(got.sum())

    assert all(v == 0 for v in spmd(program).results.values())


def test_threaded_runner_matches_the_in_memory_one(spmd) -> None:
    async def program(ctx: Context) -> list:
        async def step(c: Context, i: int) -> int:
            await c.send_arrays(next_party(c.role), np.full(3, i + c.role, np.uint64))
            return int((await c.recv_array(prev_party(c.role), ArraySpec.ring(3)))[0])

        return await ctx.gather(*[lambda c, i=i: step(c, i) for i in range(5)])

    threaded = run_threaded(dict.fromkeys(PARTIES, program))
    in_memory = spmd(program)
    assert threaded.results == in_memory.results
    for p in PARTIES:
        assert threaded.stats[p].totals() == in_memory.stats[p].totals()


def test_threaded_runner_gives_each_role_its_own_instruments() -> None:
    class Threads(trio.abc.Instrument):
        def __init__(self) -> None:
            self.seen: set[int] = set()

        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            self.seen.add(threading.get_ident())

    async def program(ctx: Context) -> None:
        await ctx.send_arrays(next_party(ctx.role), np.zeros(3, np.uint64))
        await ctx.recv_array(prev_party(ctx.role), ArraySpec.ring(3))

    instruments = {role: Threads() for role in PARTIES}
    run_threaded(dict.fromkeys(PARTIES, program),
                 role_instruments={role: [i] for role, i in instruments.items()})
    seen = [i.seen for i in instruments.values()]
    assert all(len(threads) == 1 for threads in seen)  # its role's loop only
    assert len(set.union(*seen)) == len(PARTIES)


def test_threaded_runner_reports_failures() -> None:
    async def program(ctx: Context) -> None:
        if ctx.role == 2:
            raise ValueError("thread boom")
        await ctx.recv(2)

    with pytest.raises(RunFailedError) as info:
        run_threaded(dict.fromkeys(PARTIES, program))
    assert info.value.root_role == 2
    assert all(isinstance(info.value.errors[p], PeerAbortedError) for p in (0, 1))


def test_ready_envelopes_are_coalesced_up_to_the_frame_cap(spmd) -> None:
    big = np.zeros((3 << 20) // 8, np.uint64)  # 3 MiB (one piece): two never share a frame

    async def program(ctx: Context) -> None:
        if ctx.role == 0:
            for i in range(10):
                await ctx.send(1, Value(i))
            await trio.sleep(0.01)
            for _ in range(3):
                await ctx.send_arrays(2, big)
        elif ctx.role == 1:
            assert [(await ctx.recv(0)).value for _ in range(10)] == list(range(10))
        else:
            for _ in range(3):
                await ctx.recv_array(0, ArraySpec.ring(big.shape))

    # A transport that makes the sender wait (as TCP can) gets writer tasks that coalesce.
    stats = spmd(program, wrap_transport=lambda t: _Tamper(t, lambda r, p, f: [f])).stats[0]
    assert dict(stats.frames_sent) == {1: 1, 2: 3}
    # The in-process transport hands each frame over from the sending step itself.
    assert dict(spmd(program).stats[0].frames_sent) == {1: 10, 2: 3}


class _FramesOnly(Transport):
    """``inner`` as it is but for decoded messages: every message travels as a frame."""

    def __init__(self, inner: Transport):
        self.inner, self.role, self.peers = inner, inner.role, inner.peers
        self.immediate = inner.immediate

    async def send(self, peer: int, frame: bytes) -> None:
        await self.inner.send(peer, frame)

    def send_immediately(self, peer: int, frame: bytes) -> None:
        self.inner.send_immediately(peer, frame)

    def push_to(self, deliver, fail) -> bool:  # type: ignore[no-untyped-def]
        return self.inner.push_to(deliver, fail)

    async def receive(self):  # type: ignore[no-untyped-def]
        return await self.inner.receive()

    async def close_peer(self, peer: int) -> None:
        await self.inner.close_peer(peer)


async def _swap_arrays(ctx: Context) -> tuple[list, int, int]:
    """A Value to each peer (once both have come, every party has started: a message to a
    party not yet started waits as a frame), then arrays to the next party, in a scope; the
    arrays are overwritten once sent (the peer's must not change)."""
    for peer in (next_party(ctx.role), prev_party(ctx.role)):
        await ctx.send(peer, Value(ctx.role))
    value = (await ctx.recv(prev_party(ctx.role))).value
    await ctx.recv(next_party(ctx.role))
    x = np.arange(6, dtype=np.uint64).reshape(2, 3) + 10 * ctx.role
    with ctx.scope("swap"):
        await ctx.send_arrays(next_party(ctx.role), x, np.int32(ctx.role))
        x[:] = 0
        got, role = await ctx.recv_arrays(prev_party(ctx.role), ArraySpec.ring((2, 3)),
                                          ArraySpec.of(np.int32, ()))
    assert not got.flags.writeable
    return got.tolist(), int(role), value


def test_parties_of_one_loop_hand_over_array_messages_decoded(spmd) -> None:
    """In one event loop an array message is handed to its peer decoded (no frame encoded
    or decoded; other messages still go as frames), with the results, traffic, rounds and
    wire bytes and frames that frames give, read-only arrays and copies the sender's later
    writes do not reach."""
    with mock.patch.object(codec, "encode_frame", wraps=codec.encode_frame) as encode:
        direct = spmd(_swap_arrays)
    encoded = {type(env.message) for call in encode.call_args_list for env in call.args[0]}
    assert Value in encoded and Arrays not in encoded
    framed = spmd(_swap_arrays, wrap_transport=_FramesOnly)
    assert direct.results == framed.results
    assert direct.results[1] == ([[0, 1, 2], [3, 4, 5]], 0, 0)
    for role in PARTIES:
        a, b = direct.stats[role], framed.stats[role]
        assert (a.traffic, a.max_round, a.wire_bytes_sent, a.frames_sent) == (
            b.traffic, b.max_round, b.wire_bytes_sent, b.frames_sent)
        assert [e.rounds for e in a.scope_rounds] == [e.rounds for e in b.scope_rounds]


def test_a_decoded_envelope_of_another_session_fails_the_session(spmd) -> None:
    """What a frame's decoding checks, a decoded hand-over checks too: an envelope of
    another session (or misaddressed) fails the receiver with SessionMismatchError naming
    the peer, as the frame would."""
    async def program(ctx: Context) -> None:
        if ctx.role == 1:
            ctx.runtime.on_decoded(0, Envelope(b"another session", 0, 1, (), 0, 1,
                                               Arrays((np.zeros(1, np.uint64),))))
            await ctx.recv(0)

    with pytest.raises(RunFailedError) as info:
        spmd(program)
    error = info.value.errors[1]
    assert isinstance(error, SessionMismatchError) and error.peer == 0
    assert "envelope session" in str(error)


async def test_only_direct_links_take_decoded_messages_in_order() -> None:
    """A memory link hands a decoded message over once its receiver takes them, after the
    frames sent before it (in order); an emulated link never does (its frames are timed by
    their size); a frozen link drops them as it drops frames; a closed one refuses them."""
    got: list[tuple[int, object]] = []
    async with open_memory_network([0, 1]) as network:
        sender, receiver = network.endpoint(0), network.endpoint(1)
        assert not sender.takes_decoded(1)  # the receiver has not asked for them
        sender.send_immediately(1, b"first")
        assert receiver.push_to(lambda peer, frame: got.append((peer, frame)), None)
        assert receiver.push_decoded_to(lambda peer, item: got.append((peer, item)))
        assert sender.takes_decoded(1) and not sender.takes_decoded(5)
        sender.hand_over_decoded(1, "second")
        sender.send_immediately(1, b"third")
        assert got == [(0, b"first"), (0, "second"), (0, b"third")]
        network.freeze(0)
        sender.hand_over_decoded(1, "dropped")
        assert got[-1] == (0, b"third")
    async with open_memory_network([0, 1]) as network:
        sender, receiver = network.endpoint(0), network.endpoint(1)
        receiver.push_to(lambda peer, frame: None, None)
        receiver.push_decoded_to(lambda peer, item: None)
        await sender.close_peer(1)
        with pytest.raises(PeerDisconnectedError, match="closed"):
            sender.hand_over_decoded(1, "late")
    async with open_memory_network([0, 1], latency=0.01) as network:
        network.endpoint(1).push_decoded_to(lambda peer, item: None)
        assert not network.endpoint(0).takes_decoded(1)
