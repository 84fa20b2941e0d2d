"""The watch cache: one store watch per backend, fanned out to every API watcher.

Thousands of API watchers must not each hold a store watch. The cache keeps a single backend watch
on ``/registry/``, remembers a window of recent events (so a watcher resuming from a recent
resourceVersion replays from memory) and hands each event to the watchers that may want it.
A resourceVersion older than the window gets kube's 410 "too old resource version".

Dispatch must not cost anything per watcher that does not want an event: 10,000 kubelets each
watch the pods of their own node, and a write is for one of them. So subscriptions are indexed,
as kube's cacher indexes its watchers, and an event only visits the subscriptions found by:

- its key, for single-object watches (``pods/ns/name`` or ``fieldSelector=metadata.name=X``);
- each slash-terminated prefix of its key, for collection watches (a namespace or the resource);
- the values of a trigger field in the object and in its previous state, for watches whose field
  selector pins that field (pods: ``spec.nodeName=X``); an object that moved from node A to node B
  reaches the watchers of both, and their own filter turns the change into DELETED for A and
  ADDED for B, as kube does.

A subscription turns an event into what its consumer reads (the API server's: the encoded watch
line, or nothing when its selectors reject the event) at dispatch, so a watcher's task is woken
only for an event it delivers. Decoded objects, field sets and encoded lines live on the event and
are shared by every watcher that receives it. A subscription holds a bounded queue: a watcher
whose client reads too slowly is ended once the queue is full and its client re-lists (kube closes
an unresponsive cacheWatcher the same way).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import orjson

from ultraplane.apiserver.storage import Backend, RevisionCompacted, WatchEvent

ENVELOPE = b"k8s:enc:"

log = logging.getLogger("ultraplane.apiserver.watchcache")

WINDOW_EVENTS = 20_000
# a watcher this far behind is ended and its client re-lists; larger than the window, because a
# watcher further behind than the window could not resume from its last resourceVersion anyway
SUBSCRIBER_QUEUE_LIMIT = 50_000

# (stored object) -> value of the trigger field, e.g. a pod's spec.nodeName
TriggerFunc = Callable[[dict[str, Any]], str]


class CachedEvent:
    """A store change with its decoded objects (decoded on first use, then shared)."""

    __slots__ = ("deleted", "key", "value", "prev_value", "revision", "_obj", "_prev", "lines", "memo")

    def __init__(self, ev: WatchEvent) -> None:
        self.deleted = ev.deleted
        self.key = ev.key
        self.value = ev.value
        self.prev_value = ev.prev_value
        self.revision = ev.revision
        self._obj: dict[str, Any] | None = None
        self._prev: dict[str, Any] | None = None
        self.lines: dict[Any, bytes] = {}  # encoded watch lines, shared by every watcher given them
        self.memo: dict[Any, Any] = {}  # other per-event results shared by watchers (views, field sets)

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
        """The state before an update, at this event's revision: a watcher whose selector it leaves
        gets it as DELETED, stamped with the revision of the change (kube's cacheWatcher does so)."""
        if self._prev is None and self.prev_value and not self.deleted:
            self._prev = orjson.loads(self.prev_value)
            self._prev.setdefault("metadata", {})["resourceVersion"] = str(self.revision)
        return self._prev


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Subscription:
    """One consumer of the cache. ``queue`` holds what ``convert`` made of each event it wants
    (the event itself when there is no ``convert``)."""

    __slots__ = ("cache", "resource_prefix", "key_prefix", "exact", "convert", "trigger", "queue", "waiter",
                 "ended", "home")

    def __init__(self, cache: WatchCache, resource_prefix: bytes, key_prefix: bytes, exact: bool,
                 convert: Callable[[CachedEvent], Any] | None = None,
                 trigger: tuple[str, TriggerFunc, str] | None = None) -> None:
        self.cache = cache
        self.resource_prefix = resource_prefix
        self.key_prefix = key_prefix
        self.exact = exact
        self.convert = convert
        self.trigger = trigger  # (field, function, wanted value)
        self.queue: deque[Any] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.ended: str | None = None  # set when the subscription was cut (slow consumer, backend lost)
        self.home: tuple[dict[Any, set[Subscription]], Any] | None = None  # the index entry holding it

    def wants(self, key: bytes) -> bool:
        return key == self.key_prefix if self.exact else key.startswith(self.key_prefix)

    def offer(self, ev: CachedEvent) -> None:
        if self.convert is None:
            self.push(ev)
            return
        try:
            item = self.convert(ev)
        except Exception:  # one watcher's bad conversion must not stop the fan-out to the others
            log.exception("watch: converting the event for %s at %d failed", ev.key.decode(errors="replace"),
                          ev.revision)
            self.end("internal error")
            return
        if item is not None:
            self.push(item)

    def push(self, item: Any) -> None:
        if self.ended:
            return
        if len(self.queue) >= SUBSCRIBER_QUEUE_LIMIT:
            self.end("watcher fell too far behind")
            return
        self.queue.append(item)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def end(self, why: str) -> None:
        self.ended = why
        self.cache.unsubscribe(self)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, timeout: float) -> None:
        """Until something is queued, the subscription ended, or timeout seconds passed."""
        if self.queue or self.ended:
            return
        loop = asyncio.get_running_loop()
        waiter = self.waiter = loop.create_future()
        timer = loop.call_later(max(timeout, 0.0), _resolve, waiter)  # cheaper than asyncio.wait_for
        try:
            await waiter
        finally:
            timer.cancel()
            self.waiter = None

    def close(self) -> None:
        self.cache.unsubscribe(self)


