"""The Job controller through kubectl and the Python client; the test's stand-in kubelet finishes pods."""

from __future__ import annotations

import json
from typing import Any

from tests.apiserver.conftest import Cluster
from tests.controllers.workloads import Running, container, eventually, kget, mark
from ultraplane.controllers.job import TRACKING, JobController, format_indexes, parse_indexes

Obj = dict[str, Any]


def job(name: str, **spec: Any) -> str:
    return json.dumps({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
                       "spec": {"template": {"spec": {"containers": [container()], "restartPolicy": "Never"}},
                                **spec}})


def conditions(cluster: Cluster, ns: str, name: str) -> dict[str, Obj]:
    return {c["type"]: c for c in kget(cluster, "job", name, "-n", ns).get("status", {}).get("conditions") or []}


def pods(cluster: Cluster, ns: str, name: str) -> list[Obj]:
    return kget(cluster, "pods", "-n", ns, "-l", f"batch.kubernetes.io/job-name={name}")["items"]


def test_index_ranges() -> None:
    assert format_indexes({0, 1, 2, 4, 6, 7}) == "0-2,4,6-7"
    assert parse_indexes("0-2,4,6-7") == {0, 1, 2, 4, 6, 7}
    assert format_indexes(set()) == ""


def test_completions_and_parallelism(cluster: Cluster) -> None:
    ns = "job-complete"
    cluster.ok("create", "namespace", ns)
    cluster.ok("apply", "-n", ns, "-f", "-", input=job("pi", completions=3, parallelism=2))
    with Running(cluster, [JobController], kubelet_namespaces=(ns,)) as running:
        running.kubelet_paused = True
        eventually(lambda: len(pods(cluster, ns, "pi")) == 2)
        status = eventually(lambda: (s := kget(cluster, "job", "pi", "-n", ns).get("status", {})).get("active") == 2
                            and s)
        assert status["startTime"] and status["ready"] == 0
        for p in pods(cluster, ns, "pi"):
            assert TRACKING in p["metadata"]["finalizers"]
            assert p["metadata"]["generateName"] == "pi-"
            assert p["metadata"]["labels"]["job-name"] == "pi"
            assert p["metadata"]["ownerReferences"][0]["kind"] == "Job"
        running.outcome = "Succeeded"
        running.kubelet_paused = False
        # pods created while paused are finished on their next change; nudge them through the API
        for p in pods(cluster, ns, "pi"):
            running.call(_finish(running, ns, p["metadata"]["name"]))
        cluster.ok("wait", "--for=condition=complete", "job/pi", "-n", ns, "--timeout=30s")
        status = kget(cluster, "job", "pi", "-n", ns)["status"]
        assert status["succeeded"] == 3 and status.get("failed", 0) == 0 and status.get("active", 0) == 0
        assert status["uncountedTerminatedPods"] == {}
        assert status["completionTime"] >= status["startTime"]
        conds = conditions(cluster, ns, "pi")
        assert [conds[t]["reason"] for t in ("SuccessCriteriaMet", "Complete")] == ["CompletionsReached"] * 2
        assert conds["Complete"]["message"] == "Reached expected number of succeeded pods"
        finished = pods(cluster, ns, "pi")
        assert len(finished) == 3
        assert all(TRACKING not in (p["metadata"].get("finalizers") or []) for p in finished)
        events = kget(cluster, "events", "-n", ns, "--field-selector", "involvedObject.name=pi")["items"]
        assert any(e["reason"] == "Completed" and e["message"] == "Job completed" for e in events)
        assert "Complete" in cluster.ok("get", "job", "pi", "-n", ns)


async def _finish(running: Running, ns: str, name: str) -> None:
    assert running.client is not None
    await mark(running.client, ns, name, "Succeeded", exit_code=0)


