"""`ultraplane controllers`: the controller manager, against any cluster's kubeconfig."""

from __future__ import annotations

import argparse
import asyncio
import base64
import logging
import signal
import socket
import uuid
from pathlib import Path

import yaml

from ultraplane.cli.up import run_loop
from ultraplane.store.mvcc import parse_duration

log = logging.getLogger("ultraplane.controllers")


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "controllers",
        help="run the controller manager (namespace, serviceaccount, garbage collector, endpoints, workloads, ...)",
        description="Run kube-controller-manager's controllers against the cluster of --kubeconfig, over one "
                    "set of shared informers, optionally holding the kube-system/kube-controller-manager Lease.",
    )
    parser.add_argument("--kubeconfig", required=True, help="kubeconfig of the cluster to manage")
    parser.add_argument("--controllers", default="*",
                        help="controllers to run: '*' for all, 'foo' to enable, '-foo' to disable (kube's flag)")
    parser.add_argument("--leader-elect", default="true", choices=["true", "false"],
                        help="hold the kube-system/kube-controller-manager Lease before working (kube's flag)")
    parser.add_argument("--node-monitor-grace-period", default="40s",
                        help="how long a node may miss heartbeats before it is marked NotReady (kube's flag)")
    parser.add_argument("--node-monitor-period", default="5s", help="how often node health is checked")
    # kube-controller-manager's node lifecycle flags, with its defaults and (shortened) help
    parser.add_argument("--node-eviction-rate", type=float, default=0.1,
                        help="number of nodes per second on which pods are deleted in case of node failure when a "
                             "zone is healthy (see --unhealthy-zone-threshold)")
    parser.add_argument("--secondary-node-eviction-rate", type=float, default=0.01,
                        help="the same when a zone is unhealthy; implicitly 0 for zones of at most "
                             "--large-cluster-size-threshold nodes")
    parser.add_argument("--unhealthy-zone-threshold", type=float, default=0.55,
                        help="fraction of nodes in a zone which needs to be not Ready (minimum 3) for the zone to "
                             "be treated as unhealthy")
    parser.add_argument("--large-cluster-size-threshold", type=int, default=50,
                        help="number of nodes (per zone) from which the eviction logic treats the cluster as large")
    parser.add_argument("--terminated-pod-gc-threshold", type=int, default=12500,
                        help="terminated pods kept before the oldest are deleted (kube's flag; <= 0 disables)")
    parser.add_argument("--root-ca-file", default=None,
                        help="CA bundle published as kube-root-ca.crt (default: the kubeconfig's CA)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warn", "error", "panic", "fatal"])
    parser.set_defaults(run=run)


def kubeconfig_ca(path: str) -> bytes:
    """The certificate authority of the kubeconfig's current cluster, as PEM (empty if none)."""
    file = Path(path)
    config = yaml.safe_load(file.read_text()) or {}
    context = next((c.get("context") or {} for c in config.get("contexts") or []
                    if c.get("name") == config.get("current-context")), {})
    cluster = next((c.get("cluster") or {} for c in config.get("clusters") or []
                    if c.get("name") == context.get("cluster")), {})
    if cluster.get("certificate-authority-data"):
        return base64.b64decode(cluster["certificate-authority-data"])
    if cluster.get("certificate-authority"):
        return (file.parent / cluster["certificate-authority"]).read_bytes()
    return b""


def run(args: argparse.Namespace) -> int:
    from ultraplane.controllers.manager import ManagerOptions, UnknownController, build_registry, select

    registry, missing = build_registry()
    if missing:
        log.warning("controllers not available in this build: %s", ", ".join(missing))
    try:
        names = select(args.controllers, list(registry))
    except UnknownController as exc:
        log.error("%s", exc)
        return 1
    try:
        options = ManagerOptions(
            node_monitor_grace_period=parse_duration(args.node_monitor_grace_period),
            node_monitor_period=parse_duration(args.node_monitor_period),
            node_eviction_rate=args.node_eviction_rate,
            secondary_node_eviction_rate=args.secondary_node_eviction_rate,
            unhealthy_zone_threshold=args.unhealthy_zone_threshold,
            large_cluster_size_threshold=args.large_cluster_size_threshold,
            terminated_pod_gc_threshold=args.terminated_pod_gc_threshold,
            root_ca=Path(args.root_ca_file).read_bytes() if args.root_ca_file else kubeconfig_ca(args.kubeconfig))
    except (OSError, ValueError, yaml.YAMLError) as exc:
        log.error("%s", exc)
        return 1
    return run_loop(serve(args.kubeconfig, names, registry, options, args.leader_elect == "true"))


async def serve(kubeconfig: str, names: list[str], registry: dict, options: object, leader_elect: bool) -> int:
    from ultraplane.client.http import KubeClient
    from ultraplane.client.leader import LeaderElector
    from ultraplane.controllers.manager import ControllerManager, ManagerOptions

    assert isinstance(options, ManagerOptions)
    client = await KubeClient.from_kubeconfig(kubeconfig, max_connections=128)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    holder: asyncio.Task[None] | None = None
    elector = LeaderElector(client, f"{socket.gethostname()}_{uuid.uuid4()}", name="kube-controller-manager")
    try:
        if leader_elect:
            if not await elector.acquire(stop):
                return 0
            holder = asyncio.ensure_future(elector.hold(stop))
        manager = ControllerManager(client, names, registry, options)
        await manager.run(stop)
    finally:
        if holder is not None:
            holder.cancel()
            try:
                await asyncio.wait_for(elector.release(), 5)
            except TimeoutError:
                log.warning("could not release the kube-system/kube-controller-manager Lease in time")
        await client.close()
    log.info("controller manager stopped")
    return 0
