"""Graceful pod deletion, as kube-apiserver does it: a pod on a node is marked, the kubelet finishes it."""

from __future__ import annotations

from typing import Any

from kubernetes import client, config

from tests.apiserver.conftest import Cluster


def core_api(cluster: Cluster) -> client.CoreV1Api:
    return client.CoreV1Api(config.new_client_from_config(str(cluster.kubeconfig)))


def pod(name: str, node: str | None = None, grace: int | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "c", "image": "busybox"}]}
    if node:
        spec["nodeName"] = node
    if grace is not None:
        spec["terminationGracePeriodSeconds"] = grace
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def test_graceful_pod_deletion(cluster: Cluster) -> None:
    core = core_api(cluster)
    ns = "graceful"
    core.create_namespace({"metadata": {"name": ns}})

    core.create_namespaced_pod(ns, pod("unscheduled"))
    core.delete_namespaced_pod("unscheduled", ns)  # no node: nothing to wait for, gone at once
    assert [p.metadata.name for p in core.list_namespaced_pod(ns).items] == []

    core.create_namespaced_pod(ns, pod("running", node="n1", grace=45))
    marked = core.delete_namespaced_pod("running", ns)
    assert marked.metadata.deletion_grace_period_seconds == 45 and marked.metadata.deletion_timestamp
    terminating = core.read_namespaced_pod("running", ns)
    assert terminating.metadata.deletion_timestamp == marked.metadata.deletion_timestamp

    # a longer grace period never extends a deletion already under way; a shorter one shortens it
    again = core.delete_namespaced_pod("running", ns, grace_period_seconds=60)
    assert again.metadata.deletion_grace_period_seconds == 45
    shorter = core.delete_namespaced_pod("running", ns, grace_period_seconds=5)
    assert shorter.metadata.deletion_grace_period_seconds == 5
    assert shorter.metadata.deletion_timestamp < marked.metadata.deletion_timestamp

    # the kubelet's final delete (grace 0) removes it
    core.delete_namespaced_pod("running", ns, grace_period_seconds=0)
    assert [p.metadata.name for p in core.list_namespaced_pod(ns).items] == []

    # finished pods go at once too
    core.create_namespaced_pod(ns, pod("done", node="n1"))
    core.patch_namespaced_pod_status("done", ns, {"status": {"phase": "Succeeded"}})
    core.delete_namespaced_pod("done", ns)
    assert [p.metadata.name for p in core.list_namespaced_pod(ns).items] == []
