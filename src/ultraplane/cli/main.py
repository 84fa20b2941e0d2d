"""The `ultraplane` command: one entry point, a subcommand per component."""

from __future__ import annotations

import argparse
import gc
import logging
import sys

from ultraplane import __version__
from ultraplane.cli import ack as ack_cmd
from ultraplane.cli import apiserver as apiserver_cmd
from ultraplane.cli import compose as compose_cmd
from ultraplane.cli import controllers as controllers_cmd
from ultraplane.cli import fleet as fleet_cmd
from ultraplane.cli import gitops as gitops_cmd
from ultraplane.cli import mcp as mcp_cmd
from ultraplane.cli import natscluster as natscluster_cmd
from ultraplane.cli import netobs as netobs_cmd
from ultraplane.cli import nodes as nodes_cmd
from ultraplane.cli import partitions as partitions_cmd
from ultraplane.cli import provisioner as provisioner_cmd
from ultraplane.cli import registry as registry_cmd
from ultraplane.cli import registryscan as registryscan_cmd
from ultraplane.cli import scheduler as scheduler_cmd
from ultraplane.cli import store as store_cmd
from ultraplane.cli import up as up_cmd

_LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
               "error": logging.ERROR, "panic": logging.CRITICAL, "fatal": logging.CRITICAL}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ultraplane",
        description=(
            "ultraplane: a self-hostable Kubernetes control plane. Today it serves the etcd v3 API "
            "from an in-memory MVCC store made durable by an append-only journal."
        ),
    )
    parser.add_argument("--version", action="version", version=f"ultraplane {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    store_cmd.add_parser(sub)
    up_cmd.add_parser(sub)
    apiserver_cmd.add_parser(sub)
    partitions_cmd.add_parser(sub)
    natscluster_cmd.add_parser(sub)
    scheduler_cmd.add_parser(sub)
    controllers_cmd.add_parser(sub)
    nodes_cmd.add_parser(sub)
    mcp_cmd.add_parser(sub)
    compose_cmd.add_parser(sub)
    provisioner_cmd.add_parser(sub)
    registry_cmd.add_parser(sub)
    registryscan_cmd.add_parser(sub)
    netobs_cmd.add_parser(sub)
    gitops_cmd.add_parser(sub)
    ack_cmd.add_parser(sub)
    fleet_cmd.add_parser(sub)
    return parser


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=_LOG_LEVELS.get(level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    configure_logging(getattr(args, "log_level", "info"))
    tune_gc()
    return int(args.run(args) or 0)


def tune_gc() -> None:
    """Make full cyclic collections rare. Every component holds a large, growing heap of decoded objects
    (store, watch window, informer caches) that reference counting frees; with CPython's default
    thresholds (700, 10, 10) a burst of pods spent ~40% of the API server's and ~60% of the scheduler's CPU in
    generation-2 collections walking that heap (measured with gc.callbacks). Young collections still run,
    so short-lived cycles (tasks, exceptions) are reclaimed as before."""
    gc.set_threshold(50_000, 20, 100)


def freeze_startup_heap() -> None:
    """Move what startup built (modules, OpenAPI schemas, bootstrap policy) out of the collector's view."""
    gc.collect()
    gc.freeze()
