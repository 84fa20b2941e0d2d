"""Where a pod could go: every (NodePool, instance type, zone, capacity type) whose node would take it.

A NodePool's node carries the instance type's labels, the offering's zone and capacity type, the pool's
template labels and the labels its requirements pin (custom keys such as `team`). A pod fits an
offering when one of its node selector terms matches those labels, it tolerates the pool's taints
(startup taints are ignored, as in Karpenter), and its requests fit the type's allocatable less the
DaemonSet pods that would run there.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from ultraplane.provisioner import apis
from ultraplane.provisioner.binpack import ZERO, Option, Vec, fits, vec_add, vec_sub
from ultraplane.provisioner.catalog import Catalog, CatalogType
from ultraplane.provisioner.pods import PendingPod, requests_vec, tolerates_all
from ultraplane.provisioner.requirements import Term, custom_labels, matches_all, parse, pod_terms

Obj = dict[str, Any]


@dataclass
class Offer:
    type: CatalogType
    zone: str
    capacity_type: str
    price: float
    labels: dict[str, str]


@dataclass
class PoolView:
    """A NodePool as the provisioner uses it in one batch."""
    name: str
    obj: Obj
    weight: int
    requirements: Term
    taints: list[Obj]
    startup_taints: list[Obj]
    labels: dict[str, str]
    offers: list[Offer] = field(default_factory=list)
    overhead: dict[tuple[str, str], Vec] = field(default_factory=dict)  # (type, zone) -> DaemonSet requests
    max_pods: int | None = None  # the node class's kubelet maxPods


def template_hash(pool: Obj) -> str:
    """Karpenter's drift hash: the template's metadata, taints, startup taints and node class reference
    (requirements drift on their own; expireAfter and limits never drift a node)."""
    template = pool.get("spec", {}).get("template") or {}
    spec = template.get("spec") or {}
    doc = {"metadata": template.get("metadata") or {}, "taints": spec.get("taints") or [],
           "startupTaints": spec.get("startupTaints") or [], "nodeClassRef": spec.get("nodeClassRef") or {},
           "terminationGracePeriod": spec.get("terminationGracePeriod")}
    return str(int(hashlib.sha256(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)).hexdigest()[:15], 16))


def nodeclass_hash(nodeclass: Obj) -> str:
    spec = {k: v for k, v in (nodeclass.get("spec") or {}).items() if k not in ("unavailableOfferings",
                                                                                   "launchLatency")}
    return str(int(hashlib.sha256(orjson.dumps(spec, option=orjson.OPT_SORT_KEYS)).hexdigest()[:15], 16))


def pool_view(pool: Obj, catalog: Catalog, nodeclass: Obj, daemonsets: list[Obj]) -> PoolView:
    name = pool["metadata"]["name"]
    template = pool["spec"].get("template") or {}
    spec = template.get("spec") or {}
    labels = {**((template.get("metadata") or {}).get("labels") or {}), apis.NODEPOOL_LABEL: name}
    view = PoolView(name, pool, int(pool["spec"].get("weight") or 0), parse(spec.get("requirements")),
                    list(spec.get("taints") or []), list(spec.get("startupTaints") or []), labels)
    class_spec = nodeclass.get("spec") or {}
    zones = set(class_spec.get("zones") or catalog.zones)
    unavailable = {(u.get("instanceType"), u.get("zone"), u.get("capacityType"))
                   for u in class_spec.get("unavailableOfferings") or []}
    max_pods = (class_spec.get("kubelet") or {}).get("maxPods")
    ds_shapes = [(requests_vec(ds["spec"]["template"].get("spec") or {})[0],
                  pod_terms(ds["spec"]["template"].get("spec") or {}),
                  (ds["spec"]["template"].get("spec") or {}).get("tolerations") or []) for ds in daemonsets]
    for t in catalog.types.values():
        for offering in t.offerings:
            if offering.zone not in zones or (t.name, offering.zone, offering.capacity_type) in unavailable:
                continue
            node_labels = {**t.labels, **labels, apis.ZONE_LABEL: offering.zone,
                           apis.CAPACITY_TYPE_LABEL: offering.capacity_type,
                           "topology.kubernetes.io/region": catalog.region}
            extra = custom_labels(view.requirements, (), node_labels)
            if extra is None:
                continue
            node_labels.update(extra)
            if not matches_all(view.requirements, node_labels):
                continue
            view.offers.append(Offer(t, offering.zone, offering.capacity_type, offering.price, node_labels))
            key = (t.name, offering.zone)
            if key not in view.overhead:
                overhead = ZERO
                for shape, terms, tolerations in ds_shapes:
                    if tolerates_all(tolerations, view.taints) and any(matches_all(term, node_labels)
                                                                       for term in terms):
                        overhead = vec_add(overhead, shape)
                view.overhead[key] = overhead
    view.max_pods = int(max_pods) if max_pods is not None else None
    return view


def capacity(view: PoolView, offer: Offer) -> Vec:
    alloc = offer.type.allocatable
    pods = alloc.get("pods", 0)
    if view.max_pods is not None:
        pods = min(pods, view.max_pods)
    full: Vec = (alloc.get("cpu", 0), alloc.get("memory", 0), alloc.get("nvidia.com/gpu", 0), pods)
    return vec_sub(full, view.overhead.get((offer.type.name, offer.zone), ZERO))


def options_for(pod: PendingPod, pools: list[PoolView]) -> tuple[list[Option], str]:
    """The offerings that would take `pod`, and when there are none, why (Karpenter's wording)."""
    out: list[Option] = []
    reasons: list[str] = []
    if pod.unknown_resources:
        return [], f"no instance type has the requested resources {sorted(pod.unknown_resources)}"
    for view in pools:
        if not tolerates_all(pod.tolerations, view.taints):
            reasons.append(f'incompatible with nodepool "{view.name}", did not tolerate '
                           + ", ".join(f"{t.get('key')}={t.get('value', '')}:{t.get('effect')}" for t in view.taints))
            continue
        matched_labels = fitted = 0
        for offer in view.offers:
            labels = offer.labels
            term_ok = False
            for term in pod.terms:
                extra = custom_labels(view.requirements, term, labels)
                if extra is not None and matches_all(term, {**labels, **extra}):
                    term_ok = True
                    break
            if not term_ok:
                continue
            matched_labels += 1
            room = capacity(view, offer)
            if not fits(pod.requests, room):
                continue
            fitted += 1
            out.append(Option(view.name, view.weight, offer.type.name, offer.zone, offer.capacity_type, offer.price,
                              room))
        if not matched_labels:
            reasons.append(f'incompatible with nodepool "{view.name}", incompatible requirements')
        elif not fitted:
            reasons.append(f'incompatible with nodepool "{view.name}", no instance type satisfied resources '
                           f"{_requests_text(pod.requests)} and requirements")
    return out, "; ".join(reasons) or "no nodepools found"


def _requests_text(req: Vec) -> str:
    parts = {"cpu": f"{req[0]}m", "memory": f"{req[1] // (1024 * 1024)}Mi", "pods": str(req[3])}
    if req[2]:
        parts["nvidia.com/gpu"] = str(req[2])
    return "{" + ",".join(f'"{k}":"{v}"' for k, v in parts.items()) + "}"
