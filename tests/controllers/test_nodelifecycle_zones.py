"""Zone-aware eviction rate limiting of the node lifecycle controller, against simulated nodes.

`ultraplane up` (API server only) with `ultraplane nodes` (8 nodes over 2 zones, lease renewals every
0.5 s) and `ultraplane controllers --controllers node-lifecycle-controller` as separate processes, with a
2 s grace period, a 0.5 s monitor period and --node-eviction-rate 0.4 (one NoExecute taint per zone every
2.5 s). Nodes die through the simulator's kill endpoint, as `ultraplane nodes --kill` does.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import ssl
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from tests.apiserver.conftest import Cluster, start_cluster
from tests.controllers.managed import eventually, python_client
from tests.harness import ultraplane_command

NS = "zones"
UNREACHABLE = "node.kubernetes.io/unreachable"
ZONE = "topology.kubernetes.io/zone"
RATE = 0.4  # nodes per second per zone: 2.5 s between taints


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = start_cluster("inprocess", "--no-scheduler", "--no-controllers")
    try:
        kubeconfig = str(c.kubeconfig)
        c.spawn([*ultraplane_command(), "nodes", "--kubeconfig", kubeconfig, "--count", "8", "--zones", "2",
                 "--lease-renew-interval", "0.5", "--events", "false"], "nodes")
        eventually(lambda: len(ready_nodes(c)) == 8, timeout=60)
        c.spawn([*ultraplane_command(), "controllers", "--kubeconfig", kubeconfig, "--leader-elect", "false",
                 "--controllers", "node-lifecycle-controller", "--node-monitor-grace-period", "2s",
                 "--node-monitor-period", "500ms", "--node-eviction-rate", str(RATE)], "controllers")
        c.ok("create", "namespace", NS)
        yield c
    finally:
        c.stop()
        shutil.rmtree(c.work_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def core(cluster: Cluster) -> client.CoreV1Api:
    return client.CoreV1Api(python_client(cluster))


@pytest.fixture(scope="module")
def zones(core: client.CoreV1Api) -> dict[str, list[Any]]:
    by_zone: dict[str, list[Any]] = {}
    for node in core.list_node(label_selector="ultraplane.io/simulated=true").items:
        by_zone.setdefault(node.metadata.labels[ZONE], []).append(node)
    assert sorted(len(v) for v in by_zone.values()) == [4, 4], by_zone.keys()
    return by_zone


def ready_nodes(cluster: Cluster) -> list[str]:
    items = cluster.json("get", "nodes")["items"]
    return [n["metadata"]["name"] for n in items
            if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions") or [])]


def controller_log(cluster: Cluster) -> str:
    return (cluster.work_dir / "controllers.log").read_text(errors="replace")


def admin(cluster: Cluster, node: Any, action: str) -> None:
    """The simulator's kill / revive endpoint, over its kubelet endpoint with the admin certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(str(cluster.pki / "admin.crt"), str(cluster.pki / "admin.key"))
    host = node.metadata.annotations["ultraplane.io/kubelet-address"]
    port = node.status.daemon_endpoints.kubelet_endpoint.port
    request = urllib.request.Request(f"https://{host}:{port}/admin/nodes/{node.metadata.name}/{action}", method="POST")
    with urllib.request.urlopen(request, context=ctx, timeout=10) as response:
        assert json.loads(response.read())["alive"] is (action == "revive")


def pin_pod(core: client.CoreV1Api, name: str, node: str, toleration_seconds: int) -> None:
    core.create_namespaced_pod(NS, {"metadata": {"name": name}, "spec": {
        "nodeName": node, "containers": [{"name": "c", "image": "busybox"}],
        "tolerations": [{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute",
                         "tolerationSeconds": toleration_seconds}]}})


def no_execute(node: Any) -> Any:
    return next((t for t in (node.spec.taints or []) if t.effect == "NoExecute"), None)


