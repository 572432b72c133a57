"""Codec: round trips of every message type and dtype; bad bytes raise only typed errors."""

from __future__ import annotations

import dataclasses
import struct
import tracemalloc
from collections.abc import Callable

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from puma_async import codec
from puma_async.codec import Abort, Arrays, Envelope, Seed, Value
from puma_async.errors import DecodeError, SessionMismatchError
from puma_async.runtime import COALESCE_BYTES
from puma_async.session.messages import MAX_POSITIONS, End, Run

DTYPES = [
    "bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64",
    "float32", "float64",
]
SESSION = b"s" * 16

arrays = st.sampled_from(DTYPES).flatmap(
    lambda dt: hnp.arrays(
        np.dtype(dt), hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)
    )
)

scalars = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
    | st.text(max_size=codec.MAX_VALUE_BYTES // 4) | st.binary(max_size=codec.MAX_VALUE_BYTES)
)
messages = st.one_of(
    st.lists(arrays, max_size=3).map(lambda a: Arrays(tuple(a))),
    st.sampled_from([16, 32]).flatmap(lambda n: st.binary(min_size=n, max_size=n)).map(Seed),
    st.builds(Abort, st.text(max_size=50), st.text(max_size=20)),
    st.builds(Run, st.integers(1, MAX_POSITIONS)),
    st.just(End()),  # no fields
    st.builds(Value, scalars | st.lists(scalars, max_size=codec.MAX_VALUE_ITEMS)),
)


def assert_messages_equal(decoded: codec.Message, original: codec.Message) -> None:
    a, b = decoded, original
    assert type(a) is type(b)
    if isinstance(a, Arrays):
        assert len(a.arrays) == len(b.arrays)
        for x, y in zip(a.arrays, b.arrays, strict=True):
            assert x.dtype == y.dtype and x.shape == y.shape
            np.testing.assert_array_equal(x, y)
            assert not x.flags.writeable
    else:
        assert a == b


@settings(max_examples=200)
@given(messages)
def test_message_round_trip(msg: codec.Message) -> None:
    assert_messages_equal(codec.decode_message(codec.encode_message(msg)), msg)


@settings(max_examples=100)
@given(st.lists(messages, min_size=1, max_size=20), st.integers(0, 2**40))
def test_frame_round_trip(msgs: list[codec.Message], round_: int) -> None:
    envs = [Envelope(SESSION, 1, 2, (i, 3), i, round_, m) for i, m in enumerate(msgs)]
    decoded = codec.decode_frame(codec.encode_frame(envs), session=SESSION, sender=1, receiver=2)
    assert [e[:6] for e in decoded] == [e[:6] for e in envs]  # every field but the message
    for d, e in zip(decoded, envs, strict=True):
        assert_messages_equal(d.message, e.message)



@settings(max_examples=50)
@given(st.lists(messages, min_size=0, max_size=20))
def test_split_frame_gives_each_envelope_with_its_encoding(msgs: list[codec.Message]) -> None:
    envs = [Envelope(SESSION, 1, 2, (i,), i, 7, m) for i, m in enumerate(msgs)]
    frame = codec.merge_frames([codec.encode_frame([e]) for e in envs]) if envs else (
        codec.encode_frame([]))
    parts = codec.split_frame(frame)
    assert codec.frame_from_encoded([raw for raw, _ in parts]) == frame
    for (raw, env), original in zip(parts, envs, strict=True):
        (alone,) = codec.decode_frame(codec.frame_from_encoded([raw]))
        assert env[:6] == alone[:6] == original[:6]
        assert_messages_equal(env.message, original.message)


def test_split_frame_validates_as_decoding_does() -> None:
    one = codec.encode_frame([Envelope(SESSION, 0, 1, (), 0, 1, Value(0))])
    with pytest.raises(DecodeError, match="bytes after the last envelope"):
        codec.split_frame(one + b"\x00")
    with pytest.raises(DecodeError, match="exceeds the limit"):
        codec.split_frame(one, max_bytes=len(one) - 1)

@pytest.mark.parametrize("dtype", DTYPES)
def test_every_dtype_round_trips_with_its_values(dtype: str) -> None:
    a = (np.arange(24) * 7 % 5).astype(dtype).reshape(2, 3, 4)
    b = codec.decode_message(codec.encode_message(Arrays((a, a.T))))
    np.testing.assert_array_equal(b.arrays[0], a)
    np.testing.assert_array_equal(b.arrays[1], a.T)


