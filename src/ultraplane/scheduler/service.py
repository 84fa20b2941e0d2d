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
from ultraplane.scheduler.preemption import Candidate, Preemption
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
        self.pdbs: dict[str, Obj] = {}  # PodDisruptionBudgets by ns/name, for choosing victims
        self.preemption = Preemption(self.cache, self.pdbs, self.algorithm.random)
        self.deleting: set[str] = set()  # victims we asked to delete, until their delete event arrives
        self.preempted = 0
        self.informers = [
            self._informer("/api/v1/namespaces", {}, self._on_namespace, self._on_namespace, lambda o: None),
            self._informer("/api/v1/nodes", {}, self._on_node, self._on_node, self._on_node_delete),
            self._informer("/api/v1/pods", {"fieldSelector": "status.phase!=Succeeded,status.phase!=Failed"},
                           self._on_pod_add, self._on_pod_update, self._on_pod_delete),
            self._informer("/apis/policy/v1/poddisruptionbudgets", {}, self._on_pdb, self._on_pdb,
                           self._on_pdb_delete),
            # What PodTopologySpread's system defaults derive a pod's selector from (kube's DefaultSelector).
            *(self._workload_informer(path, kind) for path, kind in (
                ("/api/v1/services", "Service"), ("/api/v1/replicationcontrollers", "ReplicationController"),
                ("/apis/apps/v1/replicasets", "ReplicaSet"), ("/apis/apps/v1/statefulsets", "StatefulSet"))),
        ]

    def _informer(self, path: str, params: dict[str, str], on_add: Any, on_update: Any, on_delete: Any) -> Informer:
        informer = Informer(self.client, path, params)
        informer.add_handler(on_add, on_update, on_delete)
        return informer

    def _workload_informer(self, path: str, kind: str) -> Informer:
        return self._informer(path, {}, lambda obj: self.cache.upsert_workload(kind, obj),
                              lambda old, new: self.cache.upsert_workload(kind, new),
                              lambda obj: self.cache.remove_workload(kind, obj))

    # ---------------------------------------------------------------- informer handlers
    def _on_namespace(self, *objs: Obj) -> None:
        self.cache.upsert_namespace(objs[-1])

    def _on_node(self, *objs: Obj) -> None:
        self.cache.upsert_node(objs[-1])
        self._cluster_changed()

    def _on_pdb(self, *objs: Obj) -> None:
        meta = objs[-1].get("metadata") or {}
        self.pdbs[f"{meta.get('namespace', '')}/{meta.get('name', '')}"] = objs[-1]

    def _on_pdb_delete(self, obj: Obj) -> None:
        meta = obj.get("metadata") or {}
        self.pdbs.pop(f"{meta.get('namespace', '')}/{meta.get('name', '')}", None)

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
        self.deleting.discard(key)
        self.cache.unnominate(key)
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
            self.cache.unnominate(key)
            self.cache.upsert_pod(obj)
        elif key in self.cache.assumed:
            return  # our binding is in flight
        elif spec.get("schedulerName", DEFAULT_SCHEDULER_NAME) == self.name and not meta.get("deletionTimestamp"):
            pod = pod_info(obj)
            if pod.nominated_node and key not in self.cache.nominated_node:
                self.cache.nominate(pod, pod.nominated_node)  # e.g. nominated by a scheduler before a restart
            self.queue.add(pod)
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
                nominated = self._post_filter(pod, err)
                self._spawn(self._record_failure(pod, str(err), nominated))
                continue
            self.cache.unnominate(pod.key)
            self.cache.assume(pod, node)
            self.queue.done(pod.key)
            self._spawn(self._bind(pod, node))

    # ---------------------------------------------------------------- preemption (PostFilter)
    def _post_filter(self, pod: PodInfo, err: FitError) -> str | None:
        """Try preemption for a pod no node fits. Returns the nominatedNodeName to write ("" clears it), or None
        to leave it. Skipped (FitError derives the message) when no assigned pod has a lower priority."""
        nominated = self.cache.nominated_node.get(pod.key)
        if pod.preempt_never or (nominated is None and not self.cache.has_lower_priority(pod.priority)):
            return None
        why = self.preemption.ineligible(pod, self.deleting)
        if why is not None:
            err.post_filter = why
            return None
        candidate, message = self.preemption.find(pod)
        err.post_filter = message
        if candidate is None:
            self.cache.unnominate(pod.key)
            return "" if nominated else None
        self._preempt(pod, candidate)
        return candidate.node

    def _preempt(self, pod: PodInfo, candidate: Candidate) -> None:
        self.cache.nominate(pod, candidate.node)
        log.info("preempting %d pod(s) on %s for %s", len(candidate.victims), candidate.node, pod.key)
        for victim in candidate.victims:
            if victim.terminating or victim.key in self.deleting:
                continue  # its deletion already started
            self.deleting.add(victim.key)
            self._spawn(self._delete_victim(victim, pod, candidate.node))
        # Lower-priority pods nominated to this node may no longer fit there: drop their nomination.
        for other in list(self.cache.nominated.get(candidate.node, {}).values()):
            if other.priority < pod.priority:
                self.cache.unnominate(other.key)
                self._spawn(self._patch_status(other, {"nominatedNodeName": None}))

    async def _delete_victim(self, victim: PodInfo, preemptor: PodInfo, node: str) -> None:
        path = f"/api/v1/namespaces/{victim.namespace}/pods/{victim.name}"
        condition = {"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler",
                     "message": f"{self.name}: preempting to accommodate a higher priority pod",
                     "lastProbeTime": None, "lastTransitionTime": _now().strftime("%Y-%m-%dT%H:%M:%SZ")}
        async with self.bind_slots:
            try:
                await self.client.patch(f"{path}/status", {"status": {"conditions": [condition]}},
                                        content_type="application/strategic-merge-patch+json")
                await self.client.delete(path)
            except (TimeoutError, ApiError, OSError) as exc:
                if getattr(exc, "code", 0) == 404:
                    return  # already gone: the room is free
                log.warning("preempting %s failed: %s", victim.key, exc)
                self.deleting.discard(victim.key)
                self._cluster_changed()  # let the preemptor try again
                return
        self.preempted += 1
        await self._event(victim, "Normal", "Preempted", "Preempting",
                          f"Preempted by pod {preemptor.uid} on node {node}", related=preemptor)

    async def _patch_status(self, pod: PodInfo, status: Obj) -> None:
        async with self.event_slots:
            try:
                await self.client.patch(f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}/status",
                                        {"status": status}, content_type="application/strategic-merge-patch+json")
            except (TimeoutError, ApiError, OSError) as exc:
                log.debug("updating the status of %s failed: %s", pod.key, exc)

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

    async def _record_failure(self, pod: PodInfo, message: str, nominated: str | None = None) -> None:
        """FailedScheduling event and PodScheduled=False; ``nominated`` also sets (or with "" clears)
        status.nominatedNodeName in the same patch, as kube's failure handler does."""
        log.info("unable to schedule pod %s: %s", pod.key, message)
        await self._event(pod, "Warning", "FailedScheduling", "Scheduling", message)
        if self.last_failure.get(pod.key) == message and nominated is None:
            return  # the condition already says so (kube skips unchanged condition updates too)
        self.last_failure[pod.key] = message
        condition = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message,
                     "lastProbeTime": None, "lastTransitionTime": _now().strftime("%Y-%m-%dT%H:%M:%SZ")}
        status: Obj = {"conditions": [condition]}
        if nominated is not None:
            status["nominatedNodeName"] = nominated or None
        await self._patch_status(pod, status)

    async def _event(self, pod: PodInfo, kind: str, reason: str, action: str, note: str,
                     related: PodInfo | None = None) -> None:
        now = _now()
        event = {"apiVersion": "events.k8s.io/v1", "kind": "Event",
                 "metadata": {"name": f"{pod.name}.{time.time_ns():x}", "namespace": pod.namespace},
                 "eventTime": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "reportingController": self.name,
                 "reportingInstance": self.instance, "action": action, "reason": reason, "type": kind,
                 "note": note[:1024],
                 "regarding": {"apiVersion": "v1", "kind": "Pod", "namespace": pod.namespace, "name": pod.name,
                               "uid": pod.uid}}
        if related is not None:
            event["related"] = {"apiVersion": "v1", "kind": "Pod", "namespace": related.namespace,
                                "name": related.name, "uid": related.uid}
        async with self.event_slots:
            try:
                await self.client.create(f"/apis/events.k8s.io/v1/namespaces/{pod.namespace}/events", event)
            except (TimeoutError, ApiError, OSError) as exc:
                log.debug("recording event for %s failed: %s", pod.key, exc)
