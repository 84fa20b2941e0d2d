"""Simulated nodes at scale (issue 5): registration, heartbeats and a workload; node launch rate.

Scale run: `ultraplane up --tier 8xl --nodes 0`, then `ultraplane nodes` registers --nodes nodes of
--node-type (100,000 p5.48xlarge = 800,000 GPUs by default) and renews their Leases every
--renew-interval seconds (40 s: 2,500 renewals/s at 100,000 nodes) for --minutes while a workload of
GPU job pods (one 8-GPU pod per node, sleeping --pod-seconds) is created at --pod-rate pods/s. Reports
the registration rate, achieved renewal rate, RSS and CPU of each control-plane process, and API
p99 per verb from the API server's apiserver_request_duration_seconds histogram over the heartbeat
window.

Launch run: a small cluster (--launch-nodes m5.4xlarge), --launch-pods pods created at once, timed
from the first create until every pod is Running, with prefix delegation on and off. The simulated
EC2 API has --ec2-latency per call and an account token bucket (--ec2-qps refill, --ec2-burst size):
one call per /28 with delegation, one per pod address without.

    .venv/bin/python bench/nodes_scale.py [--nodes 100000] [--minutes 10] [--skip-launch]
    .venv/bin/python bench/nodes_scale.py --skip-scale --launch-pods 1000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from ultraplane.client.http import ApiError, KubeClient  # noqa: E402

console = Console()
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "ultraplane", *args]


# ----------------------------------------------------------------------------------------- processes
def children_of(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def rss_and_cpu(pid: int) -> tuple[int, float]:
    """(resident bytes, user+system CPU seconds) of one process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except OSError:
        return 0, 0.0
    return rss, (int(fields[11]) + int(fields[12])) / CLK_TCK


def process_name(pid: int) -> str:
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    words = [w.decode() for w in argv if w]
    return next((w for w in ("scheduler", "controllers", "nodes") if w in words[:4]), "apiserver+store")


@dataclass
class Sampler:
    """Peak RSS and CPU use per control-plane process (the `up` process and its children)."""
    root: int
    peak_rss: dict[str, int] = field(default_factory=dict)
    cpu_start: dict[str, float] = field(default_factory=dict)
    cpu_now: dict[str, float] = field(default_factory=dict)

    extra: list[int] = field(default_factory=list)  # the nodes process when the bench starts it itself

    def sample(self) -> None:
        rss_now: dict[str, int] = {}
        cpu_now: dict[str, float] = {}
        for pid in [self.root, *children_of(self.root), *self.extra]:
            name = process_name(pid)
            rss, cpu = rss_and_cpu(pid)
            rss_now[name] = rss_now.get(name, 0) + rss
            cpu_now[name] = cpu_now.get(name, 0.0) + cpu
        for name, rss in rss_now.items():
            self.peak_rss[name] = max(self.peak_rss.get(name, 0), rss)
        self.cpu_now = cpu_now

    def mark(self) -> None:
        self.sample()
        self.cpu_start = dict(self.cpu_now)


class Cluster:
    def __init__(self, work: Path, flags: list[str]) -> None:
        self.work = work
        self.port = free_port()
        self.log = open(work / "up.log", "wb")
        self.proc = subprocess.Popen(
            command("up", "--data-dir", str(work / "data"), "--secure-port", str(self.port), "--etcd-port",
                    str(free_port()), "--unsafe-no-fsync", "--nodes", "0", *flags),
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.kubeconfig = work / "data" / "kubeconfig"
        self.nodes: subprocess.Popen[bytes] | None = None
        self.kubelet_port = free_port()

    async def client(self) -> KubeClient:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError((self.work / "up.log").read_text()[-2000:])
            if self.kubeconfig.exists():
                try:
                    client = await KubeClient.from_kubeconfig(self.kubeconfig, max_connections=32)
                    await client.raw("GET", "/readyz")
                    return client
                except (OSError, ApiError):
                    pass
            await asyncio.sleep(0.3)
        raise TimeoutError("API server did not come up")

    def start_nodes(self, *flags: str) -> None:
        self.nodes = subprocess.Popen(
            command("nodes", "--kubeconfig", str(self.kubeconfig), "--kubelet-port", str(self.kubelet_port),
                    "--log-level", "warn", *flags),
            stdout=self.log, stderr=subprocess.STDOUT)

    def admin_summary(self) -> dict[str, Any] | None:
        """The simulator's counters from its kubelet endpoint (admin certificate of the cluster)."""
        import urllib.request

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        pki = self.work / "data" / "pki"
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{self.kubelet_port}/admin/summary", context=ctx,
                                        timeout=30) as response:
                return orjson.loads(response.read())
        except OSError:
            return None

    def stop(self) -> None:
        for proc in (self.nodes, self.proc):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.log.close()


