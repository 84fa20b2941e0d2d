"""Informer: client-go's reflector + store + handlers, for one collection.

It lists, then watches from the list's resourceVersion with bookmarks, keeps every object in a dict
keyed "namespace/name" (or "name"), and calls the handlers for each change. A 410 Gone (or any ERROR
event) relists and turns the difference into add/update/delete calls, so handlers never miss a state,
as client-go's DeltaFIFO Replace does. Handlers may be plain functions or coroutines. An optional
`transform` (client-go's SetTransform) turns each object before it is stored and handed out, e.g. to keep
only its metadata.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
from collections.abc import Callable
from typing import Any

from ultraplane.client.http import ApiError, KubeClient

log = logging.getLogger("ultraplane.client.informer")
Obj = dict[str, Any]
Handler = Callable[..., Any]


def drop_managed_fields(obj: Obj) -> Obj:
    """A transform for caches whose readers never look at metadata.managedFields (often a third of an
    object): kube-controller-manager's informer factory drops them the same way."""
    (obj.get("metadata") or {}).pop("managedFields", None)
    return obj


def object_key(obj: Obj) -> str:
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace")
    return f"{namespace}/{meta.get('name', '')}" if namespace else meta.get("name", "")


class Informer:
    def __init__(self, client: KubeClient, path: str, params: dict[str, str] | None = None,
                 page_size: int = 0, transform: Callable[[Obj], Obj] | None = None) -> None:
        self.client = client
        self.transform = transform
        self.path = path
        self.params = dict(params or {})
        self.page_size = page_size
        self.store: dict[str, Obj] = {}
        self.handlers: list[tuple[Handler | None, Handler | None, Handler | None]] = []
        self.resource_version = ""
        self.synced = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.kind = ""  # from the list, e.g. "Pod", filled into items that lack it

    def add_handler(self, on_add: Handler | None = None, on_update: Handler | None = None,
                    on_delete: Handler | None = None) -> None:
        self.handlers.append((on_add, on_update, on_delete))

    async def start(self) -> None:
        if self.task is None:
            self.task = asyncio.ensure_future(self._run())

    async def wait_synced(self) -> None:
        waiter = asyncio.ensure_future(self.synced.wait())
        assert self.task is not None, "start() the informer first"
        done, _ = await asyncio.wait([waiter, self.task], return_when=asyncio.FIRST_COMPLETED)
        if self.task in done and not self.synced.is_set():
            waiter.cancel()
            self.task.result()  # raises what stopped it
        waiter.cancel()

    async def stop(self) -> None:
        if self.task is not None:
            # cancel until it ends: on Python < 3.12 asyncio.wait_for (under the client's requests) can
            # swallow a cancellation that lands as the answer arrives
            while not self.task.done():
                self.task.cancel()
                await asyncio.wait([self.task], timeout=1.0)
            if not self.task.cancelled():
                self.task.exception()  # retrieved, so asyncio does not log it as never retrieved
            self.task = None

    def get(self, key: str) -> Obj | None:
        return self.store.get(key)

    def list(self) -> list[Obj]:
        return list(self.store.values())

    # ------------------------------------------------------------------ reflector
    async def _run(self) -> None:
        backoff = 0.2
        need_list = True
        while True:
            try:
                if need_list:
                    await self._relist()
                    need_list = False
                    backoff = 0.2
                await self._watch()
            except asyncio.CancelledError:
                raise
            except ApiError as exc:
                if exc.code == 410:
                    need_list = True  # too old: the normal way out of a long disconnect
                    continue
                log.warning("%s: %s; retrying in %.1fs", self.path, exc, backoff)
                need_list = True
            except (OSError, ValueError) as exc:
                log.warning("%s: %s; retrying in %.1fs", self.path, exc, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _relist(self) -> None:
        params = dict(self.params)
        if self.page_size:
            params["limit"] = str(self.page_size)
        listed = await self.client.list(self.path, params)
        self.kind = (listed.get("kind") or "").removesuffix("List")
        api_version = listed.get("apiVersion", "")
        fresh: dict[str, Obj] = {}
        for item in listed.get("items") or []:
            if self.kind:
                item.setdefault("kind", self.kind)
                item.setdefault("apiVersion", api_version)
            if self.transform is not None:
                item = self.transform(item)
            fresh[object_key(item)] = item
        old = self.store
        self.store = fresh
        self.resource_version = (listed.get("metadata") or {}).get("resourceVersion", "")
        for key, obj in old.items():
            if key not in fresh:
                await self._dispatch(2, obj)
        for key, obj in fresh.items():
            previous = old.get(key)
            if previous is None:
                await self._dispatch(0, obj)
            elif (previous.get("metadata") or {}).get("resourceVersion") != (obj.get("metadata") or {}).get(
                    "resourceVersion"):
                await self._dispatch(1, previous, obj)
        self.synced.set()

    async def _watch(self) -> None:
        params = {**self.params, "resourceVersion": self.resource_version, "allowWatchBookmarks": "true",
                  "timeoutSeconds": str(random.randint(300, 600))}
        async for event in self.client.watch(self.path, params):
            kind = event.get("type")
            obj = event.get("object") or {}
            if kind == "ERROR":
                raise ApiError(obj)
            version = (obj.get("metadata") or {}).get("resourceVersion")
            if version:
                self.resource_version = version
            if kind == "BOOKMARK":
                continue
            if self.transform is not None:
                obj = self.transform(obj)
            key = object_key(obj)
            if kind == "ADDED" or kind == "MODIFIED":
                previous = self.store.get(key)
                self.store[key] = obj
                if previous is None:
                    await self._dispatch(0, obj)
                else:
                    await self._dispatch(1, previous, obj)
            elif kind == "DELETED":
                previous = self.store.pop(key, None)
                await self._dispatch(2, previous or obj)

    async def _dispatch(self, which: int, *objs: Obj) -> None:
        for handler_set in self.handlers:
            handler = handler_set[which]
            if handler is None:
                continue
            try:
                result = handler(*objs)
                if inspect.isawaitable(result):
                    await result
            except Exception:  # one bad handler must not stop the informer (client-go logs and goes on)
                log.exception("%s: handler failed", self.path)
