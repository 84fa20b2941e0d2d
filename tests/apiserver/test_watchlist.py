"""Watch-list (sendInitialEvents=true): the initial state as ADDED events, a marking bookmark, then changes."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from tests.apiserver.conftest import Cluster


def events(cluster: Cluster, path: str) -> list[dict]:
    out = cluster.ok("get", "--raw", path)
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_initial_events_then_bookmark_then_changes(cluster: Cluster) -> None:
    cluster.ok("create", "namespace", "wl")
    for name in ("a", "b"):
        cluster.ok("create", "configmap", name, "-n", "wl", f"--from-literal=k={name}")
    path = ("/api/v1/namespaces/wl/configmaps?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan"
            "&allowWatchBookmarks=true&timeoutSeconds=3")
    proc = subprocess.Popen(["kubectl", "--kubeconfig", str(cluster.kubeconfig), "get", "--raw", path],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = [json.loads(proc.stdout.readline()) for _ in range(3)]
        assert [(e["type"], e["object"]["metadata"].get("name")) for e in first[:2]] == [("ADDED", "a"),
                                                                                            ("ADDED", "b")]
        mark = first[2]
        assert mark["type"] == "BOOKMARK"
        assert mark["object"]["kind"] == "ConfigMap"
        assert mark["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
        assert int(mark["object"]["metadata"]["resourceVersion"]) >= max(
            int(e["object"]["metadata"]["resourceVersion"]) for e in first[:2])
        cluster.ok("create", "configmap", "c", "-n", "wl", "--from-literal=k=c")
        later = json.loads(proc.stdout.readline())
        assert (later["type"], later["object"]["metadata"]["name"]) == ("ADDED", "c")
    finally:
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_send_initial_events_false_and_resource_versions(cluster: Cluster) -> None:
    cluster.ok("create", "namespace", "wl2")
    cluster.ok("create", "configmap", "x", "-n", "wl2")
    rv = json.loads(cluster.ok("get", "--raw", "/api/v1/namespaces/wl2/configmaps"))["metadata"]["resourceVersion"]
    # no initial events: only what changes after rv
    cluster.ok("create", "configmap", "y", "-n", "wl2")
    got = events(cluster, f"/api/v1/namespaces/wl2/configmaps?watch=1&sendInitialEvents=false&resourceVersion={rv}"
                          "&resourceVersionMatch=NotOlderThan&timeoutSeconds=1")
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in got] == [("ADDED", "y")]
    # with initial events at a revision not older than rv (both objects), and no bookmark unless asked
    got = events(cluster, f"/api/v1/namespaces/wl2/configmaps?watch=1&sendInitialEvents=true&resourceVersion={rv}"
                          "&resourceVersionMatch=NotOlderThan&timeoutSeconds=1")
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in got] == [("ADDED", "x"), ("ADDED", "y")]
    too_new = cluster.kubectl("get", "--raw", "/api/v1/namespaces/wl2/configmaps?watch=1&sendInitialEvents=true"
                                              "&resourceVersion=999999999&resourceVersionMatch=NotOlderThan")
    assert "Too large resource version: 999999999, current:" in too_new.stderr


def test_invalid_combinations(cluster: Cluster) -> None:
    cases = {
        (("watch", True), ("send_initial_events", True)):
            'ListOptions.meta.k8s.io "" is invalid: resourceVersionMatch: Forbidden: sendInitialEvents requires '
            "setting resourceVersionMatch to NotOlderThan",
        (("watch", True), ("resource_version_match", "NotOlderThan")):
            'ListOptions.meta.k8s.io "" is invalid: resourceVersionMatch: Forbidden: resourceVersionMatch is '
            "forbidden for watch unless sendInitialEvents is provided",
        (("watch", True), ("send_initial_events", True), ("resource_version_match", "Exact")):
            'ListOptions.meta.k8s.io "" is invalid: [resourceVersionMatch: Forbidden: sendInitialEvents requires '
            'setting resourceVersionMatch to NotOlderThan, resourceVersionMatch: Unsupported value: "Exact": '
            'supported values: "NotOlderThan"]',
        (("send_initial_events", True),):
            'ListOptions.meta.k8s.io "" is invalid: sendInitialEvents: Forbidden: sendInitialEvents is forbidden '
            "for list",
        (("resource_version_match", "NotOlderThan"),):
            'ListOptions.meta.k8s.io "" is invalid: resourceVersionMatch: Forbidden: resourceVersionMatch is '
            "forbidden unless resourceVersion is provided",
    }
    core = client.CoreV1Api(config.new_client_from_config(str(cluster.kubeconfig)))
    for query, message in cases.items():
        with pytest.raises(ApiException) as failed:
            core.list_namespaced_config_map("default", _preload_content=False, **dict(query))
        assert failed.value.status == 422, query
        status = json.loads(failed.value.body)
        assert status["reason"] == "Invalid" and status["message"] == message, query
        assert status["details"]["kind"] == "ListOptions" and status["details"]["group"] == "meta.k8s.io"
