"""One etcd v3 endpoint in front of a partitioned store: each request goes to the partition owning
its keys.

What the router guarantees and what it does not:

- **Routing.** Range, Put, DeleteRange and Txn go to the one partition owning every key they name
  (compares and operations of a txn, nested txns included; the whole range of a range request). A
  request touching keys of two or more partitions is refused with INVALID_ARGUMENT and a message
  naming the partitions: it is never answered partially. Requests are forwarded as the client's
  bytes and answered with the partition's bytes; the router decodes only the key fields it routes by
  (a txn is decoded in full because its keys are nested).
- **Revisions are per partition.** Each partition has its own revision space, so a response
  header's revision (and every mod_revision in it) is the owning partition's. A revision read from
  one partition means nothing to another; in particular ``Compact`` is refused through the router
  (compact each partition at its own endpoint, or run the partitions with --auto-compaction-*).
- **Watches.** One client watch stream may hold watchers on several partitions: each create request
  is sent, on an upstream watch stream per partition, to the partition owning its range, with a
  watch id the router chooses (unique on the client's stream; counting from 1, since 0 asks a
  server to choose). Responses are passed through unchanged. A watch range spanning partitions is
  refused like a refused etcd create: created+canceled, watch_id -1, a cancel_reason naming the
  partitions. A progress request goes to every partition this stream watches (one response each).
  When a partition's stream fails, each of its watchers gets a canceled response (the others go on).
- **Leases live on every partition.** A lease granted through the router is granted with the same
  id on every partition (the router picks the id when the client does not), so a put with a lease
  works on whichever partition owns the key, and revoking it deletes its keys everywhere.
  Keep-alives and TimeToLive go to every partition and answer with the smallest TTL; revoke succeeds
  once no partition holds the lease. A grant needs every partition up (it is undone on the ones that
  granted it if any fails); keep-alive, TimeToLive and revoke carry on with the partitions that answer.
- **Status** answers from the default partition; **MemberList** lists the router as the only member,
  so clients that sync endpoints keep using the router. Other RPCs (auth, maintenance, cluster
  changes) are not served by the router: use a partition's own endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio

from ultraplane.etcd.proto import rpc_pb2
from ultraplane.etcd.rpc import CallContext, Method, RpcError
from ultraplane.partition.h2client import H2Channel
from ultraplane.partition.map import Partition, PartitionMap

log = logging.getLogger("ultraplane.partition.router")

__all__ = ["PartitionRouter", "router_methods"]

INVALID_ARGUMENT = 3
NOT_FOUND = 5
UNAVAILABLE = 14
INVALID_WATCH_ID = -1
ERR_DUPLICATE_WATCH_ID = "mvcc: duplicate watch ID provided on the WatchStream"
ERR_LEASE_NOT_FOUND = "etcdserver: requested lease not found"
ROUTER_MEMBER_NAME = "ultraplane-router"

_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    # a restarted partition should be reachable again within a second, not after grpc's backoff
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
_EOF: Any = grpc.aio.EOF


# ------------------------------------------------------------------ request decoding (only routing keys)

def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _scan_bytes_fields(raw: bytes, wanted: int) -> list[bytes]:
    """The values of length-delimited fields 1..wanted of a message (b"" where absent)."""
    found = [b""] * wanted
    pos = 0
    end = len(raw)
    try:
        while pos < end:
            tag, pos = _varint(raw, pos)
            number, wire_type = tag >> 3, tag & 7
            if wire_type == 0:
                _value, pos = _varint(raw, pos)
            elif wire_type == 2:
                length, pos = _varint(raw, pos)
                if number <= wanted:
                    found[number - 1] = raw[pos : pos + length]
                pos += length
            elif wire_type == 1:
                pos += 8
            elif wire_type == 5:
                pos += 4
            else:
                raise ValueError(f"unsupported wire type {wire_type}")
    except IndexError as exc:
        raise ValueError("truncated message") from exc
    if pos != end:
        raise ValueError("truncated message")
    return found


class _KeyRangeRequest:
    """A RangeRequest or DeleteRangeRequest kept as bytes, with its key (1) and range_end (2)."""

    __slots__ = ("key", "range_end", "raw")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.key, self.range_end = _scan_bytes_fields(raw, 2)

    @classmethod
    def FromString(cls, raw: bytes) -> _KeyRangeRequest:  # noqa: N802 - protobuf's parse entry point
        return cls(bytes(raw))


class _KeyRequest:
    """A PutRequest kept as bytes, with its key (field 1)."""

    __slots__ = ("key", "raw")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        (self.key,) = _scan_bytes_fields(raw, 1)

    @classmethod
    def FromString(cls, raw: bytes) -> _KeyRequest:  # noqa: N802
        return cls(bytes(raw))


class _TxnRequest:
    """A TxnRequest kept as bytes, decoded too because its keys sit in nested compares and ops."""

    __slots__ = ("parsed", "raw")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.parsed = rpc_pb2.TxnRequest.FromString(raw)

    @classmethod
    def FromString(cls, raw: bytes) -> _TxnRequest:  # noqa: N802
        return cls(bytes(raw))


class _RawRequest:
    """Any request forwarded without looking inside."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    @classmethod
    def FromString(cls, raw: bytes) -> _RawRequest:  # noqa: N802
        return cls(bytes(raw))


