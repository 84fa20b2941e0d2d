"""Whole-cluster benchmarks of issue 5: the 70,000-pod burst and a clusterloader2-style load profile.

Both start `ultraplane up` with simulated nodes (API server, store, scheduler, controllers and the
nodes process, all as `up` runs them for users), then drive it through the API only:

* burst: D deployments x R replicas created at once; every pod is followed through a watch until it
  is Running. Reports pods/s, pod startup p50/p99 (first seen by the watch -> Running), and the API
  p99 per verb from the server's apiserver_request_duration_seconds histogram.
* load: clusterloader2's load test shape: 30 pods per node over deployments of 250, 30 and 5 pods,
  created at --qps pods/s, then every deployment scaled by +/-50%; checked against the upstream
  SLOs (mutating API calls p99 <= 1 s, pod startup p99 <= 5 s).

    .venv/bin/python bench/cluster_burst.py burst [--deployments 700 --replicas 100 --nodes 700]
    .venv/bin/python bench/cluster_burst.py load [--nodes 100 --qps 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from ultraplane.client.http import MERGE, ApiError, KubeClient  # noqa: E402

console = Console()
NODE_TYPE = "m5.4xlarge"  # 16 vCPU, 64 GiB, 234 pods (EKS AMI max pods): 700 nodes hold 70,000 pods at 100 each
IMAGE = "registry.k8s.io/pause:3.10"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def process_tree(pid: int) -> Iterator[tuple[list[str], list[bytes]]]:
    """(/proc stat fields after the command name, argv) of a process and all its descendants."""
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            stat = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            argv = Path(f"/proc/{current}/cmdline").read_bytes().split(b"\0")
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except (OSError, IndexError):
            continue
        yield stat, argv
        pending.extend(int(c) for c in children)


def cpu_seconds(stat: list[str]) -> float:
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


def tree_usage(pid: int) -> tuple[float, float]:
    """RSS (GiB) and CPU seconds of a process and all its descendants, from /proc."""
    rss = cpu = 0.0
    for stat, _argv in process_tree(pid):
        cpu += cpu_seconds(stat)
        rss += int(stat[21]) * os.sysconf("SC_PAGE_SIZE") / 2**30
    return rss, cpu


def component_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per control-plane component (the `ultraplane <command>` of each process in the tree)."""
    out: dict[str, float] = {}
    for stat, argv in process_tree(pid):
        name = argv[argv.index(b"ultraplane") + 1].decode() if b"ultraplane" in argv[:-1] else "other"
        out[name] = out.get(name, 0.0) + cpu_seconds(stat)
    return out


class ControlPlane:
    def __init__(self, nodes: int, extra: list[str]) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="ultraplane-burst-"))
        self.port = free_port()
        self.log = open(self.work / "up.log", "wb")  # noqa: SIM115 - closed in stop()
        argv = [sys.executable, "-m", "ultraplane", "up", "--data-dir", str(self.work / "data"),
                "--secure-port", str(self.port), "--etcd-port", str(free_port()), "--unsafe-no-fsync",
                "--node-type", f"{NODE_TYPE}={nodes}", *extra]
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.kubeconfig = self.work / "data" / "kubeconfig"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
        self.log.close()
        if os.environ.get("ULTRAPLANE_KEEP_BENCH_DIRS") != "1":
            shutil.rmtree(self.work, ignore_errors=True)


async def wait_for_api(cp: ControlPlane) -> KubeClient:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if cp.proc.poll() is not None:
            raise RuntimeError(f"ultraplane up exited; see {cp.work / 'up.log'}")
        if cp.kubeconfig.exists():
            try:
                client = await KubeClient.from_kubeconfig(cp.kubeconfig, max_connections=32)
                if (await client.raw("GET", "/readyz")).status == 200:
                    return client
                await client.close()
            except (OSError, ApiError, ValueError):
                pass
        await asyncio.sleep(0.5)
    raise RuntimeError("API server did not become ready")


async def wait_for_nodes(client: KubeClient, count: int, progress: Progress) -> float:
    task = progress.add_task("nodes Ready", total=count)
    started = time.monotonic()
    while True:
        nodes = (await client.list("/api/v1/nodes"))["items"]
        ready = sum(1 for n in nodes for c in (n.get("status") or {}).get("conditions") or []
                    if c.get("type") == "Ready" and c.get("status") == "True")
        progress.update(task, completed=ready)
        if ready >= count:
            return time.monotonic() - started
        await asyncio.sleep(1)


