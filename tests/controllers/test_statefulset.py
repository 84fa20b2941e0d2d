"""The StatefulSet controller through kubectl; the test plays the kubelet (pods become Running + Ready)."""

from __future__ import annotations

import json
import threading
from typing import Any

from kubernetes import client as k8s
from kubernetes import config, watch

from tests.apiserver.conftest import Cluster
from tests.controllers.workloads import Running, container, eventually, kget, mark
from ultraplane.controllers.statefulset import StatefulSetController

Obj = dict[str, Any]


def statefulset(name: str, replicas: int, policy: str = "OrderedReady", claims: bool = False,
                retention: Obj | None = None) -> str:
    spec: Obj = {"replicas": replicas, "serviceName": name, "podManagementPolicy": policy,
                 "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [container()]}}}
    if retention:
        spec["persistentVolumeClaimRetentionPolicy"] = retention
    if claims:
        spec["volumeClaimTemplates"] = [{"metadata": {"name": "data"}, "spec": {
            "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]
    return json.dumps({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": name}, "spec": spec})


def live_pods(cluster: Cluster, ns: str, app: str) -> dict[str, Obj]:
    return {p["metadata"]["name"]: p for p in kget(cluster, "pods", "-n", ns, "-l", f"app={app}")["items"]
            if not p["metadata"].get("deletionTimestamp")}


def test_ordered_creation_scale_down_and_partitioned_update(cluster: Cluster) -> None:
    ns = "sts-ordered"
    cluster.ok("create", "namespace", ns)
    cluster.ok("apply", "-n", ns, "-f", "-", input=statefulset("web", 3, claims=True))
    with Running(cluster, [StatefulSetController], kubelet_namespaces=(ns,)) as running:
        running.kubelet_paused = True
        # one at a time: web-1 only once web-0 is Running and Ready
        for i in range(3):
            names = eventually(lambda i=i: (n := sorted(live_pods(cluster, ns, "web"))) and len(n) == i + 1 and n)
            assert names == [f"web-{j}" for j in range(i + 1)]
            pod = live_pods(cluster, ns, "web")[f"web-{i}"]
            labels = pod["metadata"]["labels"]
            assert labels["statefulset.kubernetes.io/pod-name"] == f"web-{i}"
            assert labels["apps.kubernetes.io/pod-index"] == str(i)
            assert pod["spec"]["hostname"] == f"web-{i}" and pod["spec"]["subdomain"] == "web"
            assert {"name": "data", "persistentVolumeClaim": {"claimName": f"data-web-{i}"}} in pod["spec"]["volumes"]
            running.call(mark(running.client, ns, f"web-{i}", "Running", ready=True))
        running.kubelet_paused = False
        status = eventually(lambda: (s := kget(cluster, "sts", "web", "-n", ns)["status"]).get("readyReplicas") == 3
                            and s)
        assert status["currentRevision"] == status["updateRevision"]
        assert status["currentReplicas"] == status["updatedReplicas"] == status["replicas"] == 3
        claims = kget(cluster, "pvc", "-n", ns)["items"]
        assert sorted(c["metadata"]["name"] for c in claims) == ["data-web-0", "data-web-1", "data-web-2"]
        assert all(c["metadata"]["labels"] == {"app": "web"} for c in claims)
        revisions = kget(cluster, "controllerrevisions", "-n", ns)["items"]
        assert [r["metadata"]["name"] for r in revisions] == [status["updateRevision"]]
        assert revisions[0]["revision"] == 1
        assert "statefulset.apps/web" in cluster.ok("get", "controllerrevisions", "-n", ns)
        pod_revision = live_pods(cluster, ns, "web")["web-0"]["metadata"]["labels"]["controller-revision-hash"]
        assert pod_revision == status["updateRevision"]

        # a partitioned rolling update: ordinals >= 1, highest first, web-0 stays on the old revision
        old_revision = status["currentRevision"]
        cluster.ok("patch", "sts", "web", "-n", ns, "-p", json.dumps(
            {"spec": {"updateStrategy": {"rollingUpdate": {"partition": 1}}}}))
        cluster.ok("set", "image", "sts/web", "-n", ns, "c=busybox:1.37")

        def partly_updated() -> Obj | None:
            s = kget(cluster, "sts", "web", "-n", ns)["status"]
            return s if s.get("updatedReplicas") == 2 and s.get("readyReplicas") == 3 else None
        status = eventually(partly_updated)
        assert status["currentRevision"] == old_revision != status["updateRevision"]
        pods = live_pods(cluster, ns, "web")
        assert pods["web-0"]["spec"]["containers"][0]["image"] == "busybox:1.36"
        assert pods["web-1"]["spec"]["containers"][0]["image"] == "busybox:1.37"
        assert pods["web-1"]["metadata"]["labels"]["controller-revision-hash"] == status["updateRevision"]
        assert sorted(r["revision"] for r in kget(cluster, "controllerrevisions", "-n", ns)["items"]) == [1, 2]
        cluster.ok("patch", "sts", "web", "-n", ns, "-p", '{"spec":{"updateStrategy":{"rollingUpdate":{"partition":0}}}}')
        status = eventually(lambda: (s := kget(cluster, "sts", "web", "-n", ns)["status"]).get(
            "currentRevision") == s.get("updateRevision") and s.get("readyReplicas") == 3 and s)
        assert status["updatedReplicas"] == 3
        assert "partitioned roll out complete" in cluster.ok("rollout", "status", "sts/web", "-n", ns) or \
            "roll out complete" in cluster.ok("rollout", "status", "sts/web", "-n", ns)

        # kubectl rollout undo applies revision 1's template patch: revision 1 is renumbered 3
        cluster.ok("rollout", "undo", "sts/web", "-n", ns)

        def rolled_back() -> bool:
            pods = live_pods(cluster, ns, "web")
            s = kget(cluster, "sts", "web", "-n", ns)["status"]
            return len(pods) == 3 and all(p["spec"]["containers"][0]["image"] == "busybox:1.36"
                                          for p in pods.values()) and s.get("updatedReplicas") == 3 and \
                s.get("readyReplicas") == 3 and s.get("currentRevision") == s.get("updateRevision") == old_revision
        eventually(rolled_back)
        assert sorted(r["revision"] for r in kget(cluster, "controllerrevisions", "-n", ns)["items"]) == [2, 3]

        # scale down removes the highest ordinals, one at a time (the order the deletions are watched in)
        deleted: list[str] = []
        stream = watch.Watch()
        core = k8s.CoreV1Api(config.new_client_from_config(str(cluster.kubeconfig)))
        version = core.list_namespaced_pod(ns).metadata.resource_version

        def follow() -> None:
            try:
                for event in stream.stream(core.list_namespaced_pod, ns, resource_version=version,
                                           timeout_seconds=60):
                    if event["type"] == "DELETED":
                        deleted.append(event["object"].metadata.name)
            except Exception:  # noqa: BLE001 - stop() closes the stream under the reader
                pass
        follower = threading.Thread(target=follow, daemon=True)
        follower.start()
        cluster.ok("scale", "sts/web", "-n", ns, "--replicas=1")
        eventually(lambda: sorted(live_pods(cluster, ns, "web")) == ["web-0"])
        eventually(lambda: len(deleted) >= 2)
        stream.stop()
        assert deleted == ["web-2", "web-1"]
        events = kget(cluster, "events", "-n", ns, "--field-selector", "involvedObject.name=web")["items"]
        assert {"delete Pod web-2 in StatefulSet web successful", "delete Pod web-1 in StatefulSet web successful"} \
            <= {e["message"] for e in events if e["reason"] == "SuccessfulDelete"}
        assert any(e["message"] == "create Claim data-web-0 Pod web-0 in StatefulSet web success" for e in events)
        assert len(kget(cluster, "pvc", "-n", ns)["items"]) == 3  # claims outlive their pods


def test_parallel_creates_all_at_once(cluster: Cluster) -> None:
    ns = "sts-parallel"
    cluster.ok("create", "namespace", ns)
    cluster.ok("apply", "-n", ns, "-f", "-", input=statefulset("db", 3, policy="Parallel"))
    with Running(cluster, [StatefulSetController]):  # no kubelet: nothing ever becomes ready
        eventually(lambda: sorted(live_pods(cluster, ns, "db")) == ["db-0", "db-1", "db-2"])
        status = eventually(lambda: (s := kget(cluster, "sts", "db", "-n", ns)["status"]).get("replicas") == 3 and s)
        assert status.get("readyReplicas", 0) == 0


def test_claim_retention_policy(cluster: Cluster) -> None:
    ns = "sts-retention"
    cluster.ok("create", "namespace", ns)
    cluster.ok("apply", "-n", ns, "-f", "-", input=statefulset(
        "cache", 2, policy="Parallel", claims=True, retention={"whenDeleted": "Delete", "whenScaled": "Delete"}))
    with Running(cluster, [StatefulSetController], kubelet_namespaces=(ns,)):
        eventually(lambda: len(kget(cluster, "pvc", "-n", ns)["items"]) == 2)
        sts = kget(cluster, "sts", "cache", "-n", ns)
        for claim in kget(cluster, "pvc", "-n", ns)["items"]:
            assert claim["metadata"]["ownerReferences"] == [
                {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "cache", "uid": sts["metadata"]["uid"]}]
        pod1 = live_pods(cluster, ns, "cache")["cache-1"]
        eventually(lambda: kget(cluster, "sts", "cache", "-n", ns)["status"].get("readyReplicas") == 2)
        cluster.ok("scale", "sts/cache", "-n", ns, "--replicas=1")
        eventually(lambda: sorted(live_pods(cluster, ns, "cache")) == ["cache-0"])
        refs = kget(cluster, "pvc", "data-cache-1", "-n", ns)["metadata"]["ownerReferences"]
        assert {"apiVersion": "v1", "kind": "Pod", "name": "cache-1", "uid": pod1["metadata"]["uid"]} in refs
