"""Critical-path attribution: which scope each round of a step belongs to, across the parties.

A scope's "span" (:meth:`PartyStats.totals <puma_async.stats.PartyStats.totals>` with a scope:
how far one party's round clock moved while the scope was open) double-counts scopes that run
side by side and differs between parties. Here every round of a step is attributed to exactly
one scope instead. Each message a party sends names its *parent*, the received message that
last raised the sender's clock (:mod:`puma_async.context`), so its round is its parent's plus
one. Walking back from the step's last message through parents, across the three parties'
records (``PartyOptions(record_messages=True)``), visits one message per round: the step's
critical path. Each round goes to the scope of the message that crossed it, so per-scope
rounds sum to the step's rounds.

The walk stays inside the step: it stops at the first message outside the phase and scope
asked for (for a pass of a session: the client's command and input, which start the pass).
Offline work counts its own rounds from 0 (:meth:`Context.phase
<puma_async.context.Context.phase>`), so an offline walk ends at a message without parent.

Frames: :func:`link_traffic` counts, per link (sender, receiver), the messages, the frames they
left in (records carry their frame's serial number) and the rounds in which the link carried
anything, for "frames per peer per round".
"""

from __future__ import annotations

import dataclasses
import operator
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence

from puma_async.stats import MessageId, MessageRecord, PartyStats


@dataclasses.dataclass(frozen=True)
class Hop:
    """One message of a critical path: its sender and its record."""

    sender: int
    record: MessageRecord


@dataclasses.dataclass(frozen=True)
class LinkTraffic:
    """What one link (sender -> receiver) carried in a selection of messages."""

    messages: int
    frames: int
    rounds: int
    """Distinct rounds of those messages (the rounds in which the link was used)."""


def in_scope(scope: str, prefix: str) -> bool:
    """Whether ``scope`` is ``prefix`` or nested in it ('' contains everything)."""
    return not prefix or scope == prefix or scope.startswith(prefix + ".")


def relative_scope(scope: str, prefix: str) -> str:
    """``scope`` without the leading ``prefix`` (which must contain it): '' for the prefix."""
    return scope[len(prefix) + 1:] if prefix and scope != prefix else ("" if prefix else scope)


def _records(stats: Mapping[int, PartyStats], phase: str, scope: str
             ) -> Iterator[tuple[int, MessageRecord]]:
    for sender, party in stats.items():
        for record in party.messages:
            if record.phase == phase and in_scope(record.scope, scope):
                yield sender, record


def critical_path(stats: Mapping[int, PartyStats], *, phase: str, scope: str) -> list[Hop]:
    """The messages of the critical path of ``scope`` in ``phase``, last first (empty if the
    selection sent nothing); its length is the selection's rounds.

    Starts from the selection's latest message (the highest round; the lowest sender, path
    and seq among equals, so the choice does not depend on timing) and follows parents while
    they are in the selection. Needs every role's records (``record_messages``).
    """
    candidates = list(_records(stats, phase, scope))
    if not candidates:
        return []
    sender, record = min(
        candidates, key=lambda c: (-c[1].round, c[0], c[1].receiver, c[1].path, c[1].seq)
    )
    index: dict[MessageId, MessageRecord] = {
        (s, r.receiver, r.path, r.seq): r for s, r in _records(stats, phase, scope)
    }
    path = [Hop(sender, record)]
    while record.parent is not None:
        parent = index.get(record.parent)
        if parent is None:  # outside the selection: the step's start
            break
        if parent.round != record.round - 1:
            raise ValueError(f"message of round {record.round} has a parent of round "
                             f"{parent.round}: the records are inconsistent")
        sender, record = record.parent[0], parent
        path.append(Hop(sender, record))
    return path


def rounds_by_scope(stats: Mapping[int, PartyStats], *, phase: str, scope: str
                    ) -> dict[str, int]:
    """Rounds of ``scope``'s critical path by the scope of the message that crossed each,
    relative to ``scope`` (nested scopes apart; '' for messages of ``scope`` itself). The
    values sum to the selection's rounds."""
    counts = Counter(relative_scope(hop.record.scope, scope)
                     for hop in critical_path(stats, phase=phase, scope=scope))
    return dict(counts)


def bytes_by_scope(stats: Mapping[int, PartyStats], *, phase: str, scope: str
                   ) -> dict[str, int]:
    """Payload bytes sent by all parties in ``scope`` and ``phase``, by the scope of each
    message relative to ``scope`` (as :func:`rounds_by_scope`)."""
    sent: Counter[str] = Counter()
    for _, record in _records(stats, phase, scope):
        sent[relative_scope(record.scope, scope)] += record.nbytes
    return dict(sent)


def depth_by_scope(stats: Mapping[int, PartyStats], *, phase: str, scope: str
                   ) -> dict[str, int]:
    """The latest round of a message in ``scope`` and ``phase``, by relative scope (as
    :func:`rounds_by_scope`). For the offline phase, whose work counts its rounds from 0
    wherever it runs, that is how many rounds deep the scope's preparation is."""
    depth: dict[str, int] = {}
    for _, record in _records(stats, phase, scope):
        name = relative_scope(record.scope, scope)
        depth[name] = max(depth.get(name, 0), record.round)
    return depth


def group(values: Mapping[str, int], names: Sequence[str],
          combine: Callable[[int, int], int] = operator.add) -> dict[str, int]:
    """``values`` by scope gathered into ``names`` with ``combine`` (sum by default; ``max``
    for depths): each scope goes to the longest name that contains it (:func:`in_scope`), so
    nested names take their part out of the outer one. Every name appears (0 if nothing went
    to it); a scope in none of them is a ValueError."""
    ordered = sorted(names, key=len, reverse=True)
    out = dict.fromkeys(names, 0)
    for scope, value in values.items():
        name = next((n for n in ordered if in_scope(scope, n)), None)
        if name is None:
            raise ValueError(f"scope {scope!r} is in none of the names given")
        out[name] = combine(out[name], value)
    return out


def link_traffic(stats: Mapping[int, PartyStats], *, phase: str, scope: str,
                 roles: frozenset[int] | None = None) -> dict[tuple[int, int], LinkTraffic]:
    """Per link (sender, receiver), both in ``roles`` if given: the messages of the
    selection, the frames they left in and the distinct rounds they were sent in."""
    messages: Counter[tuple[int, int]] = Counter()
    frames: dict[tuple[int, int], set[int]] = {}
    rounds: dict[tuple[int, int], set[int]] = {}
    for sender, record in _records(stats, phase, scope):
        link = (sender, record.receiver)
        if roles is not None and not set(link) <= roles:
            continue
        messages[link] += 1
        frames.setdefault(link, set()).add(record.frame)
        rounds.setdefault(link, set()).add(record.round)
    return {link: LinkTraffic(n, len(frames[link]), len(rounds[link]))
            for link, n in sorted(messages.items())}


__all__ = [
    "Hop", "LinkTraffic", "bytes_by_scope", "critical_path", "depth_by_scope", "group",
    "in_scope", "link_traffic", "relative_scope", "rounds_by_scope",
]
