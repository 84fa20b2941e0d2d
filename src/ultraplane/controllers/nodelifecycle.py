"""The node lifecycle controller: nodes that stop heartbeating turn NotReady, get taints, lose their pods.

As kube-controller-manager's: every monitor period it checks each node's last heartbeat (its Lease's
renewTime or its Ready condition's lastHeartbeatTime, whichever it saw change last); after the grace
period the node's kubelet conditions turn Unknown ("Kubelet stopped posting node status."), its pods'
Ready condition turns False. Taints follow the conditions:

* NoSchedule (kube's doNoScheduleTaintingPass, on every node change): `unreachable` / `not-ready` for
  Ready=Unknown / False, the pressure and network conditions' taints, and `unschedulable` for a cordoned node.
* NoExecute `unreachable` / `not-ready` (taint-based eviction): a node seen not Ready is queued in its
  zone's rate-limited queue, and a pass every 100 ms taints queued nodes as the zone's limiter allows
  (`--node-eviction-rate`). Each monitor pass computes every zone's state from its nodes' Ready conditions
  (`nodezones.py`) and sets the limiter as kube's handleDisruption does: Normal and FullDisruption zones
  at the eviction rate, PartialDisruption ones at `--secondary-node-eviction-rate` (0 in zones of at most
  `--large-cluster-size-threshold` nodes); when every zone is fully disrupted the controller enters "master
  disruption mode": it removes the NoExecute taints and stops tainting until some node is Ready again.
* The taint manager (`tainteviction.py`) evicts each pod on a NoExecute-tainted node once its matching
  toleration's tolerationSeconds have run out (DefaultTolerationSeconds gives every pod 300 s), or at once
  when nothing tolerates it. A node that comes back loses the taints.

Nodes, node Leases and pods come from the controller manager's shared informers, so the pods are not
cached twice in the process.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from typing import Any

from ultraplane.client.http import MERGE, ApiError, KubeClient
from ultraplane.controllers.base import InformerFactory
from ultraplane.controllers.nodezones import (
    EVICTION_PERIOD,
    FULL,
    INITIAL,
    NORMAL,
    PARTIAL,
    RateLimitedQueue,
    compute_zone_state,
    printable_zone,
    zone_key,
)
from ultraplane.controllers.podcontrol import EventRecorder
from ultraplane.controllers.tainteviction import TaintManager, rfc3339

log = logging.getLogger("ultraplane.controllers.nodelifecycle")
Obj = dict[str, Any]
UNREACHABLE = "node.kubernetes.io/unreachable"
NOT_READY = "node.kubernetes.io/not-ready"
UNSCHEDULABLE = "node.kubernetes.io/unschedulable"
KUBELET_CONDITIONS = ("Ready", "MemoryPressure", "DiskPressure", "PIDPressure")
# kube's nodeConditionToTaintKeyStatusMap: (condition, status) -> NoSchedule taint key
CONDITION_TAINTS = {("Ready", "False"): NOT_READY, ("Ready", "Unknown"): UNREACHABLE,
                    ("MemoryPressure", "True"): "node.kubernetes.io/memory-pressure",
                    ("DiskPressure", "True"): "node.kubernetes.io/disk-pressure",
                    ("NetworkUnavailable", "True"): "node.kubernetes.io/network-unavailable",
                    ("PIDPressure", "True"): "node.kubernetes.io/pid-pressure"}
CONDITION_TAINT_KEYS = set(CONDITION_TAINTS.values())
EXCLUDE_DISRUPTION = "node.kubernetes.io/exclude-disruption"  # kube's labelNodeDisruptionExclusion
LEASES = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
HEALTH_WORKERS = 8  # kube's nodeUpdateWorkerSize: nodes checked concurrently in a monitor pass
TAINT_RETRIES = 5
Taint = tuple[str, str]  # (key, effect)


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


def has_taint(node: Obj, key: str, effect: str) -> bool:
    return any(t.get("key") == key and t.get("effect") == effect for t in (node.get("spec") or {}).get("taints") or [])


def no_schedule_taints(node: Obj) -> set[Taint]:
    """The NoSchedule taints the node's conditions and spec.unschedulable call for."""
    wanted = set()
    for cond in (node.get("status") or {}).get("conditions") or []:
        key = CONDITION_TAINTS.get((cond.get("type"), cond.get("status")))
        if key is not None:
            wanted.add((key, "NoSchedule"))
    if (node.get("spec") or {}).get("unschedulable"):
        wanted.add((UNSCHEDULABLE, "NoSchedule"))
    return wanted