def _txn_ranges(txn: Any, out: list[tuple[bytes, bytes]]) -> None:
    for cmp in txn.compare:
        out.append((cmp.key, cmp.range_end))
    for op in (*txn.success, *txn.failure):
        which = op.WhichOneof("request")
        if which == "request_range":
            out.append((op.request_range.key, op.request_range.range_end))
        elif which == "request_put":
            out.append((op.request_put.key, b""))
        elif which == "request_delete_range":
            out.append((op.request_delete_range.key, op.request_delete_range.range_end))
        elif which == "request_txn":
            _txn_ranges(op.request_txn, out)


def _show(key: bytes) -> str:
    return repr(key.decode("utf-8", "backslashreplace"))


# ------------------------------------------------------------------------------- upstreams

@dataclass
class _Upstream:
    """One partition's endpoint and a channel to it; calls carry bytes both ways."""

    partition: Partition
    target: str  # host:port
    channel: grpc.aio.Channel  # for streaming calls
    h2: H2Channel  # for unary calls: far less overhead per call than grpc.aio

    def bidi(self, path: str) -> Any:
        return self.channel.stream_stream(path)


def _metadata(ctx: CallContext) -> tuple[tuple[str, str], ...] | None:
    token = ctx.metadata.get("token")
    return (("token", token),) if token else None


