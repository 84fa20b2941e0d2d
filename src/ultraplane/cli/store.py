"""`ultraplane store`: the etcd-compatible store in the foreground, with etcd's flag names."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import secrets
import signal
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ultraplane.pki import server_context

log = logging.getLogger("ultraplane.store")

DEFAULT_QUOTA_BYTES = 2 * 1024 * 1024 * 1024  # etcd's default backend quota
DEFAULT_MAX_REQUEST_BYTES = 1572864  # etcd's default (1.5 MiB)
GRPC_OVERHEAD_BYTES = 512 * 1024  # etcd lets gRPC receive this much more than a request may hold
SNAPSHOT_SHA256_BYTES = 32


class UsageError(Exception):
    """A flag combination etcd would refuse; reported on stderr with exit status 1."""


@dataclass(frozen=True)
class ListenURL:
    scheme: str
    host: str
    port: int

    @property
    def tls(self) -> bool:
        return self.scheme == "https"


def parse_urls(value: str, flag: str) -> list[ListenURL]:
    urls = []
    for raw in filter(None, (part.strip() for part in value.split(","))):
        parts = urlsplit(raw)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.port is None:
            raise UsageError(f"invalid value {raw!r} for flag {flag}: URL must be http(s)://host:port")
        urls.append(ListenURL(parts.scheme, parts.hostname, parts.port))
    if not urls:
        raise UsageError(f"{flag} must name at least one URL")
    return urls


def add_store_flags(parser: argparse.ArgumentParser) -> None:
    """Flags shared by `store` and `up`, named and defaulted as etcd names and defaults them."""
    parser.add_argument("--name", default="default", help="human-readable name for this member")
    parser.add_argument("--data-dir", default=None, help="path to the data directory (default: ${name}.etcd)")
    parser.add_argument("--quota-backend-bytes", type=int, default=0,
                        help="raise the NOSPACE alarm when the database exceeds this size (0: 2 GiB)")
    parser.add_argument("--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES,
                        help="maximum client request size in bytes the server will accept")
    parser.add_argument("--auto-compaction-mode", default="periodic", choices=["periodic", "revision"],
                        help="interpret --auto-compaction-retention as a duration or a revision count")
    parser.add_argument("--auto-compaction-retention", default="0",
                        help="auto compaction retention ('0' disables; '1h', '30m', or hours as a number "
                             "in periodic mode; a revision count in revision mode)")
    parser.add_argument("--unsafe-no-fsync", action="store_true",
                        help="acknowledge writes without fsync: a crash can lose recent writes. Only for "
                             "data that may be lost, such as Kubernetes events")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warn", "error", "panic", "fatal"])
    parser.add_argument("--transport", default="h2", choices=["h2", "grpcio"],
                        help="gRPC server implementation: the lean HTTP/2 server (default) or grpcio")


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "store",
        help="run the etcd-compatible store in the foreground",
        description=(
            "Serve the etcd v3 gRPC API from an in-memory MVCC store. Every acknowledged write is in an "
            "fsync'ed, checksummed journal under --data-dir; restarting on the same directory recovers "
            "all state. SIGTERM or Ctrl-C stops it cleanly."
        ),
    )
    add_store_flags(parser)
    parser.add_argument("--listen-client-urls", default="http://localhost:2379",
                        help="comma-separated URLs to listen on for client traffic")
    parser.add_argument("--advertise-client-urls", default="http://localhost:2379",
                        help="comma-separated client URLs to advertise (MemberList)")
    parser.add_argument("--cert-file", default="", help="path to the client server TLS cert file")
    parser.add_argument("--key-file", default="", help="path to the client server TLS key file")
    parser.add_argument("--trusted-ca-file", default="", help="path to the client server TLS trusted CA file")
    parser.add_argument("--client-cert-auth", action="store_true",
                        help="require client certificates signed by --trusted-ca-file; the certificate's "
                             "common name is the user when auth is enabled")
    parser.add_argument("--journal", default="",
                        help="where the journal lives: empty (default) for the local file journal under "
                             "--data-dir, or nats://host:port,nats://host:port,... to share a replicated "
                             "NATS JetStream journal with every member started with the same --journal "
                             "and --partition")
    parser.add_argument("--partition", default="default",
                        help="with a NATS --journal: the replicated store (keyspace) this member serves")
    parser.add_argument("--journal-replicas", type=int, default=3,
                        help="with a NATS --journal: copies of the stream, KV and snapshot buckets")
    parser.add_argument("--journal-stream", default="ULTRAPLANE",
                        help="with a NATS --journal: the JetStream stream holding every partition's journal")
    parser.add_argument("--snapshot-count", type=int, default=100_000,
                        help="records appended between snapshots (also taken once 64 MiB accumulate)")
    parser.add_argument("--restore", metavar="FILE", default=None,
                        help="initialize an empty --data-dir from a snapshot taken with "
                             "`etcdctl snapshot save` (from real etcd 3.4/3.5 or from ultraplane), then serve")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        config = StoreConfig.from_args(args)
    except UsageError as exc:
        log.error("%s", exc)
        return 1
    return run_until_signalled(config)


@dataclass(frozen=True)
class TlsFiles:
    cert: bytes
    key: bytes
    ca: bytes | None
    client_cert_auth: bool

    @classmethod
    def load(cls, cert_file: str, key_file: str, ca_file: str, client_cert_auth: bool) -> TlsFiles:
        return cls(Path(cert_file).read_bytes(), Path(key_file).read_bytes(),
                   Path(ca_file).read_bytes() if ca_file else None, client_cert_auth)


@dataclass
class StoreConfig:
    name: str
    data_dir: Path
    listen: list[ListenURL]
    advertise: list[str]
    quota_bytes: int
    max_request_bytes: int
    compaction_mode: str
    compaction_retention: str
    fsync: bool
    transport: str
    ssl_context: ssl.SSLContext | None
    restore: Path | None = None
    tls_files: TlsFiles | None = None  # the same TLS material as bytes, for the grpcio transport
    journal_urls: list[str] | None = None  # a NATS journal (replicated members); None: the file journal
    partition: str = "default"
    journal_replicas: int = 3
    journal_stream: str = "ULTRAPLANE"
    snapshot_count: int = 100_000

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> StoreConfig:
        listen = parse_urls(args.listen_client_urls, "--listen-client-urls")
        advertise = parse_urls(args.advertise_client_urls, "--advertise-client-urls")
        ctx = None
        if any(url.tls for url in listen):
            if not (args.cert_file and args.key_file):
                raise UsageError("TLS key/cert (--cert-file, --key-file) must be provided for https client URLs")
            if args.client_cert_auth and not args.trusted_ca_file:
                raise UsageError("--client-cert-auth requires --trusted-ca-file")
            ctx = server_context(args.cert_file, args.key_file, args.trusted_ca_file or None, args.client_cert_auth)
        journal_urls = None
        journal = getattr(args, "journal", "") or ""
        if journal:
            journal_urls = [part.strip() for part in journal.split(",") if part.strip()]
            bad = [u for u in journal_urls if not u.startswith(("nats://", "tls://"))]
            if bad or not journal_urls:
                raise UsageError(f"invalid value {journal!r} for flag --journal: want nats://host:port,...")
            if getattr(args, "restore", None):
                raise UsageError("--restore works only with the file journal")
        return cls(
            journal_urls=journal_urls,
            partition=getattr(args, "partition", "default"),
            journal_replicas=getattr(args, "journal_replicas", 3),
            journal_stream=getattr(args, "journal_stream", "ULTRAPLANE"),
            snapshot_count=getattr(args, "snapshot_count", 100_000),
            name=args.name,
            data_dir=Path(args.data_dir or f"{args.name}.etcd"),
            listen=listen,
            advertise=[f"{u.scheme}://{u.host}:{u.port}" for u in advertise],
            quota_bytes=args.quota_backend_bytes if args.quota_backend_bytes > 0 else DEFAULT_QUOTA_BYTES,
            max_request_bytes=args.max_request_bytes,
            compaction_mode=args.auto_compaction_mode,
            compaction_retention=args.auto_compaction_retention,
            fsync=not args.unsafe_no_fsync,
            transport=args.transport,
            ssl_context=ctx,
            restore=Path(args.restore) if args.restore else None,
            tls_files=TlsFiles.load(args.cert_file, args.key_file, args.trusted_ca_file, args.client_cert_auth)
            if ctx else None,
        )


def member_identity(data_dir: Path, name: str) -> tuple[int, int]:
    """Cluster and member ids: random once, then kept with the data so a restart keeps them."""
    path = data_dir / "member.json"
    if path.exists():
        ident = json.loads(path.read_text())
        return int(ident["cluster_id"]), int(ident["member_id"])
    ident = {"name": name, "cluster_id": secrets.randbits(63) or 1, "member_id": secrets.randbits(63) or 1}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(ident))
    os.replace(tmp, path)
    return ident["cluster_id"], ident["member_id"]


def read_snapshot_file(path: Path) -> bytes:
    """A file written by `etcdctl snapshot save`: the database followed by its SHA-256."""
    data = path.read_bytes()
    body, digest = data[:-SNAPSHOT_SHA256_BYTES], data[-SNAPSHOT_SHA256_BYTES:]
    if len(data) < SNAPSHOT_SHA256_BYTES or hashlib.sha256(body).digest() != digest:
        raise UsageError(f"snapshot file {path} is corrupt: its SHA-256 trailer does not match")
    return body


def snapshot_to_native(body: bytes) -> list[bytes]:
    """A saved snapshot as the store's own snapshot chunks: an etcd backend database (bbolt,
    from real etcd or from ultraplane) is converted; ultraplane's older own format is kept."""
    from ultraplane.store import bbolt
    from ultraplane.store.etcdsnapshot import EtcdSnapshotError, native_snapshot, parse_db

    if not bbolt.is_bolt(body):
        return [body]
    try:
        return list(native_snapshot(parse_db(body)))
    except EtcdSnapshotError as exc:
        raise UsageError(f"cannot restore the snapshot: {exc}") from None


