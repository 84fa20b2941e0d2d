"""serve_h2 (and serve_grpcio for parity) driven by grpcio's Python client."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import transport_echo_pb2 as pb
import transport_echo_pb2_grpc as pb_grpc
from conftest import MAX_RECV, Pki, RunningServer

BIG = 64 * 1024 * 1024
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", BIG), ("grpc.max_send_message_length", BIG)]


def _stub(
    target: str, credentials: grpc.ChannelCredentials | None = None, **kwargs: object
) -> pb_grpc.EchoStub:
    if credentials is None:
        channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS, **kwargs)
    else:
        channel = grpc.secure_channel(target, credentials, options=CHANNEL_OPTIONS, **kwargs)
    return pb_grpc.EchoStub(channel)


def test_unary_echo_with_metadata_and_peer(any_server: RunningServer) -> None:
    stub = _stub(any_server.target)
    reply = stub.Unary(pb.EchoRequest(text="hello"), metadata=[("token", "s3cret"), ("x-trace", "42")])
    assert reply.text == "hello"
    assert reply.metadata["token"] == "s3cret"
    assert reply.metadata["x-trace"] == "42"
    assert reply.peer.startswith("127.0.0.1:")
    assert reply.peer_cn == ""


def test_unary_handler_that_suspends(any_server: RunningServer) -> None:
    stub = _stub(any_server.target)
    assert stub.Unary(pb.EchoRequest(text="later", sleep_ms=20)).text == "later"


def test_rpc_error_code_and_message(any_server: RunningServer) -> None:
    stub = _stub(any_server.target)
    message = "key not found: 100% ünïcode\nsecond line"
    with pytest.raises(grpc.RpcError) as info:
        stub.Unary(pb.EchoRequest(fail_code=grpc.StatusCode.NOT_FOUND.value[0], fail_message=message))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details() == message
    # the server keeps serving on the same connection
    assert stub.Unary(pb.EchoRequest(text="still here")).text == "still here"


def test_unexpected_exception_is_unknown(h2_server: RunningServer) -> None:
    stub = _stub(h2_server.target)
    with pytest.raises(grpc.RpcError) as info:
        stub.Unary(pb.EchoRequest(fail_code=-1, fail_message="oops"))
    assert info.value.code() == grpc.StatusCode.UNKNOWN
    assert info.value.details() == "handler blew up: oops"
    assert stub.Unary(pb.EchoRequest(text="ok")).text == "ok"


def test_error_after_suspending_and_in_streams(h2_server: RunningServer) -> None:
    stub = _stub(h2_server.target)
    with pytest.raises(grpc.RpcError) as info:
        stub.Unary(pb.EchoRequest(fail_code=9, fail_message="precondition", sleep_ms=5))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    stream = stub.ServerStream(pb.EchoRequest(repeat=3, fail_code=11, fail_message="out of range"))
    received = []
    with pytest.raises(grpc.RpcError) as info:
        for reply in stream:
            received.append(reply.index)
    assert received == [0, 1, 2]
    assert info.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert info.value.details() == "out of range"


def test_unknown_method_is_unimplemented(any_server: RunningServer) -> None:
    channel = grpc.insecure_channel(any_server.target)
    for path in ("/uptest.Echo/Nope", "/nosuch.Service/Call"):
        call = channel.unary_unary(path, request_serializer=lambda m: m, response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as info:
            call(b"")
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_server_stream_8mb_needs_flow_control(any_server: RunningServer) -> None:
    stub = _stub(any_server.target)
    replies = list(stub.ServerStream(pb.EchoRequest(text="chunk", repeat=8, size=1024 * 1024)))
    assert [reply.index for reply in replies] == list(range(8))
    assert all(len(reply.payload) == 1024 * 1024 for reply in replies)


def test_single_8mb_unary_response(h2_server: RunningServer) -> None:
    stub = _stub(h2_server.target)
    reply = stub.Unary(pb.EchoRequest(text="big", size=8 * 1024 * 1024))
    assert len(reply.payload) == 8 * 1024 * 1024
    assert set(reply.payload) == {ord("p")}


def test_large_request_within_limit(any_server: RunningServer) -> None:
    stub = _stub(any_server.target)
    reply = stub.Unary(pb.EchoRequest(blob=b"r" * (3 * 1024 * 1024)))
    assert reply.blob_size == 3 * 1024 * 1024


def test_oversized_request_is_resource_exhausted(h2_server: RunningServer) -> None:
    stub = _stub(h2_server.target)
    request = pb.EchoRequest(blob=b"r" * (5 * 1024 * 1024))
    with pytest.raises(grpc.RpcError) as info:
        stub.Unary(request)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert info.value.details() == (
        f"grpc: received message larger than max ({request.ByteSize()} vs. {MAX_RECV})"
    )
    assert stub.Unary(pb.EchoRequest(text="after")).text == "after"


def test_bidi_ping_pong(any_server: RunningServer) -> None:
    stub = _stub(any_server.target)
    outgoing: list[pb.EchoRequest] = []
    ready = threading.Condition()

    def requests():
        for index in range(5):
            with ready:
                # send the next request only once the previous reply came back: proves
                # replies stream while the request side is still open
                ready.wait_for(lambda index=index: len(outgoing) == index, timeout=10)
            yield pb.EchoRequest(text=f"m{index}", size=10)

    replies = []
    for reply in stub.Bidi(requests()):
        replies.append(reply.text)
        with ready:
            outgoing.append(reply)
            ready.notify_all()
    assert replies == ["m0", "m1", "m2", "m3", "m4", "end"]


def test_bidi_large_messages_both_ways(h2_server: RunningServer) -> None:
    stub = _stub(h2_server.target)
    requests = [pb.EchoRequest(text=str(i), blob=b"q" * 1_500_000, size=1_500_000) for i in range(6)]
    replies = list(stub.Bidi(iter(requests)))
    assert [reply.text for reply in replies] == [str(i) for i in range(6)] + ["end"]
    assert all(len(reply.payload) == 1_500_000 for reply in replies[:-1])


def test_bidi_error(h2_server: RunningServer) -> None:
    stub = _stub(h2_server.target)
    requests = [pb.EchoRequest(text="a"), pb.EchoRequest(fail_code=7, fail_message="denied")]
    received = []
    with pytest.raises(grpc.RpcError) as info:
        for reply in stub.Bidi(iter(requests)):
            received.append(reply.text)
    assert received == ["a"]
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_concurrent_calls_on_one_channel(any_server: RunningServer) -> None:
    stub = _stub(any_server.target)
    futures = [
        stub.Unary.future(pb.EchoRequest(text=f"c{i}", sleep_ms=i % 3, size=i % 7 * 1000)) for i in range(300)
    ]
    replies = [future.result(timeout=60) for future in futures]
    assert [reply.text for reply in replies] == [f"c{i}" for i in range(300)]
    assert [len(reply.payload) for reply in replies] == [i % 7 * 1000 for i in range(300)]


def test_concurrent_streams_and_unary_mixed(h2_server: RunningServer) -> None:
    stub = _stub(h2_server.target)

    def stream_total(_: int) -> int:
        return sum(len(r.payload) for r in stub.ServerStream(pb.EchoRequest(repeat=4, size=300_000)))

    with ThreadPoolExecutor(8) as pool:
        totals = list(pool.map(stream_total, range(8)))
        texts = list(pool.map(lambda i: stub.Unary(pb.EchoRequest(text=str(i))).text, range(50)))
    assert totals == [1_200_000] * 8
    assert texts == [str(i) for i in range(50)]


def test_gzip_compressed_requests(any_server: RunningServer) -> None:
    stub = _stub(any_server.target, compression=grpc.Compression.Gzip)
    reply = stub.Unary(pb.EchoRequest(text="zipped", blob=b"z" * 100_000))
    assert reply.text == "zipped"
    assert reply.blob_size == 100_000


def test_deadline_cancels_handler(any_server: RunningServer) -> None:
    stub = _stub(any_server.target)
    with pytest.raises(grpc.RpcError) as info:
        stub.Unary(pb.EchoRequest(block=True), timeout=0.3)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert any_server.service.cancelled.wait(10)


def test_client_cancel_cancels_stream_handler(any_server: RunningServer) -> None:
    stub = _stub(any_server.target)
    call = stub.ServerStream(pb.EchoRequest(repeat=2, block=True))
    assert next(call).index == 0
    assert next(call).index == 1
    assert any_server.service.blocked.wait(10)
    call.cancel()
    assert any_server.service.cancelled.wait(10)
    assert stub.Unary(pb.EchoRequest(text="alive")).text == "alive"


def test_tls_with_client_certificate(start_server, pki: Pki) -> None:
    running = start_server("h2", ssl_context=pki.server_context())
    with_cert = grpc.ssl_channel_credentials(pki.ca_pem, pki.client_key_pem, pki.client_cert_pem)
    reply = _stub(running.target, with_cert).Unary(pb.EchoRequest(text="tls"))
    assert reply.text == "tls"
    assert reply.peer_cn == "alice"
    without_cert = grpc.ssl_channel_credentials(pki.ca_pem)
    reply = _stub(running.target, without_cert).Unary(pb.EchoRequest(text="anon"))
    assert reply.peer_cn == ""
    big = list(_stub(running.target, with_cert).ServerStream(pb.EchoRequest(repeat=4, size=1 << 20)))
    assert len(big) == 4


def test_tls_required_client_certificate(start_server, pki: Pki) -> None:
    import ssl

    running = start_server("h2", ssl_context=pki.server_context(ssl.CERT_REQUIRED))
    stub = _stub(running.target, grpc.ssl_channel_credentials(pki.ca_pem))
    with pytest.raises(grpc.RpcError) as info:
        stub.Unary(pb.EchoRequest(text="no cert"), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_grpcio_tls_peer_common_name(start_server, pki: Pki) -> None:
    running = start_server(
        "grpcio",
        cert_chain=pki.server_cert_pem,
        private_key=pki.server_key_pem,
        root_certificates=pki.ca_pem,
        require_client_auth=True,  # grpcio only asks for client certificates when it requires them
    )
    credentials = grpc.ssl_channel_credentials(pki.ca_pem, pki.client_key_pem, pki.client_cert_pem)
    assert _stub(running.target, credentials).Unary(pb.EchoRequest(text="x")).peer_cn == "alice"


def test_close_lets_inflight_call_finish(start_server) -> None:
    running = start_server("h2")
    stub = _stub(running.target)
    assert stub.Unary(pb.EchoRequest(text="warm")).text == "warm"
    future = stub.Unary.future(pb.EchoRequest(text="slow", sleep_ms=300))
    # wait until the call is in the handler, then close gracefully
    import time

    deadline = time.monotonic() + 10
    while not any(conn.streams for conn in running.server.connections) and time.monotonic() < deadline:
        time.sleep(0.01)
    running.loop.run(running.server.close(5.0))
    assert future.result(timeout=10).text == "slow"
    with pytest.raises(grpc.RpcError) as info:
        stub.Unary(pb.EchoRequest(text="refused"), timeout=2)
    assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_close_aborts_streams_that_outlive_the_grace_period(start_server) -> None:
    running = start_server("h2")
    stub = _stub(running.target)
    call = stub.ServerStream(pb.EchoRequest(repeat=1, block=True))
    assert next(call).index == 0
    assert running.service.blocked.wait(10)
    running.loop.run(running.server.close(0.3))
    assert running.service.cancelled.wait(10)
    with pytest.raises(grpc.RpcError) as info:
        next(call)
    assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL)
