"""Choosing a node for a pod: the generic sampled path, and equivalence classes for the common case.

Most pods (no inter-pod affinity, no spread constraints, not targeted by another pod's anti-affinity)
have a score that depends only on the pod's own spec and one node's state. Pods with the same such
spec form an equivalence class that keeps a max-heap of (score, node, node version): an entry whose
node changed since it was scored is re-evaluated lazily when it reaches the top; nodes that may have
become better (added, freed) reach the class through the cache's ``freed`` log. Each decision admits a
few unseen nodes into the class, and an empty heap scans on, so every node is eventually considered
without re-filtering the whole cluster per pod.
"""

from __future__ import annotations

import heapq
import random
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field

import orjson

from ultraplane.scheduler import plugins
from ultraplane.scheduler.cache import ClusterCache
from ultraplane.scheduler.model import NodeInfo, PodInfo

MIN_FEASIBLE_NODES_TO_FIND = 100
NODES_ADMITTED_PER_DECISION = 4
MAX_EXCLUDED_SKIPS = 256  # beyond this many ruled-out top nodes, the generic path is cheaper
MAX_CLASSES = 4096


def nodes_to_find(total: int, percentage: int = 0) -> int:
    """kube-scheduler's numFeasibleNodesToFind with the adaptive percentageOfNodesToScore."""
    if total < MIN_FEASIBLE_NODES_TO_FIND:
        return total
    if not percentage:
        percentage = max(5, 50 - total // 125)
    return max(MIN_FEASIBLE_NODES_TO_FIND, total * percentage // 100) if percentage < 100 else total


class FitError(Exception):
    """No node fits; ``str()`` is kube-scheduler's FailedScheduling message."""

    def __init__(self, pod: PodInfo, total: int, reasons: dict[str, int], unresolvable: int) -> None:
        self.pod, self.total, self.reasons, self.unresolvable = pod, total, reasons, unresolvable
        # PostFilter's (preemption's) own message once it ran: "" when it nominated a node; None: derive it
        # from the filter diagnosis (right whenever no pod has a lower priority, preemption's fast answer).
        self.post_filter: str | None = None
        super().__init__(self.message())

    def __str__(self) -> str:
        return self.message()

    def message(self) -> str:
        if not self.total:
            return "no nodes available to schedule pods"
        text = f"0/{self.total} nodes are available:"
        histogram = sorted(f"{n} {reason}" for reason, n in self.reasons.items())
        if histogram:
            text += f" {', '.join(histogram)}."
        if self.post_filter is not None:
            if self.post_filter:
                text += f" {self.post_filter}"
        elif self.pod.preempt_never:
            text += " preemption: not eligible due to preemptionPolicy=Never."
        else:
            parts = []
            if self.unresolvable:
                parts.append(f"{self.unresolvable} Preemption is not helpful for scheduling")
            if self.total - self.unresolvable:
                parts.append(f"{self.total - self.unresolvable} No preemption victims found for incoming pod")
            text += f" preemption: 0/{self.total} nodes are available: {', '.join(sorted(parts))}."
        return text


def class_key(pod: PodInfo) -> bytes:
    spec = pod.spec
    return orjson.dumps([sorted(pod.requests.items()), spec.get("nodeSelector"),
                         (spec.get("affinity") or {}).get("nodeAffinity"), spec.get("tolerations"),
                         spec.get("nodeName"), spec.get("preemptionPolicy")], option=orjson.OPT_SORT_KEYS)


@dataclass
class EquivalenceClass:
    pod: PodInfo  # a representative: all members share what filters and node-local scores read
    heap: list[tuple[int, int, str, int]] = field(default_factory=list)  # (-score, tie, node, version)
    cursor: int = 0  # next position in cache.node_order to admit
    scanned: int = 0
    freed_pos: int = 0
    affinity_max: int = 0
    taint_max: int = 0
    # The last diagnosis when no node fitted, valid until a node becomes freer or the node count changes.
    failure: FitError | None = None
    failure_at: tuple[int, int] = (-1, -1)


class Algorithm:
    def __init__(self, cache: ClusterCache, percentage_of_nodes_to_score: int = 0, seed: int | None = None) -> None:
        self.cache = cache
        self.percentage = percentage_of_nodes_to_score
        self.classes: OrderedDict[bytes, EquivalenceClass] = OrderedDict()
        self.random = random.Random(seed)
        self.next_start = 0  # generic path: rotate the starting node like upstream
        self.stats: dict[str, int] = defaultdict(int)

    def schedule(self, pod: PodInfo) -> str:
        """Return the chosen node's name (the caller assumes it) or raise FitError."""
        if not self.cache.nodes:
            raise FitError(pod, 0, {}, 0)
        if not self.cache.nominated:
            return self._schedule(pod)
        # A pod nominated by preemption tries its node first (kube's evaluateNominatedNode); every pod leaves
        # room for the nominated pods of equal or higher priority, so nobody lower steals the freed space.
        nominated = self.cache.nodes.get(self.cache.nominated_node.get(pod.key, ""))
        reserved = [(node, other) for name in list(self.cache.nominated)
                    if (node := self.cache.nodes.get(name)) is not None
                    for other in self.cache.nominated_for(pod, name) if other.key not in self.cache.pods]
        for node, other in reserved:
            node.add_pod(other)
            node.version += 1
        try:
            if nominated is not None and plugins.run_filters(
                    pod, plugins.pre_filter(pod, self.cache), nominated, self.cache) is None:
                return nominated.name
            return self._schedule(pod)
        finally:
            for node, other in reserved:
                node.remove_pod(other.key)
                node.version += 1
                self.cache.freed_node(node.name)

    def _schedule(self, pod: PodInfo) -> str:
        spec = pod.spec
        if (pod.affinity or pod.preferred_affinity or pod.preferred_anti_affinity
                or spec.get("topologySpreadConstraints")):
            self.stats["generic"] += 1
            return self._schedule_generic(pod)
        self.stats["class"] += 1
        if pod.anti_affinity or plugins.matching_existing_anti(pod, self.cache):
            # Anti-affinity only rules nodes out: walk the class's ranking and skip the excluded.
            self.stats["class_with_exclusions"] += 1
            return self._schedule_class(pod, plugins.pre_filter(pod, self.cache))
        return self._schedule_class(pod, None)

    # ---------------------------------------------------------------- equivalence classes
    def _class(self, pod: PodInfo) -> EquivalenceClass:
        key = class_key(pod)
        eq = self.classes.get(key)
        if eq is None or eq.freed_pos < self.cache.freed_base:
            eq = EquivalenceClass(pod, freed_pos=self.cache.freed_end)
            self.classes[key] = eq
            if len(self.classes) > MAX_CLASSES:
                self.classes.popitem(last=False)
            self._admit(eq, nodes_to_find(len(self.cache.nodes), self.percentage), until_feasible=True)
        else:
            self.classes.move_to_end(key)
        return eq

    def _push(self, eq: EquivalenceClass, node: NodeInfo) -> None:
        if plugins.run_node_filters(eq.pod, node) is not None:
            return
        affinity = plugins.raw_preferred_node_affinity(eq.pod, node)
        taints = plugins.raw_intolerable_prefer_no_schedule(eq.pod, node)
        if affinity > eq.affinity_max or taints > eq.taint_max:
            # Normalization is relative to the best node seen: rescore what the class holds.
            eq.affinity_max, eq.taint_max = max(affinity, eq.affinity_max), max(taints, eq.taint_max)
            entries, eq.heap = eq.heap, []
            for _, _, name, _ in entries:
                held = self.cache.nodes.get(name)
                if held is not None and held is not node:
                    self._push(eq, held)
        score = plugins.node_local_score(eq.pod, node, eq.affinity_max, eq.taint_max)
        heapq.heappush(eq.heap, (-score, self.random.getrandbits(30), node.name, node.version))

    def _admit(self, eq: EquivalenceClass, count: int, until_feasible: bool = False) -> None:
        order, nodes = self.cache.node_order, self.cache.nodes
        found = 0
        while found < count and eq.scanned < len(order):
            name = order[eq.cursor % len(order)]
            eq.cursor += 1
            eq.scanned += 1
            node = nodes.get(name)
            if node is None:
                continue
            before = len(eq.heap)
            self._push(eq, node)
            if not until_feasible or len(eq.heap) > before:
                found += 1
            self.stats["evaluated"] += 1

    def _schedule_class(self, pod: PodInfo, exclusions: plugins.PodState | None) -> str:
        eq = self._class(pod)
        cache = self.cache
        if eq.freed_pos < cache.freed_end:
            for name in set(cache.freed[eq.freed_pos - cache.freed_base:]):
                node = cache.nodes.get(name)
                if node is not None:
                    self._push(eq, node)
            eq.freed_pos = cache.freed_end
        self._admit(eq, NODES_ADMITTED_PER_DECISION)
        skipped: list[tuple[int, int, str, int]] = []
        try:
            while len(skipped) < MAX_EXCLUDED_SKIPS:
                while eq.heap and len(skipped) < MAX_EXCLUDED_SKIPS:
                    entry = eq.heap[0]
                    node = cache.nodes.get(entry[2])
                    if node is not None and node.version == entry[3]:
                        if exclusions is None or plugins.filter_inter_pod_affinity(
                                pod, exclusions, node, cache) is None:
                            return entry[2]
                        skipped.append(heapq.heappop(eq.heap))
                        continue
                    heapq.heappop(eq.heap)
                    if node is not None:
                        self.stats["rescored"] += 1
                        self._push(eq, node)
                if eq.heap or eq.scanned >= len(cache.node_order):
                    break
                self._admit(eq, nodes_to_find(len(cache.nodes), self.percentage), until_feasible=True)
        finally:
            for entry in skipped:
                heapq.heappush(eq.heap, entry)
        if exclusions is not None:
            return self._schedule_generic(pod)
        # Nothing fits: a full pass gives the reasons, as upstream's diagnosis does.
        eq.scanned = len(cache.node_order)
        now = (cache.freed_end, len(cache.nodes))
        if eq.failure is not None and eq.failure_at == now:
            raise FitError(pod, eq.failure.total, eq.failure.reasons, eq.failure.unresolvable)
        try:
            return self._schedule_generic(pod)
        except FitError as err:
            eq.failure, eq.failure_at = err, now
            raise

    # ---------------------------------------------------------------- generic path
    def _schedule_generic(self, pod: PodInfo) -> str:
        cache = self.cache
        state = plugins.pre_filter(pod, cache)
        order = cache.node_order
        want = nodes_to_find(len(cache.nodes), self.percentage)
        feasible: list[NodeInfo] = []
        reasons: dict[str, int] = defaultdict(int)
        unresolvable = 0
        start = self.next_start % max(1, len(order))
        checked = 0
        for i in range(len(order)):
            node = cache.nodes.get(order[(start + i) % len(order)])
            if node is None:
                continue
            checked = i + 1
            rejected = plugins.run_filters(pod, state, node, cache)
            if rejected is None:
                feasible.append(node)
                if len(feasible) >= want:
                    break
            else:
                for reason in rejected[0]:
                    reasons[reason] += 1
                unresolvable += rejected[1]
        self.next_start = start + checked
        self.stats["evaluated"] += checked
        if not feasible:
            raise FitError(pod, len(cache.nodes), dict(reasons), unresolvable)
        scores = plugins.score_nodes(pod, state, feasible)
        best = max(scores)
        winners = [n for n, s in zip(feasible, scores, strict=True) if s == best]
        return self.random.choice(winners).name