class PodTracker:
    """Follows every pod through one watch: first seen, and first seen Running."""

    def __init__(self, client: KubeClient, namespace: str) -> None:
        self.client = client
        self.namespace = namespace
        self.seen: dict[str, float] = {}
        self.bound: dict[str, float] = {}
        self.running: dict[str, float] = {}
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        listed = await self.client.list(f"/api/v1/namespaces/{self.namespace}/pods")
        self.task = asyncio.ensure_future(self._follow(listed["metadata"]["resourceVersion"]))

    async def _follow(self, version: str) -> None:
        path = f"/api/v1/namespaces/{self.namespace}/pods"
        while True:
            async for event in self.client.watch(path, {"resourceVersion": version, "allowWatchBookmarks": "true"}):
                obj = event.get("object") or {}
                if event.get("type") == "ERROR":
                    raise ApiError(obj)
                version = obj["metadata"].get("resourceVersion", version)
                name = obj["metadata"].get("name")
                if event["type"] in ("BOOKMARK", "DELETED") or not name:
                    continue
                now = time.monotonic()
                self.seen.setdefault(name, now)
                if (obj.get("spec") or {}).get("nodeName"):
                    self.bound.setdefault(name, now)
                if (obj.get("status") or {}).get("phase") == "Running" and name not in self.running:
                    self.running[name] = now

    def startups(self) -> list[float]:
        return [self.running[n] - self.seen[n] for n in self.running]

    def phases(self) -> tuple[list[float], list[float]]:
        """(first seen -> bound, bound -> Running): where the startup time goes."""
        return ([self.bound[n] - self.seen[n] for n in self.bound],
                [self.running[n] - self.bound[n] for n in self.running if n in self.bound])

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()


async def request_counts(client: KubeClient) -> dict[str, float]:
    """apiserver_request_total summed per "VERB resource/subresource"."""
    text = (await client.raw("GET", "/metrics")).body.decode()
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels, value = line.rsplit(" ", 1)
        fields = {k: v.strip('"') for k, v in (p.split("=", 1) for p in labels[labels.index("{") + 1:-1].split(","))}
        what = f"{fields.get('verb', '')} {fields.get('resource', '')}"
        if fields.get("subresource"):
            what += "/" + fields["subresource"]
        counts[what] = counts.get(what, 0.0) + float(value)
    return counts


async def api_p99(client: KubeClient, q: float = 0.99) -> dict[str, float]:
    """The q quantile per verb (seconds, a bucket bound) of the server's request-duration histogram, over all
    resources, counted since the server started."""
    text = (await client.raw("GET", "/metrics")).body.decode()
    buckets: dict[str, dict[float, float]] = {}
    for line in text.splitlines():
        if not line.startswith("apiserver_request_duration_seconds_bucket{"):
            continue
        labels, value = line.rsplit(" ", 1)
        fields = dict(part.split("=", 1) for part in labels[labels.index("{") + 1:-1].split(","))
        verb = fields.get("verb", "").strip('"')
        le = fields.get("le", "").strip('"')
        bound = float("inf") if le == "+Inf" else float(le)
        per_verb = buckets.setdefault(verb, {})
        per_verb[bound] = per_verb.get(bound, 0.0) + float(value)
    result = {}
    for verb, cumulative in buckets.items():
        total = cumulative.get(float("inf"), 0.0)
        if total < 1:
            continue
        result[verb] = next(b for b in sorted(cumulative) if cumulative[b] >= q * total)
    return result


def deployment(name: str, replicas: int) -> dict[str, Any]:
    labels = {"app": name}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": labels},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "app", "image": IMAGE,
                                                           "resources": {"requests": {"cpu": "10m",
                                                                                      "memory": "16Mi"}}}]}}}}


async def create_all(client: KubeClient, namespace: str, items: list[dict[str, Any]], qps: float = 0.0,
                     weights: list[int] | None = None) -> None:
    """Create the deployments, all at once or paced so their pods arrive at `qps` pods/s."""
    path = f"/apis/apps/v1/namespaces/{namespace}/deployments"
    if not qps:
        slots = asyncio.Semaphore(32)

        async def one(item: dict[str, Any]) -> None:
            async with slots:
                await client.create(path, item)

        await asyncio.gather(*(one(i) for i in items))
        return
    started = time.monotonic()
    pods = 0
    for item, weight in zip(items, weights or [1] * len(items), strict=True):
        await client.create(path, item)
        pods += weight
        delay = started + pods / qps - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


