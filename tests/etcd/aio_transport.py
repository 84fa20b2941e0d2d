"""A stand-in gRPC transport for the service tests: ``Method`` handlers served by grpc.aio.

Used only when the project's own transports (ultraplane.etcd.grpcio_server / h2server) are not
importable, so the service can be tested on its own. It does what a transport must: parse
requests, pass metadata and peer, serialize replies (bytes go out as they are), and turn
RpcError into a gRPC status.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc import aio

from ultraplane.etcd.rpc import CallContext, Method, RpcError

_STATUS_BY_CODE = {status.value[0]: status for status in grpc.StatusCode}


def _serialize(reply: Any) -> bytes:
    return reply if isinstance(reply, bytes) else reply.SerializeToString()


def _context(context: aio.ServicerContext) -> CallContext:
    metadata = {key.lower(): value for key, value in context.invocation_metadata() or ()}
    return CallContext(metadata=metadata, peer=context.peer())


def _handler(method: Method) -> grpc.RpcMethodHandler:
    parse = method.request_type.FromString
    fn = method.handler

    if method.kind == "unary":

        async def unary(request: Any, context: aio.ServicerContext) -> Any:
            try:
                return await fn(request, _context(context))
            except RpcError as exc:
                await context.abort(_STATUS_BY_CODE[exc.code], exc.message)

        return grpc.unary_unary_rpc_method_handler(unary, parse, _serialize)

    if method.kind == "server_stream":

        async def server_stream(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                async for reply in fn(request, _context(context)):
                    yield reply
            except RpcError as exc:
                await context.abort(_STATUS_BY_CODE[exc.code], exc.message)

        return grpc.unary_stream_rpc_method_handler(server_stream, parse, _serialize)

    async def bidi(requests: AsyncIterator[Any], context: aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for reply in fn(requests, _context(context)):
                yield reply
        except RpcError as exc:
            await context.abort(_STATUS_BY_CODE[exc.code], exc.message)

    return grpc.stream_stream_rpc_method_handler(bidi, parse, _serialize)


class AioServer:
    def __init__(self, server: aio.Server) -> None:
        self.server = server

    async def close(self) -> None:
        await self.server.stop(grace=None)


async def serve_aio(methods: dict[str, Method], host: str, port: int, **_: Any) -> AioServer:
    by_service: dict[str, dict[str, grpc.RpcMethodHandler]] = {}
    for path, method in methods.items():
        service, name = path.lstrip("/").split("/")
        by_service.setdefault(service, {})[name] = _handler(method)
    server = aio.server(options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(service, handlers) for service, handlers in by_service.items()]
    )
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    return AioServer(server)
