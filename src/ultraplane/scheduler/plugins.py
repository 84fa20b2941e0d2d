"""kube-scheduler's default filter and score plugins, with upstream's reasons, weights and normalization.

A filter returns ``None`` when the node fits, else ``(reasons, unresolvable)``: unresolvable failures
(node affinity, taints, ...) cannot be fixed by preempting pods, which changes the FailedScheduling
message. Filters run in the default profile's order and a node stops at its first failing plugin.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import orjson

from ultraplane.scheduler import spreading
from ultraplane.scheduler.cache import ClusterCache
from ultraplane.scheduler.model import (
    CPU,
    MEMORY,
    PODS,
    UNSCHEDULABLE_TAINT,
    AffinityTerm,
    NodeInfo,
    Obj,
    PodInfo,
    match_label_selector,
    match_node_selector_term,
    node_affinity_matches,
    tolerates,
)

MAX_NODE_SCORE = 100
Rejection = tuple[list[str], bool]

ERR_NODE_NAME = "node(s) didn't match the requested node name"
ERR_UNSCHEDULABLE = "node(s) were unschedulable"
ERR_NODE_AFFINITY = "node(s) didn't match Pod's node affinity/selector"
ERR_TOO_MANY_PODS = "Too many pods"
ERR_EXISTING_ANTI_AFFINITY = "node(s) didn't satisfy existing pods anti-affinity rules"
ERR_AFFINITY = "node(s) didn't match pod affinity rules"
ERR_ANTI_AFFINITY = "node(s) didn't match pod anti-affinity rules"
ERR_SPREAD = "node(s) didn't match pod topology spread constraints"
ERR_SPREAD_LABEL = ERR_SPREAD + " (missing required label)"

# Default profile weights (kube-scheduler v1.32, apis/config/v1/default_plugins.go).
WEIGHT_FIT = 1
WEIGHT_BALANCED = 1
WEIGHT_IMAGE = 1
WEIGHT_NODE_AFFINITY = 2
WEIGHT_INTER_POD_AFFINITY = 2
WEIGHT_SPREAD = 2
WEIGHT_TAINT = 3

# ImageLocality's bounds on the summed, spread-scaled image sizes.
IMAGE_MIN_BYTES = 23 * 1024 * 1024
IMAGE_MAX_BYTES_PER_CONTAINER = 1000 * 1024 * 1024


# ---------------------------------------------------------------------- per-node filters
def filter_node_unschedulable(pod: PodInfo, node: NodeInfo) -> Rejection | None:
    if node.unschedulable and not tolerates(pod.spec.get("tolerations") or [],
                                            {"key": UNSCHEDULABLE_TAINT, "effect": "NoSchedule"}):
        return [ERR_UNSCHEDULABLE], True
    return None


def filter_node_name(pod: PodInfo, node: NodeInfo) -> Rejection | None:
    wanted = pod.spec.get("nodeName")
    if wanted and wanted != node.name:
        return [ERR_NODE_NAME], True
    return None


def filter_taint_toleration(pod: PodInfo, node: NodeInfo) -> Rejection | None:
    tolerations = pod.spec.get("tolerations") or []
    for taint in node.taints:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not tolerates(tolerations, taint):
            return [f"node(s) had untolerated taint {{{taint.get('key', '')}: {taint.get('value', '')}}}"], True
    return None


def filter_node_affinity(pod: PodInfo, node: NodeInfo) -> Rejection | None:
    return None if node_affinity_matches(pod, node) else ([ERR_NODE_AFFINITY], True)


def filter_resources_fit(pod: PodInfo, node: NodeInfo) -> Rejection | None:
    reasons = []
    alloc = node.allocatable
    if len(node.pods) + 1 > alloc.get(PODS, 0):
        reasons.append(ERR_TOO_MANY_PODS)
    for name, want in pod.requests.items():
        if want > alloc.get(name, 0) - node.requested.get(name, 0):
            reasons.append(f"Insufficient {name}")
    return (reasons, False) if reasons else None


NODE_FILTERS = (filter_node_unschedulable, filter_node_name, filter_taint_toleration, filter_node_affinity,
                filter_resources_fit)


def run_node_filters(pod: PodInfo, node: NodeInfo) -> Rejection | None:
    for check in NODE_FILTERS:
        rejected = check(pod, node)
        if rejected is not None:
            return rejected
    return None


# ---------------------------------------------------------------------- per-node scores
def score_least_allocated(pod: PodInfo, node: NodeInfo) -> int:
    total = weights = 0
    for alloc, used in ((node.allocatable.get(CPU, 0), node.nonzero_cpu + pod.nonzero_cpu),
                        (node.allocatable.get(MEMORY, 0), node.nonzero_memory + pod.nonzero_memory)):
        if alloc:  # a resource the node does not report is left out of the average
            weights += 1
            if used <= alloc:
                total += (alloc - used) * MAX_NODE_SCORE // alloc
    return total // weights if weights else 0


def score_balanced_allocation(pod: PodInfo, node: NodeInfo) -> int:
    fractions = []
    for name in (CPU, MEMORY):
        alloc = node.allocatable.get(name, 0)
        if alloc:
            fractions.append(min(1.0, (node.requested.get(name, 0) + pod.requests.get(name, 0)) / alloc))
    if len(fractions) < 2:
        return MAX_NODE_SCORE
    std = abs(fractions[0] - fractions[1]) / 2
    return int((1 - std) * MAX_NODE_SCORE)


def score_image_locality(pod: PodInfo, node: NodeInfo, cache: ClusterCache) -> int:
    """ImageLocality: sizes of the pod's images already on the node, each scaled by the share of nodes
    that have it (so one node holding an image does not attract every replica)."""
    if not node.images or not pod.images:
        return 0
    total_nodes = len(cache.nodes)
    summed = 0
    for image in pod.images:
        size = node.images.get(image)
        if size is not None:
            summed += int(size * (cache.image_nodes.get(image, 0) / total_nodes))
    ceiling = IMAGE_MAX_BYTES_PER_CONTAINER * len(pod.images)
    summed = min(max(summed, IMAGE_MIN_BYTES), ceiling)
    return MAX_NODE_SCORE * (summed - IMAGE_MIN_BYTES) // (ceiling - IMAGE_MIN_BYTES)


def raw_preferred_node_affinity(pod: PodInfo, node: NodeInfo) -> int:
    preferred = (((pod.spec.get("affinity") or {}).get("nodeAffinity") or {})
                 .get("preferredDuringSchedulingIgnoredDuringExecution")) or []
    return sum(int(p.get("weight", 0)) for p in preferred if match_node_selector_term(p.get("preference") or {}, node))


def raw_intolerable_prefer_no_schedule(pod: PodInfo, node: NodeInfo) -> int:
    tolerations = [t for t in pod.spec.get("tolerations") or [] if t.get("effect") in (None, "", "PreferNoSchedule")]
    return sum(1 for t in node.taints if t.get("effect") == "PreferNoSchedule" and not tolerates(tolerations, t))


def normalize(raw: int, max_raw: int, reverse: bool = False) -> int:
    """framework's DefaultNormalizeScore."""
    if max_raw == 0:
        return MAX_NODE_SCORE if reverse else raw
    score = MAX_NODE_SCORE * raw // max_raw
    return MAX_NODE_SCORE - score if reverse else score


