"""kill -9 the store at random moments under concurrent write load, many times.

After every restart: each acknowledged write is there with its value, no transaction is half
applied, and revisions never go backwards. Writers use two-key transactions (a, b with the same
value), so a torn transaction would show as an `a` without its `b`.
"""

from __future__ import annotations

import asyncio
import random

import grpc
import pytest

from tests.harness import Server
from ultraplane.etcd.proto import rpc_pb2, rpc_pb2_grpc

ITERATIONS = 12
WRITERS = 24


def txn_pair(prefix: bytes, value: bytes) -> rpc_pb2.TxnRequest:
    ops = [rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=prefix + suffix, value=value)) for suffix in (b"/a", b"/b")]
    return rpc_pb2.TxnRequest(success=ops)


async def write_until_failure(endpoint: str, iteration: int, acked: dict[bytes, tuple[bytes, int]]) -> None:
    async with grpc.aio.insecure_channel(endpoint) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)

        async def writer(w: int) -> None:
            seq = 0
            while True:
                prefix = f"crash/{iteration:03d}/{w:02d}/{seq:06d}".encode()
                value = f"v{iteration}-{w}-{seq}".encode()
                try:
                    if seq % 2:
                        resp = await kv.Txn(txn_pair(prefix, value), timeout=5)
                        acked[prefix + b"/a"] = (value, resp.header.revision)
                        acked[prefix + b"/b"] = (value, resp.header.revision)
                    else:
                        resp = await kv.Put(rpc_pb2.PutRequest(key=prefix + b"/a", value=value), timeout=5)
                        acked[prefix + b"/a"] = (value, resp.header.revision)
                except grpc.aio.AioRpcError:
                    return  # the server died under us; everything acknowledged so far must survive
                seq += 1

        await asyncio.gather(*(writer(w) for w in range(WRITERS)))


async def read_all(endpoint: str) -> tuple[dict[bytes, bytes], int]:
    async with grpc.aio.insecure_channel(endpoint) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)
        resp = await kv.Range(rpc_pb2.RangeRequest(key=b"crash/", range_end=b"crash0"), timeout=30)
        return {item.key: item.value for item in resp.kvs}, resp.header.revision


@pytest.mark.timeout(600)
def test_acknowledged_writes_survive_kill9() -> None:
    rng = random.Random()
    server = Server(kind="ultraplane", label="ultraplane")
    server.start()
    acked: dict[bytes, tuple[bytes, int]] = {}
    last_revision = 0
    try:
        for iteration in range(ITERATIONS):
            async def load_then_kill(iteration: int = iteration) -> None:
                load = asyncio.ensure_future(write_until_failure(server.endpoint, iteration, acked))
                await asyncio.sleep(rng.uniform(0.2, 1.0))
                server.kill9()
                await asyncio.wait_for(load, 30)

            asyncio.run(load_then_kill())
            server.restart()
            stored, revision = asyncio.run(read_all(server.endpoint))

            lost = [k for k, (v, _) in acked.items() if stored.get(k) != v]
            assert not lost, f"iteration {iteration}: {len(lost)} acknowledged writes lost, e.g. {lost[:3]}"
            torn = [k for k in stored if k.endswith(b"/b") and stored.get(k[:-2] + b"/a") != stored[k]]
            torn += [
                k for k in stored
                if k.endswith(b"/a") and int(k.split(b"/")[3]) % 2 and stored.get(k[:-2] + b"/b") != stored[k]
            ]
            assert not torn, f"iteration {iteration}: half-applied transactions: {torn[:3]}"
            max_acked = max((rev for _, rev in acked.values()), default=0)
            assert revision >= max_acked >= last_revision, "revision went backwards across a crash"
            last_revision = revision
        assert len(acked) > ITERATIONS * WRITERS, "the load never got going; the test proved nothing"
    finally:
        server.stop()
        server.cleanup()
