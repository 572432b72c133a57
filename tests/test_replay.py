"""Replaying a party from its trace: identical runs, altered frames, altered protocol lines."""

from __future__ import annotations

import re
from pathlib import Path

import msgpack
import numpy as np
import pytest
import trio

from puma_async.codec import Arrays, Envelope, Message, decode_frame, split_frame
from puma_async.context import Context
from puma_async.files import DIR_MODE
from puma_async.model import TinyTokenizer, random_weights
from puma_async.protocols import offload
from puma_async.replay import format_summary, main, replay_trace
from puma_async.roles import ALL_ROLES, CLIENT, MODEL_OWNER, PARTIES, role_name
from puma_async.runtime import PartyRuntime
from puma_async.session import GenerationOptions, SessionSettings, run_session
from puma_async.session.recording import (
    client_inputs,
    local_recording,
    owner_inputs,
    trace_path,
)
from puma_async.trace.format import read_trace

SETTINGS = SessionSettings("replay-test", max_new_tokens=2)
PROMPTS = [TinyTokenizer().encode("hi")]
EXAMPLES = Path(__file__).parent.parent / "traces"


def record_run(directory: Path, digest_over: int | None = None) -> dict[int, Path]:
    """Run every role in-process with each role recorded; the trace paths."""
    options = GenerationOptions()
    inputs = {MODEL_OWNER: owner_inputs(None), CLIENT: client_inputs(PROMPTS, options)}
    wrap, entropy = local_recording(directory, SETTINGS, inputs, seed="abcd", cluster="test",
                                    digest_over=digest_over)
    run_session(random_weights(SETTINGS.config), PROMPTS, options, settings=SETTINGS,
                entropy=entropy, wrap_transport=wrap)
    return {role: trace_path(directory, role) for role in ALL_ROLES}


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    return record_run(tmp_path_factory.mktemp("traces") / "run")


def test_record_folder_is_private_and_not_reused(traces: dict[int, Path]) -> None:
    folder = traces[0].parent
    assert folder.stat().st_mode & 0o777 == DIR_MODE
    with pytest.raises(FileExistsError, match="--force"):
        record_run(folder)


def test_unaltered_traces_replay_identical(traces: dict[int, Path]) -> None:
    for role, path in traces.items():
        report = trio.run(lambda path=path: replay_trace(path))
        assert report.identical, report.verdict()
        assert report.role == role
        assert "identical" in report.verdict()


def _last_array_size(frame: bytes) -> int:
    """Elements in the last array of a frame's last envelope (0 if it carries none)."""
    message = decode_frame(frame)[-1].message
    return message.arrays[-1].size if isinstance(message, Arrays) and message.arrays else 0


def _rewrite(path: Path, out: Path, record_index: int, change: object) -> None:
    """Copy a trace, applying ``change`` to the record at ``record_index`` (header is -1)."""
    unpacker = msgpack.Unpacker(open(path, "rb"), raw=False, strict_map_key=False)  # noqa: SIM115
    packer = msgpack.Packer(use_bin_type=True)
    with out.open("wb") as file:
        for i, obj in enumerate(unpacker):
            if i - 1 == record_index:
                change(obj)  # type: ignore[operator]
            file.write(packer.pack(obj))


def test_altered_frame_names_the_first_diverging_step(traces: dict[int, Path],
                                                      tmp_path: Path) -> None:
    """Flip the last payload byte of a frame P1 sent: the replay names that envelope."""
    unpacker = msgpack.Unpacker(open(traces[1], "rb"), raw=False,  # noqa: SIM115
                                strict_map_key=False)
    records = list(unpacker)[1:-1]
    index = next(i for i, r in enumerate(records)
                 if r["dir"] == "send" and r["event"] == "frame"
                 and _last_array_size(r["frame"]) > 0)
    peer = records[index]["peer"]
    path, seq, round_, _ = records[index]["steps"][-1]

    def flip(record: dict) -> None:
        frame = bytearray(record["frame"])
        frame[-1] ^= 1
        record["frame"] = bytes(frame)

    altered = tmp_path / "altered.trace"
    _rewrite(traces[1], altered, index, flip)
    report = trio.run(lambda: replay_trace(altered))
    assert not report.identical
    divergence = report.divergence
    assert divergence is not None
    assert (divergence.peer, divergence.path, divergence.seq, divergence.round) == (
        peer, tuple(path), seq, round_
    )
    assert "elements differ" in divergence.what
    assert re.search(r"first at flat index \d+$", divergence.what)  # no value by default
    shown = trio.run(lambda: replay_trace(altered, show_values=True)).divergence
    assert shown is not None and re.search(r"flat index \d+: \d+ vs recorded \d+$", shown.what)
    step = ".".join(map(str, path))
    where = f"diverges at step {step} (seq {seq}) to {role_name(peer)}, round {round_}"
    assert where in report.verdict()
    assert main([str(altered)]) == 1