def node_local_score(pod: PodInfo, node: NodeInfo, affinity_max: int, taint_max: int, cache: ClusterCache) -> int:
    """Weighted sum of the scores that depend only on the pod and this one node (ImageLocality also reads
    how many nodes hold each image, which changes only with nodes)."""
    return (WEIGHT_FIT * score_least_allocated(pod, node) + WEIGHT_BALANCED * score_balanced_allocation(pod, node)
            + WEIGHT_IMAGE * score_image_locality(pod, node, cache)
            + WEIGHT_NODE_AFFINITY * normalize(raw_preferred_node_affinity(pod, node), affinity_max)
            + WEIGHT_TAINT * normalize(raw_intolerable_prefer_no_schedule(pod, node), taint_max, reverse=True))


# ---------------------------------------------------------------------- cluster-wide state (PreFilter)
@dataclass
class SpreadConstraint:
    max_skew: int
    topology_key: str
    hard: bool
    selector: Obj | None
    min_domains: int
    counts: dict[str, int] = field(default_factory=dict)
    self_match: int = 0

    def global_min(self) -> int:
        if not self.counts:
            return 0
        if self.hard and len(self.counts) < self.min_domains:
            return 0
        return min(self.counts.values())


@dataclass
class PodState:
    """What InterPodAffinity and PodTopologySpread precompute once per pod over the whole cluster."""
    existing_anti: set[tuple[str, str]] = field(default_factory=set)
    existing_anti_by_key: dict[str, set[str]] = field(default_factory=dict)  # the same, per topology key
    affinity_counts: list[dict[str, int]] = field(default_factory=list)
    affinity_any: bool = False
    anti_counts: list[dict[str, int]] = field(default_factory=list)
    preferred: dict[tuple[str, str], int] = field(default_factory=dict)
    spread: list[SpreadConstraint] = field(default_factory=list)

    @property
    def trivial(self) -> bool:
        return not (self.existing_anti or self.affinity_counts or self.anti_counts or self.preferred or self.spread)


