"""What the provisioner reads from pods: requests as vectors, node constraints, tolerations, zone spread."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from ultraplane.provisioner.binpack import Vec, vec_sub
from ultraplane.provisioner.requirements import Term, pod_terms
from ultraplane.scheduler.model import pod_requests, tolerates
from ultraplane.scheduler.quantity import parse_resource

Obj = dict[str, Any]
ZONE = "topology.kubernetes.io/zone"
GPU = "nvidia.com/gpu"
KNOWN_RESOURCES = {"cpu", "memory", GPU, "pods", "ephemeral-storage"}


def requests_vec(spec: Obj) -> tuple[Vec, set[str]]:
    """(cpu millis, memory bytes, GPUs, 1 pod) and any other resources asked for (no type offers them)."""
    req = pod_requests(spec)
    other = {name for name in req if name not in KNOWN_RESOURCES and not name.startswith("hugepages-")}
    return (req.get("cpu", 0), req.get("memory", 0), req.get(GPU, 0), 1), other


@dataclass
class ZoneSpread:
    max_skew: int
    selector: Obj
    namespace: str


@dataclass
class PendingPod:
    key: str  # namespace/name
    uid: str
    namespace: str
    labels: dict[str, str]
    requests: Vec
    unknown_resources: set[str]
    terms: tuple[Term, ...]
    tolerations: list[Obj]
    spread: ZoneSpread | None
    signature: bytes  # pods with equal signatures have the same constraints (requests aside)


def pending_pod(pod: Obj) -> PendingPod:
    meta, spec = pod["metadata"], pod.get("spec") or {}
    requests, other = requests_vec(spec)
    spread = None
    for c in spec.get("topologySpreadConstraints") or []:
        if c.get("topologyKey") == ZONE and c.get("whenUnsatisfiable", "DoNotSchedule") == "DoNotSchedule":
            spread = ZoneSpread(int(c.get("maxSkew") or 1), c.get("labelSelector") or {}, meta.get("namespace", ""))
    terms = pod_terms(spec)
    tolerations = spec.get("tolerations") or []
    signature = orjson.dumps([terms, tolerations, spread.selector if spread else None, meta.get("namespace")
                              if spread else None, sorted(other)], option=orjson.OPT_SORT_KEYS)
    return PendingPod(f"{meta.get('namespace', '')}/{meta['name']}", meta.get("uid", ""), meta.get("namespace", ""),
                      meta.get("labels") or {}, requests, other, terms, tolerations, spread, signature)


def tolerates_all(tolerations: list[Obj], taints: list[Obj]) -> bool:
    return all(tolerates(tolerations, t) for t in taints if t.get("effect") in ("NoSchedule", "NoExecute"))


def is_provisionable(pod: Obj) -> bool:
    """Pending, not bound, not being deleted, and the scheduler said Unschedulable."""
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    if spec.get("nodeName") or pod["metadata"].get("deletionTimestamp"):
        return False
    if status.get("phase", "Pending") != "Pending":
        return False
    return any(c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable"
               for c in status.get("conditions") or [])


def is_daemon_pod(pod: Obj) -> bool:
    return any(ref.get("kind") == "DaemonSet" and ref.get("controller")
               for ref in pod["metadata"].get("ownerReferences") or [])


def is_terminal(pod: Obj) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def reschedulable(pod: Obj) -> bool:
    """A pod that would move elsewhere if its node went away (not a DaemonSet's, mirror or finished pod)."""
    annotations = pod["metadata"].get("annotations") or {}
    return not (is_daemon_pod(pod) or is_terminal(pod) or "kubernetes.io/config.mirror" in annotations
                or pod["metadata"].get("deletionTimestamp"))


def node_free(node: Obj, pods: list[Obj]) -> Vec:
    """The node's allocatable less the requests of the pods bound to it that still hold resources."""
    alloc = (node.get("status") or {}).get("allocatable") or {}
    free: Vec = (parse_resource("cpu", alloc.get("cpu", 0)), parse_resource("memory", alloc.get("memory", 0)),
                 parse_resource(GPU, alloc.get(GPU, 0)), parse_resource("pods", alloc.get("pods", 0)))
    for pod in pods:
        if not is_terminal(pod):
            free = vec_sub(free, requests_vec(pod.get("spec") or {})[0])
    return free
