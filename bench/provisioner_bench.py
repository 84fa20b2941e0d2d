"""Provisioner benchmarks (issue 13): 40,000 pending pods provisioned and Running, and the fleet's cost.

* plan: the packing alone, in-process, for each shipped workload mix: planning time for N pods and the
  fleet's price against a lower bound (the pods' summed cpu, memory and GPU requests at the
  catalogue's cheapest on-demand price per unit, the largest of the three), as a ratio.
* cluster: `ultraplane up --nodes 0` plus `ultraplane provisioner`, a NodePool, then deployments
  totalling N pods of the mix created at once; every pod followed through a watch until Running.
  Anchor, side by side in the same run: the deployments are deleted and created again on the nodes
  that now exist (consolidateAfter: Never keeps them), so the second pass is the same cluster
  running the same pods without provisioning.

    .venv/bin/python bench/provisioner_bench.py plan [--pods 40000]
    .venv/bin/python bench/provisioner_bench.py cluster [--pods 40000 --mix mixed]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

from cluster_burst import ControlPlane, PodTracker, free_port, wait_for_api  # noqa: E402

from ultraplane.client.http import ApiError, KubeClient  # noqa: E402
from ultraplane.provisioner.binpack import Limits  # noqa: E402
from ultraplane.provisioner.catalog import ON_DEMAND, Catalog, load  # noqa: E402
from ultraplane.provisioner.cloud import SimCloud  # noqa: E402
from ultraplane.provisioner.controller import Provisioner  # noqa: E402
from ultraplane.provisioner.options import pool_view  # noqa: E402
from ultraplane.provisioner.pods import pending_pod  # noqa: E402

GI = 2**30
# workload mixes: (share, cpu, memory, GPUs)
MIXES: dict[str, list[tuple[float, str, str, int]]] = {
    "web": [(0.7, "250m", "256Mi", 0), (0.2, "500m", "1Gi", 0), (0.1, "1", "2Gi", 0)],
    "mixed": [(0.4, "250m", "512Mi", 0), (0.25, "1", "2Gi", 0), (0.15, "2", "8Gi", 0), (0.15, "500m", "4Gi", 0),
              (0.05, "4", "16Gi", 0)],
    "ml": [(0.6, "500m", "1Gi", 0), (0.3, "2", "8Gi", 0), (0.1, "4", "16Gi", 1)],
}
NODECLASS = {"apiVersion": "karpenter.ultraplane.io/v1", "kind": "SimNodeClass", "metadata": {"name": "default"},
             "spec": {"launchLatency": "1s"}}


def nodepool(consolidate_after: str = "Never") -> dict:
    return {"apiVersion": "karpenter.sh/v1", "kind": "NodePool", "metadata": {"name": "default"},
            "spec": {"template": {"spec": {
                "nodeClassRef": {"group": "karpenter.ultraplane.io", "kind": "SimNodeClass", "name": "default"},
                "requirements": [{"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["on-demand"]}]}},
                "disruption": {"consolidationPolicy": "WhenEmpty", "consolidateAfter": consolidate_after}}}


def shapes(mix: str, pods: int) -> list[tuple[int, str, str, int]]:
    """(replicas, cpu, memory, gpus) per shape, summing to `pods`."""
    out, left = [], pods
    for i, (share, cpu, mem, gpu) in enumerate(MIXES[mix]):
        count = left if i == len(MIXES[mix]) - 1 else round(pods * share)
        out.append((count, cpu, mem, gpu))
        left -= count
    return out


def pod_body(name: str, cpu: str, mem: str, gpu: int) -> dict:
    requests = {"cpu": cpu, "memory": mem}
    if gpu:
        requests["nvidia.com/gpu"] = str(gpu)
    return {"metadata": {"name": name, "namespace": "bench", "uid": name, "labels": {"app": name}},
            "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10",
                                     "resources": {"requests": requests, "limits": dict(requests) if gpu else {}}}]}}


def lower_bound(catalog: Catalog, requests: list[tuple[int, int, int]]) -> float:
    """Summed requests at the cheapest on-demand $/vCPU, $/GiB and $/GPU: the largest of the three."""
    per_cpu = per_mem = per_gpu = float("inf")
    for t in catalog.types.values():
        offer = min((o for o in t.offerings if o.capacity_type == ON_DEMAND), key=lambda o: o.price, default=None)
        if offer is None:
            continue
        per_cpu = min(per_cpu, offer.price / (t.shape.vcpus * 1000))
        per_mem = min(per_mem, offer.price / (t.shape.memory_gib * GI))
        if t.shape.gpus:
            per_gpu = min(per_gpu, offer.price / t.shape.gpus)
    cpu = sum(r[0] for r in requests)
    mem = sum(r[1] for r in requests)
    gpu = sum(r[2] for r in requests)
    return max(cpu * per_cpu, mem * per_mem, gpu * per_gpu if gpu else 0.0)


def plan_bench(args: argparse.Namespace) -> int:
    catalog = load(args.region)
    provisioner = Provisioner(KubeClient("https://127.0.0.1:1"), catalog, SimCloud.__new__(SimCloud))
    view = pool_view({"metadata": {"name": "default", "uid": "u"}, "spec": nodepool()["spec"]}, catalog,
                     {"spec": {}}, [])
    print("| mix | pods | planning time | NodeClaims | fleet $/h | lower bound $/h | ratio |")
    print("|---|---|---|---|---|---|---|")
    for mix in MIXES:
        pods = []
        for s, (count, cpu, mem, gpu) in enumerate(shapes(mix, args.pods)):
            pods += [pending_pod(pod_body(f"s{s}-{i}", cpu, mem, gpu)) for i in range(count)]
        times = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            plans, failures = provisioner.plan(pods, [view], {"default": Limits()})
            times.append(time.perf_counter() - started)
        assert not failures, failures
        fleet = sum(p.option.price for p in plans)
        bound = lower_bound(catalog, [p.requests[:3] for p in pods])
        times.sort()
        print(f"| {mix} | {len(pods):,} | {times[len(times) // 2]:.3f} s | {len(plans):,} | {fleet:.2f} | "
              f"{bound:.2f} | {fleet / bound:.3f} |")
    return 0


async def apply(client: KubeClient, path: str, body: dict) -> None:
    try:
        await client.create(path, body)
    except ApiError as exc:
        if exc.code != 409:
            raise


def deployment(name: str, replicas: int, cpu: str, mem: str, gpu: int) -> dict:
    requests = {"cpu": cpu, "memory": mem}
    if gpu:
        requests["nvidia.com/gpu"] = str(gpu)
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "bench"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}}, "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"terminationGracePeriodSeconds": 0, "containers": [{
                    "name": "app", "image": "registry.k8s.io/pause:3.10",
                    "resources": {"requests": requests, "limits": dict(requests) if gpu else {}}}]}}}}


async def run_pass(client: KubeClient, deployments: list[dict], total: int, timeout: float) -> tuple[float, int]:
    tracker = PodTracker(client, "bench")
    await tracker.start()
    started = time.monotonic()
    await asyncio.gather(*(client.create("/apis/apps/v1/namespaces/bench/deployments", d) for d in deployments))
    last = -1
    while len(tracker.running) < total and time.monotonic() - started < timeout:
        await asyncio.sleep(1)
        if len(tracker.running) // 5000 != last:
            last = len(tracker.running) // 5000
            print(f"  {time.monotonic() - started:6.1f} s: {len(tracker.running):,} Running", flush=True)
    took = time.monotonic() - started
    await tracker.stop()
    return took, len(tracker.running)


class EmptyControlPlane(ControlPlane):
    """`ultraplane up --nodes 0`: store, API server, scheduler and controllers, no simulated nodes."""

    def __init__(self, tier: str) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="ultraplane-provbench-"))
        self.port = free_port()
        self.log = open(self.work / "up.log", "wb")  # noqa: SIM115 - closed in stop()
        argv = [sys.executable, "-m", "ultraplane", "up", "--data-dir", str(self.work / "data"),
                "--secure-port", str(self.port), "--etcd-port", str(free_port()), "--unsafe-no-fsync",
                "--nodes", "0", "--tier", tier]
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.kubeconfig = self.work / "data" / "kubeconfig"


async def cluster_bench(args: argparse.Namespace) -> int:
    catalog = load(args.region)
    cp = EmptyControlPlane(args.tier)
    prov_log = open(cp.work / "provisioner.log", "wb")  # noqa: SIM115 - closed below
    prov = None
    try:
        client = await wait_for_api(cp)
        prov = subprocess.Popen([sys.executable, "-m", "ultraplane", "provisioner", "--kubeconfig", str(cp.kubeconfig),
                                 "--region", args.region, "--kubelet-events", args.kubelet_events], stdout=prov_log, stderr=subprocess.STDOUT)
        for _ in range(120):
            try:
                await client.get("/apis/karpenter.ultraplane.io/v1/simnodeclasses")
                break
            except ApiError:
                await asyncio.sleep(0.5)
        await apply(client, "/apis/karpenter.ultraplane.io/v1/simnodeclasses", NODECLASS)
        await apply(client, "/apis/karpenter.sh/v1/nodepools", nodepool())
        await apply(client, "/api/v1/namespaces", {"metadata": {"name": "bench"}})
        deployments = []
        per = args.replicas_per_deployment
        for s, (count, cpu, mem, gpu) in enumerate(shapes(args.mix, args.pods)):
            for d in range(0, count, per):
                deployments.append(deployment(f"s{s}-{d // per}", min(per, count - d), cpu, mem, gpu))
        print(f"pass 1: {args.pods:,} pods ({args.mix}) on a cluster with no nodes", flush=True)
        took, ran = await run_pass(client, deployments, args.pods, args.timeout)
        claims = (await client.list("/apis/karpenter.sh/v1/nodeclaims"))["items"]
        fleet = sum(catalog.price(c["metadata"]["labels"]["node.kubernetes.io/instance-type"],
                                  c["metadata"]["labels"]["topology.kubernetes.io/zone"],
                                  c["metadata"]["labels"]["karpenter.sh/capacity-type"]) for c in claims)
        placed = [p for p in (await client.list("/api/v1/namespaces/bench/pods"))["items"]
                  if (p.get("spec") or {}).get("nodeName")]
        bound = lower_bound(catalog, [pending_pod(p).requests[:3] for p in placed])  # of the pods placed
        result = {"pods": args.pods, "mix": args.mix, "provisioned_s": round(took, 1), "running": ran,
                  "placed": len(placed),
                  "nodeclaims": len(claims), "fleet_per_h": round(fleet, 2), "lower_bound_per_h": round(bound, 2),
                  "cost_ratio": round(fleet / bound, 3)}
        print(json.dumps(result), flush=True)
        if args.anchor:
            for d in deployments:
                await client.delete(f"/apis/apps/v1/namespaces/bench/deployments/{d['metadata']['name']}",
                                    {"propagationPolicy": "Background"})
            while (await client.list("/api/v1/namespaces/bench/pods", {"limit": "1"}))["items"]:
                await asyncio.sleep(2)
            print("pass 2 (anchor): the same pods on the nodes pass 1 provisioned", flush=True)
            anchor, ran2 = await run_pass(client, deployments, args.pods, args.timeout)
            result.update({"anchor_existing_nodes_s": round(anchor, 1), "anchor_running": ran2,
                           "ratio_to_anchor": round(took / anchor, 2)})
            print(json.dumps(result), flush=True)
        await client.close()
    finally:
        if prov is not None:
            prov.terminate()
            try:
                prov.wait(30)
            except subprocess.TimeoutExpired:
                prov.kill()
        prov_log.close()
        cp.stop()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("plan")
    p.add_argument("--pods", type=int, default=40_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--region", default="us-east-1")
    c = sub.add_parser("cluster")
    c.add_argument("--pods", type=int, default=40_000)
    c.add_argument("--mix", default="mixed", choices=sorted(MIXES))
    c.add_argument("--replicas-per-deployment", type=int, default=1000)
    c.add_argument("--tier", default="8xl")
    c.add_argument("--region", default="us-east-1")
    c.add_argument("--timeout", type=float, default=900.0)
    c.add_argument("--kubelet-events", default="false", choices=["true", "false"])
    c.add_argument("--anchor", action="store_true", help="run the same pods again on the provisioned nodes")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the control plane is stopped on the way out
    if args.mode == "plan":
        return plan_bench(args)
    return asyncio.run(cluster_bench(args))


if __name__ == "__main__":
    raise SystemExit(main())
