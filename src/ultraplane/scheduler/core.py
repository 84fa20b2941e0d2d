"""Choosing a node for a pod: the generic sampled path, and equivalence classes for the common case.

Most pods (no inter-pod affinity, no spread constraints, not targeted by another pod's anti-affinity)
have a score that depends only on the pod's own spec and one node's state. Pods with the same such
spec form an equivalence class that keeps a max-heap of (score, node, node version): an entry whose
node changed since it was scored is re-evaluated lazily when it reaches the top; nodes that may have
become better (added, freed) reach the class through the cache's ``freed`` log. Each decision admits a
few unseen nodes into the class, and an empty heap scans on, so every node is eventually considered
without re-filtering the whole cluster per pod.

PodTopologySpread's system defaults also score a Deployment's (or StatefulSet's, ...) replicas by how
many pods of their own workload a node and its zone hold. The class therefore keeps one heap per group
of nodes (zone, has a hostname label), and a decision takes from each group the best node for every
count of the workload's pods present there; those candidates get the spreading score and the best
wins, ties drawn at random as kube's selectHost does.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field

import orjson

from ultraplane.scheduler import plugins, spreading
from ultraplane.scheduler.cache import ClusterCache
from ultraplane.scheduler.model import HOSTNAME_LABEL, ZONE_LABEL, NodeInfo, PodInfo

MIN_FEASIBLE_NODES_TO_FIND = 100
NODES_ADMITTED_PER_DECISION = 4
MAX_EXCLUDED_SKIPS = 256  # beyond this many ruled-out top nodes, the generic path is cheaper
# Beyond this many nodes walked past in one group, the counts still missing there (typically the last
# few nodes without the workload's pods) are looked up among the class's feasible nodes directly.
GROUP_WALK_BUDGET = 32
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


Group = tuple[str | None, bool]  # (zone label value, has a hostname label): how default spreading sees a node
Entry = tuple[int, int, str, int]  # (-node-local score, random tie-break, node, node version)


def node_group(node: NodeInfo) -> Group:
    return node.labels.get(ZONE_LABEL), HOSTNAME_LABEL in node.labels


@dataclass
class EquivalenceClass:
    pod: PodInfo  # a representative: all members share what filters and node-local scores read
    # Feasible nodes ranked by node-local score, one heap per group: PodTopologySpread's system defaults
    # score all nodes of a group alike except those holding pods of the pod's own workload, so a group's
    # best node for spreading is its heap's first such untouched node.
    heaps: dict[Group, list[Entry]] = field(default_factory=dict)
    # nodes last seen feasible, with their group and version then (spreading's weights and min / max)
    feasible: dict[str, tuple[Group, int]] = field(default_factory=dict)
    group_sizes: dict[Group, int] = field(default_factory=lambda: defaultdict(int))
    cursor: int = 0  # next position in cache.node_order to admit
    scanned: int = 0
    freed_pos: int = 0
    affinity_max: int = 0
    taint_max: int = 0
    rebuilds: int = 0  # bumped when normalization changed and every held node was rescored
    # The last diagnosis when no node fitted, valid until a node becomes freer or the node count changes.
    failure: FitError | None = None
    failure_at: tuple[int, int] = (-1, -1)


@dataclass
class Candidate:
    node: NodeInfo
    local: int  # node-local weighted score
    on_node: int  # pods of the incoming pod's workload already on the node (what spreading counts)


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
                or spec.get("topologySpreadConstraints")
                or (self.cache.affinity_scoring_pods and plugins.existing_affinity_scores(pod, self.cache))):
            # Scores that depend on other pods' placement (beyond its own workload's spreading).
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
        was = eq.feasible.pop(node.name, None)
        if was is not None:
            eq.group_sizes[was[0]] -= 1
        if plugins.run_node_filters(eq.pod, node) is not None:
            return
        group = node_group(node)
        eq.feasible[node.name] = group, node.version
        eq.group_sizes[group] += 1
        affinity = plugins.raw_preferred_node_affinity(eq.pod, node)
        taints = plugins.raw_intolerable_prefer_no_schedule(eq.pod, node)
        if affinity > eq.affinity_max or taints > eq.taint_max:
            # Normalization is relative to the best node seen: rescore what the class holds.
            eq.affinity_max, eq.taint_max = max(affinity, eq.affinity_max), max(taints, eq.taint_max)
            eq.rebuilds += 1
            held = {name for heap in eq.heaps.values() for _, _, name, _ in heap}
            eq.heaps = {}
            for name in held:
                other = self.cache.nodes.get(name)
                if other is not None and other is not node:
                    self._push(eq, other)
        score = plugins.node_local_score(eq.pod, node, eq.affinity_max, eq.taint_max, self.cache)
        heapq.heappush(eq.heaps.setdefault(group, []),
                       (-score, self.random.getrandbits(30), node.name, node.version))

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
            before = len(eq.feasible)
            self._push(eq, node)
            if not until_feasible or len(eq.feasible) > before:
                found += 1
            self.stats["evaluated"] += 1

    def _walk(self, eq: EquivalenceClass, pod: PodInfo, exclusions: plugins.PodState | None,
              on_nodes: dict[str, int], present: dict[Group, set[int]] | None,
              skipped: list[tuple[Group, Entry]]) -> list[Candidate] | None:
        """Per group, walking its heap from the top, each node with fewer of the workload's pods than every
        node before it: a later node with as many or more scores no better locally and no better for
        spreading. The walk ends at the fewest count present in the group (``present``; without
        spreading, at the first node). Ruled-out nodes are set aside in ``skipped``.
        None when too many nodes had to be set aside."""
        cache = self.cache
        candidates: list[Candidate] = []
        missing: dict[Group, set[int]] = {}
        for group in list(eq.heaps):
            counts = present.get(group) if present is not None else None
            fewest = min(counts) if counts else 0
            least_seen: int | None = None
            walked = 0
            while len(skipped) < MAX_EXCLUDED_SKIPS:
                heap = eq.heaps.get(group)
                if not heap:
                    break
                entry = heap[0]
                node = cache.nodes.get(entry[2])
                if node is None or node.version != entry[3]:
                    heapq.heappop(heap)
                    if node is not None:
                        self.stats["rescored"] += 1
                        self._push(eq, node)
                    continue
                if exclusions is not None and plugins.filter_inter_pod_affinity(
                        pod, exclusions, node, cache) is not None:
                    skipped.append((group, heapq.heappop(heap)))
                    continue
                on_node = on_nodes.get(node.name, 0)
                if least_seen is None or on_node < least_seen:
                    least_seen = on_node
                    candidates.append(Candidate(node, -entry[0], on_node))
                if on_node <= fewest:
                    break
                if walked >= GROUP_WALK_BUDGET and counts:
                    missing[group] = {n for n in counts if n < least_seen}
                    break
                skipped.append((group, heapq.heappop(heap)))
                walked += 1
            else:
                return None
        if missing:
            candidates.extend(self._look_up(eq, pod, exclusions, on_nodes, missing))
        return candidates

    def _look_up(self, eq: EquivalenceClass, pod: PodInfo, exclusions: plugins.PodState | None,
                 on_nodes: dict[str, int], missing: dict[Group, set[int]]) -> list[Candidate]:
        """The best feasible node per (group, count of the workload's pods) asked for, found by going over
        the nodes holding the workload's pods, or when untouched nodes are asked for, over the class's
        feasible nodes; equal scores are drawn at random."""
        cache = self.cache
        names = (list(eq.feasible) if any(0 in counts for counts in missing.values())
                 else [name for name in on_nodes if name in eq.feasible])
        best: dict[tuple[Group, int], tuple[int, int, NodeInfo]] = {}  # -> (score, ties so far, node)
        for name in names:
            record = eq.feasible.get(name)
            on_node = on_nodes.get(name, 0)
            if record is None or on_node not in missing.get(record[0], ()):
                continue
            group, version = record
            node = cache.nodes.get(name)
            if node is not None and node.version != version:
                self._push(eq, node)  # changed since: refilter, and keep the record true for later decisions
                if eq.feasible.get(name, (None,))[0] != group:
                    continue
            if node is None or (exclusions is not None
                                and plugins.filter_inter_pod_affinity(pod, exclusions, node, cache) is not None):
                continue
            score = plugins.node_local_score(eq.pod, node, eq.affinity_max, eq.taint_max, cache)
            self.stats["looked_up"] += 1
            held = best.get((group, on_node))
            if held is None or score > held[0]:
                best[(group, on_node)] = (score, 1, node)
            elif score == held[0]:
                ties = held[1] + 1
                best[(group, on_node)] = (score, ties, node if self.random.randrange(ties) == 0 else held[2])
        return [Candidate(node, score, on_node) for (_, on_node), (score, _, node) in best.items()]

    def _restore(self, eq: EquivalenceClass, skipped: list[tuple[Group, Entry]], rescore: bool) -> None:
        for group, entry in skipped:
            if not rescore:
                heapq.heappush(eq.heaps.setdefault(group, []), entry)
            elif (node := self.cache.nodes.get(entry[2])) is not None:
                self._push(eq, node)
        skipped.clear()

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
        spread = spreading.spread_counts(pod, cache)
        if spread is not None:
            self.stats["class_with_spreading"] += 1
        on_nodes = spread.by_node[0] if spread is not None else {}
        skipped: list[tuple[Group, Entry]] = []
        candidates: list[Candidate] | None = None
        rebuilds = eq.rebuilds
        if spread is not None and len(eq.feasible) <= MIN_FEASIBLE_NODES_TO_FIND:
            # kube scores every feasible node here: refilter the changed ones so that spreading's weights
            # and min / max count exactly the nodes that fit now.
            for name, (_, version) in list(eq.feasible.items()):
                node = cache.nodes.get(name)
                if node is None:
                    eq.group_sizes[eq.feasible.pop(name)[0]] -= 1
                elif node.version != version:
                    self._push(eq, node)
        try:
            while True:
                present = self._counts_present(eq, on_nodes) if spread is not None else None
                candidates = self._walk(eq, pod, exclusions, on_nodes, present, skipped)
                if eq.rebuilds != rebuilds:  # scores were renormalized under the walk: walk again
                    self._restore(eq, skipped, rescore=True)
                    rebuilds = eq.rebuilds
                    continue
                if (candidates is None or any(not c.on_node for c in candidates)
                        or eq.scanned >= len(cache.node_order)):
                    break
                # Only nodes holding the workload's pods are left: nodes not yet admitted may do better.
                self._restore(eq, skipped, rescore=False)
                self._admit(eq, nodes_to_find(len(cache.nodes), self.percentage), until_feasible=True)
            if candidates:
                return self._pick(eq, candidates, spread, present)
        finally:
            self._restore(eq, skipped, rescore=eq.rebuilds != rebuilds)
        if exclusions is not None or candidates is None:
            self.stats["class_fell_back"] += 1
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

    @staticmethod
    def _counts_present(eq: EquivalenceClass, on_nodes: dict[str, int]) -> dict[Group, set[int]]:
        """Per group, the distinct counts of the workload's pods on its feasible nodes (0: untouched)."""
        present: dict[Group, set[int]] = defaultdict(set)
        touched: dict[Group, int] = defaultdict(int)
        feasible = eq.feasible
        for name, on_node in on_nodes.items():
            record = feasible.get(name)
            if record is not None:
                group = record[0]
                touched[group] += 1
                present[group].add(on_node)
        for group, size in eq.group_sizes.items():
            if size > touched.get(group, 0):
                present[group].add(0)
        return present

    def _pick(self, eq: EquivalenceClass, candidates: list[Candidate], spread: spreading.SpreadCounts | None,
              present: dict[Group, set[int]] | None) -> str:
        """The best candidate with PodTopologySpread's score added; ties broken at random (selectHost)."""
        totals = [c.local for c in candidates]
        if spread is not None and present is not None:
            # The system defaults (hostname, zone), as the class path only serves pods without constraints
            # of their own. Weights come from the nodes the class holds as feasible, capped at how many kube
            # would score; a node's raw score depends only on its group and its own matching pods.
            scored = min(len(eq.feasible), nodes_to_find(len(self.cache.nodes), self.percentage))
            zones = {zone or "" for (zone, _), size in eq.group_sizes.items() if size > 0}
            host_weight, zone_weight = spreading.topology_weight(scored), spreading.topology_weight(len(zones))
            (_, host_skew), (_, zone_skew) = spread.constraints
            zone_counts = spread.domains[1]

            def raw(group: Group, on_node: int) -> int:
                zone, has_hostname = group
                total = on_node * host_weight + host_skew - 1 if has_hostname else 0.0
                if zone is not None:
                    total += zone_counts.get(zone, 0) * zone_weight + zone_skew - 1
                return math.floor(total + 0.5)

            # NormalizeScore's min and max over the feasible nodes, from each group's distinct counts.
            raws = [raw(node_group(c.node), c.on_node) for c in candidates]
            everywhere = [raw(g, n) for g, counts in present.items() for n in counts] + raws
            lo, hi = min(everywhere), max(everywhere)
            for i, r in enumerate(raws):
                totals[i] += plugins.WEIGHT_SPREAD * (
                    plugins.MAX_NODE_SCORE if not hi else plugins.MAX_NODE_SCORE * (hi + lo - r) // hi)
        best, chosen, ties = totals[0], candidates[0], 1
        for c, total in zip(candidates[1:], totals[1:], strict=True):
            if total > best:
                best, chosen, ties = total, c, 1
            elif total == best:
                ties += 1
                if self.random.randrange(ties) == 0:  # reservoir sampling, as selectHost
                    chosen = c
        return chosen.node.name

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
        scores = plugins.score_nodes(pod, state, feasible, cache)
        best = max(scores)
        winners = [n for n, s in zip(feasible, scores, strict=True) if s == best]
        return self.random.choice(winners).name  # uniform among the best, as selectHost's reservoir