class PartitionRouter:
    """Routes etcd v3 calls to the partitions of ``pmap`` at ``targets`` (partition name -> host:port)."""

    def __init__(self, pmap: PartitionMap, targets: dict[str, str], *, router_url: str = "") -> None:
        self.pmap = pmap
        self.router_url = router_url
        self.upstreams = {
            name: _Upstream(pmap[name], target, grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS),
                            H2Channel(target))
            for name, target in targets.items()
        }
        self.default = self.upstreams[pmap.default.name]
        self.member_id = random.getrandbits(63) or 1

    async def close(self) -> None:
        for upstream in self.upstreams.values():
            upstream.h2.close()
            await upstream.channel.close()

    # ----------------------------------------------------------------- routing helpers

    def _route(self, what: str, ranges: Sequence[tuple[bytes, bytes]]) -> _Upstream:
        """The one partition owning every key of ``ranges``; ``what`` names the request in the error
        (with its range, when it has exactly one)."""
        if not ranges:
            return self.default
        names: set[str] = set()
        for key, range_end in ranges:
            for part in self.pmap.owners(key, range_end):
                names.add(part.name)
        if len(names) == 1:
            return self.upstreams[names.pop()]
        spanned = ", ".join(n for n in self.pmap.names if n in names)
        if len(ranges) == 1:
            what = f"{what} [{_show(ranges[0][0])}, {_show(ranges[0][1])})"
        raise RpcError(
            INVALID_ARGUMENT,
            f"ultraplane router: {what} spans partitions {spanned}; a request must stay within one "
            "partition's keys (send it to each partition's endpoint instead)",
        )

    async def _call(self, upstream: _Upstream, path: str, raw: bytes, ctx: CallContext) -> bytes:
        try:
            return await upstream.h2.unary(path, raw, ctx.metadata.get("token"))
        except RpcError as exc:
            if exc.code == UNAVAILABLE:
                raise RpcError(UNAVAILABLE, f"ultraplane router: partition {upstream.partition.name} "
                                            f"({upstream.target}) is unavailable: {exc.message}") from None
            raise

    # --------------------------------------------------------------------------- KV

    async def range(self, req: _KeyRangeRequest, ctx: CallContext) -> bytes:
        upstream = self._route("range", [(req.key, req.range_end)])
        return await self._call(upstream, "/etcdserverpb.KV/Range", req.raw, ctx)

    async def put(self, req: _KeyRequest, ctx: CallContext) -> bytes:
        return await self._call(self.upstreams[self.pmap.owner(req.key).name], "/etcdserverpb.KV/Put",
                                req.raw, ctx)

    async def delete_range(self, req: _KeyRangeRequest, ctx: CallContext) -> bytes:
        upstream = self._route("delete range", [(req.key, req.range_end)])
        return await self._call(upstream, "/etcdserverpb.KV/DeleteRange", req.raw, ctx)

    async def txn(self, req: _TxnRequest, ctx: CallContext) -> bytes:
        ranges: list[tuple[bytes, bytes]] = []
        _txn_ranges(req.parsed, ranges)
        upstream = self._route("txn", ranges)
        return await self._call(upstream, "/etcdserverpb.KV/Txn", req.raw, ctx)

    async def compact(self, req: _RawRequest, ctx: CallContext) -> bytes:
        endpoints = ", ".join(f"{u.partition.name}={u.target}" for u in self.upstreams.values())
        raise RpcError(
            INVALID_ARGUMENT,
            "ultraplane router: compaction is per partition (each partition has its own revision "
            f"space); compact each partition at its own endpoint: {endpoints}",
        )

    # ----------------------------------------------------------------- maintenance, cluster

    async def status(self, req: _RawRequest, ctx: CallContext) -> bytes:
        return await self._call(self.default, "/etcdserverpb.Maintenance/Status", req.raw, ctx)

    async def member_list(self, req: _RawRequest, ctx: CallContext) -> rpc_pb2.MemberListResponse:
        raw = await self._call(self.default, "/etcdserverpb.Cluster/MemberList", req.raw, ctx)
        resp = rpc_pb2.MemberListResponse.FromString(raw)
        del resp.members[:]
        member = resp.members.add()
        member.ID = self.member_id
        member.name = ROUTER_MEMBER_NAME
        if self.router_url:
            member.clientURLs.append(self.router_url)
        return resp

    # ------------------------------------------------------------------------ leases

    async def _fan_out(self, path: str, raw: bytes, ctx: CallContext) -> dict[str, bytes | RpcError]:
        names = list(self.upstreams)
        results = await asyncio.gather(
            *(self._call(self.upstreams[name], path, raw, ctx) for name in names), return_exceptions=True
        )
        out: dict[str, bytes | RpcError] = {}
        for name, result in zip(names, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, RpcError):
                raise result
            out[name] = result
        return out

    async def lease_grant(self, req: rpc_pb2.LeaseGrantRequest, ctx: CallContext) -> bytes:
        if req.ID == 0:
            req.ID = random.getrandbits(63) or 1
        raw = req.SerializeToString()
        path = "/etcdserverpb.Lease/LeaseGrant"
        # the default partition first: a duplicate id is refused there before any other grants it
        answer = await self._call(self.default, path, raw, ctx)
        others = [u for u in self.upstreams.values() if u is not self.default]
        results = await asyncio.gather(*(self._call(u, path, raw, ctx) for u in others), return_exceptions=True)
        failed = [(u, r) for u, r in zip(others, results, strict=True) if isinstance(r, BaseException)]
        if failed:
            revoke = rpc_pb2.LeaseRevokeRequest(ID=req.ID).SerializeToString()
            granted = [self.default] + [u for u, r in zip(others, results, strict=True)
                                        if not isinstance(r, BaseException)]
            await asyncio.gather(*(self._call(u, "/etcdserverpb.Lease/LeaseRevoke", revoke, ctx)
                                   for u in granted), return_exceptions=True)
            upstream, error = failed[0]
            if isinstance(error, RpcError):
                raise RpcError(error.code, f"ultraplane router: lease grant failed on partition "
                                           f"{upstream.partition.name}: {error.message}")
            raise error
        return answer

    async def lease_revoke(self, req: _RawRequest, ctx: CallContext) -> bytes:
        results = await self._fan_out("/etcdserverpb.Lease/LeaseRevoke", req.raw, ctx)
        errors = [r for r in results.values() if isinstance(r, RpcError)]
        unexpected = [e for e in errors if e.code != NOT_FOUND]
        if unexpected:
            raise unexpected[0]
        answers = [r for r in results.values() if isinstance(r, bytes)]
        if not answers:
            raise RpcError(NOT_FOUND, ERR_LEASE_NOT_FOUND)
        default = results[self.default.partition.name]
        return default if isinstance(default, bytes) else answers[0]

    async def lease_time_to_live(self, req: _RawRequest, ctx: CallContext) -> bytes | Any:
        results = await self._fan_out("/etcdserverpb.Lease/LeaseTimeToLive", req.raw, ctx)
        answers = {name: r for name, r in results.items() if isinstance(r, bytes)}
        if not answers:
            raise next(r for r in results.values() if isinstance(r, RpcError))
        merged = None
        for name in self.upstreams:  # map order: the default partition's header first
            if name not in answers:
                continue
            resp = rpc_pb2.LeaseTimeToLiveResponse.FromString(answers[name])
            if merged is None:
                merged = resp
                continue
            if resp.TTL < merged.TTL:
                merged.TTL = resp.TTL
            merged.keys.extend(resp.keys)
        assert merged is not None
        if merged.TTL < 0:
            del merged.keys[:]
        return merged

    async def lease_leases(self, req: _RawRequest, ctx: CallContext) -> bytes:
        return await self._call(self.default, "/etcdserverpb.Lease/LeaseLeases", req.raw, ctx)

    async def lease_keep_alive(self, requests: AsyncIterator[_RawRequest],
                               ctx: CallContext) -> AsyncIterator[bytes | Any]:
        """Each keep-alive goes to every partition; the answer carries the smallest TTL."""
        streams: dict[str, Any] = {}
        try:
            async for req in requests:
                merged = None
                for name, upstream in self.upstreams.items():
                    call = streams.get(name)
                    try:
                        if call is None:
                            call = streams[name] = upstream.bidi("/etcdserverpb.Lease/LeaseKeepAlive")(
                                metadata=_metadata(ctx))
                        await call.write(req.raw)
                    except Exception:  # the call failed (partition down): carry on with the others
                        streams.pop(name, None)
                for name in list(streams):
                    try:
                        raw = await streams[name].read()
                    except grpc.aio.AioRpcError:
                        raw = _EOF
                    if raw is _EOF:
                        streams.pop(name).cancel()
                        continue
                    resp = rpc_pb2.LeaseKeepAliveResponse.FromString(raw)
                    if merged is None:
                        merged = resp
                    elif resp.TTL < merged.TTL:
                        merged.TTL = resp.TTL
                if merged is None:
                    raise RpcError(UNAVAILABLE, "ultraplane router: no partition answered the keep-alive")
                yield merged
        finally:
            for call in streams.values():
                call.cancel()

    # ------------------------------------------------------------------------- watch

    async def watch(self, requests: AsyncIterator[Any], ctx: CallContext) -> AsyncIterator[bytes | Any]:
        session = _WatchSession(self, ctx)
        reader = asyncio.create_task(session.read_requests(requests))
        try:
            while True:
                item = await session.out.get()
                if isinstance(item, RpcError):
                    raise item
                yield item
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            session.close()


