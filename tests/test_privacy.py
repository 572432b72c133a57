"""What the computing parties see: every array they receive looks uniform, whatever the input.

Semi-honest security says a computing party's view can be simulated without the secrets. This
test checks the observable consequences on tiny-model sessions (all five roles in one process,
every role's frames recorded), for P0, P1 and P2:

* **uniformity**: over ``RUNS`` sessions with fixed, different entropy per run (so the test is
  deterministic), every bit position of every received array is one half of the time, per
  message (receiver, sender, step path, seq, array) and pooled per *signature* (receiver,
  sender, array's place in its message, dtype) over all messages;
* **no repeats**: a 64-bit element received at the same place in two runs with different
  entropy is never equal (a value that is not freshly masked would be), and no key repeats;
* **independence of the secrets**: the same statistics do not differ between two prompts (of
  the same length: lengths are public) or between two weight sets (two-sample tests), and the
  public control messages are identical in every run.

Bounds. Element bits are independent fair coins under the hypothesis (PRG-masked values; runs
use independent entropy), so Hoeffding's inequality bounds a fraction of ones p over N bits:
P(|p - 1/2| >= t) <= 2 exp(-2 N t^2), and the difference of two fractions: P(|p_A - p_B| >=
t) <= 2 exp(-2 t^2 / (1/N_A + 1/N_B)). Each check runs T tests and uses the t for which
T times that bound is ``ALPHA`` (Bonferroni), so a correct implementation fails a check with
probability below 1e-6, for any sample size. A bit that is constant in one message is caught
once that message has about 60 elements over the runs; pooled signatures (about 10^5 elements)
catch a bias of about 0.01, and the repeat check catches even one unmasked element.

What is left out, and why:

* packed small values (uint8 streams of b-bit values, from the truncation dealer): only the
  bytes before the last are checked; the last one holds up to 7 padding zero bits, whose
  number follows from the public shapes;
* empty arrays (nothing to see) and the public control messages (commands with the public
  number of positions: checked to be identical in every run instead);
* any other dtype or message type fails the test until someone decides how it is uniform.

Limits: these are marginal tests of each bit; they cannot see a dependency between two
messages that are each uniform (e.g. two masks that cancel). That is the protocols' proofs'
job; this test catches a value sent unmasked, a mask reused across runs, a partly masked word.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NamedTuple, TypeVar

import numpy as np
import numpy.typing as npt
import pytest

from puma_async.codec import Arrays, Message, Seed, decode_frame, format_path
from puma_async.model import random_weights, tiny_config
from puma_async.roles import ALL_ROLES, PARTIES, role_name
from puma_async.session import run_session
from puma_async.trace.format import read_trace
from puma_async.trace.recorder import RecordingTransport
from puma_async.transports.base import Transport

RUNS = 5
ALPHA = 1e-6
CONFIG = tiny_config()
PROMPTS = ([1, 2, 3, 4], [60, 7, 33, 12])  # the same length: lengths are public
WEIGHT_SEEDS = (1, 2)
NEW_TOKENS = 2
SESSION = b"privacy-session!"

Counts = tuple[npt.NDArray[np.int64], int]
"""Ones per bit position, and how many samples (elements) each position has."""


class Key(NamedTuple):
    """One received array: which message, and its place in the message."""

    party: int
    sender: int
    path: tuple[int, ...]
    seq: int
    index: int

    def describe(self) -> str:
        step = format_path(self.path) or "<root>"
        return (f"{role_name(self.party)} from {role_name(self.sender)} at step {step} "
                f"seq {self.seq} array {self.index}")


class Signature(NamedTuple):
    """The arrays of every message with the same place and dtype, pooled."""

    party: int
    sender: int
    index: int
    count: int
    dtype: str

    def describe(self) -> str:
        return (f"{role_name(self.party)} from {role_name(self.sender)}: array {self.index} of "
                f"{self.count} ({self.dtype}), all messages")


K = TypeVar("K", Key, Signature)


@dataclasses.dataclass
class RunView:
    """What P0, P1 and P2 received in one session."""

    arrays: dict[Key, np.ndarray] = dataclasses.field(default_factory=dict)
    signatures: dict[Key, Signature] = dataclasses.field(default_factory=dict)
    seeds: list[bytes] = dataclasses.field(default_factory=list)
    control: list[tuple[int, int, tuple[int, ...], int, Message]] = dataclasses.field(
        default_factory=list)


def entropy(label: str) -> dict[int, bytes]:
    return {role: hashlib.sha256(f"{label}/{role}".encode()).digest() for role in ALL_ROLES}


def record_session(folder: Path, weight_seed: int, prompt: list[int], label: str) -> RunView:
    """Run one tiny session with the entropy named ``label``; the parties' received frames."""
    folder.mkdir()

    def wrap(transport: Transport) -> Transport:
        path = folder / f"{role_name(transport.role)}.trace"
        return RecordingTransport(transport, path, {}, session=SESSION)

    run_session(random_weights(CONFIG, seed=weight_seed), [prompt],
                max_new_tokens=NEW_TOKENS, session=SESSION,
                entropy=entropy(label), wrap_transport=wrap)
    view = RunView()
    for party in PARTIES:
        _header, records = read_trace(folder / f"{role_name(party)}.trace")
        for record in records:
            if record.direction != "recv" or record.event != "frame":
                continue
            assert record.frame is not None
            for env in decode_frame(record.frame):
                _file(view, party, record.peer, env.path, env.seq, env.message)
    return view


