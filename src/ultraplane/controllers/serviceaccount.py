"""Per-namespace defaults: the `default` ServiceAccount and the `kube-root-ca.crt` ConfigMap.

Both are kube-controller-manager controllers keyed by namespace: a namespace event, or a change to the
managed object, re-checks that namespace; a missing object is created again, a drifted root CA
ConfigMap is written back. Terminating namespaces are left alone (creating there is forbidden).
"""

from __future__ import annotations

from typing import Any

from ultraplane.client.http import ApiError, KubeClient
from ultraplane.controllers.base import Controller, InformerFactory

Obj = dict[str, Any]
NAMESPACES = "/api/v1/namespaces"
ROOT_CA_NAME = "kube-root-ca.crt"
ROOT_CA_DESCRIPTION = (
    "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the "
    "internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of "
    "Kubernetes clusters.")


class _PerNamespace(Controller):
    """Shared plumbing: namespace events and events of the one watched object name queue the namespace."""

    resource = ""  # "serviceaccounts" / "configmaps"
    object_name = ""
    workers = 2

    def __init__(self, client: KubeClient, informers: InformerFactory) -> None:
        super().__init__(client, informers)
        self.namespaces = informers.informer(NAMESPACES)
        # All objects of the resource, not a metadata.name field selector: the API server's cluster-wide
        # watch with that selector misses events today (see docs/ARCHITECTURE.md, controllers). The
        # informer is shared with the other controllers that watch the same collection.
        self.objects = informers.informer(f"/api/v1/{self.resource}")
        self.namespaces.add_handler(self.enqueue, lambda old, new: self.enqueue(new), None)
        self.objects.add_handler(None, lambda old, new: self._queue_ns(new), self._queue_ns)

    def _queue_ns(self, obj: Obj) -> None:
        if obj["metadata"].get("name") == self.object_name:
            self.queue.add(obj["metadata"].get("namespace", ""))

    def active(self, namespace: str) -> bool:
        ns = self.namespaces.get(namespace)
        return ns is not None and not ns["metadata"].get("deletionTimestamp") and (
            (ns.get("status") or {}).get("phase") != "Terminating")

    async def create(self, namespace: str, body: Obj) -> None:
        try:
            await self.client.create(f"/api/v1/namespaces/{namespace}/{self.resource}", body)
        except ApiError as exc:
            # 409: it exists after all (our cache lags); 403/404: the namespace is going away
            if exc.code not in (403, 404, 409):
                raise


class ServiceAccountController(_PerNamespace):
    name = "serviceaccount"
    resource = "serviceaccounts"
    object_name = "default"

    async def sync(self, key: str) -> None:
        if not self.active(key) or self.objects.get(f"{key}/default") is not None:
            return
        await self.create(key, {"apiVersion": "v1", "kind": "ServiceAccount",
                                "metadata": {"name": "default", "namespace": key}})


class RootCAPublisher(_PerNamespace):
    name = "root-ca-cert-publisher"
    resource = "configmaps"
    object_name = ROOT_CA_NAME

    def __init__(self, client: KubeClient, informers: InformerFactory, ca: bytes) -> None:
        super().__init__(client, informers)
        self.ca = ca.decode()

    async def sync(self, key: str) -> None:
        if not self.active(key) or not self.ca:
            return
        current = self.objects.get(f"{key}/{ROOT_CA_NAME}")
        if current is None:
            await self.create(key, {"apiVersion": "v1", "kind": "ConfigMap",
                                    "metadata": {"name": ROOT_CA_NAME, "namespace": key,
                                                 "annotations": {"kubernetes.io/description": ROOT_CA_DESCRIPTION}},
                                    "data": {"ca.crt": self.ca}})
            return
        annotations = current["metadata"].get("annotations") or {}
        if current.get("data") == {"ca.crt": self.ca} and \
                annotations.get("kubernetes.io/description") == ROOT_CA_DESCRIPTION:
            return
        updated = {**current, "data": {"ca.crt": self.ca}}
        updated["metadata"] = {**current["metadata"],
                               "annotations": {**annotations, "kubernetes.io/description": ROOT_CA_DESCRIPTION}}
        try:
            await self.client.update(f"/api/v1/namespaces/{key}/configmaps/{ROOT_CA_NAME}", updated)
        except ApiError as exc:
            if exc.code != 404:
                raise


def root_ca_publisher(client: KubeClient, informers: InformerFactory, options: Any) -> RootCAPublisher:
    return RootCAPublisher(client, informers, options.root_ca)