def resource_prefix_of(key: bytes, root_len: int) -> bytes:
    """``/registry/pods/ns/name`` -> ``/registry/pods/``: the first component after the root."""
    slash = key.find(b"/", root_len)
    return key if slash < 0 else key[: slash + 1]


def _offer_all(subs: set[Subscription], ev: CachedEvent) -> None:
    # a copy: offering may end a subscription, which removes it from this set
    for sub in tuple(subs):
        sub.offer(ev)


class ResourceWatchers:
    """The subscriptions of one resource (one first key segment under the root), indexed by what
    selects the events they may want."""

    __slots__ = ("prefix", "by_prefix", "by_key", "by_trigger", "count")

    def __init__(self, prefix: bytes) -> None:
        self.prefix = prefix
        self.by_prefix: dict[bytes, set[Subscription]] = {}  # collection watches: the resource or a namespace
        self.by_key: dict[bytes, set[Subscription]] = {}  # single-object watches
        # trigger field -> (its function, wanted value -> watches)
        self.by_trigger: dict[str, tuple[TriggerFunc, dict[str, set[Subscription]]]] = {}
        self.count = 0

    def add(self, sub: Subscription) -> None:
        index: dict[Any, set[Subscription]]
        if sub.exact:
            index, at = self.by_key, sub.key_prefix
        elif sub.trigger is not None:
            field, func, value = sub.trigger
            index = self.by_trigger.setdefault(field, (func, {}))[1]
            at = value
        else:
            index, at = self.by_prefix, sub.key_prefix
        index.setdefault(at, set()).add(sub)
        sub.home = (index, at)
        self.count += 1

    def remove(self, sub: Subscription) -> bool:
        """Drops sub; True when it was here."""
        if sub.home is None:
            return False
        index, at = sub.home
        sub.home = None
        subs = index.get(at)
        if subs is None or sub not in subs:
            return False
        subs.discard(sub)
        if not subs:
            del index[at]
        self.count -= 1
        return True

    def dispatch(self, ev: CachedEvent) -> None:
        key = ev.key
        by_prefix = self.by_prefix
        if by_prefix:
            subs = by_prefix.get(self.prefix)
            if subs:
                _offer_all(subs, ev)
            pos = len(self.prefix)
            while True:  # /registry/pods/ns/, /registry/services/specs/, /registry/services/specs/ns/ ...
                slash = key.find(b"/", pos)
                if slash < 0:
                    break
                subs = by_prefix.get(key[: slash + 1])
                if subs:
                    _offer_all(subs, ev)
                pos = slash + 1
        if self.by_key:
            subs = self.by_key.get(key)
            if subs:
                _offer_all(subs, ev)
        if self.by_trigger:
            self._dispatch_triggered(ev)

    def _dispatch_triggered(self, ev: CachedEvent) -> None:
        obj = ev.obj()
        if obj is None:
            return
        prev = ev.prev()
        key = ev.key
        for func, watchers in tuple(self.by_trigger.values()):
            value = func(obj)
            values = (value,) if prev is None else (value, func(prev))
            for i, wanted in enumerate(values):
                if i == 1 and wanted == value:
                    break
                subs = watchers.get(wanted)
                if subs:
                    for sub in tuple(subs):
                        if sub.wants(key):  # the watch's namespace
                            sub.offer(ev)

    def __iter__(self) -> Iterator[Subscription]:
        for subs in (*self.by_prefix.values(), *self.by_key.values()):
            yield from subs
        for _func, watchers in self.by_trigger.values():
            for subs in watchers.values():
                yield from subs


