"""Cryptographic pseudorandom generator: SHAKE128 or AES in counter mode, addressed by labels.

``Prg(key).ring(label, shape)`` is a pure function of (key, label, number of elements). A draw
of n bytes is

- up to :data:`SMALL_DRAW` bytes: SHAKE128(``"puma-async-prg"`` || len(key) || key || kind ||
  label), its first n bytes (a keyed sponge: a PRF of the key);
- longer: the keystream of AES-CTR under ``key`` with the 16-byte initial counter block
  BLAKE2b-128(kind || label, personalisation "puma-async-prg");

read as little-endian words. Concurrent protocol steps draw their randomness in different
orders at different parties, so nothing here is stateful: two parties holding the same key get
the same array for the same label whatever else they drew before.

Promises and caveats:
- a shape only reshapes the stream, and ``ring(l, (n,))`` is the first n words of
  ``ring(l, (n + m,))`` while both draws are on the same side of :data:`SMALL_DRAW`; draws of
  one label with lengths on both sides are unrelated. A label must never be reused for a
  different purpose, whatever the shape (the protocol layer derives labels from unique step
  paths, and both holders of a key always draw a label with the same length).
- ``ring``, ``bits`` and ``bytes`` are domain-separated (the kind byte), so the same label
  gives independent streams in each.
- AES: 128-bit counter blocks from a 128-bit hash: streams of distinct labels overlap only with
  negligible probability (about (labels^2 * blocks) / 2^128).
- cost: a small draw is one SHAKE128 call (protocols draw thousands of small masks per
  token); a long one is one AES-NI/VAES pass through OpenSSL plus one hash per call, on an
  AES-CTR context that each thread keeps per key and points at the draw's counter block
  (``reset_nonce``): setting up a context (the key schedule, and ``cryptography``'s checks)
  took about as long as a 16 KiB draw itself, 30 -> 17 us per draw in a new token's pass,
  where there are about 3,000 of them. ``cryptography`` releases the GIL while OpenSSL
  runs, so threads draw in parallel.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import threading

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

from .ring import RING_DTYPE, RingArray

KEY_SIZES = (16, 32)
_KIND_RING = b"r"
_KIND_BITS = b"b"
_KIND_BYTES = b"y"
_PERSON = b"puma-async-prg"
_CHUNK = 1 << 20  # bytes of keystream per OpenSSL call: the zero input stays in cache
SMALL_DRAW = 2048
"""Draws of up to this many bytes use SHAKE128 (cheaper than AES-CTR below about 2 KiB)."""
_ZEROS = memoryview(bytes(_CHUNK))
_WORDS = np.dtype("<u8")  # the stream's words
_BIG_ENDIAN = _WORDS != RING_DTYPE  # words are then converted to the native order


Bytes = bytes  # for annotations inside Prg, where ``bytes`` names the method


def new_key(size: int = 16) -> bytes:
    """A fresh uniformly random AES key (16 bytes: AES-128; 32: AES-256) from ``secrets``."""
    if size not in KEY_SIZES:
        raise ValueError(f"key size must be one of {KEY_SIZES}, got {size}")
    return secrets.token_bytes(size)


def _count(shape: int | tuple[int, ...]) -> tuple[tuple[int, ...], int]:
    if type(shape) is int and shape >= 0:  # the common cases, without the generators below
        return (shape,), shape
    if type(shape) is tuple:
        n = math.prod(shape)  # a Python int only when every dimension is one
        if type(n) is int and (not shape or min(shape) >= 0):
            return shape, n
    shape = (shape,) if isinstance(shape, int) else tuple(int(d) for d in shape)
    if any(d < 0 for d in shape):
        raise ValueError(f"negative dimension in shape {shape}")
    return shape, math.prod(shape)


class Prg:
    """AES-CTR keystreams addressed by (kind, label); thread-safe (holds the key and, per
    thread, an AES-CTR context that only that thread uses)."""

    __slots__ = ("_algorithm", "_contexts", "_shake_prefix")

    def __init__(self, key: Bytes) -> None:
        if len(key) not in KEY_SIZES:
            raise ValueError(f"AES key must be {KEY_SIZES} bytes, got {len(key)}")
        self._algorithm = algorithms.AES(bytes(key))
        self._shake_prefix = _PERSON + bytes([len(key)]) + bytes(key)
        self._contexts = threading.local()

    def __repr__(self) -> str:  # never show the key
        return f"Prg(<AES-{8 * len(self._algorithm.key)} key>)"

    def _stream(self, kind: Bytes, label: Bytes, nbytes: int) -> npt.NDArray[np.uint8]:
        if not isinstance(label, bytes):
            raise TypeError(f"label must be bytes, got {type(label).__name__}")
        if nbytes <= SMALL_DRAW:
            digest = hashlib.shake_128(self._shake_prefix + kind + label).digest(nbytes)
            return np.frombuffer(bytearray(digest), dtype=np.uint8)
        nonce = hashlib.blake2b(kind + label, digest_size=16, person=_PERSON).digest()
        encryptor = self._encryptor(nonce)
        out = np.empty(nbytes, dtype=np.uint8)
        view = memoryview(out)
        for lo in range(0, nbytes, _CHUNK):  # keystream = AES-CTR of zeros, written in place
            hi = min(nbytes, lo + _CHUNK)
            encryptor.update_into(_ZEROS[: hi - lo], view[lo:hi])
        return out

    def _encryptor(self, nonce: Bytes) -> CipherContext:
        """This thread's AES-CTR context under the key, at the initial counter block
        ``nonce`` (made once per thread; later draws only reset its counter)."""
        try:
            encryptor: CipherContext = self._contexts.encryptor
        except AttributeError:
            encryptor = Cipher(self._algorithm, modes.CTR(nonce)).encryptor()
            self._contexts.encryptor = encryptor
            return encryptor
        encryptor.reset_nonce(nonce)
        return encryptor

    def _words(self, kind: Bytes, label: Bytes, shape: int | tuple[int, ...]) -> RingArray:
        shape, n = _count(shape)
        words = self._stream(kind, label, 8 * n).view(_WORDS)  # little-endian on every host
        if _BIG_ENDIAN:
            words = words.astype(RING_DTYPE)
        return words if len(shape) == 1 else words.reshape(shape)

    def ring(self, label: Bytes, shape: int | tuple[int, ...]) -> RingArray:
        """Uniform elements of Z_2^64 for ``label`` (little-endian 8-byte words of the stream)."""
        return self._words(_KIND_RING, label, shape)

    def bits(self, label: Bytes, shape: int | tuple[int, ...]) -> RingArray:
        """Uniform 64-bit words for packed boolean shares (a stream separate from ``ring``)."""
        return self._words(_KIND_BITS, label, shape)

    def bytes(self, label: Bytes, n: int) -> Bytes:
        """``n`` uniform bytes for ``label`` (a stream separate from ``ring`` and ``bits``)."""
        _, n = _count(n)
        return self._stream(_KIND_BYTES, label, n).tobytes()
