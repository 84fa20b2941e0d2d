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
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from rich.console import Console

from ultraplane import pki
from ultraplane.apiserver import encryption
from ultraplane.apiserver.flowcontrol import TIERS, make_tier
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
DEFAULT_NODES = 3


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
    parser.add_argument("--no-scheduler", action="store_true",
                        help="do not start the scheduler (run `ultraplane scheduler` separately, or none)")
    parser.add_argument("--no-controllers", action="store_true",
                        help="do not start the controller manager (run `ultraplane controllers` separately, or none)")
    parser.add_argument("--controllers", default="*",
                        help="controllers the controller manager runs (kube's --controllers: '*,-foo')")
    parser.add_argument("--node-monitor-grace-period", default="40s",
                        help="passed to the controller manager: heartbeat grace before a node turns NotReady")
    add_registry_flags(parser)
    from ultraplane.cli.nodes import add_node_flags

    add_node_flags(parser, ("--nodes",), "simulated nodes to start (`ultraplane nodes` as a child process; "
                                      "default 3, or the sum of --node-type; 0 for none)")
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
        quota_bytes=args.quota_backend_bytes or make_tier(args.tier).quota_bytes,
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
        from ultraplane.cli.main import freeze_startup_heap

        freeze_startup_heap()
        console = Console(stderr=True)
        console.print(f"[bold green]ultraplane is up[/] — Kubernetes API at https://{args.host}:{args.secure_port}, "
                      f"etcd v3 API at https://{args.host}:{args.etcd_port}")
        console.print(f"  kubectl --kubeconfig {kubeconfig} get ns")
        if args.registry_port and not args.registry_url:
            console.print(f"  registry at https://{args.host}:{args.registry_port} (CA {ca.cert}; user admin, "
                          f"password in {data_dir / 'registry' / 'auth' / 'admin.password'})")
        console.print(
            "  ETCDCTL_API=3 etcdctl "
            f"--endpoints https://{args.host}:{args.etcd_port} --cacert {ca.cert} "
            f"--cert {client.cert} --key {client.key} endpoint status -w table"
        )

    if args.encryption_provider_config is None:  # first start: Secrets are encrypted at rest by default
        args.encryption_provider_config = str(encryption.ensure_default(data_dir / "encryption-config.yaml"))
    try:
        api_config = apiserver_config(args)
    except encryption.EncryptionConfigError as exc:
        log.error("%s", exc)
        return 1
    # With the controller manager running, its namespace controller empties Terminating namespaces.
    api_config.namespace_cleanup = args.no_controllers
    # Cluster components run as child processes against the admin kubeconfig: each is also a command.
    children: list[list[str]] = []
    registry_command, registry_flags = registry_wiring(args, data_dir, pki_dir)
    if registry_command:
        children.append(registry_command)
    if not args.no_scheduler:
        children.append(component_command("scheduler", "--kubeconfig", str(kubeconfig)))
    if not args.no_controllers:
        children.append(component_command("controllers", "--kubeconfig", str(kubeconfig), "--controllers",
                                          args.controllers, "--node-monitor-grace-period",
                                          args.node_monitor_grace_period))
    if args.node_count is None and not args.node_type:
        args.node_count = DEFAULT_NODES  # `ultraplane up` alone is a small working cluster
    if args.node_count or args.node_type:
        children.append(component_command(
            "nodes", "--kubeconfig", str(kubeconfig), "--kubelet-address", args.host,
            "--prefix-delegation", args.prefix_delegation, "--parallel-unpack", args.parallel_unpack,
            *(["--count", str(args.node_count)] if args.node_count is not None else []),
            *(["--node-type", args.node_type] if args.node_type else []), *registry_flags))
    try:
        return run_loop(serve(config, before_serve, api_config, files, announce, children))
    except UsageError as exc:
        log.error("%s", exc)
        return 1


