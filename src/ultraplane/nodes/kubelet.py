"""The simulated kubelets' HTTPS endpoint: container logs for the API server, and an admin API.

One listener serves every node of the process; each Node's `daemonEndpoints.kubeletEndpoint.Port`
points at it and the `ultraplane.io/kubelet-address` annotation names its host. Like a kubelet it
serves a self-signed certificate and authenticates callers by client certificate, here one signed by
the cluster CA of the kubeconfig (the API server's kubelet-client certificate, or an admin's).

  GET  /containerLogs/{namespace}/{pod}/{container}?follow&previous&tailLines&timestamps&limitBytes&sinceSeconds
  GET|POST /exec/{namespace}/{pod}/{container}?command&input&output&error&tty   WebSocket (nodes/exec.py)
  GET|POST /attach/{namespace}/{pod}/{container}?input&output&error&tty
  GET|POST /portForward/{namespace}/{pod}?port
  GET  /healthz
  GET  /admin/summary                    the simulator's counters
  GET  /admin/nodes                      the counters and every node's state
  POST /admin/nodes/{name}/kill          stop the node's kubelet (no lease, no status, no pod work)
  POST /admin/nodes/{name}/revive        start it again
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs

import orjson

from ultraplane import pki
from ultraplane.apiserver.podlogs import format_timestamp
from ultraplane.apiserver.server import Request, Response, serve_http
from ultraplane.nodes.exec import ContainerStreams, Refusal
from ultraplane.nodes.sim import NodeSimulator, PodState
from ultraplane.nodes.startup import LOG_INTERVAL, log_lines


def _parse(stamp: str) -> dt.datetime:
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _text(status: int, message: str) -> Response:
    return Response(status, message.encode(), content_type="text/plain")


class KubeletServer:
    def __init__(self, sim: NodeSimulator, host: str, port: int, client_ca: bytes | None) -> None:
        self.sim = sim
        self.host = host
        self.port = port
        self.client_ca = client_ca
        self.listener: asyncio.Server | None = None
        self.streams = ContainerStreams(self._pod)

    def _pod(self, namespace: str, name: str) -> PodState | None:
        state = self.sim.by_key.get((namespace, name))
        return state if state is not None and state.node.alive else None

    def _context(self) -> ssl.SSLContext:
        directory = Path(tempfile.mkdtemp(prefix="ultraplane-kubelet-"))
        ca = pki.ensure_ca(directory)  # throwaway: the kubelet's certificate is self-signed in spirit
        serving = pki.issue(ca, directory, "kubelet", "ultraplane-kubelet",
                            server_hosts=[self.host, "127.0.0.1", "localhost"])
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(serving.cert), str(serving.key))
        if self.client_ca:
            ctx.load_verify_locations(cadata=self.client_ca.decode())
            ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.set_alpn_protocols(["http/1.1"])
        return ctx

    async def start(self) -> int:
        self.listener = await serve_http(self.handle, self.host, self.port, self._context())
        self.port = self.listener.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self.listener is not None:
            self.listener.close()

    async def handle(self, request: Request) -> Response:
        parts = [p for p in request.path.split("/") if p]
        if request.method == "GET" and parts == ["healthz"]:
            return _text(200, "ok")
        if request.method == "GET" and len(parts) == 4 and parts[0] == "containerLogs":
            return self.container_logs(parts[1], parts[2], parts[3], request.query)
        if request.method in ("GET", "POST") and parts and parts[0] in ("exec", "attach", "portForward"):
            return self.stream(request, parts)
        if request.method == "GET" and parts == ["admin", "summary"]:  # counters only: cheap at 100k nodes
            return Response(200, orjson.dumps(self.sim.summary()))
        if parts[:2] == ["admin", "nodes"]:
            return self.admin(request.method, parts[2:])
        return _text(404, "404 page not found")

    # ------------------------------------------------------------------ exec, attach, port-forward
    def stream(self, request: Request, parts: list[str]) -> Response:
        query = parse_qs(request.raw_query, keep_blank_values=True)
        try:
            if parts[0] == "exec" and len(parts) == 4:
                return self.streams.exec(request, query, parts[1], parts[2], parts[3])
            if parts[0] == "attach" and len(parts) == 4:
                return self.streams.attach(request, query, parts[1], parts[2], parts[3])
            if parts[0] == "portForward" and len(parts) == 3:
                return self.streams.portforward(request, query, parts[1], parts[2])
        except Refusal as exc:
            return _text(exc.status, str(exc))
        return _text(404, "404 page not found")

    # ------------------------------------------------------------------ admin
    def admin(self, method: str, rest: list[str]) -> Response:
        if method == "GET" and not rest:
            body = {**self.sim.summary(), "items": [
                {"name": n.name, "instanceType": n.itype.name, "zone": n.zone, "alive": n.alive,
                 "pods": len(n.pods), "prefixes": n.addresses.prefixes()} for n in self.sim.nodes]}
            return Response(200, orjson.dumps(body))
        if method == "POST" and len(rest) == 2 and rest[1] in ("kill", "revive"):
            if rest[0] not in self.sim.by_name:
                return _text(404, f"node {rest[0]} is not simulated here")
            (self.sim.kill if rest[1] == "kill" else self.sim.revive)(rest[0])
            return Response(200, orjson.dumps({"name": rest[0], "alive": self.sim.by_name[rest[0]].alive}))
        return _text(405, "method not allowed")

    # ------------------------------------------------------------------ logs
    def container_logs(self, namespace: str, pod: str, container: str, q: dict[str, str]) -> Response:
        state = self.sim.by_key.get((namespace, pod))
        if state is None or not state.node.alive:
            return _text(404, f'pod "{pod}" in namespace "{namespace}" not found')
        plan = state.plan.get(container)
        if plan is None or state.started_at is None:
            return _text(400, f'container "{container}" in pod "{pod}" is waiting to start: ContainerCreating')
        try:
            tail = int(q["tailLines"]) if q.get("tailLines") else None
            limit = int(q["limitBytes"]) if q.get("limitBytes") else None
            since = None
            if q.get("sinceSeconds"):
                since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=int(q["sinceSeconds"]))
            elif q.get("sinceTime"):
                since = dt.datetime.fromisoformat(q["sinceTime"].replace("Z", "+00:00"))
        except ValueError as exc:
            return _text(400, str(exc))
        follow = q.get("follow", "false").lower() in ("true", "1")
        timestamps = q.get("timestamps", "false").lower() in ("true", "1")
        ctr = next((c for c in state.containers if c.name == container), None)
        if q.get("previous", "false").lower() in ("true", "1"):  # the instance before the current one
            last = (ctr.last if ctr is not None else {}).get("terminated") or {}
            if not last.get("startedAt") or not last.get("finishedAt"):
                return _text(400, f'previous terminated container "{container}" in pod "{pod}" not found')
            started, until = _parse(last["startedAt"]), _parse(last["finishedAt"])
            follow = False
        else:  # the current instance (or the last one, while it waits to restart)
            started = ctr.started_at if ctr is not None and ctr.started_at else state.started_at
            until = None
            assert started is not None  # checked above: the pod has started
        stream = self._stream(state, container, started, until, tail, limit, since, follow, timestamps)
        return Response(200, content_type="text/plain", stream=stream)

    async def _stream(self, state: PodState, container: str, started: dt.datetime, until: dt.datetime | None,
                      tail: int | None, limit: int | None, since: dt.datetime | None, follow: bool,
                      timestamps: bool) -> AsyncIterator[bytes]:
        spec = next(c for c in state.pod["spec"]["containers"] if c["name"] == container)
        plan = state.plan[container]
        lines = log_lines(state.pod, spec, started, until or dt.datetime.now(dt.UTC), plan)
        sent = len(lines)  # what follow has covered so far, before since/tail pick from it
        if since is not None:
            lines = [entry for entry in lines if entry[0] >= since]
        if tail is not None:
            lines = lines[-tail:] if tail else []
        budget = limit
        while True:
            for at, text in lines:
                chunk = (format_timestamp(at) + " " + text + "\n").encode() if timestamps else (text + "\n").encode()
                if budget is not None:
                    chunk = chunk[:budget]
                    budget -= len(chunk)
                yield chunk
                if budget is not None and budget <= 0:
                    return
            if not follow or state.uid not in self.sim.pods or state.phase in ("Succeeded", "Failed"):
                return
            await asyncio.sleep(LOG_INTERVAL / 5)
            current = log_lines(state.pod, spec, started, dt.datetime.now(dt.UTC), plan)
            lines, sent = current[sent:], len(current)
