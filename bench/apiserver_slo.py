"""Kubernetes API server SLOs on this machine (issue 4): latency, throughput, watch fan-out, flooding.

Starts `ultraplane up` (in-process store, one API server process) and drives it over HTTPS with
keep-alive connections, each with the admin client certificate or a bearer token:

    .venv/bin/python bench/apiserver_slo.py [--pods 150000] [--watchers 10000] [--quick]

Phases, each measured from the client side:

1. throughput: pod creates/s and GETs/s with --clients connections (their p99 are the mutating and
   GET SLOs, measured at saturation, the worst case);
2. namespace LIST: --ns-pods pods in one namespace, --list-clients clients listing it;
3. cluster-wide LIST: the cluster filled to --pods pods, one LIST of all of them (and the same LIST
   in pages of 500, as informers do);
4. watch fan-out: --watchers kubelet-like watchers (all pods with fieldSelector=spec.nodeName=<node>
   and bookmarks, as a kubelet's reflector asks) plus --all-watchers watching every pod (controllers,
   schedulers), while pods bound to random nodes are created at --watch-rate writes/s; delivery
   latency from sending a write to the event arriving at its watcher(s);
5. flooding: a fresh server per run, one user flooding LISTs of a 1,000-pod namespace on
   --flood-clients connections while a leader-election client updates a Lease every 50 ms; the
   lease update p99 with API Priority and Fairness on and off (--enable-priority-and-fairness=false).

Both bench users are in system:masters for authorization; bench FlowSchemas (precedence 1) send the
flooder to global-default and the lease updater to leader-election, as kube's default schemas do
for ordinary users and kube-controller-manager.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from apiserver_bench import Client, percentile  # noqa: E402
from servers import free_port, wait_for_port  # noqa: E402

console = Console()
FLOOD_TOKEN = "bench-flood-token"
LEADER_TOKEN = "bench-leader-token"
NAME_RE = re.compile(rb'"metadata":\{"name":"(w-\d+)"')


# ============================================================================ server
@dataclass
class Server:
    work: Path
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def pki(self) -> Path:
        return self.work / "data" / "pki"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.work, ignore_errors=True)


def start_server(fsync: bool, *flags: str) -> Server:
    work = Path(tempfile.mkdtemp(prefix="ultraplane-slo-"))
    tokens = work / "tokens.csv"
    tokens.write_text(f'{FLOOD_TOKEN},flooder,uid-flooder,"system:masters"\n'
                      f'{LEADER_TOKEN},system:kube-controller-manager,uid-kcm,"system:masters"\n')
    port = free_port()
    cmd = [sys.executable, "-m", "ultraplane", "up", "--data-dir", str(work / "data"), "--etcd-port",
           str(free_port()), "--secure-port", str(port), "--log-level", "warn", "--token-auth-file", str(tokens),
           "--etcd-compaction-interval", "0", *flags]
    if not fsync:
        cmd.append("--unsafe-no-fsync")
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port, proc, timeout=120)
    time.sleep(1.0)
    return Server(work, port, proc)


def client_context(server: Server) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(server.pki / "ca.crt"))
    ctx.load_cert_chain(str(server.pki / "admin.crt"), str(server.pki / "admin.key"))
    return ctx


class TokenClient(Client):
    """An HTTP/1.1 keep-alive client that authenticates with a bearer token."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, token: str) -> None:
        super().__init__(reader, writer)
        self.token = token

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        auth = f"Authorization: Bearer {self.token}\r\n" if self.token else ""
        head = (f"{method} {path} HTTP/1.1\r\nHost: bench\r\nAccept: application/json\r\n{auth}"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        self.writer.write(head + body)
        status = int((await self.reader.readline()).split()[1])
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)


async def connect(server: Server, token: str = "") -> TokenClient:
    ctx = ssl.create_default_context(cafile=str(server.pki / "ca.crt"))
    if not token:
        ctx.load_cert_chain(str(server.pki / "admin.crt"), str(server.pki / "admin.key"))
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=ctx, limit=1 << 24)
    return TokenClient(reader, writer, token)


