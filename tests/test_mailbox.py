"""The mailbox on its own: every path of deliver / take / wait, failures, forget, statistics."""

from __future__ import annotations

import numpy as np
import pytest
import trio
import trio.testing

from puma_async.codec import Arrays, Envelope
from puma_async.errors import PeerDisconnectedError, ProtocolError
from puma_async.mailbox import Mailbox

SESSION = b"s" * 16


def envelope(sender: int, path: tuple[int, ...], seq: int = 0) -> Envelope:
    return Envelope(SESSION, sender, 0, path, seq, 1, Arrays((np.arange(3, dtype=np.uint64),)))


async def park(mailbox: Mailbox, key: tuple[int, tuple[int, ...], int],
               outcomes: dict[object, object]) -> None:
    """Wait for ``key``; file the envelope or the error in ``outcomes``."""
    try:
        outcomes[key] = await mailbox.wait_for(key)
    except ProtocolError as exc:
        outcomes[key] = exc


def test_delivered_before_the_receive_is_taken_once() -> None:
    mailbox = Mailbox(0)
    env = envelope(1, (2, 0))
    mailbox.deliver(env)
    assert mailbox.statistics().ready == {1: 1}
    assert mailbox.take_ready((1, (2, 0), 0)) is env
    assert mailbox.take_ready((1, (2, 0), 0)) is None
    assert mailbox.unexpected() == []
    assert mailbox.statistics().ready == {}