class WatchCache:
    def __init__(self, backend: Backend, root: bytes = b"/registry/") -> None:
        self.backend = backend
        self.root = root
        self.window: deque[CachedEvent] = deque()
        self.oldest = 0  # every event with revision >= oldest is in the window
        self.revision = 0  # newest revision the cache has seen (or started at)
        self.resources: dict[bytes, ResourceWatchers] = {}  # by resource prefix (/registry/pods/)
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        # encryption at rest: (key, stored value) -> plaintext for values in kube's envelope
        self.decrypt: Callable[[bytes, bytes], bytes] | None = None

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
        self._end_all("server shutting down")

    def subscriptions(self) -> list[Subscription]:
        return [sub for watchers in self.resources.values() for sub in watchers]

    def _end_all(self, why: str) -> None:
        for sub in self.subscriptions():
            sub.end(why)

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
                self._end_all("watch cache restarted")
            except Exception:
                log.exception("watch cache: backend watch failed; retrying")
            await asyncio.sleep(0.5)

    def _dispatch(self, batch: list[WatchEvent]) -> None:
        window = self.window
        resources = self.resources
        root_len = len(self.root)
        for raw in batch:
            ev = CachedEvent(raw)
            if self.decrypt is not None and not self._decrypted(ev):
                continue
            window.append(ev)
            self.revision = ev.revision
            watchers = resources.get(resource_prefix_of(ev.key, root_len))
            if watchers is not None:
                watchers.dispatch(ev)
        while len(window) > WINDOW_EVENTS:
            self.oldest = window.popleft().revision + 1

    def _decrypted(self, ev: CachedEvent) -> bool:
        decrypt = self.decrypt
        assert decrypt is not None
        try:
            if ev.value.startswith(ENVELOPE):
                ev.value = decrypt(ev.key, ev.value)
            if ev.prev_value and ev.prev_value.startswith(ENVELOPE):
                ev.prev_value = decrypt(ev.key, ev.prev_value)
        except Exception as exc:  # a value no configured key can read: watchers cannot be given it
            log.error("watch cache: dropping the event for %s at %d: %s", ev.key.decode(errors="replace"),
                      ev.revision, exc)
            self.revision = ev.revision
            return False
        return True

    def compacted(self, revision: int) -> None:
        """The store dropped history up to revision: the window keeps no more than the store does."""
        window = self.window
        while window and window[0].revision <= revision:
            window.popleft()
        self.oldest = max(self.oldest, revision + 1)

    def subscribe(self, resource_prefix: bytes, key_prefix: bytes, exact: bool, after_revision: int,
                  convert: Callable[[CachedEvent], Any] | None = None,
                  trigger: tuple[str, TriggerFunc, str] | None = None) -> Subscription:
        """Events with revision > after_revision under key_prefix (exactly that key when exact).

        ``convert`` maps each event to the item queued (None: not wanted); ``trigger`` = (field,
        function of the stored object, wanted value) indexes a collection watch by that field, for
        a convert that rejects objects whose field has another value before and after the change.
        Raises RevisionCompacted if the events left the window.
        """
        if after_revision + 1 < self.oldest:
            raise RevisionCompacted(after_revision, self.oldest - 1)
        # indexed by the first key segment, as _dispatch looks events up ("/registry/services/" holds
        # both services/specs and services/endpoints; their key prefixes tell them apart)
        prefix = resource_prefix_of(resource_prefix, len(self.root))
        sub = Subscription(self, prefix, key_prefix, exact, convert, trigger)
        if after_revision < self.revision:
            # from the newest end back to after_revision: a watcher resuming from a recent
            # resourceVersion (the usual reconnect) costs the events since, not the whole window
            since: list[CachedEvent] = []
            for ev in reversed(self.window):
                if ev.revision <= after_revision:
                    break
                since.append(ev)
            for ev in reversed(since):
                if sub.wants(ev.key):
                    sub.offer(ev)
            if sub.ended:
                return sub
        watchers = self.resources.get(prefix)
        if watchers is None:
            watchers = self.resources[prefix] = ResourceWatchers(prefix)
        watchers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        watchers = self.resources.get(sub.resource_prefix)
        if watchers is not None and watchers.remove(sub) and not watchers.count:
            del self.resources[sub.resource_prefix]


async def follow(cache: WatchCache, prefix: bytes, after: int, apply: Callable[[CachedEvent], None],
                 relist: Callable[[], Awaitable[int]], what: str) -> None:
    """Keep an in-process index current: apply each of the cache's events under prefix after revision
    ``after``, forever. When the subscription ends or its history is compacted, ``relist`` (retried every
    second until it succeeds) rebuilds the index and returns the revision to follow from. The RBAC
    binding index, the node authorizer's graph and the PriorityClass index follow this way."""

    async def relisted() -> int:
        while True:
            try:
                return await relist()
            except Exception:
                log.warning("%s: re-listing failed; retrying", what, exc_info=True)
                await asyncio.sleep(1.0)

    while True:
        try:
            sub = cache.subscribe(prefix, prefix, False, after)
        except RevisionCompacted:
            after = await relisted()
            continue
        try:
            while not sub.ended:
                await sub.wait(60.0)
                while sub.queue:
                    ev = sub.queue.popleft()
                    try:
                        apply(ev)
                    except Exception:  # one unreadable object must not stop the index from following
                        log.exception("%s: applying the event at %d failed", what, ev.revision)
                    after = ev.revision
        finally:
            sub.close()
        log.warning("%s: watch ended (%s); re-listing", what, sub.ended)
        after = await relisted()
