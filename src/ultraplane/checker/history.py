"""Record histories and watch streams from an etcd v3 endpoint (grpc.aio + ultraplane stubs).

``record_history`` runs N concurrent clients, each doing a bounded number of random operations
(get / put / delete / txn comparing a key's mod_revision) on a small key set under a prefix, and
records each one's invocation and completion (``time.monotonic_ns``) and result as a
:class:`~ultraplane.checker.linearizability.Operation`. An RPC error or timeout is recorded as an
unknown outcome (``complete=None``): the write may or may not have happened.

``WatchRecorder`` keeps a watch open (with prev_kv) while the load runs and, at the end, uses a
progress request to learn the revision it has caught up to.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from ultraplane.checker.linearizability import (
    Cmp,
    Delete,
    DeleteOutput,
    Get,
    GetOutput,
    KVRead,
    KVState,
    Operation,
    Put,
    PutOutput,
    Txn,
    TxnOutput,
)
from ultraplane.checker.watch import WatchEvent, WatchStream
from ultraplane.etcd.proto import rpc_pb2, rpc_pb2_grpc


def prefix_end(prefix: bytes) -> bytes:
    """The range_end that selects every key starting with ``prefix``."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return b"\0"
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


@dataclass(slots=True)
class RecordedHistory:
    ops: list[Operation]
    initial: KVState
    keys: list[bytes]
    unknown: int = 0  # ops with an unknown outcome


@dataclass(slots=True)
class _Client:
    cid: int
    kv: rpc_pb2_grpc.KVStub
    rng: random.Random
    keys: list[bytes]
    timeout: float
    seen_mod: dict[bytes, int] = field(default_factory=dict)
    counter: int = 0


def _kv_of(kvs: list[Any]) -> KVRead:
    if not kvs:
        return None
    return (kvs[0].value, kvs[0].mod_revision)


async def _one(c: _Client) -> Operation:
    key = c.rng.choice(c.keys)
    roll = c.rng.random()
    c.counter += 1
    value = f"c{c.cid}-{c.counter}".encode()
    inp: Get | Put | Delete | Txn
    if roll < 0.35:
        inp = Get(key)
    elif roll < 0.65:
        inp = Put(key, value)
    elif roll < 0.75:
        inp = Delete(key)
    else:
        inp = Txn((Cmp(key, "mod", "=", c.seen_mod.get(key, 0)),), (Put(key, value),), (Get(key),))
    invoke = time.monotonic_ns()
    try:
        out: GetOutput | PutOutput | DeleteOutput | TxnOutput
        if isinstance(inp, Get):
            r = await c.kv.Range(rpc_pb2.RangeRequest(key=key), timeout=c.timeout)
            kv = _kv_of(list(r.kvs))
            out = GetOutput(kv, r.header.revision)
            c.seen_mod[key] = 0 if kv is None else kv[1]
        elif isinstance(inp, Put):
            p = await c.kv.Put(rpc_pb2.PutRequest(key=key, value=value), timeout=c.timeout)
            out = PutOutput(p.header.revision)
        elif isinstance(inp, Delete):
            d = await c.kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=key), timeout=c.timeout)
            out = DeleteOutput(d.deleted, d.header.revision)
        else:
            cmp = inp.compares[0]
            req = rpc_pb2.TxnRequest(
                compare=[
                    rpc_pb2.Compare(
                        result=rpc_pb2.Compare.EQUAL,
                        target=rpc_pb2.Compare.MOD,
                        key=key,
                        mod_revision=int(cmp.operand),
                    )
                ],
                success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=value))],
                failure=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=key))],
            )
            t = await c.kv.Txn(req, timeout=c.timeout)
            if t.succeeded:
                results: tuple[KVRead | int, ...] = (None,)
                c.seen_mod[key] = t.header.revision
            else:
                got = _kv_of(list(t.responses[0].response_range.kvs))
                results = (got,)
                c.seen_mod[key] = 0 if got is None else got[1]
            out = TxnOutput(t.succeeded, t.header.revision, results)
    except (TimeoutError, grpc.RpcError):
        return Operation(c.cid, invoke, None, inp, None)
    return Operation(c.cid, invoke, time.monotonic_ns(), inp, out)


