"""`ultraplane netobs`: network observability for a cluster (flows, service map, metrics, policies)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from ultraplane.cli.up import run_loop


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "netobs",
        help="run network observability for a cluster",
        description="Generate flows from the workloads' netobs.ultraplane.io/* annotations (read through the "
                    "API every --interval seconds), ingest Hubble JSON and VPC flow logs, and serve the "
                    "service map, flow tables, NetworkPolicy proposals (JSON under /api/v1) and Prometheus "
                    "metrics with Retina's networkobservability_* names (/metrics) over plain HTTP.",
    )
    parser.add_argument("--kubeconfig", required=True, help="kubeconfig of the cluster to observe")
    parser.add_argument("--listen", default="127.0.0.1:9965", help="HOST:PORT to serve on (port 0: any free)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between generated flow windows "
                                                                    "(0: no generator, ingest only)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the flow generator (same seed, same flows)")
    parser.add_argument("--max-flows", type=int, default=1_000_000, help="flows kept for the flow table")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warn", "error", "panic", "fatal"])
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        print(f"error: --listen must be HOST:PORT, got {args.listen!r}", file=sys.stderr)
        return 2
    return run_loop(_main(args, host, int(port)))


async def _main(args: argparse.Namespace, host: str, port: int) -> int:
    from ultraplane.client.http import KubeClient
    from ultraplane.netobs.server import NetObs, serve

    client = await KubeClient.from_kubeconfig(args.kubeconfig)
    netobs = NetObs(client, seed=args.seed, max_flows=args.max_flows)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    ready = asyncio.Event()

    async def announce() -> None:
        await ready.wait()
        print(f"netobs serving on http://{host}:{port}", file=sys.stderr, flush=True)

    announcer = asyncio.create_task(announce())
    try:
        await serve(netobs, host, port, stop, args.interval or None, ready)
    finally:
        announcer.cancel()
        await client.close()
    return 0
