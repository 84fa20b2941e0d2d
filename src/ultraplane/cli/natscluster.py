"""`ultraplane nats-cluster`: a JetStream cluster on loopback, one nats-server per "availability zone".

Runs ``ultraplane.natscluster.NatsCluster`` in the foreground: starts the nodes, waits for the
JetStream meta leader, prints the client URLs and the ``--journal`` value for ``ultraplane store``,
restarts a node that dies, and stops every node on SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import types
from pathlib import Path

from rich.console import Console

from ultraplane.natscluster import NatsCluster


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "nats-cluster",
        help="run a local NATS JetStream cluster (one node per zone) for a replicated store journal",
        description=(
            "Start a NATS JetStream cluster on 127.0.0.1 (3 nodes by default, each standing for an "
            "availability zone), print the --journal value for `ultraplane store`, and stop the nodes on "
            "SIGTERM or Ctrl-C. Each node keeps its config, JetStream data and log under DATA_DIR/node<i>."
        ),
    )
    parser.add_argument("--data-dir", default="ultraplane-nats", help="directory for the nodes' state")
    parser.add_argument("--ports", help="comma-separated client ports, one per node (e.g. 4222,4223,4224); "
                                        "default: free ports")
    parser.add_argument("--size", type=int, default=None, help="number of nodes (default 3, or the number "
                                                                "of --ports)")
    parser.add_argument("--nats-server", default="nats-server", help="the nats-server binary")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds to wait for the JetStream meta leader")
    parser.set_defaults(run=run)


def _parse_ports(text: str) -> list[int]:
    ports = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or not 0 < int(part) < 65536:
            raise ValueError(f"--ports: {part!r} is not a port number")
        ports.append(int(part))
    if len(set(ports)) != len(ports):
        raise ValueError("--ports: a port is listed twice")
    return ports


def run(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    try:
        ports = _parse_ports(args.ports) if args.ports else None
        if ports is not None and args.size is not None and args.size != len(ports):
            raise ValueError(f"--size {args.size} does not match the {len(ports)} ports of --ports")
        size = args.size if args.size is not None else 3
        cluster = NatsCluster(str(Path(args.data_dir)), size=size, binary=args.nats_server, client_ports=ports)
    except (ValueError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        return 2

    stop = threading.Event()

    def on_signal(signum: int, frame: types.FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        cluster.start(timeout=args.timeout)
    except (RuntimeError, TimeoutError, OSError) as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        return 1
    try:
        leader = cluster.meta_leader()
        out = Console(file=sys.stdout, width=max(console.width, 120))
        out.print(f"NATS JetStream cluster of {len(cluster.nodes)} node(s) in {cluster.base_dir}, "
                  f"meta leader {leader}", highlight=False, soft_wrap=True)
        for node in cluster.nodes:
            out.print(f"  {node.name}: {node.url} (pid {node.process.pid if node.process else '?'}, "
                      f"monitoring http://127.0.0.1:{node.http_port}, log {node.log_path})", highlight=False, soft_wrap=True)
        journal = ",".join(cluster.urls)
        # plain print: copyable, never wrapped
        print(f"journal: --journal {journal}")
        print(f"example: ultraplane store --name m1 --data-dir m1.etcd --journal {journal}")
        sys.stdout.flush()
        while not stop.wait(0.5):
            for node in cluster.nodes:
                if node.process is not None and node.process.poll() is not None and not stop.is_set():
                    console.print(f"nats-server {node.name} exited with status {node.process.returncode}; "
                                  f"restarting (log: {node.log_path})", highlight=False, soft_wrap=True)
                    node.process = None
                    cluster.start_node(node.index, wait=False)
        console.print("stopping the NATS cluster", highlight=False, soft_wrap=True)
    finally:
        cluster.close()
    console.print("NATS cluster stopped", highlight=False, soft_wrap=True)
    return 0
