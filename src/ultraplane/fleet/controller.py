"""The fleet controller: Karmada's control loop over member clusters, reached only through their API servers.

Level-based, like Karmada's controllers: every sync it reads the fleet API (Clusters, policies, resource
templates, bindings, Evacuations) and moves each member toward what the bindings say.

- Cluster status: a heartbeat per member (`/version`; nodes and pods for the resource summary less
  often). A member silent past the failure threshold gets Ready=False and the `cluster.karmada.io/
  unreachable` NoSchedule and NoExecute taints; they go when it answers again.
- Detector: a resource template (Deployment, Service, ConfigMap, ...) matched by a PropagationPolicy in
  its namespace, else by a ClusterPropagationPolicy (explicit priority, then the most specific selector)
  gets a ResourceBinding named `<name>-<kind>`.
- Scheduler (`placement`): the binding's `spec.clusters`. It is kept until the policy, the replicas or a
  target's fitness changes, so placements do not churn.
- Failover and evacuation: a target with an untolerated NoExecute taint is replaced when the policy has
  `failover` (or when the taint is an evacuation's). The old cluster becomes a graceful eviction task and
  keeps its replicas until the replacements are Ready elsewhere; only then is the old copy deleted.
- Execution: the per-cluster copy (with OverridePolicies applied and the replicas of that cluster) is
  applied with server-side apply when it changed, and re-applied periodically to undo drift.
- Status: each member's copy's status goes to the binding's `aggregatedStatus`; a workload template's
  status is the sum (replicas, readyReplicas, ...), as Karmada's resource interpreter aggregates it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from importlib import resources
from typing import Any

import orjson

from ultraplane.client.discovery import Resource, discover
from ultraplane.client.http import ApiError, KubeClient
from ultraplane.fleet import members as m
from ultraplane.fleet import overrides, placement
from ultraplane.fleet.placement import MemberView, PlacementError

log = logging.getLogger("ultraplane.fleet.controller")
Obj = dict[str, Any]

POLICY = "/apis/policy.karmada.io/v1alpha1"
WORK = "/apis/work.karmada.io/v1alpha2"
EVACUATIONS = "/apis/fleet.ultraplane.io/v1alpha1/evacuations"
FIELD_MANAGER = "ultraplane-fleet"
MANAGED_LABEL = "karmada.io/managed"
# Karmada leaves these namespaces alone: they hold the control plane's own state.
RESERVED_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease", "karmada-system", "karmada-cluster",
                       "karmada-es-")
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "ReplicaSet", "Job"}
DEFAULT_EVICTION_GRACE_S = 600


def crds() -> list[Obj]:
    karmada = json.loads(resources.files("ultraplane.fleet").joinpath("data/karmada-crds.json").read_text())
    return [*karmada["crds"], EVACUATION_CRD, UPGRADE_INSIGHT_CRD]


EVACUATION_CRD: Obj = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "evacuations.fleet.ultraplane.io"},
    "spec": {"group": "fleet.ultraplane.io", "scope": "Cluster",
             "names": {"kind": "Evacuation", "listKind": "EvacuationList", "plural": "evacuations",
                       "singular": "evacuation", "shortNames": ["evac"]},
             "versions": [{"name": "v1alpha1", "served": True, "storage": True, "subresources": {"status": {}},
                           "additionalPrinterColumns": [
                               {"name": "REGION", "type": "string", "jsonPath": ".spec.region"},
                               {"name": "PHASE", "type": "string", "jsonPath": ".status.phase"},
                               {"name": "MOVED", "type": "integer", "jsonPath": ".status.movedReplicas"},
                               {"name": "TOTAL", "type": "integer", "jsonPath": ".status.totalReplicas"},
                               {"name": "AGE", "type": "date", "jsonPath": ".metadata.creationTimestamp"}],
                           "schema": {"openAPIV3Schema": {"type": "object", "required": ["spec"], "properties": {
                               "apiVersion": {"type": "string"}, "kind": {"type": "string"},
                               "metadata": {"type": "object"},
                               "spec": {"type": "object", "required": ["region"], "properties": {
                                   "region": {"type": "string", "minLength": 1}}},
                               "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}}}]}}


INSIGHTS = "/apis/fleet.ultraplane.io/v1alpha1/upgradeinsights"
UPGRADE_INSIGHT_CRD: Obj = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "upgradeinsights.fleet.ultraplane.io"},
    "spec": {"group": "fleet.ultraplane.io", "scope": "Cluster",
             "names": {"kind": "UpgradeInsight", "listKind": "UpgradeInsightList", "plural": "upgradeinsights",
                       "singular": "upgradeinsight", "shortNames": ["insight"]},
             "versions": [{"name": "v1alpha1", "served": True, "storage": True, "subresources": {"status": {}},
                           "additionalPrinterColumns": [
                               {"name": "CURRENT", "type": "string", "jsonPath": ".status.currentVersion"},
                               {"name": "TARGET", "type": "string", "jsonPath": ".status.targetVersion"},
                               {"name": "STATUS", "type": "string", "jsonPath": ".status.status"},
                               {"name": "LAST-SCAN", "type": "date", "jsonPath": ".status.lastScanTime"}],
                           "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                               "apiVersion": {"type": "string"}, "kind": {"type": "string"},
                               "metadata": {"type": "object"},
                               "spec": {"type": "object", "properties": {
                                   "targetVersion": {"type": "string", "pattern": "^v?1\\.[0-9]+$"},
                                   "refreshRequestedAt": {"type": "string", "format": "date-time"}}},
                               "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}}}]}}


def template_replicas(obj: Obj) -> int:
    spec = obj.get("spec") or {}
    if obj.get("kind") == "Job":
        return int(spec.get("parallelism", 1))
    if obj.get("kind") in WORKLOAD_KINDS:
        return int(spec.get("replicas", 1))
    return 0


def binding_name(obj: Obj) -> str:
    return f"{obj['metadata']['name']}-{obj['kind'].lower()}"


def _digest(obj: Any) -> str:
    return hashlib.sha256(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def member_manifest(template: Obj, replicas: int | None) -> Obj:
    """What goes to a member: the template without server-set fields, with that member's replicas."""
    meta = template.get("metadata") or {}
    manifest = {"apiVersion": template["apiVersion"], "kind": template["kind"],
                "metadata": {k: v for k, v in meta.items() if k in ("name", "namespace", "labels", "annotations")}}
    manifest["metadata"].setdefault("labels", {})[MANAGED_LABEL] = "true"
    annotations = manifest["metadata"].setdefault("annotations", {})
    annotations.pop("kubectl.kubernetes.io/last-applied-configuration", None)
    annotations["resourcetemplate.karmada.io/uid"] = meta.get("uid", "")
    for key, value in template.items():
        if key not in ("apiVersion", "kind", "metadata", "status"):
            manifest[key] = value
    if replicas is not None and template["kind"] in WORKLOAD_KINDS:
        spec = manifest.setdefault("spec", {})
        spec["parallelism" if template["kind"] == "Job" else "replicas"] = replicas
    if template["kind"] == "Service":  # a member allocates its own cluster IPs
        spec = dict(manifest.get("spec") or {})
        for key in ("clusterIP", "clusterIPs"):
            if spec.get(key) != "None":
                spec.pop(key, None)
        manifest["spec"] = spec
    return manifest


