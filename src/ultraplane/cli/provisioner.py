"""`ultraplane provisioner`: Karpenter-style node provisioning for any cluster's kubeconfig."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from ultraplane.cli.up import run_loop

log = logging.getLogger("ultraplane.provisioner")


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "provisioner",
        help="launch nodes for unschedulable pods and consolidate them away (Karpenter's API)",
        description="Install Karpenter v1's NodePool and NodeClaim CRDs (karpenter.sh/v1) and the simulated "
                    "cloud's SimNodeClass (karpenter.ultraplane.io/v1), then provision simulated nodes of the "
                    "cheapest fitting instance types for unschedulable pods and disrupt them when empty, "
                    "underutilized, drifted or expired.",
    )
    parser.add_argument("--kubeconfig", required=True, help="kubeconfig of the cluster")
    parser.add_argument("--region", default="us-east-1", help="region whose prices and zones are used")
    parser.add_argument("--instance-types", default=None, metavar="FILE",
                        help="instance-type catalogue to load instead of the shipped one (same JSON format)")
    parser.add_argument("--batch-idle-duration", type=float, default=1.0, metavar="SECONDS",
                        help="a batch of pending pods closes after this long without new ones (BATCH_IDLE_DURATION)")
    parser.add_argument("--batch-max-duration", type=float, default=10.0, metavar="SECONDS",
                        help="a batch closes after this long at most (BATCH_MAX_DURATION)")
    parser.add_argument("--disruption-interval", type=float, default=10.0, metavar="SECONDS",
                        help="seconds between disruption passes")
    parser.add_argument("--metrics-port", type=int, default=0,
                        help="serve Prometheus metrics on 127.0.0.1:PORT/metrics (0: off)")
    parser.add_argument("--concurrency", type=int, default=64, help="API writes in flight")
    parser.add_argument("--kubelet-events", default="true", choices=["true", "false"],
                        help="the simulated nodes write the kubelet's pod events (Pulling, Pulled, Created, ...)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warn", "error", "panic", "fatal"])
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ultraplane.provisioner.catalog import CatalogError, load

    try:
        catalog = load(args.region, args.instance_types)
    except (CatalogError, OSError) as exc:
        log.error("%s", exc)
        return 2
    return run_loop(serve(args, catalog))


async def _metrics_server(port: int, render) -> asyncio.Server:  # noqa: ANN001
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            body = render().encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
                         + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", port)


async def serve(args: argparse.Namespace, catalog) -> int:  # noqa: ANN001
    from ultraplane.client.http import KubeClient
    from ultraplane.nodes.sim import SimConfig
    from ultraplane.provisioner.cloud import SimCloud
    from ultraplane.provisioner.controller import Provisioner, ProvisionerConfig

    client = await KubeClient.from_kubeconfig(args.kubeconfig, max_connections=args.concurrency + 16)
    cloud = SimCloud(client, catalog, SimConfig(
        region=catalog.region, zones=len(catalog.zones), vpc_cidr="10.128.0.0/9", concurrency=args.concurrency,
        events=args.kubelet_events == "true"))
    cfg = ProvisionerConfig(batch_idle=args.batch_idle_duration, batch_max=args.batch_max_duration,
                            disruption_interval=args.disruption_interval, api_concurrency=args.concurrency)
    provisioner = Provisioner(client, catalog, cloud, cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    metrics = await _metrics_server(args.metrics_port, provisioner.metrics.render) if args.metrics_port else None
    try:
        await cloud.start()
        await provisioner.start()
        log.info("provisioner ready: %d instance types in %s (%s)", len(catalog.types), catalog.region,
                 ", ".join(catalog.zones))
        await stop.wait()
    finally:
        if metrics is not None:
            metrics.close()
        await provisioner.stop()
        await cloud.stop()
        await client.close()
    return 0
