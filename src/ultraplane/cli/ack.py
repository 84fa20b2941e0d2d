"""`ultraplane ack`: ACK-style controllers for local resources (PostgreSQL, NATS JetStream)."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal

from ultraplane.cli.up import run_loop


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "ack",
        help="run ACK-style controllers: PostgreSQL Database/Role, NATS JetStream Stream, registry Repository",
        description="Reconcile postgres.ultraplane.io Database and Role and nats.ultraplane.io Stream objects "
                    "and registry.ultraplane.io Repository objects into real resources, with ACK's status conventions.",
    )
    parser.add_argument("--kubeconfig", required=True, help="kubeconfig of the cluster to watch")
    parser.add_argument("--postgres-url", default=os.environ.get("ULTRAPLANE_ACK_POSTGRES_URL"),
                        help="admin connection, postgresql://user:password@host:port/dbname "
                             "(default: $ULTRAPLANE_ACK_POSTGRES_URL)")
    parser.add_argument("--postgres-secret", default=None, metavar="NAMESPACE/NAME",
                        help="a Secret with the admin connection instead: keys host, port, username, password")
    parser.add_argument("--nats-url", default=None, help="nats://host:port of a JetStream-enabled nats-server")
    parser.add_argument("--registry-url", default=None, help="https://host:port of an ultraplane registry")
    parser.add_argument("--registry-user", default="admin", help="registry user with admin rights")
    parser.add_argument("--registry-password-file", default=None, help="file holding that user's password")
    parser.add_argument("--registry-ca", default=None, help="CA certificate file for the registry's TLS")
    parser.add_argument("--namespace", default=None, help="watch only this namespace (default: all)")
    parser.add_argument("--resync", type=float, default=5.0, help="seconds between drift checks")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warn", "error", "panic", "fatal"])
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    return run_loop(_serve(args))


async def _serve(args: argparse.Namespace) -> int:
    from ultraplane.compose.ack.controller import serve

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    password = None
    if args.registry_password_file:
        with open(args.registry_password_file) as f:
            password = f.read().strip()
    await serve(args.kubeconfig, stop, args.postgres_url, args.nats_url, args.resync, args.namespace,
                args.registry_url, args.registry_user, password, args.registry_ca, args.postgres_secret)
    return 0
