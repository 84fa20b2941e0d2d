"""NodeClaim lifecycle: launch through the cloud, track the Node to Registered, Initialized and Ready, and
terminate (taint, drain through the eviction API so PodDisruptionBudgets hold, delete Node and instance).

A mixin of the Provisioner: it shares its informers, client, cloud and per-claim state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ultraplane.client.http import MERGE, ApiError
from ultraplane.provisioner import apis, conditions
from ultraplane.provisioner.cloud import InsufficientCapacity, LaunchRequest
from ultraplane.provisioner.pods import reschedulable

if TYPE_CHECKING:
    from ultraplane.provisioner.controller import Provisioner

log = logging.getLogger("ultraplane.provisioner")
Obj = dict[str, Any]


@dataclass
class ClaimState:
    """What this process knows about a NodeClaim beyond the informer (which may lag our own writes)."""
    created: float = field(default_factory=time.monotonic)
    launching: bool = False
    ready_at: float | None = None
    written: list[Obj] | None = None  # conditions last patched


class ClaimLifecycle:
    async def _claim_loop(self: Provisioner) -> None:
        while True:
            try:
                await asyncio.wait_for(self.claims_kick.wait(), self.cfg.claim_interval)
            except TimeoutError:
                pass
            self.claims_kick.clear()
            try:
                await self.reconcile_claims()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("nodeclaim reconcile failed")
                await asyncio.sleep(1)

    async def reconcile_claims(self: Provisioner) -> None:
        nodes_by_provider = {(n.get("spec") or {}).get("providerID"): n for n in self.nodes.list()}
        work: list[Coroutine[Any, Any, None]] = []
        for claim in self.nodeclaims.list():
            name = claim["metadata"]["name"]
            state = self.claims.setdefault(name, ClaimState())
            if claim["metadata"].get("deletionTimestamp"):
                if name not in self.terminating:
                    self.terminating[name] = asyncio.create_task(self._terminate(claim))
                continue
            status = claim.get("status") or {}
            conds = state.written if state.written is not None else status.get("conditions") or []
            if not conditions.is_true(conds, "Launched"):
                if not state.launching:
                    state.launching = True
                    work.append(self._launch(claim, state))
                continue
            node = nodes_by_provider.get(status.get("providerID"))
            if node is not None:
                work.append(self._track_node(claim, state, node, conds))
        await asyncio.gather(*work)
        # pods whose node came up but the scheduler put them nowhere: plan for them again
        expired = [key for key in self.nominated if not self.nomination_valid(key)]
        if expired:
            for key in expired:
                del self.nominated[key]
            self._kick()

    async def _launch(self: Provisioner, claim: Obj, state: ClaimState) -> None:
        name = claim["metadata"]["name"]
        offerings = [tuple(o.split("/")) for o in (claim["metadata"].get("annotations") or {}).get(
            "karpenter.ultraplane.io/offerings", "").split(",") if o]
        ref = claim["spec"].get("nodeClassRef") or {}
        nodeclass = self.nodeclasses.get(ref.get("name", "")) or {}
        class_spec = nodeclass.get("spec") or {}
        unavailable = {(u.get("instanceType"), u.get("zone"), u.get("capacityType"))
                       for u in class_spec.get("unavailableOfferings") or []}
        latency = conditions.parse_duration(class_spec.get("launchLatency")) or self.cfg.launch_latency
        labels = {k: v for k, v in (claim["metadata"].get("labels") or {}).items()}
        request = LaunchRequest(name, [o for o in offerings if len(o) == 3], labels,
                                [*(claim["spec"].get("taints") or []), *(claim["spec"].get("startupTaints") or []),
                                 apis.UNREGISTERED_TAINT], unavailable, latency)
        try:
            instance = await self.cloud.create(request)
        except InsufficientCapacity as exc:
            self.events.event(claim, "Warning", "InsufficientCapacityError",
                              f"NodeClaim {name} event: {exc}")
            await self._delete_claim(name)
            return
        itype = self.catalog.types[instance.instance_type]
        conds = conditions.set_condition(claim.get("status", {}).get("conditions") or [], "Launched", "True")
        conds = conditions.set_condition(conds, "Registered", "Unknown", "AwaitingReconciliation",
                                         "object is awaiting reconciliation")
        conds = conditions.set_condition(conds, "Initialized", "Unknown", "AwaitingReconciliation",
                                         "object is awaiting reconciliation")
        conds = conditions.set_condition(conds, "Ready", "Unknown", "AwaitingReconciliation",
                                         "object is awaiting reconciliation")
        state.written = conds
        async with self.slots:
            try:
                await self.client.patch(f"{apis.NODECLAIMS}/{name}", {"metadata": {"labels": {
                    apis.INSTANCE_TYPE_LABEL: instance.instance_type, apis.ZONE_LABEL: instance.zone,
                    apis.CAPACITY_TYPE_LABEL: instance.capacity_type, apis.ARCH_LABEL: itype.shape.arch}}},
                    content_type=MERGE)
                await self.client.patch(f"{apis.NODECLAIMS}/{name}/status", {"status": {
                    "providerID": instance.provider_id, "imageID": instance.image_id,
                    "capacity": itype.shape.capacity(), "allocatable": itype.shape.allocatable(),
                    "conditions": conds}}, content_type=MERGE)
            except ApiError as exc:
                log.warning("recording the launch of %s failed: %s", name, exc)
                state.launching = False
                return
        self.metrics.nodeclaims_launched(labels.get(apis.NODEPOOL_LABEL, ""))
        self.events.event(claim, "Normal", "Launched", "Status condition transitioned, Type: Launched, Status: "
                          "Unknown -> True, Reason: Launched")

    async def _track_node(self: Provisioner, claim: Obj, state: ClaimState, node: Obj, conds: list[Obj]) -> None:
        """Registered once its Node exists (then the unregistered taint goes), Initialized once it is Ready
        without startup taints, Ready when both are."""
        name = claim["metadata"]["name"]
        node_name = node["metadata"]["name"]
        labels = node["metadata"].get("labels") or {}
        taints = (node.get("spec") or {}).get("taints") or []
        new = conds
        if not conditions.is_true(new, "Registered"):
            new = conditions.set_condition(new, "Registered", "True")
        startup = {(t.get("key"), t.get("effect")) for t in claim["spec"].get("startupTaints") or []}
        remaining = [t for t in taints if (t.get("key"), t.get("effect")) in startup
                     or t.get("key") == apis.UNREGISTERED_TAINT["key"]]
        node_ready = conditions.is_true((node.get("status") or {}).get("conditions"), "Ready")
        if labels.get(apis.REGISTERED_LABEL) != "true" or remaining:
            # registration: our label, the unregistered taint lifted; the simulated node's startup agents
            # (what a CNI DaemonSet does on a real one) lift the startup taints once it is Ready
            keep = [t for t in taints if (t.get("key"), t.get("effect")) not in startup
                    and t.get("key") != apis.UNREGISTERED_TAINT["key"]] if node_ready else \
                [t for t in taints if t.get("key") != apis.UNREGISTERED_TAINT["key"]]
            patch: Obj = {"metadata": {"labels": {apis.REGISTERED_LABEL: "true"}}, "spec": {"taints": keep or None}}
            if node_ready and not [t for t in keep if (t.get("key"), t.get("effect")) in startup]:
                patch["metadata"]["labels"][apis.INITIALIZED_LABEL] = "true"
            async with self.slots:
                try:
                    await self.client.patch(f"/api/v1/nodes/{node_name}", patch, content_type=MERGE)
                except ApiError as exc:
                    log.debug("registering node %s: %s", node_name, exc)
        initialized = node_ready and labels.get(apis.INITIALIZED_LABEL) == "true" and not remaining
        if initialized and not conditions.is_true(new, "Initialized"):
            new = conditions.set_condition(new, "Initialized", "True")
        if conditions.is_true(new, "Initialized") and not conditions.is_true(new, "Ready"):
            new = conditions.set_condition(new, "Ready", "True")
        if conditions.is_true(new, "Ready") and state.ready_at is None:
            state.ready_at = time.monotonic()
        if conditions.same(new, conds) and (claim.get("status") or {}).get("nodeName") == node_name:
            return
        state.written = new
        async with self.slots:
            try:
                await self.client.patch(f"{apis.NODECLAIMS}/{name}/status", {"status": {
                    "nodeName": node_name, "conditions": new}}, content_type=MERGE)
            except ApiError as exc:
                log.debug("nodeclaim %s status: %s", name, exc)
                state.written = None

    async def _delete_claim(self: Provisioner, name: str) -> None:
        try:
            await self.client.delete(f"{apis.NODECLAIMS}/{name}")
        except ApiError as exc:
            if exc.code != 404:
                raise

    # ------------------------------------------------------------------ termination
    def claim_node(self: Provisioner, claim: Obj) -> Obj | None:
        provider = (claim.get("status") or {}).get("providerID")
        if not provider:
            return None
        name = (claim.get("status") or {}).get("nodeName")
        node = self.nodes.get(name) if name else None
        if node is not None and (node.get("spec") or {}).get("providerID") == provider:
            return node
        return next((n for n in self.nodes.list() if (n.get("spec") or {}).get("providerID") == provider), None)

    async def taint_disrupted(self: Provisioner, node: Obj) -> None:
        taints = (node.get("spec") or {}).get("taints") or []
        if any(t.get("key") == apis.DISRUPTED_TAINT["key"] for t in taints):
            return
        await self.client.patch(f"/api/v1/nodes/{node['metadata']['name']}",
                                {"spec": {"taints": [*taints, apis.DISRUPTED_TAINT]}}, content_type=MERGE)

    async def untaint_disrupted(self: Provisioner, node_name: str) -> None:
        node = self.nodes.get(node_name)
        if node is None:
            return
        taints = [t for t in (node.get("spec") or {}).get("taints") or []
                  if t.get("key") != apis.DISRUPTED_TAINT["key"]]
        await self.client.patch(f"/api/v1/nodes/{node_name}", {"spec": {"taints": taints or None}},
                                content_type=MERGE)

    async def _terminate(self: Provisioner, claim: Obj) -> None:
        """Taint karpenter.sh/disrupted:NoSchedule, evict the pods (PDBs answer 429 and we retry), then
        delete the Node and the instance, then release the NodeClaim's finalizer."""
        name = claim["metadata"]["name"]
        try:
            node = self.claim_node(claim)
            grace = conditions.parse_duration(claim["spec"].get("terminationGracePeriod"))
            started = time.monotonic()
            if node is not None:
                node_name = node["metadata"]["name"]
                await self.taint_disrupted(node)
                while True:
                    pods = [p for p in self.node_pods(node_name) if reschedulable(p)]
                    if not pods:
                        break
                    forced = grace is not None and time.monotonic() - started > grace
                    await asyncio.gather(*(self._evict(p, forced) for p in pods))
                    await asyncio.sleep(1.0)
                async with self.slots:
                    try:
                        await self.client.delete(f"/api/v1/nodes/{node_name}")
                    except ApiError as exc:
                        if exc.code != 404:
                            raise
                await self.cloud.delete(node_name)
                self.pods_by_node.pop(node_name, None)
                self.node_pod_event.pop(node_name, None)
            elif (claim.get("status") or {}).get("providerID"):
                await self.cloud.delete(claim["status"].get("nodeName") or "")
            current = await self.client.get(f"{apis.NODECLAIMS}/{name}")
            finalizers = [f for f in current["metadata"].get("finalizers") or [] if f != apis.TERMINATION_FINALIZER]
            await self.client.patch(f"{apis.NODECLAIMS}/{name}", {"metadata": {
                "finalizers": finalizers or None, "resourceVersion": current["metadata"]["resourceVersion"]}},
                content_type=MERGE)
            pool = (claim["metadata"].get("labels") or {}).get(apis.NODEPOOL_LABEL, "")
            self.metrics.nodeclaims_terminated(pool)
        except ApiError as exc:
            if exc.code != 404:
                log.warning("terminating %s: %s", name, exc)
                await asyncio.sleep(1)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("terminating %s failed", name)
            await asyncio.sleep(1)
        finally:
            self.terminating.pop(name, None)

    async def _evict(self: Provisioner, pod: Obj, forced: bool) -> None:
        meta = pod["metadata"]
        namespace, name = meta.get("namespace", ""), meta["name"]
        async with self.slots:
            try:
                if forced:  # terminationGracePeriod is up: delete without asking PDBs
                    await self.client.delete(f"/api/v1/namespaces/{namespace}/pods/{name}")
                    return
                if (meta.get("annotations") or {}).get(apis.DO_NOT_DISRUPT) == "true":
                    return  # waits for its own end, or for terminationGracePeriod
                await self.client.create(f"/api/v1/namespaces/{namespace}/pods/{name}/eviction", {
                    "apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name, "namespace": namespace}})
            except ApiError as exc:
                if exc.code == 429:  # a PodDisruptionBudget says not now
                    self.events.event(pod, "Warning", "FailedDraining", f"Evicting pod: {exc.message}")
                elif exc.code != 404:
                    log.debug("evicting %s/%s: %s", namespace, name, exc)

