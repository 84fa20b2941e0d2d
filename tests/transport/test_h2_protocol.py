"""serve_h2 at the HTTP/2 level: raw sockets for protocol errors, the h2 library for flow control."""

from __future__ import annotations

import socket
import struct

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
import pytest
import transport_echo_pb2 as pb
from conftest import RunningServer

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    range(10)
)
END_STREAM, ACK, END_HEADERS, PADDED = 0x1, 0x1, 0x4, 0x8


def frame(ftype: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return (
        struct.pack(">L", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">L", stream_id) + payload
    )


def grpc_message(message: pb.EchoRequest) -> bytes:
    body = message.SerializeToString()
    return struct.pack(">BL", 0, len(body)) + body


class RawClient:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buffer = b""
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def handshake(self) -> None:
        self.send(PREFACE + frame(SETTINGS, 0, 0))

    def request_headers(self, path: str = "/uptest.Echo/Unary", **extra: str) -> bytes:
        fields = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "test"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *extra.items(),
        ]
        return self.encoder.encode(fields)

    def read_frame(self) -> tuple[int, int, int, bytes] | None:
        while True:
            if len(self.buffer) >= 9:
                length = int.from_bytes(self.buffer[:3], "big")
                if len(self.buffer) >= 9 + length:
                    ftype, flags = self.buffer[3], self.buffer[4]
                    stream_id = int.from_bytes(self.buffer[5:9], "big") & 0x7FFFFFFF
                    payload = self.buffer[9 : 9 + length]
                    self.buffer = self.buffer[9 + length :]
                    return ftype, flags, stream_id, payload
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buffer += chunk

    def frames_until_close(self) -> list[tuple[int, int, int, bytes]]:
        frames = []
        while (item := self.read_frame()) is not None:
            frames.append(item)
        return frames

    def goaway_code(self) -> int:
        goaways = [payload for ftype, _, _, payload in self.frames_until_close() if ftype == GOAWAY]
        assert goaways, "expected a GOAWAY"
        return struct.unpack(">LL", goaways[-1][:8])[1]

    def wait_for(self, ftype: int, stream_id: int | None = None) -> tuple[int, int, int, bytes]:
        while (item := self.read_frame()) is not None:
            if item[0] == ftype and (stream_id is None or item[2] == stream_id):
                return item
        raise AssertionError(f"connection closed before frame type {ftype}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw(h2_server: RunningServer):
    client = RawClient(h2_server.port)
    yield client
    client.close()


def test_server_sends_settings_and_acks_ours(raw: RawClient) -> None:
    raw.handshake()
    ftype, flags, _, payload = raw.read_frame()
    assert (ftype, flags) == (SETTINGS, 0)
    settings = dict(struct.unpack(">HL", payload[i : i + 6]) for i in range(0, len(payload), 6))
    assert settings[4] == 1 << 20  # INITIAL_WINDOW_SIZE
    raw.wait_for(SETTINGS)  # the ACK of ours
    raw.send(frame(PING, 0, 0, b"12345678"))
    ftype, flags, _, payload = raw.wait_for(PING)
    assert (flags, payload) == (ACK, b"12345678")


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        (frame(DATA, 0, 0, b"x"), 0x1),  # DATA on stream 0
        (frame(PING, 0, 0, b"short"), 0x6),  # bad PING size
        (frame(PING, 0, 3, b"12345678"), 0x1),  # PING on a stream
        (frame(WINDOW_UPDATE, 0, 0, struct.pack(">L", 0)), 0x1),  # zero increment
        (frame(WINDOW_UPDATE, 0, 0, struct.pack(">L", 2**31 - 1)), 0x3),  # window overflow
        (frame(SETTINGS, 0, 0, b"\x00\x04\x80\x00\x00\x00"), 0x3),  # INITIAL_WINDOW_SIZE > 2^31-1
        (frame(SETTINGS, 0, 0, b"\x00\x05\x00\x00\x00\x01"), 0x1),  # MAX_FRAME_SIZE too small
        (frame(SETTINGS, 0, 0, b"\x00\x04\x00"), 0x6),  # length not a multiple of 6
        (frame(SETTINGS, ACK, 0, b"\x00\x04\x00\x00\x00\x01"), 0x6),  # ACK with payload
        (frame(CONTINUATION, END_HEADERS, 1, b"\x82"), 0x1),  # CONTINUATION without HEADERS
        (frame(HEADERS, END_HEADERS, 2, b"\x83"), 0x1),  # even stream id
        (frame(HEADERS, END_HEADERS, 1, b"\xff\xff\xff\xff\xff\xff"), 0x9),  # undecodable header block
        (frame(RST_STREAM, 0, 5, struct.pack(">L", 0)), 0x1),  # RST_STREAM on an idle stream
        (frame(DATA, 0, 7, b"x"), 0x1),  # DATA on an idle stream
        (frame(PUSH_PROMISE, END_HEADERS, 1, b"\x00\x00\x00\x02"), 0x1),
        (frame(DATA, 0, 1, b"x" * 20000), 0x6),  # larger than our MAX_FRAME_SIZE
    ],
)
def test_protocol_errors_get_goaway(raw: RawClient, frames: bytes, code: int) -> None:
    raw.handshake()
    raw.send(frames)
    assert raw.goaway_code() == code


