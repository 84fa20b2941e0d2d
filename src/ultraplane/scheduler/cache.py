"""The scheduler's incremental view of the cluster, fed by informer events and by its own assumptions.

Every change that can make a node *more* attractive or newly feasible (node added or updated, pod
removed, assumption forgotten) is appended to ``freed`` so equivalence classes can pick it up without
rescanning; changes that only make a node less attractive just bump ``NodeInfo.version``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from ultraplane.scheduler.model import (
    ZONE_LABEL,
    AffinityTerm,
    NodeInfo,
    Obj,
    PodInfo,
    match_label_selector,
    node_info,
    pod_info,
)

_SPREAD_OWNERS = {("v1", "ReplicationController"), ("apps/v1", "ReplicaSet"), ("apps/v1", "StatefulSet")}


MAX_INDEXED_SELECTORS = 8192


def _bump(counts: dict[str, int], key: str, delta: int) -> None:
    left = counts[key] = counts.get(key, 0) + delta
    if not left:
        del counts[key]


@dataclass
class SelectorCounts:
    """Pods of one namespace matching one label selector, per node, kept current as pods come and go:
    what PodTopologySpread counts for every replica of a workload."""
    namespace: str
    selector: Obj
    by_node: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    # by the node's zone label ("" without one), for pods whose node is known; forgotten when a node
    # with pods appears, goes or changes zone
    by_zone: dict[str, int] = field(default_factory=lambda: defaultdict(int))


class ClusterCache:
    def __init__(self) -> None:
        self.nodes: dict[str, NodeInfo] = {}
        self.node_order: list[str] = []  # scan order; deleted names are skipped and compacted away
        self.pods: dict[str, PodInfo] = {}  # assigned or assumed pods by ns/name
        self.assumed: set[str] = set()
        self.namespace_labels: dict[str, dict[str, str]] = {}
        # Pods with required anti-affinity: every incoming pod must be checked against them.
        self.anti_affinity_pods: dict[str, PodInfo] = {}
        # Pods whose own terms score other pods (InterPodAffinity): required affinity (counted with
        # hardPodAffinityWeight), preferred affinity and anti-affinity.
        self.affinity_scoring_pods: dict[str, PodInfo] = {}
        # The same required anti-affinity terms by signature, with the pods holding each: an incoming pod
        # is matched once per distinct term, not once per replica that carries it.
        self.anti_terms: dict[int, tuple[AffinityTerm, dict[str, PodInfo]]] = {}
        # label (key, value) -> keys of pods carrying it: affinity terms with matchLabels look here first.
        self.pods_by_label: dict[tuple[str, str], set[str]] = defaultdict(set)
        self.freed: list[str] = []
        self.freed_base = 0  # log position of freed[0]
        self.generation = 0  # bumped on any change; lets the queue know a retry may now succeed
        self.node_generation = 0  # bumped when a node is added, updated or removed
        self.spread_nodes: dict[Any, tuple[int, dict[str, NodeInfo]]] = {}  # see plugins.pre_filter
        # Assigned pods per priority value: preemption is only worth trying when some pod has a lower one.
        self.priorities: dict[int, int] = defaultdict(int)
        # Pending pods nominated to a node by preemption (kube's PodNominator): node -> pod key -> pod.
        self.nominated: dict[str, dict[str, PodInfo]] = {}
        self.nominated_node: dict[str, str] = {}  # pod key -> node
        self.image_nodes: dict[str, int] = defaultdict(int)  # image name -> nodes reporting it (ImageLocality)
        # What default spreading derives a pod's selector from (kube's DefaultSelector): Services' selectors
        # by namespace, and ReplicationController / ReplicaSet / StatefulSet selectors by (kind, ns, name).
        self.services: dict[str, dict[str, dict[str, str]]] = defaultdict(dict)
        self.controllers: dict[tuple[str, str, str], Obj] = {}
        self._default_selectors: dict[tuple[Any, ...], Obj | None] = {}
        # Selectors counted so far, and the same indexed by (namespace, one of their matchLabels pairs):
        # a pod can only match a selector if it carries that pair.
        self._selector_counts: dict[bytes, SelectorCounts] = {}
        self._selector_anchors: dict[tuple[str, str, str], list[SelectorCounts]] = defaultdict(list)
        self._selector_by_id: dict[int, tuple[Obj, SelectorCounts]] = {}

    # ---------------------------------------------------------------- nodes
    def upsert_node(self, obj: Obj) -> NodeInfo:
        fresh = node_info(obj)
        old = self.nodes.get(fresh.name)
        self._count_images(old, -1)
        self._count_images(fresh, 1)
        if old is None:
            self.node_order.append(fresh.name)
        else:
            fresh.pods, fresh.requested = old.pods, old.requested
            fresh.nonzero_cpu, fresh.nonzero_memory = old.nonzero_cpu, old.nonzero_memory
            fresh.version = old.version + 1
        for pod in self.pods.values():  # pods seen before their node
            if pod.node_name == fresh.name and pod.key not in fresh.pods and old is None:
                fresh.add_pod(pod)
        if fresh.pods and (old is None or old.labels.get(ZONE_LABEL) != fresh.labels.get(ZONE_LABEL)):
            self._forget_selector_counts()
        self.nodes[fresh.name] = fresh
        self.node_generation += 1
        self._freed(fresh.name)
        return fresh

    def remove_node(self, name: str) -> None:
        node = self.nodes.pop(name, None)
        if node is not None:
            self._count_images(node, -1)
            if node.pods:
                self._forget_selector_counts()
            self.generation += 1
            self.node_generation += 1
            if len(self.node_order) > 2 * len(self.nodes) + 1024:
                self.node_order = [n for n in self.node_order if n in self.nodes]

    def _count_images(self, node: NodeInfo | None, delta: int) -> None:
        for image in node.images if node is not None else ():
            self.image_nodes[image] += delta
            if not self.image_nodes[image]:
                del self.image_nodes[image]

    # ---------------------------------------------------------------- pods
    def upsert_pod(self, obj: Obj) -> None:
        """An assigned pod from the informer (confirms an assumption, or is new, or moved)."""
        pod = pod_info(obj)
        if not pod.node_name:
            return
        old = self.pods.get(pod.key)
        if old is not None:
            if (old.node_name == pod.node_name and old.requests == pod.requests and old.labels == pod.labels
                    and old.priority == pod.priority):
                self.assumed.discard(pod.key)
                self.pods[pod.key] = pod
                if pod.terminating != old.terminating:  # terminating pods no longer count for spreading
                    self._count_selectors(pod, -1 if pod.terminating else 1)
                node = self.nodes.get(pod.node_name)
                if node is not None and pod.key in node.pods:
                    node.pods[pod.key] = pod  # same accounting; fresher state (e.g. terminating) for preemption
                return
            self.remove_pod(pod.key)
        self._add(pod)

    def remove_pod(self, key: str) -> None:
        pod = self.pods.pop(key, None)
        self.assumed.discard(key)
        self.anti_affinity_pods.pop(key, None)
        self.affinity_scoring_pods.pop(key, None)
        if pod is None:
            return
        for term in pod.anti_affinity:
            holders = self.anti_terms.get(term.signature)
            if holders is not None:
                holders[1].pop(key, None)
                if not holders[1]:
                    del self.anti_terms[term.signature]
        self.priorities[pod.priority] -= 1
        if not self.priorities[pod.priority]:
            del self.priorities[pod.priority]
        if not pod.terminating:
            self._count_selectors(pod, -1)
        for label in pod.labels.items():
            holders = self.pods_by_label.get(label)
            if holders is not None:
                holders.discard(key)
                if not holders:
                    del self.pods_by_label[label]
        node = self.nodes.get(pod.node_name)
        if node is not None and node.remove_pod(key) is not None:
            node.version += 1
            self._freed(node.name)

    def assume(self, pod: PodInfo, node_name: str) -> None:
        """Account for a pod on a node before the binding is confirmed by the watch."""
        pod.node_name = node_name
        self.assumed.add(pod.key)
        self._add(pod)

    def candidates(self, selector: Obj | None) -> Iterable[PodInfo]:
        """Pods that may match a label selector: those with its rarest matchLabels pair, else all."""
        pairs = list(((selector or {}).get("matchLabels") or {}).items())
        if not pairs:
            return self.pods.values()
        smallest = min((self.pods_by_label.get(p, set()) for p in pairs), key=len)
        return [self.pods[k] for k in smallest]

    def forget(self, key: str) -> None:
        if key in self.assumed:
            self.remove_pod(key)

    def _add(self, pod: PodInfo) -> None:
        self.pods[pod.key] = pod
        self.priorities[pod.priority] += 1
        if not pod.terminating:
            self._count_selectors(pod, 1)
        for label in pod.labels.items():
            self.pods_by_label[label].add(pod.key)
        if pod.anti_affinity:
            self.anti_affinity_pods[pod.key] = pod
            for term in pod.anti_affinity:
                self.anti_terms.setdefault(term.signature, (term, {}))[1][pod.key] = pod
        if pod.affinity or pod.preferred_affinity or pod.preferred_anti_affinity:
            self.affinity_scoring_pods[pod.key] = pod
        node = self.nodes.get(pod.node_name)
        if node is not None:
            node.add_pod(pod)
            node.version += 1
        self.generation += 1

    def has_lower_priority(self, priority: int) -> bool:
        return any(p < priority for p in self.priorities)

    # ---------------------------------------------------------------- nominated pods
    def nominate(self, pod: PodInfo, node_name: str) -> None:
        self.unnominate(pod.key)
        pod.nominated_node = node_name
        self.nominated.setdefault(node_name, {})[pod.key] = pod
        self.nominated_node[pod.key] = node_name

    def unnominate(self, key: str) -> None:
        node_name = self.nominated_node.pop(key, None)
        if node_name is not None:
            pods = self.nominated.get(node_name, {})
            pods.pop(key, None)
            if not pods:
                self.nominated.pop(node_name, None)

    def nominated_for(self, pod: PodInfo, node_name: str) -> list[PodInfo]:
        """Other pods nominated to the node that ``pod`` must leave room for: those of equal or higher priority."""
        return [p for k, p in self.nominated.get(node_name, {}).items() if k != pod.key and p.priority >= pod.priority]

    # ---------------------------------------------------------------- pods matching a selector
    def matching_by_node(self, namespace: str, selector: Obj) -> dict[str, int]:
        """countPodsMatchSelector for every node at once: pods of the namespace, not terminating, that the
        selector matches. Kept up to date from the first call on; callers must not modify the result."""
        return self.selector_counts(namespace, selector).by_node

    def selector_counts(self, namespace: str, selector: Obj) -> SelectorCounts:
        seen = self._selector_by_id.get(id(selector))
        if seen is not None and seen[0] is selector and seen[1].namespace == namespace:
            return seen[1]  # the same selector object as last time (default_selector memoizes)
        labels = selector.get("matchLabels") or {}
        if not labels:  # expressions only: nothing to index on, count afresh
            return self._count_afresh(namespace, selector)
        key = orjson.dumps([namespace, selector], option=orjson.OPT_SORT_KEYS)
        counts = self._selector_counts.get(key)
        if counts is None:
            if len(self._selector_counts) >= MAX_INDEXED_SELECTORS:
                self._forget_selector_counts()
            counts = self._selector_counts[key] = self._count_afresh(namespace, selector)
            self._selector_anchors[(namespace, *min(labels.items()))].append(counts)
        if len(self._selector_by_id) >= MAX_INDEXED_SELECTORS:
            self._selector_by_id.clear()
        self._selector_by_id[id(selector)] = (selector, counts)  # holds the object, so its id stays unique
        return counts

    def _forget_selector_counts(self) -> None:
        self._selector_counts.clear()
        self._selector_anchors.clear()
        self._selector_by_id.clear()

    def _count_afresh(self, namespace: str, selector: Obj) -> SelectorCounts:
        counts = SelectorCounts(namespace, selector)
        for other in self.candidates(selector):
            if (other.namespace == namespace and not other.terminating and other.node_name
                    and match_label_selector(selector, other.labels)):
                counts.by_node[other.node_name] += 1
                node = self.nodes.get(other.node_name)
                if node is not None:
                    counts.by_zone[node.labels.get(ZONE_LABEL, "")] += 1
        return counts

    def _count_selectors(self, pod: PodInfo, delta: int) -> None:
        if not self._selector_counts or not pod.node_name:
            return
        node = self.nodes.get(pod.node_name)
        zone = node.labels.get(ZONE_LABEL, "") if node is not None else None
        for pair in pod.labels.items():
            for counts in self._selector_anchors.get((pod.namespace, *pair), ()):
                if match_label_selector(counts.selector, pod.labels):
                    _bump(counts.by_node, pod.node_name, delta)
                    if zone is not None:
                        _bump(counts.by_zone, zone, delta)

    # ---------------------------------------------------------------- default spreading's selector
    def upsert_workload(self, kind: str, obj: Obj) -> None:
        """A Service, ReplicationController, ReplicaSet or StatefulSet: only its selector matters here."""
        meta = obj.get("metadata") or {}
        ns, name = meta.get("namespace", ""), meta.get("name", "")
        selector = (obj.get("spec") or {}).get("selector")
        if kind == "Service":
            if self.services[ns].get(name) == selector:
                return  # status-only updates keep the memo
            if selector is None:
                self.services[ns].pop(name, None)  # a Service without a selector selects no pods
            else:
                self.services[ns][name] = selector
        else:
            key = (kind, ns, name)
            if key in self.controllers and self.controllers[key] == selector:
                return
            self.controllers[key] = selector
        self._default_selectors.clear()

    def remove_workload(self, kind: str, obj: Obj) -> None:
        meta = obj.get("metadata") or {}
        ns, name = meta.get("namespace", ""), meta.get("name", "")
        if kind == "Service":
            self.services[ns].pop(name, None)
        else:
            self.controllers.pop((kind, ns, name), None)
        self._default_selectors.clear()

    def default_selector(self, pod: PodInfo) -> Obj | None:
        """kube's DefaultSelector: the pod's Services' selectors merged, plus its controller's selector
        (ReplicationController, ReplicaSet, StatefulSet). None when that selects nothing in particular."""
        memo_key = (pod.namespace, pod.controller, tuple(sorted(pod.labels.items())))
        if memo_key in self._default_selectors:
            return self._default_selectors[memo_key]
        labels: dict[str, str] = {}
        for selector in self.services.get(pod.namespace, {}).values():
            if all(pod.labels.get(k) == v for k, v in selector.items()):
                labels.update(selector)
        expressions: list[Obj] = []
        if pod.controller is not None and pod.controller[:2] in _SPREAD_OWNERS:
            kind = pod.controller[1]
            owned = self.controllers.get((kind, pod.namespace, pod.controller[2]))
            if kind == "ReplicationController":
                labels.update(owned or {})
            elif owned is not None:  # a LabelSelector: its requirements are added (ANDed)
                for k, v in (owned.get("matchLabels") or {}).items():
                    if labels.setdefault(k, v) != v:
                        expressions.append({"key": k, "operator": "In", "values": [v]})
                expressions.extend(owned.get("matchExpressions") or [])
        result: Obj | None = None
        if labels or expressions:
            result = {"matchLabels": labels, "matchExpressions": expressions}
        if len(self._default_selectors) > 65536:
            self._default_selectors.clear()
        self._default_selectors[memo_key] = result
        return result

    # ---------------------------------------------------------------- namespaces
    def upsert_namespace(self, obj: Obj) -> None:
        meta = obj.get("metadata") or {}
        self.namespace_labels[meta.get("name", "")] = meta.get("labels") or {}

    def freed_node(self, name: str) -> None:
        """A node may have become more attractive outside the cache's own bookkeeping."""
        self._freed(name)

    def _freed(self, name: str) -> None:
        self.generation += 1
        self.freed.append(name)
        if len(self.freed) > 4 * len(self.nodes) + 4096:
            # Classes whose cursor falls before the new base rescan from scratch.
            drop = len(self.freed) // 2
            del self.freed[:drop]
            self.freed_base += drop

    @property
    def freed_end(self) -> int:
        return self.freed_base + len(self.freed)
