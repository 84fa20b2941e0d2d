"""kube-scheduler's DefaultPreemption PostFilter: which lower-priority pods to evict, and on which node.

Runs only for a pod that no node fits. Nodes whose filters failed for reasons removing pods cannot fix
(taints, affinity, ...) are not candidates. On each other node the dry run removes every pod of strictly
lower priority, checks the pod then fits, and adds the removed pods back, most important first (PDB
violating ones before the others), keeping as victims only those that must go. The chosen node has the
fewest PDB violations, then the lowest highest victim priority, the smallest priority sum, the fewest
victims and the latest start of its most important victims (pickOneNodeForPreemption).
"""

from __future__ import annotations

import dataclasses
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ultraplane.scheduler import plugins
from ultraplane.scheduler.cache import ClusterCache
from ultraplane.scheduler.model import NodeInfo, Obj, PodInfo, match_label_selector

MIN_CANDIDATE_NODES_PERCENTAGE = 10
MIN_CANDIDATE_NODES_ABSOLUTE = 100
NOT_HELPFUL = "Preemption is not helpful for scheduling"
NO_VICTIMS = "No preemption victims found for incoming pod"
NEVER = "preemption: not eligible due to preemptionPolicy=Never."
TERMINATING = "preemption: not eligible due to a terminating pod on the nominated node."
INT32_SPAN = 2 ** 31  # kube adds MaxInt32+1 to each priority before summing


@dataclass
class Candidate:
    node: str
    victims: list[PodInfo]  # most important first
    pdb_violations: int


def importance(pod: PodInfo) -> tuple[int, str]:
    """Sort key, most important first: higher priority, then the earlier start (kube's MoreImportantPod)."""
    return -pod.priority, pod.start_time or "~"  # no start time yet counts as now, the latest


def _split_by_pdb(pods: list[PodInfo], pdbs: list[Obj]) -> tuple[list[PodInfo], list[PodInfo]]:
    """filterPodsWithPDBViolation: pods whose eviction would take a matching PDB below zero allowed."""
    allowed = [int((pdb.get("status") or {}).get("disruptionsAllowed") or 0) for pdb in pdbs]
    violating, fine = [], []
    for pod in pods:
        violated = False
        if pod.labels:
            for i, pdb in enumerate(pdbs):
                meta = pdb.get("metadata") or {}
                selector = (pdb.get("spec") or {}).get("selector")
                if meta.get("namespace") != pod.namespace or not selector or not (
                        selector.get("matchLabels") or selector.get("matchExpressions")):
                    continue  # a PDB with an empty selector matches nothing here
                if not match_label_selector(selector, pod.labels):
                    continue
                if pod.name in ((pdb.get("status") or {}).get("disruptedPods") or {}):
                    continue  # already being disrupted through the eviction API
                allowed[i] -= 1
                if allowed[i] < 0:
                    violated = True
        (violating if violated else fine).append(pod)
    return violating, fine


