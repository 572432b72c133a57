"""Typed messages and their msgpack wire format (sans-IO: bytes in, objects out).

Wire format
-----------
* A **message** is a frozen dataclass registered with a small integer tag; it is encoded as
  the msgpack array ``[tag, field1, field2, ...]`` in field order.
* numpy arrays travel as msgpack ext type 1: ``dtype code (u8) | ndim (u8) | shape (ndim x
  u64 little-endian) | raw little-endian bytes``. Only whitelisted dtypes are accepted and the
  byte length must equal ``prod(shape) * itemsize``. Decoded arrays are read-only views.
* An **envelope** names a message for the party mailbox:
  ``[VERSION, session, sender, receiver, step path, seq, round, message]``.
* A **frame** (the unit a transport carries) is a msgpack array of envelopes; the runtime
  encodes each envelope as a frame of its own (:func:`encode_frame`, copying each array once)
  and its writer task merges small ones ready together (:func:`merge_frames`).

No pickle anywhere. Every decoding failure raises :class:`DecodeError` (or
:class:`SessionMismatchError` for a well-formed frame of another session, sender or version).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import struct
import threading
from collections.abc import Sequence
from typing import Any, ClassVar, NamedTuple

import msgpack
import numpy as np

from puma_async.errors import DecodeError, SessionMismatchError

VERSION = 1
DEFAULT_MAX_FRAME_BYTES = 1 << 31  # 2 GiB: a whole embedding table's shares fit in one frame
MAX_NDIM = 8

NDARRAY_EXT = 1
_DTYPES: tuple[np.dtype, ...] = tuple(
    np.dtype(name)
    for name in (
        "bool", "uint8", "int8", "uint16", "int16", "uint32", "int32",
        "uint64", "int64", "float32", "float64",
    )
)
_DTYPE_CODE = {dtype: code for code, dtype in enumerate(_DTYPES)}
_LITTLE_ENDIAN_CODE = {  # dtypes whose native bytes are the wire's (no conversion)
    dtype: code for dtype, code in _DTYPE_CODE.items()
    if dtype.byteorder == "|" or dtype.newbyteorder("<") == dtype
}
_LITTLE_ENDIAN_CODES = frozenset(_LITTLE_ENDIAN_CODE.values())
_SHAPES = [struct.Struct(f"<{ndim}Q") for ndim in range(MAX_NDIM + 1)]


# ----------------------------------------------------------------------------- arrays


def _wire_data(obj: np.ndarray) -> tuple[int, np.ndarray]:
    """An array's dtype code and raw data as sent: the array itself when it is C-contiguous
    little-endian (else a contiguous little-endian copy), so an encoder joins it into a frame
    with one copy."""
    if obj.ndim > MAX_NDIM:
        raise TypeError(f"array of {obj.ndim} dimensions exceeds the limit of {MAX_NDIM}")
    code = _LITTLE_ENDIAN_CODE.get(obj.dtype)
    if code is not None and obj.flags.c_contiguous:
        return code, obj
    dtype = obj.dtype.newbyteorder("=") if obj.dtype.byteorder == ">" else obj.dtype
    code = _DTYPE_CODE.get(np.dtype(dtype))
    if code is None:
        raise TypeError(f"numpy dtype {obj.dtype} is not in the wire whitelist")
    return code, np.ascontiguousarray(obj, dtype=np.dtype(dtype).newbyteorder("<"))  # >= 1-d


def _payload_header(code: int, shape: tuple[int, ...]) -> bytes:
    """What precedes an array's raw bytes in its ext payload: dtype code, ndim, shape."""
    return bytes((code, len(shape))) + _SHAPES[len(shape)].pack(*shape)


@functools.lru_cache(maxsize=4096)
def _ext_prefix(code: int, shape: tuple[int, ...]) -> bytes:
    """What precedes an array's raw bytes in a message: msgpack's ext header, then the payload
    header (cached: protocols send arrays of the same few shapes over and over)."""
    header = _payload_header(code, shape)
    return _ext_header(len(header) + math.prod(shape) * _DTYPES[code].itemsize) + header


_FIXEXT = {1: 0xD4, 2: 0xD5, 4: 0xD6, 8: 0xD7, 16: 0xD8}


