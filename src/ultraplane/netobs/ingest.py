"""Ingest real flows onto the Flow schema: Hubble's JSON export and AWS VPC flow log records.

Hubble: one JSON object a line as `hubble observe -o json` prints it, {"flow": {...}, "node_name": ...,
"time": ...}, with flow.proto's field names. VPC flow logs: the default format (version 2 fields, in
order: version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end
action log-status) or a custom format whose first line is the header naming the fields, as delivered to
S3. Records with log-status NODATA or SKIPDATA carry no traffic and are skipped. A malformed line raises
IngestError naming its line number and what is wrong; nothing from a rejected batch is kept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import orjson

from ultraplane.netobs.flow import (
    DIRECTIONS,
    DROPPED,
    EGRESS,
    FORWARDED,
    IANA_PROTOCOLS,
    INGRESS,
    POLICY_DENIED,
    VERDICTS,
    Endpoint,
    Flow,
    parse_time,
)

Resolver = Callable[[str], Endpoint | None]
VPC_DEFAULT_FIELDS = ("version", "account-id", "interface-id", "srcaddr", "dstaddr", "srcport", "dstport",
                      "protocol", "packets", "bytes", "start", "end", "action", "log-status")
# Every field name AWS documents for custom formats (versions 2 to 5); a header naming anything else is refused.
VPC_KNOWN_FIELDS = frozenset(VPC_DEFAULT_FIELDS) | {
    "vpc-id", "subnet-id", "instance-id", "tcp-flags", "type", "pkt-srcaddr", "pkt-dstaddr", "region",
    "az-id", "sublocation-type", "sublocation-id", "pkt-src-aws-service", "pkt-dst-aws-service",
    "flow-direction", "traffic-path", "ecs-cluster-arn", "ecs-cluster-name", "ecs-container-instance-arn",
    "ecs-container-instance-id", "ecs-container-id", "ecs-second-container-id", "ecs-service-name",
    "ecs-task-definition-arn", "ecs-task-arn", "ecs-task-id", "reject-reason", "resource-id",
    "encryption-status"}
_VPC_REQUIRED = ("srcaddr", "dstaddr", "action")


class IngestError(ValueError):
    def __init__(self, line_no: int, message: str) -> None:
        self.line_no = line_no
        super().__init__(f"line {line_no}: {message}")


def _endpoint(raw: Any, ip: str, line_no: int, side: str, resolve: Resolver | None) -> Endpoint:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise IngestError(line_no, f"flow.{side} must be an object")
    known = resolve(ip) if resolve and ip else None
    workloads = raw.get("workloads") or []
    kind, name = "", ""
    if workloads and isinstance(workloads, list) and isinstance(workloads[0], dict):
        kind, name = str(workloads[0].get("kind", "")), str(workloads[0].get("name", ""))
    labels: dict[str, str] = {}
    for label in raw.get("labels") or []:
        key, _, value = str(label).partition("=")
        if key.startswith("k8s:"):
            labels[key[4:]] = value
    endpoint = Endpoint(ip=ip, namespace=str(raw.get("namespace", "")), pod_name=str(raw.get("pod_name", "")),
                        workload_kind=kind, workload_name=name, node_name=str(raw.get("node_name", "")),
                        labels=labels)
    if known is not None:
        # The cluster knows this IP: fill what the export left out (zone is never in Hubble's endpoint).
        for attr in ("namespace", "pod_name", "workload_kind", "workload_name", "node_name", "zone"):
            if not getattr(endpoint, attr):
                setattr(endpoint, attr, getattr(known, attr))
    return endpoint


def _port(value: Any, line_no: int, what: str) -> int:
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 65535:
        raise IngestError(line_no, f"{what} must be an integer 0-65535, got {value!r}")
    return value


def hubble_flow(obj: Any, line_no: int = 1, resolve: Resolver | None = None) -> Flow:
    """One `hubble observe -o json` object ({"flow": {...}} or a bare flow) as a Flow."""
    if not isinstance(obj, dict):
        raise IngestError(line_no, "expected a JSON object")
    flow = obj.get("flow", obj)
    if not isinstance(flow, dict):
        raise IngestError(line_no, "\"flow\" must be an object")
    verdict = flow.get("verdict")
    if verdict not in VERDICTS:
        raise IngestError(line_no, f"flow.verdict must be one of {', '.join(VERDICTS)}, got {verdict!r}")
    when = flow.get("time") or obj.get("time")
    if not isinstance(when, str):
        raise IngestError(line_no, "flow.time is required (RFC 3339)")
    try:
        seconds = parse_time(when)
    except ValueError:
        raise IngestError(line_no, f"flow.time {when!r} is not RFC 3339") from None
    ip = flow.get("IP") or {}
    if not isinstance(ip, dict):
        raise IngestError(line_no, "flow.IP must be an object")
    l4 = flow.get("l4") or {}
    if not isinstance(l4, dict):
        raise IngestError(line_no, "flow.l4 must be an object")
    protocol, sport, dport = "", 0, 0
    for key in ("TCP", "UDP", "SCTP", "ICMPv4", "ICMPv6"):
        if key in l4:
            protocol = key
            body = l4[key] if isinstance(l4[key], dict) else {}
            sport = _port(body.get("source_port"), line_no, f"flow.l4.{key}.source_port")
            dport = _port(body.get("destination_port"), line_no, f"flow.l4.{key}.destination_port")
            break
    direction = flow.get("traffic_direction", "TRAFFIC_DIRECTION_UNKNOWN")
    if direction not in DIRECTIONS:
        raise IngestError(line_no, f"flow.traffic_direction must be one of {', '.join(DIRECTIONS)}")
    l7 = flow.get("l7") or {}
    dns = l7.get("dns") if isinstance(l7, dict) else None
    query, rcode = "", None
    if isinstance(dns, dict):
        query = str(dns.get("query", ""))
        if l7.get("type") == "RESPONSE" or "rcode" in dns:
            rcode = int(dns.get("rcode", 0))

    def service(raw: Any) -> str:
        return f"{raw.get('namespace', '')}/{raw.get('name', '')}" if isinstance(raw, dict) and raw.get("name") else ""

    node = str(flow.get("node_name") or obj.get("node_name") or "")
    src = _endpoint(flow.get("source"), str(ip.get("source", "")), line_no, "source", resolve)
    dst = _endpoint(flow.get("destination"), str(ip.get("destination", "")), line_no, "destination", resolve)
    return Flow(time=seconds, verdict=verdict, source=src, destination=dst, protocol=protocol or "UNKNOWN",
                source_port=sport, destination_port=dport, traffic_direction=direction,
                drop_reason_desc=str(flow.get("drop_reason_desc", "")) if verdict == DROPPED else "",
                node_name=node, source_service=service(flow.get("source_service")),
                destination_service=service(flow.get("destination_service")),
                bytes=int(flow.get("bytes", 0) or 0), packets=int(flow.get("packets", 1) or 1),
                dns_query=query, dns_rcode=rcode, is_reply=bool(flow.get("is_reply", False)))


def parse_hubble_lines(lines: Iterable[str | bytes], resolve: Resolver | None = None) -> list[Flow]:
    flows: list[Flow] = []
    for line_no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise IngestError(line_no, f"invalid JSON: {exc}") from None
        flows.append(hubble_flow(obj, line_no, resolve))
    return flows


def _vpc_int(record: dict[str, str], name: str, line_no: int) -> int:
    value = record.get(name, "-")
    if value == "-":
        return 0
    try:
        number = int(value)
    except ValueError:
        raise IngestError(line_no, f"field {name} must be an integer, got {value!r}") from None
    if number < 0:
        raise IngestError(line_no, f"field {name} must not be negative, got {value!r}")
    return number


def parse_vpc_lines(lines: Iterable[str], resolve: Resolver | None = None) -> list[Flow]:
    """VPC flow log records; a first line starting with "version" or naming known fields is the header."""
    fields: tuple[str, ...] = VPC_DEFAULT_FIELDS
    flows: list[Flow] = []
    for line_no, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        if line_no == 1 and all(part in VPC_KNOWN_FIELDS for part in parts):
            fields = tuple(parts)
            missing = [name for name in _VPC_REQUIRED if name not in fields]
            if missing:
                raise IngestError(line_no, f"header lacks required field(s) {', '.join(missing)}")
            continue
        if line_no == 1 and not parts[0].isdigit() and parts[0] != "-":
            unknown = [part for part in parts if part not in VPC_KNOWN_FIELDS]
            raise IngestError(line_no, f"unknown flow log field(s) in header: {', '.join(unknown)}")
        if len(parts) != len(fields):
            raise IngestError(line_no, f"expected {len(fields)} space-separated fields, got {len(parts)}")
        record = dict(zip(fields, parts, strict=True))
        if record.get("log-status", "OK") in ("NODATA", "SKIPDATA"):
            continue
        action = record["action"]
        if action not in ("ACCEPT", "REJECT"):
            raise IngestError(line_no, f"action must be ACCEPT or REJECT, got {action!r}")
        proto_number = _vpc_int(record, "protocol", line_no)
        direction = {"ingress": INGRESS, "egress": EGRESS}.get(record.get("flow-direction", "-"),
                                                                "TRAFFIC_DIRECTION_UNKNOWN")
        src_ip, dst_ip = record["srcaddr"], record["dstaddr"]
        src = (resolve(src_ip) if resolve else None) or Endpoint(ip=src_ip)
        dst = (resolve(dst_ip) if resolve else None) or Endpoint(ip=dst_ip)
        src, dst = _copy(src, src_ip), _copy(dst, dst_ip)
        az = record.get("az-id", "-")
        if az != "-":
            # az-id is the interface's zone: the sender's on egress records, the receiver's on ingress ones.
            side = dst if direction == INGRESS else src
            side.zone = side.zone or az
        flows.append(Flow(time=float(_vpc_int(record, "start", line_no)),
                          verdict=FORWARDED if action == "ACCEPT" else DROPPED, source=src, destination=dst,
                          protocol=IANA_PROTOCOLS.get(proto_number, str(proto_number)),
                          source_port=_vpc_int(record, "srcport", line_no),
                          destination_port=_vpc_int(record, "dstport", line_no), traffic_direction=direction,
                          drop_reason_desc=POLICY_DENIED if action == "REJECT" else "",
                          node_name="" if record.get("instance-id", "-") == "-" else record["instance-id"],
                          bytes=_vpc_int(record, "bytes", line_no), packets=_vpc_int(record, "packets", line_no)))
    return flows


def _copy(endpoint: Endpoint, ip: str) -> Endpoint:
    return Endpoint(ip=ip, namespace=endpoint.namespace, pod_name=endpoint.pod_name,
                    workload_kind=endpoint.workload_kind, workload_name=endpoint.workload_name,
                    node_name=endpoint.node_name, zone=endpoint.zone, labels=dict(endpoint.labels))
