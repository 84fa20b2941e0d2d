"""`ultraplane compose`: the ResourceGraphDefinition (kro) controller, against any cluster's kubeconfig."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from ultraplane.cli.up import run_loop

log = logging.getLogger("ultraplane.compose")


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "compose",
        help="run the ResourceGraphDefinition controller (kro.run/v1alpha1)",
        description="Install the kro.run/v1alpha1 ResourceGraphDefinition CRD and reconcile RGDs: generate a CRD "
                    "per RGD and create, update and delete each instance's resources in dependency order.",
    )
    parser.add_argument("--kubeconfig", required=True, help="kubeconfig of the cluster to manage")
    parser.add_argument("--leader-elect", default="true", choices=["true", "false"],
                        help="hold the kube-system/kro Lease before working, so replicas can run side by side")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warn", "error", "panic", "fatal"])
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    return run_loop(serve(args.kubeconfig, args.leader_elect == "true"))


async def serve(kubeconfig: str, leader_elect: bool) -> int:
    from ultraplane.compose.controller import serve as serve_controller

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve_controller(kubeconfig, stop, leader_elect)
    log.info("compose controller stopped")
    return 0
