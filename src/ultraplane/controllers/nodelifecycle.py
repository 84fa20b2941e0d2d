"""The node lifecycle controller: nodes that stop heartbeating turn NotReady, get taints, lose their pods.

As kube-controller-manager's: every monitor period it checks each node's last heartbeat (its Lease's
renewTime or its Ready condition's lastHeartbeatTime, whichever it saw change last); after the grace
period the node's kubelet conditions turn Unknown ("Kubelet stopped posting node status."), its pods'
Ready condition turns False, and it gets the `node.kubernetes.io/unreachable` NoSchedule and NoExecute
taints (`not-ready` for a node that says Ready=False). The NoExecute taint evicts each pod on the node
once its matching toleration's tolerationSeconds have run out (DefaultTolerationSeconds gives every pod
300 s), or at once when nothing tolerates it. A node that comes back loses the taints.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from typing import Any

from ultraplane.client.http import MERGE, ApiError, KubeClient
from ultraplane.controllers.podcontrol import EventRecorder

log = logging.getLogger("ultraplane.controllers.nodelifecycle")
Obj = dict[str, Any]
UNREACHABLE = "node.kubernetes.io/unreachable"
NOT_READY = "node.kubernetes.io/not-ready"
KUBELET_CONDITIONS = ("Ready", "MemoryPressure", "DiskPressure", "PIDPressure")


def rfc3339(at: dt.datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def ready_status(node: Obj) -> str | None:
    for cond in (node.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return cond.get("status")
    return None


def unknown_conditions(node: Obj, now: dt.datetime) -> list[Obj]:
    """The kubelet's conditions turned Unknown (heartbeat times kept, transition now)."""
    stamp = rfc3339(now)
    conditions = [dict(c) for c in (node.get("status") or {}).get("conditions") or []]
    seen = {c.get("type") for c in conditions}
    for cond in conditions:
        if cond.get("type") in KUBELET_CONDITIONS and cond.get("status") != "Unknown":
            cond.update(status="Unknown", reason="NodeStatusUnknown", message="Kubelet stopped posting node status.",
                        lastTransitionTime=stamp)
    for kind in KUBELET_CONDITIONS:
        if kind not in seen:
            conditions.append({"type": kind, "status": "Unknown", "reason": "NodeStatusNeverUpdated",
                               "message": "Kubelet never posted node status.", "lastHeartbeatTime": stamp,
                               "lastTransitionTime": stamp})
    return conditions


def wanted_taints(node: Obj, now: dt.datetime) -> list[Obj]:
    """The node's taints with the lifecycle ones matching its Ready condition (others untouched)."""
    status = ready_status(node)
    key = UNREACHABLE if status == "Unknown" else NOT_READY if status == "False" else None
    current = list((node.get("spec") or {}).get("taints") or [])
    kept = [t for t in current if t.get("key") not in (UNREACHABLE, NOT_READY) or t.get("key") == key]
    if key is not None:
        for effect in ("NoSchedule", "NoExecute"):
            if not any(t.get("key") == key and t.get("effect") == effect for t in kept):
                taint = {"key": key, "effect": effect}
                if effect == "NoExecute":
                    taint["timeAdded"] = rfc3339(now)
                kept.append(taint)
    return kept


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


