"""`ultraplane up`: the whole control plane on one machine, secure by default.

Today that is the store and the Kubernetes API server on it (in-process, no gRPC between them).
Every listener speaks TLS; clients authenticate with a certificate from the private CA kept in the
data dir, and authorization (etcd's RBAC with a root user; system:masters for the API server) is
on unless --anonymous is given. DATA_DIR/kubeconfig holds the admin credentials for kubectl.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import signal
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from rich.console import Console

from ultraplane import pki
from ultraplane.apiserver.resources import ClusterIPAllocator
from ultraplane.apiserver.run import (
    ApiserverConfig,
    ApiserverPki,
    ensure_pki,
    start_apiserver,
    write_kubeconfig,
)
from ultraplane.apiserver.storage import InProcessBackend
from ultraplane.cli.store import (
    ListenURL,
    StoreConfig,
    StoreServer,
    TlsFiles,
    UsageError,
    add_store_flags,
)
from ultraplane.store.mvcc import parse_duration

log = logging.getLogger("ultraplane.up")
ROOT = "root"


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "up",
        help="start ultraplane on this machine (TLS, client certificates and RBAC on by default)",
        description=(
            "Start ultraplane with its embedded store. On first start it creates a CA, serving and client "
            "certificates under DATA_DIR/pki, creates the etcd root user and role and enables auth; later "
            "starts reuse them and keep every object."
        ),
    )
    add_store_flags(parser)
    parser.set_defaults(data_dir="ultraplane-data")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--etcd-port", type=int, default=2379, help="port of the etcd v3 API listener")
    parser.add_argument("--anonymous", action="store_true",
                        help="leave etcd auth disabled: any client with a certificate from the CA may do anything")
    add_apiserver_flags(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir)
    pki_dir = data_dir / "pki"
    ca = pki.ensure_ca(pki_dir)
    serving = pki.issue(ca, pki_dir, "etcd-server", "ultraplane-etcd", server_hosts=[args.host, "localhost", "127.0.0.1"])
    client = pki.issue(ca, pki_dir, "etcd-client-root", ROOT, client=True)
    url = ListenURL("https", args.host, args.etcd_port)
    config = StoreConfig(
        name=args.name,
        data_dir=data_dir,
        listen=[url],
        advertise=[f"https://{args.host}:{args.etcd_port}"],
        quota_bytes=args.quota_backend_bytes or 2 * 1024**3,
        max_request_bytes=args.max_request_bytes,
        compaction_mode=args.auto_compaction_mode,
        compaction_retention=args.auto_compaction_retention,
        fsync=not args.unsafe_no_fsync,
        transport=args.transport,
        ssl_context=pki.server_context(str(serving.cert), str(serving.key), str(ca.cert), client_cert_auth=True),
        tls_files=TlsFiles.load(str(serving.cert), str(serving.key), str(ca.cert), client_cert_auth=True),
    )

    async def before_serve(server: StoreServer) -> None:
        if not args.anonymous:
            await ensure_root_auth(server)

    files = ensure_pki(pki_dir, args.host, ClusterIPAllocator(args.service_cluster_ip_range).first())
    kubeconfig = data_dir / "kubeconfig"
    write_kubeconfig(kubeconfig, f"https://{args.host}:{args.secure_port}", files)

    def announce() -> None:
        console = Console(stderr=True)
        console.print(f"[bold green]ultraplane is up[/] — Kubernetes API at https://{args.host}:{args.secure_port}, "
                      f"etcd v3 API at https://{args.host}:{args.etcd_port}")
        console.print(f"  kubectl --kubeconfig {kubeconfig} get ns")
        console.print(
            "  ETCDCTL_API=3 etcdctl "
            f"--endpoints https://{args.host}:{args.etcd_port} --cacert {ca.cert} "
            f"--cert {client.cert} --key {client.key} endpoint status -w table"
        )

    api_config = apiserver_config(args)
    try:
        return run_loop(serve(config, before_serve, api_config, files, announce))
    except UsageError as exc:
        log.error("%s", exc)
        return 1


def add_apiserver_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--secure-port", type=int, default=6443, help="HTTPS port of the Kubernetes API server")
    parser.add_argument("--service-cluster-ip-range", default="10.96.0.0/12",
                        help="CIDR from which service ClusterIPs are allocated")
    parser.add_argument("--token-auth-file", default=None,
                        help="static bearer tokens for the API server: token,user,uid,\"group1,group2\" per line")
    parser.add_argument("--etcd-compaction-interval", default="5m",
                        help="how often the API server compacts the store (kube-apiserver's flag; 0 disables)")
    parser.add_argument("--anonymous-auth", action="store_true",
                        help="let requests without credentials in as system:anonymous (off by default)")


def apiserver_config(args: argparse.Namespace) -> ApiserverConfig:
    return ApiserverConfig(host=args.host, port=args.secure_port, service_cidr=args.service_cluster_ip_range,
                           token_file=args.token_auth_file, anonymous=args.anonymous_auth,
                           compaction_interval=parse_duration(args.etcd_compaction_interval))


def run_loop(main: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop

        return uvloop.run(main)
    except ImportError:  # uvloop is optional on platforms without it
        return asyncio.run(main)


async def serve(config: StoreConfig, before_serve: Callable[[StoreServer], Awaitable[None]],
                api_config: ApiserverConfig, files: ApiserverPki, announce: Callable[[], None]) -> int:
    """Store first (auth enabled before any listener), then the API server over it; stop in reverse."""
    from ultraplane.journal.file import JournalError

    server = StoreServer(config, before_serve)
    api = None
    try:
        await server.start()
        api = await start_apiserver(InProcessBackend(server.store), api_config, files)
    except (UsageError, JournalError, OSError) as exc:
        log.error("cannot start: %s", exc)
        if api is not None:
            await api.stop()
        await server.stop()
        return 1
    announce()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("received signal; shutting down")
    await api.stop()
    await server.stop()
    return 0


async def ensure_root_auth(server: StoreServer) -> None:
    """First start: the root user (certificate CN "root") with the root role, and auth enabled."""
    auth = server.auth
    if auth.enabled:
        return
    if ROOT not in auth.user_list():
        # The password only matters for password logins; certificate logins never use it.
        await auth.user_add(ROOT, secrets.token_urlsafe(24), no_password=False)
    if ROOT not in auth.role_list():
        await auth.role_add(ROOT)
    if ROOT not in auth.user_get(ROOT):
        await auth.user_grant_role(ROOT, ROOT)
    await auth.enable()
