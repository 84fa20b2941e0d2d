"""The etcd v3 gRPC API over the in-memory Store: every RPC of etcd 3.4's KV, Watch, Lease,
Cluster, Maintenance and Auth services, as transport-neutral ``Method`` handlers.

This module is the protobuf edge: it validates requests as etcd's v3rpc layer does
(etcdserver/api/v3rpc/key.go, watch.go, lease.go), converts protobuf messages to the store's
plain types and back, checks auth, fills response headers, and turns ``StoreError`` into
``RpcError`` with etcd's code and message. Range and Put answer with pre-encoded bytes
(see wire.py) because they carry most of the traffic.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any

from ultraplane.etcd import wire
from ultraplane.etcd.proto import rpc_pb2
from ultraplane.etcd.rpc import CallContext, Method, RpcError
from ultraplane.etcd.watch import WatchSession
from ultraplane.store import errors
from ultraplane.store.errors import StoreError
from ultraplane.store.types import (
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    PutRequest,
    RangeRequest,
    SortOrder,
    SortTarget,
    TxnRequest,
)

if TYPE_CHECKING:
    from ultraplane.store import Store
    from ultraplane.store.auth import AuthStore

log = logging.getLogger("ultraplane.etcd")

# A single-member etcd becomes leader in term 2 (term 1 is the initial election round) and
# stays there; etcdctl endpoint status shows 2 for a fresh one. We have no raft, so a constant.
RAFT_TERM = 2
# What Status reports: the etcd release whose API and behaviour we follow.
ETCD_VERSION = "3.4.23"
# etcd sends snapshots in 32 KiB pieces (v3rpc snapshotSendBufferSize).
SNAPSHOT_CHUNK_BYTES = 32 * 1024
# etcdctl snapshot save accepts a file only if (size % 512) == 32, i.e. a whole number of bolt
# pages plus the SHA-256 trailer; the snapshot body is zero-padded up to that (see snapshot()).
SNAPSHOT_ALIGN_BYTES = 512
# etcd's ceiling on lease TTLs (lease.MaxLeaseTTL).
MAX_LEASE_TTL = 9_000_000_000
# A write is proposed as an InternalRaftRequest: the client request plus a small header. etcd
# compares that envelope's size with --max-request-bytes; this is its typical overhead.
RAFT_ENVELOPE_BYTES = 24
DEFAULT_MAX_TXN_OPS = 128

MemberNotFound = errors._error("MemberNotFound", errors.NOT_FOUND, "etcdserver: member not found")
MemberNotLearner = errors._error(
    "MemberNotLearner", errors.FAILED_PRECONDITION, "etcdserver: can only promote a learner member"
)
NotEnoughStarted = errors._error(
    "NotEnoughStarted",
    errors.FAILED_PRECONDITION,
    "etcdserver: re-configuration failed due to not enough started members",
)
BadLeaderTransferee = errors._error(
    "BadLeaderTransferee", errors.FAILED_PRECONDITION, "etcdserver: bad leader transferee"
)


def rpc_error(exc: StoreError) -> RpcError:
    return RpcError(exc.code, exc.message)


def _fail(error: type[StoreError]) -> RpcError:
    return RpcError(error.code, error.message)


# --------------------------------------------------------------------------- protobuf -> store

# Enum members by wire value: indexing a tuple is much cheaper than calling an IntEnum.
_SORT_ORDERS = tuple(SortOrder)
_SORT_TARGETS = tuple(SortTarget)
_COMPARE_RESULTS = tuple(CompareResult)
_COMPARE_TARGETS = tuple(CompareTarget)


def _enum(members: tuple[Any, ...], value: int) -> Any:
    try:
        return members[value]
    except IndexError:
        raise RpcError(errors.INVALID_ARGUMENT, f"etcdserver: unknown enum value {value}") from None


def range_from_pb(r: Any) -> RangeRequest:
    return RangeRequest(
        r.key,
        r.range_end,
        r.limit,
        r.revision,
        _enum(_SORT_ORDERS, r.sort_order),
        _enum(_SORT_TARGETS, r.sort_target),
        r.serializable,
        r.keys_only,
        r.count_only,
        r.min_mod_revision,
        r.max_mod_revision,
        r.min_create_revision,
        r.max_create_revision,
    )


def put_from_pb(r: Any) -> PutRequest:
    return PutRequest(r.key, r.value, r.lease, r.prev_kv, r.ignore_value, r.ignore_lease)


def delete_from_pb(r: Any) -> DeleteRangeRequest:
    return DeleteRangeRequest(r.key, r.range_end, r.prev_kv)


def compare_from_pb(c: Any) -> Compare:
    return Compare(
        _enum(_COMPARE_RESULTS, c.result),
        _enum(_COMPARE_TARGETS, c.target),
        c.key,
        c.version,
        c.create_revision,
        c.mod_revision,
        c.value,
        c.lease,
        c.range_end,
    )


def check_put(r: Any) -> None:
    """etcd's checkPutRequest."""
    if not r.key:
        raise _fail(errors.EmptyKey)
    if r.ignore_value and r.value:
        raise _fail(errors.ValueProvided)
    if r.ignore_lease and r.lease:
        raise _fail(errors.LeaseProvided)