@pytest.mark.parametrize("array", [
    np.array(7, dtype=">u8"),  # big-endian 0-d: converted, and still 0-d
    np.arange(6, dtype=">i4").reshape(2, 3),
    np.arange(24, dtype=np.uint64).reshape(4, 6)[::2, 1::2],  # not contiguous
])
def test_arrays_needing_conversion_keep_shape_and_values(array: np.ndarray) -> None:
    (got,) = codec.decode_message(codec.encode_message(Arrays((array,)))).arrays
    assert got.shape == array.shape and got.dtype == array.dtype.newbyteorder("=")
    np.testing.assert_array_equal(got, array)


def test_non_whitelisted_dtype_is_refused_on_encode() -> None:
    with pytest.raises(TypeError, match="whitelist"):
        codec.encode_message(Arrays((np.zeros(2, dtype=np.complex128),)))


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_decode_errors(data: bytes) -> None:
    try:
        codec.decode_frame(data, session=SESSION, sender=1, receiver=2)
    except DecodeError:
        pass
    except SessionMismatchError:
        pass


def _frame() -> bytes:
    """Envelopes with every integer form the reader takes inline (fixint, uint 8 and 16)
    and one it does not (uint 32), arrays with ext 8 and ext 16 headers."""
    arr, long = np.arange(10, dtype=np.uint64), np.arange(40, dtype=np.uint64)
    return codec.encode_frame([
        Envelope(SESSION, 0, 1, (1, 2), 0, 1, Arrays((arr, arr))),
        Envelope(SESSION, 0, 1, (1, 200, 300, 70_000), 130, 700, Arrays((long,))),
        Envelope(SESSION, 0, 1, (), 1, 1, Value([1, "x"])),
    ])


def test_every_truncation_of_a_frame_raises_decode_error() -> None:
    frame = _frame()
    for n in range(len(frame)):
        with pytest.raises(DecodeError):
            codec.decode_frame(frame[:n], session=SESSION, sender=0, receiver=1)


def one_array(array: np.ndarray) -> bytearray:
    """An encoded Arrays message of ``array``; the payload header starts 11 bytes before the
    array's raw bytes (dtype code, ndim 1, shape)."""
    return bytearray(codec.encode_message(Arrays((array,))))


def test_array_payload_must_match_shape() -> None:
    bad = one_array(np.arange(4, dtype=np.uint64))
    shape_at = len(bad) - 32 - 8
    bad[shape_at:shape_at + 8] = (5).to_bytes(8, "little")
    with pytest.raises(DecodeError, match="does not match shape"):
        codec.decode_message(bytes(bad))


def test_unknown_dtype_code_and_ext_type() -> None:
    bad = one_array(np.arange(2, dtype=np.uint8))
    bad[len(bad) - 2 - 8 - 2] = 200
    with pytest.raises(DecodeError, match="whitelist"):
        codec.decode_message(bytes(bad))
    with pytest.raises(DecodeError, match="ext type 7"):
        codec.decode_message(b"\x92\x01\x91" + msgpack.packb(msgpack.ExtType(7, b"xx")))


def test_empty_array_with_an_unrepresentable_dimension() -> None:
    payload = bytes((codec._DTYPE_CODE[np.dtype("uint8")], 2)) + struct.pack("<2Q", 0, 2**63)
    data = b"\x92\x01\x91" + msgpack.packb(msgpack.ExtType(1, payload))
    with pytest.raises(DecodeError, match="shape"):
        codec.decode_message(data)


def test_frame_size_limit() -> None:
    with pytest.raises(DecodeError, match="exceeds the limit"):
        codec.decode_frame(_frame(), max_bytes=50)


def test_wrong_session_sender_or_receiver() -> None:
    frame = _frame()
    with pytest.raises(SessionMismatchError, match="session"):
        codec.decode_frame(frame, session=b"other", sender=0, receiver=1)
    with pytest.raises(SessionMismatchError, match="sender"):
        codec.decode_frame(frame, session=SESSION, sender=2, receiver=1)
    with pytest.raises(SessionMismatchError, match="receiver"):
        codec.decode_frame(frame, session=SESSION, sender=0, receiver=2)


