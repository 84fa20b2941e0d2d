"""Workload controllers (issue 5): how fast a ReplicaSet fills up, against the raw API as the anchor.

`ultraplane up --no-scheduler --no-controllers` on loopback; the ReplicaSet and Deployment
controllers run in this process on one event loop. Figures, each the median of --runs:

* anchor: N pods POSTed by one KubeClient, 16 in flight (the API server's cost of N pods);
* replicaset: a ReplicaSet of N replicas created, until its status reports N replicas (slow-start
  batches, expectations, N SuccessfulCreate events, status writes);
* rollout: a Deployment of N replicas (25% surge / 25% unavailable) whose pods a stand-in kubelet in
  this process marks Running+Ready as they appear, from `set image` until status says every replica
  is updated and available (N creations, N deletions, N status patches, ReplicaSet rescales).

    .venv/bin/python bench/workload_controllers.py [--replicas 1000] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO))

from tests.apiserver.conftest import start_cluster  # noqa: E402
from ultraplane.client.http import KubeClient  # noqa: E402
from ultraplane.controllers.base import InformerFactory  # noqa: E402
from ultraplane.controllers.deployment import DeploymentController  # noqa: E402
from ultraplane.controllers.replicaset import ReplicaSetController  # noqa: E402

Obj = dict[str, Any]
POD_SPEC = {"containers": [{"name": "c", "image": "busybox"}]}


async def wait_for(client: KubeClient, path: str, done: Any, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done(await client.get(path)):
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(path)


async def anchor(client: KubeClient, ns: str, n: int) -> float:
    slots = asyncio.Semaphore(16)

    async def one(i: int) -> None:
        async with slots:
            await client.create(f"/api/v1/namespaces/{ns}/pods",
                                {"metadata": {"name": f"raw-{i}", "labels": {"raw": "yes"}}, "spec": POD_SPEC})
    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return time.perf_counter() - start


async def replicaset(client: KubeClient, ns: str, n: int) -> float:
    start = time.perf_counter()
    await client.create(f"/apis/apps/v1/namespaces/{ns}/replicasets", {
        "metadata": {"name": "fill"}, "spec": {"replicas": n, "selector": {"matchLabels": {"app": "fill"}},
                                               "template": {"metadata": {"labels": {"app": "fill"}},
                                                            "spec": POD_SPEC}}})
    await wait_for(client, f"/apis/apps/v1/namespaces/{ns}/replicasets/fill",
                   lambda rs: (rs.get("status") or {}).get("replicas") == n)
    return time.perf_counter() - start


async def kubelet(client: KubeClient, ns: str, stop: asyncio.Event) -> None:
    """Marks every new pod of the namespace Running and Ready, 32 patches in flight."""
    slots = asyncio.Semaphore(32)
    listed = await client.list(f"/api/v1/namespaces/{ns}/pods")
    seen: set[str] = set()
    pending: set[asyncio.Task[None]] = set()

    async def ready(name: str) -> None:
        async with slots:
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            try:
                await client.patch(f"/api/v1/namespaces/{ns}/pods/{name}/status", {"status": {
                    "phase": "Running", "conditions": [{"type": "Ready", "status": "True",
                                                        "lastTransitionTime": now}]}})
            except Exception:  # noqa: BLE001 - a pod deleted meanwhile
                pass

    async for event in client.watch(f"/api/v1/namespaces/{ns}/pods",
                                    {"resourceVersion": listed["metadata"]["resourceVersion"]}):
        if stop.is_set():
            return
        pod = event.get("object") or {}
        uid = (pod.get("metadata") or {}).get("uid")
        if event.get("type") == "ADDED" and uid not in seen:
            seen.add(uid)
            task = asyncio.ensure_future(ready(pod["metadata"]["name"]))
            pending.add(task)
            task.add_done_callback(pending.discard)


async def rollout(client: KubeClient, ns: str, n: int) -> float:
    stop = asyncio.Event()
    runner = asyncio.ensure_future(kubelet(client, ns, stop))
    path = f"/apis/apps/v1/namespaces/{ns}/deployments/roll"
    await client.create(f"/apis/apps/v1/namespaces/{ns}/deployments", {
        "metadata": {"name": "roll"}, "spec": {"replicas": n, "selector": {"matchLabels": {"app": "roll"}},
                                               "template": {"metadata": {"labels": {"app": "roll"}},
                                                            "spec": POD_SPEC}}})

    def complete(d: Obj) -> bool:
        s = d.get("status") or {}
        return (s.get("observedGeneration", 0) >= d["metadata"]["generation"] and s.get("updatedReplicas") == n
                and s.get("availableReplicas") == n and s.get("replicas") == n)
    await wait_for(client, path, complete)
    start = time.perf_counter()
    await client.patch(path, {"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox:2"}]}}}})
    await wait_for(client, path, complete)
    elapsed = time.perf_counter() - start
    stop.set()
    runner.cancel()
    return elapsed


async def run(kubeconfig: Path, n: int, runs: int) -> dict[str, list[float]]:
    client = await KubeClient.from_kubeconfig(kubeconfig, max_connections=32)
    informers = InformerFactory(client)
    controllers = [ReplicaSetController(client, informers), DeploymentController(client, informers)]
    await informers.start()
    await informers.wait_synced()
    stop = asyncio.Event()
    tasks = [asyncio.ensure_future(c.run(stop)) for c in controllers]
    results: dict[str, list[float]] = {"anchor": [], "replicaset": [], "rollout": []}
    for i in range(runs):
        for name, scenario in (("anchor", anchor), ("replicaset", replicaset), ("rollout", rollout)):
            ns = f"{name}-{i}"
            await client.create("/api/v1/namespaces", {"metadata": {"name": ns}})
            results[name].append(await scenario(client, ns, n))
            print(f"run {i} {name}: {results[name][-1]:.2f} s", flush=True)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    await informers.stop()
    await client.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    cluster = start_cluster("inprocess", "--no-scheduler", "--no-controllers")  # ours run in-process
    try:
        results = asyncio.run(run(cluster.kubeconfig, args.replicas, args.runs))
    finally:
        cluster.stop()
        shutil.rmtree(cluster.work_dir, ignore_errors=True)
    base = statistics.median(results["anchor"])
    print(f"\nN = {args.replicas}, median of {args.runs}")
    print("| figure | seconds | pods/s | ratio to anchor |")
    print("|---|---|---|---|")
    for name, values in results.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.2f} | {args.replicas / median:.0f} | {median / base:.2f} |")


if __name__ == "__main__":
    main()