def pod(name: str, namespace: str, node: str = "") -> bytes:
    spec: dict[str, object] = {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.9"}]}
    if node:
        spec["nodeName"] = node
    return json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace,
                                                                       "labels": {"app": "slo"}},
                       "spec": spec}).encode()


# ============================================================================ measurements
@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    elapsed: float = 0.0

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0

    def p(self, q: float) -> float:
        return percentile(self.latencies, q)


async def timed(clients: list[TokenClient], seconds: float,
                make: Callable[[int, int], tuple[str, str, bytes]]) -> Result:
    result = Result()
    stop_at = time.perf_counter() + seconds

    async def worker(index: int, client: TokenClient) -> None:
        n = 0
        while time.perf_counter() < stop_at:
            method, path, body = make(index, n)
            t0 = time.perf_counter()
            status, _ = await client.request(method, path, body)
            result.latencies.append(time.perf_counter() - t0)
            if status >= 300:
                result.errors += 1
            n += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(i, c) for i, c in enumerate(clients)))
    result.elapsed = time.perf_counter() - started
    return result


async def bulk(clients: list[TokenClient], items: Iterator[tuple[str, bytes]], total: int, label: str) -> float:
    """POST every item, spread over the clients; returns writes/s."""
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task(label, total=total)

        async def worker(client: TokenClient) -> None:
            for path, body in items:
                status, text = await client.request("POST", path, body)
                if status not in (201, 409):
                    raise RuntimeError(f"create failed: {status} {text[:200]!r}")
                progress.advance(task)

        started = time.perf_counter()
        await asyncio.gather(*(worker(c) for c in clients))
        return total / (time.perf_counter() - started)


async def create_namespace(client: TokenClient, name: str) -> None:
    await client.request("POST", "/api/v1/namespaces", json.dumps(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}).encode())


# ============================================================================ phases
async def throughput(server: Server, n_clients: int, seconds: float, out: dict[str, object]) -> None:
    clients = [await connect(server) for _ in range(n_clients)]
    await create_namespace(clients[0], "slo-tput")
    created: dict[int, int] = {}

    def create(index: int, n: int) -> tuple[str, str, bytes]:
        created[index] = n + 1
        return "POST", "/api/v1/namespaces/slo-tput/pods", pod(f"p-{index}-{n}", "slo-tput")

    def get(index: int, n: int) -> tuple[str, str, bytes]:
        return "GET", f"/api/v1/namespaces/slo-tput/pods/p-{index}-{n % max(1, created.get(index, 1))}", b""

    with console.status(f"pod creates, {n_clients} clients, {seconds:.0f} s"):
        out["create"] = await timed(clients, seconds, create)
    with console.status(f"pod GETs, {n_clients} clients, {seconds:.0f} s"):
        out["get"] = await timed(clients, seconds, get)
    for c in clients:
        c.writer.close()


async def namespace_list(server: Server, n_pods: int, n_clients: int, seconds: float,
                         out: dict[str, object]) -> None:
    clients = [await connect(server) for _ in range(32)]
    await create_namespace(clients[0], "slo-list")
    items = (("/api/v1/namespaces/slo-list/pods", pod(f"l-{i}", "slo-list")) for i in range(n_pods))
    await bulk(clients, items, n_pods, f"filling namespace slo-list with {n_pods} pods")
    with console.status(f"namespace LIST of {n_pods} pods, {n_clients} clients, {seconds:.0f} s"):
        out["nslist"] = await timed(clients[:n_clients], seconds,
                                    lambda i, n: ("GET", "/api/v1/namespaces/slo-list/pods", b""))
    for c in clients:
        c.writer.close()


