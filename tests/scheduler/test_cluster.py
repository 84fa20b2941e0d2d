"""The scheduler started by `ultraplane up`, driven through kubectl and the official Python client.

The test creates Node objects itself (capacity, labels, taints) and checks where pods are bound,
the Scheduled / FailedScheduling events and the PodScheduled condition.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, config

from tests.apiserver.conftest import Cluster, inprocess_cluster
from tests.harness import wait_for

WAIT_S = 30.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with inprocess_cluster("ultraplane-sched-") as c:
        yield c


@pytest.fixture(scope="module")
def core(cluster: Cluster) -> client.CoreV1Api:
    return client.CoreV1Api(config.new_client_from_config(str(cluster.kubeconfig)))


def make_node(core: client.CoreV1Api, name: str, cpu: str = "4", memory: str = "16Gi", gpus: int = 0,
              labels: dict[str, str] | None = None, taints: list[dict[str, str]] | None = None) -> None:
    capacity = {"cpu": cpu, "memory": memory, "pods": "110"}
    if gpus:
        capacity["nvidia.com/gpu"] = str(gpus)
    body: dict[str, Any] = {"apiVersion": "v1", "kind": "Node",
                            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
                            "spec": {"taints": taints or []}}
    core.create_node(body)
    core.patch_node_status(name, {"status": {"capacity": capacity, "allocatable": capacity}})


def make_pod(core: client.CoreV1Api, ns: str, name: str, requests: dict[str, str] | None = None,
             labels: dict[str, str] | None = None, **spec: Any) -> None:
    container: dict[str, Any] = {"name": "app", "image": "nginx"}
    if requests:
        container["resources"] = {"requests": requests, "limits": requests}
    core.create_namespaced_pod(ns, {"apiVersion": "v1", "kind": "Pod",
                                    "metadata": {"name": name, "labels": labels or {}},
                                    "spec": {"containers": [container], **spec}})



def bound_node(core: client.CoreV1Api, ns: str, name: str) -> str:
    return wait_for(lambda: core.read_namespaced_pod(name, ns).spec.node_name, f"{ns}/{name} to be bound")


@pytest.fixture(scope="module")
def nodes(core: client.CoreV1Api) -> list[str]:
    make_node(core, "cpu-a", labels={"topology.kubernetes.io/zone": "z1", "disk": "ssd"})
    make_node(core, "cpu-b", labels={"topology.kubernetes.io/zone": "z2"})
    make_node(core, "gpu-1", cpu="96", memory="768Gi", gpus=8, labels={"topology.kubernetes.io/zone": "z1"},
              taints=[{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}])
    return ["cpu-a", "cpu-b", "gpu-1"]


def test_pod_is_bound_with_scheduled_event(cluster: Cluster, core: client.CoreV1Api, nodes: list[str]) -> None:
    cluster.ok("create", "namespace", "s1")
    make_pod(core, "s1", "web", {"cpu": "500m", "memory": "1Gi"})
    node = bound_node(core, "s1", "web")
    assert node in ("cpu-a", "cpu-b")  # the GPU node's taint is not tolerated
    events = wait_for(lambda: [e for e in core.list_namespaced_event("s1").items if e.reason == "Scheduled"],
                      "Scheduled event")
    assert events[0].message == f"Successfully assigned s1/web to {node}"
    assert events[0].involved_object.name == "web" and events[0].type == "Normal"
    described = cluster.ok("describe", "pod", "web", "-n", "s1")
    assert "Scheduled" in described and "default-scheduler" in described


def test_node_selector_and_gpu_requests(cluster: Cluster, core: client.CoreV1Api, nodes: list[str]) -> None:
    cluster.ok("create", "namespace", "s2")
    make_pod(core, "s2", "ssd", {"cpu": "100m"}, nodeSelector={"disk": "ssd"})
    make_pod(core, "s2", "train", {"cpu": "8", "nvidia.com/gpu": "4"},
             tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])
    assert bound_node(core, "s2", "ssd") == "cpu-a"
    assert bound_node(core, "s2", "train") == "gpu-1"


def test_unschedulable_pod_gets_event_and_condition(cluster: Cluster, core: client.CoreV1Api,
                                                    nodes: list[str]) -> None:
    cluster.ok("create", "namespace", "s3")
    make_pod(core, "s3", "huge", {"cpu": "64"})

    def condition() -> Any:
        conds = core.read_namespaced_pod("huge", "s3").status.conditions or []
        return next((c for c in conds if c.type == "PodScheduled"), None)

    cond = wait_for(condition, "PodScheduled condition")
    expected = ("0/3 nodes are available: 1 node(s) had untolerated taint {nvidia.com/gpu: present}, "
                "2 Insufficient cpu. preemption: 0/3 nodes are available: 1 Preemption is not helpful for "
                "scheduling, 2 No preemption victims found for incoming pod.")
    assert (cond.status, cond.reason, cond.message) == ("False", "Unschedulable", expected)
    failed = wait_for(lambda: [e for e in core.list_namespaced_event("s3").items if e.reason == "FailedScheduling"],
                      "FailedScheduling event")
    assert failed[0].type == "Warning" and failed[0].message == expected
    assert core.read_namespaced_pod("huge", "s3").spec.node_name is None
    # A new node that fits is a cluster event: the parked pod is retried and bound.
    make_node(core, "big", cpu="128", memory="512Gi", labels={"topology.kubernetes.io/zone": "z3"})
    assert bound_node(core, "s3", "huge") == "big"


def test_required_anti_affinity_spreads_replicas(cluster: Cluster, core: client.CoreV1Api,
                                                 nodes: list[str]) -> None:
    cluster.ok("create", "namespace", "s4")
    anti = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "topology.kubernetes.io/zone"}]}}
    for i in range(4):
        make_pod(core, "s4", f"db-{i}", {"cpu": "100m"}, labels={"app": "db"}, affinity=anti,
                 tolerations=[{"operator": "Exists"}])
    placed = {}
    for i in range(4):
        name = f"db-{i}"
        placed[name] = wait_for(lambda n=name: core.read_namespaced_pod(n, "s4").spec.node_name
                                or ((core.read_namespaced_pod(n, "s4").status.conditions or [None])[0]), name)
    zones = {"cpu-a": "z1", "gpu-1": "z1", "cpu-b": "z2", "big": "z3"}
    bound = {n: v for n, v in placed.items() if isinstance(v, str)}
    assert len(bound) == 3 and {zones[v] for v in bound.values()} == {"z1", "z2", "z3"}
    (pending,) = set(placed) - set(bound)
    pod = core.read_namespaced_pod(pending, "s4")
    assert "didn't match pod anti-affinity rules" in pod.status.conditions[0].message


def test_kubectl_sees_bound_pods(cluster: Cluster, nodes: list[str]) -> None:
    out = cluster.ok("get", "pods", "-n", "s2", "-o", "wide")
    assert "gpu-1" in out and "cpu-a" in out
