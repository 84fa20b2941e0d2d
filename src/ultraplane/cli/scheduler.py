"""`ultraplane scheduler`: the pod scheduler, against any cluster's kubeconfig."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import uuid

from ultraplane.cli.up import run_loop

log = logging.getLogger("ultraplane.scheduler")


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "scheduler",
        help="run the scheduler: bind pending pods to nodes through the API server",
        description="Watch nodes and pods, and bind each pending pod of --scheduler-name to a node through "
                    "pods/binding, with kube-scheduler's default filters, scores, events and conditions.",
    )
    parser.add_argument("--kubeconfig", required=True, help="kubeconfig of the cluster to schedule for")
    parser.add_argument("--scheduler-name", default="default-scheduler",
                        help="schedule the pods whose spec.schedulerName is this")
    parser.add_argument("--percentage-of-nodes-to-score", type=int, default=0,
                        help="share of nodes to find feasible before scoring (0: kube's adaptive default)")
    parser.add_argument("--leader-elect", default="true", choices=["true", "false"],
                        help="hold the kube-system/kube-scheduler Lease before scheduling (kube's flag)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warn", "error", "panic", "fatal"])
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    return run_loop(serve(args.kubeconfig, args.scheduler_name, args.percentage_of_nodes_to_score,
                          args.leader_elect == "true"))


async def serve(kubeconfig: str, scheduler_name: str, percentage: int, leader_elect: bool) -> int:
    from ultraplane.client.http import KubeClient
    from ultraplane.scheduler.leader import LeaderElector
    from ultraplane.scheduler.service import Scheduler

    client = await KubeClient.from_kubeconfig(kubeconfig, max_connections=64)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    scheduler = Scheduler(client, scheduler_name, percentage)
    holder: asyncio.Task[None] | None = None
    try:
        if leader_elect:
            elector = LeaderElector(client, f"{socket.gethostname()}_{uuid.uuid4()}")
            if not await elector.acquire(stop):
                return 0
            holder = asyncio.ensure_future(elector.hold(stop))
        await scheduler.run(stop)
    finally:
        if holder is not None:
            holder.cancel()
        await client.close()
    log.info("scheduler stopped: %d pods bound", scheduler.bound)
    return 0