async def read_state(channel: grpc.aio.Channel, prefix: bytes) -> KVState:
    """The store's revision and the live keys under ``prefix``, as a model state."""
    kv = rpc_pb2_grpc.KVStub(channel)
    r = await kv.Range(rpc_pb2.RangeRequest(key=prefix, range_end=prefix_end(prefix)))
    return KVState(r.header.revision, tuple(sorted((x.key, x.value, x.mod_revision) for x in r.kvs)))


async def record_history(
    endpoint: str,
    *,
    clients: int = 4,
    ops_per_client: int = 50,
    prefix: bytes = b"/lin/",
    key_count: int = 3,
    seed: int = 0,
    timeout: float = 5.0,
    on_op: Callable[[int], None] | None = None,
) -> RecordedHistory:
    """Run ``clients`` concurrent clients, ``ops_per_client`` random ops each, and record them.

    Each client has its own channel (connection). Nothing else may write under ``prefix`` and,
    since revisions are global, nothing else may write to the store at all while recording.
    ``on_op(n)`` is called after each recorded op with the number recorded so far (a hook for
    fault injection, e.g. killing the server part-way)."""
    keys = [prefix + f"k{i}".encode() for i in range(key_count)]
    channels = [grpc.aio.insecure_channel(endpoint) for _ in range(clients)]
    try:
        initial = await read_state(channels[0], prefix)
        cs = [
            _Client(i, rpc_pb2_grpc.KVStub(ch), random.Random(seed * 1000 + i), keys, timeout)
            for i, ch in enumerate(channels)
        ]
        for c in cs:
            c.seen_mod = {k: m for k, _, m in initial.items}

        recorded = 0

        async def run(c: _Client) -> list[Operation]:
            nonlocal recorded
            out: list[Operation] = []
            for _ in range(ops_per_client):
                out.append(await _one(c))
                recorded += 1
                if on_op is not None:
                    on_op(recorded)
            return out

        per_client = await asyncio.gather(*(run(c) for c in cs))
    finally:
        for ch in channels:
            await ch.close()
    ops = [op for ops in per_client for op in ops]
    ops.sort(key=lambda o: o.invoke)
    return RecordedHistory(ops, initial, keys, sum(1 for o in ops if o.complete is None))


async def record_until(
    endpoint: str,
    stop: asyncio.Event,
    *,
    clients: int = 3,
    max_ops_per_client: int = 1_000_000,
    prefix: bytes = b"/lin/",
    key_count: int = 3,
    seed: int = 0,
    timeout: float = 5.0,
    first_client: int = 0,
    initial: KVState,
    active: Callable[[], bool] | None = None,
    on_op: Callable[[Operation], None] | None = None,
    think_time: float = 0.0,
    shared_seen: dict[bytes, int] | None = None,
) -> list[Operation]:
    """Like record_history, for a load that runs until ``stop`` is set (fault-injection runs):
    clients are numbered from ``first_client``; while ``active()`` is false (the endpoint's
    server was killed and not yet restarted) they wait instead of recording a stream of failed
    operations; ``on_op(op)`` sees every operation as it is recorded; each client waits
    ``think_time`` seconds between operations (to bound a history's length). With
    ``shared_seen`` every client compares its txns against the newest mod_revision any client
    sharing that dict has seen (clients that learn of each other's writes, as controllers
    sharing an informer do) rather than only its own: on a member serving from stale state such
    a compare fails, and the txn answers as a read."""
    keys = [prefix + f"k{i}".encode() for i in range(key_count)]
    channels = [grpc.aio.insecure_channel(endpoint) for _ in range(clients)]
    try:
        cs = [_Client(first_client + i, rpc_pb2_grpc.KVStub(ch), random.Random(seed * 1000 + i), keys, timeout)
              for i, ch in enumerate(channels)]
        seen = shared_seen
        if seen is not None and not seen:
            seen.update({k: m for k, _, m in initial.items})
        for c in cs:
            c.seen_mod = seen if seen is not None else {k: m for k, _, m in initial.items}

        async def run(c: _Client) -> list[Operation]:
            out: list[Operation] = []
            while not stop.is_set() and len(out) < max_ops_per_client:
                if active is not None and not active():
                    await asyncio.sleep(0.05)
                    continue
                op = await _one(c)
                out.append(op)
                if on_op is not None:
                    on_op(op)
                if think_time:
                    await asyncio.sleep(think_time)
            return out

        per_client = await asyncio.gather(*(run(c) for c in cs))
    finally:
        for ch in channels:
            await ch.close()
    return [op for ops in per_client for op in ops]


