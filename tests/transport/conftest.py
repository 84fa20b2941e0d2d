"""Fixtures: an echo service served by serve_h2 / serve_grpcio on a loop in a background thread."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

sys.path.insert(0, str(Path(__file__).parent))  # the generated transport_echo_pb2 modules
if not any(Path(entry, "ultraplane").is_dir() for entry in sys.path if entry):
    sys.path.insert(0, str(Path(__file__).parents[2] / "src"))

import transport_echo_pb2 as pb  # noqa: E402

from ultraplane.etcd.grpcio_server import serve_grpcio  # noqa: E402
from ultraplane.etcd.h2server import serve_h2  # noqa: E402
from ultraplane.etcd.rpc import CallContext, Method, RpcError  # noqa: E402

MAX_RECV = 4 * 1024 * 1024


class EchoService:
    """Handlers whose behaviour each request chooses; records cancellations for the tests."""

    def __init__(self) -> None:
        self.blocked = threading.Event()  # a blocking handler is waiting
        self.cancelled = threading.Event()  # ... and was then cancelled

    async def _block(self) -> None:
        self.blocked.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    @staticmethod
    def _maybe_fail(request: pb.EchoRequest) -> None:
        if request.fail_code == -1:
            raise ValueError(f"handler blew up: {request.fail_message}")
        if request.fail_code:
            raise RpcError(request.fail_code, request.fail_message)

    async def unary(self, request: pb.EchoRequest, ctx: CallContext) -> pb.EchoReply:
        if request.sleep_ms:
            await asyncio.sleep(request.sleep_ms / 1000)
        if request.block:
            await self._block()
        self._maybe_fail(request)
        return pb.EchoReply(
            text=request.text,
            payload=b"p" * request.size,
            metadata=ctx.metadata,
            peer_cn=ctx.peer_common_name or "",
            peer=ctx.peer,
            blob_size=len(request.blob),
        )

    async def server_stream(self, request: pb.EchoRequest, ctx: CallContext) -> Any:
        for index in range(request.repeat):
            if request.sleep_ms:
                await asyncio.sleep(request.sleep_ms / 1000)
            yield pb.EchoReply(text=request.text, index=index, payload=b"s" * request.size)
        if request.block:
            await self._block()
        self._maybe_fail(request)

    async def bidi(self, requests: Any, ctx: CallContext) -> Any:
        index = 0
        async for request in requests:
            self._maybe_fail(request)
            yield pb.EchoReply(text=request.text, index=index, payload=b"b" * request.size)
            index += 1
        yield pb.EchoReply(text="end", index=index)

    def methods(self) -> dict[str, Method]:
        table = [
            Method("/uptest.Echo/Unary", pb.EchoRequest, "unary", self.unary),
            Method("/uptest.Echo/ServerStream", pb.EchoRequest, "server_stream", self.server_stream),
            Method("/uptest.Echo/Bidi", pb.EchoRequest, "bidi", self.bidi),
        ]
        return {method.path: method for method in table}


class LoopThread:
    """An event loop running in a daemon thread, so tests can use blocking clients."""

    def __init__(self, use_uvloop: bool = True) -> None:
        self.loop = uvloop.new_event_loop() if use_uvloop else asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 30) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class RunningServer:
    port: int
    service: EchoService
    loop: LoopThread
    server: Any

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


def _start(kind: str, use_uvloop: bool | None = None, **kwargs: Any) -> RunningServer:
    service = EchoService()
    # grpcio's asyncio server is run on the stock loop, the lean transport on uvloop by default
    loop = LoopThread(use_uvloop=kind == "h2" if use_uvloop is None else use_uvloop)
    if kind == "h2":
        server = loop.run(
            serve_h2(service.methods(), "127.0.0.1", 0, max_recv_message_bytes=MAX_RECV, **kwargs)
        )
    else:
        server = loop.run(
            serve_grpcio(service.methods(), "127.0.0.1", 0, max_recv_message_bytes=MAX_RECV, **kwargs)
        )
    return RunningServer(server.port, service, loop, server)


def _stop(running: RunningServer) -> None:
    running.loop.run(running.server.close(1.0))
    running.loop.stop()


@pytest.fixture
def h2_server() -> Iterator[RunningServer]:
    running = _start("h2")
    yield running
    _stop(running)


@pytest.fixture(params=["h2", "grpcio"])
def any_server(request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    running = _start(request.param)
    yield running
    _stop(running)


@pytest.fixture
def start_server() -> Iterator[Callable[..., RunningServer]]:
    started: list[RunningServer] = []

    def start(kind: str = "h2", **kwargs: Any) -> RunningServer:
        running = _start(kind, **kwargs)
        started.append(running)
        return running

    yield start
    for running in started:
        _stop(running)


# --- TLS material -------------------------------------------------------------------------


@dataclass
class Pki:
    ca_pem: bytes
    server_cert_pem: bytes
    server_key_pem: bytes
    client_cert_pem: bytes
    client_key_pem: bytes
    directory: Path

    def server_context(self, verify: ssl.VerifyMode = ssl.CERT_OPTIONAL) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.directory / "server.pem", self.directory / "server.key")
        context.load_verify_locations(cadata=self.ca_pem.decode())
        context.verify_mode = verify
        return context


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _certificate(
    common_name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer or subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca_key = _key()
    ca_cert = _certificate("ultraplane test CA", ca_key, None, ca_key, ca=True)
    server_key = _key()
    server_cert = _certificate("server", server_key, ca_cert.subject, ca_key, server=True)
    client_key = _key()
    client_cert = _certificate("alice", client_key, ca_cert.subject, ca_key)
    pem = serialization.Encoding.PEM
    result = Pki(
        ca_pem=ca_cert.public_bytes(pem),
        server_cert_pem=server_cert.public_bytes(pem),
        server_key_pem=_key_pem(server_key),
        client_cert_pem=client_cert.public_bytes(pem),
        client_key_pem=_key_pem(client_key),
        directory=directory,
    )
    (directory / "server.pem").write_bytes(result.server_cert_pem)
    (directory / "server.key").write_bytes(result.server_key_pem)
    (directory / "ca.pem").write_bytes(result.ca_pem)
    return result
