"""The registry's HTTP/1.1 layer: keep-alive and pipelining, streaming a large body both ways, and closing
connections that go quiet mid-request."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from pathlib import Path

import pytest

from ultraplane.registry import http
from ultraplane.registry.server import Registry, RegistryConfig


async def exchange(port: int, payload: bytes, *, until: bytes = b"", timeout: float = 30.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    await writer.drain()
    answer = b""
    try:
        while until not in answer or not until:
            chunk = await asyncio.wait_for(reader.read(1 << 16), timeout)
            if not chunk:
                break
            answer += chunk
    finally:
        writer.close()
    return answer


@pytest.fixture
async def plain_registry(tmp_path: Path):  # type: ignore[no-untyped-def]
    registry = Registry(RegistryConfig(tmp_path, port=0, tls=False, auth=False, gc_interval=0))
    await registry.start()
    yield registry
    await registry.close()


async def test_pipelined_requests_are_answered_in_order(plain_registry: Registry) -> None:
    requests = b"".join(f"GET /v2/pipe/app{i}/tags/list HTTP/1.1\r\nHost: x\r\n\r\n".encode() for i in range(3))
    answer = await exchange(plain_registry.port, requests + b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.count(b"HTTP/1.1 404 ") == 3 and answer.count(b"HTTP/1.1 200 ") == 1
    assert answer.index(b"pipe/app0") < answer.index(b"pipe/app1") < answer.index(b"pipe/app2")


async def test_large_blob_streams_in_and_out(plain_registry: Registry) -> None:
    data = os.urandom(24 << 20)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    reader, writer = await asyncio.open_connection("127.0.0.1", plain_registry.port)
    writer.write(f"POST /v2/big/app/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: x\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode())
    for offset in range(0, len(data), 1 << 20):
        writer.write(data[offset:offset + (1 << 20)])
        await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 201 ")
    writer.write(f"GET /v2/big/app/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and f"Content-Length: {len(data)}".encode() in head
    hasher, received = hashlib.sha256(), 0
    while received < len(data):
        chunk = await reader.read(1 << 20)
        hasher.update(chunk)
        received += len(chunk)
    writer.close()
    assert "sha256:" + hasher.hexdigest() == digest


async def test_quiet_connections_are_closed(plain_registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http, "IDLE_TIMEOUT", 0.5)
    started = time.monotonic()
    half_head = await exchange(plain_registry.port, b"GET /v2/ HTTP/1.1\r\nHost: x\r\n", timeout=10)
    assert half_head == b"" and time.monotonic() - started < 8
    stalled_body = await exchange(plain_registry.port, b"POST /v2/stall/app/blobs/uploads/?digest=sha256:"
                                  + b"0" * 64 + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\npartial",
                                  timeout=10)
    assert stalled_body == b""
    assert plain_registry.storage.upload_count() == 0  # the half-received upload was discarded
    answer = await exchange(plain_registry.port, b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ")


async def test_oversized_uploads_are_refused_whole(tmp_path: Path) -> None:
    registry = Registry(RegistryConfig(tmp_path, port=0, tls=False, auth=False, gc_interval=0, max_blob_size=1000))
    await registry.start()
    try:
        data = os.urandom(1500)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        monolithic = await exchange(registry.port, f"POST /v2/big/app/blobs/uploads/?digest={digest} HTTP/1.1\r\n"
                                    f"Host: x\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)
        assert monolithic.startswith(b"HTTP/1.1 413 ") and b'"SIZE_INVALID"' in monolithic
        started = await exchange(registry.port, b"POST /v2/big/app/blobs/uploads/ HTTP/1.1\r\nHost: x\r\n"
                                 b"Connection: close\r\n\r\n")
        location = started.split(b"Location: ")[1].split(b"\r\n")[0].decode()
        first = await exchange(registry.port, f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Length: 600\r\n"
                               f"Content-Range: 0-599\r\nConnection: close\r\n\r\n".encode() + data[:600])
        assert first.startswith(b"HTTP/1.1 202 ")
        chunked = b"".join([b"%x\r\n" % 300 + data[600 + i:900 + i] + b"\r\n" for i in (0, 300)]) + b"0\r\n\r\n"
        second = await exchange(registry.port, f"PATCH {location} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                                f"Connection: close\r\n\r\n".encode() + chunked)
        assert second.startswith(b"HTTP/1.1 413 ")
        gone = await exchange(registry.port, f"GET {location} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        assert gone.startswith(b"HTTP/1.1 404 ") and b"BLOB_UPLOAD_UNKNOWN" in gone
        assert registry.storage.upload_count() == 0 and not registry.storage.blob_path(digest).exists()
        assert list((tmp_path / "storage" / "uploads").iterdir()) == []
    finally:
        await registry.close()


async def test_a_session_takes_one_writer_at_a_time(plain_registry: Registry) -> None:
    started = await exchange(plain_registry.port, b"POST /v2/busy/app/blobs/uploads/ HTTP/1.1\r\nHost: x\r\n"
                             b"Connection: close\r\n\r\n")
    location = started.split(b"Location: ")[1].split(b"\r\n")[0].decode()
    data = os.urandom(3 << 20)
    reader, writer = await asyncio.open_connection("127.0.0.1", plain_registry.port)
    writer.write(f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n\r\n".encode()
                 + data[:1 << 20])
    await writer.drain()
    upload_id = location.rsplit("/", 1)[1]
    deadline = time.monotonic() + 10
    while not plain_registry.storage.get_upload("busy/app", upload_id).busy and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    second = await exchange(plain_registry.port, f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                            "Connection: close\r\n\r\nabc".encode())
    assert second.startswith(b"HTTP/1.1 409 ") and b"BLOB_UPLOAD_INVALID" in second
    writer.write(data[1 << 20:])
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    writer.close()
    assert head.startswith(b"HTTP/1.1 202 ") and f"Range: 0-{len(data) - 1}".encode() in head
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    done = await exchange(plain_registry.port, f"PUT {location}?digest={digest} HTTP/1.1\r\nHost: x\r\n"
                          "Content-Length: 0\r\nConnection: close\r\n\r\n".encode())
    assert done.startswith(b"HTTP/1.1 201 ")
    assert plain_registry.storage.blob_path(digest).read_bytes() == data
