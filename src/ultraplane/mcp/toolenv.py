"""What every tool needs: the cluster as the caller, the output limit, and turning failures into MCP errors."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations

from ultraplane.client.http import ApiError
from ultraplane.mcp.evidence import Cluster
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
