"""Wiring: data dir layout, TLS from the ultraplane PKI, the token authority, GC and the listener."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from ultraplane import pki
from ultraplane.registry.api import RegistryApi
from ultraplane.registry.auth import Rule, TokenAuthority, UserStore, ensure_admin, load_signing_key
from ultraplane.registry.http import serve_http
from ultraplane.registry.platform import Platform, PlatformConfig
from ultraplane.registry.storage import Storage

log = logging.getLogger("ultraplane.registry")

SERVICE = "ultraplane-registry"


@dataclass
class RegistryConfig:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 5000
    tls: bool = True
    auth: bool = True
    anonymous_pull: list[str] = field(default_factory=list)  # repository globs anyone may pull
    realm: str | None = None
    gc_interval: float = 3600.0
    gc_grace: float = 3600.0
    fsync: bool = False
    max_uploads: int = 10_000
    max_blob_size: int = 0  # bytes; 0: no limit
    platform: PlatformConfig = field(default_factory=PlatformConfig)  # signing, lifecycle, admission
    scan: bool = False  # SBOM (SPDX referrer) of every pushed image, in the background
    advisories: str | None = None  # OSV directory or zip: findings per scanned digest
    pki_dir: Path | None = None  # CA and serving certificate (default DATA_DIR/pki; `up` gives the cluster's)


@dataclass
class RegistryFiles:
    ca_cert: Path | None
    server_cert: Path | None
    server_key: Path | None
    users: Path
    admin_password: str | None  # set only when this start created the admin user


def prepare(config: RegistryConfig) -> RegistryFiles:
    """Create what a first start needs (certificates, signing key, admin user); idempotent."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    ca_cert = server_cert = server_key = None
    if config.tls:
        pki_dir = config.pki_dir or config.data_dir / "pki"
        ca = pki.ensure_ca(pki_dir)
        hosts = sorted({config.host, "localhost", "127.0.0.1"} - {"0.0.0.0", "::", ""})
        serving = pki.issue(ca, pki_dir, "registry-server", SERVICE, server_hosts=hosts)
        ca_cert, server_cert, server_key = ca.cert, serving.cert, serving.key
    users_path = config.data_dir / "auth" / "users.json"
    admin_password = None
    if config.auth:
        admin_password = ensure_admin(UserStore(users_path))
        if admin_password is not None:
            secret = config.data_dir / "auth" / "admin.password"
            fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(admin_password + "\n")
        load_signing_key(config.data_dir / "auth" / "token.key")
    return RegistryFiles(ca_cert, server_cert, server_key, users_path, admin_password)


def ensure_pull_user(data_dir: Path, name: str = "kubelet") -> Path:
    """A user that may pull every repository, for a cluster's kubelets; its USER:PASSWORD file (0600)."""
    path = data_dir / "auth" / f"{name}.credentials"
    if not path.exists():
        password = secrets.token_urlsafe(18)
        UserStore(data_dir / "auth" / "users.json").set_user(name, password, ["*=pull"])
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"{name}:{password}\n")
    return path


def build_api(config: RegistryConfig, storage: Storage) -> RegistryApi:
    authority = None
    if config.auth:
        users = UserStore(config.data_dir / "auth" / "users.json")
        key = load_signing_key(config.data_dir / "auth" / "token.key")
        anonymous = [Rule.parse(f"{pattern}=pull") for pattern in config.anonymous_pull]
        authority = TokenAuthority(users, key, SERVICE, anonymous)
    return RegistryApi(storage, authority, realm=config.realm, max_uploads=config.max_uploads,
                       max_blob_size=config.max_blob_size)


def tls_context(files: RegistryFiles) -> ssl.SSLContext:
    assert files.server_cert is not None and files.server_key is not None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(files.server_cert), str(files.server_key))
    context.set_alpn_protocols(["http/1.1"])
    return context


class Registry:
    """A running registry: `start()` binds, `port` tells where, `close()` stops."""

    def __init__(self, config: RegistryConfig) -> None:
        self.config = config
        self.files = prepare(config)
        self.storage = Storage(config.data_dir / "storage", fsync=config.fsync)
        self.api = build_api(config, self.storage)
        self.platform = Platform(config.data_dir, self.storage, config.platform, fsync=config.fsync)
        self.platform.authorize = self.api._authorize
        self.api.platform = self.platform
        if config.scan:
            from ultraplane.registry.scanonpush import PushScanner

            self.platform.scanner = PushScanner(self.storage, config.data_dir / "scan", config.advisories)
        self._server: asyncio.Server | None = None
        self._gc_task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"{'https' if self.config.tls else 'http'}://{self.config.host}:{self.port}"

    async def start(self) -> None:
        context = tls_context(self.files) if self.config.tls else None
        self._server = await serve_http(self.api.handle, self.config.host, self.config.port, context)
        if self.config.gc_interval > 0:
            self._gc_task = asyncio.ensure_future(self._collect_periodically())
        self.platform.start()

    async def _collect_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.config.gc_interval)
            try:
                await self.storage.collect_garbage(self.config.gc_grace)
            except Exception:
                log.exception("garbage collection failed")

    async def close(self) -> None:
        await self.platform.close()
        if self._gc_task is not None:
            self._gc_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._gc_task
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2)
