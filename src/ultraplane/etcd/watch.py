"""One Watch gRPC stream: many watchers multiplexed by watch_id, following etcd 3.4's
etcdserver/api/v3rpc/watch.go.

Per stream:
 - create: the client's watch_id if it chose one (a duplicate is refused), else the next
   free id counting from 0. The "created" response always goes out before any event of that
   watcher. A refused create answers created+canceled with watch_id -1 and a cancel_reason.
 - a start revision below the compaction point: after "created", one response with compact_revision and
   canceled=true, and the watcher is gone.
 - cancel: a canceled response carrying the id, and no event of that watcher after it.
 - progress request: a response with no events, watch_id -1, and header revision = the
   current revision, sent only after every event up to that revision that this stream's
   watchers will get.
 - progress_notify: every ``watch_progress_interval`` seconds, each such watcher that got no
   events since the previous tick receives an empty response with its id.
 - fragment: a response bigger than max_request_bytes + 512 KiB is split into several with
   fragment=true on all but the last. Without fragment a store batch is still split, but only
   between revisions, so one revision's events always arrive in one response.

Responses go through one queue so their order is exactly the order they were produced in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from ultraplane.etcd.proto import rpc_pb2
from ultraplane.etcd.rpc import CallContext, RpcError
from ultraplane.etcd.wire import GRPC_OVERHEAD_BYTES
from ultraplane.store.errors import StoreError
from ultraplane.store.types import Event, KeyValue

if TYPE_CHECKING:
    from ultraplane.etcd.service import EtcdService

log = logging.getLogger("ultraplane.etcd.watch")

INVALID_WATCH_ID = -1
_NOPUT = rpc_pb2.WatchCreateRequest.NOPUT
_NODELETE = rpc_pb2.WatchCreateRequest.NODELETE
_CLOSE = object()  # queue sentinel: the session is over

# etcd's mvcc error texts, used as cancel_reason
ERR_EMPTY_RANGE = "mvcc: watcher range is empty"
ERR_DUPLICATE_ID = "mvcc: duplicate watch ID provided on the WatchStream"


def _kv_to_pb(kv: KeyValue, out: Any) -> None:
    out.key = kv.key
    out.create_revision = kv.create_revision
    out.mod_revision = kv.mod_revision
    out.version = kv.version
    out.value = kv.value
    out.lease = kv.lease


def _event_to_pb(ev: Event, out: Any) -> None:
    if ev.type:  # PUT is the proto3 default and is not written
        out.type = int(ev.type)
    _kv_to_pb(ev.kv, out.kv)
    if ev.prev_kv is not None:
        _kv_to_pb(ev.prev_kv, out.prev_kv)


_SETTLE_MAX_ROUNDS = 10_000  # event-loop turns to wait for watchers before a progress response


def _caught_up(store_watcher: Any, revision: int) -> bool:
    """Has this store watcher given its consumer every event up to ``revision``?

    Reads the Watcher's state: ``_buf`` (events handed over but not yet taken), ``_synced``
    (fed by the store at every commit) and ``next_rev`` (catch-up position)."""
    if getattr(store_watcher, "_buf", None):
        return False
    if getattr(store_watcher, "_synced", True) or getattr(store_watcher, "closed", False):
        return True
    return store_watcher.compact_revision or getattr(store_watcher, "next_rev", revision + 1) > revision


class _Watcher:
    __slots__ = ("id", "store_watcher", "task", "progress_notify", "fragment", "got_events")

    def __init__(self, watch_id: int, store_watcher: Any, progress_notify: bool, fragment: bool) -> None:
        self.id = watch_id
        self.store_watcher = store_watcher
        self.task: asyncio.Task[None] | None = None
        self.progress_notify = progress_notify
        self.fragment = fragment
        self.got_events = False  # since the last progress tick


class WatchSession:
    @property
    def store(self) -> Any:
        # the service's current store: a replica replaces its Store when it rebuilds state
        return self.service.store

    def __init__(self, service: EtcdService, ctx: CallContext) -> None:
        self.service = service
        self.ctx = ctx
        self.out: asyncio.Queue[Any] = asyncio.Queue()
        self.watchers: dict[int, _Watcher] = {}
        self.next_id = 0
        self.max_bytes = service.max_request_bytes + GRPC_OVERHEAD_BYTES  # where etcd fragments

    # ----------------------------------------------------------------- response helpers

    def _response(self, revision: int | None = None, **fields: Any) -> Any:
        return self.service.header(rpc_pb2.WatchResponse(**fields), revision)

    # ----------------------------------------------------------------- main loop

    async def run(self, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        reader = asyncio.create_task(self._read(requests))
        ticker = asyncio.create_task(self._progress_ticker())
        try:
            while True:
                item = await self.out.get()
                if item is _CLOSE:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            reader.cancel()
            ticker.cancel()
            for watcher in list(self.watchers.values()):
                self._stop(watcher)
            self.watchers.clear()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def _read(self, requests: AsyncIterator[Any]) -> None:
        try:
            async for req in requests:
                which = req.WhichOneof("request_union")
                if which == "create_request":
                    self._create(req.create_request)
                elif which == "cancel_request":
                    self._cancel(req.cancel_request.watch_id)
                elif which == "progress_request":
                    await self._progress()
        except asyncio.CancelledError:
            raise
        except RpcError as exc:
            self.out.put_nowait(exc)
        except Exception as exc:  # the client went away mid-read, or a bug: end the stream
            log.debug("watch stream read ended: %r", exc)
            self.out.put_nowait(_CLOSE)
        # The client closing its side ends nothing: like etcd, keep sending until the call ends.

    # ----------------------------------------------------------------- requests

    def _create(self, creq: Any) -> None:
        service = self.service
        key = creq.key or b"\x00"  # etcd watches from "\0" when no key is given
        range_end = creq.range_end
        if service.auth is not None and (service.auth.enabled or "token" in self.ctx.metadata):
            try:
                user = service._user(self.ctx)
                service.auth.check_read(user, key, range_end)
            except (RpcError, StoreError) as exc:
                reason = exc.message
                self.out.put_nowait(
                    self._response(
                        watch_id=INVALID_WATCH_ID, created=True, canceled=True, cancel_reason=reason
                    )
                )
                return
        if range_end and range_end != b"\x00" and key >= range_end:
            self._refuse(ERR_EMPTY_RANGE)
            return
        watch_id = creq.watch_id
        if watch_id == 0:
            while self.next_id in self.watchers:
                self.next_id += 1
            watch_id = self.next_id
            self.next_id += 1
        elif watch_id in self.watchers:
            self._refuse(ERR_DUPLICATE_ID)
            return
        filters = set(creq.filters)
        revision = self.store.revision
        try:
            store_watcher = self.store.watch(
                key,
                range_end,
                creq.start_revision,
                prev_kv=creq.prev_kv,
                filter_put=_NOPUT in filters,
                filter_delete=_NODELETE in filters,
            )
        except StoreError as exc:
            self._refuse(exc.message)
            return
        watcher = _Watcher(watch_id, store_watcher, creq.progress_notify, creq.fragment)
        self.watchers[watch_id] = watcher
        # queued before the forwarding task can run, so "created" precedes every event
        self.out.put_nowait(self._response(revision, watch_id=watch_id, created=True))
        watcher.task = asyncio.create_task(self._forward(watcher))

    def _refuse(self, reason: str) -> None:
        self.out.put_nowait(
            self._response(watch_id=INVALID_WATCH_ID, created=True, canceled=True, cancel_reason=reason)
        )

    def _cancel(self, watch_id: int) -> None:
        watcher = self.watchers.pop(watch_id, None)
        if watcher is None:
            return  # etcd stays silent about unknown ids
        self._stop(watcher)
        self.out.put_nowait(self._response(watch_id=watch_id, canceled=True))

    @staticmethod
    def _stop(watcher: _Watcher) -> None:
        if watcher.task is not None:
            watcher.task.cancel()
        with contextlib.suppress(Exception):
            watcher.store_watcher.close()

    async def _settle(self, revision: int) -> None:
        """Wait until every watcher of this stream has queued all its events up to ``revision``.

        The store hands a committed revision's events to synced watchers in the same step that
        makes it visible, and our forwarding tasks queue whatever they are handed without
        pausing, so this only has to let the woken tasks run (and catching-up watchers read on)."""
        for _ in range(_SETTLE_MAX_ROUNDS):
            if all(_caught_up(w.store_watcher, revision) for w in self.watchers.values()):
                return
            await asyncio.sleep(0)
        log.warning("watch progress sent before all watchers caught up to revision %d", revision)

    async def _progress(self) -> None:
        revision = self.store.revision
        await self._settle(revision)
        self.out.put_nowait(self._response(revision, watch_id=INVALID_WATCH_ID))

    async def _progress_ticker(self) -> None:
        interval = self.service.watch_progress_interval
        if interval <= 0:
            return
        while True:
            await asyncio.sleep(interval)
            due = [w for w in self.watchers.values() if w.progress_notify]
            if not due:
                continue
            revision = self.store.revision
            await self._settle(revision)
            for watcher in due:
                if not watcher.got_events and self.watchers.get(watcher.id) is watcher:
                    self.out.put_nowait(self._response(revision, watch_id=watcher.id))
                watcher.got_events = False

    # ----------------------------------------------------------------- events

    async def _forward(self, watcher: _Watcher) -> None:
        store_watcher = watcher.store_watcher
        try:
            async for batch in store_watcher:
                if self.watchers.get(watcher.id) is not watcher:
                    return
                if batch:
                    watcher.got_events = True
                    self._send_events(watcher, batch)
            compact_revision = getattr(store_watcher, "compact_revision", 0)
            if compact_revision and self.watchers.get(watcher.id) is watcher:
                del self.watchers[watcher.id]
                self.out.put_nowait(
                    self._response(watch_id=watcher.id, canceled=True, compact_revision=compact_revision)
                )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("watcher %d failed", watcher.id)
            if self.watchers.pop(watcher.id, None) is watcher:
                self.out.put_nowait(
                    self._response(watch_id=watcher.id, canceled=True, cancel_reason=str(exc))
                )

    def _send_events(self, watcher: _Watcher, batch: list[Event]) -> None:
        resp = self._response(batch[-1].kv.mod_revision, watch_id=watcher.id)
        events = resp.events
        for ev in batch:
            _event_to_pb(ev, events.add())
        if len(batch) < 2 or resp.ByteSize() < self.max_bytes:
            self.out.put_nowait(resp)
        elif watcher.fragment:
            self._send_fragments(watcher, resp)
        else:
            self._send_by_revision(watcher, batch)

    def _send_fragments(self, watcher: _Watcher, whole: Any) -> None:
        """etcd's sendFragments: fill each response up to the limit (at least one event), mark
        all but the last with fragment=true."""
        events = list(whole.events)
        revision = whole.header.revision
        i = 0
        while i < len(events):
            part = self._response(revision, watch_id=watcher.id, fragment=True)
            size = part.ByteSize()
            while i < len(events):
                ev_size = events[i].ByteSize() + 4  # tag + length prefix, generously
                if len(part.events) >= 1 and size + ev_size >= self.max_bytes:
                    break
                part.events.append(events[i])
                size += ev_size
                i += 1
            if i == len(events):
                part.fragment = False
            self.out.put_nowait(part)

    def _send_by_revision(self, watcher: _Watcher, batch: list[Event]) -> None:
        """Split an oversized multi-revision batch at revision boundaries (never inside one)."""
        group: list[Event] = []
        size = 0
        for ev in batch:
            ev_size = len(ev.kv.key) + len(ev.kv.value) + 64
            if ev.prev_kv is not None:
                ev_size += len(ev.prev_kv.key) + len(ev.prev_kv.value) + 64
            new_revision = bool(group) and group[-1].kv.mod_revision != ev.kv.mod_revision
            if new_revision and size + ev_size >= self.max_bytes:
                self._send_group(watcher, group)
                group, size = [], 0
            group.append(ev)
            size += ev_size
        if group:
            self._send_group(watcher, group)

    def _send_group(self, watcher: _Watcher, group: list[Event]) -> None:
        resp = self._response(group[-1].kv.mod_revision, watch_id=watcher.id)
        for ev in group:
            _event_to_pb(ev, resp.events.add())
        self.out.put_nowait(resp)
