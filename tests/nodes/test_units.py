"""The simulator's pure parts: instance types, address management, the startup model, kubelet objects."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import time

import pytest

from ultraplane.nodes import objects
from ultraplane.nodes.ipam import Ec2Api, NodeAddresses, ZoneSubnet, zone_subnets
from ultraplane.nodes.startup import PullModel, image_id, image_repository, image_size_mb, run_plan
from ultraplane.nodes.types import INSTANCE_TYPES, MixError, node_types, parse_mix, spread


def test_published_capacities() -> None:
    p5 = INSTANCE_TYPES["p5.48xlarge"].capacity()
    assert p5["cpu"] == "192" and p5["nvidia.com/gpu"] == "8" and p5["pods"] == "100"
    assert p5["memory"] == f"{2048 * 1024 * 1024}Ki"
    assert INSTANCE_TYPES["m5.large"].capacity()["pods"] == "29"
    assert INSTANCE_TYPES["g5.12xlarge"].capacity()["nvidia.com/gpu"] == "4"
    assert "nvidia.com/gpu" not in INSTANCE_TYPES["m5.xlarge"].capacity()
    assert INSTANCE_TYPES["trn1.32xlarge"].capacity()["aws.amazon.com/neuron"] == "16"


def test_allocatable_reserves_like_the_eks_ami() -> None:
    m5 = INSTANCE_TYPES["m5.large"]
    # 60m + 10m for two cores; 255Mi + 11Mi x 29 pods + 100Mi eviction threshold
    assert m5.allocatable()["cpu"] == "1930m"
    assert m5.allocatable()["memory"] == f"{8 * 1024 * 1024 - (255 + 11 * 29 + 100) * 1024}Ki"
    assert INSTANCE_TYPES["m5.4xlarge"].reserved_cpu_millis() == 60 + 10 + 5 + 5 + 12 * 2.5


def test_mix_parsing_and_spread() -> None:
    assert parse_mix("p5.48xlarge=100,m5.large=900") == {"p5.48xlarge": 100, "m5.large": 900}
    with pytest.raises(MixError, match="unknown instance type"):
        parse_mix("x9.huge=1")
    with pytest.raises(MixError, match="bad count"):
        parse_mix("m5.large=many")
    assert sum(spread(1001, {"a": 1, "b": 2}).values()) == 1001
    types = node_types(None, "p5.48xlarge=2,m5.large=4")
    assert [t.name for t in types[:4]] == ["p5.48xlarge", "m5.large", "p5.48xlarge", "m5.large"]
    assert len(node_types(None, None)) == 3
    assert len(node_types(10, "g5.xlarge=1,m5.large=1")) == 10
    assert sum(t.gpus for t in node_types(None, "p5.48xlarge=100000")) == 800_000


def test_prefix_delegation_takes_a_28_per_16_pods() -> None:
    subnet = zone_subnets("10.0.0.0/8", 3)[0]
    node = NodeAddresses(subnet, prefix_delegation=True)
    ips = []
    for _ in range(17):
        if node.needs_attach():
            node.attach()
        ips.append(node.allocate())
    assert len(node.blocks) == 2 and node.prefixes()[0].endswith("/28")
    first = ipaddress.ip_network(node.prefixes()[0])
    assert all(ipaddress.ip_address(ip) in first for ip in ips[:16])
    assert len(set(ips)) == 17
    node.release(ips[0])
    assert not node.needs_attach() and node.allocate() == ips[0]
    # a second node never gets the same prefix
    other = NodeAddresses(subnet, prefix_delegation=True)
    other.attach()
    assert other.prefixes()[0] not in node.prefixes()


def test_without_prefixes_every_address_is_its_own_block() -> None:
    subnet = ZoneSubnet("10.64.0.0/10")
    node = NodeAddresses(subnet, prefix_delegation=False)
    node.attach()
    ip = node.allocate()
    assert node.needs_attach() and node.prefixes() == [f"{ip}/32"]
    node.release(ip)
    assert node.blocks == []


def test_adopting_addresses_after_a_restart() -> None:
    subnet = ZoneSubnet("10.0.0.0/10")
    first = NodeAddresses(subnet, True)
    first.attach()
    ip = first.allocate()
    fresh_subnet = ZoneSubnet("10.0.0.0/10")
    again = NodeAddresses(fresh_subnet, True)
    assert again.adopt(ip)
    assert len(again.free) == 15 and ip not in [str(ipaddress.IPv4Address(a)) for a in again.free]
    newcomer = NodeAddresses(fresh_subnet, True)
    newcomer.attach()
    assert newcomer.prefixes() != again.prefixes()


def test_node_addresses_are_stable() -> None:
    subnets = zone_subnets("10.0.0.0/8", 3)
    assert subnets[0].node_address(0) == "10.0.0.10"
    assert subnets[1].network == ipaddress.ip_network("10.64.0.0/10")


def test_ec2_token_bucket_throttles() -> None:
    async def calls() -> float:
        api = Ec2Api(latency=0.0, qps=50, burst=2)
        started = time.monotonic()
        for _ in range(7):
            await api.call()
        return time.monotonic() - started

    assert asyncio.run(calls()) >= 0.09  # 2 from the bucket, 5 at 50/s


def test_pull_model_and_parallel_unpack_halves_it() -> None:
    model = PullModel(download_mbps=100, unpack_mbps=100, parallel_unpack=False)
    assert image_repository("docker.io/library/nginx:1.27") == "nginx"
    assert image_repository("registry.k8s.io/pause:3.10") == "registry.k8s.io/pause"
    assert image_repository("localhost:5000/app") == "localhost:5000/app"
    sequential = model.pull_seconds("nvcr.io/nvidia/pytorch:24.01-py3")
    assert sequential == pytest.approx(2 * image_size_mb("nvcr.io/nvidia/pytorch") / 100)
    assert model.pull_seconds("nvcr.io/nvidia/pytorch:24.01-py3", parallel=True) == pytest.approx(sequential / 2)
    assert model.pull_seconds("busybox") < model.pull_seconds("unknown/image")
    assert image_id("nginx:1.27").startswith("docker.io/library/nginx@sha256:")


def _pod(restart: str = "Always", command: list[str] | None = None, annotations: dict | None = None,
         owner: str | None = None) -> dict:
    meta: dict = {"name": "p", "annotations": annotations or {}}
    if owner:
        meta["ownerReferences"] = [{"kind": owner, "name": "j", "uid": "u", "apiVersion": "batch/v1"}]
    return {"metadata": meta, "spec": {"restartPolicy": restart,
                                       "containers": [{"name": "c", "image": "busybox", "command": command}]}}


def test_run_plans() -> None:
    def plan(pod: dict) -> tuple:
        p = run_plan(pod, pod["spec"]["containers"][0])
        return p.seconds, p.exit_code

    assert plan(_pod()) == (None, 0)
    assert plan(_pod("Never", ["sh", "-c", "sleep 3; exit 2"])) == (3.0, 2)
    assert plan(_pod("OnFailure", ["echo", "hi"])) == (1.0, 0)
    assert plan(_pod("Always", ["sleep", "5"], owner="Job")) == (5.0, 0)
    assert plan(_pod("Never", annotations={"ultraplane.io/run-seconds": "0.5", "ultraplane.io/exit-code": "3"})) \
        == (0.5, 3)
    echo = _pod("Never", ["sh", "-c", "echo 'hello world'"])
    assert run_plan(echo, echo["spec"]["containers"][0]).output == ["hello world"]


def test_node_object_and_pod_statuses() -> None:
    now = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    node = objects.node_object("ip-10-0-0-10.ec2.internal", INSTANCE_TYPES["g5.xlarge"], "us-east-1a", "us-east-1",
                               "10.0.0.10", 0, 10250, "127.0.0.1", now)
    labels = node["metadata"]["labels"]
    assert labels["node.kubernetes.io/instance-type"] == "g5.xlarge"
    assert labels["topology.kubernetes.io/zone"] == "us-east-1a"
    ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"], ready["message"]) == ("True", "KubeletReady",
                                                                    "kubelet is posting ready status")
    assert node["status"]["daemonEndpoints"] == {"kubeletEndpoint": {"Port": 10250}}
    pod = {"metadata": {"name": "p", "namespace": "d", "uid": "u1"},
           "spec": {"containers": [{"name": "c", "image": "nginx"}]}, "status": {"phase": "Pending"}}
    creating = objects.creating_status(pod, "10.0.0.10", now)
    assert creating["containerStatuses"][0]["state"] == {"waiting": {"reason": "ContainerCreating"}}
    running = objects.running_status(pod, "10.0.0.10", "10.1.0.1", now, now, {"nginx": image_id("nginx")}, now)
    assert {c["type"]: c["status"] for c in running["conditions"]} == {
        "PodReadyToStartContainers": "True", "Initialized": "True", "Ready": "True", "ContainersReady": "True",
        "PodScheduled": "True"}
    assert running["containerStatuses"][0]["containerID"].startswith("containerd://")
    done = objects.finished_status(pod, running, 1, now)
    assert done["phase"] == "Failed"
    assert done["containerStatuses"][0]["state"]["terminated"]["reason"] == "Error"


def test_readiness_probe_delays_ready_and_patches_clear_stale_reasons() -> None:
    now = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    pod = {"metadata": {"name": "p", "namespace": "d", "uid": "u1"},
           "spec": {"containers": [{"name": "c", "image": "nginx",
                                    "readinessProbe": {"httpGet": {"port": 80}, "initialDelaySeconds": 4}}]}}
    assert objects.readiness_delay(pod) == 4.0
    unready = objects.running_status(pod, "10.0.0.10", "10.1.0.1", now, now, {})
    ready = {c["type"]: c for c in unready["conditions"]}["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "ContainersNotReady")
    assert unready["phase"] == "Running" and unready["containerStatuses"][0]["ready"] is False
    patched = objects.condition_patch(objects.running_status(pod, "h", "p", now, now, {}, now)["conditions"])
    assert {c["type"]: (c["reason"], c["message"]) for c in patched}["Ready"] == (None, None)


def test_on_failure_crash_loop_then_restart() -> None:
    now = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    pod = {"metadata": {"name": "p", "namespace": "d", "uid": "u1"},
           "spec": {"restartPolicy": "OnFailure", "containers": [{"name": "c", "image": "busybox"}]}}
    running = objects.running_status(pod, "h", "10.1.0.1", now, now, {}, now)
    crashed = objects.crash_loop_status(running, 2, now, 10, "p", "d", "u1")
    cs = crashed["containerStatuses"][0]
    assert crashed["phase"] == "Running" and cs["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert cs["state"]["waiting"]["message"] == "back-off 10s restarting failed container=c pod=p_d(u1)"
    assert cs["lastState"]["terminated"]["exitCode"] == 2 and cs["lastState"]["terminated"]["reason"] == "Error"
    again = objects.restarted_status(crashed, "u1", now)
    cs2 = again["containerStatuses"][0]
    assert cs2["restartCount"] == 1 and "running" in cs2["state"] and cs2["containerID"] != cs["containerID"]
    assert cs2["lastState"]["terminated"]["exitCode"] == 2
    killed = objects.finished_status(pod, again, 137, now)
    assert killed["phase"] == "Failed" and killed["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 137
