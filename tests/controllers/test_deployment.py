"""The Deployment controller (with the ReplicaSet controller) through kubectl and the Python client."""

from __future__ import annotations

import json
import threading
from typing import Any

from kubernetes import client as k8s
from kubernetes import config, watch

from tests.apiserver.conftest import Cluster
from tests.controllers.workloads import Running, eventually, kget
from ultraplane.controllers.deployment import DeploymentController, safe_encode, scaled_value, template_hash
from ultraplane.controllers.replicaset import ReplicaSetController

Obj = dict[str, Any]
CONTROLLERS = [DeploymentController, ReplicaSetController]


class SetWatcher:
    """Watches a namespace's ReplicaSets and keeps every observed state of the whole set of them."""

    def __init__(self, cluster: Cluster, ns: str) -> None:
        self.api = k8s.AppsV1Api(config.new_client_from_config(str(cluster.kubeconfig)))
        self.ns = ns
        self.current: dict[str, Obj] = {}
        self.states: list[dict[str, Obj]] = []
        self.watch = watch.Watch()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self._follow()
        except Exception:  # noqa: BLE001 - stop() closes the stream under the reader
            pass

    def _follow(self) -> None:
        for event in self.watch.stream(self.api.list_namespaced_replica_set, self.ns, timeout_seconds=120,
                                       _preload_content=True):
            rs = event["object"]
            name = rs.metadata.name
            if event["type"] == "DELETED":
                self.current.pop(name, None)
            else:
                self.current[name] = {"spec": rs.spec.replicas or 0,
                                      "available": rs.status.available_replicas or 0,
                                      "replicas": rs.status.replicas or 0,
                                      "image": rs.spec.template.spec.containers[0].image}
            self.states.append(dict(self.current))

    def stop(self) -> None:
        self.watch.stop()


def rollout_status(cluster: Cluster, ns: str, name: str, timeout: str = "30s") -> str:
    return cluster.ok("rollout", "status", f"deployment/{name}", "-n", ns, f"--timeout={timeout}")


def sets_of(cluster: Cluster, ns: str) -> list[Obj]:
    return kget(cluster, "rs", "-n", ns)["items"]


def test_hash_and_percentages() -> None:
    assert safe_encode("0123456789") == "2456789bcd"[:0] + "".join(
        "bcdfghjklmnpqrstvwxz2456789"[ord(c) % 27] for c in "0123456789")
    h = template_hash({"metadata": {"labels": {"app": "x"}}}, None)
    assert h == template_hash({"metadata": {"labels": {"app": "x"}}}, None)
    assert h != template_hash({"metadata": {"labels": {"app": "x"}}}, 1)
    assert set(h) <= set("bcdfghjklmnpqrstvwxz2456789") and 1 <= len(h) <= 10
    assert scaled_value("25%", 10, True) == 3 and scaled_value("25%", 10, False) == 2
    assert scaled_value(2, 10, True) == 2


