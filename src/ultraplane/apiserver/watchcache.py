"""The watch cache: one store watch per backend, fanned out to every API watcher.

Thousands of API watchers must not each hold a store watch. The cache keeps a single backend watch
on ``/registry/``, remembers a window of recent events (so a watcher resuming from a recent
resourceVersion replays from memory) and hands each event to the watchers subscribed to its
resource. An event's JSON is decoded once, lazily, and shared by every watcher that receives it.
A resourceVersion older than the window gets kube's 410 "too old resource version".
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

import orjson

from ultraplane.apiserver.storage import Backend, RevisionCompacted, WatchEvent

log = logging.getLogger("ultraplane.apiserver.watchcache")

WINDOW_EVENTS = 20_000
SUBSCRIBER_QUEUE_LIMIT = 50_000  # a watcher this far behind is ended; its client re-lists


class CachedEvent:
    """A store change with its decoded objects (decoded on first use, then shared)."""

    __slots__ = ("deleted", "key", "value", "prev_value", "revision", "_obj", "_prev", "lines")

    def __init__(self, ev: WatchEvent) -> None:
        self.deleted = ev.deleted
        self.key = ev.key
        self.value = ev.value
        self.prev_value = ev.prev_value
        self.revision = ev.revision
        self._obj: dict[str, Any] | None = None
        self._prev: dict[str, Any] | None = None
        self.lines: dict[str, bytes] = {}  # encoded watch lines by event type, shared by all watchers

    def obj(self) -> dict[str, Any] | None:
        """The object after the change (for a delete: the last state, at the deleting revision)."""
        if self._obj is None:
            raw = self.prev_value if self.deleted else self.value
            if not raw:
                return None
            self._obj = orjson.loads(raw)
            self._obj.setdefault("metadata", {})["resourceVersion"] = str(self.revision)
        return self._obj

    def prev(self) -> dict[str, Any] | None:
        if self._prev is None and self.prev_value and not self.deleted:
            self._prev = orjson.loads(self.prev_value)
        return self._prev


class Subscription:
    def __init__(self, cache: WatchCache, resource_prefix: bytes, key_prefix: bytes, exact: bool) -> None:
        self.cache = cache
        self.resource_prefix = resource_prefix
        self.key_prefix = key_prefix
        self.exact = exact
        self.queue: deque[CachedEvent] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.ended: str | None = None  # set when the subscription was cut (slow consumer, backend lost)

    def wants(self, key: bytes) -> bool:
        return key == self.key_prefix if self.exact else key.startswith(self.key_prefix)

    def push(self, ev: CachedEvent) -> None:
        if len(self.queue) >= SUBSCRIBER_QUEUE_LIMIT:
            self.end("watcher fell too far behind")
            return
        self.queue.append(ev)
        self.wake()

    def end(self, why: str) -> None:
        self.ended = why
        self.cache.unsubscribe(self)
        self.wake()

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def wait(self, timeout: float) -> None:
        if self.queue or self.ended:
            return
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(self.waiter, timeout)
        except TimeoutError:
            pass
        finally:
            self.waiter = None

    def close(self) -> None:
        self.cache.unsubscribe(self)


def resource_prefix_of(key: bytes, root_len: int) -> bytes:
    """``/registry/pods/ns/name`` -> ``/registry/pods/``: the first component after the root."""
    slash = key.find(b"/", root_len)
    return key if slash < 0 else key[: slash + 1]


class WatchCache:
    def __init__(self, backend: Backend, root: bytes = b"/registry/") -> None:
        self.backend = backend
        self.root = root
        self.window: deque[CachedEvent] = deque()
        self.oldest = 0  # every event with revision >= oldest is in the window
        self.revision = 0  # newest revision the cache has seen (or started at)
        self.subscribers: dict[bytes, set[Subscription]] = {}
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def start(self) -> None:
        self.revision = await self.backend.current_revision()
        self.oldest = self.revision + 1
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        for subs in list(self.subscribers.values()):
            for sub in list(subs):
                sub.end("server shutting down")

    async def _run(self) -> None:
        while True:
            try:
                async for batch in self.backend.watch(self.root, self.revision + 1):
                    self._dispatch(batch)
            except asyncio.CancelledError:
                raise
            except RevisionCompacted:
                # the store compacted past us while disconnected: the window cannot be continued
                log.warning("watch cache lost history; restarting it at the current revision")
                self.window.clear()
                self.revision = await self.backend.current_revision()
                self.oldest = self.revision + 1
                for subs in list(self.subscribers.values()):
                    for sub in list(subs):
                        sub.end("watch cache restarted")
            except Exception:
                log.exception("watch cache: backend watch failed; retrying")
            await asyncio.sleep(0.5)

    def _dispatch(self, batch: list[WatchEvent]) -> None:
        window = self.window
        root_len = len(self.root)
        for raw in batch:
            ev = CachedEvent(raw)
            window.append(ev)
            self.revision = ev.revision
            subs = self.subscribers.get(resource_prefix_of(ev.key, root_len))
            if subs:
                for sub in list(subs):
                    if sub.wants(ev.key):
                        sub.push(ev)
        while len(window) > WINDOW_EVENTS:
            self.oldest = window.popleft().revision + 1

    def compacted(self, revision: int) -> None:
        """The store dropped history up to revision: the window keeps no more than the store does."""
        window = self.window
        while window and window[0].revision <= revision:
            window.popleft()
        self.oldest = max(self.oldest, revision + 1)

    def subscribe(self, resource_prefix: bytes, key_prefix: bytes, exact: bool, after_revision: int) -> Subscription:
        """Events with revision > after_revision. Raises RevisionCompacted if they left the window."""
        if after_revision + 1 < self.oldest:
            raise RevisionCompacted(after_revision, self.oldest - 1)
        # index by the first key segment, as _dispatch looks events up ("/registry/services/" holds
        # both services/specs and services/endpoints; wants() tells them apart)
        sub = Subscription(self, resource_prefix_of(resource_prefix, len(self.root)), key_prefix, exact)
        if after_revision < self.revision:
            for ev in self.window:
                if ev.revision > after_revision and sub.wants(ev.key):
                    sub.queue.append(ev)
        self.subscribers.setdefault(sub.resource_prefix, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self.subscribers.get(sub.resource_prefix)
        if subs is not None:
            subs.discard(sub)
