"""The read tools: discovery, list/get of any kind, events, logs, describe, diagnose, metrics, image
inventory, runbook search."""

from __future__ import annotations

from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from prometheus_client.parser import text_string_to_metric_families
from pydantic import Field

from ultraplane.mcp import runbooks
from ultraplane.mcp.describe import describe as describe_object
from ultraplane.mcp.diagnose import diagnose as diagnose_object
from ultraplane.mcp.evidence import event_line
from ultraplane.mcp.toolenv import READ, ToolEnv, guarded
from ultraplane.mcp.views import redact, row, strip_noise, tail_text

Obj = dict[str, Any]


def add_read_tools(server: MCPServer[Any], env: ToolEnv) -> None:
    client, cluster, sensitive, out = env.client, env.cluster, env.sensitive, env.out

    @server.tool(annotations=READ)
    async def api_resources() -> str:
        """Every resource type the API server serves (built-ins and CRDs): kind, plural name, group/version,
        whether namespaced, short names. Use these names as `kind` in the other tools."""
        async def work() -> str:
            types = await cluster.discovery.all()
            return out({"items": [{"kind": t.kind, "name": t.qualified, "apiVersion": t.api_version,
                                   "namespaced": t.namespaced, "shortNames": list(t.short_names)} for t in types]})
        return await guarded(work())

    @server.tool(annotations=READ)
    async def list_resources(
        kind: Annotated[str, Field(description="Kind, plural, short name or plural.group (CRDs too)")],
        namespace: Annotated[str | None, Field(description="namespace; omit for all namespaces")] = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        limit: Annotated[int, Field(ge=1, le=500, description="page size")] = 100,
        continue_token: Annotated[str | None, Field(description="`continue` from the previous page")] = None,
        full: Annotated[bool, Field(description="whole objects instead of summary rows")] = False,
    ) -> str:
        """List objects of any kind, a page at a time: summary rows (name, namespace, age, status, node) or
        whole objects. The answer carries `continue` when more pages exist."""
        async def work() -> str:
            rtype = await cluster.resolve(kind)
            params = {"labelSelector": label_selector, "fieldSelector": field_selector, "limit": limit,
                      "continue": continue_token}
            listed = await client.get(rtype.path(namespace if rtype.namespaced else None), params)
            items = listed.get("items") or []
            for item in items:
                item.setdefault("kind", rtype.kind)
            if not sensitive:
                items = redact({"items": items}, rtype.plural == "secrets" and not rtype.group)["items"]
            meta = listed.get("metadata") or {}
            answer: Obj = {"kind": rtype.kind, "apiVersion": rtype.api_version,
                           "items": [strip_noise(i) for i in items] if full else [row(i) for i in items]}
            if meta.get("continue"):
                answer["continue"] = meta["continue"]
                if meta.get("remainingItemCount") is not None:
                    answer["remainingItemCount"] = meta["remainingItemCount"]
            return out(answer)
        return await guarded(work())

    @server.tool(annotations=READ)
    async def get_resource(kind: str, name: str, namespace: str | None = None) -> str:
        """One object of any kind as JSON (managedFields left out; Secret values redacted unless the server
        runs with --allow-sensitive-data). `namespace` defaults to "default" for namespaced kinds."""
        async def work() -> str:
            rtype = await cluster.resolve(kind)
            obj = await cluster.get(rtype.kind, name, namespace)
            if not sensitive:
                obj = redact(obj, rtype.plural == "secrets" and not rtype.group)
            return out(strip_noise(obj))
        return await guarded(work())

    @server.tool(annotations=READ)
    async def events(
        namespace: Annotated[str | None, Field(description="omit for all namespaces")] = None,
        kind: Annotated[str | None, Field(description="with name: only this object's events")] = None,
        name: str | None = None,
        warnings_only: bool = False,
        limit: Annotated[int, Field(ge=1, le=500)] = 50,
    ) -> str:
        """Recent events, newest last: of one object (kind + name) or of a namespace or the whole cluster."""
        async def work() -> str:
            selectors = []
            if name:
                selectors.append(f"involvedObject.name={name}")
            if kind:
                selectors.append(f"involvedObject.kind={(await cluster.resolve(kind)).kind}")
            if warnings_only:
                selectors.append("type=Warning")
            found = await cluster.items("events", namespace, fieldSelector=",".join(selectors) or None)
            found.sort(key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or
                                         e["metadata"].get("creationTimestamp") or ""))
            shown = found[-limit:]
            answer: Obj = {"items": [
                {"namespace": e["metadata"].get("namespace"), "last": e.get("lastTimestamp") or e.get("eventTime"),
                 "object": f"{(e.get('involvedObject') or {}).get('kind')}/{(e.get('involvedObject') or {}).get('name')}",
                 "event": event_line(e)} for e in shown]}
            if len(found) > len(shown):
                answer["note"] = f"the newest {len(shown)} of {len(found)} events; raise limit for more"
            return out(answer)
        return await guarded(work())

    @server.tool(annotations=READ)
    async def pod_logs(
        name: str,
        namespace: str = "default",
        container: Annotated[str | None, Field(description="needed when the pod has several containers")] = None,
        previous: Annotated[bool, Field(description="the previous (crashed) instance's logs")] = False,
        tail_lines: Annotated[int | None, Field(ge=1, le=100_000, description="last N lines")] = 200,
    ) -> str:
        """A pod's container logs (kubectl logs), the newest lines kept when they exceed the output limit."""
        async def work() -> str:
            text = await cluster.logs(namespace, name, container, previous, tail_lines)
            return tail_text(text, env.max_chars) if text else "(no log lines)"
        return await guarded(work())

    @server.tool(annotations=READ)
    async def describe(kind: str, name: str, namespace: str | None = None) -> str:
        """A kubectl-describe-like summary of any object: state, conditions, containers with their current and
        last state, a Deployment's rollout history, a node's taints and allocatable, and recent events."""
        return await guarded(describe_text(kind, name, namespace))

    async def describe_text(kind: str, name: str, namespace: str | None) -> str:
        return tail_text(await describe_object(cluster, kind, name, namespace), env.max_chars)

    @server.tool(annotations=READ)
    async def diagnose(
        kind: Annotated[str, Field(description="pod, node, or a workload: deployment, replicaset, statefulset, "
                                               "daemonset, job")],
        name: str,
        namespace: str | None = None,
    ) -> str:
        """Find out why a pod, workload or node is unhealthy: gathers status, conditions, container states and
        last states, events, the failing containers' logs, the node, recent rollouts (ReplicaSet revisions) and
        config changes, matches the runbooks' rules, and returns the likely cause and fix citing the evidence."""
        async def work() -> str:
            verdict = await diagnose_object(cluster, kind, name, namespace)
            return out(verdict)
        return await guarded(work())

    @server.tool(annotations=READ)
    async def metrics(
        name_contains: Annotated[str | None, Field(description="only metric families whose name has this")] = None,
        labels: Annotated[dict[str, str] | None, Field(description="only samples with these label values")] = None,
        limit: Annotated[int, Field(ge=1, le=5000)] = 200,
    ) -> str:
        """The API server's Prometheus metrics (/metrics) parsed into samples (name, labels, value), filtered
        by name and labels."""
        async def work() -> str:
            text = await client.text("/metrics")
            samples: list[Obj] = []
            families = 0
            for family in text_string_to_metric_families(text):
                # a counter family is named without its samples' _total suffix: match either
                if name_contains and name_contains not in family.name and \
                        not any(name_contains in s.name for s in family.samples):
                    continue
                families += 1
                for sample in family.samples:
                    if name_contains and name_contains not in sample.name and name_contains not in family.name:
                        continue
                    if labels and any(sample.labels.get(k) != v for k, v in labels.items()):
                        continue
                    samples.append({"name": sample.name, "type": family.type, "labels": sample.labels,
                                    "value": sample.value})
            answer: Obj = {"families": families, "samples": len(samples), "items": samples[:limit]}
            if len(samples) > limit:
                answer["truncated"] = f"the first {limit} of {len(samples)} samples; narrow name_contains/labels " \
                                      "or raise limit"
            return out(answer)
        return await guarded(work())

    @server.tool(annotations=READ)
    async def search_runbooks(query: Annotated[str, Field(min_length=1)],
                              limit: Annotated[int, Field(ge=1, le=10)] = 3) -> str:
        """Search the shipped troubleshooting runbooks (CrashLoopBackOff, ImagePullBackOff, OOMKilled, Pending
        pods, DNS failures, node NotReady, PDB-blocked drains, failed Jobs, probe failures) by symptom or error
        text; returns each match's title, score, URI and its Symptoms and Fixes sections."""
        hits = runbooks.search(query, limit)
        return out({"query": query, "items": [
            {"id": b.id, "title": b.title, "score": score, "uri": b.uri, "symptoms": b.section("Symptoms"),
             "fixes": b.section("Fixes")} for b, score in hits]})

    @server.tool(annotations=READ)
    async def image_inventory(
        contains: Annotated[str | None, Field(description="only images whose reference or digest has this "
                                                          "(a repository, tag or sha256 digest)")] = None,
        namespace: Annotated[str | None, Field(description="omit for all namespaces")] = None,
    ) -> str:
        """Where each container image runs: image reference, the digest the runtime resolved (imageID), and
        the pods, namespaces and nodes running it. Answers "where does image or digest X run"."""
        async def work() -> str:
            images: dict[tuple[str, str], Obj] = {}
            for pod in await cluster.items("pods", namespace):
                meta, spec = pod["metadata"], pod.get("spec") or {}
                status = pod.get("status") or {}
                resolved = {s["name"]: s.get("imageID") or "" for s in
                            [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]}
                for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
                    image, digest = c.get("image", ""), resolved.get(c["name"], "")
                    if contains and contains not in image and contains not in digest:
                        continue
                    entry = images.setdefault((image, digest), {"image": image, "imageID": digest or None,
                                                                "pods": [], "nodes": set()})
                    entry["pods"].append(f"{meta.get('namespace')}/{meta['name']}")
                    if spec.get("nodeName"):
                        entry["nodes"].add(spec["nodeName"])
            items = sorted(({**e, "nodes": sorted(e["nodes"]), "podCount": len(e["pods"])} for e in images.values()),
                           key=lambda e: (-e["podCount"], e["image"]))
            return out({"items": items})
        return await guarded(work())
