"""The MCP troubleshooting server: the SDK's MCPServer with our tools (tools.py, writetools.py), resources
and prompts (catalog.py), one middleware that runs each request as its caller and audits it, and for HTTP a
bearer-token gate in front of the SDK's streamable HTTP app.

Read tools are always there; write tools are listed too but refuse unless the server runs with
--allow-write, and then only confirm a dry run's diff by its hash (writes.py).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from mcp.server.context import CallNext, ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_REQUEST

from ultraplane.client import kubeconfig
from ultraplane.mcp.audit import AuditLog
from ultraplane.mcp.catalog import add_catalog
from ultraplane.mcp.cves import CveIndex
from ultraplane.mcp.evidence import Cluster
from ultraplane.mcp.fleet import Fleet
from ultraplane.mcp.kube import CALLER, CallerClient, Identity
from ultraplane.mcp.observe import NetObs, add_observe_tools
from ultraplane.mcp.toolenv import ToolEnv
from ultraplane.mcp.tools import add_read_tools
from ultraplane.mcp.writes import Writer
from ultraplane.mcp.writetools import add_write_tools

Obj = dict[str, Any]
DEFAULT_MAX_OUTPUT = 60_000


@dataclass(frozen=True)
class Config:
    kubeconfig: str
    identity: Identity = Identity()
    allow_write: bool = False
    allow_sensitive_data: bool = False
    audit_log: str = "ultraplane-mcp-audit.jsonl"
    max_output_chars: int = DEFAULT_MAX_OUTPUT
    context: str | None = None
    advisories: str | None = None  # OSV advisories (directory or zip) for image_inventory's cve
    sbom_store: str | None = None  # the registry scanner's SBOM store directory
    fleet: str | None = None  # `fleet up --data-dir`: the fleet API is the default cluster, members by name
    netobs: str | None = None  # URL of an `ultraplane netobs` server: flow tools and flows in diagnose


def _argument_digest(value: Any) -> Any:
    """Manifests and patches go into the audit log as a digest: they may carry Secret values."""
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return {"sha256": hashlib.sha256(text.encode()).hexdigest(), "chars": len(text)}


def bearer_token(headers: Any) -> str:
    scheme, _, token = str(headers.get("authorization") or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def caller_of(headers: Any, callers: dict[str, Identity]) -> Identity | None:
    """The caller whose token the request carries; compared in constant time so timing reveals no token."""
    token = bearer_token(headers).encode()
    found = None
    for known, identity in callers.items():
        if hmac.compare_digest(token, known.encode()):
            found = identity
    return found if token else None


def call_middleware(log: AuditLog, default: Identity, transport: str,
                    callers: dict[str, Identity] | None) -> Callable[..., Awaitable[Any]]:
    """Every request: act as its caller (an HTTP caller's token names them), and audit it with its outcome."""
    async def middleware(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> Any:
        if ctx.method.startswith("notifications/"):
            return await call_next(ctx)
        identity = default
        request = getattr(ctx, "request", None)
        if callers is not None and request is not None:
            caller = caller_of(request.headers, callers)
            if caller is None:  # the HTTP gate turns these away first; never fall back to the server's rights
                raise MCPError(code=INVALID_REQUEST, message="unknown caller token")
            identity = caller
        scope = CALLER.set(identity)
        try:
            return await audited(ctx, call_next, identity)
        finally:
            CALLER.reset(scope)

    async def audited(ctx: ServerRequestContext[Any, Any], call_next: CallNext, identity: Identity) -> Any:
        params = dict(ctx.params or {})
        args = dict(params.get("arguments") or {})
        for key in ("manifest", "patch"):
            if key in args:
                args[key] = _argument_digest(args[key])
        entry: Obj = {"method": ctx.method, "identity": identity.user or None, "groups": list(identity.groups),
                      "transport": transport}
        for key in ("name", "uri"):
            if key in params:
                entry[key] = str(params[key])
        if args:
            entry["arguments"] = args
        client = getattr(getattr(ctx, "request", None), "client", None)
        if client is not None:
            entry["peer"] = f"{client.host}:{client.port}"
        try:
            result = await call_next(ctx)
        except Exception as exc:
            log.record(**entry, outcome="error", error=str(exc)[:500])
            raise
        answer = result if isinstance(result, dict) else \
            result.model_dump(by_alias=True) if hasattr(result, "model_dump") else {}
        if answer.get("isError"):
            content = answer.get("content") or [{}]
            log.record(**entry, outcome="error", error=str(content[0].get("text", ""))[:500])
        else:
            log.record(**entry, outcome="ok")
        return result

    return middleware


@dataclass
class App:
    server: MCPServer[Any]
    client: CallerClient
    audit: AuditLog
    netobs: NetObs | None = None
    fleet: Fleet | None = None

    async def close(self) -> None:
        await self.client.close()
        if self.fleet is not None:
            await self.fleet.close()
        if self.netobs is not None:
            await self.netobs.close()
        self.audit.close()


def build_server(config: Config, transport: str = "stdio", callers: dict[str, Identity] | None = None) -> App:
    path = str(Path(config.fleet) / "fleet" / "kubeconfig") if config.fleet else config.kubeconfig
    creds = kubeconfig.load(path, config.context)
    client = CallerClient(creds.server, creds.ssl_context, creds.token, config.identity, max_connections=8,
                          timeout=30.0)
    cluster = Cluster(client)
    writer = Writer(client, config.allow_write, config.allow_sensitive_data)
    audit = AuditLog(config.audit_log)
    fleet = Fleet(cluster) if config.fleet else None
    env = ToolEnv(client, cluster, config.max_output_chars, config.allow_sensitive_data, fleet)
    mode = "read-write (each write is a dry run first, then confirmed by its hash)" if config.allow_write \
        else "read-only"
    server: MCPServer[Any] = MCPServer(
        "ultraplane",
        instructions=(
            "Kubernetes troubleshooting for an ultraplane (or any Kubernetes) cluster. Start with `diagnose` on "
            "a failing pod, workload or node; it gathers status, events, logs, the node, rollouts and config "
            "changes and names the likely cause with the runbook and the evidence. Use list_resources, "
            "get_resource, describe, events, pod_logs and metrics to look further, search_runbooks for "
            "procedures, upgrade_insights before an upgrade, image_inventory (by image, digest or CVE), and "
            "service_map, flows and top_flows for network traffic. "
            f"{'Tools take a `cluster` argument naming a fleet member. ' if config.fleet else ''}This server is {mode}; it acts as "
            f"{'each HTTP caller itself' if callers is not None else config.identity.describe()}."),
        middleware=[call_middleware(audit, config.identity, transport, callers)],
        log_level="WARNING",
    )

    netobs = NetObs(config.netobs) if config.netobs else None
    cves = CveIndex(config.advisories, config.sbom_store) if config.advisories and config.sbom_store else None
    add_read_tools(server, env, netobs, cves)
    add_observe_tools(server, env, netobs)
    add_write_tools(server, env, writer)
    add_catalog(server, env, mode)

    return App(server, client, audit, netobs, fleet)


class BearerGate:
    """ASGI wrapper: an HTTP request without a listed caller's bearer token is answered 401 before any MCP."""

    def __init__(self, app: Any, callers: dict[str, Identity]) -> None:
        self.app = app
        self.callers = callers

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
            if caller_of(headers, self.callers) is None:
                body = orjson.dumps({"error": "invalid_token",
                                     "error_description": "this MCP server needs a caller's bearer token"})
                await send({"type": "http.response.start", "status": 401, "headers": [
                    (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b'Bearer realm="ultraplane-mcp", error="invalid_token"')]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


async def serve_http(app: App, host: str, port: int, callers: dict[str, Identity] | None) -> None:
    """Streamable HTTP at /mcp (uvicorn), behind the bearer gate when callers are configured."""
    import uvicorn

    asgi: Any = app.server.streamable_http_app(host=host)
    if callers is not None:
        asgi = BearerGate(asgi, callers)
    # open SSE streams never end by themselves: give them 2 s on shutdown rather than waiting for the clients
    await uvicorn.Server(uvicorn.Config(asgi, host=host, port=port, log_level="warning",
                                        timeout_graceful_shutdown=2)).serve()
