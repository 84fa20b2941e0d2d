"""Federation on a fleet of three `up` clusters: placement by policy, overrides, failover of a dead member,
evacuation of a region."""

from __future__ import annotations

import os
import signal
import time

from tests.fleet.conftest import Fleet
from tests.harness import wait_for

APP = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, labels: {app: web}}
spec:
  replicas: 6
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: nginx, image: "nginx:1.27", resources: {requests: {cpu: 100m, memory: 64Mi}}}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: web-config}
data: {greeting: hello}
---
apiVersion: policy.karmada.io/v1alpha1
kind: PropagationPolicy
metadata: {name: web}
spec:
  resourceSelectors:
  - {apiVersion: apps/v1, kind: Deployment, name: web}
  - {apiVersion: v1, kind: ConfigMap, name: web-config}
  failover: {cluster: {purgeMode: Gracefully}}
  placement:
    replicaScheduling:
      replicaSchedulingType: Divided
      replicaDivisionPreference: Weighted
      weightPreference:
        staticWeightList:
        - {targetCluster: {clusterNames: [r1-c1, r2-c1, r3-c1]}, weight: 1}
---
apiVersion: policy.karmada.io/v1alpha1
kind: OverridePolicy
metadata: {name: web-mirror}
spec:
  resourceSelectors: [{apiVersion: apps/v1, kind: Deployment, name: web}]
  overrideRules:
  - targetCluster: {clusterNames: [r3-c1]}
    overriders:
      imageOverrider: [{component: Registry, operator: replace, value: mirror.example.com}]
      labelsOverrider: [{operator: add, value: {mirrored: "true"}}]
