"""The flow record: one observed L4 conversation (or DNS exchange), named after Hubble's flow.proto.

Field names follow cilium/cilium api/v1/flow/flow.proto where Hubble has one (verdict, drop_reason_desc,
traffic_direction, source/destination endpoints with namespace, pod_name and workloads, l4 TCP/UDP
ports, l7 dns query and rcode, node_name, source_service/destination_service). Hubble has no byte,
packet or retransmission counters, so those are ours (bytes, packets, tcp_retransmits, like a flow-log
aggregation), as are zone and timed_out.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

FORWARDED = "FORWARDED"
DROPPED = "DROPPED"
VERDICTS = ("VERDICT_UNKNOWN", FORWARDED, DROPPED, "ERROR", "AUDIT", "REDIRECTED", "TRACED", "TRANSLATED")
INGRESS = "INGRESS"
EGRESS = "EGRESS"
DIRECTIONS = ("TRAFFIC_DIRECTION_UNKNOWN", INGRESS, EGRESS)
# Hubble DropReason names used by the generator (flow.proto enum DropReason).
POLICY_DENIED = "POLICY_DENIED"
NO_SERVICE = "NO_SERVICE"
# DNS response codes (RFC 1035 section 4.1.1 / RFC 2136) by number, as Hubble's DNS.rcode carries them.
RCODE_NAMES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
NXDOMAIN = 3
IANA_PROTOCOLS = {1: "ICMPv4", 6: "TCP", 17: "UDP", 58: "ICMPv6", 132: "SCTP"}


@dataclass(slots=True)
class Endpoint:
    """One side of a flow. `workload` is "Kind/name" of the pod's top owner (Hubble: workloads[0])."""

    ip: str = ""
    namespace: str = ""
    pod_name: str = ""
    workload_kind: str = ""
    workload_name: str = ""
    node_name: str = ""
    zone: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    # Computed on first use and kept: one Endpoint is shared by many flows, and the store keys every flow
    # by these (set the identity fields before reading them).
    _workload_id: str = field(default="", repr=False, compare=False)
    _pod_key: tuple[str, str, str, str] | None = field(default=None, repr=False, compare=False)

    @property
    def workload_id(self) -> str:
        """A stable service-map node id: ns/Kind/name for pods, ip for anything outside the cluster."""
        if not self._workload_id:
            if self.workload_name:
                self._workload_id = f"{self.namespace}/{self.workload_kind}/{self.workload_name}"
            elif self.pod_name:
                self._workload_id = f"{self.namespace}/Pod/{self.pod_name}"
            else:
                self._workload_id = self.ip or "unknown"
        return self._workload_id

    @property
    def pod_key(self) -> tuple[str, str, str, str]:
        """(namespace, pod, workload kind, workload name): the identity labels of per-pod metrics."""
        if self._pod_key is None:
            self._pod_key = (self.namespace, self.pod_name, self.workload_kind, self.workload_name)
        return self._pod_key

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"namespace": self.namespace, "pod_name": self.pod_name, "node_name": self.node_name,
                               "zone": self.zone, "ip": self.ip}
        if self.workload_name:
            out["workloads"] = [{"name": self.workload_name, "kind": self.workload_kind}]
        if self.labels:
            out["labels"] = [f"k8s:{k}={v}" for k, v in sorted(self.labels.items())]
        return out


@dataclass(slots=True)
class Flow:
    time: float
    verdict: str
    source: Endpoint
    destination: Endpoint
    protocol: str = "TCP"
    source_port: int = 0
    destination_port: int = 0
    traffic_direction: str = EGRESS
    drop_reason_desc: str = ""
    node_name: str = ""
    source_service: str = ""        # "ns/name"
    destination_service: str = ""   # "ns/name"
    bytes: int = 0
    packets: int = 0
    tcp_retransmits: int = 0
    timed_out: bool = False
    dns_query: str = ""
    dns_rcode: int | None = None
    is_reply: bool = False

    @property
    def is_dns(self) -> bool:
        return bool(self.dns_query)

    @property
    def cross_zone(self) -> bool:
        return bool(self.source.zone and self.destination.zone and self.source.zone != self.destination.zone)

    def to_dict(self) -> dict[str, Any]:
        """The flow as a Hubble-shaped JSON object (plus our counters), for the API and exports."""
        l4_key = self.protocol if self.protocol in ("TCP", "UDP", "SCTP") else "ICMPv4"
        out: dict[str, Any] = {
            "time": iso_time(self.time), "verdict": self.verdict,
            "IP": {"source": self.source.ip, "destination": self.destination.ip},
            "l4": {l4_key: {"source_port": self.source_port, "destination_port": self.destination_port}},
            "source": self.source.to_dict(), "destination": self.destination.to_dict(),
            "node_name": self.node_name, "traffic_direction": self.traffic_direction, "is_reply": self.is_reply,
            "bytes": self.bytes, "packets": self.packets, "tcp_retransmits": self.tcp_retransmits,
            "timed_out": self.timed_out, "cross_zone": self.cross_zone,
        }
        if self.verdict == DROPPED:
            out["drop_reason_desc"] = self.drop_reason_desc
        if self.source_service:
            ns, _, name = self.source_service.partition("/")
            out["source_service"] = {"namespace": ns, "name": name}
        if self.destination_service:
            ns, _, name = self.destination_service.partition("/")
            out["destination_service"] = {"namespace": ns, "name": name}
        if self.dns_query:
            dns: dict[str, Any] = {"query": self.dns_query}
            if self.dns_rcode is not None:
                dns["rcode"] = self.dns_rcode
            out["l7"] = {"type": "RESPONSE" if self.dns_rcode is not None else "REQUEST", "dns": dns}
        return out


def iso_time(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_time(text: str) -> float:
    """RFC 3339 with up to nanosecond fractions (Hubble prints nanoseconds; datetime takes microseconds)."""
    text = text.strip()
    if text.endswith("Z") or text.endswith("z"):
        text = text[:-1] + "+00:00"
    main, dot, rest = text.partition(".")
    if dot:
        digits = ""
        while rest and rest[0].isdigit():
            digits, rest = digits + rest[0], rest[1:]
        text = f"{main}.{(digits + '000000')[:6]}{rest}"
    stamp = dt.datetime.fromisoformat(text)
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return stamp.timestamp()
