"""The disruption controller: keeps every PodDisruptionBudget's status true as its pods change.

As kube-controller-manager's: a pod event enqueues the PDBs of its namespace whose selector matches
it; a sync recomputes the status (expected pods from the controllers' scale, healthy = Ready and not
terminating, disruptionsAllowed, the DisruptionAllowed condition, expired disruptedPods dropped) and
writes it through the status subresource when it changed. The arithmetic is shared with the API
server's eviction path (apiserver/policy.py), so both always agree.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from ultraplane.apiserver.policy import compute_status
from ultraplane.apiserver.selectors import SelectorError, label_selector_from_dict
from ultraplane.client.http import MERGE, ApiError, KubeClient
from ultraplane.controllers.base import Controller, InformerFactory
from ultraplane.controllers.podcontrol import namespace_index

Obj = dict[str, Any]
PDBS = "/apis/policy/v1/poddisruptionbudgets"
# apiVersion/kind of a controller -> its scale subresource path template
SCALE_PATHS = {
    ("apps/v1", "ReplicaSet"): "/apis/apps/v1/namespaces/{ns}/replicasets/{name}/scale",
    ("apps/v1", "Deployment"): "/apis/apps/v1/namespaces/{ns}/deployments/{name}/scale",
    ("apps/v1", "StatefulSet"): "/apis/apps/v1/namespaces/{ns}/statefulsets/{name}/scale",
    ("v1", "ReplicationController"): "/api/v1/namespaces/{ns}/replicationcontrollers/{name}/scale",
}
COMPARED = ("disruptionsAllowed", "currentHealthy", "desiredHealthy", "expectedPods", "observedGeneration",
            "disruptedPods")


class DisruptionController(Controller):
    name = "disruption"
    workers = 2

    def __init__(self, client: KubeClient, informers: InformerFactory) -> None:
        super().__init__(client, informers)
        self.pdbs = informers.informer(PDBS)
        self.pods = informers.informer("/api/v1/pods")
        self.pdbs.add_handler(self.enqueue, lambda old, new: self.enqueue(new), None)
        self.pods.add_handler(self.pod_changed, lambda old, new: self.pod_changed(old, new), self.pod_changed)
        self.pods_by_ns = namespace_index(self.pods)

    def pod_changed(self, *objs: Obj) -> None:
        namespace = (objs[-1].get("metadata") or {}).get("namespace", "")
        labels = [(o.get("metadata") or {}).get("labels") or {} for o in objs]
        for pdb in self.pdbs.store.values():
            if pdb["metadata"].get("namespace") != namespace:
                continue
            try:
                selector = label_selector_from_dict((pdb.get("spec") or {}).get("selector"))
            except SelectorError:
                continue
            if any(selector.matches(lbl) for lbl in labels):
                self.enqueue(pdb)

    async def replicas_of(self, ref: Obj, namespace: str) -> int | None:
        template = SCALE_PATHS.get((ref.get("apiVersion", ""), ref.get("kind", "")))
        if template is None:
            return 1  # a controller without scale (a Job, a DaemonSet...) counts as one
        try:
            scale = await self.client.get(template.format(ns=namespace, name=ref.get("name", "")))
        except ApiError as exc:
            if exc.code == 404:
                return None
            raise
        return int((scale.get("spec") or {}).get("replicas") or 0)

    async def sync(self, key: str) -> None:
        pdb = self.pdbs.get(key)
        if pdb is None:
            return
        namespace = pdb["metadata"]["namespace"]
        pods = self.pods_by_ns.list(namespace)
        try:
            status = await compute_status(pdb, pods, dt.datetime.now(dt.UTC), self.replicas_of)
        except SelectorError:
            return
        current = pdb.get("status") or {}
        if all(status.get(f) == current.get(f) for f in COMPARED) and \
                [c.get("status") for c in status.get("conditions") or []] == \
                [c.get("status") for c in current.get("conditions") or []]:
            return
        body = {"metadata": {"resourceVersion": pdb["metadata"]["resourceVersion"]}, "status": status}
        if "disruptedPods" not in status:
            status["disruptedPods"] = None  # merge patch: drop the expired ones
        try:
            await self.client.patch(f"/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets/"
                                    f"{pdb['metadata']['name']}/status", body, content_type=MERGE)
        except ApiError as exc:
            if exc.code == 409:
                self.queue.add_after(key, 0.2)  # the informer has a newer one on its way
            elif exc.code != 404:
                raise
