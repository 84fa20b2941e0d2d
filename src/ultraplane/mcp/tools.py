"""The read tools: discovery, list/get of any kind, events, logs, describe, diagnose, metrics, image
inventory, runbook search."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from prometheus_client.parser import text_string_to_metric_families
from pydantic import Field

from ultraplane.mcp import runbooks
from ultraplane.mcp.cves import CveIndex, digest_from_image_id
from ultraplane.mcp.describe import describe as describe_object
from ultraplane.mcp.diagnose import diagnose as diagnose_object
from ultraplane.mcp.evidence import Cluster, event_line
from ultraplane.mcp.fleet import ALL
from ultraplane.mcp.observe import NetObs, with_flows
from ultraplane.mcp.toolenv import READ, ToolEnv, guarded
from ultraplane.mcp.views import redact, row, strip_noise, tail_text

Obj = dict[str, Any]
MemberArg = Annotated[str | None, Field(description="with --fleet: a member cluster's name (default: the fleet "
                                                    "API server)")]
FanOutArg = Annotated[str | None, Field(description='with --fleet: a member cluster\'s name, or "*" for every '
                                                    "member (default: the fleet API server)")]


def add_read_tools(server: MCPServer[Any], env: ToolEnv, netobs: NetObs | None = None,
                   cves: CveIndex | None = None) -> None:
    sensitive, out = env.sensitive, env.out

    @server.tool(annotations=READ)
    async def api_resources(cluster: MemberArg = None) -> str:
        """Every resource type the API server serves (built-ins and CRDs): kind, plural name, group/version,
        whether namespaced, short names. Use these names as `kind` in the other tools."""
        async def work() -> str:
            types = await (await env.at(cluster)).discovery.all()
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
        cluster: FanOutArg = None,
    ) -> str:
        """List objects of any kind, a page at a time: summary rows (name, namespace, age, status, node) or
        whole objects. The answer carries `continue` when more pages exist. With cluster "*" (--fleet) every
        member cluster is listed, each row naming its cluster."""
        async def one(name: str | None, target: Cluster) -> tuple[Any, Obj, Obj]:
            rtype = await target.resolve(kind)
            params = {"labelSelector": label_selector, "fieldSelector": field_selector, "limit": limit,
                      "continue": continue_token}
            listed = await target.client.get(rtype.path(namespace if rtype.namespaced else None), params)
            items = listed.get("items") or []
            for item in items:
                item.setdefault("kind", rtype.kind)
            if not sensitive:
                items = redact({"items": items}, rtype.plural == "secrets" and not rtype.group)["items"]
            shown = [strip_noise(i) for i in items] if full else [row(i) for i in items]
            if name is not None:
                shown = [{"cluster": name, **i} for i in shown]
            return rtype, {"items": shown}, listed.get("metadata") or {}

        async def work() -> str:
            targets = await env.targets(cluster)
            if len(targets) != 1 or cluster == ALL:
                if continue_token:
                    raise ValueError('continue_token pages one cluster: name it instead of "*"')
                answers = await asyncio.gather(*(one(n, t) for n, t in targets))
                rows = [i for _, a, _ in answers for i in a["items"]]
                truncated = [n for (n, _), (_, _, m) in zip(targets, answers, strict=True) if m.get("continue")]
                fanned: Obj = {"kind": answers[0][0].kind if answers else kind, "clusters": [n for n, _ in targets],
                               "items": rows}
                if truncated:
                    fanned["note"] = f"more than {limit} items in {', '.join(truncated)}: page that cluster by name"
                return out(fanned)
            rtype, shown, meta = await one(*targets[0])
            answer: Obj = {"kind": rtype.kind, "apiVersion": rtype.api_version, "items": shown["items"]}
            if meta.get("continue"):
                answer["continue"] = meta["continue"]
                if meta.get("remainingItemCount") is not None:
                    answer["remainingItemCount"] = meta["remainingItemCount"]
            return out(answer)
        return await guarded(work())

    @server.tool(annotations=READ)
    async def get_resource(kind: str, name: str, namespace: str | None = None,
                           cluster: MemberArg = None) -> str:
        """One object of any kind as JSON (managedFields left out; Secret values redacted unless the server
        runs with --allow-sensitive-data). `namespace` defaults to "default" for namespaced kinds."""
        async def work() -> str:
            target = await env.at(cluster)
            rtype = await target.resolve(kind)
            obj = await target.get(rtype.kind, name, namespace)
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
        cluster: MemberArg = None,
    ) -> str:
        """Recent events, newest last: of one object (kind + name) or of a namespace or the whole cluster."""
        async def work() -> str:
            target = await env.at(cluster)
            selectors = []
            if name:
                selectors.append(f"involvedObject.name={name}")
            if kind:
                selectors.append(f"involvedObject.kind={(await target.resolve(kind)).kind}")
            if warnings_only:
                selectors.append("type=Warning")
            found = await target.items("events", namespace, fieldSelector=",".join(selectors) or None)
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
        cluster: MemberArg = None,
    ) -> str:
        """A pod's container logs (kubectl logs), the newest lines kept when they exceed the output limit."""
        async def work() -> str:
            text = await (await env.at(cluster)).logs(namespace, name, container, previous, tail_lines)
            return tail_text(text, env.max_chars) if text else "(no log lines)"
        return await guarded(work())

    @server.tool(annotations=READ)
    async def describe(kind: str, name: str, namespace: str | None = None, cluster: MemberArg = None) -> str:
        """A kubectl-describe-like summary of any object: state, conditions, containers with their current and
        last state, a Deployment's rollout history, a node's taints and allocatable, and recent events."""
        return await guarded(describe_text(kind, name, namespace, cluster))

    async def describe_text(kind: str, name: str, namespace: str | None, member: str | None) -> str:
        return tail_text(await describe_object(await env.at(member), kind, name, namespace), env.max_chars)

    @server.tool(annotations=READ)
    async def diagnose(
        kind: Annotated[str, Field(description="pod, node, or a workload: deployment, replicaset, statefulset, "
                                               "daemonset, job")],
        name: str,
        namespace: str | None = None,
        cluster: MemberArg = None,
    ) -> str:
        """Find out why a pod, workload or node is unhealthy: gathers status, conditions, container states and
        last states, events, the failing containers' logs, the node, recent rollouts (ReplicaSet revisions) and
        config changes, the pods' flows when a netobs server is configured (NXDOMAIN lookups, drops to a
        Service without endpoints), matches the runbooks' rules, and returns the likely cause and fix citing the evidence."""
        async def work() -> str:
            verdict = await diagnose_object(await env.at(cluster), kind, name, namespace)
            if netobs is not None and verdict["target"].split()[0] != "Node":
                verdict = await with_flows(verdict, netobs)
            return out(verdict)
        return await guarded(work())

    @server.tool(annotations=READ)
    async def metrics(
        name_contains: Annotated[str | None, Field(description="only metric families whose name has this")] = None,
        labels: Annotated[dict[str, str] | None, Field(description="only samples with these label values")] = None,
        limit: Annotated[int, Field(ge=1, le=5000)] = 200,
        cluster: MemberArg = None,
    ) -> str:
        """The API server's Prometheus metrics (/metrics) parsed into samples (name, labels, value), filtered
        by name and labels."""
        async def work() -> str:
            text = await (await env.at(cluster)).client.text("/metrics")
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
        cve: Annotated[str | None, Field(description="only images whose scanned SBOM has this vulnerability "
                                                     "(a CVE id or an advisory id such as GHSA-...)")] = None,
        cluster: FanOutArg = None,
    ) -> str:
        """Where each container image runs: image reference, the digest the runtime resolved (imageID), and
        the pods, namespaces and nodes running it. Answers "where does image, digest or CVE X run"; with `cve`
        each image carries its findings (package, installed and fixed version, severity)."""
        async def work() -> str:
            vulnerable: dict[str, list[Obj]] | None = None
            scanned = 0
            if cve:
                if cves is None:
                    raise ValueError("image_inventory with cve needs the server started with --advisories DIR "
                                     "and --sbom-store DIR (the registry scanner's SBOM store)")
                vulnerable, scanned = await cves.digests_with(cve)
            images: dict[tuple[str, str], Obj] = {}
            targets = await env.targets(cluster)
            listed = await asyncio.gather(*(t.items("pods", namespace) for _, t in targets))
            for (member, _), pod in ((m, p) for m, pods in zip(targets, listed, strict=True) for p in pods):
                meta, spec = pod["metadata"], pod.get("spec") or {}
                status = pod.get("status") or {}
                resolved = {s["name"]: s.get("imageID") or "" for s in
                            [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]}
                for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
                    image, digest = c.get("image", ""), resolved.get(c["name"], "")
                    if contains and contains not in image and contains not in digest:
                        continue
                    findings = None
                    if vulnerable is not None:
                        findings = vulnerable.get(digest_from_image_id(digest))
                        if not findings:
                            continue
                    entry = images.setdefault((image, digest), {"image": image, "imageID": digest or None,
                                                                "pods": [], "nodes": set()})
                    if findings:
                        entry["findings"] = findings
                    where = f"{member}:" if member and cluster == ALL else ""
                    entry["pods"].append(f"{where}{meta.get('namespace')}/{meta['name']}")
                    if spec.get("nodeName"):
                        entry["nodes"].add(f"{where}{spec['nodeName']}")
            items = sorted(({**e, "nodes": sorted(e["nodes"]), "podCount": len(e["pods"])} for e in images.values()),
                           key=lambda e: (-e["podCount"], e["image"]))
            answer: Obj = {"items": items}
            if vulnerable is not None:
                answer |= {"cve": cve, "scannedImages": scanned, "vulnerableDigests": sorted(vulnerable)}
            return out(answer)
        return await guarded(work())
