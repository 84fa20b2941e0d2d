"""The pod garbage collector: pods of vanished nodes, terminated pods above a threshold, stuck deletions.

As kube-controller-manager's, every 20 s (gcCheckPeriod):

* terminated pods (Succeeded / Failed) beyond --terminated-pod-gc-threshold are deleted, oldest first;
* pods bound to a node that does not exist are deleted once the node has been missing for the
  quarantine time (40 s) and a live GET confirms it: first the DisruptionTarget condition
  (DeletionByPodGC, "PodGC: node no longer exists") and phase Failed, then a delete with grace 0;
* terminating pods that were never scheduled are deleted with grace 0 (no kubelet will finish them).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from typing import Any

from ultraplane.client.http import ApiError, KubeClient
from ultraplane.controllers.base import InformerFactory

log = logging.getLogger("ultraplane.controllers.podgc")
Obj = dict[str, Any]
CHECK_PERIOD_S = 20.0
QUARANTINE_S = 40.0


class PodGC:
    name = "podgc"

    def __init__(self, client: KubeClient, informers: InformerFactory, threshold: int = 12500,
                 period: float = CHECK_PERIOD_S, quarantine: float = QUARANTINE_S) -> None:
        self.client = client
        self.pods = informers.informer("/api/v1/pods")
        self.nodes = informers.informer("/api/v1/nodes")
        self.threshold = threshold
        self.period = period
        self.quarantine = quarantine
        self.missing_since: dict[str, float] = {}  # node name -> when first seen missing
        self.deleted = 0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.gc()
            except (ApiError, OSError) as exc:
                log.warning("pod gc: %s", exc)
            try:
                await asyncio.wait_for(stop.wait(), self.period)
            except TimeoutError:
                pass

    async def gc(self) -> None:
        pods = list(self.pods.store.values())
        if self.threshold > 0:
            await self.gc_terminated(pods)
        await self.gc_orphaned(pods)
        await self.gc_unscheduled_terminating(pods)

    async def gc_terminated(self, pods: list[Obj]) -> None:
        terminated = [p for p in pods if (p.get("status") or {}).get("phase") in ("Succeeded", "Failed")
                      and not p["metadata"].get("deletionTimestamp")]
        excess = len(terminated) - self.threshold
        if excess <= 0:
            return
        terminated.sort(key=lambda p: (p["metadata"].get("creationTimestamp") or "", p["metadata"]["name"]))
        log.info("garbage collecting %d terminated pods", excess)
        for pod in terminated[:excess]:
            await self.delete(pod, grace=None)

    async def gc_orphaned(self, pods: list[Obj]) -> None:
        now = time.monotonic()
        bound_to = {(p.get("spec") or {}).get("nodeName") for p in pods} - {None, ""}
        for node in list(self.missing_since):
            if node not in bound_to or node in self.nodes.store:
                del self.missing_since[node]
        gone: set[str] = set()
        for node in bound_to:
            if node in self.nodes.store:
                continue
            since = self.missing_since.setdefault(node, now)
            if now - since < self.quarantine:
                continue
            try:
                await self.client.get(f"/api/v1/nodes/{node}")
                continue  # the cache lags: the node exists
            except ApiError as exc:
                if exc.code != 404:
                    raise
            gone.add(node)
        for pod in pods:
            if (pod.get("spec") or {}).get("nodeName") in gone:
                log.info("pod %s/%s: node %s no longer exists", pod["metadata"].get("namespace"),
                         pod["metadata"]["name"], pod["spec"]["nodeName"])
                await self.mark_failed(pod, "DeletionByPodGC", "PodGC: node no longer exists")
                await self.delete(pod, grace=0)

    async def gc_unscheduled_terminating(self, pods: list[Obj]) -> None:
        for pod in pods:
            if pod["metadata"].get("deletionTimestamp") and not (pod.get("spec") or {}).get("nodeName"):
                await self.delete(pod, grace=0)

    async def mark_failed(self, pod: Obj, reason: str, message: str) -> None:
        meta = pod["metadata"]
        status = pod.get("status") or {}
        conditions = [c for c in status.get("conditions") or [] if c.get("type") != "DisruptionTarget"]
        conditions.append({"type": "DisruptionTarget", "status": "True", "reason": reason, "message": message,
                           "lastTransitionTime": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")})
        patch: Obj = {"status": {"conditions": conditions}}
        if status.get("phase") not in ("Succeeded", "Failed"):
            patch["status"]["phase"] = "Failed"
        try:
            await self.client.patch(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status", patch)
        except ApiError as exc:
            if exc.code != 404:
                raise

    async def delete(self, pod: Obj, grace: int | None) -> None:
        meta = pod["metadata"]
        options: Obj = {"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": {"uid": meta.get("uid")}}
        if grace is not None:
            options["gracePeriodSeconds"] = grace
        try:
            await self.client.delete(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}", options)
            self.deleted += 1
        except ApiError as exc:
            if exc.code not in (404, 409):
                raise


def pod_gc(client: KubeClient, informers: InformerFactory, options: Any) -> PodGC:
    return PodGC(client, informers, options.terminated_pod_gc_threshold)
