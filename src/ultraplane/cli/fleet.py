"""`ultraplane fleet`: the layer above clusters.

`fleet up` starts a fleet on this machine (a fleet API server, member `up` clusters, the fleet controller);
`fleet join` adds any cluster by its kubeconfig; `fleet controller` runs the controller against a fleet
API; `fleet evacuate` / `fleet restore` move workloads out of a region and allow them back; `fleet
insights` reports the upgrade readiness of a cluster, hop by hop.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import signal
import sys
from pathlib import Path
from typing import Any

import orjson
import yaml
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from ultraplane.client import kubeconfig
from ultraplane.client.http import ApiError, KubeClient
from ultraplane.client.kubeconfig import KubeconfigError
from ultraplane.fleet import insights

_STYLE = {insights.ERROR: "bold red", insights.WARNING: "yellow", insights.PASSING: "green",
          insights.UNKNOWN: "dim"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("fleet", help="many clusters as one: federation, evacuation, upgrade insights",
                            description="Commands that act on a fleet of clusters through their API servers.")
    verbs = parser.add_subparsers(dest="fleet_command", metavar="VERB")
    _add_federation_verbs(verbs)
    scan = verbs.add_parser(
        "insights", help="upgrade readiness of a cluster, hop by hop to a target release",
        description="Scan a cluster for what an upgrade to --target would break or disrupt: APIs removed or "
                    "deprecated on the way (in applied manifests, Helm releases and API requests), kubelet "
                    "version skew, PodDisruptionBudgets that block a drain, workloads without probes, "
                    "replicas or spread. One set of findings per minor release on the way (a multi-hop plan).")
    scan.add_argument("--kubeconfig", help="kubeconfig of a cluster to scan directly")
    scan.add_argument("--cluster", help="a fleet member: read its UpgradeInsight from the fleet (with --fleet)")
    scan.add_argument("--refresh", action="store_true", help="with --cluster: ask for a new scan and wait for it")
    _fleet_flag(scan)
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
    if args.cluster:
        return await _member_insights(args, console)
    if not args.kubeconfig:
        print("error: give --kubeconfig FILE, or --cluster NAME with --fleet DIR", file=sys.stderr)
        return 2
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


async def _member_insights(args: argparse.Namespace, console: Console) -> int:
    """A member's UpgradeInsight as the fleet controller last scanned it (or after a refresh it waits for)."""
    from ultraplane.fleet.controller import INSIGHTS
    from ultraplane.fleet.members import now_rfc3339

    fleet = await _fleet_client(args)
    path = f"{INSIGHTS}/{args.cluster}"
    try:
        item = await fleet.get(path)
        if args.refresh or args.target:
            requested = now_rfc3339()
            spec: dict[str, Any] = {"refreshRequestedAt": requested}
            if args.target:
                spec["targetVersion"] = args.target
            await fleet.patch(path, {"spec": spec}, content_type="application/merge-patch+json")
            with console.status(f"waiting for a new scan of {args.cluster}"):
                deadline = asyncio.get_running_loop().time() + 120
                while (item.get("status") or {}).get("lastScanTime", "") < requested:
                    if asyncio.get_running_loop().time() > deadline:
                        print(f"error: no new scan of {args.cluster} within 120 s", file=sys.stderr)
                        return 1
                    await asyncio.sleep(0.5)
                    item = await fleet.get(path)
    except ApiError as exc:
        message = exc.status.get("message") if exc.status else str(exc)
        if exc.code == 404:
            message = f'cluster "{args.cluster}" has no insights: it is not a fleet member, or not scanned yet'
        print(f"error: {message}", file=sys.stderr)
        return 1
    finally:
        await fleet.close()
    status = item.get("status") or {}
    if args.output == "json":
        sys.stdout.buffer.write(orjson.dumps(status, option=orjson.OPT_INDENT_2) + b"\n")
        return 0
    if not status.get("hops"):
        print(f"error: {status.get('message') or 'no scan yet'}", file=sys.stderr)
        return 1
    plan = insights.UpgradePlan(status["cluster"], status["currentVersion"], status["targetVersion"], [
        insights.Hop(h["version"], [insights.Insight(**i) for i in h["insights"]]) for h in status["hops"]])
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


