"""A read of the cluster as the flow generator and the policy proposals need it: running pods with their
node, zone (the node's topology.kubernetes.io/zone label), IP and top-level workload; Services;
EndpointSlices; namespaces' labels; workloads' selectors. All through the API, one LIST per kind."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from ultraplane.client.http import ApiError, KubeClient
from ultraplane.netobs.flow import Endpoint

Obj = dict[str, Any]
ZONE_LABEL = "topology.kubernetes.io/zone"
REVISION = "deployment.kubernetes.io/revision"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


@dataclass(slots=True)
class PodInfo:
    namespace: str
    name: str
    ip: str
    node: str
    zone: str
    labels: dict[str, str]
    annotations: dict[str, str]
    workload_kind: str
    workload_name: str
    container_ports: dict[str, tuple[int, str]]  # port name -> (number, protocol)
    terminating: bool

    def endpoint(self) -> Endpoint:
        return Endpoint(ip=self.ip, namespace=self.namespace, pod_name=self.name, workload_kind=self.workload_kind,
                        workload_name=self.workload_name, node_name=self.node, zone=self.zone,
                        labels=dict(self.labels))


@dataclass(slots=True)
class ClusterSnapshot:
    pods: list[PodInfo] = field(default_factory=list)
    pods_by_ip: dict[str, PodInfo] = field(default_factory=dict)
    services: dict[tuple[str, str], Obj] = field(default_factory=dict)
    slices: dict[tuple[str, str], list[Obj]] = field(default_factory=dict)
    namespace_labels: dict[str, dict[str, str]] = field(default_factory=dict)
    # "ns/Kind/name" -> the workload's spec.selector (a LabelSelector)
    workload_selectors: dict[str, Obj] = field(default_factory=dict)

    def resolve(self, ip: str) -> Endpoint | None:
        pod = self.pods_by_ip.get(ip)
        return pod.endpoint() if pod else None

    def pod(self, namespace: str, name: str) -> PodInfo | None:
        for pod in self.pods:
            if pod.namespace == namespace and pod.name == name:
                return pod
        return None


def _ports(pod: Obj) -> dict[str, tuple[int, str]]:
    out: dict[str, tuple[int, str]] = {}
    for container in pod.get("spec", {}).get("containers", []):
        for port in container.get("ports") or []:
            if port.get("name"):
                out[port["name"]] = (int(port["containerPort"]), port.get("protocol", "TCP"))
    return out


def _top_owner(meta: Obj, replicasets: dict[tuple[str, str], Obj]) -> tuple[str, str]:
    for ref in meta.get("ownerReferences") or []:
        if not ref.get("controller"):
            continue
        if ref["kind"] == "ReplicaSet":
            rs = replicasets.get((meta.get("namespace", ""), ref["name"]))
            for up in (rs or {}).get("metadata", {}).get("ownerReferences") or []:
                if up.get("controller") and up["kind"] == "Deployment":
                    return "Deployment", up["name"]
        return ref["kind"], ref["name"]
    return "", ""


async def _items(client: KubeClient, path: str) -> list[Obj]:
    try:
        return (await client.list(path)).get("items", [])
    except ApiError as err:
        if err.code == 404:  # a kind this server does not serve: nothing of it exists
            return []
        raise


async def read_cluster(client: KubeClient) -> ClusterSnapshot:
    (pods, nodes, services, slices, namespaces, replicasets, deployments, statefulsets,
     daemonsets) = await asyncio.gather(
        _items(client, "/api/v1/pods"), _items(client, "/api/v1/nodes"), _items(client, "/api/v1/services"),
        _items(client, "/apis/discovery.k8s.io/v1/endpointslices"), _items(client, "/api/v1/namespaces"),
        _items(client, "/apis/apps/v1/replicasets"), _items(client, "/apis/apps/v1/deployments"),
        _items(client, "/apis/apps/v1/statefulsets"), _items(client, "/apis/apps/v1/daemonsets"))
    zones = {n["metadata"]["name"]: n["metadata"].get("labels", {}).get(ZONE_LABEL, "") for n in nodes}
    rs_index = {(r["metadata"]["namespace"], r["metadata"]["name"]): r for r in replicasets}
    snap = ClusterSnapshot()
    for pod in pods:
        meta, status = pod["metadata"], pod.get("status", {})
        ip, node = status.get("podIP", ""), pod.get("spec", {}).get("nodeName", "")
        if not ip or not node or status.get("phase") != "Running" or pod.get("spec", {}).get("hostNetwork"):
            continue
        kind, name = _top_owner(meta, rs_index)
        info = PodInfo(namespace=meta["namespace"], name=meta["name"], ip=ip, node=node, zone=zones.get(node, ""),
                       labels=dict(meta.get("labels") or {}), annotations=dict(meta.get("annotations") or {}),
                       workload_kind=kind, workload_name=name, container_ports=_ports(pod),
                       terminating=bool(meta.get("deletionTimestamp")))
        snap.pods.append(info)
        snap.pods_by_ip[ip] = info
    for svc in services:
        snap.services[(svc["metadata"]["namespace"], svc["metadata"]["name"])] = svc
    for eps in slices:
        owner = eps["metadata"].get("labels", {}).get(SERVICE_NAME_LABEL)
        if owner:
            snap.slices.setdefault((eps["metadata"]["namespace"], owner), []).append(eps)
    snap.namespace_labels = {n["metadata"]["name"]: dict(n["metadata"].get("labels") or {}) for n in namespaces}
    for kind, objs in (("Deployment", deployments), ("StatefulSet", statefulsets), ("DaemonSet", daemonsets)):
        for obj in objs:
            key = f"{obj['metadata']['namespace']}/{kind}/{obj['metadata']['name']}"
            snap.workload_selectors[key] = obj.get("spec", {}).get("selector") or {}
    return snap


async def latest_rollout(client: KubeClient, namespace: str, deployment: str) -> tuple[float, str]:
    """When the Deployment's latest rollout began: the creationTimestamp of its ReplicaSet with the
    highest deployment.kubernetes.io/revision (the Deployment controller's own bookkeeping)."""
    from ultraplane.netobs.flow import parse_time

    dep = await client.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{deployment}")
    uid = dep["metadata"]["uid"]
    best: tuple[int, float, str] | None = None
    for rs in await _items(client, f"/apis/apps/v1/namespaces/{namespace}/replicasets"):
        meta = rs["metadata"]
        if not any(ref.get("uid") == uid for ref in meta.get("ownerReferences") or []):
            continue
        revision = int(meta.get("annotations", {}).get(REVISION, "0") or 0)
        candidate = (revision, parse_time(meta["creationTimestamp"]), meta["name"])
        if best is None or candidate > best:
            best = candidate
    if best is None:
        raise LookupError(f"deployment {namespace}/{deployment} has no ReplicaSets yet")
    return best[1], best[2]
