"""The workload controllers as `ultraplane up --nodes 3` runs them: in the controller manager, with the
scheduler binding the pods and simulated kubelets running them (no stand-in kubelet here)."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.apiserver.conftest import Cluster, start_cluster
from tests.controllers.workloads import container, eventually, kget

Obj = dict[str, Any]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = start_cluster("inprocess", "--nodes", "3")
    try:
        deadline = time.monotonic() + 60
        while len(json.loads(c.ok("get", "nodes", "-o", "json"))["items"]) < 3:
            assert time.monotonic() < deadline, "simulated nodes never registered"
            time.sleep(0.3)
        yield c
    finally:
        c.stop()
        shutil.rmtree(c.work_dir, ignore_errors=True)


def test_workloads_on_simulated_nodes(cluster: Cluster) -> None:
    ns = "e2e"
    cluster.ok("create", "namespace", ns)
    nodes = sorted(n["metadata"]["name"] for n in kget(cluster, "nodes")["items"])
    cluster.ok("create", "deployment", "web", "-n", ns, "--image=nginx:1.25", "--replicas=4")
    cluster.ok("apply", "-n", ns, "-f", "-", input=json.dumps({
        "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}},
                 "template": {"metadata": {"labels": {"app": "agent"}}, "spec": {"containers": [container()]}}}}))
    cluster.ok("apply", "-n", ns, "-f", "-", input=json.dumps({
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"},
        "spec": {"replicas": 2, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
                 "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [container()]}}}}))
    cluster.ok("create", "job", "once", "-n", ns, "--image=busybox", "--", "true")

    cluster.ok("rollout", "status", "deployment/web", "-n", ns, "--timeout=60s")
    cluster.ok("set", "image", "deployment/web", "-n", ns, "nginx=nginx:1.26")
    assert 'deployment "web" successfully rolled out' in cluster.ok(
        "rollout", "status", "deployment/web", "-n", ns, "--timeout=60s")
    # the old pods end gracefully (their kubelets finish the deletion)
    web = eventually(lambda: len(pods := kget(cluster, "pods", "-n", ns, "-l", "app=web")["items"]) == 4 and pods)
    assert all(p["spec"]["containers"][0]["image"] == "nginx:1.26" and p["spec"].get("nodeName") for p in web)

    assert 'daemon set "agent" successfully rolled out' in cluster.ok(
        "rollout", "status", "ds/agent", "-n", ns, "--timeout=60s")
    agents = kget(cluster, "pods", "-n", ns, "-l", "app=agent")["items"]
    assert sorted(p["spec"]["nodeName"] for p in agents) == nodes  # the scheduler followed the pinning

    cluster.ok("rollout", "status", "sts/db", "-n", ns, "--timeout=60s")
    db = {p["metadata"]["name"]: p for p in kget(cluster, "pods", "-n", ns, "-l", "app=db")["items"]}
    assert sorted(db) == ["db-0", "db-1"]
    assert db["db-0"]["metadata"]["creationTimestamp"] <= db["db-1"]["metadata"]["creationTimestamp"]

    cluster.ok("wait", "--for=condition=complete", "job/once", "-n", ns, "--timeout=60s")
    status = kget(cluster, "job", "once", "-n", ns)["status"]
    assert status["succeeded"] == 1 and status["uncountedTerminatedPods"] == {}
