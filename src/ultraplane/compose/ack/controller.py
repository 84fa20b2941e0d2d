"""Assemble the ACK-style managers the flags configure and run them against a cluster."""

from __future__ import annotations

import asyncio
import base64

from ultraplane.client.http import KubeClient
from ultraplane.compose.ack.runtime import AckController, ResourceManager


async def serve(kubeconfig: str, stop: asyncio.Event, postgres_url: str | None = None,
                nats_url: str | None = None, resync: float = 5.0,
                namespace: str | None = None, registry_url: str | None = None, registry_user: str = "admin",
                registry_password: str | None = None, registry_ca: str | None = None,
                postgres_secret: str | None = None) -> None:
    client = await KubeClient.from_kubeconfig(kubeconfig, max_connections=16)
    try:
        managers = await _managers(client, postgres_url, postgres_secret, nats_url, registry_url, registry_user,
                                   registry_password, registry_ca)
        await AckController(client, managers, resync=resync, namespace=namespace).run(stop)
    finally:
        await client.close()


async def _managers(client: KubeClient, postgres_url: str | None, postgres_secret: str | None,
                    nats_url: str | None, registry_url: str | None, registry_user: str,
                    registry_password: str | None, registry_ca: str | None) -> list[ResourceManager]:
    managers: list[ResourceManager] = []
    if postgres_url or postgres_secret:
        from ultraplane.compose.ack.postgres import DatabaseManager, PostgresServer, RoleManager

        if postgres_secret:
            namespace, _, name = postgres_secret.rpartition("/")
            secret = await client.get(f"/api/v1/namespaces/{namespace or 'default'}/secrets/{name}")
            data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
            server = PostgresServer(data.get("host", "127.0.0.1"), int(data.get("port", "5432")),
                                    data.get("username", "postgres"), data.get("password", ""),
                                    data.get("dbname", "postgres"))
        else:
            server = PostgresServer.from_url(postgres_url or "")
        managers += [DatabaseManager(server), RoleManager(server)]
    if nats_url:
        from ultraplane.compose.ack.nats import StreamManager

        managers.append(StreamManager(nats_url))
    if registry_url:
        from ultraplane.compose.ack.registry import RegistryApi, RepositoryManager

        managers.append(RepositoryManager(RegistryApi(registry_url, registry_user, registry_password, registry_ca)))
    if not managers:
        raise SystemExit("ultraplane ack: give --postgres-url or --postgres-secret, --nats-url, --registry-url")
    return managers