def swapped_taints(node: Obj, add: list[Taint], remove: list[Taint], now: dt.datetime) -> list[Obj]:
    """The node's taints without `remove`, with `add` (stamped timeAdded, as kube's SwapNodeControllerTaint)."""
    current = list((node.get("spec") or {}).get("taints") or [])
    kept = [t for t in current if (t.get("key"), t.get("effect")) not in remove]
    for key, effect in add:
        if not any(t.get("key") == key and t.get("effect") == effect for t in kept):
            kept.append({"key": key, "effect": effect, "timeAdded": rfc3339(now)})
    return kept


class NodeLifecycleController:
    def __init__(self, client: KubeClient, informers: InformerFactory | None = None, grace_period: float = 40.0,
                 monitor_period: float = 5.0, eviction_rate: float = 0.1, secondary_eviction_rate: float = 0.01,
                 unhealthy_zone_threshold: float = 0.55, large_cluster_threshold: int = 50) -> None:
        self.client = client
        self.own_informers = informers is None  # standalone: start and stop our own
        self.informers = informers if informers is not None else InformerFactory(client)
        self.grace = grace_period
        self.period = monitor_period
        self.eviction_rate = eviction_rate
        self.secondary_rate = secondary_eviction_rate
        self.unhealthy_threshold = unhealthy_zone_threshold
        self.large_cluster_threshold = large_cluster_threshold
        self.nodes: dict[str, Obj] = {}
        self.known: dict[str, str] = {}  # kube's knownNodeSet: node name -> uid
        self.heartbeats: dict[str, tuple[str, float]] = {}  # node -> (last heartbeat marker, when we saw it change)
        self.zone_states: dict[str, str] = {}
        self.tainters: dict[str, RateLimitedQueue] = {}  # kube's zoneNoExecuteTainter
        self.no_schedule_dirty: set[str] = set()
        self.no_schedule_wake = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self.taint_manager = TaintManager(client)
        self.node_events = EventRecorder(client, "node-controller")  # kube's recorder for node status changes
        self.informers.informer("/api/v1/nodes").add_handler(
            lambda n: self._on_node(n), lambda _old, n: self._on_node(n), self._on_node_deleted)
        self.informers.informer(LEASES).add_handler(self._on_lease, lambda _old, lease: self._on_lease(lease))
        self.informers.informer("/api/v1/pods").add_handler(
            self.taint_manager.on_pod, lambda old, p: self.taint_manager.on_pod(p, old),
            self.taint_manager.on_pod_deleted)

    async def run(self, stop: asyncio.Event) -> None:
        if self.own_informers:
            await self.informers.start()
            await self.informers.wait_synced()
        self.tasks = [asyncio.ensure_future(self._tainting_loop()), asyncio.ensure_future(self._no_schedule_loop())]
        try:
            while not stop.is_set():
                try:
                    await self.monitor()
                except (ApiError, OSError) as exc:
                    log.warning("node monitor: %s", exc)
                try:
                    await asyncio.wait_for(stop.wait(), self.period)
                except TimeoutError:
                    pass
        finally:
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            self.taint_manager.cancel_all()
            if self.own_informers:
                await self.informers.stop()

    # ------------------------------------------------------------------ informer handlers
    def _saw(self, name: str, marker: str) -> None:
        previous = self.heartbeats.get(name)
        if previous is None or previous[0] != marker:
            self.heartbeats[name] = (marker, time.monotonic())

    def _on_node(self, node: Obj) -> None:
        name = node["metadata"]["name"]
        previous = self.nodes.get(name)
        if previous is not None and _older(node, previous):
            return  # the watch catching up with a version our own patch already superseded
        self.nodes[name] = node
        for cond in (node.get("status") or {}).get("conditions") or []:
            if cond.get("type") == "Ready" and cond.get("status") != "Unknown":
                self._saw(name, "status:" + str(cond.get("lastHeartbeatTime")))
        if name not in self.heartbeats:
            self.heartbeats[name] = ("", time.monotonic())  # grace starts when we first see the node
        self.no_schedule_dirty.add(name)
        self.no_schedule_wake.set()
        if previous is not None and _no_execute(previous) != _no_execute(node):
            self.taint_manager.schedule(name, node)  # the taint manager reacts to taint changes at once

    def _on_node_deleted(self, node: Obj) -> None:
        name = node["metadata"]["name"]
        self.nodes.pop(name, None)
        self.heartbeats.pop(name, None)

    def _on_lease(self, lease: Obj) -> None:
        self._saw(lease["metadata"]["name"], "lease:" + str((lease.get("spec") or {}).get("renewTime")))

    # ------------------------------------------------------------------ the monitor pass
    async def monitor(self) -> None:
        nodes = list(self.nodes.values())
        for node in nodes:
            self._add_zone(zone_key(node))
            name, uid = node["metadata"]["name"], node["metadata"].get("uid", "")
            if name not in self.known:
                self.known[name] = uid
                self._node_event(name, uid, "RegisteredNode", f"Registered Node {name} in Controller")
                await self._mark_reachable(node)
        for name in set(self.known) - set(self.nodes):
            self._node_event(name, self.known.pop(name), "RemovingNode", f"Removing Node {name} from Controller")
        zone_ready: dict[str, list[str | None]] = {}
        workers = asyncio.Semaphore(HEALTH_WORKERS)

        async def check(node: Obj) -> None:
            async with workers:
                await self._check_node(node, zone_ready)
        await asyncio.gather(*(check(node) for node in nodes))
        await self._handle_disruption(zone_ready, nodes)
        for name, node in list(self.nodes.items()):
            self.taint_manager.schedule(name, node)

    def _node_event(self, name: str, uid: str, reason: str, text: str) -> None:
        """kube's RecordNodeEvent: "Node N event: ..." on the Node."""
        self.node_events.event({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "uid": uid}},
                               "Normal", reason, f"Node {name} event: {text}")

    async def _check_node(self, node: Obj, zone_ready: dict[str, list[str | None]]) -> None:
        name = node["metadata"]["name"]
        try:
            observed, current, node = await self._update_health(node)
        except ApiError as exc:
            log.warning("Update health of Node %s from Controller error, Skipping - no pods will be evicted: %s",
                        name, exc)
            return
        if EXCLUDE_DISRUPTION not in ((node.get("metadata") or {}).get("labels") or {}):
            zone_ready.setdefault(zone_key(node), []).append(current)
        if current is None:
            return
        await self._taint_based_eviction(node, observed)
        if current != "True" and observed == "True":
            # kube names the node by its name as uid in these events (RecordNodeStatusChange)
            self.node_events.event({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "uid": name}},
                                   "Normal", "NodeNotReady", f"Node {name} status is now: NodeNotReady")
            await self._mark_pods_not_ready(name, dt.datetime.now(dt.UTC))

    async def _update_health(self, node: Obj) -> tuple[str, str | None, Obj]:
        """(Ready status before this pass, after it, the node): Unknown once the heartbeats stopped."""
        name = node["metadata"]["name"]
        ready = ready_status(node)
        seen = self.heartbeats.get(name)
        if seen is not None and time.monotonic() - seen[1] > self.grace and ready != "Unknown":
            node = await self.client.patch(f"/api/v1/nodes/{name}/status",
                                           {"status": {"conditions": unknown_conditions(node, dt.datetime.now(dt.UTC))}})
            self.nodes[name] = node
            log.info("node %s: Ready=Unknown (kubelet stopped posting node status)", name)
        # a node that never posted a Ready condition counts as Unknown, as kube's fake condition does
        return ready or "Unknown", ready_status(node), node

    async def _taint_based_eviction(self, node: Obj, observed: str) -> None:
        """kube's processTaintBaseEviction: queue a not-Ready node for its NoExecute taint (or swap the taint
        at once when it has the other one); a Ready node loses them."""
        name = node["metadata"]["name"]
        if observed in ("False", "Unknown"):
            key, other = (NOT_READY, UNREACHABLE) if observed == "False" else (UNREACHABLE, NOT_READY)
            if has_taint(node, other, "NoExecute"):
                await self._swap_taints(node, [(key, "NoExecute")], [(other, "NoExecute")])
            elif self._mark_for_tainting(node, key):
                log.debug("Node %s is %s. Adding it to the Taint queue", name,
                          "NotReady" if observed == "False" else "unresponsive")
        elif observed == "True" and await self._mark_reachable(node):
            log.debug("Node %s is healthy again, removed all taints", name)

    def _mark_for_tainting(self, node: Obj, key: str) -> bool:
        queue = self.tainters[zone_key(node)]
        name = node["metadata"]["name"]
        if not has_taint(node, key, "NoExecute"):
            queue.remove(name)  # queued afresh until the taint is there
        return queue.add(name)

    async def _mark_reachable(self, node: Obj) -> bool:
        if has_taint(node, UNREACHABLE, "NoExecute") or has_taint(node, NOT_READY, "NoExecute"):
            await self._swap_taints(node, [], [(UNREACHABLE, "NoExecute"), (NOT_READY, "NoExecute")])
        queue = self.tainters.get(zone_key(node))
        return queue.remove(node["metadata"]["name"]) if queue is not None else False

    # ------------------------------------------------------------------ zones
    def _add_zone(self, zone: str) -> None:
        if zone not in self.zone_states:
            self.zone_states[zone] = INITIAL
            self.tainters[zone] = RateLimitedQueue(self.eviction_rate)
            log.info("Initializing eviction metric for zone %s", printable_zone(zone))

    def _set_limiter(self, zone: str, size: int, state: str) -> None:
        queue = self.tainters.get(zone)
        if queue is None:
            return
        if state in (NORMAL, FULL):  # a fully disrupted zone (not all of them) is drained at the normal rate
            queue.swap_limiter(self.eviction_rate)
        elif state == PARTIAL:
            queue.swap_limiter(self.secondary_rate if size > self.large_cluster_threshold else 0.0)

    async def _handle_disruption(self, zone_ready: dict[str, list[str | None]], nodes: list[Obj]) -> None:
        """kube's handleDisruption: new zone states, and the limiters they call for."""
        new_states: dict[str, str] = {}
        all_are_full = True
        for zone, statuses in zone_ready.items():
            _unhealthy, state = compute_zone_state(statuses, self.unhealthy_threshold)
            all_are_full = all_are_full and state == FULL
            new_states[zone] = state
            if zone not in self.zone_states:
                log.error("Setting initial state for unseen zone %s", printable_zone(zone))
                self.zone_states[zone] = INITIAL
        all_were_full = True
        for zone, state in list(self.zone_states.items()):
            if zone not in zone_ready:
                del self.zone_states[zone]
                continue
            if state != FULL:
                all_were_full = False
                break
        if all_are_full and all_were_full:
            return  # still in master disruption mode (or no nodes at all)
        if all_are_full:
            log.info("Controller detected that all Nodes are not-Ready. Entering master disruption mode")
            for node in nodes:
                try:
                    await self._mark_reachable(self.nodes.get(node["metadata"]["name"], node))
                except ApiError as exc:
                    log.error("Failed to remove taints from Node %s: %s", node["metadata"]["name"], exc)
            for zone in self.zone_states:
                queue = self.tainters.get(zone)
                if queue is not None:
                    queue.swap_limiter(0.0)  # stop all evictions
                self.zone_states[zone] = FULL
            return
        if all_were_full:
            log.info("Controller detected that some Nodes are Ready. Exiting master disruption mode")
            now = time.monotonic()
            for node in nodes:  # every node gets a whole grace period again
                name = node["metadata"]["name"]
                self.heartbeats[name] = (self.heartbeats.get(name, ("", now))[0], now)
            for zone in list(self.zone_states):
                state = new_states.get(zone, "")
                self._set_limiter(zone, len(zone_ready.get(zone, [])), state)
                self.zone_states[zone] = state
            return
        for zone, state in list(self.zone_states.items()):
            new = new_states.get(zone, "")
            if state == new:
                continue
            log.info("Controller detected that zone %s is now in state %s.", printable_zone(zone), new)
            self._set_limiter(zone, len(zone_ready.get(zone, [])), new)
            self.zone_states[zone] = new

    # ------------------------------------------------------------------ taints
    async def _tainting_loop(self) -> None:
        """kube's doNoExecuteTaintingPass every 100 ms: each zone's queue, as its limiter allows."""
        while True:
            await asyncio.sleep(EVICTION_PERIOD)
            for zone, queue in list(self.tainters.items()):
                try:
                    await queue.try_each(self._taint_one)
                except (ApiError, OSError) as exc:
                    log.warning("tainting in zone %s: %s", printable_zone(zone), exc)
                except Exception:  # the pass must keep running, as kube's wait.Until does
                    log.exception("tainting in zone %s", printable_zone(zone))

    async def _taint_one(self, name: str) -> tuple[bool, float]:
        node = self.nodes.get(name)
        if node is None:
            log.info("Node %s no longer present in nodeLister", name)
            return True, 0.0
        ready = ready_status(node)
        if ready is None:
            return False, 0.05
        if ready not in ("False", "Unknown"):
            return True, 0.0  # Ready again: nothing to taint
        key, other = (NOT_READY, UNREACHABLE) if ready == "False" else (UNREACHABLE, NOT_READY)
        done = await self._swap_taints(node, [(key, "NoExecute")], [(other, "NoExecute")])
        if done:
            log.info("node %s: added the %s:NoExecute taint", name, key)
            self.taint_manager.schedule(name, self.nodes.get(name, node))
        return done, 0.0

    async def _no_schedule_loop(self) -> None:
        """kube's doNoScheduleTaintingPass for every node that changed."""
        while True:
            await self.no_schedule_wake.wait()
            self.no_schedule_wake.clear()
            while self.no_schedule_dirty:
                node = self.nodes.get(self.no_schedule_dirty.pop())
                if node is None:
                    continue
                current = {(t.get("key"), t.get("effect")) for t in (node.get("spec") or {}).get("taints") or []
                           if t.get("effect") == "NoSchedule"
                           and (t.get("key") == UNSCHEDULABLE or t.get("key") in CONDITION_TAINT_KEYS)}
                wanted = no_schedule_taints(node)
                if wanted != current:
                    try:
                        await self._swap_taints(node, sorted(wanted - current), sorted(current - wanted))
                    except (ApiError, OSError) as exc:
                        log.warning("Failed to taint NoSchedule on node %s: %s", node["metadata"]["name"], exc)
                    except Exception:
                        log.exception("Failed to taint NoSchedule on node %s", node["metadata"]["name"])

    async def _swap_taints(self, node: Obj, add: list[Taint], remove: list[Taint]) -> bool:
        """Add and remove lifecycle taints under optimistic concurrency (a conflict re-reads the node)."""
        name = node["metadata"]["name"]
        for _attempt in range(TAINT_RETRIES):
            taints = swapped_taints(node, add, remove, dt.datetime.now(dt.UTC))
            if taints == list((node.get("spec") or {}).get("taints") or []):
                return True
            # a merge patch replaces the taint list as a whole (kube's taints have no merge key); the
            # resourceVersion makes it fail rather than overwrite someone else's change
            patch: Obj = {"spec": {"taints": taints or None}}
            if node["metadata"].get("resourceVersion"):
                patch["metadata"] = {"resourceVersion": node["metadata"]["resourceVersion"]}
            try:
                node = await self.client.patch(f"/api/v1/nodes/{name}", patch, content_type=MERGE)
            except ApiError as exc:
                if exc.code != 409:
                    log.warning("unable to change the taints of node %s: %s", name, exc)
                    return False
                node = await self.client.get(f"/api/v1/nodes/{name}")
                continue
            if name in self.nodes:
                self.nodes[name] = node
            return True
        return False

    # ------------------------------------------------------------------ pods
    async def _mark_pods_not_ready(self, name: str, now: dt.datetime) -> None:
        stamp = rfc3339(now)
        for pod in self.taint_manager.pods_on(name):
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
                    continue
                self.node_events.event({"apiVersion": "v1", "kind": "Pod", **pod}, "Warning", "NodeNotReady",
                                       "Node is not ready")


def _older(node: Obj, than: Obj) -> bool:
    """Whether `node` is an older version than `than` (resourceVersions are store revisions here)."""
    a, b = node["metadata"].get("resourceVersion", ""), than["metadata"].get("resourceVersion", "")
    return a.isdigit() and b.isdigit() and int(a) < int(b)


def _no_execute(node: Obj) -> list[Obj]:
    return [t for t in (node.get("spec") or {}).get("taints") or [] if t.get("effect") == "NoExecute"]


def node_lifecycle(client: KubeClient, informers: InformerFactory, options: Any) -> NodeLifecycleController:
    """The registry's factory (kube-controller-manager's node lifecycle flags come from the options)."""
    return NodeLifecycleController(
        client, informers, options.node_monitor_grace_period, options.node_monitor_period,
        options.node_eviction_rate, options.secondary_node_eviction_rate, options.unhealthy_zone_threshold,
        options.large_cluster_size_threshold)