def _file(view: RunView, party: int, sender: int, path: tuple[int, ...], seq: int,
          message: Message) -> None:
    if isinstance(message, Arrays):
        for index, array in enumerate(message.arrays):
            key = Key(party, sender, path, seq, index)
            view.arrays[key] = array
            view.signatures[key] = Signature(party, sender, index, len(message.arrays),
                                             str(array.dtype))
    elif isinstance(message, Seed):
        view.seeds.append(message.key)
    else:
        view.control.append((party, sender, path, seq, message))


def bit_counts(array: np.ndarray) -> Counts:
    """Ones per bit position over the meaningful bits of a received array.

    uint64: all 64 bits of every element. uint8 (a packed stream of small values): the bits of
    every byte but the last, which may hold padding zeros (see the module docstring).
    """
    if array.dtype == np.uint64:
        bits = np.unpackbits(array.astype("<u8").view(np.uint8), bitorder="little")
        rows = bits.reshape(-1, 64)
    elif array.dtype == np.uint8:
        rows = np.unpackbits(array.reshape(-1)[:-1], bitorder="little").reshape(-1, 8)
    else:
        raise AssertionError(f"a party received an array of dtype {array.dtype}: decide how "
                             "its bits are uniform by design before this test can check it")
    return rows.sum(axis=0, dtype=np.int64), rows.shape[0]


def add(total: Mapping[K, Counts], key: K, counts: Counts) -> Counts:
    """``counts`` plus what ``total`` holds for ``key`` so far."""
    if key not in total:
        return counts
    ones, n = total[key]
    return ones + counts[0], n + counts[1]


@dataclasses.dataclass
class Statistics:
    """Bit counts of a set of runs, per received array and per signature."""

    per_key: dict[Key, Counts]
    per_signature: dict[Signature, Counts]


def statistics(views: Iterable[RunView]) -> Statistics:
    per_key: dict[Key, Counts] = {}
    per_signature: dict[Signature, Counts] = {}
    for view in views:
        for key, array in view.arrays.items():
            if array.size == 0 or (array.dtype == np.uint8 and array.size == 1):
                continue  # nothing (or only the padded last byte) to see
            counts = bit_counts(array)
            per_key[key] = add(per_key, key, counts)
            signature = view.signatures[key]
            per_signature[signature] = add(per_signature, signature, counts)
    return Statistics(per_key, per_signature)


def uniformity_failures(counts: Mapping[K, Counts]) -> list[str]:
    """Positions whose fraction of ones is farther from 1/2 than Hoeffding + Bonferroni allow."""
    tests = sum(len(ones) for ones, _ in counts.values())
    log_term = math.log(2 * tests / ALPHA)
    failures = []
    for key, (ones, n) in counts.items():
        bound = math.sqrt(log_term / (2 * n))
        deviation = np.abs(ones / n - 0.5)
        for position in np.flatnonzero(deviation > bound):
            failures.append(f"{key.describe()}, bit {position}: {ones[position] / n:.4f} ones over "
                            f"{n} elements (allowed 0.5 +- {bound:.4f})")
    return failures


def difference_failures(a: Mapping[K, Counts], b: Mapping[K, Counts]) -> list[str]:
    """Positions whose fractions of ones differ between two sets of runs beyond the bound."""
    assert a.keys() == b.keys(), "the two sets of runs received different messages"
    tests = sum(len(ones) for ones, _ in a.values())
    log_term = math.log(2 * tests / ALPHA)
    failures = []
    for key in a:
        (ones_a, n_a), (ones_b, n_b) = a[key], b[key]
        bound = math.sqrt(log_term / 2 * (1 / n_a + 1 / n_b))
        gap = np.abs(ones_a / n_a - ones_b / n_b)
        for position in np.flatnonzero(gap > bound):
            failures.append(f"{key.describe()}, bit {position}: {ones_a[position] / n_a:.4f} vs "
                            f"{ones_b[position] / n_b:.4f} ones (allowed gap {bound:.4f})")
    return failures


def report(failures: list[str], what: str) -> str:
    shown = "\n  ".join(failures[:20])
    return (f"POSSIBLE LEAK: {len(failures)} received bit position(s) {what}:\n  {shown}"
            + ("\n  ..." if len(failures) > 20 else ""))


# ----------------------------------------------------------------------------- the sessions


