"""Ingestion of Hubble JSON and VPC flow logs, the talks-to grammar, and NetworkPolicy semantics."""

from __future__ import annotations

import json

import pytest

from ultraplane.netobs.cluster import ClusterSnapshot, PodInfo
from ultraplane.netobs.flow import DROPPED, FORWARDED, Endpoint, Flow
from ultraplane.netobs.generator import FlowGenerator, parse_talks_to
from ultraplane.netobs.ingest import IngestError, parse_hubble_lines, parse_vpc_lines
from ultraplane.netobs.policy import PolicyEvaluator, selector_matches
from ultraplane.netobs.store import FlowStore, merge_edges, service_map, shard_of

# Shaped as `hubble observe -o json` prints flows (proto field names; zero values omitted).
HUBBLE_FORWARDED = {"flow": {
    "time": "2026-12-04T10:00:01.123456789Z", "uuid": "2b1f0c3e-0c1a-4d2e-9b7a-1f2e3d4c5b6a",
    "verdict": "FORWARDED", "IP": {"source": "10.0.1.5", "destination": "10.0.2.7", "ipVersion": "IPv4"},
    "l4": {"TCP": {"source_port": 43210, "destination_port": 8080, "flags": {"SYN": True}}},
    "source": {"ID": 1234, "identity": 5678, "namespace": "shop", "pod_name": "web-7d9f-abcde",
               "labels": ["k8s:app=web", "k8s:io.kubernetes.pod.namespace=shop"],
               "workloads": [{"name": "web", "kind": "Deployment"}]},
    "destination": {"ID": 99, "identity": 4321, "namespace": "shop", "pod_name": "api-5c8b-fghij",
                    "labels": ["k8s:app=api"], "workloads": [{"name": "api", "kind": "Deployment"}]},
    "Type": "L3_L4", "node_name": "ip-10-0-1-10", "event_type": {"type": 4},
    "traffic_direction": "EGRESS", "trace_observation_point": "TO_STACK",
    "destination_service": {"name": "api", "namespace": "shop"}, "Summary": "TCP Flags: SYN"},
    "node_name": "ip-10-0-1-10", "time": "2026-12-04T10:00:01.123456789Z"}
HUBBLE_DROPPED = {"flow": {
    "time": "2026-12-04T10:00:02Z", "verdict": "DROPPED", "drop_reason": 133, "drop_reason_desc": "POLICY_DENIED",
    "IP": {"source": "10.0.3.9", "destination": "10.0.2.7"},
    "l4": {"TCP": {"source_port": 50000, "destination_port": 5432}},
    "source": {"namespace": "other", "pod_name": "batch-1"}, "destination": {"namespace": "shop", "pod_name": "db-0"},
    "traffic_direction": "INGRESS", "node_name": "ip-10-0-2-10"}}
HUBBLE_DNS = {"flow": {
    "time": "2026-12-04T10:00:03Z", "verdict": "FORWARDED", "IP": {"source": "10.0.1.5", "destination": "10.96.0.10"},
    "l4": {"UDP": {"source_port": 41000, "destination_port": 53}},
    "source": {"namespace": "shop", "pod_name": "web-7d9f-abcde"}, "destination": {"namespace": "kube-system"},
    "Type": "L7", "l7": {"type": "RESPONSE", "latency_ns": "120000",
                         "dns": {"query": "ghost.shop.svc.cluster.local.", "rcode": 3, "qtypes": ["A"]}},
    "traffic_direction": "EGRESS", "is_reply": True}}


def lines(*objs: dict) -> list[str]:
    return [json.dumps(o) for o in objs]


def test_hubble_export_maps_onto_the_schema() -> None:
    resolve = {"10.0.2.7": Endpoint(ip="10.0.2.7", namespace="shop", pod_name="api-5c8b-fghij", zone="us-east-1b",
                                    node_name="ip-10-0-2-10")}.get
    forwarded, dropped, dns = parse_hubble_lines(lines(HUBBLE_FORWARDED, HUBBLE_DROPPED, HUBBLE_DNS), resolve)
    assert (forwarded.verdict, forwarded.protocol, forwarded.source_port, forwarded.destination_port) == (
        FORWARDED, "TCP", 43210, 8080)
    assert forwarded.source.workload_id == "shop/Deployment/web" and forwarded.source.labels["app"] == "web"
    assert forwarded.destination.zone == "us-east-1b", "the zone comes from the cluster, Hubble has none"
    assert forwarded.destination_service == "shop/api" and forwarded.traffic_direction == "EGRESS"
    assert forwarded.time == pytest.approx(1796378401.123456)
    assert forwarded.to_dict()["l4"] == {"TCP": {"source_port": 43210, "destination_port": 8080}}
    assert (dropped.verdict, dropped.drop_reason_desc, dropped.traffic_direction) == (DROPPED, "POLICY_DENIED",
                                                                                      "INGRESS")
    assert (dns.dns_query, dns.dns_rcode, dns.protocol, dns.is_reply) == ("ghost.shop.svc.cluster.local.", 3,
                                                                          "UDP", True)


