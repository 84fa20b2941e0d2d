"""Flows generated from the shop's declarations, checked against what kubectl says about the cluster."""

from __future__ import annotations

import time
from collections import Counter

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.apiserver.conftest import Cluster
from tests.netobs.conftest import NS, OTHER, run_with_client, running_pods
from ultraplane.netobs.cluster import ClusterSnapshot, read_cluster
from ultraplane.netobs.flow import DROPPED, FORWARDED, NXDOMAIN
from ultraplane.netobs.generator import FlowGenerator
from ultraplane.netobs.metrics import registry_for
from ultraplane.netobs.store import GB, FlowStore

WINDOW = 10.0


def snapshot(c: Cluster) -> ClusterSnapshot:
    return run_with_client(c, read_cluster)


def zones_of_pods(c: Cluster) -> dict[str, str]:
    node_zone = {n["metadata"]["name"]: n["metadata"]["labels"]["topology.kubernetes.io/zone"]
                 for n in c.json("get", "nodes")["items"]}
    return {p["metadata"]["name"]: node_zone[p["spec"]["nodeName"]]
            for ns in (NS, OTHER) for p in c.json("get", "pods", "-n", ns)["items"] if p["spec"].get("nodeName")}


def test_flows_follow_declarations_with_exact_fault_counts(shop: Cluster) -> None:
    snap = snapshot(shop)
    start = time.time()
    flows = FlowGenerator(seed=7).generate(snap, start, WINDOW)
    web = running_pods(shop, NS, "web")[0]
    api_ips = {p["status"]["podIP"]: p["metadata"]["name"] for p in running_pods(shop, NS, "api")}
    db = running_pods(shop, NS, "db")[0]
    zones = zones_of_pods(shop)

    from_web = [f for f in flows if f.source.pod_name == web["metadata"]["name"]]
    to_api = [f for f in from_web if f.destination_service == f"{NS}/api"]
    # 10 rps for 10 s, round-robin over the two endpoints, all to the named port's number (8080)
    assert len(to_api) == 100 and all(f.verdict == FORWARDED for f in to_api)
    assert Counter(f.destination.ip for f in to_api) == {ip: 50 for ip in api_ips}
    assert {f.destination.pod_name for f in to_api} == set(api_ips.values())
    assert {f.destination_port for f in to_api} == {8080}
    for f in to_api:
        assert f.source.ip == web["status"]["podIP"] and f.source.node_name == web["spec"]["nodeName"]
        assert f.source.zone == zones[f.source.pod_name] and f.destination.zone == zones[f.destination.pod_name]
        assert (f.source.workload_kind, f.source.workload_name) == ("Deployment", "web")
        assert f.traffic_direction == "EGRESS" and 32768 <= f.source_port <= 60999
    # db carries drop 20% and retransmit 10%: of 50 requests exactly 10 dropped (at db, ingress) and 5 retransmitted
    to_db = [f for f in from_web if f.destination_service == f"{NS}/db"]
    assert len(to_db) == 50
    dropped = [f for f in to_db if f.verdict == DROPPED]
    assert len(dropped) == 10 and {(f.drop_reason_desc, f.traffic_direction) for f in dropped} == {
        ("POLICY_DENIED", "INGRESS")}
    assert {f.node_name for f in dropped} == {db["spec"]["nodeName"]}
    assert sum(f.tcp_retransmits for f in to_db) == 5
    # DNS: one lookup per dependency and window; the missing Service answers NXDOMAIN and gets no connection
    dns = [f for f in from_web if f.dns_query]
    assert sorted((f.dns_query, f.dns_rcode) for f in dns) == [
        (f"api.{NS}.svc.cluster.local.", 0), (f"db.{NS}.svc.cluster.local.", 0),
        (f"ghost.{NS}.svc.cluster.local.", NXDOMAIN)]
    assert not [f for f in from_web if f.destination_service == f"{NS}/ghost"]
    # the cross-namespace client resolves api.shop
    batch = [f for f in flows if f.source.namespace == OTHER and not f.dns_query]
    assert len(batch) == 20 and {f.destination_service for f in batch} == {f"{NS}/api"}
    # deterministic for a seed; another seed picks other ports
    again = FlowGenerator(seed=7).generate(snap, start, WINDOW)
    assert [f.to_dict() for f in again] == [f.to_dict() for f in flows]
    other = FlowGenerator(seed=8).generate(snap, start, WINDOW)
    assert [f.source_port for f in other] != [f.source_port for f in flows]


