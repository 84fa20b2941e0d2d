"""The ReplicaSet controller (and, with the same logic, the ReplicationController manager).

As kube's: pods are claimed by selector (adopt matching orphans, release owned pods that no longer
match), active pods are counted against spec.replicas, and the difference is created (slow-start
batches 1, 2, 4... of at most 500) or deleted (least valuable first). Expectations keep a sync from
acting again until the informer has seen the pods it created or deleted. Status carries replicas,
fullyLabeledReplicas, readyReplicas, availableReplicas (minReadySeconds), observedGeneration and the
ReplicaFailure condition; SuccessfulCreate / SuccessfulDelete / FailedCreate / FailedDelete events.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import math
from typing import Any

from ultraplane.apiserver.selectors import LabelSelector, SelectorError, label_selector_from_dict
from ultraplane.client.http import ApiError, KubeClient
from ultraplane.client.informer import object_key
from ultraplane.controllers.base import Controller, InformerFactory
from ultraplane.controllers.podcontrol import (
    EventRecorder,
    Expectations,
    claim,
    controller_ref,
    is_active,
    is_available,
    is_ready,
    is_terminating,
    namespace_index,
    now_utc,
    parse_time,
    phase,
    pod_from_template,
    rfc3339,
    slow_start,
)

Obj = dict[str, Any]
BURST_REPLICAS = 500  # kube's BurstReplicas: at most this many creations or deletions per sync
PHASE_ORDER = {"Pending": 0, "Unknown": 1, "Running": 2}


def deletion_order(pods: list[Obj], ranks: dict[str, int], now: dt.datetime | None = None) -> list[Obj]:
    """ActivePodsWithRanks (with LogarithmicScaleDown, on by default): the pods to delete first come
    first: unscheduled, then Pending < Unknown < Running, not ready, lower pod-deletion-cost, more
    related pods on the same node, ready for a shorter time, more container restarts, newer. Ready and
    creation times are compared in log2 buckets of their age; one bucket decides by UID."""
    when = now or now_utc()
    facts = {id(p): _facts(p, ranks) for p in pods}

    def compare(a: Obj, b: Obj) -> int:
        fa, fb = facts[id(a)], facts[id(b)]
        for field in range(5):  # scheduled, phase, ready, cost, -rank
            if fa[field] != fb[field]:
                return -1 if fa[field] < fb[field] else 1
        if fa[2] and fb[2] and fa[5] != fb[5]:  # both ready, for different times
            return _by_age(fa[5], fb[5], fa[8], fb[8], when)
        if fa[6] != fb[6]:
            return -1 if fa[6] > fb[6] else 1
        if fa[7] != fb[7]:
            return _by_age(fa[7], fb[7], fa[8], fb[8], when)
        return 0
    return sorted(pods, key=functools.cmp_to_key(compare))


def _facts(pod: Obj, ranks: dict[str, int]) -> tuple[Any, ...]:
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    meta = pod.get("metadata") or {}
    ready = is_ready(pod)
    ready_since = None
    if ready:
        cond = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
        ready_since = parse_time(cond.get("lastTransitionTime"))
    restarts = max((int(c.get("restartCount") or 0) for c in status.get("containerStatuses") or []), default=0)
    try:
        cost = int((meta.get("annotations") or {}).get("controller.kubernetes.io/pod-deletion-cost", "0"))
    except ValueError:
        cost = 0
    return (bool(spec.get("nodeName")), PHASE_ORDER.get(phase(pod), 3), ready, cost,
            -ranks.get(object_key(pod), 0), ready_since, restarts, parse_time(meta.get("creationTimestamp")),
            meta.get("uid", ""))


def _by_age(t1: dt.datetime | None, t2: dt.datetime | None, uid1: str, uid2: str, now: dt.datetime) -> int:
    """Newer first; a missing time counts as newest (afterOrZero); same log2 bucket of age: by UID."""
    if t1 is None or t2 is None:
        return 0 if t1 is t2 else (-1 if t1 is None else 1)
    diff = _log_rank(now - t1) - _log_rank(now - t2)
    if diff == 0:
        return -1 if uid1 < uid2 else (1 if uid1 > uid2 else 0)
    return -1 if diff < 0 else 1


def _log_rank(age: dt.timedelta) -> int:
    nanos = age.total_seconds() * 1e9
    return -1 if nanos <= 0 else int(math.log2(nanos))


class ReplicaSetController(Controller):
    name = "replicaset"
    component = "replicaset-controller"
    api_version = "apps/v1"
    kind = "ReplicaSet"
    collection = "/apis/apps/v1/replicasets"
    workers = 4

    def __init__(self, client: KubeClient, informers: InformerFactory) -> None:
        super().__init__(client, informers)
        self.sets = informers.informer(self.collection)
        self.pods = informers.informer("/api/v1/pods")
        self.pods_by_ns = namespace_index(self.pods)
        self.sets_by_ns = namespace_index(self.sets)
        self.expectations = Expectations()
        self.recorder = EventRecorder(client, self.component)
        self.sets.add_handler(self.enqueue, self._set_updated, self._set_deleted)
        self.pods.add_handler(self._pod_added, self._pod_updated, self._pod_deleted)

    # ------------------------------------------------------------------ paths
    def path(self, namespace: str, name: str = "") -> str:
        group = self.collection.rsplit("/", 1)[0]
        plural = self.collection.rsplit("/", 1)[1]
        base = f"{group}/namespaces/{namespace}/{plural}"
        return f"{base}/{name}" if name else base

    def selector(self, rs: Obj) -> LabelSelector:
        return label_selector_from_dict((rs.get("spec") or {}).get("selector"))

    # ------------------------------------------------------------------ events in
    def _set_updated(self, old: Obj, new: Obj) -> None:
        self.enqueue(new)

    def _set_deleted(self, rs: Obj) -> None:
        self.expectations.forget(object_key(rs))
        self.enqueue(rs)

    def _owner_key(self, pod: Obj) -> str | None:
        ref = controller_ref(pod)
        if ref is None or ref.get("kind") != self.kind:
            return None
        key = f"{pod['metadata'].get('namespace', '')}/{ref.get('name', '')}"
        owner = self.sets.get(key)
        if owner is None or owner["metadata"].get("uid") != ref.get("uid"):
            return None
        return key

    def _enqueue_matching(self, pod: Obj) -> None:
        labels = pod["metadata"].get("labels") or {}
        for rs in self.sets_by_ns.list(pod["metadata"].get("namespace", "")):
            try:
                if self.selector(rs).matches(labels):
                    self.enqueue(rs)
            except SelectorError:
                continue

    def _pod_added(self, pod: Obj) -> None:
        if is_terminating(pod):
            self._pod_deleted(pod)  # a restarted controller sees pods already being deleted as deletions
            return
        if controller_ref(pod) is not None:
            key = self._owner_key(pod)
            if key is not None:
                self.expectations.creation_observed(key)
                self.queue.add(key)
            return
        self._enqueue_matching(pod)

    def _pod_updated(self, old: Obj, new: Obj) -> None:
        if old["metadata"].get("resourceVersion") == new["metadata"].get("resourceVersion"):
            return
        labels_changed = (old["metadata"].get("labels") or {}) != (new["metadata"].get("labels") or {})
        if is_terminating(new):
            self._pod_deleted(new)
            if labels_changed:
                self._pod_deleted(old)
            return
        old_ref, new_ref = controller_ref(old), controller_ref(new)
        if old_ref is not None and (new_ref is None or old_ref.get("uid") != new_ref.get("uid")):
            key = self._owner_key(old)
            if key is not None:
                self.queue.add(key)
        if new_ref is not None:
            key = self._owner_key(new)
            if key is not None:
                self.queue.add(key)
                rs = self.sets.get(key) or {}
                min_ready = int((rs.get("spec") or {}).get("minReadySeconds") or 0)
                if min_ready > 0 and not is_ready(old) and is_ready(new):
                    self.queue.add_after(key, min_ready + 1)  # recount availability when it is due
            return
        if labels_changed or old_ref is not None:
            self._enqueue_matching(new)

    def _pod_deleted(self, pod: Obj) -> None:
        key = self._owner_key(pod) if controller_ref(pod) is not None else None
        if key is None:
            return
        self.expectations.deletion_observed(key, object_key(pod))
        self.queue.add(key)

    # ------------------------------------------------------------------ reconcile
    async def sync(self, key: str) -> None:
        rs = self.sets.get(key)
        if rs is None:
            self.expectations.forget(key)
            return
        try:
            selector = self.selector(rs)
        except SelectorError:
            return  # kube logs and gives up on an invalid selector: no retry would fix it
        namespace, name = rs["metadata"]["namespace"], rs["metadata"]["name"]
        needs_sync = self.expectations.satisfied(key) and not is_terminating(rs)
        active = [p for p in self.pods_by_ns.claim_candidates(namespace, rs["metadata"]["uid"]) if is_active(p)]
        pods = await claim(self.client, rs, self.api_version, self.kind, active, selector,
                           lambda p: f"/api/v1/namespaces/{namespace}/pods/{p['metadata']['name']}",
                           lambda: self.client.get(self.path(namespace, name)))
        error: Exception | None = None
        if needs_sync:
            error = await self.manage_replicas(key, rs, pods)
        status = self.calculate_status(rs, pods, error)
        updated = await self.update_status(rs, status)
        if error is not None:
            raise error
        min_ready = int((rs.get("spec") or {}).get("minReadySeconds") or 0)
        replicas = int((rs.get("spec") or {}).get("replicas", 1))
        if (updated is not None and min_ready > 0 and updated.get("readyReplicas", 0) == replicas
                and updated.get("availableReplicas", 0) != replicas):
            self.queue.add_after(key, float(min_ready))

    async def manage_replicas(self, key: str, rs: Obj, pods: list[Obj]) -> Exception | None:
        namespace, name = rs["metadata"]["namespace"], rs["metadata"]["name"]
        diff = len(pods) - int((rs.get("spec") or {}).get("replicas", 1))
        if diff < 0:
            count = min(-diff, BURST_REPLICAS)
            self.expectations.expect(key, adds=count)
            template = (rs.get("spec") or {}).get("template") or {}

            async def create_one() -> None:
                pod = pod_from_template(template, rs, self.api_version, self.kind)
                pod["metadata"]["generateName"] = f"{name}-"
                try:
                    created = await self.client.create(f"/api/v1/namespaces/{namespace}/pods", pod)
                except ApiError as exc:
                    self.recorder.event(rs, "Warning", "FailedCreate", f"Error creating: {exc.message}")
                    raise
                self.recorder.event(rs, "Normal", "SuccessfulCreate", f"Created pod: {created['metadata']['name']}")

            created, error = await slow_start(count, create_one)
            if error is not None:
                self.expectations.creation_observed(key, count - created)  # those will never show up
            return error
        if diff > 0:
            count = min(diff, BURST_REPLICAS)
            victims = pods if count >= len(pods) else deletion_order(pods, self.ranks(pods, self.related(rs, pods)))[
                :count]
            self.expectations.expect(key, deletes=[object_key(p) for p in victims])
            results = await asyncio.gather(*(self.delete_pod(key, rs, p) for p in victims), return_exceptions=True)
            errors = [r for r in results if isinstance(r, Exception)]
            return errors[0] if errors else None
        return None

    def related(self, rs: Obj, pods: list[Obj]) -> list[Obj]:
        """getIndirectlyRelatedPods: the active pods of every set with the same owner (a deployment's
        old and new sets), so a scale-down spreads over nodes across the whole rollout."""
        owner = controller_ref(rs)
        if owner is None:
            return pods
        namespace = rs["metadata"]["namespace"]
        siblings = {s["metadata"]["uid"] for s in self.sets_by_ns.list(namespace)
                    if (controller_ref(s) or {}).get("uid") == owner.get("uid")}
        return [p for uid in siblings for p in self.pods_by_ns.owned_by(uid) if is_active(p)]

    @staticmethod
    def ranks(pods: list[Obj], related: list[Obj] | None = None) -> dict[str, int]:
        # getPodsRankedByRelatedPodsOnSameNode: a pod sharing its node with more related pods goes first
        per_node: dict[str, int] = {}
        for pod in pods if related is None else related:
            node = (pod.get("spec") or {}).get("nodeName")
            if node:
                per_node[node] = per_node.get(node, 0) + 1
        return {object_key(p): per_node.get((p.get("spec") or {}).get("nodeName") or "", 0) for p in pods}

    async def delete_pod(self, key: str, rs: Obj, pod: Obj) -> None:
        meta = pod["metadata"]
        try:
            await self.client.delete(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                                     {"kind": "DeleteOptions", "apiVersion": "v1",
                                      "preconditions": {"uid": meta["uid"]}})
        except ApiError as exc:
            self.expectations.deletion_observed(key, object_key(pod))
            if exc.code in (404, 409):
                return  # already gone (or replaced by another pod of that name)
            self.recorder.event(rs, "Warning", "FailedDelete", f"Error deleting: {exc.message}")
            raise
        self.recorder.event(rs, "Normal", "SuccessfulDelete", f"Deleted pod: {meta['name']}")

    def calculate_status(self, rs: Obj, pods: list[Obj], error: Exception | None) -> Obj:
        spec = rs.get("spec") or {}
        template_labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        min_ready = int(spec.get("minReadySeconds") or 0)
        now = now_utc()
        fully_labeled = ready = available = 0
        for pod in pods:
            labels = pod["metadata"].get("labels") or {}
            if all(labels.get(k) == v for k, v in template_labels.items()):
                fully_labeled += 1
            if is_ready(pod):
                ready += 1
                if is_available(pod, min_ready, now):
                    available += 1
        current = rs.get("status") or {}
        conditions = [dict(c) for c in current.get("conditions") or []]
        failure = next((c for c in conditions if c.get("type") == "ReplicaFailure"), None)
        if error is not None and failure is None:
            diff = len(pods) - int(spec.get("replicas", 1))
            reason = "FailedCreate" if diff < 0 else "FailedDelete" if diff > 0 else ""
            message = error.message if isinstance(error, ApiError) else str(error)
            conditions.append({"type": "ReplicaFailure", "status": "True", "lastTransitionTime": rfc3339(),
                               "reason": reason, "message": message})
        elif error is None and failure is not None:
            conditions = [c for c in conditions if c.get("type") != "ReplicaFailure"]
        status: Obj = {"replicas": len(pods), "fullyLabeledReplicas": fully_labeled, "readyReplicas": ready,
                       "availableReplicas": available,
                       "observedGeneration": int(rs["metadata"].get("generation") or 1)}
        status = {k: v for k, v in status.items() if v or k == "replicas"}  # omitempty except replicas
        if conditions:
            status["conditions"] = conditions
        return status

    async def update_status(self, rs: Obj, status: Obj) -> Obj | None:
        current = rs.get("status") or {}
        counts = (set(status) | set(current)) - {"conditions"}  # a count absent on one side is 0 (omitempty)
        if all(current.get(k, 0) == status.get(k, 0) for k in counts) and \
                (current.get("conditions") or []) == (status.get("conditions") or []):
            return current
        meta = rs["metadata"]
        path = f"{self.path(meta['namespace'], meta['name'])}/status"
        body = {**rs, "status": status}
        for attempt in range(2):  # kube's statusUpdateRetries: one re-read after a conflict
            try:
                return (await self.client.update(path, body)).get("status") or {}
            except ApiError as exc:
                if exc.code == 404:
                    return None
                if exc.code != 409 or attempt:
                    raise
                fresh = await self.client.get(self.path(meta["namespace"], meta["name"]))
                status["observedGeneration"] = int(fresh["metadata"].get("generation") or 1)
                body = {**fresh, "status": status}
        return None


class ReplicationControllerController(ReplicaSetController):
    """The ReplicationManager: the ReplicaSet logic over core/v1 ReplicationControllers, whose selector is
    a plain label map (a missing one defaults to the template's labels in the API server)."""

    name = "replicationcontroller"
    component = "replication-controller"
    api_version = "v1"
    kind = "ReplicationController"
    collection = "/api/v1/replicationcontrollers"

    def selector(self, rs: Obj) -> LabelSelector:
        selector = (rs.get("spec") or {}).get("selector")
        if not selector:
            return LabelSelector((), nothing=True)
        return label_selector_from_dict({"matchLabels": selector})


