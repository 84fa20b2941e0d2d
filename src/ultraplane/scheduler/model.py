"""What the scheduler keeps of pods and nodes: parsed once per informer event, never per decision."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from ultraplane.scheduler.quantity import parse_resource

Obj = dict[str, Any]
CPU, MEMORY, PODS, EPHEMERAL = "cpu", "memory", "pods", "ephemeral-storage"
# kube-scheduler scores a container without requests as if it asked for 100m cpu and 200Mi memory.
DEFAULT_MILLI_CPU = 100
DEFAULT_MEMORY = 200 * 1024 * 1024
UNSCHEDULABLE_TAINT = "node.kubernetes.io/unschedulable"
HOSTNAME_LABEL = "kubernetes.io/hostname"
ZONE_LABEL = "topology.kubernetes.io/zone"


def _requests(container: Obj) -> dict[str, int]:
    resources = container.get("resources") or {}
    # A limit without a request defaults the request to the limit (API defaulting does this upstream).
    merged = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
    return {name: parse_resource(name, v) for name, v in merged.items()}


def _add(into: dict[str, int], other: dict[str, int]) -> None:
    for name, v in other.items():
        into[name] = into.get(name, 0) + v


def _max(into: dict[str, int], other: dict[str, int]) -> None:
    for name, v in other.items():
        if v > into.get(name, 0):
            into[name] = v


def pod_requests(spec: Obj) -> dict[str, int]:
    """Effective requests: max(sum of containers + sidecars, each init container) + overhead."""
    total: dict[str, int] = {}
    for c in spec.get("containers") or []:
        _add(total, _requests(c))
    init_peak: dict[str, int] = {}
    sidecars: dict[str, int] = {}
    for c in spec.get("initContainers") or []:
        req = _requests(c)
        if c.get("restartPolicy") == "Always":  # sidecar: runs alongside the app containers
            _add(sidecars, req)
            _add(total, req)
        else:
            during = dict(sidecars)
            _add(during, req)
            _max(init_peak, during)
    _max(total, init_peak)
    _add(total, {n: parse_resource(n, v) for n, v in (spec.get("overhead") or {}).items()})
    return {n: v for n, v in total.items() if v}


@dataclass(slots=True)
class AffinityTerm:
    """A pod (anti-)affinity term, resolved to the namespaces it applies to."""
    selector: Obj | None
    topology_key: str
    namespaces: frozenset[str]
    namespace_selector: Obj | None  # None: only `namespaces`; {} (empty): all namespaces
    weight: int = 0
    signature: int = 0  # equal for equal terms: lets callers match each distinct term once

    def matches(self, pod: PodInfo, namespace_labels: dict[str, dict[str, str]]) -> bool:
        if pod.namespace not in self.namespaces:
            if self.namespace_selector is None:
                return False
            if not match_label_selector(self.namespace_selector, namespace_labels.get(pod.namespace, {})):
                return False
        return self.selector is not None and match_label_selector(self.selector, pod.labels)


def _terms(raw: list[Obj], namespace: str, weighted: bool) -> list[AffinityTerm]:
    out = []
    for entry in raw or []:
        term = entry.get("podAffinityTerm", {}) if weighted else entry
        names = frozenset(term.get("namespaces") or ())
        ns_selector = term.get("namespaceSelector")
        if not names and ns_selector is None:
            names = frozenset((namespace,))
        out.append(AffinityTerm(term.get("labelSelector"), term.get("topologyKey", ""), names, ns_selector,
                                int(entry.get("weight", 0)) if weighted else 0,
                                hash((orjson.dumps(term, option=orjson.OPT_SORT_KEYS), namespace))))
    return out


@dataclass(slots=True)
class PodInfo:
    key: str
    namespace: str
    name: str
    uid: str
    labels: dict[str, str]
    node_name: str
    priority: int
    requests: dict[str, int]
    spec: Obj
    affinity: list[AffinityTerm] = field(default_factory=list)
    anti_affinity: list[AffinityTerm] = field(default_factory=list)
    preferred_affinity: list[AffinityTerm] = field(default_factory=list)
    preferred_anti_affinity: list[AffinityTerm] = field(default_factory=list)
    # What preemption reads: victims being deleted, their start time, the node a preemptor was nominated to.
    terminating: bool = False
    start_time: str = ""
    nominated_node: str = ""
    # (apiVersion, kind, name) of the controller ownerReference: what default spreading derives a selector from.
    controller: tuple[str, str, str] | None = None
    images: tuple[str, ...] = ()  # init and app containers' images, normalized as ImageLocality looks them up

    @property
    def preempt_never(self) -> bool:
        return self.spec.get("preemptionPolicy") == "Never"

    @property
    def nonzero_cpu(self) -> int:
        return self.requests.get(CPU) or DEFAULT_MILLI_CPU

    @property
    def nonzero_memory(self) -> int:
        return self.requests.get(MEMORY) or DEFAULT_MEMORY


def normalized_image_name(name: str) -> str:
    """ImageLocality's lookup key: an image without a tag is the ``latest`` tag."""
    return name if name.rfind(":") > name.rfind("/") else f"{name}:latest"


def _controller(meta: Obj) -> tuple[str, str, str] | None:
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller"):
            return ref.get("apiVersion", ""), ref.get("kind", ""), ref.get("name", "")
    return None


