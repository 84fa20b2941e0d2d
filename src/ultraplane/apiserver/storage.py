"""The storage interface between the API server and a key-value store.

A narrow, kine-``Backend``-like protocol: point reads, prefix lists with a page limit at a
revision, compare-and-swap writes on ``mod_revision`` (exactly the transactions kube-apiserver's
etcd3 storage issues), a prefix watch with previous values, the current revision and compaction.

Two implementations:

- ``InProcessBackend`` calls ``ultraplane.store.Store`` directly: no serialization, no RPC.
- ``EtcdBackend`` speaks the etcd v3 gRPC API (grpc.aio, our own protos from the private pool),
  against our store or real etcd 3.4, with optional TLS client certificates.

Keys and values are bytes; the registry above decides the key layout (kube-apiserver's
``/registry/<resource>/<namespace>/<name>``) and the encoding (JSON, see registry.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ultraplane.store import Store

log = logging.getLogger("ultraplane.apiserver.storage")


class StorageError(Exception):
    pass


class KeyExists(StorageError):
    pass


class KeyNotFound(StorageError):
    pass


class RevisionConflict(StorageError):
    """The key's mod_revision was not the expected one; ``current`` is what is stored now (or None)."""

    def __init__(self, current: StoredValue | None) -> None:
        super().__init__("revision conflict")
        self.current = current


class RevisionCompacted(StorageError):
    def __init__(self, requested: int, compact_revision: int) -> None:
        super().__init__(f"required revision {requested} has been compacted (compact revision {compact_revision})")
        self.requested = requested
        self.compact_revision = compact_revision


class FutureRevision(StorageError):
    pass


@dataclass(slots=True)
class StoredValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int


@dataclass(slots=True)
class ListResult:
    items: list[StoredValue]
    more: bool
    count: int  # keys from the start key to the end of the range (not only this page)
    revision: int  # the revision the list was served at


@dataclass(slots=True)
class WatchEvent:
    deleted: bool
    key: bytes
    value: bytes  # empty for deletes
    prev_value: bytes | None
    revision: int  # mod_revision of the change


