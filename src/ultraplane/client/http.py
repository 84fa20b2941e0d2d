"""KubeClient: JSON over HTTP/1.1 keep-alive connections to a kube-apiserver.

A pool of persistent TLS connections serves one request at a time each (HTTP/1.1 has no
multiplexing), so concurrency is bounded by `max_connections`. Watches take a connection of their own
for their lifetime. Errors come back as `ApiError` holding the server's Status object, so callers
branch on `err.code` (404, 409, 410, ...) exactly as client-go users branch on StatusError.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote, urlsplit

import orjson

from ultraplane import __version__
from ultraplane.client import kubeconfig

Obj = dict[str, Any]
USER_AGENT = f"ultraplane/{__version__}"
STRATEGIC_MERGE = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY = "application/apply-patch+yaml"


class ApiError(Exception):
    """A non-2xx answer from the API server (or a watch ERROR event) with its Status object."""

    def __init__(self, status: Obj | None, code: int | None = None) -> None:
        self.status: Obj = status or {}
        self.code: int = int(self.status.get("code") or code or 0)
        self.reason: str = self.status.get("reason", "")
        self.message: str = self.status.get("message", "") or f"HTTP {self.code}"
        super().__init__(f"{self.code} {self.reason}: {self.message}")


class _Connection:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        self.writer.close()


class _Response:
    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


def _query(params: dict[str, Any] | None) -> str:
    if not params:
        return ""
    parts = []
    for key, value in params.items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        parts.append(f"{quote(key, safe='')}={quote(str(value), safe='')}")
    return "?" + "&".join(parts) if parts else ""


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return status, headers


async def _read_chunk(reader: asyncio.StreamReader) -> bytes:
    """One chunk of a chunked body; b"" at the terminating chunk."""
    size_line = await reader.readuntil(b"\r\n")
    size = int(size_line.split(b";", 1)[0], 16)
    if size == 0:
        await reader.readuntil(b"\r\n")  # no trailers from kube; skip the final CRLF
        return b""
    data = await reader.readexactly(size + 2)
    return data[:-2]


class KubeClient:
    def __init__(self, server: str, ssl_context: ssl.SSLContext | None = None, token: str | None = None,
                 max_connections: int = 16, timeout: float = 60.0) -> None:
        url = urlsplit(server)
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.ssl_context = ssl_context if url.scheme == "https" else None
        self.timeout = timeout
        self.idle: list[_Connection] = []
        self.slots = asyncio.Semaphore(max_connections)
        self.watches: set[_Connection] = set()
        host_header = f"{self.host}:{self.port}" if ":" not in self.host else f"[{self.host}]:{self.port}"
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        # Every request shares these header lines; build them once.
        self._common = f"Host: {host_header}\r\nUser-Agent: {USER_AGENT}\r\n{auth}".encode()
        self.closed = False

    @classmethod
    async def from_kubeconfig(cls, path: str | os.PathLike[str], context: str | None = None,
                              **kwargs: Any) -> KubeClient:
        creds = await asyncio.to_thread(kubeconfig.load, path, context)
        return cls(creds.server, creds.ssl_context, creds.token, **kwargs)

    @classmethod
    def from_kubeconfig_data(cls, config: dict[str, Any], context: str | None = None, **kwargs: Any) -> KubeClient:
        """From a parsed, self-contained kubeconfig (e.g. one kept in a Secret)."""
        creds = kubeconfig.from_config(config, context)
        return cls(creds.server, creds.ssl_context, creds.token, **kwargs)

    # ------------------------------------------------------------------ verbs
    async def get(self, path: str, params: dict[str, Any] | None = None) -> Obj:
        return await self.request("GET", path, params)

    async def list(self, path: str, params: dict[str, Any] | None = None) -> Obj:
        """A whole collection, following `continue` tokens when the caller asked for pages."""
        listed = await self.request("GET", path, params)
        token = (listed.get("metadata") or {}).get("continue")
        while token:
            page = await self.request("GET", path, {**(params or {}), "continue": token})
            listed.setdefault("items", []).extend(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue")
            listed["metadata"] = page.get("metadata") or {}
        return listed

    async def create(self, path: str, body: Obj, params: dict[str, Any] | None = None) -> Obj:
        return await self.request("POST", path, params, body)

    async def update(self, path: str, body: Obj, params: dict[str, Any] | None = None) -> Obj:
        return await self.request("PUT", path, params, body)

    async def patch(self, path: str, body: Obj | list[Any], params: dict[str, Any] | None = None,
                    content_type: str = STRATEGIC_MERGE) -> Obj:
        return await self.request("PATCH", path, params, body, content_type)

    async def apply(self, path: str, body: Obj, field_manager: str, force: bool = False) -> Obj:
        return await self.request("PATCH", path, {"fieldManager": field_manager, "force": force or None},
                                  body, APPLY)

    async def delete(self, path: str, body: Obj | None = None, params: dict[str, Any] | None = None) -> Obj:
        return await self.request("DELETE", path, params, body)

    # ------------------------------------------------------------------ transport
    async def _connect(self) -> _Connection:
        reader, writer = await asyncio.open_connection(
            self.host, self.port, ssl=self.ssl_context, limit=1 << 22,
            server_hostname=self.host if self.ssl_context else None)
        return _Connection(reader, writer)

    def _head(self, method: str, target: str, body: bytes | None, content_type: str) -> bytes:
        head = f"{method} {target} HTTP/1.1\r\n".encode() + self._common + b"Accept: application/json\r\n"
        if body is not None:
            head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n".encode()
        return head + b"\r\n"

    async def request(self, method: str, path: str, params: dict[str, Any] | None = None,
                      body: Obj | list[Any] | None = None, content_type: str = "application/json") -> Obj:
        payload = orjson.dumps(body) if body is not None else None
        response = await self.raw(method, path + _query(params), payload, content_type)
        data: Obj = orjson.loads(response.body) if response.body else {}
        if response.status >= 300:
            if data.get("kind") != "Status":
                data = {"kind": "Status", "code": response.status, "message": response.body.decode(errors="replace")}
            raise ApiError(data, response.status)
        return data

    async def raw(self, method: str, target: str, body: bytes | None = None,
                  content_type: str = "application/json") -> _Response:
        if self.closed:
            raise RuntimeError("client is closed")
        message = self._head(method, target, body, content_type) + (body or b"")
        async with self.slots:
            for attempt in range(2):
                reused = bool(self.idle)
                conn = self.idle.pop() if reused else await self._connect()
                try:
                    conn.writer.write(message)
                    # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
                    # arrives as the read completes, and a controller shutting down would hang
                    async with asyncio.timeout(self.timeout):
                        response = await self._read_response(conn)
                except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
                    conn.close()
                    # A pooled connection the server closed while idle fails before any answer: retry once
                    # on a fresh one. A fresh connection failing is a real error.
                    if reused and attempt == 0:
                        continue
                    raise ConnectionError(f"{method} {target}: {exc}") from exc
                except BaseException:
                    conn.close()
                    raise
                if response.headers.get("connection", "").lower() == "close":
                    conn.close()
                else:
                    self.idle.append(conn)
                return response
        raise AssertionError("unreachable")

    async def _read_response(self, conn: _Connection) -> _Response:
        status, headers = await _read_head(conn.reader)
        if headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while chunk := await _read_chunk(conn.reader):
                parts.append(chunk)
            body = b"".join(parts)
        else:
            body = await conn.reader.readexactly(int(headers.get("content-length", "0")))
        return _Response(status, headers, body)

    async def watch(self, path: str, params: dict[str, Any] | None = None) -> AsyncIterator[Obj]:
        """Watch events ({"type", "object"}) until the server ends the stream.

        A non-200 answer raises ApiError (e.g. 410 when the resourceVersion is too old); ERROR events
        are yielded as they come, for the caller to turn into ApiError(event["object"]).
        """
        conn = await self._connect()
        self.watches.add(conn)
        try:
            conn.writer.write(self._head("GET", path + _query({**(params or {}), "watch": "true"}), None, ""))
            status, headers = await _read_head(conn.reader)
            if status != 200:
                if headers.get("transfer-encoding", "").lower() == "chunked":
                    body = b"".join([c async for c in _chunks(conn.reader)])
                else:
                    body = await conn.reader.readexactly(int(headers.get("content-length", "0")))
                data = orjson.loads(body) if body[:1] == b"{" else {"message": body.decode(errors="replace")}
                raise ApiError(data, status)
            pending = b""
            async for chunk in _chunks(conn.reader):
                if b"\n" not in chunk:
                    pending += chunk  # an event split over chunks
                    continue
                # one split per chunk: a chunk often carries many events
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    if line.strip():
                        yield orjson.loads(line)
            if pending.strip():
                yield orjson.loads(pending)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            return  # the stream ended: the caller re-watches from its last resourceVersion
        finally:
            self.watches.discard(conn)
            conn.close()

    async def close(self) -> None:
        self.closed = True
        for conn in [*self.idle, *self.watches]:
            conn.close()
        self.idle.clear()
        self.watches.clear()


async def _chunks(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    while chunk := await _read_chunk(reader):
        yield chunk
