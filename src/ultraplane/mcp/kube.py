"""The server's view of the cluster: a KubeClient acting as the caller, and discovery-driven kinds.

Every request carries the caller's identity in kube's impersonation headers when one is configured, so the
API server's RBAC judges the caller's rights and never the (broader) rights of the server's own kubeconfig.
Kinds are resolved the way kubectl resolves them (Kind, plural, singular, short name, `plural.group`)
against the API server's discovery documents, so CustomResourceDefinitions are served like built-ins.
"""

from __future__ import annotations

import asyncio
import csv
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import orjson

from ultraplane.client import kubeconfig
from ultraplane.client.http import ApiError, KubeClient

Obj = dict[str, Any]
DISCOVERY_TTL_S = 30.0


class UnknownKind(LookupError):
    """A kind discovery does not know; the message is kubectl's."""

    def __init__(self, kind: str) -> None:
        super().__init__(f'the server doesn\'t have a resource type "{kind}"')


@dataclass(frozen=True)
class Identity:
    """Who the server acts as: kube's Impersonate-User / Impersonate-Group (empty user: the kubeconfig's)."""
    user: str = ""
    groups: tuple[str, ...] = ()

    def headers(self) -> bytes:
        if not self.user:
            return b""
        lines = [f"Impersonate-User: {self.user}\r\n", *(f"Impersonate-Group: {g}\r\n" for g in self.groups)]
        return "".join(lines).encode()

    def describe(self) -> str:
        if not self.user:
            return "(the kubeconfig's own user)"
        return self.user + (f" (groups {', '.join(self.groups)})" if self.groups else "")


def load_callers(path: str) -> dict[str, Identity]:
    """HTTP callers in kube-apiserver's --token-auth-file format: `token,user,uid[,"group1,group2"]` per line."""
    callers: dict[str, Identity] = {}
    with open(path, newline="") as file:
        for number, fields in enumerate(csv.reader(file), 1):
            if not fields or not fields[0].strip() or fields[0].startswith("#"):
                continue
            if len(fields) < 3 or not fields[1].strip():
                raise ValueError(f"{path}:{number}: expected token,user,uid[,\"group1,group2\"]")
            groups = tuple(g.strip() for g in fields[3].split(",") if g.strip()) if len(fields) > 3 else ()
            callers[fields[0].strip()] = Identity(fields[1].strip(), groups)
    if not callers:
        raise ValueError(f"{path}: no callers")
    return callers


# The caller of the MCP request being served (HTTP callers with their own tokens); None: the configured one.
CALLER: ContextVar[Identity | None] = ContextVar("ultraplane_mcp_caller", default=None)


class CallerClient(KubeClient):
    """KubeClient whose every request carries the caller's impersonation headers: the identity of the MCP
    request being served (CALLER), else the one the server was started with."""

    def __init__(self, server: str, ssl_context: Any, token: str | None, identity: Identity, **kwargs: Any) -> None:
        super().__init__(server, ssl_context, token, **kwargs)
        self.identity = identity

    def current(self) -> Identity:
        return CALLER.get() or self.identity

    def _head(self, method: str, target: str, body: bytes | None, content_type: str) -> bytes:
        head = super()._head(method, target, body, content_type)
        extra = self.current().headers()
        return head[:-2] + extra + b"\r\n" if extra else head  # before the blank line that ends the head

    @classmethod
    async def connect(cls, kubeconfig_path: str, identity: Identity, context: str | None = None) -> CallerClient:
        creds = await asyncio.to_thread(kubeconfig.load, kubeconfig_path, context)
        return cls(creds.server, creds.ssl_context, creds.token, identity, max_connections=8, timeout=30.0)

    async def text(self, path: str, params: dict[str, Any] | None = None) -> str:
        """A GET whose answer is not JSON (pod logs, /metrics)."""
        query = {k: str(v).lower() if isinstance(v, bool) else v for k, v in (params or {}).items() if v is not None}
        response = await self.raw("GET", path + ("?" + urlencode(query) if query else ""))
        if response.status >= 300:
            body = response.body.decode(errors="replace")
            try:
                status = orjson.loads(body)
            except ValueError:
                status = {"message": body.strip(), "code": response.status}
            raise ApiError(status if isinstance(status, dict) else None, response.status)
        return response.body.decode(errors="replace")


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    kind: str
    plural: str
    singular: str
    namespaced: bool
    short_names: tuple[str, ...]
    verbs: tuple[str, ...]

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        return base + (f"/{name}" if name else "")


# Kubernetes' own groups win a name shared with a CRD (kubectl's priority: core first, then built-ins).
_BUILTIN_ORDER = ("", "apps", "batch", "autoscaling", "policy", "networking.k8s.io", "rbac.authorization.k8s.io")


class Discovery:
    """The API server's resource types (preferred versions), refreshed when stale or on an unknown name."""

    def __init__(self, client: KubeClient) -> None:
        self.client = client
        self.types: list[ResourceType] = []
        self.loaded_at = 0.0
        self.lock = asyncio.Lock()

    async def refresh(self) -> None:
        async with self.lock:
            types: list[ResourceType] = []
            core = await self.client.get("/api/v1")
            types += _types("", "v1", core)
            groups = await self.client.get("/apis")
            versions = [(g["name"], (g.get("preferredVersion") or g["versions"][0])["version"])
                        for g in groups.get("groups") or [] if g.get("versions")]
            lists = await asyncio.gather(*(self.client.get(f"/apis/{g}/{v}") for g, v in versions),
                                         return_exceptions=True)
            for (group, version), listed in zip(versions, lists, strict=True):
                if isinstance(listed, dict):  # an aggregated group that is down answers 503: leave it out
                    types += _types(group, version, listed)
            rank = {g: i for i, g in enumerate(_BUILTIN_ORDER)}
            types.sort(key=lambda t: (rank.get(t.group, len(rank)), t.group))
            self.types, self.loaded_at = types, time.monotonic()

    async def all(self) -> list[ResourceType]:
        if not self.types or time.monotonic() - self.loaded_at > DISCOVERY_TTL_S:
            await self.refresh()
        return self.types

    async def resolve(self, kind: str) -> ResourceType:
        if not kind or not kind.strip():
            raise UnknownKind(kind)
        found = _match(await self.all(), kind)
        if found is None:
            await self.refresh()  # a CRD created since the last look
            found = _match(self.types, kind)
        if found is None:
            raise UnknownKind(kind)
        return found


def _types(group: str, version: str, listed: Obj) -> list[ResourceType]:
    return [ResourceType(group, version, r["kind"], r["name"], r.get("singularName") or r["kind"].lower(),
                         bool(r.get("namespaced")), tuple(r.get("shortNames") or ()), tuple(r.get("verbs") or ()))
            for r in listed.get("resources") or [] if "/" not in r["name"]]


def _match(types: list[ResourceType], kind: str) -> ResourceType | None:
    wanted = kind.strip().lower()
    name, _, group = wanted.partition(".")
    if "/" in name:  # "apps/v1/deployments" style is not kubectl's; treat the last segment as the name
        name = name.rsplit("/", 1)[-1]
    for t in types:
        if group and t.group.lower() != group:
            continue
        if name in (t.kind.lower(), t.plural, t.singular) or name in t.short_names:
            return t
    return None
