"""The DaemonSet controller: one pod on every eligible node, placed by the default scheduler.

As kube's: a node is eligible when the pod template's nodeSelector and required node affinity match it
and its NoSchedule / NoExecute taints are tolerated (the template's tolerations plus the ones every
daemon pod gets: not-ready and unreachable NoExecute; disk-, memory-, pid-pressure and unschedulable
NoSchedule; network-unavailable for hostNetwork pods). A daemon pod is not bound by the controller:
its required node affinity gets a `matchFields metadata.name In [<node>]` term and the scheduler binds
it. Extra pods on a node, pods on nodes that no longer qualify and failed pods are deleted.
The template's revisions are ControllerRevisions `<ds>-<hash>`; pods carry controller-revision-hash
and pod-template-generation. RollingUpdate replaces old pods node by node within maxUnavailable, or
with maxSurge starts the new pod beside the old one and removes the old once the new is available.
"""

from __future__ import annotations

import time
from typing import Any

from ultraplane.apiserver.selectors import SelectorError, label_selector_from_dict
from ultraplane.client.http import ApiError, KubeClient
from ultraplane.client.informer import object_key
from ultraplane.controllers.base import Controller, InformerFactory
from ultraplane.controllers.deployment import normalized, scaled_value
from ultraplane.controllers.podcontrol import (
    EventRecorder,
    Expectations,
    OwnedPodHandlers,
    claim,
    controller_ref,
    is_available,
    is_ready,
    is_terminating,
    namespace_index,
    now_utc,
    owner_ref,
    phase,
    pod_from_template,
)
from ultraplane.controllers.statefulset import HASH_LABEL, revision_data, revision_hash
from ultraplane.scheduler.model import NodeInfo, match_node_selector_term, tolerates

Obj = dict[str, Any]
DAEMONSETS = "/apis/apps/v1/daemonsets"
REVISION_LABEL = "controller-revision-hash"
GENERATION_LABEL = "pod-template-generation"
DAEMON_TOLERATIONS = [
    ("node.kubernetes.io/not-ready", "NoExecute"),
    ("node.kubernetes.io/unreachable", "NoExecute"),
    ("node.kubernetes.io/disk-pressure", "NoSchedule"),
    ("node.kubernetes.io/memory-pressure", "NoSchedule"),
    ("node.kubernetes.io/pid-pressure", "NoSchedule"),
    ("node.kubernetes.io/unschedulable", "NoSchedule"),
]


def daemon_tolerations(spec: Obj) -> list[Obj]:
    """AddOrUpdateDaemonPodTolerations: the template's tolerations plus the daemon defaults."""
    tolerations = [dict(t) for t in spec.get("tolerations") or []]
    wanted = list(DAEMON_TOLERATIONS)
    if spec.get("hostNetwork"):
        wanted.append(("node.kubernetes.io/network-unavailable", "NoSchedule"))
    for key, effect in wanted:
        toleration = {"key": key, "operator": "Exists", "effect": effect}
        if toleration not in tolerations:
            tolerations.append(toleration)
    return tolerations


def with_node_affinity(spec: Obj, node_name: str) -> None:
    """ReplaceDaemonSetPodNodeNameNodeAffinity: every required term pins metadata.name to the node."""
    pin = [{"key": "metadata.name", "operator": "In", "values": [node_name]}]
    affinity = spec.setdefault("affinity", {})
    node_affinity = affinity.setdefault("nodeAffinity", {})
    required = node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or {}
    terms = [t for t in required.get("nodeSelectorTerms") or [] if t]
    if not terms:
        terms = [{"matchFields": pin}]
    else:
        terms = [{**t, "matchFields": pin} for t in terms]
    node_affinity["requiredDuringSchedulingIgnoredDuringExecution"] = {"nodeSelectorTerms": terms}


