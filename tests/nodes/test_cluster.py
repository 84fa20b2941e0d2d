"""Simulated nodes inside a real `ultraplane up --node-type ...` (scheduler on), seen through kubectl and
the official Python client: registration, pod lifecycle, logs through the API server, jobs, graceful
deletion, and killing / reviving one node's kubelet.
"""

from __future__ import annotations

import ipaddress
import json
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, config, watch

from tests.apiserver.conftest import Cluster, inprocess_cluster
from tests.harness import child_env, ultraplane_command, wait_for

WAIT_S = 30.0
MIX = "p5.48xlarge=1,m5.large=1,m5.xlarge=1"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with inprocess_cluster("ultraplane-nodes-", "--nodes", "3", "--node-type", MIX) as c:
        yield c


@pytest.fixture(scope="module")
def core(cluster: Cluster) -> client.CoreV1Api:
    return client.CoreV1Api(config.new_client_from_config(str(cluster.kubeconfig)))



@pytest.fixture(scope="module")
def nodes(core: client.CoreV1Api) -> dict[str, Any]:
    def registered() -> list[Any]:
        items = core.list_node(label_selector="ultraplane.io/simulated=true").items
        return items if len(items) == 3 else []

    return {n.metadata.name: n for n in wait_for(registered, "3 simulated nodes", 60)}


