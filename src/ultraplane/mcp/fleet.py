"""--fleet DIR: the fleet API server is the default cluster, and every member cluster (a Karmada `Cluster`
object whose credentials are a kubeconfig in a Secret in karmada-cluster) can be named by the tools'
`cluster` argument. Members are reached with their Secret's credentials but, like the fleet API, as the
caller (impersonation), so the caller's RBAC applies on each member too."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import yaml

from ultraplane.client import kubeconfig
from ultraplane.client.http import ApiError
from ultraplane.fleet.members import CLUSTERS, SECRET_NAMESPACE
from ultraplane.mcp.evidence import Cluster
from ultraplane.mcp.kube import CallerClient

Obj = dict[str, Any]
ALL = "*"


class Fleet:
    def __init__(self, fleet: Cluster) -> None:
        self.fleet = fleet
        self.members: dict[str, tuple[str, Cluster]] = {}  # name -> (Secret resourceVersion, its Cluster)
        self.lock = asyncio.Lock()

    async def clusters(self) -> list[Obj]:
        return (await self.fleet.client.list(CLUSTERS)).get("items") or []

    async def names(self) -> list[str]:
        return sorted(c["metadata"]["name"] for c in await self.clusters())

    async def member(self, name: str) -> Cluster:
        """The member's Cluster, rebuilt when its credentials Secret changed."""
        try:
            obj = await self.fleet.client.get(f"{CLUSTERS}/{name}")
        except ApiError as exc:
            if exc.code == 404:
                raise ValueError(f'no member cluster "{name}" in the fleet (known: '
                                 f'{", ".join(await self.names()) or "none"})') from exc
            raise
        ref = (obj.get("spec") or {}).get("secretRef") or {}
        secret = await self.fleet.client.get(f"/api/v1/namespaces/{ref.get('namespace', SECRET_NAMESPACE)}/"
                                             f"secrets/{ref.get('name', name)}")
        version = secret["metadata"].get("resourceVersion", "")
        async with self.lock:
            known = self.members.get(name)
            if known and known[0] == version:
                return known[1]
            raw = (secret.get("data") or {}).get("kubeconfig")
            if not raw:
                raise ValueError(f'member "{name}": its Secret has no kubeconfig key')
            creds = kubeconfig.from_config(yaml.safe_load(base64.b64decode(raw)))
            base_client = self.fleet.client
            client = CallerClient(creds.server, creds.ssl_context, creds.token, base_client.identity,
                                  max_connections=4, timeout=30.0)
            if known:
                await known[1].client.close()
            self.members[name] = (version, Cluster(client))
            return self.members[name][1]

    async def close(self) -> None:
        for _, member in self.members.values():
            await member.client.close()
