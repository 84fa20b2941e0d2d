"""MCP resources (cluster facts, the runbooks) and prompts for common investigations."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.resources import FunctionResource

from ultraplane.mcp import runbooks
from ultraplane.mcp.toolenv import ToolEnv
from ultraplane.mcp.views import fit, row


def add_catalog(server: MCPServer[Any], env: ToolEnv, mode: str) -> None:
    """`mode` says what this server may do (read-only or read-write), for the facts."""
    client, cluster, sensitive, limit = env.client, env.cluster, env.sensitive, env.max_chars

    @server.resource("cluster://facts", name="cluster-facts", mime_type="application/json",
                     description="Version, nodes and their readiness, namespaces, API groups and CRDs, and how this "
                                 "server acts (identity, read-only or not)")
    async def cluster_facts() -> str:
        version, nodes, namespaces, crds = await asyncio.gather(
            client.get("/version"), cluster.items("nodes"), cluster.items("namespaces"),
            cluster.items("customresourcedefinitions"))
        types = await cluster.discovery.all()
        return fit({
            "server": {"actsAs": client.current().describe(), "writes": mode,
                       "secretValues": "shown" if sensitive else "redacted"},
            "version": version,
            "nodes": {"total": len(nodes), "ready": sum(1 for n in nodes if row(n).get("status") == "Ready"),
                      "items": [row(n) for n in nodes[:100]]},
            "namespaces": [n["metadata"]["name"] for n in namespaces],
            "apiGroups": sorted({t.api_version for t in types}),
            "customResources": [c["metadata"]["name"] for c in crds],
        }, limit)

    for book in runbooks.corpus().values():
        server.add_resource(FunctionResource.from_function(
            fn=_constant(book.text), uri=book.uri, name=book.id, title=book.title, mime_type="text/markdown",
            description=f"Runbook: {book.title}"))

    # ------------------------------------------------------------------------------------------ prompts
    @server.prompt()
    def investigate_pod(name: str, namespace: str = "default") -> str:
        """Find out why a pod is failing and what to do about it."""
        return (f"Pod {namespace}/{name} is not healthy. Call the `diagnose` tool with kind=pod, name={name}, "
                f"namespace={namespace}. Read its likely cause and the evidence it cites; confirm with `pod_logs` "
                "(previous=true for a crashed container) and `events`. Then open the matching runbook resource and "
                "answer with: the cause, the evidence (quoted), and the fix as concrete kubectl commands. Do not "
                "change anything unless asked; writes need a dry run and a confirming call with its hash.")

    @server.prompt()
    def investigate_workload(kind: str, name: str, namespace: str = "default") -> str:
        """Find out why a Deployment, StatefulSet, DaemonSet, ReplicaSet or Job is not healthy."""
        return (f"The {kind} {namespace}/{name} is not healthy. Call `diagnose` with kind={kind}, name={name}, "
                f"namespace={namespace}. Check the rollout history it reports (did the latest revision change the "
                "image, command or config?) and the unhealthy pods' evidence. Answer with the cause, the evidence, "
                "and whether a rollback (`kubectl rollout undo`) or a fix forward is the right move.")

    @server.prompt()
    def investigate_node(name: str) -> str:
        """Find out why a node is NotReady, under pressure or cannot be drained."""
        return (f"Node {name} needs attention. Call `diagnose` with kind=node, name={name}; then `describe` the "
                "node and list its pods (`list_resources` kind=pods field_selector=spec.nodeName=" + name + "). "
                "Answer with the node's state, the cause, the affected workloads and the fix.")

    @server.prompt()
    def cluster_health_check() -> str:
        """Survey the whole cluster for problems."""
        return ("Survey the cluster: read the cluster://facts resource, list nodes (are all Ready?), list warning "
                "events (`events` warnings_only=true), and list pods whose status is not Running or Completed. "
                "For each problem run `diagnose` and report the causes, grouped by namespace, with the fixes.")


def _constant(text: str) -> Callable[[], str]:
    def read() -> str:
        return text
    return read
