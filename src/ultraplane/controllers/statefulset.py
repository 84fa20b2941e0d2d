"""The StatefulSet controller: pods with stable names and storage, in order, on tracked revisions.

As kube's: pod N is `<set>-N` (from spec.ordinals.start), with hostname = its name, subdomain =
serviceName, the labels statefulset.kubernetes.io/pod-name, apps.kubernetes.io/pod-index and
controller-revision-hash, and a PVC `<claim>-<set>-N` per volumeClaimTemplate. Each distinct pod
template is a ControllerRevision `<set>-<hash>` (data: the template as a replace patch), numbered in
order; status.currentRevision / updateRevision name them. OrderedReady creates ordinals upwards one at
a time, each waiting for the previous to be Running and Ready (minReadySeconds), and removes them
downwards one at a time; Parallel does both at once. RollingUpdate replaces, from the highest ordinal
down to the partition, one pod at a time whose revision is not the update revision; OnDelete leaves
that to the user. Failed or succeeded pods are deleted and recreated.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from ultraplane.apiserver.selectors import SelectorError, label_selector_from_dict
from ultraplane.client.http import ApiError, KubeClient
from ultraplane.client.informer import object_key
from ultraplane.controllers.base import Controller, InformerFactory
from ultraplane.controllers.deployment import fnv32a, normalized, safe_encode
from ultraplane.controllers.podcontrol import (
    EventRecorder,
    Expectations,
    OwnedPodHandlers,
    claim,
    controller_ref,
    deep_copy,
    is_available,
    is_ready,
    is_terminating,
    namespace_index,
    now_utc,
    owner_ref,
    phase,
    pod_from_template,
)

Obj = dict[str, Any]
SETS = "/apis/apps/v1/statefulsets"
REVISIONS = "/apis/apps/v1/controllerrevisions"
REVISION_LABEL = "controller-revision-hash"
HASH_LABEL = "controller.kubernetes.io/hash"
POD_NAME_LABEL = "statefulset.kubernetes.io/pod-name"
POD_INDEX_LABEL = "apps.kubernetes.io/pod-index"


def revision_data(sts: Obj) -> Obj:
    """getPatch: the part of the set a revision records, the pod template as a replace patch."""
    return {"spec": {"template": {**normalized(sts["spec"].get("template") or {}), "$patch": "replace"}}}


def revision_hash(data: Obj, collision_count: int | None) -> str:
    raw = orjson.dumps(data, option=orjson.OPT_SORT_KEYS)
    if collision_count is not None:
        raw += (collision_count & 0xFFFFFFFF).to_bytes(4, "little") + b"\x00\x00\x00\x00"
    return safe_encode(str(fnv32a(raw)))


def template_of(revision: Obj) -> Obj:
    template = deep_copy(((revision.get("data") or {}).get("spec") or {}).get("template") or {})
    template.pop("$patch", None)
    return template


def ordinal_of(sts_name: str, pod: Obj) -> int | None:
    match = re.fullmatch(rf"{re.escape(sts_name)}-(\d+)", pod["metadata"].get("name", ""))
    return int(match.group(1)) if match else None


def is_healthy(pod: Obj, min_ready: int) -> bool:
    return phase(pod) == "Running" and is_available(pod, min_ready, now_utc()) and not is_terminating(pod)


class StatefulSetController(OwnedPodHandlers, Controller):
    name = "statefulset"
    owner_kind = "StatefulSet"
    component = "statefulset-controller"
    workers = 4

    def __init__(self, client: KubeClient, informers: InformerFactory) -> None:
        super().__init__(client, informers)
        self.sets = informers.informer(SETS)
        self.pods = informers.informer("/api/v1/pods")
        self.revisions = informers.informer(REVISIONS)
        self.pods_by_ns = namespace_index(self.pods)
        self.revisions_by_ns = namespace_index(self.revisions)
        self.expectations = Expectations()
        self.recorder = EventRecorder(client, self.component)
        self.sets.add_handler(self.enqueue, lambda old, new: self.enqueue(new), self._set_deleted)
        # every pod event counts as an observed creation here (updates too), as this controller always did
        self.pods.add_handler(self._pod_added, lambda old, new: self._pod_added(new), self._pod_deleted)

    def _set_deleted(self, sts: Obj) -> None:
        self.expectations.forget(object_key(sts))

    async def sync(self, key: str) -> None:
        sts = self.sets.get(key)
        if sts is None:
            return
        ns, name = sts["metadata"]["namespace"], sts["metadata"]["name"]
        try:
            selector = label_selector_from_dict(sts["spec"].get("selector"))
        except SelectorError:
            return
        pods = await claim(self.client, sts, "apps/v1", "StatefulSet",
                           self.pods_by_ns.claim_candidates(ns, sts["metadata"]["uid"]), selector,
                           lambda p: f"/api/v1/namespaces/{ns}/pods/{p['metadata']['name']}",
                           lambda: self.client.get(f"/apis/apps/v1/namespaces/{ns}/statefulsets/{name}"))
        pods = [p for p in pods if ordinal_of(name, p) is not None]
        current, update, collisions = await self.revisions_for(sts)
        status = await StatefulSetSync(self, sts, pods, current, update).run()
        status["collisionCount"] = collisions
        await self.write_status(sts, status)
        min_ready = int(sts["spec"].get("minReadySeconds") or 0)
        if min_ready and status.get("readyReplicas", 0) != status.get("availableReplicas", 0):
            self.queue.add_after(key, float(min_ready))  # recount once those pods are available
        await self.truncate_history(sts, pods, current, update)

    # ------------------------------------------------------------------ revisions
    def owned_revisions(self, sts: Obj) -> list[Obj]:
        uid = sts["metadata"]["uid"]
        owned = [r for r in self.revisions_by_ns.list(sts["metadata"]["namespace"])
                 if (controller_ref(r) or {}).get("uid") == uid]
        return sorted(owned, key=lambda r: (int(r.get("revision") or 0), r["metadata"].get("name", "")))

    async def revisions_for(self, sts: Obj) -> tuple[Obj, Obj, int]:
        ns = sts["metadata"]["namespace"]
        revisions = self.owned_revisions(sts)
        collisions = int((sts.get("status") or {}).get("collisionCount") or 0)
        data = revision_data(sts)
        next_number = (int(revisions[-1].get("revision") or 0) + 1) if revisions else 1
        equal = [r for r in revisions if normalized(r.get("data") or {}) == normalized(data)]
        if equal:
            update = equal[-1]
            if update is not revisions[-1]:  # rolled back to an older template: it becomes the newest
                update = await self.client.update(f"/apis/apps/v1/namespaces/{ns}/controllerrevisions/"
                                                  f"{update['metadata']['name']}", {**update, "revision": next_number})
        else:
            while True:
                digest = revision_hash(data, collisions)
                name = f"{sts['metadata']['name']}-{digest}"
                labels = dict(((sts["spec"].get("template") or {}).get("metadata") or {}).get("labels") or {})
                labels[HASH_LABEL] = digest
                body = {"apiVersion": "apps/v1", "kind": "ControllerRevision",
                        "metadata": {"name": name, "namespace": ns, "labels": labels,
                                     "ownerReferences": [owner_ref(sts, "apps/v1", "StatefulSet")]},
                        "data": data, "revision": next_number}
                try:
                    update = await self.client.create(f"/apis/apps/v1/namespaces/{ns}/controllerrevisions", body)
                    break
                except ApiError as exc:
                    if exc.code != 409:
                        raise
                    existing = await self.client.get(f"/apis/apps/v1/namespaces/{ns}/controllerrevisions/{name}")
                    if (controller_ref(existing) or {}).get("uid") == sts["metadata"]["uid"] and \
                            normalized(existing.get("data") or {}) == normalized(data):
                        update = existing
                        break
                    collisions += 1  # a hash collision with someone else's revision
        current_name = (sts.get("status") or {}).get("currentRevision")
        current = next((r for r in revisions if r["metadata"]["name"] == current_name), None) or update
        return current, update, collisions

    async def truncate_history(self, sts: Obj, pods: list[Obj], current: Obj, update: Obj) -> None:
        live = {current["metadata"]["name"], update["metadata"]["name"]}
        live |= {(p["metadata"].get("labels") or {}).get(REVISION_LABEL, "") for p in pods}
        history = [r for r in self.owned_revisions(sts) if r["metadata"]["name"] not in live]
        limit = int(sts["spec"].get("revisionHistoryLimit", 10))
        for revision in history[:max(0, len(history) - limit)]:
            try:
                await self.client.delete(f"/apis/apps/v1/namespaces/{sts['metadata']['namespace']}/"
                                         f"controllerrevisions/{revision['metadata']['name']}")
            except ApiError as exc:
                if exc.code != 404:
                    raise

    async def write_status(self, sts: Obj, status: Obj) -> None:
        status = {k: v for k, v in status.items() if v or k in ("replicas", "availableReplicas")}
        if status == (sts.get("status") or {}):
            return
        meta = sts["metadata"]
        try:
            await self.client.update(f"/apis/apps/v1/namespaces/{meta['namespace']}/statefulsets/{meta['name']}/status",
                                     {**sts, "status": status})
        except ApiError as exc:
            if exc.code == 409:
                self.queue.add_after(object_key(sts), 0.05)  # the informer brings the newer object
            elif exc.code != 404:
                raise


class StatefulSetSync:
    def __init__(self, c: StatefulSetController, sts: Obj, pods: list[Obj], current: Obj, update: Obj) -> None:
        self.c = c
        self.sts = sts
        self.spec = sts["spec"]
        self.ns = sts["metadata"]["namespace"]
        self.name = sts["metadata"]["name"]
        self.current = current
        self.update = update
        self.by_ordinal = {ordinal_of(self.name, p): p for p in pods}
        self.min_ready = int(self.spec.get("minReadySeconds") or 0)
        self.monotonic = self.spec.get("podManagementPolicy", "OrderedReady") != "Parallel"
        self.start = int((self.spec.get("ordinals") or {}).get("start") or 0)
        self.replicas = int(self.spec.get("replicas", 1))

    def revision_of(self, pod: Obj) -> str:
        return (pod["metadata"].get("labels") or {}).get(REVISION_LABEL, "")

    def partition(self) -> int:
        strategy = self.spec.get("updateStrategy") or {}
        if strategy.get("type", "RollingUpdate") != "RollingUpdate":
            return self.replicas + self.start
        return self.start + int((strategy.get("rollingUpdate") or {}).get("partition") or 0)

    async def run(self) -> Obj:
        key = object_key(self.sts)
        if self.c.expectations.satisfied(key) and not is_terminating(self.sts):
            await self.reconcile(key)
        return self.status()

    async def reconcile(self, key: str) -> None:
        wanted = range(self.start, self.start + self.replicas)
        condemned = sorted((o for o in self.by_ordinal if o not in wanted), reverse=True)
        # replace finished pods first (kube deletes them and recreates on a later pass)
        for ordinal in wanted:
            pod = self.by_ordinal.get(ordinal)
            if pod is not None and phase(pod) in ("Failed", "Succeeded") and not is_terminating(pod):
                await self.delete(key, pod)
                if self.monotonic:
                    return
        for ordinal in wanted:
            pod = self.by_ordinal.get(ordinal)
            if pod is None:
                await self.create(key, ordinal)
                if self.monotonic:
                    return
                continue
            if self.monotonic and (is_terminating(pod) or not is_healthy(pod, self.min_ready)):
                return  # OrderedReady: nothing further until this one is Running and Ready
        for ordinal in condemned:
            pod = self.by_ordinal[ordinal]
            if is_terminating(pod):
                if self.monotonic:
                    return
                continue
            if self.monotonic and any(not is_healthy(p, self.min_ready) for o, p in self.by_ordinal.items()
                                      if o != ordinal and o in wanted):
                return
            if self.retention("whenScaled") == "Delete":
                await self.claims_owned_by(pod)
            await self.delete(key, pod)
            if self.monotonic:
                return
        if (self.spec.get("updateStrategy") or {}).get("type", "RollingUpdate") != "RollingUpdate":
            return
        update_name = self.update["metadata"]["name"]
        for ordinal in sorted((o for o in wanted if o >= self.partition()), reverse=True):
            pod = self.by_ordinal.get(ordinal)
            if pod is None:
                return
            if self.revision_of(pod) != update_name and not is_terminating(pod):
                await self.delete(key, pod)
                return
            if not is_healthy(pod, self.min_ready):
                return

    def template_for(self, ordinal: int) -> tuple[Obj, Obj]:
        """Pods below the partition keep the current revision; the rest get the update revision."""
        revision = self.current if ordinal < self.partition() else self.update
        return template_of(revision), revision

    async def create(self, key: str, ordinal: int) -> None:
        template, revision = self.template_for(ordinal)
        pod_name = f"{self.name}-{ordinal}"
        pod = pod_from_template(template, self.sts, "apps/v1", "StatefulSet")
        meta, spec = pod["metadata"], pod["spec"]
        meta["name"] = pod_name
        meta["labels"].update({POD_NAME_LABEL: pod_name, POD_INDEX_LABEL: str(ordinal),
                               REVISION_LABEL: revision["metadata"]["name"]})
        spec["hostname"] = pod_name
        if self.spec.get("serviceName"):
            spec["subdomain"] = self.spec["serviceName"]
        for claim_template in self.spec.get("volumeClaimTemplates") or []:
            claim_name = f"{claim_template['metadata']['name']}-{pod_name}"
            await self.ensure_claim(claim_template, claim_name, pod_name)
            volumes = [v for v in spec.get("volumes") or [] if v.get("name") != claim_template["metadata"]["name"]]
            volumes.append({"name": claim_template["metadata"]["name"],
                            "persistentVolumeClaim": {"claimName": claim_name}})
            spec["volumes"] = volumes
        self.c.expectations.expect(key, adds=1)
        try:
            await self.c.client.create(f"/api/v1/namespaces/{self.ns}/pods", pod)
        except ApiError as exc:
            self.c.expectations.creation_observed(key)
            if exc.code == 409:
                return  # the informer has not shown it yet
            self.c.recorder.event(self.sts, "Warning", "FailedCreate",
                                  f"create Pod {pod_name} in StatefulSet {self.name} failed error: {exc.message}")
            raise
        self.c.recorder.event(self.sts, "Normal", "SuccessfulCreate",
                              f"create Pod {pod_name} in StatefulSet {self.name} successful")

    async def ensure_claim(self, claim_template: Obj, claim_name: str, pod_name: str) -> None:
        claim_obj = deep_copy(claim_template)
        claim_obj.pop("status", None)
        meta = claim_obj.setdefault("metadata", {})
        meta["name"] = claim_name
        meta["namespace"] = self.ns
        labels = meta.setdefault("labels", {})
        labels.update((self.spec.get("selector") or {}).get("matchLabels") or {})
        if self.retention("whenDeleted") == "Delete":
            # deleting the set deletes the claim (the garbage collector follows this reference)
            meta["ownerReferences"] = [self.claim_owner(self.sts, "apps/v1", "StatefulSet")]
        claim_obj.update({"apiVersion": "v1", "kind": "PersistentVolumeClaim"})
        try:
            await self.c.client.create(f"/api/v1/namespaces/{self.ns}/persistentvolumeclaims", claim_obj)
        except ApiError as exc:
            if exc.code == 409:
                return
            self.c.recorder.event(self.sts, "Warning", "FailedCreate",
                                  f"create Claim {claim_name} for Pod {pod_name} in StatefulSet {self.name} "
                                  f"failed error: {exc.message}")
            raise
        self.c.recorder.event(self.sts, "Normal", "SuccessfulCreate",
                              f"create Claim {claim_name} Pod {pod_name} in StatefulSet {self.name} success")

    def retention(self, when: str) -> str:
        return (self.spec.get("persistentVolumeClaimRetentionPolicy") or {}).get(when, "Retain")

    @staticmethod
    def claim_owner(owner: Obj, api_version: str, kind: str) -> Obj:
        meta = owner["metadata"]
        return {"apiVersion": api_version, "kind": kind, "name": meta["name"], "uid": meta["uid"]}

    async def claims_owned_by(self, pod: Obj) -> None:
        """whenScaled: Delete: a condemned pod's claims get the pod as owner, so they go with it."""
        pod_name = pod["metadata"]["name"]
        for claim_template in self.spec.get("volumeClaimTemplates") or []:
            claim_name = f"{claim_template['metadata']['name']}-{pod_name}"
            try:
                await self.c.client.patch(f"/api/v1/namespaces/{self.ns}/persistentvolumeclaims/{claim_name}",
                                          {"metadata": {"ownerReferences": [self.claim_owner(pod, "v1", "Pod")]}})
            except ApiError as exc:
                if exc.code != 404:
                    raise

    async def delete(self, key: str, pod: Obj) -> None:
        meta = pod["metadata"]
        self.c.expectations.expect(key, deletes=[object_key(pod)])
        try:
            await self.c.client.delete(f"/api/v1/namespaces/{self.ns}/pods/{meta['name']}",
                                       {"kind": "DeleteOptions", "apiVersion": "v1",
                                        "preconditions": {"uid": meta["uid"]}})
        except ApiError as exc:
            self.c.expectations.deletion_observed(key, object_key(pod))
            if exc.code in (404, 409):
                return
            self.c.recorder.event(self.sts, "Warning", "FailedDelete",
                                  f"delete Pod {meta['name']} in StatefulSet {self.name} failed error: {exc.message}")
            raise
        self.c.recorder.event(self.sts, "Normal", "SuccessfulDelete",
                              f"delete Pod {meta['name']} in StatefulSet {self.name} successful")

    def status(self) -> Obj:
        now = now_utc()
        current_name, update_name = self.current["metadata"]["name"], self.update["metadata"]["name"]
        live = [p for p in self.by_ordinal.values() if not is_terminating(p)]
        status: Obj = {"observedGeneration": int(self.sts["metadata"].get("generation") or 1),
                       "replicas": len(live),
                       "readyReplicas": sum(1 for p in live if is_ready(p)),
                       "availableReplicas": sum(1 for p in live if is_available(p, self.min_ready, now)),
                       "currentReplicas": sum(1 for p in live if self.revision_of(p) == current_name),
                       "updatedReplicas": sum(1 for p in live if self.revision_of(p) == update_name),
                       "currentRevision": current_name, "updateRevision": update_name}
        # completeRollingUpdate: once every pod is on the update revision and ready, it is current
        if (self.spec.get("updateStrategy") or {}).get("type", "RollingUpdate") == "RollingUpdate" and \
                status["updatedReplicas"] == status["replicas"] == self.replicas and \
                status["readyReplicas"] == self.replicas:
            status["currentRevision"] = update_name
            status["currentReplicas"] = status["updatedReplicas"]
        return status
