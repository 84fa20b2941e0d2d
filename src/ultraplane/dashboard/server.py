"""Serving the dashboard: uvicorn over TLS with a certificate from the fleet's own CA."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import uvicorn

from ultraplane import pki
from ultraplane.client import kubeconfig
from ultraplane.client.http import KubeClient
from ultraplane.dashboard.app import Dashboard, build_app

log = logging.getLogger("ultraplane.dashboard")


async def serve(fleet_kubeconfig: Path, pki_dir: Path, host: str, port: int, stop: asyncio.Event,
                ready: asyncio.Event | None = None) -> None:
    """Serve until `stop` is set. The serving certificate is issued once into `pki_dir` by its CA."""
    ca = pki.ensure_ca(pki_dir)
    cert = pki.issue(ca, pki_dir, "dashboard", "ultraplane-dashboard",
                     server_hosts=sorted({host, "127.0.0.1", "localhost"}))
    flat = kubeconfig.flatten(fleet_kubeconfig)
    cluster = flat["clusters"][0]["cluster"]
    import base64

    fleet_ca = base64.b64decode(cluster["certificate-authority-data"]) if cluster.get(
        "certificate-authority-data") else None
    service = KubeClient.from_kubeconfig_data(flat, timeout=15.0)
    dashboard = Dashboard(cluster["server"], fleet_ca, service)
    config = uvicorn.Config(build_app(dashboard), host=host, port=port, ssl_certfile=str(cert.cert),
                            ssl_keyfile=str(cert.key), log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign] - the caller owns signals
    task = asyncio.create_task(server.serve())
    try:
        while not server.started and not task.done():
            await asyncio.sleep(0.05)
        if ready is not None:
            ready.set()
        await asyncio.wait([task, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    finally:
        server.should_exit = True
        await asyncio.gather(task, return_exceptions=True)
        await dashboard.close()
