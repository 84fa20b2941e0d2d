"""Core controllers (issue 5): garbage collection, namespace deletion and EndpointSlices, against the raw
API as the anchor.

`ultraplane up --no-scheduler` on loopback, with its controller manager as the child process users get.
Figures, each the median of --runs, for N objects:

* anchor: N ConfigMaps POSTed by one KubeClient, 16 in flight (the API server's cost of N writes);
* gc: an owner ConfigMap with N dependent ConfigMaps is deleted (background), until none is left;
* namespace: a namespace holding N ConfigMaps is deleted, until GET says 404;
* endpointslices: N pods with an IP and Ready exist; a Service selecting them is created, until its
  EndpointSlices list N endpoints (ceil(N / 100) slices).

    .venv/bin/python bench/core_controllers.py [--objects 1000] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO))

from tests.apiserver.conftest import start_cluster  # noqa: E402
from ultraplane.client.http import ApiError, KubeClient  # noqa: E402

Obj = dict[str, Any]
IN_FLIGHT = 16


async def fan_out(n: int, one: Callable[[int], Awaitable[Any]]) -> None:
    slots = asyncio.Semaphore(IN_FLIGHT)

    async def limited(i: int) -> None:
        async with slots:
            await one(i)
    await asyncio.gather(*(limited(i) for i in range(n)))


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise TimeoutError


async def namespace(client: KubeClient, name: str) -> None:
    await client.create("/api/v1/namespaces", {"metadata": {"name": name}})


async def anchor(client: KubeClient, ns: str, n: int) -> float:
    start = time.perf_counter()
    await fan_out(n, lambda i: client.create(f"/api/v1/namespaces/{ns}/configmaps", {"metadata": {"name": f"a-{i}"}}))
    return time.perf_counter() - start


async def gc(client: KubeClient, ns: str, n: int) -> float:
    owner = await client.create(f"/api/v1/namespaces/{ns}/configmaps", {"metadata": {"name": "owner"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
    await fan_out(n, lambda i: client.create(f"/api/v1/namespaces/{ns}/configmaps", {
        "metadata": {"name": f"dep-{i}", "labels": {"dep": "yes"}, "ownerReferences": [ref]}}))
    start = time.perf_counter()
    await client.delete(f"/api/v1/namespaces/{ns}/configmaps/owner")

    async def gone() -> bool:
        listed = await client.list(f"/api/v1/namespaces/{ns}/configmaps", {"labelSelector": "dep=yes"})
        return not listed.get("items")
    await until(gone)
    return time.perf_counter() - start


async def namespace_deletion(client: KubeClient, ns: str, n: int) -> float:
    await fan_out(n, lambda i: client.create(f"/api/v1/namespaces/{ns}/configmaps", {"metadata": {"name": f"c-{i}"}}))
    start = time.perf_counter()
    await client.delete(f"/api/v1/namespaces/{ns}")

    async def gone() -> bool:
        try:
            await client.get(f"/api/v1/namespaces/{ns}")
        except ApiError as exc:
            return exc.code == 404
        return False
    await until(gone)
    return time.perf_counter() - start


async def endpointslices(client: KubeClient, ns: str, n: int) -> float:
    async def pod(i: int) -> None:
        await client.create(f"/api/v1/namespaces/{ns}/pods", {
            "metadata": {"name": f"p-{i}", "labels": {"app": "svc"}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
        ip = f"10.{100 + i // 65536}.{i // 256 % 256}.{i % 256}"
        await client.patch(f"/api/v1/namespaces/{ns}/pods/p-{i}/status", {"status": {
            "phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}})
    await fan_out(n, pod)
    start = time.perf_counter()
    await client.create(f"/api/v1/namespaces/{ns}/services", {
        "metadata": {"name": "svc"}, "spec": {"selector": {"app": "svc"}, "ports": [{"port": 80}]}})

    async def filled() -> bool:
        listed = await client.list(f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices",
                                   {"labelSelector": "kubernetes.io/service-name=svc"})
        return sum(len(s.get("endpoints") or []) for s in listed.get("items") or []) == n
    await until(filled)
    return time.perf_counter() - start


async def main(n: int, runs: int) -> None:
    cluster = start_cluster("inprocess", "--no-scheduler")
    try:
        client = await KubeClient.from_kubeconfig(cluster.kubeconfig, max_connections=IN_FLIGHT)
        await asyncio.sleep(3)  # the controller manager takes its Lease and syncs its informers
        figures: dict[str, list[float]] = {"anchor": [], "gc": [], "namespace": [], "endpointslices": []}
        for run in range(runs):
            for name, phase in (("anchor", anchor), ("gc", gc), ("namespace", namespace_deletion),
                                ("endpointslices", endpointslices)):
                ns = f"{name}-{run}"
                await namespace(client, ns)
                figures[name].append(await phase(client, ns, n))
        await client.close()
    finally:
        cluster.stop()
        shutil.rmtree(cluster.work_dir, ignore_errors=True)
    base = statistics.median(figures["anchor"])
    print(f"N = {n}, medians of {runs} runs")
    for name, values in figures.items():
        median = statistics.median(values)
        print(f"{name:15s} {median:7.2f} s  {n / median:8.0f} objects/s  ratio {median / base:5.2f}  "
              f"(runs: {', '.join(f'{v:.2f}' for v in values)})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.objects, args.runs))
