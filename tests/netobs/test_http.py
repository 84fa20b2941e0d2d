"""`ultraplane netobs` as a process against the shop cluster: its generator, JSON API and /metrics."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.error
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.apiserver.conftest import Cluster
from tests.harness import free_port, ultraplane_command, wait_for
from tests.netobs.conftest import NS, running_pods
from tests.netobs.test_units import HUBBLE_FORWARDED

CHROMIUM = "/usr/bin/chromium"


def call(base: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(base + path, data=body, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            raw, status, kind = resp.read(), resp.status, resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as err:
        raw, status, kind = err.read(), err.code, err.headers.get("Content-Type", "")
    return status, json.loads(raw) if "json" in kind else raw.decode()


def forward_packets(base: str, pod: str) -> float:
    status, text = call(base, "/metrics")
    assert status == 200
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
               if s.name == "networkobservability_forward_count" and s.labels.get("podname") == pod
               and s.labels.get("direction") == "egress")


def test_netobs_server_generates_serves_and_ingests(shop: Cluster) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    shop.spawn([*ultraplane_command(), "netobs", "--kubeconfig", str(shop.kubeconfig), "--listen",
                f"127.0.0.1:{port}", "--interval", "0.5", "--seed", "4"], "netobs")
    proc = shop.procs[-1]
    try:
        web = running_pods(shop, NS, "web")[0]
        api = running_pods(shop, NS, "api")[0]
        wait_for(lambda: _up(base) and forward_packets(base, web["metadata"]["name"]) > 0,
                 "generated flows in /metrics", 60)

        status, smap = call(base, "/api/v1/servicemap")
        assert status == 200
        edges = {(e["source"], e["destination"]) for e in smap["edges"]}
        assert {(f"{NS}/Deployment/web", f"{NS}/Service/api"), (f"{NS}/Deployment/api", f"{NS}/Service/db")} <= edges
        # db's 10% retransmits: one per 10 requests to it, carried across the 0.5 s windows
        top = wait_for(lambda: call(base, "/api/v1/flows/top?by=retransmits&limit=3")[1]["connections"] and
                       call(base, "/api/v1/flows/top?by=retransmits&limit=3")[1], "retransmits to db", 30)
        assert 0 < len(top["connections"]) <= 3
        assert all(r["destination"]["workload"] == f"{NS}/Deployment/db" for r in top["connections"])
        assert top["cross_az"]["price"] == "$0.01/GB in each direction"
        assert call(base, "/api/v1/flows/top?by=bytes")[0] == 400
        assert call(base, "/api/v1/servicemap?since=yesterday") == (
            400, {"error": "query parameter since must be a number, got 'yesterday'"})

        # a Hubble export line between two real pods: the cluster fills in what Hubble lacks (zones)
        line = json.loads(json.dumps(HUBBLE_FORWARDED))
        line["flow"]["IP"] = {"source": web["status"]["podIP"], "destination": api["status"]["podIP"]}
        line["flow"]["source"]["pod_name"] = web["metadata"]["name"]
        line["flow"]["destination"]["pod_name"] = api["metadata"]["name"]
        line["flow"]["l4"]["TCP"]["source_port"] = 1111  # the generator's ports are all >= 32768
        assert call(base, "/api/v1/flows?format=hubble", json.dumps(line).encode()) == (200, {"ingested": 1})
        status, found = call(base, f"/api/v1/flows?pod={api['metadata']['name']}&limit=100000")
        mine = [f for f in found["flows"] if f["l4"].get("TCP", {}).get("source_port") == 1111]
        assert len(mine) == 1 and mine[0]["destination"]["zone"].startswith("us-")
        assert mine[0]["time"] == "2026-12-04T10:00:01.123456Z"
        status, err = call(base, "/api/v1/flows?format=hubble", (json.dumps(line) + "\n{oops").encode())
        assert status == 400 and err["error"].startswith("line 2: invalid JSON")
        vpc = f"2 1 eni-1 {web['status']['podIP']} 10.99.0.1 40000 443 6 3 300 1700000000 1700000060 REJECT OK"
        assert call(base, "/api/v1/flows?format=vpc", vpc.encode()) == (200, {"ingested": 1})
        assert call(base, "/api/v1/flows?format=pcap", b"x")[0] == 400

        status, proposals = call(base, "/api/v1/policies")
        assert status == 200
        assert {p["metadata"]["name"] for p in proposals["items"]} >= {"netobs-allow-api", "netobs-allow-db"}
        status, changes = call(base, f"/api/v1/servicemap/rollout?namespace={NS}&deployment=api&window=30")
        assert status == 200 and set(changes) >= {"new_edges", "broken_edges", "gone_edges", "replicaset"}
        assert call(base, f"/api/v1/servicemap/rollout?namespace={NS}&deployment=nope")[0] == 404
        assert call(base, "/api/v1/servicemap/rollout")[0] == 400
        # the page in a real browser: its script draws the map's edges from the JSON API
        dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                              "--dump-dom", base + "/"], capture_output=True, text=True, timeout=60).stdout
        rows = re.findall(r"<tr[^>]*>(.*?)</tr>", dom.split('id="edges"', 1)[1])
        assert any(f"<td>{NS}/Deployment/web</td><td>{NS}/Service/api</td><td>8080</td>" in row for row in rows)
        assert proc.poll() is None, "bad requests must not stop the server"
    finally:
        proc.terminate()
        proc.wait(15)


def _up(base: str) -> bool:
    try:
        return call(base, "/api/v1/crossaz")[0] == 200
    except OSError:
        return False
