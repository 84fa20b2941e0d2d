"""The endpoints and EndpointSlice controllers of `ultraplane controllers` (run by `ultraplane up`):
Endpoints and slices follow the pods' readiness, as the tests (playing the kubelet) patch pod status."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import client

from tests.apiserver.conftest import Cluster
from tests.controllers.managed import eventually, managed_cluster, python_client

NS = "ep"
MANAGED = "endpointslice.kubernetes.io/managed-by=endpointslice-controller.k8s.io"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    for c in managed_cluster():
        c.ok("create", "namespace", NS)
        yield c


@pytest.fixture(scope="module")
def api(cluster: Cluster) -> client.ApiClient:
    return python_client(cluster)


def make_pod(core: client.CoreV1Api, name: str, app: str, ip: str, ready: bool, node: str = "") -> None:
    spec: dict = {"containers": [{"name": "c", "image": "nginx",
                                  "ports": [{"name": "http", "containerPort": 8080}]}]}
    if node:
        spec["nodeName"] = node
    core.create_namespaced_pod(NS, {"metadata": {"name": name, "labels": {"app": app}}, "spec": spec})
    set_status(core, name, ip, ready)


def set_status(core: client.CoreV1Api, name: str, ip: str, ready: bool) -> None:
    core.patch_namespaced_pod_status(name, NS, {"status": {
        "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}})


def make_service(core: client.CoreV1Api, name: str, app: str) -> client.V1Service:
    return core.create_namespaced_service(NS, {"metadata": {"name": name, "labels": {"tier": "web"}}, "spec": {
        "selector": {"app": app}, "ports": [{"name": "web", "port": 80, "targetPort": "http"},
                                            {"name": "metrics", "port": 9090, "targetPort": 9090}]}})


def slices(discovery: client.DiscoveryV1Api, service: str) -> list[client.V1EndpointSlice]:
    return discovery.list_namespaced_endpoint_slice(
        NS, label_selector=f"kubernetes.io/service-name={service}").items


def test_endpoints_follow_pod_readiness(cluster: Cluster, api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    make_service(core, "web", "web")
    make_pod(core, "web-a", "web", "10.1.0.1", ready=True, node="node-a")
    make_pod(core, "web-b", "web", "10.1.0.2", ready=False)
    make_pod(core, "other", "other", "10.1.0.9", ready=True)

    def subsets() -> list:
        ep = cluster.json("get", "endpoints", "web", "-n", NS)
        return ep.get("subsets") or []

    def settled(want_ready: list[str], want_not: list[str]) -> list:
        got = subsets()
        assert len(got) == 1, got
        assert [a["ip"] for a in got[0].get("addresses") or []] == want_ready, got
        assert [a["ip"] for a in got[0].get("notReadyAddresses") or []] == want_not, got
        return got

    got = eventually(lambda: settled(["10.1.0.1"], ["10.1.0.2"]))
    assert sorted(got[0]["ports"], key=lambda p: p["port"]) == [
        {"name": "web", "port": 8080, "protocol": "TCP"}, {"name": "metrics", "port": 9090, "protocol": "TCP"}]
    address = got[0]["addresses"][0]
    assert address["nodeName"] == "node-a"
    assert address["targetRef"]["kind"] == "Pod" and address["targetRef"]["name"] == "web-a"
    assert cluster.json("get", "endpoints", "web", "-n", NS)["metadata"]["labels"] == {"tier": "web"}

    set_status(core, "web-b", "10.1.0.2", ready=True)
    eventually(lambda: settled(["10.1.0.1", "10.1.0.2"], []))
    set_status(core, "web-a", "10.1.0.1", ready=False)
    eventually(lambda: settled(["10.1.0.2"], ["10.1.0.1"]))
    assert "10.1.0.2" in cluster.ok("get", "endpoints", "web", "-n", NS)

    core.delete_namespaced_pod("web-b", NS)  # unscheduled: gone at once
    eventually(lambda: settled([], ["10.1.0.1"]))
    core.delete_namespaced_service("web", NS)
    eventually(lambda: cluster.kubectl("get", "endpoints", "web", "-n", NS).returncode != 0)


def test_endpointslices_follow_pod_readiness(cluster: Cluster, api: client.ApiClient) -> None:
    core, discovery = client.CoreV1Api(api), client.DiscoveryV1Api(api)
    service = make_service(core, "shop", "shop")
    make_pod(core, "shop-a", "shop", "10.2.0.1", ready=True, node="node-a")
    make_pod(core, "shop-b", "shop", "10.2.0.2", ready=False)

    def conditions() -> dict[str, tuple[bool, bool, bool]]:
        found = slices(discovery, "shop")
        assert len(found) == 1, found
        return {e.addresses[0]: (e.conditions.ready, e.conditions.serving, e.conditions.terminating)
                for e in found[0].endpoints or []}

    eventually(lambda: conditions() == {"10.2.0.1": (True, True, False), "10.2.0.2": (False, False, False)})
    eps = slices(discovery, "shop")[0]
    assert eps.metadata.name.startswith("shop-")
    assert eps.metadata.labels == {"tier": "web", "kubernetes.io/service-name": "shop",
                                   "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}
    owner = eps.metadata.owner_references[0]
    assert (owner.kind, owner.name, owner.uid, owner.controller, owner.block_owner_deletion) == \
        ("Service", "shop", service.metadata.uid, True, True)
    assert eps.address_type == "IPv4"
    assert sorted((p.name, p.port, p.protocol) for p in eps.ports) == [("metrics", 9090, "TCP"), ("web", 8080, "TCP")]
    assert {e.target_ref.name: e.node_name for e in eps.endpoints} == {"shop-a": "node-a", "shop-b": None}

    set_status(core, "shop-b", "10.2.0.2", ready=True)
    eventually(lambda: conditions() == {"10.2.0.1": (True, True, False), "10.2.0.2": (True, True, False)})
    # a bound pod being deleted stays listed (graceful deletion waits for a kubelet) as terminating
    core.delete_namespaced_pod("shop-a", NS)
    eventually(lambda: conditions() == {"10.2.0.1": (False, True, True), "10.2.0.2": (True, True, False)})
    assert "shop-" in cluster.ok("get", "endpointslices", "-n", NS, "-l", MANAGED)

    # the garbage collector removes the slices with their service
    core.delete_namespaced_service("shop", NS)
    eventually(lambda: not slices(discovery, "shop"))


def test_endpointslices_hold_at_most_100_endpoints(cluster: Cluster, api: client.ApiClient) -> None:
    core, discovery = client.CoreV1Api(api), client.DiscoveryV1Api(api)
    make_service(core, "big", "big")
    eventually(lambda: len(found := slices(discovery, "big")) == 1 and not found[0].endpoints)  # placeholder
    for i in range(101):
        make_pod(core, f"big-{i}", "big", f"10.3.{i // 250}.{i % 250 + 1}", ready=True)

    def sizes() -> list[int]:
        return sorted(len(s.endpoints or []) for s in slices(discovery, "big"))

    eventually(lambda: sizes() == [1, 100])
    all_ips = {e.addresses[0] for s in slices(discovery, "big") for e in s.endpoints}
    assert len(all_ips) == 101
