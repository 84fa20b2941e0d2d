"""policy/v1 PodDisruptionBudgets, pods/eviction and kubectl drain, on both backends."""

from __future__ import annotations

import json

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from tests.apiserver.conftest import Cluster

BUDGET_VIOLATION = "Cannot evict pod as it would violate the pod's disruption budget."


def make_node(cluster: Cluster, name: str) -> None:
    cluster.ok("create", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "Node", "metadata": {
        "name": name, "labels": {"kubernetes.io/hostname": name}}}))


def make_pod(cluster: Cluster, ns: str, name: str, labels: dict[str, str], node: str = "", ready: bool = True,
             owner: dict | None = None) -> None:
    meta: dict = {"name": name, "labels": labels}
    if owner:
        meta["ownerReferences"] = [owner]
    cluster.ok("create", "-n", ns, "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": meta,
                                                                 "spec": {"containers": [{"name": "c",
                                                                                          "image": "busybox"}]}}))
    if node:
        binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
                   "target": {"apiVersion": "v1", "kind": "Node", "name": node}}
        cluster.ok("create", "--raw", f"/api/v1/namespaces/{ns}/pods/{name}/binding", "-f", "-",
                   input=json.dumps(binding))
    if ready:
        status = {"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}
        cluster.ok("patch", "pod", name, "-n", ns, "--subresource=status", "--type=merge", "-p", json.dumps(status))


@pytest.fixture(scope="module")
def core(cluster: Cluster) -> client.CoreV1Api:
    return client.CoreV1Api(config.new_client_from_config(str(cluster.kubeconfig)))


def evict(core: client.CoreV1Api, ns: str, name: str, **delete_options: object) -> None:
    body = client.V1Eviction(metadata=client.V1ObjectMeta(name=name, namespace=ns),
                             delete_options=client.V1DeleteOptions(**delete_options) if delete_options else None)
    core.create_namespaced_pod_eviction(name, ns, body)


def test_pdb_status_table_and_validation(cluster: Cluster) -> None:
    cluster.ok("create", "namespace", "pdb-status")
    for i in range(3):
        make_pod(cluster, "pdb-status", f"web-{i}", {"app": "web"}, ready=i < 2)
    cluster.ok("create", "pdb", "web", "-n", "pdb-status", "--selector=app=web", "--min-available=1")
    status = cluster.json("get", "pdb", "web", "-n", "pdb-status")["status"]
    assert (status["expectedPods"], status["currentHealthy"], status["desiredHealthy"],
            status["disruptionsAllowed"]) == (3, 2, 1, 1)
    assert status["conditions"][0]["type"] == "DisruptionAllowed"
    assert status["conditions"][0]["reason"] == "SufficientPods"
    table = cluster.ok("get", "pdb", "-n", "pdb-status").splitlines()
    assert table[0].split() == ["NAME", "MIN", "AVAILABLE", "MAX", "UNAVAILABLE", "ALLOWED", "DISRUPTIONS", "AGE"]
    assert table[1].split()[:4] == ["web", "1", "N/A", "1"]

    both = {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "both"},
            "spec": {"minAvailable": 1, "maxUnavailable": "150%", "selector": {"matchLabels": {"app": "web"}}}}
    bad = cluster.kubectl("create", "-n", "pdb-status", "-f", "-", input=json.dumps(both))
    assert bad.returncode != 0
    assert 'The PodDisruptionBudget "both" is invalid' in bad.stderr
    assert "minAvailable and maxUnavailable cannot be both set" in bad.stderr
    assert 'spec.maxUnavailable: Invalid value: "150%": must not be greater than 100%' in bad.stderr


def test_eviction_honours_the_budget(cluster: Cluster, core: client.CoreV1Api) -> None:
    ns = "pdb-evict"
    cluster.ok("create", "namespace", ns)
    for i in range(3):
        make_pod(cluster, ns, f"db-{i}", {"app": "db"})
    cluster.ok("create", "pdb", "db", "-n", ns, "--selector=app=db", "--min-available=2")

    evict(core, ns, "db-0")  # 3 healthy, 2 needed: one disruption allowed
    assert cluster.kubectl("get", "pod", "db-0", "-n", ns).returncode != 0

    with pytest.raises(ApiException) as blocked:
        evict(core, ns, "db-1")
    assert blocked.value.status == 429
    status = json.loads(blocked.value.body)
    assert status["reason"] == "TooManyRequests" and status["message"] == BUDGET_VIOLATION
    assert status["details"]["causes"] == [{"reason": "DisruptionBudget",
                                            "message": "The disruption budget db needs 2 healthy pods and has 2 "
                                                       "currently"}]
    assert cluster.json("get", "pod", "db-1", "-n", ns)["metadata"]["name"] == "db-1"
    pdb = cluster.json("get", "pdb", "db", "-n", ns)["status"]
    assert (pdb["currentHealthy"], pdb["desiredHealthy"], pdb["disruptionsAllowed"]) == (2, 2, 0)
    assert pdb["conditions"][0]["reason"] == "InsufficientPods"

    # a pod that is not running (Pending) is evicted whatever the budget says
    make_pod(cluster, ns, "db-pending", {"app": "db"}, ready=False)
    evict(core, ns, "db-pending")
    assert cluster.kubectl("get", "pod", "db-pending", "-n", ns).returncode != 0


