"""A small HTTP/1.1 server: httptools parses, an asyncio protocol per connection streams bodies both ways.

Request bodies reach the handler chunk by chunk with back-pressure (the socket stops being read while more
than `_HIGH_WATER` bytes wait), and responses can stream a file range, so a multi-gigabyte layer never
sits in memory. Requests on one connection are answered in order (HTTP/1.1 keep-alive and pipelining).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import BinaryIO
from urllib.parse import parse_qs

import httptools

log = logging.getLogger("ultraplane.registry.http")

_HIGH_WATER = 1 << 20
_LOW_WATER = 256 << 10
_FILE_CHUNK = 256 << 10
# After an error answer, an unread request body up to this size is drained to keep the connection; larger
# ones close it instead of reading data nobody wants.
_DRAIN_LIMIT = 1 << 20
# Bounds on what a request head may make the server buffer (httptools itself accumulates without limit).
_MAX_URL = 8 << 10
# A connection that sends nothing for this long while no request is being answered is closed, so idle or
# stalled clients (a half-sent head, an abandoned upload body) cannot hold sockets and buffers forever.
IDLE_TIMEOUT = 120.0
_MAX_HEADER_BYTES = 64 << 10


class _HeadTooLarge(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class BodyStream:
    """The request body as it arrives."""

    def __init__(self, protocol: HttpProtocol, expected: int | None) -> None:
        self._protocol = protocol
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._ready = asyncio.Event()
        self.expected = expected  # Content-Length, or None for chunked transfer encoding
        self.received = 0
        self.complete = False
        self.failed = False

    def feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        self.received += len(chunk)
        self._ready.set()
        if self._buffered > _HIGH_WATER:
            self._protocol.pause_reading()

    def finish(self, failed: bool = False) -> None:
        self.complete = True
        self.failed = failed
        self._ready.set()

    async def next_chunk(self) -> bytes | None:
        """The next piece of the body, or None at its end; raises ConnectionError if the client went away."""
        while not self._chunks:
            if self.complete:
                if self.failed:
                    raise ConnectionError("client closed the connection before the body was complete")
                return None
            self._ready.clear()
            await self._ready.wait()
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._buffered < _LOW_WATER:
            self._protocol.resume_reading()
        return chunk

    async def read_all(self, limit: int) -> bytes | None:
        """The whole body, or None if it is longer than `limit`."""
        parts = []
        size = 0
        while (chunk := await self.next_chunk()) is not None:
            size += len(chunk)
            if size > limit:
                return None
            parts.append(chunk)
        return b"".join(parts)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: BodyStream
    peer: str
    tls: bool

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None


@dataclass
class FileRange:
    file: BinaryIO
    offset: int
    length: int


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    file: FileRange | None = None  # streamed instead of `body` when set


Handler = Callable[[Request], Awaitable[Response]]


class HttpProtocol(asyncio.Protocol):
    def __init__(self, handler: Handler, tls: bool) -> None:
        self._handler = handler
        self._tls = tls
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: dict[str, str] = {}
        self._current: Request | None = None
        self._pending: deque[tuple[Request, bool]] = deque()
        self._wakeup = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._reading_paused = False
        self._closed = False
        self._worker: asyncio.Task[None] | None = None
        self._peer = ""
        self._header_bytes = 0
        self._answering = False
        self._last_activity = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()

    # -- asyncio.Protocol -----------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses
        peer = transport.get_extra_info("peername")
        self._peer = peer[0] if isinstance(peer, tuple) else str(peer or "")
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._worker = asyncio.ensure_future(self._serve())
        self._last_activity = self._loop.time()
        self._arm_idle_timer(IDLE_TIMEOUT)

    def _arm_idle_timer(self, delay: float) -> None:
        self._idle_timer = self._loop.call_later(delay, self._check_idle)

    def _check_idle(self) -> None:
        if self._closed:
            return
        now = self._loop.time()
        quiet = now - self._last_activity
        if self._answering or quiet < IDLE_TIMEOUT:
            self._arm_idle_timer(max(IDLE_TIMEOUT - quiet, 1.0) if not self._answering else IDLE_TIMEOUT)
            return
        log.debug("closing connection from %s after %.0fs without traffic", self._peer, quiet)
        if self._transport is not None:
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        self._last_activity = self._loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            self._fail_and_close(cause.status if isinstance(cause, _HeadTooLarge) else 400)
        except (httptools.HttpParserUpgrade, httptools.HttpParserError):
            self._fail_and_close(400)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        if self._current is not None and not self._current.body.complete:
            self._current.body.finish(failed=True)
        for request, _ in self._pending:
            request.body.finish(failed=True)
        self._writable.set()
        self._wakeup.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def pause_reading(self) -> None:
        if not self._reading_paused and self._transport is not None and not self._closed:
            self._reading_paused = True
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self._transport is not None and not self._closed:
            self._reading_paused = False
            self._transport.resume_reading()

    # -- httptools callbacks --------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._header_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > _MAX_URL:
            raise _HeadTooLarge(414)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > _MAX_HEADER_BYTES:
            raise _HeadTooLarge(431)
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        previous = self._headers.get(key)
        self._headers[key] = text if previous is None else f"{previous}, {text}"

    def on_headers_complete(self) -> None:
        parsed = httptools.parse_url(self._url)
        path = parsed.path.decode("latin-1")
        query = parse_qs(parsed.query.decode("latin-1"), keep_blank_values=True) if parsed.query else {}
        length = self._headers.get("content-length")
        expected = int(length) if length and length.isdigit() else None
        request = Request(self._parser.get_method().decode("ascii"), path, query, self._headers,
                          BodyStream(self, expected), self._peer, self._tls)
        if self._headers.get("expect", "").lower() == "100-continue" and self._transport is not None:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self._current = request
        self._pending.append((request, self._parser.should_keep_alive()))
        self._wakeup.set()

    def on_body(self, body: bytes) -> None:
        if self._current is not None:
            self._current.body.feed(body)

    def on_message_complete(self) -> None:
        if self._current is not None:
            self._current.body.finish()

    # -- serving --------------------------------------------------------------------------------------------

    async def _serve(self) -> None:
        try:
            while not self._closed:
                if not self._pending:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                request, keep_alive = self._pending.popleft()
                try:
                    response = await self._handler(request)
                except ConnectionError:
                    break
                except Exception:
                    log.exception("%s %s failed", request.method, request.path)
                    response = Response(500, [("Content-Type", "text/plain")], b"internal server error\n")
                if not request.body.complete:
                    keep_alive = keep_alive and await self._drain(request)
                self._answering = True  # a slow reader of a large blob is not idle
                try:
                    await self._write(request, response, keep_alive)
                finally:
                    self._answering = False
                    self._last_activity = self._loop.time()
                if not keep_alive:
                    break
        finally:
            if self._transport is not None and not self._transport.is_closing():
                self._transport.close()

    async def _drain(self, request: Request) -> bool:
        body = request.body
        if body.expected is None or body.expected - body.received > _DRAIN_LIMIT:
            return False
        try:
            while await body.next_chunk() is not None:
                pass
        except ConnectionError:
            return False
        return True

    async def _write(self, request: Request, response: Response, keep_alive: bool) -> None:
        transport = self._transport
        if transport is None or self._closed:
            return
        length = response.file.length if response.file is not None else len(response.body)
        reason = HTTPStatus(response.status).phrase if response.status in HTTPStatus._value2member_map_ else ""
        head = [f"HTTP/1.1 {response.status} {reason}\r\n"]
        head.extend(f"{name}: {value}\r\n" for name, value in response.headers)
        head.append(f"Content-Length: {length}\r\n")
        if not keep_alive:
            head.append("Connection: close\r\n")
        head.append("\r\n")
        encoded_head = "".join(head).encode("latin-1")
        if request.method == "HEAD":
            transport.write(encoded_head)
            if response.file is not None:
                response.file.file.close()
            return
        if response.file is None:
            # One write per response: a separate small write for the body would wait on the peer's delayed ACK.
            transport.write(encoded_head + response.body)
            return
        transport.write(encoded_head)
        source = response.file
        try:
            source.file.seek(source.offset)
            remaining = source.length
            while remaining > 0 and not self._closed:
                chunk = source.file.read(min(_FILE_CHUNK, remaining))
                if not chunk:
                    break
                remaining -= len(chunk)
                transport.write(chunk)
                if not self._writable.is_set():
                    await self._writable.wait()
        finally:
            source.file.close()

    def _fail_and_close(self, status: int) -> None:
        if self._transport is not None and not self._closed:
            self._transport.write(f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Length: 0\r\n"
                                  "Connection: close\r\n\r\n".encode())
            self._transport.close()
        self._closed = True
        self._wakeup.set()


async def serve_http(handler: Handler, host: str, port: int, ssl_context: object | None) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    tls = ssl_context is not None
    return await loop.create_server(lambda: HttpProtocol(handler, tls), host, port,
                                    ssl=ssl_context, reuse_address=True, backlog=1024)  # type: ignore[arg-type]
