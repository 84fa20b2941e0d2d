"""pods/log from the kubelet: proxy to the node's `daemonEndpoints.kubeletEndpoint.Port`.

As kube-apiserver does, the API server connects to the kubelet with its kubelet-client certificate
and, without a configured kubelet CA, does not verify the kubelet's serving certificate. The host is
the node's `ultraplane.io/kubelet-address` annotation (simulated nodes share one listener on the
simulator's host), else its InternalIP. Nodes without a kubelet port fall back to the in-memory
source, which whatever runs those containers writes into.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote, urlencode

from ultraplane.apiserver import errors
from ultraplane.apiserver.podlogs import LogOptions, LogSource, LogUnavailable, kubelet_refusal
from ultraplane.apiserver.registry import Obj, Registry

KUBELET_ADDRESS_ANNOTATION = "ultraplane.io/kubelet-address"


def kubelet_location(node: Obj) -> tuple[str, int] | None:
    status = node.get("status") or {}
    port = int(((status.get("daemonEndpoints") or {}).get("kubeletEndpoint") or {}).get("Port") or 0)
    if not port:
        return None
    host = ((node.get("metadata") or {}).get("annotations") or {}).get(KUBELET_ADDRESS_ANNOTATION)
    if not host:
        host = next((a.get("address") for a in status.get("addresses") or [] if a.get("type") == "InternalIP"), "")
    return (host, port) if host else None


class KubeletLogSource:
    def __init__(self, registry: Registry, fallback: LogSource, client_cert: Path, client_key: Path) -> None:
        self.registry = registry
        self.fallback = fallback
        self.nodes = registry.strategies[("", "v1", "nodes")]
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.ctx.check_hostname = False
        self.ctx.verify_mode = ssl.CERT_NONE
        self.ctx.load_cert_chain(str(client_cert), str(client_key))

    async def open(self, pod: Obj, container: str, opts: LogOptions) -> AsyncIterator[bytes]:
        try:
            node = await self.registry.get(self.nodes, "", pod["spec"]["nodeName"])
        except errors.ApiError:
            node = {}
        where = kubelet_location(node)
        if where is None:
            return await self.fallback.open(pod, container, opts)
        refusal = kubelet_refusal(pod, container, opts.previous)
        if refusal is not None:
            raise LogUnavailable(refusal)
        query: dict[str, str] = {}
        if opts.previous:  # the kubelet answers from the container's last terminated instance
            query["previous"] = "true"
        if opts.follow:
            query["follow"] = "true"
        if opts.timestamps:
            query["timestamps"] = "true"
        if opts.tail_lines is not None:
            query["tailLines"] = str(opts.tail_lines)
        if opts.limit_bytes is not None:
            query["limitBytes"] = str(opts.limit_bytes)
        if opts.since is not None:
            query["sinceTime"] = opts.since.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        meta = pod["metadata"]
        path = "/containerLogs/" + "/".join(quote(x, safe="") for x in (meta["namespace"], meta["name"], container))
        if query:
            path += "?" + urlencode(query)
        return await self._get(where, path)

    async def _get(self, where: tuple[str, int], path: str) -> AsyncIterator[bytes]:
        host, port = where
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=self.ctx), 10)
        except (OSError, TimeoutError) as exc:
            raise errors.ApiError(500, "InternalError", f"Get \"https://{host}:{port}{path}\": {exc}") from exc
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        code = int(lines[0].split(" ", 2)[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
        chunked = headers.get("transfer-encoding", "").lower() == "chunked"
        if code != 200:
            body = await self._read_all(reader, headers, chunked)
            writer.close()
            raise LogUnavailable(body.decode(errors="replace").strip())
        return self._body(reader, writer, headers, chunked)

    @staticmethod
    async def _read_all(reader: asyncio.StreamReader, headers: dict[str, str], chunked: bool) -> bytes:
        if chunked:
            return b"".join([c async for c in KubeletLogSource._chunks(reader)])
        return await reader.readexactly(int(headers.get("content-length", "0")))

    @staticmethod
    async def _chunks(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
            if size == 0:
                return
            data = await reader.readexactly(size + 2)
            yield data[:-2]

    async def _body(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, headers: dict[str, str],
                    chunked: bool) -> AsyncIterator[bytes]:
        try:
            if chunked:
                async for chunk in self._chunks(reader):
                    yield chunk
            else:
                yield await reader.readexactly(int(headers.get("content-length", "0")))
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()
