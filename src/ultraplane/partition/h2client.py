"""A minimal HTTP/2 gRPC client for unary calls with bytes in and bytes out, on asyncio.

The router forwards most calls unchanged; grpc.aio's client costs far more per call than the
forwarding itself (thread hops into the C core and back), so unary calls use this instead: one
HTTP/2 connection per partition, the request's HEADERS and DATA frames written as one byte string,
the writes of one event-loop turn joined into a single ``transport.write``, and the response read
straight out of the receive buffer. Streaming calls (Watch, LeaseKeepAlive) stay on grpc.aio.

Scope: cleartext (h2c with prior knowledge), no compression, flow control in both directions, PING
and SETTINGS answered, GOAWAY and a lost connection failing the affected calls with UNAVAILABLE
(the next call connects again). Request header blocks use only never-indexed literals, so they
never touch the peer's HPACK dynamic table; responses are decoded with ``hpack.Decoder``.
"""

from __future__ import annotations

import asyncio
import struct
import urllib.parse
from collections.abc import Sequence

import hpack

from ultraplane.etcd.rpc import RpcError

__all__ = ["H2Channel"]

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
FLAG_END_STREAM = 0x1
FLAG_ACK = 0x1
FLAG_END_HEADERS = 0x4
FLAG_PADDED = 0x8
FLAG_PRIORITY = 0x20
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
SETTINGS_MAX_FRAME_SIZE = 0x5
SETTINGS_ENABLE_PUSH = 0x2

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DEFAULT_WINDOW = 65535
OUR_WINDOW = 16 << 20  # receive window per stream and for the connection
GRPC_UNAVAILABLE = 14
GRPC_INTERNAL = 13
GRPC_CANCELLED = 1

_HEADER = struct.Struct(">BHBBL")
_U32 = struct.Struct(">L")
_PREFIX = struct.Struct(">BL")


def _frame(length: int, ftype: int, flags: int, stream_id: int) -> bytes:
    return _HEADER.pack(length >> 16, length & 0xFFFF, ftype, flags, stream_id)


def _literal_block(headers: Sequence[tuple[str, str]]) -> bytes:
    return hpack.Encoder().encode([hpack.NeverIndexedHeaderTuple(n, v) for n, v in headers], huffman=False)


class _Call:
    __slots__ = ("data", "future", "headers_seen", "message", "pending", "recv_consumed", "send_window", "status")

    def __init__(self, future: asyncio.Future[bytes], send_window: int) -> None:
        self.future = future
        self.data = bytearray()
        self.headers_seen = False
        self.pending: bytes = b""  # request bytes still waiting for flow-control window
        self.send_window = send_window
        self.recv_consumed = 0  # DATA bytes received since our last WINDOW_UPDATE for this stream
        self.status: int | None = None
        self.message = ""