@pytest.mark.parametrize(("bad", "message"), [
    ("{not json", "line 2: invalid JSON"),
    (json.dumps({"flow": {**HUBBLE_FORWARDED["flow"], "verdict": "MAYBE"}}), "line 2: flow.verdict must be one of"),
    (json.dumps({"flow": {"verdict": "FORWARDED"}}), "line 2: flow.time is required"),
    (json.dumps({"flow": {**HUBBLE_FORWARDED["flow"], "time": "yesterday"}}), "line 2: flow.time 'yesterday'"),
    (json.dumps({"flow": {**HUBBLE_FORWARDED["flow"], "l4": {"TCP": {"destination_port": 70000}}}}),
     "line 2: flow.l4.TCP.destination_port must be an integer 0-65535"),
    (json.dumps([1, 2]), "line 2: expected a JSON object"),
])
def test_malformed_hubble_lines_name_the_line(bad: str, message: str) -> None:
    with pytest.raises(IngestError) as err:
        parse_hubble_lines([json.dumps(HUBBLE_FORWARDED), bad])
    assert str(err.value).startswith(message)
    assert err.value.line_no == 2


def test_vpc_flow_logs_default_and_custom_formats() -> None:
    default = ["2 123456789010 eni-1235b8ca123456789 172.31.16.139 172.31.16.21 20641 22 6 20 4249 1418530010 "
               "1418530070 ACCEPT OK",
               "2 123456789010 eni-1235b8ca123456789 172.31.9.69 172.31.9.12 49761 3389 6 20 4249 1418530010 "
               "1418530070 REJECT OK",
               "2 123456789010 eni-1235b8ca123456789 - - - - - - - 1431280876 1431280934 - NODATA"]
    accept, reject = parse_vpc_lines(default)
    assert (accept.source.ip, accept.destination.ip, accept.destination_port, accept.protocol) == (
        "172.31.16.139", "172.31.16.21", 22, "TCP")
    assert (accept.packets, accept.bytes, accept.time, accept.verdict) == (20, 4249, 1418530010.0, FORWARDED)
    assert (reject.verdict, reject.drop_reason_desc) == (DROPPED, "POLICY_DENIED")
    custom = ["version vpc-id subnet-id instance-id interface-id srcaddr dstaddr srcport dstport protocol bytes "
              "packets start end action log-status az-id flow-direction",
              "5 vpc-0a1b subnet-9 i-01234 eni-5 10.0.1.5 10.0.2.7 43210 8080 6 5000 10 1700000000 1700000060 "
              "ACCEPT OK use1-az1 egress"]
    known = {"10.0.2.7": Endpoint(ip="10.0.2.7", namespace="shop", pod_name="api-1", zone="us-east-1b")}.get
    (flow,) = parse_vpc_lines(custom, known)
    assert (flow.bytes, flow.packets, flow.node_name, flow.traffic_direction) == (5000, 10, "i-01234", "EGRESS")
    assert flow.source.zone == "use1-az1" and flow.destination.pod_name == "api-1" and flow.cross_zone