class Backend(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def current_revision(self) -> int: ...

    async def get(self, key: bytes) -> tuple[int, StoredValue | None]: ...

    async def list(self, prefix: bytes, *, start: bytes = b"", limit: int = 0, revision: int = 0) -> ListResult:
        """Keys under prefix from ``start`` (inclusive; empty = the prefix itself), at ``revision`` (0 = now)."""
        ...

    async def count(self, prefix: bytes) -> int:
        """How many keys are under prefix now: an estimate for APF and metrics (kine's Count), not a read at a
        revision, so it may include writes still on their way to the journal."""
        ...

    async def create(self, key: bytes, value: bytes) -> int:
        """Store a new key; raises KeyExists. Returns the new revision."""
        ...

    async def update(self, key: bytes, value: bytes, expected_mod_revision: int) -> int:
        """Replace the value if the key's mod_revision is still ``expected``; raises RevisionConflict."""
        ...

    async def delete(self, key: bytes, expected_mod_revision: int) -> int:
        """Delete if mod_revision matches; raises RevisionConflict (current None: already gone)."""
        ...

    def watch(self, prefix: bytes, start_revision: int) -> AsyncIterator[list[WatchEvent]]:
        """Changes under prefix from start_revision on, a batch per revision (or several); with prev values.
        Raises RevisionCompacted if start_revision is no longer available."""
        ...

    async def compact(self, revision: int) -> None: ...


def prefix_end(prefix: bytes) -> bytes:
    """The etcd range end that covers every key starting with prefix."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"


# ============================================================================ in-process
ETCD_MAX_REQUEST_BYTES = 1536 * 1024  # etcd's default --max-request-bytes
GRPC_OVERHEAD_BYTES = 512 * 1024  # etcd's gRPC receive limit is the request limit plus this
TXN_OVERHEAD_BYTES = 32  # protobuf framing of a one-compare, one-put txn
class InProcessBackend:
    """Direct calls into ``ultraplane.store.Store`` (it must be open; its owner closes it)."""

    def __init__(self, store: Store, max_request_bytes: int = ETCD_MAX_REQUEST_BYTES) -> None:
        from ultraplane.store import types as t

        self.store = store
        self._t = t
        self.max_request_bytes = max_request_bytes

    def check_size(self, key: bytes, value: bytes) -> None:
        """etcd's limits, which a remote etcd applies to the same write: past the gRPC receive limit (the
        request limit + 512 KiB) the transport refuses it, past the request limit etcd does."""
        from ultraplane.store import errors

        size = 2 * len(key) + len(value) + TXN_OVERHEAD_BYTES  # the compare and the put both carry the key
        if size > self.max_request_bytes + GRPC_OVERHEAD_BYTES:
            raise errors.StoreError(f"rpc error: code = ResourceExhausted desc = grpc: received message larger "
                                    f"than max ({size} vs. {self.max_request_bytes + GRPC_OVERHEAD_BYTES})")
        if size > self.max_request_bytes:
            raise errors.RequestTooLarge()

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def current_revision(self) -> int:
        return self.store.revision

    async def get(self, key: bytes) -> tuple[int, StoredValue | None]:
        res = self.store.range(self._t.RangeRequest(key))
        if not res.kvs:
            return res.revision, None
        kv = res.kvs[0]
        return res.revision, StoredValue(kv.key, kv.value, kv.create_revision, kv.mod_revision)

    async def list(self, prefix: bytes, *, start: bytes = b"", limit: int = 0, revision: int = 0) -> ListResult:
        from ultraplane.store import errors

        t = self._t
        end = prefix_end(prefix)
        try:
            res = self.store.range(t.RangeRequest(start or prefix, end, limit=limit, revision=revision))
            count = res.count
        except errors.Compacted as exc:
            raise RevisionCompacted(revision, self.store.compact_revision) from exc
        except errors.FutureRevision as exc:
            raise FutureRevision(str(exc)) from exc
        items = [StoredValue(kv.key, kv.value, kv.create_revision, kv.mod_revision) for kv in res.kvs]
        return ListResult(items, res.more, count, res.revision)

    async def count(self, prefix: bytes) -> int:
        return self.store.count_live(prefix, prefix_end(prefix))

    async def create(self, key: bytes, value: bytes) -> int:
        self.check_size(key, value)
        t = self._t
        res = await self.store.txn(t.TxnRequest(
            compare=[t.Compare(t.CompareResult.EQUAL, t.CompareTarget.MOD, key, mod_revision=0)],
            success=[t.PutRequest(key, value)],
        ))
        if not res.succeeded:
            raise KeyExists()
        return res.revision

    async def _cas(self, key: bytes, op: Any, expected: int) -> int:
        t = self._t
        res = await self.store.txn(t.TxnRequest(
            compare=[t.Compare(t.CompareResult.EQUAL, t.CompareTarget.MOD, key, mod_revision=expected)],
            success=[op],
            failure=[t.RangeRequest(key)],
        ))
        if not res.succeeded:
            kvs = res.responses[0].kvs
            current = StoredValue(kvs[0].key, kvs[0].value, kvs[0].create_revision, kvs[0].mod_revision) if kvs else None
            raise RevisionConflict(current)
        return res.revision

    async def update(self, key: bytes, value: bytes, expected_mod_revision: int) -> int:
        self.check_size(key, value)
        return await self._cas(key, self._t.PutRequest(key, value), expected_mod_revision)

    async def delete(self, key: bytes, expected_mod_revision: int) -> int:
        return await self._cas(key, self._t.DeleteRangeRequest(key), expected_mod_revision)

    async def watch(self, prefix: bytes, start_revision: int) -> AsyncIterator[list[WatchEvent]]:
        store = self.store
        watcher = store.watch(prefix, prefix_end(prefix), start_revision, prev_kv=True)
        try:
            async for events in watcher:
                yield [
                    WatchEvent(ev.type == 1, ev.kv.key, ev.kv.value, ev.prev_kv.value if ev.prev_kv else None,
                               ev.kv.mod_revision)
                    for ev in events
                ]
            if watcher.compact_revision:
                raise RevisionCompacted(start_revision, watcher.compact_revision)
        finally:
            watcher.close()

    async def compact(self, revision: int) -> None:
        await self.store.compact(revision)


# ============================================================================ remote etcd
@dataclass(slots=True)
class EtcdTls:
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


class EtcdBackend:
    """The etcd v3 gRPC API over grpc.aio: our store members or real etcd 3.4."""

    def __init__(self, endpoints: list[str], tls: EtcdTls | None = None) -> None:
        self.endpoints = endpoints
        self.tls = tls
        self._channel = None
        self._kv = None
        self._watch = None
        self._maint = None

    async def start(self) -> None:
        import grpc

        from ultraplane.etcd.proto import rpc_pb2_grpc

        urls = [e.split("://", 1)[-1].rstrip("/") for e in self.endpoints]
        secure = any(e.startswith("https://") for e in self.endpoints) or (self.tls and self.tls.ca_file)
        # several endpoints: round-robin over a static list (etcd's clientv3 balancer does the same)
        target = urls[0]
        if len(urls) > 1:
            import ipaddress

            try:
                for url in urls:
                    ipaddress.IPv4Address(url.rsplit(":", 1)[0])
                target = "ipv4:" + ",".join(urls)
            except ValueError:
                # names: grpc's ipv4: list takes addresses only; use the first endpoint
                log.warning("several etcd endpoints given by name; using %s only", urls[0])
        options = [("grpc.max_receive_message_length", 256 * 1024 * 1024),
                   ("grpc.lb_policy_name", "round_robin")]
        if secure:
            tls = self.tls or EtcdTls()

            def read(path: str | None) -> bytes | None:
                return open(path, "rb").read() if path else None

            creds = grpc.ssl_channel_credentials(read(tls.ca_file), read(tls.key_file), read(tls.cert_file))
            self._channel = grpc.aio.secure_channel(target, creds, options=options)
        else:
            self._channel = grpc.aio.insecure_channel(target, options=options)
        self._kv = rpc_pb2_grpc.KVStub(self._channel)
        self._watch = rpc_pb2_grpc.WatchStub(self._channel)
        self._maint = rpc_pb2_grpc.MaintenanceStub(self._channel)
        await asyncio.wait_for(self._channel.channel_ready(), 30)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()

    @staticmethod
    def _value(kv: Any) -> StoredValue:
        return StoredValue(kv.key, kv.value, kv.create_revision, kv.mod_revision)

    async def current_revision(self) -> int:
        from ultraplane.etcd.proto import rpc_pb2

        res = await self._kv.Range(rpc_pb2.RangeRequest(key=b"\0", count_only=True))
        return res.header.revision

    async def get(self, key: bytes) -> tuple[int, StoredValue | None]:
        from ultraplane.etcd.proto import rpc_pb2

        res = await self._kv.Range(rpc_pb2.RangeRequest(key=key))
        return res.header.revision, (self._value(res.kvs[0]) if res.kvs else None)

    async def list(self, prefix: bytes, *, start: bytes = b"", limit: int = 0, revision: int = 0) -> ListResult:
        import grpc

        from ultraplane.etcd.proto import rpc_pb2

        end = prefix_end(prefix)
        try:
            res = await self._kv.Range(rpc_pb2.RangeRequest(key=start or prefix, range_end=end, limit=limit,
                                                            revision=revision))
            count = res.count
        except grpc.aio.AioRpcError as exc:
            detail = exc.details() or ""
            if "compacted" in detail:
                raise RevisionCompacted(revision, 0) from exc
            if "future revision" in detail:
                raise FutureRevision(detail) from exc
            raise
        return ListResult([self._value(kv) for kv in res.kvs], res.more, count, res.header.revision)

    async def count(self, prefix: bytes) -> int:
        from ultraplane.etcd.proto import rpc_pb2

        res = await self._kv.Range(rpc_pb2.RangeRequest(key=prefix, range_end=prefix_end(prefix), count_only=True))
        return int(res.count)

    async def create(self, key: bytes, value: bytes) -> int:
        from ultraplane.etcd.proto import rpc_pb2

        res = await self._kv.Txn(rpc_pb2.TxnRequest(
            compare=[rpc_pb2.Compare(result=rpc_pb2.Compare.EQUAL, target=rpc_pb2.Compare.MOD, key=key,
                                     mod_revision=0)],
            success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=value))],
        ))
        if not res.succeeded:
            raise KeyExists()
        return res.header.revision

    async def _cas(self, key: bytes, op: Any, expected: int) -> int:
        from ultraplane.etcd.proto import rpc_pb2

        res = await self._kv.Txn(rpc_pb2.TxnRequest(
            compare=[rpc_pb2.Compare(result=rpc_pb2.Compare.EQUAL, target=rpc_pb2.Compare.MOD, key=key,
                                     mod_revision=expected)],
            success=[op],
            failure=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=key))],
        ))
        if not res.succeeded:
            kvs = res.responses[0].response_range.kvs
            raise RevisionConflict(self._value(kvs[0]) if kvs else None)
        return res.header.revision

    async def update(self, key: bytes, value: bytes, expected_mod_revision: int) -> int:
        from ultraplane.etcd.proto import rpc_pb2

        op = rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=value))
        return await self._cas(key, op, expected_mod_revision)

    async def delete(self, key: bytes, expected_mod_revision: int) -> int:
        from ultraplane.etcd.proto import rpc_pb2

        op = rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=key))
        return await self._cas(key, op, expected_mod_revision)

    async def watch(self, prefix: bytes, start_revision: int) -> AsyncIterator[list[WatchEvent]]:
        from ultraplane.etcd.proto import rpc_pb2

        request = rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(
            key=prefix, range_end=prefix_end(prefix), start_revision=start_revision, prev_kv=True))
        queue: asyncio.Queue = asyncio.Queue()
        await queue.put(request)

        async def requests() -> AsyncIterator[Any]:
            while True:
                item = await queue.get()
                if item is None:
                    return
                yield item

        call = self._watch.Watch(requests())
        try:
            async for res in call:
                if res.compact_revision:
                    raise RevisionCompacted(start_revision, res.compact_revision)
                if res.canceled:
                    raise StorageError(f"watch canceled: {res.cancel_reason}")
                if res.events:
                    yield [
                        WatchEvent(ev.type == 1, ev.kv.key, ev.kv.value,
                                   ev.prev_kv.value if ev.HasField("prev_kv") else None, ev.kv.mod_revision)
                        for ev in res.events
                    ]
        finally:
            await queue.put(None)
            call.cancel()

    async def compact(self, revision: int) -> None:
        from ultraplane.etcd.proto import rpc_pb2

        await self._kv.Compact(rpc_pb2.CompactionRequest(revision=revision))
