"""Karmada's placement, without I/O: which member clusters a resource goes to and how many replicas each gets.

Input is a PropagationPolicy's `placement` and a view of the member clusters; output is the
ResourceBinding's `spec.clusters`. The rules follow Karmada's scheduler: cluster affinity (names,
exclusions, label and field selectors), taints and `clusterTolerations`, spread constraints by cluster,
region, zone or provider, and replica scheduling Duplicated, or Divided by static weights, by available
replicas (dynamic weight) or Aggregated onto as few clusters as fit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]


class PlacementError(ValueError):
    """No cluster fits, or the replicas cannot be placed: the binding's Scheduled condition says why."""


@dataclass
class MemberView:
    """What the scheduler knows of one member cluster."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    provider: str = ""
    region: str = ""
    zones: tuple[str, ...] = ()
    taints: list[Obj] = field(default_factory=list)
    ready: bool = True
    available_replicas: int | None = None  # for the workload at hand; None when unknown (no limit)

    def field_value(self, key: str) -> list[str]:
        if key == "provider":
            return [self.provider]
        if key == "region":
            return [self.region]
        if key == "zone":
            return list(self.zones)
        return []


def match_label_selector(selector: Obj | None, labels: Mapping[str, str]) -> bool:
    """metav1.LabelSelector semantics: every matchLabels pair and every expression must hold."""
    if not selector:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key", ""), expr.get("operator", ""), expr.get("values") or []
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


def _match_field_selector(selector: Obj | None, member: MemberView) -> bool:
    for expr in (selector or {}).get("matchExpressions") or []:
        have = member.field_value(expr.get("key", ""))
        values = expr.get("values") or []
        if expr.get("operator") == "In" and not any(v in values for v in have):
            return False
        if expr.get("operator") == "NotIn" and any(v in values for v in have):
            return False
    return True


def match_affinity(affinity: Obj | None, member: MemberView) -> bool:
    """Karmada's ClusterAffinity: clusterNames (if any) must name it, exclude must not, selectors must hold."""
    if not affinity:
        return True
    names = affinity.get("clusterNames") or []
    if names and member.name not in names:
        return False
    if member.name in (affinity.get("exclude") or []):
        return False
    return match_label_selector(affinity.get("labelSelector"), member.labels) and \
        _match_field_selector(affinity.get("fieldSelector"), member)


def tolerates(tolerations: Iterable[Obj], taint: Obj) -> bool:
    for toleration in tolerations:
        if toleration.get("effect") and toleration["effect"] != taint.get("effect"):
            continue
        operator = toleration.get("operator", "Equal")
        if not toleration.get("key") and operator == "Exists":
            return True
        if toleration.get("key") != taint.get("key"):
            continue
        if operator == "Exists" or toleration.get("value", "") == taint.get("value", ""):
            return True
    return False


def untolerated(member: MemberView, tolerations: Iterable[Obj], effects: tuple[str, ...]) -> list[Obj]:
    tolerations = list(tolerations)
    return [t for t in member.taints if t.get("effect") in effects and not tolerates(tolerations, t)]


def feasible(placement: Obj, members: Iterable[MemberView]) -> tuple[list[MemberView], dict[str, str]]:
    """Members the placement admits, and for each refused one, why (for the Scheduled condition)."""
    affinity = placement.get("clusterAffinity")
    tolerations = placement.get("clusterTolerations") or []
    fits, why = [], {}
    for member in members:
        if not match_affinity(affinity, member):
            why[member.name] = "cluster(s) did not match the placement cluster affinity constraint"
        elif bad := untolerated(member, tolerations, ("NoSchedule", "NoExecute")):
            why[member.name] = f"cluster(s) had untolerated taint {{{bad[0].get('key')}: {bad[0].get('effect')}}}"
        else:
            fits.append(member)
    return fits, why


def apply_spread(placement: Obj, members: list[MemberView]) -> list[MemberView]:
    """Spread constraints: choose between minGroups and maxGroups groups per field, the best-capacity first."""
    chosen = members
    for constraint in placement.get("spreadConstraints") or []:
        by = constraint.get("spreadByField") or ""
        label = constraint.get("spreadByLabel") or ""
        groups: dict[str, list[MemberView]] = {}
        for member in chosen:
            if by == "cluster":
                keys = [member.name]
            elif label:
                keys = [member.labels[label]] if label in member.labels else []
            else:
                keys = member.field_value(by)[:1]
            for key in keys:
                groups.setdefault(key, []).append(member)
        min_groups, max_groups = int(constraint.get("minGroups") or 1), int(constraint.get("maxGroups") or 0)
        if len(groups) < min_groups:
            raise PlacementError(f"only {len(groups)} {by or label} group(s) available, spread constraint "
                                 f"wants at least {min_groups}")
        ranked = sorted(groups.items(), key=lambda kv: (-_capacity(kv[1]), kv[0]))
        if max_groups:
            ranked = ranked[:max_groups]
        keep = {m.name for _, group in ranked for m in group}
        chosen = [m for m in chosen if m.name in keep]
    return chosen