# ----------------------------------------------------------------------------------------- metrics
Histograms = dict[str, dict[float, float]]  # verb -> upper bound -> cumulative count


def parse_durations(text: str) -> Histograms:
    """apiserver_request_duration_seconds_bucket summed over everything but the verb."""
    out: Histograms = {}
    for line in text.splitlines():
        if not line.startswith("apiserver_request_duration_seconds_bucket{"):
            continue
        labels, _, value = line.rpartition(" ")
        parts = dict(p.split("=", 1) for p in labels[labels.index("{") + 1:labels.rindex("}")].split(",") if "=" in p)
        verb = parts.get("verb", "").strip('"')
        le = parts.get("le", "").strip('"')
        bound = float("inf") if le == "+Inf" else float(le)
        out.setdefault(verb, {})
        out[verb][bound] = out[verb].get(bound, 0.0) + float(value)
    return out


def quantile(q: float, start: dict[float, float], end: dict[float, float]) -> tuple[float, int]:
    """histogram_quantile over the window end - start (linear inside a bucket, as Prometheus does)."""
    bounds = sorted(end)
    counts = [end[b] - start.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0
    if total <= 0:
        return 0.0, 0
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, cumulative in zip(bounds, counts, strict=True):
        if cumulative >= rank:
            if bound == float("inf"):
                return lower, int(total)
            return lower + (bound - lower) * (rank - below) / max(cumulative - below, 1e-9), int(total)
        lower, below = bound, cumulative
    return lower, int(total)


async def scrape(client: KubeClient) -> Histograms:
    return parse_durations((await client.raw("GET", "/metrics")).body.decode())


# ----------------------------------------------------------------------------------------- scale run
async def workload(client: KubeClient, rate: float, seconds: float, pod_seconds: int, stop_at: float) -> int:
    """GPU job pods at `rate` per second until `stop_at` (one 8-GPU pod fills a p5.48xlarge)."""
    try:
        await client.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                   "metadata": {"name": "bench"}})
    except ApiError as exc:
        if exc.code != 409:
            raise
    created = 0
    started = time.monotonic()
    inflight = asyncio.Semaphore(16)
    tasks: list[asyncio.Task[None]] = []

    async def create(body: dict[str, Any]) -> None:
        async with inflight:
            try:
                await client.create("/api/v1/namespaces/bench/pods", body)
            except (ApiError, TimeoutError) as exc:
                console.print(f"[yellow]pod create failed: {exc}")

    while time.monotonic() < stop_at and rate > 0:
        due = int((time.monotonic() - started) * rate) - created
        for _ in range(max(0, min(due, 16 - len([t for t in tasks if not t.done()])))):
            body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"train-{created}"},
                    "spec": {"restartPolicy": "Never", "containers": [{
                        "name": "train", "image": "busybox", "command": ["sleep", str(pod_seconds)],
                        "resources": {"limits": {"nvidia.com/gpu": "8"}, "requests": {"cpu": "8", "memory": "64Gi"}}}],
                             "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]}}
            tasks.append(asyncio.create_task(create(body)))
            created += 1
        await asyncio.sleep(0.1)
    await asyncio.gather(*tasks)
    return created


async def pod_phases(client: KubeClient) -> dict[str, int]:
    listed = await client.list("/api/v1/namespaces/bench/pods")
    phases: dict[str, int] = {}
    for pod in listed["items"]:
        phase = (pod.get("status") or {}).get("phase", "Pending")
        phases[phase] = phases.get(phase, 0) + 1
    return phases


async def scale_run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="ultraplane-nodes-scale-"))
    cluster = Cluster(work, ["--tier", args.tier])
    results: dict[str, Any] = {}
    try:
        client = await cluster.client()
        sampler = Sampler(cluster.proc.pid)
        sampler.mark()
        started = time.monotonic()
        cluster.start_nodes("--node-type", f"{args.node_type}={args.nodes}", "--lease-renew-interval",
                            str(args.renew_interval), "--concurrency", str(args.concurrency))
        assert cluster.nodes is not None
        sampler.extra.append(cluster.nodes.pid)
        with Progress(TextColumn("registering"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TextColumn("{task.fields[rate]}"), console=console) as progress:
            task = progress.add_task("nodes", total=args.nodes, rate="")
            registered = 0
            while registered < args.nodes:
                await asyncio.sleep(1)
                if cluster.nodes is not None and cluster.nodes.poll() is not None:
                    raise RuntimeError("nodes process exited:\n" + (work / "up.log").read_text()[-3000:])
                summary = (await asyncio.to_thread(cluster.admin_summary))
                sampler.sample()
                if summary:
                    registered = summary["registered"]
                    elapsed = time.monotonic() - started
                    progress.update(task, completed=registered, rate=f"{registered / elapsed:,.0f}/s")
        registration_s = time.monotonic() - started
        results["registration_s"] = registration_s
        results["registration_rate"] = args.nodes / registration_s
        results["rss_after_registration"] = dict(sampler.peak_rss)

        # heartbeat window with a workload
        before = await scrape(client)
        sampler.mark()
        window = args.minutes * 60
        first = (await asyncio.to_thread(cluster.admin_summary)) or {}
        window_start = time.monotonic()
        load = asyncio.create_task(workload(client, args.pod_rate, window, args.pod_seconds,
                                            window_start + window * 0.8))
        with Progress(TextColumn("heartbeating"), BarColumn(), TimeElapsedColumn(),
                      TextColumn("{task.fields[info]}"), console=console) as progress:
            task = progress.add_task("beat", total=window, info="")
            last, last_t = first, window_start
            while (now := time.monotonic()) < window_start + window:
                await asyncio.sleep(5)
                sampler.sample()
                summary = (await asyncio.to_thread(cluster.admin_summary)) or last
                now = time.monotonic()
                rate = (summary.get("leaseRenewals", 0) - last.get("leaseRenewals", 0)) / max(now - last_t, 1e-9)
                progress.update(task, completed=now - window_start,
                                info=f"{rate:,.0f} renewals/s, failures {summary.get('leaseFailures', 0)}, "
                                     f"queue {summary.get('queued', 0)}, running {summary.get('podsRunning', 0)}")
                last, last_t = summary, now
        created = await load
        final = (await asyncio.to_thread(cluster.admin_summary)) or last
        elapsed = time.monotonic() - window_start
        after = await scrape(client)
        sampler.sample()
        results["renewals_per_s"] = (final["leaseRenewals"] - first.get("leaseRenewals", 0)) / elapsed
        results["lease_failures"] = final["leaseFailures"] - first.get("leaseFailures", 0)
        results["pods_created"] = created
        results["pod_phases"] = await pod_phases(client)
        results["rss"] = dict(sampler.peak_rss)
        results["cpu"] = {k: (sampler.cpu_now.get(k, 0) - sampler.cpu_start.get(k, 0)) / elapsed
                          for k in sampler.cpu_now}
        results["p99"] = {verb: quantile(0.99, before.get(verb, {}), hist) for verb, hist in after.items()}
        results["window_s"] = elapsed
        await client.close()
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    return results


# ----------------------------------------------------------------------------------------- launch run
async def launch_run(args: argparse.Namespace, prefix_delegation: bool) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="ultraplane-nodes-launch-"))
    cluster = Cluster(work, [])
    try:
        client = await cluster.client()
        cluster.start_nodes("--node-type", f"m5.4xlarge={args.launch_nodes}", "--prefix-delegation",
                            "true" if prefix_delegation else "false", "--ec2-latency", str(args.ec2_latency),
                            "--ec2-qps", str(args.ec2_qps), "--ec2-burst", str(args.ec2_burst))
        while (((await asyncio.to_thread(cluster.admin_summary)) or {}).get("registered") or 0) < args.launch_nodes:
            await asyncio.sleep(0.5)
        before_calls = ((await asyncio.to_thread(cluster.admin_summary)) or {})["ec2Calls"]
        await client.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                   "metadata": {"name": "launch"}})
        started = time.monotonic()
        sem = asyncio.Semaphore(32)

        async def create(i: int) -> None:
            async with sem:
                await client.create("/api/v1/namespaces/launch/pods", {
                    "apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"p-{i}"},
                    "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10",
                                             "resources": {"requests": {"cpu": "10m"}}}]}})

        await asyncio.gather(*(create(i) for i in range(args.launch_pods)))
        with Progress(TextColumn(f"launch, prefix delegation {'on' if prefix_delegation else 'off'}"),
                      BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console) as progress:
            task = progress.add_task("pods", total=args.launch_pods)
            running = 0
            deadline = time.monotonic() + 600
            while running < args.launch_pods:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"only {running} of {args.launch_pods} pods Running after 600 s")
                await asyncio.sleep(0.5)
                listed = await client.list("/api/v1/namespaces/launch/pods")
                running = sum(1 for p in listed["items"] if (p.get("status") or {}).get("phase") == "Running")
                progress.update(task, completed=running)
        took = time.monotonic() - started
        calls = ((await asyncio.to_thread(cluster.admin_summary)) or {})["ec2Calls"] - before_calls
        await client.close()
        return {"seconds": took, "pods_per_s": args.launch_pods / took, "ec2_calls": calls}
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