def test_wrong_version_is_a_session_mismatch_naming_the_peer() -> None:
    env = codec.packb([codec.VERSION + 1, SESSION, 0, 1, [], 0, 0, [5, 1]])
    with pytest.raises(SessionMismatchError, match="version") as raised:
        codec.decode_frame(codec.frame_from_encoded([env]), sender=0)
    assert raised.value.peer == 0


@pytest.mark.parametrize(
    "fields",
    [
        [codec.VERSION, SESSION, -1, 1, [], 0, 0, [5, 1]],
        [np.arange(2), SESSION, 0, 1, [], 0, 0, [5, 1]],  # no truth value: not a ValueError
        [codec.VERSION, SESSION, 0, 1, [0, -1], 0, 0, [5, 1]],
        [codec.VERSION, SESSION, 0, 1, [True], 0, 0, [5, 1]],
        [codec.VERSION, SESSION, 0, 1, [], 0, 0, [True, 1]],
        [codec.VERSION, SESSION, 0, 1, [], 0, 0, [1, [np.arange(2), 3]]],
        [codec.VERSION, SESSION, 0, 1, ["a"], 0, 0, [5, 1]],
        [codec.VERSION, "text", 0, 1, [], 0, 0, [5, 1]],
        [codec.VERSION, SESSION, 0, 1, [], 0, 0, [99, 1]],
        [codec.VERSION, SESSION, 0, 1, [], 0, 0, [1, [1, 2]]],
        [codec.VERSION, SESSION, 0, 1, [], 0, 0, [2, b"short"]],
        [codec.VERSION, SESSION, 0, 1, [], 0, 0, [1]],
        [codec.VERSION, SESSION, 0, 1, [], 0],
    ],
)
def test_malformed_envelopes(fields: list) -> None:
    with pytest.raises(DecodeError):
        codec.decode_frame(codec.frame_from_encoded([codec.packb(fields)]))


def test_frame_header_for_many_envelopes() -> None:
    one = codec.encode_frame([Envelope(SESSION, 0, 1, (), 0, 1, Value(0))])
    for count in (2, 15, 16, 300):  # fixarray and array 16 headers
        merged = codec.merge_frames([one] * count)
        assert len(codec.decode_frame(merged)) == count
    assert codec.merge_frames([one] * 70000)[:5] == b"\xdd" + (70000).to_bytes(4, "big")
    assert len(codec.decode_frame(b"\xdd\x00\x00\x00\x02" + one[1:] * 2)) == 2  # array 32
    assert codec.merge_frames([one]) is one


def test_merge_frames_refuses_frames_of_several_envelopes() -> None:
    env = Envelope(SESSION, 0, 1, (), 0, 1, Value(0))
    two = codec.encode_frame([env, env])
    with pytest.raises(ValueError, match="exactly one envelope"):
        codec.merge_frames([two, two])


# ----------------------------------------------------------------------------- reference


def reference_decode(data: bytes) -> object:
    """What msgpack's own decoder reads from ``data`` (arrays built from the ext payloads)."""

    def ext_hook(code: int, payload: bytes) -> object:
        assert code == codec.NDARRAY_EXT
        ndim = payload[1]
        shape = struct.unpack_from(f"<{ndim}Q", payload, 2)
        return np.frombuffer(payload[2 + 8 * ndim:], codec._DTYPES[payload[0]]).reshape(shape)

    return msgpack.unpackb(data, ext_hook=ext_hook, raw=False)


def as_plain(env: Envelope) -> list:
    """An envelope as the plain structure msgpack reads back."""
    msg = env.message
    fields = [list(msg.arrays)] if isinstance(msg, Arrays) else [
        getattr(msg, f.name) for f in dataclasses.fields(msg)
    ]
    return [codec.VERSION, env.session, env.sender, env.receiver, list(env.path), env.seq,
            env.round, [msg.TAG, *fields]]


def assert_plain_equal(got: object, want: object) -> None:
    if isinstance(want, np.ndarray):
        assert isinstance(got, np.ndarray)
        assert got.dtype == want.dtype and got.shape == want.shape
        assert got.tobytes() == want.tobytes()
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want)
        for a, b in zip(got, want, strict=True):
            assert_plain_equal(a, b)
    else:
        assert type(got) is type(want) and got == want


