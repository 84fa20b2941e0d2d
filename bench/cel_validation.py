"""Per-write cost of CRD x-kubernetes-validations (CEL): a custom resource with 3 rules against the same
custom resource without rules (the anchor), in the same run.

Starts `ultraplane up` (in-process store, --unsafe-no-fsync), creates two CRDs with the same schema, one
carrying 3 rules (at the root, on spec, on a list), then for each: creates (POST) and updates (merge
PATCH of spec.maxReplicas, which re-evaluates every rule) with --clients keep-alive HTTPS clients for
--seconds per phase, --rounds times. Prints the medians and the ratio to the rule-less resource:

    .venv/bin/python bench/cel_validation.py [--clients 8] [--seconds 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
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

GROUP = "bench.example.com"
RULES = {
    "root": [{"rule": "self.metadata.name.startsWith('r')", "message": "names start with r"}],
    "spec": [{"rule": "self.minReplicas <= self.maxReplicas"}],
    "ports": [{"rule": "self.all(p, p.port > 0 && p.port < 65536)"}],
}
SCHEMA = {"type": "object", "properties": {"spec": {"type": "object", "properties": {
    "minReplicas": {"type": "integer"}, "maxReplicas": {"type": "integer"}, "image": {"type": "string"},
    "ports": {"type": "array", "items": {"type": "object", "properties": {
        "name": {"type": "string"}, "port": {"type": "integer"}}}}}}}}
SETTLE_S = 2.0
Make = Callable[[int, int], tuple[str, str, bytes, str]]


def crd(plural: str, kind: str, with_rules: bool) -> dict:
    schema = copy.deepcopy(SCHEMA)
    if with_rules:
        schema["x-kubernetes-validations"] = RULES["root"]
        schema["properties"]["spec"]["x-kubernetes-validations"] = RULES["spec"]
        schema["properties"]["spec"]["properties"]["ports"]["x-kubernetes-validations"] = RULES["ports"]
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.{GROUP}"},
            "spec": {"group": GROUP, "scope": "Namespaced", "names": {"plural": plural, "kind": kind},
                     "versions": [{"name": "v1", "served": True, "storage": True,
                                   "schema": {"openAPIV3Schema": schema}}]}}


async def request(client: Client, method: str, path: str, body: bytes, content_type: str) -> int:
    head = (f"{method} {path} HTTP/1.1\r\nHost: bench\r\nAccept: application/json\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    client.writer.write(head + body)
    status = int((await client.reader.readline()).split()[1])
    length = 0
    while (line := await client.reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value)
    await client.reader.readexactly(length)
    return status


async def phase(clients: list[Client], seconds: float, make: Make) -> tuple[float, float, float]:
    latencies: list[float] = []
    await asyncio.sleep(SETTLE_S)
    stop_at = time.perf_counter() + seconds

    async def worker(index: int, client: Client) -> None:
        n = 0
        while time.perf_counter() < stop_at:
            method, path, body, content_type = make(index, n)
            t0 = time.perf_counter()
            status = await request(client, method, path, body, content_type)
            latencies.append(time.perf_counter() - t0)
            if status >= 300:
                raise RuntimeError(f"{method} {path}: {status}")
            n += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(i, c) for i, c in enumerate(clients)))
    return len(latencies) / (time.perf_counter() - started), percentile(latencies, 0.5), percentile(latencies, 0.99)


def makers(plural: str, kind: str, round_no: int) -> tuple[Make, Make]:
    base = f"/apis/{GROUP}/v1/namespaces/default/{plural}"
    created: dict[int, int] = {}

    def create(index: int, n: int) -> tuple[str, str, bytes, str]:
        created[index] = n + 1
        body = {"apiVersion": f"{GROUP}/v1", "kind": kind, "metadata": {"name": f"r{round_no}-{index}-{n}"},
                "spec": {"minReplicas": 1, "maxReplicas": 3, "image": "nginx",
                         "ports": [{"name": "http", "port": 80}, {"name": "https", "port": 443}]}}
        return "POST", base, json.dumps(body).encode(), "application/json"

    def update(index: int, n: int) -> tuple[str, str, bytes, str]:
        name = f"r{round_no}-{index}-{n % max(1, created.get(index, 1))}"
        patch = {"spec": {"maxReplicas": 3 + n}}
        return "PATCH", f"{base}/{name}", json.dumps(patch).encode(), "application/merge-patch+json"

    return create, update


async def run(port: int, pki: Path, n_clients: int, seconds: float, rounds: int) -> None:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    clients = [await connect(port, ctx) for _ in range(n_clients)]
    kinds = {"plainwidgets": ("PlainWidget", False), "ruledwidgets": ("RuledWidget", True)}
    for plural, (kind, with_rules) in kinds.items():
        status, _ = await clients[0].request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
                                             json.dumps(crd(plural, kind, with_rules)).encode())
        assert status == 201, status
        while (await clients[0].request("GET", f"/apis/{GROUP}/v1/{plural}"))[0] != 200:
            await asyncio.sleep(0.05)
    results: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    for round_no in range(rounds):
        for plural, (kind, _) in kinds.items():
            create, update = makers(plural, kind, round_no)
            results.setdefault((plural, "create"), []).append(await phase(clients, seconds, create))
            results.setdefault((plural, "update"), []).append(await phase(clients, seconds, update))
    print(f"{'phase':8s} {'resource':14s} {'writes/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s}   ratio to no rules")
    for name in ("create", "update"):
        anchor = statistics.median(r[0] for r in results[("plainwidgets", name)])
        for plural in kinds:
            runs = results[(plural, name)]
            rps = statistics.median(r[0] for r in runs)
            print(f"{name:8s} {plural:14s} {rps:9.0f} {statistics.median(r[1] for r in runs):8.2f} "
                  f"{statistics.median(r[2] for r in runs):8.2f}   {rps / anchor:.2f}")
    for c in clients:
        c.writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ultraplane-celbench-"))
    port = free_port()
    cmd = [sys.executable, "-m", "ultraplane", "up", "--data-dir", str(work / "data"), "--etcd-port",
           str(free_port()), "--secure-port", str(port), "--log-level", "warn", "--unsafe-no-fsync",
           "--no-scheduler", "--no-controllers", "--nodes", "0"]
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