Op = RangeRequest | PutRequest | DeleteRangeRequest | TxnRequest


def _branch_from_pb(ops: Any, max_ops: int) -> tuple[list[Op], int, bool]:
    """Validate and convert one txn branch, as etcd's checkRequestOp does op by op.
    Returns (ops, number of write ops, whether it holds a nested txn)."""
    out: list[Op] = []
    writes = 0
    nested = False
    for op in ops:
        which = op.WhichOneof("request")
        if which == "request_put":
            put = op.request_put
            check_put(put)
            out.append(put_from_pb(put))
            writes += 1
        elif which == "request_range":
            rng = op.request_range
            if not rng.key:
                raise _fail(errors.EmptyKey)
            out.append(range_from_pb(rng))
        elif which == "request_delete_range":
            dr = op.request_delete_range
            if not dr.key:
                raise _fail(errors.EmptyKey)
            out.append(delete_from_pb(dr))
            writes += 1
        elif which == "request_txn":
            sub, sub_writes = txn_from_pb(op.request_txn, max_ops)
            out.append(sub)
            writes += sub_writes
            nested = True
        else:
            raise _fail(errors.KeyNotFound)  # an empty RequestOp: etcd's answer for it
    return out, writes, nested


def txn_from_pb(r: Any, max_ops: int = DEFAULT_MAX_TXN_OPS) -> tuple[TxnRequest, int]:
    """Validate a TxnRequest as etcd's checkTxnRequest and checkIntervals do, and convert it.
    Returns the store request and how many write ops it holds (over both branches)."""
    compare, success, failure = r.compare, r.success, r.failure
    longest = max(len(compare), len(success), len(failure))
    if longest > max_ops:
        raise _fail(errors.TooManyOps)
    compares = []
    for c in compare:
        if not c.key:
            raise _fail(errors.EmptyKey)
        compares.append(compare_from_pb(c))
    # nested txns get what is left of the op budget, as in etcd
    then_ops, then_writes, then_nested = _branch_from_pb(success, max_ops - longest)
    else_ops, else_writes, else_nested = _branch_from_pb(failure, max_ops - longest)
    # a branch with at most one write and no nested txn cannot write a key twice
    if then_writes > 1 or then_nested:
        _txn_write_sets(success)
    if else_writes > 1 or else_nested:
        _txn_write_sets(failure)
    return TxnRequest(compares, then_ops, else_ops), then_writes + else_writes


# --------------------------------------------------------------------------- txn duplicate keys


def _in_deletes(key: bytes, deletes: list[tuple[bytes, bytes]]) -> bool:
    for begin, end in deletes:
        if end == b"":
            if key == begin:
                return True
        elif begin <= key and (end == b"\x00" or key < end):
            return True
    return False


def _txn_write_sets(ops: Iterable[Any]) -> tuple[set[bytes], list[tuple[bytes, bytes]]]:
    """etcd's checkIntervals: within one branch, no key may be put twice or both put and
    deleted (nested txns included; a nested txn's success and failure branches may overlap
    each other since only one runs). Returns (puts, deletes) of the branch."""
    deletes: list[tuple[bytes, bytes]] = []
    for op in ops:
        if op.WhichOneof("request") == "request_delete_range":
            d = op.request_delete_range
            deletes.append((d.key, d.range_end))
    puts: set[bytes] = set()
    for op in ops:
        if op.WhichOneof("request") != "request_txn":
            continue
        then_puts, then_dels = _txn_write_sets(op.request_txn.success)
        else_puts, else_dels = _txn_write_sets(op.request_txn.failure)
        for key in then_puts:
            if key in puts or _in_deletes(key, deletes):
                raise _fail(errors.DuplicateKey)
            puts.add(key)
        for key in else_puts:
            if (key in puts and key not in then_puts) or _in_deletes(key, deletes):
                raise _fail(errors.DuplicateKey)
            puts.add(key)
        deletes.extend(then_dels)
        deletes.extend(else_dels)
    for op in ops:
        if op.WhichOneof("request") != "request_put":
            continue
        key = op.request_put.key
        if key in puts or _in_deletes(key, deletes):
            raise _fail(errors.DuplicateKey)
        puts.add(key)
    return puts, deletes


