"""The endpoints controller: each Service with a selector gets an Endpoints object listing its pods.

As kube-controller-manager's: a service's pods are the pods of its namespace matching its selector that
have an IP and are not terminal (nor terminating, unless publishNotReadyAddresses). Ready pods go to
`addresses`, the others to `notReadyAddresses`; each service port is resolved per pod (a named
targetPort is looked up among the pod's container ports; a pod without it is left out of that port's
subset), and addresses with the same ports share a subset. A pod event queues the services whose
selector matched its old or new labels. `ServicePods` is shared with the EndpointSlice controller.
"""

from __future__ import annotations

from typing import Any

from ultraplane.client.http import ApiError, KubeClient
from ultraplane.client.informer import object_key
from ultraplane.controllers.base import Controller, InformerFactory
from ultraplane.controllers.podcontrol import namespace_index

Obj = dict[str, Any]
SERVICES = "/api/v1/services"
PODS = "/api/v1/pods"


def selector_matches(selector: dict[str, str], labels: dict[str, str] | None) -> bool:
    labels = labels or {}
    return all(labels.get(k) == v for k, v in selector.items())


def pod_ready(pod: Obj) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def pod_ip(pod: Obj) -> str:
    return (pod.get("status") or {}).get("podIP") or ""


def should_be_in_endpoints(pod: Obj, include_terminating: bool) -> bool:
    """kube's ShouldPodBeInEndpoints: an IP, not terminal, not terminating (unless asked for)."""
    if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return False
    if not pod_ip(pod):
        return False
    return include_terminating or not pod["metadata"].get("deletionTimestamp")


def resolve_port(pod: Obj, service_port: Obj) -> int | None:
    """The pod's port for a service port: targetPort as a number, or the named container port."""
    target = service_port.get("targetPort", service_port.get("port"))
    if isinstance(target, int):
        return target
    if isinstance(target, str) and target.isdigit():
        return int(target)
    protocol = service_port.get("protocol", "TCP")
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == target and port.get("protocol", "TCP") == protocol:
                return int(port["containerPort"])
    return None


def endpoint_port(service_port: Obj, number: int) -> Obj:
    port: Obj = {"port": number, "protocol": service_port.get("protocol", "TCP")}
    if service_port.get("name"):
        port["name"] = service_port["name"]
    if service_port.get("appProtocol"):
        port["appProtocol"] = service_port["appProtocol"]
    return port


def resolved_ports(pod: Obj, spec: Obj) -> list[Obj] | None:
    """The service's ports as this pod serves them; None when the service has ports and none resolves on
    the pod (it is left out of Endpoints and EndpointSlices alike)."""
    ports = []
    for service_port in spec.get("ports") or []:
        number = resolve_port(pod, service_port)
        if number is not None:
            ports.append(endpoint_port(service_port, number))
    return None if spec.get("ports") and not ports else ports


def target_ref(pod: Obj) -> Obj:
    meta = pod["metadata"]
    return {"kind": "Pod", "namespace": meta.get("namespace"), "name": meta.get("name"), "uid": meta.get("uid")}


def pod_hostname(pod: Obj, service: Obj) -> str:
    """kube sets the endpoint's hostname when the pod's subdomain is the service (headless DNS)."""
    spec = pod.get("spec") or {}
    if spec.get("hostname") and spec.get("subdomain") == service["metadata"]["name"]:
        return str(spec["hostname"])
    return ""


