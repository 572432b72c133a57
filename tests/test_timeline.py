"""The timeline of the example traces (traces/tiny): rows per link, colours per scope class with
a legend, scope names in the tooltips, and a per-block cost chart equal to the statistics."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest
import trio

from puma_async.replay import ReplayReport, main, replay_trace
from puma_async.roles import PARTIES, role_name
from puma_async.trace.format import read_trace
from puma_async.trace.timeline import CLASSES, block_of, party_timeline, scope_class, timeline_svg

TRACES = sorted((Path(__file__).parent.parent / "traces" / "tiny").glob("*.trace"))
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def reports() -> list[ReplayReport]:
    if not TRACES:
        pytest.skip("no example traces")
    return [trio.run(replay_trace, path) for path in TRACES]


@pytest.fixture(scope="module")
def svg(reports: list[ReplayReport]) -> ET.Element:
    text = timeline_svg([party_timeline(r.role, r.records, r.scopes, r.stats) for r in reports])
    return ET.fromstring(text)  # well-formed XML


def test_one_row_per_link_with_every_frame(reports: list[ReplayReport], svg: ET.Element
                                           ) -> None:
    sent = Counter((r.role, rec.peer) for r in reports for rec in r.records
                   if rec.direction == "send" and rec.event == "frame")
    rows = {g.get("data-link"): g for g in svg.iter(f"{SVG}g") if g.get("class") == "link"}
    assert set(rows) == {f"{role_name(a)} → {role_name(b)}" for a, b in sent}
    for (sender, receiver), count in sent.items():
        row = rows[f"{role_name(sender)} → {role_name(receiver)}"]
        assert len([r for r in row.iter(f"{SVG}rect") if r.get("class") == "frame"]) == count


def test_frames_are_coloured_by_scope_class_with_a_legend(svg: ET.Element) -> None:
    frames = [r for r in svg.iter(f"{SVG}rect") if r.get("class") == "frame"]
    used = {r.get("data-class") for r in frames}
    assert {"setup", "attention", "mlp", "norm", "io", "control"} <= used  # the head: its norm
    (legend,) = [g for g in svg.iter(f"{SVG}g") if g.get("class") == "legend"]
    labels = {t.get("data-class"): t.text for t in legend.iter(f"{SVG}text")}
    assert used <= set(labels)
    assert labels["mlp"] == CLASSES["mlp"][0]
    for frame in frames:
        assert frame.get("fill") == CLASSES[frame.get("data-class")][1]


def test_tooltips_name_scopes_not_step_paths(svg: ET.Element) -> None:
    tips = [r.find(f"{SVG}title").text for r in svg.iter(f"{SVG}rect")
            if r.get("class") == "frame"]
    assert any("p0.t0.layer1.attn" in tip for tip in tips)
    assert any("p0.t0.head" in tip for tip in tips)
    assert not any(re.search(r"\d+\.\d+\.\d+#\d+", tip) for tip in tips)  # no "1.0.1#0"


def test_the_cost_chart_equals_the_statistics(reports: list[ReplayReport], svg: ET.Element
                                              ) -> None:
    bars = [r for r in svg.iter(f"{SVG}rect") if r.get("class") == "bar"]
    rounds = {b.get("data-block"): int(b.get("data-value")) for b in bars
              if b.get("data-kind") == "rounds"}
    sent: Counter[str] = Counter()
    for b in bars:
        if b.get("data-kind") == "bytes":
            sent[b.get("data-block")] += int(b.get("data-value"))
    assert list(rounds) == ["embed", "layer0", "layer1", "head"]  # the forward pass's order
    parties = [r.stats for r in reports if r.role in PARTIES]
    for block in rounds:
        passes = [s for s in parties[0].scopes() if s.rsplit(".", 1)[-1] == block]
        assert passes == ["p0.t0." + block]  # the example: one prompt, one pass
        assert rounds[block] == max(
            sum(stats.totals(phase="online", scope=s).rounds for s in passes) for stats in parties)
        assert sent[block] == sum(stats.totals(phase="online", scope=s).bytes_sent
                                  for stats in parties for s in passes)
    assert rounds["layer0"] > rounds["head"] > rounds["embed"] > 0


def test_scope_classes() -> None:
    cases = {
        ("setup", "keys"): "setup", ("online", ""): "control", ("online", "p0.t0.embed"): "io",
        ("online", "p0.t0.layer3.attn"): "attention", ("online", "p0.t0.layer3.mlp"): "mlp",
        ("online", "p0.t0.layer3.attn.softmax"): "softmax",
        ("online", "p0.t0.layer3.mlp.rms_norm"): "norm", ("online", "p0.t0.layer3"): "layer",
        ("online", "p1.t2.head"): "head", ("online", "op"): "other",
    }
    for (phase, scope), cls in cases.items():
        assert scope_class(phase, scope) == cls, scope
    assert [block_of(s) for s in ("p0.t1.layer12.mlp", "p0.t0.embed", "op.x")] == [
        "layer12", "embed", None]


def test_replay_writes_the_timeline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if not TRACES:
        pytest.skip("no example traces")
    out = tmp_path / "timeline.svg"
    chosen = [p for p in TRACES if p.stem in ("P0", "P1")]
    assert main([*map(str, chosen), "--timeline", str(out)]) == 0
    assert f"timeline written to {out}" in capsys.readouterr().out
    expected = set()
    for path in chosen:
        header, records = read_trace(path)
        expected |= {f"{role_name(header.role)} → {role_name(r.peer)}" for r in records
                     if r.direction == "send" and r.event == "frame"}
    root = ET.parse(out).getroot()
    assert {g.get("data-link") for g in root.iter(f"{SVG}g") if g.get("class") == "link"} == (
        expected)