def _watch_response(watch_id: int, *, created: bool = False, reason: str) -> rpc_pb2.WatchResponse:
    resp = rpc_pb2.WatchResponse(watch_id=watch_id, created=created, canceled=True, cancel_reason=reason)
    resp.header.SetInParent()  # clients dereference the header of every response
    return resp


class _WatchSession:
    """One client watch stream fanned out to an upstream watch stream per partition it touches."""

    def __init__(self, router: PartitionRouter, ctx: CallContext) -> None:
        self.router = router
        self.ctx = ctx
        self.out: asyncio.Queue[Any] = asyncio.Queue()
        self.calls: dict[str, Any] = {}
        self.readers: dict[str, asyncio.Task[None]] = {}
        self.owner: dict[int, str] = {}  # client watch id -> partition name
        self.next_id = 1  # 0 in a create request means "server picks", so the router never uses it

    async def read_requests(self, requests: AsyncIterator[Any]) -> None:
        try:
            async for req in requests:
                which = req.WhichOneof("request_union")
                if which == "create_request":
                    await self._create(req)
                elif which == "cancel_request":
                    name = self.owner.pop(req.cancel_request.watch_id, None)
                    if name is not None and name in self.calls:
                        await self._send(name, req)
                elif which == "progress_request":
                    names = list(self.calls) or [self.router.default.partition.name]
                    for name in names:
                        await self._send(name, req)
        except RpcError as exc:
            self.out.put_nowait(exc)
        # the client closing its side ends nothing: responses keep flowing until the call ends

    async def _create(self, req: Any) -> None:
        creq = req.create_request
        key = creq.key or b"\x00"
        try:
            upstream = self.router._route("watch", [(key, creq.range_end)])
        except RpcError as exc:
            self.out.put_nowait(_watch_response(INVALID_WATCH_ID, created=True, reason=exc.message))
            return
        watch_id = creq.watch_id
        if watch_id == 0:
            while self.next_id in self.owner:
                self.next_id += 1
            watch_id = self.next_id
            self.next_id += 1
            creq.watch_id = watch_id
        elif watch_id in self.owner:
            self.out.put_nowait(_watch_response(INVALID_WATCH_ID, created=True, reason=ERR_DUPLICATE_WATCH_ID))
            return
        name = upstream.partition.name
        self.owner[watch_id] = name
        await self._send(name, req)

    async def _send(self, name: str, req: Any) -> None:
        call = self.calls.get(name)
        if call is None:
            upstream = self.router.upstreams[name]
            call = self.calls[name] = upstream.bidi("/etcdserverpb.Watch/Watch")(metadata=_metadata(self.ctx))
            self.readers[name] = asyncio.create_task(self._read_upstream(name, call))
        try:
            await call.write(req.SerializeToString())
        except Exception as exc:  # the upstream call already failed; its reader reports why
            self._lost(name, call, str(exc))

    async def _read_upstream(self, name: str, call: Any) -> None:
        out = self.out
        reason = "stream ended"
        try:
            while True:
                raw = await call.read()
                if raw is _EOF:
                    break
                out.put_nowait(raw)
        except grpc.aio.AioRpcError as exc:
            reason = exc.details() or exc.code().name
        self._lost(name, call, reason)

    def _lost(self, name: str, call: Any, reason: str) -> None:
        """A partition's watch stream failed: cancel its watchers, keep the others."""
        if self.calls.get(name) is not call:
            return
        del self.calls[name]
        self.readers.pop(name, None)
        call.cancel()
        message = f"ultraplane router: partition {name} watch stream failed: {reason}"
        for watch_id, owner in list(self.owner.items()):
            if owner == name:
                del self.owner[watch_id]
                self.out.put_nowait(_watch_response(watch_id, reason=message))

    def close(self) -> None:
        for task in self.readers.values():
            task.cancel()
        for call in self.calls.values():
            call.cancel()
        self.calls.clear()
        self.readers.clear()