# ------------------------------------------------------------------------------------------ federation
def _fleet_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fleet", metavar="DIR", help="data dir of `fleet up` (its fleet kubeconfig is used)")
    parser.add_argument("--fleet-kubeconfig", metavar="FILE", help="kubeconfig of the fleet API server")


def _fleet_kubeconfig(args: argparse.Namespace) -> str:
    if args.fleet_kubeconfig:
        return args.fleet_kubeconfig
    if args.fleet:
        return str(Path(args.fleet) / "fleet" / "kubeconfig")
    raise SystemExit("error: give --fleet DIR or --fleet-kubeconfig FILE")


def _add_federation_verbs(verbs: argparse._SubParsersAction) -> None:
    from ultraplane.cli import fleetup

    fleetup.add_parser(verbs)
    join = verbs.add_parser("join", help="add a cluster to the fleet by its kubeconfig",
                            description="Store the cluster's credentials (a self-contained kubeconfig) as a Secret in "
                                        "the fleet API (karmada-cluster namespace, encrypted at rest) and create its "
                                        "Cluster object. The cluster must answer first.")
    join.add_argument("name", help="name of the member cluster in the fleet")
    join.add_argument("--kubeconfig", required=True, help="kubeconfig of the member cluster")
    join.add_argument("--context", help="context in that kubeconfig (default: current)")
    join.add_argument("--region", required=True)
    join.add_argument("--zone", action="append", default=[], help="zone(s) of the cluster (repeatable)")
    join.add_argument("--account", default="default", help="account the cluster belongs to (a label)")
    join.add_argument("--provider", default="ultraplane")
    _fleet_flag(join)
    join.set_defaults(run=lambda a: _run(_join(a)))

    unjoin = verbs.add_parser("unjoin", help="remove a member cluster from the fleet")
    unjoin.add_argument("name")
    _fleet_flag(unjoin)
    unjoin.set_defaults(run=lambda a: _run(_unjoin(a)))

    controller = verbs.add_parser("controller", help="run the fleet controller against a fleet API server",
                                  description="Karmada-style federation: cluster status and taints, propagation "
                                              "by policy, overrides, failover, evacuation.")
    _fleet_flag(controller)
    controller.add_argument("--cluster-failure-threshold", type=float, default=30.0,
                            help="seconds without an answer before a member is tainted unreachable")
    controller.add_argument("--sync-period", type=float, default=1.0, help="seconds between reconcile passes")
    controller.set_defaults(run=lambda a: _run(_controller(a)))

    evacuate = verbs.add_parser("evacuate", help="move every propagated workload out of a region",
                                description="Create an Evacuation: the region's clusters get a NoExecute taint, "
                                            "workloads are rescheduled elsewhere within capacity, and the old replicas "
                                            "are removed only once their replacements are Ready. Undo with restore.")
    evacuate.add_argument("region")
    evacuate.add_argument("--dry-run", action="store_true", help="show what would move where; change nothing")
    evacuate.add_argument("--no-wait", action="store_true", help="return once the Evacuation is created")
    evacuate.add_argument("--timeout", type=float, default=1800.0)
    _fleet_flag(evacuate)
    evacuate.set_defaults(run=lambda a: _run(_evacuate(a)))

    restore = verbs.add_parser("restore", help="allow workloads back into an evacuated region")
    restore.add_argument("region")
    _fleet_flag(restore)
    restore.set_defaults(run=lambda a: _run(_restore(a)))


def _run(coro: Any) -> int:
    from ultraplane.cli.up import run_loop

    return run_loop(coro)


async def _fleet_client(args: argparse.Namespace) -> KubeClient:
    return await KubeClient.from_kubeconfig(_fleet_kubeconfig(args))