def test_altered_protocol_line_names_the_step(
    traces: dict[int, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A party that computes one message differently diverges exactly there."""
    header_records = msgpack.Unpacker(open(traces[0], "rb"), raw=False,  # noqa: SIM115
                                      strict_map_key=False)
    sent = [env.path for r in list(header_records)[1:-1]
            if r["dir"] == "send" and r["event"] == "frame" for env in decode_frame(r["frame"])
            if isinstance(env.message, Arrays) and env.message.arrays[0].size]
    target = sent[len(sent) // 2]
    original = Context._stamp  # every send goes through it

    def flip_one_bit(self: Context, to: int, message: Message, nbytes: int) -> Envelope:
        if self.path == target and isinstance(message, Arrays) and message.arrays[0].size:
            first = np.array(message.arrays[0])  # a copy: the step's own array stays intact
            first.view(np.uint8).flat[0] ^= 1
            message = Arrays((first, *message.arrays[1:]))
        return original(self, to, message, nbytes)

    monkeypatch.setattr(Context, "_stamp", flip_one_bit)
    report = trio.run(lambda: replay_trace(traces[0]))
    assert report.divergence is not None
    assert report.divergence.path == target
    assert "elements differ" in report.divergence.what


def test_a_party_that_waits_instead_of_sending_is_stopped_naming_the_envelope(
    traces: dict[int, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replayed party that never sends one envelope waits for a frame the recording holds
    back until it does: the replay has no deadline, it notices that nothing can happen any
    more and names that envelope."""
    records = list(read_trace(traces[0])[1])
    sent = [(r.peer, s.path, s.seq) for r in records
            if r.direction == "send" and r.event == "frame" and r.steps for s in r.steps]
    peer, path, seq = sent[len(sent) // 2]
    original = PartyRuntime.enqueue

    def drop_one(self: PartyRuntime, env: Envelope) -> None:
        if (env.receiver, env.path, env.seq) != (peer, path, seq):
            original(self, env)

    monkeypatch.setattr(PartyRuntime, "enqueue", drop_one)
    report = trio.run(lambda: replay_trace(traces[0]))
    assert report.divergence is not None, report.verdict()
    assert (report.divergence.peer, report.divergence.path, report.divergence.seq) == (
        peer, path, seq
    )
    assert "never sent (the party waits for a later message)" in report.divergence.what


def test_summary_and_timeline(traces: dict[int, Path], tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    svg = tmp_path / "timeline.svg"
    paths = [str(traces[p]) for p in PARTIES]
    assert main([*paths, "--summary", "--timeline", str(svg)]) == 0
    out = capsys.readouterr().out
    assert out.count("identical") == 3
    assert "online" in out and "setup" in out
    text = svg.read_text()
    assert text.startswith("<svg") and text.rstrip().endswith("</svg>")
    for party in PARTIES:
        assert f"{role_name(party)} → " in text
    report = trio.run(lambda: replay_trace(traces[CLIENT]))
    assert "rounds" in format_summary(report)


def test_split_frame_round_trip(traces: dict[int, Path]) -> None:
    unpacker = msgpack.Unpacker(open(traces[0], "rb"), raw=False,  # noqa: SIM115
                                strict_map_key=False)
    for record in list(unpacker)[1:-1]:
        if record.get("frame"):
            parts = [raw for raw, _ in split_frame(record["frame"])]
            assert len(parts) == len(record["steps"])
            assert b"".join(parts) == record["frame"][len(record["frame"]) - len(b"".join(parts)):]


@pytest.mark.skipif(not any(EXAMPLES.glob("*/*.trace")), reason="no example traces")
def test_example_traces_replay_identical() -> None:
    for path in sorted(EXAMPLES.glob("*/*.trace")):
        report = trio.run(lambda path=path: replay_trace(path))
        assert report.identical, report.verdict()


@pytest.mark.skipif(not any(EXAMPLES.glob("*/*.trace")), reason="no example traces")
def test_example_traces_replay_identical_with_all_local_work_in_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Moving local work to worker threads (every offload taken) changes no message."""
    monkeypatch.setattr(offload, "OFFLOAD_MIN_ELEMENTS", 0)
    for path in sorted(EXAMPLES.glob("*/*.trace")):
        report = trio.run(lambda path=path: replay_trace(path))
        assert report.identical, report.verdict()


def test_digest_only_frames_are_rederived(tmp_path: Path) -> None:
    """Frames stored by digest only are re-derived by replaying their senders alongside."""
    record_run(tmp_path, digest_over=150)
    elided = [r for r in read_trace(tmp_path / "P1.trace")[1] if r.digest is not None]
    assert any(r.direction == "recv" for r in elided)
    assert any(r.direction == "send" for r in elided)
    report = trio.run(lambda: replay_trace(tmp_path / "P1.trace"))
    assert report.identical, report.verdict()
    (tmp_path / "model-owner.trace").unlink()
    report = trio.run(lambda: replay_trace(tmp_path / "P1.trace"))
    assert not report.identical
    assert "replay model-owner's trace alongside" in report.verdict()


def test_local_record_writes_traces_that_replay(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from puma_async import local

    assert local.main(["--model", "tiny", "--prompt", "hi", "--max-new-tokens", "1",
                       "--record", str(tmp_path)]) == 0
    traces = sorted(tmp_path.glob("*.trace"))
    assert {t.stem for t in traces} == {role_name(r) for r in ALL_ROLES}
    assert main([str(tmp_path / "P0.trace"), str(tmp_path / "P1.trace")]) == 0
    assert capsys.readouterr().out.count("identical") == 2
    first = (tmp_path / "P0.trace").read_bytes()
    args = ["--model", "tiny", "--prompt", "hi", "--max-new-tokens", "1", "--record",
            str(tmp_path)]
    assert local.main(args) == 2  # the traces exist: nothing is overwritten without --force
    assert (tmp_path / "P0.trace").read_bytes() == first
    assert local.main([*args, "--force"]) == 0
    assert (tmp_path / "P0.trace").read_bytes() != first  # fresh entropy, a new trace