def test_rolling_update_history_undo_scale(cluster: Cluster) -> None:
    ns = "deploy-roll"
    cluster.ok("create", "namespace", ns)
    cluster.ok("create", "deployment", "web", "-n", ns, "--image=nginx:1.25", "--replicas=4")
    cluster.ok("patch", "deployment", "web", "-n", ns, "-p", json.dumps(
        {"spec": {"strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 1}}}}))
    with Running(cluster, CONTROLLERS, kubelet_namespaces=(ns,)) as running:
        assert 'deployment "web" successfully rolled out' in rollout_status(cluster, ns, "web")
        [rs] = sets_of(cluster, ns)
        pod_hash = rs["metadata"]["labels"]["pod-template-hash"]
        assert rs["metadata"]["name"] == f"web-{pod_hash}"
        assert rs["spec"]["selector"]["matchLabels"] == {"app": "web", "pod-template-hash": pod_hash}
        annotations = rs["metadata"]["annotations"]
        assert annotations["deployment.kubernetes.io/revision"] == "1"
        assert annotations["deployment.kubernetes.io/desired-replicas"] == "4"
        assert annotations["deployment.kubernetes.io/max-replicas"] == "5"
        d = kget(cluster, "deployment", "web", "-n", ns)
        assert d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1"
        conds = {c["type"]: c for c in d["status"]["conditions"]}
        assert (conds["Available"]["status"], conds["Available"]["reason"]) == ("True", "MinimumReplicasAvailable")
        assert conds["Progressing"]["reason"] == "NewReplicaSetAvailable"
        assert conds["Progressing"]["message"] == f'ReplicaSet "web-{pod_hash}" has successfully progressed.'
        assert {k: d["status"][k] for k in ("replicas", "updatedReplicas", "readyReplicas", "availableReplicas")} \
            == {"replicas": 4, "updatedReplicas": 4, "readyReplicas": 4, "availableReplicas": 4}

        # a rolling update, observed at every ReplicaSet change: never more than 4+1 pods wanted, never
        # fewer than 4-1 available
        running.ready_delay = 0.2
        watcher = SetWatcher(cluster, ns)
        cluster.ok("set", "image", "deployment/web", "-n", ns, "nginx=nginx:1.26")
        rollout_status(cluster, ns, "web")
        eventually(lambda: any(all(s["image"] == "nginx:1.26" or s["replicas"] == 0 for s in st.values())
                               and sum(s["available"] for s in st.values()) == 4 for st in watcher.states))
        watcher.stop()
        assert len(watcher.states) > 5
        for state in watcher.states:
            assert sum(s["spec"] for s in state.values()) <= 5, state
            if len(state) == 2:
                assert sum(s["available"] for s in state.values()) >= 3, state
        # both sets moved in steps, not all at once
        assert any(0 < s["spec"] < 4 for st in watcher.states for s in st.values())
        events = kget(cluster, "events", "-n", ns, "--field-selector", "involvedObject.kind=Deployment")["items"]
        messages = [e["message"] for e in events if e["reason"] == "ScalingReplicaSet"]
        assert f"Scaled up replica set web-{pod_hash} from 0 to 4" in messages
        assert any(m.startswith(f"Scaled down replica set web-{pod_hash} from 4 to ") for m in messages)

        history = cluster.ok("rollout", "history", "deployment/web", "-n", ns)
        assert "1 " in history and "2 " in history
        # undo (client-side in kubectl): the revision-1 set comes back as revision 3
        cluster.ok("rollout", "undo", "deployment/web", "-n", ns)
        rollout_status(cluster, ns, "web")
        old = kget(cluster, "rs", f"web-{pod_hash}", "-n", ns)
        assert old["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3"
        assert old["metadata"]["annotations"]["deployment.kubernetes.io/revision-history"] == "1"
        assert old["spec"]["replicas"] == 4
        assert kget(cluster, "deployment", "web", "-n", ns)["spec"]["template"]["spec"]["containers"][0][
            "image"] == "nginx:1.25"

        # kubectl scale: the active set follows, annotations too
        cluster.ok("scale", "deployment/web", "-n", ns, "--replicas=6")
        rollout_status(cluster, ns, "web")
        old = kget(cluster, "rs", f"web-{pod_hash}", "-n", ns)
        assert old["spec"]["replicas"] == 6
        assert old["metadata"]["annotations"]["deployment.kubernetes.io/desired-replicas"] == "6"
        assert len([p for p in kget(cluster, "pods", "-n", ns)["items"]
                    if not p["metadata"].get("deletionTimestamp")]) == 6


def test_pause_resume_and_history_limit(cluster: Cluster) -> None:
    ns = "deploy-pause"
    cluster.ok("create", "namespace", ns)
    cluster.ok("create", "deployment", "api", "-n", ns, "--image=nginx:1", "--replicas=2")
    cluster.ok("patch", "deployment", "api", "-n", ns, "-p", '{"spec":{"revisionHistoryLimit":1}}')
    with Running(cluster, CONTROLLERS, kubelet_namespaces=(ns,)):
        rollout_status(cluster, ns, "api")
        cluster.ok("rollout", "pause", "deployment/api", "-n", ns)
        cluster.ok("set", "image", "deployment/api", "-n", ns, "nginx=nginx:2")

        def paused() -> bool:
            d = kget(cluster, "deployment", "api", "-n", ns)
            cond = next(c for c in d["status"]["conditions"] if c["type"] == "Progressing")
            return cond["reason"] == "DeploymentPaused" and cond["status"] == "Unknown"
        eventually(paused)
        assert len(sets_of(cluster, ns)) == 1  # paused: no new ReplicaSet
        cluster.ok("rollout", "resume", "deployment/api", "-n", ns)
        rollout_status(cluster, ns, "api")
        for image in ("nginx:3", "nginx:4"):
            cluster.ok("set", "image", "deployment/api", "-n", ns, f"nginx={image}")
            rollout_status(cluster, ns, "api")
        # revisionHistoryLimit 1: the current set plus one old one
        eventually(lambda: len(sets_of(cluster, ns)) == 2)
        revisions = sorted(int(rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"])
                           for rs in sets_of(cluster, ns))
        assert revisions == [3, 4]


def test_recreate_never_overlaps(cluster: Cluster) -> None:
    ns = "deploy-recreate"
    cluster.ok("create", "namespace", ns)
    cluster.ok("create", "deployment", "db", "-n", ns, "--image=postgres:15", "--replicas=3")
    cluster.ok("patch", "deployment", "db", "-n", ns, "--type=json", "-p", json.dumps(
        [{"op": "replace", "path": "/spec/strategy", "value": {"type": "Recreate"}}]))
    with Running(cluster, CONTROLLERS, kubelet_namespaces=(ns,)):
        rollout_status(cluster, ns, "db")
        watcher = SetWatcher(cluster, ns)
        cluster.ok("set", "image", "deployment/db", "-n", ns, "postgres=postgres:16")
        rollout_status(cluster, ns, "db")
        watcher.stop()
        for state in watcher.states:
            old = [s for s in state.values() if s["image"] == "postgres:15"]
            new = [s for s in state.values() if s["image"] == "postgres:16"]
            if old and new and new[0]["spec"] > 0:
                assert old[0]["replicas"] == 0, state  # the new set grows only once the old pods are gone


def test_progress_deadline_exceeded(cluster: Cluster) -> None:
    ns = "deploy-stuck"
    cluster.ok("create", "namespace", ns)
    cluster.ok("create", "deployment", "stuck", "-n", ns, "--image=nginx", "--replicas=2")
    cluster.ok("patch", "deployment", "stuck", "-n", ns, "-p", '{"spec":{"progressDeadlineSeconds":2}}')
    with Running(cluster, CONTROLLERS):  # no kubelet: the pods never become ready

        def timed_out() -> Obj | None:
            conds = kget(cluster, "deployment", "stuck", "-n", ns).get("status", {}).get("conditions") or []
            cond = next((c for c in conds if c["type"] == "Progressing"), None)
            return cond if cond and cond["reason"] == "ProgressDeadlineExceeded" else None
        cond = eventually(timed_out)
        assert cond["status"] == "False"
        assert cond["message"].endswith("has timed out progressing.")
        available = next(c for c in kget(cluster, "deployment", "stuck", "-n", ns)["status"]["conditions"]
                         if c["type"] == "Available")
        assert (available["status"], available["reason"]) == ("False", "MinimumReplicasUnavailable")
        proc = cluster.kubectl("rollout", "status", "deployment/stuck", "-n", ns, "--timeout=10s")
        assert proc.returncode != 0
        assert 'deployment "stuck" exceeded its progress deadline' in proc.stderr
