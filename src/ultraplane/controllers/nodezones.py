"""Zones and eviction rate limiting for the node lifecycle controller, as kube-controller-manager has them.

* `zone_key`: kube's `GetZoneKey` ("region:\\x00:zone" from the topology labels, else the beta failure-domain
  ones; "" for a node with neither).
* `compute_zone_state`: kube's `ComputeZoneState` over the Ready statuses of a zone's nodes: FullDisruption
  when none is Ready, PartialDisruption when more than 2 are not Ready and they are at least the unhealthy
  zone threshold, else Normal. A zone first seen is Initial until its first pass.
* `TokenBucket`: client-go's token bucket rate limiter with kube's eviction burst of 1 (it starts full);
  qps <= 0 is its "never" limiter.
* `RateLimitedQueue`: kube's RateLimitedTimedQueue, one per zone: node names in the order they were queued,
  each taken only when the zone's limiter gives a token; an item done stays in the set (so it is not queued
  again) until `remove`.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any

INITIAL = "Initial"
NORMAL = "Normal"
PARTIAL = "PartialDisruption"
FULL = "FullDisruption"
EVICTION_BURST = 1  # kube's scheduler.EvictionRateLimiterBurst
EVICTION_PERIOD = 0.1  # kube's scheduler.NodeEvictionPeriod: how often the tainting pass runs


def zone_key(node: dict[str, Any]) -> str:
    labels = (node.get("metadata") or {}).get("labels") or {}
    zone = labels.get("topology.kubernetes.io/zone", labels.get("failure-domain.beta.kubernetes.io/zone", ""))
    region = labels.get("topology.kubernetes.io/region", labels.get("failure-domain.beta.kubernetes.io/region", ""))
    if not region and not zone:
        return ""
    return f"{region}:\x00:{zone}"  # the NUL keeps "a:b" + "c" apart from "a" + "b:c", as in kube


def printable_zone(key: str) -> str:
    """The zone key as klog quotes it in logs (the NUL shown as \\x00)."""
    return key.replace("\x00", "\\x00")


def compute_zone_state(ready: list[str | None], unhealthy_threshold: float) -> tuple[int, str]:
    """(not-ready count, state) for the Ready statuses of one zone's nodes (None: no Ready condition)."""
    ready_nodes = sum(1 for status in ready if status == "True")
    not_ready = len(ready) - ready_nodes
    if ready_nodes == 0 and not_ready > 0:
        return not_ready, FULL
    if not_ready > 2 and not_ready / (not_ready + ready_nodes) >= unhealthy_threshold:
        return not_ready, PARTIAL
    return not_ready, NORMAL


class TokenBucket:
    def __init__(self, qps: float, burst: int = EVICTION_BURST) -> None:
        self.qps = qps
        self.burst = burst
        self.tokens = float(burst)
        self.last = time.monotonic()

    def try_accept(self) -> bool:
        if self.qps <= 0:
            return False  # client-go's fake "never" limiter
        now = time.monotonic()
        self.tokens = min(float(self.burst), self.tokens + (now - self.last) * self.qps)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


# the action on one queued node: (done, seconds to wait before retrying when not done)
Action = Callable[[str], Awaitable[tuple[bool, float]]]


class RateLimitedQueue:
    def __init__(self, qps: float) -> None:
        self.limiter = TokenBucket(qps)
        self.heap: list[tuple[float, int, str]] = []  # (process at, sequence, name); stale entries skipped
        self.queued: dict[str, int] = {}  # name -> sequence of its live heap entry
        self.members: set[str] = set()  # queued or done-but-not-removed
        self.counter = itertools.count()

    def add(self, name: str) -> bool:
        if name in self.members:
            return False
        self.members.add(name)
        self._push(name, time.monotonic())
        return True

    def _push(self, name: str, at: float) -> None:
        seq = next(self.counter)
        self.queued[name] = seq
        heapq.heappush(self.heap, (at, seq, name))

    def remove(self, name: str) -> bool:
        self.queued.pop(name, None)
        if name in self.members:
            self.members.discard(name)
            return True
        return False

    def swap_limiter(self, qps: float) -> None:
        """kube's SwapLimiter: a new bucket at the new rate; drained if the old one was out of tokens."""
        if self.limiter.qps == qps:
            return
        fresh = TokenBucket(qps)
        if qps > 0 and not self.limiter.try_accept():
            fresh.try_accept()
        self.limiter = fresh

    def _head(self) -> tuple[float, int, str] | None:
        while self.heap:
            at, seq, name = self.heap[0]
            if self.queued.get(name) == seq:
                return at, seq, name
            heapq.heappop(self.heap)  # removed, or pushed again since
        return None

    async def try_each(self, action: Action) -> None:
        """Act on queued nodes in order while the limiter gives tokens (kube's Try)."""
        head = self._head()
        while head is not None:
            if not self.limiter.try_accept():
                return
            at, seq, name = head
            now = time.monotonic()
            if now < at:
                return
            done, wait = await action(name)
            if self.queued.get(name) == seq:  # still this entry (not removed while the action ran)
                if done:
                    del self.queued[name]  # out of the queue, still a member: not queued again
                else:
                    self._push(name, now + wait)  # the old heap entry is now stale and skipped
            head = self._head()

    def __len__(self) -> int:
        return len(self.queued)
