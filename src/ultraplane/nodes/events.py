"""client-go's EventCorrelator (tools/record/events_cache.go), one per simulated kubelet.

Every event a kubelet records passes three steps before it is written:

1. **Aggregator**: events with the same source, involved object (not its fieldPath), type, reason and
   reporting controller/instance but different messages are counted per group; from the 10th distinct
   message within 10 minutes of the group's previous event on, they become one Event whose message is
   "(combined from similar events): <latest>".
2. **Logger** (dedup): an event whose key (source, involved object with fieldPath, type, reason,
   message; or the group for an aggregate) was seen before is not a new object: the first one's Event
   is PATCHed with count + 1, lastTimestamp and message.
3. **Spam filter**: a token bucket per source + involved object (burst 25, one token back every
   5 minutes) drops the rest. The observation of step 2 is kept even for a dropped event, as
   client-go's is, so the next event that passes carries the full count.

Each cache is an LRU of 4096 entries, as client-go's. Keys are Python hashes of the fields client-go
joins into its key strings: 64-bit hashes of at most 4096 live keys per node practically never
collide, and a hash costs no memory for the (long) message strings. This path runs for every
simulated pod, so a step is a few dict operations, never a scan.
"""

from __future__ import annotations

import datetime as dt
from collections import OrderedDict
from typing import Any

Obj = dict[str, Any]
CACHE_SIZE = 4096  # maxLruCacheEntries
AGGREGATE_MAX_EVENTS = 10  # defaultAggregateMaxEvents
AGGREGATE_INTERVAL_S = 600.0  # defaultAggregateIntervalInSeconds
SPAM_BURST = 25  # defaultSpamBurst
SPAM_QPS = 1.0 / 300.0  # defaultSpamQPS
COMBINED_PREFIX = "(combined from similar events): "  # EventAggregatorByReasonMessageFunc


class EventLog:
    """One Event as the kubelet knows it (client-go's eventLog), plus the simulator's send state."""

    __slots__ = ("name", "namespace", "count", "first", "created", "queued", "pending")

    def __init__(self, name: str, namespace: str, count: int, first: str) -> None:
        self.name = name  # the first occurrence's name: repeats patch it
        self.namespace = namespace
        self.count = count
        self.first = first  # firstTimestamp
        self.created = False  # the Event exists on the server (else the next send creates it)
        self.queued = False  # a send is queued or in flight: a newer observation rides along with it
        self.pending: Obj | None = None  # the newest state to write, None once written


class _Aggregate:
    """client-go's aggregateRecord: the distinct messages of a group and when it last had an event."""

    __slots__ = ("last", "messages")

    def __init__(self, last: float) -> None:
        self.last = last
        self.messages: int | set[int] | None = None  # one message hash, or a set from the second on

    def add(self, message: int) -> int:
        """Insert the message; returns how many distinct ones the group holds."""
        held = self.messages
        if held is None:
            self.messages = message
            return 1
        if isinstance(held, int):
            if held == message:
                return 1
            held = self.messages = {held, message}
            return 2
        held.add(message)
        return len(held)

    def pop_any(self) -> None:
        held = self.messages
        if isinstance(held, set):
            held.pop()


def _lru_get(cache: OrderedDict[int, Any], key: int) -> Any:
    value = cache.get(key)
    if value is not None:
        cache.move_to_end(key)
    return value


def _lru_add(cache: OrderedDict[int, Any], key: int, value: Any, size: int) -> None:
    cache[key] = value
    cache.move_to_end(key)
    if len(cache) > size:
        cache.popitem(last=False)


