"""Messages in pieces: the plan (a pure function of the layout), split and join against numpy
(hypothesis: 0-d and empty arrays, mixed dtypes, payloads just below, at and above the piece
size), and :meth:`Context.send_arrays` / :meth:`Context.recv_arrays` sending a large message
as pieces of one round, accounted byte for byte, checked as one message is."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from puma_async import pieces
from puma_async.context import ArraySpec, Context
from puma_async.errors import ProtocolError, RunFailedError
from puma_async.pieces import Joiner, layout_header, plan_pieces, read_header, split_pieces
from puma_async.roles import PARTIES

DTYPES = [np.dtype(d) for d in ("bool", "uint8", "int16", "uint32", "float32", "uint64",
                                "float64")]
shapes = st.lists(st.integers(0, 7), min_size=0, max_size=3).map(tuple)  # () is 0-d
layouts = st.lists(st.tuples(st.sampled_from(DTYPES), shapes), min_size=0, max_size=6)


def make(layout: list[tuple[np.dtype, tuple[int, ...]]], seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, shape).astype(dtype) for dtype, shape in layout]


def payload(arrays: list[np.ndarray]) -> int:
    return sum(a.nbytes for a in arrays)


def check_plan(arrays: list[np.ndarray], piece_bytes: int) -> None:
    """The plan's invariants and a round trip through split and join."""
    plan = plan_pieces(arrays, piece_bytes)
    specs = [ArraySpec.of(a.dtype, a.shape) for a in arrays]
    assert plan == plan_pieces(specs, piece_bytes)  # the receiver plans the same
    if payload(arrays) <= piece_bytes:
        assert plan is None
        return
    assert plan is not None
    head = layout_header(arrays)
    assert read_header(head) == [a.shape for a in arrays]
    covered: list[list[tuple[int, int]]] = [[] for _ in arrays]
    for k, piece in enumerate(plan):
        size = sum((s.stop - s.start) * arrays[s.array].dtype.itemsize for s in piece)
        if k == 0:
            size += head.nbytes
            assert size <= piece_bytes or not piece  # the header, alone if it is too long
        else:
            one_element = len(piece) == 1 and piece[0].stop - piece[0].start == 1
            assert piece and (size <= piece_bytes or one_element)
        for s in piece:
            assert s.start < s.stop
            covered[s.array].append((s.start, s.stop))
    for a, spans in zip(arrays, covered, strict=True):  # every element once, in order
        starts = [0] + [stop for _, stop in spans]
        assert [start for start, _ in spans] == starts[:-1] and starts[-1] == a.size
    joiner = Joiner(specs, plan)
    for k, got in enumerate(split_pieces(arrays, plan)):
        assert tuple((a.dtype, a.size) for a in got) == joiner.expected(k)
        assert all(a.ndim == 1 for a in got)
        assert k or joiner.foreign_shapes(got) is None
        joiner.put(k, got)
    for want, got in zip(arrays, joiner.arrays, strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert np.array_equal(got, want)


@settings(max_examples=300, deadline=None)
@given(layouts, st.integers(0, 2**32 - 1), st.integers(1, 400))
def test_plans_split_and_join_any_layout(layout, seed: int, piece_bytes: int) -> None:
    check_plan(make(layout, seed), piece_bytes)


@settings(max_examples=200, deadline=None)
@given(layouts, st.integers(0, 2**32 - 1), st.integers(-9, 9))
def test_payloads_just_below_at_and_above_the_piece_size(layout, seed: int, delta: int
                                                          ) -> None:
    arrays = make(layout, seed)
    check_plan(arrays, max(1, payload(arrays) + delta))


def test_a_message_within_a_piece_travels_whole() -> None:
    words = np.zeros(512, np.uint64)
    assert plan_pieces([words], 4096) is None
    assert plan_pieces([words, np.zeros(0, np.uint8)], 4096) is None
    assert plan_pieces([], 1) is None
    assert plan_pieces([ArraySpec.ring((None,))], 8) is None  # cannot be planned: whole
    plan = plan_pieces([words, np.zeros((), np.uint8)], 4096)  # a header of 4 words first
    assert plan == (((0, 0, 508),), ((0, 508, 512), (1, 0, 1)))
    assert plan_pieces([np.zeros(1025, np.uint32)], 4096) == (((0, 0, 1018),), ((0, 1018, 1025),))
    pairs = tuple(((0, i, i + 2),) for i in (0, 2, 4, 6))  # the header of 3 words alone first
    assert plan_pieces([np.zeros(9, np.uint64)], 16) == ((), *pairs, ((0, 8, 9),))


def test_headers_name_the_shapes() -> None:
    arrays = [np.zeros((2, 3)), np.zeros(()), np.zeros((0, 5, 1))]
    assert layout_header(arrays).tolist() == [3, 2, 2, 3, 0, 3, 0, 5, 1]
    assert read_header(layout_header(arrays)) == [(2, 3), (), (0, 5, 1)]
    for bad in ([], [2, 1, 5], [1, 1, 5, 7], [1, 3, 5]):
        assert read_header(np.array(bad, np.uint64)) is None
    joiner = Joiner([ArraySpec.ring((30, 20))], plan_pieces([ArraySpec.ring((30, 20))], 4096))
    assert joiner.foreign_shapes([np.array([1, 1, 600], np.uint64)]) == [(600,)]
    assert joiner.foreign_shapes([np.zeros(3, np.uint32)]) is None
    with pytest.raises(ValueError, match="malformed layout header"):
        joiner.put(0, [np.zeros(4, np.uint64), np.zeros(508, np.uint64)])


def test_the_default_piece_size() -> None:
    assert pieces.PIECE_BYTES == 4 << 20
    assert plan_pieces([np.zeros(1 << 19, np.uint64)]) is None
    plan = plan_pieces([np.zeros((1 << 19) + 1, np.uint64)])
    assert plan is not None and len(plan) == 2


# ----------------------------------------------------------------------------- in a run


def run(programs):
    from puma_async.runner import run_local

    return run_local(programs, clock=trio.testing.MockClock(autojump_threshold=0),
                     record_messages=True)


ARRAYS = [np.arange(300, dtype=np.uint64).reshape(20, 15), np.array(7, np.int32),
          np.zeros((0, 4), np.uint64), np.arange(1000, dtype=np.uint8) % 3 == 0,
          np.linspace(0, 1, 77, dtype=np.float64)]


def test_a_large_message_travels_in_pieces_of_one_round() -> None:
    """Above the piece size (lowered to 512 bytes), P0's arrays reach P1 in consecutive
    messages of the same step and round, each of at most 512 payload bytes, accounted as
    their payload (the same bytes as one message) and one round; P1 gets them back exactly."""
    total = payload(ARRAYS) + layout_header(ARRAYS).nbytes  # 2400 + 4 + 1000 + 616 + 96
    specs = [ArraySpec.of(a.dtype, a.shape) for a in ARRAYS]

    async def program(ctx: Context) -> tuple[np.ndarray, ...] | None:
        if ctx.role == 0:
            await ctx.send_arrays(1, *ARRAYS)
            await ctx.send_arrays(1, np.ones(3, np.uint64))  # small: whole, after the pieces
        elif ctx.role == 1:
            got = await ctx.recv_arrays(0, *specs)
            await ctx.recv_array(0, ArraySpec.ring(3))
            return got
        return None

    with mock.patch.object(pieces, "PIECE_BYTES", 512):
        result = run(dict.fromkeys(PARTIES, program))
    for want, got in zip(ARRAYS, result.results[1], strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert np.array_equal(got, want)
    sent = result.stats[0].messages
    count = len(plan_pieces(ARRAYS, 512))
    assert count == -(-total // 512) == 9
    assert [m.seq for m in sent] == list(range(count + 1))
    assert {m.round for m in sent} == {1} and {m.path for m in sent} == {()}
    assert all(m.nbytes <= 512 for m in sent)
    assert sum(m.nbytes for m in sent) == total + 24
    for stats, direction in ((result.stats[0], "sent"), (result.stats[1], "received")):
        totals = stats.totals()
        assert totals.rounds == 1
        assert getattr(totals, f"bytes_{direction}") == total + 24
        assert getattr(totals, f"messages_{direction}") == count + 1


@pytest.mark.parametrize(("sent", "got"), [
    ([np.zeros(600, np.uint64)], "arrays of shapes (600,)"),  # as many elements
    ([np.zeros(601, np.uint64)], "arrays of shapes (601,)"),
    ([np.zeros(300, np.uint64)] * 2, "arrays of shapes (300,), (300,)"),
    ([np.zeros((30, 20), np.int64)], "[uint64 (4,), uint64 (508,)] (piece 1 of 2 of [uint64 "
     "(30, 20)]), got [uint64 (4,), int64 (508,)]"),  # another dtype: the first segment
    ([np.zeros(500, np.uint64)], "[uint64 (4,), uint64 (508,)] (piece 1 of 2 of [uint64 "
     "(30, 20)]), got [uint64 (500,)]"),  # within a piece: travels whole
])
def test_a_message_not_as_planned_is_refused(sent: list[np.ndarray], got: str) -> None:
    """The receiver checks the first piece's header of shapes, then each piece's arrays
    against its own plan: it refuses what it would refuse of a whole message."""

    async def program(ctx: Context) -> None:
        if ctx.role == 0:
            await ctx.send_arrays(1, *sent)
        elif ctx.role == 1:
            await ctx.recv_arrays(0, ArraySpec.ring((30, 20)))

    with mock.patch.object(pieces, "PIECE_BYTES", 4096), pytest.raises(RunFailedError) as info:
        run(dict.fromkeys(PARTIES, program))
    error = info.value.errors[1]
    assert isinstance(error, ProtocolError) and error.peer == 0
    if got.startswith("arrays"):
        assert f"expected arrays [uint64 (30, 20)], got {got}" in str(error)
    else:
        assert f"expected arrays {got}" in str(error)
