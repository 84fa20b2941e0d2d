"""Provisioning and every disruption reason against a real cluster with `--nodes 0`."""

from __future__ import annotations

import json
import time

from tests.apiserver.conftest import Cluster
from tests.harness import wait_for
from tests.provisioner.conftest import (
    claims,
    cleanup,
    condition,
    deployment,
    karpenter_events,
    nodepool,
    nodes,
    pods,
    running,
)

ON_DEMAND = [{"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["on-demand"]}]


def test_deployment_scales_nodes_up_and_back_down(cluster: Cluster) -> None:
    cluster.ok("apply", "-f", "-", input=nodepool("scale"))
    cluster.ok("apply", "-f", "-", input=deployment("scale", "scale", 12))
    running_pods = wait_for(lambda: running(cluster, "scale", 12), "12 pods Running on provisioned nodes", 60)
    made = nodes(cluster, "scale")
    assert made and {p["spec"]["nodeName"] for p in running_pods} <= {n["metadata"]["name"] for n in made}
    for node in made:
        labels = node["metadata"]["labels"]
        assert labels["karpenter.sh/capacity-type"] == "on-demand"
        assert labels["topology.kubernetes.io/zone"].startswith("us-east-1")
        assert labels["kubernetes.io/arch"] in ("amd64", "arm64")
        assert labels["node.kubernetes.io/instance-type"]
        assert labels["karpenter.sh/registered"] == "true" and labels["karpenter.sh/initialized"] == "true"
        assert {"key": "test", "value": "scale", "effect": "NoSchedule"} in node["spec"]["taints"]
    # 12 pods of 500m: the cheapest on-demand fleet is t3.medium-sized nodes holding 3 each
    allocated = sum(int(n["status"]["allocatable"]["cpu"].rstrip("m")) for n in made)
    assert allocated >= 12 * 500
    wait_for(lambda: all(condition(c, k) == "True" for c in claims(cluster, "scale")
                         for k in ("Launched", "Registered", "Initialized", "Ready")), "NodeClaims Ready", 30)
    table = cluster.ok("get", "nodepools,nodeclaims")
    assert "NODECLASS" in table and "NODES" in table and "READY" in table and "NODE" in table
    pool = cluster.json("get", "nodepool", "scale")
    assert pool["status"]["nodes"] == len(made) and condition(pool, "Ready") == "True"
    assert any(e["reason"] == "Nominated" for e in karpenter_events(cluster))

    cluster.ok("scale", "deployment", "scale", "--replicas", "0")
    wait_for(lambda: not claims(cluster, "scale") and not nodes(cluster, "scale"), "empty nodes removed", 60)
    reasons = {e["reason"] for e in karpenter_events(cluster)}
    assert "DisruptionTerminating" in reasons
    cleanup(cluster, "scale", "scale")


def test_pods_no_type_can_hold_stay_pending_without_launches(cluster: Cluster) -> None:
    cluster.ok("apply", "-f", "-", input=nodepool("nofit", limits={"cpu": "4"}))
    cluster.ok("apply", "-f", "-", input=deployment("nofit", "nofit", 1, cpu="500"))
    cluster.ok("apply", "-f", "-", input=deployment("overlimit", "nofit", 1, cpu="6"))

    def failed() -> list[str]:
        return [e["message"] for e in karpenter_events(cluster) if e["reason"] == "FailedScheduling"
                and e["involvedObject"]["name"].startswith(("nofit-", "overlimit-"))]

    messages = wait_for(lambda: (found := failed()) and any("exceed limits" in m for m in found) and any(
        "no instance type satisfied resources" in m for m in found) and found, "FailedScheduling events", 30)
    assert all(m.startswith("Failed to schedule pod, ") for m in messages)
    time.sleep(4)  # several batches and disruption passes later: still nothing launched, nothing repeated
    assert claims(cluster, "nofit") == []
    assert all(p["status"]["phase"] == "Pending" for p in pods(cluster, "nofit") + pods(cluster, "overlimit"))
    assert len(failed()) == len(messages)
    # a NodePool whose node class does not exist says so
    cluster.ok("apply", "-f", "-", input=nodepool("noclass", nodeclass="missing"))
    pool = wait_for(lambda: (p := cluster.json("get", "nodepool", "noclass")) and condition(p, "Ready") == "False"
                    and p, "NodePool Ready=False", 20)
    ready = next(c for c in pool["status"]["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "NodeClassNotReady" and "missing" in ready["message"]
    cluster.ok("delete", "deployment", "overlimit")
    cleanup(cluster, "nofit", "nofit")
    cluster.ok("delete", "nodepool", "noclass")


def test_underutilized_node_is_replaced_by_a_cheaper_one(cluster: Cluster) -> None:
    types = [{"key": "node.kubernetes.io/instance-type", "operator": "In", "values": ["m5.large", "m5.2xlarge"]}]
    cluster.ok("apply", "-f", "-", input=nodepool("under", requirements=ON_DEMAND + types))
    cluster.ok("apply", "-f", "-", input=deployment("under", "under", 6, cpu="1"))
    wait_for(lambda: running(cluster, "under", 6), "6 pods Running", 60)
    first = nodes(cluster, "under")
    assert [n["metadata"]["labels"]["node.kubernetes.io/instance-type"] for n in first] == ["m5.2xlarge"]
    cluster.ok("scale", "deployment", "under", "--replicas", "1")

    def replaced() -> list[dict] | None:
        now = nodes(cluster, "under")
        kinds = [n["metadata"]["labels"]["node.kubernetes.io/instance-type"] for n in now]
        return now if kinds == ["m5.large"] and running(cluster, "under", 1) else None

    final = wait_for(replaced, "the m5.2xlarge replaced by an m5.large", 60)
    pod = running(cluster, "under", 1)[0]
    assert pod["spec"]["nodeName"] == final[0]["metadata"]["name"]
    messages = [e["message"] for e in karpenter_events(cluster) if e["reason"] == "DisruptionTerminating"]
    assert any("Underutilized" in m for m in messages)
    cleanup(cluster, "under", "under")


def test_drifted_node_is_replaced(cluster: Cluster) -> None:
    cluster.ok("apply", "-f", "-", input=nodepool("drift", labels={"version": "v1"}))
    cluster.ok("apply", "-f", "-", input=deployment("drift", "drift", 2))
    wait_for(lambda: running(cluster, "drift", 2), "2 pods Running", 60)
    old = {n["metadata"]["name"] for n in nodes(cluster, "drift")}
    cluster.ok("apply", "-f", "-", input=nodepool("drift", labels={"version": "v2"}))

    def drifted_away() -> bool:
        now = nodes(cluster, "drift")
        return bool(now) and not old & {n["metadata"]["name"] for n in now} and all(
            n["metadata"]["labels"].get("version") == "v2" for n in now) and bool(running(cluster, "drift", 2))

    wait_for(drifted_away, "drifted nodes replaced by v2 nodes", 60)
    messages = [e["message"] for e in karpenter_events(cluster) if e["reason"] == "DisruptionTerminating"]
    assert any("Drifted" in m for m in messages)
    cleanup(cluster, "drift", "drift")


def test_expired_node_is_replaced_and_drain_honours_pdbs(cluster: Cluster) -> None:
    cluster.ok("apply", "-f", "-", input=nodepool("expire", expire_after="10s", disruption={
        "consolidationPolicy": "WhenEmpty", "consolidateAfter": "Never"}))
    cluster.ok("apply", "-f", "-", input=deployment("expire", "expire", 2))
    cluster.ok("create", "poddisruptionbudget", "expire", "--selector", "app=expire", "--min-available", "2")
    wait_for(lambda: running(cluster, "expire", 2), "2 pods Running", 60)
    first = {c["metadata"]["name"] for c in claims(cluster, "expire")}
    # expired: the NodeClaim is deleted and its node tainted, but the PDB keeps both pods where they are
    wait_for(lambda: all(c["metadata"].get("deletionTimestamp") for c in claims(cluster, "expire")
                         if c["metadata"]["name"] in first), "expired NodeClaims deleted", 30)
    tainted = wait_for(lambda: [n for n in nodes(cluster, "expire") if any(
        t["key"] == "karpenter.sh/disrupted" for t in n["spec"].get("taints") or [])], "disrupted taint", 20)
    time.sleep(2)
    assert len(running(cluster, "expire", 2) or []) == 2
    assert {p["spec"]["nodeName"] for p in pods(cluster, "expire")} <= {n["metadata"]["name"] for n in tainted}
    cluster.ok("delete", "poddisruptionbudget", "expire")

    def moved() -> bool:
        names = {c["metadata"]["name"] for c in claims(cluster, "expire")}
        return bool(names) and not names & first and bool(running(cluster, "expire", 2))

    wait_for(moved, "pods on a new NodeClaim after expiry", 60)
    cleanup(cluster, "expire", "expire")


def test_budgets_and_do_not_disrupt_hold_nodes(cluster: Cluster) -> None:
    cluster.ok("apply", "-f", "-", input=nodepool("budget", disruption={
        "consolidationPolicy": "WhenEmptyOrUnderutilized", "consolidateAfter": "0s", "budgets": [{"nodes": "0"}]},
        labels={"version": "v1"}))
    cluster.ok("apply", "-f", "-", input=deployment("budget", "budget", 4))
    cluster.ok("apply", "-f", "-", input=deployment("pinned", "budget", 1, annotations={
        "karpenter.sh/do-not-disrupt": "true"}, nodeSelector={"karpenter.sh/nodepool": "budget"}))
    # five 500m pods: two nodes (three to a t3.medium), so one of them holds only `budget` pods
    wait_for(lambda: running(cluster, "budget", 4) and running(cluster, "pinned", 1), "pods Running", 60)
    cluster.ok("scale", "deployment", "budget", "--replicas", "0")
    held = {n["metadata"]["name"] for n in nodes(cluster, "budget")}
    time.sleep(3)  # many disruption passes: a budget of 0 nodes blocks every one
    assert {n["metadata"]["name"] for n in nodes(cluster, "budget")} == held
    assert any(e["reason"] == "DisruptionBlocked" and e["involvedObject"]["name"] == "budget"
               for e in karpenter_events(cluster))
    # budgets opened: whatever is empty goes, but the node running the do-not-disrupt pod stays even drifted
    pinned_node = running(cluster, "pinned", 1)[0]["spec"]["nodeName"]
    cluster.ok("patch", "nodepool", "budget", "--type", "merge", "-p", json.dumps(
        {"spec": {"disruption": {"budgets": [{"nodes": "100%"}]},
                  "template": {"metadata": {"labels": {"version": "v2"}}}}}))
    wait_for(lambda: {n["metadata"]["name"] for n in nodes(cluster, "budget")} == {pinned_node},
             "only the do-not-disrupt node left", 40)
    claim = wait_for(lambda: [c for c in claims(cluster, "budget") if condition(c, "Drifted") == "True"],
                     "Drifted condition", 20)[0]
    time.sleep(3)
    assert claim["status"]["nodeName"] == pinned_node and nodes(cluster, "budget")
    cleanup(cluster, "budget", "budget")
    cluster.ok("delete", "deployment", "pinned")


def test_spot_interruption_moves_pods_to_a_new_node(cluster: Cluster) -> None:
    spot = [{"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["spot"]}]
    cluster.ok("apply", "-f", "-", input=nodepool("spot", requirements=spot))
    cluster.ok("apply", "-f", "-", input=deployment("spot", "spot", 2))
    wait_for(lambda: running(cluster, "spot", 2), "2 pods Running on spot", 60)
    first = nodes(cluster, "spot")
    assert {n["metadata"]["labels"]["karpenter.sh/capacity-type"] for n in first} == {"spot"}
    for node in first:
        cluster.ok("annotate", "node", node["metadata"]["name"], "karpenter.ultraplane.io/simulate-interruption=true")
    old = {n["metadata"]["name"] for n in first}

    def moved() -> bool:
        now = {n["metadata"]["name"] for n in nodes(cluster, "spot")}
        pods_now = running(cluster, "spot", 2) or []
        return bool(now) and not now & old and len(pods_now) == 2 and all(
            p["spec"]["nodeName"] in now for p in pods_now)

    wait_for(moved, "pods rescheduled onto a new spot node", 60)
    assert any(e["reason"] == "SpotInterrupted" for e in karpenter_events(cluster))
    cleanup(cluster, "spot", "spot")
