"""The running scheduler: informers feed the cache and queue; a loop decides in batches; bindings,
events and PodScheduled conditions go out asynchronously over the keep-alive client."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import socket
import time
from typing import Any

from ultraplane.client.http import ApiError, KubeClient
from ultraplane.client.informer import Informer
from ultraplane.scheduler.cache import ClusterCache
from ultraplane.scheduler.core import Algorithm, FitError
from ultraplane.scheduler.model import Obj, PodInfo, pod_info
from ultraplane.scheduler.queue import SchedulingQueue

log = logging.getLogger("ultraplane.scheduler")
DEFAULT_SCHEDULER_NAME = "default-scheduler"
BATCH_SIZE = 1024
MAX_INFLIGHT_BINDINGS = 128
MAX_INFLIGHT_EVENTS = 32
_IGNORED_META = ("resourceVersion", "managedFields", "generation")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _scheduling_relevant(obj: Obj) -> tuple[Any, ...]:
    """What an update must change for a parked pod to deserve another try (status does not count)."""
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k not in _IGNORED_META}
    return meta, obj.get("spec")


class Scheduler:
    def __init__(self, client: KubeClient, scheduler_name: str = DEFAULT_SCHEDULER_NAME,
                 percentage_of_nodes_to_score: int = 0, batch_size: int = BATCH_SIZE) -> None:
        self.client = client
        self.name = scheduler_name
        self.batch_size = batch_size
        self.cache = ClusterCache()
        self.queue = SchedulingQueue()
        self.algorithm = Algorithm(self.cache, percentage_of_nodes_to_score)
        self.instance = f"{scheduler_name}-{socket.gethostname()}"
        self.wake = asyncio.Event()
        self.bind_slots = asyncio.Semaphore(MAX_INFLIGHT_BINDINGS)
        self.event_slots = asyncio.Semaphore(MAX_INFLIGHT_EVENTS)
        self.tasks: set[asyncio.Task[None]] = set()
        self.bound = 0
        self.failed = 0
        self.last_failure: dict[str, str] = {}  # pod key -> PodScheduled message already written
        self.informers = [
            self._informer("/api/v1/namespaces", {}, self._on_namespace, self._on_namespace, lambda o: None),
            self._informer("/api/v1/nodes", {}, self._on_node, self._on_node, self._on_node_delete),
            self._informer("/api/v1/pods", {"fieldSelector": "status.phase!=Succeeded,status.phase!=Failed"},
                           self._on_pod_add, self._on_pod_update, self._on_pod_delete),
        ]

    def _informer(self, path: str, params: dict[str, str], on_add: Any, on_update: Any, on_delete: Any) -> Informer:
        informer = Informer(self.client, path, params)
        informer.add_handler(on_add, on_update, on_delete)
        return informer

    # ---------------------------------------------------------------- informer handlers
    def _on_namespace(self, *objs: Obj) -> None:
        self.cache.upsert_namespace(objs[-1])

    def _on_node(self, *objs: Obj) -> None:
        self.cache.upsert_node(objs[-1])
        self._cluster_changed()

    def _on_node_delete(self, obj: Obj) -> None:
        self.cache.remove_node((obj.get("metadata") or {}).get("name", ""))

    def _on_pod_add(self, obj: Obj) -> None:
        self._route_pod(obj)

    def _on_pod_update(self, old: Obj, new: Obj) -> None:
        spec = new.get("spec") or {}
        if not spec.get("nodeName") and _scheduling_relevant(old) == _scheduling_relevant(new):
            return  # e.g. our own PodScheduled=False status patch
        self._route_pod(new)

    def _on_pod_delete(self, obj: Obj) -> None:
        meta = obj.get("metadata") or {}
        key = f"{meta.get('namespace', '')}/{meta.get('name', '')}"
        self.queue.delete(key)
        self.last_failure.pop(key, None)
        if key in self.cache.pods:
            self.cache.remove_pod(key)
            self._cluster_changed()

    def _route_pod(self, obj: Obj) -> None:
        meta = obj.get("metadata") or {}
        spec = obj.get("spec") or {}
        key = f"{meta.get('namespace', '')}/{meta.get('name', '')}"
        if spec.get("nodeName"):
            self.queue.delete(key)
            self.last_failure.pop(key, None)
            self.cache.upsert_pod(obj)
        elif key in self.cache.assumed:
            return  # our binding is in flight
        elif spec.get("schedulerName", DEFAULT_SCHEDULER_NAME) == self.name and not meta.get("deletionTimestamp"):
            self.queue.add(pod_info(obj))
            self.wake.set()

    def _cluster_changed(self) -> None:
        self.queue.cluster_changed()
        self.wake.set()

    # ---------------------------------------------------------------- the scheduling loop
    async def run(self, stop: asyncio.Event) -> None:
        for informer in self.informers:
            await informer.start()
        for informer in self.informers:
            await informer.wait_synced()
        log.info("scheduler %s synced: %d nodes, %d pending pods", self.name, len(self.cache.nodes), len(self.queue))
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                batch = self.queue.pop_batch(self.batch_size)
                if not batch:
                    self.wake.clear()
                    waker = asyncio.ensure_future(self.wake.wait())
                    await asyncio.wait([waker, stopping], timeout=self.queue.next_wakeup() or 1.0,
                                       return_when=asyncio.FIRST_COMPLETED)
                    waker.cancel()
                    continue
                self.schedule_batch(batch)
                await asyncio.sleep(0)  # let informer events and bindings run between batches
        finally:
            stopping.cancel()
            for informer in self.informers:
                await informer.stop()
            if self.tasks:
                await asyncio.gather(*self.tasks, return_exceptions=True)

    def schedule_batch(self, batch: list[PodInfo]) -> None:
        for pod in batch:
            if pod.key in self.cache.pods:
                self.queue.done(pod.key)
                continue
            try:
                node = self.algorithm.schedule(pod)
            except FitError as err:
                self.failed += 1
                self.queue.unschedulable(pod)
                self._spawn(self._record_failure(pod, str(err)))
                continue
            self.cache.assume(pod, node)
            self.queue.done(pod.key)
            self._spawn(self._bind(pod, node))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _bind(self, pod: PodInfo, node: str) -> None:
        body = {"apiVersion": "v1", "kind": "Binding",
                "metadata": {"name": pod.name, "namespace": pod.namespace, "uid": pod.uid},
                "target": {"apiVersion": "v1", "kind": "Node", "name": node}}
        async with self.bind_slots:
            try:
                await self.client.create(f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}/binding", body)
            except (TimeoutError, ApiError, OSError) as exc:
                log.warning("binding %s to %s failed: %s", pod.key, node, exc)
                self.cache.forget(pod.key)
                code = getattr(exc, "code", 0)
                if code != 404 and code != 409:  # gone, or already bound by someone: nothing to retry
                    self.queue.add(pod)
                    self.queue.retry(pod)
                self._cluster_changed()
                return
        self.bound += 1
        await self._event(pod, "Normal", "Scheduled", "Binding",
                          f"Successfully assigned {pod.namespace}/{pod.name} to {node}")

    async def _record_failure(self, pod: PodInfo, message: str) -> None:
        log.info("unable to schedule pod %s: %s", pod.key, message)
        await self._event(pod, "Warning", "FailedScheduling", "Scheduling", message)
        if self.last_failure.get(pod.key) == message:
            return  # the condition already says so (kube skips unchanged condition updates too)
        self.last_failure[pod.key] = message
        condition = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message,
                     "lastProbeTime": None, "lastTransitionTime": _now().strftime("%Y-%m-%dT%H:%M:%SZ")}
        async with self.event_slots:
            try:
                await self.client.patch(f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}/status",
                                        {"status": {"conditions": [condition]}},
                                        content_type="application/strategic-merge-patch+json")
            except (TimeoutError, ApiError, OSError) as exc:
                log.debug("updating PodScheduled of %s failed: %s", pod.key, exc)

    async def _event(self, pod: PodInfo, kind: str, reason: str, action: str, note: str) -> None:
        now = _now()
        event = {"apiVersion": "events.k8s.io/v1", "kind": "Event",
                 "metadata": {"name": f"{pod.name}.{time.time_ns():x}", "namespace": pod.namespace},
                 "eventTime": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "reportingController": self.name,
                 "reportingInstance": self.instance, "action": action, "reason": reason, "type": kind,
                 "note": note[:1024],
                 "regarding": {"apiVersion": "v1", "kind": "Pod", "namespace": pod.namespace, "name": pod.name,
                               "uid": pod.uid}}
        async with self.event_slots:
            try:
                await self.client.create(f"/apis/events.k8s.io/v1/namespaces/{pod.namespace}/events", event)
            except (TimeoutError, ApiError, OSError) as exc:
                log.debug("recording event for %s failed: %s", pod.key, exc)
