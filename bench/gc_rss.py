"""Memory of the controller manager with many pods: what the garbage collector's caches cost.

Starts `ultraplane up --no-scheduler --nodes 0` (controller manager on, as users get it), creates N pods
through the API (bare, Pending or with --bound bound to one Node, ~1.5 KB each), waits until the `ultraplane controllers` process stops
growing, and prints its RSS before and after the pods. Run it once per source tree to compare versions:

    .venv/bin/python bench/gc_rss.py [--pods 5000] [--controllers '*'] [--bound] [--src /path/to/other/src]

`--controllers garbagecollector` runs the collector alone, so every cache in the process is its own.
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
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from ultraplane.client.http import ApiError, KubeClient  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def controllers_pid(root: int) -> int | None:
    """The `ultraplane controllers` process under `up`."""
    pending = [root]
    while pending:
        pid = pending.pop()
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        if b"controllers" in argv and b"--kubeconfig" in argv:
            return pid
        pending.extend(int(c) for c in children)
    return None


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def settle(pid: int, seconds: float = 3.0, timeout: float = 120.0) -> float:
    """RSS once it has not grown by more than 1% over `seconds`."""
    deadline = time.monotonic() + timeout
    last = rss_mib(pid)
    while time.monotonic() < deadline:
        await asyncio.sleep(seconds)
        now = rss_mib(pid)
        if now <= last * 1.01:
            return now
        last = now
    return last


def pod(i: int, node: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"p-{i:05d}", "labels": {"app": f"app-{i % 50}", "tier": "web", "batch": "rss"},
                         "annotations": {"example.com/owner": "team-a", "example.com/build": f"{i:08x}"}},
            "spec": {**({"nodeName": node} if node else {}), "containers": [{
                "name": "app", "image": "registry.k8s.io/pause:3.10", "ports": [{"containerPort": 8080}],
                "env": [{"name": f"VAR_{k}", "value": f"value-{k}-{i}"} for k in range(8)],
                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}}}]}}


async def create_pods(client: KubeClient, count: int, namespace: str, node: str) -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)

    async def worker() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            await client.create(f"/api/v1/namespaces/{namespace}/pods", pod(i, node))
    await asyncio.gather(*(worker() for _ in range(32)))


async def main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="ultraplane-gcrss-"))
    env = dict(os.environ)
    if args.src:
        env["PYTHONPATH"] = os.pathsep.join([args.src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    log = open(work / "up.log", "wb")  # noqa: SIM115 - closed below
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ultraplane", "up", "--data-dir", str(work / "data"),
                             "--secure-port", str(port), "--etcd-port", str(free_port()), "--unsafe-no-fsync",
                             "--no-scheduler", "--nodes", "0", "--controllers", args.controllers],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    client: KubeClient | None = None
    try:
        kubeconfig = work / "data" / "kubeconfig"
        deadline = time.monotonic() + 120
        while client is None:
            assert time.monotonic() < deadline and proc.poll() is None, f"up did not start; see {work / 'up.log'}"
            await asyncio.sleep(0.5)
            if kubeconfig.exists():
                try:
                    candidate = await KubeClient.from_kubeconfig(kubeconfig, max_connections=32)
                    if (await candidate.raw("GET", "/readyz")).status == 200:
                        client = candidate
                    else:
                        await candidate.close()
                except (OSError, ApiError, ValueError):
                    pass
        pid = None
        while pid is None:
            await asyncio.sleep(0.5)
            pid = controllers_pid(proc.pid)
        await asyncio.sleep(5)  # informers synced, garbage collector monitors started
        before = await settle(pid)
        await client.create("/api/v1/namespaces", {"metadata": {"name": "rss"}})
        node = "rss-node" if args.bound else ""
        if node:  # a Node object (no kubelet) so the pod GC keeps its pods
            await client.create("/api/v1/nodes", {"metadata": {"name": node}})
        started = time.monotonic()
        await create_pods(client, args.pods, "rss", node)
        took = time.monotonic() - started
        after = await settle(pid)
        print(f"source: {args.src or REPO / 'src'}  controllers: {args.controllers}  bound: {args.bound}")
        print(f"{args.pods} pods created in {took:.1f}s; controller manager RSS {before:.1f} MiB before, "
              f"{after:.1f} MiB after (+{after - before:.1f} MiB, {(after - before) * 1024 / args.pods:.2f} KiB/pod)")
    finally:
        if client is not None:
            await client.close()
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        log.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=int, default=5000)
    parser.add_argument("--controllers", default="*")
    parser.add_argument("--bound", action="store_true", help="bind the pods to one Node (spec.nodeName)")
    parser.add_argument("--src", default="", help="another source tree to run (its src/ directory)")
    asyncio.run(main(parser.parse_args()))
