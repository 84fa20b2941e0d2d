"""FlowStore: flows kept for queries plus incremental aggregates, so the service map and the metrics
never rescan the flows.

Aggregates are kept twice: cumulative since start (the default service map and the Prometheus counters
read these in O(edges)) and in one-second buckets for windowed maps (a window merges its buckets; the
before/after comparison of a rollout splits at a whole second, which is the precision of the rollout's
creationTimestamp). Raw flows sit in a bounded ring for the flow table and the policy proposals.
"""

from __future__ import annotations

import math
import zlib
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ultraplane.netobs.flow import DROPPED, FORWARDED, INGRESS, RCODE_NAMES, Flow

EdgeKey = tuple[str, str, int, str]  # source node id, destination node id, destination port, L4 protocol
# AWS: data transferred between Availability Zones in one Region costs $0.01/GB in each direction
# (https://aws.amazon.com/ec2/pricing/on-demand/, "Data Transfer within the same AWS Region"), so a byte that
# crosses zones is billed twice, once out of the sender's zone and once into the receiver's.
CROSS_AZ_USD_PER_GB_EACH_DIRECTION = 0.01
GB = 1024 ** 3  # AWS bills data transfer per GB of 2^30 bytes


@dataclass(slots=True)
class EdgeStats:
    flows: int = 0
    forwarded: int = 0
    dropped: int = 0
    timeouts: int = 0
    retransmits: int = 0
    bytes: int = 0
    packets: int = 0
    dns_errors: int = 0
    drop_reasons: dict[str, int] = field(default_factory=dict)
    ports: set[int] = field(default_factory=set)

    def add(self, flow: Flow) -> None:
        self.flows += 1
        self.ports.add(flow.destination_port)
        self.bytes += flow.bytes
        self.packets += flow.packets
        self.retransmits += flow.tcp_retransmits
        if flow.verdict == DROPPED:
            self.dropped += 1
            self.drop_reasons[flow.drop_reason_desc] = self.drop_reasons.get(flow.drop_reason_desc, 0) + 1
        elif flow.timed_out:
            self.timeouts += 1
        elif flow.verdict == FORWARDED:
            self.forwarded += 1
        if flow.dns_rcode:
            self.dns_errors += 1

    def merge(self, other: EdgeStats) -> None:
        self.flows += other.flows
        self.forwarded += other.forwarded
        self.dropped += other.dropped
        self.timeouts += other.timeouts
        self.retransmits += other.retransmits
        self.bytes += other.bytes
        self.packets += other.packets
        self.dns_errors += other.dns_errors
        self.ports |= other.ports
        for reason, count in other.drop_reasons.items():
            self.drop_reasons[reason] = self.drop_reasons.get(reason, 0) + count

    @property
    def failures(self) -> int:
        return self.dropped + self.timeouts + self.dns_errors

    def to_dict(self) -> dict[str, Any]:
        return {"flows": self.flows, "forwarded": self.forwarded, "dropped": self.dropped,
                "timeouts": self.timeouts, "retransmits": self.retransmits, "bytes": self.bytes,
                "packets": self.packets, "dns_errors": self.dns_errors, "drop_reasons": dict(self.drop_reasons),
                "ports": sorted(self.ports)}


_SERVICE_NODES: dict[str, str] = {}  # "ns/name" -> "ns/Service/name", so the hot path formats each once


def edge_key(flow: Flow) -> EdgeKey:
    """Flows through a Service end at the Service, on port 0: a delivered flow carries the backend's port
    after translation, a flow dropped for want of a backend the Service's own, and both are one edge (the
    ports seen are in the edge's `ports`). A failed DNS lookup ends at the name that did not resolve, so
    a missing service is visible."""
    if flow.dns_query and flow.dns_rcode:
        return flow.source.workload_id, f"dns:{flow.dns_query}", flow.destination_port, flow.protocol
    if flow.destination_service:
        node = _SERVICE_NODES.get(flow.destination_service)
        if node is None:
            ns, _, name = flow.destination_service.partition("/")
            node = _SERVICE_NODES[flow.destination_service] = f"{ns}/Service/{name}"
        return flow.source.workload_id, node, 0, flow.protocol
    return flow.source.workload_id, flow.destination.workload_id, flow.destination_port, flow.protocol


