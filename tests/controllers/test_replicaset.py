"""The ReplicaSet / ReplicationController controllers through kubectl and the official Python client."""

from __future__ import annotations

import datetime as dt
from typing import Any

from kubernetes import client as k8s
from kubernetes import config

from tests.apiserver.conftest import Cluster
from tests.controllers.workloads import Running, apply, container, eventually, kget, mark
from ultraplane.controllers.replicaset import (
    ReplicaSetController,
    ReplicationControllerController,
    deletion_order,
)

Obj = dict[str, Any]


def replicaset(name: str, replicas: int, labels: dict[str, str]) -> Obj:
    return {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": {"containers": [container()]}}}}


def pods_of(cluster: Cluster, ns: str, selector: str) -> list[Obj]:
    return [p for p in kget(cluster, "pods", "-n", ns, "-l", selector)["items"]
            if not p["metadata"].get("deletionTimestamp")]


def test_scale_up_down_adopt_orphan(cluster: Cluster) -> None:
    ns = "rs-basic"
    cluster.ok("create", "namespace", ns)
    # an orphan that matches the selector exists before the ReplicaSet: it is adopted, not duplicated
    cluster.ok("run", "orphan", "-n", ns, "--image=busybox", "--labels=app=web")
    apply(cluster, replicaset("web", 3, {"app": "web"}), ns)
    with Running(cluster, [ReplicaSetController], kubelet_namespaces=(ns,)) as running:
        eventually(lambda: kget(cluster, "rs", "web", "-n", ns)["status"].get("readyReplicas") == 3)
        pods = pods_of(cluster, ns, "app=web")
        assert len(pods) == 3
        assert "orphan" in [p["metadata"]["name"] for p in pods]
        rs = kget(cluster, "rs", "web", "-n", ns)
        for p in pods:
            ref = p["metadata"]["ownerReferences"][0]
            assert ref == {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web",
                           "uid": rs["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}
            if p["metadata"]["name"] != "orphan":
                assert p["metadata"]["generateName"] == "web-"
        status = rs["status"]
        assert status == {"replicas": 3, "fullyLabeledReplicas": 3, "readyReplicas": 3, "availableReplicas": 3,
                          "observedGeneration": 1}

        cluster.ok("scale", "rs/web", "-n", ns, "--replicas=5")
        eventually(lambda: kget(cluster, "rs", "web", "-n", ns)["status"].get("availableReplicas") == 5)
        assert len(pods_of(cluster, ns, "app=web")) == 5

        # relabel a pod: it is released (ownerReference removed) and replaced
        victim = pods_of(cluster, ns, "app=web")[0]["metadata"]["name"]
        cluster.ok("label", "pod", victim, "-n", ns, "app=other", "--overwrite")
        eventually(lambda: not kget(cluster, "pod", victim, "-n", ns)["metadata"].get("ownerReferences"))
        eventually(lambda: len(pods_of(cluster, ns, "app=web")) == 5)

        cluster.ok("scale", "rs/web", "-n", ns, "--replicas=1")
        eventually(lambda: len(pods_of(cluster, ns, "app=web")) == 1)
        eventually(lambda: kget(cluster, "rs", "web", "-n", ns)["status"].get("replicas") == 1)
        events = kget(cluster, "events", "-n", ns, "--field-selector", "involvedObject.name=web")["items"]
        reasons = {e["reason"] for e in events}
        assert {"SuccessfulCreate", "SuccessfulDelete"} <= reasons
        assert all(e["source"]["component"] == "replicaset-controller" for e in events)
        created = [e["message"] for e in events if e["reason"] == "SuccessfulCreate"]
        assert all(m.startswith("Created pod: web-") for m in created)
        assert "SuccessfulDelete" in cluster.ok("describe", "rs", "web", "-n", ns)

        # the last pod stops being ready: the counts drop to zero (and vanish, as omitempty fields do)
        [last] = pods_of(cluster, ns, "app=web")
        running.call(mark(running.client, ns, last["metadata"]["name"], "Running", ready=False))
        status = eventually(lambda: (s := kget(cluster, "rs", "web", "-n", ns)["status"]).get("readyReplicas", 0) == 0
                            and s)
        assert status["replicas"] == 1 and "availableReplicas" not in status


def test_replication_controller_with_python_client(cluster: Cluster) -> None:
    ns = "rc-basic"
    api = k8s.CoreV1Api(config.new_client_from_config(str(cluster.kubeconfig)))
    api.create_namespace({"metadata": {"name": ns}})
    api.create_namespaced_replication_controller(ns, {
        "metadata": {"name": "legacy"},
        "spec": {"replicas": 2, "selector": {"app": "legacy"},
                 "template": {"metadata": {"labels": {"app": "legacy"}}, "spec": {"containers": [container()]}}}})
    with Running(cluster, [ReplicationControllerController], kubelet_namespaces=(ns,)):
        eventually(lambda: api.read_namespaced_replication_controller(
            "legacy", ns).status.ready_replicas == 2)
        pods = api.list_namespaced_pod(ns, label_selector="app=legacy").items
        assert len(pods) == 2
        assert all(p.metadata.owner_references[0].kind == "ReplicationController" for p in pods)
        api.delete_namespaced_pod(pods[0].metadata.name, ns)
        eventually(lambda: len([p for p in api.list_namespaced_pod(ns, label_selector="app=legacy").items
                                if p.metadata.uid != pods[0].metadata.uid]) == 2)


def test_failed_creations_set_replica_failure(cluster: Cluster) -> None:
    ns = "rs-quota"
    cluster.ok("create", "namespace", ns)
    # a template the API server refuses: every creation fails with 422
    bad = replicaset("broken", 2, {"app": "broken"})
    bad["spec"]["template"]["spec"]["containers"][0]["image"] = ""
    apply(cluster, bad, ns)
    with Running(cluster, [ReplicaSetController]):
        def failure() -> Obj | None:
            conds = kget(cluster, "rs", "broken", "-n", ns)["status"].get("conditions") or []
            return next((c for c in conds if c["type"] == "ReplicaFailure"), None)
        cond = eventually(failure)
        assert cond["status"] == "True" and cond["reason"] == "FailedCreate"
        assert "Invalid value" in cond["message"] or "Required value" in cond["message"]
        # each retry's message names another generated pod; from the tenth distinct one on they are
        # combined into one Event whose count goes up (client-go's event aggregator)
        def combined() -> Obj | None:
            events = [e for e in kget(cluster, "events", "-n", ns)["items"] if e["reason"] == "FailedCreate"]
            found = [e for e in events if e["message"].startswith("(combined from similar events): ")]
            return found[0] if found and found[0]["count"] >= 2 else None
        event = eventually(combined, timeout=45)
        assert event["type"] == "Warning" and "Error creating: " in event["message"]
        assert event["lastTimestamp"] >= event["firstTimestamp"]
        singles = [e for e in kget(cluster, "events", "-n", ns)["items"]
                   if e["reason"] == "FailedCreate" and not e["message"].startswith("(combined")]
        assert len(singles) == 9 and all(e["message"].startswith("Error creating: ") for e in singles)
        assert "FailedCreate" in cluster.ok("describe", "rs", "broken", "-n", ns)


def test_deletion_order_prefers_cheap_pods() -> None:
    def pod(name: str, node: str = "", phase: str = "Running", ready: bool = False, created: str = "") -> Obj:
        conds = [{"type": "Ready", "status": "True" if ready else "False",
                  "lastTransitionTime": "2026-01-01T00:00:00Z"}]
        return {"metadata": {"name": name, "namespace": "n", "creationTimestamp": created or "2026-01-01T00:00:00Z"},
                "spec": {"nodeName": node}, "status": {"phase": phase, "conditions": conds}}
    pods = [pod("ready-old", "n1", ready=True, created="2026-01-01T00:00:00Z"),
            pod("ready-new", "n2", ready=True, created="2026-01-02T00:00:00Z"),
            pod("notready", "n1"),
            pod("pending", "n1", phase="Pending"),
            pod("unscheduled", phase="Pending")]
    now = dt.datetime(2026, 1, 2, 0, 0, 10, tzinfo=dt.UTC)
    order = [p["metadata"]["name"] for p in deletion_order(pods, {}, now)]
    assert order == ["unscheduled", "pending", "notready", "ready-new", "ready-old"]
    # more related pods on its node goes first among equals; ages in one log2 bucket compare by UID
    twins = [pod("a", "n1", ready=True, created="2026-01-02T00:00:00Z"),
             pod("b", "n2", ready=True, created="2026-01-02T00:00:01Z")]
    twins[0]["metadata"]["uid"], twins[1]["metadata"]["uid"] = "2", "1"
    assert [p["metadata"]["name"] for p in deletion_order(twins, {"n/a": 2, "n/b": 1}, now)] == ["a", "b"]
    assert [p["metadata"]["name"] for p in deletion_order(twins, {}, now)] == ["b", "a"]  # uid "1" < "2"