class ServicePods(Controller):
    """Services and pods informers, with the pods of each namespace and services queued on pod changes."""

    workers = 4

    def __init__(self, client: KubeClient, informers: InformerFactory) -> None:
        super().__init__(client, informers)
        self.services = informers.informer(SERVICES)
        self.pods = informers.informer(PODS)
        self.pods_by_ns = namespace_index(self.pods)
        self.services.add_handler(self.enqueue, lambda old, new: self.enqueue(new), self.enqueue)
        self.pods.add_handler(self.pod_changed, self.pod_changed, self.pod_changed)

    def pod_changed(self, *objs: Obj) -> None:
        namespace = (objs[-1].get("metadata") or {}).get("namespace", "")
        if len(objs) == 2 and not self.relevant_change(objs[0], objs[1]):
            return
        labels = [(o.get("metadata") or {}).get("labels") or {} for o in objs]
        for service in self.services.store.values():
            smeta = service["metadata"]
            selector = (service.get("spec") or {}).get("selector")
            if smeta.get("namespace") == namespace and selector and any(
                    selector_matches(selector, lab) for lab in labels):
                self.enqueue(service)

    @staticmethod
    def relevant_change(old: Obj, new: Obj) -> bool:
        """Only what an endpoint shows: labels, IP, readiness, phase, deletion, node, hostname, ports."""
        def view(pod: Obj) -> tuple[Any, ...]:
            meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
            return (meta.get("labels"), pod_ip(pod), pod_ready(pod), (pod.get("status") or {}).get("phase"),
                    bool(meta.get("deletionTimestamp")), spec.get("nodeName"), spec.get("hostname"),
                    spec.get("subdomain"), [c.get("ports") for c in spec.get("containers") or []])
        return view(old) != view(new)

    def service_pods(self, service: Obj) -> list[Obj]:
        namespace = service["metadata"]["namespace"]
        selector = service["spec"]["selector"]
        return [pod for pod in sorted(self.pods_by_ns.list(namespace), key=object_key)
                if selector_matches(selector, pod["metadata"].get("labels"))]


class EndpointsController(ServicePods):
    name = "endpoint"

    def __init__(self, client: KubeClient, informers: InformerFactory) -> None:
        super().__init__(client, informers)
        self.endpoints = informers.informer("/api/v1/endpoints")
        self.endpoints.add_handler(None, None, self.enqueue)  # deleted by someone: written again

    async def sync(self, key: str) -> None:
        namespace, _, name = key.partition("/")
        path = f"/api/v1/namespaces/{namespace}/endpoints/{name}"
        service = self.services.get(key)
        if service is None:
            if self.endpoints.get(key) is not None:
                try:
                    await self.client.delete(path)
                except ApiError as exc:
                    if exc.code != 404:
                        raise
            return
        spec = service.get("spec") or {}
        if not spec.get("selector"):
            return  # endpoints of selector-less services are the user's
        subsets = self.subsets(service)
        labels = dict(service["metadata"].get("labels") or {})
        if spec.get("clusterIP") == "None":
            labels["service.kubernetes.io/headless"] = ""
        current = self.endpoints.get(key)
        if current is not None and (current.get("subsets") or []) == subsets and \
                (current["metadata"].get("labels") or {}) == labels:
            return
        body: Obj = {"apiVersion": "v1", "kind": "Endpoints",
                     "metadata": {"name": name, "namespace": namespace, "labels": labels}}
        if subsets:
            body["subsets"] = subsets
        if current is None:
            try:
                await self.client.create(f"/api/v1/namespaces/{namespace}/endpoints", body)
            except ApiError as exc:
                if exc.code == 409:
                    current = await self.client.get(path)
                elif exc.code == 403:  # namespace terminating
                    return
                else:
                    raise
            else:
                return
        body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        body["metadata"]["annotations"] = current["metadata"].get("annotations")
        await self.client.update(path, body)

    def subsets(self, service: Obj) -> list[Obj]:
        spec = service["spec"]
        publish = bool(spec.get("publishNotReadyAddresses"))
        groups: dict[tuple[tuple[Any, ...], ...], tuple[list[Obj], list[Obj]]] = {}
        for pod in self.service_pods(service):
            if not should_be_in_endpoints(pod, publish):
                continue
            ports = resolved_ports(pod, spec)
            if ports is None:
                continue
            address: Obj = {"ip": pod_ip(pod)}
            hostname = pod_hostname(pod, service)
            if hostname:
                address["hostname"] = hostname
            if (pod.get("spec") or {}).get("nodeName"):
                address["nodeName"] = pod["spec"]["nodeName"]
            address["targetRef"] = target_ref(pod)
            ident = tuple(tuple(sorted(p.items())) for p in ports)
            ready, not_ready = groups.setdefault(ident, ([], []))
            (ready if publish or pod_ready(pod) else not_ready).append(address)
        subsets = []
        for ident, (ready, not_ready) in groups.items():
            subset: Obj = {}
            if ready:
                subset["addresses"] = sorted(ready, key=lambda a: a["ip"])
            if not_ready:
                subset["notReadyAddresses"] = sorted(not_ready, key=lambda a: a["ip"])
            if ident:
                subset["ports"] = [dict(p) for p in ident]
            subsets.append(subset)
        return subsets
