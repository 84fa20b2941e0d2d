"""Container exits, restarts, CrashLoopBackOff and probes on simulated kubelets, seen through kubectl and
the official Python client.

`ultraplane up` runs the API server, scheduler and controller manager; the nodes are a separate
`ultraplane nodes` with a short container restart back-off (1 s doubling to 4 s instead of kube's
10 s to 5 min) so that a crash loop shows within seconds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, config

from tests.apiserver.conftest import Cluster, inprocess_cluster
from tests.harness import ultraplane_command, wait_for

WAIT_S = 30.0
NS = "default"



def nodes_command(c: Cluster) -> list[str]:
    return [*ultraplane_command(), "nodes", "--kubeconfig", str(c.kubeconfig), "--count", "2",
            "--node-type", "m5.xlarge=2", "--crash-loop-backoff", "1", "--max-container-restart-period", "4"]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with inprocess_cluster("ultraplane-restarts-") as c:  # no nodes of its own: ours come with a short back-off
        c.spawn(nodes_command(c), "nodes")
        yield c


@pytest.fixture(scope="module")
def core(cluster: Cluster) -> client.CoreV1Api:
    api = client.CoreV1Api(config.new_client_from_config(str(cluster.kubeconfig)))
    wait_for(lambda: len(api.list_node().items) == 2, "2 simulated nodes", 60)
    return api


@pytest.fixture(scope="module")
def never_job(cluster: Cluster, core: client.CoreV1Api) -> str:
    """Started first: its replacement pod waits out the job controller's own 10 s pod failure back-off."""
    make_job(cluster, "fails-never", "Never", backoff_limit=1)
    return "fails-never"


def make_pod(core: client.CoreV1Api, name: str, command: list[str] | None = None, restart: str = "Always",
             image: str = "busybox", annotations: dict[str, str] | None = None, **container: Any) -> str:
    spec: dict[str, Any] = {"name": "app", "image": image, **container}
    if command:
        spec["command"] = command
    pod = core.create_namespaced_pod(NS, {"apiVersion": "v1", "kind": "Pod",
                                          "metadata": {"name": name, "annotations": annotations or {}},
                                          "spec": {"containers": [spec], "restartPolicy": restart}})
    return pod.metadata.uid


def make_job(cluster: Cluster, name: str, restart: str, backoff_limit: int) -> None:
    cluster.ok("apply", "-f", "-", input=json.dumps({
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": NS},
        "spec": {"backoffLimit": backoff_limit, "template": {"spec": {
            "restartPolicy": restart,
            "containers": [{"name": "work", "image": "busybox", "command": ["sh", "-c", "echo working; exit 1"]}]}}}}))


def pod(core: client.CoreV1Api, name: str) -> Any:
    return core.read_namespaced_pod(name, NS)


def status_of(core: client.CoreV1Api, name: str) -> Any:
    statuses = pod(core, name).status.container_statuses or []
    return statuses[0] if statuses else None


def kubelet_events(core: client.CoreV1Api, name: str, reason: str) -> list[Any]:
    return [e for e in core.list_namespaced_event(NS, field_selector=f"involvedObject.name={name}").items
            if e.reason == reason and e.source and e.source.component == "kubelet"]


def times_seen(events: list[Any]) -> int:
    """How often the kubelet recorded it: an aggregated event counts its repeats."""
    return sum(e.count or 1 for e in events)


def test_exit_codes_and_reasons(core: client.CoreV1Api, never_job: str) -> None:
    make_pod(core, "exit-3", ["sh", "-c", "exit 3"], restart="Never")
    make_pod(core, "exit-false", ["false"], restart="Never")
    make_pod(core, "exit-true", ["sh", "-c", "echo done"], restart="Never")
    for name, phase, code, reason in (("exit-3", "Failed", 3, "Error"), ("exit-false", "Failed", 1, "Error"),
                                      ("exit-true", "Succeeded", 0, "Completed")):
        done = wait_for(lambda n=name, p=phase: pod(core, n) if pod(core, n).status.phase == p else None,
                        f"{name} {phase}")
        cs = done.status.container_statuses[0]
        term = cs.state.terminated
        assert (term.exit_code, term.reason) == (code, reason), name
        assert term.started_at <= term.finished_at and term.container_id == cs.container_id
        assert cs.restart_count == 0 and cs.ready is False and cs.last_state.terminated is None
        ready = next(c for c in done.status.conditions if c.type == "Ready")
        assert ready.reason == ("PodCompleted" if phase == "Succeeded" else "PodFailed")


