"""The simulator's pure parts: instance types, address management, the startup model, kubelet objects."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import itertools
import time

import pytest

from ultraplane.nodes import objects
from ultraplane.nodes.containers import (
    Backoff,
    BackoffPolicy,
    Container,
    go_duration,
    pod_phase,
    pod_status,
    timeline,
)
from ultraplane.nodes.ipam import Ec2Api, NodeAddresses, ZoneSubnet, zone_subnets
from ultraplane.nodes.shell import exists_at, interpret
from ultraplane.nodes.startup import PullModel, RunPlan, image_id, image_repository, image_size_mb, run_plan
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

    assert plan(_pod()) == (None, 0)  # the image's entrypoint: a service
    assert plan(_pod("Never", ["sh", "-c", "sleep 3; exit 2"])) == (3.0, 2)
    assert plan(_pod("OnFailure", ["echo", "hi"])) == (1.0, 0)
    assert plan(_pod("Always", ["sleep", "5"], owner="Job")) == (5.0, 0)
    assert plan(_pod("Never", annotations={"ultraplane.io/run-seconds": "0.5", "ultraplane.io/exit-code": "3"})) \
        == (0.5, 3)
    echo = _pod("Never", ["sh", "-c", "echo 'hello world'"])
    assert run_plan(echo, echo["spec"]["containers"][0]).output == ["hello world"]
    # commands that end do so under Always too (then the kubelet restarts them)
    assert plan(_pod("Always", ["sh", "-c", "exit 3"])) == (1.0, 3)
    assert plan(_pod("Always", ["false"])) == (1.0, 1)
    assert plan(_pod("Always", ["sleep", "2m"])) == (120.0, 0)
    assert plan(_pod("Always", ["sleep", "infinity"])) == (None, 0)
    assert plan(_pod("Always", ["sh", "-c", "while true; do sleep 1; done"])) == (None, 0)
    assert plan(_pod("Always", ["nginx", "-g", "daemon off;"])) == (None, 0)  # unknown program: a server
    assert plan(_pod("Never", ["python", "train.py"])) == (1.0, 0)  # unknown program: a batch step
    assert plan(_pod("Always", ["sh", "-c", "tail -f /dev/null"])) == (None, 0)
    assert plan(_pod("Never", ["sh", "-c", "false && echo no || exit 4"])) == (1.0, 4)
    assert plan(_pod("Never", ["sh", "-c", "if true; then sleep 2; fi; exit 5"])) == (2.0, 5)  # fallback


def test_shell_files_and_exec_probe_outcomes() -> None:
    script = ["/bin/sh", "-c", "touch /tmp/healthy; sleep 30; rm -f /tmp/healthy; sleep 600"]
    done = interpret(script, batch=False)
    assert done.seconds == 630 and done.files == [(0.0, "/tmp/healthy", True), (30.0, "/tmp/healthy", False)]
    probe = ["cat", "/tmp/healthy"]
    assert interpret(probe, exists=exists_at(done.files, 10)).status == 0
    gone = interpret(probe, exists=exists_at(done.files, 31))
    assert gone.status == 1 and gone.output == ["cat: can't open '/tmp/healthy': No such file or directory"]
    assert interpret(["cat", "/etc/nginx/nginx.conf"], exists=exists_at(done.files, 31)).status == 0  # image file
    assert interpret(["sh", "-c", "test -f /tmp/healthy"], exists=exists_at(done.files, 40)).status == 1
    assert interpret(["sh", "-c", "[ ! -e /tmp/healthy ]"], exists=exists_at(done.files, 40)).status == 0
    late = interpret(["sh", "-c", "sleep 5; echo ok > /tmp/ready; sleep 60"], batch=False)
    assert not exists_at(late.files, 4)("/tmp/ready") and exists_at(late.files, 5)("/tmp/ready")
    assert interpret(["sh", "-c", "exit 1"]).status == 1 and interpret(["redis-cli", "ping"]).status == 0


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
           "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "nginx"}]},
           "status": {"phase": "Pending"}}
    creating = objects.creating_status(pod, "10.0.0.10", now)
    assert creating["containerStatuses"][0]["state"] == {"waiting": {"reason": "ContainerCreating"}}
    c = Container(pod["spec"]["containers"][0], RunPlan(None), image_id("nginx"))
    c.start(pod, "10.1.0.1", now, "u1")
    running = pod_status(pod, [c], pod_phase("Never", [c]), "10.0.0.10", "10.1.0.1", now, creating, now)
    assert running["phase"] == "Running"
    assert {c["type"]: c["status"] for c in running["conditions"]} == {
        "PodReadyToStartContainers": "True", "Initialized": "True", "Ready": "True", "ContainersReady": "True",
        "PodScheduled": "True"}
    assert running["containerStatuses"][0]["containerID"].startswith("containerd://")
    later = now + dt.timedelta(seconds=5)
    c.exit(1, later.timestamp())
    done = pod_status(pod, [c], pod_phase("Never", [c]), "10.0.0.10", "10.1.0.1", now, running, later)
    assert done["phase"] == "Failed"
    term = done["containerStatuses"][0]["state"]["terminated"]
    assert (term["exitCode"], term["reason"], term["finishedAt"]) == (1, "Error", "2026-01-02T03:04:10Z")
    conditions = {c["type"]: c for c in done["conditions"]}
    assert conditions["Ready"]["reason"] == "PodFailed" and conditions["PodReadyToStartContainers"]["status"] == "False"
    assert conditions["Initialized"]["lastTransitionTime"] == "2026-01-02T03:04:05Z"  # unchanged status keeps it


def test_pod_phase_follows_the_kubelet() -> None:
    def container(state: str, code: int = 0, last: bool = False) -> Container:
        c = Container({"name": "c"}, RunPlan(None))
        c.state, c.detail = state, {"exitCode": code} if state == "terminated" else {}
        c.last = {"terminated": {"exitCode": 1}} if last else {}
        return c

    assert pod_phase("Always", [container("waiting")]) == "Pending"
    assert pod_phase("Always", [container("waiting", last=True)]) == "Running"  # CrashLoopBackOff
    assert pod_phase("Never", [container("terminated", 1), container("running")]) == "Running"
    assert pod_phase("Never", [container("terminated", 1), container("terminated", 0)]) == "Failed"
    assert pod_phase("OnFailure", [container("terminated", 0)]) == "Succeeded"
    assert pod_phase("OnFailure", [container("waiting", last=True), container("terminated", 0)]) == "Running"
    assert pod_phase("Always", [container("terminated", 0)], terminal=True) == "Succeeded"
    assert pod_phase("Always", [container("terminated", 137)], terminal=True) == "Failed"


def test_back_off_doubles_caps_and_resets() -> None:
    policy = BackoffPolicy(10, 300)
    b = Backoff()
    assert b.wait(policy, 100.0, 100.0) == 0  # first crash: restart at once
    b.next(policy, 100.0, 100.0)
    assert b.delay == 10 and b.wait(policy, 101.0, 101.0) == 10  # second: 10 s from its finish
    delays = []
    for t in range(200, 2000, 100):
        b.next(policy, float(t), float(t))
        delays.append(b.delay)
    assert delays[:6] == [20, 40, 80, 160, 300, 300]
    assert b.wait(policy, 1900.0 + 601, 1900.0 + 601) == 0  # ran for more than 2 x max: forgiven
    b.next(policy, 2501.0, 2501.0)
    assert b.delay == 10
    assert [go_duration(s) for s in (10, 80, 300, 0.5, 1.5, 3600)] == ["10s", "1m20s", "5m0s", "500ms", "1.5s",
                                                                      "1h0m0s"]


def _timeline(container: dict, plan: RunPlan, annotations: dict | None = None, grace: int | None = None) -> list:
    pod = {"metadata": {"name": "p", "annotations": annotations or {}}, "spec": {"containers": [container]}}
    if grace is not None:
        pod["spec"]["terminationGracePeriodSeconds"] = grace
    return list(itertools.islice(timeline(pod, container, plan, "10.1.0.7"), 20))


def test_probe_timelines() -> None:
    # readiness passes at its initial delay; nothing more to say afterwards
    ready = {"name": "c", "readinessProbe": {"httpGet": {"port": 80}, "initialDelaySeconds": 4}}
    assert _timeline(ready, RunPlan(None)) == [(4.0, "ready", True)]
    # the docs' liveness example: probes every 5 s from 5 s; /tmp/healthy is removed at 30 s
    script = ["/bin/sh", "-c", "touch /tmp/healthy; sleep 30; rm -f /tmp/healthy; sleep 600"]
    live = {"name": "c", "command": script, "image": "busybox",
            "livenessProbe": {"exec": {"command": ["cat", "/tmp/healthy"]}, "initialDelaySeconds": 5,
                              "periodSeconds": 5}}
    entries = _timeline(live, run_plan({"spec": {}}, live))
    message = "Liveness probe failed: cat: can't open '/tmp/healthy': No such file or directory\n"
    assert entries == [(30.0, "unhealthy", message), (35.0, "unhealthy", message), (40.0, "unhealthy", message),
                       (40.0, "kill", "liveness"), (70.0, "exit", 137)]  # sh ignores SIGTERM: killed after 30 s
    # an httpGet probe the annotation fails from 10 s, a program that stops on SIGTERM
    http = {"name": "web", "ports": [{"name": "http", "containerPort": 8080}],
            "livenessProbe": {"httpGet": {"port": "http", "path": "/healthz"}, "periodSeconds": 10,
                              "failureThreshold": 1}}
    refused = ('Liveness probe failed: Get "http://10.1.0.7:8080/healthz": dial tcp 10.1.0.7:8080: '
               "connect: connection refused")
    entries = _timeline(http, RunPlan(None), {"ultraplane.io/failing-probes": "web:liveness@10"})
    assert entries[0] == (10.0, "unhealthy", refused) and entries[1] == (10.0, "kill", "liveness")
    assert entries[2][1:] == ("exit", 0) and entries[2][0] == pytest.approx(10.1)
    # a startup probe holds readiness back; a failing one kills the container
    slow = {"name": "c", "startupProbe": {"tcpSocket": {"port": 5432}, "initialDelaySeconds": 3, "periodSeconds": 2},
            "readinessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 10}}
    assert _timeline(slow, RunPlan(None)) == [(3.0, "started", None), (3.0, "ready", True)]
    failing = {"name": "c", "startupProbe": {"exec": {"command": ["false"]}, "periodSeconds": 1,
                                             "failureThreshold": 2}}
    assert [e[1] for e in _timeline(failing, RunPlan(None))] == ["unhealthy", "unhealthy", "kill", "exit"]
    # readiness that fails keeps reporting; a timed-out exec probe fails
    flaky = {"name": "c", "readinessProbe": {"exec": {"command": ["sh", "-c", "sleep 5"]}, "periodSeconds": 3}}
    entries = _timeline(flaky, RunPlan(None))
    assert entries[0] == (0.0, "unhealthy", 'Readiness probe failed: command "sh -c sleep 5" timed out')
    assert [e[0] for e in entries[:3]] == [0.0, 3.0, 6.0] and all(e[1] == "unhealthy" for e in entries)
    # a command that ends just exits
    assert _timeline({"name": "c"}, RunPlan(2.0, 3)) == [(2.0, "exit", 3)]


def test_a_probed_container_is_a_server_even_in_a_never_restarting_pod() -> None:
    from ultraplane.nodes.startup import run_plan

    pod = {"metadata": {}, "spec": {"restartPolicy": "Never"}}
    server = {"name": "s", "image": "python", "command": ["python", "-u", "/opt/port-server.py", "1234"],
              "startupProbe": {"tcpSocket": {"port": 1234}}}
    step = {"name": "j", "image": "python", "command": ["python", "-u", "/opt/job.py"]}
    assert run_plan(pod, server).seconds is None  # runs until stopped
    assert run_plan(pod, step).seconds is not None  # a job-like step finishes
