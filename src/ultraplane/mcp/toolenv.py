"""What every tool needs: the cluster as the caller, the output limit, and turning failures into MCP errors."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations

from ultraplane.client.http import ApiError
from ultraplane.mcp.evidence import Cluster
from ultraplane.mcp.fleet import ALL, Fleet
from ultraplane.mcp.kube import CallerClient, UnknownKind
from ultraplane.mcp.views import fit
from ultraplane.mcp.writes import WriteRefused

T = TypeVar("T")
READ = ToolAnnotations(read_only_hint=True, open_world_hint=False)
WRITE = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=False)


@dataclass(frozen=True)
class ToolEnv:
    client: CallerClient
    cluster: Cluster
    max_chars: int  # the longest answer (--max-output-chars)
    sensitive: bool  # --allow-sensitive-data: Secret values shown
    fleet: Fleet | None = None  # --fleet: member clusters by name

    async def at(self, name: str | None) -> Cluster:
        """The cluster a tool call names: none means the one the server was started on (the fleet API)."""
        if not name:
            return self.cluster
        if self.fleet is None:
            raise ValueError("the cluster argument needs the server started with --fleet DIR")
        return await self.fleet.member(name)

    async def targets(self, name: str | None) -> list[tuple[str | None, Cluster]]:
        """`*` fans out to every member cluster of the fleet; anything else is one cluster."""
        if name != ALL:
            return [(name, await self.at(name))]
        if self.fleet is None:
            raise ValueError('cluster "*" needs the server started with --fleet DIR')
        return [(member, await self.fleet.member(member)) for member in await self.fleet.names()]

    def out(self, value: Any) -> str:
        return fit(value, self.max_chars)


async def guarded(work: Awaitable[T]) -> T:
    """Run a tool's work; what went wrong becomes a ToolError (an MCP error result) with a clear message."""
    try:
        return await work
    except ApiError as exc:
        raise ToolError(f"the API server refused: {exc.code} {exc.reason}: {exc.message}") from exc
    except (UnknownKind, WriteRefused, ValueError) as exc:
        raise ToolError(str(exc.args[0]) if exc.args else str(exc)) from exc
    except ConnectionError as exc:
        raise ToolError(f"the API server is unreachable: {exc}") from exc
