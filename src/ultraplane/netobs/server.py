"""The netobs service: a flow generator reading the cluster through the API every interval, the flow
store, and an HTTP JSON API plus /metrics (Starlette under uvicorn).

Routes (JSON unless noted):
  GET  /                                      the service map page (HTML; new and broken edges highlighted)
  GET  /metrics                               Prometheus text, Retina's networkobservability_* names
  GET  /api/v1/servicemap[?since=&until=]     nodes and edges (unix seconds; default: since start)
  GET  /api/v1/servicemap/rollout?namespace=&deployment=[&window=60]
                                              new, broken and gone edges around the latest rollout
  GET  /api/v1/flows[?namespace=&pod=&verdict=&since=&limit=]
  GET  /api/v1/flows/top?by=retransmits|cross_az_bytes[&limit=&since=]
  GET  /api/v1/crossaz[?since=]               cross-AZ bytes and their AWS data-transfer cost
  POST /api/v1/flows?format=hubble|vpc        ingest `hubble observe -o json` lines or VPC flow log lines
  GET  /api/v1/policies                       NetworkPolicy proposals from the observed flows
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from ultraplane.client.http import ApiError, KubeClient
from ultraplane.netobs.cluster import ClusterSnapshot, latest_rollout, read_cluster
from ultraplane.netobs.generator import FlowGenerator
from ultraplane.netobs.ingest import IngestError, parse_hubble_lines, parse_vpc_lines
from ultraplane.netobs.metrics import registry_for
from ultraplane.netobs.page import PAGE
from ultraplane.netobs.policy import propose_policies
from ultraplane.netobs.store import FlowStore

log = logging.getLogger(__name__)
MAX_INGEST_BYTES = 64 * 1024 * 1024


class NetObs:
    def __init__(self, client: KubeClient | None, seed: int = 0, max_flows: int = 1_000_000) -> None:
        self.client = client
        self.store = FlowStore(max_flows=max_flows)
        self.generator = FlowGenerator(seed)
        self.registry = registry_for(self.store)
        self.snapshot = ClusterSnapshot()

    async def refresh(self) -> ClusterSnapshot:
        if self.client is not None:
            self.snapshot = await read_cluster(self.client)
        return self.snapshot

    async def generate_window(self, start: float, duration: float) -> int:
        """Read the cluster, then add the flows its declarations make in [start, start + duration)."""
        snap = await self.refresh()
        return self.store.add_many(self.generator.generate(snap, start, duration))

    async def run_generator(self, interval: float, stop: asyncio.Event) -> None:
        last = time.time()
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), interval)
                return
            except TimeoutError:
                pass
            now = time.time()
            try:
                await self.generate_window(last, now - last)
            except (ApiError, OSError) as exc:
                log.warning("flow generation skipped a window: %s", exc)
            last = now


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _error(status: int, message: str) -> Response:
    return _json({"error": message}, status)


def _number(request: Request, name: str, default: float | None = None) -> float | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"query parameter {name} must be a number, got {raw!r}") from None


def build_app(netobs: NetObs) -> Starlette:
    store = netobs.store

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(netobs.registry), media_type=CONTENT_TYPE_LATEST)

    async def servicemap(request: Request) -> Response:
        try:
            body = store.service_map(_number(request, "since"), _number(request, "until"))
            return _json(body | {"problems": netobs.generator.problems})
        except ValueError as exc:
            return _error(400, str(exc))

    async def rollout(request: Request) -> Response:
        namespace, deployment = request.query_params.get("namespace"), request.query_params.get("deployment")
        if not namespace or not deployment:
            return _error(400, "namespace and deployment are required")
        if netobs.client is None:
            return _error(503, "no cluster configured")
        try:
            window = _number(request, "window", 60.0) or 60.0
            at, replicaset = await latest_rollout(netobs.client, namespace, deployment)
        except ValueError as exc:
            return _error(400, str(exc))
        except LookupError as exc:
            return _error(404, str(exc))
        except ApiError as exc:
            return _error(exc.code or 502, exc.message)
        return _json(store.changes(at, window) | {"replicaset": replicaset})

    async def flows(request: Request) -> Response:
        if request.method == "POST":
            return await ingest(request)
        try:
            limit = int(_number(request, "limit", 100) or 100)
            found = store.query_flows(request.query_params.get("namespace"), request.query_params.get("pod"),
                                      request.query_params.get("verdict"), _number(request, "since"), limit)
        except ValueError as exc:
            return _error(400, str(exc))
        return _json({"flows": [f.to_dict() for f in found]})

    async def ingest(request: Request) -> Response:
        fmt = request.query_params.get("format", "hubble")
        if fmt not in ("hubble", "vpc"):
            return _error(400, f"format must be hubble or vpc, got {fmt!r}")
        body = await request.body()
        if len(body) > MAX_INGEST_BYTES:
            return _error(413, f"body larger than {MAX_INGEST_BYTES} bytes")
        try:
            text = body.decode()
        except UnicodeDecodeError:
            return _error(400, "body is not UTF-8")
        parse = parse_hubble_lines if fmt == "hubble" else parse_vpc_lines
        try:
            parsed = parse(text.splitlines(), netobs.snapshot.resolve)
        except IngestError as exc:
            return _error(400, str(exc))
        return _json({"ingested": store.add_many(parsed)})

    async def top(request: Request) -> Response:
        try:
            rows = store.top_connections(request.query_params.get("by", "retransmits"),
                                         int(_number(request, "limit", 20) or 20), _number(request, "since"))
        except ValueError as exc:
            return _error(400, str(exc))
        return _json({"connections": rows, "cross_az": store.cross_az_summary(_number(request, "since"))})

    async def crossaz(request: Request) -> Response:
        try:
            return _json(store.cross_az_summary(_number(request, "since")))
        except ValueError as exc:
            return _error(400, str(exc))

    async def policies(_: Request) -> Response:
        snap = await netobs.refresh()
        return _json({"items": propose_policies(list(store.flows), snap)})

    async def page(_: Request) -> Response:
        return HTMLResponse(PAGE)

    return Starlette(routes=[
        Route("/", page),
        Route("/metrics", metrics),
        Route("/api/v1/servicemap", servicemap),
        Route("/api/v1/servicemap/rollout", rollout),
        Route("/api/v1/flows", flows, methods=["GET", "POST"]),
        Route("/api/v1/flows/top", top),
        Route("/api/v1/crossaz", crossaz),
        Route("/api/v1/policies", policies),
    ])


async def serve(netobs: NetObs, host: str, port: int, stop: asyncio.Event, interval: float | None,
                ready: asyncio.Event | None = None) -> None:
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(build_app(netobs), host=host, port=port, log_level="warning",
                                           lifespan="off"))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign] - the caller owns signals
    task = asyncio.create_task(server.serve())
    generator = asyncio.create_task(netobs.run_generator(interval, stop)) if interval else None
    try:
        while not server.started and not task.done():
            await asyncio.sleep(0.05)
        if ready is not None:
            ready.set()
        await asyncio.wait([task, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.set()
        server.should_exit = True
        await asyncio.gather(task, *([generator] if generator else []), return_exceptions=True)