def health_of(kind: str, status: Obj, replicas: int) -> str:
    if kind in ("Deployment", "StatefulSet", "ReplicaSet"):
        ready = status.get("readyReplicas", 0) >= replicas and status.get("updatedReplicas", replicas) >= replicas
        return "Healthy" if ready else "Unhealthy"
    return "Healthy"


def _condition(kind: str, ok: bool, reason: str, message: str, old: list[Obj]) -> Obj:
    word = "True" if ok else "False"
    prev = next((c for c in old if c.get("type") == kind), {})
    return {"type": kind, "status": word, "reason": reason, "message": message,
            "lastTransitionTime": prev.get("lastTransitionTime") if prev.get("status") == word else m.now_rfc3339()}


class FleetController:
    def __init__(self, fleet: KubeClient, sync_period: float = 1.0, heartbeat_interval: float = 2.0,
                 failure_threshold: float = 30.0, summary_interval: float = 10.0,
                 resync_period: float = 60.0, insights_interval: float = 86400.0, concurrency: int = 32) -> None:
        self.fleet = fleet
        self.sync_period = sync_period
        self.heartbeat_interval = heartbeat_interval
        self.failure_threshold = failure_threshold
        self.summary_interval = summary_interval
        self.resync_period = resync_period
        self.members: dict[str, m.Member] = {}
        self.mapping: dict[tuple[str, str], Resource] = {}
        # (cluster, apiVersion, kind, namespace, name) -> (manifest digest, applied at), to apply on change only
        self.applied: dict[tuple[str, str, str, str, str], tuple[str, float]] = {}
        self.member_status: dict[tuple[str, str, str, str, str], tuple[Obj, float]] = {}
        self.started = time.monotonic()
        self.insights_interval = insights_interval
        self.concurrency = concurrency
        self.scans: dict[str, asyncio.Task[None]] = {}

    # ------------------------------------------------------------------------------------- lifecycle
    async def install(self) -> None:
        """CRDs and the credentials namespace; idempotent, so every controller start runs it."""
        for crd in crds():
            try:
                await self.fleet.create("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
            except ApiError as exc:
                if exc.code != 409:
                    raise
        with contextlib.suppress(ApiError):
            await self.fleet.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                           "metadata": {"name": m.SECRET_NAMESPACE}})
        deadline = time.monotonic() + 30
        while True:
            try:
                await self.fleet.get(f"{POLICY}/propagationpolicies")
                await self.fleet.get(m.CLUSTERS)
                await self.fleet.get(EVACUATIONS)
                await self.fleet.get(f"{WORK}/resourcebindings")
                return
            except ApiError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    async def run(self, stop: asyncio.Event) -> None:
        await self.install()
        loops = [asyncio.create_task(self._every(self.heartbeat_interval, self.heartbeat_once, stop)),
                 asyncio.create_task(self._every(self.sync_period, self.reconcile_once, stop))]
        try:
            await stop.wait()
        finally:
            for task in [*loops, *self.scans.values()]:
                task.cancel()
            await asyncio.gather(*loops, *self.scans.values(), return_exceptions=True)
            for member in self.members.values():
                await member.client.close()

    async def _every(self, period: float, step: Any, stop: asyncio.Event) -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - one bad pass must not stop the loop; the next retries
                log.exception("%s failed", step.__name__)
            await asyncio.sleep(max(0.0, period - (time.monotonic() - started)))

    # ------------------------------------------------------------------------------------- clusters
    async def heartbeat_once(self) -> None:
        clusters = (await self.fleet.list(m.CLUSTERS)).get("items") or []
        names = {c["metadata"]["name"] for c in clusters}
        for name in list(self.members):
            if name not in names:
                await self.members.pop(name).client.close()
        for cluster in clusters:
            name = cluster["metadata"]["name"]
            if name not in self.members:
                try:
                    self.members[name] = m.Member(name, await m.client_for(self.fleet, cluster))
                except (ApiError, ValueError, OSError) as exc:
                    log.warning("cluster %s: no usable credentials: %s", name, exc)
                    continue
        await asyncio.gather(*(m.heartbeat(member, self.summary_interval) for member in self.members.values()))
        evacuated = await self._evacuated_regions()
        for cluster in clusters:
            member = self.members.get(cluster["metadata"]["name"])
            if member is None:
                continue
            # a member gets the whole threshold to answer before it is judged (controller restarts included)
            grace_left = time.monotonic() - self.started < self.failure_threshold and not member.last_ok
            reachable = member.reachable(self.failure_threshold) or grace_left
            taints = m.taints_for(cluster, reachable, evacuated)
            if taints != list((cluster.get("spec") or {}).get("taints") or []):
                await self.fleet.patch(f"{m.CLUSTERS}/{member.name}", {"spec": {"taints": taints or None}},
                                       content_type="application/merge-patch+json")
            status = m.status_of(member, cluster, self.failure_threshold)
            if grace_left and not member.last_ok:
                continue
            if status != cluster.get("status"):
                with contextlib.suppress(ApiError):
                    await self.fleet.patch(f"{m.CLUSTERS}/{member.name}/status", {"status": status},
                                           content_type="application/merge-patch+json")
            if member.reachable(self.failure_threshold):
                await self._maybe_scan(member)

    async def _maybe_scan(self, member: m.Member) -> None:
        """Upgrade insights per member: daily, and again whenever spec.refreshRequestedAt is newer."""
        running = self.scans.get(member.name)
        if running and not running.done():
            return
        try:
            insight = await self.fleet.get(f"{INSIGHTS}/{member.name}")
        except ApiError as exc:
            if exc.code != 404:
                return
            insight = await self.fleet.create(INSIGHTS, {"apiVersion": "fleet.ultraplane.io/v1alpha1",
                                                         "kind": "UpgradeInsight",
                                                         "metadata": {"name": member.name}, "spec": {}})
        status, spec = insight.get("status") or {}, insight.get("spec") or {}
        last = _parse_time(status.get("lastScanTime")) if status.get("lastScanTime") else 0.0
        requested = _parse_time(spec.get("refreshRequestedAt")) if spec.get("refreshRequestedAt") else 0.0
        if last and time.time() - last < self.insights_interval and requested <= last:
            return
        self.scans[member.name] = asyncio.create_task(self._scan(member, spec.get("targetVersion")))

    async def _scan(self, member: m.Member, target: str | None) -> None:
        from ultraplane.fleet import insights

        try:
            facts = await insights.gather(member.client, member.name)
            plan = insights.plan(facts, target)
            status = {**plan.to_dict(), "lastScanTime": m.now_rfc3339()}
        except (insights.InsightError, ValueError) as exc:
            status = {"status": "UNKNOWN", "message": str(exc), "lastScanTime": m.now_rfc3339()}
        except (ApiError, ConnectionError, OSError, TimeoutError) as exc:
            log.warning("insights of %s: %s", member.name, exc)
            return
        with contextlib.suppress(ApiError):
            await self.fleet.patch(f"{INSIGHTS}/{member.name}/status", {"status": status},
                                   content_type="application/merge-patch+json")

    async def _evacuated_regions(self) -> set[str]:
        return {e["spec"]["region"] for e in (await self.fleet.list(EVACUATIONS)).get("items") or []
                if not (e["metadata"].get("deletionTimestamp"))}

    # ------------------------------------------------------------------------------------- mapping
    async def resource_for(self, api_version: str, kind: str) -> Resource | None:
        group = api_version.rpartition("/")[0]
        found = self.mapping.get((group, kind))
        if found is None:
            self.mapping = {(r.group, r.kind): r for r in await discover(self.fleet)}
            found = self.mapping.get((group, kind))
        return found

    # ------------------------------------------------------------------------------------- reconcile
    async def reconcile_once(self) -> None:
        clusters = (await self.fleet.list(m.CLUSTERS)).get("items") or []
        pps = (await self.fleet.list(f"{POLICY}/propagationpolicies")).get("items") or []
        cpps = (await self.fleet.list(f"{POLICY}/clusterpropagationpolicies")).get("items") or []
        ops = (await self.fleet.list(f"{POLICY}/overridepolicies")).get("items") or []
        cops = (await self.fleet.list(f"{POLICY}/clusteroverridepolicies")).get("items") or []
        for kind, items in (("PropagationPolicy", pps), ("ClusterPropagationPolicy", cpps),
                            ("OverridePolicy", ops), ("ClusterOverridePolicy", cops)):
            for item in items:
                item.setdefault("kind", kind)
        bindings = {(b["metadata"].get("namespace", ""), b["metadata"]["name"]): b
                    for path in (f"{WORK}/resourcebindings", f"{WORK}/clusterresourcebindings")
                    for b in (await self.fleet.list(path)).get("items") or []}
        evacuated = await self._evacuated_regions()
        wanted_kinds = {(s.get("apiVersion", ""), s.get("kind", ""))
                        for p in (*pps, *cpps) for s in (p.get("spec") or {}).get("resourceSelectors") or []}
        seen: set[tuple[str, str]] = set()
        # bindings are independent of each other: sync them concurrently, bounded so a big fleet does not
        # open thousands of requests at once against one member
        slots = asyncio.Semaphore(self.concurrency)
        syncs = []

        async def sync(*call_args: Any) -> None:
            async with slots:
                try:
                    await self.sync_binding(*call_args)
                except ApiError as exc:
                    log.warning("binding of %s: %s", call_args[0]["metadata"].get("name"), exc)

        for api_version, kind in sorted(wanted_kinds):
            resource = await self.resource_for(api_version, kind)
            if resource is None or "list" not in resource.verbs:
                continue
            for template in (await self.fleet.list(resource.collection())).get("items") or []:
                template["apiVersion"], template["kind"] = api_version, kind
                namespace = template["metadata"].get("namespace", "")
                if namespace.startswith(RESERVED_NAMESPACES) or template["metadata"].get("deletionTimestamp"):
                    continue
                policy = match_policy(template, pps, cpps)
                if policy is None:
                    continue
                key = (namespace, binding_name(template))
                seen.add(key)
                syncs.append(sync(template, resource, policy, bindings.get(key), clusters, ops, cops, evacuated))
        await asyncio.gather(*syncs)
        for key, binding in bindings.items():
            if key not in seen:
                await self.remove_binding(binding)
        await self.update_evacuations(clusters, evacuated)

    async def sync_binding(self, template: Obj, resource: Resource, policy: Obj, binding: Obj | None,
                           clusters: list[Obj], ops: list[Obj], cops: list[Obj], evacuated: set[str]) -> None:
        meta = template["metadata"]
        namespace = meta.get("namespace", "")
        spec_p = policy.get("spec") or {}
        place = spec_p.get("placement") or {}
        replicas = template_replicas(template)
        pod_spec = ((template.get("spec") or {}).get("template") or {}).get("spec") or {}
        requests = m.pod_requests(pod_spec)
        views = {c["metadata"]["name"]: m.view(c, requests) for c in clusters}
        old_spec = (binding or {}).get("spec") or {}
        old_status = (binding or {}).get("status") or {}
        targets: list[Obj] = list(old_spec.get("clusters") or [])
        tasks: list[Obj] = list(old_spec.get("gracefulEvictionTasks") or [])
        tolerations = place.get("clusterTolerations") or []

        def evicted(name: str) -> bool:
            view = views.get(name)
            if view is None:
                return True
            bad = placement.untolerated(view, tolerations, ("NoExecute",))
            return any(t.get("key") == m.EVACUATION_TAINT for t in bad) or (bool(bad) and "failover" in spec_p)

        must_move = [t["name"] for t in targets if evicted(t["name"])]
        reschedule = (binding is None or old_spec.get("placement") != place or old_spec.get("replicas") != replicas
                      or bool(must_move) or not targets)
        scheduled = _condition("Scheduled", True, "Success", "Binding has been scheduled successfully.",
                               old_status.get("conditions") or [])
        affinity = old_status.get("schedulerObservingAffinityName", "")
        if reschedule:
            candidates = [v for name, v in views.items() if not evicted(name)]
            try:
                new_targets, why = placement.schedule(place, replicas, candidates)
                affinity = why.get("@affinity", "")
            except PlacementError as exc:
                scheduled = _condition("Scheduled", False, "NoClusterFit", str(exc), old_status.get("conditions") or [])
                new_targets = targets  # nothing moves until the replicas fit somewhere: no half-done failover
            else:
                new_names = {t["name"] for t in new_targets}
                for old in targets:
                    if old["name"] in must_move and old["name"] not in new_names and \
                            not any(task["fromCluster"] == old["name"] for task in tasks):
                        tasks.append({"fromCluster": old["name"], "replicas": old.get("replicas", 0),
                                      "reason": "TaintUntolerated", "producer": "TaintManager",
                                      "purgeMode": "Gracefully", "creationTimestamp": m.now_rfc3339(),
                                      "clustersBeforeFailover": [t["name"] for t in targets],
                                      "message": "cluster has an untolerated NoExecute taint"})
            targets = new_targets
        ref = {"apiVersion": template["apiVersion"], "kind": template["kind"], "namespace": namespace,
               "name": meta["name"], "uid": meta.get("uid", ""), "resourceVersion": meta.get("resourceVersion", "")}
        spec = {"resource": ref, "replicas": replicas, "placement": place, "clusters": targets,
                "conflictResolution": spec_p.get("conflictResolution", "Abort")}
        if requests:
            spec["replicaRequirements"] = {"resourceRequest": {k: m._quantity(k, v) for k, v in requests.items()}}
        if "failover" in spec_p:
            spec["failover"] = spec_p["failover"]
        if tasks:
            spec["gracefulEvictionTasks"] = tasks

        # ---- execution: apply each target's copy, read back its status
        aggregated: list[Obj] = []
        ready_total = 0
        applied_ok = True
        for target in targets:
            entry = await self.apply_to(target["name"], template, resource, target.get("replicas"),
                                        ops, cops, views.get(target["name"]))
            aggregated.append(entry)
            applied_ok &= entry.get("applied", False)
            ready_total += (entry.get("status") or {}).get("readyReplicas", 0)
        target_names = {t["name"] for t in targets}
        replacements_ready = applied_ok and (replicas == 0 or ready_total >= replicas)
        kept_tasks = []
        for task in tasks:
            age = time.time() - _parse_time(task.get("creationTimestamp"))
            grace = (spec_p.get("failover") or {}).get("application", {}).get("gracePeriodSeconds") \
                or DEFAULT_EVICTION_GRACE_S
            if task["fromCluster"] in target_names:
                continue  # scheduled back onto it: nothing to evict
            if (replacements_ready or age > grace) and await self.delete_from(task["fromCluster"], template, resource):
                continue
            kept_tasks.append(task)
            aggregated.append(await self.observe(task["fromCluster"], template, resource, task.get("replicas", 0)))
        if kept_tasks != tasks:
            spec["gracefulEvictionTasks"] = kept_tasks or None
        # copies on clusters that are neither targets nor evicting: the placement moved away from them
        for entry in old_status.get("aggregatedStatus") or []:
            name = entry.get("clusterName")
            if name not in target_names and not any(t["fromCluster"] == name for t in kept_tasks):
                if not await self.delete_from(name, template, resource):
                    aggregated.append({**entry, "applied": False, "appliedMessage": "waiting to delete: unreachable"})

        conditions = [scheduled, _condition("FullyApplied", applied_ok, "FullyAppliedSuccess" if applied_ok else
                                            "FullyAppliedFailed", "All works have been successfully applied"
                                            if applied_ok else "Failed to apply all works, see status.aggregatedStatus "
                                            "for details", old_status.get("conditions") or [])]
        status = {"schedulerObservedGeneration": (binding or {}).get("metadata", {}).get("generation", 1),
                  "conditions": conditions, "aggregatedStatus": sorted(aggregated, key=lambda e: e["clusterName"])}
        if affinity:
            status["schedulerObservingAffinityName"] = affinity
        status["lastScheduledTime"] = m.now_rfc3339() if reschedule else old_status.get("lastScheduledTime",
                                                                                         m.now_rfc3339())
        await self.write_binding(template, policy, binding, spec, status)
        await self.aggregate_template(template, resource, aggregated, target_names)

    async def apply_to(self, cluster: str, template: Obj, resource: Resource, replicas: int | None,
                       ops: list[Obj], cops: list[Obj], view: MemberView | None) -> Obj:
        member = self.members.get(cluster)
        if member is None or view is None or not member.reachable(self.failure_threshold):
            return {"clusterName": cluster, "applied": False, "health": "Unknown",
                    "appliedMessage": f"cluster {cluster} is not reachable"}
        manifest = member_manifest(template, replicas if template["kind"] in WORKLOAD_KINDS else None)
        try:
            manifest, _names = overrides.override(manifest, overrides.applicable(cops, ops, template), view)
        except overrides.OverrideError as exc:
            return {"clusterName": cluster, "applied": False, "health": "Unknown", "appliedMessage": str(exc)}
        key = (cluster, template["apiVersion"], template["kind"], manifest["metadata"].get("namespace", ""),
               manifest["metadata"]["name"])
        digest = _digest(manifest)
        previous = self.applied.get(key)
        now = time.monotonic()
        path = resource.item(manifest["metadata"].get("namespace", ""), manifest["metadata"]["name"])
        try:
            if previous is None or previous[0] != digest or now - previous[1] > self.resync_period:
                if resource.namespaced:
                    await self._ensure_namespace(member, manifest["metadata"]["namespace"])
                live = await member.client.apply(path, manifest, FIELD_MANAGER, force=True)
                self.applied[key] = (digest, now)
                self.member_status[key] = (live.get("status") or {}, now)
            status = await self._status(member, key, path)
        except (ApiError, ConnectionError, OSError, TimeoutError) as exc:
            self.applied.pop(key, None)
            return {"clusterName": cluster, "applied": False, "health": "Unknown", "appliedMessage": str(exc)}
        desired = replicas if replicas is not None else 0
        return {"clusterName": cluster, "applied": True, "status": _workload_status(status),
                "health": health_of(template["kind"], status, desired)}

    async def _status(self, member: m.Member, key: tuple[str, str, str, str, str], path: str) -> Obj:
        cached = self.member_status.get(key)
        if cached and time.monotonic() - cached[1] < self.sync_period * 0.9:
            return cached[0]
        live = await member.client.get(path)
        self.member_status[key] = (live.get("status") or {}, time.monotonic())
        return self.member_status[key][0]

    async def observe(self, cluster: str, template: Obj, resource: Resource, replicas: int) -> Obj:
        member = self.members.get(cluster)
        if member is None or not member.reachable(self.failure_threshold):
            return {"clusterName": cluster, "applied": True, "health": "Unknown",
                    "appliedMessage": "evicting: cluster not reachable"}
        meta = template["metadata"]
        try:
            live = await member.client.get(resource.item(meta.get("namespace", ""), meta["name"]))
        except (ApiError, ConnectionError, OSError, TimeoutError) as exc:
            return {"clusterName": cluster, "applied": False, "health": "Unknown", "appliedMessage": str(exc)}
        status = live.get("status") or {}
        return {"clusterName": cluster, "applied": True, "status": _workload_status(status),
                "health": health_of(template["kind"], status, replicas), "appliedMessage": "evicting"}

    async def delete_from(self, cluster: str, template: Obj, resource: Resource) -> bool:
        """Delete the member's copy; False when the member cannot be reached (try again later)."""
        member = self.members.get(cluster)
        if member is None:
            return True  # the cluster left the fleet: nothing left to clean up through it
        if not member.reachable(self.failure_threshold):
            return False
        meta = template["metadata"]
        namespace = meta.get("namespace", "")
        try:
            await member.client.delete(resource.item(namespace, meta["name"]),
                                       params={"propagationPolicy": "Background"})
        except ApiError as exc:
            if exc.code != 404:
                return False
        except (ConnectionError, OSError, TimeoutError):
            return False
        self.applied.pop((cluster, template["apiVersion"], template["kind"], namespace, meta["name"]), None)
        return True

    async def _ensure_namespace(self, member: m.Member, namespace: str) -> None:
        key = (member.name, "v1", "Namespace", "", namespace)
        if key in self.applied:
            return
        with contextlib.suppress(ApiError):
            await member.client.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                              "metadata": {"name": namespace}})
        self.applied[key] = ("", time.monotonic())

    async def write_binding(self, template: Obj, policy: Obj, binding: Obj | None, spec: Obj, status: Obj) -> None:
        meta = template["metadata"]
        namespace = meta.get("namespace", "")
        base = f"{WORK}/namespaces/{namespace}/resourcebindings" if namespace else f"{WORK}/clusterresourcebindings"
        pmeta = policy["metadata"]
        labels = {"propagationpolicy.karmada.io/name": pmeta["name"]} if policy["kind"] == "PropagationPolicy" \
            else {"clusterpropagationpolicy.karmada.io/name": pmeta["name"]}
        spec = {k: v for k, v in spec.items() if v is not None}
        if binding is None:
            body = {"apiVersion": "work.karmada.io/v1alpha2",
                    "kind": "ResourceBinding" if namespace else "ClusterResourceBinding",
                    "metadata": {"name": binding_name(template), **({"namespace": namespace} if namespace else {}),
                                 "labels": labels,
                                 "ownerReferences": [{"apiVersion": template["apiVersion"], "kind": template["kind"],
                                                      "name": meta["name"], "uid": meta.get("uid", ""),
                                                      "controller": True, "blockOwnerDeletion": True}]},
                    "spec": spec}
            binding = await self.fleet.create(base, body)
        elif binding.get("spec") != spec:
            binding = await self.fleet.update(f"{base}/{binding['metadata']['name']}", {**binding, "spec": spec})
        if _without_times(binding.get("status") or {}) != _without_times(status):
            status["schedulerObservedGeneration"] = binding["metadata"].get("generation", 1)
            await self.fleet.update(f"{base}/{binding['metadata']['name']}/status", {**binding, "status": status})

    async def aggregate_template(self, template: Obj, resource: Resource, aggregated: list[Obj],
                                 targets: set[str]) -> None:
        if template["kind"] not in ("Deployment", "StatefulSet", "ReplicaSet"):
            return
        total: dict[str, int] = {}
        for entry in aggregated:
            if entry["clusterName"] not in targets:
                continue
            for key, value in (entry.get("status") or {}).items():
                if isinstance(value, int) and key != "observedGeneration":
                    total[key] = total.get(key, 0) + value
        meta = template["metadata"]
        status = {"observedGeneration": meta.get("generation", 1), **{k: total.get(k, 0) for k in (
            "replicas", "readyReplicas", "availableReplicas", "updatedReplicas")}}
        old = template.get("status") or {}
        if {k: old.get(k, 0) for k in status} != status:
            with contextlib.suppress(ApiError):
                await self.fleet.patch(resource.item(meta.get("namespace", ""), meta["name"]) + "/status",
                                       {"status": status}, content_type="application/merge-patch+json")

    async def remove_binding(self, binding: Obj) -> None:
        """The template or its policy is gone: take its copies off the members, then drop the binding."""
        ref = binding["spec"].get("resource") or {}
        resource = await self.resource_for(ref.get("apiVersion", ""), ref.get("kind", ""))
        template = {"apiVersion": ref.get("apiVersion"), "kind": ref.get("kind"),
                    "metadata": {"name": ref.get("name"), "namespace": ref.get("namespace", "")}}
        if resource is not None:
            clusters = {e["clusterName"] for e in (binding.get("status") or {}).get("aggregatedStatus") or []}
            clusters |= {t["name"] for t in binding["spec"].get("clusters") or []}
            results = [await self.delete_from(name, template, resource) for name in sorted(clusters)]
            if not all(results):
                return  # an unreachable member still has a copy: retry next pass
        namespace = binding["metadata"].get("namespace", "")
        path = (f"{WORK}/namespaces/{namespace}/resourcebindings/{binding['metadata']['name']}" if namespace
                else f"{WORK}/clusterresourcebindings/{binding['metadata']['name']}")
        with contextlib.suppress(ApiError):
            await self.fleet.delete(path)

    # ------------------------------------------------------------------------------------- evacuation
    async def update_evacuations(self, clusters: list[Obj], evacuated: set[str]) -> None:
        evacuations = (await self.fleet.list(EVACUATIONS)).get("items") or []
        if not evacuations:
            return
        bindings = [b for path in (f"{WORK}/resourcebindings", f"{WORK}/clusterresourcebindings")
                    for b in (await self.fleet.list(path)).get("items") or []]
        regions = {c["metadata"]["name"]: (c.get("spec") or {}).get("region", "") for c in clusters}
        for evacuation in evacuations:
            region = evacuation["spec"]["region"]
            in_region = {name for name, r in regions.items() if r == region}
            old = evacuation.get("status") or {}
            status = progress(region, in_region, bindings, old, sorted({r for r in regions.values() if r}))
            if status != old:
                with contextlib.suppress(ApiError):
                    await self.fleet.patch(f"{EVACUATIONS}/{evacuation['metadata']['name']}/status",
                                           {"status": status}, content_type="application/merge-patch+json")


