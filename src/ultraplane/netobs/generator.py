"""Flows from what workloads declare, deterministic for a seed.

A pod (usually through its Deployment's pod template) declares whom it talks to:

    netobs.ultraplane.io/talks-to: "api.shop:8080@50rps, db.shop:5432@5rps, stats.mon:8125/UDP@2rps"

Each entry is SERVICE[.NAMESPACE]:PORT[/PROTOCOL]@RATErps (namespace defaults to the pod's own). For each
window of `duration` seconds a source pod makes round(rate * duration) requests to the entry, as the
cluster resolves them now:
- one DNS lookup of SERVICE.NAMESPACE.svc.cluster.local. per entry and window (the resolver caches it),
  answered NXDOMAIN when the Service does not exist (then no connection is attempted);
- a Service without a ready endpoint on that port drops every request (drop_reason NO_SERVICE), so a
  rollout whose new pods leave the Service's EndpointSlices empty shows up as a broken edge;
- otherwise requests go round-robin over the ready endpoints (sorted by IP, from a seeded offset).

Injected faults, on the destination pod (its ingress) or the source pod (its egress), as whole percents:
`netobs.ultraplane.io/drop-percent` (dropped at the receiver, reason from
`netobs.ultraplane.io/drop-reason`, default POLICY_DENIED), `.../timeout-percent` (SYN never answered:
TIMEOUT_SYN_RETRIES retransmitted SYNs) and `.../retransmit-percent` (one retransmitted segment).

Counts are exact: a window makes floor(rate * duration) requests and floor(n * percent / 100) of each
fault per destination pod (picked by a seeded shuffle), and the fractions left over carry into the next
window of the same generator, so short windows (5 rps over 0.5 s) add up to the declared rates and
percentages instead of rounding them away. Same seed and same windows: same flows.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from typing import Any

from ultraplane.netobs.cluster import ClusterSnapshot, PodInfo
from ultraplane.netobs.flow import (
    DROPPED,
    EGRESS,
    FORWARDED,
    INGRESS,
    NO_SERVICE,
    NXDOMAIN,
    POLICY_DENIED,
    Endpoint,
    Flow,
)

Obj = dict[str, Any]

PREFIX = "netobs.ultraplane.io/"
TALKS_TO = PREFIX + "talks-to"
DROP_PERCENT = PREFIX + "drop-percent"
DROP_REASON = PREFIX + "drop-reason"
TIMEOUT_PERCENT = PREFIX + "timeout-percent"
RETRANSMIT_PERCENT = PREFIX + "retransmit-percent"
REQUEST_BYTES = PREFIX + "request-bytes"
DEFAULT_REQUEST_BYTES = 2_000
PACKETS_PER_REQUEST = 10
SYN_BYTES = 60
TIMEOUT_SYN_RETRIES = 6  # Linux net.ipv4.tcp_syn_retries default
EPHEMERAL_PORTS = (32768, 60999)  # Linux net.ipv4.ip_local_port_range default
CLUSTER_DOMAIN = "cluster.local"
DNS_SERVICE = ("kube-system", "kube-dns")
DNS_BYTES = 140
_ENTRY = re.compile(r"^(?P<svc>[a-z0-9]([-a-z0-9]*[a-z0-9])?)(\.(?P<ns>[a-z0-9]([-a-z0-9]*[a-z0-9])?))?"
                    r":(?P<port>\d{1,5})(/(?P<proto>TCP|UDP|SCTP))?@(?P<rate>\d+(\.\d+)?)rps$")


@dataclass(frozen=True, slots=True)
class Dependency:
    service: str
    namespace: str
    port: int
    protocol: str
    rate: float

    @property
    def dns_name(self) -> str:
        return f"{self.service}.{self.namespace}.svc.{CLUSTER_DOMAIN}."


def parse_talks_to(value: str, default_namespace: str) -> list[Dependency]:
    """The annotation's entries; ValueError naming the first malformed one."""
    deps = []
    for raw in value.split(","):
        entry = raw.strip()
        if not entry:
            continue
        match = _ENTRY.match(entry)
        if not match or not 0 < int(match["port"]) <= 65535:
            raise ValueError(f"{TALKS_TO}: entry {entry!r} is not SERVICE[.NAMESPACE]:PORT[/PROTOCOL]@RATErps")
        deps.append(Dependency(match["svc"], match["ns"] or default_namespace, int(match["port"]),
                               match["proto"] or "TCP", float(match["rate"])))
    return deps


