"""PodTopologySpread's scoring (PreScore, Score, NormalizeScore), with the system default constraints.

A pod with no topologySpreadConstraints of its own that a Service selects or a ReplicationController,
ReplicaSet or StatefulSet controls is spread with kube's defaults (defaultingType: System): hostname
maxSkew 3 and zone maxSkew 5, both ScheduleAnyway, counting the pods its derived selector matches.
A node scores round(sum of count * log(size + 2) + maxSkew - 1) over the constraints whose key it has;
fewer matching pods score higher after normalizing as 100 * (max + min - raw) / max.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

from ultraplane.scheduler.cache import ClusterCache
from ultraplane.scheduler.model import (
    HOSTNAME_LABEL,
    ZONE_LABEL,
    NodeInfo,
    PodInfo,
    node_affinity_matches,
)

MAX_NODE_SCORE = 100
# The system defaults: (topology key, maxSkew), whenUnsatisfiable ScheduleAnyway.
SYSTEM_DEFAULT_SPREAD = ((HOSTNAME_LABEL, 3), (ZONE_LABEL, 5))


@dataclass
class SpreadCounts:
    """PodTopologySpread's PreScore for one pod: its soft constraints and the matching pods they count.

    ``require_all``: nodes missing any constraint's key are ignored (score 0) -- true for the pod's own
    constraints, false for the system defaults so that nodes without a zone label still spread by hostname.
    """
    constraints: list[tuple[str, int]]  # (topology key, maxSkew)
    require_all: bool
    by_node: list[dict[str, int]]  # per constraint: node name -> matching pods on it
    domains: list[dict[str, int]]  # per constraint: topology value -> matching pods on eligible nodes

    def ignores(self, node: NodeInfo) -> bool:
        return self.require_all and any(key not in node.labels for key, _ in self.constraints)

    def raw_for(self, weights: list[float], node: NodeInfo) -> int:
        """Score's raw value: over the constraints whose key the node has, count * weight + maxSkew - 1
        (count: matching pods on the node for hostname, in the node's domain otherwise), rounded."""
        total = 0.0
        for (key, skew), weight, by_node, domains in zip(self.constraints, weights, self.by_node, self.domains,
                                                         strict=True):
            value = node.labels.get(key)
            if value is None:
                continue
            count = by_node.get(node.name, 0) if key == HOSTNAME_LABEL else domains.get(value, 0)
            total += count * weight + skew - 1
        return math.floor(total + 0.5)  # Go's math.Round: half away from zero


def topology_weight(size: int) -> float:
    """topologyNormalizingWeight: log(size + 2), size being the topology's values among scored nodes."""
    return math.log(size + 2)


def spread_weights(counts: SpreadCounts, nodes: list[NodeInfo]) -> list[float]:
    """Weights from the scored (feasible, not ignored) nodes: for hostname their number, for other keys
    their distinct values (a node without the label counts as the value "" when not required)."""
    scored = [n for n in nodes if not counts.ignores(n)]
    return [topology_weight(len(scored) if key == HOSTNAME_LABEL else len({n.labels.get(key, "") for n in scored}))
            for key, _ in counts.constraints]


def normalize_spread(raw: list[int | None]) -> list[int]:
    """PodTopologySpread's NormalizeScore: fewer matching pods scores higher; ignored nodes get 0."""
    present = [r for r in raw if r is not None]
    if not present:
        return [0] * len(raw)
    lo, hi = min(present), max(present)
    return [0 if r is None else MAX_NODE_SCORE if not hi else MAX_NODE_SCORE * (hi + lo - r) // hi for r in raw]


def spread_counts(pod: PodInfo, cache: ClusterCache) -> SpreadCounts | None:
    """The pod's ScheduleAnyway constraints, or the system defaults when it has none of its own and its
    Services or controller give it a selector; None when PodTopologySpread does not score this pod."""
    own = pod.spec.get("topologySpreadConstraints")
    if own:
        soft = [c for c in own if c.get("whenUnsatisfiable") == "ScheduleAnyway"]
        constraints = [(c.get("topologyKey", ""), int(c.get("maxSkew", 1))) for c in soft]
        selectors = [c.get("labelSelector") for c in soft]
        require_all = True
    else:
        selector = cache.default_selector(pod)
        if selector is None:
            return None
        constraints = list(SYSTEM_DEFAULT_SPREAD)
        selectors = [selector] * len(constraints)
        require_all = False
    if not constraints:
        return None
    counts = SpreadCounts(constraints, require_all, [], [])
    affinity = bool(pod.spec.get("nodeSelector") or pod.spec.get("affinity"))
    for (key, _), selector in zip(constraints, selectors, strict=True):
        # a nil or empty selector counts nothing
        matching = (cache.selector_counts(pod.namespace, selector)
                    if selector and (selector.get("matchLabels") or selector.get("matchExpressions")) else None)
        by_node = matching.by_node if matching is not None else {}
        domains: dict[str, int] = defaultdict(int)
        if key == ZONE_LABEL and matching is not None and not require_all and not affinity:
            domains = matching.by_zone  # kept per zone by the cache
        elif key != HOSTNAME_LABEL:
            for name, n in by_node.items():
                node = cache.nodes.get(name)
                if (node is not None and not (require_all and counts.ignores(node))
                        and (not affinity or node_affinity_matches(pod, node))):
                    domains[node.labels.get(key, "")] += n
        counts.by_node.append(by_node)
        counts.domains.append(domains)
    return counts
