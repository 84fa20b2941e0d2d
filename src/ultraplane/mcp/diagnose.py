"""`diagnose`: gather the evidence about a pod, workload or node, match runbooks by rules (rules.py), and
name the likely cause with the fix and the evidence cited.

A pod's evidence: status, conditions, each container's state and last state, events, the failing containers'
logs (current and previous instance), the node, the owner chain, the Deployment's ReplicaSet revisions and
what the latest changed, and the ConfigMaps/Secrets it reads with when they changed. A workload's verdict is
the finding most of its unhealthy pods share (newest ReplicaSet first); a node's comes from its conditions,
cordon and the PodDisruptionBudgets that hold its pods.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ultraplane.client.http import ApiError
from ultraplane.mcp import runbooks
from ultraplane.mcp.evidence import (
    LOG_LINES,
    Cluster,
    config_changes,
    event_line,
    rollout_history,
    template_changes,
)
from ultraplane.mcp.rules import PULL_REASONS, RANK, Finding, pod_rules

Obj = dict[str, Any]
WORKLOAD_KINDS = ("Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "Job")


async def pod_evidence(cluster: Cluster, pod: Obj) -> Obj:
    meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
    namespace = meta.get("namespace") or "default"
    containers = []
    failing: list[tuple[str, bool]] = []  # (container, has a previous instance)
    # init containers first: one that fails holds the whole pod back (PodInitializing)
    init = [(c, True) for c in status.get("initContainerStatuses") or []]
    for c, is_init in [*init, *((c, False) for c in status.get("containerStatuses") or [])]:
        state, last = c.get("state") or {}, c.get("lastState") or {}
        entry = {"name": c["name"], "image": c.get("image"), "ready": c.get("ready"),
                 "restartCount": c.get("restartCount", 0), "state": state, "lastState": last}
        if is_init:
            entry["init"] = True
            if (state.get("terminated") or {}).get("reason") == "Completed":
                continue  # done: nothing to diagnose
        containers.append(entry)
        waiting = (state.get("waiting") or {}).get("reason")
        if c.get("restartCount") or (waiting and waiting not in ("ContainerCreating", "PodInitializing",
                                                                 *PULL_REASONS)) or \
                (state.get("terminated") or {}).get("exitCode"):
            failing.append((c["name"], bool(last.get("terminated"))))
    events, node, owners_found, configs = await asyncio.gather(
        cluster.events_for(pod), _node(cluster, spec.get("nodeName")), cluster.owner_chain(pod),
        config_changes(cluster, pod))
    logs: Obj = {}
    for name, has_previous in failing[:3]:
        entry: Obj = {}
        for previous in (False, True) if has_previous else (False,):
            try:
                text = await cluster.logs(namespace, meta["name"], name, previous, LOG_LINES)
            except (ApiError, ConnectionError) as exc:
                text = f"(logs unavailable: {exc})"
            entry["previous" if previous else "current"] = text.splitlines()[-LOG_LINES:]
        logs[name] = entry
    rollout: Obj = {}
    deployment = next((o for o in owners_found if o.get("kind") == "Deployment"), None)
    if deployment is not None:
        rollout = await _rollout(cluster, deployment)
    return {
        "pod": {"name": meta["name"], "namespace": namespace, "phase": status.get("phase"),
                "node": spec.get("nodeName"), "startTime": status.get("startTime"),
                "conditions": [{k: c.get(k) for k in ("type", "status", "reason", "message") if c.get(k)}
                               for c in status.get("conditions") or []],
                "requests": {c["name"]: (c.get("resources") or {}).get("requests") or {}
                             for c in spec.get("containers") or []},
                "nodeSelector": spec.get("nodeSelector"), "tolerations": spec.get("tolerations"),
                "restartPolicy": spec.get("restartPolicy", "Always")},
        "containers": containers,
        "events": [event_line(e) for e in events],
        "logs": logs,
        "node": node,
        "owners": [f"{o.get('kind')}/{o['metadata']['name']}" for o in owners_found],
        "rollout": rollout,
        "config": configs,
    }


async def _node(cluster: Cluster, name: str | None) -> Obj | None:
    if not name:
        return None
    try:
        node = await cluster.get("Node", name)
    except ApiError as exc:
        return {"name": name, "error": exc.message}
    return node_summary(node)


def node_summary(node: Obj) -> Obj:
    status = node.get("status") or {}
    conditions = {c["type"]: c for c in status.get("conditions") or []}
    ready = conditions.get("Ready") or {}
    return {"name": node["metadata"]["name"], "ready": ready.get("status", "Unknown"),
            "readyReason": ready.get("reason"), "readyMessage": ready.get("message"),
            "lastHeartbeat": ready.get("lastHeartbeatTime"),
            "pressure": [t for t, c in conditions.items() if t.endswith("Pressure") and c.get("status") == "True"],
            "unschedulable": bool((node.get("spec") or {}).get("unschedulable")),
            "taints": [f"{t.get('key')}={t.get('value', '')}:{t.get('effect')}"
                       for t in (node.get("spec") or {}).get("taints") or []],
            "allocatable": status.get("allocatable") or {}}


async def _rollout(cluster: Cluster, deployment: Obj) -> Obj:
    replica_sets = await cluster.replica_sets_of(deployment)
    history = rollout_history(replica_sets)
    changes = template_changes(replica_sets[-2], replica_sets[-1]) if len(replica_sets) >= 2 else []
    return {"deployment": deployment["metadata"]["name"], "revisions": history[-5:],
            "latestChanges": changes}


def unhealthy(pod: Obj) -> bool:
    status = pod.get("status") or {}
    if status.get("phase") in ("Pending", "Failed", "Unknown"):
        return True
    return any(not c.get("ready") or c.get("restartCount") for c in status.get("containerStatuses") or [])


# ------------------------------------------------------------------------------------------------ entry point
async def diagnose(cluster: Cluster, kind: str, name: str, namespace: str | None) -> Obj:
    rtype = await cluster.resolve(kind)
    obj = await cluster.get(rtype.kind, name, namespace)
    if rtype.kind == "Pod":
        ev = await pod_evidence(cluster, obj)
        return _verdict(f"Pod {ev['pod']['namespace']}/{name}", pod_rules(ev), ev)
    if rtype.kind == "Node":
        return await _diagnose_node(cluster, obj)
    if rtype.kind in WORKLOAD_KINDS:
        return await _diagnose_workload(cluster, obj)
    raise ValueError(f'diagnose supports pods, nodes and workloads ({", ".join(WORKLOAD_KINDS)}), not "{kind}"')


def _verdict(target: str, findings: list[Finding], evidence: Obj, healthy_note: str = "") -> Obj:
    if not findings:
        return {"target": target, "likelyCause": None,
                "summary": healthy_note or "no rule matched: nothing looks wrong in the evidence gathered",
                "evidence": evidence}
    top = findings[0]
    return {"target": target, "likelyCause": top.cause, "fix": top.fix, "runbook": top.runbook,
            "runbookTitle": runbooks.corpus()[top.runbook].title, "evidenceCited": top.evidence,
            "findings": [f.as_dict() for f in findings], "evidence": evidence}


async def _diagnose_workload(cluster: Cluster, obj: Obj) -> Obj:
    kind, meta = obj["kind"], obj["metadata"]
    namespace = meta.get("namespace") or "default"
    target = f"{kind} {namespace}/{meta['name']}"
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    workload: Obj = {"conditions": [{k: c.get(k) for k in ("type", "status", "reason", "message") if c.get(k)}
                                    for c in status.get("conditions") or []],
                     "replicas": spec.get("replicas"), "readyReplicas": status.get("readyReplicas", 0),
                     "events": [event_line(e) for e in await cluster.events_for(obj, 10)]}
    findings: list[Finding] = []
    if kind == "Deployment":
        workload["rollout"] = await _rollout(cluster, obj)
    if kind == "Job":
        failed = next((c for c in status.get("conditions") or []
                       if c.get("type") == "Failed" and c.get("status") == "True"), None)
        if failed:
            findings.append(Finding(
                "job-backoff-failed", f"the Job failed: {failed.get('reason')} ({failed.get('message')})",
                "fix the command from the failed pods' logs, then recreate the Job; raise backoffLimit only for "
                "transient failures", [f"{target}: condition Failed=True reason {failed.get('reason')}"]))
    pods = await cluster.pods_selected(namespace, spec.get("selector"))
    if kind == "Deployment" and workload["rollout"].get("revisions"):
        newest = workload["rollout"]["revisions"][-1]["replicaSet"]
        pods.sort(key=lambda p: not any(r.get("name") == newest for r in p["metadata"].get("ownerReferences") or []))
    bad = [p for p in pods if unhealthy(p)][:3]
    workload["pods"] = {"total": len(pods), "unhealthy": [p["metadata"]["name"] for p in pods if unhealthy(p)]}
    pod_findings: list[Finding] = []
    pod_evidence_list = []
    for pod in bad:
        ev = await pod_evidence(cluster, pod)
        pod_evidence_list.append(ev)
        pod_findings.extend(pod_rules(ev))
    # the cause most pods share leads; ties go to the more specific rule
    counts: dict[str, int] = {}
    for f in pod_findings:
        counts[f.runbook] = counts.get(f.runbook, 0) + 1
    pod_findings.sort(key=lambda f: (-counts[f.runbook], RANK.get(f.runbook, 99)))
    seen: set[str] = set()
    for f in pod_findings:
        if f.runbook not in seen:
            seen.add(f.runbook)
            f.evidence.insert(0, f"{counts[f.runbook]} of {len(bad)} unhealthy pod(s) examined show this")
            findings.append(f)
    if kind == "Job" and len(findings) > 1:
        findings[0].cause += f"; the pods' failure: {findings[1].cause}"
    return _verdict(target, findings, {"workload": workload, "pods": pod_evidence_list},
                    f"all {len(pods)} pods are healthy")


async def _diagnose_node(cluster: Cluster, node: Obj) -> Obj:
    name = node["metadata"]["name"]
    summary = node_summary(node)
    pods = await cluster.items("pods", None, fieldSelector=f"spec.nodeName={name}")
    events = [event_line(e) for e in await cluster.events_for(node, 15)]
    findings: list[Finding] = []
    if summary["ready"] != "True":
        findings.append(Finding(
            "node-notready", f"node {name} is NotReady: {summary.get('readyReason')}: {summary.get('readyMessage')}",
            "restart the kubelet/runtime or the machine; replace the node if it does not come back",
            [f"node {name}: Ready={summary['ready']} (last heartbeat {summary.get('lastHeartbeat')})",
             *[f"taint {t}" for t in summary["taints"]]]))
    for pressure in summary["pressure"]:
        findings.append(Finding("node-notready", f"node {name} reports {pressure}",
                                "free the resource on the node or move pods away", [f"condition {pressure}=True"]))
    if summary["unschedulable"]:
        blocking = await _blocking_budgets(cluster, pods)
        if blocking:
            findings.append(Finding(
                "pdb-blocked-drain", f"node {name} is cordoned and its drain is blocked by "
                                     f"PodDisruptionBudget(s) allowing no disruption: {', '.join(blocking)}",
                "scale the protected workloads up or relax the budgets (maxUnavailable: 1), then drain again",
                [f"node {name}: spec.unschedulable=true", *[f"PodDisruptionBudget {b}: disruptionsAllowed=0"
                                                           for b in blocking]]))
    evidence = {"node": summary, "events": events,
                "pods": [{"name": p["metadata"]["name"], "namespace": p["metadata"].get("namespace"),
                          "phase": (p.get("status") or {}).get("phase")} for p in pods[:50]]}
    return _verdict(f"Node {name}", findings, evidence, f"node {name} is Ready with no pressure")


async def _blocking_budgets(cluster: Cluster, pods: list[Obj]) -> list[str]:
    namespaces = {p["metadata"].get("namespace") for p in pods}
    blocking = []
    for namespace in namespaces:
        for pdb in await cluster.items("poddisruptionbudgets", namespace):
            if (pdb.get("status") or {}).get("disruptionsAllowed", 1) != 0:
                continue
            labels = ((pdb.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
            if any(p["metadata"].get("namespace") == namespace and labels and
                   all((p["metadata"].get("labels") or {}).get(k) == v for k, v in labels.items()) for p in pods):
                blocking.append(f"{namespace}/{pdb['metadata']['name']}")
    return blocking
