"""`ultraplane fleet`: the layer above clusters. Today: `fleet insights`, upgrade readiness of a cluster."""

from __future__ import annotations

import argparse
import sys

import orjson
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from ultraplane.client.http import ApiError, KubeClient
from ultraplane.client.kubeconfig import KubeconfigError
from ultraplane.fleet import insights

_STYLE = {insights.ERROR: "bold red", insights.WARNING: "yellow", insights.PASSING: "green",
          insights.UNKNOWN: "dim"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("fleet", help="operate many clusters: upgrade insights",
                            description="Commands that act on clusters through their API servers.")
    verbs = parser.add_subparsers(dest="fleet_command", metavar="VERB")
    scan = verbs.add_parser(
        "insights", help="upgrade readiness of a cluster, hop by hop to a target release",
        description="Scan a cluster for what an upgrade to --target would break or disrupt: APIs removed or "
                    "deprecated on the way (in applied manifests, Helm releases and API requests), kubelet "
                    "version skew, PodDisruptionBudgets that block a drain, workloads without probes, "
                    "replicas or spread. One set of findings per minor release on the way (a multi-hop plan).")
    scan.add_argument("--kubeconfig", required=True, help="kubeconfig of the cluster to scan")
    scan.add_argument("--context", help="kubeconfig context (default: the current one)")
    scan.add_argument("--target", help="release to plan for, e.g. 1.33 (default: the next minor release)")
    scan.add_argument("-o", "--output", choices=["table", "json"], default="table")
    scan.set_defaults(run=run_insights)
    parser.set_defaults(run=lambda _args: parser.print_help() or 2)


def run_insights(args: argparse.Namespace) -> int:
    from ultraplane.cli.up import run_loop

    return run_loop(_insights(args))


async def _insights(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    try:
        client = await KubeClient.from_kubeconfig(args.kubeconfig, args.context)
    except (OSError, KubeconfigError) as exc:
        print(f"error: cannot use kubeconfig {args.kubeconfig}: {exc}", file=sys.stderr)
        return 1
    try:
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                      console=console, transient=True) as progress:
            task = progress.add_task("scanning")
            facts = await insights.gather(client, args.context or "cluster",
                                          lambda what: progress.update(task, description=f"reading {what}"))
        plan = insights.plan(facts, args.target)
    except insights.InsightError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (ConnectionError, OSError, ApiError) as exc:
        print(f"error: cannot scan the cluster: {exc}", file=sys.stderr)
        return 1
    finally:
        await client.close()
    if args.output == "json":
        sys.stdout.buffer.write(orjson.dumps(plan.to_dict(), option=orjson.OPT_INDENT_2) + b"\n")
    else:
        _print_plan(plan)
    return 0


def _print_plan(plan: insights.UpgradePlan) -> None:
    console = Console()
    table = Table(title=f"Upgrade insights: {plan.current} -> {plan.target}")
    for column in ("HOP", "INSIGHT", "STATUS", "REASON"):
        table.add_column(column)
    for hop in plan.hops:
        for insight in hop.insights:
            table.add_row(hop.version, insight.name, f"[{_STYLE[insight.status]}]{insight.status}[/]", insight.reason)
    console.print(table)
    for hop in plan.hops:
        for insight in hop.insights:
            for resource in insight.resources:
                if resource["insightStatus"] in (insights.ERROR, insights.WARNING):
                    detail = resource.get("detail") or resource.get("source", "")
                    console.print(f"  {hop.version} {insight.id.split('@')[0]}: {resource['kubernetesResourceUri']}"
                                  f" ({detail})")
    blockers = sum(len(h.blockers) for h in plan.hops)
    console.print(f"summary: {len(plan.hops)} hop(s), {blockers} blocking insight(s), overall "
                  f"[{_STYLE[plan.status]}]{plan.status}[/]")