envelope_integers = (  # fixint, uint 8 and uint 16 (read inline), anything
    st.integers(0, 127) | st.integers(128, 255) | st.integers(256, 2**16 - 1)
    | st.integers(0, 2**64 - 1))
any_envelopes = st.lists(
    st.builds(
        lambda msg, path, seq, rnd: Envelope(SESSION, 0, 1, tuple(path), seq, rnd, msg),
        messages,
        st.lists(envelope_integers, max_size=12),
        envelope_integers,
        envelope_integers,
    ),
    min_size=0, max_size=4,
)


@settings(max_examples=200)
@given(any_envelopes, st.booleans())
def test_decoder_agrees_with_msgpack(envs: list[Envelope], as_bytearray: bool) -> None:
    frame = codec.encode_frame(envs)
    data = bytearray(frame) if as_bytearray else frame  # TCP hands large frames over so
    decoded = codec.decode_frame(data)
    assert_plain_equal([as_plain(env) for env in decoded], reference_decode(frame))
    for env in decoded:
        if isinstance(env.message, Arrays):
            assert not any(array.flags.writeable for array in env.message.arrays)


array_envelopes = st.builds(
    lambda arrays, session, path, seq, rnd: Envelope(session, 2, 0, tuple(path), seq, rnd,
                                                     Arrays(tuple(arrays))),
    st.lists(arrays | st.sampled_from([  # made afresh: the test writes to them
        lambda: np.array(7, dtype=">u8"), lambda: np.arange(6, dtype=">i4").reshape(2, 3),
        lambda: np.arange(24, dtype=np.uint64).reshape(4, 6)[::2, 1::2],
    ]).map(lambda make: make()), max_size=20),
    st.binary(min_size=0, max_size=300),
    st.lists(envelope_integers, max_size=codec.MAX_PATH_DEPTH),
    envelope_integers,
    envelope_integers,
)


@settings(max_examples=300)
@given(array_envelopes)
def test_a_detached_envelope_is_what_its_frame_decodes_to(env: Envelope) -> None:
    """What a peer in the same loop is handed instead of a frame (:func:`codec.detached`):
    the envelope its frame decodes to (each array's dtype, shape and values, read-only; the
    big-endian and non-contiguous ones converted alike) and that frame's exact size (with
    sessions, paths, sequence numbers, rounds and array counts across msgpack's size
    classes), in copies the sender's later writes do not reach."""
    frame = codec.encode_frame([env])
    (decoded,) = codec.decode_frame(frame)
    got, size = codec.detached(env)
    assert size == len(frame)
    assert got[:6] == decoded[:6]
    assert_messages_equal(got.message, decoded.message)
    for array, copy in zip(env.message.arrays, got.message.arrays, strict=True):
        if array.size and array.dtype.kind in "iu" and array.flags.writeable:
            array.flat[0] ^= 1  # the sender's array changes; the handed-over copy does not
            assert copy.flat[0] != array.flat[0]


def test_detaching_refuses_what_encoding_refuses() -> None:
    for arrays, match in (((np.zeros(2, dtype=np.complex128),), "whitelist"),
                          ((np.zeros((1,) * (codec.MAX_NDIM + 1)),), "dimensions"),
                          (([1, 2],), "numpy arrays, not list")):
        env = Envelope(SESSION, 0, 1, (), 0, 0, Arrays(arrays))  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=match):
            codec.encode_frame([env])
        with pytest.raises(TypeError, match=match):
            codec.detached(env)


def test_arrays_are_views_of_the_frame() -> None:
    big = np.arange(1 << 14, dtype=np.uint64)
    frame = bytearray(codec.encode_frame([Envelope(SESSION, 0, 1, (3,), 0, 1, Arrays((big,)))]))
    (env,) = codec.decode_frame(frame, session=SESSION, sender=0, receiver=1)
    (array,) = env.message.arrays
    assert np.shares_memory(array, np.frombuffer(frame, dtype=np.uint8))  # no copy
    np.testing.assert_array_equal(array, big)
    assert not array.flags.writeable


def test_value_is_flat_and_bounded() -> None:
    for bad in ([[1]], [1] * (codec.MAX_VALUE_ITEMS + 1), "x" * (codec.MAX_VALUE_BYTES + 1),
                {"a": 1}, 1.5, np.arange(2)):
        with pytest.raises(TypeError, match="Value"):
            Value(bad)
    for wire in (b"\x92\x05\x91\x91\x00", b"\x92\x05\xdc\x00\x11" + b"\x00" * 17):
        with pytest.raises(DecodeError):
            codec.decode_message(wire)


