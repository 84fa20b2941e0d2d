"""The write tools: apply, patch, delete, scale, rollout_restart; each a dry run first (writes.py)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

import orjson
import yaml
from mcp.server.mcpserver import MCPServer
from pydantic import Field

from ultraplane.mcp.kube import UnknownKind
from ultraplane.mcp.toolenv import WRITE, ToolEnv, guarded
from ultraplane.mcp.writes import (
    Writer,
    WriteRefused,
    apply_request,
    delete_request,
    patch_request,
    restart_request,
    scale_request,
)


def add_write_tools(server: MCPServer[Any], env: ToolEnv, writer: Writer) -> None:
    cluster, out = env.cluster, env.out

    def secret_type(rtype_plural: str, group: str) -> bool:
        return rtype_plural == "secrets" and not group

    async def write(verb: str, confirm: str | None, build: Callable[[], Awaitable[Any]]) -> str:
        writer.check_allowed()  # before touching anything: no dry run for a read-only server either
        request = await build()
        if confirm:
            plan = writer.plans.get(confirm)
            if plan is not None and verb != "rollout-restart" and plan.request.canonical() != request.canonical():
                raise WriteRefused("the arguments differ from the dry run that produced this hash; nothing was "
                                   "changed")
            return out(await writer.confirm(confirm, verb))
        return out(await writer.plan(request))

    @server.tool(annotations=WRITE)
    async def apply(manifest: Annotated[str, Field(description="one object as YAML or JSON")],
                    force: bool = False, confirm: str | None = None) -> str:
        """Server-side apply of one object. Without `confirm`: a dry run (nothing changes) returning the diff and
        its hash; call again with confirm=<hash> to apply exactly that. Needs --allow-write."""
        async def build() -> Any:
            try:
                obj = yaml.safe_load(manifest)
            except yaml.YAMLError as exc:
                raise ValueError(f"manifest is not valid YAML or JSON: {exc}") from exc
            if not isinstance(obj, dict) or not obj.get("kind") or not obj.get("apiVersion") or \
                    not (obj.get("metadata") or {}).get("name"):
                raise ValueError("manifest must be one object with apiVersion, kind and metadata.name")
            try:
                rtype = await cluster.resolve(obj["kind"] + ("." + obj["apiVersion"].split("/")[0]
                                                             if "/" in obj["apiVersion"] else ""))
            except UnknownKind:
                rtype = None
            if rtype is None or rtype.kind != obj["kind"]:  # kubectl's RESTMapper error
                raise ValueError(f'no matches for kind "{obj["kind"]}" in version "{obj["apiVersion"]}": ensure '
                                 "CRDs are installed first")
            namespace = (obj["metadata"].get("namespace") or "default") if rtype.namespaced else None
            return apply_request(rtype.path(namespace, obj["metadata"]["name"]), obj,
                                 f"{rtype.kind} {namespace + '/' if namespace else ''}{obj['metadata']['name']}",
                                 secret_type(rtype.plural, rtype.group), force)
        return await guarded(write("apply", confirm, build))

    async def target(kind: str, name: str, namespace: str | None) -> tuple[str, str, bool]:
        rtype = await cluster.resolve(kind)
        ns = (namespace or "default") if rtype.namespaced else None
        return (rtype.path(ns, name), f"{rtype.kind} {ns + '/' if ns else ''}{name}",
                secret_type(rtype.plural, rtype.group))

    @server.tool(annotations=WRITE)
    async def patch(kind: str, name: str,
                    patch: Annotated[str, Field(description="the patch document as JSON")],
                    namespace: str | None = None,
                    patch_type: Literal["strategic", "merge", "json"] = "strategic",
                    confirm: str | None = None) -> str:
        """Patch an object (strategic merge, JSON merge or JSON patch). Dry run + diff + hash first; apply with
        confirm=<hash>. Needs --allow-write."""
        async def build() -> Any:
            try:
                body = orjson.loads(patch)
            except orjson.JSONDecodeError as exc:
                raise ValueError(f"patch is not valid JSON: {exc}") from exc
            path, what, secret = await target(kind, name, namespace)
            return patch_request(path, body, patch_type, what, secret)
        return await guarded(write("patch", confirm, build))

    @server.tool(annotations=WRITE)
    async def delete(kind: str, name: str, namespace: str | None = None, confirm: str | None = None) -> str:
        """Delete an object. Dry run + diff + hash first; delete with confirm=<hash>. Needs --allow-write."""
        async def build() -> Any:
            path, what, secret = await target(kind, name, namespace)
            return delete_request(path, what, secret)
        return await guarded(write("delete", confirm, build))

    @server.tool(annotations=WRITE)
    async def scale(kind: str, name: str, replicas: Annotated[int, Field(ge=0, le=100_000)],
                    namespace: str | None = None, confirm: str | None = None) -> str:
        """Set a Deployment's, ReplicaSet's or StatefulSet's replicas. Dry run + diff + hash first; apply with
        confirm=<hash>. Needs --allow-write."""
        async def build() -> Any:
            rtype = await cluster.resolve(kind)
            if rtype.kind not in ("Deployment", "ReplicaSet", "StatefulSet"):
                raise ValueError(f"scale works on Deployments, ReplicaSets and StatefulSets, not {rtype.kind}")
            path, what, _ = await target(kind, name, namespace)
            return scale_request(path, replicas, what)
        return await guarded(write("scale", confirm, build))

    @server.tool(annotations=WRITE)
    async def rollout_restart(kind: str, name: str, namespace: str | None = None, confirm: str | None = None) -> str:
        """kubectl rollout restart of a Deployment, StatefulSet or DaemonSet (a new restartedAt template
        annotation). Dry run + diff + hash first; apply with confirm=<hash>. Needs --allow-write."""
        async def build() -> Any:
            rtype = await cluster.resolve(kind)
            if rtype.kind not in ("Deployment", "StatefulSet", "DaemonSet"):
                raise ValueError(f"rollout restart works on Deployments, StatefulSets and DaemonSets, "
                                 f"not {rtype.kind}")
            path, what, _ = await target(kind, name, namespace)
            return restart_request(path, dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), what)
        return await guarded(write("rollout-restart", confirm, build))
