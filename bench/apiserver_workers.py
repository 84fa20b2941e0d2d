"""API server throughput with 1 and with N worker processes (issue 4).

One worker is `ultraplane up`: the store and the API server in one process. N workers add N-1
`ultraplane apiserver` processes on the same store, reaching it through `up`'s etcd v3 endpoint
(TLS, the root client certificate), as kube-apiservers share one etcd; each has its own watch
cache, and the clients are spread over all of them round-robin. Pod creates/s and GETs/s over HTTPS
keep-alive, with the same clients in every run:

    .venv/bin/python bench/apiserver_workers.py [--workers 1,2,3] [--clients 32] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from apiserver_slo import Result, Server, connect, console, create_namespace, pod, timed  # noqa: E402
from servers import free_port, wait_for_port  # noqa: E402


def start(workers: int) -> tuple[list[Server], list[subprocess.Popen[bytes]]]:
    work = Path(tempfile.mkdtemp(prefix="ultraplane-workers-"))
    data = work / "data"
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    port, etcd_port = free_port(), free_port()
    up = subprocess.Popen([sys.executable, "-m", "ultraplane", "up", "--data-dir", str(data), "--etcd-port",
                           str(etcd_port), "--secure-port", str(port), "--log-level", "warn", "--no-scheduler",
                           "--etcd-compaction-interval", "0", "--unsafe-no-fsync"],
                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port, up, timeout=120)
    servers, procs = [Server(work, port, up)], [up]
    pki = data / "pki"
    for _ in range(workers - 1):
        extra_port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "ultraplane", "apiserver", "--etcd-servers", f"https://127.0.0.1:{etcd_port}",
             "--etcd-cafile", str(pki / "ca.crt"), "--etcd-certfile", str(pki / "etcd-client-root.crt"),
             "--etcd-keyfile", str(pki / "etcd-client-root.key"), "--data-dir", str(data),
             "--encryption-provider-config", str(data / "encryption-config.yaml"),
             "--secure-port", str(extra_port), "--log-level", "warn", "--etcd-compaction-interval", "0"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(extra_port, proc, timeout=120)
        servers.append(Server(work, extra_port, proc))
        procs.append(proc)
    time.sleep(1.0)
    return servers, procs


def stop(servers: list[Server], procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in reversed(procs):
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    shutil.rmtree(servers[0].work, ignore_errors=True)


async def measure(servers: list[Server], n_clients: int, seconds: float) -> tuple[Result, Result]:
    clients = [await connect(servers[i % len(servers)]) for i in range(n_clients)]
    await create_namespace(clients[0], "workers")
    await asyncio.sleep(0.5)  # the namespace reaches every worker's watch cache
    created: dict[int, int] = {}

    def create(index: int, n: int) -> tuple[str, str, bytes]:
        created[index] = n + 1
        return "POST", "/api/v1/namespaces/workers/pods", pod(f"p-{index}-{n}", "workers")

    def get(index: int, n: int) -> tuple[str, str, bytes]:
        return "GET", f"/api/v1/namespaces/workers/pods/p-{index}-{n % max(1, created.get(index, 1))}", b""

    with console.status(f"{len(servers)} worker(s): pod creates, {n_clients} clients, {seconds:.0f} s"):
        creates = await timed(clients, seconds, create)
    await asyncio.sleep(0.5)
    with console.status(f"{len(servers)} worker(s): pod GETs, {n_clients} clients, {seconds:.0f} s"):
        gets = await timed(clients, seconds, get)
    for c in clients:
        c.writer.close()
    return creates, gets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2,3", help="comma-separated worker counts")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    rows = []
    for workers in (int(w) for w in args.workers.split(",")):
        servers, procs = start(workers)
        try:
            creates, gets = asyncio.run(measure(servers, args.clients, args.seconds))
        finally:
            stop(servers, procs)
        rows.append((workers, creates, gets))
    base_create, base_get = rows[0][1].rate, rows[0][2].rate
    table = Table(title=f"API server workers: pod creates and GETs, {args.clients} HTTPS keep-alive clients, "
                        f"{os.cpu_count()} cores")
    for column in ("workers", "creates/s", "create p50/p99 ms", "GETs/s", "GET p50/p99 ms", "vs 1 worker",
                   "errors"):
        table.add_column(column, justify="right")
    for workers, creates, gets in rows:
        table.add_row(str(workers), f"{creates.rate:,.0f}", f"{creates.p(0.5):.1f} / {creates.p(0.99):.0f}",
                      f"{gets.rate:,.0f}", f"{gets.p(0.5):.1f} / {gets.p(0.99):.0f}",
                      f"x{creates.rate / base_create:.2f} / x{gets.rate / base_get:.2f}",
                      str(creates.errors + gets.errors))
    console.print(table)


if __name__ == "__main__":
    main()