def progress(region: str, in_region: set[str], bindings: list[Obj], old: Obj, known_regions: list[str]) -> Obj:
    """An Evacuation's status: replicas still in the region (scheduled there or evicting), moved ones Ready."""
    if not in_region:
        return {"phase": "Failed", "clusters": [], "totalReplicas": 0, "movedReplicas": 0,
                "conditions": [{"type": "Failed", "status": "True", "reason": "RegionNotFound",
                                "message": f'region "{region}" has no member clusters; known regions: '
                                           f'{", ".join(known_regions) or "none"}'}]}
    remaining, blocked = 0, []
    for binding in bindings:
        spec = binding.get("spec") or {}
        here = sum(t.get("replicas", 0) or 1 for t in spec.get("clusters") or [] if t["name"] in in_region)
        here += sum(t.get("replicas", 0) or 1 for t in spec.get("gracefulEvictionTasks") or []
                    if t.get("fromCluster") in in_region)
        remaining += here
        scheduled = next((c for c in (binding.get("status") or {}).get("conditions") or []
                          if c.get("type") == "Scheduled"), {})
        if here and scheduled.get("status") == "False":
            blocked.append(f"{binding['metadata'].get('namespace', '')}/{binding['metadata']['name']}: "
                           f"{scheduled.get('message', '')}")
    total = max(int(old.get("totalReplicas", 0)), remaining)
    status: Obj = {"phase": "Completed" if remaining == 0 else "Running", "clusters": sorted(in_region),
                   "totalReplicas": total, "movedReplicas": total - remaining, "remainingReplicas": remaining,
                   "startTime": old.get("startTime") or m.now_rfc3339()}
    if remaining == 0:
        status["completionTime"] = old.get("completionTime") or m.now_rfc3339()
    conditions = []
    if blocked:
        conditions.append({"type": "Blocked", "status": "True", "reason": "NoClusterFit",
                           "message": "; ".join(blocked[:5]) + (f" (+{len(blocked) - 5} more)" if len(blocked) > 5
                                                               else "")})
    conditions.append({"type": "Complete", "status": "True" if remaining == 0 else "False",
                       "reason": "Evacuated" if remaining == 0 else "InProgress",
                       "message": f"{total - remaining} of {total} replicas moved out of {region}"})
    status["conditions"] = conditions
    return status


