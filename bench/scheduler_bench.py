"""Scheduler throughput (issue 5): pods/s at 5,000 and 100,000 nodes.

Two figures, reported separately:

* core: the scheduler's cache fed directly with Node objects (a mix of CPU and 8-GPU instance
  types over three zones) and a burst of pending pods (700 deployments of a few request shapes,
  GPU pods with tolerations, zone selectors, and a share with required pod anti-affinity that takes
  the generic path). Measures decisions + cache assumptions per second on one core.
* end-to-end (--e2e-nodes): `ultraplane up --no-scheduler`, nodes and pending pods created through
  the API, then `ultraplane scheduler` started; measured from its start (informer list + sync
  included) and from its first binding until every pod has spec.nodeName, watched through the API.

    .venv/bin/python bench/scheduler_bench.py [--nodes 5000,100000] [--pods 30000] [--bare-pods]
                                              [--src OTHER/src] [--e2e-nodes 5000] [--e2e-pods 5000]

The core run's pods belong to ReplicaSets (ownerReferences), as a Deployment's do, so PodTopologySpread's
system default constraints apply; --bare-pods leaves the owners out. "max per node" and "zone skew" show
how far one deployment's replicas bunch up on a node and across the three zones.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
# --src DIR measures another copy of the package (e.g. the scheduler before a change) with the same workload.
SRC = next((a.split("=", 1)[1] if "=" in a else sys.argv[i + 2] for i, a in enumerate(sys.argv[1:])
            if a.startswith("--src")), "") or str(REPO / "src")
sys.path.insert(0, SRC)

from ultraplane.scheduler.cache import ClusterCache  # noqa: E402
from ultraplane.scheduler.core import Algorithm, FitError  # noqa: E402
from ultraplane.scheduler.model import pod_info  # noqa: E402

console = Console(width=150)
ZONES = ("us-east-1a", "us-east-1b", "us-east-1c")
# (instance type, cpu, memory, gpus, share of the fleet)
NODE_TYPES = (("m5.24xlarge", "96", "384Gi", 0, 0.6), ("c5.18xlarge", "72", "144Gi", 0, 0.2),
              ("p5.48xlarge", "192", "2048Gi", 8, 0.2))
SCHEDULER_COMMAND = [sys.executable, "-m", "ultraplane", "scheduler"]
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}


def node_object(i: int, rng: random.Random) -> dict[str, Any]:
    roll, acc = rng.random(), 0.0
    chosen = NODE_TYPES[-1]
    for node_type in NODE_TYPES:
        acc += node_type[4]
        if roll <= acc:
            chosen = node_type
            break
    itype, cpu, memory, gpus, _ = chosen
    alloc = {"cpu": cpu, "memory": memory, "pods": "110", "ephemeral-storage": "500Gi"}
    if gpus:
        alloc["nvidia.com/gpu"] = str(gpus)
    name = f"node-{i:06d}"
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "node.kubernetes.io/instance-type": itype,
                                                  "topology.kubernetes.io/zone": ZONES[i % 3]}},
            "spec": {"taints": [GPU_TAINT] if gpus else []},
            "status": {"capacity": alloc, "allocatable": alloc}}


def replicaset_object(dep: int) -> dict[str, Any]:
    labels = {"app": f"dep-{dep}", "pod-template-hash": f"h{dep:04d}"}
    return {"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": f"dep-{dep}-h{dep:04d}", "namespace": "bench", "uid": f"rs-{dep}", "labels": labels},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels}}}


def pod_object(i: int, rng: random.Random, deployments: int = 700, owned: bool = False) -> dict[str, Any]:
    dep = i % deployments
    shape = dep % 10
    spec: dict[str, Any] = {}
    if shape < 6:
        requests = {"cpu": ("250m", "500m", "1", "2")[shape % 4], "memory": ("256Mi", "512Mi", "1Gi", "4Gi")[shape % 4]}
    elif shape < 8:
        requests = {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1" if shape == 6 else "4"}
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    elif shape == 8:
        requests = {"cpu": "500m", "memory": "512Mi"}
        spec["nodeSelector"] = {"topology.kubernetes.io/zone": ZONES[dep % 3]}
    else:
        requests = {"cpu": "1", "memory": "1Gi"}
        if dep % 70 == 9:  # 1 in 70 deployments: one replica per node
            spec["affinity"] = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": f"dep-{dep}"}}, "topologyKey": "kubernetes.io/hostname"}]}}
    meta: dict[str, Any] = {"name": f"dep-{dep}-{i:07d}", "namespace": "bench", "labels": {"app": f"dep-{dep}"}}
    if owned:  # a Deployment's pod: owned by its ReplicaSet, so default spreading applies
        rs = replicaset_object(dep)
        meta["labels"] = dict(rs["metadata"]["labels"])
        meta["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs["metadata"]["name"],
                                    "uid": rs["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10",
                                     "resources": {"requests": requests, "limits": requests}}], **spec}}


def core_run(nodes: int, pods: int, owned: bool, deployments: int = 700) -> dict[str, Any]:
    rng = random.Random(nodes)
    cache = ClusterCache()
    start = time.perf_counter()
    for i in range(nodes):
        cache.upsert_node(node_object(i, rng))
    if owned and hasattr(cache, "upsert_workload"):  # a scheduler without default spreading ignores owners
        for dep in range(deployments):
            cache.upsert_workload("ReplicaSet", replicaset_object(dep))
    feed_s = time.perf_counter() - start
    algo = Algorithm(cache, seed=1)
    infos = [pod_info(pod_object(i, rng, deployments, owned=owned)) for i in range(pods)]
    failed = 0
    with Progress(TextColumn(f"core {nodes:,} nodes"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        task = progress.add_task("pods", total=pods)
        start = time.perf_counter()
        cpu_start = time.process_time()  # on a shared machine, CPU seconds are steadier than wall seconds
        for n, info in enumerate(infos, 1):
            try:
                cache.assume(info, algo.schedule(info))
            except FitError:
                failed += 1
            if n % 1000 == 0:
                progress.update(task, completed=n)
        elapsed = time.perf_counter() - start
        cpu_s = time.process_time() - cpu_start
        progress.update(task, completed=pods)
    # Placement quality: the most replicas of one deployment on one node, and per-zone imbalance.
    per_node: dict[tuple[str, str], int] = {}
    per_zone: dict[str, dict[str, int]] = {}
    for pod in cache.pods.values():
        app = pod.labels["app"]
        per_node[(app, pod.node_name)] = per_node.get((app, pod.node_name), 0) + 1
        if not pod.spec.get("nodeSelector"):  # zone-pinned deployments cannot spread over zones
            zone = cache.nodes[pod.node_name].labels["topology.kubernetes.io/zone"]
            per_zone.setdefault(app, dict.fromkeys(ZONES, 0))[zone] += 1
    zone_skew = max((max(z.values()) - min(z.values()) for z in per_zone.values()), default=0)
    return {"nodes": nodes, "pods": pods, "failed": failed, "seconds": elapsed, "rate": pods / elapsed,
            "feed_s": feed_s, "generic": algo.stats["generic"], "classes": len(algo.classes),
            "evaluated": algo.stats["evaluated"] + algo.stats["rescored"], "owned": owned,
            "cpu_s": cpu_s, "rate_cpu": pods / cpu_s,
            "max_per_node": max(per_node.values(), default=0), "zone_skew": zone_skew}


# ---------------------------------------------------------------------- end to end
async def e2e_run(nodes: int, pods: int, work: Path) -> dict[str, Any]:
    from tests.harness import free_port
    from ultraplane.client.http import KubeClient

    port, etcd_port = free_port(), free_port()
    data = work / "data"
    logs = open(work / "up.log", "wb")  # noqa: SIM115
    up = subprocess.Popen([sys.executable, "-m", "ultraplane", "up", "--data-dir", str(data), "--no-scheduler",
                           "--secure-port", str(port), "--etcd-port", str(etcd_port), "--unsafe-no-fsync"],
                          stdout=logs, stderr=subprocess.STDOUT)
    sched: subprocess.Popen[bytes] | None = None
    try:
        kubeconfig = data / "kubeconfig"
        deadline = time.monotonic() + 60
        client = None
        while client is None:
            if time.monotonic() > deadline:
                raise TimeoutError("ultraplane up did not start")
            try:
                if kubeconfig.exists():
                    client = await KubeClient.from_kubeconfig(str(kubeconfig))
                    await client.get("/api/v1/namespaces/default")
            except Exception:  # noqa: BLE001 - not up yet
                client = None
                await asyncio.sleep(0.3)
        rng = random.Random(nodes)
        await client.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                   "metadata": {"name": "bench"}})

        async def fill(what: str, total: int, make: Any) -> float:
            sem = asyncio.Semaphore(64)
            t0 = time.perf_counter()
            with Progress(TextColumn(f"creating {what}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          console=console) as progress:
                task = progress.add_task(what, total=total)

                async def one(i: int) -> None:
                    async with sem:
                        await make(i)
                    progress.advance(task)

                await asyncio.gather(*(one(i) for i in range(total)))
            return total / (time.perf_counter() - t0)

        async def make_node(i: int) -> None:
            obj = node_object(i, rng)
            status = obj.pop("status")
            await client.create("/api/v1/nodes", obj)
            await client.patch(f"/api/v1/nodes/{obj['metadata']['name']}/status", {"status": status})

        async def make_pod(i: int) -> None:
            await client.create("/api/v1/namespaces/bench/pods", pod_object(i, rng))

        node_rate = await fill("nodes", nodes, make_node)
        pod_rate = await fill("pods", pods, make_pod)
        listing = await client.list("/api/v1/namespaces/bench/pods")
        rv = listing["metadata"]["resourceVersion"]
        sched = subprocess.Popen([*SCHEDULER_COMMAND, "--kubeconfig", str(kubeconfig)],
                                 stdout=logs, stderr=subprocess.STDOUT)
        started = time.perf_counter()
        bound: set[str] = set()
        unschedulable: set[str] = set()
        first = 0.0
        with Progress(TextColumn(f"e2e {nodes:,} nodes: bound"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console) as progress:
            task = progress.add_task("bound", total=pods)
            async for event in client.watch("/api/v1/namespaces/bench/pods",
                                            {"resourceVersion": rv, "allowWatchBookmarks": "true"}):
                obj = event.get("object") or {}
                if event.get("type") != "MODIFIED":
                    continue
                name = obj["metadata"]["name"]
                if (obj.get("spec") or {}).get("nodeName"):
                    if name not in bound:
                        if not bound:
                            first = time.perf_counter()
                        bound.add(name)
                        unschedulable.discard(name)
                elif any(c.get("reason") == "Unschedulable" for c in (obj.get("status") or {}).get("conditions") or []):
                    unschedulable.add(name)
                progress.update(task, completed=len(bound) + len(unschedulable))
                if len(bound) + len(unschedulable) >= pods or time.perf_counter() - started > 600:
                    break
        done = time.perf_counter()
        await client.close()
        return {"nodes": nodes, "pods": pods, "bound": len(bound), "unschedulable": len(unschedulable),
                "total_s": done - started,
                "rate_total": len(bound) / (done - started), "rate_steady": len(bound) / max(1e-9, done - first),
                "node_create_rate": node_rate, "pod_create_rate": pod_rate}
    finally:
        for proc in (sched, up):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        logs.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", default="5000,100000", help="comma-separated node counts for the core run")
    parser.add_argument("--pods", type=int, default=30000, help="pods per core run")
    parser.add_argument("--e2e-nodes", default="", help="comma-separated node counts for end-to-end runs")
    parser.add_argument("--e2e-pods", type=int, default=5000)
    parser.add_argument("--bare-pods", action="store_true",
                        help="core run: pods without an owning ReplicaSet (no default topology spreading)")
    parser.add_argument("--deployments", type=int, default=700,
                        help="core run: deployments the pods belong to (fewer: more replicas per deployment)")
    parser.add_argument("--src", default="", help="import ultraplane from this directory (e.g. an older copy)")
    parser.add_argument("--json", default="", help="also write the core results to this file")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    core = [core_run(int(n), args.pods, not args.bare_pods, args.deployments) for n in args.nodes.split(",") if n]
    table = Table(title=f"scheduler core (cache fed directly, one process; {SRC})")
    for col in ("nodes", "pods", "owned by RS", "unschedulable", "pods/s", "pods per CPU-s", "generic path",
                "classes", "node evaluations", "max per node", "zone skew"):
        table.add_column(col, justify="right")
    for r in core:
        table.add_row(f"{r['nodes']:,}", f"{r['pods']:,}", "yes" if r["owned"] else "no", f"{r['failed']:,}",
                      f"{r['rate']:,.0f}", f"{r['rate_cpu']:,.0f}", f"{r['generic']:,}", f"{r['classes']:,}",
                      f"{r['evaluated']:,}", f"{r['max_per_node']}", f"{r['zone_skew']}")
    if core:
        console.print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(core, indent=1))
    e2e = []
    for n in filter(None, args.e2e_nodes.split(",")):
        work = Path(tempfile.mkdtemp(prefix="ultraplane-schedbench-"))
        try:
            e2e.append(asyncio.run(e2e_run(int(n), args.e2e_pods, work)))
        finally:
            shutil.rmtree(work, ignore_errors=True)
    if e2e:
        table = Table(title="end to end (ultraplane up + ultraplane scheduler, bindings observed by watch)")
        for col in ("nodes", "pods", "bound", "unschedulable", "pods/s incl. sync", "pods/s from first bind", "node creates/s",
                    "pod creates/s"):
            table.add_column(col, justify="right")
        for r in e2e:
            table.add_row(f"{r['nodes']:,}", f"{r['pods']:,}", f"{r['bound']:,}", f"{r['unschedulable']:,}",
                          f"{r['rate_total']:,.0f}",
                          f"{r['rate_steady']:,.0f}", f"{r['node_create_rate']:,.0f}", f"{r['pod_create_rate']:,.0f}")
        console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
