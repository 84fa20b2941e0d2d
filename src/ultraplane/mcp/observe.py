"""Observability tools: the service map and flows from an `ultraplane netobs` server (--netobs URL), upgrade
insights for the cluster, and the flow findings `diagnose` cites (DNS NXDOMAIN, drops to a Service with no
endpoints)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from ultraplane.client.http import ApiError, KubeClient
from ultraplane.fleet import insights
from ultraplane.mcp.rules import Finding
from ultraplane.mcp.toolenv import READ, ToolEnv, guarded

Obj = dict[str, Any]
NXDOMAIN = 3  # the DNS response code for "no such name" (RFC 1035)
NO_SERVICE = "NO_SERVICE"  # netobs' drop reason for traffic to a Service without ready endpoints
INSIGHTS_PATH = "/apis/fleet.ultraplane.io/v1alpha1/upgradeinsights"


class NetObs:
    """The netobs server's HTTP JSON API; its error answers ({"error": ...}) become tool errors."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.http = KubeClient(self.url, max_connections=4, timeout=30.0)

    async def get(self, path: str, params: Obj | None = None) -> Obj:
        try:
            return await self.http.get(path, {k: v for k, v in (params or {}).items() if v is not None})
        except ApiError as exc:
            raise ToolError(f"netobs at {self.url} refused: {exc.status.get('error') or exc.message}") from exc
        except OSError as exc:
            raise ToolError(f"netobs at {self.url} is unreachable: {exc}") from exc

    async def pod_flows(self, namespace: str, pod: str, limit: int = 500) -> list[Obj]:
        return (await self.get("/api/v1/flows", {"namespace": namespace, "pod": pod, "limit": limit}))["flows"]

    async def close(self) -> None:
        await self.http.close()


def _endpoint(side: Obj) -> str:
    return f"{side.get('namespace') or '?'}/{side.get('pod_name') or '?'}"


def _service(flow: Obj) -> str:
    service = flow.get("destination_service")
    return f"{service['namespace']}/{service['name']}" if service else _endpoint(flow["destination"])


def flow_findings(flows: list[Obj], ref: str) -> list[Finding]:
    """What the observed flows of one pod say: names that do not resolve, and calls dropped because the
    Service has no endpoints. Each cites the flows (time, source, destination, query or reason)."""
    findings: list[Finding] = []
    nxdomain = [f for f in flows if ((f.get("l7") or {}).get("dns") or {}).get("rcode") == NXDOMAIN]
    if nxdomain:
        names = sorted({f["l7"]["dns"]["query"].rstrip(".") for f in nxdomain})
        findings.append(Finding(
            "dns-failures", f"{ref} looks up {', '.join(names)}, which the cluster DNS answers NXDOMAIN "
                            "(no such name)",
            "check the name for typos and its namespace (<service>.<namespace>.svc.cluster.local), that the "
            "Service exists, and that the DNS pods are running",
            [f"flow {f.get('time')}: {_endpoint(f['source'])} DNS query {f['l7']['dns']['query']} -> NXDOMAIN"
             for f in nxdomain[:5]]))
    dropped = [f for f in flows if f.get("verdict") == "DROPPED" and f.get("drop_reason_desc") == NO_SERVICE]
    if dropped:
        services = sorted({_service(f) for f in dropped})
        findings.append(Finding(
            "dns-failures", f"{ref} calls Service {', '.join(services)}, which has no ready endpoints: the "
                            "connections are dropped",
            "check the Service's selector against the pods' labels and that its pods are Ready "
            "(kubectl get endpointslices -l kubernetes.io/service-name=NAME)",
            [f"flow {f.get('time')}: {_endpoint(f['source'])} -> {_service(f)} dropped ({NO_SERVICE})"
             for f in dropped[:5]]))
    return findings


