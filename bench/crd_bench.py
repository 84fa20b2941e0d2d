"""Custom resources against ConfigMaps (the anchor): what schema validation, pruning and defaulting cost.

Starts `ultraplane up` (in-process store, --unsafe-no-fsync), creates a CronTab CRD whose schema has a
pattern, bounds, an enum, defaults and a printer column, then runs the same three phases for
ConfigMaps and CronTabs with --clients keep-alive HTTPS clients: create, get, and a 100-item list
page as a Table (what `kubectl get` asks for). Each phase runs --rounds times; the medians are printed
with the CronTab/ConfigMap ratio:

    .venv/bin/python bench/crd_bench.py [--clients 16] [--seconds 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from apiserver_bench import Client, connect, percentile  # noqa: E402
from servers import free_port, wait_for_port  # noqa: E402

CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "crontabs.stable.example.com"},
    "spec": {"group": "stable.example.com", "scope": "Namespaced",
             "names": {"plural": "crontabs", "kind": "CronTab"},
             "versions": [{"name": "v1", "served": True, "storage": True,
                           "additionalPrinterColumns": [{"name": "Spec", "type": "string",
                                                         "jsonPath": ".spec.cronSpec"}],
                           "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {
                               "type": "object", "required": ["cronSpec"], "properties": {
                                   "cronSpec": {"type": "string", "pattern": r"^(\S+\s+){4}\S+$"},
                                   "image": {"type": "string", "default": "busybox"},
                                   "replicas": {"type": "integer", "minimum": 0, "maximum": 100, "default": 1},
                                   "mode": {"type": "string", "enum": ["fast", "slow"]}}}}}}}]},
}
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"
SETTLE_S = 2.0  # idle time before each phase, so in-process controllers finish reacting to the last one
Make = Callable[[int, int], tuple[str, str, bytes]]


async def request(client: Client, method: str, path: str, body: bytes, accept: str) -> int:
    if accept == "application/json":
        return (await client.request(method, path, body))[0]
    head = (f"{method} {path} HTTP/1.1\r\nHost: bench\r\nAccept: {accept}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    client.writer.write(head + body)
    status = int((await client.reader.readline()).split()[1])
    length = 0
    while (line := await client.reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value)
    await client.reader.readexactly(length)
    return status


async def phase(clients: list[Client], seconds: float, make: Make, accept: str = "application/json") -> tuple[
        float, float, float]:
    latencies: list[float] = []
    await asyncio.sleep(SETTLE_S)
    stop_at = time.perf_counter() + seconds

    async def worker(index: int, client: Client) -> None:
        n = 0
        while time.perf_counter() < stop_at:
            method, path, body = make(index, n)
            t0 = time.perf_counter()
            status = await request(client, method, path, body, accept)
            latencies.append(time.perf_counter() - t0)
            if status >= 300:
                raise RuntimeError(f"{method} {path}: {status}")
            n += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(i, c) for i, c in enumerate(clients)))
    return len(latencies) / (time.perf_counter() - started), percentile(latencies, 0.5), percentile(latencies, 0.99)


def makers(kind: str, round_no: int) -> tuple[Make, Make, Make]:
    if kind == "ConfigMap":
        base = "/api/v1/namespaces/default/configmaps"

        def body(name: str) -> dict:
            return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
                    "data": {"cronSpec": "*/5 * * * *", "image": "nginx", "mode": "fast"}}
    else:
        base = "/apis/stable.example.com/v1/namespaces/default/crontabs"

        def body(name: str) -> dict:
            return {"apiVersion": "stable.example.com/v1", "kind": "CronTab", "metadata": {"name": name},
                    "spec": {"cronSpec": "*/5 * * * *", "image": "nginx", "mode": "fast"}}
    created: dict[int, int] = {}

    def create(index: int, n: int) -> tuple[str, str, bytes]:
        created[index] = n + 1
        return "POST", base, json.dumps(body(f"r{round_no}-{index}-{n}")).encode()

    def get(index: int, n: int) -> tuple[str, str, bytes]:
        return "GET", f"{base}/r{round_no}-{index}-{n % max(1, created.get(index, 1))}", b""

    def table(index: int, n: int) -> tuple[str, str, bytes]:
        return "GET", f"{base}?limit=100", b""

    return create, get, table


async def run(port: int, pki: Path, n_clients: int, seconds: float, rounds: int) -> None:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    clients = [await connect(port, ctx) for _ in range(n_clients)]
    status, _ = await clients[0].request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
                                         json.dumps(CRD).encode())
    assert status == 201, status
    while (await clients[0].request("GET", "/apis/stable.example.com/v1/crontabs"))[0] != 200:
        await asyncio.sleep(0.05)
    results: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    for round_no in range(rounds):
        for kind in ("ConfigMap", "CronTab"):
            create, get, table = makers(kind, round_no)
            results.setdefault((kind, "create"), []).append(await phase(clients, seconds, create))
            results.setdefault((kind, "get"), []).append(await phase(clients, seconds, get))
            results.setdefault((kind, "table100"), []).append(await phase(clients, seconds, table, TABLE))
    print(f"{'phase':10s} {'kind':10s} {'req/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s}   ratio to ConfigMap")
    for name in ("create", "get", "table100"):
        anchor = statistics.median(r[0] for r in results[("ConfigMap", name)])
        for kind in ("ConfigMap", "CronTab"):
            runs = results[(kind, name)]
            rps = statistics.median(r[0] for r in runs)
            print(f"{name:10s} {kind:10s} {rps:9.0f} {statistics.median(r[1] for r in runs):8.2f} "
                  f"{statistics.median(r[2] for r in runs):8.2f}   {rps / anchor:.2f}")
    for c in clients:
        c.writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ultraplane-crdbench-"))
    port = free_port()
    cmd = [sys.executable, "-m", "ultraplane", "up", "--data-dir", str(work / "data"), "--etcd-port",
           str(free_port()), "--secure-port", str(port), "--log-level", "warn", "--unsafe-no-fsync",
           "--no-scheduler"]
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc, timeout=60)
        print(f"ultraplane up, {args.clients} clients, {args.seconds:.0f} s per phase, medians of {args.rounds} "
              f"rounds, fsync off")
        asyncio.run(run(port, work / "data" / "pki", args.clients, args.seconds, args.rounds))
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