# --------------------------------------------------------------------------- the service


class EtcdService:
    """Holds the store, auth and member identity the handlers share; ``methods()`` lists them."""

    def __init__(
        self,
        store: Store,
        auth: AuthStore | None,
        *,
        cluster_id: int,
        member_id: int,
        member_name: str,
        client_urls: list[str],
        max_request_bytes: int,
        peer_urls: list[str] | None = None,
        watch_progress_interval: float = 600.0,
    ) -> None:
        self.store: Any = store
        self.auth: Any = auth
        self.cluster_id = cluster_id
        self.member_id = member_id
        self.member_name = member_name
        self.client_urls = list(client_urls)
        self.peer_urls = list(peer_urls) if peer_urls is not None else ["http://localhost:2380"]
        self.max_request_bytes = max_request_bytes
        self.watch_progress_interval = watch_progress_interval
        # the store's limit (its public name if it has one), so edge validation agrees with it
        self.max_txn_ops = int(
            getattr(store, "max_txn_ops", getattr(store, "_max_txn_ops", DEFAULT_MAX_TXN_OPS))
        )
        self._headers = wire.HeaderEncoder(cluster_id, member_id, RAFT_TERM)
        self._kv_cache = wire.KVCache()

    # ----------------------------------------------------------------- helpers

    def header(self, resp: Any, revision: int | None = None) -> Any:
        """Fill resp.header (cluster, member, term, revision) and return resp."""
        h = resp.header
        h.cluster_id = self.cluster_id
        h.member_id = self.member_id
        h.raft_term = RAFT_TERM
        h.revision = self.store.revision if revision is None else revision
        return resp

    def cluster_header(self, resp: Any) -> Any:
        """The header etcd's Cluster service sends: identity and term, but no revision."""
        h = resp.header
        h.cluster_id = self.cluster_id
        h.member_id = self.member_id
        h.raft_term = RAFT_TERM
        return resp

    def _user(self, ctx: CallContext) -> str | None:
        """Who the request is from, or None when auth is off and no token was sent."""
        auth = self.auth
        if auth is None:
            return None
        token = ctx.metadata.get("token")
        if token is None and not auth.enabled:
            return None
        try:
            return auth.user_from_request(token, ctx.peer_common_name)
        except StoreError as exc:
            raise rpc_error(exc) from None

    def _auth_on(self) -> bool:
        return self.auth is not None and self.auth.enabled

    def _check(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except StoreError as exc:
            raise rpc_error(exc) from None

    def _admin(self, ctx: CallContext) -> None:
        if self._auth_on():
            self._check(self.auth.check_admin, self._user(ctx))

    def _too_large(self, req: Any, payload_bytes: int) -> None:
        # Cheap pre-check on the obvious payload first; ByteSize only near the limit.
        limit = self.max_request_bytes - RAFT_ENVELOPE_BYTES
        if payload_bytes > limit // 2 and req.ByteSize() > limit:
            raise _fail(errors.RequestTooLarge)

    def _lease_keys(self, lease_id: int) -> list[bytes]:
        if not lease_id:
            return []
        try:
            return list(self.store.lease_time_to_live(lease_id, True).keys)
        except StoreError:
            return []

    # ----------------------------------------------------------------- KV

    async def range(self, req: Any, ctx: CallContext) -> bytes:
        if not req.key:
            raise _fail(errors.EmptyKey)
        if self.auth is not None:
            user = self._user(ctx)
            if self.auth.enabled:
                self._check(self.auth.check_read, user, req.key, req.range_end)
        try:
            res = self.store.range(range_from_pb(req))
        except StoreError as exc:
            raise rpc_error(exc) from None
        kvs = res.kvs
        # lists repeat the same versions request after request; single gets are not worth caching
        encode = self._kv_cache.encode if len(kvs) > 1 else wire.encode_kv
        return wire.encode_range_response(self._headers.field(res.revision), kvs, res.more, res.count, encode)

    async def put(self, req: Any, ctx: CallContext) -> bytes:
        check_put(req)
        self._too_large(req, len(req.key) + len(req.value))
        put = put_from_pb(req)
        if self.auth is not None:
            user = self._user(ctx)
            if self.auth.enabled:
                self._check(self.auth.check_put, user, put, self._lease_keys(put.lease))
        try:
            res = await self.store.put(put)
        except StoreError as exc:
            raise rpc_error(exc) from None
        return wire.encode_put_response(self._headers.field(res.revision), res.prev_kv)

    async def delete_range(self, req: Any, ctx: CallContext) -> bytes:
        if not req.key:
            raise _fail(errors.EmptyKey)
        self._too_large(req, len(req.key) + len(req.range_end))
        dreq = delete_from_pb(req)
        if self.auth is not None:
            user = self._user(ctx)
            if self.auth.enabled:
                self._check(self.auth.check_delete_range, user, dreq)
        try:
            res = await self.store.delete_range(dreq)
        except StoreError as exc:
            raise rpc_error(exc) from None
        return wire.encode_delete_response(self._headers.field(res.revision), res.deleted, res.prev_kvs)

    async def txn(self, req: Any, ctx: CallContext) -> bytes:
        treq, writes = txn_from_pb(req, self.max_txn_ops)
        if writes:  # read-only txns are served without a proposal, so etcd doesn't size them
            self._too_large(req, self.max_request_bytes)
        if self.auth is not None:
            user = self._user(ctx)
            if self.auth.enabled:
                self._check(self.auth.check_txn, user, treq)
        try:
            res = await self.store.txn(treq)
        except StoreError as exc:
            raise rpc_error(exc) from None
        return wire.encode_txn_response(self._headers.field(res.revision), res)

    async def compact(self, req: Any, ctx: CallContext) -> Any:
        self._user(ctx)  # an invalid token is refused, as etcd's raft path does
        try:
            revision = await self.store.compact(req.revision, req.physical)
        except StoreError as exc:
            raise rpc_error(exc) from None
        return self.header(rpc_pb2.CompactionResponse(), revision)

    # ----------------------------------------------------------------- Watch

    async def watch(self, requests: AsyncIterator[Any], ctx: CallContext) -> AsyncIterator[Any]:
        session = WatchSession(self, ctx)
        async for reply in session.run(requests):
            yield reply

    # ----------------------------------------------------------------- Lease

    async def lease_grant(self, req: Any, ctx: CallContext) -> Any:
        self._user(ctx)
        if req.TTL > MAX_LEASE_TTL:
            raise _fail(errors.LeaseTTLTooLarge)
        try:
            lease_id, ttl = await self.store.lease_grant(req.TTL, req.ID)
        except StoreError as exc:
            raise rpc_error(exc) from None
        return self.header(rpc_pb2.LeaseGrantResponse(ID=lease_id, TTL=ttl))

    async def lease_revoke(self, req: Any, ctx: CallContext) -> Any:
        if self.auth is not None:
            user = self._user(ctx)
            if self.auth.enabled:
                self._check(self.auth.check_lease_revoke, user, self._lease_keys(req.ID))
        try:
            revision = await self.store.lease_revoke(req.ID)
        except StoreError as exc:
            raise rpc_error(exc) from None
        return self.header(rpc_pb2.LeaseRevokeResponse(), revision)

    async def lease_keep_alive(self, requests: AsyncIterator[Any], ctx: CallContext) -> AsyncIterator[Any]:
        keepalive = self.store.lease_keepalive
        async for req in requests:
            try:
                ttl = keepalive(req.ID)
            except errors.LeaseNotFound:
                ttl = 0  # etcd answers an unknown or expired lease with TTL 0, not an error
            except StoreError as exc:
                raise rpc_error(exc) from None
            yield self.header(rpc_pb2.LeaseKeepAliveResponse(ID=req.ID, TTL=ttl))

    async def lease_time_to_live(self, req: Any, ctx: CallContext) -> Any:
        self._user(ctx)
        try:
            info = self.store.lease_time_to_live(req.ID, req.keys)
        except errors.LeaseNotFound:
            return self.header(rpc_pb2.LeaseTimeToLiveResponse(ID=req.ID, TTL=-1))
        except StoreError as exc:
            raise rpc_error(exc) from None
        resp = rpc_pb2.LeaseTimeToLiveResponse(ID=req.ID, TTL=info.ttl, grantedTTL=info.granted_ttl)
        if req.keys:
            resp.keys.extend(info.keys)
        return self.header(resp)

    async def lease_leases(self, req: Any, ctx: CallContext) -> Any:
        self._user(ctx)
        resp = rpc_pb2.LeaseLeasesResponse()
        for lease_id in self.store.leases():
            resp.leases.add(ID=lease_id)
        return self.header(resp)

    # ----------------------------------------------------------------- Cluster

    def _member(self, out: Any) -> None:
        out.ID = self.member_id
        out.name = self.member_name
        out.peerURLs.extend(self.peer_urls)
        out.clientURLs.extend(self.client_urls)

    def _members_response(self, resp: Any) -> Any:
        self._member(resp.members.add())
        return self.cluster_header(resp)

    async def member_list(self, req: Any, ctx: CallContext) -> Any:
        return self._members_response(rpc_pb2.MemberListResponse())

    async def member_add(self, req: Any, ctx: CallContext) -> Any:
        self._admin(ctx)
        raise RpcError(
            errors.UNIMPLEMENTED,
            "ultraplane: this store is a single member; adding members is not supported",
        )

    async def member_remove(self, req: Any, ctx: CallContext) -> Any:
        self._admin(ctx)
        if req.ID != self.member_id:
            raise _fail(MemberNotFound)
        raise _fail(NotEnoughStarted)  # what etcd says when asked to remove its only member

    async def member_update(self, req: Any, ctx: CallContext) -> Any:
        self._admin(ctx)
        if req.ID != self.member_id:
            raise _fail(MemberNotFound)
        raise RpcError(
            errors.UNIMPLEMENTED,
            "ultraplane: this store is a single member; its peer URLs cannot be changed",
        )

    async def member_promote(self, req: Any, ctx: CallContext) -> Any:
        self._admin(ctx)
        if req.ID != self.member_id:
            raise _fail(MemberNotFound)
        raise _fail(MemberNotLearner)

    # ----------------------------------------------------------------- Maintenance

    def _alarm_members(self, resp: Any, alarm: int) -> Any:
        for name in sorted(self.store.alarms):
            value = rpc_pb2.AlarmType.Value(name) if name in rpc_pb2.AlarmType.keys() else None
            if value is None or (alarm != rpc_pb2.NONE and alarm != value):
                continue
            resp.alarms.add(memberID=self.member_id, alarm=value)
        return resp

    async def alarm(self, req: Any, ctx: CallContext) -> Any:
        self._user(ctx)
        resp = rpc_pb2.AlarmResponse()
        if req.action == rpc_pb2.AlarmRequest.GET:
            self._alarm_members(resp, req.alarm)
        elif req.action == rpc_pb2.AlarmRequest.DEACTIVATE:
            if req.memberID in (0, self.member_id):
                self._alarm_members(resp, req.alarm)
                for member in resp.alarms:
                    try:
                        await self.store.alarm_disarm(rpc_pb2.AlarmType.Name(member.alarm))
                    except StoreError as exc:
                        raise rpc_error(exc) from None
        else:
            raise RpcError(
                errors.UNIMPLEMENTED, "ultraplane: alarms are raised by the store itself, not by clients"
            )
        return resp  # etcd 3.4 sends alarm responses without a header

    async def status(self, req: Any, ctx: CallContext) -> Any:
        store = self.store
        revision = store.revision
        resp = rpc_pb2.StatusResponse(
            version=ETCD_VERSION,
            dbSize=store.db_size,
            dbSizeInUse=store.db_size_in_use,
            leader=self.member_id,
            # no raft log: the revision is the closest thing to a committed/applied index
            raftIndex=revision,
            raftAppliedIndex=revision,
            raftTerm=RAFT_TERM,
        )
        for name in sorted(store.alarms):
            resp.errors.append(f"memberID:{self.member_id} alarm:{name} ")
        return self.header(resp, revision)

    async def defragment(self, req: Any, ctx: CallContext) -> Any:
        self._admin(ctx)
        return self.header(rpc_pb2.DefragmentResponse())  # nothing to defragment in memory

    async def hash(self, req: Any, ctx: CallContext) -> Any:
        self._admin(ctx)
        revision = self.store.revision
        return self.header(rpc_pb2.HashResponse(hash=self.store.hash() & 0xFFFFFFFF), revision)

    async def hash_kv(self, req: Any, ctx: CallContext) -> Any:
        self._admin(ctx)
        try:
            value, compact_revision, revision = self.store.hash_kv(req.revision)
        except StoreError as exc:
            raise rpc_error(exc) from None
        resp = rpc_pb2.HashKVResponse(hash=value & 0xFFFFFFFF, compact_revision=compact_revision)
        return self.header(resp, revision)

    async def snapshot(self, req: Any, ctx: CallContext) -> AsyncIterator[Any]:
        """The store as an etcd 3.4 backend database (bbolt, see store.etcdsnapshot) in 32 KiB
        messages, then (as etcd does) one more message whose blob is the SHA-256 of everything
        sent before it: `etcdctl snapshot status/restore` and etcd itself accept the file.
        remaining_bytes counts what is left after each message (0 on the last data message)."""
        from ultraplane.store.etcdsnapshot import Member, capture_db

        self._admin(ctx)
        revision = self.store.revision
        member = Member(self.member_id, self.member_name, self.peer_urls, self.client_urls)
        build = capture_db(self.store, self.auth, member)  # consistent: the state is taken in one step
        body = await asyncio.to_thread(build)  # laying out pages takes a while on a big store
        pad = -len(body) % SNAPSHOT_ALIGN_BYTES
        if pad:
            body += b"\x00" * pad
        digest = hashlib.sha256(body).digest()
        total = len(body)
        view = memoryview(body)
        sent = 0
        while sent < total:
            piece = bytes(view[sent : sent + SNAPSHOT_CHUNK_BYTES])
            sent += len(piece)
            yield self.header(rpc_pb2.SnapshotResponse(remaining_bytes=total - sent, blob=piece), revision)
        yield self.header(rpc_pb2.SnapshotResponse(remaining_bytes=0, blob=digest), revision)

    async def move_leader(self, req: Any, ctx: CallContext) -> Any:
        self._admin(ctx)
        if req.targetID != self.member_id:
            raise _fail(BadLeaderTransferee)
        return self.header(rpc_pb2.MoveLeaderResponse())  # already the leader

    # ----------------------------------------------------------------- Auth

    def _auth_store(self) -> Any:
        if self.auth is None:
            raise RpcError(errors.UNIMPLEMENTED, "ultraplane: auth is not available on this server")
        return self.auth

    async def _auth_call(self, ctx: CallContext, response: Any, fn: Callable[..., Any], *args: Any) -> Any:
        auth = self._auth_store()
        if auth.enabled:
            self._check(auth.check_admin, self._user(ctx))
        try:
            result = fn(*args)
            if asyncio.iscoroutine(result):
                await result
        except StoreError as exc:
            raise rpc_error(exc) from None
        return self.header(response)

    async def auth_enable(self, req: Any, ctx: CallContext) -> Any:
        return await self._auth_call(ctx, rpc_pb2.AuthEnableResponse(), self._auth_store().enable)

    async def auth_disable(self, req: Any, ctx: CallContext) -> Any:
        return await self._auth_call(ctx, rpc_pb2.AuthDisableResponse(), self._auth_store().disable)

    async def authenticate(self, req: Any, ctx: CallContext) -> Any:
        auth = self._auth_store()
        try:
            token = await auth.authenticate(req.name, req.password)
        except StoreError as exc:
            raise rpc_error(exc) from None
        return self.header(rpc_pb2.AuthenticateResponse(token=token))

    async def user_add(self, req: Any, ctx: CallContext) -> Any:
        if not req.name:
            raise _fail(errors.UserEmpty)
        auth = self._auth_store()
        no_password = req.HasField("options") and req.options.no_password
        return await self._auth_call(
            ctx, rpc_pb2.AuthUserAddResponse(), auth.user_add, req.name, req.password, no_password
        )

    async def user_get(self, req: Any, ctx: CallContext) -> Any:
        auth = self._auth_store()
        if auth.enabled:
            self._check(auth.check_user_get, self._user(ctx), req.name)
        try:
            roles = auth.user_get(req.name)
        except StoreError as exc:
            raise rpc_error(exc) from None
        return self.header(rpc_pb2.AuthUserGetResponse(roles=roles))

    async def user_list(self, req: Any, ctx: CallContext) -> Any:
        auth = self._auth_store()
        if auth.enabled:
            self._check(auth.check_admin, self._user(ctx))
        return self.header(rpc_pb2.AuthUserListResponse(users=auth.user_list()))

    async def user_delete(self, req: Any, ctx: CallContext) -> Any:
        auth = self._auth_store()
        return await self._auth_call(ctx, rpc_pb2.AuthUserDeleteResponse(), auth.user_delete, req.name)

    async def user_change_password(self, req: Any, ctx: CallContext) -> Any:
        auth = self._auth_store()
        return await self._auth_call(
            ctx, rpc_pb2.AuthUserChangePasswordResponse(), auth.user_change_password, req.name, req.password
        )

    async def user_grant_role(self, req: Any, ctx: CallContext) -> Any:
        auth = self._auth_store()
        return await self._auth_call(
            ctx, rpc_pb2.AuthUserGrantRoleResponse(), auth.user_grant_role, req.user, req.role
        )

    async def user_revoke_role(self, req: Any, ctx: CallContext) -> Any:
        auth = self._auth_store()
        return await self._auth_call(
            ctx, rpc_pb2.AuthUserRevokeRoleResponse(), auth.user_revoke_role, req.name, req.role
        )

    async def role_add(self, req: Any, ctx: CallContext) -> Any:
        if not req.name:
            raise _fail(errors.RoleEmpty)
        auth = self._auth_store()
        return await self._auth_call(ctx, rpc_pb2.AuthRoleAddResponse(), auth.role_add, req.name)

    async def role_get(self, req: Any, ctx: CallContext) -> Any:
        auth = self._auth_store()
        if auth.enabled:
            self._check(auth.check_role_get, self._user(ctx), req.role)
        try:
            perms = auth.role_get(req.role)
        except StoreError as exc:
            raise rpc_error(exc) from None
        resp = rpc_pb2.AuthRoleGetResponse()
        for perm in perms:
            resp.perm.add(permType=int(perm.perm_type), key=perm.key, range_end=perm.range_end)
        return self.header(resp)

    async def role_list(self, req: Any, ctx: CallContext) -> Any:
        auth = self._auth_store()
        if auth.enabled:
            self._check(auth.check_admin, self._user(ctx))
        return self.header(rpc_pb2.AuthRoleListResponse(roles=auth.role_list()))

    async def role_delete(self, req: Any, ctx: CallContext) -> Any:
        auth = self._auth_store()
        return await self._auth_call(ctx, rpc_pb2.AuthRoleDeleteResponse(), auth.role_delete, req.role)

    async def role_grant_permission(self, req: Any, ctx: CallContext) -> Any:
        auth = self._auth_store()
        if not req.HasField("perm"):
            raise _fail(errors.PermissionNotGranted)
        perm = req.perm
        return await self._auth_call(
            ctx,
            rpc_pb2.AuthRoleGrantPermissionResponse(),
            auth.role_grant_permission,
            req.name,
            perm.permType,
            perm.key,
            perm.range_end,
        )

    async def role_revoke_permission(self, req: Any, ctx: CallContext) -> Any:
        auth = self._auth_store()
        return await self._auth_call(
            ctx,
            rpc_pb2.AuthRoleRevokePermissionResponse(),
            auth.role_revoke_permission,
            req.role,
            req.key,
            req.range_end,
        )

    # ----------------------------------------------------------------- table

    def methods(self) -> dict[str, Method]:
        table: list[tuple[str, str, type, str, Callable[..., Any]]] = [
            ("KV", "Range", rpc_pb2.RangeRequest, "unary", self.range),
            ("KV", "Put", rpc_pb2.PutRequest, "unary", self.put),
            ("KV", "DeleteRange", rpc_pb2.DeleteRangeRequest, "unary", self.delete_range),
            ("KV", "Txn", rpc_pb2.TxnRequest, "unary", self.txn),
            ("KV", "Compact", rpc_pb2.CompactionRequest, "unary", self.compact),
            ("Watch", "Watch", rpc_pb2.WatchRequest, "bidi", self.watch),
            ("Lease", "LeaseGrant", rpc_pb2.LeaseGrantRequest, "unary", self.lease_grant),
            ("Lease", "LeaseRevoke", rpc_pb2.LeaseRevokeRequest, "unary", self.lease_revoke),
            ("Lease", "LeaseKeepAlive", rpc_pb2.LeaseKeepAliveRequest, "bidi", self.lease_keep_alive),
            ("Lease", "LeaseTimeToLive", rpc_pb2.LeaseTimeToLiveRequest, "unary", self.lease_time_to_live),
            ("Lease", "LeaseLeases", rpc_pb2.LeaseLeasesRequest, "unary", self.lease_leases),
            ("Cluster", "MemberAdd", rpc_pb2.MemberAddRequest, "unary", self.member_add),
            ("Cluster", "MemberRemove", rpc_pb2.MemberRemoveRequest, "unary", self.member_remove),
            ("Cluster", "MemberUpdate", rpc_pb2.MemberUpdateRequest, "unary", self.member_update),
            ("Cluster", "MemberList", rpc_pb2.MemberListRequest, "unary", self.member_list),
            ("Cluster", "MemberPromote", rpc_pb2.MemberPromoteRequest, "unary", self.member_promote),
            ("Maintenance", "Alarm", rpc_pb2.AlarmRequest, "unary", self.alarm),
            ("Maintenance", "Status", rpc_pb2.StatusRequest, "unary", self.status),
            ("Maintenance", "Defragment", rpc_pb2.DefragmentRequest, "unary", self.defragment),
            ("Maintenance", "Hash", rpc_pb2.HashRequest, "unary", self.hash),
            ("Maintenance", "HashKV", rpc_pb2.HashKVRequest, "unary", self.hash_kv),
            ("Maintenance", "Snapshot", rpc_pb2.SnapshotRequest, "server_stream", self.snapshot),
            ("Maintenance", "MoveLeader", rpc_pb2.MoveLeaderRequest, "unary", self.move_leader),
            ("Auth", "AuthEnable", rpc_pb2.AuthEnableRequest, "unary", self.auth_enable),
            ("Auth", "AuthDisable", rpc_pb2.AuthDisableRequest, "unary", self.auth_disable),
            ("Auth", "Authenticate", rpc_pb2.AuthenticateRequest, "unary", self.authenticate),
            ("Auth", "UserAdd", rpc_pb2.AuthUserAddRequest, "unary", self.user_add),
            ("Auth", "UserGet", rpc_pb2.AuthUserGetRequest, "unary", self.user_get),
            ("Auth", "UserList", rpc_pb2.AuthUserListRequest, "unary", self.user_list),
            ("Auth", "UserDelete", rpc_pb2.AuthUserDeleteRequest, "unary", self.user_delete),
            (
                "Auth",
                "UserChangePassword",
                rpc_pb2.AuthUserChangePasswordRequest,
                "unary",
                self.user_change_password,
            ),
            ("Auth", "UserGrantRole", rpc_pb2.AuthUserGrantRoleRequest, "unary", self.user_grant_role),
            ("Auth", "UserRevokeRole", rpc_pb2.AuthUserRevokeRoleRequest, "unary", self.user_revoke_role),
            ("Auth", "RoleAdd", rpc_pb2.AuthRoleAddRequest, "unary", self.role_add),
            ("Auth", "RoleGet", rpc_pb2.AuthRoleGetRequest, "unary", self.role_get),
            ("Auth", "RoleList", rpc_pb2.AuthRoleListRequest, "unary", self.role_list),
            ("Auth", "RoleDelete", rpc_pb2.AuthRoleDeleteRequest, "unary", self.role_delete),
            (
                "Auth",
                "RoleGrantPermission",
                rpc_pb2.AuthRoleGrantPermissionRequest,
                "unary",
                self.role_grant_permission,
            ),
            (
                "Auth",
                "RoleRevokePermission",
                rpc_pb2.AuthRoleRevokePermissionRequest,
                "unary",
                self.role_revoke_permission,
            ),
        ]
        methods: dict[str, Method] = {}
        for service, name, request_type, kind, handler in table:
            path = f"/etcdserverpb.{service}/{name}"
            methods[path] = Method(path, request_type, kind, handler)  # type: ignore[arg-type]
        return methods


def etcd_methods(
    store: Store,
    auth: AuthStore | None,
    *,
    cluster_id: int,
    member_id: int,
    member_name: str,
    client_urls: list[str],
    max_request_bytes: int,
    peer_urls: list[str] | None = None,
    watch_progress_interval: float = 600.0,
) -> dict[str, Method]:
    """Every etcd v3 RPC, keyed by gRPC path ("/etcdserverpb.KV/Range"), served from ``store``.

    ``auth`` is the AuthStore (None: no auth service; Auth RPCs answer UNIMPLEMENTED).
    ``watch_progress_interval``: seconds between progress notifications to watchers that asked
    for them (etcd's default is 10 minutes)."""
    service = EtcdService(
        store,
        auth,
        cluster_id=cluster_id,
        member_id=member_id,
        member_name=member_name,
        client_urls=client_urls,
        max_request_bytes=max_request_bytes,
        peer_urls=peer_urls,
        watch_progress_interval=watch_progress_interval,
    )
    return service.methods()


__all__ = ["EtcdService", "etcd_methods", "rpc_error"]