def router_methods(router: PartitionRouter) -> dict[str, Method]:
    """The RPCs the router serves, keyed by gRPC path, for ``serve_h2``."""
    table: list[tuple[str, str, Any, str, Callable[..., Any]]] = [
        ("KV", "Range", _KeyRangeRequest, "unary", router.range),
        ("KV", "Put", _KeyRequest, "unary", router.put),
        ("KV", "DeleteRange", _KeyRangeRequest, "unary", router.delete_range),
        ("KV", "Txn", _TxnRequest, "unary", router.txn),
        ("KV", "Compact", _RawRequest, "unary", router.compact),
        ("Watch", "Watch", rpc_pb2.WatchRequest, "bidi", router.watch),
        ("Lease", "LeaseGrant", rpc_pb2.LeaseGrantRequest, "unary", router.lease_grant),
        ("Lease", "LeaseRevoke", _RawRequest, "unary", router.lease_revoke),
        ("Lease", "LeaseKeepAlive", _RawRequest, "bidi", router.lease_keep_alive),
        ("Lease", "LeaseTimeToLive", _RawRequest, "unary", router.lease_time_to_live),
        ("Lease", "LeaseLeases", _RawRequest, "unary", router.lease_leases),
        ("Maintenance", "Status", _RawRequest, "unary", router.status),
        ("Cluster", "MemberList", _RawRequest, "unary", router.member_list),
    ]
    methods: dict[str, Method] = {}
    for service, name, request_type, kind, handler in table:
        path = f"/etcdserverpb.{service}/{name}"
        methods[path] = Method(path, request_type, kind, handler)  # type: ignore[arg-type]
    return methods