def _domain_counts(term: AffinityTerm, cache: ClusterCache) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for other in cache.candidates(term.selector):
        node = cache.nodes.get(other.node_name)
        if node is not None and term.topology_key in node.labels and term.matches(other, cache.namespace_labels):
            counts[node.labels[term.topology_key]] += 1
    return counts


def needs_cluster_state(pod: PodInfo, cache: ClusterCache) -> bool:
    return bool(pod.affinity or pod.anti_affinity or pod.preferred_affinity or pod.preferred_anti_affinity
                or pod.spec.get("topologySpreadConstraints") or matching_existing_anti(pod, cache))


def matching_existing_anti(pod: PodInfo, cache: ClusterCache) -> set[tuple[str, str]]:
    """Topology domains that existing pods' required anti-affinity terms matching this pod rule out.

    Replicas of one workload share their terms, so each distinct term is matched against the pod once.
    """
    domains: set[tuple[str, str]] = set()
    for term, holders in cache.anti_terms.values():
        if not term.matches(pod, cache.namespace_labels):
            continue
        for other in holders.values():
            node = cache.nodes.get(other.node_name)
            value = node.labels.get(term.topology_key) if node is not None else None
            if value is not None:
                domains.add((term.topology_key, value))
    return domains


HARD_POD_AFFINITY_WEIGHT = 1  # InterPodAffinityArgs.hardPodAffinityWeight's default


def existing_affinity_scores(pod: PodInfo, cache: ClusterCache) -> dict[tuple[str, str], int]:
    """InterPodAffinity's score from other pods' terms that match this pod: each existing pod's required
    affinity terms (hardPodAffinityWeight) and preferred terms (+/- weight), credited to its domain."""
    scores: dict[tuple[str, str], int] = {}
    for other in cache.affinity_scoring_pods.values():
        node = cache.nodes.get(other.node_name)
        if node is None or not node.labels:
            continue
        for terms, sign, weighted in ((other.affinity, 1, False), (other.preferred_affinity, 1, True),
                                      (other.preferred_anti_affinity, -1, True)):
            for term in terms:
                value = node.labels.get(term.topology_key)
                if value is not None and term.matches(pod, cache.namespace_labels):
                    key = (term.topology_key, value)
                    weight = term.weight if weighted else HARD_POD_AFFINITY_WEIGHT
                    scores[key] = scores.get(key, 0) + sign * weight
    return scores


def pre_filter(pod: PodInfo, cache: ClusterCache) -> PodState:
    state = PodState(existing_anti=matching_existing_anti(pod, cache))
    for key, value in state.existing_anti:
        state.existing_anti_by_key.setdefault(key, set()).add(value)
    state.affinity_counts = [_domain_counts(t, cache) for t in pod.affinity]
    state.anti_counts = [_domain_counts(t, cache) for t in pod.anti_affinity]
    state.affinity_any = any(state.affinity_counts)
    for sign, terms in ((1, pod.preferred_affinity), (-1, pod.preferred_anti_affinity)):
        for term in terms:
            for value, n in _domain_counts(term, cache).items():
                key = (term.topology_key, value)
                state.preferred[key] = state.preferred.get(key, 0) + sign * term.weight * n
    for key, score in existing_affinity_scores(pod, cache).items():
        state.preferred[key] = state.preferred.get(key, 0) + score
    for c in pod.spec.get("topologySpreadConstraints") or []:
        state.spread.append(SpreadConstraint(
            max_skew=int(c.get("maxSkew", 1)), topology_key=c.get("topologyKey", ""),
            hard=c.get("whenUnsatisfiable", "DoNotSchedule") == "DoNotSchedule", selector=c.get("labelSelector"),
            min_domains=int(c.get("minDomains") or 1)))
    if state.spread:
        keys = tuple(c.topology_key for c in state.spread)
        # Which nodes count for spreading changes only with nodes: cache it per node generation.
        memo_key = (keys, orjson.dumps([pod.spec.get("nodeSelector"),
                                        (pod.spec.get("affinity") or {}).get("nodeAffinity")]))
        memo = cache.spread_nodes.get(memo_key)
        if memo is None or memo[0] != cache.node_generation:
            eligible = {n.name: n for n in cache.nodes.values()
                        if all(k in n.labels for k in keys) and node_affinity_matches(pod, n)}
            if len(cache.spread_nodes) > 256:
                cache.spread_nodes.clear()
            cache.spread_nodes[memo_key] = (cache.node_generation, eligible)
        else:
            eligible = memo[1]
        for c in state.spread:
            c.counts = {n.labels[c.topology_key]: 0 for n in eligible.values()}
            c.self_match = int(c.selector is not None and match_label_selector(c.selector, pod.labels))
            if c.selector is None:
                continue
            for other in cache.candidates(c.selector):
                node = eligible.get(other.node_name)
                if node is not None and other.namespace == pod.namespace and match_label_selector(
                        c.selector, other.labels):
                    c.counts[node.labels[c.topology_key]] += 1
    return state


