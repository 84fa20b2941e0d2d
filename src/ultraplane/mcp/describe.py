"""Describe-like summaries: kubectl describe's essentials as short text (state, conditions, containers,
rollout, events), for any kind; pods, workloads and nodes get their specific sections."""

from __future__ import annotations

from typing import Any

from ultraplane.mcp.diagnose import node_summary
from ultraplane.mcp.evidence import Cluster, event_line, rollout_history
from ultraplane.mcp.views import age

Obj = dict[str, Any]


def _conditions(status: Obj) -> list[str]:
    return [f"  {c.get('type')}={c.get('status')}" + (f" ({c['reason']})" if c.get("reason") else "") +
            (f": {c['message']}" if c.get("message") else "") for c in status.get("conditions") or []]


def _state(state: Obj) -> str:
    if not state:
        return "-"
    what, detail = next(iter(state.items()))
    parts = [what.capitalize()]
    for key in ("reason", "exitCode", "message", "startedAt", "finishedAt"):
        if detail.get(key) not in (None, ""):
            parts.append(f"{key}={detail[key]}")
    return " ".join(parts)


async def describe(cluster: Cluster, kind: str, name: str, namespace: str | None) -> str:
    rtype = await cluster.resolve(kind)
    obj = await cluster.get(rtype.kind, name, namespace)
    meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    lines = [f"Name:         {meta['name']}"]
    if meta.get("namespace"):
        lines.append(f"Namespace:    {meta['namespace']}")
    lines.append(f"Kind:         {rtype.kind} ({rtype.api_version})")
    lines.append(f"Created:      {meta.get('creationTimestamp')} ({age(meta.get('creationTimestamp'))} ago)")
    if meta.get("labels"):
        lines.append("Labels:       " + ", ".join(f"{k}={v}" for k, v in meta["labels"].items()))
    owners = [f"{r.get('kind')}/{r.get('name')}" for r in meta.get("ownerReferences") or []]
    if owners:
        lines.append("Controlled by: " + ", ".join(owners))
    if rtype.kind == "Pod":
        lines += [f"Node:         {spec.get('nodeName') or '<none>'}", f"Status:       {status.get('phase')}",
                  f"IP:           {status.get('podIP') or '<none>'}", "Containers:"]
        statuses = {c["name"]: c for c in status.get("containerStatuses") or []}
        for c in spec.get("containers") or []:
            st = statuses.get(c["name"], {})
            lines += [f"  {c['name']}:", f"    Image:         {c.get('image')}"]
            if c.get("command") or c.get("args"):
                lines.append(f"    Command:       {' '.join(map(str, (c.get('command') or []) + (c.get('args') or [])))}")
            if c.get("resources"):
                lines.append(f"    Resources:     {c['resources']}")
            lines += [f"    State:         {_state(st.get('state') or {})}",
                      f"    Last State:    {_state(st.get('lastState') or {})}",
                      f"    Ready:         {st.get('ready')}", f"    Restart Count: {st.get('restartCount', 0)}"]
    elif rtype.kind == "Node":
        summary = node_summary(obj)
        lines += [f"Ready:        {summary['ready']}", f"Unschedulable: {summary['unschedulable']}",
                  "Taints:       " + (", ".join(summary["taints"]) or "<none>"),
                  f"Allocatable:  {summary['allocatable']}"]
        pods = await cluster.items("pods", None, fieldSelector=f"spec.nodeName={meta['name']}")
        lines.append(f"Pods:         {len(pods)}")
    elif "replicas" in spec or rtype.kind in ("DaemonSet", "Job"):
        for key in ("replicas", "readyReplicas", "updatedReplicas", "availableReplicas", "unavailableReplicas",
                    "active", "succeeded", "failed", "numberReady", "desiredNumberScheduled"):
            if key in spec or key in status:
                lines.append(f"{key + ':':<22}{spec.get(key, status.get(key))}")
        template = ((spec.get("template") or {}).get("spec") or {}).get("containers") or []
        lines += [f"Container {c['name']}: image {c.get('image')}" for c in template]
        if rtype.kind == "Deployment":
            lines.append("Rollout history:")
            for rev in rollout_history(await cluster.replica_sets_of(obj)):
                lines.append(f"  revision {rev['revision']}: {rev['replicaSet']} {rev['images']} "
                             f"ready {rev['ready']}/{rev['replicas']} (created {rev['created']})")
    if status.get("conditions"):
        lines += ["Conditions:", *_conditions(status)]
    events = await cluster.events_for(obj, 15)
    lines.append("Events:" if events else "Events:       <none>")
    lines += [f"  {event_line(e)}" for e in events]
    return "\n".join(lines)
