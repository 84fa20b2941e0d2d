"""SPDY/3.1 for the simulated kubelet's port-forward, the protocol kubectl falls back to.

kubectl port-forward first asks for WebSocket tunnelling; refused, it upgrades to SPDY/3.1 with
`X-Stream-Protocol-Version: portforward.k8s.io`. Each local connection then opens two streams
(SYN_STREAM with headers streamtype=error|data, port, requestid); the kubelet replies to both,
answers bytes of the data stream, and ends the pair with FIN (writing an error first when nothing
listens on the port). Header blocks are zlib-compressed, one stream per direction for the whole
session, primed with the SPDY/3 dictionary (built below from its word list, as the draft defines it).
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable

from ultraplane.apiserver.server import Tunnel

PORTFORWARD_PROTOCOL = "portforward.k8s.io"
SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY = 1, 2, 3, 4, 6, 7
FLAG_FIN = 0x01

_WORDS = ("options head post put delete trace accept accept-charset accept-encoding accept-language "
          "accept-ranges age allow authorization cache-control connection content-base content-encoding "
          "content-language content-length content-location content-md5 content-range content-type date etag "
          "expect expires from host if-match if-modified-since if-none-match if-range if-unmodified-since "
          "last-modified location max-forwards pragma proxy-authenticate proxy-authorization range referer "
          "retry-after server te trailer transfer-encoding upgrade user-agent vary via warning www-authenticate "
          "method get status 200_OK version HTTP/1.1 url public set-cookie keep-alive origin").split()
_TAIL = ("100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
         "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized"
         "403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable"
         "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT"
         "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,"
         "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.")
DICTIONARY = b"".join(len(w).to_bytes(4, "big") + w.replace("_", " ").encode() for w in _WORDS) + _TAIL.encode()


class SpdySession:
    """Frames in and out of one SPDY/3.1 connection (server side)."""

    def __init__(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel
        self.inflate = zlib.decompressobj(zdict=DICTIONARY)
        self.deflate = zlib.compressobj(zdict=DICTIONARY)

    async def frame(self) -> tuple[bool, int, int, bytes] | None:
        """(control, frame type or stream id, flags, payload); None when the connection ends."""
        try:
            head = await self.tunnel.reader.readexactly(8)
            payload = await self.tunnel.reader.readexactly(int.from_bytes(head[5:8], "big"))
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        if head[0] & 0x80:
            return True, int.from_bytes(head[2:4], "big"), head[4], payload
        return False, int.from_bytes(head[0:4], "big") & 0x7FFFFFFF, head[4], payload

    def headers(self, block: bytes) -> dict[str, str]:
        raw = self.inflate.decompress(block)
        count, pos, out = int.from_bytes(raw[:4], "big"), 4, {}
        for _ in range(count):
            n = int.from_bytes(raw[pos:pos + 4], "big")
            name = raw[pos + 4:pos + 4 + n].decode("latin-1").lower()
            pos += 4 + n
            n = int.from_bytes(raw[pos:pos + 4], "big")
            out[name] = raw[pos + 4:pos + 4 + n].decode("latin-1")
            pos += 4 + n
        return out

    def control(self, kind: int, flags: int, payload: bytes) -> None:
        self.tunnel.write(bytes((0x80, 3)) + kind.to_bytes(2, "big") + bytes((flags,))
                          + len(payload).to_bytes(3, "big") + payload)

    def reply(self, stream: int) -> None:
        block = self.deflate.compress((0).to_bytes(4, "big")) + self.deflate.flush(zlib.Z_SYNC_FLUSH)
        self.control(SYN_REPLY, 0, stream.to_bytes(4, "big") + block)

    def data(self, stream: int, payload: bytes, fin: bool = False) -> None:
        self.tunnel.write(stream.to_bytes(4, "big") + bytes((FLAG_FIN if fin else 0,))
                          + len(payload).to_bytes(3, "big") + payload)


class Answer:
    """What answers one forwarded connection: feed(bytes) -> reply bytes; finished after its last reply."""
    finished: bool

    def feed(self, data: bytes) -> bytes: ...


async def serve_portforward(tunnel: Tunnel, open_port: Callable[[int], Answer | str]) -> None:
    """Port-forward streams until the client leaves; open_port gives an answerer or the refusal text."""
    session = SpdySession(tunnel)
    pending: dict[str, dict[str, int]] = {}  # requestid -> streamtype -> stream id
    live: dict[int, tuple[Answer, int]] = {}  # data stream -> (answerer, its error stream)
    while (frame := await session.frame()) is not None:
        control, kind, flags, payload = frame
        if control:
            if kind == SYN_STREAM:
                stream = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
                headers = session.headers(payload[10:])
                session.reply(stream)
                pair = pending.setdefault(headers.get("requestid", ""), {})
                pair[headers.get("streamtype", "")] = stream
                if "data" in pair and "error" in pair:
                    del pending[headers.get("requestid", "")]
                    answer = open_port(int(headers.get("port") or 0))
                    if isinstance(answer, str):
                        session.data(pair["error"], answer.encode(), fin=True)
                        session.data(pair["data"], b"", fin=True)
                    else:
                        live[pair["data"]] = (answer, pair["error"])
            elif kind == PING:
                session.control(PING, 0, payload)
            elif kind == GOAWAY:
                return
            continue
        entry = live.get(kind)
        if entry is None:
            continue
        answer, error_stream = entry
        if payload:
            reply = answer.feed(payload)
            if reply:
                session.data(kind, reply)
        if answer.finished or flags & FLAG_FIN:
            del live[kind]
            session.data(kind, b"", fin=True)
            session.data(error_stream, b"", fin=True)
        await tunnel.drain()


STREAM_CHANNELS = {"stdin": 0, "stdout": 1, "stderr": 2, "error": 3, "resize": 4}
EXEC_PROTOCOLS = ("v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io")


class SpdyChannels:
    """exec/attach over SPDY with the channel interface of the WebSocket path (send, receive, close).

    The client opens one stream per channel (header streamtype); stdin's FIN is its end of file,
    given to the reader as the v5 close signal would be.
    """

    def __init__(self, tunnel: Tunnel, protocol: str) -> None:
        self.session = SpdySession(tunnel)
        self.protocol = protocol
        self.streams: dict[int, int] = {}  # channel -> stream id
        self.channels: dict[int, int] = {}  # stream id -> channel
        self.closed = False
        self.stdin_ended = False  # a FIN came with data: the end of file is reported next

    async def open(self, wanted: set[int]) -> bool:
        """Accept the client's streams until every wanted channel has one (False: it left first)."""
        while not wanted <= set(self.streams):
            frame = await self._next()
            if frame is None:
                return False
        return True

    async def _next(self) -> tuple[int, bytes] | None:
        """The next frame as (channel, data); channel -1 for frames that carry none."""
        if self.stdin_ended:
            self.stdin_ended = False
            return 255, b"\x00"
        while (frame := await self.session.frame()) is not None:
            control, kind, flags, payload = frame
            if control:
                if kind == SYN_STREAM:
                    stream = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
                    channel = STREAM_CHANNELS.get(self.session.headers(payload[10:]).get("streamtype", ""), -1)
                    self.session.reply(stream)
                    self.streams[channel], self.channels[stream] = stream, channel
                elif kind == PING:
                    self.session.control(PING, 0, payload)
                elif kind == GOAWAY:
                    break
                return -1, b""  # a control frame: nothing for the reader, but open() rechecks its streams
            channel = self.channels.get(kind, -1)
            if flags & FLAG_FIN and channel == 0:  # stdin ended (its FIN may carry the last bytes)
                if not payload:
                    return 255, b"\x00"
                self.stdin_ended = True
            return channel, payload
        self.closed = True
        return None

    async def receive(self) -> tuple[int, bytes] | None:
        while True:
            message = await self._next()
            if message is None or message[0] >= 0:
                return message

    def send(self, channel: int, data: bytes) -> None:
        stream = self.streams.get(channel)
        if stream is not None and not self.closed:
            self.session.data(stream, data)

    def close(self, code: int = 1000) -> None:
        if not self.closed:
            self.closed = True
            for channel, stream in self.streams.items():
                if channel != 0:
                    self.session.data(stream, b"", fin=True)
