"""`ultraplane up`: the whole control plane on one machine, secure by default.

Today that is the store. Every listener speaks TLS; clients authenticate with a
certificate from the private CA kept in the data dir, and authorization (etcd's
RBAC, root user) is on unless --anonymous is given.
"""

from __future__ import annotations

import argparse
import logging
import secrets
from pathlib import Path

from rich.console import Console

from ultraplane import pki
from ultraplane.cli.store import (
    ListenURL,
    StoreConfig,
    StoreServer,
    TlsFiles,
    UsageError,
    add_store_flags,
    run_until_signalled,
)

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

    async def after_start(server: StoreServer) -> None:
        console = Console(stderr=True)
        console.print(f"[bold green]ultraplane is up[/] — etcd v3 API at https://{args.host}:{args.etcd_port}")
        console.print(
            "  ETCDCTL_API=3 etcdctl "
            f"--endpoints https://{args.host}:{args.etcd_port} --cacert {ca.cert} "
            f"--cert {client.cert} --key {client.key} endpoint status -w table"
        )

    try:
        return run_until_signalled(config, after_start, before_serve)
    except UsageError as exc:
        log.error("%s", exc)
        return 1


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
