"""The DaemonSet controller: one pod per eligible node, pinned by node affinity for the scheduler."""

from __future__ import annotations

import json
from typing import Any

from tests.apiserver.conftest import Cluster
from tests.controllers.workloads import Running, container, eventually, kget, mark
from ultraplane.controllers.daemonset import DaemonSetController, target_node

Obj = dict[str, Any]


def node(cluster: Cluster, name: str, labels: dict[str, str] | None = None, taints: list[Obj] | None = None) -> None:
    cluster.ok("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
        "spec": {"taints": taints or []}}))


def daemonset(name: str, **template_spec: Any) -> str:
    return json.dumps({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": name},
                       "spec": {"selector": {"matchLabels": {"app": name}},
                                "template": {"metadata": {"labels": {"app": name}},
                                             "spec": {"containers": [container()], **template_spec}}}})


def placement(cluster: Cluster, ns: str, app: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for p in kget(cluster, "pods", "-n", ns, "-l", f"app={app}")["items"]:
        if not p["metadata"].get("deletionTimestamp"):
            out.setdefault(target_node(p) or "", []).append(p["metadata"]["name"])
    return out


def test_one_pod_per_eligible_node(cluster: Cluster) -> None:
    ns = "ds"
    cluster.ok("create", "namespace", ns)
    node(cluster, "ds-n1")
    node(cluster, "ds-n2", taints=[{"key": "dedicated", "value": "db", "effect": "NoSchedule"}])
    node(cluster, "ds-n3", labels={"disk": "ssd"})
    node(cluster, "ds-n4", taints=[{"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}])
    cluster.ok("apply", "-n", ns, "-f", "-", input=daemonset("agent"))
    cluster.ok("apply", "-n", ns, "-f", "-", input=daemonset("ssd", nodeSelector={"disk": "ssd"}))
    with Running(cluster, [DaemonSetController], kubelet_namespaces=(ns,)):
        eventually(lambda: sorted(placement(cluster, ns, "agent")) == ["ds-n1", "ds-n3", "ds-n4"])
        eventually(lambda: sorted(placement(cluster, ns, "ssd")) == ["ds-n3"])
        assert all(len(v) == 1 for v in placement(cluster, ns, "agent").values())
        pod = kget(cluster, "pods", "-n", ns, "-l", "app=ssd")["items"][0]
        terms = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
            "nodeSelectorTerms"]
        assert terms == [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["ds-n3"]}]}]
        assert "nodeName" not in pod["spec"]  # the scheduler binds it
        tolerations = {(t["key"], t["effect"]) for t in pod["spec"]["tolerations"]}
        assert {("node.kubernetes.io/not-ready", "NoExecute"), ("node.kubernetes.io/unreachable", "NoExecute"),
                ("node.kubernetes.io/disk-pressure", "NoSchedule"), ("node.kubernetes.io/memory-pressure",
                                                                     "NoSchedule"),
                ("node.kubernetes.io/pid-pressure", "NoSchedule"),
                ("node.kubernetes.io/unschedulable", "NoSchedule")} <= tolerations
        labels = pod["metadata"]["labels"]
        assert labels["pod-template-generation"] == "1" and labels["controller-revision-hash"]
        assert pod["metadata"]["generateName"] == "ssd-"

        status = eventually(lambda: (s := kget(cluster, "ds", "agent", "-n", ns)["status"]).get("numberReady") == 3
                            and s)
        assert {k: status.get(k) for k in ("desiredNumberScheduled", "currentNumberScheduled",
                                           "updatedNumberScheduled", "numberAvailable", "numberMisscheduled")} == {
            "desiredNumberScheduled": 3, "currentNumberScheduled": 3, "updatedNumberScheduled": 3,
            "numberAvailable": 3, "numberMisscheduled": 0}

        # the taint goes away: the node gets its pod; a node goes away: so does its pod
        cluster.ok("taint", "node", "ds-n2", "dedicated-")
        eventually(lambda: sorted(placement(cluster, ns, "agent")) == ["ds-n1", "ds-n2", "ds-n3", "ds-n4"])
        cluster.ok("delete", "node", "ds-n1")
        eventually(lambda: sorted(placement(cluster, ns, "agent")) == ["ds-n2", "ds-n3", "ds-n4"])

        # a rolling update replaces every pod with one of the new revision
        old = {p for v in placement(cluster, ns, "agent").values() for p in v}
        cluster.ok("set", "image", "ds/agent", "-n", ns, "c=busybox:1.37")
        out = cluster.ok("rollout", "status", "ds/agent", "-n", ns, "--timeout=30s")
        assert 'daemon set "agent" successfully rolled out' in out
        new = placement(cluster, ns, "agent")
        assert sorted(new) == ["ds-n2", "ds-n3", "ds-n4"] and all(len(v) == 1 for v in new.values())
        assert not old & {p for v in new.values() for p in v}
        revisions = [r for r in kget(cluster, "controllerrevisions", "-n", ns)["items"]
                     if r["metadata"]["ownerReferences"][0]["name"] == "agent"]
        assert sorted(r["revision"] for r in revisions) == [1, 2]

        # kubectl rollout undo (client-side: it applies revision 1's template patch): revision 1 becomes 3
        cluster.ok("rollout", "undo", "ds/agent", "-n", ns)
        cluster.ok("rollout", "status", "ds/agent", "-n", ns, "--timeout=30s")
        assert kget(cluster, "ds", "agent", "-n", ns)["spec"]["template"]["spec"]["containers"][0]["image"] == \
            "busybox:1.36"
        eventually(lambda: sorted(
            r["revision"] for r in kget(cluster, "controllerrevisions", "-n", ns)["items"]
            if r["metadata"]["ownerReferences"][0]["name"] == "agent") == [2, 3])
        assert all(p["spec"]["containers"][0]["image"] == "busybox:1.36"
                   for p in kget(cluster, "pods", "-n", ns, "-l", "app=agent")["items"])


