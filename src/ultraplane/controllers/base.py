"""What every controller shares: informers per collection, and a work queue of object keys.

As in kube-controller-manager, controllers share one informer per collection (`InformerFactory`), turn
informer events into keys on a de-duplicating, rate-limited `WorkQueue`, and reconcile each key in a
`sync(key)` that reads the informers' caches and writes through the API server. A key is never worked
on by two workers at once; a failed sync is retried with per-key exponential backoff.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ultraplane.client.http import KubeClient
from ultraplane.client.informer import Informer, drop_managed_fields, object_key

log = logging.getLogger("ultraplane.controllers")
Obj = dict[str, Any]


class InformerFactory:
    """One shared informer per (path, params); start them all, then wait until all have listed."""

    def __init__(self, client: KubeClient) -> None:
        self.client = client
        self.informers: dict[tuple[str, tuple[tuple[str, str], ...]], Informer] = {}

    def informer(self, path: str, params: dict[str, str] | None = None) -> Informer:
        key = (path, tuple(sorted((params or {}).items())))
        found = self.informers.get(key)
        if found is None:  # no controller reads managedFields: they stay out of the caches, as in kube
            found = self.informers[key] = Informer(self.client, path, params, transform=drop_managed_fields)
        return found

    async def start(self) -> None:
        for informer in self.informers.values():
            await informer.start()

    async def wait_synced(self) -> None:
        await asyncio.gather(*(i.wait_synced() for i in self.informers.values()))

    async def stop(self) -> None:
        await asyncio.gather(*(i.stop() for i in self.informers.values()))


class WorkQueue:
    """client-go's rate-limited work queue: a key queued twice is worked once; a key being worked on and
    queued again is worked again after the current sync ends."""

    def __init__(self, base_delay: float = 0.005, max_delay: float = 60.0) -> None:
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self.dirty: set[str] = set()
        self.processing: set[str] = set()
        self.failures: dict[str, int] = {}
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.timers: dict[str, asyncio.TimerHandle] = {}

    def add(self, key: str) -> None:
        if key in self.dirty:
            return
        self.dirty.add(key)
        if key not in self.processing:
            self.queue.put_nowait(key)

    def add_after(self, key: str, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        timer = self.timers.get(key)
        when = asyncio.get_running_loop().time() + delay
        if timer is not None:
            if timer.when() <= when:
                return  # an earlier wake-up is already set
            timer.cancel()
        self.timers[key] = asyncio.get_running_loop().call_at(when, self._fire, key)

    def _fire(self, key: str) -> None:
        self.timers.pop(key, None)
        self.add(key)

    def add_rate_limited(self, key: str) -> None:
        failures = self.failures.get(key, 0)
        self.failures[key] = failures + 1
        self.add_after(key, min(self.base_delay * (2 ** failures), self.max_delay))

    def forget(self, key: str) -> None:
        self.failures.pop(key, None)

    async def get(self) -> str:
        key = await self.queue.get()
        self.dirty.discard(key)
        self.processing.add(key)
        return key

    def done(self, key: str) -> None:
        self.processing.discard(key)
        if key in self.dirty:
            self.queue.put_nowait(key)

    def __len__(self) -> int:
        return self.queue.qsize()

    def shutdown(self) -> None:
        for timer in self.timers.values():
            timer.cancel()
        self.timers.clear()


class Controller:
    """A reconcile loop over one work queue. Subclasses set `name`, register informer handlers in
    `__init__` (enqueueing keys) and implement `sync(key)`."""

    name = "controller"
    workers = 4

    def __init__(self, client: KubeClient, informers: InformerFactory) -> None:
        self.client = client
        self.informers = informers
        self.queue = WorkQueue()

    async def sync(self, key: str) -> None:
        raise NotImplementedError

    def enqueue(self, obj: Obj) -> None:
        self.queue.add(object_key(obj))

    async def run(self, stop: asyncio.Event) -> None:
        workers = [asyncio.ensure_future(self._worker()) for _ in range(self.workers)]
        try:
            await stop.wait()
        finally:
            pending = set(workers)
            while pending:
                for worker in pending:
                    worker.cancel()
                # re-cancel what is still running: on Python < 3.12 asyncio.wait_for (under the client's
                # requests) can swallow a cancellation that lands as the answer arrives
                _, pending = await asyncio.wait(pending, timeout=1.0)
            self.queue.shutdown()

    async def _worker(self) -> None:
        while True:
            key = await self.queue.get()
            started = time.monotonic()
            try:
                await self.sync(key)
                self.queue.forget(key)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # retried with backoff, as client-go's HandleError + AddRateLimited
                log.warning("%s: syncing %r failed (%.0f ms): %s", self.name, key,
                            (time.monotonic() - started) * 1000, exc)
                self.queue.add_rate_limited(key)
            finally:
                self.queue.done(key)


# A factory from (client, informers) to a controller; the manager's registry maps names to these.
ControllerFactory = Callable[[KubeClient, InformerFactory], Controller]
Starter = Callable[[asyncio.Event], Awaitable[None]]