def _capacity(members: list[MemberView]) -> int:
    return sum(m.available_replicas if m.available_replicas is not None else 1 << 30 for m in members)


def divide(replicas: int, scheduling: Obj | None, members: list[MemberView]) -> list[Obj]:
    """`spec.clusters` of the binding: [{name, replicas}] in cluster-name order."""
    if not members:
        raise PlacementError("0/0 clusters are available")
    # Without replicaScheduling Karmada duplicates; an object without replicas (a ConfigMap) goes everywhere.
    scheduling = scheduling or {"replicaSchedulingType": "Duplicated"}
    kind = scheduling.get("replicaSchedulingType") or "Divided"
    if kind == "Duplicated" or replicas == 0:
        return [{"name": m.name, "replicas": replicas} for m in sorted(members, key=lambda m: m.name)]
    preference = scheduling.get("replicaDivisionPreference") or ""
    weights_pref = scheduling.get("weightPreference") or {}
    if preference == "Aggregated":
        counts = _aggregated(replicas, members)
    elif weights_pref.get("staticWeightList"):
        weights = {m.name: _static_weight(weights_pref["staticWeightList"], m) for m in members}
        counts = _by_weight(replicas, {k: w for k, w in weights.items() if w > 0})
    elif weights_pref.get("dynamicWeight") == "AvailableReplicas" or preference == "Weighted" and not weights_pref:
        counts = _by_available(replicas, members)
    else:  # Karmada's default for Divided without preference: equal static weights
        counts = _by_weight(replicas, {m.name: 1 for m in members})
    return [{"name": name, "replicas": counts[name]} for name in sorted(counts) if counts[name] > 0]


def _static_weight(rules: list[Obj], member: MemberView) -> int:
    for rule in rules:
        if match_affinity(rule.get("targetCluster"), member):
            return int(rule.get("weight") or 0)
    return 0


def _by_weight(replicas: int, weights: dict[str, int]) -> dict[str, int]:
    """Largest-remainder division; ties go to the heavier weight, then to the name (deterministic)."""
    total = sum(weights.values())
    if total <= 0:
        raise PlacementError("no cluster has a positive weight")
    counts = {name: replicas * w // total for name, w in weights.items()}
    left = replicas - sum(counts.values())
    order = sorted(weights, key=lambda n: (-(replicas * weights[n] % total), -weights[n], n))
    for name in order[:left]:
        counts[name] += 1
    return counts


def _by_available(replicas: int, members: list[MemberView]) -> dict[str, int]:
    available = {m.name: m.available_replicas for m in members}
    if any(v is None for v in available.values()):
        return _by_weight(replicas, {m.name: 1 for m in members})
    if sum(available.values()) < replicas:  # type: ignore[arg-type]
        raise PlacementError(f"{replicas} replicas do not fit: the clusters have room for "
                             f"{sum(available.values())}")  # type: ignore[arg-type]
    return _by_weight(replicas, {k: v for k, v in available.items() if v})  # type: ignore[misc]


def _aggregated(replicas: int, members: list[MemberView]) -> dict[str, int]:
    counts: dict[str, int] = {}
    left = replicas
    for member in sorted(members, key=lambda m: (-(m.available_replicas or 0), m.name)):
        if left <= 0:
            break
        take = left if member.available_replicas is None else min(left, member.available_replicas)
        if take:
            counts[member.name] = take
            left -= take
    if left > 0:
        raise PlacementError(f"{replicas} replicas do not fit: {left} left over after filling every cluster")
    return counts


def schedule(placement: Obj, replicas: int, members: list[MemberView]) -> tuple[list[Obj], dict[str, str]]:
    """The whole pipeline: filter, spread, divide. Returns the targets and why other clusters were refused.

    With `clusterAffinities` (ordered affinity terms) the first term whose clusters can take the
    replicas wins, as Karmada's scheduler tries them in order: a primary region, then a fallback."""
    terms = placement.get("clusterAffinities") or []
    if not terms:
        return _schedule_term(placement, replicas, members)
    failures = []
    for term in terms:
        narrowed = {k: v for k, v in placement.items() if k != "clusterAffinities"}
        narrowed["clusterAffinity"] = {k: v for k, v in term.items() if k not in ("affinityName",
                                                                                  "overflowAffinities")}
        try:
            targets, why = _schedule_term(narrowed, replicas, members)
        except PlacementError as exc:
            failures.append(f"{term.get('affinityName', '?')}: {exc}")
            continue
        why["@affinity"] = term.get("affinityName", "")
        return targets, why
    raise PlacementError("no cluster affinity term fits: " + "; ".join(failures))


def _schedule_term(placement: Obj, replicas: int, members: list[MemberView]) -> tuple[list[Obj], dict[str, str]]:
    fits, why = feasible(placement, members)
    if not fits:
        reasons = sorted(set(why.values()))
        raise PlacementError(f"0/{len(members)} clusters are available: {'; '.join(reasons) or 'no clusters'}")
    spread = apply_spread(placement, fits)
    return divide(replicas, placement.get("replicaScheduling"), spread), why
