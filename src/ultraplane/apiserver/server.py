"""A lean HTTP/1.1 server on asyncio for the API server.

Our own server rather than uvicorn: the API server needs the TLS peer certificate of every request
(client-certificate authentication), which stock ASGI servers do not pass on, and a small protocol
class avoids a framework's per-request cost. It speaks HTTP/1.1 with keep-alive, Content-Length and
chunked request bodies, and streams chunked responses (watch). kubectl and client-go fall back to
HTTP/1.1 when ALPN does not offer h2.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, unquote

log = logging.getLogger("ultraplane.apiserver.http")

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 3 * 1024 * 1024  # kube-apiserver's MaxRequestBodyBytes
_REASONS = {s.value: s.phrase for s in HTTPStatus}


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    peer_cert: dict[str, Any] | None  # ssl.SSLObject.getpeercert() of a verified client certificate
    remote: str = ""
    raw_query: str = ""  # the query string as sent: repeated parameters (exec's `command`) live here


class Tunnel:
    """The raw byte stream of a connection after a 101 Switching Protocols answer (WebSocket, SPDY)."""

    def __init__(self, protocol: HttpProtocol) -> None:
        self.protocol = protocol
        self.reader = asyncio.StreamReader(limit=2 ** 20)

    def write(self, data: bytes) -> None:
        if not self.protocol.closed and self.protocol.transport is not None:
            self.protocol.transport.write(data)

    async def drain(self) -> None:
        if not self.protocol.drained.is_set():
            await self.protocol.drained.wait()

    def close(self) -> None:
        self.protocol.close()


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)
    stream: AsyncIterator[bytes] | None = None  # chunked body (watch)
    # after a 101 answer: the connection is handed to this coroutine (pods/exec, attach, portforward)
    upgrade: Callable[[Tunnel], Awaitable[None]] | None = None


Handler = Callable[[Request], Awaitable[Response]]


class HttpProtocol(asyncio.Protocol):
    __slots__ = ("handler", "transport", "buf", "busy", "peer_cert", "remote", "closed", "task", "drained",
                 "continued", "discard", "pending_failure", "tunnel")

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.busy = False
        self.peer_cert: dict[str, Any] | None = None
        self.remote = ""
        self.closed = False
        self.task: asyncio.Task[None] | None = None
        self.drained: asyncio.Event = asyncio.Event()
        self.drained.set()
        self.continued = False
        self.discard = 0
        self.pending_failure: tuple[int, bytes] | None = None
        self.tunnel: Tunnel | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sslobj = transport.get_extra_info("ssl_object")
        if sslobj is not None:
            self.peer_cert = sslobj.getpeercert() or None
        peer = transport.get_extra_info("peername")
        self.remote = f"{peer[0]}:{peer[1]}" if peer else ""

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.drained.set()
        if self.tunnel is not None:
            self.tunnel.reader.feed_eof()
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def pause_writing(self) -> None:
        self.drained.clear()

    def resume_writing(self) -> None:
        self.drained.set()

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.reader.feed_data(data)
            return
        if self.discard > 0:
            self.discard -= len(data)
            if self.discard <= 0 and self.pending_failure is not None:
                self.fail(*self.pending_failure)
            return
        self.buf += data
        if not self.busy:
            self.next_request()

    def next_request(self) -> None:
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEADER_BYTES:
                self.fail(431)
            return
        head = bytes(buf[:end]).decode("latin-1")
        lines = head.split("\r\n")
        try:
            method, target, _version = lines[0].split(" ", 2)
        except ValueError:
            self.fail(400)
            return
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            key = name.strip().lower()
            if key in headers:  # repeated lines (Impersonate-Group) are kept, newline-joined: no value holds one
                headers[key] += "\n" + value.strip()
            else:
                headers[key] = value.strip()
        body_start = end + 4
        if headers.get("transfer-encoding", "").lower() == "chunked":
            parsed = _dechunk(buf, body_start)
            if parsed is None:
                return
            body, consumed = parsed
        else:
            length = int(headers.get("content-length") or 0)
            if length > MAX_BODY_BYTES:
                # read and drop the body first: closing on a client still sending would reset the
                # connection before it reads the answer
                self.discard = length - (len(buf) - body_start)
                self.pending_failure = (413, b'{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",'
                                        b'"message":"Request entity too large: limit is %d","reason":'
                                        b'"RequestEntityTooLarge","code":413}' % MAX_BODY_BYTES)
                buf.clear()
                self.busy = True
                if self.discard <= 0:
                    self.fail(*self.pending_failure)
                return
            if len(buf) < body_start + length:
                if headers.get("expect", "").lower() == "100-continue" and self.transport is not None \
                        and not self.continued:
                    self.continued = True
                    self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                return
            body = bytes(buf[body_start: body_start + length])
            consumed = body_start + length
        del buf[:consumed]
        self.continued = False
        path, _, query_string = target.partition("?")
        query = dict(parse_qsl(query_string, keep_blank_values=True)) if query_string else {}
        request = Request(method, unquote(path), query, headers, body, self.peer_cert, self.remote, query_string)
        self.busy = True
        self.task = asyncio.get_running_loop().create_task(self.run(request))

    async def run(self, request: Request) -> None:
        try:
            try:
                response = await self.handler(request)
            except Exception:
                log.exception("handler failed for %s %s", request.method, request.path)
                response = Response(500, b'{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",'
                                    b'"message":"Internal error occurred","reason":"InternalError","code":500}')
            if response.upgrade is not None and response.status == 101:
                await self.switch(response)
                return
            keep_alive = request.headers.get("connection", "").lower() != "close"
            await self.send(response, keep_alive)
            if not keep_alive:
                self.close()
                return
        except asyncio.CancelledError:
            return
        except (ConnectionError, RuntimeError):
            self.close()
            return
        self.busy = False
        self.task = None
        if self.buf and not self.closed:
            self.next_request()

    async def send(self, response: Response, keep_alive: bool) -> None:
        transport = self.transport
        assert transport is not None
        head = [f"HTTP/1.1 {response.status} {_REASONS.get(response.status, '')}\r\n"
                f"Content-Type: {response.content_type}\r\n"]
        for name, value in response.headers:
            head.append(f"{name}: {value}\r\n")
        if response.stream is None:
            head.append(f"Content-Length: {len(response.body)}\r\n")
            if not keep_alive:
                head.append("Connection: close\r\n")
            head.append("\r\n")
            transport.write("".join(head).encode("latin-1") + response.body)
            return
        head.append("Transfer-Encoding: chunked\r\n\r\n")
        transport.write("".join(head).encode("latin-1"))
        stream = response.stream
        try:
            async for chunk in stream:
                if self.closed:
                    break
                if chunk:
                    transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                    if not self.drained.is_set():
                        await self.drained.wait()
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        if not self.closed:
            transport.write(b"0\r\n\r\n")

    async def switch(self, response: Response) -> None:
        """Answer 101 and give the connection (and any bytes already read) to the upgrade handler."""
        assert self.transport is not None and response.upgrade is not None
        head = ["HTTP/1.1 101 Switching Protocols\r\n"]
        head.extend(f"{name}: {value}\r\n" for name, value in response.headers)
        self.transport.write(("".join(head) + "\r\n").encode("latin-1"))
        tunnel = self.tunnel = Tunnel(self)
        if self.buf:
            tunnel.reader.feed_data(bytes(self.buf))
            self.buf.clear()
        try:
            await response.upgrade(tunnel)
        finally:
            self.close()

    def fail(self, status: int, body: bytes = b"") -> None:
        """Answer a request we will not read, and close: the rest of its bytes cannot be framed."""
        if self.transport is not None:
            self.transport.write(f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\nContent-Type: application/json\r\n"
                                 f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        self.close()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()


def _dechunk(buf: bytearray, pos: int) -> tuple[bytes, int] | None:
    out = bytearray()
    while True:
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size = int(bytes(buf[pos:line_end]).split(b";", 1)[0], 16)
        pos = line_end + 2
        if size == 0:
            trailer_end = buf.find(b"\r\n", pos)
            if trailer_end < 0:
                return None
            return bytes(out), trailer_end + 2
        if len(buf) < pos + size + 2:
            return None
        out += buf[pos: pos + size]
        pos += size + 2


async def serve_http(handler: Handler, host: str, port: int, ssl_context: ssl.SSLContext | None) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: HttpProtocol(handler), host, port, ssl=ssl_context, backlog=1024,
                                    reuse_address=True)