class NodeLifecycleController:
    def __init__(self, client: KubeClient, grace_period: float = 40.0, monitor_period: float = 5.0) -> None:
        self.client = client
        self.grace = grace_period
        self.period = monitor_period
        self.nodes: dict[str, Obj] = {}
        self.heartbeats: dict[str, tuple[str, float]] = {}  # node -> (last heartbeat marker, when we saw it change)
        self.pods_by_node: dict[str, dict[str, Obj]] = {}  # node -> uid -> pod
        self.evictions: dict[str, asyncio.TimerHandle] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self.evicted = 0
        # kube's recorders: node-controller for node status changes, taint-eviction-controller for evictions
        self.node_events = EventRecorder(client, "node-controller")
        self.eviction_events = EventRecorder(client, "taint-eviction-controller")

    async def run(self, stop: asyncio.Event) -> None:
        self.tasks = [asyncio.create_task(self._follow("/api/v1/nodes", {}, self._on_node)),
                      asyncio.create_task(self._follow("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                                                       {}, self._on_lease)),
                      asyncio.create_task(self._follow("/api/v1/pods", {"fieldSelector": "spec.nodeName!="},
                                                       self._on_pod))]
        try:
            while not stop.is_set():
                try:
                    await self.monitor()
                except ApiError as exc:
                    log.warning("node monitor: %s", exc)
                try:
                    await asyncio.wait_for(stop.wait(), self.period)
                except TimeoutError:
                    pass
        finally:
            for task in self.tasks:
                task.cancel()
            for handle in self.evictions.values():
                handle.cancel()

    async def _follow(self, path: str, params: dict[str, str], handle: Any) -> None:
        """List, then watch from the list's resourceVersion; relist when the watch ends badly."""
        while True:
            try:
                listed = await self.client.list(path, params)
                for item in listed["items"]:
                    handle("ADDED", item)
                version = listed["metadata"]["resourceVersion"]
                while True:
                    async for event in self.client.watch(path, {**params, "resourceVersion": version,
                                                                 "allowWatchBookmarks": "true"}):
                        if event.get("type") == "ERROR":
                            raise ApiError(event.get("object") or {})
                        obj = event.get("object") or {}
                        version = (obj.get("metadata") or {}).get("resourceVersion", version)
                        if event.get("type") != "BOOKMARK":
                            handle(event["type"], obj)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # 410 Gone or a broken connection: start over from a list
                log.debug("relisting %s: %s", path, exc)
                await asyncio.sleep(0.5)

    def _saw(self, name: str, marker: str) -> None:
        previous = self.heartbeats.get(name)
        if previous is None or previous[0] != marker:
            self.heartbeats[name] = (marker, time.monotonic())

    def _on_node(self, kind: str, node: Obj) -> None:
        name = node["metadata"]["name"]
        if kind == "DELETED":
            self.nodes.pop(name, None)
            self.heartbeats.pop(name, None)
            return
        self.nodes[name] = node
        for cond in (node.get("status") or {}).get("conditions") or []:
            if cond.get("type") == "Ready" and cond.get("status") != "Unknown":
                self._saw(name, "status:" + str(cond.get("lastHeartbeatTime")))
        if name not in self.heartbeats:
            self.heartbeats[name] = ("", time.monotonic())  # grace starts when we first see the node

    def _on_lease(self, kind: str, lease: Obj) -> None:
        if kind != "DELETED":
            self._saw(lease["metadata"]["name"], "lease:" + str((lease.get("spec") or {}).get("renewTime")))

    def _on_pod(self, kind: str, pod: Obj) -> None:
        node = (pod.get("spec") or {}).get("nodeName", "")
        uid = pod["metadata"].get("uid", "")
        if kind == "DELETED" or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            self.pods_by_node.get(node, {}).pop(uid, None)
            handle = self.evictions.pop(uid, None)
            if handle is not None:
                handle.cancel()
            return
        self.pods_by_node.setdefault(node, {})[uid] = pod

    async def monitor(self) -> None:
        now_mono = time.monotonic()
        now = dt.datetime.now(dt.UTC)
        for name, node in list(self.nodes.items()):
            seen = self.heartbeats.get(name)
            stale = seen is not None and now_mono - seen[1] > self.grace
            ready = ready_status(node)
            if stale and ready != "Unknown":
                node = await self._patch_node_status(name, {"status": {"conditions": unknown_conditions(node, now)}})
                # kube names the node by its name as uid in these events (RecordNodeStatusChange)
                self.node_events.event({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "uid": name}},
                                       "Normal", "NodeNotReady", f"Node {name} status is now: NodeNotReady")
                await self._mark_pods_not_ready(name, now)
            taints = wanted_taints(node, now)
            if taints != list((node.get("spec") or {}).get("taints") or []):
                node = await self._patch_node(name, {"spec": {"taints": taints}})
            self._schedule_evictions(name, node)

    async def _patch_node_status(self, name: str, patch: Obj) -> Obj:
        node = await self.client.patch(f"/api/v1/nodes/{name}/status", patch)
        self.nodes[name] = node
        log.info("node %s: Ready=Unknown (kubelet stopped posting node status)", name)
        return node

    async def _patch_node(self, name: str, patch: Obj) -> Obj:
        # a merge patch replaces the taint list as a whole (kube's taints have no merge key)
        node = await self.client.patch(f"/api/v1/nodes/{name}", patch, content_type=MERGE)
        self.nodes[name] = node
        return node

    async def _mark_pods_not_ready(self, name: str, now: dt.datetime) -> None:
        stamp = rfc3339(now)
        for pod in list(self.pods_by_node.get(name, {}).values()):
            conditions = [dict(c) for c in (pod.get("status") or {}).get("conditions") or []]
            changed = False
            for cond in conditions:
                if cond.get("type") == "Ready" and cond.get("status") != "False":
                    cond.update(status="False", lastTransitionTime=stamp)
                    changed = True
            if changed:
                meta = pod["metadata"]
                try:
                    await self.client.patch(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status",
                                            {"status": {"conditions": conditions}})
                except ApiError as exc:
                    if exc.code != 404:
                        raise

    def _schedule_evictions(self, name: str, node: Obj) -> None:
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
            added = min((parse_time(t.get("timeAdded")) or time.time()) for t in taints)
            wait = max(0.0, added + delay - time.time())
            self.evictions[uid] = loop.call_later(wait, lambda p=pod: asyncio.ensure_future(self._evict(p)))

    async def _evict(self, pod: Obj) -> None:
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
            self.eviction_events.event({"apiVersion": "v1", "kind": "Pod", **pod}, "Normal", "TaintManagerEviction",
                                       f"Marking for deletion Pod {meta['namespace']}/{meta['name']}")
            log.info("evicted pod %s/%s from tainted node %s", meta["namespace"], meta["name"],
                     pod["spec"].get("nodeName"))
        except ApiError as exc:
            if exc.code not in (404, 409):
                log.warning("evicting %s/%s: %s", meta["namespace"], meta["name"], exc)


def node_lifecycle(client: KubeClient, _informers: Any, options: Any) -> NodeLifecycleController:
    """The registry's factory: the controller follows its own collections (nodes, leases, bound pods)."""
    return NodeLifecycleController(client, options.node_monitor_grace_period, options.node_monitor_period)