def _percent(pod: PodInfo | None, key: str) -> int:
    if pod is None:
        return 0
    try:
        return max(0, min(100, int(pod.annotations.get(key, "0"))))
    except ValueError:
        return 0


@dataclass(slots=True)
class _Target:
    ip: str
    pod: PodInfo | None
    port: int


class FlowGenerator:
    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.problems: list[str] = []  # malformed annotations seen in the last window
        self._carry: dict[tuple[str, ...], float] = {}  # fractions of requests/faults owed to the next window

    def _take(self, key: tuple[str, ...], amount: float) -> int:
        """floor(amount + what earlier windows left over); keeps the rest for the next window."""
        total = amount + self._carry.get(key, 0.0)
        whole = math.floor(total + 1e-9)
        self._carry[key] = max(0.0, total - whole)
        return whole

    def generate(self, snap: ClusterSnapshot, start: float, duration: float) -> list[Flow]:
        self.problems = []
        flows: list[Flow] = []
        for pod in sorted(snap.pods, key=lambda p: (p.namespace, p.name)):
            value = pod.annotations.get(TALKS_TO)
            if not value or pod.terminating:
                continue
            try:
                deps = parse_talks_to(value, pod.namespace)
            except ValueError as exc:
                self.problems.append(f"{pod.namespace}/{pod.name}: {exc}")
                continue
            for dep in deps:
                rng = random.Random(f"{self.seed}/{pod.namespace}/{pod.name}/{dep}/{start}")
                flows.extend(self._dependency(snap, pod, dep, start, duration, rng))
        flows.sort(key=lambda f: f.time)
        return flows

    def _dns_server(self, snap: ClusterSnapshot) -> tuple[Endpoint, str]:
        svc = snap.services.get(DNS_SERVICE)
        for eps in snap.slices.get(DNS_SERVICE, []):
            for ep in eps.get("endpoints") or []:
                for ip in ep.get("addresses") or []:
                    if ip in snap.pods_by_ip:
                        return snap.pods_by_ip[ip].endpoint(), "/".join(DNS_SERVICE)
        # No DNS pods in a simulated cluster: the lookup still happens, answered by "the" cluster DNS.
        ip = (svc or {}).get("spec", {}).get("clusterIP", "") or "10.96.0.10"
        return Endpoint(ip=ip, namespace=DNS_SERVICE[0], workload_kind="Deployment", workload_name="coredns"), \
            "/".join(DNS_SERVICE)

    def _targets(self, snap: ClusterSnapshot, dep: Dependency) -> tuple[Obj | None, list[_Target]]:
        svc = snap.services.get((dep.namespace, dep.service))
        if svc is None:
            return None, []
        port_name = None
        for port in svc.get("spec", {}).get("ports") or []:
            if int(port.get("port", 0)) == dep.port and port.get("protocol", "TCP") == dep.protocol:
                port_name = port.get("name") or ""
                break
        if port_name is None:
            return svc, []
        targets = []
        for eps in snap.slices.get((dep.namespace, dep.service), []):
            target_port = next((int(p["port"]) for p in eps.get("ports") or []
                                if (p.get("name") or "") == port_name and p.get("protocol", "TCP") == dep.protocol
                                and p.get("port")), None)
            if target_port is None:
                continue
            for ep in eps.get("endpoints") or []:
                if (ep.get("conditions") or {}).get("ready") is False:
                    continue
                for ip in ep.get("addresses") or []:
                    targets.append(_Target(ip, snap.pods_by_ip.get(ip), target_port))
        targets.sort(key=lambda t: (t.ip, t.port))
        return svc, targets

    def _dependency(self, snap: ClusterSnapshot, pod: PodInfo, dep: Dependency, start: float, duration: float,
                    rng: random.Random) -> list[Flow]:
        src = pod.endpoint()
        dns_server, dns_service = self._dns_server(snap)
        svc, targets = self._targets(snap, dep)
        flows = [Flow(time=start, verdict=FORWARDED, source=src, destination=dns_server, protocol="UDP",
                      source_port=rng.randint(*EPHEMERAL_PORTS), destination_port=53, traffic_direction=EGRESS,
                      node_name=pod.node, destination_service=dns_service, bytes=DNS_BYTES, packets=2,
                      dns_query=dep.dns_name, dns_rcode=NXDOMAIN if svc is None else 0)]
        if svc is None:
            return flows
        pair = (pod.namespace, pod.name, str(dep))
        count = self._take(pair, dep.rate * duration)
        if count <= 0:
            return flows
        service_ip = svc.get("spec", {}).get("clusterIP", "")
        service_ref = f"{dep.namespace}/{dep.service}"
        offset = rng.randrange(len(targets)) if targets else 0
        kinds = self._fault_plan(pair, pod, targets, offset, count, dep.protocol, rng)
        request_bytes = int(pod.annotations.get(REQUEST_BYTES, DEFAULT_REQUEST_BYTES) or DEFAULT_REQUEST_BYTES)
        # one Endpoint per backend, shared by its flows (the store caches identities on it)
        destinations = [t.pod.endpoint() if t.pod else Endpoint(ip=t.ip) for t in targets]
        for i in range(count):
            when = start + i / dep.rate
            sport = rng.randint(*EPHEMERAL_PORTS)
            if not targets:
                flows.append(Flow(time=when, verdict=DROPPED, source=src, destination=Endpoint(ip=service_ip),
                                  protocol=dep.protocol, source_port=sport, destination_port=dep.port,
                                  traffic_direction=EGRESS, drop_reason_desc=NO_SERVICE, node_name=pod.node,
                                  destination_service=service_ref, bytes=SYN_BYTES, packets=1))
                continue
            slot = (offset + i) % len(targets)
            target, dst = targets[slot], destinations[slot]
            kind = kinds[i]
            flow = Flow(time=when, verdict=FORWARDED, source=src, destination=dst, protocol=dep.protocol,
                        source_port=sport, destination_port=target.port, traffic_direction=EGRESS,
                        node_name=pod.node, destination_service=service_ref, bytes=request_bytes,
                        packets=PACKETS_PER_REQUEST)
            if kind == "drop":
                flow.verdict, flow.traffic_direction = DROPPED, INGRESS
                flow.drop_reason_desc = self._drop_reason(pod, target.pod)
                flow.node_name, flow.bytes, flow.packets = dst.node_name, SYN_BYTES, 1
            elif kind == "timeout":
                flow.timed_out, flow.tcp_retransmits = True, TIMEOUT_SYN_RETRIES
                flow.packets = 1 + TIMEOUT_SYN_RETRIES
                flow.bytes = SYN_BYTES * flow.packets
            elif kind == "retransmit":
                flow.tcp_retransmits = 1
                flow.packets += 1
                flow.bytes += request_bytes // PACKETS_PER_REQUEST
            flows.append(flow)
        return flows

    @staticmethod
    def _drop_reason(src: PodInfo, dst: PodInfo | None) -> str:
        for pod in (dst, src):
            if pod is not None and pod.annotations.get(DROP_REASON):
                return pod.annotations[DROP_REASON]
        return POLICY_DENIED

    def _fault_plan(self, pair: tuple[str, ...], pod: PodInfo, targets: list[_Target], offset: int, count: int,
                    protocol: str, rng: random.Random) -> list[str]:
        """What happens to each request: faults are counted per destination pod so a fault on one backend
        hits exactly its share of the requests."""
        kinds = ["ok"] * count
        if not targets:
            return kinds
        by_target: dict[int, list[int]] = {}
        for i in range(count):
            by_target.setdefault((offset + i) % len(targets), []).append(i)
        for index, requests in sorted(by_target.items()):
            dst = targets[index].pod
            order = requests[:]
            rng.shuffle(order)
            plan = [("drop", max(_percent(dst, DROP_PERCENT), _percent(pod, DROP_PERCENT)))]
            if protocol == "TCP":
                plan += [("timeout", max(_percent(dst, TIMEOUT_PERCENT), _percent(pod, TIMEOUT_PERCENT))),
                         ("retransmit", max(_percent(dst, RETRANSMIT_PERCENT), _percent(pod, RETRANSMIT_PERCENT)))]
            position = 0
            for kind, percent in plan:
                owed = self._take((*pair, targets[index].ip, kind), len(requests) * percent / 100)
                take = min(owed, len(order) - position)
                for i in order[position:position + take]:
                    kinds[i] = kind
                position += take
        return kinds

