"""Watch-guarantee checking (etcd's documented watch guarantees).

Input: one :class:`WatchStream` per watcher -- the key range and start revision it asked for and
the events it received, in delivery order -- and optionally the store's full event history (e.g.
what a watch from revision 1 over all keys with ``prev_kv`` received, or what the store's own log
says), in commit order.

Checks (violation ``kind`` in brackets):

``ordered``   revisions never decrease along a stream; with a history, events of one revision
              arrive in the history's sub-order (the order the txn applied them).
``range``     every event is inside the watched key range and at or after the start revision.
``unique``    no (revision, key) is delivered twice.
``phantom``   (history) every delivered event exists in the history with the same type and value.
``atomic``    (history) a revision the watcher saw is delivered whole: every in-range event of it.
``gap``       (history) no in-range revision between the start revision and the last revision the
              watcher saw (``seen_revision`` if given, else its last event) is missing entirely.
``prev_kv``   for streams that asked for prev_kv: the prev_kv of an event is the key's previous
              change (its value and mod_revision if that change was a PUT, absent after a DELETE
              or for a new key). Taken from the history when given; without one, from earlier
              events of the same stream (which must then be that key's previous change), and a
              prev_kv's mod_revision must always be below the event's revision.
``diverged``  streams over the same key range agree event for event over their common revision
              span (from the highest start revision to the lowest last-seen revision): "the same
              on every member".
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

KVRead = tuple[bytes, int] | None  # (value, mod_revision)


@dataclass(frozen=True, slots=True)
class WatchEvent:
    revision: int
    type: Literal["PUT", "DELETE"]
    key: bytes
    value: bytes = b""
    prev: KVRead = None  # prev_kv as (value, mod_revision); None if absent or not requested


@dataclass(slots=True)
class WatchStream:
    name: str
    key: bytes
    range_end: bytes = b""  # etcd semantics: b"" one key, b"\0" everything from key, else [key, end)
    start_revision: int = 1
    events: list[WatchEvent] = field(default_factory=list)
    prev_kv: bool = True
    seen_revision: int | None = None  # revision the watcher is known to be caught up to

    def covers(self, key: bytes) -> bool:
        if not self.range_end:
            return key == self.key
        if self.range_end == b"\0":
            return key >= self.key
        return self.key <= key < self.range_end

    def last_revision(self) -> int:
        last = self.events[-1].revision if self.events else self.start_revision - 1
        return max(last, self.seen_revision or 0)


@dataclass(frozen=True, slots=True)
class Violation:
    kind: str
    stream: str
    detail: str


@dataclass(slots=True)
class WatchCheckResult:
    violations: list[Violation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def kinds(self) -> set[str]:
        return {v.kind for v in self.violations}

    def explain(self) -> str:
        if self.ok:
            return "all watch guarantees hold"
        return "\n".join(f"[{v.kind}] {v.stream}: {v.detail}" for v in self.violations)


def _expected_prev(prev_change: WatchEvent | None) -> KVRead:
    if prev_change is None or prev_change.type == "DELETE":
        return None
    return (prev_change.value, prev_change.revision)


def _check_alone(s: WatchStream, out: list[Violation]) -> None:
    last_rev = 0
    seen: set[tuple[int, bytes]] = set()
    for pos, ev in enumerate(s.events):
        if ev.revision < last_rev:
            out.append(Violation("ordered", s.name, f"event #{pos} at revision {ev.revision} after {last_rev}"))
        last_rev = max(last_rev, ev.revision)
        if not s.covers(ev.key) or ev.revision < s.start_revision:
            out.append(Violation("range", s.name, f"event #{pos} {ev} outside the watched range/start"))
        ident = (ev.revision, ev.key)
        if ident in seen:
            out.append(Violation("unique", s.name, f"(revision {ev.revision}, key {ev.key!r}) delivered twice"))
        seen.add(ident)
        if s.prev_kv and ev.prev is not None and ev.prev[1] >= ev.revision:
            out.append(Violation("prev_kv", s.name, f"event #{pos} {ev} has a prev_kv from its future"))


def _check_prev_in_stream(s: WatchStream, out: list[Violation]) -> None:
    latest: dict[bytes, WatchEvent] = {}
    for pos, ev in enumerate(s.events):
        before = latest.get(ev.key)
        if before is not None and before.revision < ev.revision and ev.prev != _expected_prev(before):
            out.append(
                Violation("prev_kv", s.name, f"event #{pos} {ev}: prev_kv should be {_expected_prev(before)}")
            )
        latest[ev.key] = ev


def _check_against_history(s: WatchStream, history: Sequence[WatchEvent], out: list[Violation]) -> None:
    index: dict[tuple[int, bytes], int] = {}
    expected_prev: dict[int, KVRead] = {}
    latest: dict[bytes, WatchEvent] = {}
    for pos, ev in enumerate(history):
        index[(ev.revision, ev.key)] = pos
        expected_prev[pos] = _expected_prev(latest[ev.key]) if ev.key in latest else ev.prev
        latest[ev.key] = ev
    delivered: dict[int, set[bytes]] = defaultdict(set)
    last_pos_in_rev: dict[int, int] = {}
    for n, ev in enumerate(s.events):
        pos = index.get((ev.revision, ev.key))
        if pos is None or history[pos].type != ev.type or (ev.type == "PUT" and history[pos].value != ev.value):
            out.append(Violation("phantom", s.name, f"event #{n} {ev} is not in the history"))
            continue
        delivered[ev.revision].add(ev.key)
        prior = last_pos_in_rev.get(ev.revision)
        if prior is not None and pos < prior:
            out.append(Violation("ordered", s.name, f"event #{n} {ev} out of its revision's sub-order"))
        last_pos_in_rev[ev.revision] = pos
        if s.prev_kv and ev.prev != expected_prev[pos]:
            out.append(Violation("prev_kv", s.name, f"event #{n} {ev}: prev_kv should be {expected_prev[pos]}"))
    last = s.last_revision()
    wanted: dict[int, set[bytes]] = defaultdict(set)
    for ev in history:
        if s.start_revision <= ev.revision <= last and s.covers(ev.key):
            wanted[ev.revision].add(ev.key)
    for rev in sorted(wanted):
        got = delivered.get(rev, set())
        missing = wanted[rev] - got
        if not missing:
            continue
        if got:
            out.append(Violation("atomic", s.name, f"revision {rev} delivered partially; missing {sorted(missing)}"))
        else:
            out.append(Violation("gap", s.name, f"revision {rev} (keys {sorted(missing)}) never delivered"))


def _span(s: WatchStream, lo: int, hi: int, with_prev: bool) -> list[WatchEvent]:
    return [
        WatchEvent(e.revision, e.type, e.key, e.value, e.prev if with_prev else None)
        for e in s.events
        if lo <= e.revision <= hi
    ]


def _check_same(streams: Sequence[WatchStream], out: list[Violation]) -> None:
    groups: dict[tuple[bytes, bytes], list[WatchStream]] = defaultdict(list)
    for s in streams:
        groups[(s.key, s.range_end)].append(s)
    for group in groups.values():
        if len(group) < 2:
            continue
        lo = max(s.start_revision for s in group)
        hi = min(s.last_revision() for s in group)
        ref = group[0]
        with_prev = all(s.prev_kv for s in group)
        base = _span(ref, lo, hi, with_prev)
        for other in group[1:]:
            mine = _span(other, lo, hi, with_prev)
            if mine == base:
                continue
            at = next((i for i, (a, b) in enumerate(zip(base, mine, strict=False)) if a != b), min(len(base), len(mine)))
            a = base[at] if at < len(base) else "end of stream"
            b = mine[at] if at < len(mine) else "end of stream"
            out.append(
                Violation("diverged", other.name, f"differs from {ref.name} in [{lo}, {hi}] at #{at}: {b} vs {a}")
            )


def check_watches(streams: Sequence[WatchStream], history: Sequence[WatchEvent] | None = None) -> WatchCheckResult:
    """Check every guarantee above; ``history`` (commit order, all keys) enables the
    phantom/atomic/gap checks and the exact prev_kv check."""
    out: list[Violation] = []
    for s in streams:
        _check_alone(s, out)
        if history is None:
            if s.prev_kv:
                _check_prev_in_stream(s, out)
        else:
            _check_against_history(s, history, out)
    _check_same(streams, out)
    return WatchCheckResult(out)
