"""The read barrier's cost: linearizable gets on replicated members, before and after a change.

Starts a 3-node NATS JetStream cluster on loopback and, for each round and each variant, three
``ultraplane store`` members on a fresh partition, then drives them with etcdload (gets of
missing and present keys, ``--clients`` concurrent clients). Variants: ``after`` is the working
tree; ``before`` runs the same tree with ``src/ultraplane/replica/member.py`` taken from git
revision ``--before`` (the replica's read path lives in that one module). Rows are medians over
``--rounds`` rounds, the variants alternating so that machine noise hits both alike::

    .venv/bin/python bench/replica_reads.py --before d2366e2 [--rounds 3] [--total 20000] [--clients 100]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "src"))

import grpc  # noqa: E402
from servers import ETCDLOAD_DEFAULT, free_port, wait_for_port  # noqa: E402

from ultraplane.etcd.proto import rpc_pb2, rpc_pb2_grpc  # noqa: E402
from ultraplane.natscluster import NatsCluster  # noqa: E402

# Runs `ultraplane store` with ultraplane.replica.member loaded from another file when asked.
LAUNCHER = textwrap.dedent('''
    import argparse, importlib.util, logging, os, sys
    override = os.environ.get("REPLICA_MEMBER_FILE")
    if override:
        spec = importlib.util.spec_from_file_location("ultraplane.replica.member", override)
        module = importlib.util.module_from_spec(spec)
        sys.modules["ultraplane.replica.member"] = module
        spec.loader.exec_module(module)
    from ultraplane.cli import store as store_cmd
    parser = argparse.ArgumentParser(prog="ultraplane")
    store_cmd.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args()
    levels = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR}
    logging.basicConfig(level=levels.get(getattr(args, "log_level", "info"), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(int(args.run(args) or 0))
''')


class Member:
    def __init__(self, root: Path, name: str, journal: str, partition: str, launcher: Path,
                 member_file: Path | None) -> None:
        self.name, self.journal, self.partition = name, journal, partition
        self.data_dir = root / name
        self.port = free_port()
        self.launcher, self.member_file = launcher, member_file
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        url = f"http://{self.endpoint}"
        env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
        env.pop("REPLICA_MEMBER_FILE", None)
        if self.member_file is not None:
            env["REPLICA_MEMBER_FILE"] = str(self.member_file)
        self.proc = subprocess.Popen(
            [sys.executable, str(self.launcher), "store", "--name", self.name, "--data-dir", str(self.data_dir),
             "--listen-client-urls", url, "--advertise-client-urls", url, "--journal", self.journal,
             "--partition", self.partition, "--log-level", "warn"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        wait_for_port(self.port, self.proc, 60)

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
            leaders = {m.status().leader for m in members}
            if len(leaders) == 1 and 0 not in leaders:
                leader = leaders.pop()
                return next(m for m in members if m.status().header.member_id == leader)
        except grpc.RpcError:
            pass
        time.sleep(0.1)
    raise TimeoutError("no agreed writer")


def etcdload(endpoint: str, op: str, total: int, clients: int) -> dict:
    out = subprocess.run([ETCDLOAD_DEFAULT, "-endpoint", endpoint, "-op", op, "-total", str(total),
                          "-clients", str(clients), "-keys", "1000"], capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"etcdload failed: {out.stderr.strip()}")
    return json.loads(out.stdout.strip().splitlines()[-1])


WORKLOADS = [
    ("get, follower, linearizable", "follower", "get"),
    ("get, writer, linearizable", "writer", "get"),
    ("get, follower, serializable", "follower", "get-serializable"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="git revision whose replica/member.py is 'before'")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--total", type=int, default=20000)
    parser.add_argument("--clients", type=int, default=100)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-replica-reads-"))
    launcher = root / "launcher.py"
    launcher.write_text(LAUNCHER)
    before_file = root / "member_before.py"
    before_file.write_text(subprocess.run(["git", "-C", str(REPO), "show", f"{args.before}:src/ultraplane/replica/member.py"],
                                          check=True, capture_output=True, text=True).stdout)
    cluster = NatsCluster(str(root / "nats"))
    cluster.start()
    results: dict[tuple[str, str], list[dict]] = {}
    partition = 0
    try:
        for _ in range(args.rounds):
            for variant, member_file in (("before", before_file), ("after", None)):
                partition += 1
                members = [Member(root, f"r{partition}m{i}", ",".join(cluster.urls), f"reads{partition}", launcher,
                                  member_file) for i in range(3)]
                try:
                    for m in members:
                        m.start()
                    writer = writer_of(members)
                    follower = next(m for m in members if m is not writer)
                    # some keys exist: gets of present and of missing keys alike
                    etcdload(writer.endpoint, "put", 1000, 50)
                    for name, target, op in WORKLOADS:
                        endpoint = (follower if target == "follower" else writer).endpoint
                        results.setdefault((name, variant), []).append(
                            etcdload(endpoint, op, args.total, args.clients))
                finally:
                    for m in members:
                        m.stop()
    finally:
        cluster.close()
        shutil.rmtree(root, ignore_errors=True)

    print(f"medians of {args.rounds} rounds, {args.total} gets, {args.clients} clients; before = member.py at "
          f"{args.before}")
    print(f"{'workload':34} {'before req/s':>13} {'after req/s':>12} {'after/before':>13} "
          f"{'p99 ms before':>14} {'p99 ms after':>13}")
    for name, _, _ in WORKLOADS:
        b, a = results[(name, "before")], results[(name, "after")]
        rb, ra = statistics.median(r["rps"] for r in b), statistics.median(r["rps"] for r in a)
        pb, pa = statistics.median(r["p99_ms"] for r in b), statistics.median(r["p99_ms"] for r in a)
        print(f"{name:34} {rb:>13,.0f} {ra:>12,.0f} {ra / rb:>13.2f} {pb:>14.2f} {pa:>13.2f}")
    print("raw:", json.dumps({f"{n} / {v}": rs for (n, v), rs in results.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