def test_bad_preface(raw: RawClient) -> None:
    raw.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert raw.goaway_code() == 0x1


def test_first_frame_must_be_settings(raw: RawClient) -> None:
    raw.send(PREFACE + frame(PING, 0, 0, b"12345678"))
    assert raw.goaway_code() == 0x1


def test_interleaved_frame_inside_header_block(raw: RawClient) -> None:
    raw.handshake()
    block = raw.request_headers()
    raw.send(frame(HEADERS, 0, 1, block[:3]) + frame(PING, 0, 0, b"12345678"))
    assert raw.goaway_code() == 0x1


def test_discarded_request_data_still_credits_the_connection_window(raw: RawClient) -> None:
    """An oversized request is refused at once; the rest of its DATA is dropped but still
    credited, so 20 MiB of ignored data (beyond the 16 MiB window) does not wedge the connection."""
    raw.handshake()
    raw.wait_for(SETTINGS)
    raw.send(frame(HEADERS, END_HEADERS, 1, raw.request_headers()))
    first = struct.pack(">BL", 0, 20 << 20) + b"\x00" * (16384 - 5)
    raw.send(frame(DATA, 0, 1, first))
    _, flags, _, payload = raw.wait_for(HEADERS, 1)
    assert flags & END_STREAM
    assert dict(raw.decoder.decode(payload))["grpc-status"] == "8"
    chunk = frame(DATA, 0, 1, b"\x00" * 16384)
    for _ in range((20 << 20) // 16384):
        raw.send(chunk)
    raw.send(frame(HEADERS, END_HEADERS, 3, raw.request_headers()))
    raw.send(frame(DATA, END_STREAM, 3, grpc_message(pb.EchoRequest(text="still flowing"))))
    _, _, _, data = raw.wait_for(DATA, 3)
    assert pb.EchoReply.FromString(data[5:]).text == "still flowing"


def test_padding_continuation_priority_and_trailers_only_errors(raw: RawClient) -> None:
    raw.handshake()
    block = raw.request_headers(**{"x-custom": "v1"})
    # HEADERS with PADDED + PRIORITY flags, split across a CONTINUATION
    head = bytes([4]) + struct.pack(">LB", 0, 16) + block[:5] + b"\x00" * 4
    raw.send(frame(HEADERS, PADDED | 0x20, 1, head) + frame(CONTINUATION, END_HEADERS, 1, block[5:]))
    raw.send(frame(PRIORITY, 0, 1, struct.pack(">LB", 0, 1)))
    body = grpc_message(pb.EchoRequest(text="padded"))
    raw.send(frame(DATA, PADDED | END_STREAM, 1, bytes([3]) + body + b"\x00\x00\x00"))
    ftype, flags, _, payload = raw.wait_for(HEADERS, 1)
    headers = dict(raw.decoder.decode(payload))
    assert headers[":status"] == "200" and headers["content-type"] == "application/grpc"
    _, _, _, data = raw.wait_for(DATA, 1)
    reply = pb.EchoReply.FromString(data[5:])
    assert reply.text == "padded" and reply.metadata["x-custom"] == "v1"
    ftype, flags, _, payload = raw.wait_for(HEADERS, 1)
    assert flags & END_STREAM and dict(raw.decoder.decode(payload))["grpc-status"] == "0"

    # unknown method: one trailers-only HEADERS frame
    raw.send(frame(HEADERS, END_HEADERS | END_STREAM, 3, raw.request_headers("/uptest.Echo/Missing")))
    ftype, flags, _, payload = raw.wait_for(HEADERS, 3)
    headers = dict(raw.decoder.decode(payload))
    assert flags & END_STREAM
    assert headers["grpc-status"] == "12"
    assert headers["grpc-message"] == "unknown method Missing for service uptest.Echo"

    # compressed flag without a grpc-encoding
    raw.send(frame(HEADERS, END_HEADERS, 5, raw.request_headers()))
    raw.send(frame(DATA, END_STREAM, 5, b"\x01\x00\x00\x00\x01x"))
    _, _, _, payload = raw.wait_for(HEADERS, 5)
    assert dict(raw.decoder.decode(payload))["grpc-status"] == "13"

    # an encoding we do not implement
    raw.send(frame(HEADERS, END_HEADERS, 7, raw.request_headers(**{"grpc-encoding": "snappy"})))
    raw.send(frame(DATA, END_STREAM, 7, b"\x01\x00\x00\x00\x01x"))
    _, _, _, payload = raw.wait_for(HEADERS, 7)
    assert dict(raw.decoder.decode(payload))["grpc-status"] == "12"

    # wrong content-type: HTTP 415
    fields = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/uptest.Echo/Unary"),
        ("content-type", "text/plain"),
    ]
    raw.send(frame(HEADERS, END_HEADERS | END_STREAM, 9, raw.encoder.encode(fields)))
    _, _, _, payload = raw.wait_for(HEADERS, 9)
    assert dict(raw.decoder.decode(payload))[":status"] == "415"

    # client reset of an open stream is fine; a later stream still works
    raw.send(
        frame(HEADERS, END_HEADERS, 11, raw.request_headers())
        + frame(RST_STREAM, 0, 11, struct.pack(">L", 8))
    )
    raw.send(frame(HEADERS, END_HEADERS, 13, raw.request_headers()))
    raw.send(frame(DATA, END_STREAM, 13, grpc_message(pb.EchoRequest(text="after reset"))))
    _, _, _, data = raw.wait_for(DATA, 13)
    assert pb.EchoReply.FromString(data[5:]).text == "after reset"


