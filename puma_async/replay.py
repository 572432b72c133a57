"""``python -m puma_async.replay``: re-run a party from its trace; summaries and timelines.

Usage::

    python -m puma_async.replay TRACE [TRACE ...]            # replay: identical or diverges
    python -m puma_async.replay TRACE --summary [--depth 2]  # rounds, bytes, time per scope
    python -m puma_async.replay TRACE... --timeline out.svg  # frames per link, cost per layer

A trace written by ``--record`` (``puma_async.party`` or ``puma_async.local``) holds in its
header the session settings, the role's entropy and its own inputs (the client's prompts, the
model owner's model file: a model owner's trace replays where its model file is), so the
role's program can run again with the same keys while a
:class:`~puma_async.trace.replayer.ReplayTransport` plays its peers.
Every envelope it sends is compared with the recording by (peer, step path, seq); the first
difference is reported with its step path, peer, round and what differs (types, shapes, counts
and positions: no value, so a report can be pasted into an issue; ``--show-values`` adds the
first differing values, which are secret shares or keys). The exit status is 0 when every
replayed trace is identical, 1 otherwise.

``--summary`` replays the party too: the runtime attributes each message to its scope, which
the trace alone does not record; rounds and bytes are the replay's statistics (equal to the
run's when the replay is identical), times are the recorded ones (from the first to the last
message of the scope, in seconds since the party started). ``--timeline`` replays too, for
the same reason: it colours every frame by the scope that sent it
(:mod:`puma_async.trace.timeline`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from puma_async.errors import PumaError, TraceError
from puma_async.roles import role_name
from puma_async.runtime import MessageKey, PartyOptions, PartyRuntime, open_party
from puma_async.session.recording import program_from_trace
from puma_async.stats import PartyStats
from puma_async.trace.divergence import Divergence
from puma_async.trace.format import TraceRecord
from puma_async.trace.replayer import ReplayTransport, watch_for_deadlock
from puma_async.trace.timeline import draw_timeline, party_timeline

PROG = "python -m puma_async.replay"
Scopes = dict[MessageKey, tuple[str, str]]  # message -> (phase, scope)


@dataclasses.dataclass(frozen=True)
class ReplayReport:
    """The outcome of replaying one trace."""

    path: str
    role: int
    divergence: Divergence | None
    error: str | None
    checked: int
    recorded: int
    stats: PartyStats | None
    scopes: Scopes
    records: tuple[TraceRecord, ...]

    @property
    def identical(self) -> bool:
        return self.divergence is None and self.checked == self.recorded

    def verdict(self) -> str:
        """One line: identical, or the first diverging step."""
        who = f"{self.path} ({role_name(self.role)})"
        if self.divergence is not None:
            return f"{who}: diverges at {self.divergence}"
        if self.checked != self.recorded:
            return (f"{who}: incomplete: {self.checked} of {self.recorded} recorded envelopes "
                    f"sent before the replay stopped: {self.error}")
        note = f" (the party then failed as recorded: {self.error})" if self.error else ""
        return f"{who}: identical ({self.checked} envelopes checked){note}"


def _tap_scopes(runtime: PartyRuntime) -> Scopes:
    """The (phase, scope) of every message the runtime sends and receives, as it runs."""
    scopes: Scopes = {}

    def observe(key: MessageKey, phase: str, scope: str) -> None:
        scopes[key] = (phase, scope)

    runtime.observer = observe
    return scopes


async def _replay_party(transport: ReplayTransport
                        ) -> tuple[str | None, PartyStats | None, Scopes]:
    """Run the party of ``transport``'s trace against it: its error, statistics and the
    (phase, scope) of each message."""
    settings, entropy, sequential, program = program_from_trace(
        transport.role, transport.header.config)
    if settings.session != transport.header.session:
        raise TraceError("the trace's session id does not match its settings")
    scopes: Scopes = {}
    try:
        # The peers are a recording, not live parties: no heartbeats.
        options = PartyOptions(transport.header.session, entropy=entropy,
                               sequential=sequential, liveness=None)
        async with open_party(transport, options) as ctx:
            scopes = _tap_scopes(ctx.runtime)
            await program(ctx)
    except PumaError as exc:
        return f"{type(exc).__name__}: {exc}", None, scopes
    return None, ctx.runtime.final_stats, scopes


async def replay_trace(path: str | os.PathLike[str], *, show_values: bool = False
                       ) -> ReplayReport:
    """Replay one party from its trace (see the module docstring).

    Peers whose frames the trace stores by digest only are replayed alongside from their
    traces in the same directory (``<role>.trace``), to re-derive those frames (and theirs,
    in turn, if they need it).
    """
    transport = ReplayTransport.from_file(path, show_values=show_values)
    replays = {transport.role: transport}
    sources: list[tuple[Path, ReplayTransport]] = []
    pending = [transport]
    while pending:  # the peers to re-derive from may need their own peers, and so on
        needing = pending.pop()
        for peer in sorted(needing.needs_sources()):
            if peer not in replays:
                source_path = Path(path).parent / f"{role_name(peer)}.trace"
                if not source_path.is_file():
                    continue  # the replay stops at that frame, naming the missing trace
                replays[peer] = ReplayTransport.from_file(source_path)
                sources.append((source_path, replays[peer]))
                pending.append(replays[peer])
            needing.derive_from(replays[peer])
    notes: list[str] = []
    async with trio.open_nursery() as watching:
        watching.start_soon(watch_for_deadlock, list(replays.values()))
        async with trio.open_nursery() as nursery:

            async def run_source(source_path: Path, source: ReplayTransport) -> None:
                error, _stats, _scopes = await _replay_party(source)
                if source.divergence is not None or error is not None:
                    notes.append(f"re-deriving from {source_path} failed: "
                                 f"{source.divergence or error}")

            for source_path, source in sources:
                nursery.start_soon(run_source, source_path, source)
            error, stats, scopes = await _replay_party(transport)
        watching.cancel_scope.cancel()
    if notes:
        error = "; ".join([*notes, *([error] if error else [])])
    return ReplayReport(
        os.fspath(path), transport.role, transport.divergence, error, transport.sent_envelopes,
        transport.total_envelopes, stats, scopes, transport.records,
    )


# ----------------------------------------------------------------------------- summary


def _prefixes(scope: str) -> list[str]:
    parts = scope.split(".") if scope else []
    return [""] + [".".join(parts[: i + 1]) for i in range(len(parts))]


def scope_times(report: ReplayReport) -> dict[tuple[str, str], tuple[float, float]]:
    """(phase, scope) -> (first, last) recorded time of its messages (scopes inclusive)."""
    spans: dict[tuple[str, str], tuple[float, float]] = {}
    for record in report.records:
        for step in record.steps or ():
            found = report.scopes.get((record.direction, record.peer, step.path, step.seq))
            if found is None:
                continue
            phase, scope = found
            for prefix in _prefixes(scope):
                lo, hi = spans.get((phase, prefix), (record.time, record.time))
                spans[(phase, prefix)] = (min(lo, record.time), max(hi, record.time))
    return spans


def format_summary(report: ReplayReport, depth: int = 2) -> str:
    """A table of rounds, bytes, messages and time per phase and scope (up to ``depth``)."""
    if report.stats is None:
        return f"{report.path}: no statistics (the replay failed: {report.error})"
    stats = report.stats
    times = scope_times(report)
    lines = [
        f"{report.path}: {role_name(report.role)}, {stats.max_round} rounds, "
        f"{stats.totals().bytes_sent} bytes sent, {stats.totals().bytes_received} received",
        f"{'phase':<7} {'scope':<32} {'rounds':>6} {'sent':>12} {'received':>12} {'msgs':>6} "
        f"{'time (s)':>17}",
    ]
    phases = sorted({e.phase for e in stats.traffic})
    for phase in phases:
        scopes = sorted({p for e in stats.traffic if e.phase == phase
                         for p in _prefixes(e.scope)})
        for scope in scopes:
            if scope and scope.count(".") >= depth:
                continue
            t = stats.totals(phase=phase, scope=scope or None)
            measured = {(r.phase, r.scope) for r in stats.scope_rounds}
            rounds: int | str = t.rounds if (phase, scope) in measured else "-"
            if not scope:
                rounds = dict(stats.phase_rounds).get(phase, "-")
            lo, hi = times.get((phase, scope), (0.0, 0.0))
            lines.append(
                f"{phase:<7} {scope or '(all)':<32} {rounds:>6} {t.bytes_sent:>12} "
                f"{t.bytes_received:>12} {t.messages_sent + t.messages_received:>6} "
                f"{lo:>8.4f}-{hi:<8.4f}"
            )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; 0 if every trace replays identically, 1 otherwise."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("traces", nargs="+", type=Path, metavar="TRACE")
    parser.add_argument("--summary", action="store_true",
                        help="print rounds, bytes and time per scope")
    parser.add_argument("--depth", type=int, default=2, help="scope depth of the summary")
    parser.add_argument("--timeline", type=Path, metavar="FILE.svg",
                        help="draw the frames of every link over time, coloured by scope, "
                             "and the cost of each layer")
    parser.add_argument("--show-values", action="store_true",
                        help="show the first differing values (secret: shares, keys)")
    args = parser.parse_args(argv)
    status = 0
    reports = []
    for path in args.traces:
        try:
            report = trio.run(lambda path=path: replay_trace(
                path, show_values=args.show_values))
        except (PumaError, OSError) as exc:
            print(f"{PROG}: error: {path}: {exc}", file=sys.stderr)
            status = 1
            continue
        print(report.verdict())
        reports.append(report)
        if not report.identical:
            status = 1
        if args.summary:
            print(format_summary(report, args.depth))
    if args.timeline is not None:
        try:
            draw_timeline([party_timeline(r.role, r.records, r.scopes, r.stats)
                           for r in reports], args.timeline)
        except OSError as exc:
            print(f"{PROG}: error: timeline: {exc}", file=sys.stderr)
            return 1
        print(f"timeline written to {args.timeline}")
    return status


if __name__ == "__main__":
    sys.exit(main())
