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
* A **frame** (the unit a transport carries) is a msgpack array of envelopes; the party's
  writer task coalesces the envelopes ready for one peer into one frame.

No pickle anywhere. Every decoding failure raises :class:`DecodeError` (or
:class:`SessionMismatchError` for a well-formed frame of another session, sender or version).
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterable
from typing import Any, ClassVar

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


# ----------------------------------------------------------------------------- arrays


def _ext_default(obj: Any) -> msgpack.ExtType:
    if isinstance(obj, np.ndarray):
        dtype = obj.dtype.newbyteorder("=") if obj.dtype.byteorder == ">" else obj.dtype
        code = _DTYPE_CODE.get(np.dtype(dtype))
        if code is None:
            raise TypeError(f"numpy dtype {obj.dtype} is not in the wire whitelist")
        if obj.ndim > MAX_NDIM:
            raise TypeError(f"array of {obj.ndim} dimensions exceeds the limit of {MAX_NDIM}")
        data = np.ascontiguousarray(obj, dtype=np.dtype(dtype).newbyteorder("<"))
        header = struct.pack(f"<BB{obj.ndim}Q", code, obj.ndim, *obj.shape)
        return msgpack.ExtType(NDARRAY_EXT, header + data.tobytes())
    if isinstance(obj, np.integer):
        return int(obj)  # type: ignore[return-value]
    raise TypeError(f"cannot encode object of type {type(obj).__name__}")


def _ext_hook(code: int, data: bytes) -> np.ndarray:
    if code != NDARRAY_EXT:
        raise DecodeError(f"unknown msgpack ext type {code}")
    if len(data) < 2:
        raise DecodeError("truncated array header")
    dtype_code, ndim = data[0], data[1]
    if dtype_code >= len(_DTYPES):
        raise DecodeError(f"array dtype code {dtype_code} is not in the whitelist")
    if ndim > MAX_NDIM:
        raise DecodeError(f"array of {ndim} dimensions exceeds the limit of {MAX_NDIM}")
    header = 2 + 8 * ndim
    if len(data) < header:
        raise DecodeError("truncated array shape")
    shape = struct.unpack_from(f"<{ndim}Q", data, 2)
    dtype = _DTYPES[dtype_code].newbyteorder("<")
    count = 1
    for dim in shape:
        count *= dim
    if count * dtype.itemsize != len(data) - header:
        raise DecodeError(
            f"array payload of {len(data) - header} bytes does not match shape {shape} "
            f"of {_DTYPES[dtype_code]}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(_DTYPES[dtype_code], copy=False)


def packb(obj: Any) -> bytes:
    """msgpack-encode plain data and numpy arrays (no pickle, no arbitrary objects)."""
    return msgpack.packb(obj, default=_ext_default, use_bin_type=True)


def unpackb(data: bytes, *, max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> Any:
    """Decode what :func:`packb` wrote; any malformed input raises :class:`DecodeError`."""
    if len(data) > max_bytes:
        raise DecodeError(f"frame of {len(data)} bytes exceeds the limit of {max_bytes}")
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


def _check_arrays(values: Any, where: str) -> tuple[np.ndarray, ...]:
    if not isinstance(values, (list, tuple)) or not all(
        isinstance(v, np.ndarray) for v in values
    ):
        raise DecodeError(f"{where}: expected a list of arrays")
    return tuple(values)


@message
class Arrays(Message):
    """Numeric payload of a protocol step: shares, masked values, opened results."""

    TAG: ClassVar[int] = 1
    arrays: tuple[np.ndarray, ...]

    @classmethod
    def from_wire(cls, fields: list) -> Arrays:
        (values,) = fields
        return cls(_check_arrays(values, "Arrays"))


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


def encode_message(msg: Message) -> bytes:
    """Encode one typed message on its own (used by handshakes and traces)."""
    return packb([msg.TAG, *_message_fields(msg)])


def _message_from_wire(obj: Any) -> Message:
    if not isinstance(obj, list) or not obj or not isinstance(obj[0], int):
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


@dataclasses.dataclass(frozen=True)
class Envelope:
    """A message addressed to one step of one party: the mailbox key plus the round clock."""

    session: bytes
    sender: int
    receiver: int
    path: StepPath
    seq: int
    round: int
    message: Message

    @property
    def key(self) -> tuple[int, StepPath, int]:
        """Mailbox key at the receiver: (sender, step path, per-step sequence number)."""
        return (self.sender, self.path, self.seq)


def encode_envelope(env: Envelope) -> bytes:
    return packb([
        VERSION, env.session, env.sender, env.receiver, list(env.path), env.seq, env.round,
        [env.message.TAG, *_message_fields(env.message)],
    ])


def _envelope_from_wire(obj: Any) -> Envelope:
    if not isinstance(obj, list) or len(obj) != 8:
        raise DecodeError("envelope is not an 8-field array")
    version, session, sender, receiver, path, seq, rnd, msg = obj
    if version != VERSION:
        raise SessionMismatchError(f"protocol version {version!r}, expected {VERSION}")
    if not isinstance(session, bytes):
        raise DecodeError("envelope session is not bytes")
    if not all(isinstance(v, int) and v >= 0 for v in (sender, receiver, seq, rnd)):
        raise DecodeError("envelope sender, receiver, seq and round must be integers >= 0")
    if not isinstance(path, list) or not all(isinstance(p, int) and p >= 0 for p in path):
        raise DecodeError("envelope step path must be a list of integers >= 0")
    return Envelope(session, sender, receiver, tuple(path), seq, rnd, _message_from_wire(msg))


def frame_from_encoded(envelopes: list[bytes]) -> bytes:
    """Concatenate already-encoded envelopes into one frame (a msgpack array)."""
    n = len(envelopes)
    if n < 16:
        header = bytes([0x90 | n])
    elif n < 1 << 16:
        header = b"\xdc" + n.to_bytes(2, "big")
    else:
        header = b"\xdd" + n.to_bytes(4, "big")
    return header + b"".join(envelopes)


def encode_frame(envelopes: Iterable[Envelope]) -> bytes:
    return frame_from_encoded([encode_envelope(e) for e in envelopes])


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
        obj = unpackb(data, max_bytes=max_bytes)
    except DecodeError as exc:
        raise DecodeError(exc.reason, peer=sender) from None
    if not isinstance(obj, list):
        raise DecodeError("frame is not an array of envelopes", peer=sender)
    envelopes = []
    for item in obj:
        try:
            env = _envelope_from_wire(item)
        except DecodeError as exc:
            raise type(exc)(exc.reason, peer=sender) from None
        checks: list[tuple[str, Any, Any]] = [
            ("session", session, env.session),
            ("sender", sender, env.sender),
            ("receiver", receiver, env.receiver),
        ]
        for name, expected, got in checks:
            if expected is not None and got != expected:
                raise SessionMismatchError(
                    f"envelope {name} {got!r}, expected {expected!r}",
                    peer=sender, step=format_path(env.path),
                )
        envelopes.append(env)
    return envelopes


def message_nbytes(msg: Message) -> int:
    """Payload bytes of a message as accounted: the raw bytes of its arrays, else its encoding."""
    if isinstance(msg, Arrays):
        return sum(int(a.nbytes) for a in msg.arrays)
    return len(encode_message(msg))

