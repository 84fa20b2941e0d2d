"""Watchers: per-watcher buffers fed by the store's hub, with a bounded catch-up path.

A watcher is either *synced* (registered in the hub; every committed revision that touches
its range is pushed into its buffer) or *unsynced* (it reads committed revisions from the
store's revision log itself, a batch at a time, until it has caught up, then registers).
A synced watcher whose buffer grows past ``MAX_BUFFERED_EVENTS`` (a consumer that does not
keep up) is unregistered and falls back to catching up from the log, so writers never
wait on readers and memory stays bounded. Batches always hold whole revisions.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ultraplane.store.types import Event

if TYPE_CHECKING:
    from ultraplane.store.mvcc import Store

MAX_BUFFERED_EVENTS = 10_000  # past this a slow watcher is moved to catch-up mode
CATCH_UP_BATCH_EVENTS = 1_000  # events per batch read from the log (whole revisions)


class Watcher:
    __slots__ = (
        "key",
        "range_end",
        "unbounded",
        "is_range",
        "prev_kv",
        "filter_put",
        "filter_delete",
        "next_rev",
        "compact_revision",
        "_store",
        "_buf",
        "_waiter",
        "_closed",
        "_synced",
    )

    def __init__(
        self,
        store: Store,
        key: bytes,
        range_end: bytes,
        next_rev: int,
        prev_kv: bool,
        filter_put: bool,
        filter_delete: bool,
    ) -> None:
        self.key = key
        self.range_end = range_end
        self.unbounded = range_end == b"\0"  # from-key watch
        self.is_range = bool(range_end)
        self.prev_kv = prev_kv
        self.filter_put = filter_put
        self.filter_delete = filter_delete
        self.next_rev = next_rev  # first revision not yet handed to the buffer / consumer
        self.compact_revision = 0  # set when the requested history is gone; iteration then ends
        self._store = store
        self._buf: list[Event] = []
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._synced = False

    def matches(self, key: bytes) -> bool:
        if not self.is_range:
            return key == self.key
        return self.key <= key and (self.unbounded or key < self.range_end)

    # -- called by the store's hub ------------------------------------------------
    def _push(self, rev: int, events: list[Event]) -> None:
        if rev < self.next_rev:
            return
        if len(self._buf) >= MAX_BUFFERED_EVENTS:
            # the consumer is behind: stop buffering; it will re-read from rev on
            self._store._unregister(self)
            self._synced = False
        else:
            self._buf.extend(events)
            self.next_rev = rev + 1
        self._wake()

    def _compacted(self, compact_rev: int) -> None:
        self.compact_revision = compact_rev
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- consumer side ------------------------------------------------------------
    def __aiter__(self) -> Watcher:
        return self

    async def __anext__(self) -> list[Event]:
        store = self._store
        while True:
            if store._successor is not None:
                store = self._move_to(store)
            if self._closed or self.compact_revision:
                raise StopAsyncIteration
            if self._buf:
                out = self._buf
                self._buf = []
                return out
            if not self._synced:
                if self.next_rev < store._compact_rev:
                    self._compacted(store._compact_rev)
                    store._unregister(self)
                    raise StopAsyncIteration
                if self.next_rev <= store._committed:
                    events = store._collect(self, CATCH_UP_BATCH_EVENTS)
                    if self.next_rev > store._committed:
                        store._register(self)
                    if events:
                        return events
                    await asyncio.sleep(0)  # a long stretch without matches: let others run
                    continue
                store._register(self)
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def _move_to(self, store: Store) -> Store:
        """The store was replaced (a replica rebuilt its state): continue from the same
        revision on its successor, catching up from its history."""
        while store._successor is not None:
            store._unregister(self)
            store = store._successor
        self._store = store
        if self.next_rev < store._revlog_base and not self._closed:
            self._compacted(max(store._compact_rev, store._revlog_base - 1))
        return store

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._store._unregister(self)
            self._wake()

    @property
    def closed(self) -> bool:
        return self._closed
