"""Hostile inputs for the decoder, and the invariant every input must keep.

Used by the fast hypothesis tier (``tests/fuzz/test_decoding.py``, which draws a seed per
example) and by ``benchmarks/fuzz.py`` (millions of seeded inputs). Every generator is a
function of a ``random.Random``, so an input is reproduced from its generator and seed.

The invariant (:func:`check`): decoding an input ends in a valid list of envelopes (or a
message) or in the project's typed error (:class:`DecodeError`/:class:`SessionMismatchError`,
both :class:`ProtocolError`), never in another exception, and allocates at most
:func:`puma_async.codec.decode_budget` of the input's size.
"""

from __future__ import annotations

import dataclasses
import random
import struct
import sys
import tracemalloc
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np

from puma_async import codec
from puma_async.codec import Abort, Accept, Arrays, Envelope, Hello, Seed, Value
from puma_async.errors import ProtocolError

SESSION = b"fuzz-session-id!"
SENDER, RECEIVER = 1, 2
DTYPES = [np.dtype(name) for name in (
    "bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64",
    "float32", "float64",
)]

Generator = Callable[[random.Random], bytes]


# ----------------------------------------------------------------------------- valid frames


def random_array(rng: random.Random) -> np.ndarray:
    dtype = rng.choice(DTYPES)
    shape = tuple(rng.choice([0, 1, 1, 2, 3, 5]) for _ in range(
        rng.choice([0, 1, 1, 2, 3, codec.MAX_NDIM])
    ))
    size = int(np.prod(shape, dtype=np.int64))
    return np.frombuffer(rng.randbytes(size * dtype.itemsize), dtype).reshape(shape)


def random_scalar(rng: random.Random) -> Any:
    return rng.choice([
        None, True, False, rng.randrange(128), rng.randrange(-(2**63), 2**64),
        rng.randbytes(rng.randrange(8)).hex(), rng.randbytes(rng.randrange(8)),
    ])


def random_message(rng: random.Random) -> codec.Message:
    kind = rng.randrange(6)
    if kind == 0:
        return Arrays(tuple(random_array(rng) for _ in range(rng.randrange(4))))
    if kind == 1:
        return Seed(rng.randbytes(rng.choice([16, 32])))
    if kind == 2:
        return Abort(rng.randbytes(rng.randrange(20)).hex(), "1.2")
    if kind == 3:
        return Hello(codec.VERSION, SESSION, rng.randrange(5), rng.randbytes(32), 1 << 20)
    if kind == 4:
        return Accept()
    if rng.random() < 0.5:
        return Value(random_scalar(rng))
    return Value([random_scalar(rng) for _ in range(rng.randrange(codec.MAX_VALUE_ITEMS + 1))])


def random_envelope(rng: random.Random) -> Envelope:
    path = tuple(rng.choice([rng.randrange(128), rng.randrange(2**64)])
                 for _ in range(rng.randrange(8)))
    return Envelope(SESSION, SENDER, RECEIVER, path, rng.randrange(2**20),
                    rng.randrange(2**20), random_message(rng))


def valid_frame(rng: random.Random) -> bytes:
    return codec.encode_frame([random_envelope(rng) for _ in range(rng.randrange(1, 5))])


# ----------------------------------------------------------------------------- generators


def random_bytes(rng: random.Random) -> bytes:
    """Bytes of any value; often starting with a frame's array header, so they get further."""
    data = rng.randbytes(rng.choice([0, 1, 2, 8, 30, 100, 1000, 5000]))
    if data and rng.random() < 0.5:
        data = bytes([0x91 + rng.randrange(4), 0x98, codec.VERSION]) + data
    return data


def mutated_frame(rng: random.Random) -> bytes:
    """A valid frame with bit flips, byte changes, a truncation, an extension, a splice with
    another frame, a repeated or deleted chunk, or a byte that opens a container."""
    frame = bytearray(valid_frame(rng))
    for _ in range(rng.choice([1, 1, 2, 4])):
        at = rng.randrange(len(frame))
        kind = rng.randrange(8)
        if kind == 0:
            frame[at] ^= 1 << rng.randrange(8)
        elif kind == 1:
            frame[at] = rng.choice([0x00, 0x7F, 0x80, 0x90, 0x9F, 0xC0, 0xC1, 0xC4, 0xC7, 0xC9,
                                    0xCF, 0xD4, 0xD8, 0xDC, 0xDD, 0xDE, 0xDF, 0xFF])
        elif kind == 2:
            del frame[at:]
        elif kind == 3:
            frame += rng.randbytes(rng.randrange(1, 16))
        elif kind == 4:
            other = valid_frame(rng)
            frame = frame[:at] + other[rng.randrange(len(other)):]
        elif kind == 5:
            end = min(len(frame), at + rng.randrange(1, 32))
            frame[at:at] = frame[at:end]
        elif kind == 6:
            del frame[at:at + rng.randrange(1, 8)]
        else:
            frame[at:at] = rng.randbytes(rng.randrange(1, 8))
        if not frame:
            break
    return bytes(frame)