def pod_info(obj: Obj) -> PodInfo:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    ns = meta.get("namespace", "")
    affinity = spec.get("affinity") or {}
    pa = affinity.get("podAffinity") or {}
    paa = affinity.get("podAntiAffinity") or {}
    return PodInfo(
        key=f"{ns}/{meta.get('name', '')}", namespace=ns, name=meta.get("name", ""), uid=meta.get("uid", ""),
        labels=meta.get("labels") or {}, node_name=spec.get("nodeName") or "", priority=int(spec.get("priority") or 0),
        requests=pod_requests(spec), spec=spec,
        affinity=_terms(pa.get("requiredDuringSchedulingIgnoredDuringExecution"), ns, False),
        anti_affinity=_terms(paa.get("requiredDuringSchedulingIgnoredDuringExecution"), ns, False),
        preferred_affinity=_terms(pa.get("preferredDuringSchedulingIgnoredDuringExecution"), ns, True),
        preferred_anti_affinity=_terms(paa.get("preferredDuringSchedulingIgnoredDuringExecution"), ns, True),
        terminating=bool(meta.get("deletionTimestamp")), start_time=status.get("startTime") or "",
        nominated_node=status.get("nominatedNodeName") or "", controller=_controller(meta),
        images=tuple(normalized_image_name(c.get("image") or "")
                     for c in (spec.get("initContainers") or []) + (spec.get("containers") or [])),
    )


@dataclass(slots=True)
class NodeInfo:
    name: str
    labels: dict[str, str]
    taints: list[Obj]
    unschedulable: bool
    allocatable: dict[str, int]
    images: dict[str, int]  # image name -> size in bytes
    requested: dict[str, int] = field(default_factory=dict)
    nonzero_cpu: int = 0
    nonzero_memory: int = 0
    pods: dict[str, PodInfo] = field(default_factory=dict)
    # Bumped on every change; equivalence-class heap entries carry the version they were scored at.
    version: int = 0

    def add_pod(self, pod: PodInfo) -> None:
        self.pods[pod.key] = pod
        _add(self.requested, pod.requests)
        self.nonzero_cpu += pod.nonzero_cpu
        self.nonzero_memory += pod.nonzero_memory

    def remove_pod(self, key: str) -> PodInfo | None:
        pod = self.pods.pop(key, None)
        if pod is not None:
            for n, v in pod.requests.items():
                self.requested[n] = self.requested.get(n, 0) - v
            self.nonzero_cpu -= pod.nonzero_cpu
            self.nonzero_memory -= pod.nonzero_memory
        return pod


def node_info(obj: Obj) -> NodeInfo:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    alloc = status.get("allocatable") or status.get("capacity") or {}
    images: dict[str, int] = {}
    for image in status.get("images") or []:
        for name in image.get("names") or []:
            images[name] = int(image.get("sizeBytes") or 0)
    return NodeInfo(name=meta.get("name", ""), labels=meta.get("labels") or {}, taints=spec.get("taints") or [],
                    unschedulable=bool(spec.get("unschedulable")),
                    allocatable={n: parse_resource(n, v) for n, v in alloc.items()}, images=images)


# ------------------------------------------------------------------ selectors and tolerations
def match_label_selector(selector: Obj, labels: dict[str, str]) -> bool:
    """metav1.LabelSelector: matchLabels AND every matchExpression (In/NotIn/Exists/DoesNotExist)."""
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        if not _match_expression(expr, labels.get(expr.get("key", ""))):
            return False
    return True


def _match_expression(expr: Obj, value: str | None) -> bool:
    op = expr.get("operator")
    values = expr.get("values") or []
    if op == "In":
        return value is not None and value in values
    if op == "NotIn":
        return value is None or value not in values
    if op == "Exists":
        return value is not None
    if op == "DoesNotExist":
        return value is None
    if op in ("Gt", "Lt"):
        try:
            have, want = int(value or ""), int(values[0])
        except (ValueError, IndexError):
            return False
        return have > want if op == "Gt" else have < want
    return False


def match_node_selector_term(term: Obj, node: NodeInfo) -> bool:
    """A NodeSelectorTerm: all matchExpressions on labels and all matchFields (metadata.name)."""
    exprs = term.get("matchExpressions") or []
    fields = term.get("matchFields") or []
    if not exprs and not fields:
        return False  # an empty term matches no objects
    for expr in exprs:
        if not _match_expression(expr, node.labels.get(expr.get("key", ""))):
            return False
    for expr in fields:
        if expr.get("key") != "metadata.name" or not _match_expression(expr, node.name):
            return False
    return True


def node_affinity_matches(pod: PodInfo, node: NodeInfo) -> bool:
    for k, v in (pod.spec.get("nodeSelector") or {}).items():
        if node.labels.get(k) != v:
            return False
    required = (((pod.spec.get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution"))
    if required is not None:
        return any(match_node_selector_term(t, node) for t in required.get("nodeSelectorTerms") or [])
    return True


def tolerates(tolerations: list[Obj], taint: Obj) -> bool:
    for t in tolerations:
        effect = t.get("effect") or ""
        if effect and effect != taint.get("effect"):
            continue
        key = t.get("key") or ""
        op = t.get("operator") or "Equal"
        if not key:
            if op == "Exists":
                return True
            continue
        if key != taint.get("key"):
            continue
        if op == "Exists" or (t.get("value") or "") == (taint.get("value") or ""):
            return True
    return False