def _h2_client(
    port: int, window: int, max_frame: int = 16384
) -> tuple[socket.socket, h2.connection.H2Connection]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.local_settings = h2.settings.Settings(
        client=True,
        initial_values={
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window,
            h2.settings.SettingCodes.MAX_FRAME_SIZE: max_frame,
            h2.settings.SettingCodes.HEADER_TABLE_SIZE: 0,  # our responses must not rely on a dynamic table
        },
    )
    conn.max_inbound_frame_size = max_frame  # h2 derives it from the settings it was built with
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    return sock, conn


@pytest.mark.parametrize(("window", "max_frame"), [(1024, 16384), (40000, 1 << 20)])
def test_server_respects_client_windows_and_frame_size(
    h2_server: RunningServer, window: int, max_frame: int
) -> None:
    """With a small stream window and connection window updates only as data is read, the
    server must wait for WINDOW_UPDATEs; the h2 library raises FlowControlError if it
    overruns a window and FrameTooLargeError if it ignores MAX_FRAME_SIZE."""
    sock, conn = _h2_client(h2_server.port, window, max_frame)
    headers = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/uptest.Echo/ServerStream"),
        (":authority", "test"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]
    conn.send_headers(1, headers)
    conn.send_data(1, grpc_message(pb.EchoRequest(repeat=3, size=200_000)), end_stream=True)
    sock.sendall(conn.data_to_send())
    received = bytearray()
    unacked = 0
    status = None
    max_unacked = 0
    while status is None:
        data = sock.recv(65536)
        assert data, "server closed the connection"
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.DataReceived):
                received += event.data
                unacked += event.flow_controlled_length
                max_unacked = max(max_unacked, unacked)
            elif isinstance(event, h2.events.TrailersReceived):
                status = dict(event.headers)["grpc-status"]
        if unacked >= min(window, 16384):
            # open the window in small steps, only after the previous credit was used
            conn.acknowledge_received_data(unacked, 1)
            unacked = 0
        sock.sendall(conn.data_to_send())
    sock.close()
    assert status == "0"
    assert max_unacked <= 65535  # never more than the initial connection window in flight
    messages = []
    offset = 0
    while offset < len(received):
        size = struct.unpack(">L", received[offset + 1 : offset + 5])[0]
        messages.append(pb.EchoReply.FromString(bytes(received[offset + 5 : offset + 5 + size])))
        offset += 5 + size
    assert [m.index for m in messages] == [0, 1, 2]
    assert all(len(m.payload) == 200_000 for m in messages)