@pytest.fixture(scope="module")
def views(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[RunView]]:
    """``RUNS`` sessions each: the base (prompt 0, weights 1), another prompt, other weights;
    every session with its own entropy."""
    folder = tmp_path_factory.mktemp("privacy")
    sets = {"base": (WEIGHT_SEEDS[0], PROMPTS[0]), "prompt": (WEIGHT_SEEDS[0], PROMPTS[1]),
            "weights": (WEIGHT_SEEDS[1], PROMPTS[0])}
    return {
        name: [record_session(folder / f"{name}-{run}", seed, prompt, f"{name}-{run}")
               for run in range(RUNS)]
        for name, (seed, prompt) in sets.items()
    }


@pytest.fixture(scope="module")
def stats(views: dict[str, list[RunView]]) -> dict[str, Statistics]:
    return {name: statistics(runs) for name, runs in views.items()}


@pytest.mark.slow  # several tiny sessions: the slow tier
def test_every_party_receives_arrays(stats: dict[str, Statistics]) -> None:
    """The test sees all three parties, from every sender that sends them arrays."""
    senders = {(party, sender) for party, sender, *_ in stats["base"].per_signature}
    assert {party for party, _ in senders} == set(PARTIES)
    assert {sender for _, sender in senders} == set(ALL_ROLES)
    assert sum(n for _, n in stats["base"].per_signature.values()) > 10**5


@pytest.mark.slow  # several tiny sessions: the slow tier
def test_received_bits_are_uniform(stats: dict[str, Statistics]) -> None:
    base = stats["base"]
    for counts, what in ((base.per_key, "per message"), (base.per_signature, "pooled")):
        failures = uniformity_failures(counts)
        assert not failures, report(failures, f"not uniform {what}")


@pytest.mark.slow  # several tiny sessions: the slow tier
def test_no_element_or_key_repeats_across_runs(views: dict[str, list[RunView]]) -> None:
    """Fresh entropy, fresh masks: an equal 64-bit element at the same place in two runs has
    probability 2^-64 per element for a masked value, 1 for an unmasked one."""
    first, second = views["base"][:2]
    repeats = [
        f"{key.describe()}: {int(np.count_nonzero(array == second.arrays[key]))} of {array.size}"
        for key, array in first.arrays.items()
        if array.dtype == np.uint64 and np.any(array == second.arrays[key])
    ]
    assert not repeats, report(repeats, "repeat the same value in two runs")
    # Within a run two parties may receive the same key (an input seed of the shares both
    # hold); across runs no key may repeat.
    seeds = [seed for runs in views.values() for view in runs for seed in set(view.seeds)]
    assert len(set(seeds)) == len(seeds), "a key the parties receive repeats across runs"
    ones = sum(int(np.unpackbits(np.frombuffer(seed, np.uint8)).sum()) for seed in seeds)
    total = 8 * sum(len(seed) for seed in seeds)
    assert abs(ones / total - 0.5) < math.sqrt(math.log(2 / ALPHA) / (2 * total))


@pytest.mark.slow  # several tiny sessions: the slow tier
@pytest.mark.parametrize("other", ["prompt", "weights"])
def test_views_do_not_depend_on_the_secrets(stats: dict[str, Statistics],
                                            views: dict[str, list[RunView]], other: str) -> None:
    base, changed = stats["base"], stats[other]
    for a, b, what in ((base.per_key, changed.per_key, "per message"),
                       (base.per_signature, changed.per_signature, "pooled")):
        failures = difference_failures(a, b)
        assert not failures, report(failures, f"differ with another {other} ({what})")
    controls = {repr(view.control) for view in views["base"] + views[other]}
    assert len(controls) == 1, f"the control messages the parties receive change with the {other}"


# ----------------------------------------------------------------------------- the checks work


def _counts(rows: npt.NDArray[np.uint8]) -> Counts:
    return rows.sum(axis=0, dtype=np.int64), rows.shape[0]


def test_the_checks_catch_leaks() -> None:
    """Not vacuous: an unmasked fixed-point value and a small bias are both flagged."""
    rng = np.random.default_rng(0)
    uniform = rng.integers(0, 2, (4000, 64), dtype=np.uint8)
    plain = np.unpackbits(np.arange(100, dtype="<u8").view(np.uint8), bitorder="little")
    key = Key(0, 1, (2, 3), 0, 0)
    assert uniformity_failures({key: _counts(uniform)}) == []
    flagged = uniformity_failures({key: _counts(plain.reshape(-1, 64))})
    assert len(flagged) == 57 and "step 2.3 seq 0 array 0, bit 63" in flagged[-1]  # top bits 0
    biased = uniform.copy()
    biased[:1000, 5] = 1  # bit 5 is one in 5/8 of the elements instead of 1/2
    assert difference_failures({key: _counts(uniform)}, {key: _counts(uniform)}) == []
    assert len(difference_failures({key: _counts(uniform)}, {key: _counts(biased)})) == 1