def test_backoff_limit_exceeded(cluster: Cluster) -> None:
    ns = "job-fail"
    cluster.ok("create", "namespace", ns)
    cluster.ok("apply", "-n", ns, "-f", "-", input=job("flaky", backoffLimit=1))
    JobController.pod_failure_backoff = 0.2  # kube's 10 s base would only slow the test down
    try:
        with Running(cluster, [JobController], kubelet_namespaces=(ns,)) as running:
            running.outcome = "Failed"
            cluster.ok("wait", "--for=condition=failed", "job/flaky", "-n", ns, "--timeout=30s")
            conds = conditions(cluster, ns, "flaky")
            for kind in ("FailureTarget", "Failed"):
                assert (conds[kind]["status"], conds[kind]["reason"], conds[kind]["message"]) == (
                    "True", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
            status = kget(cluster, "job", "flaky", "-n", ns)["status"]
            assert status["failed"] == 2 and "completionTime" not in status
            assert len(pods(cluster, ns, "flaky")) == 2
            events = kget(cluster, "events", "-n", ns, "--field-selector", "involvedObject.name=flaky")["items"]
            assert any(e["reason"] == "BackoffLimitExceeded" and e["type"] == "Warning" for e in events)
    finally:
        JobController.pod_failure_backoff = 10.0


def test_indexed_job(cluster: Cluster) -> None:
    ns = "job-indexed"
    cluster.ok("create", "namespace", ns)
    cluster.ok("apply", "-n", ns, "-f", "-", input=job("idx", completions=3, parallelism=3,
                                                        completionMode="Indexed"))
    with Running(cluster, [JobController], kubelet_namespaces=(ns,)) as running:
        running.outcome = "Succeeded"
        cluster.ok("wait", "--for=condition=complete", "job/idx", "-n", ns, "--timeout=30s")
        status = kget(cluster, "job", "idx", "-n", ns)["status"]
        assert status["completedIndexes"] == "0-2" and status["succeeded"] == 3
        seen = set()
        for p in pods(cluster, ns, "idx"):
            index = p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
            assert p["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"] == index
            assert p["spec"]["hostname"] == f"idx-{index}"
            assert p["metadata"]["generateName"] == f"idx-{index}-"
            env = p["spec"]["containers"][0]["env"]
            assert env[-1]["name"] == "JOB_COMPLETION_INDEX"
            seen.add(int(index))
        assert seen == {0, 1, 2}


def test_active_deadline_and_suspend(cluster: Cluster) -> None:
    ns = "job-deadline"
    cluster.ok("create", "namespace", ns)
    cluster.ok("apply", "-n", ns, "-f", "-", input=job("slow", activeDeadlineSeconds=1))
    cluster.ok("apply", "-n", ns, "-f", "-", input=job("held", suspend=True, parallelism=2, completions=2))
    with Running(cluster, [JobController]):  # no kubelet: pods never finish
        cluster.ok("wait", "--for=condition=failed", "job/slow", "-n", ns, "--timeout=30s")
        conds = conditions(cluster, ns, "slow")
        assert conds["Failed"]["reason"] == "DeadlineExceeded"
        assert conds["Failed"]["message"] == "Job was active longer than specified deadline"
        assert all(TRACKING not in (p["metadata"].get("finalizers") or []) for p in pods(cluster, ns, "slow"))

        eventually(lambda: conditions(cluster, ns, "held").get("Suspended", {}).get("reason") == "JobSuspended")
        assert pods(cluster, ns, "held") == []
        cluster.ok("patch", "job", "held", "-n", ns, "-p", '{"spec":{"suspend":false}}')
        eventually(lambda: len(pods(cluster, ns, "held")) == 2)
        cond = eventually(lambda: (c := conditions(cluster, ns, "held").get("Suspended")) and
                          c["status"] == "False" and c)
        assert cond["reason"] == "JobResumed"


def test_pod_failure_policy(cluster: Cluster) -> None:
    ns = "job-policy"
    cluster.ok("create", "namespace", ns)
    policy = {"rules": [{"action": "FailJob", "onExitCodes": {"operator": "In", "values": [42]}},
                        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]}
    cluster.ok("apply", "-n", ns, "-f", "-", input=job("strict", backoffLimit=0, podFailurePolicy=policy))
    JobController.pod_failure_backoff = 0.1
    try:
        with Running(cluster, [JobController]) as running:
            assert running.client is not None
            [first] = eventually(lambda: pods(cluster, ns, "strict"))
            # a disrupted pod is ignored: not counted against backoffLimit 0, and replaced
            running.call(mark(running.client, ns, first["metadata"]["name"], "Failed", exit_code=137,
                              conditions=("DisruptionTarget",)))
            second = eventually(lambda: [p for p in pods(cluster, ns, "strict")
                                         if p["metadata"]["uid"] != first["metadata"]["uid"]])[0]
            assert "Failed" not in conditions(cluster, ns, "strict")
            assert kget(cluster, "job", "strict", "-n", ns)["status"].get("failed", 0) == 0
            # exit code 42 fails the job at once
            running.call(mark(running.client, ns, second["metadata"]["name"], "Failed", exit_code=42))
            cluster.ok("wait", "--for=condition=failed", "job/strict", "-n", ns, "--timeout=30s")
            cond = conditions(cluster, ns, "strict")["Failed"]
            assert cond["reason"] == "PodFailurePolicy"
            assert cond["message"] == (f"Container c for pod {ns}/{second['metadata']['name']} failed with exit code "
                                       "42 matching FailJob rule at index 0")
            assert conditions(cluster, ns, "strict")["FailureTarget"]["reason"] == "PodFailurePolicy"
            assert kget(cluster, "job", "strict", "-n", ns)["status"]["failed"] == 1
    finally:
        JobController.pod_failure_backoff = 10.0


def test_success_policy(cluster: Cluster) -> None:
    ns = "job-success"
    cluster.ok("create", "namespace", ns)
    policy = {"rules": [{"succeededIndexes": "0", "succeededCount": 1}]}
    cluster.ok("apply", "-n", ns, "-f", "-", input=job("leader", completions=3, parallelism=3,
                                                        completionMode="Indexed", successPolicy=policy))
    with Running(cluster, [JobController]) as running:
        assert running.client is not None
        eventually(lambda: len(pods(cluster, ns, "leader")) == 3)
        leader = next(p for p in pods(cluster, ns, "leader")
                      if p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] == "0")
        running.call(mark(running.client, ns, leader["metadata"]["name"], "Succeeded", exit_code=0))
        # index 0 alone satisfies the policy: the job completes and the other pods are removed
        cluster.ok("wait", "--for=condition=complete", "job/leader", "-n", ns, "--timeout=30s")
        conds = conditions(cluster, ns, "leader")
        for kind in ("SuccessCriteriaMet", "Complete"):
            assert (conds[kind]["reason"], conds[kind]["message"]) == ("SuccessPolicy", "Matched rules at index 0")
        status = kget(cluster, "job", "leader", "-n", ns)["status"]
        assert status["completedIndexes"] == "0" and status["succeeded"] == 1
        assert [p["metadata"]["name"] for p in pods(cluster, ns, "leader")] == [leader["metadata"]["name"]]