def test_fields_of_typed_messages_must_be_scalars() -> None:
    abort = codec.packb([Abort.TAG, ["reason"], "1.2"])
    with pytest.raises(DecodeError, match="an array where a plain value is expected"):
        codec.decode_message(abort)
    with pytest.raises(DecodeError, match="Abort: reason and step must be strings"):
        codec.decode_message(codec.packb([Abort.TAG, b"reason", "1.2"]))


def test_step_paths_are_bounded() -> None:
    path = tuple(range(codec.MAX_PATH_DEPTH + 1))
    frame = codec.encode_frame([Envelope(SESSION, 0, 1, path, 0, 1, Value(0))])
    with pytest.raises(DecodeError, match="step path of 65 items exceeds the limit of 64"):
        codec.decode_frame(frame)


# ----------------------------------------------------------------------------- hostile input


def decode_peak(data: bytes) -> tuple[object, int]:
    """What ``decode_frame(data)`` returns or raises, and the peak of memory it allocated."""
    tracemalloc.start()
    try:
        try:
            outcome: object = codec.decode_frame(data, session=SESSION)
        except (DecodeError, SessionMismatchError) as exc:
            outcome = exc
        return outcome, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def value_envelope(body: bytes) -> bytes:
    """An envelope whose Value message holds ``body`` (raw msgpack) as its value."""
    head = codec.packb([codec.VERSION, SESSION, 0, 1, [], 0, 0, None])[:-1]
    return head + b"\x92\x05" + body


def test_deep_nesting_is_a_decode_error() -> None:
    """A Value nested a thousand deep was accepted, and formatting it raised RecursionError."""
    nested = b"\x91" * 1000 + b"\x00"
    with pytest.raises(DecodeError):
        codec.decode_frame(codec.frame_from_encoded([value_envelope(nested)]))
    with pytest.raises(DecodeError):
        codec.decode_message(b"\x92\x05" + nested)


def test_msgpack_timestamps_are_refused() -> None:
    with pytest.raises(DecodeError):
        codec.decode_message(b"\x92\x05\xd6\xff\x00\x00\x00\x01")


def test_maps_are_refused() -> None:
    with pytest.raises(DecodeError, match="map"):
        codec.decode_message(b"\x92\x05\x80")
    with pytest.raises(DecodeError, match="map"):
        codec.decode_frame(b"\x81\x00\x00")


def mib_of_empty_maps() -> bytes:
    """A 1 MiB frame: one envelope whose Value is a list of empty maps (73x the frame when
    decoded generically)."""
    count = (1 << 20) - 64
    return codec.frame_from_encoded([value_envelope(b"\xdd" + count.to_bytes(4, "big")
                                                    + b"\x80" * count)])


def mib_of_tiny_envelopes() -> bytes:
    """A 1 MiB frame of the smallest valid envelopes (seconds of CPU when decoded fully)."""
    one = codec.encode_frame([Envelope(SESSION, 0, 1, (), 0, 0, Value(None))])[1:]
    return codec.frame_from_encoded([one] * ((1 << 20) // len(one)))


@pytest.mark.parametrize("make", [mib_of_empty_maps, mib_of_tiny_envelopes])
def test_decoding_memory_is_bounded_by_the_frame_size(make: Callable[[], bytes]) -> None:
    frame = make()
    outcome, peak = decode_peak(frame)
    assert isinstance(outcome, DecodeError)
    assert peak <= 4 * len(frame)


@pytest.mark.parametrize("msg", [Arrays(()), Arrays((np.zeros((), np.bool_),)), Value(None)])
def test_a_merged_frame_of_the_tiniest_envelopes_decodes(msg: codec.Message) -> None:
    """The runtime merges small frames up to COALESCE_BYTES: the decode budget's floor lets
    the costliest such frame per byte through."""
    one = codec.encode_frame([Envelope(SESSION, 0, 1, (), 0, 0, msg)])
    frame = codec.merge_frames([one] * (COALESCE_BYTES // len(one)))
    outcome, peak = decode_peak(frame)
    assert isinstance(outcome, list) and len(outcome) == COALESCE_BYTES // len(one)
    assert peak <= codec.DECODE_FLOOR_BYTES
