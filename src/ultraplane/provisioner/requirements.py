"""Node requirements: NodePool requirements, pod node selectors and required node affinity, against labels.

A requirement is a NodeSelectorRequirement with Karpenter's operators (In, NotIn, Exists, DoesNotExist,
Gt, Lt, Gte, Lte). Pods' terms are ORed (nodeSelectorTerms), each term's requirements ANDed, and the
pod's nodeSelector ANDed into every term, as the scheduler reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        value = labels.get(self.key)
        op = self.operator
        if op == "In":
            return value is not None and value in self.values
        if op == "NotIn":
            return value is None or value not in self.values
        if op == "Exists":
            return value is not None
        if op == "DoesNotExist":
            return value is None
        if op in ("Gt", "Lt", "Gte", "Lte"):
            try:
                have, bound = int(value or ""), int(self.values[0])
            except (ValueError, IndexError):
                return False
            return {"Gt": have > bound, "Lt": have < bound, "Gte": have >= bound, "Lte": have <= bound}[op]
        return False


Term = tuple[Requirement, ...]


def parse(raw: list[Obj] | None) -> Term:
    return tuple(Requirement(r.get("key", ""), r.get("operator", ""), tuple(r.get("values") or ()))
                 for r in raw or [])


def matches_all(term: Term, labels: dict[str, str]) -> bool:
    return all(r.matches(labels) for r in term)


def pod_terms(spec: Obj) -> tuple[Term, ...]:
    """The pod's node constraints as ORed terms (one empty term when it has none)."""
    selector = tuple(Requirement(k, "In", (v,)) for k, v in sorted((spec.get("nodeSelector") or {}).items()))
    required = (((spec.get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    terms = [parse(t.get("matchExpressions")) for t in required.get("nodeSelectorTerms") or []]
    if not terms:
        return (selector,)
    return tuple(selector + t for t in terms)


def custom_labels(pool_term: Term, pod_term: Term, known: dict[str, str]) -> dict[str, str] | None:
    """Labels the NodePool's requirements put on a node for keys the instance does not carry (e.g. `team`):
    a key the pod asks for takes the pod's value if the pool allows it. None when they conflict."""
    out: dict[str, str] = {}
    for req in pool_term:
        if req.key in known or req.operator != "In":
            continue
        wanted = [r.values for r in pod_term if r.key == req.key and r.operator == "In"]
        choices = [v for v in req.values if all(v in w for w in wanted)]
        if not choices:
            return None
        out[req.key] = choices[0]
    for req in pod_term:  # a pod asking for a label no pool requirement mentions: no node will carry it
        if req.operator == "In" and req.key not in known and req.key not in out:
            return None
    return out
