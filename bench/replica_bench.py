"""Replicated store on NATS JetStream: put throughput and failover, side by side with etcd 3.4.

Starts a 3-node JetStream cluster on loopback (ultraplane.natscluster), three
``ultraplane store --journal nats://...`` members of one partition, a single etcd 3.4 and a
single file-journal ultraplane, and drives each with etcdload (100 clients by default)::

    .venv/bin/python bench/replica_bench.py [--total 20000] [--clients 100] [--failovers 10]

Rows: put on single etcd, put on the file-journal store, put on the replicated writer, put sent
to a follower (forwarded over NATS), linearizable and serializable gets on a follower. Then
failover: kill -9 of the writer -> first successful put through a surviving member (etcdctl
with a short timeout, retried), as p50 / p99 over ``--failovers`` runs; the killed member is
restarted (on its data dir) between runs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "src"))

import grpc  # noqa: E402
from servers import ETCDLOAD_DEFAULT, free_port, running, wait_for_port  # noqa: E402

from ultraplane.etcd.proto import rpc_pb2, rpc_pb2_grpc  # noqa: E402
from ultraplane.natscluster import NatsCluster  # noqa: E402


class Member:
    def __init__(self, root: Path, name: str, journal: str, partition: str) -> None:
        self.name = name
        self.data_dir = root / name
        self.journal = journal
        self.partition = partition
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        url = f"http://{self.endpoint}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ultraplane", "store", "--name", self.name, "--data-dir", str(self.data_dir),
             "--listen-client-urls", url, "--advertise-client-urls", url, "--journal", self.journal,
             "--partition", self.partition, "--log-level", "warn"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, self.proc, 60)

    def kill9(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def status(self) -> rpc_pb2.StatusResponse:
        with grpc.insecure_channel(self.endpoint) as ch:
            return rpc_pb2_grpc.MaintenanceStub(ch).Status(rpc_pb2.StatusRequest(), timeout=2)


def writer_of(members: list[Member], timeout: float = 30) -> Member:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            live = [(m, m.status()) for m in members if m.proc is not None]
            leaders = {s.leader for _, s in live}
            if len(leaders) == 1 and 0 not in leaders:
                leader = leaders.pop()
                return next(m for m, s in live if s.header.member_id == leader)
        except grpc.RpcError:
            pass
        time.sleep(0.1)
    raise TimeoutError("no agreed writer")


def etcdload(endpoint: str, op: str, total: int, clients: int) -> dict:
    out = subprocess.run([ETCDLOAD_DEFAULT, "-endpoint", endpoint, "-op", op, "-total", str(total),
                          "-clients", str(clients)], capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"etcdload failed: {out.stderr.strip()}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def first_put(endpoint: str, deadline: float) -> float:
    """Seconds until a put through ``endpoint`` succeeds (each attempt times out quickly)."""
    start = time.monotonic()
    with grpc.insecure_channel(endpoint) as ch:
        kv = rpc_pb2_grpc.KVStub(ch)
        while time.monotonic() < deadline:
            try:
                kv.Put(rpc_pb2.PutRequest(key=b"/failover", value=b"x"), timeout=1.0)
                return time.monotonic() - start
            except grpc.RpcError:
                time.sleep(0.02)
    raise TimeoutError("writes did not resume")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total", type=int, default=20000)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--failovers", type=int, default=10)
    args = parser.parse_args()
    rows: list[tuple[str, dict]] = []

    with running("etcd") as etcd:
        rows.append(("put, single etcd 3.4", etcdload(etcd.endpoint, "put", args.total, args.clients)))
    with running("ultraplane") as single:
        rows.append(("put, ultraplane file journal", etcdload(single.endpoint, "put", args.total, args.clients)))

    root = Path(tempfile.mkdtemp(prefix="bench-replica-"))
    cluster = NatsCluster(str(root / "nats"))
    cluster.start()
    journal = ",".join(cluster.urls)
    members = [Member(root, f"m{i + 1}", journal, "bench") for i in range(3)]
    failovers: list[float] = []
    try:
        for m in members:
            m.start()
        writer = writer_of(members)
        follower = next(m for m in members if m is not writer)
        rows.append(("put, replicated: to the writer", etcdload(writer.endpoint, "put", args.total, args.clients)))
        rows.append(("put, replicated: to a follower (forwarded)",
                     etcdload(follower.endpoint, "put", args.total, args.clients)))
        rows.append(("get, replicated: follower, linearizable",
                     etcdload(follower.endpoint, "get", args.total, args.clients)))
        rows.append(("get, replicated: follower, serializable",
                     etcdload(follower.endpoint, "get-serializable", args.total, args.clients)))
        for _ in range(args.failovers):
            writer = writer_of(members)
            survivor = next(m for m in members if m is not writer)
            first_put(survivor.endpoint, time.monotonic() + 30)  # the survivor serves before the fault
            writer.kill9()
            failovers.append(first_put(survivor.endpoint, time.monotonic() + 60))
            writer.start()
            writer_of(members)
    finally:
        for m in members:
            m.stop()
        cluster.close()
        shutil.rmtree(root, ignore_errors=True)

    print(f"{'workload':48} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for name, r in rows:
        print(f"{name:48} {r.get('rps', 0):>10,.0f} {r.get('p50_ms', 0):>8.2f} {r.get('p99_ms', 0):>8.2f} "
              f"{r.get('errors', 0):>7}")
    if failovers:
        ordered = sorted(failovers)
        p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
        print(f"failover (kill -9 writer -> first put), {len(failovers)} runs: "
              f"p50 {statistics.median(failovers):.2f} s, p99 {p99:.2f} s, max {max(failovers):.2f} s")
    print("raw:", json.dumps({name: r for name, r in rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
