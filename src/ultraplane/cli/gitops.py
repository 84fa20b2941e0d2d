"""`ultraplane gitops`: the Argo CD-style application controller; `rollback` and `sync` request operations."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from ultraplane.cli.up import run_loop

log = logging.getLogger("ultraplane.gitops")


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "gitops", help="run the GitOps controller (Argo CD's argoproj.io/v1alpha1 Applications)",
        description="Install Argo CD's Application, AppProject and ApplicationSet CRDs and sync Applications from "
                    "git. `gitops rollback APP ID` and `gitops sync APP` request an operation on an Application.")
    parser.add_argument("--kubeconfig", required=True, help="kubeconfig of the cluster holding the Applications")
    parser.add_argument("--namespace", default="argocd", help="namespace of Applications, projects, cluster Secrets")
    parser.add_argument("--resync", type=float, default=10.0, help="seconds between comparisons of every app")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warn", "error", "panic", "fatal"])
    parser.add_argument("action", nargs="?", default="controller", choices=["controller", "rollback", "sync"])
    parser.add_argument("app", nargs="?", help="Application name (rollback, sync)")
    parser.add_argument("history_id", nargs="?", type=int, help="history id to roll back to")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.action == "controller":
        return run_loop(serve(args))
    if not args.app or (args.action == "rollback" and args.history_id is None):
        raise SystemExit("usage: ultraplane gitops --kubeconfig F rollback APP ID | sync APP")
    return run_loop(request_operation(args))


async def request_operation(args: argparse.Namespace) -> int:
    from ultraplane.client.http import MERGE, KubeClient

    client = await KubeClient.from_kubeconfig(args.kubeconfig)
    path = f"/apis/argoproj.io/v1alpha1/namespaces/{args.namespace}/applications/{args.app}"
    try:
        app = await client.get(path)
        sync: dict = {"prune": True}
        if args.action == "rollback":
            history = {h["id"]: h for h in (app.get("status") or {}).get("history") or []}
            if args.history_id not in history:
                print(f"application {args.app} has no history id {args.history_id}")
                return 1
            if ((app.get("spec") or {}).get("syncPolicy") or {}).get("automated"):
                print("rollback cannot be initiated when auto-sync is enabled")
                return 1
            sync = {"revision": history[args.history_id]["revision"], "source": history[args.history_id]["source"],
                    "prune": True}
        await client.patch(path, {"operation": {"sync": sync, "initiatedBy": {"username": "ultraplane"}}},
                           content_type=MERGE)
        print(f"{args.action} of {args.app} requested")
        return 0
    finally:
        await client.close()


async def serve(args: argparse.Namespace) -> int:
    from ultraplane.client.http import KubeClient
    from ultraplane.gitops.controller import Controller

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    client = await KubeClient.from_kubeconfig(args.kubeconfig)
    try:
        await Controller(client, args.namespace, args.resync).run(stop)
    finally:
        await client.close()
    log.info("gitops controller stopped")
    return 0