class PodCounters:
    """Per (pod, direction[, reason]) counters behind the Retina-named metrics."""

    def __init__(self) -> None:
        # (namespace, pod, workload_kind, workload_name, direction) -> [packets, bytes]
        self.forward: dict[tuple[str, str, str, str, str], list[int]] = {}
        # (namespace, pod, workload_kind, workload_name, direction, reason) -> [packets, bytes]
        self.drop: dict[tuple[str, str, str, str, str, str], list[int]] = {}
        self.retransmits: dict[tuple[str, str, str, str], int] = {}
        self.dns_requests: dict[tuple[str, str, str, str], int] = {}
        self.dns_responses: dict[tuple[str, str, str, str, str], int] = {}

    def add(self, flow: Flow) -> None:
        src, dst = flow.source, flow.destination
        src_id = src.pod_key
        if flow.verdict == DROPPED:
            # A drop is counted where it happened: at the sender for egress drops, the receiver for ingress.
            side = dst if flow.traffic_direction == INGRESS else src
            key = side.pod_key + (flow.traffic_direction.lower(), flow.drop_reason_desc)
            slot = self.drop.get(key)
            if slot is None:
                slot = self.drop[key] = [0, 0]
            slot[0] += flow.packets
            slot[1] += flow.bytes
        else:
            if src.pod_name:
                self._forward(src_id + ("egress",), flow)
            if dst.pod_name and not flow.timed_out:
                self._forward(dst.pod_key + ("ingress",), flow)
        if flow.tcp_retransmits and src.pod_name:
            self.retransmits[src_id] = self.retransmits.get(src_id, 0) + flow.tcp_retransmits
        if flow.dns_query and src.pod_name:
            self.dns_requests[src_id] = self.dns_requests.get(src_id, 0) + 1
            if flow.dns_rcode is not None:
                rkey = src_id + (RCODE_NAMES.get(flow.dns_rcode, str(flow.dns_rcode)),)
                self.dns_responses[rkey] = self.dns_responses.get(rkey, 0) + 1

    def _forward(self, key: tuple[str, str, str, str, str], flow: Flow) -> None:
        slot = self.forward.get(key)
        if slot is None:
            slot = self.forward[key] = [0, 0]
        slot[0] += flow.packets
        slot[1] += flow.bytes