def _samples(store: FlowStore) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = generate_latest(registry_for(store)).decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_metrics_service_map_and_cross_az_table(shop: Cluster) -> None:
    snap = snapshot(shop)
    store = FlowStore()
    store.add_many(FlowGenerator(seed=1).generate(snap, time.time(), WINDOW))
    web = running_pods(shop, NS, "web")[0]["metadata"]["name"]
    db = running_pods(shop, NS, "db")[0]["metadata"]["name"]
    samples = _samples(store)

    def value(name: str, **labels: str) -> float:
        return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls)

    web_labels = {"namespace": NS, "podname": web, "workload_kind": "Deployment", "workload_name": "web"}
    # web's egress: 100 api requests + 40 delivered db requests of 10 packets, 5 with one extra packet, 3 DNS x 2
    assert value("networkobservability_forward_count", direction="egress", **web_labels) == 100 * 10 + 40 * 10 + 5 + 6
    # db drops: web's 10 and api's 2 x 10 (each api pod 50 requests, 20%) -> 30 packets at db, reason POLICY_DENIED
    assert value("networkobservability_drop_count", podname=db, direction="ingress", reason="POLICY_DENIED") == 30
    assert value("networkobservability_drop_bytes", podname=db, reason="POLICY_DENIED") == 30 * 60
    assert value("networkobservability_tcp_retransmission_count", **web_labels) == 5
    assert value("networkobservability_tcp_retransmission_count", workload_name="api") == 10
    assert value("networkobservability_dns_request_count", **web_labels) == 3
    assert value("networkobservability_dns_response_count", return_code="NXDOMAIN", **web_labels) == 1
    assert value("networkobservability_dns_response_count", return_code="NOERROR", **web_labels) == 2

    smap = store.service_map()
    edges = {(e["source"], e["destination"], e["port"]): e for e in smap["edges"]}
    web_api = edges[(f"{NS}/Deployment/web", f"{NS}/Service/api", 0)]
    assert (web_api["flows"], web_api["forwarded"], web_api["dropped"], web_api["ports"]) == (100, 100, 0, [8080])
    web_db = edges[(f"{NS}/Deployment/web", f"{NS}/Service/db", 0)]
    assert (web_db["dropped"], web_db["retransmits"], web_db["drop_reasons"]) == (10, 5, {"POLICY_DENIED": 10})
    assert edges[(f"{NS}/Deployment/web", f"dns:ghost.{NS}.svc.cluster.local.", 53)]["dns_errors"] == 1
    assert {"id": f"{OTHER}/Deployment/batch", "kind": "Deployment", "namespace": OTHER, "name": "batch"} in smap["nodes"]

    # cross-AZ: computed here from kubectl's pod -> node -> zone, against the table's ranking
    zones = zones_of_pods(shop)
    expected = {}
    for pod in running_pods(shop, NS, "api"):
        name = pod["metadata"]["name"]
        if zones[name] != zones[web]:
            expected[(web, name)] = 50 * 2000
    rows = store.top_connections("cross_az_bytes", limit=100)
    got = {(r["source"]["pod_name"], r["destination"]["pod_name"]): r for r in rows
           if r["source"]["pod_name"] == web and r["destination"]["workload"] == f"{NS}/Deployment/api"}
    assert {k: r["cross_az_bytes"] for k, r in got.items()} == expected
    for key, row in got.items():
        assert row["cross_az_cost_usd"] == round(expected[key] / GB * 0.02, 9)
    assert [r["cross_az_bytes"] for r in rows] == sorted((r["cross_az_bytes"] for r in rows), reverse=True)
    by_retransmits = store.top_connections("retransmits")
    assert by_retransmits[0]["retransmits"] >= by_retransmits[-1]["retransmits"] > 0
    assert {r["destination"]["pod_name"] for r in by_retransmits} == {db}
    assert sum(r["retransmits"] for r in by_retransmits) == 15