def test_surge_update_keeps_every_node_served(cluster: Cluster) -> None:
    ns = "ds-surge"
    cluster.ok("create", "namespace", ns)
    node(cluster, "surge-n1", labels={"pool": "surge"})
    node(cluster, "surge-n2", labels={"pool": "surge"})
    manifest = json.loads(daemonset("edge", nodeSelector={"pool": "surge"}))
    manifest["spec"]["updateStrategy"] = {"type": "RollingUpdate",
                                          "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    cluster.ok("apply", "-n", ns, "-f", "-", input=json.dumps(manifest))
    with Running(cluster, [DaemonSetController], kubelet_namespaces=(ns,)) as running:
        cluster.ok("rollout", "status", "ds/edge", "-n", ns, "--timeout=30s")
        running.ready_delay = 0.5
        cluster.ok("set", "image", "ds/edge", "-n", ns, "c=busybox:1.37")
        seen_both = False
        for _ in range(200):
            pods = [p for p in kget(cluster, "pods", "-n", ns, "-l", "app=edge")["items"]
                    if not p["metadata"].get("deletionTimestamp")]
            ready_nodes = {target_node(p) for p in pods
                           if any(c["type"] == "Ready" and c["status"] == "True"
                                  for c in (p.get("status") or {}).get("conditions") or [])}
            # maxUnavailable 0: every node keeps a ready pod while its replacement starts beside it
            assert ready_nodes == {"surge-n1", "surge-n2"}, pods
            per_node = [target_node(p) for p in pods]
            seen_both = seen_both or len(per_node) > len(set(per_node))
            images = {p["spec"]["containers"][0]["image"] for p in pods}
            if images == {"busybox:1.37"} and len(pods) == 2:
                break
        else:
            raise AssertionError("the surge update never finished")
        assert seen_both  # an old and a new pod side by side on one node at some point


def test_failed_daemon_pod_is_replaced(cluster: Cluster) -> None:
    ns = "ds-failed"
    cluster.ok("create", "namespace", ns)
    node(cluster, "fail-n1", labels={"pool": "fail"})
    cluster.ok("apply", "-n", ns, "-f", "-", input=daemonset("probe", nodeSelector={"pool": "fail"}))
    with Running(cluster, [DaemonSetController], kubelet_namespaces=(ns,)) as running:
        assert running.client is not None
        [first] = eventually(lambda: kget(cluster, "pods", "-n", ns, "-l", "app=probe")["items"])
        running.call(mark(running.client, ns, first["metadata"]["name"], "Failed", exit_code=1))
        replacement = eventually(lambda: [p for p in kget(cluster, "pods", "-n", ns, "-l", "app=probe")["items"]
                                          if p["metadata"]["uid"] != first["metadata"]["uid"]])
        assert target_node(replacement[0]) == "fail-n1"
        events = kget(cluster, "events", "-n", ns, "--field-selector", "involvedObject.name=probe")["items"]
        assert any(e["reason"] == "FailedDaemonPod" and e["message"] ==
                   f"Found failed daemon pod {ns}/{first['metadata']['name']} on node fail-n1, will try to kill it"
                   for e in events)
