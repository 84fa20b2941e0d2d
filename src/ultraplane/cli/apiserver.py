"""`ultraplane apiserver`: the Kubernetes API server on remote etcd v3 endpoints.

The endpoints may be ultraplane store members or real etcd 3.4; flags follow kube-apiserver's
(--etcd-servers, --etcd-cafile/--etcd-certfile/--etcd-keyfile, --etcd-servers-overrides).
Certificates and the admin kubeconfig live under --data-dir as for `ultraplane up`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path

from rich.console import Console

from ultraplane.apiserver.encryption import EncryptionConfigError
from ultraplane.apiserver.resources import ClusterIPAllocator
from ultraplane.apiserver.run import (
    ApiserverConfig,
    ApiserverPki,
    ensure_pki,
    start_apiserver,
    write_kubeconfig,
)
from ultraplane.apiserver.storage import Backend, EtcdBackend, EtcdTls
from ultraplane.cli.up import add_apiserver_flags, apiserver_config, run_loop

log = logging.getLogger("ultraplane.apiserver")


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "apiserver",
        help="run the Kubernetes API server on remote etcd endpoints (ultraplane stores or etcd 3.4)",
        description="Serve the Kubernetes API over HTTPS, storing objects in the given etcd v3 endpoints.",
    )
    parser.add_argument("--etcd-servers", required=True, help="comma-separated etcd URLs (http:// or https://)")
    parser.add_argument("--etcd-cafile", default=None, help="CA bundle to verify the etcd servers")
    parser.add_argument("--etcd-certfile", default=None, help="client certificate for etcd")
    parser.add_argument("--etcd-keyfile", default=None, help="client key for etcd")
    parser.add_argument("--etcd-servers-overrides", default="",
                        help="per-resource etcd servers: group/resource#url;url,... (core group: /pods#...)")
    parser.add_argument("--data-dir", default="ultraplane-apiserver", help="certificates and kubeconfig")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warn", "error", "panic", "fatal"])
    add_apiserver_flags(parser)
    parser.set_defaults(run=run)


def parse_overrides(value: str, tls: EtcdTls) -> dict[str, Backend]:
    """kube-apiserver's format: ``group/resource#server;server`` entries separated by commas."""
    out: dict[str, Backend] = {}
    for entry in filter(None, (e.strip() for e in value.split(","))):
        resource, _, servers = entry.partition("#")
        if "/" not in resource or not servers:
            raise ValueError(f"invalid --etcd-servers-overrides entry {entry!r}: want group/resource#url;url")
        group, _, plural = resource.partition("/")
        out[f"{group}/{plural}"] = EtcdBackend(servers.split(";"), tls)
    return out


def run(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    files = ensure_pki(data_dir / "pki", args.host, ClusterIPAllocator(args.service_cluster_ip_range).first())
    kubeconfig = data_dir / "kubeconfig"
    write_kubeconfig(kubeconfig, f"https://{args.host}:{args.secure_port}", files)
    tls = EtcdTls(args.etcd_cafile, args.etcd_certfile, args.etcd_keyfile)
    try:
        overrides = parse_overrides(args.etcd_servers_overrides, tls)
    except ValueError as exc:
        log.error("%s", exc)
        return 1
    try:
        cfg = apiserver_config(args)
    except EncryptionConfigError as exc:
        log.error("%s", exc)
        return 1
    cfg.overrides = overrides
    backend = EtcdBackend([u.strip() for u in args.etcd_servers.split(",") if u.strip()], tls)
    return run_loop(serve(backend, cfg, files, kubeconfig))


async def serve(backend: EtcdBackend, cfg: ApiserverConfig, files: ApiserverPki, kubeconfig: Path) -> int:
    try:
        api = await start_apiserver(backend, cfg, files)
    except (OSError, TimeoutError) as exc:
        log.error("cannot start: %s", exc)
        return 1
    console = Console(stderr=True)
    console.print(f"[bold green]API server is up[/] at https://{cfg.host}:{cfg.port}")
    console.print(f"  kubectl --kubeconfig {kubeconfig} get ns")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await api.stop()
    return 0