def add_registry_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--registry-port", type=int, default=5000,
                        help="port of the cluster's OCI registry (`ultraplane registry` as a child: TLS from "
                             "DATA_DIR/pki, token auth, data in DATA_DIR/registry, scan on push; 0: none)")
    parser.add_argument("--registry", dest="registry_url", default=None, metavar="URL",
                        help="use this registry (https://HOST:PORT, e.g. the fleet's) instead of starting one; "
                             "with --registry-ca-file and --registry-credentials-file (USER:PASSWORD)")
    parser.add_argument("--registry-ca-file", default=None, metavar="FILE", help="CA of --registry's certificate")
    parser.add_argument("--registry-credentials-file", default=None, metavar="FILE",
                        help="USER:PASSWORD the kubelets pull from --registry with")


def registry_wiring(args: argparse.Namespace, data_dir: Path, pki_dir: Path) -> tuple[list[str], list[str]]:
    """(the registry child's command or [], the flags that point `ultraplane nodes` at the registry)."""
    if args.registry_url:
        return [], ["--registry", args.registry_url,
                    *(["--registry-ca-file", args.registry_ca_file] if args.registry_ca_file else []),
                    *(["--registry-credentials-file", args.registry_credentials_file]
                      if args.registry_credentials_file else [])]
    if not args.registry_port:
        return [], []
    from ultraplane.registry.server import RegistryConfig, ensure_pull_user, prepare

    registry_dir = data_dir / "registry"
    files = prepare(RegistryConfig(registry_dir, args.host, args.registry_port, pki_dir=pki_dir))
    credentials = ensure_pull_user(registry_dir)
    command = component_command("registry", "--data-dir", str(registry_dir), "--pki-dir", str(pki_dir),
                                "--listen", f"{args.host}:{args.registry_port}", "--scan")
    return command, ["--registry", f"https://{args.host}:{args.registry_port}", "--registry-ca-file",
                     str(files.ca_cert), "--registry-credentials-file", str(credentials)]


def add_apiserver_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--secure-port", type=int, default=6443, help="HTTPS port of the Kubernetes API server")
    parser.add_argument("--service-cluster-ip-range", default="10.96.0.0/12",
                        help="CIDR from which service ClusterIPs are allocated")
    parser.add_argument("--token-auth-file", default=None,
                        help="static bearer tokens for the API server: token,user,uid,\"group1,group2\" per line")
    parser.add_argument("--etcd-compaction-interval", default="5m",
                        help="how often the API server compacts the store (kube-apiserver's flag; 0 disables)")
    parser.add_argument("--anonymous-auth", nargs="?", const="true", default="false", choices=["true", "false"],
                        help="let requests without credentials in as system:anonymous (kube's flag; false by default)")
    parser.add_argument("--service-account-issuer", action="append", default=[], metavar="URL",
                        help="iss of service-account tokens (repeatable: the first signs, all are accepted; default "
                             "https://kubernetes.default.svc.cluster.local)")
    parser.add_argument("--service-account-key-file", action="append", default=[], metavar="FILE",
                        help="PEM keys that verify service-account tokens (repeatable; default: the signing key)")
    parser.add_argument("--service-account-signing-key-file", default=None, metavar="FILE",
                        help="PEM private key that signs service-account tokens (default DATA_DIR/pki/sa.key, "
                             "created on first start)")
    parser.add_argument("--api-audiences", default="", metavar="AUD,AUD",
                        help="audiences of the API (default: the service-account issuers)")
    parser.add_argument("--service-account-max-token-expiration", default="0s", metavar="DURATION",
                        help="longest lifetime a TokenRequest gets (longer requests are shortened; default none)")
    parser.add_argument("--service-account-extend-token-expiration", default="true", choices=["true", "false"],
                        help="let the kubelet's 3607 s pod tokens live a year, warning after 3607 s (kube's flag)")
    parser.add_argument("--service-account-jwks-uri", default="", metavar="URL",
                        help="jwks_uri of the issuer discovery document (default: this server's /openid/v1/jwks)")
    parser.add_argument("--tier", default="standard", choices=list(TIERS),
                        help="capacity tier: standard adapts its seats to the load (60 to 600, 8 GB database "
                             "quota); xl, 2xl, 4xl and 8xl reserve 1000, 2600, 6800 and 13600 seats and 16 GB")
    parser.add_argument("--max-requests-inflight", type=int, default=0,
                        help="with --max-mutating-requests-inflight: fix the server's total seats (kube's flags)")
    parser.add_argument("--max-mutating-requests-inflight", type=int, default=0,
                        help="added to --max-requests-inflight for the server's total seats")
    parser.add_argument("--encryption-provider-config", default=None, metavar="FILE",
                        help="EncryptionConfiguration for encryption at rest (kube's flag; `up` writes "
                             "DATA_DIR/encryption-config.yaml encrypting Secrets when not given)")
    parser.add_argument("--enable-priority-and-fairness", default="true", choices=["true", "false"],
                        help="classify, queue and limit requests with API Priority and Fairness (kube's flag)")


