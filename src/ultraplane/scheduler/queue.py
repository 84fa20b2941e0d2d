"""kube-scheduler's scheduling queue: activeQ by priority, backoff, and unschedulable pods parked
until a cluster event (node added or changed, pod deleted) might let them fit."""

from __future__ import annotations

import heapq
import itertools
import time

from ultraplane.scheduler.model import PodInfo

INITIAL_BACKOFF_S = 1.0
MAX_BACKOFF_S = 10.0
MAX_UNSCHEDULABLE_S = 300.0  # podMaxInUnschedulablePodsDuration


class SchedulingQueue:
    def __init__(self) -> None:
        self._active: list[tuple[int, int, str]] = []  # (-priority, arrival, key)
        self._pods: dict[str, PodInfo] = {}  # every pending pod known to the queue
        self._in_active: set[str] = set()
        self._backoff: list[tuple[float, str]] = []
        self._unschedulable: dict[str, float] = {}  # key -> when parked
        self._attempts: dict[str, int] = {}
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._pods)

    def add(self, pod: PodInfo) -> None:
        """A new or updated pending pod; an update also gives a parked pod another try."""
        known = pod.key in self._pods
        self._pods[pod.key] = pod
        if pod.key in self._in_active or (known and pod.key not in self._unschedulable):
            return  # already queued or in flight / backing off
        self._unschedulable.pop(pod.key, None)
        self._push_active(pod)

    def _push_active(self, pod: PodInfo) -> None:
        self._in_active.add(pod.key)
        heapq.heappush(self._active, (-pod.priority, next(self._seq), pod.key))

    def delete(self, key: str) -> None:
        self._pods.pop(key, None)
        self._in_active.discard(key)
        self._unschedulable.pop(key, None)
        self._attempts.pop(key, None)

    def pop_batch(self, limit: int) -> list[PodInfo]:
        self._flush(time.monotonic())
        out = []
        while self._active and len(out) < limit:
            _, _, key = heapq.heappop(self._active)
            if key in self._in_active:
                self._in_active.discard(key)
                out.append(self._pods[key])
        return out

    def done(self, key: str) -> None:
        """The pod was bound (or assumed and handed to binding)."""
        self._pods.pop(key, None)
        self._attempts.pop(key, None)

    def unschedulable(self, pod: PodInfo) -> None:
        if pod.key in self._pods:
            self._attempts[pod.key] = self._attempts.get(pod.key, 0) + 1
            self._unschedulable[pod.key] = time.monotonic()

    def retry(self, pod: PodInfo) -> None:
        """A transient failure (binding error): back off, then try again."""
        if pod.key not in self._pods:
            return
        attempts = self._attempts[pod.key] = self._attempts.get(pod.key, 0) + 1
        delay = min(MAX_BACKOFF_S, INITIAL_BACKOFF_S * 2 ** (attempts - 1))
        heapq.heappush(self._backoff, (time.monotonic() + delay, pod.key))

    def cluster_changed(self) -> None:
        """Move parked pods back, each after its backoff (kube's MoveAllToActiveOrBackoffQueue)."""
        now = time.monotonic()
        for key in list(self._unschedulable):
            del self._unschedulable[key]
            delay = min(MAX_BACKOFF_S, INITIAL_BACKOFF_S * 2 ** (self._attempts.get(key, 1) - 1))
            heapq.heappush(self._backoff, (now + delay, key))

    def _flush(self, now: float) -> None:
        while self._backoff and self._backoff[0][0] <= now:
            _, key = heapq.heappop(self._backoff)
            pod = self._pods.get(key)
            if pod is not None and key not in self._in_active and key not in self._unschedulable:
                self._push_active(pod)
        for key, since in list(self._unschedulable.items()):
            if now - since >= MAX_UNSCHEDULABLE_S:
                del self._unschedulable[key]
                self._push_active(self._pods[key])

    def next_wakeup(self) -> float | None:
        """Seconds until the earliest backoff expires, if any."""
        if not self._backoff:
            return None
        return max(0.0, self._backoff[0][0] - time.monotonic())
