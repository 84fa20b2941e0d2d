"""Fleet benchmarks on one machine: region evacuation throughput, and propagation / LIST latency.

evacuate: a fleet of three regions, one cluster each. Deployments are placed by a PropagationPolicy with
ordered cluster affinities (r1 first, r2+r3 as the fallback) and dynamic weights, so the whole workload
runs in r1. Then `evacuate r1`: every replica is recreated in r2 and r3 within their capacity, becomes
Ready, and only then is the r1 copy deleted. Reported: pods/s from the evacuate call to Completed.

latency: six clusters (three regions x two); the time from creating a Deployment in the fleet API until
its aggregated status shows every replica Ready, and the time of fleet-level LISTs (Clusters,
ResourceBindings on the fleet API; Deployments across all members in parallel).

    .venv/bin/python bench/fleet_bench.py evacuate --deployments 200 --replicas 100
    .venv/bin/python bench/fleet_bench.py latency --apps 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ultraplane.client.http import ApiError, KubeClient

console = Console()
DEPLOYMENTS = "/apis/apps/v1/namespaces/default/deployments"


def start_fleet(root: Path, regions: str, per_region: int, node_type: str) -> subprocess.Popen[bytes]:
    log = open(root / "fleet-up.log", "wb")  # noqa: SIM115 - lives as long as the fleet
    return subprocess.Popen([sys.executable, "-m", "ultraplane", "fleet", "up", "--data-dir", str(root),
                             "--regions", regions, "--clusters-per-region", str(per_region), "--node-type",
                             node_type, "--unsafe-no-fsync", "--registry-port", "0"], stdout=log, stderr=subprocess.STDOUT)


async def wait_clusters(fleet: KubeClient, count: int, proc: subprocess.Popen[bytes], root: Path) -> None:
    with console.status(f"waiting for {count} Ready clusters"):
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"fleet up exited:\n{(root / 'fleet-up.log').read_text()[-3000:]}")
            try:
                items = (await fleet.list("/apis/cluster.karmada.io/v1alpha1/clusters")).get("items") or []
            except (ApiError, ConnectionError, OSError):
                items = []
            ready = [c for c in items if (c.get("status") or {}).get("nodeSummary", {}).get("readyNum")
                     and any(x["type"] == "Ready" and x["status"] == "True" for x in c["status"]["conditions"])]
            if len(ready) >= count:
                return
            await asyncio.sleep(1)


async def fleet_client(root: Path) -> KubeClient:
    path = root / "fleet" / "kubeconfig"
    while not path.exists():
        await asyncio.sleep(0.5)
    return await KubeClient.from_kubeconfig(path, max_connections=64)


def deployment(name: str, replicas: int) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": {"bench": "fleet"}},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]}}}}


async def ready_replicas(fleet: KubeClient) -> tuple[int, int]:
    items = (await fleet.list(DEPLOYMENTS, {"labelSelector": "bench=fleet"})).get("items") or []
    return sum((d.get("status") or {}).get("readyReplicas", 0) for d in items), len(items)


async def evacuate(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    total = args.deployments * args.replicas
    nodes_r1 = -(-total // 220) + 2
    proc = start_fleet(root, "r1,r2,r3", 1, f"m5.4xlarge={nodes_r1}")
    fleet = await fleet_client(root)
    results: dict[str, float] = {}
    try:
        await wait_clusters(fleet, 3, proc, root)
        policy = {"apiVersion": "policy.karmada.io/v1alpha1", "kind": "PropagationPolicy",
                  "metadata": {"name": "bench", "namespace": "default"},
                  "spec": {"resourceSelectors": [{"apiVersion": "apps/v1", "kind": "Deployment",
                                                  "labelSelector": {"matchLabels": {"bench": "fleet"}}}],
                           "placement": {"clusterAffinities": [
                               {"affinityName": "primary", "clusterNames": ["r1-c1"]},
                               {"affinityName": "fallback", "clusterNames": ["r2-c1", "r3-c1"]}],
                               "replicaScheduling": {"replicaSchedulingType": "Divided",
                                                     "replicaDivisionPreference": "Weighted",
                                                     "weightPreference": {"dynamicWeight": "AvailableReplicas"}}}}}
        await fleet.create("/apis/policy.karmada.io/v1alpha1/namespaces/default/propagationpolicies", policy)
        started = time.monotonic()
        await asyncio.gather(*(fleet.create(DEPLOYMENTS, deployment(f"app-{i}", args.replicas))
                               for i in range(args.deployments)))
        await follow("placing in r1", fleet, total, lambda: ready_replicas(fleet))
        results["place_s"] = time.monotonic() - started

        started = time.monotonic()
        await fleet.create("/apis/fleet.ultraplane.io/v1alpha1/evacuations",
                           {"apiVersion": "fleet.ultraplane.io/v1alpha1", "kind": "Evacuation",
                            "metadata": {"name": "evacuate-r1"}, "spec": {"region": "r1"}})

        async def moved() -> tuple[int, int]:
            status = (await fleet.get("/apis/fleet.ultraplane.io/v1alpha1/evacuations/evacuate-r1")).get(
                "status") or {}
            done = status.get("phase") == "Completed"
            return (status.get("movedReplicas", 0), 1 if done else 0)

        await follow("evacuating r1", fleet, total, moved, done_when_second=True)
        results["evacuate_s"] = time.monotonic() - started
        ready, _ = await ready_replicas(fleet)
        results["ready_after"] = ready
    finally:
        await fleet.close()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(root, ignore_errors=True)
    table = Table(title=f"evacuation of {total} pods ({args.deployments} x {args.replicas})")
    for column in ("phase", "seconds", "pods/s"):
        table.add_column(column)
    table.add_row("place in r1", f"{results['place_s']:.1f}", f"{total / results['place_s']:.0f}")
    table.add_row("evacuate r1 (Completed)", f"{results['evacuate_s']:.1f}", f"{total / results['evacuate_s']:.0f}")
    console.print(table)
    console.print(f"summary: {total} pods evacuated in {results['evacuate_s']:.1f} s "
                  f"({total / results['evacuate_s']:.0f} pods/s, goal 333); {results['ready_after']} Ready after")
    print(json.dumps({"pods": total, **results}))


async def follow(what: str, fleet: KubeClient, total: int, probe: object, done_when_second: bool = False) -> None:
    with Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task(what, total=total)
        while True:
            first, second = await probe()  # type: ignore[operator]
            bar.update(task, completed=first)
            if (second if done_when_second else first >= total):
                return
            await asyncio.sleep(1)


async def latency(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    proc = start_fleet(root, "r1,r2,r3", 2, "m5.4xlarge=2")
    fleet = await fleet_client(root)
    propagate: list[float] = []
    lists: dict[str, list[float]] = {"clusters": [], "bindings": [], "deployments x6": []}
    try:
        await wait_clusters(fleet, 6, proc, root)
        await fleet.create("/apis/policy.karmada.io/v1alpha1/clusterpropagationpolicies",
                           {"apiVersion": "policy.karmada.io/v1alpha1", "kind": "ClusterPropagationPolicy",
                            "metadata": {"name": "bench"},
                            "spec": {"resourceSelectors": [{"apiVersion": "apps/v1", "kind": "Deployment"}],
                                     "placement": {"replicaScheduling": {"replicaSchedulingType": "Divided"}}}})
        members = [await KubeClient.from_kubeconfig(p / "kubeconfig") for p in sorted((root / "clusters").iterdir())]
        for i in range(args.apps):
            started = time.monotonic()
            await fleet.create(DEPLOYMENTS, deployment(f"lat-{i}", 6))
            while True:
                status = (await fleet.get(f"{DEPLOYMENTS}/lat-{i}")).get("status") or {}
                if status.get("readyReplicas") == 6:
                    break
                await asyncio.sleep(0.05)
            propagate.append(time.monotonic() - started)
            for name, call in (("clusters", lambda: fleet.list("/apis/cluster.karmada.io/v1alpha1/clusters")),
                               ("bindings", lambda: fleet.list("/apis/work.karmada.io/v1alpha2/resourcebindings")),
                               ("deployments x6", lambda: asyncio.gather(*(m.list("/apis/apps/v1/deployments")
                                                                            for m in members)))):
                t0 = time.monotonic()
                await call()
                lists[name].append(time.monotonic() - t0)
        for m in members:
            await m.close()
    finally:
        await fleet.close()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(root, ignore_errors=True)
    table = Table(title=f"fleet latency, 6 clusters, {args.apps} Deployments of 6 replicas")
    for column in ("measure", "median ms", "p90 ms", "max ms"):
        table.add_column(column)

    def row(name: str, values: list[float]) -> None:
        ordered = sorted(values)
        table.add_row(name, f"{statistics.median(ordered) * 1000:.0f}",
                      f"{ordered[int(0.9 * (len(ordered) - 1))] * 1000:.0f}", f"{ordered[-1] * 1000:.0f}")

    row("create -> all replicas Ready (aggregated)", propagate)
    for name, values in lists.items():
        row(f"LIST {name}", values)
    console.print(table)
    console.print(f"summary: propagation median {statistics.median(propagate) * 1000:.0f} ms over {args.apps} apps")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    evac = sub.add_parser("evacuate")
    evac.add_argument("--deployments", type=int, default=200)
    evac.add_argument("--replicas", type=int, default=100)
    lat = sub.add_parser("latency")
    lat.add_argument("--apps", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(evacuate(args) if args.what == "evacuate" else latency(args))


if __name__ == "__main__":
    main()
