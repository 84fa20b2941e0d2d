"""Health rules and the normalized diff, on objects shaped as the API server returns them."""

from __future__ import annotations

from ultraplane.gitops import health
from ultraplane.gitops.diff import diff


def test_health_of_builtin_kinds_and_conditions() -> None:
    deploy = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "generation": 2},
              "spec": {"replicas": 2}, "status": {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2,
                                                  "availableReplicas": 1}}
    assert health.assess(deploy)[0] == "Progressing"
    deploy["status"]["availableReplicas"] = 2
    assert health.assess(deploy)[0] == "Healthy"
    deploy["spec"]["paused"] = True
    assert health.assess(deploy)[0] == "Suspended"
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"},
           "status": {"conditions": [{"type": "Failed", "status": "True", "message": "BackoffLimitExceeded"}]}}
    assert health.assess(job) == ("Degraded", "BackoffLimitExceeded")
    pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "p"},
           "status": {"phase": "Pending"}}
    assert health.assess(pvc)[0] == "Progressing"
    custom = {"apiVersion": "example.com/v1", "kind": "Db", "metadata": {"name": "x"},
              "status": {"conditions": [{"type": "Ready", "status": "False", "message": "no disk"}]}}
    assert health.assess(custom) == ("Degraded", "no disk")
    assert health.assess({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}) is None
    assert health.assess(None)[0] == "Missing"
    assert health.worst(["Healthy", "Suspended", "Missing", "Progressing"]) == "Missing"


def test_diff_compares_only_declared_fields() -> None:
    manifest = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "labels": {"a": "1"}},
                "spec": {"ports": [{"port": 80, "targetPort": 8080}]}}
    live = {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "s", "labels": {"a": "1", "extra": "x"}, "uid": "u", "resourceVersion": "5"},
            "spec": {"ports": [{"port": 80, "targetPort": "8080", "protocol": "TCP"}], "clusterIP": "10.0.0.1"}}
    assert diff(manifest, live) == []
    live["spec"]["ports"][0]["port"] = 81
    assert diff(manifest, live) == [{"path": "spec.ports[0].port", "desired": 80, "live": 81}]
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}, "stringData": {"k": "v"}}
    assert diff(secret, {**secret, "stringData": None, "data": {"k": "dg=="}}) == []
