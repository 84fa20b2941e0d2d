"""Default topology spreading through `ultraplane up`: Deployments made with kubectl and pods selected
by a Service land as kube-scheduler's default profile places them.

The three nodes are large and identical, so one more request-less pod does not change their resource
scores: without PodTopologySpread's system defaults the replicas would land at random.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest
from kubernetes import client, config

from tests.apiserver.conftest import Cluster, inprocess_cluster
from tests.harness import wait_for
from tests.scheduler.test_cluster import make_node

ZONE = "topology.kubernetes.io/zone"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with inprocess_cluster("ultraplane-spread-") as c:
        yield c


@pytest.fixture(scope="module")
def core(cluster: Cluster) -> client.CoreV1Api:
    api = client.CoreV1Api(config.new_client_from_config(str(cluster.kubeconfig)))
    for i, zone in enumerate(("z1", "z2", "z3")):
        make_node(api, f"big-{i}", cpu="96", memory="384Gi", labels={ZONE: zone})
    return api


def placements(core: client.CoreV1Api, ns: str, selector: str, count: int) -> Counter[str]:
    def bound() -> Counter[str] | None:
        pods = core.list_namespaced_pod(ns, label_selector=selector).items
        nodes = [p.spec.node_name for p in pods if p.spec.node_name and not p.metadata.deletion_timestamp]
        return Counter(nodes) if len(nodes) == count and len(pods) == count else None

    return wait_for(bound, f"{count} pods of {selector} bound", timeout=60)


def test_deployment_replicas_spread_over_identical_nodes(cluster: Cluster, core: client.CoreV1Api) -> None:
    cluster.ok("create", "namespace", "spread")
    cluster.ok("create", "deployment", "web", "--image=nginx", "--replicas=3", "-n", "spread")
    assert placements(core, "spread", "app=web", 3) == {"big-0": 1, "big-1": 1, "big-2": 1}
    cluster.ok("create", "deployment", "api", "--image=nginx", "--replicas=6", "-n", "spread")
    assert placements(core, "spread", "app=api", 6) == {"big-0": 2, "big-1": 2, "big-2": 2}
    cluster.ok("scale", "deployment", "web", "--replicas=9", "-n", "spread")
    assert placements(core, "spread", "app=web", 9) == {"big-0": 3, "big-1": 3, "big-2": 3}


def test_pods_selected_by_a_service_spread(cluster: Cluster, core: client.CoreV1Api) -> None:
    cluster.ok("create", "namespace", "svc")
    cluster.ok("create", "service", "clusterip", "cache", "--tcp=6379:6379", "-n", "svc")  # selects app=cache
    for i in range(3):
        cluster.ok("run", f"cache-{i}", "--image=redis", "--labels=app=cache", "-n", "svc")
        placements(core, "svc", "app=cache", i + 1)
    assert placements(core, "svc", "app=cache", 3) == {"big-0": 1, "big-1": 1, "big-2": 1}