def test_always_restarts_into_crash_loop_back_off(cluster: Cluster, core: client.CoreV1Api) -> None:
    uid = make_pod(core, "crasher", ["sh", "-c", "echo booting; sleep 1; exit 2"])

    def crash_looping() -> list[str] | None:
        row = cluster.ok("get", "pod", "crasher", "--no-headers").split()
        return row if row[2] == "CrashLoopBackOff" else None

    row = wait_for(crash_looping, "CrashLoopBackOff in kubectl get pods")
    assert row[1] == "0/1" and int(row[3]) >= 1 and row[4].startswith("(") and row[5] == "ago)"
    current = pod(core, "crasher")
    assert current.status.phase == "Running"  # waiting to restart after a termination is not Pending
    cs = current.status.container_statuses[0]
    waiting = cs.state.waiting
    if waiting is not None:  # it may already have restarted since kubectl looked
        assert waiting.reason == "CrashLoopBackOff"
        assert waiting.message.startswith("back-off ") and waiting.message.endswith(
            f"s restarting failed container=app pod=crasher_{NS}({uid})")
    assert cs.last_state.terminated.exit_code == 2 and cs.last_state.terminated.reason == "Error"
    first = cs.restart_count
    again = wait_for(lambda: (s := status_of(core, "crasher")) and s.restart_count >= first + 2 and s,
                     "two more restarts", 20)
    assert again.last_state.terminated.finished_at >= cs.last_state.terminated.finished_at
    back_off = wait_for(lambda: kubelet_events(core, "crasher", "BackOff"), "BackOff events")
    assert back_off[0].type == "Warning"
    assert back_off[0].message == f"Back-off restarting failed container app in pod crasher_{NS}({uid})"
    assert back_off[0].involved_object.field_path == "spec.containers{app}"
    # the log of the instance before the current one; a container that never restarted has none
    assert cluster.ok("logs", "crasher", "--previous") == "booting\n"
    none = cluster.kubectl("logs", "exit-3", "--previous")
    assert none.returncode != 0 and 'previous terminated container "app" in pod "exit-3" not found' in none.stderr
    # Created and Started again on every restart
    assert times_seen(kubelet_events(core, "crasher", "Started")) >= again.restart_count
    assert times_seen(kubelet_events(core, "crasher", "Created")) >= again.restart_count


def test_on_failure_restarts_only_failures_and_never_restarts_none(core: client.CoreV1Api) -> None:
    make_pod(core, "onfail-bad", ["sh", "-c", "exit 1"], restart="OnFailure")
    make_pod(core, "onfail-good", ["sh", "-c", "sleep 1"], restart="OnFailure")
    make_pod(core, "never-bad", ["sh", "-c", "exit 1"], restart="Never")
    restarted = wait_for(lambda: (s := status_of(core, "onfail-bad")) and s.restart_count >= 2 and s,
                         "onfail-bad restarted")
    assert restarted.last_state.terminated.exit_code == 1 and pod(core, "onfail-bad").status.phase == "Running"
    good = wait_for(lambda: pod(core, "onfail-good").status.phase == "Succeeded", "onfail-good Succeeded")
    assert good and status_of(core, "onfail-good").restart_count == 0
    wait_for(lambda: pod(core, "never-bad").status.phase == "Failed", "never-bad Failed")
    time.sleep(1.5)  # a restart would have happened by now
    assert status_of(core, "never-bad").restart_count == 0


def job_failed(cluster: Cluster, name: str) -> dict[str, Any] | None:
    job = cluster.json("get", "job", name)
    return next((c for c in (job.get("status") or {}).get("conditions") or []
                 if c["type"] == "Failed" and c["status"] == "True"), None)


def test_jobs_with_a_failing_command_reach_backoff_limit(cluster: Cluster, never_job: str) -> None:
    # OnFailure: the kubelet restarts in place; the restarts count against backoffLimit
    make_job(cluster, "fails-onfailure", "OnFailure", backoff_limit=2)
    failed = wait_for(lambda: job_failed(cluster, "fails-onfailure"), "the OnFailure job failed")
    assert (failed["reason"], failed["message"]) == ("BackoffLimitExceeded",
                                                     "Job has reached the specified backoff limit")
    # Never: every failure is a Failed pod; backoffLimit 1 allows one replacement
    failed = wait_for(lambda: job_failed(cluster, never_job), "the Never job failed", 40)
    assert failed["reason"] == "BackoffLimitExceeded"
    assert cluster.json("get", "job", never_job)["status"]["failed"] == 2
    pods = cluster.json("get", "pods", "-l", f"job-name={never_job}")["items"]
    assert len(pods) == 2 and {p["status"]["phase"] for p in pods} == {"Failed"}
    assert {p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] for p in pods} == {1}
    described = cluster.ok("get", "events", "--field-selector", f"involvedObject.name={never_job}")
    assert "BackoffLimitExceeded" in described