async def follow(tracker: PodTracker, total: int, progress: Progress, label: str, timeout: float,
                 cp: ControlPlane) -> tuple[bool, float, float]:
    created = progress.add_task(f"{label}: pods seen", total=total)
    running = progress.add_task(f"{label}: pods Running", total=total)
    deadline = time.monotonic() + timeout
    peak_rss = 0.0
    while time.monotonic() < deadline:
        progress.update(created, completed=len(tracker.seen))
        progress.update(running, completed=len(tracker.running))
        rss, cpu = tree_usage(cp.proc.pid)
        peak_rss = max(peak_rss, rss)
        if len(tracker.running) >= total:
            return True, peak_rss, cpu
        if cp.proc.poll() is not None:
            raise RuntimeError(f"ultraplane up exited; see {cp.work / 'up.log'}")
        await asyncio.sleep(0.5)
    return False, peak_rss, tree_usage(cp.proc.pid)[1]


def event_writes(counts: dict[str, float]) -> float:
    return sum(v for k, v in counts.items() if k.startswith(("POST events", "PATCH events")))


async def drain_events(client: KubeClient, progress: Progress, limit: float = 300.0) -> tuple[float, float]:
    """Wait until event writes stop (the kubelets' event queues are sent after pod status, as client-go's
    broadcaster does): (seconds until no event was written for 5 s, event writes counted then)."""
    task = progress.add_task("events: written after all Running", total=None)
    started = time.monotonic()
    last = event_writes(await request_counts(client))
    quiet_since = time.monotonic()
    while time.monotonic() - started < limit:
        await asyncio.sleep(1.0)
        now = event_writes(await request_counts(client))
        progress.update(task, completed=now)
        if now != last:
            last, quiet_since = now, time.monotonic()
        elif time.monotonic() - quiet_since >= 5.0:
            break
    return max(0.0, quiet_since - started), last


async def burst(args: argparse.Namespace) -> None:
    total = args.deployments * args.replicas
    cp = ControlPlane(args.nodes, ["--tier", args.tier])
    try:
        client = await wait_for_api(cp)
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console) as progress:
            nodes_took = await wait_for_nodes(client, args.nodes, progress)
            await client.create("/api/v1/namespaces", {"metadata": {"name": "burst"}})
            tracker = PodTracker(client, "burst")
            await tracker.start()
            before = await api_p99(client)
            counts_before = await request_counts(client)
            cpu_before = component_cpu(cp.proc.pid)
            started = time.monotonic()
            await create_all(client, "burst", [deployment(f"d{i:04}", args.replicas)
                                               for i in range(args.deployments)])
            created_in = time.monotonic() - started
            done, peak_rss, cpu = await follow(tracker, total, progress, "burst", args.timeout, cp)
            took = (max(tracker.running.values()) if tracker.running else time.monotonic()) - started
            cpu_after = component_cpu(cp.proc.pid)
            after = await api_p99(client)
            median = await api_p99(client, 0.5)
            counts = await request_counts(client)
            drained_in, events_total = await drain_events(client, progress)
        await tracker.stop()
        per_pod = {k: (v - counts_before.get(k, 0.0)) / max(1, len(tracker.running)) for k, v in counts.items()}
        startups = tracker.startups()
        table = Table(title=f"burst: {args.deployments} deployments x {args.replicas} replicas on {args.nodes} nodes "
                            f"(tier {args.tier})")
        table.add_column("figure")
        table.add_column("value", justify="right")
        table.add_row("nodes Ready", f"{args.nodes} in {nodes_took:.1f} s")
        table.add_row("deployments created", f"{created_in:.1f} s")
        table.add_row("pods Running", f"{len(tracker.running):,} / {total:,}" + ("" if done else " (timed out)"))
        table.add_row("time to all Running", f"{took:.1f} s (target 300 s)")
        table.add_row("pods/s", f"{len(tracker.running) / max(took, 1e-9):,.0f}")
        table.add_row("pod startup p50 / p99", f"{percentile(startups, 0.5):.2f} s / {percentile(startups, 0.99):.2f} s")
        to_bind, to_run = tracker.phases()
        table.add_row("  of which seen -> bound p50 / p99",
                      f"{percentile(to_bind, 0.5):.2f} s / {percentile(to_bind, 0.99):.2f} s")
        table.add_row("  of which bound -> Running p50 / p99",
                      f"{percentile(to_run, 0.5):.2f} s / {percentile(to_run, 0.99):.2f} s")
        events_then = event_writes(counts) - event_writes(counts_before)
        events_all = events_total - event_writes(counts_before)
        table.add_row("event writes by all Running / in all", f"{events_then:,.0f} / {events_all:,.0f} "
                                                               f"(the rest written {drained_in:.1f} s later)")
        table.add_row("control plane peak RSS", f"{peak_rss:.2f} GiB")
        table.add_row("control plane CPU", f"{cpu:,.0f} s")
        running = max(1, len(tracker.running))
        for name in sorted(cpu_after, key=lambda n: -cpu_after[n]):
            used = cpu_after[name] - cpu_before.get(name, 0.0)
            table.add_row(f"  CPU {name}", f"{used:,.1f} s ({used / max(took, 1e-9):.2f} cores, "
                                           f"{1000 * used / running:.2f} ms per pod)")
        for verb in sorted(after):
            table.add_row(f"API p50 / p99 {verb}", f"≤ {median.get(verb, 0) * 1000:,.0f} / ≤ {after[verb] * 1000:,.0f} ms"
                                                   f" (p99 before run: {before.get(verb, 0) * 1000:,.0f} ms)")
        console.print(table)
        busiest = sorted(per_pod.items(), key=lambda kv: -kv[1])[:12]
        console.print("API requests per pod during the burst: " + sum(per_pod.values()).__format__(".1f") + " ("
                      + ", ".join(f"{k} {v:.2f}" for k, v in busiest if v >= 0.05) + ")")
        await client.close()
    finally:
        cp.stop()