def _stamp(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class EventCorrelator:
    """Filters, aggregates and counts one recorder's events. `now` is wall-clock seconds (time.time()),
    passed in so tests can drive time."""

    def __init__(self, cache_size: int = CACHE_SIZE, burst: int = SPAM_BURST, qps: float = SPAM_QPS,
                 max_events: int = AGGREGATE_MAX_EVENTS, interval: float = AGGREGATE_INTERVAL_S) -> None:
        self.cache_size = cache_size
        self.burst = burst
        self.qps = qps
        self.max_events = max_events
        self.interval = interval
        self.aggregates: OrderedDict[int, _Aggregate] = OrderedDict()
        self.logs: OrderedDict[int, EventLog] = OrderedDict()
        # key -> the time the bucket was (virtually) empty: tokens at t = min(burst, (t - empty) * qps), so
        # one float per object holds what client-go's token bucket keeps as tokens + last refill
        self.spam: OrderedDict[int, float] = OrderedDict()
        self._stamp: str = ""  # the last firstTimestamp kept: events of one second share the string

    def correlate(self, event: Obj, now: float) -> EventLog | None:
        """The Event to write for this occurrence (its `pending` body set), or None when the spam filter
        drops it."""
        involved = event.get("involvedObject") or {}
        source = event.get("source") or {}
        # getSpamKey: source + involved object (no fieldPath), the prefix of the other two keys
        obj_key = (source.get("component", ""), source.get("host", ""), involved.get("kind", ""),
                   involved.get("namespace", ""), involved.get("name", ""), involved.get("uid", ""),
                   involved.get("apiVersion", ""))
        kind, reason, message = event.get("type", ""), event.get("reason", ""), event.get("message", "")
        # EventAggregatorByReasonFunc's key; tagged so it never equals an event key in the logger's cache
        group = hash(("group", obj_key, kind, reason, event.get("reportingComponent", ""),
                      event.get("reportingInstance", "")))
        key = hash((obj_key, involved.get("fieldPath", ""), kind, reason, message))  # getEventKey
        aggregate = self._aggregate(event, group, hash(message), now)
        if aggregate is not None:  # the group is over the threshold: its aggregate Event is counted instead
            event, key = aggregate, group
        log = self._observe(event, key)
        if not self._accept(hash(obj_key), now):
            return None
        if log.count > 1:  # a repeat: the first occurrence's name and firstTimestamp, the new count
            event = {**event, "metadata": {**event["metadata"], "name": log.name}, "firstTimestamp": log.first,
                     "count": log.count}
        log.pending = event
        return log

    def _aggregate(self, event: Obj, group: int, message: int, now: float) -> Obj | None:
        """EventAggregate: None (the event goes as it is), or a new aggregate Event once the group holds
        `max_events` distinct messages."""
        record = _lru_get(self.aggregates, group)
        if record is None or now - record.last > self.interval:
            record = _Aggregate(now)
        distinct = record.add(message)
        record.last = now
        _lru_add(self.aggregates, group, record, self.cache_size)
        if distinct < self.max_events:
            return None
        record.pop_any()  # the set never grows past the threshold
        involved = event.get("involvedObject") or {}
        stamp = _stamp(now)
        # as client-go's eventCopy: no reportingComponent/reportingInstance, a fresh name and count 1
        return {"apiVersion": "v1", "kind": "Event",
                "metadata": {"name": f"{involved.get('name', '')}.{int(now * 1e9):x}",
                             "namespace": (event.get("metadata") or {}).get("namespace", "")},
                "involvedObject": involved, "reason": event.get("reason", ""),
                "message": COMBINED_PREFIX + event.get("message", ""), "type": event.get("type", ""),
                "source": event.get("source") or {}, "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1}

    def _observe(self, event: Obj, key: int) -> EventLog:
        """eventObserve: a repeat counts up on the first occurrence's log, anything else starts one."""
        log = _lru_get(self.logs, key)
        if log is not None:
            log.count += 1
            return log
        meta = event.get("metadata") or {}
        first = event.get("firstTimestamp") or ""
        if first == self._stamp:
            first = self._stamp
        else:
            self._stamp = first
        log = EventLog(meta.get("name", ""), meta.get("namespace", ""), int(event.get("count") or 1), first)
        _lru_add(self.logs, key, log, self.cache_size)
        return log

    def _accept(self, key: int, now: float) -> bool:
        """EventSourceObjectSpamFilter: a token bucket per source + object, starting full."""
        full = now - self.burst / self.qps  # an empty time this early means a full bucket
        empty = self.spam.get(key)
        empty = full if empty is None or empty < full else empty
        accepted = (now - empty) * self.qps >= 1.0
        if accepted:
            empty += 1.0 / self.qps  # one token taken
        _lru_add(self.spam, key, empty, self.cache_size)
        return accepted
