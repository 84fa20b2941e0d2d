"""Side-by-side throughput and latency: etcd 3.4 against ultraplane, driven by the same Go client.

Each workload runs against a fresh etcd and a fresh ultraplane store, alternating A B A B so
that machine drift hits both; medians and the ultraplane/etcd ratio are reported.

    .venv/bin/python bench/etcd_compare.py [--rounds 3] [--total 20000] [--only put,get]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from dataclasses import dataclass

from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from servers import ETCDLOAD_DEFAULT as ETCDLOAD
from servers import running


@dataclass(frozen=True)
class Workload:
    name: str
    args: list[str]
    metric: str  # "rps" (higher is better) or "p50_ms" (lower is better)


WORKLOADS = [
    Workload("put", ["-op", "put", "-clients", "100", "-conns", "10"], "rps"),
    Workload("get", ["-op", "get", "-clients", "100", "-conns", "10"], "rps"),
    Workload("get-serializable", ["-op", "get-serializable", "-clients", "100", "-conns", "10"], "rps"),
    Workload("txn-update", ["-op", "txn-update", "-clients", "100", "-conns", "10"], "rps"),
    Workload("list-500-of-10k", ["-op", "list", "-clients", "10", "-conns", "10", "-limit", "500"], "rps"),
    Workload("put-1-client", ["-op", "put", "-clients", "1", "-conns", "1"], "p50_ms"),
]


def etcdload(endpoint: str, workload: Workload, total: int) -> dict:
    n = total if workload.metric == "rps" else max(2000, total // 10)
    if workload.name.startswith("list"):
        n = max(1000, total // 10)
    out = subprocess.run(
        [ETCDLOAD, "-endpoint", endpoint, "-total", str(n), *workload.args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if out.returncode != 0:
        raise RuntimeError(f"etcdload failed: {out.stderr.strip()}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--total", type=int, default=20000)
    parser.add_argument("--only", default="", help="comma-separated workload names")
    parser.add_argument("--json", default="", help="also write the raw results here")
    args = parser.parse_args()
    chosen = [w for w in WORKLOADS if not args.only or w.name in args.only.split(",")]
    console = Console()
    results: dict[str, dict[str, list[dict]]] = {w.name: {"etcd": [], "ultraplane": []} for w in chosen}
    with Progress(console=console) as progress:
        task = progress.add_task("benchmarking", total=len(chosen) * args.rounds * 2)
        for workload in chosen:
            for _ in range(args.rounds):
                for kind in ("etcd", "ultraplane"):
                    progress.update(task, description=f"{workload.name} on {kind}")
                    with running(kind) as server:
                        results[workload.name][kind].append(etcdload(server.endpoint, workload, args.total))
                    progress.advance(task)
    table = Table(title="ultraplane vs etcd 3.4 (medians)")
    for col in ("workload", "metric", "etcd", "ultraplane", "ratio", "errors"):
        table.add_column(col)
    for workload in chosen:
        med = {k: statistics.median(r[workload.metric] for r in v) for k, v in results[workload.name].items()}
        errors = sum(r["errors"] for v in results[workload.name].values() for r in v)
        if workload.metric == "rps":
            ratio = med["ultraplane"] / med["etcd"]
            fmt = "{:,.0f}/s"
        else:
            ratio = med["etcd"] / med["ultraplane"]  # >1 means ultraplane is faster
            fmt = "{:.3f} ms"
        table.add_row(
            workload.name,
            workload.metric,
            fmt.format(med["etcd"]),
            fmt.format(med["ultraplane"]),
            f"{ratio:.2f}x",
            str(errors),
        )
    console.print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
