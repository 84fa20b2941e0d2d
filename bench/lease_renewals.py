"""Lease renewals/s one API server takes: N keep-alive connections each renewing its own Lease (PUT).

Starts `ultraplane up --tier 8xl --nodes 0 --no-scheduler --no-controllers --unsafe-no-fsync`, creates N
Leases in kube-node-lease, then renews them back to back for --seconds through ultraplane's client.
Prints PUTs/s and the server process's CPU (cores) over the window; the anchor is the 2,500
renewals/s of 100,000 kubelets renewing every 40 s.

    .venv/bin/python bench/lease_renewals.py [--connections 1,16,64] [--seconds 10]
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

from servers import free_port  # noqa: E402

from ultraplane.client.http import KubeClient  # noqa: E402

LEASES = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
TARGET = 2500.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run(connections: int, seconds: float) -> tuple[float, float]:
    work = Path(tempfile.mkdtemp(prefix="ultraplane-leases-"))
    proc = subprocess.Popen([sys.executable, "-m", "ultraplane", "up", "--data-dir", str(work / "d"), "--secure-port",
                             str(free_port()), "--etcd-port", str(free_port()), "--unsafe-no-fsync", "--nodes", "0",
                             "--no-scheduler", "--no-controllers", "--tier", "8xl"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, PYTHONPATH=str(REPO / "src")))
    try:
        kubeconfig = work / "d" / "kubeconfig"
        client = None
        for _ in range(600):
            if kubeconfig.exists():
                try:
                    client = await KubeClient.from_kubeconfig(kubeconfig, max_connections=connections)
                    if (await client.raw("GET", "/readyz")).status == 200:
                        break
                except OSError:
                    pass
            await asyncio.sleep(0.2)
        assert client is not None
        leases = await asyncio.gather(*(client.create(LEASES, {
            "metadata": {"name": f"node-{i}"}, "spec": {"holderIdentity": f"node-{i}", "leaseDurationSeconds": 40}})
            for i in range(connections)))
        done = 0
        stop_at = time.monotonic() + seconds

        async def renew(lease: dict) -> None:
            nonlocal done
            while time.monotonic() < stop_at:
                lease["spec"]["renewTime"] = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
                lease = await client.update(f"{LEASES}/{lease['metadata']['name']}", lease)
                done += 1

        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        await asyncio.gather(*(renew(lease) for lease in leases))
        elapsed = time.monotonic() - t0
        cores = (cpu_seconds(proc.pid) - cpu0) / elapsed
        await client.close()
        return done / elapsed, cores
    finally:
        proc.terminate()
        proc.wait(60)
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", default="1,16,64")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    for n in (int(c) for c in args.connections.split(",")):
        rate, cores = asyncio.run(run(n, args.seconds))
        print(f"{n:3d} connections: {rate:7,.0f} lease PUTs/s ({rate / TARGET:.2f}x the 2,500/s target), "
              f"server {cores:.2f} cores")


if __name__ == "__main__":
    main()