async def final_reads(endpoint: str, keys: list[bytes], client: int = -1) -> list[Operation]:
    """One get per key, recorded as completed ops (e.g. after a restart, to close a history)."""
    out: list[Operation] = []
    async with grpc.aio.insecure_channel(endpoint) as ch:
        kv = rpc_pb2_grpc.KVStub(ch)
        for key in keys:
            invoke = time.monotonic_ns()
            r = await kv.Range(rpc_pb2.RangeRequest(key=key), timeout=10)
            out.append(Operation(client, invoke, time.monotonic_ns(), Get(key), GetOutput(_kv_of(list(r.kvs)), r.header.revision)))
    return out


def event_from_pb(ev: Any) -> WatchEvent:
    """A checker WatchEvent from an mvccpb.Event."""
    prev: KVRead = (ev.prev_kv.value, ev.prev_kv.mod_revision) if ev.HasField("prev_kv") else None
    kind = "DELETE" if ev.type == 1 else "PUT"
    return WatchEvent(ev.kv.mod_revision, kind, ev.kv.key, ev.kv.value if kind == "PUT" else b"", prev)


class WatchRecorder:
    """One watch kept open on its own channel; ``start()``, run the load, then ``finish()``."""

    def __init__(
        self,
        endpoint: str,
        name: str,
        key: bytes,
        range_end: bytes = b"",
        start_revision: int = 1,
        prev_kv: bool = True,
    ) -> None:
        self.endpoint = endpoint
        self.stream = WatchStream(name, key, range_end, start_revision, [], prev_kv)
        self._requests: asyncio.Queue[rpc_pb2.WatchRequest | None] = asyncio.Queue()
        self._created = asyncio.Event()
        self._progress: asyncio.Queue[int] = asyncio.Queue()
        self._channel: grpc.aio.Channel | None = None
        self._task: asyncio.Task[None] | None = None

    async def _gen(self) -> AsyncIterator[rpc_pb2.WatchRequest]:
        while True:
            req = await self._requests.get()
            if req is None:
                return
            yield req

    async def _run(self) -> None:
        assert self._channel is not None
        call = rpc_pb2_grpc.WatchStub(self._channel).Watch(self._gen())
        async for resp in call:
            if resp.created:
                self._created.set()
            for ev in resp.events:
                self.stream.events.append(event_from_pb(ev))
            if not resp.events and not resp.created and resp.watch_id == -1:
                self._progress.put_nowait(resp.header.revision)

    async def start(self) -> None:
        self._channel = grpc.aio.insecure_channel(self.endpoint)
        s = self.stream
        create = rpc_pb2.WatchCreateRequest(
            key=s.key, range_end=s.range_end, start_revision=s.start_revision, prev_kv=s.prev_kv
        )
        self._requests.put_nowait(rpc_pb2.WatchRequest(create_request=create))
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._created.wait(), 10)

    async def finish(self, revision: int, timeout: float = 10.0) -> WatchStream:
        """Wait until the watch is caught up to ``revision`` (progress requests), then close."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    self._requests.put_nowait(rpc_pb2.WatchRequest(progress_request=rpc_pb2.WatchProgressRequest()))
                    got = await self._progress.get()
                    if got >= revision:
                        self.stream.seen_revision = got
                        break
                    await asyncio.sleep(0.01)
        finally:
            self._requests.put_nowait(None)
            if self._task is not None:
                self._task.cancel()
                try:
                    await self._task
                except (asyncio.CancelledError, grpc.RpcError):
                    pass
            if self._channel is not None:
                await self._channel.close()
        return self.stream
