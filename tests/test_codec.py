"""Codec: round trips of every message type and dtype; bad bytes raise only typed errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from puma_async import codec
from puma_async.codec import Abort, Arrays, Envelope, Hello, Seed, Value
from puma_async.errors import DecodeError, SessionMismatchError

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

messages = st.one_of(
    st.lists(arrays, max_size=3).map(lambda a: Arrays(tuple(a))),
    st.sampled_from([16, 32]).flatmap(lambda n: st.binary(min_size=n, max_size=n)).map(Seed),
    st.builds(Abort, st.text(max_size=50), st.text(max_size=20)),
    st.builds(Hello, st.integers(0, 2**32), st.binary(max_size=32), st.integers(0, 10),
              st.binary(max_size=32)),
    st.builds(Value, st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=10),
        lambda inner: st.lists(inner, max_size=4), max_leaves=10,
    )),
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
    arr = np.arange(10, dtype=np.uint64)
    return codec.encode_frame([
        Envelope(SESSION, 0, 1, (1, 2), 0, 1, Arrays((arr, arr))),
        Envelope(SESSION, 0, 1, (), 1, 1, Value([1, "x"])),
    ])


def test_every_truncation_of_a_frame_raises_decode_error() -> None:
    frame = _frame()
    for n in range(len(frame)):
        with pytest.raises(DecodeError):
            codec.decode_frame(frame[:n], session=SESSION, sender=0, receiver=1)


def test_array_payload_must_match_shape() -> None:
    good = codec.packb(np.arange(4, dtype=np.uint64))
    bad = bytearray(good)
    # the shape field (ndim=1) starts after ext header (2-3 bytes) + dtype code + ndim
    header_len = len(good) - 32 - 8 - 2
    shape_at = header_len + 2
    bad[shape_at:shape_at + 8] = (5).to_bytes(8, "little")
    with pytest.raises(DecodeError, match="does not match shape"):
        codec.unpackb(bytes(bad))


def test_unknown_dtype_code_and_ext_type() -> None:
    good = bytearray(codec.packb(np.arange(2, dtype=np.uint8)))
    dtype_at = len(good) - 2 - 8 - 2
    good[dtype_at] = 200
    with pytest.raises(DecodeError, match="whitelist"):
        codec.unpackb(bytes(good))
    import msgpack

    with pytest.raises(DecodeError, match="ext type"):
        codec.unpackb(msgpack.packb(msgpack.ExtType(7, b"xx")))


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
    for count in (2, 15, 16, 300, 70000):  # fixarray, array 16 and array 32 headers
        merged = codec.merge_frames([one] * count)
        assert len(codec.decode_frame(merged)) == count
    assert codec.merge_frames([one]) is one


def test_merge_frames_refuses_frames_of_several_envelopes() -> None:
    env = Envelope(SESSION, 0, 1, (), 0, 1, Value(0))
    two = codec.encode_frame([env, env])
    with pytest.raises(ValueError, match="exactly one envelope"):
        codec.merge_frames([two, two])


# ----------------------------------------------------------------------------- in place


def assert_decoded_equal(in_place: object, generic: object) -> None:
    """Structures from ``_frame_in_place`` and ``unpackb`` are the same, array for array."""
    if isinstance(generic, np.ndarray):
        assert isinstance(in_place, np.ndarray)
        assert in_place.dtype == generic.dtype and in_place.shape == generic.shape
        assert in_place.tobytes() == generic.tobytes()
        assert not in_place.flags.writeable
    elif isinstance(generic, list):
        assert isinstance(in_place, list) and len(in_place) == len(generic)
        for a, b in zip(in_place, generic, strict=True):
            assert_decoded_equal(a, b)
    else:
        assert type(in_place) is type(generic) and in_place == generic


arrays_envelopes = st.lists(
    st.builds(
        lambda arrays, path, seq, rnd: Envelope(SESSION, 0, 1, tuple(path), seq, rnd,
                                                Arrays(tuple(arrays))),
        st.lists(arrays, max_size=3),
        st.lists(st.integers(0, 127) | st.integers(0, 2**64 - 1), max_size=12),
        st.integers(0, 2**64 - 1),
        st.integers(0, 2**64 - 1),
    ),
    min_size=0, max_size=3,
)


@settings(max_examples=200)
@given(arrays_envelopes, st.booleans())
def test_in_place_decoding_equals_generic(envs: list[Envelope], as_bytearray: bool) -> None:
    frame = codec.encode_frame(envs)
    data = bytearray(frame) if as_bytearray else frame  # TCP hands large frames over so
    in_place = codec._frame_in_place(data)
    assert in_place is not None
    assert_decoded_equal(in_place, codec.unpackb(frame))


@settings(max_examples=300)
@given(arrays_envelopes.filter(bool), st.data())
def test_in_place_decoding_never_accepts_what_generic_refuses(
    envs: list[Envelope], data: st.DataObject
) -> None:
    """Flipped, cut or extra bytes: in place either declines (None) or agrees with the
    generic decoder, which alone reports errors."""
    frame = bytearray(codec.encode_frame(envs))
    change = data.draw(st.sampled_from(["truncate", "flip", "append"]), label="change")
    if change == "truncate":
        frame = frame[: data.draw(st.integers(0, len(frame) - 1), label="length")]
    elif change == "flip":
        at = data.draw(st.integers(0, len(frame) - 1), label="at")
        frame[at] = data.draw(st.integers(0, 255).filter(lambda b: b != frame[at]), label="b")
    else:
        frame += data.draw(st.binary(min_size=1, max_size=3), label="extra")
    in_place = codec._frame_in_place(bytes(frame))
    if in_place is not None:
        assert_decoded_equal(in_place, codec.unpackb(bytes(frame)))


def test_large_frames_are_decoded_in_place_as_views_of_the_frame() -> None:
    big = np.arange(codec.IN_PLACE_MIN_BYTES // 8, dtype=np.uint64)
    frame = bytearray(codec.encode_frame([Envelope(SESSION, 0, 1, (3,), 0, 1, Arrays((big,)))]))
    (env,) = codec.decode_frame(frame, session=SESSION, sender=0, receiver=1)
    (array,) = env.message.arrays
    assert np.shares_memory(array, np.frombuffer(frame, dtype=np.uint8))  # no copy
    np.testing.assert_array_equal(array, big)
    assert not array.flags.writeable
    for other in (Value(list(range(40000))), Arrays((big,))):  # not all Arrays / trailing data
        mixed = codec.encode_frame([Envelope(SESSION, 0, 1, (), 0, 1, other)]) + (
            b"\x00" if isinstance(other, Arrays) else b""
        )
        assert codec._frame_in_place(mixed) is None