def admin_nodes(cluster: Cluster, node: Any) -> dict[str, Any]:
    """The simulator's admin view (prefixes per node), over its kubelet endpoint with the admin cert."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(str(cluster.pki / "admin.crt"), str(cluster.pki / "admin.key"))
    host = node.metadata.annotations["ultraplane.io/kubelet-address"]
    port = node.status.daemon_endpoints.kubelet_endpoint.port
    with urllib.request.urlopen(f"https://{host}:{port}/admin/nodes", context=ctx, timeout=10) as response:
        return {n["name"]: n for n in json.loads(response.read())["items"]}


def make_pod(core: client.CoreV1Api, name: str, image: str = "nginx", restart: str = "Always",
             command: list[str] | None = None) -> None:
    container: dict[str, Any] = {"name": "app", "image": image}
    if command:
        container["command"] = command
    core.create_namespaced_pod("default", {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                                           "spec": {"containers": [container], "restartPolicy": restart}})


def phase(core: client.CoreV1Api, name: str, want: str) -> Any:
    pod = core.read_namespaced_pod(name, "default")
    return pod if pod.status.phase == want else None


def test_nodes_register_ready_with_capacity_and_labels(nodes: dict[str, Any], core: client.CoreV1Api) -> None:
    by_type = {n.metadata.labels["node.kubernetes.io/instance-type"]: n for n in nodes.values()}
    assert set(by_type) == {"p5.48xlarge", "m5.large", "m5.xlarge"}
    p5 = by_type["p5.48xlarge"]
    assert p5.status.capacity["nvidia.com/gpu"] == "8" and p5.status.capacity["cpu"] == "192"
    assert p5.status.capacity["pods"] == "100" and p5.status.allocatable["nvidia.com/gpu"] == "8"
    assert p5.status.capacity["memory"] == f"{2048 * 1024 * 1024}Ki"
    m5 = by_type["m5.large"]
    assert m5.status.capacity["pods"] == "29" and "nvidia.com/gpu" not in m5.status.capacity
    assert m5.status.allocatable["cpu"] == "1930m"
    zones = set()
    for name, node in nodes.items():
        labels = node.metadata.labels
        assert labels["kubernetes.io/hostname"] == name and labels["kubernetes.io/os"] == "linux"
        assert labels["kubernetes.io/arch"] == "amd64" and labels["topology.kubernetes.io/region"] == "us-east-1"
        zones.add(labels["topology.kubernetes.io/zone"])
        ready = next(c for c in node.status.conditions if c.type == "Ready")
        assert (ready.status, ready.reason) == ("True", "KubeletReady")
        assert node.status.node_info.kubelet_version == "v1.32.0"
        assert node.status.daemon_endpoints.kubelet_endpoint.port > 0
        internal = next(a.address for a in node.status.addresses if a.type == "InternalIP")
        assert name == f"ip-{internal.replace('.', '-')}.ec2.internal"
        lease = client.CoordinationV1Api(core.api_client).read_namespaced_lease(name, "kube-node-lease")
        assert lease.spec.holder_identity == name and lease.spec.lease_duration_seconds == 40
        assert lease.metadata.owner_references[0].kind == "Node"
    assert zones == {"us-east-1a", "us-east-1b", "us-east-1c"}


def test_kubectl_sees_ready_nodes(cluster: Cluster, nodes: dict[str, Any]) -> None:
    out = cluster.ok("get", "nodes", "-L", "node.kubernetes.io/instance-type", "--no-headers")
    lines = [line.split() for line in out.strip().splitlines()]
    assert {line[0] for line in lines} == set(nodes) and all(line[1] == "Ready" for line in lines)


def test_pod_goes_container_creating_then_running_with_an_ip_from_the_node_prefix(
        cluster: Cluster, core: client.CoreV1Api, nodes: dict[str, Any]) -> None:
    seen: list[tuple[str, str]] = []  # (phase, first container's waiting reason or state)
    w = watch.Watch()
    make_pod(core, "web", image="python:3.12")  # a 390 MB image: the pull takes a moment
    pod = None
    for event in w.stream(core.list_namespaced_pod, "default", field_selector="metadata.name=web",
                          timeout_seconds=int(WAIT_S)):
        pod = event["object"]
        statuses = pod.status.container_statuses or []
        state = ""
        if statuses:
            state = statuses[0].state.waiting.reason if statuses[0].state.waiting else \
                "running" if statuses[0].state.running else "other"
        seen.append((pod.status.phase, state))
        if pod.status.phase == "Running" and statuses and statuses[0].ready:
            w.stop()
    assert ("Pending", "ContainerCreating") in seen, seen
    assert pod is not None and pod.status.phase == "Running"
    assert seen.index(("Pending", "ContainerCreating")) < seen.index(("Running", "running"))
    conditions = {c.type: c for c in pod.status.conditions}
    assert {t for t, c in conditions.items() if c.status == "True"} >= {
        "PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready", "PodScheduled"}
    assert conditions["Ready"].reason is None  # the ContainersNotReady reason of ContainerCreating is gone
    node = nodes[pod.spec.node_name]
    assert pod.status.host_ip == next(a.address for a in node.status.addresses if a.type == "InternalIP")
    prefixes = admin_nodes(cluster, node)[node.metadata.name]["prefixes"]
    assert prefixes and all(p.endswith("/28") for p in prefixes)
    assert any(ipaddress.ip_address(pod.status.pod_ip) in ipaddress.ip_network(p) for p in prefixes)
    cs = pod.status.container_statuses[0]
    assert cs.container_id.startswith("containerd://") and cs.image_id.startswith("docker.io/library/python@")

    def kubelet_events() -> dict[str, Any]:
        events = core.list_namespaced_event("default", field_selector="involvedObject.name=web").items
        found = {e.reason: e for e in events if e.source and e.source.component == "kubelet"}
        return found if {"Pulling", "Pulled", "Created", "Started"} <= set(found) else {}

    events = wait_for(kubelet_events, "the kubelet's events for web")
    assert events["Pulling"].message == 'Pulling image "python:3.12"'
    assert events["Started"].message == "Started container app"
    assert events["Created"].involved_object.field_path == "spec.containers{app}"
    assert events["Pulled"].message.startswith('Successfully pulled image "python:3.12" in ')


def test_kubectl_logs(cluster: Cluster, core: client.CoreV1Api) -> None:
    wait_for(lambda: phase(core, "web", "Running"), "web Running")
    out = cluster.ok("logs", "web")
    assert "app: started python:3.12 on ip-" in out
    assert cluster.ok("logs", "web", "-c", "app", "--tail", "1").count("\n") == 1
    stamped = cluster.ok("logs", "web", "--timestamps").splitlines()[0]
    assert stamped.split(" ", 1)[0].endswith("Z") and stamped.split(" ", 1)[1].startswith("app: started")
    wrong = cluster.kubectl("logs", "web", "-c", "nope")
    assert wrong.returncode != 0 and 'container nope is not valid for pod web' in wrong.stderr
    # -f on a job follows it until its container exits
    make_pod(core, "echoer", image="busybox", restart="Never", command=["sh", "-c", "echo hello; sleep 2"])
    wait_for(lambda: phase(core, "echoer", "Running"), "echoer Running")
    assert cluster.ok("logs", "-f", "echoer").strip() == "hello"


def test_job_style_pods_complete(cluster: Cluster, core: client.CoreV1Api) -> None:
    make_pod(core, "job-ok", image="busybox", restart="Never", command=["sleep", "1"])
    make_pod(core, "job-bad", image="busybox", restart="Never", command=["sh", "-c", "exit 3"])
    ok = wait_for(lambda: phase(core, "job-ok", "Succeeded"), "job-ok Succeeded")
    done = ok.status.container_statuses[0].state.terminated
    assert (done.exit_code, done.reason) == (0, "Completed") and done.finished_at >= done.started_at
    assert next(c for c in ok.status.conditions if c.type == "Ready").reason == "PodCompleted"
    bad = wait_for(lambda: phase(core, "job-bad", "Failed"), "job-bad Failed")
    failed = bad.status.container_statuses[0].state.terminated
    assert (failed.exit_code, failed.reason) == (3, "Error")
    out = cluster.ok("get", "pods", "job-ok", "job-bad", "--no-headers")
    assert "Completed" in out and "Error" in out


def test_kubectl_delete_completes_graceful_deletion(cluster: Cluster, core: client.CoreV1Api) -> None:
    make_pod(core, "doomed")  # nginx stops on SIGTERM
    make_pod(core, "stubborn", image="busybox", command=["sleep", "3600"])  # sleep as PID 1 ignores SIGTERM
    wait_for(lambda: phase(core, "doomed", "Running"), "doomed Running")
    wait_for(lambda: phase(core, "stubborn", "Running"), "stubborn Running")
    cluster.ok("delete", "pod", "doomed")  # kubectl waits for the object to be gone
    cluster.ok("delete", "pod", "stubborn", "--grace-period", "2")
    for name in ("doomed", "stubborn"):
        missing = cluster.kubectl("get", "pod", name)
        assert missing.returncode == 1 and f'pods "{name}" not found' in missing.stderr


def lease_renewed(core: client.CoreV1Api, name: str) -> Any:
    return client.CoordinationV1Api(core.api_client).read_namespaced_lease(name, "kube-node-lease").spec.renew_time


def nodes_admin(cluster: Cluster, action: str, node: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ultraplane_command(), "nodes", "--kubeconfig", str(cluster.kubeconfig), f"--{action}",
                           node], capture_output=True, text=True, env=child_env(), timeout=60)


def test_kill_stops_lease_renewals_and_revive_resumes_them(cluster: Cluster, core: client.CoreV1Api,
                                                           nodes: dict[str, Any]) -> None:
    victim, other = sorted(nodes)[:2]
    killed = nodes_admin(cluster, "kill", victim)
    assert killed.returncode == 0 and json.loads(killed.stdout) == {"name": victim, "alive": False}
    time.sleep(0.5)  # a renewal already in flight when the kill arrived may still land
    frozen, other_before = lease_renewed(core, victim), lease_renewed(core, other)
    # every live node renews each 10 s: wait until the other one did, the victim must not have
    wait_for(lambda: lease_renewed(core, other) > other_before, "another node's renewal", 15)
    assert lease_renewed(core, victim) == frozen
    revived = nodes_admin(cluster, "revive", victim)
    assert revived.returncode == 0 and json.loads(revived.stdout)["alive"] is True
    wait_for(lambda: lease_renewed(core, victim) > frozen, "the revived node's renewal", 5)
    unknown = nodes_admin(cluster, "kill", "no-such-node")
    assert unknown.returncode == 1 and 'nodes "no-such-node" not found' in unknown.stderr


def test_kubelet_restores_ready_that_the_node_controller_took_away(cluster: Cluster, core: client.CoreV1Api,
                                                                  nodes: dict[str, Any]) -> None:
    # The node lifecycle controller marks a late node's pods Ready=False; a kubelet that answers again puts
    # its own view back (the status manager reconciles), or ReplicaSets would never count the pod again.
    make_pod(core, "comeback")
    wait_for(lambda: phase(core, "comeback", "Running"), "the pod Running", WAIT_S)

    def ready() -> str:
        pod = core.read_namespaced_pod("comeback", "default")
        return next(c.status for c in pod.status.conditions if c.type == "Ready")

    wait_for(lambda: ready() == "True", "the pod Ready", WAIT_S)
    core.patch_namespaced_pod_status("comeback", "default", {"status": {"conditions": [
        {"type": "Ready", "status": "False", "reason": "NodeNotReady"}]}})
    wait_for(lambda: ready() == "True", "the kubelet to restore Ready", WAIT_S)
    core.delete_namespaced_pod("comeback", "default", grace_period_seconds=0)