def test_readiness_probe_delays_ready(core: client.CoreV1Api) -> None:
    make_pod(core, "slow-ready", image="nginx",
             readinessProbe={"httpGet": {"path": "/", "port": 80}, "initialDelaySeconds": 3, "periodSeconds": 5})
    make_pod(core, "never-ready", image="nginx", readinessProbe={"exec": {"command": ["false"]}, "periodSeconds": 1})
    running = wait_for(lambda: (p := pod(core, "slow-ready")).status.phase == "Running" and p, "slow-ready Running")
    ready = next(c for c in running.status.conditions if c.type == "Ready")
    assert ready.status == "False" and ready.reason == "ContainersNotReady"
    assert ready.message == "containers with unready status: [app]"
    assert running.status.container_statuses[0].ready is False and running.status.container_statuses[0].started
    probe = running.spec.containers[0].readiness_probe  # the API server's SetDefaults_Probe
    assert (probe.timeout_seconds, probe.period_seconds, probe.success_threshold, probe.failure_threshold) == (1, 5, 1, 3)
    assert probe.http_get.scheme == "HTTP"
    now_ready = wait_for(lambda: (p := pod(core, "slow-ready")).status.container_statuses[0].ready and p,
                         "slow-ready Ready", 15)
    started = now_ready.status.container_statuses[0].state.running.started_at
    ready = next(c for c in now_ready.status.conditions if c.type == "Ready")
    assert ready.status == "True" and ready.reason is None
    assert (ready.last_transition_time - started).total_seconds() >= 3
    unhealthy = wait_for(lambda: kubelet_events(core, "never-ready", "Unhealthy"), "never-ready Unhealthy")
    assert unhealthy[0].message.rstrip() == "Readiness probe failed:" and unhealthy[0].type == "Warning"
    never = pod(core, "never-ready")
    assert never.status.phase == "Running" and never.status.container_statuses[0].ready is False
    assert never.status.container_statuses[0].restart_count == 0  # readiness never restarts


def test_liveness_failure_restarts_the_container(cluster: Cluster, core: client.CoreV1Api) -> None:
    # the Kubernetes docs' exec liveness example, faster: /tmp/healthy goes away after 2 s
    make_pod(core, "liveness-exec", ["sh", "-c", "touch /tmp/healthy; sleep 2; rm -f /tmp/healthy; sleep 600"],
             livenessProbe={"exec": {"command": ["cat", "/tmp/healthy"]}, "periodSeconds": 1,
                            "failureThreshold": 2, "terminationGracePeriodSeconds": 1})
    # nothing listens in a simulated pod: the annotation makes the httpGet probe fail from 2 s on
    make_pod(core, "liveness-http", image="nginx", annotations={"ultraplane.io/failing-probes": "liveness@2"},
             livenessProbe={"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1, "failureThreshold": 1})
    for name, code in (("liveness-exec", 137), ("liveness-http", 0)):
        cs = wait_for(lambda n=name: (s := status_of(core, n)) and s.restart_count >= 1 and s, f"{name} restarted")
        assert cs.last_state.terminated.exit_code == code and pod(core, name).status.phase == "Running"
        killing = wait_for(lambda n=name: kubelet_events(core, n, "Killing"), f"{name} Killing")
        assert killing[0].message == "Container app failed liveness probe, will be restarted"
        unhealthy = kubelet_events(core, name, "Unhealthy")
        assert unhealthy and unhealthy[0].type == "Warning"
    exec_failure = kubelet_events(core, "liveness-exec", "Unhealthy")[0].message
    assert exec_failure.rstrip("\n") == "Liveness probe failed: cat: can't open '/tmp/healthy': No such file or directory"
    http_failure = kubelet_events(core, "liveness-http", "Unhealthy")[0].message
    ip = pod(core, "liveness-http").status.pod_ip
    assert http_failure == (f'Liveness probe failed: Get "http://{ip}:8080/healthz": dial tcp {ip}:8080: '
                            "connect: connection refused")
    out = cluster.ok("describe", "pod", "liveness-exec")
    assert "Last State:     Terminated" in out and "Exit Code:    137" in out


def test_a_restarted_simulator_picks_up_its_containers(cluster: Cluster, core: client.CoreV1Api) -> None:
    before = status_of(core, "crasher").restart_count
    steady = status_of(core, "slow-ready")
    simulator = cluster.procs[-1]
    simulator.terminate()
    simulator.wait(15)
    cluster.procs.remove(simulator)
    cluster.spawn(nodes_command(cluster), "nodes-again")
    # the crash loop goes on from its restart count (a new process forgets the back-off, not the count)
    wait_for(lambda: status_of(core, "crasher").restart_count > before, "crasher restarting again", 20)
    after = status_of(core, "slow-ready")
    assert (after.container_id, after.restart_count, after.ready) == (steady.container_id, 0, True)
    assert pod(core, "exit-3").status.phase == "Failed"  # finished pods stay as they were
