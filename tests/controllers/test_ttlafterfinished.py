"""The TTL-after-finished controller of `ultraplane controllers`, with the job controller left out
(`--controllers '*,-job-controller'`) so the test decides when the Job finishes."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from kubernetes import client

from tests.apiserver.conftest import Cluster
from tests.controllers.managed import eventually, managed_cluster, python_client

NS = "ttl"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    for c in managed_cluster("--controllers", "*,-job-controller"):
        c.ok("create", "namespace", NS)
        yield c


def job(name: str, ttl: int | None) -> dict:
    spec: dict = {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}
    if ttl is not None:
        spec["ttlSecondsAfterFinished"] = ttl
    return {"metadata": {"name": name}, "spec": spec}


def finish(batch: client.BatchV1Api, name: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    batch.patch_namespaced_job_status(name, NS, {"status": {
        "startTime": stamp, "completionTime": stamp, "succeeded": 1, "conditions": [
            {"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": stamp},
            {"type": "Complete", "status": "True", "lastTransitionTime": stamp}]}})


def test_finished_job_is_deleted_after_its_ttl(cluster: Cluster) -> None:
    batch = client.BatchV1Api(python_client(cluster))
    batch.create_namespaced_job(NS, job("short", 2))
    batch.create_namespaced_job(NS, job("kept", None))
    batch.create_namespaced_job(NS, job("unfinished", 0))
    finish(batch, "short")
    finish(batch, "kept")
    started = time.monotonic()
    eventually(lambda: cluster.kubectl("get", "job", "short", "-n", NS).returncode != 0)
    assert time.monotonic() - started >= 1.0  # not before the TTL (2 s, whole-second timestamps)
    names = {j.metadata.name for j in batch.list_namespaced_job(NS).items}
    assert names == {"kept", "unfinished"}
