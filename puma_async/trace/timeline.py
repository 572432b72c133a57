"""Draw what the parties sent, when and for which step, from replayed traces (a hand-written SVG,
no dependency).

Left, one row per link (sender -> receiver): every frame the sender handed to its transport is
a tick at its recorded time (seconds since that party started; the parties' clocks are not
synchronised, so each row is aligned at its own party's start), coloured by the *scope
class* of its envelopes (:func:`scope_class`: setup, io, attention, MLP, norm, softmax, LM
head, other layer work, other) with a legend. Its tooltip names the scopes (``p0.t1.layer3.attn``),
the round, the size and the time. Above the rows, the spans of the top-level blocks (embedding,
each layer, head) of the first party drawn.

Right, a bar chart of the cost of each block of the forward pass, summed over the passes:
rounds (the most any computing party counted) and bytes sent by the computing parties
together, from the replays' statistics.

Scopes come from replaying each trace (the trace records step paths, the runtime names their
scopes): :func:`party_timeline` takes one replay's records, scopes and statistics.

The timeline holds no secret: only what every party observes of the traffic anyway (times,
sizes, rounds, step paths and scope names), never a frame's bytes, a key or the trace's
entropy. So it is written as an ordinary file, unlike the traces it is drawn from (0600, see
:mod:`puma_async.trace.format`); the same holds for ``replay --summary``'s table.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path

from puma_async.roles import PARTIES, role_name
from puma_async.stats import PartyStats
from puma_async.trace.format import TraceRecord

ScopeKey = tuple[str, int, tuple[int, ...], int]
"""A message as the replay saw it: (direction, peer, step path, seq)."""

CLASSES = {  # class -> (legend label, colour)
    "setup": ("set-up", "#7f7f7f"),
    "io": ("input / output", "#17becf"),
    "attention": ("attention", "#1f77b4"),
    "softmax": ("softmax", "#9467bd"),
    "norm": ("norm", "#2ca02c"),
    "mlp": ("MLP", "#ff7f0e"),
    "head": ("LM head", "#d62728"),
    "layer": ("other layer work", "#8c564b"),
    "control": ("session control", "#bcbd22"),
    "other": ("other", "#c7c7c7"),
}
_KEYWORDS = (  # the first class whose pattern matches a scope segment (deepest segment first)
    ("softmax", re.compile(r"softmax|max_along")),
    ("norm", re.compile(r"norm")),
    ("attention", re.compile(r"attn|attention|rope|scores")),
    ("mlp", re.compile(r"mlp|ffn|silu|gelu|gate")),
    ("head", re.compile(r"^head$|logits|lm_head")),
    ("io", re.compile(r"^(io|embed|input|inputs|output|outputs|reveal|share)$")),
    ("layer", re.compile(r"^layer\d+$")),
)
_BLOCK = re.compile(r"^(embed|layer\d+|head)$")

_LEFT = 150  # row labels
_PLOT = 720  # the time axis
_GAP = 40
_BAR_LABEL = 70
_BAR = 200  # each of the two bar columns
_ROW = 20
_TOP = 64  # title, legend
_LANE = 22  # the blocks' lane above the rows


def scope_class(phase: str, scope: str) -> str:
    """The class of a message's scope: ``setup`` for the set-up phase, ``control`` for the root
    scope, else that of its deepest scope segment with a known meaning
    (``p0.t1.layer3.attn.softmax`` -> ``softmax``)."""
    if phase == "setup":
        return "setup"
    if not scope:
        return "control"  # the root scope: the session's commands and answers
    for segment in reversed(scope.split(".") if scope else []):
        for name, pattern in _KEYWORDS:
            if pattern.search(segment):
                return name
    return "other"


def block_of(scope: str) -> str | None:
    """The top-level block of the forward pass a scope belongs to (``embed``, ``layer3``,
    ``head``), or None."""
    for segment in scope.split("."):
        if _BLOCK.match(segment):
            return segment
    return None


@dataclasses.dataclass(frozen=True)
class Frame:
    """One frame on a link: when, how large, its highest round, and the (phase, scope) of
    each of its envelopes (a step path where the replay did not reach it)."""

    time: float
    size: int
    round: int
    scopes: tuple[tuple[str, str], ...]

    @property
    def cls(self) -> str:
        """The class of most of its envelopes."""
        counts = Counter(scope_class(phase, scope) for phase, scope in self.scopes)
        return counts.most_common(1)[0][0] if counts else "other"


@dataclasses.dataclass(frozen=True)
class PartyTimeline:
    """What one party's replayed trace shows: its frames per peer, its statistics and the
    (first, last) time of the messages of each top-level block."""

    role: int
    frames: Mapping[int, tuple[Frame, ...]]
    stats: PartyStats | None
    blocks: Mapping[str, tuple[float, float]]


def party_timeline(role: int, records: Sequence[TraceRecord],
                   scopes: Mapping[ScopeKey, tuple[str, str]],
                   stats: PartyStats | None) -> PartyTimeline:
    """One party's timeline from its trace's records and the (phase, scope) the replay gave
    each message (see :class:`puma_async.replay.ReplayReport`)."""
    frames: dict[int, list[Frame]] = {}
    blocks: dict[str, tuple[float, float]] = {}
    for r in records:
        if r.direction != "send" or r.event != "frame":
            continue
        named = []
        for step in r.steps or ():
            phase, scope = scopes.get(("send", r.peer, step.path, step.seq),
                                      ("", f"step {step.step or '<root>'}"))
            named.append((phase, scope))
            block = block_of(scope) if phase == "online" else None
            if block is not None:
                lo, hi = blocks.get(block, (r.time, r.time))
                blocks[block] = (min(lo, r.time), max(hi, r.time))
        top = max((s.round for s in r.steps or ()), default=0)
        frames.setdefault(r.peer, []).append(Frame(r.time, r.size, top, tuple(named)))
    return PartyTimeline(role, {p: tuple(f) for p, f in sorted(frames.items())}, stats, blocks)


@dataclasses.dataclass(frozen=True)
class BlockCost:
    """The online cost of one block of the forward pass, summed over the passes: ``rounds``
    (the most any computing party counted) and the bytes the computing parties sent, by
    scope class (``bytes_by_class``)."""

    rounds: int
    bytes_by_class: Mapping[str, int]

    @property
    def bytes(self) -> int:
        return sum(self.bytes_by_class.values())


def block_costs(parties: Sequence[PartyTimeline]) -> dict[str, BlockCost]:
    """block -> its :class:`BlockCost`, blocks in the order of the forward pass."""
    rounds: dict[str, dict[int, int]] = {}
    sent: dict[str, Counter[str]] = {}
    for party in parties:
        if party.role not in PARTIES or party.stats is None:
            continue
        for entry in party.stats.scope_rounds:
            block = block_of(entry.scope)
            if entry.phase == "online" and entry.scope.rsplit(".", 1)[-1] == block:
                per_party = rounds.setdefault(block, {})
                per_party[party.role] = per_party.get(party.role, 0) + entry.rounds
        for e in party.stats.traffic:
            block = block_of(e.scope)
            if e.phase == "online" and block is not None:
                sent.setdefault(block, Counter())[scope_class(e.phase, e.scope)] += e.bytes_sent
    names = sorted(set(rounds) | set(sent), key=_block_order)
    return {b: BlockCost(max(rounds.get(b, {}).values(), default=0),
                         {c: n for c, n in sent.get(b, Counter()).items() if n})
            for b in names}


def _block_order(block: str) -> tuple[int, int]:
    if block == "embed":
        return (0, 0)
    if block == "head":
        return (2, 0)
    return (1, int(block[len("layer"):]))


def _tick(frame: Frame, link: str, x: float, y: float) -> str:
    label, colour = CLASSES[frame.cls]
    names = Counter(scope or "<root>" for _, scope in frame.scopes)
    listed = ", ".join(f"{s}" + (f" x{n}" if n > 1 else "") for s, n in names.most_common(4))
    more = f" (+{len(names) - 4} scopes)" if len(names) > 4 else ""
    tip = (f"{link} at {frame.time:.4f} s: {label}, round {frame.round}, {frame.size} bytes, "
           f"{len(frame.scopes)} envelope(s): {listed}{more}")
    return (f'<rect class="frame" data-class="{frame.cls}" x="{x - 1:.1f}" y="{y + 3}" '
            f'width="2" height="{_ROW - 6}" fill="{colour}"><title>{escape(tip)}</title></rect>')


def _legend(classes: Sequence[str], y: int) -> list[str]:
    parts = ['<g class="legend">']
    x = _LEFT
    for cls in classes:
        label, colour = CLASSES[cls]
        parts.append(f'<rect x="{x}" y="{y - 9}" width="10" height="10" fill="{colour}"/>'
                     f'<text x="{x + 14}" y="{y}" data-class="{cls}">{escape(label)}</text>')
        x += 24 + 7 * len(label)
    parts.append("</g>")
    return parts


def _bars(costs: Mapping[str, BlockCost], x0: int, y0: int) -> list[str]:
    if not costs:
        return []
    top_rounds = max(c.rounds for c in costs.values()) or 1
    top_bytes = max(c.bytes for c in costs.values()) or 1
    xr, xb = x0 + _BAR_LABEL, x0 + _BAR_LABEL + _BAR + 40
    parts = [
        '<g class="costs">',
        f'<text x="{x0}" y="{y0 - 26}" font-weight="bold">cost per block, all passes</text>',
        f'<text x="{xr}" y="{y0 - 8}">rounds (most of P0-P2)</text>',
        f'<text x="{xb}" y="{y0 - 8}">bytes sent by P0-P2, by class</text>',
    ]
    for i, (block, cost) in enumerate(costs.items()):
        y = y0 + i * _ROW
        wr = _BAR * cost.rounds / top_rounds
        parts += [
            f'<text x="{x0}" y="{y + 14}">{block}</text>',
            f'<rect class="bar" data-block="{block}" data-kind="rounds" '
            f'data-value="{cost.rounds}" x="{xr}" y="{y + 4}" width="{wr:.1f}" '
            f'height="{_ROW - 8}" fill="#555"><title>{block}: {cost.rounds} rounds</title></rect>',
            f'<text x="{xr + wr + 3:.1f}" y="{y + 14}" font-size="10">{cost.rounds}</text>',
        ]
        x = float(xb)
        for cls in CLASSES:  # stacked in the legend's order
            nbytes = cost.bytes_by_class.get(cls, 0)
            if not nbytes:
                continue
            w = _BAR * nbytes / top_bytes
            parts.append(
                f'<rect class="bar" data-block="{block}" data-kind="bytes" data-class="{cls}" '
                f'data-value="{nbytes}" x="{x:.1f}" y="{y + 4}" width="{w:.1f}" '
                f'height="{_ROW - 8}" fill="{CLASSES[cls][1]}">'
                f"<title>{block}, {CLASSES[cls][0]}: {nbytes} bytes</title></rect>")
            x += w
        parts.append(f'<text x="{x + 3:.1f}" y="{y + 14}" font-size="10">'
                     f"{_size(cost.bytes)}</text>")
    parts.append("</g>")
    return parts


def _size(nbytes: float) -> str:
    """Bytes in decimal units, 3 digits: 224016 -> '224 kB'."""
    scale, unit = next((scale, unit) for scale, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB"))
                       if nbytes >= scale) if nbytes >= 1e3 else (1.0, "B")
    return f"{nbytes / scale:.3g} {unit}"


def _ticks(end: float) -> list[float]:
    """Round values from 0 to ``end``, 4 to 10 of them."""
    step = 10.0 ** math.floor(math.log10(end / 4))
    for factor in (1, 2, 5, 10):
        if end / (step * factor) <= 10:
            step *= factor
            break
    return [round(k * step, 12) for k in range(int(end / step) + 1)]


def timeline_svg(parties: Sequence[PartyTimeline]) -> str:
    """The SVG text of the timelines of ``parties`` (see the module docstring)."""
    rows = [(f"{role_name(p.role)} → {role_name(peer)}", frames)
            for p in sorted(parties, key=lambda p: p.role) for peer, frames in p.frames.items()]
    end = max((f.time for _, frames in rows for f in frames), default=0.0) or 1.0
    scale = _PLOT / end
    costs = block_costs(parties)
    classes = [c for c in CLASSES if any(f.cls == c for _, fr in rows for f in fr)
               or any(c in cost.bytes_by_class for cost in costs.values())]
    rows_top = _TOP + _LANE + 6
    height = max(rows_top + _ROW * len(rows) + 34, _TOP + 30 + _ROW * len(costs) + 10)
    width = _LEFT + _PLOT + _GAP + (_BAR_LABEL + 2 * _BAR + 80 if costs else 0)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{_LEFT}" y="20" font-size="14" font-weight="bold">frames sent per link over '
        f"time, coloured by the step that sent them (hover for scopes)</text>",
        *_legend(classes, 42),
    ]
    first = next((p for p in sorted(parties, key=lambda p: p.role) if p.blocks), None)
    if first is not None:
        parts.append(f'<text x="4" y="{_TOP + 15}">blocks ({role_name(first.role)})</text>')
        for block, (lo, hi) in sorted(first.blocks.items(), key=lambda b: b[1]):
            cls = "io" if block == "embed" else "head" if block == "head" else "layer"
            x, w = _LEFT + lo * scale, max((hi - lo) * scale, 1.0)
            parts.append(
                f'<rect class="block" x="{x:.1f}" y="{_TOP}" width="{w:.1f}" height="{_LANE - 4}" '
                f'fill="{CLASSES[cls][1]}" fill-opacity="0.25" stroke="{CLASSES[cls][1]}">'
                f"<title>{block}: {lo:.4f}-{hi:.4f} s</title></rect>")
            if w > 7 * len(block):
                parts.append(f'<text x="{x + 3:.1f}" y="{_TOP + 13}" font-size="10">{block}</text>')
    for i, (label, frames) in enumerate(rows):
        y = rows_top + i * _ROW
        parts.append(f'<g class="link" data-link="{escape(label)}">'
                     f'<text x="4" y="{y + _ROW - 6}">{escape(label)}</text>'
                     f'<line x1="{_LEFT}" y1="{y + _ROW - 1}" x2="{_LEFT + _PLOT}" '
                     f'y2="{y + _ROW - 1}" stroke="#e4e4e4"/>')
        parts.extend(_tick(f, label, _LEFT + f.time * scale, y) for f in frames)
        parts.append("</g>")
    axis_y = rows_top + _ROW * len(rows) + 16
    parts.append(f'<line x1="{_LEFT}" y1="{axis_y - 12}" x2="{_LEFT + _PLOT}" '
                 f'y2="{axis_y - 12}" stroke="#999"/>')
    for t in _ticks(end):
        parts.append(f'<text x="{_LEFT + t * scale:.1f}" y="{axis_y}" text-anchor="middle" '
                     f'font-size="10">{t:g} s</text>')
    parts.append(f'<text x="{_LEFT + _PLOT / 2}" y="{axis_y + 14}" text-anchor="middle" '
                 f'font-size="10">seconds since each sender started</text>')
    parts.extend(_bars(costs, _LEFT + _PLOT + _GAP, _TOP + 30))
    parts.append("</svg>")
    return "\n".join(parts)


def draw_timeline(parties: Sequence[PartyTimeline], out: str | os.PathLike[str]) -> Path:
    """Write the timeline of ``parties`` to ``out`` (an SVG file)."""
    target = Path(out)
    target.write_text(timeline_svg(parties), encoding="utf-8")
    return target
