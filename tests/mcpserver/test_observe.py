"""The observability tools through the SDK client: service map, flows and top flows from a live
`ultraplane netobs` server fed known Hubble flows, `diagnose` citing those flows, and upgrade insights
computed on the live cluster."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.apiserver.conftest import Cluster
from tests.harness import child_env, free_port, ultraplane_command, wait_for
from tests.mcpserver.conftest import NS, Peer, stdio_peer


def hubble(source_pod: str, **flow: Any) -> dict[str, Any]:
    """A flow as `hubble observe -o json` prints it, from `source_pod` in NS, timed now."""
    return {"flow": {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "verdict": "FORWARDED",
                     "source": {"namespace": NS, "pod_name": source_pod}, "traffic_direction": "EGRESS",
                     "node_name": "node-1", **flow}}


def nxdomain(source_pod: str, name: str) -> dict[str, Any]:
    return hubble(source_pod, IP={"source": "10.0.1.5", "destination": "10.96.0.10"},
                  l4={"UDP": {"source_port": 41000, "destination_port": 53}},
                  destination={"namespace": "kube-system", "pod_name": "coredns-1"}, Type="L7", is_reply=True,
                  l7={"type": "RESPONSE", "dns": {"query": f"{name}.", "rcode": 3, "qtypes": ["A"]}})


def no_endpoints(source_pod: str, service: str) -> dict[str, Any]:
    return hubble(source_pod, verdict="DROPPED", drop_reason_desc="NO_SERVICE",
                  IP={"source": "10.0.1.6", "destination": "10.96.7.7"},
                  l4={"TCP": {"source_port": 50000, "destination_port": 80}},
                  destination={"namespace": NS}, destination_service={"name": service, "namespace": NS})


def between_ips(source_ip: str, destination_ip: str, sent: int) -> dict[str, Any]:
    """A flow between two pods given only by IP (as a node-level export has it): netobs fills pod and zone."""
    return {"flow": {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "verdict": "FORWARDED",
                     "IP": {"source": source_ip, "destination": destination_ip},
                     "l4": {"TCP": {"source_port": 40000, "destination_port": 8080}}, "bytes": sent,
                     "traffic_direction": "EGRESS"}}


@pytest.fixture(scope="module")
def netobs_url(cluster: Cluster, audit_dir: Path) -> Iterator[str]:
    """A netobs server on the test cluster without its generator: the flows are exactly the ones posted."""
    port = free_port()
    log = open(audit_dir / "netobs.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([*ultraplane_command(), "netobs", "--kubeconfig", str(cluster.kubeconfig),
                             "--listen", f"127.0.0.1:{port}", "--interval", "0"],
                            env=child_env(), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        assert proc.poll() is None, (audit_dir / "netobs.log").read_text()
        try:
            return httpx2.get(f"{url}/api/v1/flows", timeout=1.0).status_code == 200
        except httpx2.TransportError:
            return False

    try:
        wait_for(answers, "the netobs server", 60)
        yield url
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()


@pytest.fixture(scope="module")
def pods(cluster: Cluster) -> dict[str, Any]:
    """The pods the flows come from: resolver (a DNS failure), guarded (healthy), and a pod with an IP on
    the other node (in another zone) that guarded sends to."""
    listed = cluster.json("get", "pods", "-n", NS)["items"]
    guarded = next(p for p in listed if p["metadata"]["name"].startswith("guarded-"))
    other = next(p for p in listed if (p.get("status") or {}).get("podIP") and
                 p["spec"].get("nodeName") not in (None, guarded["spec"]["nodeName"]))
    return {"resolver": "resolver", "guarded": guarded["metadata"]["name"], "guarded_ip": guarded["status"]["podIP"],
            "other": other["metadata"]["name"], "other_ip": other["status"]["podIP"]}


@pytest.fixture(scope="module")
def observed(netobs_url: str, pods: dict[str, Any], cluster: Cluster, audit_dir: Path) -> Iterator[Peer]:
    lines = [nxdomain(pods["resolver"], "db.prod.svc.cluster.local"),
             no_endpoints(pods["guarded"], "checkout"), no_endpoints(pods["guarded"], "checkout"),
             between_ips(pods["guarded_ip"], pods["other_ip"], 5000)]
    # netobs reads the cluster (pod IPs, nodes' zones) when it generates or proposes policies; without its
    # generator, asking for proposals makes it read the cluster so that posted flows given by IP resolve
    assert httpx2.get(f"{netobs_url}/api/v1/policies", timeout=30).status_code == 200
    answer = httpx2.post(f"{netobs_url}/api/v1/flows?format=hubble",
                         content="\n".join(json.dumps(line) for line in lines), timeout=10)
    assert answer.json() == {"ingested": 4}
    peer = stdio_peer(cluster, audit_dir / "observe.jsonl", "--netobs", netobs_url)
    yield peer
    peer.close()


def test_flows_and_service_map(observed: Peer, pods: dict[str, Any]) -> None:
    dropped = observed.json("flows", namespace=NS, verdict="DROPPED")["flows"]
    assert len(dropped) == 2
    assert {f["destination_service"]["name"] for f in dropped} == {"checkout"}
    assert all(f["drop_reason_desc"] == "NO_SERVICE" and f["source"]["pod_name"] == pods["guarded"]
               for f in dropped)
    dns = observed.json("flows", pod=pods["resolver"])["flows"]
    assert [f["l7"]["dns"] for f in dns] == [{"query": "db.prod.svc.cluster.local.", "rcode": 3}]
    graph = observed.json("service_map")
    edges = json.dumps(graph)
    assert "checkout" in edges and "NO_SERVICE" in edges
    top = observed.json("top_flows", by="cross_az_bytes", limit=5)
    assert [(c["source"]["pod_name"], c["destination"]["pod_name"], c["cross_az_bytes"])
            for c in top["connections"]] == [(pods["guarded"], pods["other"], 5000)]
    assert top["connections"][0]["cross_az_cost_usd"] > 0
    assert observed.json("top_flows", by="retransmits")["connections"] == []


def test_diagnose_cites_flows(observed: Peer, pods: dict[str, Any]) -> None:
    # resolver: the log rule names the DNS failure; its NXDOMAIN flow is cited next to the log line
    verdict = observed.json("diagnose", kind="pod", name=pods["resolver"], namespace=NS)
    assert verdict["runbook"] == "dns-failures"
    assert any("NXDOMAIN" in line and "db.prod.svc.cluster.local" in line for line in verdict["evidenceCited"])
    assert verdict["evidence"]["flows"]
    # guarded is healthy by its status; only its flows show calls dropped for want of endpoints
    verdict = observed.json("diagnose", kind="pod", name=pods["guarded"], namespace=NS)
    assert verdict["runbook"] == "dns-failures"
    assert "default/checkout" in verdict["likelyCause"] and "no ready endpoints" in verdict["likelyCause"]
    assert sum("NO_SERVICE" in line for line in verdict["evidenceCited"]) == 2


def test_flow_tools_need_netobs(stdio: Peer) -> None:
    assert "--netobs" in stdio.error("flows")
    assert "--netobs" in stdio.error("service_map")


def test_upgrade_insights_computed_on_the_cluster(observed: Peer, cluster: Cluster) -> None:
    plan = observed.json("upgrade_insights")
    assert plan["source"] == "computed from the cluster now"
    assert plan["hops"] and {i["name"] for i in plan["hops"][0]["insights"]}
    # the PodDisruptionBudget "guarded" allows no disruption: the drain check names it
    pdb = [i for i in plan["hops"][0]["insights"] if i["id"].startswith("pdb-blocks-drain")]
    assert pdb and pdb[0]["status"] != "PASSING" and "guarded" in json.dumps(pdb[0])
    assert "Kubernetes does not downgrade" in observed.error("upgrade_insights", target="1.1")
