"""An in-process etcd-compatible server for the service tests.

The real Store (file journal in a temporary directory) with the real AuthStore, served by the
project's gRPC transport on a free loopback port, in an event loop on a background thread so the
tests can drive it with blocking clients: etcdctl 3.4 (subprocess), grpcio stubs generated from
our .proto files, and the etcd3 client (in a subprocess, since it needs the pure-Python protobuf).

Transport: ULTRAPLANE_ETCD_TRANSPORT=h2|grpcio|aio picks one; by default the lean h2 server,
else grpcio, else (when neither module exists yet) a grpc.aio stand-in from aio_transport.py.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import grpc
import pytest

REPO = Path(__file__).resolve().parents[2]
ETCDCTL = os.environ.get("ETCDCTL_BIN", "etcdctl")
CLUSTER_ID = 0x1C0FFEE2
MEMBER_ID = 0x5EED1234ABCD
MEMBER_NAME = "ultra-test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _transport() -> Any:
    wanted = os.environ.get("ULTRAPLANE_ETCD_TRANSPORT")
    candidates = [wanted] if wanted else ["h2", "grpcio", "aio"]
    for name in candidates:
        try:
            if name == "h2":
                return importlib.import_module("ultraplane.etcd.h2server").serve_h2
            if name == "grpcio":
                return importlib.import_module("ultraplane.etcd.grpcio_server").serve_grpcio
            if name == "aio":
                from tests.etcd.aio_transport import serve_aio

                return serve_aio
        except (ImportError, AttributeError):
            if wanted:
                raise
    raise RuntimeError("no gRPC transport available")


class ServerThread:
    """One store + service + transport, running on its own event loop thread."""

    def __init__(
        self,
        data_dir: Path,
        *,
        max_request_bytes: int = 1572864,
        watch_progress_interval: float = 600.0,
        quota_bytes: int | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.max_request_bytes = max_request_bytes
        self.watch_progress_interval = watch_progress_interval
        self.quota_bytes = quota_bytes
        self.port = free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.loop = asyncio.new_event_loop()
        self._ready: Future[None] = Future()
        self._thread = threading.Thread(target=self._run, name="etcd-test-server", daemon=True)
        self.store: Any = None
        self.auth: Any = None

    # -- lifecycle

    def start(self) -> ServerThread:
        self._thread.start()
        self._ready.result(timeout=30)
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._main())
        finally:
            self.loop.close()

    async def _main(self) -> None:
        from ultraplane.etcd.service import etcd_methods
        from ultraplane.journal.file import FileJournal
        from ultraplane.store import Store
        from ultraplane.store.auth import AuthStore, ScryptParams

        self._stop = asyncio.Event()
        try:
            journal = FileJournal(str(self.data_dir / "journal"), fsync=False)
            kwargs = {} if self.quota_bytes is None else {"quota_bytes": self.quota_bytes}
            self.store = Store(journal, **kwargs)
            # cheap password hashing keeps the auth tests fast; the scheme is the same
            self.auth = AuthStore(self.store, scrypt_params=ScryptParams(n=2**8))
            self.store.attach(self.auth)
            await self.store.open()
            methods = etcd_methods(
                self.store,
                self.auth,
                cluster_id=CLUSTER_ID,
                member_id=MEMBER_ID,
                member_name=MEMBER_NAME,
                client_urls=[f"http://{self.endpoint}"],
                max_request_bytes=self.max_request_bytes,
                watch_progress_interval=self.watch_progress_interval,
            )
            listener = await _transport()(
                methods, "127.0.0.1", self.port, max_recv_message_bytes=self.max_request_bytes + 512 * 1024
            )
        except BaseException as exc:
            self._ready.set_exception(exc)
            return
        self._ready.set_result(None)
        await self._stop.wait()
        await listener.close()
        await self.store.close()

    def stop(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout=30)

    # -- helpers for tests

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 30) -> Any:
        """Run a coroutine on the server's loop (e.g. a store call) and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def etcdctl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess:
        env = dict(os.environ, ETCDCTL_API="3")
        proc = subprocess.run(
            [
                ETCDCTL,
                "--endpoints",
                self.endpoint,
                "--dial-timeout",
                "5s",
                "--command-timeout",
                "20s",
                *args,
            ],
            input=input,
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"etcdctl {' '.join(args)} failed: {proc.stderr}")
        return proc

    def etcdctl_json(self, *args: str) -> dict[str, Any]:
        return json.loads(self.etcdctl("-w", "json", *args).stdout)

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(
            self.endpoint, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        )

    def etcd3(self, scenario: str, *args: str) -> Any:
        """Run one scenario of etcd3_scenarios.py with the python etcd3 client; returns its JSON."""
        env = dict(os.environ, PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION="python")
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO)])
        proc = subprocess.run(
            [
                sys.executable,
                str(Path(__file__).with_name("etcd3_scenarios.py")),
                scenario,
                self.endpoint,
                *args,
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        if proc.returncode != 0:
            raise AssertionError(f"etcd3 scenario {scenario} failed:\n{proc.stdout}\n{proc.stderr}")
        return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    srv = ServerThread(tmp_path_factory.mktemp("etcd")).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Any]:
    """Factory for a server with non-default settings; stopped after the test."""
    started: list[ServerThread] = []

    def make(**opts: Any) -> ServerThread:
        srv = ServerThread(tmp_path / f"s{len(started)}", **opts).start()
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if shutil.which(ETCDCTL) is None:
        skip = pytest.mark.skip(reason="etcdctl not installed")
        for item in items:
            if "etcdctl" in item.name or "etcdctl" in str(item.fspath):
                item.add_marker(skip)
