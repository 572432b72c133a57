"""PRG: a pure function of (key, label, shape), the documented SHAKE128 / AES-CTR
construction, balance."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given
from hypothesis import strategies as st

from puma_async.protocols.prg import SMALL_DRAW, Prg, new_key

KEY = bytes(range(16))
labels = st.binary(min_size=0, max_size=40)


def _reference_stream(key: bytes, kind: bytes, label: bytes, nbytes: int) -> bytes:
    """The construction the module documents, written out independently."""
    if nbytes <= 2048:
        data = b"puma-async-prg" + bytes([len(key)]) + key + kind + label
        return hashlib.shake_128(data).digest(nbytes)
    nonce = hashlib.blake2b(kind + label, digest_size=16, person=b"puma-async-prg").digest()
    return Cipher(algorithms.AES(key), modes.CTR(nonce)).encryptor().update(bytes(nbytes))


@pytest.mark.parametrize("key", [KEY, bytes(range(32))])
def test_matches_the_documented_construction(key: bytes) -> None:
    prg = Prg(key)
    ring = prg.ring(b"step.0.zero", (3, 5))
    assert ring.dtype == np.uint64 and ring.shape == (3, 5)
    want = np.frombuffer(_reference_stream(key, b"r", b"step.0.zero", 120), "<u8")
    assert ring.ravel().tolist() == want.tolist()
    long = (1 << 17) + 3  # more than one 1 MiB chunk of keystream
    want = np.frombuffer(_reference_stream(key, b"r", b"long", 8 * long), "<u8")
    assert (prg.ring(b"long", long) == want).all()
    bits = np.frombuffer(_reference_stream(key, b"b", b"x", 16), "<u8")
    assert prg.bits(b"x", 2).tolist() == bits.tolist()
    assert prg.bytes(b"x", 7) == _reference_stream(key, b"y", b"x", 7)
    for words in (SMALL_DRAW // 8, SMALL_DRAW // 8 + 1):  # both sides of the switch
        want = np.frombuffer(_reference_stream(key, b"r", b"edge", 8 * words), "<u8")
        assert (prg.ring(b"edge", words) == want).all()
    assert prg.ring(b"edge", 3).flags.writeable


@given(st.lists(st.tuples(labels, st.integers(SMALL_DRAW + 1, 5000)), min_size=1, max_size=6))
def test_reused_contexts_give_every_draw_its_own_stream(draws: list[tuple[bytes, int]]) -> None:
    """Each thread's AES-CTR context is reset to each draw's counter block: a draw is the
    reference stream whatever was drawn before it, in this thread or in others, including
    draws that end inside a 16-byte block (the context's left-over keystream is dropped)."""
    prg, other = Prg(KEY), Prg(bytes(range(32)))

    def check(thread: int) -> None:
        for label, nbytes in draws:
            for p, key in ((prg, KEY), (other, bytes(range(32)))):
                label = label + bytes([thread])
                assert p.bytes(label, nbytes) == _reference_stream(key, b"y", label, nbytes)
                words = nbytes // 8
                assert p.ring(label, words).tobytes() == _reference_stream(key, b"r", label,
                                                                           8 * words)

    with ThreadPoolExecutor(3) as pool:
        list(pool.map(check, range(6)))
    check(0)


@given(labels, st.lists(st.integers(0, 6), max_size=3))
def test_pure_function_of_key_label_shape(label: bytes, dims: list[int]) -> None:
    shape = tuple(dims)
    one, two = Prg(KEY), Prg(bytes(KEY))
    first = one.ring(label, shape)
    one.ring(b"something else", 100)  # drawing other labels in between changes nothing
    assert (one.ring(label, shape) == first).all()
    assert (two.ring(label, shape) == first).all()
    assert first.shape == shape


@given(labels, st.integers(0, 50), st.integers(0, 50))
def test_prefix_consistent_on_one_side_of_the_switch(label: bytes, n: int, extra: int) -> None:
    prg = Prg(KEY)
    assert (prg.ring(label, n + extra)[:n] == prg.ring(label, n)).all()
    assert (prg.bits(label, n + extra)[:n] == prg.bits(label, n)).all()
    assert prg.bytes(label, n + extra)[:n] == prg.bytes(label, n)
    assert (prg.ring(label, (2, n)).ravel() == prg.ring(label, 2 * n)).all()


@given(labels, labels)
def test_labels_kinds_and_keys_separate(x: bytes, y: bytes) -> None:
    prg = Prg(KEY)
    if x != y:
        assert (prg.ring(x, 4) != prg.ring(y, 4)).any()
    assert (prg.ring(x, 4) != prg.bits(x, 4)).any()
    assert prg.bytes(x, 32) != prg.ring(x, 4).tobytes()
    assert (Prg(bytes(16)).ring(x, 4) != prg.ring(x, 4)).any()


def test_bit_balance_of_a_fixed_stream() -> None:
    n = 1 << 16
    words = Prg(KEY).ring(b"balance", n)
    bits = (words[:, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)
    freq = bits.mean(axis=0)
    sigma = 0.5 / np.sqrt(n)
    assert (np.abs(freq - 0.5) < 5 * sigma).all()  # deterministic: the key is fixed
    counts = np.bincount(np.frombuffer(words.tobytes(), np.uint8), minlength=256)
    expected = 8 * n / 256
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 400  # 255 degrees of freedom: mean 255, sd ~23


def test_keys_and_arguments_are_checked() -> None:
    assert len(new_key()) == 16 and len(new_key(32)) == 32
    assert new_key() != new_key()
    for size in (0, 24, 15):
        with pytest.raises(ValueError):
            new_key(size)
        with pytest.raises(ValueError):
            Prg(bytes(size))
    prg = Prg(KEY)
    with pytest.raises(TypeError):
        prg.ring("text label", 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        prg.ring(b"x", (2, -1))
    assert KEY.hex() not in repr(prg) and "AES-128" in repr(prg)
    assert prg.ring(b"x", 0).shape == (0,) and prg.bytes(b"x", 0) == b""