class Preemption:
    def __init__(self, cache: ClusterCache, pdbs: dict[str, Obj], rng: random.Random) -> None:
        self.cache = cache
        self.pdbs = pdbs
        self.random = rng

    def ineligible(self, pod: PodInfo, deleting: set[str]) -> str | None:
        """PodEligibleToPreemptOthers: why this pod may not preempt now, or None."""
        if pod.preempt_never:
            return NEVER
        node = self.cache.nodes.get(self.cache.nominated_node.get(pod.key, ""))
        if node is not None:
            rejected = plugins.run_filters(pod, plugins.pre_filter(pod, self.cache), node, self.cache)
            if rejected is not None and rejected[1]:
                return None  # the nominated node can no longer work: preempt elsewhere
            for other in node.pods.values():
                if other.priority < pod.priority and (other.terminating or other.key in deleting):
                    return TERMINATING  # our victims are still leaving: wait for them
        return None

    def _fits(self, pod: PodInfo, state: plugins.PodState, node: NodeInfo) -> list[str] | None:
        rejected = plugins.run_filters(pod, state, node, self.cache)
        return None if rejected is None else rejected[0]

    def select_victims(self, pod: PodInfo, state: plugins.PodState, node: NodeInfo,
                       pdbs: list[Obj]) -> tuple[list[PodInfo], int, list[str] | None]:
        """SelectVictimsOnNode on a copy of the node: (victims, PDB violations, failure reasons)."""
        sim = dataclasses.replace(node, pods=dict(node.pods), requested=dict(node.requested))
        for other in self.cache.nominated_for(pod, node.name):
            if other.key not in sim.pods:
                sim.add_pod(other)
        potential = sorted((p for p in node.pods.values() if p.priority < pod.priority), key=importance)
        if not potential:
            return [], 0, [NO_VICTIMS]
        for victim in potential:
            sim.remove_pod(victim.key)
        reasons = self._fits(pod, state, sim)
        if reasons is not None:
            return [], 0, reasons
        violating, fine = _split_by_pdb(potential, pdbs)
        victims: list[PodInfo] = []
        violations = 0
        for group, counts in ((violating, True), (fine, False)):
            for victim in group:
                sim.add_pod(victim)  # reprieve it, unless the pod then no longer fits
                if self._fits(pod, state, sim) is not None:
                    sim.remove_pod(victim.key)
                    victims.append(victim)
                    violations += counts
        if violating and fine:
            victims.sort(key=importance)
        return victims, violations, None

    def find(self, pod: PodInfo) -> tuple[Candidate | None, str]:
        """The best candidate, or None and the PostFilter message ("preemption: 0/N nodes are available: ...")."""
        cache = self.cache
        state = plugins.pre_filter(pod, cache)
        potential = []
        for name in cache.node_order:
            node = cache.nodes.get(name)
            if node is None:
                continue
            rejected = plugins.run_filters(pod, state, node, cache)
            if rejected is not None and not rejected[1]:
                potential.append(node)
        total = len(cache.nodes)
        statuses: dict[str, list[str]] = {}
        non_violating: list[Candidate] = []
        violating: list[Candidate] = []
        if potential:
            wanted = min(len(potential), max(MIN_CANDIDATE_NODES_ABSOLUTE,
                                             len(potential) * MIN_CANDIDATE_NODES_PERCENTAGE // 100))
            offset = self.random.randrange(len(potential))
            pdbs = list(self.pdbs.values())
            for i in range(len(potential)):
                node = potential[(offset + i) % len(potential)]
                victims, violations, reasons = self.select_victims(pod, state, node, pdbs)
                if reasons is not None:
                    statuses[node.name] = reasons
                    continue
                (violating if violations else non_violating).append(Candidate(node.name, victims, violations))
                if non_violating and len(non_violating) + len(violating) >= wanted:
                    break
        candidates = non_violating + violating
        if candidates:
            return pick_one(candidates), ""
        histogram: dict[str, int] = defaultdict(int)
        for reasons in statuses.values():
            for reason in reasons:
                histogram[reason] += 1
        if total > len(statuses):
            histogram[NOT_HELPFUL] += total - len(statuses)
        text = ", ".join(sorted(f"{n} {reason}" for reason, n in histogram.items()))
        return None, f"preemption: 0/{total} nodes are available: {text}."


def _earliest_top_start(c: Candidate) -> str:
    """GetEarliestPodStartTime: the earliest start among the highest-priority victims."""
    top = max(v.priority for v in c.victims)
    return min(v.start_time or "~" for v in c.victims if v.priority == top)


def pick_one(candidates: list[Candidate]) -> Candidate:
    """pickOneNodeForPreemption: each criterion narrows the ties of the one before; then the first."""
    criteria: tuple[Callable[[Candidate], Any], ...] = (
        lambda c: -c.pdb_violations,
        lambda c: -max(v.priority for v in c.victims),
        lambda c: -sum(v.priority + INT32_SPAN for v in c.victims),
        lambda c: -len(c.victims),
        _earliest_top_start,
    )
    remaining = candidates
    for score in criteria:
        best = max(score(c) for c in remaining)
        remaining = [c for c in remaining if score(c) == best]
        if len(remaining) == 1:
            break
    return remaining[0]