def test_many_concurrent_streams_on_one_connection(h2_server: RunningServer) -> None:
    sock, conn = _h2_client(h2_server.port, 65535)
    headers = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/uptest.Echo/Unary"),
        (":authority", "test"),
        ("content-type", "application/grpc"),
    ]
    stream_ids = [1 + 2 * i for i in range(500)]
    for stream_id in stream_ids:
        conn.send_headers(stream_id, headers)
    for stream_id in reversed(stream_ids):
        conn.send_data(
            stream_id, grpc_message(pb.EchoRequest(text=str(stream_id), sleep_ms=stream_id % 5)), True
        )
    sock.sendall(conn.data_to_send())
    replies: dict[int, bytes] = {}
    ended: set[int] = set()
    while len(ended) < len(stream_ids):
        data = sock.recv(65536)
        assert data
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.DataReceived):
                replies[event.stream_id] = replies.get(event.stream_id, b"") + event.data
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                ended.add(event.stream_id)
        sock.sendall(conn.data_to_send())
    sock.close()
    assert {sid: pb.EchoReply.FromString(body[5:]).text for sid, body in replies.items()} == {
        sid: str(sid) for sid in stream_ids
    }


def test_graceful_goaway_on_close(start_server) -> None:
    running = start_server("h2")
    client = RawClient(running.port)
    client.handshake()
    client.wait_for(SETTINGS)
    running.loop.run(running.server.close(2.0))
    ftype, _, _, payload = client.wait_for(GOAWAY)
    assert struct.unpack(">LL", payload[:8])[1] == 0
    assert client.read_frame() is None or True
    client.close()


def test_client_trailers_end_the_request_and_server_deadline(raw: RawClient) -> None:
    raw.handshake()
    # request ended by a trailing HEADERS frame rather than END_STREAM on DATA
    raw.send(frame(HEADERS, END_HEADERS, 1, raw.request_headers()))
    raw.send(frame(DATA, 0, 1, grpc_message(pb.EchoRequest(text="trailered"))))
    raw.send(frame(HEADERS, END_HEADERS | END_STREAM, 1, raw.encoder.encode([("x-trailer", "1")])))
    _, _, _, data = raw.wait_for(DATA, 1)
    assert pb.EchoReply.FromString(data[5:]).text == "trailered"
    # grpc-timeout: the server itself ends a call that overruns its deadline
    raw.send(frame(HEADERS, END_HEADERS, 3, raw.request_headers(**{"grpc-timeout": "100m"})))
    raw.send(frame(DATA, END_STREAM, 3, grpc_message(pb.EchoRequest(block=True))))
    _, flags, _, payload = raw.wait_for(HEADERS, 3)
    headers = dict(raw.decoder.decode(payload))
    assert flags & END_STREAM
    assert headers["grpc-status"] == "4"


def test_plain_asyncio_loop(start_server) -> None:
    running = start_server("h2", use_uvloop=False)
    client = RawClient(running.port)
    client.handshake()
    client.send(frame(HEADERS, END_HEADERS, 1, client.request_headers()))
    client.send(frame(DATA, END_STREAM, 1, grpc_message(pb.EchoRequest(text="asyncio"))))
    _, _, _, data = client.wait_for(DATA, 1)
    assert pb.EchoReply.FromString(data[5:]).text == "asyncio"
    client.close()