async def load(args: argparse.Namespace) -> None:
    # clusterloader2's load config: 30 pods/node; half the pods in big (250), a quarter in medium (30),
    # a quarter in small (5) deployments.
    total = args.nodes * 30
    shapes = [(250, total // 2 // 250), (30, total // 4 // 30), (5, total // 4 // 5)]
    items, weights = [], []
    for size, count in shapes:
        for i in range(count):
            items.append(deployment(f"d{size}-{i:04}", size))
            weights.append(size)
    total = sum(weights)
    cp = ControlPlane(args.nodes, ["--tier", args.tier])
    try:
        client = await wait_for_api(cp)
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console) as progress:
            await wait_for_nodes(client, args.nodes, progress)
            await client.create("/api/v1/namespaces", {"metadata": {"name": "load"}})
            tracker = PodTracker(client, "load")
            await tracker.start()
            await create_all(client, "load", items, args.qps, weights)
            done, peak_rss, cpu = await follow(tracker, total, progress, "create", args.timeout, cp)
            create_startups = tracker.startups()
            running_after_create = len(tracker.running)
            # scale phase: every deployment to a new size within +/-50%, paced at the same rate
            scaled = 0
            started = time.monotonic()
            for item, weight in zip(items, weights, strict=True):
                size = max(1, weight + (weight // 2 if scaled % 2 else -(weight // 2)))
                await client.patch(f"/apis/apps/v1/namespaces/load/deployments/{item['metadata']['name']}/scale",
                                   {"spec": {"replicas": size}}, content_type=MERGE)
                scaled += 1
                delay = started + sum(weights[:scaled]) / 2 / args.qps - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            p99 = await api_p99(client)
        await tracker.stop()
        mutating = max((p99.get(v, 0.0) for v in ("POST", "PUT", "PATCH", "DELETE")), default=0.0)
        startup_p99 = percentile(create_startups, 0.99)
        table = Table(title=f"clusterloader2-style load: {args.nodes} nodes, {total:,} pods at {args.qps} pods/s")
        table.add_column("SLO")
        table.add_column("target", justify="right")
        table.add_column("measured", justify="right")
        table.add_column("result")
        table.add_row("mutating API calls p99", "≤ 1 s", f"≤ {mutating * 1000:,.0f} ms",
                      "pass" if mutating <= 1 else "fail")
        table.add_row("pod startup p99", "≤ 5 s", f"{startup_p99:.2f} s", "pass" if startup_p99 <= 5 else "fail")
        table.add_row("pods Running after create phase", f"{total:,}", f"{running_after_create:,}",
                      "pass" if done else "fail")
        table.add_row("control plane peak RSS / CPU", "", f"{peak_rss:.2f} GiB / {cpu:,.0f} s", "")
        console.print(table)
        await client.close()
    finally:
        cp.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    b = sub.add_parser("burst")
    b.add_argument("--deployments", type=int, default=700)
    b.add_argument("--replicas", type=int, default=100)
    b.add_argument("--nodes", type=int, default=700)
    b.add_argument("--tier", default="8xl")
    b.add_argument("--timeout", type=float, default=900.0)
    ld = sub.add_parser("load")
    ld.add_argument("--nodes", type=int, default=100)
    ld.add_argument("--qps", type=float, default=10.0)
    ld.add_argument("--tier", default="xl")
    ld.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args()
    asyncio.run(burst(args) if args.mode == "burst" else load(args))


if __name__ == "__main__":
    main()