async def test_delivered_after_the_receive_wakes_it() -> None:
    mailbox = Mailbox(0)
    outcomes: dict[object, object] = {}
    key = (1, (3,), 0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(park, mailbox, key, outcomes)
        await trio.testing.wait_all_tasks_blocked()
        assert mailbox.statistics().waiting == (key,)
        env = envelope(1, (3,))
        mailbox.deliver(env)
    assert outcomes[key] is env
    assert mailbox.statistics().waiting == ()


def test_a_key_delivered_twice_is_a_protocol_error() -> None:
    mailbox = Mailbox(0)
    mailbox.deliver(envelope(2, (1,), 4))
    with pytest.raises(ProtocolError, match="duplicate message seq 4") as info:
        mailbox.deliver(envelope(2, (1,), 4))
    assert (info.value.peer, info.value.step) == (2, "1")
    mailbox.take_ready((2, (1,), 4))
    with pytest.raises(ProtocolError, match="duplicate"):  # taken already: still a duplicate
        mailbox.deliver(envelope(2, (1,), 4))
    mailbox.deliver(envelope(1, (1,), 4))  # same step and seq from another sender: fine
    mailbox.deliver(envelope(2, (1,), 5))  # the next seq: fine


async def test_a_key_received_twice_is_a_protocol_error() -> None:
    mailbox = Mailbox(0)
    key = (1, (0,), 0)
    outcomes: dict[object, object] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(park, mailbox, key, outcomes)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(ProtocolError, match="received twice"):  # while one waits
            await mailbox.wait_for(key)
        mailbox.deliver(envelope(*key))
    with pytest.raises(ProtocolError, match="received twice"):  # after it was taken
        await mailbox.wait_for(key)


def test_envelopes_nobody_took_are_unexpected_in_key_order() -> None:
    mailbox = Mailbox(0)
    for sender, path, seq in [(2, (1, 1), 0), (1, (5,), 1), (1, (5,), 0)]:
        mailbox.deliver(envelope(sender, path, seq))
    mailbox.take_ready((1, (5,), 1))
    assert mailbox.unexpected() == [(1, (5,), 0), (2, (1, 1), 0)]


async def test_a_failed_peer_fails_its_receives_only() -> None:
    mailbox = Mailbox(0)
    outcomes: dict[object, object] = {}
    early = envelope(1, (9,))
    mailbox.deliver(early)  # arrived before the peer finished: still taken
    first, second = PeerDisconnectedError("gone", peer=1), PeerDisconnectedError("again", peer=1)
    async with trio.open_nursery() as nursery:
        for key in [(1, (7,), 0), (1, (8,), 0), (2, (7,), 0)]:
            nursery.start_soon(park, mailbox, key, outcomes)
        await trio.testing.wait_all_tasks_blocked()
        mailbox.fail_peer(1, first)
        mailbox.fail_peer(1, second)  # the first error stays
        await trio.testing.wait_all_tasks_blocked()
        stats = mailbox.statistics()
        assert stats.waiting == ((2, (7,), 0),) and stats.failed_peers == (1,)
        assert not stats.failed and mailbox.failure is None
        mailbox.deliver(envelope(2, (7,)))
    assert outcomes[(1, (7,), 0)] is first and outcomes[(1, (8,), 0)] is first
    assert isinstance(outcomes[(2, (7,), 0)], Envelope)
    assert mailbox.take_ready((1, (9,), 0)) is early
    with pytest.raises(PeerDisconnectedError, match="gone"):  # a later receive fails at once
        await mailbox.wait_for((1, (10,), 0))


async def test_a_global_failure_fails_every_receive_with_the_first_error() -> None:
    mailbox = Mailbox(0)
    outcomes: dict[object, object] = {}
    first, later = ProtocolError("bad frame", peer=2), ProtocolError("other", peer=1)
    async with trio.open_nursery() as nursery:
        for key in [(1, (0,), 0), (2, (0,), 0)]:
            nursery.start_soon(park, mailbox, key, outcomes)
        await trio.testing.wait_all_tasks_blocked()
        mailbox.fail_all(first)
        mailbox.fail_all(later)
    assert set(map(id, outcomes.values())) == {id(first)}
    assert mailbox.failure is first and mailbox.statistics().failed
    with pytest.raises(ProtocolError, match="bad frame"):
        await mailbox.wait_for((1, (1,), 0))
    mailbox.fail_peer(1, PeerDisconnectedError("gone", peer=1))
    with pytest.raises(ProtocolError, match="bad frame"):  # the global error comes first
        await mailbox.wait_for((1, (2,), 0))


async def test_a_cancelled_receive_leaves_nothing_behind() -> None:
    mailbox = Mailbox(0)
    key = (1, (4,), 0)
    with trio.move_on_after(1) as cancel_scope:  # (real time; the wait is cancelled at once)
        cancel_scope.cancel()
        await mailbox.wait_for(key)
    assert cancel_scope.cancelled_caught
    assert mailbox.statistics().waiting == ()
    env = envelope(*key)
    mailbox.deliver(env)  # nobody waits: filed, not handed to the cancelled task
    assert mailbox.take_ready(key) is env


async def test_a_receive_cancelled_while_parked_can_wait_again() -> None:
    mailbox = Mailbox(0)
    key = (2, (4,), 1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(mailbox.wait_for, key)
        await trio.testing.wait_all_tasks_blocked()
        assert mailbox.statistics().waiting == (key,)
        nursery.cancel_scope.cancel()
    assert mailbox.statistics().waiting == ()
    outcomes: dict[object, object] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(park, mailbox, key, outcomes)
        await trio.testing.wait_all_tasks_blocked()
        mailbox.deliver(envelope(*key))
    assert isinstance(outcomes[key], Envelope)


def test_forget_drops_the_taken_keys_of_a_finished_step() -> None:
    mailbox = Mailbox(0)
    mailbox.deliver(envelope(1, (6, 1)))
    mailbox.deliver(envelope(1, (6, 2)))
    mailbox.take_ready((1, (6, 1), 0))
    mailbox.take_ready((1, (6, 2), 0))
    mailbox.forget((6, 1))
    mailbox.deliver(envelope(1, (6, 1)))  # a late copy: no longer a duplicate...
    assert mailbox.unexpected() == [(1, (6, 1), 0)]  # ...but reported as unexpected
    with pytest.raises(ProtocolError, match="duplicate"):  # the other step still remembers
        mailbox.deliver(envelope(1, (6, 2)))
    mailbox.forget((7,))  # a step that took nothing: no-op


async def test_statistics_count_waiting_receives_by_peer_and_step() -> None:
    mailbox = Mailbox(0)
    keys = [(2, (1, 0), 1), (1, (1, 0), 0), (2, (1, 0), 0), (1, (3,), 0), (2, (), 0)]
    mailbox.deliver(envelope(1, (9,)))
    mailbox.deliver(envelope(2, (9,)))
    mailbox.deliver(envelope(2, (9,), 1))
    async with trio.open_nursery() as nursery:
        for key in keys:
            nursery.start_soon(mailbox.wait_for, key)
        await trio.testing.wait_all_tasks_blocked()
        stats = mailbox.statistics()
        nursery.cancel_scope.cancel()
    assert stats.waiting == tuple(sorted(keys))
    assert stats.waiting_by_peer == {1: 2, 2: 3}
    assert stats.waiting_by_step() == {(1, "1.0"): 1, (1, "3"): 1, (2, ""): 1, (2, "1.0"): 2}
    assert stats.ready == {1: 1, 2: 2}
    assert stats.describe(limit=2) == (
        "5 receive(s) waiting: P1 at step 1.0 seq 0, P1 at step 3 seq 0 (+3 more); "
        "3 envelope(s) not taken (P1: 1, P2: 2)"
    )
    assert Mailbox(1).statistics().describe() == "no receive waiting"
