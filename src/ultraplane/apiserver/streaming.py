"""pods/exec, pods/attach and pods/portforward: the upgrade request proxied to the pod's kubelet.

As kube-apiserver's connect subresources do: the API server checks the pod and the container
(kube's streamLocation texts), rewrites the query into the kubelet's (`command`, `input`, `output`,
`error`, `tty`; `port`), sends the client's upgrade request to the kubelet and, on 101, pipes the
raw bytes both ways; any other kubelet answer is handed back as it came. The WebSocket channel
protocol is spoken by the kubelet (nodes/exec.py), never parsed here. RBAC sees verb `create` for
these subresources also on a WebSocket GET (app.py's request info).
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from urllib.parse import parse_qs, quote, urlencode

from ultraplane.apiserver import errors
from ultraplane.apiserver.kubeletlogs import kubelet_location
from ultraplane.apiserver.registry import Obj, Registry
from ultraplane.apiserver.server import Request, Response, Tunnel

FORWARDED_HEADERS = ("upgrade", "connection", "sec-websocket-key", "sec-websocket-version",
                     "sec-websocket-protocol", "x-stream-protocol-version")
_FLAGS = (("stdin", "input"), ("stdout", "output"), ("stderr", "error"), ("tty", "tty"))
PIPE_CHUNK = 64 * 1024


def stream_container(pod: Obj, requested: str) -> str:
    """kube's streamLocation: the only container by default, else one the pod has."""
    spec = pod.get("spec") or {}
    name = pod["metadata"]["name"]
    if not requested:
        containers = [c.get("name", "") for c in spec.get("containers") or []]
        if len(containers) == 1:
            return containers[0]
        if not containers:
            raise errors.bad_request(f"a container name must be specified for pod {name}")
        text = f"a container name must be specified for pod {name}, choose one of: [{' '.join(containers)}]"
        inits = [c.get("name", "") for c in spec.get("initContainers") or []]
        if inits:
            text += f" or one of the init containers: [{' '.join(inits)}]"
        raise errors.bad_request(text)
    every = [c.get("name") for key in ("containers", "initContainers", "ephemeralContainers")
             for c in spec.get(key) or []]
    if requested not in every:
        raise errors.bad_request(f"container {requested} is not valid for pod {name}")
    return requested


def _truthy(values: list[str] | None) -> bool:
    return bool(values) and values[-1].lower() in ("true", "1", "t")  # type: ignore[index]


class PodStreams:
    def __init__(self, registry: Registry, client_cert: Path, client_key: Path) -> None:
        self.registry = registry
        self.pods = registry.strategies[("", "v1", "pods")]
        self.nodes = registry.strategies[("", "v1", "nodes")]
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # no kubelet CA configured: as kube, not verified
        self.ctx.check_hostname = False
        self.ctx.verify_mode = ssl.CERT_NONE
        self.ctx.load_cert_chain(str(client_cert), str(client_key))

    def install(self, handlers: dict) -> None:  # type: ignore[type-arg]
        """Serve the three subresources (the pods strategy lists them for routing and discovery)."""
        extra = tuple(s for s in ("exec", "attach", "portforward") if s not in self.pods.subresources)
        self.pods.subresources = (*self.pods.subresources, *extra)
        for sub in ("exec", "attach", "portforward"):
            handlers[("pods", sub)] = self._handler(sub)

    def _handler(self, sub: str):  # type: ignore[no-untyped-def]
        async def serve(request: Request, namespace: str, name: str, verb: str) -> Response:
            return await self.serve(sub, request, namespace, name)
        return serve

    async def serve(self, sub: str, request: Request, namespace: str, name: str) -> Response:
        if request.method not in ("GET", "POST"):
            raise errors.method_not_allowed("the server does not allow this method on the requested resource")
        pod = await self.registry.get(self.pods, namespace, name)
        query = parse_qs(request.raw_query, keep_blank_values=True)
        meta = pod["metadata"]
        where_ns, where_name = quote(meta["namespace"], safe=""), quote(meta["name"], safe="")
        params: list[tuple[str, str]] = []
        if sub == "portforward":
            path = f"/portForward/{where_ns}/{where_name}"
            params = [("port", p) for value in query.get("ports") or [] for p in value.split(",") if p]
        else:
            container = stream_container(pod, (query.get("container") or [""])[-1])
            path = f"/{sub}/{where_ns}/{where_name}/{quote(container, safe='')}"
            if sub == "exec":
                params = [("command", c) for c in query.get("command") or []]
            params += [(kubelet, "1") for ours, kubelet in _FLAGS if _truthy(query.get(ours))]
        node_name = (pod.get("spec") or {}).get("nodeName")
        if not node_name:
            raise errors.bad_request(f"pod {name} does not have a host assigned")
        upgrade = request.headers.get("connection", "").lower()
        if "upgrade" not in upgrade or not request.headers.get("upgrade"):
            raise errors.bad_request("Upgrade request required")
        try:
            node = await self.registry.get(self.nodes, "", node_name)
        except errors.ApiError:
            node = {}
        where = kubelet_location(node)
        if where is None:
            raise errors.ApiError(500, "InternalError", f'no kubelet endpoint is known for node "{node_name}"')
        if params:
            path += "?" + urlencode(params)
        return await self._connect(where, request, path)

    async def _connect(self, where: tuple[str, int], request: Request, path: str) -> Response:
        host, port = where
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=self.ctx), 10)
        except (OSError, TimeoutError) as exc:
            raise errors.ApiError(500, "InternalError", f"error dialing backend: {exc}") from exc
        head = [f"{request.method} {path} HTTP/1.1", f"Host: {host}:{port}"]
        for header in FORWARDED_HEADERS:
            for value in (request.headers.get(header) or "").split("\n"):
                if value:
                    head.append(f"{header}: {value}")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        try:
            answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError) as exc:
            writer.close()
            raise errors.ApiError(500, "InternalError", f"error reading the kubelet's answer: {exc}") from exc
        lines = answer.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = [(k.strip(), v.strip()) for k, _, v in (x.partition(":") for x in lines[1:] if x)]
        if status != 101:
            length = int(next((v for k, v in headers if k.lower() == "content-length"), "0"))
            body = await reader.readexactly(length) if length else b""
            writer.close()
            ctype = next((v for k, v in headers if k.lower() == "content-type"), "text/plain")
            return Response(status, body, content_type=ctype)

        async def pipe(tunnel: Tunnel) -> None:
            to_kubelet = asyncio.ensure_future(self._copy_in(tunnel, writer))
            try:
                while chunk := await reader.read(PIPE_CHUNK):
                    tunnel.write(chunk)
                    await tunnel.drain()
            except ConnectionError:
                pass
            finally:
                to_kubelet.cancel()
                writer.close()

        relayed = [(k, v) for k, v in headers if k.lower() not in ("content-length", "date")]
        return Response(101, headers=relayed, upgrade=pipe)

    @staticmethod
    async def _copy_in(tunnel: Tunnel, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await tunnel.reader.read(PIPE_CHUNK):
                writer.write(chunk)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()  # TLS has no half-close: the client leaving ends the kubelet's side too
