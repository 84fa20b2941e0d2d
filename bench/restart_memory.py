"""Restart time and resident memory with about 1 GB of live data, ultraplane beside etcd 3.4.

Loads N keys of V bytes with the Go load generator, reads RSS, then kill -9s the server and
times a restart until the first linearizable read succeeds.

    .venv/bin/python bench/restart_memory.py [--gib 1.0] [--value-bytes 8192]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

from rich.console import Console
from rich.table import Table
from servers import ETCDLOAD_DEFAULT, running, wait_for_port


def load(endpoint: str, keys: int, value_bytes: int) -> dict:
    out = subprocess.run(
        [
            ETCDLOAD_DEFAULT,
            "-endpoint",
            endpoint,
            "-op",
            "put",
            "-total",
            str(keys),
            "-keys",
            str(keys),
            "-val",
            str(value_bytes),
            "-clients",
            "100",
            "-conns",
            "10",
        ],
        capture_output=True,
        text=True,
        timeout=1800,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def first_read(endpoint: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    env = dict(os.environ, ETCDCTL_API="3")
    while time.monotonic() < deadline:
        r = subprocess.run(
            [
                "etcdctl",
                "--endpoints",
                endpoint,
                "--dial-timeout",
                "1s",
                "--command-timeout",
                "2s",
                "get",
                "/registry/pods/ns0/pod-00000000",
                "-w",
                "json",
            ],
            capture_output=True,
            text=True,
            env=env,
        )
        if r.returncode == 0:
            return
        time.sleep(0.05)
    raise TimeoutError("no successful read after restart")


def measure(kind: str, keys: int, value_bytes: int, console: Console) -> dict:
    with running(kind) as server:
        console.print(f"[bold]{kind}[/]: loading {keys:,} keys x {value_bytes} B")
        stats = load(server.endpoint, keys, value_bytes)
        live = keys * (value_bytes + len("/registry/pods/ns0/pod-00000000"))
        rss = server.rss_bytes()
        assert server.proc is not None
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait()
        t0 = time.monotonic()
        server.start_again()
        wait_for_port(server.port, server.proc, timeout=600)
        first_read(server.endpoint)
        restart = time.monotonic() - t0
        rss_after = server.rss_bytes()
    return {
        "kind": kind,
        "live_bytes": live,
        "load_rps": stats["rps"],
        "rss": rss,
        "rss_after_restart": rss_after,
        "restart_s": restart,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--value-bytes", type=int, default=8192)
    args = parser.parse_args()
    keys = int(args.gib * 1024**3 / args.value_bytes)
    console = Console()
    rows = [measure(kind, keys, args.value_bytes, console) for kind in ("etcd", "ultraplane")]
    table = Table(title=f"{args.gib} GiB live data ({keys:,} keys x {args.value_bytes} B)")
    for col in ("server", "load puts/s", "RSS", "RSS / live", "restart to first read", "RSS after restart"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["kind"],
            f"{r['load_rps']:,.0f}",
            f"{r['rss'] / 1024**3:.2f} GiB",
            f"{r['rss'] / r['live_bytes']:.2f}x",
            f"{r['restart_s']:.2f} s",
            f"{r['rss_after_restart'] / 1024**3:.2f} GiB",
        )
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