def _ext_header(size: int) -> bytes:
    """msgpack's header of an ext-type-1 value of ``size`` bytes (its shortest form)."""
    fixed = _FIXEXT.get(size)
    if fixed is not None:
        return bytes((fixed, NDARRAY_EXT))
    if size < 1 << 8:
        return bytes((0xC7, size, NDARRAY_EXT))
    if size < 1 << 16:
        return b"\xc8" + size.to_bytes(2, "big") + b"\x01"
    return b"\xc9" + size.to_bytes(4, "big") + b"\x01"


_FIXARRAY_HEADERS = [bytes((0x90 | count,)) for count in range(16)]


def _array_header(count: int) -> bytes:
    """msgpack's header of an array of ``count`` items."""
    if count < 16:
        return _FIXARRAY_HEADERS[count]
    if count < 1 << 16:
        return b"\xdc" + count.to_bytes(2, "big")
    return b"\xdd" + count.to_bytes(4, "big")


def _ext_default(obj: Any) -> msgpack.ExtType:
    if isinstance(obj, np.ndarray):
        code, data = _wire_data(obj)
        return msgpack.ExtType(NDARRAY_EXT, _payload_header(code, obj.shape) + data.tobytes())
    if isinstance(obj, np.integer):
        return int(obj)  # type: ignore[return-value]
    raise TypeError(f"cannot encode object of type {type(obj).__name__}")


def _ext_hook(code: int, data: bytes) -> np.ndarray:
    if code != NDARRAY_EXT:
        raise DecodeError(f"unknown msgpack ext type {code}")
    return _array_from_payload(data, 0, len(data))


def _array_from_payload(buffer: bytes | memoryview, start: int, size: int) -> np.ndarray:
    """The array whose ext payload is ``buffer[start:start + size]``: a view of ``buffer``
    (unless a byte order conversion needs a copy), checked against its header."""
    if size < 2:
        raise DecodeError("truncated array header")
    dtype_code, ndim = buffer[start], buffer[start + 1]
    if dtype_code >= len(_DTYPES):
        raise DecodeError(f"array dtype code {dtype_code} is not in the whitelist")
    if ndim > MAX_NDIM:
        raise DecodeError(f"array of {ndim} dimensions exceeds the limit of {MAX_NDIM}")
    header = 2 + 8 * ndim
    if size < header:
        raise DecodeError("truncated array shape")
    shape = _SHAPES[ndim].unpack_from(buffer, start + 2)
    dtype = _DTYPES[dtype_code]
    if math.prod(shape) * dtype.itemsize != size - header:
        raise DecodeError(
            f"array payload of {size - header} bytes does not match shape {shape} of {dtype}"
        )
    if dtype_code in _LITTLE_ENDIAN_CODES:
        return np.ndarray(shape, dtype, buffer, start + header)
    return np.ndarray(shape, dtype.newbyteorder("<"), buffer, start + header).astype(dtype)


_local = threading.local()


def _packer() -> msgpack.Packer:
    """This thread's msgpack packer (made once: a packer per call costs more than packing a
    small object; one per thread because parties may run in threads)."""
    try:
        return _local.packer  # type: ignore[no-any-return]
    except AttributeError:
        _local.packer = msgpack.Packer(default=_ext_default, use_bin_type=True)
        return _local.packer  # type: ignore[no-any-return]


def packb(obj: Any) -> bytes:
    """msgpack-encode plain data and numpy arrays (no pickle, no arbitrary objects)."""
    return _packer().pack(obj)  # type: ignore[no-any-return]


def _check_size(data: bytes, max_bytes: int) -> None:
    if len(data) > max_bytes:
        raise DecodeError(f"frame of {len(data)} bytes exceeds the limit of {max_bytes}")