class StoreServer:
    """The running store: journal, MVCC engine, auth, and the gRPC listeners over them."""

    def __init__(self, config: StoreConfig, before_serve=None) -> None:
        self.config = config
        # Runs once the store is open and before any listener accepts a client, so that
        # setup such as enabling auth leaves no window in which the store is served open.
        self.before_serve = before_serve
        self.store = None
        self.auth = None
        self.listeners: list = []
        self.opened = False
        self.member = None  # the ReplicaMember, with a NATS journal

    async def start(self) -> None:
        from ultraplane.etcd.service import etcd_methods
        from ultraplane.journal.file import FileJournal
        from ultraplane.store import Store
        from ultraplane.store.auth import AuthStore

        cfg = self.config
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        if cfg.journal_urls:
            await self._start_replica()
            return
        journal_dir = cfg.data_dir / "journal"
        snapshot = None
        if cfg.restore is not None:
            if journal_dir.exists() and any(journal_dir.iterdir()):
                raise UsageError(f"--restore needs an empty --data-dir; {journal_dir} holds data")
            snapshot = snapshot_to_native(read_snapshot_file(cfg.restore))
        cluster_id, member_id = member_identity(cfg.data_dir, cfg.name)
        if snapshot is not None:
            # An empty journal whose first snapshot is the restored state; the store then opens it as usual.
            seed = FileJournal(str(journal_dir), fsync=True)
            seed.open()
            await seed.write_snapshot(snapshot)
            await seed.close()
        journal = FileJournal(str(journal_dir), fsync=cfg.fsync)
        self.store = Store(journal, quota_bytes=cfg.quota_bytes)
        self.auth = AuthStore(self.store)
        self.store.attach(self.auth)
        await self.store.open()
        self.opened = True
        if cfg.compaction_retention not in ("", "0"):
            self.store.start_auto_compaction(cfg.compaction_mode, cfg.compaction_retention)
        if self.before_serve is not None:
            await self.before_serve(self)
        methods = etcd_methods(
            self.store, self.auth, cluster_id=cluster_id, member_id=member_id, member_name=cfg.name,
            client_urls=cfg.advertise, max_request_bytes=cfg.max_request_bytes,
        )
        for url in cfg.listen:
            ctx = cfg.ssl_context if url.tls else None
            self.listeners.append(await self._listen(methods, url, ctx))
        log.info("ready to serve client requests on %s (revision %d)",
                 ", ".join(f"{u.scheme}://{u.host}:{u.port}" for u in cfg.listen), self.store.revision)

    async def _start_replica(self) -> None:
        """A member of a replicated store over a NATS JetStream journal (ultraplane.replica)."""
        from ultraplane.replica import ReplicaConfig, ReplicaMember
        from ultraplane.store import Store
        from ultraplane.store.auth import AuthStore

        cfg = self.config
        assert cfg.journal_urls is not None
        _, member_id = member_identity(cfg.data_dir, cfg.name)

        def make_store(journal):
            store = Store(journal, quota_bytes=cfg.quota_bytes, snapshot_records=cfg.snapshot_count)
            auth = AuthStore(store)
            store.attach(auth)
            return store, auth

        self.member = ReplicaMember(
            ReplicaConfig(urls=cfg.journal_urls, partition=cfg.partition, stream=cfg.journal_stream,
                          replicas=cfg.journal_replicas, member_id=member_id, member_name=cfg.name,
                          client_urls=cfg.advertise),
            make_store, max_request_bytes=cfg.max_request_bytes,
        )
        methods = await self.member.start()
        self.opened = True
        self.store, self.auth = self.member.store, self.member.auth
        for url in cfg.listen:
            ctx = cfg.ssl_context if url.tls else None
            self.listeners.append(await self._listen(methods, url, ctx))
        log.info("ready to serve client requests on %s (replicated partition %s, revision %d)",
                 ", ".join(f"{u.scheme}://{u.host}:{u.port}" for u in cfg.listen), cfg.partition,
                 self.member.store.revision)

    async def _listen(self, methods: dict, url: ListenURL, ctx: ssl.SSLContext | None):
        max_recv = self.config.max_request_bytes + GRPC_OVERHEAD_BYTES
        if self.config.transport == "grpcio":
            from ultraplane.etcd.grpcio_server import serve_grpcio

            tls = self.config.tls_files if url.tls else None
            return await serve_grpcio(
                methods, url.host, url.port, max_recv_message_bytes=max_recv,
                cert_chain=tls.cert if tls else None, private_key=tls.key if tls else None,
                root_certificates=tls.ca if tls else None, require_client_auth=bool(tls and tls.client_cert_auth),
            )
        from ultraplane.etcd.h2server import serve_h2

        return await serve_h2(methods, url.host, url.port, ssl_context=ctx, max_recv_message_bytes=max_recv)

    async def stop(self) -> None:
        for listener in self.listeners:
            await listener.close()
        if self.member is not None:
            await self.member.close()
        elif self.opened:
            await self.store.close()
        log.info("stopped")


async def serve_until_signalled(config: StoreConfig, after_start=None, before_serve=None) -> int:
    from ultraplane.journal.file import JournalError

    server = StoreServer(config, before_serve)
    try:
        await server.start()
    except (UsageError, JournalError, OSError) as exc:
        # a refused flag, a data dir in use or damaged, a port taken: say so, no traceback
        log.error("cannot start: %s", exc)
        await server.stop()
        return 1
    if after_start is not None:
        await after_start(server)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("received signal; shutting down")
    await server.stop()
    return 0


def run_until_signalled(config: StoreConfig, after_start=None, before_serve=None) -> int:
    try:
        import uvloop

        return uvloop.run(serve_until_signalled(config, after_start, before_serve))
    except ImportError:  # uvloop is optional on platforms without it
        return asyncio.run(serve_until_signalled(config, after_start, before_serve))
