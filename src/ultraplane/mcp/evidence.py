"""Reading the cluster for the tools: objects by kind, events, logs, owners, rollouts and config references."""

from __future__ import annotations

import asyncio
from typing import Any

from ultraplane.client.http import ApiError
from ultraplane.mcp.kube import CallerClient, Discovery, ResourceType
from ultraplane.mcp.views import parse_time

Obj = dict[str, Any]
REVISION = "deployment.kubernetes.io/revision"
LOG_LINES = 20  # lines of each failing container's logs quoted as evidence


class Cluster:
    def __init__(self, client: CallerClient) -> None:
        self.client = client
        self.discovery = Discovery(client)

    async def resolve(self, kind: str) -> ResourceType:
        return await self.discovery.resolve(kind)

    async def get(self, kind: str, name: str, namespace: str | None = None) -> Obj:
        rtype = await self.resolve(kind)
        obj = await self.client.get(rtype.path(namespace or "default" if rtype.namespaced else None, name))
        obj.setdefault("kind", rtype.kind)
        obj.setdefault("apiVersion", rtype.api_version)
        return obj

    async def items(self, kind: str, namespace: str | None = None, **params: Any) -> list[Obj]:
        rtype = await self.resolve(kind)
        listed = await self.client.list(rtype.path(namespace if rtype.namespaced else None), params or None)
        items = listed.get("items") or []
        for item in items:
            item.setdefault("kind", rtype.kind)
        return items

    async def events_for(self, obj: Obj, limit: int = 30) -> list[Obj]:
        meta = obj.get("metadata") or {}
        selector = f"involvedObject.name={meta.get('name')},involvedObject.kind={obj.get('kind')}"
        if meta.get("uid"):
            selector += f",involvedObject.uid={meta['uid']}"
        namespace = meta.get("namespace") or "default"
        try:
            events = await self.items("events", namespace, fieldSelector=selector)
        except ApiError:
            return []
        return sorted(events, key=_event_time)[-limit:]

    async def logs(self, namespace: str, pod: str, container: str | None = None, previous: bool = False,
                   tail_lines: int | None = None) -> str:
        params: Obj = {"container": container, "previous": previous or None, "tailLines": tail_lines}
        return await self.client.text(f"/api/v1/namespaces/{namespace}/pods/{pod}/log", params)

    async def owner_chain(self, obj: Obj) -> list[Obj]:
        """The controllers above `obj` (ReplicaSet, then its Deployment, ...), nearest first."""
        chain: list[Obj] = []
        current = obj
        for _ in range(4):
            refs = [r for r in (current.get("metadata") or {}).get("ownerReferences") or [] if r.get("controller")]
            if not refs:
                break
            ref = refs[0]
            try:
                current = await self.get(ref["kind"], ref["name"], (obj.get("metadata") or {}).get("namespace"))
            except (ApiError, LookupError):
                break
            chain.append(current)
        return chain

    async def replica_sets_of(self, deployment: Obj) -> list[Obj]:
        meta = deployment["metadata"]
        owned = [rs for rs in await self.items("replicasets", meta.get("namespace"))
                 if any(r.get("uid") == meta.get("uid") for r in rs["metadata"].get("ownerReferences") or [])]
        return sorted(owned, key=lambda rs: int(rs["metadata"].get("annotations", {}).get(REVISION, "0") or 0))

    async def pods_selected(self, namespace: str, selector: Obj | None) -> list[Obj]:
        expr = label_selector(selector)
        if not expr:  # an empty selector selects everything: not what a workload means
            return []
        return await self.items("pods", namespace, labelSelector=expr)


def label_selector(selector: Obj | None) -> str:
    """A LabelSelector object as the query string: matchLabels and matchExpressions."""
    parts = [f"{k}={v}" for k, v in ((selector or {}).get("matchLabels") or {}).items()]
    for expr in (selector or {}).get("matchExpressions") or []:
        key, op, values = expr.get("key", ""), expr.get("operator", ""), expr.get("values") or []
        if op == "In":
            parts.append(f"{key} in ({','.join(values)})")
        elif op == "NotIn":
            parts.append(f"{key} notin ({','.join(values)})")
        elif op == "Exists":
            parts.append(key)
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
    return ",".join(parts)


def _event_time(event: Obj) -> str:
    return str(event.get("lastTimestamp") or event.get("eventTime") or
               (event.get("metadata") or {}).get("creationTimestamp") or "")