"""


def _replicas(f: Fleet, cluster: str) -> int | None:
    deployment = f.maybe(cluster, "get", "deployment", "web")
    return None if deployment is None else deployment["spec"]["replicas"]


def test_members_are_clusters_with_status(fleet: Fleet) -> None:
    clusters = {c["metadata"]["name"]: c for c in fleet.json(None, "get", "clusters")["items"]}
    assert sorted(clusters) == ["r1-c1", "r2-c1", "r3-c1"]
    r1 = clusters["r1-c1"]
    assert r1["spec"]["region"] == "r1" and r1["spec"]["syncMode"] == "Push"
    assert r1["metadata"]["labels"]["topology.kubernetes.io/region"] == "r1"
    assert r1["status"]["kubernetesVersion"].startswith("v1.32")
    wait_for(lambda: (fleet.json(None, "get", "cluster", "r1-c1").get("status") or {}).get("nodeSummary")
             == {"totalNum": 2, "readyNum": 2}, "the node summary of r1-c1", timeout=60)
    secret = fleet.json(None, "get", "secret", "-n", "karmada-cluster", "r1-c1")
    assert set(secret["data"]) == {"kubeconfig"}
    # invalid policies are refused with kube's field errors, from the CRD schema
    bad = fleet.kubectl(None, "apply", "-f", "-", input=(
        "apiVersion: policy.karmada.io/v1alpha1\nkind: PropagationPolicy\nmetadata: {name: bad}\nspec:\n"
        "  resourceSelectors: [{apiVersion: apps/v1, kind: Deployment}]\n"
        "  placement: {replicaScheduling: {replicaSchedulingType: Sideways}}\n"))
    assert bad.returncode != 0
    assert 'Unsupported value: "Sideways": supported values: "Duplicated", "Divided"' in bad.stderr


def test_propagation_overrides_failover_and_evacuation(fleet: Fleet) -> None:
    applied = fleet.kubectl(None, "apply", "-f", "-", input=APP)
    assert applied.returncode == 0, applied.stderr

    # placed by policy: 6 replicas divided 2/2/2, the ConfigMap everywhere, status aggregated
    wait_for(lambda: [_replicas(fleet, c) for c in ("r1-c1", "r2-c1", "r3-c1")] == [2, 2, 2],
             "2 replicas on each member", timeout=90)
    wait_for(lambda: (fleet.json(None, "get", "deployment", "web").get("status") or {}).get("readyReplicas") == 6,
             "the fleet Deployment's aggregated readyReplicas", timeout=90)
    for cluster in ("r1-c1", "r2-c1", "r3-c1"):
        assert fleet.json(cluster, "get", "configmap", "web-config")["data"] == {"greeting": "hello"}
    binding = fleet.json(None, "get", "resourcebinding", "web-deployment")
    assert binding["spec"]["clusters"] == [{"name": "r1-c1", "replicas": 2}, {"name": "r2-c1", "replicas": 2},
                                           {"name": "r3-c1", "replicas": 2}]
    assert {e["clusterName"]: e["health"] for e in binding["status"]["aggregatedStatus"]} == \
        {"r1-c1": "Healthy", "r2-c1": "Healthy", "r3-c1": "Healthy"}
    mirrored = fleet.json("r3-c1", "get", "deployment", "web")
    assert mirrored["spec"]["template"]["spec"]["containers"][0]["image"] == "mirror.example.com/nginx:1.27"
    assert mirrored["metadata"]["labels"]["mirrored"] == "true"
    plain = fleet.json("r1-c1", "get", "deployment", "web")
    assert plain["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1.27"

    # r1 stops answering: tainted, its replicas move, its copy stays until it answers again
    r1 = fleet.member_pid("r1-c1")
    os.kill(r1, signal.SIGSTOP)
    try:
        wait_for(lambda: {(t["key"], t["effect"]) for t in
                          fleet.json(None, "get", "cluster", "r1-c1")["spec"].get("taints") or []} ==
                 {("cluster.karmada.io/unreachable", "NoSchedule"), ("cluster.karmada.io/unreachable", "NoExecute")},
                 "r1-c1 tainted unreachable", timeout=60)
        wait_for(lambda: [_replicas(fleet, c) for c in ("r2-c1", "r3-c1")] == [3, 3], "failover to r2 and r3",
                 timeout=90)
        binding = fleet.json(None, "get", "resourcebinding", "web-deployment")
        assert [t["fromCluster"] for t in binding["spec"]["gracefulEvictionTasks"]] == ["r1-c1"]
        wait_for(lambda: (fleet.json(None, "get", "deployment", "web").get("status") or {}).get("readyReplicas")
                 == 6, "6 ready replicas on the healthy members", timeout=90)
    finally:
        os.kill(r1, signal.SIGCONT)
    # back again: its stale copy goes only now, since the replacements are Ready
    wait_for(lambda: _replicas(fleet, "r1-c1") is None, "the old copy removed from r1-c1", timeout=90)
    wait_for(lambda: not fleet.json(None, "get", "resourcebinding", "web-deployment")["spec"].get(
        "gracefulEvictionTasks"), "the eviction task done", timeout=30)
    assert not fleet.json(None, "get", "cluster", "r1-c1")["spec"].get("taints")

    # evacuate r2: its replicas go to r1 and r3, within capacity, and the command reports progress
    dry = fleet.ultraplane("evacuate", "r2", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "default/web-deployment" in dry.stdout and "summary: 2 binding(s) can move, 0 cannot" in dry.stdout
    missing = fleet.ultraplane("evacuate", "nowhere")
    assert missing.returncode == 1
    assert 'region "nowhere" has no member clusters; known regions: r1, r2, r3' in missing.stderr
    started = time.monotonic()
    done = fleet.ultraplane("evacuate", "r2")
    assert done.returncode == 0, done.stderr
    assert "summary: evacuation of r2 completed" in done.stderr
    assert time.monotonic() - started < 120
    evacuation = fleet.json(None, "get", "evacuation", "evacuate-r2")["status"]
    assert evacuation["phase"] == "Completed" and evacuation["movedReplicas"] == evacuation["totalReplicas"] > 0
    assert [_replicas(fleet, c) for c in ("r1-c1", "r2-c1", "r3-c1")] == [3, None, 3]
    assert fleet.maybe("r2-c1", "get", "configmap", "web-config") is None
    assert (fleet.json(None, "get", "deployment", "web").get("status") or {}).get("readyReplicas") == 6

    restored = fleet.ultraplane("restore", "r2")
    assert restored.returncode == 0, restored.stderr
    wait_for(lambda: not fleet.json(None, "get", "cluster", "r2-c1")["spec"].get("taints"), "r2 untainted",
             timeout=30)
    again = fleet.ultraplane("restore", "r2")
    assert again.returncode == 1 and 'region "r2" is not evacuated' in again.stderr

    # deleting the template removes every member's copy and the binding
    assert fleet.kubectl(None, "delete", "deployment", "web").returncode == 0
    wait_for(lambda: all(_replicas(fleet, c) is None for c in ("r1-c1", "r2-c1", "r3-c1")),
             "the members' copies deleted", timeout=60)
    wait_for(lambda: fleet.maybe(None, "get", "resourcebinding", "web-deployment") is None, "the binding deleted",
             timeout=30)


def test_join_unjoin_and_insights_through_the_fleet(fleet: Fleet) -> None:
    member_config = fleet.root / "clusters" / "r2-c1" / "kubeconfig"
    # an unreachable cluster is refused before anything is written
    dead = fleet.root / "dead-kubeconfig"
    text = member_config.read_text()
    server = next(line.split("server:", 1)[1].strip() for line in text.splitlines() if "server:" in line)
    dead.write_text(text.replace(server, "https://127.0.0.1:9"))
    refused = fleet.ultraplane("join", "ghost", "--kubeconfig", str(dead), "--region", "r9")
    assert refused.returncode == 1 and "cluster ghost does not answer at https://127.0.0.1:9" in refused.stderr
    assert fleet.maybe(None, "get", "cluster", "ghost") is None

    joined = fleet.ultraplane("join", "r2-again", "--kubeconfig", str(member_config), "--region", "r2",
                              "--zone", "r2b", "--account", "account-9")
    assert joined.returncode == 0, joined.stderr
    assert "cluster r2-again (v1.32.0-ultraplane) joined the fleet in region r2" in joined.stdout
    wait_for(lambda: any(c["type"] == "Ready" and c["status"] == "True" for c in
                         (fleet.json(None, "get", "cluster", "r2-again").get("status") or {}).get("conditions") or []),
             "the joined cluster Ready", timeout=60)
    cluster = fleet.json(None, "get", "cluster", "r2-again")
    assert cluster["spec"]["zones"] == ["r2b"] and \
        cluster["metadata"]["labels"]["fleet.ultraplane.io/account"] == "account-9"
    again = fleet.ultraplane("join", "r2-again", "--kubeconfig", str(member_config), "--region", "r2")
    assert again.returncode == 1 and "already exists" in again.stderr

    # the controller scans every member; a refresh with a target waits for the new scan
    scanned = fleet.ultraplane("insights", "--cluster", "r2-again", "--refresh", "--target", "1.34")
    assert scanned.returncode == 0, scanned.stderr
    assert "Upgrade insights: 1.32 -> 1.34" in scanned.stdout and "summary: 2 hop(s)" in scanned.stdout
    unknown = fleet.ultraplane("insights", "--cluster", "nope")
    assert unknown.returncode == 1 and 'cluster "nope" has no insights' in unknown.stderr

    left = fleet.ultraplane("unjoin", "r2-again")
    assert left.returncode == 0, left.stderr
    assert fleet.maybe(None, "get", "cluster", "r2-again") is None
    assert fleet.maybe(None, "get", "secret", "-n", "karmada-cluster", "r2-again") is None
