"""`ultraplane partitions`: a partitioned local store from one command.

One ``ultraplane store`` process per partition of the partition map (the built-in map puts
kube-apiserver's events, leases and pods on their own partitions), supervised and restarted if one
dies, plus optionally a router endpoint that serves the etcd v3 API for all of them at one address.
It prints the partitions' endpoints and the matching kube-apiserver flags, and writes them to
DATA_DIR/partitions.json for tools.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ultraplane.partition.map import (
    DEFAULT_MAP,
    PartitionMap,
    PartitionMapError,
    etcd_servers_overrides,
    load_map,
)
from ultraplane.partition.supervisor import Supervisor, free_port

STATE_FILE = "partitions.json"


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "partitions",
        help="run a partitioned store: one store process per partition of a key-prefix map",
        description=(
            "Start one `ultraplane store` per partition (own data directory DATA_DIR/<name>, journal, "
            "revision space and port), restart any that dies, and stop them all on SIGTERM or Ctrl-C. "
            "Without --map the built-in map gives kube-apiserver's events, leases and pods their own "
            "partitions and keeps everything else on 'default'. Prints the endpoints and the matching "
            "kube-apiserver --etcd-servers / --etcd-servers-overrides flags, also written to "
            "DATA_DIR/partitions.json."
        ),
    )
    parser.add_argument("--data-dir", default="ultraplane-partitions",
                        help="directory holding one data directory per partition")
    parser.add_argument("--map", metavar="FILE",
                        help="partition map (TOML, or JSON if the name ends in .json); default: built in")
    parser.add_argument("--host", default="127.0.0.1", help="address the partitions (and router) listen on")
    parser.add_argument("--base-port", type=int, default=2379,
                        help="port of the first partition (the default one); the others follow in map "
                             "order. 0: pick free ports")
    parser.add_argument("--router-port", type=int, default=None,
                        help="also serve a router endpoint here that forwards each request to the "
                             "partition owning its keys (0: a free port)")
    parser.add_argument("--unsafe-no-fsync", action="store_true",
                        help="run every partition with --unsafe-no-fsync (a map can ask for it per partition)")
    parser.add_argument("--auto-compaction-mode", choices=["periodic", "revision"],
                        help="passed to every partition")
    parser.add_argument("--auto-compaction-retention", help="passed to every partition")
    parser.add_argument("--quota-backend-bytes", type=int, help="passed to every partition")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warn", "error", "panic", "fatal"])
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    try:
        pmap = load_map(args.map) if args.map else DEFAULT_MAP
    except PartitionMapError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        return 2
    store_args = ["--log-level", args.log_level]
    for flag in ("auto_compaction_mode", "auto_compaction_retention", "quota_backend_bytes"):
        value = getattr(args, flag)
        if value is not None:
            store_args += [f"--{flag.replace('_', '-')}", str(value)]
    if args.base_port == 0:
        ports = [free_port(args.host) for _ in pmap.partitions]
    else:
        ports = [args.base_port + i for i in range(len(pmap.partitions))]
    router_port = args.router_port
    if router_port == 0:
        router_port = free_port(args.host)
    supervisor = Supervisor(pmap, Path(args.data_dir).resolve(), args.host, ports, store_args=store_args,
                            unsafe_no_fsync=args.unsafe_no_fsync,
                            report=lambda line: console.print(line, highlight=False, soft_wrap=True))
    try:
        return asyncio.run(_serve(supervisor, pmap, args.host, router_port, console))
    except (RuntimeError, TimeoutError, OSError) as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        return 1


def describe(supervisor: Supervisor, pmap: PartitionMap, router_url: str | None) -> dict[str, Any]:
    """The state file's document: partitions, endpoints and the kube-apiserver flags."""
    endpoints = {child.name: [child.url] for child in supervisor.children}
    return {
        "partitions": [
            {
                "name": child.name,
                "default": child.partition.default,
                "prefixes": [p.decode() for p in child.partition.prefixes],
                "resources": list(child.partition.resources),
                "endpoint": child.url,
                "data_dir": str(child.data_dir),
                "log": str(child.log_path),
                "pid": child.pid,
            }
            for child in supervisor.children
        ],
        "router": router_url,
        "etcd_servers": ",".join(endpoints[pmap.default.name]),
        "etcd_servers_overrides": etcd_servers_overrides(pmap, endpoints),
    }


def _write_state(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)


def _print_summary(console: Console, doc: dict[str, Any]) -> None:
    table = Table(title="ultraplane partitions")
    table.add_column("partition")
    table.add_column("key prefixes")
    table.add_column("kube-apiserver resources")
    table.add_column("endpoint")
    table.add_column("pid", justify="right")
    for part in doc["partitions"]:
        prefixes = ", ".join(part["prefixes"]) if part["prefixes"] else "(every other key)"
        resources = ", ".join(part["resources"]) if part["resources"] else ("(all others)" if part["default"]
                                                                            else "-")
        table.add_row(part["name"], prefixes, resources, part["endpoint"], str(part["pid"]))
    out = Console(file=sys.stdout, width=max(console.width, 120))
    out.print(table)
    if doc["router"]:
        out.print(f"router (one endpoint for every partition): {doc['router']}", highlight=False, soft_wrap=True)
    out.print("kube-apiserver flags:", highlight=False, soft_wrap=True)
    # plain print: these lines must be copyable, never wrapped
    print(f"  --etcd-servers={doc['etcd_servers']}")
    if doc["etcd_servers_overrides"]:
        print(f"  --etcd-servers-overrides={doc['etcd_servers_overrides']}")
    sys.stdout.flush()


async def _serve(supervisor: Supervisor, pmap: PartitionMap, host: str, router_port: int | None,
                 console: Console) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    state_path = supervisor.data_dir / STATE_FILE
    router_url = f"http://{host}:{router_port}" if router_port is not None else None
    await supervisor.start()
    router = server = None
    try:
        if router_port is not None:
            from ultraplane.etcd.h2server import serve_h2
            from ultraplane.partition.router import PartitionRouter, router_methods

            router = PartitionRouter(pmap, {child.name: child.target for child in supervisor.children},
                                     router_url=router_url or "")
            server = await serve_h2(router_methods(router), host, router_port)
        doc = describe(supervisor, pmap, router_url)
        _write_state(state_path, doc)
        supervisor.on_restart = lambda: _write_state(state_path, describe(supervisor, pmap, router_url))
        _print_summary(console, doc)
        await stop.wait()
        console.print("stopping partitions", highlight=False, soft_wrap=True)
    finally:
        if server is not None:
            await server.close(grace=2.0)
        if router is not None:
            await router.close()
        await supervisor.stop()
        with contextlib.suppress(FileNotFoundError):
            state_path.unlink()
    console.print("all partitions stopped", highlight=False, soft_wrap=True)
    return 0