class _Connection(asyncio.Protocol):
    def __init__(self, channel: H2Channel) -> None:
        self.channel = channel
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.calls: dict[int, _Call] = {}
        self.next_id = 1
        self.decoder = hpack.Decoder()
        self.send_window = DEFAULT_WINDOW
        self.peer_initial_window = DEFAULT_WINDOW
        self.max_frame = 16384
        self.recv_consumed = 0
        self.out: list[bytes] = []
        self.flush_scheduled = False
        self.closed = False
        self.header_block: tuple[int, int, bytearray] | None = None  # (stream, flags, fragments)
        self.blocked: dict[int, None] = {}  # streams with request bytes waiting for window

    # ------------------------------------------------------------------ connection events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        settings = struct.pack(">HLHL", SETTINGS_INITIAL_WINDOW_SIZE, OUR_WINDOW, SETTINGS_ENABLE_PUSH, 0)
        transport.write(  # type: ignore[attr-defined]
            PREFACE + _frame(len(settings), SETTINGS, 0, 0) + settings
            + _frame(4, WINDOW_UPDATE, 0, 0) + _U32.pack(OUR_WINDOW - DEFAULT_WINDOW)
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail_all(f"connection to {self.channel.target} lost" + (f": {exc}" if exc else ""))

    def _fail_all(self, message: str, above: int = 0) -> None:
        if above == 0:
            self.closed = True
            if self.channel.conn is self:
                self.channel.conn = None
        for stream_id in [s for s in self.calls if s > above]:
            call = self.calls.pop(stream_id)
            self.blocked.pop(stream_id, None)
            if not call.future.done():
                call.future.set_exception(RpcError(GRPC_UNAVAILABLE, message))

    def _write(self, data: bytes) -> None:
        self.out.append(data)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        if self.out and self.transport is not None and not self.closed:
            self.transport.write(b"".join(self.out))
        self.out.clear()

    # ------------------------------------------------------------------------- calls

    def start(self, block: bytes, message: bytes) -> asyncio.Future[bytes]:
        stream_id = self.next_id
        self.next_id += 2
        future: asyncio.Future[bytes] = self.loop.create_future()
        call = _Call(future, self.peer_initial_window)
        self.calls[stream_id] = call
        body = _PREFIX.pack(0, len(message)) + message
        self._write(_frame(len(block), HEADERS, FLAG_END_HEADERS, stream_id) + block)
        call.pending = body
        self._send_body(stream_id, call)
        if stream_id > 0x7FFFFFF0:  # stream ids are running out: new calls go to a new connection
            self.channel.conn = None
        return future

    def _send_body(self, stream_id: int, call: _Call) -> None:
        body = call.pending
        while body:
            size = min(len(body), call.send_window, self.send_window, self.max_frame)
            if size <= 0:
                self.blocked[stream_id] = None
                break
            chunk, body = body[:size], body[size:]
            call.send_window -= size
            self.send_window -= size
            self._write(_frame(size, DATA, 0 if body else FLAG_END_STREAM, stream_id) + chunk)
        call.pending = body
        if not body:
            self.blocked.pop(stream_id, None)

    def _unblock(self) -> None:
        for stream_id in list(self.blocked):
            call = self.calls.get(stream_id)
            if call is None:
                self.blocked.pop(stream_id, None)
                continue
            self._send_body(stream_id, call)
            if self.send_window <= 0:
                break

    # ------------------------------------------------------------------------- frames

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos = 0
        end = len(buf)
        while end - pos >= 9:
            hi, lo, ftype, flags, stream_id = _HEADER.unpack_from(buf, pos)
            length = (hi << 16) | lo
            if end - pos - 9 < length:
                break
            payload = bytes(buf[pos + 9 : pos + 9 + length])
            pos += 9 + length
            self._frame_received(ftype, flags, stream_id & 0x7FFFFFFF, payload)
            if self.closed:
                return
        del buf[:pos]

    def _frame_received(self, ftype: int, flags: int, stream_id: int, payload: bytes) -> None:
        if ftype == DATA:
            length = len(payload)
            self._consume(length)
            call = self.calls.get(stream_id)
            if flags & FLAG_PADDED:
                payload = payload[1 : len(payload) - payload[0]]
            if call is not None:
                call.data += payload
                if flags & FLAG_END_STREAM:
                    self._finish(stream_id, call)
                else:
                    call.recv_consumed += length
                    if call.recv_consumed >= OUR_WINDOW // 4:  # a response bigger than the window
                        self._write(_frame(4, WINDOW_UPDATE, 0, stream_id) + _U32.pack(call.recv_consumed))
                        call.recv_consumed = 0
        elif ftype in (HEADERS, CONTINUATION):
            if ftype == HEADERS:
                pos = 0
                padding = 0
                if flags & FLAG_PADDED:
                    padding = payload[0]
                    pos = 1
                if flags & FLAG_PRIORITY:
                    pos += 5
                self.header_block = (stream_id, flags, bytearray(payload[pos : len(payload) - padding]))
            elif self.header_block is not None:
                self.header_block[2].extend(payload)
            if flags & FLAG_END_HEADERS and self.header_block is not None:
                first_id, first_flags, block = self.header_block
                self.header_block = None
                self._headers(first_id, first_flags, bytes(block))
        elif ftype == SETTINGS:
            if not flags & FLAG_ACK:
                for i in range(0, len(payload) - 5, 6):
                    key, value = struct.unpack_from(">HL", payload, i)
                    if key == SETTINGS_INITIAL_WINDOW_SIZE:
                        delta = value - self.peer_initial_window
                        self.peer_initial_window = value
                        for call in self.calls.values():
                            call.send_window += delta
                    elif key == SETTINGS_MAX_FRAME_SIZE:
                        self.max_frame = value
                self._write(_frame(0, SETTINGS, FLAG_ACK, 0))
                self._unblock()
        elif ftype == WINDOW_UPDATE:
            increment = _U32.unpack(payload)[0] & 0x7FFFFFFF
            if stream_id == 0:
                self.send_window += increment
            else:
                call = self.calls.get(stream_id)
                if call is not None:
                    call.send_window += increment
            self._unblock()
        elif ftype == PING:
            if not flags & FLAG_ACK:
                self._write(_frame(len(payload), PING, FLAG_ACK, 0) + payload)
        elif ftype == RST_STREAM:
            call = self.calls.pop(stream_id, None)
            self.blocked.pop(stream_id, None)
            if call is not None and not call.future.done():
                code = _U32.unpack(payload)[0]
                if call.status is not None:  # trailers came first (a server done listening)
                    self._complete(call)
                else:
                    grpc_code = GRPC_UNAVAILABLE if code == 0x7 else GRPC_CANCELLED if code == 0x8 else GRPC_INTERNAL
                    call.future.set_exception(RpcError(grpc_code, f"stream reset by {self.channel.target} "
                                                                   f"(HTTP/2 error {code})"))
        elif ftype == GOAWAY:
            last_stream = _U32.unpack_from(payload, 0)[0] & 0x7FFFFFFF
            if self.channel.conn is self:
                self.channel.conn = None  # new calls open a new connection
            self._fail_all(f"{self.channel.target} is going away", above=last_stream)
            if not self.calls and self.transport is not None:
                self.transport.close()

    def _consume(self, size: int) -> None:
        self.recv_consumed += size
        if self.recv_consumed >= OUR_WINDOW // 4:
            self._write(_frame(4, WINDOW_UPDATE, 0, 0) + _U32.pack(self.recv_consumed))
            self.recv_consumed = 0

    def _headers(self, stream_id: int, flags: int, block: bytes) -> None:
        try:
            fields = self._decode(block)
        except Exception as exc:  # a corrupt block breaks the connection's HPACK state
            self._fail_all(f"bad header block from {self.channel.target}: {exc}")
            if self.transport is not None:
                self.transport.close()
            return
        call = self.calls.get(stream_id)
        if call is None:
            return
        if not call.headers_seen and not flags & FLAG_END_STREAM:
            call.headers_seen = True
            return
        for name, value in fields:
            if name == "grpc-status":
                call.status = int(value)
            elif name == "grpc-message":
                call.message = urllib.parse.unquote(value)
            elif name == ":status" and value != "200" and call.status is None:
                call.status = GRPC_UNAVAILABLE if value in ("502", "503", "504") else GRPC_INTERNAL
                call.message = f"HTTP status {value} from {self.channel.target}"
        if call.status is None:
            call.status = GRPC_INTERNAL
            call.message = f"{self.channel.target} sent no grpc-status"
        if flags & FLAG_END_STREAM:
            self._finish(stream_id, call)

    def _decode(self, block: bytes) -> list[tuple[str, str]]:
        """HPACK-decode, remembering blocks that neither read nor changed the dynamic table: such a
        block always decodes the same (our store's responses are all of that kind)."""
        cached = self.channel.decoded.get(block)
        if cached is not None and not self.decoder.header_table.dynamic_entries:
            return cached
        stateless = not self.decoder.header_table.dynamic_entries
        fields = self.decoder.decode(block)
        if stateless and not self.decoder.header_table.dynamic_entries and len(self.channel.decoded) < 1024:
            self.channel.decoded[block] = fields
        return fields

    def _finish(self, stream_id: int, call: _Call) -> None:
        self.calls.pop(stream_id, None)
        self.blocked.pop(stream_id, None)
        self._complete(call)

    @staticmethod
    def _complete(call: _Call) -> None:
        if call.future.done():
            return
        if call.status != 0:
            call.future.set_exception(RpcError(call.status if call.status is not None else GRPC_INTERNAL,
                                               call.message))
            return
        data = call.data
        if len(data) < 5 or data[0] != 0:
            call.future.set_exception(RpcError(GRPC_INTERNAL, "malformed or compressed gRPC response"))
            return
        call.future.set_result(bytes(memoryview(data)[5 : 5 + _U32.unpack_from(data, 1)[0]]))


class H2Channel:
    """Unary gRPC calls to one ``host:port`` over one (re-established as needed) HTTP/2 connection."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.host, port = target.rsplit(":", 1)
        self.port = int(port)
        self.conn: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None
        self._blocks: dict[tuple[str, str | None], bytes] = {}
        self.decoded: dict[bytes, list[tuple[str, str]]] = {}  # see _Connection._decode

    def _block(self, path: str, token: str | None) -> bytes:
        block = self._blocks.get((path, token))
        if block is None:
            headers = [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", self.target),
                       ("content-type", "application/grpc"), ("te", "trailers")]
            if token:
                headers.append(("token", token))
            block = _literal_block(headers)
            if len(self._blocks) < 4096:  # tokens vary; keep the cache bounded
                self._blocks[(path, token)] = block
        return block

    async def _connect(self) -> _Connection:
        if self._connecting is not None:
            return await asyncio.shield(self._connecting)
        loop = asyncio.get_running_loop()
        self._connecting = loop.create_future()
        try:
            try:
                _transport, conn = await loop.create_connection(lambda: _Connection(self), self.host, self.port)
            except OSError as exc:
                raise RpcError(GRPC_UNAVAILABLE, f"cannot connect to {self.target}: "
                                                 f"{exc.strerror or exc}") from None
            self.conn = conn
            self._connecting.set_result(conn)
            return conn
        except BaseException as exc:
            self._connecting.set_exception(exc)
            self._connecting.exception()  # retrieved: waiters re-raise it themselves
            raise
        finally:
            self._connecting = None

    async def unary(self, path: str, message: bytes, token: str | None = None) -> bytes:
        conn = self.conn
        if conn is None or conn.closed:
            conn = await self._connect()
        return await conn.start(self._block(path, token), message)

    def close(self) -> None:
        conn = self.conn
        self.conn = None
        if conn is not None and conn.transport is not None:
            conn.transport.close()