def node_should_run(template_spec: Obj, node: Obj) -> tuple[bool, bool]:
    """(should run, should continue running): selector and affinity, then the taints kube checks."""
    meta = node.get("metadata") or {}
    spec = node.get("spec") or {}
    # only what the predicates read: no resource parsing (this runs for every node on every sync)
    info = NodeInfo(name=meta.get("name", ""), labels=meta.get("labels") or {}, taints=spec.get("taints") or [],
                    unschedulable=bool(spec.get("unschedulable")), allocatable={}, images={})
    for k, v in (template_spec.get("nodeSelector") or {}).items():
        if info.labels.get(k) != v:
            return False, False
    required = (((template_spec.get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution"))
    if required is not None and not any(match_node_selector_term(t, info)
                                        for t in required.get("nodeSelectorTerms") or []):
        return False, False
    tolerations = daemon_tolerations(template_spec)
    should_run = should_continue = True
    for taint in info.taints:
        if tolerates(tolerations, taint):
            continue
        if taint.get("effect") == "NoExecute":
            return False, False
        if taint.get("effect") == "NoSchedule":
            should_run = False
    return should_run, should_continue


class Backoff:
    """flowcontrol.Backoff as the DaemonSet controller uses it: per key, a delay that doubles on each
    failure up to a cap and starts over after 2x the cap without one."""

    def __init__(self, initial: float, cap: float) -> None:
        self.initial = initial
        self.cap = cap
        self.entries: dict[str, tuple[float, float]] = {}  # key -> (delay, last failure, monotonic)

    def wait(self, key: str) -> float:
        """Seconds left in key's backoff; 0 means go ahead, and counts as the next failure."""
        now = time.monotonic()
        entry = self.entries.get(key)
        if entry is not None and now - entry[1] < entry[0]:
            return entry[0] - (now - entry[1])
        if entry is None or now - entry[1] > 2 * self.cap:
            delay = self.initial
        else:
            delay = min(entry[0] * 2, self.cap)
        self.entries[key] = (delay, now)
        if len(self.entries) > 4096:  # forget keys long out of backoff
            self.entries = {k: v for k, v in self.entries.items() if now - v[1] <= 2 * self.cap}
        return 0.0


def target_node(pod: Obj) -> str | None:
    """The node a daemon pod is for: its nodeName once bound, else its pinned metadata.name."""
    spec = pod.get("spec") or {}
    if spec.get("nodeName"):
        return spec["nodeName"]
    required = (((spec.get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    for term in required.get("nodeSelectorTerms") or []:
        for field in term.get("matchFields") or []:
            if field.get("key") == "metadata.name" and field.get("operator") == "In" and \
                    len(field.get("values") or []) == 1:
                return field["values"][0]
    return None


class DaemonSetController(OwnedPodHandlers, Controller):
    name = "daemonset"
    owner_kind = "DaemonSet"
    component = "daemonset-controller"
    workers = 2

    def __init__(self, client: KubeClient, informers: InformerFactory) -> None:
        super().__init__(client, informers)
        self.sets = informers.informer(DAEMONSETS)
        self.pods = informers.informer("/api/v1/pods")
        self.nodes = informers.informer("/api/v1/nodes")
        self.revisions = informers.informer("/apis/apps/v1/controllerrevisions")
        self.pods_by_ns = namespace_index(self.pods)
        self.revisions_by_ns = namespace_index(self.revisions)
        self.expectations = Expectations()
        self.failed_backoff = Backoff(1.0, 900.0)  # kube's failedPodsBackoff: 1 s doubling to 15 min
        self.recorder = EventRecorder(client, self.component)
        self.sets.add_handler(self.enqueue, lambda old, new: self.enqueue(new),
                              lambda ds: self.expectations.forget(object_key(ds)))
        self.pods.add_handler(self._pod_added, lambda old, new: self._pod_changed(new), self._pod_deleted)
        self.nodes.add_handler(self._node_changed, self._node_updated, self._node_changed)

    def _node_changed(self, node: Obj) -> None:
        for ds in self.sets.list():
            self.enqueue(ds)

    def _node_updated(self, old: Obj, new: Obj) -> None:
        # heartbeats change only status; kube re-evaluates on label, taint or condition changes
        if (old.get("metadata") or {}).get("labels") != (new.get("metadata") or {}).get("labels") or \
                (old.get("spec") or {}) != (new.get("spec") or {}):
            self._node_changed(new)

    # ------------------------------------------------------------------ reconcile
    async def sync(self, key: str) -> None:
        ds = self.sets.get(key)
        if ds is None:
            return
        ns, name = ds["metadata"]["namespace"], ds["metadata"]["name"]
        try:
            selector = label_selector_from_dict(ds["spec"].get("selector"))
        except SelectorError:
            return
        pods = await claim(self.client, ds, "apps/v1", "DaemonSet",
                           self.pods_by_ns.claim_candidates(ns, ds["metadata"]["uid"]), selector,
                           lambda p: f"/api/v1/namespaces/{ns}/pods/{p['metadata']['name']}",
                           lambda: self.client.get(f"/apis/apps/v1/namespaces/{ns}/daemonsets/{name}"))
        digest = await self.revision(ds)
        by_node: dict[str, list[Obj]] = {}
        for pod in pods:
            node = target_node(pod)
            if node is not None:
                by_node.setdefault(node, []).append(pod)
        template_spec = (ds["spec"].get("template") or {}).get("spec") or {}
        eligible = {n["metadata"]["name"]: node_should_run(template_spec, n) for n in self.nodes.list()}
        if self.expectations.satisfied(key) and not is_terminating(ds):
            await self.manage(key, ds, by_node, digest, eligible)
        await self.write_status(ds, by_node, digest, eligible)

    async def revision(self, ds: Obj) -> str:
        ns = ds["metadata"]["namespace"]
        data = revision_data(ds)
        uid = ds["metadata"]["uid"]
        owned = sorted((r for r in self.revisions_by_ns.list(ns) if (controller_ref(r) or {}).get("uid") == uid),
                       key=lambda r: int(r.get("revision") or 0))
        for r in owned:
            if normalized(r.get("data") or {}) == normalized(data):
                if r is not owned[-1]:  # back to an older template (rollout undo): it becomes the newest
                    await self.client.update(f"/apis/apps/v1/namespaces/{ns}/controllerrevisions/"
                                             f"{r['metadata']['name']}",
                                             {**r, "revision": int(owned[-1].get("revision") or 0) + 1})
                return (r["metadata"].get("labels") or {}).get(HASH_LABEL) or r["metadata"]["name"].rsplit("-", 1)[-1]
        collisions = int((ds.get("status") or {}).get("collisionCount") or 0)
        digest = revision_hash(data, collisions)
        labels = dict(((ds["spec"].get("template") or {}).get("metadata") or {}).get("labels") or {})
        labels[HASH_LABEL] = digest
        body = {"apiVersion": "apps/v1", "kind": "ControllerRevision",
                "metadata": {"name": f"{ds['metadata']['name']}-{digest}", "namespace": ns, "labels": labels,
                             "ownerReferences": [owner_ref(ds, "apps/v1", "DaemonSet")]},
                "data": data, "revision": (int(owned[-1].get("revision") or 0) + 1) if owned else 1}
        try:
            await self.client.create(f"/apis/apps/v1/namespaces/{ns}/controllerrevisions", body)
        except ApiError as exc:
            if exc.code != 409:
                raise
        limit = int(ds["spec"].get("revisionHistoryLimit", 10))
        for old in owned[:max(0, len(owned) - limit)]:  # all are history now
            try:
                await self.client.delete(f"/apis/apps/v1/namespaces/{ns}/controllerrevisions/{old['metadata']['name']}")
            except ApiError as exc:
                if exc.code != 404:
                    raise
        return digest

    def is_updated(self, pod: Obj, digest: str, ds: Obj) -> bool:
        labels = pod["metadata"].get("labels") or {}
        if REVISION_LABEL in labels:
            return labels[REVISION_LABEL] == digest
        return labels.get(GENERATION_LABEL) == str(ds["metadata"].get("generation") or 1)

    async def manage(self, key: str, ds: Obj, by_node: dict[str, list[Obj]], digest: str,
                     eligible: dict[str, tuple[bool, bool]]) -> None:
        min_ready = int(ds["spec"].get("minReadySeconds") or 0)
        now = now_utc()
        create: list[str] = []
        delete: list[Obj] = []
        nodes = {n["metadata"]["name"]: n for n in self.nodes.list()}
        desired = sum(1 for run, _ in eligible.values() if run)
        surging = self.surge(ds, desired) > 0
        for node_name in nodes:
            should_run, should_continue = eligible.get(node_name, (False, False))
            pods = [p for p in by_node.get(node_name, []) if not is_terminating(p)]
            if should_run and not pods:
                create.append(node_name)
            elif should_continue and pods:
                for pod in (p for p in pods if phase(p) == "Failed"):
                    # a kubelet rejecting the pod must not meet a hot loop: delete with backoff, and
                    # the next sync (seeing no pod) creates the replacement
                    wait = self.failed_backoff.wait(f"{key}/{node_name}")
                    if wait > 0:
                        self.queue.add_after(key, wait)
                        continue
                    self.recorder.event(ds, "Warning", "FailedDaemonPod",
                                        f"Found failed daemon pod {pod['metadata']['namespace']}/"
                                        f"{pod['metadata']['name']} on node {node_name}, will try to kill it")
                    delete.append(pod)
                running = sorted((p for p in pods if phase(p) != "Failed"),
                                 key=lambda p: p["metadata"].get("creationTimestamp") or "")
                if len(running) > 1:
                    # keep one updated pod if there is one (a surge leaves two), otherwise the oldest
                    updated = [p for p in running if self.is_updated(p, digest, ds)]
                    if not surging or not updated:
                        delete.extend(running[1:])
                    elif is_available(updated[0], min_ready, now):
                        delete.extend(p for p in running if p is not updated[0])
            elif not should_continue and pods:
                delete.extend(pods)
        for node_name, pods in by_node.items():  # pods for nodes that are gone
            if node_name not in nodes:
                delete.extend(p for p in pods if not is_terminating(p))
        if not create and not delete and \
                (ds["spec"].get("updateStrategy") or {}).get("type", "RollingUpdate") == "RollingUpdate":
            create, delete = self.rolling_update(ds, by_node, digest, nodes, desired)
        self.expectations.expect(key, adds=len(create), deletes=[object_key(p) for p in delete])
        for node_name in create:
            await self.create_pod(key, ds, node_name, digest)
        for pod in delete:
            await self.delete_pod(key, ds, pod)

    @staticmethod
    def surge(ds: Obj, desired: int) -> int:
        rolling = (ds["spec"].get("updateStrategy") or {}).get("rollingUpdate") or {}
        return scaled_value(rolling.get("maxSurge", 0), desired, True)

    def rolling_update(self, ds: Obj, by_node: dict[str, list[Obj]], digest: str,
                       nodes: dict[str, Obj], desired: int) -> tuple[list[str], list[Obj]]:
        """kube's rollingUpdate: replace old pods while at most maxUnavailable nodes lack an available pod
        (maxSurge 0), or start new pods beside old ones on up to maxSurge nodes."""
        rolling = (ds["spec"].get("updateStrategy") or {}).get("rollingUpdate") or {}
        max_unavailable = scaled_value(rolling.get("maxUnavailable", 1), desired, False)
        max_surge = self.surge(ds, desired)
        if max_surge == 0 and max_unavailable == 0:
            max_unavailable = 1
        min_ready = int(ds["spec"].get("minReadySeconds") or 0)
        now = now_utc()
        unavailable = 0
        old_available: list[Obj] = []
        old_unavailable: list[Obj] = []
        surge_candidates: list[str] = []
        surging = 0
        for node_name, pods in by_node.items():
            if node_name not in nodes:
                continue
            live = [p for p in pods if not is_terminating(p)]
            new = [p for p in live if self.is_updated(p, digest, ds)]
            old = [p for p in live if not self.is_updated(p, digest, ds)]
            if not live or not any(is_available(p, min_ready, now) for p in live):
                unavailable += 1
            if new and old:
                surging += 1
            for pod in old:
                if new:
                    continue  # its replacement exists; manage() removes it once the new pod is available
                if is_available(pod, min_ready, now):
                    old_available.append(pod) if max_surge == 0 else surge_candidates.append(node_name)
                else:
                    old_unavailable.append(pod)
        if max_surge == 0:
            budget = max(0, max_unavailable - unavailable)
            return [], old_unavailable + old_available[:budget]
        budget = max(0, max_surge - surging)
        return surge_candidates[:budget], old_unavailable

    async def create_pod(self, key: str, ds: Obj, node_name: str, digest: str) -> None:
        template = ds["spec"].get("template") or {}
        pod = pod_from_template(template, ds, "apps/v1", "DaemonSet")
        pod["metadata"]["generateName"] = f"{ds['metadata']['name']}-"
        pod["metadata"]["labels"][REVISION_LABEL] = digest
        pod["metadata"]["labels"][GENERATION_LABEL] = str(ds["metadata"].get("generation") or 1)
        pod["spec"]["tolerations"] = daemon_tolerations(pod["spec"])
        with_node_affinity(pod["spec"], node_name)
        ns = ds["metadata"]["namespace"]
        try:
            created = await self.client.create(f"/api/v1/namespaces/{ns}/pods", pod)
        except ApiError as exc:
            self.expectations.creation_observed(key)
            self.recorder.event(ds, "Warning", "FailedCreate", f"Error creating: {exc.message}")
            raise
        self.recorder.event(ds, "Normal", "SuccessfulCreate", f"Created pod: {created['metadata']['name']}")

    async def delete_pod(self, key: str, ds: Obj, pod: Obj) -> None:
        meta = pod["metadata"]
        try:
            await self.client.delete(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                                     {"kind": "DeleteOptions", "apiVersion": "v1",
                                      "preconditions": {"uid": meta["uid"]}})
        except ApiError as exc:
            self.expectations.deletion_observed(key, object_key(pod))
            if exc.code in (404, 409):
                return
            self.recorder.event(ds, "Warning", "FailedDelete", f"Error deleting: {exc.message}")
            raise
        self.recorder.event(ds, "Normal", "SuccessfulDelete", f"Deleted pod: {meta['name']}")

    async def write_status(self, ds: Obj, by_node: dict[str, list[Obj]], digest: str,
                           eligible: dict[str, tuple[bool, bool]]) -> None:
        min_ready = int(ds["spec"].get("minReadySeconds") or 0)
        now = now_utc()
        desired = current = misscheduled = ready = updated = available = 0
        for name, (should_run, _) in eligible.items():
            pods = [p for p in by_node.get(name, []) if not is_terminating(p)]
            if should_run:
                desired += 1
                if pods:
                    current += 1
                    oldest = min(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "")
                    if is_ready(oldest):
                        ready += 1
                        if is_available(oldest, min_ready, now):
                            available += 1
                    if any(self.is_updated(p, digest, ds) for p in pods):
                        updated += 1
            elif pods:
                misscheduled += 1
        status: Obj = {"currentNumberScheduled": current, "numberMisscheduled": misscheduled,
                       "desiredNumberScheduled": desired, "numberReady": ready,
                       "observedGeneration": int(ds["metadata"].get("generation") or 1)}
        for field, value in (("updatedNumberScheduled", updated), ("numberAvailable", available),
                             ("numberUnavailable", desired - available)):
            if value:
                status[field] = value
        old = ds.get("status") or {}
        if old.get("collisionCount") is not None:
            status["collisionCount"] = old["collisionCount"]
        if old.get("conditions"):
            status["conditions"] = old["conditions"]
        if status == old:
            return
        meta = ds["metadata"]
        try:
            await self.client.update(f"/apis/apps/v1/namespaces/{meta['namespace']}/daemonsets/{meta['name']}/status",
                                     {**ds, "status": status})
        except ApiError as exc:
            if exc.code == 409:
                self.queue.add_after(object_key(ds), 0.05)
            elif exc.code != 404:
                raise
        if min_ready and ready != available:
            self.queue.add_after(object_key(ds), float(min_ready))