_WRONG: list[Callable[[random.Random], Any]] = [
    lambda rng: {rng.randrange(5): rng.randrange(5)},
    lambda rng: [rng.randrange(5)] * rng.randrange(4),
    lambda rng: [[[]]],
    lambda rng: "text",
    lambda rng: b"bytes",
    lambda rng: rng.random(),
    lambda rng: -rng.randrange(1, 2**63),
    lambda rng: True,
    lambda rng: None,
    lambda rng: 2**64 - 1,
    lambda rng: msgpack.ExtType(rng.randrange(128), rng.randbytes(rng.randrange(20))),
    lambda rng: msgpack.Timestamp(rng.randrange(2**32)),
]


def wrong_types(rng: random.Random) -> bytes:
    """A well-formed msgpack frame with a value of the wrong type in one or more fields of an
    envelope or of its message."""
    env = random_envelope(rng)
    msg = env.message
    fields: list[Any] = [list(msg.arrays)] if isinstance(msg, Arrays) else [
        getattr(msg, f.name) for f in dataclasses.fields(msg)
    ]
    message = [msg.TAG, *fields]
    head = [codec.VERSION, env.session, env.sender, env.receiver, list(env.path), env.seq,
            env.round, message]
    for _ in range(rng.choice([1, 1, 2])):
        target = head if rng.random() < 0.5 or len(message) < 2 else message
        target[rng.randrange(len(target))] = rng.choice(_WRONG)(rng)
    if rng.random() < 0.2:
        head.append(0) if rng.random() < 0.5 else head.pop()
    return codec.packb([head])


def _nest(rng: random.Random, depth: int) -> bytes:
    opener = rng.choice([b"\x91", b"\x81\x00", b"\xdc\x00\x01", b"\x92\x00"])
    return opener * depth + b"\x00" * (depth if opener == b"\x92\x00" else 1)


def deep_nesting(rng: random.Random) -> bytes:
    """Containers nested up to 100,000 deep in a field, a message, an envelope or a frame."""
    depth = rng.choice([5, 100, 1000, 10_000, 100_000])
    nested = _nest(rng, depth)
    where = rng.randrange(4)
    head = codec.packb([codec.VERSION, SESSION, SENDER, RECEIVER, [], 0, 0, None])[:-1]
    if where == 0:  # a Value's value
        return b"\x91" + head + b"\x92\x05" + nested
    if where == 1:  # the message
        return b"\x91" + head + nested
    if where == 2:  # the step path
        return b"\x91" + head[:-3] + b"\x91" + nested
    return nested  # the frame itself


_HUGE_HEADERS = [b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xc6\xff\xff\xff\xff",
                 b"\xdb\xff\xff\xff\xff", b"\xc9\xff\xff\xff\xff\x01", b"\xdc\xff\xff",
                 b"\xde\xff\xff"]


def huge_declarations(rng: random.Random) -> bytes:
    """Lengths and shapes that declare far more than the frame holds: container, bin, str
    and ext lengths of 2^32 - 1, array shapes with dimensions up to 2^64 - 1 (also of empty
    arrays, and whose product overflows), frames that claim millions of envelopes."""
    kind = rng.randrange(4)
    head = codec.packb([codec.VERSION, SESSION, SENDER, RECEIVER, [], 0, 0, None])[:-1]
    if kind == 0:
        return rng.choice(_HUGE_HEADERS) + rng.randbytes(rng.randrange(64))
    if kind == 1:
        return b"\x91" + head + b"\x92\x01\x91" + rng.choice(_HUGE_HEADERS) + rng.randbytes(16)
    if kind == 2:
        ndim = rng.randrange(1, codec.MAX_NDIM + 1)
        dims = [rng.choice([0, 1, 2**31, 2**32 + 1, 2**62, 2**63, 2**64 - 1])
                for _ in range(ndim)]
        payload = bytes((rng.randrange(len(DTYPES)), ndim)) + struct.pack(f"<{ndim}Q", *dims)
        payload += rng.randbytes(rng.choice([0, 1, 8, 64]))
        ext = msgpack.packb(msgpack.ExtType(codec.NDARRAY_EXT, payload))
        return b"\x91" + head + b"\x92\x01\x91" + ext
    return b"\xdd" + rng.randrange(2**20, 2**32).to_bytes(4, "big") + head + b"\x92\x06"