async def cluster_list(server: Server, n_pods: int, out: dict[str, object]) -> None:
    clients = [await connect(server) for _ in range(32)]
    status, body = await clients[0].request("GET", "/api/v1/pods?limit=1")
    existing = len(json.loads(body)["items"]) + json.loads(body)["metadata"].get("remainingItemCount", 0)
    missing = max(0, n_pods - existing)
    namespaces = [f"slo-fill-{i}" for i in range(max(1, missing // 1500))]
    for ns in namespaces:
        await create_namespace(clients[0], ns)
    items = ((f"/api/v1/namespaces/{namespaces[i % len(namespaces)]}/pods",
              pod(f"f-{i}", namespaces[i % len(namespaces)])) for i in range(missing))
    out["fill_rate"] = await bulk(clients, items, missing, f"filling the cluster to {n_pods} pods")
    for c in clients[1:]:
        c.writer.close()
    client = clients[0]
    with console.status(f"cluster-wide LIST of {n_pods} pods"):
        t0 = time.perf_counter()
        status, body = await client.request("GET", "/api/v1/pods")
        out["biglist"] = time.perf_counter() - t0
        out["biglist_items"] = len(json.loads(body)["items"]) if status == 200 else 0
        out["biglist_mb"] = len(body) / 1e6
        del body
    with console.status(f"cluster-wide LIST of {n_pods} pods in pages of 500"):
        t0 = time.perf_counter()
        token, pages, items_seen = "", 0, 0
        while True:
            path = "/api/v1/pods?limit=500" + (f"&continue={token}" if token else "")
            status, body = await client.request("GET", path)
            page = json.loads(body)
            items_seen += len(page["items"])
            pages += 1
            token = page["metadata"].get("continue", "")
            if not token:
                break
        out["paged"] = time.perf_counter() - t0
        out["paged_items"] = items_seen
    client.writer.close()


async def watch_fanout(server: Server, n_watchers: int, n_all: int, rate: float, seconds: float,
                       out: dict[str, object]) -> None:
    """Kubelet-like watchers, one per node, each watching the pods bound to it; and n_all watchers of
    every pod (controllers, schedulers)."""
    ctx = client_context(server)
    admin = await connect(server)
    await create_namespace(admin, "slo-watch")
    status, body = await admin.request("GET", "/api/v1/namespaces/slo-watch/pods?limit=1")
    rv = json.loads(body)["metadata"]["resourceVersion"]
    sent: dict[bytes, float] = {}
    latencies: list[float] = []
    all_latencies: list[float] = []
    ready = [0]

    async def watcher(node: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=ctx)
        selector = f"&fieldSelector=spec.nodeName%3Dnode-{node}" if node >= 0 else ""
        sink = latencies if node >= 0 else all_latencies
        seen: set[bytes] = set()
        writer.write(f"GET /api/v1/pods?watch=1&resourceVersion={rv}&allowWatchBookmarks=true{selector} "
                     f"HTTP/1.1\r\nHost: bench\r\nAccept: application/json\r\n\r\n".encode())
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        ready[0] += 1
        try:
            while True:
                size_line = await reader.readline()
                if not size_line:
                    return
                size = int(size_line.strip(), 16)
                chunk = await reader.readexactly(size + 2)
                now = time.perf_counter()
                for name in NAME_RE.findall(chunk):
                    at = sent.get(name)
                    # only the first event of each pod: controllers (pod GC) may modify or delete it later
                    if at is not None and name not in seen:
                        seen.add(name)
                        sink.append(now - at)
        finally:
            writer.close()

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task(f"opening {n_watchers + n_all} watches", total=n_watchers + n_all)
        tasks = []
        for i in range(-n_all, n_watchers):  # negative: a watcher of every pod
            tasks.append(asyncio.create_task(watcher(i)))
            if i % 200 == 199:
                while ready[0] < i - 400:
                    await asyncio.sleep(0.01)
                progress.update(task, completed=ready[0])
        deadline = time.monotonic() + 300
        while ready[0] < n_watchers + n_all and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            progress.update(task, completed=ready[0])
    out["watchers"] = ready[0] - min(n_all, ready[0])
    out["all_watchers"] = n_all
    writers = [await connect(server) for _ in range(16)]
    total = int(rate * seconds)
    interval = len(writers) / rate
    write_latencies: list[float] = []
    counter = iter(range(total))

    async def write(client: TokenClient) -> None:
        next_at = time.perf_counter()
        for i in counter:
            name = f"w-{i}".encode()
            node = random.randrange(n_watchers)
            now = time.perf_counter()
            if next_at > now:
                await asyncio.sleep(next_at - now)
            next_at += interval
            sent[name] = time.perf_counter()
            status, _ = await client.request("POST", "/api/v1/namespaces/slo-watch/pods",
                                             pod(name.decode(), "slo-watch", f"node-{node}"))
            write_latencies.append(time.perf_counter() - sent[name])

    with console.status(f"{n_watchers} watchers, {rate:.0f} writes/s for {seconds:.0f} s"):
        started = time.perf_counter()
        await asyncio.gather(*(write(c) for c in writers))
        out["watch_rate"] = total / (time.perf_counter() - started)
        settle = time.monotonic() + 30
        while (len(latencies) < total or len(all_latencies) < total * n_all) and time.monotonic() < settle:
            await asyncio.sleep(0.1)
    out["watch_delivered"] = len(latencies)
    out["watch_sent"] = total
    out["watch_p50"] = percentile(latencies, 0.5)
    out["watch_p99"] = percentile(latencies, 0.99)
    out["watch_write_p99"] = percentile(write_latencies, 0.99)
    if n_all:
        out["watch_all_delivered"] = len(all_latencies)
        out["watch_all_p50"] = percentile(all_latencies, 0.5)
        out["watch_all_p99"] = percentile(all_latencies, 0.99)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for c in [admin, *writers]:
        c.writer.close()


BENCH_SCHEMAS = [
    {"apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "FlowSchema", "metadata": {"name": "bench-flooder"},
     "spec": {"priorityLevelConfiguration": {"name": "global-default"}, "matchingPrecedence": 1,
              "distinguisherMethod": {"type": "ByUser"},
              "rules": [{"subjects": [{"kind": "User", "user": {"name": "flooder"}}],
                         "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"],
                                            "clusterScope": True, "namespaces": ["*"]}]}]}},
    {"apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "FlowSchema",
     "metadata": {"name": "bench-leader-election"},
     "spec": {"priorityLevelConfiguration": {"name": "leader-election"}, "matchingPrecedence": 1,
              "distinguisherMethod": {"type": "ByUser"},
              "rules": [{"subjects": [{"kind": "User", "user": {"name": "system:kube-controller-manager"}}],
                         "resourceRules": [{"verbs": ["get", "create", "update"],
                                            "apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                                            "namespaces": ["*"]}]}]}},
]


async def flooding(fsync: bool, apf: bool, n_clients: int, seconds: float, tier: str) -> dict[str, float]:
    flags = ["--tier", tier, "--enable-priority-and-fairness", "true" if apf else "false"]
    server = start_server(fsync, *flags)
    try:
        admin = await connect(server)
        for obj in BENCH_SCHEMAS:
            await admin.request("POST", "/apis/flowcontrol.apiserver.k8s.io/v1/flowschemas", json.dumps(obj).encode())
        await create_namespace(admin, "flood")
        fillers = [await connect(server) for _ in range(16)]
        items = (("/api/v1/namespaces/flood/pods", pod(f"x-{i}", "flood")) for i in range(1000))
        await bulk(fillers, items, 1000, f"flood namespace ({'APF on' if apf else 'APF off'})")
        for c in fillers:
            c.writer.close()
        leader = await connect(server, LEADER_TOKEN)
        lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                 "metadata": {"name": "kube-controller-manager", "namespace": "kube-system"},
                 "spec": {"holderIdentity": "bench", "leaseDurationSeconds": 15}}
        status, body = await leader.request("POST", "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases",
                                            json.dumps(lease).encode())
        current = json.loads(body)
        time.sleep(1.5)  # the dispatcher picks the bench FlowSchemas up from its watch
        flooders = [await connect(server, FLOOD_TOKEN) for _ in range(n_clients)]
        stop = asyncio.Event()
        flood_done = [0, 0]

        async def flood(client: TokenClient) -> None:
            while not stop.is_set():
                status, _ = await client.request("GET", "/api/v1/namespaces/flood/pods")
                flood_done[0 if status == 200 else 1] += 1

        lease_latencies: list[float] = []
        lease_errors = 0

        async def renew() -> None:
            nonlocal current, lease_errors
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                current["spec"]["renewTime"] = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
                t0 = time.perf_counter()
                status, body = await leader.request(
                    "PUT", "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/kube-controller-manager",
                    json.dumps(current).encode())
                lease_latencies.append(time.perf_counter() - t0)
                if status == 200:
                    current = json.loads(body)
                else:
                    lease_errors += 1
                await asyncio.sleep(0.05)
            stop.set()

        label = "APF on" if apf else "APF off"
        with console.status(f"flooding ({label}): {n_clients} connections LIST 1,000 pods, lease renewals"):
            tasks = [asyncio.create_task(flood(c)) for c in flooders]
            await asyncio.sleep(2.0)
            await renew()
            await asyncio.gather(*tasks)
        return {"p50": percentile(lease_latencies, 0.5), "p99": percentile(lease_latencies, 0.99),
                "renewals": len(lease_latencies), "errors": lease_errors,
                "flood_rate": flood_done[0] / (seconds + 2.0), "flood_429": flood_done[1]}
    finally:
        server.stop()


# ============================================================================ main
def verdict(ok: bool) -> str:
    return "[green]pass[/]" if ok else "[red]FAIL[/]"


async def main_async(args: argparse.Namespace) -> None:
    out: dict[str, object] = {}
    phases = set(args.phases.split(","))
    if phases & {"throughput", "nslist", "biglist", "watch"}:
        server = start_server(args.fsync, "--tier", args.tier)
        try:
            if "throughput" in phases:
                await throughput(server, args.clients, args.seconds, out)
            if "nslist" in phases:
                await namespace_list(server, args.ns_pods, args.list_clients, args.seconds, out)
            if "biglist" in phases:
                await cluster_list(server, args.pods, out)
            if "watch" in phases and args.watchers:
                await watch_fanout(server, args.watchers, args.all_watchers, args.watch_rate, args.watch_seconds, out)
        finally:
            server.stop()
    flood = {}
    if "flood" in phases and args.flood_seconds:
        flood["on"] = await flooding(args.fsync, True, args.flood_clients, args.flood_seconds, args.tier)
        flood["off"] = await flooding(args.fsync, False, args.flood_clients, args.flood_seconds, args.tier)
    report(args, out, flood)


def report(args: argparse.Namespace, out: dict[str, object], flood: dict[str, dict[str, float]]) -> None:
    table = Table(title=f"Kubernetes API server SLOs (ultraplane up --tier {args.tier}, 1 process, "
                        f"fsync {'on' if args.fsync else 'off'})")
    for column in ("SLO", "target", "measured", "result"):
        table.add_column(column)
    rows: list[tuple[str, str, str, str]] = []
    create, get, nslist = out.get("create"), out.get("get"), out.get("nslist")
    if isinstance(create, Result) and isinstance(get, Result):
        rows.append(("mutating (pod create) p99", "<= 1 s", f"{create.p(0.99):.0f} ms at {args.clients} clients",
                     verdict(create.p(0.99) <= 1000 and not create.errors)))
        rows.append(("GET pod p99", "<= 1 s", f"{get.p(0.99):.0f} ms at {args.clients} clients",
                     verdict(get.p(0.99) <= 1000 and not get.errors)))
        rows.append(("pod creates/s (HTTPS keep-alive, 1 process)", "-", f"{create.rate:.0f}/s, p50 "
                     f"{create.p(0.5):.1f} ms", ""))
        rows.append(("pod GETs/s (HTTPS keep-alive, 1 process)", "-", f"{get.rate:.0f}/s, p50 {get.p(0.5):.1f} ms",
                     ""))
    if isinstance(nslist, Result):
        rows.append((f"namespace LIST ({args.ns_pods} pods) p99", "<= 5 s",
                     f"{nslist.p(0.99):.0f} ms at {args.list_clients} clients ({nslist.rate:.1f}/s)",
                     verdict(nslist.p(0.99) <= 5000 and not nslist.errors)))
    if "biglist" in out:
        seconds = float(out["biglist"])  # type: ignore[arg-type]
        rows.append((f"cluster-wide LIST of {out['biglist_items']} pods", "<= 30 s",
                     f"{seconds:.1f} s ({float(out['biglist_mb']):.0f} MB)",  # type: ignore[arg-type]
                     verdict(seconds <= 30 and int(out["biglist_items"]) >= args.pods)))  # type: ignore[call-overload]
        rows.append(("  same, in pages of 500", "<= 30 s", f"{float(out['paged']):.1f} s",  # type: ignore[arg-type]
                     verdict(float(out["paged"]) <= 30)))  # type: ignore[arg-type]
        rows.append(("  pod creates/s while filling (32 clients)", "-", f"{float(out['fill_rate']):.0f}/s", ""))
    if "watch_p99" in out:
        p99 = float(out["watch_p99"])  # type: ignore[arg-type]
        rows.append((f"watch fan-out: {out['watchers']} node watchers, {float(out['watch_rate']):.0f} writes/s",
                     "p99 <= 1 s", f"p99 {p99:.0f} ms, p50 {float(out['watch_p50']):.0f} ms, "  # type: ignore[arg-type]
                     f"{out['watch_delivered']}/{out['watch_sent']} delivered",
                     verdict(p99 <= 1000 and out["watch_delivered"] == out["watch_sent"])))
    if "watch_all_p99" in out:
        p99 = float(out["watch_all_p99"])  # type: ignore[arg-type]
        wanted = int(out["watch_sent"]) * int(out["all_watchers"])  # type: ignore[call-overload]
        rows.append((f"  same run: {out['all_watchers']} watchers of every pod", "p99 <= 1 s",
                     f"p99 {p99:.0f} ms, p50 {float(out['watch_all_p50']):.0f} ms, "  # type: ignore[arg-type]
                     f"{out['watch_all_delivered']}/{wanted} delivered",
                     verdict(p99 <= 1000 and out["watch_all_delivered"] == wanted)))
    for key, label in (("on", "APF on"), ("off", "APF off")):
        if key in flood:
            f = flood[key]
            rows.append((f"flooding ({label}): lease update p99", "<= 1 s",
                         f"p99 {f['p99']:.0f} ms, p50 {f['p50']:.0f} ms; flood {f['flood_rate']:.0f} LIST/s, "
                         f"{f['flood_429']:.0f} 429s", verdict(f["p99"] <= 1000 and not f["errors"])))
    for row in rows:
        table.add_row(*row)
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tier", default="standard", help="capacity tier of the server")
    parser.add_argument("--clients", type=int, default=32, help="connections for the throughput phases")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each timed phase")
    parser.add_argument("--ns-pods", type=int, default=1000, help="pods in the namespace LIST phase")
    parser.add_argument("--list-clients", type=int, default=4, help="connections listing the namespace")
    parser.add_argument("--pods", type=int, default=150_000, help="pods in the cluster for the cluster-wide LIST")
    parser.add_argument("--watchers", type=int, default=10_000, help="kubelet-like watchers (0: skip)")
    parser.add_argument("--all-watchers", type=int, default=10,
                        help="watchers of every pod (no selector) besides the kubelet-like ones")
    parser.add_argument("--watch-rate", type=float, default=500.0, help="writes/s during the fan-out phase")
    parser.add_argument("--watch-seconds", type=float, default=10.0)
    parser.add_argument("--flood-clients", type=int, default=100, help="connections of the flooding user")
    parser.add_argument("--flood-seconds", type=float, default=20.0, help="length of each flooding run (0: skip)")
    parser.add_argument("--phases", default="throughput,nslist,biglist,watch,flood",
                        help="comma-separated phases to run")
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    parser.add_argument("--fsync", action="store_true", help="keep fsync on (default: --unsafe-no-fsync)")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.pods, args.ns_pods, args.watchers = 3.0, 3000, 300, 200
        args.watch_seconds, args.flood_seconds, args.flood_clients = 3.0, 5.0, 20
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
