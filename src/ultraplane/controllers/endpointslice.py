"""The EndpointSlice controller: each Service with a selector gets discovery.k8s.io/v1 EndpointSlices.

As kube-controller-manager's: slices are named `<service>-<random>` (generateName), labelled
`kubernetes.io/service-name` and `endpointslice.kubernetes.io/managed-by:
endpointslice-controller.k8s.io` (plus the service's labels), owned by the service (controller,
blockOwnerDeletion), and hold at most 100 endpoints (--max-endpoints-per-slice) sharing one port set.
Unlike Endpoints, terminating pods stay listed with conditions ready=false, serving=<pod Ready>,
terminating=true. A service without endpoints keeps one empty placeholder slice. Reconciling reuses
the existing slices in order (updating only those that differ), creates what is missing and deletes
the surplus.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from typing import Any

from ultraplane.client.http import ApiError, KubeClient
from ultraplane.controllers.base import InformerFactory
from ultraplane.controllers.endpoints import (
    ServicePods,
    pod_hostname,
    pod_ip,
    pod_ready,
    resolved_ports,
    should_be_in_endpoints,
    target_ref,
)

Obj = dict[str, Any]
SLICES = "/apis/discovery.k8s.io/v1/endpointslices"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
MANAGED_BY = "endpointslice-controller.k8s.io"
MAX_ENDPOINTS_PER_SLICE = 100
ZONE_LABEL = "topology.kubernetes.io/zone"


class EndpointSliceController(ServicePods):
    name = "endpointslice"

    def __init__(self, client: KubeClient, informers: InformerFactory,
                 max_per_slice: int = MAX_ENDPOINTS_PER_SLICE) -> None:
        super().__init__(client, informers)
        self.max_per_slice = max_per_slice
        self.slices = informers.informer(SLICES, {"labelSelector": f"{MANAGED_BY_LABEL}={MANAGED_BY}"})
        self.nodes = informers.informer("/api/v1/nodes")
        self.slices.add_handler(self.slice_changed, lambda old, new: self.slice_changed(new), self.slice_changed)

    def slice_changed(self, eps: Obj) -> None:
        service = (eps["metadata"].get("labels") or {}).get(SERVICE_NAME_LABEL)
        if service:
            self.queue.add(f"{eps['metadata'].get('namespace')}/{service}")

    def owned_slices(self, namespace: str, service: str) -> list[Obj]:
        found = [s for s in self.slices.store.values() if s["metadata"].get("namespace") == namespace
                 and (s["metadata"].get("labels") or {}).get(SERVICE_NAME_LABEL) == service]
        return sorted(found, key=lambda s: s["metadata"]["name"])

    async def sync(self, key: str) -> None:
        namespace, _, name = key.partition("/")
        service = self.services.get(key)
        existing = self.owned_slices(namespace, name)
        if service is None or not (service.get("spec") or {}).get("selector"):
            # gone (the garbage collector would get them too) or no longer selecting: the slices go
            await self._delete(existing)
            return
        desired = self.desired(service)
        for current, want in zip(existing, desired, strict=False):
            if any(current.get(k) != want.get(k) for k in ("addressType", "endpoints", "ports")) or \
                    (current["metadata"].get("labels") or {}) != want["metadata"]["labels"]:
                body = {**want, "metadata": {**current["metadata"], "labels": want["metadata"]["labels"],
                                             "ownerReferences": want["metadata"]["ownerReferences"]}}
                body["metadata"].pop("managedFields", None)
                await self.client.update(f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices/"
                                         f"{current['metadata']['name']}", body)
        for want in desired[len(existing):]:
            try:
                await self.client.create(f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices", want)
            except ApiError as exc:
                if exc.code != 403:  # namespace terminating
                    raise
        await self._delete(existing[len(desired):])

    async def _delete(self, slices: list[Obj]) -> None:
        for eps in slices:
            meta = eps["metadata"]
            try:
                await self.client.delete(f"/apis/discovery.k8s.io/v1/namespaces/{meta['namespace']}/endpointslices/"
                                         f"{meta['name']}")
            except ApiError as exc:
                if exc.code != 404:
                    raise

    def desired(self, service: Obj) -> list[Obj]:
        spec = service["spec"]
        meta = service["metadata"]
        publish = bool(spec.get("publishNotReadyAddresses"))
        address_type = "IPv6" if (spec.get("ipFamilies") or ["IPv4"])[0] == "IPv6" else "IPv4"
        by_ports: dict[tuple[tuple[Any, ...], ...], list[Obj]] = defaultdict(list)
        for pod in self.service_pods(service):
            if not should_be_in_endpoints(pod, include_terminating=True):
                continue
            ip = pod_ip(pod)
            try:
                if ipaddress.ip_address(ip).version != (6 if address_type == "IPv6" else 4):
                    continue
            except ValueError:
                continue
            ports = resolved_ports(pod, spec)
            if ports is None:
                continue
            serving = publish or pod_ready(pod)
            terminating = bool(pod["metadata"].get("deletionTimestamp"))
            endpoint: Obj = {"addresses": [ip],
                             "conditions": {"ready": serving and not terminating, "serving": serving,
                                            "terminating": terminating}}
            hostname = pod_hostname(pod, service)
            if hostname:
                endpoint["hostname"] = hostname
            node_name = (pod.get("spec") or {}).get("nodeName")
            if node_name:
                endpoint["nodeName"] = node_name
                node = self.nodes.get(node_name)
                zone = ((node or {}).get("metadata", {}).get("labels") or {}).get(ZONE_LABEL)
                if zone:
                    endpoint["zone"] = zone
            endpoint["targetRef"] = target_ref(pod)
            by_ports[tuple(tuple(sorted(p.items())) for p in ports)].append(endpoint)
        labels = {**(meta.get("labels") or {}), SERVICE_NAME_LABEL: meta["name"], MANAGED_BY_LABEL: MANAGED_BY}
        if spec.get("clusterIP") == "None":
            labels["service.kubernetes.io/headless"] = ""
        owner = {"apiVersion": "v1", "kind": "Service", "name": meta["name"], "uid": meta.get("uid"),
                 "controller": True, "blockOwnerDeletion": True}

        def slice_of(ports: list[Obj] | None, endpoints: list[Obj]) -> Obj:
            body: Obj = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                         "metadata": {"generateName": f"{meta['name']}-", "namespace": meta["namespace"],
                                      "labels": labels, "ownerReferences": [owner]},
                         "addressType": address_type, "endpoints": endpoints}
            if ports is not None:
                body["ports"] = ports
            return body

        out = []
        for ident, endpoints in by_ports.items():
            ports = [dict(p) for p in ident]
            for start in range(0, len(endpoints), self.max_per_slice):
                out.append(slice_of(ports, endpoints[start:start + self.max_per_slice]))
        if not out:
            out.append(slice_of(None, []))  # kube's placeholder slice
        return out
