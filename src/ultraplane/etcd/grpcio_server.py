"""The same ``Method`` table served through grpcio's asyncio server.

Slower than ``h2server`` (thread hops through C-core per call) but a battle-tested
fallback, and the yardstick the lean transport is benchmarked against.
"""

from __future__ import annotations

from typing import Any

import grpc
from grpc import aio

from .rpc import CallContext, Method, RpcError

_STATUS_BY_CODE = {status.value[0]: status for status in grpc.StatusCode}


def _serialize(reply: Any) -> bytes:
    return reply if type(reply) is bytes else reply.SerializeToString()


def _call_context(context: aio.ServicerContext) -> CallContext:
    metadata: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if isinstance(value, str):
            metadata[key.lower()] = value
    peer = context.peer() or ""
    for scheme in ("ipv4:", "ipv6:"):
        if peer.startswith(scheme):
            peer = peer[len(scheme) :]
    names = context.auth_context().get("x509_common_name") or []
    common_name = names[0].decode() if names else None
    return CallContext(metadata=metadata, peer=peer, peer_common_name=common_name)


async def _abort(context: aio.ServicerContext, error: RpcError) -> None:
    await context.abort(_STATUS_BY_CODE.get(error.code, grpc.StatusCode.UNKNOWN), error.message)


def _rpc_handler(method: Method) -> grpc.RpcMethodHandler:
    handler: Any = method.handler
    options = {"request_deserializer": method.request_type.FromString, "response_serializer": _serialize}

    if method.kind == "unary":

        async def unary(request: Any, context: aio.ServicerContext) -> Any:
            try:
                return await handler(request, _call_context(context))
            except RpcError as error:
                await _abort(context, error)

        return grpc.unary_unary_rpc_method_handler(unary, **options)

    async def streaming(request: Any, context: aio.ServicerContext) -> Any:
        try:
            async for reply in handler(request, _call_context(context)):
                yield reply
        except RpcError as error:
            await _abort(context, error)

    if method.kind == "server_stream":
        return grpc.unary_stream_rpc_method_handler(streaming, **options)
    return grpc.stream_stream_rpc_method_handler(streaming, **options)


class _GenericHandler(grpc.GenericRpcHandler):
    def __init__(self, methods: dict[str, Method]) -> None:
        self._handlers = {path: _rpc_handler(method) for path, method in methods.items()}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        return self._handlers.get(handler_call_details.method)


class GrpcioServer:
    def __init__(self, server: aio.Server, port: int) -> None:
        self.server = server
        self.port = port

    async def close(self, grace: float = 5.0) -> None:
        await self.server.stop(grace)


async def serve_grpcio(
    methods: dict[str, Method],
    host: str,
    port: int,
    *,
    cert_chain: bytes | None = None,
    private_key: bytes | None = None,
    root_certificates: bytes | None = None,
    require_client_auth: bool = False,
    max_recv_message_bytes: int = 2 * 1024 * 1024,
) -> GrpcioServer:
    """Serve ``methods`` with grpcio; TLS when cert_chain/private_key are given (PEM bytes)."""
    server = aio.server(
        options=[
            ("grpc.max_receive_message_length", max_recv_message_bytes),
            ("grpc.max_send_message_length", 2**31 - 1),
            ("grpc.so_reuseport", 0),
        ]
    )
    server.add_generic_rpc_handlers([_GenericHandler(methods)])
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if cert_chain is not None and private_key is not None:
        credentials = grpc.ssl_server_credentials(
            [(private_key, cert_chain)],
            root_certificates=root_certificates,
            require_client_auth=require_client_auth,
        )
        bound = server.add_secure_port(address, credentials)
    else:
        bound = server.add_insecure_port(address)
    await server.start()
    return GrpcioServer(server, bound)