def test_zone_outage_taints_its_nodes_one_by_one_at_the_eviction_rate(cluster: Cluster, core: client.CoreV1Api,
                                                                        zones: dict[str, list[Any]]) -> None:
    down_zone, up_zone = sorted(zones)
    victims = zones[down_zone]
    for node in victims:
        pin_pod(core, f"on-{node.metadata.name}", node.metadata.name, 0)  # evicted as soon as its node is tainted
    for node in victims:
        admin(cluster, node, "kill")
    seen: dict[str, float] = {}  # node -> when we first saw its NoExecute taint
    added: dict[str, dt.datetime] = {}
    deadline = time.monotonic() + 40
    while len(seen) < len(victims):
        assert time.monotonic() < deadline, f"tainted so far: {sorted(seen)}"
        for node in core.list_node(label_selector=f"{ZONE}={down_zone}").items:
            taint = no_execute(node)
            if taint is not None and node.metadata.name not in seen:
                assert taint.key == UNREACHABLE
                seen[node.metadata.name] = time.monotonic()
                added[node.metadata.name] = taint.time_added
        time.sleep(0.1)
    observed = sorted(seen.values())
    gaps = [b - a for a, b in zip(observed, observed[1:], strict=False)]
    assert all(gap > 1.0 for gap in gaps), gaps  # one at a time (our polling adds some jitter) ...
    stamps = sorted(added.values())  # ... 1 / RATE = 2.5 s apart by their timeAdded (whole seconds)
    assert all((b - a).total_seconds() >= 2 for a, b in zip(stamps, stamps[1:], strict=False)), stamps
    assert (stamps[-1] - stamps[0]).total_seconds() >= 7, stamps
    # the taint manager evicts each pod once its node has the taint, not before
    for node in victims:
        pod = eventually(lambda n=node: core.read_namespaced_pod(f"on-{n.metadata.name}", NS).metadata.deletion_timestamp
                         and core.read_namespaced_pod(f"on-{n.metadata.name}", NS))
        assert pod.metadata.deletion_timestamp >= added[node.metadata.name]
    # the other zone is untouched; the dead one is fully disrupted (kube's zone key: region, NUL, zone)
    assert all(no_execute(n) is None for n in core.list_node(label_selector=f"{ZONE}={up_zone}").items)
    region = victims[0].metadata.labels["topology.kubernetes.io/region"]
    assert (f"Controller detected that zone {region}:\\x00:{down_zone} is now in state FullDisruption."
            in controller_log(cluster))
    assert f"Controller detected that zone {region}:\\x00:{up_zone} is now in state Normal." in controller_log(cluster)


def test_every_zone_down_enters_master_disruption_mode_and_stops_evicting(
        cluster: Cluster, core: client.CoreV1Api, zones: dict[str, list[Any]]) -> None:
    down_zone, up_zone = sorted(zones)
    for node in zones[up_zone]:
        pin_pod(core, f"on-{node.metadata.name}", node.metadata.name, 3)
    for node in zones[up_zone]:
        admin(cluster, node, "kill")
    eventually(lambda: "Controller detected that all Nodes are not-Ready. Entering master disruption mode"
               in controller_log(cluster), timeout=20)
    # kube's markNodeAsReachable on every node: the NoExecute taints go (those of the first zone too) ...
    eventually(lambda: all(no_execute(n) is None for n in core.list_node().items))
    time.sleep(4)  # ... and no taint comes back, so the pods outlive their 3 s tolerations
    nodes = core.list_node().items
    assert all(no_execute(n) is None for n in nodes)
    for node in nodes:  # still NotReady, and still NoSchedule: only evictions stop
        assert next(c.status for c in node.status.conditions if c.type == "Ready") == "Unknown"
        assert [(t.key, t.effect) for t in node.spec.taints] == [(UNREACHABLE, "NoSchedule")]
    for node in zones[up_zone]:
        assert core.read_namespaced_pod(f"on-{node.metadata.name}", NS).metadata.deletion_timestamp is None


def test_a_node_coming_back_exits_master_disruption_mode_and_resumes_by_zone_state(cluster: Cluster, core: client.CoreV1Api,
                                                         zones: dict[str, list[Any]]) -> None:
    back = sorted(zones)[0]
    node = zones[back][0]
    admin(cluster, node, "revive")
    eventually(lambda: "Controller detected that some Nodes are Ready. Exiting master disruption mode"
               in controller_log(cluster), timeout=20)

    def healthy() -> bool:
        fresh = core.read_node(node.metadata.name)
        ready = next(c.status for c in fresh.status.conditions if c.type == "Ready")
        return ready == "True" and not fresh.spec.taints
    eventually(healthy)
    # the limiters are set anew: the fully disrupted zone is tainted again at the normal rate, while the
    # revived node's zone (3 of 4 not Ready: partially disrupted, and small) gets no NoExecute taint at all
    other = sorted(zones)[1]
    eventually(lambda: any(no_execute(n) for n in core.list_node(label_selector=f"{ZONE}={other}").items), timeout=15)
    time.sleep(3)
    assert all(no_execute(n) is None for n in core.list_node(label_selector=f"{ZONE}={back}").items)