def match_policy(template: Obj, pps: list[Obj], cpps: list[Obj]) -> Obj | None:
    """The PropagationPolicy of the template's namespace that claims it, else the ClusterPropagationPolicy:
    highest explicit `priority` first, then the most specific selector (name, labels, kind), then name."""
    namespace = template["metadata"].get("namespace", "")
    for group in ([p for p in pps if p["metadata"].get("namespace") == namespace] if namespace else [], cpps):
        ranked = []
        for policy in group:
            rank = max((overrides.selector_rank(s, template)
                        for s in (policy.get("spec") or {}).get("resourceSelectors") or []), default=0)
            if rank:
                ranked.append((-(policy["spec"].get("priority") or 0), -rank, policy["metadata"]["name"], policy))
        if ranked:
            return min(ranked, key=lambda r: r[:3])[3]
    return None


def _workload_status(status: Obj) -> Obj:
    return {k: v for k, v in status.items() if k in ("replicas", "readyReplicas", "availableReplicas",
                                                     "updatedReplicas", "observedGeneration", "active", "succeeded",
                                                     "failed", "loadBalancer")}


def _without_times(status: Obj) -> Obj:
    clean = {k: v for k, v in status.items() if k not in ("lastScheduledTime", "schedulerObservedGeneration")}
    clean["conditions"] = [{k: v for k, v in c.items() if k != "lastTransitionTime"}
                           for c in status.get("conditions") or []]
    return clean


def _parse_time(text: str | None) -> float:
    if not text:
        return time.time()
    try:
        return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    except ValueError:
        return time.time()
