"""Typed messages and their msgpack wire format (sans-IO: bytes in, objects out).

Wire format
-----------
* A **message** is a frozen dataclass registered with a small integer tag; it is encoded as
  the msgpack array ``[tag, field1, field2, ...]`` in field order. Fields are flat: scalars
  (integers, bools, floats, nil, str, bytes), except :class:`Arrays` (a list of numpy arrays)
  and :class:`Value` (a scalar or a short flat list of scalars). Tags 1-15 belong to this
  module, 16-31 to the session layer.
* numpy arrays travel as msgpack ext type 1: ``dtype code (u8) | ndim (u8) | shape (ndim x
  u64 little-endian) | raw little-endian bytes``. Only whitelisted dtypes are accepted and the
  byte length must equal ``prod(shape) * itemsize``. Decoded arrays are read-only views of the
  frame.
* An **envelope** names a message for the party mailbox:
  ``[VERSION, session, sender, receiver, step path, seq, round, message]``.
* A **frame** (the unit a transport carries) is a msgpack array of envelopes; the runtime
  encodes each envelope as a frame of its own (:func:`encode_frame`, copying each array once)
  and its writer task merges small ones ready together (:func:`merge_frames`). Trace tools
  take a frame apart into its encoded envelopes (:func:`split_frame`) and put envelopes
  together again (:func:`frame_from_encoded`): only this module reads the wire format.

Decoding is bounded
-------------------
The decoder reads this schema and nothing else: no maps, no ext type but 1, no container
where the schema has a scalar, so nesting depth is at most four (frame, envelope, message,
list of arrays). Container lengths are checked before anything is built for them (step paths
of at most :data:`MAX_PATH_DEPTH` items, at most :data:`MAX_ARRAYS` arrays per message, no
more envelopes than the frame's bytes or its memory budget can hold), and the memory a frame
decodes to is estimated as it is built and refused beyond :func:`decode_budget`, 4 times the
frame's size (2 MiB for frames under 512 KiB): work and memory grow linearly with the frame's
size whatever its bytes are.

No pickle anywhere. Every decoding failure raises :class:`DecodeError` (or
:class:`SessionMismatchError` for a well-formed frame of another session, sender or version).

One module of about 770 lines, on purpose: the wire format is written and read in exactly
one place. The encoder, the bounded reader and the message registry share private tables
(dtype codes, array prefixes, tags, the decode budget's object costs); split, those tables
would become an interface that nothing outside the codec should use.
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
from puma_async.transports.base import DEFAULT_MAX_FRAME_BYTES

VERSION = 1
MAX_NDIM = 8
MAX_TAG = 127
MAX_MESSAGE_FIELDS = 15
MAX_ARRAYS = 4096
MAX_PATH_DEPTH = 64
MAX_VALUE_ITEMS = 16
MAX_VALUE_BYTES = 256
DECODE_BYTES_PER_BYTE = 4
DECODE_FLOOR_BYTES = 2 << 20
"""Decoding a frame of n bytes may allocate ``max(4 n, 2 MiB)`` (see :func:`decode_budget`):
the floor lets a merged frame of up to 64 KiB of tiny envelopes (about 200 bytes of Python
objects each, 16 times their size on the wire) through."""

# What decoded objects cost (CPython 3.11, 64-bit), for the decode budget: an envelope (its
# tuple and step path), each item of a step path, a message, each numpy view, each scalar.
_ENVELOPE_COST = 176
_PATH_ITEM_COST = 48
_MESSAGE_COST = 128
_ARRAY_COST = 160
_FIELD_COST = 48
_MIN_ENVELOPE_BYTES = 12  # 8-field array, empty session and path, [tag] of a field-less message

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


# ----------------------------------------------------------------------------- messages

_MESSAGES: dict[int, type[Message]] = {}
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


@dataclasses.dataclass(frozen=True, slots=True)
class Message:
    """Base of the typed messages; subclasses set ``TAG`` and are registered by ``@message``."""

    TAG: ClassVar[int] = -1


def message(cls: type[Message]) -> type[Message]:
    """Class decorator: make ``cls`` a frozen dataclass and register its tag for decoding.

    Every field of a registered message is a plain scalar on the wire (an integer, bool,
    float, None, str or bytes; the decoder refuses containers and ext types there), and the
    class has a ``from_wire(cls, fields)`` classmethod that checks the decoded fields' types
    and ranges and raises :class:`DecodeError` (or TypeError/ValueError) for bad ones. The two
    exceptions: :class:`Arrays`, which the decoder reads itself, and :class:`Value`, whose
    field may be a flat list. At most :data:`MAX_MESSAGE_FIELDS` fields.
    """
    cls = dataclasses.dataclass(frozen=True, slots=True)(cls)
    if not 0 <= cls.TAG <= MAX_TAG:
        raise ValueError(f"message tag {cls.TAG} is not in 0..{MAX_TAG}")
    if len(dataclasses.fields(cls)) > MAX_MESSAGE_FIELDS:
        raise ValueError(f"{cls.__name__} has more than {MAX_MESSAGE_FIELDS} fields")
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


@message
class Seed(Message):
    """Key material: a PRG seed given to a peer (pairwise keys, input-sharing seeds)."""

    TAG: ClassVar[int] = 2
    key: bytes

    @classmethod
    def from_wire(cls, fields: list) -> Seed:
        (key,) = fields
        if type(key) is not bytes or len(key) not in (16, 32):
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
        if type(reason) is not str or type(step) is not str:
            raise DecodeError("Abort: reason and step must be strings")
        return cls(reason[:4096], step[:1024])


Scalar = None | bool | int | float | str | bytes


@message
class Value(Message):
    """Small plain data: a scalar, or a flat list of at most :data:`MAX_VALUE_ITEMS` scalars
    (None, bool, int, str or bytes; str and bytes of at most :data:`MAX_VALUE_BYTES`)."""

    TAG: ClassVar[int] = 5
    value: Scalar | list[Scalar]

    def __post_init__(self) -> None:
        _check_value(self.value, TypeError)

    @classmethod
    def from_wire(cls, fields: list) -> Value:
        (value,) = fields
        _check_value(value, DecodeError)
        return cls(value)


def _check_value(value: object, error: type[Exception]) -> None:
    items = value if type(value) is list else [value]
    if len(items) > MAX_VALUE_ITEMS:
        raise error(f"Value: a list of {len(items)} items exceeds {MAX_VALUE_ITEMS}")
    for item in items:
        kind = type(item)
        if kind in (str, bytes):
            if len(item) > MAX_VALUE_BYTES:  # type: ignore[arg-type]
                raise error(f"Value: a {kind.__name__} longer than {MAX_VALUE_BYTES}")
        elif item is not None and kind not in (bool, int):
            raise error(f"Value: holds scalars or a flat list of them, not {kind.__name__}")


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


# ----------------------------------------------------------------------------- decoding
#
# A schema-driven reader of the msgpack subset this protocol uses. It never builds a generic
# structure: where the schema has a scalar it reads a scalar (a container there is an
# error), so nesting is bounded by the schema (frame > envelope > message > arrays or a
# Value's list), and every container length is checked before anything is built for it.
# Arrays are read-only views of the frame. Truncation surfaces as IndexError or struct.error,
# which the entry points turn into DecodeError.

Buffer = bytes | bytearray | memoryview
_U8, _U16, _U32 = struct.Struct(">B"), struct.Struct(">H"), struct.Struct(">I")
_NUMBERS = {
    0xCA: struct.Struct(">f"), 0xCB: struct.Struct(">d"),
    0xCC: _U8, 0xCD: _U16, 0xCE: _U32, 0xCF: struct.Struct(">Q"),
    0xD0: struct.Struct(">b"), 0xD1: struct.Struct(">h"), 0xD2: struct.Struct(">i"),
    0xD3: struct.Struct(">q"),
}
_UINTS = {0xCC: _U8, 0xCD: _U16, 0xCE: _U32, 0xCF: _NUMBERS[0xCF]}
_BIN = {0xC4: _U8, 0xC5: _U16, 0xC6: _U32}
_STR = {0xD9: _U8, 0xDA: _U16, 0xDB: _U32}
_EXT = {0xC7: _U8, 0xC8: _U16, 0xC9: _U32}
_FIXEXT_SIZE = {header: size for size, header in _FIXEXT.items()}


def _kind(byte: int) -> str:
    """What a msgpack value starting with ``byte`` is, for error messages."""
    if byte <= 0x7F or byte >= 0xE0 or 0xCC <= byte <= 0xD3:
        return "an integer"
    if 0x80 <= byte <= 0x8F or byte in (0xDE, 0xDF):
        return "a map"
    if 0x90 <= byte <= 0x9F or byte in (0xDC, 0xDD):
        return "an array"
    if 0xA0 <= byte <= 0xBF or byte in _STR:
        return "a string"
    if byte in _BIN:
        return "binary data"
    if byte in _EXT or byte in _FIXEXT_SIZE:
        return "an ext value"
    return {0xC0: "nil", 0xC1: "the unused byte 0xc1", 0xC2: "a bool", 0xC3: "a bool",
            0xCA: "a float", 0xCB: "a float"}[byte]


def _read_length(buf: Buffer, pos: int, width: struct.Struct, what: str) -> tuple[int, int]:
    (length,) = width.unpack_from(buf, pos)
    end = pos + width.size + length
    if end > len(buf):
        raise DecodeError(f"truncated {what}: {length} bytes declared")
    return pos + width.size, end


def _read_scalar(buf: Buffer, pos: int) -> tuple[Any, int]:
    """The scalar at ``pos`` (nil, bool, int, float, str or bin) and the position after it."""
    byte = buf[pos]
    if byte <= 0x7F:
        return byte, pos + 1
    if byte >= 0xE0:
        return byte - 0x100, pos + 1
    if 0xA0 <= byte <= 0xBF:
        start, end = pos + 1, pos + 1 + (byte & 0x1F)
        return _text(buf, start, end), end
    number = _NUMBERS.get(byte)
    if number is not None:
        return number.unpack_from(buf, pos + 1)[0], pos + 1 + number.size
    width = _BIN.get(byte)
    if width is not None:
        start, end = _read_length(buf, pos + 1, width, "binary data")
        return bytes(buf[start:end]), end
    width = _STR.get(byte)
    if width is not None:
        start, end = _read_length(buf, pos + 1, width, "string")
        return _text(buf, start, end), end
    if byte == 0xC0:
        return None, pos + 1
    if byte in (0xC2, 0xC3):
        return byte == 0xC3, pos + 1
    raise DecodeError(f"{_kind(byte)} where a plain value is expected")


def _text(buf: Buffer, start: int, end: int) -> str:
    if end > len(buf):
        raise DecodeError(f"truncated string: {end - start} bytes declared")
    try:
        return bytes(buf[start:end]).decode()
    except UnicodeDecodeError:
        raise DecodeError("string is not valid UTF-8") from None


def _read_uint(buf: Buffer, pos: int, what: str) -> tuple[int, int]:
    """The integer >= 0 at ``pos`` and the position after it."""
    byte = buf[pos]
    if byte <= 0x7F:
        return byte, pos + 1
    if byte == 0xCD:  # uint 16: sequence numbers and rounds of a long session
        return buf[pos + 1] << 8 | buf[pos + 2], pos + 3
    width = _UINTS.get(byte)
    if width is None:
        raise DecodeError(f"{what} must be an integer >= 0, not {_kind(byte)}")
    return width.unpack_from(buf, pos + 1)[0], pos + 1 + width.size


def _read_array_header(buf: Buffer, pos: int, what: str, limit: int) -> tuple[int, int]:
    """The item count of the array at ``pos`` (at most ``limit``) and the position after it."""
    byte = buf[pos]
    if 0x90 <= byte <= 0x9F:
        count, pos = byte & 0x0F, pos + 1
    elif byte == 0xDC:
        count, pos = _U16.unpack_from(buf, pos + 1)[0], pos + 3
    elif byte == 0xDD:
        count, pos = _U32.unpack_from(buf, pos + 1)[0], pos + 5
    else:
        raise DecodeError(f"{what} must be an array, not {_kind(byte)}")
    if count > limit:
        raise DecodeError(f"{what} of {count} items exceeds the limit of {limit}")
    return count, pos


def _read_ndarray(buf: Buffer, pos: int) -> tuple[np.ndarray, int]:
    """The numpy array (ext type 1) at ``pos``, a view of ``buf`` (unless a byte order
    conversion needs a copy) checked against its header; the position after it."""
    byte = buf[pos]
    if byte == 0xC8:  # ext 16: arrays of 31 to 8,190 words, most of a token's
        size = buf[pos + 1] << 8 | buf[pos + 2]
        pos += 3
    elif byte == 0xC7:  # ext 8: smaller ones
        size = buf[pos + 1]
        pos += 2
    else:
        size = _FIXEXT_SIZE.get(byte)
        if size is not None:
            pos += 1
        else:
            width = _EXT.get(byte)
            if width is None:
                raise DecodeError(f"Arrays: {_kind(byte)} where a numpy array is expected")
            size = width.unpack_from(buf, pos + 1)[0]
            pos += 1 + width.size
    if buf[pos] != NDARRAY_EXT:
        raise DecodeError(f"msgpack ext type {buf[pos] - (buf[pos] >> 7 << 8)} is not an array")
    start, end = pos + 1, pos + 1 + size
    if end > len(buf) or size < 2:
        raise DecodeError(f"truncated array: {size} bytes declared")
    dtype_code, ndim = buf[start], buf[start + 1]
    if dtype_code >= len(_DTYPES):
        raise DecodeError(f"array dtype code {dtype_code} is not in the whitelist")
    if ndim > MAX_NDIM:
        raise DecodeError(f"array of {ndim} dimensions exceeds the limit of {MAX_NDIM}")
    header = 2 + 8 * ndim
    if size < header:
        raise DecodeError("truncated array shape")
    shape = _SHAPES[ndim].unpack_from(buf, start + 2)
    dtype = _DTYPES[dtype_code]
    if math.prod(shape) * dtype.itemsize != size - header:
        raise DecodeError(
            f"array payload of {size - header} bytes does not match shape {shape} of {dtype}"
        )
    try:
        if dtype_code in _LITTLE_ENDIAN_CODES:
            return np.ndarray(shape, dtype, buf, start + header), end
        converted = np.ndarray(shape, dtype.newbyteorder("<"), buf, start + header).astype(dtype)
        return converted, end
    except ValueError as exc:  # an empty array with a dimension numpy cannot represent
        raise DecodeError(f"array shape {shape}: {exc}") from None


def _read_arrays(buf: Buffer, pos: int) -> tuple[Arrays, int, int]:
    """The :class:`Arrays` whose list of arrays is at ``pos``, as :func:`_read_message`."""
    byte = buf[pos]
    if 0x90 <= byte <= 0x9F:
        length, pos = byte & 0x0F, pos + 1
    else:
        length, pos = _read_array_header(buf, pos, "Arrays", MAX_ARRAYS)
    arrays = []
    for _ in range(length):
        array, pos = _read_ndarray(buf, pos)
        arrays.append(array)
    return Arrays(tuple(arrays)), pos, _MESSAGE_COST + _ARRAY_COST * length


def _read_message(buf: Buffer, pos: int) -> tuple[Message, int, int]:
    """The message at ``pos``, the position after it and its decoded cost in bytes."""
    if buf[pos] == 0x92 and buf[pos + 1] == Arrays.TAG:  # the common case, read at once
        return _read_arrays(buf, pos + 2)
    start = pos
    count, pos = _read_array_header(buf, pos, "message", MAX_MESSAGE_FIELDS + 1)
    if count == 0:
        raise DecodeError("message is an empty array (no tag)")
    tag, pos = _read_uint(buf, pos, "message tag")
    cls = _MESSAGES.get(tag)
    if cls is None:
        raise DecodeError(f"unknown message tag {tag}")
    names = _FIELD_NAMES[cls]
    if count - 1 != len(names):
        raise DecodeError(f"{cls.__name__}: expected {len(names)} fields, got {count - 1}")
    if cls is Arrays:
        return _read_arrays(buf, pos)
    fields = []
    items = count
    for _ in names:
        byte = buf[pos]
        if cls is Value and (0x90 <= byte <= 0x9F or byte in (0xDC, 0xDD)):
            length, pos = _read_array_header(buf, pos, "Value", MAX_VALUE_ITEMS)
            value = []
            for _ in range(length):
                item, pos = _read_scalar(buf, pos)
                value.append(item)
            fields.append(value)
            items += length
        else:
            field, pos = _read_scalar(buf, pos)
            fields.append(field)
    try:
        msg = cls.from_wire(fields)  # type: ignore[attr-defined]
    except DecodeError:
        raise
    except (TypeError, ValueError) as exc:
        raise DecodeError(f"{cls.__name__}: {exc}") from None
    return msg, pos, _MESSAGE_COST + _FIELD_COST * items + (pos - start)


def _check_size(data: Buffer, max_bytes: int) -> None:
    if len(data) > max_bytes:
        raise DecodeError(f"frame of {len(data)} bytes exceeds the limit of {max_bytes}")


def _readonly(data: Buffer) -> Buffer:
    """``data`` as a read-only buffer, so the arrays viewing it are read-only too."""
    return data if type(data) is bytes else memoryview(data).toreadonly()


def decode_message(data: Buffer, *, max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> Message:
    """Decode one message written by :func:`encode_message`; any malformed input raises
    :class:`DecodeError`."""
    _check_size(data, max_bytes)
    buf = _readonly(data)
    try:
        msg, pos, _ = _read_message(buf, 0)
    except (IndexError, struct.error):
        raise DecodeError("truncated message") from None
    if pos != len(buf):
        raise DecodeError(f"{len(buf) - pos} bytes after the message")
    return msg


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


def _read_envelope(buf: Buffer, pos: int, session: bytes | None) -> tuple[Envelope, int, int]:
    """The envelope at ``pos`` (its session is ``session``'s object when equal to it), the
    position after it and its decoded cost in bytes.

    Positive fixints (one byte below 0x80) and the uint 8 and uint 16 of step path items,
    sequence numbers and rounds are read inline: they are every integer of nearly every
    envelope (in a new token's pass 98% of rounds and 57% of paths are past 127), and this
    is the per-message hot path.
    """
    if buf[pos] != 0x98:
        raise DecodeError(f"envelope must be an 8-field array, not {_kind(buf[pos])}")
    version = buf[pos + 1]
    if version != VERSION:
        version, _ = _read_scalar(buf, pos + 1)
        if type(version) is not int:
            raise DecodeError("envelope version is not an integer")
        raise SessionMismatchError(f"protocol version {version!r}, expected {VERSION}")
    pos += 2
    if buf[pos] == 0xC4:  # bin 8
        start = pos + 2
        pos = start + buf[pos + 1]
        if pos > len(buf):
            raise DecodeError("truncated envelope session")
    else:
        width = _BIN.get(buf[pos])
        if width is None:
            raise DecodeError(f"envelope session must be binary data, not {_kind(buf[pos])}")
        start, pos = _read_length(buf, pos + 1, width, "envelope session")
    sid = session if session is not None and buf[start:pos] == session else bytes(buf[start:pos])
    sender = buf[pos]
    if sender < 0x80:
        pos += 1
    else:
        sender, pos = _read_uint(buf, pos, "envelope sender")
    receiver = buf[pos]
    if receiver < 0x80:
        pos += 1
    else:
        receiver, pos = _read_uint(buf, pos, "envelope receiver")
    byte = buf[pos]
    if 0x90 <= byte <= 0x9F:
        depth, pos = byte & 0x0F, pos + 1
    else:
        depth, pos = _read_array_header(buf, pos, "envelope step path", MAX_PATH_DEPTH)
    path = tuple(buf[pos:pos + depth])
    if len(path) == depth and (not path or max(path) < 0x80):
        pos += depth
    else:  # child indices of 128 and more: uint 8 or uint 16
        items = []
        for _ in range(depth):
            byte = buf[pos]
            if byte < 0x80:
                items.append(byte)
                pos += 1
            elif byte == 0xCC:
                items.append(buf[pos + 1])
                pos += 2
            elif byte == 0xCD:
                items.append(buf[pos + 1] << 8 | buf[pos + 2])
                pos += 3
            else:
                index, pos = _read_uint(buf, pos, "envelope step path item")
                items.append(index)
        path = tuple(items)
    seq = buf[pos]
    if seq < 0x80:
        pos += 1
    elif seq == 0xCC:
        seq, pos = buf[pos + 1], pos + 2
    else:
        seq, pos = _read_uint(buf, pos, "envelope seq")
    rnd = buf[pos]
    if rnd == 0xCD:  # a round past 127: nearly every message of a pass
        rnd, pos = buf[pos + 1] << 8 | buf[pos + 2], pos + 3
    elif rnd < 0x80:
        pos += 1
    else:
        rnd, pos = _read_uint(buf, pos, "envelope round")
    msg, pos, cost = _read_message(buf, pos)
    env = Envelope(sid, sender, receiver, path, seq, rnd, msg)
    return env, pos, cost + _ENVELOPE_COST + _PATH_ITEM_COST * depth


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
        parts.append(_envelope_head(pack, env))
        parts += _message_parts(env.message)
    return b"".join(parts)


def _envelope_head(pack: Any, env: Envelope) -> bytes:
    """An envelope's encoding up to its message: its fields with a placeholder nil for the
    message, which the message's encoding replaces."""
    return pack([VERSION, *env[:6], None])[:-1]  # type: ignore[no-any-return]


def detached(env: Envelope) -> tuple[Envelope, int]:
    """``env`` (of an :class:`Arrays` message) as its receiver decodes it from
    :func:`encode_frame` ``([env])``, without that frame, and the frame's size in bytes.

    For a peer in the same process (:meth:`.Transport.takes_decoded`): the same values and the
    same accounting as a frame, without encoding and decoding one. Each array becomes a
    read-only C-contiguous copy in its wire dtype (so later changes to the sender's arrays do
    not matter, as after encoding); the size is exact (the statistics count it); arrays the
    encoder refuses (dtype, dimensions) raise the encoder's TypeError.
    """
    arrays = env.message.arrays  # type: ignore[attr-defined]
    size = 3 + len(_envelope_head(_packer().pack, env)) + len(_array_header(len(arrays)))
    copies = []
    for array in arrays:
        if not isinstance(array, np.ndarray):
            raise TypeError(f"Arrays holds numpy arrays, not {type(array).__name__}")
        code, data = _wire_data(array)
        copy = data.astype(_DTYPES[code])  # (a copy; a converted 0-d array's data is 1-d)
        if copy.shape != array.shape:
            copy = copy.reshape(array.shape)
        copy.setflags(write=False)
        size += len(_ext_prefix(code, array.shape)) + copy.nbytes
        copies.append(copy)
    # (3: the frame's one-item array header and the message's [Arrays.TAG, ...] prefix)
    return Envelope(*env[:6], Arrays(tuple(copies))), size


def decode_budget(frame_bytes: int) -> int:
    """The most memory, in bytes, that decoding a frame of ``frame_bytes`` may allocate."""
    return max(DECODE_BYTES_PER_BYTE * frame_bytes, DECODE_FLOOR_BYTES)


def decode_frame(
    data: Buffer,
    *,
    session: bytes | None = None,
    sender: int | None = None,
    receiver: int | None = None,
    max_bytes: int = DEFAULT_MAX_FRAME_BYTES,
) -> list[Envelope]:
    """Decode and validate one frame; optionally check each envelope's session and addresses.

    Arrays are read-only views of ``data``. Errors name ``sender`` as the peer when it is
    given. Decoding allocates at most :func:`decode_budget` of the frame's size (estimated
    from what it builds, with the per-object costs of CPython 3.11 on a 64-bit host): a frame
    that would take more, such as one of thousands of near-empty envelopes, is refused.
    """
    return _decode_frame(data, session, sender, receiver, max_bytes, None)


def split_frame(data: Buffer, *, max_bytes: int = DEFAULT_MAX_FRAME_BYTES
                ) -> list[tuple[bytes, Envelope]]:
    """Each envelope of a frame with its own encoding, byte for byte (the inverse of
    :func:`frame_from_encoded`): what trace replay compares, since how envelopes are grouped
    into frames varies between runs. Decoded and validated as :func:`decode_frame` does."""
    bounds: list[int] = []
    envelopes = _decode_frame(data, None, None, None, max_bytes, bounds)
    return [(bytes(data[start:end]), env)
            for start, end, env in zip(bounds[:-1], bounds[1:], envelopes, strict=True)]


def _decode_frame(
    data: Buffer, session: bytes | None, sender: int | None, receiver: int | None,
    max_bytes: int, bounds: list[int] | None,
) -> list[Envelope]:
    """:func:`decode_frame`; with ``bounds``, also appends where the first envelope starts
    and where each one ends."""
    try:
        _check_size(data, max_bytes)
        buf = _readonly(data)
        if buf and 0x91 <= buf[0] <= 0x9F:  # up to 15 envelopes: within any limit
            count, pos = buf[0] & 0x0F, 1
        else:
            count, pos = _read_array_header(buf, 0, "frame", min(
                len(buf) // _MIN_ENVELOPE_BYTES,
                decode_budget(len(buf)) // (_ENVELOPE_COST + _MESSAGE_COST),
            ))
        if bounds is not None:
            bounds.append(pos)
        cost = 0
        envelopes = []
        for _ in range(count):
            env, pos, env_cost = _read_envelope(buf, pos, session)
            cost += env_cost
            # (the budget is at least the floor, so it needs computing only past it)
            if cost > DECODE_FLOOR_BYTES and cost > decode_budget(len(buf)):
                raise DecodeError(f"frame of {len(buf)} bytes decodes to more than "
                                  f"{decode_budget(len(buf))} bytes of objects")
            if (
                (session is not None and env.session is not session)
                or (sender is not None and env.sender != sender)
                or (receiver is not None and env.receiver != receiver)
            ):
                check_addressed(env, session, sender, receiver)
            envelopes.append(env)
            if bounds is not None:
                bounds.append(pos)
        if pos != len(buf):
            raise DecodeError(f"{len(buf) - pos} bytes after the last envelope")
    except (DecodeError, SessionMismatchError) as exc:
        if exc.peer is not None or sender is None:
            raise
        raise type(exc)(exc.reason, peer=sender, step=exc.step) from None
    except (IndexError, struct.error):
        raise DecodeError("truncated frame", peer=sender) from None
    return envelopes


def check_addressed(
    env: Envelope, session: bytes | None, sender: int | None, receiver: int | None
) -> None:
    """Raise :class:`SessionMismatchError` (naming ``sender`` as the peer) if ``env``'s
    session, sender or receiver is not the one given (None: not checked)."""
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