def event_line(event: Obj) -> str:
    count = event.get("count") or (event.get("series") or {}).get("count") or 1
    times = f" (x{count})" if count and int(count) > 1 else ""
    return f"{event.get('type', 'Normal')} {event.get('reason', '')}: {event.get('message', '')}{times}"


def rollout_history(replica_sets: list[Obj]) -> list[Obj]:
    """Each revision's ReplicaSet, when it was created, its images and readiness, oldest first."""
    out = []
    for rs in replica_sets:
        meta, spec, status = rs["metadata"], rs.get("spec") or {}, rs.get("status") or {}
        containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or []
        out.append({"revision": int((meta.get("annotations") or {}).get(REVISION, "0") or 0),
                    "replicaSet": meta["name"], "created": meta.get("creationTimestamp"),
                    "images": {c["name"]: c.get("image") for c in containers},
                    "replicas": spec.get("replicas", 0), "ready": status.get("readyReplicas", 0)})
    return out


def template_changes(old: Obj, new: Obj) -> list[str]:
    """What changed in the pod template between two ReplicaSets: per container image, command, args, env,
    resources, and the template's volumes (ConfigMaps, Secrets)."""
    def spec_of(rs: Obj) -> Obj:
        return ((rs.get("spec") or {}).get("template") or {}).get("spec") or {}

    before, after = spec_of(old), spec_of(new)
    changes: list[str] = []
    old_containers = {c["name"]: c for c in before.get("containers") or []}
    for c in after.get("containers") or []:
        prior = old_containers.get(c["name"])
        if prior is None:
            changes.append(f"container {c['name']} added")
            continue
        for field in ("image", "command", "args", "env", "envFrom", "resources", "livenessProbe", "readinessProbe"):
            if prior.get(field) != c.get(field):
                changes.append(f"container {c['name']} {field}: {_short(prior.get(field))} -> {_short(c.get(field))}")
    if before.get("volumes") != after.get("volumes"):
        changes.append("volumes changed")
    return changes


def _short(value: Any) -> str:
    text = str(value) if value is not None else "(none)"
    return text if len(text) <= 160 else text[:157] + "..."


def config_references(pod: Obj) -> list[tuple[str, str]]:
    """(kind, name) of the ConfigMaps and Secrets the pod reads, through env, envFrom and volumes."""
    spec = pod.get("spec") or {}
    refs: set[tuple[str, str]] = set()
    for c in (spec.get("initContainers") or []) + (spec.get("containers") or []):
        for env in c.get("env") or []:
            source = env.get("valueFrom") or {}
            if "configMapKeyRef" in source:
                refs.add(("ConfigMap", source["configMapKeyRef"].get("name", "")))
            if "secretKeyRef" in source:
                refs.add(("Secret", source["secretKeyRef"].get("name", "")))
        for env_from in c.get("envFrom") or []:
            if "configMapRef" in env_from:
                refs.add(("ConfigMap", env_from["configMapRef"].get("name", "")))
            if "secretRef" in env_from:
                refs.add(("Secret", env_from["secretRef"].get("name", "")))
    for volume in spec.get("volumes") or []:
        if "configMap" in volume:
            refs.add(("ConfigMap", volume["configMap"].get("name", "")))
        if "secret" in volume:
            refs.add(("Secret", volume["secret"].get("secretName", "")))
    return sorted(refs)


async def config_changes(cluster: Cluster, pod: Obj) -> list[Obj]:
    """Each referenced ConfigMap/Secret: missing, or when it last changed relative to the pod's start."""
    namespace = pod["metadata"].get("namespace") or "default"
    started = parse_time((pod.get("status") or {}).get("startTime"))

    async def one(kind: str, name: str) -> Obj:
        try:
            obj = await cluster.get(kind, name, namespace)
        except ApiError as exc:
            return {"kind": kind, "name": name, "missing": exc.code == 404, "error": exc.message}
        meta = obj["metadata"]
        stamps = [meta.get("creationTimestamp")] + [m.get("time") for m in meta.get("managedFields") or []]
        changed = max((s for s in stamps if s), default=None)
        when = parse_time(changed)
        return {"kind": kind, "name": name, "lastChanged": changed,
                "changedAfterPodStart": bool(started and when and when > started)}

    return list(await asyncio.gather(*(one(k, n) for k, n in config_references(pod))))
