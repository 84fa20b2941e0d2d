"""The contract between gRPC transports and the etcd service handlers.

Handlers know nothing of HTTP/2 or grpcio: each RPC is a ``Method`` taking parsed
protobuf requests and returning protobuf messages (or their pre-encoded bytes, on
hot paths). A transport parses, dispatches, serializes and maps ``RpcError`` to a
grpc-status trailer. Two transports implement it: a lean HTTP/2 server (default)
and grpcio (for comparison).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from google.protobuf.message import Message

Reply = Message | bytes  # bytes: an already-serialized response message


class RpcError(Exception):
    """Ends a call with a non-OK gRPC status."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class CallContext:
    metadata: dict[str, str] = field(default_factory=dict)  # lower-case keys, e.g. "token"
    peer: str = ""  # "ip:port"
    peer_common_name: str | None = None  # CN of a verified TLS client certificate


UnaryHandler = Callable[[Any, CallContext], Awaitable[Reply]]
ServerStreamHandler = Callable[[Any, CallContext], AsyncIterator[Reply]]
BidiHandler = Callable[[AsyncIterator[Any], CallContext], AsyncIterator[Reply]]


@dataclass(frozen=True)
class Method:
    path: str  # "/etcdserverpb.KV/Range"
    request_type: type[Message]
    kind: Literal["unary", "server_stream", "bidi"]
    handler: UnaryHandler | ServerStreamHandler | BidiHandler
