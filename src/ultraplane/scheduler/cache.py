"""The scheduler's incremental view of the cluster, fed by informer events and by its own assumptions.

Every change that can make a node *more* attractive or newly feasible (node added or updated, pod
removed, assumption forgotten) is appended to ``freed`` so equivalence classes can pick it up without
rescanning; changes that only make a node less attractive just bump ``NodeInfo.version``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from ultraplane.scheduler.model import NodeInfo, Obj, PodInfo, node_info, pod_info


class ClusterCache:
    def __init__(self) -> None:
        self.nodes: dict[str, NodeInfo] = {}
        self.node_order: list[str] = []  # scan order; deleted names are skipped and compacted away
        self.pods: dict[str, PodInfo] = {}  # assigned or assumed pods by ns/name
        self.assumed: set[str] = set()
        self.namespace_labels: dict[str, dict[str, str]] = {}
        # Pods with required anti-affinity: every incoming pod must be checked against them.
        self.anti_affinity_pods: dict[str, PodInfo] = {}
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

    # ---------------------------------------------------------------- nodes
    def upsert_node(self, obj: Obj) -> NodeInfo:
        fresh = node_info(obj)
        old = self.nodes.get(fresh.name)
        if old is None:
            self.node_order.append(fresh.name)
        else:
            fresh.pods, fresh.requested = old.pods, old.requested
            fresh.nonzero_cpu, fresh.nonzero_memory = old.nonzero_cpu, old.nonzero_memory
            fresh.version = old.version + 1
        for pod in self.pods.values():  # pods seen before their node
            if pod.node_name == fresh.name and pod.key not in fresh.pods and old is None:
                fresh.add_pod(pod)
        self.nodes[fresh.name] = fresh
        self.node_generation += 1
        self._freed(fresh.name)
        return fresh

    def remove_node(self, name: str) -> None:
        if self.nodes.pop(name, None) is not None:
            self.generation += 1
            self.node_generation += 1
            if len(self.node_order) > 2 * len(self.nodes) + 1024:
                self.node_order = [n for n in self.node_order if n in self.nodes]

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
        if pod is None:
            return
        self.priorities[pod.priority] -= 1
        if not self.priorities[pod.priority]:
            del self.priorities[pod.priority]
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
        for label in pod.labels.items():
            self.pods_by_label[label].add(pod.key)
        if pod.anti_affinity:
            self.anti_affinity_pods[pod.key] = pod
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
