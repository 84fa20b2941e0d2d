"""Node lifecycle (run by `ultraplane up` with a 3 s --node-monitor-grace-period) and pod GC (in-process with
a short quarantine): the tests play the kubelets by writing Node, Lease and pod status objects."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator

import pytest
from kubernetes import client

from tests.apiserver.conftest import Cluster
from tests.controllers.managed import eventually, managed_cluster, python_client
from tests.controllers.workloads import Running
from ultraplane.controllers.podgc import PodGC

NS = "nlc"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    for c in managed_cluster("--node-monitor-grace-period", "3s"):
        c.ok("create", "namespace", NS)
        yield c


@pytest.fixture(scope="module")
def core(cluster: Cluster) -> client.CoreV1Api:
    return client.CoreV1Api(python_client(cluster))


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse(stamp: str | dt.datetime) -> float:
    if isinstance(stamp, dt.datetime):
        return stamp.timestamp()
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def register(cluster: Cluster, core: client.CoreV1Api, name: str) -> None:
    """What a kubelet does at start: the Node, Ready, and its Lease."""
    core.create_node({"metadata": {"name": name}})
    core.patch_node_status(name, {"status": {"conditions": [
        {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status",
         "lastHeartbeatTime": now()[:19] + "Z", "lastTransitionTime": now()[:19] + "Z"}]}})
    renew(cluster, name)


def renew(cluster: Cluster, name: str) -> None:
    coordination = client.CoordinationV1Api(python_client(cluster))
    body = {"metadata": {"name": name, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now()}}
    try:
        lease = coordination.read_namespaced_lease(name, "kube-node-lease")
        lease.spec.renew_time = dt.datetime.now(dt.UTC)
        coordination.replace_namespaced_lease(name, "kube-node-lease", lease)
    except client.ApiException as exc:
        if exc.status != 404:
            raise
        coordination.create_namespaced_lease("kube-node-lease", body)


def bound_pod(core: client.CoreV1Api, name: str, node: str, tolerations: list[dict]) -> None:
    core.create_namespaced_pod(NS, {"metadata": {"name": name}, "spec": {
        "nodeName": node, "tolerations": tolerations, "containers": [{"name": "c", "image": "busybox"}]}})
    core.patch_namespaced_pod_status(name, NS, {"status": {"phase": "Running", "conditions": [
        {"type": "Ready", "status": "True"}]}})


UNREACHABLE = "node.kubernetes.io/unreachable"


def test_silent_node_goes_not_ready_gets_tainted_and_its_pods_evicted(cluster: Cluster,
                                                                      core: client.CoreV1Api) -> None:
    register(cluster, core, "silent")
    register(cluster, core, "alive")
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(1.0):
            renew(cluster, "alive")
    beating = threading.Thread(target=heartbeat, daemon=True)
    beating.start()
    try:
        bound_pod(core, "defaulted", "silent", [])  # DefaultTolerationSeconds gives it 300 s
        bound_pod(core, "patient", "silent", [{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute",
                                               "tolerationSeconds": 3}])
        bound_pod(core, "forever", "silent", [{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute"}])
        bound_pod(core, "elsewhere", "alive", [])

        def not_ready() -> client.V1Node:
            node = core.read_node("silent")
            ready = next(c for c in node.status.conditions if c.type == "Ready")
            assert ready.status == "Unknown", ready
            assert node.spec and node.spec.taints and len(node.spec.taints) == 2, node.spec
            return node
        node = eventually(not_ready, timeout=30)
        ready = next(c for c in node.status.conditions if c.type == "Ready")
        assert (ready.reason, ready.message) == ("NodeStatusUnknown", "Kubelet stopped posting node status.")
        assert sorted((t.key, t.effect) for t in node.spec.taints) == [(UNREACHABLE, "NoExecute"),
                                                                       (UNREACHABLE, "NoSchedule")]
        added = next(t.time_added for t in node.spec.taints if t.effect == "NoExecute")
        assert "NotReady" in cluster.ok("get", "node", "silent")

        def evicted(name: str) -> client.V1Pod:
            pod = core.read_namespaced_pod(name, NS)
            assert pod.metadata.deletion_timestamp is not None, name
            return pod
        patient = eventually(lambda: evicted("patient"))
        target = next(c for c in patient.status.conditions if c.type == "DisruptionTarget")
        assert (target.reason, target.message) == ("DeletionByTaintManager",
                                                   "Taint manager: deleting due to NoExecute taint")
        assert parse(target.last_transition_time) - parse(added) >= 3  # tolerationSeconds honoured
        ready_cond = next(c for c in patient.status.conditions if c.type == "Ready")
        assert ready_cond.status == "False"

        def event(namespace: str, reason: str, name: str) -> client.CoreV1Event:
            found = [e for e in core.list_namespaced_event(namespace).items
                     if e.reason == reason and e.involved_object.name == name]
            assert found, reason
            return found[0]
        not_ready_event = eventually(lambda: event("default", "NodeNotReady", "silent"))
        assert not_ready_event.message == "Node silent status is now: NodeNotReady"
        assert not_ready_event.source.component == "node-controller"
        eviction = eventually(lambda: event(NS, "TaintManagerEviction", "patient"))
        assert eviction.message == f"Marking for deletion Pod {NS}/patient"
        assert eviction.source.component == "taint-eviction-controller"

        time.sleep(1)
        assert core.read_namespaced_pod("forever", NS).metadata.deletion_timestamp is None
        assert core.read_namespaced_pod("defaulted", NS).metadata.deletion_timestamp is None
        assert core.read_namespaced_pod("elsewhere", NS).metadata.deletion_timestamp is None
        alive = core.read_node("alive")
        assert next(c for c in alive.status.conditions if c.type == "Ready").status == "True"
        assert not (alive.spec and alive.spec.taints)
    finally:
        stop.set()
        beating.join(5)


def test_pod_gc_terminated_threshold_and_vanished_nodes(cluster: Cluster, core: client.CoreV1Api) -> None:
    for i in range(4):
        core.create_namespaced_pod(NS, {"metadata": {"name": f"done-{i}"}, "spec": {
            "containers": [{"name": "c", "image": "busybox"}]}})
        core.patch_namespaced_pod_status(f"done-{i}", NS, {"status": {"phase": "Succeeded"}})
    bound_pod(core, "stranded", "vanished-node", [])

    def factory(c: object, informers: object) -> PodGC:
        return PodGC(c, informers, threshold=2, period=0.3, quarantine=1.0)  # type: ignore[arg-type]

    def names() -> set[str]:
        return {p.metadata.name for p in core.list_namespaced_pod(NS).items}
    with Running(cluster, [factory]):  # type: ignore[list-item]
        eventually(lambda: "done-0" not in names() and "done-1" not in names() and "stranded" not in names())
    assert {"done-2", "done-3"} <= names()