def apiserver_config(args: argparse.Namespace) -> ApiserverConfig:
    return ApiserverConfig(host=args.host, port=args.secure_port, service_cidr=args.service_cluster_ip_range,
                           token_file=args.token_auth_file, anonymous=args.anonymous_auth == "true",
                           compaction_interval=parse_duration(args.etcd_compaction_interval), tier=args.tier,
                           max_requests_inflight=args.max_requests_inflight,
                           max_mutating_requests_inflight=args.max_mutating_requests_inflight,
                           priority_and_fairness=args.enable_priority_and_fairness == "true",
                           service_account_issuers=args.service_account_issuer,
                           service_account_key_files=args.service_account_key_file,
                           service_account_signing_key_file=args.service_account_signing_key_file,
                           api_audiences=[a for a in args.api_audiences.split(",") if a],
                           service_account_max_token_expiration=int(
                               parse_duration(args.service_account_max_token_expiration)),
                           service_account_extend_token_expiration=args.service_account_extend_token_expiration
                           == "true",
                           service_account_jwks_uri=args.service_account_jwks_uri,
                           encryption=encryption.load(Path(args.encryption_provider_config))
                           if args.encryption_provider_config else None)


def run_loop(main: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop

        return uvloop.run(main)
    except ImportError:  # uvloop is optional on platforms without it
        return asyncio.run(main)


def component_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "ultraplane", *args]


async def start_children(commands: list[list[str]]) -> list[asyncio.subprocess.Process]:
    return [await asyncio.create_subprocess_exec(*argv) for argv in commands]


async def supervise(procs: list[asyncio.subprocess.Process], index: int, argv: list[str], stop: asyncio.Event) -> None:
    """Restart a component that exits while `up` runs, as the kubelet restarts kube-system's static pods:
    a scheduler or controller manager that lost its leader lease (its API server paused past the renew
    deadline) exits, as kube's do, and must come back. Back-off doubles from 1 s to 30 s; a component
    that ran for a minute starts again from 1 s."""
    delay = 1.0
    while not stop.is_set():
        started = asyncio.get_running_loop().time()
        code = await procs[index].wait()
        if stop.is_set():
            return
        if asyncio.get_running_loop().time() - started > 60:
            delay = 1.0
        log.warning("%s exited with code %s; restarting in %.0f s", " ".join(argv[2:4]), code, delay)
        try:
            await asyncio.wait_for(stop.wait(), delay)
            return
        except TimeoutError:
            pass
        procs[index] = await asyncio.create_subprocess_exec(*argv)
        delay = min(delay * 2, 30.0)


async def stop_children(procs: list[asyncio.subprocess.Process]) -> None:
    for proc in reversed(procs):
        if proc.returncode is None:
            proc.terminate()
    for proc in procs:
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def serve(config: StoreConfig, before_serve: Callable[[StoreServer], Awaitable[None]],
                api_config: ApiserverConfig, files: ApiserverPki, announce: Callable[[], None],
                children: list[list[str]] | None = None) -> int:
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
    procs = await start_children(children or [])
    watchers = [asyncio.create_task(supervise(procs, i, argv, stop)) for i, argv in enumerate(children or [])]
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("received signal; shutting down")
    for watcher in watchers:
        watcher.cancel()
    await stop_children(procs)
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
