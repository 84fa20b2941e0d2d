"""The taint manager part of the node lifecycle controller (kube's tainteviction.Controller, which runs
inside the node lifecycle controller unless SeparateTaintEvictionController is on).

It indexes bound, non-terminal pods by node and, when a node has NoExecute taints, evicts each pod once its
matching toleration's tolerationSeconds have passed since the taint was seen (at once when nothing
tolerates a taint; never when a toleration has no tolerationSeconds): the DisruptionTarget condition
(DeletionByTaintManager), then a delete with a uid precondition and a TaintManagerEviction event. A node
losing its NoExecute taints cancels its pending evictions.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any

from ultraplane.client.http import ApiError, KubeClient
from ultraplane.controllers.podcontrol import EventRecorder

log = logging.getLogger("ultraplane.controllers.nodelifecycle")
Obj = dict[str, Any]


def rfc3339(at: dt.datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def tolerates(toleration: Obj, taint: Obj) -> bool:
    if toleration.get("effect") and toleration["effect"] != taint.get("effect"):
        return False
    if toleration.get("operator") == "Exists":
        return not toleration.get("key") or toleration["key"] == taint.get("key")
    return toleration.get("key") == taint.get("key") and (toleration.get("value") or "") == (taint.get("value") or "")


def eviction_delay(pod: Obj, taints: list[Obj]) -> float | None:
    """Seconds a pod may stay after the NoExecute taints (None: forever; 0: evict at once)."""
    delay: float | None = None
    for taint in taints:
        if taint.get("effect") != "NoExecute":
            continue
        matching = [t for t in (pod.get("spec") or {}).get("tolerations") or [] if tolerates(t, taint)]
        if not matching:
            return 0.0
        limits = [t.get("tolerationSeconds") for t in matching]
        if any(x is None for x in limits):
            continue
        seconds = max(0.0, float(min(limits)))  # type: ignore[type-var]
        delay = seconds if delay is None else min(delay, seconds)
    return delay


class TaintManager:
    def __init__(self, client: KubeClient) -> None:
        self.client = client
        self.pods_by_node: dict[str, dict[str, Obj]] = {}  # node -> uid -> pod (the shared informer's objects)
        self.evictions: dict[str, asyncio.TimerHandle] = {}
        self.evicted = 0
        self.events = EventRecorder(client, "taint-eviction-controller")

    def pods_on(self, node: str) -> list[Obj]:
        return list(self.pods_by_node.get(node, {}).values())

    def cancel_all(self) -> None:
        for handle in self.evictions.values():
            handle.cancel()
        self.evictions.clear()  # a restarted run schedules them again

    def on_pod(self, pod: Obj, old: Obj | None = None) -> None:
        node = (pod.get("spec") or {}).get("nodeName", "")
        if old is not None and (old.get("spec") or {}).get("nodeName", "") != node:
            self.on_pod_deleted(old)
        if not node:
            return
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            self.on_pod_deleted(pod)
            return
        self.pods_by_node.setdefault(node, {})[pod["metadata"].get("uid", "")] = pod

    def on_pod_deleted(self, pod: Obj) -> None:
        node = (pod.get("spec") or {}).get("nodeName", "")
        uid = pod["metadata"].get("uid", "")
        pods = self.pods_by_node.get(node)
        if pods is not None:
            pods.pop(uid, None)
            if not pods:
                del self.pods_by_node[node]
        handle = self.evictions.pop(uid, None)
        if handle is not None:
            handle.cancel()

    def schedule(self, name: str, node: Obj) -> None:
        """(Re)consider the pods of a node whose NoExecute taints are as `node` says."""
        taints = [t for t in (node.get("spec") or {}).get("taints") or [] if t.get("effect") == "NoExecute"]
        pods = self.pods_by_node.get(name, {})
        if not taints:
            for uid in pods:
                handle = self.evictions.pop(uid, None)
                if handle is not None:  # the node came back before the pod's time ran out
                    handle.cancel()
            return
        loop = asyncio.get_running_loop()
        for uid, pod in list(pods.items()):
            if uid in self.evictions or pod["metadata"].get("deletionTimestamp"):
                continue
            delay = eviction_delay(pod, taints)
            if delay is None:
                continue
            # kube's taint manager counts a pod's toleration from when it saw the taint (timeAdded only
            # has whole seconds): this is that moment, as a scheduled eviction is never pushed later
            self.evictions[uid] = loop.call_later(delay, lambda p=pod: asyncio.ensure_future(self.evict(p)))

    async def evict(self, pod: Obj) -> None:
        meta = pod["metadata"]
        self.evictions.pop(meta.get("uid", ""), None)
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
        try:
            await self.client.patch(path + "/status", {"status": {"conditions": [
                *[c for c in (pod.get("status") or {}).get("conditions") or [] if c.get("type") != "DisruptionTarget"],
                {"type": "DisruptionTarget", "status": "True", "reason": "DeletionByTaintManager",
                 "message": "Taint manager: deleting due to NoExecute taint",
                 "lastTransitionTime": rfc3339(dt.datetime.now(dt.UTC))}]}})
            await self.client.delete(path, {"apiVersion": "v1", "kind": "DeleteOptions",
                                            "preconditions": {"uid": meta.get("uid")}})
            self.evicted += 1
            self.events.event({"apiVersion": "v1", "kind": "Pod", **pod}, "Normal", "TaintManagerEviction",
                              f"Marking for deletion Pod {meta['namespace']}/{meta['name']}")
            log.info("evicted pod %s/%s from tainted node %s", meta["namespace"], meta["name"],
                     pod["spec"].get("nodeName"))
        except ApiError as exc:
            if exc.code not in (404, 409):
                log.warning("evicting %s/%s: %s", meta["namespace"], meta["name"], exc)
