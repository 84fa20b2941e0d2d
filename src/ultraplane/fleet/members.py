"""Member clusters as the fleet controller sees them: a client per member, its heartbeat and its status.

Every member is reached only through its own API server, with the credentials kept in a Secret of the
fleet API (a self-contained kubeconfig under the key `kubeconfig`, or Karmada's `caBundle` + `token`).
The Secret lives in `karmada-cluster`, Karmada's namespace for them; `up` encrypts Secrets at rest.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import yaml

from ultraplane.client.http import ApiError, KubeClient
from ultraplane.client.kubeconfig import KubeconfigError
from ultraplane.fleet.placement import MemberView
from ultraplane.scheduler.quantity import parse_resource

log = logging.getLogger("ultraplane.fleet.members")
Obj = dict[str, Any]

CLUSTERS = "/apis/cluster.karmada.io/v1alpha1/clusters"
SECRET_NAMESPACE = "karmada-cluster"
NOT_READY_TAINT = "cluster.karmada.io/not-ready"
UNREACHABLE_TAINT = "cluster.karmada.io/unreachable"
EVACUATION_TAINT = "fleet.ultraplane.io/evacuated"
ACCOUNT_LABEL = "fleet.ultraplane.io/account"
REGION_LABEL = "topology.kubernetes.io/region"


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class Member:
    name: str
    client: KubeClient
    last_ok: float = 0.0
    last_error: str = ""
    version: str = ""
    nodes_total: int = 0
    nodes_ready: int = 0
    allocatable: dict[str, float] = field(default_factory=dict)
    allocated: dict[str, float] = field(default_factory=dict)
    pods: int = 0
    summary_at: float = 0.0

    def reachable(self, grace: float) -> bool:
        return self.last_ok > 0 and time.monotonic() - self.last_ok < grace


async def client_for(fleet: KubeClient, cluster: Obj) -> KubeClient:
    """A client for a member from its Secret (kubeconfig, or Karmada's caBundle/token pair)."""
    ref = (cluster.get("spec") or {}).get("secretRef") or {}
    secret = await fleet.get(f"/api/v1/namespaces/{ref.get('namespace', SECRET_NAMESPACE)}/secrets/"
                             f"{ref.get('name', cluster['metadata']['name'])}")
    data = {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
    if "kubeconfig" in data:
        config = yaml.safe_load(data["kubeconfig"])
        return KubeClient.from_kubeconfig_data(config, timeout=10.0, max_connections=32)
    endpoint = cluster["spec"].get("apiEndpoint", "")
    config = {"current-context": "m", "contexts": [{"name": "m", "context": {"cluster": "m", "user": "m"}}],
              "clusters": [{"name": "m", "cluster": {
                  "server": endpoint, "insecure-skip-tls-verify": bool(cluster["spec"].get(
                      "insecureSkipTLSVerification")),
                  **({"certificate-authority-data": base64.b64encode(data["caBundle"]).decode()}
                     if data.get("caBundle") else {})}}],
              "users": [{"name": "m", "user": {"token": data.get("token", b"").decode()}}]}
    return KubeClient.from_kubeconfig_data(config, timeout=10.0, max_connections=32)


async def heartbeat(member: Member, summary_every: float) -> None:
    """One probe: /version always; nodes and pods (capacity) every `summary_every` seconds."""
    try:
        async with asyncio.timeout(5.0):
            info = await member.client.get("/version")
            member.version = info.get("gitVersion", "")
            if time.monotonic() - member.summary_at >= summary_every:
                await _summarize(member)
                member.summary_at = time.monotonic()
        member.last_ok = time.monotonic()
        member.last_error = ""
    except (TimeoutError, ConnectionError, OSError, ApiError, KubeconfigError) as exc:
        member.last_error = str(exc) or type(exc).__name__


async def _summarize(member: Member) -> None:
    nodes = (await member.client.list("/api/v1/nodes")).get("items") or []
    member.nodes_total = len(nodes)
    member.nodes_ready = 0
    allocatable: dict[str, float] = {}
    for node in nodes:
        status = node.get("status") or {}
        if any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []):
            member.nodes_ready += 1
            for key, value in (status.get("allocatable") or {}).items():
                allocatable[key] = allocatable.get(key, 0.0) + parse_resource(key, value)
    allocated: dict[str, float] = {}
    pods = (await member.client.list("/api/v1/pods", {"fieldSelector":
                                                      "status.phase!=Succeeded,status.phase!=Failed"})).get("items") or []
    for pod in pods:
        for resource, amount in pod_requests(pod.get("spec") or {}).items():
            allocated[resource] = allocated.get(resource, 0.0) + amount
    allocated["pods"] = float(len(pods))
    member.allocatable, member.allocated, member.pods = allocatable, allocated, len(pods)


def pod_requests(pod_spec: Obj) -> dict[str, float]:
    """Container requests summed (init containers count by their max, as the scheduler does); cpu in millicores."""
    total: dict[str, float] = {}
    for container in pod_spec.get("containers") or []:
        for key, value in ((container.get("resources") or {}).get("requests") or {}).items():
            total[key] = total.get(key, 0.0) + parse_resource(key, value)
    for container in pod_spec.get("initContainers") or []:
        for key, value in ((container.get("resources") or {}).get("requests") or {}).items():
            total[key] = max(total.get(key, 0.0), parse_resource(key, value))
    return total


def status_of(member: Member, cluster: Obj, grace: float) -> Obj:
    """The Cluster object's status as Karmada's cluster status controller writes it."""
    old = cluster.get("status") or {}
    ready = member.reachable(grace)
    reason, message = (("ClusterReady", "cluster is healthy and ready to accept workloads") if ready else
                       ("ClusterNotReachable", f"cluster is not reachable: {member.last_error or 'no answer yet'}"))
    previous = next((c for c in old.get("conditions") or [] if c.get("type") == "Ready"), {})
    status_word = "True" if ready else "False"
    condition = {"type": "Ready", "status": status_word, "reason": reason, "message": message,
                 "lastTransitionTime": previous.get("lastTransitionTime") if previous.get("status") == status_word
                 else now_rfc3339()}
    status: Obj = {**old, "conditions": [condition]}
    if member.version:
        status["kubernetesVersion"] = member.version
    if member.summary_at:
        status["nodeSummary"] = {"totalNum": member.nodes_total, "readyNum": member.nodes_ready}
        status["resourceSummary"] = {
            "allocatable": {k: _quantity(k, v) for k, v in sorted(member.allocatable.items())},
            "allocated": {k: _quantity(k, v) for k, v in sorted(member.allocated.items())}}
    return status


def _quantity(resource: str, value: float) -> str:
    # amounts are integers in parse_resource's units: cpu in millicores, the rest in base units
    return f"{int(value)}m" if resource == "cpu" else str(int(value))


def view(cluster: Obj, requests: dict[str, float] | None = None) -> MemberView:
    """The scheduler's view of a Cluster object; available replicas from its resource summary."""
    spec, status = cluster.get("spec") or {}, cluster.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    zones = tuple(spec.get("zones") or ([spec["zone"]] if spec.get("zone") else []))
    available = None
    summary = status.get("resourceSummary") or {}
    if summary.get("allocatable"):
        allocatable = {k: float(parse_resource(k, v)) for k, v in summary["allocatable"].items()}
        allocated = {k: float(parse_resource(k, v)) for k, v in (summary.get("allocated") or {}).items()}
        free = {k: allocatable[k] - allocated.get(k, 0.0) for k in allocatable}
        limits = [free.get("pods", 0.0)]
        for resource, amount in (requests or {}).items():
            if amount > 0:
                limits.append(free.get(resource, 0.0) / amount)
        available = max(0, int(min(limits)))
    return MemberView(cluster["metadata"]["name"], cluster["metadata"].get("labels") or {},
                      spec.get("provider", ""), spec.get("region", ""), zones, list(spec.get("taints") or []),
                      ready, available)


def taints_for(cluster: Obj, reachable: bool, evacuated_regions: set[str]) -> list[Obj]:
    """The taints the controller owns (not-ready, unreachable, evacuated), kept beside any the user set."""
    owned = (NOT_READY_TAINT, UNREACHABLE_TAINT, EVACUATION_TAINT)
    old = list((cluster.get("spec") or {}).get("taints") or [])
    keep = [t for t in old if t.get("key") not in owned]
    wanted: list[Obj] = []
    if not reachable:
        wanted += [{"key": UNREACHABLE_TAINT, "effect": "NoSchedule"}, {"key": UNREACHABLE_TAINT, "effect": "NoExecute"}]
    region = (cluster.get("spec") or {}).get("region", "")
    if region in evacuated_regions:
        wanted += [{"key": EVACUATION_TAINT, "value": region, "effect": "NoSchedule"},
                   {"key": EVACUATION_TAINT, "value": region, "effect": "NoExecute"}]
    by_key = {(t["key"], t["effect"]): t for t in old}
    for taint in wanted:  # keep timeAdded of a taint that was already there
        previous = by_key.get((taint["key"], taint["effect"]))
        taint["timeAdded"] = previous.get("timeAdded") if previous and previous.get("timeAdded") else now_rfc3339()
    return keep + wanted
