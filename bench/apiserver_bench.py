"""API server throughput: configmap creates/s and GETs/s over HTTPS keep-alive, many concurrent clients.

Starts `ultraplane up` on a temporary data dir (in-process store, --unsafe-no-fsync unless --fsync)
and drives it with N asyncio clients, each on its own TLS connection with the admin client
certificate, speaking HTTP/1.1 with keep-alive:

    .venv/bin/python bench/apiserver_bench.py [--clients 32] [--seconds 5] [--fsync]

Prints requests/s and latency percentiles per phase (create, get, list of one namespace), then the
watch fan-out: --watchers watchers of one namespace while --events configmaps are created, with
the delay from sending each create to its delivery on every watcher.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from servers import free_port, wait_for_port  # noqa: E402


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        head = (f"{method} {path} HTTP/1.1\r\nHost: bench\r\nAccept: application/json\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        self.writer.write(head + body)
        status_line = await self.reader.readline()
        status = int(status_line.split()[1])
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)


async def connect(port: int, ctx: ssl.SSLContext) -> Client:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    return Client(reader, writer)


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))] * 1000 if values else 0.0


async def phase(name: str, clients: list[Client], seconds: float, make) -> None:  # noqa: ANN001
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds

    async def worker(index: int, client: Client) -> None:
        nonlocal errors
        n = 0
        while time.perf_counter() < stop_at:
            method, path, body = make(index, n)
            t0 = time.perf_counter()
            status, _ = await client.request(method, path, body)
            latencies.append(time.perf_counter() - t0)
            if status >= 300:
                errors += 1
            n += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(i, c) for i, c in enumerate(clients)))
    elapsed = time.perf_counter() - started
    print(f"{name:8s} {len(latencies) / elapsed:9.0f} req/s   p50 {percentile(latencies, 0.5):6.1f} ms   "
          f"p99 {percentile(latencies, 0.99):6.1f} ms   errors {errors}")


async def run(port: int, pki: Path, n_clients: int, seconds: float, n_watchers: int, n_events: int) -> None:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    clients = [await connect(port, ctx) for _ in range(n_clients)]
    created: dict[int, int] = {}

    def create(index: int, n: int) -> tuple[str, str, bytes]:
        created[index] = n + 1
        body = json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"cm-{index}-{n}"},
                           "data": {"key": "value" * 10}}).encode()
        return "POST", "/api/v1/namespaces/default/configmaps", body

    def get(index: int, n: int) -> tuple[str, str, bytes]:
        return "GET", f"/api/v1/namespaces/default/configmaps/cm-{index}-{n % max(1, created.get(index, 1))}", b""

    def list_page(index: int, n: int) -> tuple[str, str, bytes]:
        return "GET", "/api/v1/namespaces/default/configmaps?limit=100", b""

    await phase("create", clients, seconds, create)
    await phase("get", clients, seconds, get)
    await phase("list100", clients, seconds, list_page)
    await watch_fanout(port, ctx, clients[0], n_watchers, n_events)
    for c in clients:
        c.writer.close()


async def watch_fanout(port: int, ctx: ssl.SSLContext, writer_client: Client, n_watchers: int,
                       n_events: int) -> None:
    """n_watchers watch one namespace; n_events writes; latency from sending a write to each delivery."""
    status, body = await writer_client.request("POST", "/api/v1/namespaces", json.dumps(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "fanout"}}).encode())
    rv = json.loads(body)["metadata"]["resourceVersion"]
    sent: dict[str, float] = {}
    latencies: list[float] = []
    done = asyncio.Event()
    remaining = [n_watchers * n_events]

    async def watcher() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
        writer.write(f"GET /api/v1/namespaces/fanout/configmaps?watch=1&resourceVersion={rv} HTTP/1.1\r\n"
                     f"Host: bench\r\nAccept: application/json\r\n\r\n".encode())
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        got = 0
        while got < n_events:
            size = int((await reader.readline()).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            now = time.perf_counter()
            for line in chunk[:-2].splitlines():
                name = json.loads(line)["object"]["metadata"]["name"]
                latencies.append(now - sent.get(name, now))
                got += 1
                remaining[0] -= 1
        writer.close()
        if remaining[0] <= 0:
            done.set()

    tasks = [asyncio.create_task(watcher()) for _ in range(n_watchers)]
    await asyncio.sleep(1.0)
    started = time.perf_counter()
    for i in range(n_events):
        name = f"ev-{i}"
        sent[name] = time.perf_counter()
        await writer_client.request("POST", "/api/v1/namespaces/fanout/configmaps", json.dumps(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}}).encode())
        await asyncio.sleep(0.002)
    await asyncio.wait_for(done.wait(), 120)
    elapsed = time.perf_counter() - started
    await asyncio.gather(*tasks, return_exceptions=True)
    print(f"watch    {n_watchers} watchers x {n_events} events: {len(latencies) / elapsed:9.0f} deliveries/s   "
          f"p50 {percentile(latencies, 0.5):6.1f} ms   p99 {percentile(latencies, 0.99):6.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--watchers", type=int, default=500, help="concurrent watchers for the fan-out phase")
    parser.add_argument("--events", type=int, default=200, help="writes during the fan-out phase")
    parser.add_argument("--fsync", action="store_true", help="keep fsync on (default: --unsafe-no-fsync)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ultraplane-apibench-"))
    port = free_port()
    cmd = [sys.executable, "-m", "ultraplane", "up", "--data-dir", str(work / "data"), "--etcd-port",
           str(free_port()), "--secure-port", str(port), "--log-level", "warn"]
    if not args.fsync:
        cmd.append("--unsafe-no-fsync")
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc, timeout=60)
        print(f"ultraplane up, {args.clients} clients, {args.seconds:.0f} s per phase, "
              f"fsync {'on' if args.fsync else 'off'}")
        asyncio.run(run(port, work / "data" / "pki", args.clients, args.seconds, args.watchers, args.events))
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