def filter_topology_spread(pod: PodInfo, state: PodState, node: NodeInfo) -> Rejection | None:
    for c in state.spread:
        if not c.hard:
            continue
        value = node.labels.get(c.topology_key)
        if value is None:
            return [ERR_SPREAD_LABEL], True
        if c.counts.get(value, 0) + c.self_match - c.global_min() > c.max_skew:
            return [ERR_SPREAD], False
    return None


def filter_inter_pod_affinity(pod: PodInfo, state: PodState, node: NodeInfo, cache: ClusterCache) -> Rejection | None:
    labels = node.labels
    for term, counts in zip(pod.affinity, state.affinity_counts, strict=True):
        value = labels.get(term.topology_key)
        if value is None:
            return [ERR_AFFINITY], True
        if not counts.get(value):
            # The first pod of a group that matches its own affinity may go anywhere.
            if state.affinity_any or not all(t.matches(pod, cache.namespace_labels) for t in pod.affinity):
                return [ERR_AFFINITY], True
    for term, counts in zip(pod.anti_affinity, state.anti_counts, strict=True):
        value = labels.get(term.topology_key)
        if value is not None and counts.get(value):
            return [ERR_ANTI_AFFINITY], False
    if state.existing_anti:
        for key, values in state.existing_anti_by_key.items():
            if labels.get(key) in values:
                return [ERR_EXISTING_ANTI_AFFINITY], False
    return None


def run_filters(pod: PodInfo, state: PodState, node: NodeInfo, cache: ClusterCache) -> Rejection | None:
    rejected = run_node_filters(pod, node)
    if rejected is None and not state.trivial:
        rejected = filter_topology_spread(pod, state, node) or filter_inter_pod_affinity(pod, state, node, cache)
    return rejected


# ---------------------------------------------------------------------- scoring a feasible set
def score_nodes(pod: PodInfo, state: PodState, nodes: list[NodeInfo], cache: ClusterCache) -> list[int]:
    """Scores with upstream normalization over the given feasible nodes."""
    affinity_raw = [raw_preferred_node_affinity(pod, n) for n in nodes]
    taint_raw = [raw_intolerable_prefer_no_schedule(pod, n) for n in nodes]
    affinity_max, taint_max = max(affinity_raw, default=0), max(taint_raw, default=0)
    scores = [WEIGHT_FIT * score_least_allocated(pod, n) + WEIGHT_BALANCED * score_balanced_allocation(pod, n)
              + WEIGHT_IMAGE * score_image_locality(pod, n, cache)
              + WEIGHT_NODE_AFFINITY * normalize(a, affinity_max)
              + WEIGHT_TAINT * normalize(t, taint_max, reverse=True)
              for n, a, t in zip(nodes, affinity_raw, taint_raw, strict=True)]
    if state.preferred:
        raw = [sum(w for (k, v), w in state.preferred.items() if n.labels.get(k) == v) for n in nodes]
        lo, hi = min(raw), max(raw)
        for i, r in enumerate(raw):
            # int64(float64(MaxNodeScore) * (float64(score - min) / float64(max - min))), as upstream
            scores[i] += WEIGHT_INTER_POD_AFFINITY * (int(MAX_NODE_SCORE * ((r - lo) / (hi - lo))) if hi > lo else 0)
    counts = spreading.spread_counts(pod, cache)
    if counts is not None:
        weights = spreading.spread_weights(counts, nodes)
        spread = spreading.normalize_spread([None if counts.ignores(n) else counts.raw_for(weights, n)
                                             for n in nodes])
        for i, s in enumerate(spread):
            scores[i] += WEIGHT_SPREAD * s
    return scores
