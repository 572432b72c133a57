"""Draw a timeline of rounds per party from traces, as a hand-written SVG (no dependency).

One row per (party, peer) pair: every frame a party sent to that peer is a tick at its
recorded time (seconds since that party started; the parties' clocks are not synchronised,
so rows of different parties are aligned at their own starts). A tick is coloured by the
highest round of its envelopes and its tooltip lists the round, the steps and the size.

The timeline holds no secret: only what every party observes of the traffic anyway (times,
sizes, rounds, step paths), never a frame's bytes, a key or the trace's entropy. So it is
written as an ordinary file, unlike the traces it is drawn from (0600, see
:mod:`puma_async.trace.format`); the same holds for ``replay --summary``'s table.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from html import escape
from pathlib import Path

from puma_async.roles import role_name
from puma_async.trace.format import TraceRecord, read_trace

_WIDTH = 1000
_LEFT = 130
_ROW = 22
_TOP = 30
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
            "#7f7f7f", "#bcbd22", "#17becf")


def _tick(record: TraceRecord, x: float, y: float) -> str:
    steps = record.steps or ()
    round_ = max((s.round for s in steps), default=0)
    names = ", ".join(f"{s.step or '<root>'}#{s.seq}" for s in steps[:6])
    more = f" (+{len(steps) - 6})" if len(steps) > 6 else ""
    tip = (f"t={record.time:.4f} s, round {round_}, {record.size} bytes, "
           f"{len(steps)} envelopes: {names}{more}")
    colour = _PALETTE[round_ % len(_PALETTE)]
    return (f'<line x1="{x:.1f}" y1="{y + 3:.1f}" x2="{x:.1f}" y2="{y + _ROW - 5:.1f}" '
            f'stroke="{colour}" stroke-width="2"><title>{escape(tip)}</title></line>')


def timeline_svg(traces: Sequence[tuple[int, Sequence[TraceRecord]]]) -> str:
    """The SVG text for (role, records) of each trace."""
    rows: list[tuple[str, list[TraceRecord]]] = []
    for role, records in traces:
        by_peer: dict[int, list[TraceRecord]] = {}
        for r in records:
            if r.direction == "send" and r.event == "frame":
                by_peer.setdefault(r.peer, []).append(r)
        for peer in sorted(by_peer):
            rows.append((f"{role_name(role)} → {role_name(peer)}", by_peer[peer]))
    end = max((r.time for _, recs in rows for r in recs), default=0.0) or 1.0
    scale = (_WIDTH - _LEFT - 20) / end
    height = _TOP + _ROW * len(rows) + 30
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{height}" '
        f'font-family="sans-serif" font-size="11">',
        f'<text x="{_LEFT}" y="16">frames sent per party and peer over time '
        f"(colour: round; hover for steps)</text>",
    ]
    for i, (label, records) in enumerate(rows):
        y = _TOP + i * _ROW
        parts.append(f'<text x="4" y="{y + _ROW - 8}">{escape(label)}</text>')
        parts.append(f'<line x1="{_LEFT}" y1="{y + _ROW - 2}" x2="{_WIDTH - 20}" '
                     f'y2="{y + _ROW - 2}" stroke="#ddd"/>')
        parts.extend(_tick(r, _LEFT + r.time * scale, y) for r in records)
    axis_y = _TOP + _ROW * len(rows) + 14
    for k in range(6):
        t = end * k / 5
        x = _LEFT + t * scale
        parts.append(f'<text x="{x:.1f}" y="{axis_y}" text-anchor="middle">{t:.3g} s</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def draw_timeline(paths: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str]) -> Path:
    """Read the traces at ``paths`` and write their timeline to ``out`` (an SVG file)."""
    traces = []
    for path in paths:
        header, records = read_trace(path)
        traces.append((header.role, list(records)))
    target = Path(out)
    target.write_text(timeline_svg(traces), encoding="utf-8")
    return target