async def _join(args: argparse.Namespace) -> int:
    try:
        flat = kubeconfig.flatten(args.kubeconfig, args.context)
    except (OSError, KubeconfigError) as exc:
        print(f"error: cannot use kubeconfig {args.kubeconfig}: {exc}", file=sys.stderr)
        return 1
    member = KubeClient.from_kubeconfig_data(flat, timeout=10.0)
    try:
        version = (await member.get("/version")).get("gitVersion", "")
    except (ConnectionError, OSError, TimeoutError, ApiError) as exc:
        print(f"error: cluster {args.name} does not answer at {flat['clusters'][0]['cluster'].get('server')}: {exc}",
              file=sys.stderr)
        return 1
    finally:
        await member.close()
    fleet = await _fleet_client(args)
    try:
        await join_cluster(fleet, args.name, flat, args.region, args.zone, args.account, args.provider)
    except ApiError as exc:
        print(f"error: {exc.status.get('message') if exc.status else exc}", file=sys.stderr)
        return 1
    finally:
        await fleet.close()
    print(f"cluster {args.name} ({version}) joined the fleet in region {args.region}")
    return 0


async def join_cluster(fleet: KubeClient, name: str, flat: dict[str, Any], region: str, zones: list[str],
                       account: str, provider: str) -> None:
    """The Secret with the member's credentials, then its Cluster object (Push mode, as Karmada's join)."""
    from ultraplane.fleet import members

    secret = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
              "metadata": {"name": name, "namespace": members.SECRET_NAMESPACE},
              "data": {"kubeconfig": base64.b64encode(yaml.safe_dump(flat).encode()).decode()}}
    try:
        await fleet.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                  "metadata": {"name": members.SECRET_NAMESPACE}})
    except ApiError as exc:
        if exc.code != 409:
            raise
    try:
        await fleet.create(f"/api/v1/namespaces/{members.SECRET_NAMESPACE}/secrets", secret)
    except ApiError as exc:
        if exc.code != 409:
            raise
        await fleet.update(f"/api/v1/namespaces/{members.SECRET_NAMESPACE}/secrets/{name}", secret)
    cluster = {"apiVersion": "cluster.karmada.io/v1alpha1", "kind": "Cluster",
               "metadata": {"name": name, "labels": {members.ACCOUNT_LABEL: account, members.REGION_LABEL: region}},
               "spec": {"syncMode": "Push", "apiEndpoint": flat["clusters"][0]["cluster"].get("server", ""),
                        "secretRef": {"namespace": members.SECRET_NAMESPACE, "name": name},
                        "provider": provider, "region": region,
                        **({"zones": zones, "zone": zones[0]} if zones else {})}}
    await fleet.create(members.CLUSTERS, cluster)


async def _unjoin(args: argparse.Namespace) -> int:
    from ultraplane.fleet import members

    fleet = await _fleet_client(args)
    try:
        await fleet.delete(f"{members.CLUSTERS}/{args.name}")
        with contextlib.suppress(ApiError):
            await fleet.delete(f"/api/v1/namespaces/{members.SECRET_NAMESPACE}/secrets/{args.name}")
    except ApiError as exc:
        print(f"error: {exc.status.get('message') if exc.status else exc}", file=sys.stderr)
        return 1
    finally:
        await fleet.close()
    print(f"cluster {args.name} left the fleet")
    return 0


async def _controller(args: argparse.Namespace) -> int:
    from ultraplane.fleet.controller import FleetController

    fleet = await _fleet_client(args)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await FleetController(fleet, sync_period=args.sync_period,
                              failure_threshold=args.cluster_failure_threshold).run(stop)
    finally:
        await fleet.close()
    return 0


async def _evacuate(args: argparse.Namespace) -> int:
    from ultraplane.fleet import evacuation

    fleet = await _fleet_client(args)
    console = Console(stderr=True)
    try:
        if args.dry_run:
            plan = await evacuation.dry_run(fleet, args.region)
            evacuation.print_dry_run(plan, Console())
            return 0 if plan.feasible else 1
        await evacuation.start(fleet, args.region)
        if args.no_wait:
            print(f"evacuation of {args.region} started")
            return 0
        status = await evacuation.follow(fleet, args.region, console, args.timeout)
    except evacuation.EvacuationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        await fleet.close()
    return 0 if status.get("phase") == "Completed" else 1


async def _restore(args: argparse.Namespace) -> int:
    from ultraplane.fleet import evacuation

    fleet = await _fleet_client(args)
    try:
        await evacuation.restore(fleet, args.region)
    except evacuation.EvacuationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        await fleet.close()
    print(f"region {args.region} accepts workloads again")
    return 0