class FlowStore:
    def __init__(self, max_flows: int = 1_000_000, bucket_seconds: int = 1, max_buckets: int = 3600) -> None:
        self.flows: deque[Flow] = deque(maxlen=max_flows)
        self.edges: dict[EdgeKey, EdgeStats] = {}
        self.buckets: dict[int, dict[EdgeKey, EdgeStats]] = {}
        self.bucket_seconds = bucket_seconds
        self.max_buckets = max_buckets
        self.pods = PodCounters()
        self.ingested = 0

    def add_many(self, flows: Iterable[Flow]) -> int:
        count = 0
        edges, buckets, width, pods = self.edges, self.buckets, self.bucket_seconds, self.pods
        for flow in flows:
            key = edge_key(flow)
            stats = edges.get(key)
            if stats is None:
                stats = edges[key] = EdgeStats()
            stats.add(flow)
            slot = int(flow.time // width)
            bucket = buckets.get(slot)
            if bucket is None:
                bucket = buckets[slot] = {}
                if len(buckets) > self.max_buckets:
                    del buckets[min(buckets)]
            bstats = bucket.get(key)
            if bstats is None:
                bstats = bucket[key] = EdgeStats()
            bstats.add(flow)
            pods.add(flow)
            self.flows.append(flow)
            count += 1
        self.ingested += count
        return count

    # --- service map -------------------------------------------------------------------------------
    def window_edges(self, since: float | None = None, until: float | None = None) -> dict[EdgeKey, EdgeStats]:
        """Edge aggregates for [since, until) (whole buckets), or since start when both are None."""
        if since is None and until is None:
            return self.edges
        lo = math.floor(since / self.bucket_seconds) if since is not None else -math.inf
        hi = math.ceil(until / self.bucket_seconds) if until is not None else math.inf
        merged: dict[EdgeKey, EdgeStats] = {}
        for slot, bucket in self.buckets.items():
            if lo <= slot < hi:
                for key, stats in bucket.items():
                    target = merged.get(key)
                    if target is None:
                        target = merged[key] = EdgeStats()
                    target.merge(stats)
        return merged

    def service_map(self, since: float | None = None, until: float | None = None) -> dict[str, Any]:
        return service_map(self.window_edges(since, until))

    def changes(self, boundary: float, window: float) -> dict[str, Any]:
        """New and broken edges: the window before `boundary` (a rollout) against the window after it."""
        before = self.window_edges(boundary - window, boundary)
        after = self.window_edges(boundary, boundary + window)
        return compare_edges(before, after) | {"boundary": boundary, "window_seconds": window}

    # --- flow tables -------------------------------------------------------------------------------
    def top_connections(self, by: str, limit: int = 20, since: float | None = None) -> list[dict[str, Any]]:
        """Flows grouped by (source pod, destination pod, port, protocol), ranked by `by`
        ("retransmits" or "cross_az_bytes"); each row carries its cross-AZ data cost."""
        if by not in ("retransmits", "cross_az_bytes"):
            raise ValueError("by must be retransmits or cross_az_bytes")
        rows: dict[tuple[str, str, str, str, int, str], dict[str, Any]] = {}
        for flow in self.flows:
            if since is not None and flow.time < since:
                continue
            src, dst = flow.source, flow.destination
            key = (src.namespace, src.pod_name or src.ip, dst.namespace, dst.pod_name or dst.ip,
                   flow.destination_port, flow.protocol)
            row = rows.get(key)
            if row is None:
                row = rows[key] = {
                    "source": {"namespace": src.namespace, "pod_name": src.pod_name, "ip": src.ip,
                               "workload": src.workload_id, "node_name": src.node_name, "zone": src.zone},
                    "destination": {"namespace": dst.namespace, "pod_name": dst.pod_name, "ip": dst.ip,
                                    "workload": dst.workload_id, "node_name": dst.node_name, "zone": dst.zone},
                    "destination_port": flow.destination_port, "protocol": flow.protocol,
                    "flows": 0, "bytes": 0, "retransmits": 0, "dropped": 0, "cross_az_bytes": 0}
            row["flows"] += 1
            row["bytes"] += flow.bytes
            row["retransmits"] += flow.tcp_retransmits
            row["dropped"] += flow.verdict == DROPPED
            if flow.cross_zone and flow.verdict == FORWARDED:
                row["cross_az_bytes"] += flow.bytes
        ranked = sorted((r for r in rows.values() if r[by] > 0), key=lambda r: (-r[by], -r["bytes"]))[:limit]
        for row in ranked:
            row["cross_az_cost_usd"] = cross_az_cost(row["cross_az_bytes"])
        return ranked

    def cross_az_summary(self, since: float | None = None) -> dict[str, Any]:
        total = sum(f.bytes for f in self.flows if f.cross_zone and f.verdict == FORWARDED
                    and (since is None or f.time >= since))
        return {"cross_az_bytes": total, "cost_usd": cross_az_cost(total),
                "price": f"${CROSS_AZ_USD_PER_GB_EACH_DIRECTION}/GB in each direction",
                "source": "https://aws.amazon.com/ec2/pricing/on-demand/ (Data Transfer within the same AWS Region)"}

    def query_flows(self, namespace: str | None = None, pod: str | None = None, verdict: str | None = None,
                    since: float | None = None, limit: int = 100) -> list[Flow]:
        out: list[Flow] = []
        for flow in reversed(self.flows):
            if since is not None and flow.time < since:
                continue
            if verdict and flow.verdict != verdict:
                continue
            if namespace and namespace not in (flow.source.namespace, flow.destination.namespace):
                continue
            if pod and pod not in (flow.source.pod_name, flow.destination.pod_name):
                continue
            out.append(flow)
            if len(out) >= limit:
                break
        return out


def merge_edges(parts: Iterable[dict[EdgeKey, EdgeStats]]) -> dict[EdgeKey, EdgeStats]:
    """Edge aggregates of several shards as one (ingestion shards by source node, so one workload's edge
    can be counted in every shard holding one of its pods)."""
    merged: dict[EdgeKey, EdgeStats] = {}
    for part in parts:
        for key, stats in part.items():
            target = merged.get(key)
            if target is None:
                target = merged[key] = EdgeStats()
            target.merge(stats)
    return merged


def shard_of(flow: Flow, shards: int) -> int:
    """The ingestion shard of a flow: by the node that observed it at the source, so each process sees
    whole nodes (as a per-node agent would feed it) and the shards never need to coordinate on ingest."""
    return zlib.crc32((flow.source.node_name or flow.node_name).encode()) % shards  # stable across processes


def cross_az_cost(cross_az_bytes: int) -> float:
    return round(cross_az_bytes / GB * CROSS_AZ_USD_PER_GB_EACH_DIRECTION * 2, 9)


def _node(node_id: str) -> dict[str, Any]:
    if node_id.startswith("dns:"):
        return {"id": node_id, "kind": "DNSName", "name": node_id[4:], "namespace": ""}
    parts = node_id.split("/")
    if len(parts) == 3:
        return {"id": node_id, "kind": parts[1], "namespace": parts[0], "name": parts[2]}
    return {"id": node_id, "kind": "External", "namespace": "", "name": node_id}


def service_map(edges: dict[EdgeKey, EdgeStats]) -> dict[str, Any]:
    node_ids: set[str] = set()
    out_edges = []
    for (src, dst, port, proto), stats in edges.items():
        node_ids.add(src)
        node_ids.add(dst)
        out_edges.append({"source": src, "destination": dst, "port": port, "protocol": proto} | stats.to_dict())
    out_edges.sort(key=lambda e: (e["source"], e["destination"], e["port"]))
    return {"nodes": [_node(n) for n in sorted(node_ids)], "edges": out_edges}


def _healthy(stats: EdgeStats) -> bool:
    return stats.forwarded > 0 and stats.failures * 2 < stats.flows


def compare_edges(before: dict[EdgeKey, EdgeStats], after: dict[EdgeKey, EdgeStats]) -> dict[str, Any]:
    """new: edges seen after but not before; broken: healthy before (most flows forwarded), mostly failing
    after (drops, timeouts, failed lookups); gone: healthy before, no traffic after."""
    def row(key: EdgeKey, b: EdgeStats | None, a: EdgeStats | None) -> dict[str, Any]:
        src, dst, port, proto = key
        return {"source": src, "destination": dst, "port": port, "protocol": proto,
                "before": b.to_dict() if b else None, "after": a.to_dict() if a else None}

    new = [row(k, None, s) for k, s in after.items() if k not in before]
    broken = [row(k, before[k], s) for k, s in after.items()
              if k in before and _healthy(before[k]) and not _healthy(s)]
    gone = [row(k, s, None) for k, s in before.items() if k not in after and _healthy(s)]
    for rows in (new, broken, gone):
        rows.sort(key=lambda r: (r["source"], r["destination"], r["port"]))
    return {"new_edges": new, "broken_edges": broken, "gone_edges": gone}


__all__ = ["FlowStore", "EdgeStats", "service_map", "compare_edges", "cross_az_cost", "merge_edges", "shard_of"]