async def with_flows(verdict: Obj, netobs: NetObs) -> Obj:
    """Add the flows of the diagnosed pods to a verdict; a flow finding becomes the cause when no rule matched,
    and cites its flows next to the log lines when it names the same runbook."""
    pods = [p["pod"] for p in ([verdict["evidence"]] if "pod" in verdict["evidence"] else
                               verdict["evidence"].get("pods") or []) if "pod" in p]
    found: list[Finding] = []
    cited: list[Obj] = []
    for pod in pods[:3]:
        flows = await netobs.pod_flows(pod["namespace"], pod["name"])
        cited.extend(flows[:20])
        found.extend(flow_findings(flows, f"pod {pod['namespace']}/{pod['name']}"))
    verdict["evidence"]["flows"] = cited
    if not found:
        return verdict
    verdict["findings"] = [*(verdict.get("findings") or []), *(f.as_dict() for f in found)]
    top = found[0]
    if verdict.get("likelyCause") is None:
        verdict.update(likelyCause=top.cause, fix=top.fix, runbook=top.runbook,
                       runbookTitle=top.as_dict()["runbookTitle"], evidenceCited=list(top.evidence))
        verdict.pop("summary", None)
    elif verdict.get("runbook") == top.runbook:
        verdict["evidenceCited"] = [*verdict.get("evidenceCited", []), *top.evidence]
    return verdict


def add_observe_tools(server: MCPServer[Any], env: ToolEnv, netobs: NetObs | None) -> None:
    out = env.out

    def needs_netobs() -> NetObs:
        if netobs is None:
            raise ToolError("no netobs server configured: start the MCP server with --netobs URL "
                            "(the address `ultraplane netobs --listen` serves on)")
        return netobs

    @server.tool(annotations=READ)
    async def service_map(
        since: Annotated[float | None, Field(description="only flows after this Unix time")] = None,
        until: Annotated[float | None, Field(description="only flows before this Unix time")] = None,
    ) -> str:
        """The service map observed by netobs: nodes (workloads, Services) and edges with flow, drop,
        retransmit, DNS-error counts and drop reasons, plus the generator's injected problems."""
        return out(await needs_netobs().get("/api/v1/servicemap", {"since": since, "until": until}))

    @server.tool(annotations=READ)
    async def flows(
        namespace: str | None = None,
        pod: Annotated[str | None, Field(description="flows from or to this pod")] = None,
        verdict: Annotated[Literal["FORWARDED", "DROPPED"] | None, Field(description="only this verdict")] = None,
        since: Annotated[float | None, Field(description="only flows after this Unix time")] = None,
        limit: Annotated[int, Field(ge=1, le=1000)] = 100,
    ) -> str:
        """Observed flows (Hubble-shaped: source, destination, verdict, drop reason, L4 ports, bytes, TCP
        retransmits, DNS query and response code), newest first."""
        return out(await needs_netobs().get("/api/v1/flows", {"namespace": namespace, "pod": pod,
                                                              "verdict": verdict, "since": since, "limit": limit}))

    @server.tool(annotations=READ)
    async def top_flows(
        by: Literal["retransmits", "cross_az_bytes"] = "retransmits",
        limit: Annotated[int, Field(ge=1, le=500)] = 20,
        since: float | None = None,
    ) -> str:
        """Connections ranked by TCP retransmissions or by cross-AZ bytes, each with its cross-AZ data cost,
        and the cross-AZ summary."""
        return out(await needs_netobs().get("/api/v1/flows/top", {"by": by, "limit": limit, "since": since}))

    @server.tool(annotations=READ)
    async def upgrade_insights(
        target: Annotated[str | None, Field(description="target release, e.g. 1.31 (default: the next)")] = None,
        cluster: Annotated[str | None, Field(description="with --fleet: compute for this member cluster")] = None,
    ) -> str:
        """Upgrade insights findings: the UpgradeInsight objects when the cluster is a fleet API server,
        otherwise computed now for this cluster (deprecated APIs still in use, kubelet skew, PDBs that block
        drains, workloads without resilience), per release hop with its blockers."""
        async def work() -> str:
            if not cluster:
                try:
                    stored = (await env.client.list(INSIGHTS_PATH)).get("items") or []
                    return out({"source": "UpgradeInsight objects", "items": stored})
                except ApiError as exc:
                    if exc.code != 404:
                        raise
            member = await env.at(cluster)
            facts = await insights.gather(member.client, cluster or "cluster")
            try:
                plan = insights.plan(facts, target)
            except insights.InsightError as exc:
                raise ToolError(str(exc)) from exc
            return out({"source": "computed from the cluster now", **plan.to_dict()})
        return await guarded(work())
