"""Watch-guarantee checker on hand-made streams: a correct one passes, each guarantee has a violation."""

from __future__ import annotations

import dataclasses

from ultraplane.checker.watch import WatchEvent, WatchStream, check_watches

HISTORY = [
    WatchEvent(2, "PUT", b"a", b"1", None),
    WatchEvent(3, "PUT", b"b", b"1", None),
    WatchEvent(4, "PUT", b"a", b"2", (b"1", 2)),  # one txn writes a and b at revision 4
    WatchEvent(4, "PUT", b"b", b"2", (b"1", 3)),
    WatchEvent(5, "DELETE", b"a", b"", (b"2", 4)),
    WatchEvent(6, "PUT", b"a", b"3", None),
    WatchEvent(7, "PUT", b"z", b"1", None),  # outside the watched range below
]


def stream(events: list[WatchEvent], name: str = "w1", start: int = 2) -> WatchStream:
    return WatchStream(name, b"a", b"c", start, list(events), prev_kv=True)


def good() -> list[WatchEvent]:
    return [e for e in HISTORY if e.key < b"c"]


def test_correct_streams_pass_with_and_without_history() -> None:
    streams = [stream(good(), "w1"), stream(good(), "w2")]
    assert check_watches(streams, HISTORY).ok
    assert check_watches(streams).ok


def test_later_start_revision_passes() -> None:
    s = stream([e for e in good() if e.revision >= 4], start=4)
    res = check_watches([s, stream(good(), "w2")], HISTORY)
    assert res.ok, res.explain()


def test_out_of_order_revisions() -> None:
    ev = good()
    ev[0], ev[1] = ev[1], ev[0]
    res = check_watches([stream(ev)])
    assert "ordered" in res.kinds()


def test_out_of_sub_order_within_a_revision() -> None:
    ev = good()
    ev[2], ev[3] = ev[3], ev[2]  # revision 4: b before a
    assert check_watches([stream(ev)]).ok  # not detectable without the history
    assert check_watches([stream(ev)], HISTORY).kinds() == {"ordered"}


def test_duplicate_delivery() -> None:
    ev = good()
    ev.insert(2, ev[1])
    assert "unique" in check_watches([stream(ev)]).kinds()


def test_event_outside_range_or_before_start() -> None:
    assert "range" in check_watches([stream([*good(), HISTORY[6]])]).kinds()
    assert "range" in check_watches([stream(good(), start=3)]).kinds()


def test_split_revision_is_not_atomic() -> None:
    ev = [e for e in good() if not (e.revision == 4 and e.key == b"b")]
    res = check_watches([stream(ev)], HISTORY)
    assert "atomic" in res.kinds()
    assert "gap" not in res.kinds()


def test_missing_revision_is_a_gap() -> None:
    ev = [e for e in good() if e.revision != 3]
    res = check_watches([stream(ev)], HISTORY)
    assert res.kinds() == {"gap"}, res.explain()


def test_missing_last_revision_is_a_gap_when_seen_revision_is_known() -> None:
    ev = [e for e in good() if e.revision != 6]
    s = stream(ev)
    assert check_watches([s], HISTORY).ok  # the watcher may simply not have got there yet
    s.seen_revision = 7
    assert check_watches([s], HISTORY).kinds() == {"gap"}


def test_event_not_in_history() -> None:
    ev = good()
    ev[0] = dataclasses.replace(ev[0], value=b"forged")
    assert "phantom" in check_watches([stream(ev)], HISTORY).kinds()


def test_wrong_prev_kv() -> None:
    ev = good()
    ev[4] = dataclasses.replace(ev[4], prev=(b"1", 2))  # delete of a: prev must be (2, 4)
    assert check_watches([stream(ev)], HISTORY).kinds() == {"prev_kv"}
    assert check_watches([stream(ev)]).kinds() == {"prev_kv"}  # inferred from the stream itself


def test_prev_kv_after_delete_must_be_absent() -> None:
    ev = good()
    ev[5] = dataclasses.replace(ev[5], prev=(b"2", 4))
    assert "prev_kv" in check_watches([stream(ev)], HISTORY).kinds()


def test_prev_kv_from_the_future() -> None:
    ev = good()
    ev[0] = dataclasses.replace(ev[0], prev=(b"x", 9))
    assert "prev_kv" in check_watches([stream(ev)]).kinds()


def test_members_disagree() -> None:
    other = good()
    other[3] = dataclasses.replace(other[3], value=b"9")
    res = check_watches([stream(good(), "m1"), stream(other, "m2")])  # no history: only comparison
    assert res.kinds() == {"diverged"}
    assert "m2" in res.explain()


def test_members_compared_only_over_common_span() -> None:
    shorter = [e for e in good() if e.revision <= 4]
    later = stream([e for e in good() if e.revision >= 3], "m2", start=3)
    assert check_watches([stream(shorter, "m1"), later, stream(good(), "m3")], HISTORY).ok