def test_eviction_errors_and_delete_options(cluster: Cluster, core: client.CoreV1Api) -> None:
    ns = "pdb-errors"
    cluster.ok("create", "namespace", ns)
    with pytest.raises(ApiException) as missing:
        evict(core, ns, "ghost")
    assert missing.value.status == 404 and json.loads(missing.value.body)["message"] == 'pods "ghost" not found'

    make_pod(cluster, ns, "p", {"app": "x"})
    # dry run: nothing is deleted
    evict(core, ns, "p", dry_run=["All"])
    assert cluster.json("get", "pod", "p", "-n", ns)["metadata"]["name"] == "p"
    # preconditions in deleteOptions are honoured
    with pytest.raises(ApiException) as stale:
        evict(core, ns, "p", preconditions=client.V1Preconditions(uid="not-the-uid"))
    assert stale.value.status == 409
    assert "Precondition failed: UID in precondition: not-the-uid" in json.loads(stale.value.body)["message"]

    mismatch = cluster.kubectl("create", "--raw", f"/api/v1/namespaces/{ns}/pods/p/eviction", "-f", "-",
                               input=json.dumps({"apiVersion": "policy/v1", "kind": "Eviction",
                                                 "metadata": {"name": "other"}}))
    assert mismatch.returncode != 0 and "name in URL does not match name in Eviction object" in mismatch.stderr

    cluster.ok("create", "pdb", "a", "-n", ns, "--selector=app=x", "--max-unavailable=1")
    cluster.ok("create", "pdb", "b", "-n", ns, "--selector=app=x", "--max-unavailable=1")
    with pytest.raises(ApiException) as two:
        evict(core, ns, "p")
    assert two.value.status == 500
    assert json.loads(two.value.body)["message"] == ("This pod has more than one PodDisruptionBudget, which the "
                                                     "eviction subresource does not support.")
    # policy/v1beta1 bodies are accepted too
    cluster.ok("delete", "pdb", "a", "b", "-n", ns)
    cluster.ok("create", "--raw", f"/api/v1/namespaces/{ns}/pods/p/eviction", "-f", "-",
               input=json.dumps({"apiVersion": "policy/v1beta1", "kind": "Eviction", "metadata": {"name": "p"}}))
    assert cluster.kubectl("get", "pod", "p", "-n", ns).returncode != 0


def test_percentages_use_the_controllers_scale(cluster: Cluster) -> None:
    ns = "pdb-scale"
    cluster.ok("create", "namespace", ns)
    cluster.ok("create", "deployment", "app", "-n", ns, "--image=busybox", "--replicas=4")
    deploy = cluster.json("get", "deployment", "app", "-n", ns)
    owner = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "app", "uid": deploy["metadata"]["uid"],
             "controller": True}
    for i in range(4):
        make_pod(cluster, ns, f"app-{i}", {"tier": "app"}, owner=owner)
    cluster.ok("create", "pdb", "half", "-n", ns, "--selector=tier=app", "--max-unavailable=50%")
    status = cluster.json("get", "pdb", "half", "-n", ns)["status"]
    assert (status["expectedPods"], status["desiredHealthy"], status["disruptionsAllowed"]) == (4, 2, 2)


def test_kubectl_drain(cluster: Cluster) -> None:
    ns = "drain"
    cluster.ok("create", "namespace", ns)
    make_node(cluster, "drain-node")
    make_node(cluster, "other-node")
    for i in range(2):
        make_pod(cluster, ns, f"w-{i}", {"app": "w"}, node="drain-node")
    make_pod(cluster, ns, "elsewhere", {"app": "w"}, node="other-node")
    out = cluster.kubectl("drain", "drain-node", "--ignore-daemonsets", "--force", "--timeout=30s",
                          "--grace-period=0")  # no kubelet here to finish a graceful deletion
    assert out.returncode == 0, out.stderr
    assert "evicting pod drain/w-0" in out.stderr + out.stdout
    assert "node/drain-node drained" in out.stdout
    left = cluster.json("get", "pods", "-n", ns)["items"]
    assert [p["metadata"]["name"] for p in left] == ["elsewhere"]
    assert cluster.json("get", "node", "drain-node")["spec"]["unschedulable"] is True

    # a budget that allows nothing stops the drain with kube's message
    make_node(cluster, "guarded-node")
    make_pod(cluster, ns, "g-0", {"app": "g"}, node="guarded-node")
    cluster.ok("create", "pdb", "g", "-n", ns, "--selector=app=g", "--min-available=1")
    blocked = cluster.kubectl("drain", "guarded-node", "--ignore-daemonsets", "--force", "--timeout=3s")
    assert blocked.returncode != 0
    assert BUDGET_VIOLATION in blocked.stderr
    assert cluster.json("get", "pod", "g-0", "-n", ns)["metadata"]["name"] == "g-0"


def test_discovery_lists_eviction_and_log(cluster: Cluster) -> None:
    resources = json.loads(cluster.ok("get", "--raw", "/api/v1"))["resources"]
    by_name = {r["name"]: r for r in resources}
    assert by_name["pods/eviction"]["verbs"] == ["create"]
    assert (by_name["pods/eviction"]["group"], by_name["pods/eviction"]["version"],
            by_name["pods/eviction"]["kind"]) == ("policy", "v1", "Eviction")
    assert by_name["pods/log"]["verbs"] == ["get"]
