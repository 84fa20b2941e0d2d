"""The provisioner: watch unschedulable pods, batch them, launch the cheapest NodeClaims that hold them,
and carry each NodeClaim through Launched, Registered, Initialized and Ready to termination.

Everything goes through the API server: informers on pods, nodes, DaemonSets and the Karpenter kinds;
NodeClaims are created and their status patched; nodes are drained with the eviction API (PDBs are
the API server's business). The cloud behind it is a `CloudProvider` (cloud.py).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import string
import time
from dataclasses import dataclass
from typing import Any

from ultraplane.client.http import ApiError, KubeClient
from ultraplane.client.informer import Informer, drop_managed_fields, object_key
from ultraplane.controllers.podcontrol import EventRecorder
from ultraplane.provisioner import apis, conditions
from ultraplane.provisioner.binpack import Limits, Option, Plan, UnitPrices, Vec, pack
from ultraplane.provisioner.catalog import Catalog
from ultraplane.provisioner.cloud import CloudProvider
from ultraplane.provisioner.lifecycle import ClaimLifecycle, ClaimState
from ultraplane.provisioner.metrics import Metrics
from ultraplane.provisioner.options import PoolView, nodeclass_hash, options_for, pool_view, template_hash
from ultraplane.provisioner.pods import (
    PendingPod,
    is_provisionable,
    node_free,
    pending_pod,
    reschedulable,
    tolerates_all,
)
from ultraplane.provisioner.requirements import matches_all
from ultraplane.provisioner.status import StatusWriter, quantity_text
from ultraplane.scheduler.model import match_label_selector
from ultraplane.scheduler.quantity import parse_resource

log = logging.getLogger("ultraplane.provisioner")
Obj = dict[str, Any]
COMPONENT = "karpenter"
NOMINATION_GRACE_S = 30.0  # after its NodeClaim is Ready, the scheduler has this long to bind a nominated pod
NOMINATED_EVENTS_PER_BATCH = 200
FIT_RECHECK_S = 15.0  # pods left to existing nodes' free room are looked at again after this long
SIMULATE_INTERRUPTION = "karpenter.ultraplane.io/simulate-interruption"  # on a Node: SimCloud interrupts it
MAX_DEFERRALS = 3  # after that many, a pod the scheduler still cannot place gets a node of its own  # Karpenter rate-limits its Nominated events too


@dataclass
class ProvisionerConfig:
    batch_idle: float = 1.0  # BATCH_IDLE_DURATION
    batch_max: float = 10.0  # BATCH_MAX_DURATION
    disruption_interval: float = 10.0  # how often disruption looks for candidates
    claim_interval: float = 0.5
    api_concurrency: int = 32
    launch_latency: float = 1.0  # default boot time when the node class does not say


def _claim_name(pool: str) -> str:
    return f"{pool}-" + "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(5))


class Provisioner(ClaimLifecycle, StatusWriter):
    def __init__(self, client: KubeClient, catalog: Catalog, cloud: CloudProvider,
                 cfg: ProvisionerConfig | None = None) -> None:
        self.client = client
        self.catalog = catalog
        self.cloud = cloud
        self.cfg = cfg or ProvisionerConfig()
        self.events = EventRecorder(client, COMPONENT)
        self.metrics = Metrics()
        self.pods = Informer(client, "/api/v1/pods", transform=drop_managed_fields)
        self.nodes = Informer(client, "/api/v1/nodes", transform=drop_managed_fields)
        self.daemonsets = Informer(client, "/apis/apps/v1/daemonsets", transform=drop_managed_fields)
        self.nodepools = Informer(client, apis.NODEPOOLS, transform=drop_managed_fields)
        self.nodeclaims = Informer(client, apis.NODECLAIMS, transform=drop_managed_fields)
        self.nodeclasses = Informer(client, apis.NODECLASSES, transform=drop_managed_fields)
        self.informers = [self.pods, self.nodes, self.daemonsets, self.nodepools, self.nodeclaims, self.nodeclasses]
        self.pods_by_node: dict[str, dict[str, Obj]] = {}
        self.node_pod_event: dict[str, float] = {}  # node -> wall time of its last pod bind/removal
        self.claims: dict[str, ClaimState] = {}
        self.nominated: dict[str, str] = {}  # pod key -> NodeClaim name
        self.unplaceable: dict[str, str] = {}  # pod key -> the message last recorded for it
        self.interrupted: set[str] = set()  # NodeClaims deleted for an interruption notice
        self.background: set[asyncio.Task[None]] = set()
        self.deferred: dict[str, int] = {}  # pod key -> batches that left it to existing nodes' free room
        self.trigger = asyncio.Event()
        self.claims_kick = asyncio.Event()
        self.first_trigger = 0.0
        self.last_trigger = 0.0
        self.terminating: dict[str, asyncio.Task[None]] = {}
        self.tasks: list[asyncio.Task[Any]] = []
        self.slots = asyncio.Semaphore(self.cfg.api_concurrency)
        self.prices = self._unit_prices()
        self.batches = 0
        self.disruption: Any = None  # disruption.Disruption, attached by start()

    # ------------------------------------------------------------------ lifecycle
    async def start(self, disruption: bool = True) -> None:
        await apis.install_crds(self.client)
        self.pods.add_handler(self._pod_added, self._pod_updated, self._pod_deleted)
        self.nodeclaims.add_handler(self._claim_event, lambda _old, new: self._claim_event(new), self._claim_deleted)
        self.nodes.add_handler(self._node_event, lambda _old, node: self._node_event(node), None)
        self.cloud.on_interruption(self._interrupted)
        for informer in (self.nodepools, self.nodeclasses, self.daemonsets):
            informer.add_handler(lambda *_: self._kick(), lambda *_: self._kick(), None)
        for informer in self.informers:
            await informer.start()
        for informer in self.informers:
            await informer.wait_synced()
        self.tasks += [asyncio.create_task(self._batch_loop()), asyncio.create_task(self._claim_loop()),
                       asyncio.create_task(self._status_loop())]
        if disruption:
            from ultraplane.provisioner.disruption import Disruption

            self.disruption = Disruption(self)
            self.tasks.append(asyncio.create_task(self.disruption.run()))
        self._kick()

    async def stop(self) -> None:
        for task in [*self.tasks, *self.terminating.values()]:
            task.cancel()
        await asyncio.gather(*self.tasks, *self.terminating.values(), return_exceptions=True)
        for informer in self.informers:
            await informer.stop()

    def _kick(self) -> None:
        now = time.monotonic()
        if not self.trigger.is_set():
            self.first_trigger = now
            self.trigger.set()
        self.last_trigger = now

    # ------------------------------------------------------------------ pod bookkeeping
    def _pod_added(self, pod: Obj) -> None:
        node = (pod.get("spec") or {}).get("nodeName")
        if node:
            self.pods_by_node.setdefault(node, {})[object_key(pod)] = pod
            self.node_pod_event[node] = time.time()
        elif is_provisionable(pod):
            self._kick()

    def _pod_updated(self, old: Obj, pod: Obj) -> None:
        node = (pod.get("spec") or {}).get("nodeName")
        key = object_key(pod)
        if node:
            pods = self.pods_by_node.setdefault(node, {})
            if key not in pods or (reschedulable(pods[key]) != reschedulable(pod)):
                self.node_pod_event[node] = time.time()
            pods[key] = pod
            self.nominated.pop(key, None)
            self.deferred.pop(key, None)
            self.unplaceable.pop(key, None)
        elif is_provisionable(pod) and (not is_provisionable(old) or key in self.unplaceable
                                        and pod["spec"] != old.get("spec")):
            self._kick()

    def _pod_deleted(self, pod: Obj) -> None:
        key = object_key(pod)
        self.deferred.pop(key, None)
        node = (pod.get("spec") or {}).get("nodeName")
        if node and self.pods_by_node.get(node, {}).pop(key, None) is not None:
            self.node_pod_event[node] = time.time()
        self.nominated.pop(key, None)
        self.unplaceable.pop(key, None)

    def _node_event(self, node: Obj) -> None:
        self.claims_kick.set()
        annotations = node["metadata"].get("annotations") or {}
        interrupt = getattr(self.cloud, "interrupt", None)
        if annotations.get(SIMULATE_INTERRUPTION) == "true" and interrupt is not None:
            interrupt(node["metadata"]["name"])  # the simulated cloud's spot interruption notice

    def _interrupted(self, node_name: str) -> None:
        """A spot interruption (or other involuntary notice) for an instance: its NodeClaim is deleted at
        once, so termination drains the node and the evicted pods are provisioned elsewhere."""
        for claim in self.nodeclaims.list():
            if (claim.get("status") or {}).get("nodeName") == node_name and not claim["metadata"].get(
                    "deletionTimestamp") and claim["metadata"]["name"] not in self.interrupted:
                name = claim["metadata"]["name"]
                self.interrupted.add(name)
                node = self.nodes.get(node_name) or {"metadata": {"name": node_name}, "kind": "Node"}
                self.events.event(node, "Warning", "SpotInterrupted", "Spot interruption warning was triggered")
                self.metrics.disrupted((claim["metadata"].get("labels") or {}).get(apis.NODEPOOL_LABEL, ""),
                                       "interruption")
                task = asyncio.ensure_future(self._delete_claim(name))
                self.background.add(task)
                task.add_done_callback(self.background.discard)

    def _claim_event(self, claim: Obj) -> None:
        self.claims.setdefault(claim["metadata"]["name"], ClaimState())
        self.claims_kick.set()

    def _claim_deleted(self, claim: Obj) -> None:
        name = claim["metadata"]["name"]
        self.claims.pop(name, None)
        if any(c == name for c in self.nominated.values()):
            self.nominated = {k: c for k, c in self.nominated.items() if c != name}
            self._kick()

    def node_pods(self, node: str) -> list[Obj]:
        return list(self.pods_by_node.get(node, {}).values())

    # ------------------------------------------------------------------ the catalogue's unit prices
    def _unit_prices(self) -> UnitPrices:
        cpu = memory = gpu = float("inf")
        for t in self.catalog.types.values():
            cheapest = t.cheapest()
            if cheapest is None:
                continue
            cpu = min(cpu, cheapest.price / (t.shape.vcpus * 1000))
            memory = min(memory, cheapest.price / (t.shape.memory_gib * 2**30))
            if t.shape.gpus:
                gpu = min(gpu, cheapest.price / t.shape.gpus)
        return UnitPrices(cpu, memory, gpu if gpu != float("inf") else 1.0)

    # ------------------------------------------------------------------ batching
    async def _batch_loop(self) -> None:
        while True:
            await self.trigger.wait()
            while True:
                now = time.monotonic()
                wait = min(self.last_trigger + self.cfg.batch_idle, self.first_trigger + self.cfg.batch_max) - now
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
            self.trigger.clear()
            try:
                await self.provision()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("provisioning failed")
                await asyncio.sleep(1)
                self._kick()

    def pool_views(self) -> tuple[list[PoolView], dict[str, str]]:
        """The NodePools that can launch now, and for the others why not."""
        views, broken = [], {}
        daemonsets = self.daemonsets.list()
        for pool in self.nodepools.list():
            meta, spec = pool["metadata"], pool.get("spec") or {}
            if meta.get("deletionTimestamp") or spec.get("replicas") is not None:
                continue
            ref = ((spec.get("template") or {}).get("spec") or {}).get("nodeClassRef") or {}
            nodeclass = self.nodeclasses.get(ref.get("name", ""))
            if ref.get("group") != apis.NODECLASS_GROUP or ref.get("kind") != apis.NODECLASS_KIND:
                broken[meta["name"]] = f"nodeClassRef {ref.get('group')}/{ref.get('kind')} is not served by " \
                                       f"this provider ({apis.NODECLASS_GROUP}/{apis.NODECLASS_KIND})"
                continue
            if nodeclass is None:
                broken[meta["name"]] = f'NodeClass "{ref.get("name")}" not found'
                continue
            views.append(pool_view(pool, self.catalog, nodeclass, daemonsets))
        views.sort(key=lambda v: (-v.weight, v.name))
        return views, broken

    def pool_limits(self) -> dict[str, Limits]:
        used: dict[str, list[int]] = {}
        for claim in self.nodeclaims.list():
            pool = (claim["metadata"].get("labels") or {}).get(apis.NODEPOOL_LABEL, "")
            cap = (claim.get("status") or {}).get("capacity") or {}
            if not cap:  # not launched yet: its type's capacity
                itype = (claim["metadata"].get("labels") or {}).get(apis.INSTANCE_TYPE_LABEL) or \
                    claim["metadata"].get("annotations", {}).get("karpenter.ultraplane.io/planned-type", "")
                t = self.catalog.types.get(itype)
                cap = t.shape.capacity() if t else {}
            row = used.setdefault(pool, [0, 0, 0, 0])
            row[0] += parse_resource("cpu", cap.get("cpu", 0))
            row[1] += parse_resource("memory", cap.get("memory", 0))
            row[2] += parse_resource("nvidia.com/gpu", cap.get("nvidia.com/gpu", 0))
            row[3] += 1
        out = {}
        for pool in self.nodepools.list():
            name = pool["metadata"]["name"]
            raw = (pool.get("spec") or {}).get("limits") or {}
            row = used.get(name, [0, 0, 0, 0])
            limits = Limits()
            if "cpu" in raw:
                limits.cpu = parse_resource("cpu", raw["cpu"]) - row[0]
            if "memory" in raw:
                limits.memory = parse_resource("memory", raw["memory"]) - row[1]
            if "nvidia.com/gpu" in raw:
                limits.gpu = parse_resource("nvidia.com/gpu", raw["nvidia.com/gpu"]) - row[2]
            if "nodes" in raw:
                limits.nodes = int(raw["nodes"]) - row[3]
            out[name] = limits
        return out

    def nomination_valid(self, key: str) -> bool:
        claim = self.nominated.get(key)
        if claim is None:
            return False
        state = self.claims.get(claim)
        if state is None:
            return False
        return state.ready_at is None or time.monotonic() - state.ready_at < NOMINATION_GRACE_S

    def pending(self) -> list[PendingPod]:
        out = []
        for pod in self.pods.list():
            if is_provisionable(pod) and not self.nomination_valid(object_key(pod)):
                out.append(pending_pod(pod))
        return out

    async def provision(self) -> list[Obj]:
        """One batch: plan NodeClaims for the pending pods, create them, nominate the pods."""
        started = time.monotonic()
        pending = self.pending()
        if not pending:
            return []
        before = {p.key for p in pending}
        pending = self.fit_existing([p for p in pending if self.deferred.get(p.key, 0) < MAX_DEFERRALS]) + [
            p for p in pending if self.deferred.get(p.key, 0) >= MAX_DEFERRALS]
        deferred = before - {p.key for p in pending}
        for key in deferred:
            self.deferred[key] = self.deferred.get(key, 0) + 1
        if deferred:
            # left to the scheduler: look again later in case it finds no room after all (our view of the
            # nodes may lag the pods it has just bound)
            asyncio.get_running_loop().call_later(FIT_RECHECK_S, self._kick)
        views, broken = self.pool_views()
        plans, failures = self.plan(pending, views, self.pool_limits(), broken)
        claims = await self.create_claims(plans, views)
        by_key = {p.key: p for p in pending}
        for key, message in failures.items():
            if self.unplaceable.get(key) != message:
                self.unplaceable[key] = message
                pod = self.pods.get(key)
                if pod is not None:
                    self.events.event(pod, "Warning", "FailedScheduling", f"Failed to schedule pod, {message}")
        self.batches += 1
        self.metrics.scheduling_duration(time.monotonic() - started)
        log.info("batch %d: %d pending pods -> %d nodeclaims (%d pods left unplaceable) in %.2fs", self.batches,
                 len(by_key), len(claims), len(failures), time.monotonic() - started)
        return claims

    def fit_existing(self, pending: list[PendingPod]) -> list[PendingPod]:
        """The pods that do not fit in the free room of the Ready nodes (the scheduler will place the others
        once its back-off lets it retry them), first fit with the biggest pods first."""
        room = []
        for node in self.nodes.list():
            spec = node.get("spec") or {}
            taints = spec.get("taints") or []
            if node["metadata"].get("deletionTimestamp") or spec.get("unschedulable") or any(
                    t.get("key") in (apis.DISRUPTED_TAINT["key"], apis.UNREGISTERED_TAINT["key"]) for t in taints):
                continue
            if not conditions.is_true((node.get("status") or {}).get("conditions"), "Ready"):
                continue
            free = list(node_free(node, self.node_pods(node["metadata"]["name"])))
            if free[0] > 0 and free[3] > 0:
                room.append((node["metadata"].get("labels") or {}, taints, free))
        if not room:
            return pending
        groups: dict[tuple[bytes, Vec], list[PendingPod]] = {}
        for pod in pending:
            groups.setdefault((pod.signature, pod.requests), []).append(pod)
        left: list[PendingPod] = []
        for (_, req), pods in sorted(groups.items(), key=lambda kv: kv[0][1], reverse=True):
            first = pods[0]
            for labels, taints, free in room:
                if not pods:
                    break
                k = len(pods)
                for i in range(4):
                    if req[i]:
                        k = min(k, free[i] // req[i])
                if k <= 0 or not tolerates_all(first.tolerations, taints) or not any(
                        matches_all(term, labels) for term in first.terms):
                    continue
                for i in range(4):
                    free[i] -= req[i] * k
                del pods[:k]
            left += pods
        return left

    def plan(self, pending: list[PendingPod], views: list[PoolView], limits: dict[str, Limits],
             broken: dict[str, str] | None = None) -> tuple[list[Plan], dict[str, str]]:
        """Pure planning (no API calls): NodeClaim plans, and the pods that cannot be placed, with why."""
        failures: dict[str, str] = {}
        by_constraints: dict[tuple[bytes, Vec], list[PendingPod]] = {}
        for pod in pending:
            by_constraints.setdefault((pod.signature, pod.requests), []).append(pod)
        # pods with the same feasible option set share nodes: group them by that set
        groups: dict[frozenset[tuple[str, str, str, str]], tuple[list[Option], list[PendingPod]]] = {}
        for pods in by_constraints.values():
            options, reason = options_for(pods[0], views) if views else ([], "no nodepools found")
            if broken and not views:
                reason = "; ".join(f'nodepool "{k}": {v}' for k, v in broken.items())
            if not options:
                for pod in pods:
                    failures[pod.key] = reason
                continue
            for zone_pods, zone_options in self._split_by_zone(pods, options):
                key = frozenset((o.pool, o.type, o.zone, o.capacity_type) for o in zone_options)
                groups.setdefault(key, (zone_options, []))[1].extend(zone_pods)
        plans: list[Plan] = []
        for options, pods in groups.values():
            shapes: dict[Vec, list[str]] = {}
            for pod in pods:
                shapes.setdefault(pod.requests, []).append(pod.key)
            made, left = pack(shapes, options, self.prices, limits)
            plans += made
            pools = sorted({o.pool for o in options})
            for key in left:
                failures[key] = "all available instance types exceed limits for nodepool: " + ", ".join(
                    f'"{p}"' for p in pools)
        return plans, failures

    def _split_by_zone(self, pods: list[PendingPod], options: list[Option]
                       ) -> list[tuple[list[PendingPod], list[Option]]]:
        """Zone topology spread: water-fill the pods over the zones the options reach, counting the
        matching pods already running in each zone, so no zone exceeds the others by more than maxSkew."""
        spread = pods[0].spread
        if spread is None or not options:
            return [(pods, options)]
        zones = sorted({o.zone for o in options})
        counts = dict.fromkeys(zones, 0)
        node_zone = {n["metadata"]["name"]: (n["metadata"].get("labels") or {}).get(apis.ZONE_LABEL)
                     for n in self.nodes.list()}
        for node, pods_on in self.pods_by_node.items():
            zone = node_zone.get(node)
            if zone not in counts:
                continue
            for pod in pods_on.values():
                if pod["metadata"].get("namespace") == spread.namespace and reschedulable(pod) and \
                        match_label_selector(spread.selector, pod["metadata"].get("labels") or {}):
                    counts[zone] += 1
        assigned: dict[str, list[PendingPod]] = {z: [] for z in zones}
        for pod in pods:
            zone = min(zones, key=lambda z: (counts[z], z))
            counts[zone] += 1
            assigned[zone].append(pod)
        return [(assigned[z], [o for o in options if o.zone == z]) for z in zones if assigned[z]]

    # ------------------------------------------------------------------ NodeClaims
    def claim_body(self, plan: Plan, view: PoolView) -> Obj:
        pool = view.obj
        template = pool["spec"].get("template") or {}
        tspec = template.get("spec") or {}
        opt = plan.option
        labels = {**((template.get("metadata") or {}).get("labels") or {}), apis.NODEPOOL_LABEL: view.name}
        for offer in view.offers:  # the pinned custom labels of the chosen offering
            if offer.type.name == opt.type and offer.zone == opt.zone and offer.capacity_type == opt.capacity_type:
                labels.update({k: v for k, v in offer.labels.items() if k not in offer.type.labels})
                break
        alternatives = plan.alternatives or [opt]
        requirements = [r for r in tspec.get("requirements") or [] if r.get("key") not in (
            apis.INSTANCE_TYPE_LABEL, apis.ZONE_LABEL, apis.CAPACITY_TYPE_LABEL)]
        requirements += [
            {"key": apis.INSTANCE_TYPE_LABEL, "operator": "In", "values": sorted({o.type for o in alternatives})},
            {"key": apis.ZONE_LABEL, "operator": "In", "values": sorted({o.zone for o in alternatives})},
            {"key": apis.CAPACITY_TYPE_LABEL, "operator": "In",
             "values": sorted({o.capacity_type for o in alternatives})},
            {"key": apis.NODEPOOL_LABEL, "operator": "In", "values": [view.name]},
        ]
        used = plan.used
        spec: Obj = {"nodeClassRef": tspec.get("nodeClassRef"), "requirements": requirements,
                     "resources": {"requests": {"cpu": quantity_text("cpu", used[0]),
                                                "memory": quantity_text("memory", used[1]),
                                                "pods": str(used[3]),
                                                **({"nvidia.com/gpu": str(used[2])} if used[2] else {})}},
                     "expireAfter": tspec.get("expireAfter", "720h")}
        for key in ("taints", "startupTaints", "terminationGracePeriod"):
            if tspec.get(key):
                spec[key] = tspec[key]
        nodeclass = self.nodeclasses.get(tspec["nodeClassRef"]["name"]) or {}
        annotations = {**((template.get("metadata") or {}).get("annotations") or {}),
                       apis.NODEPOOL_HASH: template_hash(pool), apis.NODEPOOL_HASH_VERSION: "v3",
                       apis.NODECLASS_HASH: nodeclass_hash(nodeclass),
                       "karpenter.ultraplane.io/planned-type": opt.type,
                       "karpenter.ultraplane.io/offerings": ",".join(
                           f"{o.type}/{o.zone}/{o.capacity_type}" for o in alternatives)}
        return {"apiVersion": f"{apis.GROUP}/{apis.VERSION}", "kind": "NodeClaim",
                "metadata": {"name": _claim_name(view.name), "labels": labels, "annotations": annotations,
                             "finalizers": [apis.TERMINATION_FINALIZER],
                             "ownerReferences": [{"apiVersion": f"{apis.GROUP}/{apis.VERSION}", "kind": "NodePool",
                                                  "name": view.name, "uid": pool["metadata"].get("uid", ""),
                                                  "blockOwnerDeletion": True}]},
                "spec": spec}

    async def create_claims(self, plans: list[Plan], views: list[PoolView]) -> list[Obj]:
        by_pool = {v.name: v for v in views}
        nominated_events = 0

        async def create(plan: Plan) -> Obj | None:
            nonlocal nominated_events
            body = self.claim_body(plan, by_pool[plan.option.pool])
            async with self.slots:
                for _ in range(5):
                    try:
                        created = await self.client.create(apis.NODECLAIMS, body)
                        break
                    except ApiError as exc:
                        if exc.code == 409:
                            body["metadata"]["name"] = _claim_name(plan.option.pool)
                            continue
                        log.warning("creating a NodeClaim failed: %s", exc)
                        return None
                else:
                    return None
            name = created["metadata"]["name"]
            self.claims.setdefault(name, ClaimState())
            self.metrics.nodeclaims_created(plan.option.pool, "provisioning")
            for key in plan.pods:
                self.nominated[key] = name
                if nominated_events < NOMINATED_EVENTS_PER_BATCH:
                    nominated_events += 1
                    pod = self.pods.get(key)
                    if pod is not None:
                        self.events.event(pod, "Normal", "Nominated", f"Pod should schedule on: nodeclaim/{name}")
            self.claims_kick.set()
            return created

        made = await asyncio.gather(*(create(p) for p in plans))
        return [c for c in made if c is not None]