@pytest.mark.parametrize(("text", "message"), [
    (["2 123 eni-1 10.0.0.1 10.0.0.2 1 2 6 1 1 1 2 ACCEPT"], "line 1: expected 14 space-separated fields, got 13"),
    (["2 123 eni-1 10.0.0.1 10.0.0.2 x 2 6 1 1 1 2 ACCEPT OK"], "line 1: field srcport must be an integer"),
    (["2 123 eni-1 10.0.0.1 10.0.0.2 1 2 6 1 1 1 2 ALLOW OK"], "line 1: action must be ACCEPT or REJECT"),
    (["version srcaddr dstaddr bogus-field action"], "line 1: unknown flow log field(s) in header: bogus-field"),
    (["version srcaddr bytes"], "line 1: header lacks required field(s) dstaddr, action"),
])
def test_malformed_vpc_lines(text: list[str], message: str) -> None:
    with pytest.raises(IngestError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        parse_vpc_lines(text)


def test_talks_to_grammar() -> None:
    deps = parse_talks_to("api:80@10rps, db.data:5432/TCP@0.5rps,stats:8125/UDP@2rps", "shop")
    assert [(d.service, d.namespace, d.port, d.protocol, d.rate) for d in deps] == [
        ("api", "shop", 80, "TCP", 10.0), ("db", "data", 5432, "TCP", 0.5), ("stats", "shop", 8125, "UDP", 2.0)]
    for bad in ("api@10rps", "api:80", "API:80@1rps", "api:99999@1rps", "api:80/ICMP@1rps"):
        with pytest.raises(ValueError, match="is not SERVICE"):
            parse_talks_to(bad, "shop")


def pod(ns: str, name: str, ip: str, labels: dict[str, str], ports: dict[str, tuple[int, str]] | None = None) -> PodInfo:
    return PodInfo(ns, name, ip, "n1", "z1", labels, {}, "", "", ports or {}, False)


def test_network_policy_semantics() -> None:
    pods = [pod("a", "web", "10.0.0.1", {"app": "web"}), pod("a", "api", "10.0.0.2", {"app": "api"},
                                                                  {"http": (8080, "TCP")}),
            pod("b", "job", "10.0.0.3", {"app": "web"}), pod("a", "db", "10.0.0.4", {"app": "db", "tier": "data"})]
    snap = ClusterSnapshot(pods=pods, pods_by_ip={p.ip: p for p in pods},
                           namespace_labels={"a": {"kubernetes.io/metadata.name": "a"},
                                             "b": {"kubernetes.io/metadata.name": "b", "team": "x"}})

    def conn(src: str, dst: str, port: int, proto: str = "TCP") -> Flow:
        s, d = snap.pods_by_ip[src].endpoint(), snap.pods_by_ip[dst].endpoint()
        return Flow(time=0, verdict=FORWARDED, source=s, destination=d, protocol=proto, destination_port=port)

    def np(ns: str, spec: dict) -> dict:
        return {"metadata": {"name": "p", "namespace": ns}, "spec": spec}

    # podSelector-only peers mean the policy's own namespace; a named port resolves on the destination pod
    same_ns = np("a", {"podSelector": {"matchLabels": {"app": "api"}},
                       "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                                    "ports": [{"port": "http"}]}]})
    ev = PolicyEvaluator([same_ns], snap)
    assert ev.allows(conn("10.0.0.1", "10.0.0.2", 8080))
    assert not ev.allows(conn("10.0.0.3", "10.0.0.2", 8080)), "same labels, other namespace"
    assert not ev.allows(conn("10.0.0.1", "10.0.0.2", 8081))
    assert not ev.allows(conn("10.0.0.1", "10.0.0.2", 8080, "UDP"))
    assert ev.allows(conn("10.0.0.1", "10.0.0.4", 5432)), "db is selected by no policy"
    # namespaceSelector alone: every pod of matching namespaces; with podSelector: both must hold
    ns_only = np("a", {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "x"}}}]}]})
    assert PolicyEvaluator([ns_only], snap).allows(conn("10.0.0.3", "10.0.0.4", 1))
    assert not PolicyEvaluator([ns_only], snap).allows(conn("10.0.0.1", "10.0.0.4", 1)), "default deny once selected"
    both = np("a", {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {
        "matchExpressions": [{"key": "app", "operator": "In", "values": ["api"]}]}}]}]})
    assert PolicyEvaluator([both], snap).allows(conn("10.0.0.2", "10.0.0.4", 1))
    assert not PolicyEvaluator([both], snap).allows(conn("10.0.0.3", "10.0.0.4", 1))
    # port ranges; an empty rule admits everything; ipBlock with except
    ranged = np("a", {"podSelector": {"matchLabels": {"tier": "data"}},
                      "ingress": [{"ports": [{"protocol": "TCP", "port": 5000, "endPort": 5500}]}]})
    assert PolicyEvaluator([ranged], snap).allows(conn("10.0.0.3", "10.0.0.4", 5432))
    assert not PolicyEvaluator([ranged], snap).allows(conn("10.0.0.3", "10.0.0.4", 5501))
    blocks = np("a", {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/24",
                                                                             "except": ["10.0.0.3/32"]}}]}]})
    assert PolicyEvaluator([blocks], snap).allows(conn("10.0.0.1", "10.0.0.4", 1))
    assert not PolicyEvaluator([blocks], snap).allows(conn("10.0.0.3", "10.0.0.4", 1))
    # Egress isolation: policyTypes default adds Egress when egress rules exist
    egress = np("a", {"podSelector": {"matchLabels": {"app": "web"}},
                      "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "api"}}}]}]})
    assert PolicyEvaluator([egress], snap).allows(conn("10.0.0.1", "10.0.0.2", 8080))
    assert not PolicyEvaluator([egress], snap).allows(conn("10.0.0.1", "10.0.0.4", 5432))
    assert selector_matches({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}, {"app": "x"})
    assert not selector_matches({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["data"]}]},
                                {"tier": "data"})


