"""`ultraplane mcp`: the MCP troubleshooting server (official SDK) over stdio or streamable HTTP."""

from __future__ import annotations

import argparse
import os
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "mcp",
        help="run the MCP troubleshooting server (tools, resources, prompts) against a cluster",
        description="An MCP server for AI assistants: list/get any resource, events, logs, describe, metrics, "
                    "runbook search and diagnose; read-only unless --allow-write, every call audited.",
    )
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG", os.path.expanduser("~/.kube/config")),
                        help="kubeconfig of the cluster (default: $KUBECONFIG or ~/.kube/config)")
    parser.add_argument("--fleet", metavar="DIR",
                        help="a fleet (`ultraplane fleet up --data-dir DIR`): the fleet API is the default cluster "
                             "and every tool's `cluster` argument names a member (\"*\": all, for list tools)")
    parser.add_argument("--context", help="kubeconfig context (default: its current-context)")
    parser.add_argument("--transport", choices=["stdio", "http"], default="stdio",
                        help="stdio (an MCP host starts the server) or streamable HTTP")
    parser.add_argument("--listen", default="127.0.0.1:8765", metavar="ADDR",
                        help="host:port for --transport http (the endpoint is http://ADDR/mcp)")
    parser.add_argument("--allow-write", action="store_true",
                        help="enable apply/patch/delete/scale/rollout_restart (each a dry run, then a confirmed write)")
    parser.add_argument("--allow-sensitive-data", action="store_true", help="show Secrets' values (redacted otherwise)")
    parser.add_argument("--as", dest="as_user", default="", metavar="USER",
                        help="act as this user through impersonation (the caller's RBAC applies, not the server's)")
    parser.add_argument("--as-group", action="append", default=[], metavar="GROUP",
                        help="group to impersonate along with --as (repeatable)")
    parser.add_argument("--callers", metavar="FILE",
                        help="HTTP callers, kube's token file format (token,user,uid,\"group1,group2\"): each request "
                             "needs one's bearer token and runs as that user (impersonated)")
    parser.add_argument("--audit-log", default="ultraplane-mcp-audit.jsonl", metavar="FILE",
                        help="hash-chained JSON-lines audit log of every call (appended to)")
    parser.add_argument("--max-output-chars", type=int, default=60_000,
                        help="longest tool answer; longer ones are paged or truncated with a note")
    parser.add_argument("--netobs", metavar="URL",
                        help="an `ultraplane netobs` server: service-map and flow tools, flows in diagnose")
    parser.add_argument("--advisories", metavar="PATH",
                        help="OSV advisories (a directory of JSON files or an OSV zip) for image_inventory's cve")
    parser.add_argument("--sbom-store", metavar="DIR",
                        help="the registry scanner's SBOM store (registry-scan --store) for image_inventory's cve")
    parser.add_argument("--verify-audit", metavar="FILE", help="verify an audit log's hash chain and exit")
    parser.add_argument("--expect-head", metavar="HASH", help="with --verify-audit: the head hash recorded earlier")
    parser.add_argument("--log-level", default="warn", choices=["debug", "info", "warn", "error", "panic", "fatal"])
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import anyio

    from ultraplane.mcp.audit import verify
    from ultraplane.mcp.kube import Identity, load_callers
    from ultraplane.mcp.server import Config, build_server, serve_http

    if args.verify_audit:
        result = verify(args.verify_audit, args.expect_head)
        for problem in result.problems:
            print(problem, file=sys.stderr)
        print(f"{'ok' if result.ok else 'TAMPERED'}: {result.entries} entries, head {result.head}")
        return 0 if result.ok else 1
    if bool(args.advisories) != bool(args.sbom_store):
        print("error: --advisories and --sbom-store go together", file=sys.stderr)
        return 2
    if args.as_group and not args.as_user:
        print("error: --as-group needs --as", file=sys.stderr)
        return 2
    host, _, port = args.listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if args.transport == "http" and not args.callers and host not in ("127.0.0.1", "localhost", "::1"):
        print("error: --listen on a non-loopback address needs --callers (every caller authenticated)",
              file=sys.stderr)
        return 2
    try:
        callers = load_callers(args.callers) if args.callers else None
    except (OSError, ValueError) as exc:
        print(f"error: --callers: {exc}", file=sys.stderr)
        return 2
    config = Config(args.kubeconfig, Identity(args.as_user, tuple(args.as_group)), args.allow_write,
                    args.allow_sensitive_data, args.audit_log, args.max_output_chars, args.context,
                    fleet=args.fleet, netobs=args.netobs, advisories=args.advisories, sbom_store=args.sbom_store)
    try:
        app = build_server(config, args.transport, callers)
    except (OSError, ValueError) as exc:  # an unreadable kubeconfig or audit log: say which, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2

    async def serve() -> None:
        try:
            if args.transport == "stdio":
                await app.server.run_stdio_async()
            else:
                print(f"ultraplane mcp: streamable HTTP on http://{args.listen}/mcp", file=sys.stderr, flush=True)
                await serve_http(app, host, int(port), callers)
        finally:
            await app.close()

    anyio.run(serve)
    return 0