# ----------------------------------------------------------------------------------------- report
def mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def report(args: argparse.Namespace, scale: dict[str, Any] | None, launch: dict[bool, dict[str, float]]) -> None:
    if scale:
        table = Table(title=f"{args.nodes:,} × {args.node_type}, renew every {args.renew_interval:g}s, "
                            f"{scale['window_s'] / 60:.1f} min heartbeat window")
        table.add_column("measure")
        table.add_column("value", justify="right")
        table.add_row("registration", f"{scale['registration_s']:.1f} s ({scale['registration_rate']:,.0f} nodes/s)")
        table.add_row("lease renewals/s (target)", f"{scale['renewals_per_s']:,.0f} "
                                                   f"({args.nodes / args.renew_interval:,.0f})")
        table.add_row("lease renewal failures", f"{scale['lease_failures']:,}")
        table.add_row("workload pods created / phases", f"{scale['pods_created']:,} / {scale['pod_phases']}")
        for name, rss in sorted(scale["rss"].items()):
            table.add_row(f"peak RSS {name}", mib(rss))
        table.add_row("peak RSS total", mib(sum(scale["rss"].values())))
        for name, cpu in sorted(scale["cpu"].items()):
            table.add_row(f"CPU {name} (cores, window mean)", f"{cpu:.2f}")
        for verb, (p99, count) in sorted(scale["p99"].items()):
            if count and verb:
                table.add_row(f"API p99 {verb} ({count:,} requests)", f"{p99 * 1000:,.0f} ms")
        console.print(table)
    if launch:
        table = Table(title=f"node launch: {args.launch_pods} pods on {args.launch_nodes} m5.4xlarge, EC2 "
                            f"{args.ec2_latency * 1000:.0f} ms/call, bucket {args.ec2_burst} refill {args.ec2_qps:g}/s")
        for col in ("prefix delegation", "all Running", "pods/s", "EC2 calls"):
            table.add_column(col, justify="right")
        for mode, r in launch.items():
            table.add_row("on" if mode else "off", f"{r['seconds']:.1f} s", f"{r['pods_per_s']:,.1f}",
                          f"{r['ec2_calls']:,}")
        if len(launch) == 2:
            table.caption = f"ratio on/off: {launch[True]['pods_per_s'] / launch[False]['pods_per_s']:.1f}×"
        console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=100_000)
    parser.add_argument("--node-type", default="p5.48xlarge")
    parser.add_argument("--minutes", type=float, default=10.0, help="heartbeat window (2 for a quick run)")
    parser.add_argument("--renew-interval", type=float, default=40.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--tier", default="8xl")
    parser.add_argument("--pod-rate", type=float, default=20.0, help="workload pods per second")
    parser.add_argument("--pod-seconds", type=int, default=60, help="run time of each workload pod")
    parser.add_argument("--launch-nodes", type=int, default=20)
    parser.add_argument("--launch-pods", type=int, default=1000)
    parser.add_argument("--ec2-latency", type=float, default=0.1)
    parser.add_argument("--ec2-qps", type=float, default=5.0)
    parser.add_argument("--ec2-burst", type=int, default=50)
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--skip-launch", action="store_true")
    args = parser.parse_args()

    async def run() -> None:
        scale = None if args.skip_scale else await scale_run(args)
        launch = {} if args.skip_launch else {mode: await launch_run(args, mode) for mode in (True, False)}
        report(args, scale, launch)

    asyncio.run(run())


if __name__ == "__main__":
    main()
