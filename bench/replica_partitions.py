"""Partitions and members on the NATS JetStream journal, side by side with etcd 3.4 and the file journal.

One 3-node JetStream cluster on loopback serves every NATS target. Per round, each target fresh:
  etcd              a single etcd 3.4 member
  file store        a single `ultraplane store` on the local file journal
  nats N part.      N replicated members (N = 1, 2, 4), each the writer of its own partition
                    (its own subject of the stream, own revision space); etcdload as in
                    bench/partition_bench.py: N processes at once, 100 clients in total
  reads 1 / 3 mem.  three members of one partition; linearizable and serializable gets sent to
                    one member (100 clients) or spread over all three (3 x 33 clients)
  latency           put with 1 client and with 100 clients, p50 / p99, on etcd and on a NATS writer

    .venv/bin/python bench/replica_partitions.py [--rounds 2] [--total 20000]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "src"))

from partition_bench import etcdload_concurrently  # noqa: E402
from replica_bench import Member, writer_of  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from servers import ETCDLOAD_DEFAULT, running  # noqa: E402

from ultraplane.natscluster import NatsCluster  # noqa: E402

_names = itertools.count(1)


def etcdload_raw(endpoint: str, op: str, total: int, clients: int, prefix: str) -> dict:
    out = subprocess.run([ETCDLOAD_DEFAULT, "-endpoint", endpoint, "-op", op, "-total", str(total), "-clients",
                          str(clients), "-conns", str(min(10, clients)), "-prefix", prefix],
                         capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"etcdload failed: {out.stderr.strip()}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result.get("errors"):
        raise RuntimeError(f"etcdload reported {result['errors']} errors")
    return result


@contextlib.contextmanager
def members(root: Path, journal: str, partitions: int, per_partition: int) -> Iterator[list[list[Member]]]:
    """``partitions`` fresh partitions with ``per_partition`` members each; yields them grouped."""
    groups = []
    for _ in range(partitions):
        name = f"b{next(_names)}"
        groups.append([Member(root, f"{name}-m{i + 1}", journal, name) for i in range(per_partition)])
    flat = [m for g in groups for m in g]
    try:
        for m in flat:
            m.start()
        for g in groups:
            writer_of(g)
        yield groups
    finally:
        for m in flat:
            m.stop()
            shutil.rmtree(m.data_dir, ignore_errors=True)


def pids(ms: list[Member]) -> list[int]:
    return [m.proc.pid for m in ms if m.proc is not None]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--total", type=int, default=20000)
    args = parser.parse_args()
    console = Console(width=160)
    root = Path(tempfile.mkdtemp(prefix="bench-replica-partitions-"))
    cluster = NatsCluster(str(root / "nats"), max_file_store="8G")
    cluster.start()
    journal = ",".join(cluster.urls)
    rps: dict[str, list[float]] = {}
    lat: dict[str, list[dict]] = {}

    def note(key: str, value: float) -> None:
        rps.setdefault(key, []).append(value)
        console.print(f"  {key}: {value:,.0f}/s", highlight=False)

    try:
        for round_no in range(1, args.rounds + 1):
            console.rule(f"round {round_no}/{args.rounds}")
            with running("etcd", []) as etcd:
                assert etcd.proc is not None
                for op in ("put", "get"):
                    note(f"{op} etcd", etcdload_concurrently([(etcd.endpoint, "/bench/p0/")], op, args.total,
                                                             [etcd.proc.pid])["rps"])
                for clients in (1, 100):
                    total = 2000 if clients == 1 else args.total
                    lat.setdefault(f"etcd, {clients} client(s)", []).append(
                        etcdload_raw(etcd.endpoint, "put", total, clients, "/lat/"))
            with running("ultraplane", []) as single:
                assert single.proc is not None
                for op in ("put", "get"):
                    note(f"{op} file store", etcdload_concurrently([(single.endpoint, "/bench/p0/")], op,
                                                                   args.total, [single.proc.pid])["rps"])
            for n in (1, 2, 4):
                with members(root, journal, n, 1) as groups:
                    flat = [g[0] for g in groups]
                    jobs = [(m.endpoint, f"/bench/{m.partition}/") for m in flat]
                    for op in ("put", "get"):
                        note(f"{op} nats {n} part.", etcdload_concurrently(jobs, op, args.total, pids(flat))["rps"])
                    if n == 1:
                        for clients in (1, 100):
                            total = 2000 if clients == 1 else args.total
                            lat.setdefault(f"nats writer, {clients} client(s)", []).append(
                                etcdload_raw(flat[0].endpoint, "put", total, clients, "/lat/"))
            with members(root, journal, 1, 3) as groups:
                three = groups[0]
                writer = writer_of(three)
                follower = next(m for m in three if m is not writer)
                etcdload_concurrently([(writer.endpoint, "/bench/r/")], "put", args.total, pids(three))  # fill
                for op in ("get", "get-serializable"):
                    note(f"{op} 1 member (follower)",
                         etcdload_concurrently([(follower.endpoint, "/bench/r/")], op, args.total, pids(three))["rps"])
                    note(f"{op} 3 members",
                         etcdload_concurrently([(m.endpoint, "/bench/r/") for m in three], op, args.total,
                                               pids(three))["rps"])
    finally:
        cluster.close()
        shutil.rmtree(root, ignore_errors=True)

    def med(key: str) -> float:
        return statistics.median(rps[key])

    table = Table(title=f"NATS journal: partitions and members (2 cores, 100 clients, medians of {args.rounds})")
    for col in ("target", "put/s", "x etcd", "x file store", "get/s", "x etcd", "x file store"):
        table.add_column(col, justify="left" if col == "target" else "right")
    for t in ("etcd", "file store", "nats 1 part.", "nats 2 part.", "nats 4 part."):
        row = [t]
        for op in ("put", "get"):
            v = med(f"{op} {t}")
            row += [f"{v:,.0f}", f"{v / med(f'{op} etcd'):.2f}", f"{v / med(f'{op} file store'):.2f}"]
        table.add_row(*row)
    console.print(table)
    reads = Table(title="reads with 1 and with 3 members serving (one partition, 3 members)")
    for col in ("read", "1 member/s", "3 members/s", "x", "3 members x etcd get"):
        reads.add_column(col, justify="left" if col == "read" else "right")
    for op in ("get", "get-serializable"):
        one, three = med(f"{op} 1 member (follower)"), med(f"{op} 3 members")
        reads.add_row("linearizable" if op == "get" else "serializable", f"{one:,.0f}", f"{three:,.0f}",
                      f"{three / one:.2f}", f"{three / med('get etcd'):.2f}")
    console.print(reads)
    latency = Table(title="put latency (ms, medians of the runs' p50 / p99)")
    for col in ("target", "p50", "p99", "req/s"):
        latency.add_column(col, justify="left" if col == "target" else "right")
    for key, runs in lat.items():
        latency.add_row(key, f"{statistics.median(r['p50_ms'] for r in runs):.2f}",
                        f"{statistics.median(r['p99_ms'] for r in runs):.2f}",
                        f"{statistics.median(r['rps'] for r in runs):,.0f}")
    console.print(latency)
    print("raw:", json.dumps({"rps": rps, "latency": lat}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
