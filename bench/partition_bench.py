"""Write and read throughput against the number of partitions, beside etcd 3.4 and one store.

Targets, each fresh per round and measured in the same run, alternating so machine drift hits all:
  etcd            a single etcd 3.4 member
  store           a single `ultraplane store` (file journal)
  N partitions    `ultraplane partitions` with N partitions (N = 1, 2, 4); partition i owns the
                  prefix /bench/p<i>/ (partition 0 is the default one)
  4 via router    the 4-partition store driven through its router endpoint

The load is etcdload (Go, etcd's clientv3) with 100 clients in total: for N partitions, N etcdload
processes run at once, each with 100/N clients and 1/N of the requests on its partition's prefix
at that partition's endpoint (for the router, at the router). Throughput is the requests of all of
them over the longest one's wall time. `put` runs first and fills the keys `get` then reads.

    .venv/bin/python bench/partition_bench.py [--rounds 3] [--total 40000]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console
from rich.table import Table
from servers import ETCDLOAD_DEFAULT as ETCDLOAD
from servers import REPO, running

OPS = ("put", "get")
CLIENTS = 100


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes used so far."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / os.sysconf("SC_CLK_TCK")


def etcdload_concurrently(jobs: list[tuple[str, str]], op: str, total: int,
                          server_pids: list[int] | None = None) -> dict[str, float]:
    """Run one etcdload per (endpoint, prefix) at once: combined requests per second, and the share of
    the machine's CPU the load generators and the servers used meanwhile."""
    server_before = cpu_seconds(server_pids or [])
    load_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    clients = max(1, CLIENTS // len(jobs))
    conns = max(1, 10 // len(jobs))
    procs = [
        subprocess.Popen(
            [ETCDLOAD, "-endpoint", endpoint, "-op", op, "-prefix", prefix, "-clients", str(clients),
             "-conns", str(conns), "-total", str(total // len(jobs)), "-keys", str(10000 // len(jobs))],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for endpoint, prefix in jobs
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"etcdload failed: {err.strip()}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    errors = sum(r["errors"] for r in results)
    if errors:
        raise RuntimeError(f"etcdload reported {errors} errors")
    load_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU shares over the processes' whole lives (etcdload fills the keyspace before a get run)
    capacity = (time.monotonic() - started) * (os.cpu_count() or 1)
    wall = max(r["seconds"] for r in results)
    load_cpu = (load_after.ru_utime - load_before.ru_utime) + (load_after.ru_stime - load_before.ru_stime)
    return {
        "rps": sum(r["requests"] for r in results) / wall,
        "load_cpu": load_cpu / capacity,
        "server_cpu": (cpu_seconds(server_pids or []) - server_before) / capacity,
    }


@contextlib.contextmanager
def partitions(n: int, router: bool, extra: list[str]) -> Iterator[dict]:
    root = Path(tempfile.mkdtemp(prefix=f"bench-partitions{n}-"))
    doc: dict = {"partitions": {"p0": {"default": True}}}
    for i in range(1, n):
        doc["partitions"][f"p{i}"] = {"prefixes": [f"/bench/p{i}/"]}
    (root / "map.json").write_text(json.dumps(doc))
    cmd = [sys.executable, "-m", "ultraplane", "partitions", "--data-dir", str(root / "data"), "--map",
           str(root / "map.json"), "--base-port", "0", "--log-level", "warn"]
    if router:
        cmd += ["--router-port", "0"]
    cmd += extra
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = root / "data" / "partitions.json"
    try:
        deadline = time.monotonic() + 60
        while not state.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("ultraplane partitions did not start")
            time.sleep(0.05)
        yield json.loads(state.read_text()) | {"supervisor_pid": proc.pid}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(root, ignore_errors=True)


Sample = dict[str, dict[str, float]]  # op -> {"rps", "load_cpu", "server_cpu"}


def measure(target: str, total: int, extra: list[str]) -> Sample:
    def run_ops(jobs: list[tuple[str, str]], pids: list[int]) -> Sample:
        return {op: etcdload_concurrently(jobs, op, total, pids) for op in OPS}

    if target in ("etcd", "store"):
        # etcd 3.4 has no --unsafe-no-fsync; it always runs as it is
        with running("etcd", []) if target == "etcd" else running("ultraplane", extra) as server:
            assert server.proc is not None
            return run_ops([(server.endpoint, "/bench/p0/")], [server.proc.pid])
    n = int(target.split()[0])
    via_router = target.endswith("router")
    with partitions(n, via_router, extra) as state:
        router = (state["router"] or "").removeprefix("http://")
        jobs = [(router if via_router else p["endpoint"].removeprefix("http://"), f"/bench/{p['name']}/")
                for p in state["partitions"]]
        # the supervisor's process serves the router
        pids = [p["pid"] for p in state["partitions"]] + [state["supervisor_pid"]]
        return run_ops(jobs, pids)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--total", type=int, default=40000, help="requests per op and target (split over etcdloads)")
    parser.add_argument("--json", default="", help="also write the raw results here")
    parser.add_argument("--unsafe-no-fsync", action="store_true",
                        help="run every ultraplane server with --unsafe-no-fsync (etcd 3.4 has no such flag): "
                             "shows what fsync latency costs")
    args = parser.parse_args()
    targets = ["etcd", "store", "1 partition", "2 partitions", "4 partitions", "4 via router"]
    console = Console(width=170)
    results: dict[str, list[Sample]] = {t: [] for t in targets}
    for round_no in range(args.rounds):
        for target in targets:
            console.print(f"round {round_no + 1}/{args.rounds}: {target}", highlight=False)
            results[target].append(measure(target, args.total, ["--unsafe-no-fsync"] if args.unsafe_no_fsync else []))

    def med(target: str, op: str, key: str = "rps") -> float:
        return statistics.median(r[op][key] for r in results[target])

    table = Table(title=f"throughput vs partitions ({os.cpu_count()} cores, {CLIENTS} clients, "
                        f"medians of {args.rounds}; CPU as a share of the whole machine)")
    for col in ("target", "put/s", "x etcd", "x store", "get/s", "x etcd", "x store",
                "put CPU server+load", "get CPU server+load"):
        table.add_column(col, justify="right" if col != "target" else "left")
    for t in targets:
        row = [t]
        for op in OPS:
            row += [f"{med(t, op):,.0f}", f"{med(t, op) / med('etcd', op):.2f}",
                    f"{med(t, op) / med('store', op):.2f}"]
        for op in OPS:
            row.append(f"{med(t, op, 'server_cpu'):.0%}+{med(t, op, 'load_cpu'):.0%}")
        table.add_row(*row)
    console.print(table)
    console.print(
        "scaling from 1 partition: "
        + ", ".join(f"{op} x{med('2 partitions', op) / med('1 partition', op):.2f} at 2, "
                    f"x{med('4 partitions', op) / med('1 partition', op):.2f} at 4" for op in OPS)
        + f"; through the router 4 partitions give {med('4 via router', 'put') / med('4 partitions', 'put'):.0%}"
          f" of the direct put and {med('4 via router', 'get') / med('4 partitions', 'get'):.0%} of the direct "
          "get throughput",
        highlight=False,
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