def _tiny_envelope(rng: random.Random) -> bytes:
    return codec.encode_frame([Envelope(SESSION, SENDER, RECEIVER, (), 0, 0, rng.choice(
        [Value(None), Accept(), Arrays(()), Arrays((np.zeros((), np.uint8),))]
    ))])[1:]


def amplifiers(rng: random.Random) -> bytes:
    """Valid-looking frames built to cost the most memory per byte: many tiny envelopes,
    many 0-d arrays in one message, long step paths of large integers, Values of strings."""
    kind = rng.randrange(4)
    size = rng.choice([1 << 10, 1 << 14, 1 << 16, 1 << 20])
    if kind == 0:
        one = _tiny_envelope(rng)
        return codec.frame_from_encoded([one] * (size // len(one)))
    if kind == 1:
        zero_d = codec.encode_message(Arrays((np.zeros((), np.uint8),)))[3:]
        count = min(size // len(zero_d), codec.MAX_ARRAYS)
        head = codec.packb([codec.VERSION, SESSION, SENDER, RECEIVER, [], 0, 0, None])[:-1]
        return b"\x91" + head + b"\x92\x01" + b"\xdc" + count.to_bytes(2, "big") + zero_d * count
    if kind == 2:
        path = tuple(2**64 - 1 - i for i in range(codec.MAX_PATH_DEPTH))
        one = codec.encode_frame([Envelope(SESSION, SENDER, RECEIVER, path, 0, 0, Accept())])
        return codec.frame_from_encoded([one[1:]] * (size // len(one)))
    value = Value(["ab"] * codec.MAX_VALUE_ITEMS)
    one = codec.encode_frame([Envelope(SESSION, SENDER, RECEIVER, (), 0, 0, value)])
    return codec.frame_from_encoded([one[1:]] * (size // len(one)))


GENERATORS: dict[str, Generator] = {
    "random_bytes": random_bytes,
    "mutated_frame": mutated_frame,
    "wrong_types": wrong_types,
    "deep_nesting": deep_nesting,
    "huge_declarations": huge_declarations,
    "amplifiers": amplifiers,
}


# ----------------------------------------------------------------------------- invariant


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What decoding one input did: ``kind`` is 'frame', 'message' (a valid result), the
    typed error's class name, or 'untyped:<class>' (a bug)."""

    kind: str
    peak_bytes: int

    @property
    def typed(self) -> bool:
        return not self.kind.startswith("untyped:")


def decode(data: bytes) -> str:
    """Decode ``data`` as a frame from SENDER to RECEIVER, and (if that fails) as a message;
    the outcome's kind. Raises what is not the project's typed error."""
    try:
        envelopes = codec.decode_frame(data, session=SESSION, sender=SENDER, receiver=RECEIVER)
    except ProtocolError as frame_error:
        try:
            codec.decode_message(data)
        except ProtocolError:
            return type(frame_error).__name__
        return "message"
    assert all(isinstance(env, Envelope) for env in envelopes)
    return "frame"


def check(data: bytes) -> Outcome:
    """Decode ``data`` with tracemalloc running (it must be started) and classify it."""
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    try:
        kind = decode(data)
    except Exception as exc:  # the invariant's violation, reported by the caller
        kind = f"untyped:{type(exc).__name__}"
    return Outcome(kind, tracemalloc.get_traced_memory()[1] - base)


def count_calls(data: bytes) -> int:
    """Python and C function calls made decoding ``data``: the decoder's work, measured
    deterministically."""
    calls = 0

    def profile(frame: object, event: str, arg: object) -> None:
        nonlocal calls
        if event in ("call", "c_call"):
            calls += 1

    sys.setprofile(profile)
    try:
        decode(data)
    except Exception:
        pass
    finally:
        sys.setprofile(None)
    return calls