def unpackb(data: bytes, *, max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> Any:
    """Decode what :func:`packb` wrote; any malformed input raises :class:`DecodeError`."""
    _check_size(data, max_bytes)
    try:
        return msgpack.unpackb(
            data, ext_hook=_ext_hook, raw=False, strict_map_key=True,
            use_list=True,
        )
    except DecodeError:
        raise
    except Exception as exc:  # msgpack raises many types for malformed input
        raise DecodeError(f"malformed msgpack data: {type(exc).__name__}: {exc}") from None


# ----------------------------------------------------------------------------- messages

_MESSAGES: dict[int, type[Message]] = {}
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


@dataclasses.dataclass(frozen=True)
class Message:
    """Base of the typed messages; subclasses set ``TAG`` and are registered by ``@message``."""

    TAG: ClassVar[int] = -1


def message(cls: type[Message]) -> type[Message]:
    """Class decorator: make ``cls`` a frozen dataclass and register its tag for decoding."""
    cls = dataclasses.dataclass(frozen=True)(cls)
    if cls.TAG in _MESSAGES:
        raise ValueError(f"message tag {cls.TAG} registered twice")
    _MESSAGES[cls.TAG] = cls
    _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return cls


@message
class Arrays(Message):
    """Numeric payload of a protocol step: shares, masked values, opened results."""

    TAG: ClassVar[int] = 1
    arrays: tuple[np.ndarray, ...]

    @classmethod
    def from_wire(cls, fields: list) -> Arrays:
        (values,) = fields
        if type(values) is not list or [v for v in values if type(v) is not np.ndarray]:
            raise DecodeError("Arrays: expected a list of arrays")
        return cls(tuple(values))


@message
class Seed(Message):
    """Key material: a PRG seed given to a peer (pairwise keys, input-sharing seeds)."""

    TAG: ClassVar[int] = 2
    key: bytes

    @classmethod
    def from_wire(cls, fields: list) -> Seed:
        (key,) = fields
        if not isinstance(key, bytes) or len(key) not in (16, 32):
            raise DecodeError("Seed: key must be 16 or 32 bytes")
        return cls(key)


@message
class Abort(Message):
    """A party failed; its peers stop too. ``step`` is where the failure happened."""

    TAG: ClassVar[int] = 3
    reason: str
    step: str

    @classmethod
    def from_wire(cls, fields: list) -> Abort:
        reason, step = fields
        if not isinstance(reason, str) or not isinstance(step, str):
            raise DecodeError("Abort: reason and step must be strings")
        return cls(reason[:4096], step[:1024])


@message
class Hello(Message):
    """Transport handshake: protocol version, session, role and a digest of the configuration."""

    TAG: ClassVar[int] = 4
    version: int
    session: bytes
    role: int
    config_digest: bytes

    @classmethod
    def from_wire(cls, fields: list) -> Hello:
        version, session, role, digest = fields
        if not (
            isinstance(version, int) and isinstance(session, bytes)
            and isinstance(role, int) and isinstance(digest, bytes)
        ):
            raise DecodeError("Hello: field of the wrong type")
        return cls(version, session, role, digest)


@message
class Value(Message):
    """Small plain data: counts, token ids, flags, short strings (lists of them too)."""

    TAG: ClassVar[int] = 5
    value: Any

    @classmethod
    def from_wire(cls, fields: list) -> Value:
        (value,) = fields
        return cls(value)


def _message_fields(msg: Message) -> list:
    return [getattr(msg, name) for name in _FIELD_NAMES[type(msg)]]


_ARRAYS_TAG = b"\x92\x01"  # [Arrays.TAG, ...]: a 2-item array starting with tag 1


def _message_parts(msg: Message) -> list[bytes | np.ndarray]:
    """Buffers whose concatenation is ``msg`` encoded (``[tag, field1, ...]``).

    :class:`Arrays` is laid out directly (headers plus views of the arrays' data), so encoding
    a frame copies each array once; other messages go through :func:`packb`.
    """
    if type(msg) is not Arrays:
        return [packb([msg.TAG, *_message_fields(msg)])]
    parts: list[bytes | np.ndarray] = [_ARRAYS_TAG, _array_header(len(msg.arrays))]
    for array in msg.arrays:
        if not isinstance(array, np.ndarray):
            raise TypeError(f"Arrays holds numpy arrays, not {type(array).__name__}")
        code, data = _wire_data(array)
        parts += (_ext_prefix(code, array.shape), data)
    return parts


def encode_message(msg: Message) -> bytes:
    """Encode one typed message on its own (used by handshakes and traces)."""
    return b"".join(_message_parts(msg))


def _message_from_wire(obj: Any) -> Message:
    if type(obj) is not list or not obj or type(obj[0]) is not int:
        raise DecodeError("message is not a tagged array")
    cls = _MESSAGES.get(obj[0])
    if cls is None:
        raise DecodeError(f"unknown message tag {obj[0]}")
    fields = obj[1:]
    if len(fields) != len(_FIELD_NAMES[cls]):
        raise DecodeError(f"{cls.__name__}: expected {len(_FIELD_NAMES[cls])} fields")
    try:
        return cls.from_wire(fields)  # type: ignore[attr-defined]
    except DecodeError:
        raise
    except (TypeError, ValueError) as exc:
        raise DecodeError(f"{cls.__name__}: {exc}") from None


def decode_message(data: bytes, *, max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> Message:
    """Decode one message written by :func:`encode_message`."""
    return _message_from_wire(unpackb(data, max_bytes=max_bytes))


# ----------------------------------------------------------------------------- envelopes

StepPath = tuple[int, ...]


def format_path(path: StepPath) -> str:
    """Dotted form of a step path, as errors and traces show it ('' is the root step)."""
    return ".".join(map(str, path))


class Envelope(NamedTuple):
    """A message addressed to one step of one party: the mailbox key plus the round clock."""

    session: bytes
    sender: int
    receiver: int
    path: StepPath
    seq: int
    round: int
    message: Message


def _envelope_from_wire(obj: Any) -> Envelope:
    if type(obj) is not list or len(obj) != 8:
        raise DecodeError("envelope is not an 8-field array")
    version, session, sender, receiver, path, seq, rnd, msg = obj
    if type(version) is not int:
        raise DecodeError("envelope version is not an integer")
    if version != VERSION:
        raise SessionMismatchError(f"protocol version {version!r}, expected {VERSION}")
    if type(session) is not bytes:
        raise DecodeError("envelope session is not bytes")
    if not (
        type(sender) is int and type(receiver) is int and type(seq) is int and type(rnd) is int
        and min(sender, receiver, seq, rnd) >= 0
    ):
        raise DecodeError("envelope sender, receiver, seq and round must be integers >= 0")
    if type(path) is not list or [i for i in path if type(i) is not int or i < 0]:
        raise DecodeError("envelope step path must be a list of integers >= 0")
    return Envelope(session, sender, receiver, tuple(path), seq, rnd, _message_from_wire(msg))


def frame_from_encoded(envelopes: Sequence[bytes | memoryview]) -> bytes:
    """Concatenate already-encoded envelopes into one frame (a msgpack array)."""
    return b"".join([_array_header(len(envelopes)), *envelopes])


def merge_frames(frames: list[bytes]) -> bytes:
    """One frame holding the envelopes of ``frames`` in order (each from :func:`encode_frame`
    of one envelope); a single frame is returned as it is, without a copy."""
    if len(frames) == 1:
        return frames[0]
    if any(frame[0] != _ONE_ITEM for frame in frames):
        raise ValueError("merge_frames takes frames of exactly one envelope")
    return frame_from_encoded([memoryview(frame)[1:] for frame in frames])


_ONE_ITEM = 0x91  # msgpack header of a one-item array


def encode_frame(envelopes: Sequence[Envelope]) -> bytes:
    """Encode envelopes into one frame, copying each array's data once."""
    pack = _packer().pack
    parts: list[bytes | np.ndarray] = [_array_header(len(envelopes))]
    for env in envelopes:
        # the envelope's fields with a placeholder nil for the message, which replaces it
        parts.append(pack([VERSION, *env[:6], None])[:-1])
        parts += _message_parts(env.message)
    return b"".join(parts)


IN_PLACE_MIN_BYTES = 128 << 10
"""Frames from this size on are decoded in place: their arrays are views of the frame (the
generic decoder copies each array once more, which costs more than parsing the envelope
heads here once frames are this large)."""
_HEAD_BYTES = 4096  # an envelope's fields before its arrays fit in this (else: decoded generically)
_EXT_LENGTH_BYTES = {0xC7: 1, 0xC8: 2, 0xC9: 4}  # ext 8/16/32: bytes of the payload length
_FIXEXT_SIZE = {header: size for size, header in _FIXEXT.items()}


def _head_reader(view: memoryview, pos: int) -> msgpack.Unpacker:
    unpacker = msgpack.Unpacker(
        raw=False, strict_map_key=True, ext_hook=_ext_hook, max_buffer_size=_HEAD_BYTES
    )
    unpacker.feed(view[pos:pos + _HEAD_BYTES])
    return unpacker


def _frame_in_place(data: bytes | bytearray) -> list | None:
    """What :func:`unpackb` returns for a frame of :class:`Arrays` envelopes, but with each
    array a read-only view of ``data`` instead of a copy; None for any other frame, which
    the generic decoder then decodes (and reports if it is malformed).

    Envelope heads are read with msgpack; the arrays' ext headers are parsed here.
    """
    view = memoryview(data)
    try:
        reader = _head_reader(view, 0)
        count = reader.read_array_header()
        pos = reader.tell()
        envelopes = []
        for _ in range(count):
            reader = _head_reader(view, pos)
            if reader.read_array_header() != 8:
                return None
            fields = [reader.unpack() for _ in range(7)]  # version to round
            if reader.read_array_header() != 2:
                return None
            tag = reader.unpack()
            if type(tag) is not int or tag != Arrays.TAG:
                return None
            arrays = []
            length = reader.read_array_header()
            pos += reader.tell()
            for _ in range(length):
                header = view[pos]
                if header in _FIXEXT_SIZE:
                    size, pos = _FIXEXT_SIZE[header], pos + 1
                elif header in _EXT_LENGTH_BYTES:
                    width = _EXT_LENGTH_BYTES[header]
                    size = int.from_bytes(view[pos + 1:pos + 1 + width], "big")
                    pos += 1 + width
                else:
                    return None
                if view[pos] != NDARRAY_EXT or pos + 1 + size > len(view):
                    return None
                array = _array_from_payload(view, pos + 1, size)
                array.flags.writeable = False  # as the generic decoder's views of bytes are
                arrays.append(array)
                pos += 1 + size
            envelopes.append([*fields, [tag, arrays]])
    except Exception:  # anything unexpected: the generic decoder decides
        return None
    return envelopes if pos == len(view) else None


def decode_frame(
    data: bytes,
    *,
    session: bytes | None = None,
    sender: int | None = None,
    receiver: int | None = None,
    max_bytes: int = DEFAULT_MAX_FRAME_BYTES,
) -> list[Envelope]:
    """Decode and validate one frame; optionally check each envelope's session and addresses.

    Errors name ``sender`` as the peer when it is given.
    """
    try:
        _check_size(data, max_bytes)
        obj = _frame_in_place(data) if len(data) >= IN_PLACE_MIN_BYTES else None
        if obj is None:
            obj = unpackb(data, max_bytes=max_bytes)
    except DecodeError as exc:
        raise DecodeError(exc.reason, peer=sender) from None
    if not isinstance(obj, list):
        raise DecodeError("frame is not an array of envelopes", peer=sender)
    envelopes = []
    for item in obj:
        try:
            env = _envelope_from_wire(item)
        except (DecodeError, SessionMismatchError) as exc:  # a wrong version too
            raise type(exc)(exc.reason, peer=sender) from None
        if (
            (session is not None and env.session != session)
            or (sender is not None and env.sender != sender)
            or (receiver is not None and env.receiver != receiver)
        ):
            _raise_misaddressed(env, session, sender, receiver)
        envelopes.append(env)
    return envelopes


def _raise_misaddressed(
    env: Envelope, session: bytes | None, sender: int | None, receiver: int | None
) -> None:
    for name, expected, got in (
        ("session", session, env.session),
        ("sender", sender, env.sender),
        ("receiver", receiver, env.receiver),
    ):
        if expected is not None and got != expected:
            raise SessionMismatchError(
                f"envelope {name} {got!r}, expected {expected!r}",
                peer=sender, step=format_path(env.path),
            )


def message_nbytes(msg: Message) -> int:
    """Payload bytes of a message as accounted: the raw bytes of its arrays, else its encoding."""
    if type(msg) is Arrays:
        total = 0
        for array in msg.arrays:
            total += array.nbytes
        return total
    return len(encode_message(msg))