def test_windows_and_changes_split_at_the_boundary() -> None:
    def flow(t: float, dst: str, verdict: str = FORWARDED) -> Flow:
        return Flow(time=t, verdict=verdict, source=Endpoint(namespace="a", pod_name="w", workload_kind="Deployment",
                                                              workload_name="web"),
                    destination=Endpoint(namespace="a", pod_name=dst), destination_port=80, bytes=10, packets=1)

    store = FlowStore()
    store.add_many([flow(99.5, "x"), flow(99.9, "y"), flow(100.0, "x", DROPPED), flow(100.2, "z"), flow(101, "x",
                                                                                                         DROPPED)])
    changes = store.changes(100.0, 10.0)
    assert [e["destination"] for e in changes["broken_edges"]] == ["a/Pod/x"]
    assert [e["destination"] for e in changes["new_edges"]] == ["a/Pod/z"]
    assert [e["destination"] for e in changes["gone_edges"]] == ["a/Pod/y"]
    assert store.service_map(100, 101)["edges"][0]["flows"] == 1
    assert sum(e["flows"] for e in store.service_map()["edges"]) == 5


def test_shards_by_source_node_merge_to_the_single_store_map() -> None:
    def flow(i: int) -> Flow:
        src = Endpoint(namespace="a", pod_name=f"w-{i % 7}", workload_kind="Deployment", workload_name="web",
                       node_name=f"node-{i % 5}")
        return Flow(time=float(i), verdict=DROPPED if i % 9 == 0 else FORWARDED, source=src,
                    destination=Endpoint(namespace="a", pod_name=f"api-{i % 3}"), destination_service="a/api",
                    destination_port=8080, bytes=100, packets=2, tcp_retransmits=i % 4 == 0)

    flows = [flow(i) for i in range(300)]
    whole = FlowStore()
    whole.add_many(flows)
    shards = [FlowStore() for _ in range(3)]
    for f in flows:
        shards[shard_of(f, 3)].add_many([f])
    assert all(s.ingested for s in shards), "five nodes spread over three shards"
    assert {shard_of(f, 3) for f in flows if f.source.node_name == "node-1"} == {shard_of(flows[1], 3)}
    assert service_map(merge_edges(s.edges for s in shards)) == whole.service_map()


def test_generator_reports_malformed_declarations_and_keeps_going() -> None:
    good = pod("a", "web", "10.0.0.1", {"app": "web"})
    good.annotations["netobs.ultraplane.io/talks-to"] = "missing:80@1rps"
    bad = pod("a", "bad", "10.0.0.2", {"app": "bad"})
    bad.annotations["netobs.ultraplane.io/talks-to"] = "api:80@fast"
    snap = ClusterSnapshot(pods=[good, bad], pods_by_ip={p.ip: p for p in (good, bad)})
    generator = FlowGenerator(seed=1)
    flows = generator.generate(snap, 0.0, 1.0)
    assert [(f.source.pod_name, f.dns_query, f.dns_rcode) for f in flows] == [
        ("web", "missing.a.svc.cluster.local.", 3)]
    assert generator.problems == ["a/bad: netobs.ultraplane.io/talks-to: entry 'api:80@fast' is not "
                                  "SERVICE[.NAMESPACE]:PORT[/PROTOCOL]@RATErps"]


def test_timeouts_and_carried_fractions_are_exact() -> None:
    client = pod("a", "web", "10.0.0.1", {"app": "web"})
    client.annotations["netobs.ultraplane.io/talks-to"] = "api:80@4rps"
    server = pod("a", "api", "10.0.0.2", {"app": "api"})
    server.annotations["netobs.ultraplane.io/timeout-percent"] = "25"
    snap = ClusterSnapshot(
        pods=[client, server], pods_by_ip={p.ip: p for p in (client, server)},
        services={("a", "api"): {"spec": {"clusterIP": "10.96.0.50",
                                          "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}},
        slices={("a", "api"): [{"ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                                "endpoints": [{"addresses": ["10.0.0.2"], "conditions": {"ready": True}}]}]})
    generator = FlowGenerator(seed=2)
    # 4 rps in 0.3 s windows: 1.2 requests each; over 10 windows exactly 12 requests and 3 timeouts
    flows = [f for w in range(10) for f in generator.generate(snap, w * 0.3, 0.3) if not f.dns_query]
    assert len(flows) == 12
    timeouts = [f for f in flows if f.timed_out]
    assert len(timeouts) == 3 and {(f.tcp_retransmits, f.packets, f.verdict) for f in timeouts} == {(6, 7, FORWARDED)}
    store = FlowStore()
    store.add_many(flows)
    (edge,) = [e for e in store.service_map()["edges"] if e["destination"] == "a/Service/api"]
    assert (edge["forwarded"], edge["timeouts"], edge["retransmits"], edge["ports"]) == (9, 3, 18, [8080])
    assert store.pods.forward[("a", "api", "", "", "ingress")][0] == 9 * 10, "a timed-out SYN never arrived"
