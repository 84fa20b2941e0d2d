"""One member of a replicated store: several ``ultraplane store`` processes share one journal,
a subject of a replicated NATS JetStream stream, and never talk to each other directly.

Roles::

    FOLLOWER    tails the stream (an ordered push consumer, NatsJournal.fetch_batch) and applies
                each batch through Store.apply_replicated (the replay path recovery uses): it
                never applies anything speculatively
    WRITER      holds the writer lease; its Store works as a single store does (speculative
                apply, group-committed append, visible once durable)
    CHANGING    promotion or demotion in progress: writes wait for a writer

Writer election (liveness only): the key ``<partition>`` of the KV bucket ``ultraplane-writers``
(TTL ``lease_ttl``) holds the writer's member id and client URLs. A follower tries
``create`` every ``poll_interval``; the writer renews with ``update(last=revision)``. Safety does
not rest on the lease: every append is conditioned on the subject's last sequence, and a new
writer first publishes an empty *claim* batch, so an old writer that still believes it holds the
lease (paused, partitioned) is fenced on its next append.

Becoming writer: take the lease, catch up to the last message, publish the claim, refresh every
lease's expiry (as etcd does on a leader change) and start expiring leases, then serve writes.
Losing it (fenced, lease lost or taken): in-flight writes fail with etcd's "leader changed", the
Store (whose memory may hold speculative, never-acknowledged changes) is thrown away and rebuilt
from the newest snapshot plus the stream, and the member follows again.

Forwarding: the writer answers ``ultraplane.rpc.<stream>.<partition>`` requests carrying a gRPC
method path, the authenticated user name and the serialized request; it runs the same handler
with that user's permissions and replies with the response bytes and the stream sequence the
journal had reached, or with a gRPC status. The follower answers its client only once it has
applied that sequence, so a client reads its own writes on the same member. NATS is trusted
infrastructure here: any NATS client allowed on that subject can act as any user.

Reads (etcd's ReadIndex): serializable reads answer from local state. A linearizable Range,
read-only Txn or LeaseLeases first passes read_barrier, after the request arrived. On a follower:
ask the writer for its read index (one round trip through NATS for every read that arrived while
the previous one was in flight) -- the stream sequence every write it has issued is durable at
-- and wait until that is applied here. Not the stream's last sequence: a newly elected stream
leader may answer before it has applied everything committed under its predecessor. On the
writer: wait until every revision it had issued is committed locally (a follower may already
serve a write whose acknowledgement the writer has not processed yet).

Fencing: the writer executes nothing (reads, writes, failed compares, lease grants, keep-alives)
unless its lease renewal is fresh -- renewed less than a TTL ago, counted from before the renewal
was sent and checked after the request arrived, so a pause shows -- or, when it is not (paused,
KV unreachable), a journal barrier (an append conditioned on our position, empty if nothing is
queued) lands, proving that no other writer has claimed. A writer paused past its lease is
fenced by that barrier and hands the request to the new writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import json
import logging
import struct
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import KeyWrongLastSequenceError, NoKeysError, NotFoundError

from ultraplane.etcd.proto import rpc_pb2
from ultraplane.etcd.rpc import CallContext, Method, RpcError
from ultraplane.etcd.service import EtcdService
from ultraplane.journal.file import JournalCorrupt, JournalError
from ultraplane.journal.nats import JournalFenced, NatsJournal
from ultraplane.store import errors
from ultraplane.store.mvcc import Store

log = logging.getLogger("ultraplane.replica")

WRITERS_BUCKET = "ultraplane-writers"
MEMBERS_BUCKET = "ultraplane-members"
RPC_PREFIX = "ultraplane.rpc"

# etcd 3.4 rpctypes: all three are codes.Unavailable, which clients retry.
ERR_LEADER_CHANGED = "etcdserver: leader changed"
ERR_NO_LEADER = "etcdserver: no leader"
ERR_TIMEOUT = "etcdserver: request timed out"

# Reply status byte of a forwarded request.
REPLY_OK = 0  # u64 stream sequence | response bytes
REPLY_ERROR = 1  # u32 grpc code | utf-8 message
REPLY_NOT_WRITER = 2  # nothing was executed: the sender may try again elsewhere
SEQ = struct.Struct("<Q")
CODE = struct.Struct("<I")
LEN = struct.Struct("<H")

KEEPALIVE_PATH = "/etcdserverpb.Lease/LeaseKeepAlive"
# A follower's linearizable read asks the writer for this: the stream sequence every write it has
# acknowledged is at or below (ultraplane's own, never a gRPC method).
READ_INDEX_PATH = "/ultraplane.replica/ReadIndex"
# Unary methods that change state (or, like LeaseTimeToLive, need the writer's lease clock).
FORWARDED = frozenset({
    "/etcdserverpb.KV/Put", "/etcdserverpb.KV/DeleteRange", "/etcdserverpb.KV/Compact",
    "/etcdserverpb.Lease/LeaseGrant", "/etcdserverpb.Lease/LeaseRevoke",
    "/etcdserverpb.Lease/LeaseTimeToLive", "/etcdserverpb.Maintenance/Alarm",
    "/etcdserverpb.Auth/AuthEnable", "/etcdserverpb.Auth/AuthDisable", "/etcdserverpb.Auth/UserAdd",
    "/etcdserverpb.Auth/UserDelete", "/etcdserverpb.Auth/UserChangePassword",
    "/etcdserverpb.Auth/UserGrantRole", "/etcdserverpb.Auth/UserRevokeRole", "/etcdserverpb.Auth/RoleAdd",
    "/etcdserverpb.Auth/RoleDelete", "/etcdserverpb.Auth/RoleGrantPermission",
    "/etcdserverpb.Auth/RoleRevokePermission",
})
# Reads that must reflect every write acknowledged before they started.
LINEARIZABLE_READS = frozenset({"/etcdserverpb.KV/Range", "/etcdserverpb.Lease/LeaseLeases"})


class _NotWriter(Exception):  # noqa: N818 - a signal, not an error a client sees
    """This member stopped being the writer before it executed the request: nothing was
    executed, so the request may go to the new writer."""


class Role(enum.Enum):
    FOLLOWER = "follower"
    WRITER = "writer"
    CHANGING = "changing"


def unavailable(message: str) -> RpcError:
    return RpcError(errors.UNAVAILABLE, message)


def cluster_id_for(stream: str, partition: str) -> int:
    """Every member of one replicated store derives the same cluster id."""
    digest = hashlib.sha256(f"{stream}/{partition}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") >> 1) or 1


def txn_writes(req: Any) -> bool:
    for branch in (req.success, req.failure):
        for op in branch:
            which = op.WhichOneof("request")
            if which in ("request_put", "request_delete_range"):
                return True
            if which == "request_txn" and txn_writes(op.request_txn):
                return True
    return False


@dataclass
class ReplicaConfig:
    urls: list[str]
    partition: str = "default"
    stream: str = "ULTRAPLANE"
    replicas: int = 3
    member_id: int = 1
    member_name: str = "default"
    client_urls: list[str] = field(default_factory=list)
    lease_ttl: float = 3.0  # writer lease and membership record TTL (seconds)
    renew_interval: float = 1.0  # how often the writer renews its lease
    poll_interval: float = 0.25  # how often a follower tries to take an expired lease
    forward_wait: float = 8.0  # how long a write waits for a writer to appear
    request_timeout: float = 10.0
    snapshot_bytes: int = 64 * 1024**2
    # A publish lost with a dead stream leader is retried (same message id, so deduplicated)
    # after this long: short, so that writes resume soon after the stream elects a new leader.
    publish_timeout: float = 1.0


@dataclass
class WriterInfo:
    member_id: int
    name: str
    client_urls: list[str]


class ReplicaService(EtcdService):
    """EtcdService whose MemberList and Status describe the replicated store."""

    member: ReplicaMember

    async def member_list(self, req: Any, ctx: CallContext) -> Any:
        resp = rpc_pb2.MemberListResponse()
        for info in await self.member.members():
            m = resp.members.add()
            m.ID = info.member_id
            m.name = info.name
            m.peerURLs.extend(self.peer_urls)
            m.clientURLs.extend(info.client_urls)
        return self.cluster_header(resp)

    async def status(self, req: Any, ctx: CallContext) -> Any:
        resp = await super().status(req, ctx)
        writer = self.member.writer
        resp.leader = writer.member_id if writer is not None else 0
        resp.raftIndex = resp.raftAppliedIndex = self.member.applied_seq
        return resp


class ReplicaMember:
    """See the module docstring. ``make_store(journal)`` builds an unopened Store and its
    AuthStore (attached) over the given journal, so every rebuild gets the same settings."""

    def __init__(self, config: ReplicaConfig, make_store: Callable[[NatsJournal], tuple[Store, Any]],
                 *, max_request_bytes: int) -> None:
        self.config = config
        self.make_store = make_store
        self.max_request_bytes = max_request_bytes
        self.cluster_id = cluster_id_for(config.stream, config.partition)
        self.role = Role.CHANGING
        self.writer: WriterInfo | None = None
        self.store: Store | None = None
        self.auth: Any = None
        self.journal: NatsJournal | None = None
        self.service: ReplicaService | None = None
        self._local: dict[str, Method] = {}
        self._nc: NatsClient | None = None
        self._js: Any = None
        self._writers_kv: Any = None
        self._members_kv: Any = None
        self._lease_rev = 0
        self._renewed_at = 0.0
        self._rpc_sub: Any = None
        self._apply_lock = asyncio.Lock()
        self._writer_change_waiters: set[asyncio.Future[None]] = set()
        self._unverified = False  # lease re-taken after a lapse, journal not yet checked
        self._kv_reachable_since: float | None = None  # a follower's first KV success after a failure
        self._tail_task: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._rpc_tasks: set[asyncio.Task[None]] = set()
        self._applied_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._read_index_waiters: list[asyncio.Future[int]] = []
        self._read_index_task: asyncio.Task[None] | None = None
        self._members_cache: list[WriterInfo] = []
        self._closing = False
        self.rpc_subject = f"{RPC_PREFIX}.{config.stream}.{config.partition}"
        self.writer_key = config.partition
        self.member_key = f"{config.partition}.{config.member_id}"
        self.identity = json.dumps({"id": config.member_id, "name": config.member_name,
                                    "client_urls": config.client_urls}).encode()

    # ---------------------------------------------------------------------------- lifecycle

    async def start(self) -> dict[str, Method]:
        """Connect, recover the Store as a follower and start electing; returns the gRPC methods
        to serve (every write goes through the writer)."""
        cfg = self.config

        async def on_error(exc: Exception) -> None:
            log.debug("replica: NATS connection error: %r", exc)

        self._nc = await nats.connect(servers=cfg.urls, connect_timeout=2, max_reconnect_attempts=-1,
                                      reconnect_time_wait=0.2, error_cb=on_error,
                                      name=f"ultraplane-member-{cfg.member_name}")
        self._js = self._nc.jetstream(timeout=5)
        self._writers_kv = await self._bucket(WRITERS_BUCKET)
        self._members_kv = await self._bucket(MEMBERS_BUCKET)
        await self._open_store()
        assert self.store is not None
        self.service = ReplicaService(
            self.store, self.auth, cluster_id=self.cluster_id, member_id=cfg.member_id,
            member_name=cfg.member_name, client_urls=cfg.client_urls, max_request_bytes=self.max_request_bytes,
        )
        self.service.member = self
        self._local = self.service.methods()
        self.role = Role.FOLLOWER
        self._start_tail()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._election_loop(), name="replica-election"))
        self._tasks.append(loop.create_task(self._membership_loop(), name="replica-membership"))
        return self._wrapped_methods()

    async def _bucket(self, name: str) -> Any:
        cfg = self.config
        deadline = time.monotonic() + 60
        while True:
            try:
                try:
                    return await self._js.key_value(name)
                except NotFoundError:
                    return await self._js.create_key_value(KeyValueConfig(
                        bucket=name, history=1, ttl=cfg.lease_ttl, replicas=cfg.replicas,
                        storage=StorageType.FILE))
            except Exception as exc:  # noqa: BLE001 - the cluster may still be electing
                if time.monotonic() > deadline:
                    raise JournalError(f"replica: cannot open KV bucket {name}: {exc!r}") from exc
                await asyncio.sleep(0.2)

    async def _open_store(self) -> None:
        """A fresh Store from the newest snapshot plus the stream (as a follower)."""
        cfg = self.config
        delay = 0.1
        while True:
            journal = NatsJournal(cfg.urls, stream=cfg.stream, partition=cfg.partition, replicas=cfg.replicas,
                                  snapshot_bytes=cfg.snapshot_bytes, publish_timeout=cfg.publish_timeout)
            try:
                recovery = await journal.open_async()
                from_snapshot = recovery.snapshot is not None
                store, auth = self.make_store(journal)
                await store.open(recovery, lease_expiry=False)
                break
            except (JournalError, OSError, nats.errors.Error, TimeoutError) as exc:
                if self._closing:
                    raise
                log.warning("replica: recovery from the journal failed (%r); retrying", exc)
                with contextlib.suppress(Exception):
                    await journal.close()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        old = self.store
        old_journal = self.journal
        self.store, self.auth, self.journal = store, auth, journal
        if self.service is not None:
            self.service.store = store
            self.service.auth = auth
        if old is not None:
            # open watches continue on the new state from the revision they reached
            old.hand_over_watchers(store)
            with contextlib.suppress(BaseException):
                await old.close()
        if old_journal is not None:
            with contextlib.suppress(BaseException):
                await old_journal.close()
        self._resolve_applied()
        log.info("replica %s: state rebuilt at revision %d (stream sequence %d)%s",
                 cfg.member_name, store.revision, journal.last_stream_seq,
                 " from a snapshot and the stream after it" if from_snapshot else " from the stream")

    async def close(self) -> None:
        self._closing = True
        was_writer = self.role is Role.WRITER
        self.role = Role.CHANGING
        for task in self._tasks:
            task.cancel()
        await self._stop_tail()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        if self._rpc_sub is not None:
            with contextlib.suppress(Exception):
                await self._rpc_sub.unsubscribe()
        if self.store is not None:
            with contextlib.suppress(BaseException):
                await self.store.close()
        if self.journal is not None:
            with contextlib.suppress(BaseException):
                await self.journal.close()
        if self._nc is not None:
            # hand over at once rather than after the lease TTL
            if was_writer:
                with contextlib.suppress(Exception):
                    await self._writers_kv.delete(self.writer_key, last=self._lease_rev)
            with contextlib.suppress(Exception):
                await self._members_kv.delete(self.member_key)
            with contextlib.suppress(Exception):
                await self._nc.close()

    # ------------------------------------------------------------------------------ tailing

    @property
    def applied_seq(self) -> int:
        return self.journal.last_stream_seq if self.journal is not None else 0

    def _start_tail(self) -> None:
        self._tail_task = asyncio.get_running_loop().create_task(self._tail_loop(), name="replica-tail")

    async def _stop_tail(self) -> None:
        # Cancelling is safe (fetch_batch never loses a message it advanced over, and applying
        # a batch does not await); waiting for the task under the apply lock's protection keeps
        # a straggler from applying concurrently with whoever reads the stream next.
        task, self._tail_task = self._tail_task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)

    async def _apply_available(self, tail: asyncio.Task[None] | None = None, wait: float = 0.02) -> int:
        """Apply every message after our position, as far as the stream leader has them;
        returns how many. ``tail``: stop as soon as that task is no longer the member's tail."""
        count = 0
        async with self._apply_lock:
            while tail is None or self._tail_task is tail:
                assert self.journal is not None and self.store is not None
                batch = await self.journal.fetch_batch(max_messages=256, wait=wait)
                if not batch:
                    break
                for _, records in batch:
                    self.store.apply_replicated(records)
                count += len(batch)
                self._resolve_applied()
        return count

    async def _tail_loop(self) -> None:
        me = asyncio.current_task()
        while self._tail_task is me:
            try:
                # the consumer pushes new batches as they land; idle, this checks the leader
                # every quarter second
                if await self._apply_available(me, wait=0.25):
                    continue
            except asyncio.CancelledError:
                raise
            except JournalCorrupt as exc:
                if self._tail_task is not me:
                    return
                log.warning("replica: %s; rebuilding from the newest snapshot", exc)
                await self._open_store()
                continue
            except Exception as exc:  # noqa: BLE001 - NATS hiccups: retry
                log.debug("replica: tail read failed (%r), retrying", exc)
                await asyncio.sleep(0.1)
                continue

    def _resolve_applied(self) -> None:
        seq = self.applied_seq
        still = []
        for want, fut in self._applied_waiters:
            if want <= seq:
                if not fut.done():
                    fut.set_result(None)
            else:
                still.append((want, fut))
        self._applied_waiters = still

    async def wait_applied(self, seq: int, timeout: float | None = None) -> None:
        if seq <= self.applied_seq:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._applied_waiters.append((seq, fut))
        try:
            await asyncio.wait_for(fut, timeout or self.config.request_timeout)
        except TimeoutError:
            raise unavailable(ERR_TIMEOUT) from None

    # ----------------------------------------------------------------------------- election

    async def _election_loop(self) -> None:
        cfg = self.config
        while True:
            try:
                if self.role is Role.WRITER:
                    await self._renew()
                elif self.role is Role.FOLLOWER:
                    await self._try_take()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - NATS elections and reconnects: try again
                self._kv_reachable_since = None
                log.warning("replica: election step failed: %r", exc)
            if self.role is Role.WRITER:
                # renew often while renewals fail, so that a writer whose key expired during a
                # KV outage re-takes it before any follower does
                fresh = time.monotonic() - self._renewed_at < cfg.renew_interval * 1.5
                await asyncio.sleep(cfg.renew_interval if fresh else cfg.poll_interval / 2)
            else:
                await asyncio.sleep(cfg.poll_interval)

    async def _renew(self) -> None:
        assert self.store is not None
        failed = self.store.failed or (self.journal.failure if self.journal is not None else None)
        if failed is not None:
            await self._demote(f"journal failed: {failed!r}")
            return
        started = time.monotonic()
        try:
            # Success proves nobody took the lease since our last renewal (any create would
            # have changed the key's sequence), however long ago that was.
            self._lease_rev = await self._writers_kv.update(self.writer_key, self.identity, last=self._lease_rev)
        except KeyWrongLastSequenceError:
            await self._retake(started)
            return
        except Exception as exc:  # noqa: BLE001 - KV unreachable (e.g. its stream electing a leader)
            # Keep writing: the journal fences us if someone else takes over. Until a renewal
            # succeeds, every request here first proves the state current (_writer_current).
            log.debug("replica: lease renewal failed: %r", exc)
            return
        if self._unverified:
            await self._verify_journal(started)
            return
        self._renewed_at = started

    async def _retake(self, started: float) -> None:
        """Our lease key expired (the KV was unreachable for longer than the TTL). If nobody
        took it meanwhile and nobody appended after us, carry on as the writer."""
        try:
            self._lease_rev = await self._writers_kv.create(self.writer_key, self.identity)
        except KeyWrongLastSequenceError:
            await self._demote("writer lease taken by another member")
            return
        except Exception as exc:  # noqa: BLE001 - still unreachable: try again soon
            log.debug("replica: re-taking the writer lease failed: %r", exc)
            return
        self._unverified = True
        await self._verify_journal(started)

    async def _verify_journal(self, started: float) -> None:
        """After a lapse, the lease is ours again; the state is current (and reads may be
        served locally again) only if nobody appended after our last append meanwhile."""
        assert self.journal is not None
        try:
            # a conditioned (empty) append: it lands only if nobody appended after us
            await asyncio.wait_for(self.journal.barrier(), self.config.lease_ttl)
        except JournalFenced:
            await self._demote("the journal moved on while our lease had lapsed")
            return
        except Exception as exc:  # noqa: BLE001 - try again at the next renewal
            log.debug("replica: journal check failed: %r", exc)
            return
        self._unverified = False
        self._renewed_at = started
        log.info("replica %s: writer lease re-taken after a lapse", self.config.member_name)

    async def _learn_writer(self) -> None:
        try:
            entry = await self._writers_kv.get(self.writer_key)
        except NotFoundError:
            self._set_writer(None)
            return
        info = json.loads(entry.value)
        self._set_writer(WriterInfo(int(info["id"]), info["name"], list(info["client_urls"])))

    async def _try_take(self) -> None:
        started = time.monotonic()
        if self._kv_reachable_since is None or started - self._kv_reachable_since < self.config.renew_interval:
            # Just back from a KV outage: the writer's key may have expired during it while the
            # writer itself is fine; give it a renewal interval to re-take the key first.
            await self._learn_writer()
            if self._kv_reachable_since is None:
                self._kv_reachable_since = started
            return
        try:
            rev = await self._writers_kv.create(self.writer_key, self.identity)
        except KeyWrongLastSequenceError:
            await self._learn_writer()
            return
        await self._promote(rev, started)

    async def _promote(self, lease_rev: int, taken_at: float) -> None:
        assert self.store is not None
        log.info("replica %s: took the writer lease; catching up", self.config.member_name)
        self.role = Role.CHANGING
        self._lease_rev = lease_rev
        self._renewed_at = taken_at
        self._unverified = False
        await self._stop_tail()

        async def catch_up_and_claim() -> None:
            await self._apply_available()
            assert self.journal is not None
            await self.journal.close_tail()  # the writer's own batches need not come back to it
            await self.journal.claim()

        try:
            # bounded: a writer that cannot claim within a few TTLs lets someone else try
            await asyncio.wait_for(catch_up_and_claim(), 3 * self.config.lease_ttl)
        except Exception as exc:  # noqa: BLE001 - fenced or unreachable: stay a follower
            log.warning("replica %s: could not become the writer (%r)", self.config.member_name, exc)
            with contextlib.suppress(Exception):
                await self._writers_kv.delete(self.writer_key, last=self._lease_rev)
            await self._open_store()  # the journal may have claimed after all: start afresh
            self.role = Role.FOLLOWER
            self._start_tail()
            return
        self._resolve_applied()
        self.store.start_lease_expiry()
        self._set_writer(WriterInfo(self.config.member_id, self.config.member_name, self.config.client_urls))
        assert self._nc is not None
        self._rpc_sub = await self._nc.subscribe(self.rpc_subject, cb=self._on_rpc)
        self.role = Role.WRITER
        log.info("replica %s: writer from stream sequence %d (revision %d)", self.config.member_name,
                 self.applied_seq, self.store.revision)

    async def _demote(self, reason: str) -> None:
        log.warning("replica %s: no longer the writer: %s", self.config.member_name, reason)
        self.role = Role.CHANGING
        self._set_writer(None)
        if self._rpc_sub is not None:
            sub, self._rpc_sub = self._rpc_sub, None
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        with contextlib.suppress(Exception):
            await self._writers_kv.delete(self.writer_key, last=self._lease_rev)
        # The Store may hold speculative changes that were never acknowledged: start afresh.
        await self._open_store()
        self.role = Role.FOLLOWER
        self._start_tail()

    def _writer_fresh(self) -> bool:
        """The writer lease provably still ours: renewed less than a TTL ago, counted from
        before the renewal was sent (the KV expires the key a TTL after it stored it, later
        still). Checked after a request arrived, so a pause before it shows here."""
        return self.role is Role.WRITER and time.monotonic() - self._renewed_at < self.config.lease_ttl

    async def _writer_current(self) -> None:
        """Before the writer executes a request (its own client's or a forwarded one, a read, a
        write, a lease grant or keep-alive): return once its state provably holds every write
        acknowledged before the request arrived and no other writer has claimed the journal;
        raise _NotWriter (nothing executed) once it is no longer the writer.

        With a fresh lease that holds at once. Otherwise (it was paused, or the KV is
        unreachable) it publishes a journal barrier, which lands only if nobody appended after
        us. That covers keep-alives too: a writer that claims after the barrier refreshes every
        lease to its full TTL from its claim, later than this keep-alive."""
        if self._writer_fresh():
            return
        journal = self.journal
        if journal is None or self.role is not Role.WRITER:
            raise _NotWriter
        try:
            await asyncio.wait_for(journal.barrier(), self.config.forward_wait)
        except TimeoutError:
            raise unavailable(ERR_TIMEOUT) from None
        except JournalError:
            raise _NotWriter from None  # fenced: the next election step demotes us
        if self.role is not Role.WRITER or journal is not self.journal:
            raise _NotWriter

    # --------------------------------------------------------------------------- membership

    async def _membership_loop(self) -> None:
        while True:
            try:
                await self._members_kv.put(self.member_key, self.identity)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                log.debug("replica: membership renewal failed: %r", exc)
            await asyncio.sleep(self.config.renew_interval)

    async def members(self) -> list[WriterInfo]:
        """The members of this partition, from the membership bucket (each member renews its
        own key every renew interval, with the lease TTL).

        Never a wrong list: a listing is trusted only if it holds this member's own key. If it
        does not, the bucket lost keys (purged, or a KV outage longer than the TTL): this
        member puts its key back and trusts a listing only a renew interval later, once every
        live member has put its own back. A listing that fails or stays untrusted is retried
        for a couple of renew intervals; then the last good listing answers; with none, the
        request fails (retryable) rather than answer with this member alone."""
        cfg = self.config
        deadline = time.monotonic() + 2 * cfg.renew_interval + 1.0
        settle_until = 0.0
        while True:
            listing = await self._list_members()
            now = time.monotonic()
            if listing is not None and any(m.member_id == cfg.member_id for m in listing):
                if now >= settle_until:
                    self._members_cache = listing
                    return listing
            elif listing is not None:
                settle_until = now + cfg.renew_interval * 1.2
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._members_kv.put(self.member_key, self.identity), 2)
            if now > deadline:
                break
            await asyncio.sleep(0.1)
        if self._members_cache:
            return self._members_cache
        raise unavailable(ERR_TIMEOUT)

    async def _list_members(self) -> list[WriterInfo] | None:
        """One listing of the bucket, sorted by name; None if it failed."""
        prefix = f"{self.config.partition}."
        try:
            keys = await asyncio.wait_for(self._members_kv.keys(), 5)
        except NoKeysError:
            return []
        except Exception as exc:  # noqa: BLE001 - KV unreachable or electing: retried
            log.debug("replica: member listing failed: %r", exc)
            return None
        found = []
        try:
            for key in keys:
                if not key.startswith(prefix):
                    continue
                with contextlib.suppress(NotFoundError):  # expired since the listing: left
                    info = json.loads((await asyncio.wait_for(self._members_kv.get(key), 5)).value)
                    found.append(WriterInfo(int(info["id"]), info["name"], list(info["client_urls"])))
        except Exception as exc:  # noqa: BLE001
            log.debug("replica: member lookup failed: %r", exc)
            return None
        return sorted(found, key=lambda m: m.name)

    # ----------------------------------------------------------------------- request routing

    def _wrapped_methods(self) -> dict[str, Method]:
        out = dict(self._local)
        for path, method in self._local.items():
            if path in FORWARDED:
                out[path] = Method(path, method.request_type, method.kind, self._make_write(path, method))
            elif path in LINEARIZABLE_READS:
                out[path] = Method(path, method.request_type, method.kind, self._make_read(method))
        txn = self._local["/etcdserverpb.KV/Txn"]
        out[txn.path] = Method(txn.path, txn.request_type, txn.kind, self._make_txn(txn))
        keepalive = self._local[KEEPALIVE_PATH]
        out[KEEPALIVE_PATH] = Method(KEEPALIVE_PATH, keepalive.request_type, keepalive.kind, self._keep_alive)
        return out

    def _make_write(self, path: str, method: Method) -> Callable[[Any, CallContext], Any]:
        async def handler(req: Any, ctx: CallContext) -> Any:
            return await self._write(path, method, req, ctx)

        return handler

    def _make_read(self, method: Method) -> Callable[[Any, CallContext], Any]:
        local = method.handler

        async def handler(req: Any, ctx: CallContext) -> Any:
            if not getattr(req, "serializable", False):
                await self.read_barrier()
            return await local(req, ctx)  # type: ignore[misc]

        return handler

    def _make_txn(self, method: Method) -> Callable[[Any, CallContext], Any]:
        local = method.handler

        async def handler(req: Any, ctx: CallContext) -> Any:
            if txn_writes(req):
                return await self._write(method.path, method, req, ctx)
            await self.read_barrier()
            return await local(req, ctx)  # type: ignore[misc]

        return handler

    async def _keep_alive(self, requests: AsyncIterator[Any], ctx: CallContext) -> AsyncIterator[Any]:
        method = self._local[KEEPALIVE_PATH]
        async for req in requests:
            yield await self._write(KEEPALIVE_PATH, method, req, ctx)

    async def _run_local(self, path: str, method: Method, req: Any, ctx: CallContext) -> Any:
        """Execute on this member as the writer; raises _NotWriter if it is not (any longer)."""
        if self.role is not Role.WRITER:
            raise _NotWriter
        await self._writer_current()
        store = self.store
        try:
            if path == KEEPALIVE_PATH:
                async def one() -> AsyncIterator[Any]:
                    yield req

                async for reply in method.handler(one(), ctx):  # type: ignore[attr-defined]
                    return reply
                raise unavailable(ERR_LEADER_CHANGED)
            return await method.handler(req, ctx)  # type: ignore[misc]
        except JournalError:
            raise unavailable(ERR_LEADER_CHANGED) from None
        except RpcError:
            if store is not None and store.failed is not None:
                raise unavailable(ERR_LEADER_CHANGED) from None
            raise

    async def _write(self, path: str, method: Method, req: Any, ctx: CallContext) -> Any:
        if self.role is Role.WRITER:
            with contextlib.suppress(_NotWriter):
                return await self._run_local(path, method, req, ctx)
        assert self.service is not None and self._nc is not None
        user = self.service._user(ctx) or ""
        path_b, user_b = path.encode(), user.encode()
        payload = LEN.pack(len(path_b)) + path_b + LEN.pack(len(user_b)) + user_b + req.SerializeToString()
        deadline = time.monotonic() + self.config.forward_wait
        while True:
            reply = None
            if self.role is Role.WRITER:
                with contextlib.suppress(_NotWriter):
                    return await self._run_local(path, method, req, ctx)
                # fenced, demotion under way: forward once it is done
            else:
                try:
                    reply = await self._request_unless_writer_changes(payload)
                except nats.errors.NoRespondersError:
                    pass
                except (nats.errors.TimeoutError, TimeoutError):
                    raise unavailable(ERR_TIMEOUT) from None
                except nats.errors.Error as exc:
                    log.debug("replica: forwarding failed: %r", exc)
            if reply is not None and reply.data and reply.data[0] != REPLY_NOT_WRITER:
                data = reply.data
                if data[0] == REPLY_OK:
                    (seq,) = SEQ.unpack_from(data, 1)
                    await self.wait_applied(seq)
                    return bytes(data[1 + SEQ.size :])
                (code,) = CODE.unpack_from(data, 1)
                raise RpcError(code, bytes(data[1 + CODE.size :]).decode())
            if time.monotonic() > deadline:
                raise unavailable(ERR_NO_LEADER if self.writer is None else ERR_LEADER_CHANGED)
            await asyncio.sleep(0.05)

    async def _request_unless_writer_changes(self, payload: bytes) -> Any:
        """Send a forwarded request; if another member becomes the writer meanwhile, give up
        on the answer with "leader changed" (its outcome is then unknown, as in etcd) rather
        than wait out the timeout on a writer that may be paused."""
        assert self._nc is not None
        loop = asyncio.get_running_loop()
        request = loop.create_task(self._nc.request(self.rpc_subject, payload, timeout=self.config.request_timeout))
        changed: asyncio.Future[None] = loop.create_future()
        self._writer_change_waiters.add(changed)
        try:
            await asyncio.wait({request, changed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._writer_change_waiters.discard(changed)
        if request.done():
            return request.result()
        request.cancel()
        # the abandoned request may still fail (no responders): retrieve it so nothing is logged
        request.add_done_callback(lambda t: t.cancelled() or t.exception())
        raise unavailable(ERR_LEADER_CHANGED)

    def _set_writer(self, writer: WriterInfo | None) -> None:
        previous = self.writer
        self.writer = writer
        if (previous is None) != (writer is None) or (previous and writer and previous.member_id != writer.member_id):
            waiters, self._writer_change_waiters = self._writer_change_waiters, set()
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    async def _on_rpc(self, msg: Any) -> None:
        # nats-py runs one subscription's callbacks one after another: run each request in its
        # own task so forwarded writes share group commits as local ones do.
        task = asyncio.get_running_loop().create_task(self._serve_rpc(msg))
        self._rpc_tasks.add(task)
        task.add_done_callback(self._rpc_tasks.discard)

    async def _serve_rpc(self, msg: Any) -> None:
        data: bytes = msg.data
        try:
            (n,) = LEN.unpack_from(data, 0)
            path = data[2 : 2 + n].decode()
            (u,) = LEN.unpack_from(data, 2 + n)
            user = data[4 + n : 4 + n + u].decode()
            body = data[4 + n + u :]
            if path == READ_INDEX_PATH:
                await self._serve_read_index(msg)
                return
            method = self._local[path]
            if path not in FORWARDED and path not in (KEEPALIVE_PATH, "/etcdserverpb.KV/Txn"):
                raise RpcError(errors.INVALID_ARGUMENT, f"ultraplane: {path} is not forwarded")
        except (struct.error, UnicodeDecodeError, KeyError):
            log.warning("replica: malformed forwarded request")
            return
        except RpcError as exc:
            await self._respond(msg, bytes([REPLY_ERROR]) + CODE.pack(exc.code) + exc.message.encode())
            return
        if self.role is not Role.WRITER:
            await self._respond(msg, bytes([REPLY_NOT_WRITER]))
            return
        try:
            req = method.request_type.FromString(body)
            ctx = CallContext(peer_common_name=user or None)
            reply = await self._run_local(path, method, req, ctx)
            out = reply if isinstance(reply, bytes) else reply.SerializeToString()
            seq = self.applied_seq
            await self._respond(msg, bytes([REPLY_OK]) + SEQ.pack(seq) + out)
        except _NotWriter:
            await self._respond(msg, bytes([REPLY_NOT_WRITER]))
        except RpcError as exc:
            await self._respond(msg, bytes([REPLY_ERROR]) + CODE.pack(exc.code) + exc.message.encode())
        except Exception as exc:  # noqa: BLE001 - the sender must hear something
            log.exception("replica: forwarded %s failed", path)
            await self._respond(msg, bytes([REPLY_ERROR]) + CODE.pack(errors.UNKNOWN) + str(exc).encode())

    @staticmethod
    async def _respond(msg: Any, data: bytes) -> None:
        with contextlib.suppress(Exception):
            await msg.respond(data)

    # ------------------------------------------------------------------------ linearizable reads

    async def read_barrier(self) -> None:
        """Return once local state holds every write acknowledged before the call (etcd's
        ReadIndex). On the writer: every revision it had issued when the call came is committed
        here (a follower may already serve a write whose acknowledgement from the stream the
        writer has not processed yet), and _writer_current. On a follower: ask the writer for
        its read index (learned after the call) and wait until it is applied here."""
        deadline = time.monotonic() + self.config.forward_wait
        while True:
            role = self.role
            if role is Role.WRITER:
                store = self.store
                assert store is not None
                issued = store.latest_revision
                try:
                    await self._writer_current()
                except _NotWriter:
                    pass
                else:
                    await self._wait_committed(store, issued)
                    if store is self.store and self.role is Role.WRITER:
                        return
            elif role is Role.FOLLOWER:
                seq = await self._read_index()
                await self.wait_applied(seq)
                if self.role is Role.FOLLOWER:
                    return
                continue  # promoted meanwhile: take the writer's path
            if time.monotonic() > deadline:
                raise unavailable(ERR_LEADER_CHANGED)
            await asyncio.sleep(0.02)

    async def _serve_read_index(self, msg: Any) -> None:
        """The writer's half of a follower's read barrier."""
        try:
            await self._run_read_index()
        except _NotWriter:
            await self._respond(msg, bytes([REPLY_NOT_WRITER]))
            return
        except RpcError as exc:
            await self._respond(msg, bytes([REPLY_ERROR]) + CODE.pack(exc.code) + exc.message.encode())
            return
        await self._respond(msg, bytes([REPLY_OK]) + SEQ.pack(self.applied_seq))

    async def _run_read_index(self) -> None:
        """Every write issued before the call is durable, so ``applied_seq`` covers it: a
        write whose acknowledgement is still on its way may already be served elsewhere."""
        if self.role is not Role.WRITER:
            raise _NotWriter
        journal = self.journal
        assert journal is not None
        await self._writer_current()
        if journal.durable_seq >= journal.last_seq:
            return  # nothing in flight (the common case: no task for wait_for)
        try:
            await asyncio.wait_for(journal.flush(), self.config.forward_wait)
        except TimeoutError:
            raise unavailable(ERR_TIMEOUT) from None
        except JournalError:
            raise _NotWriter from None
        if journal is not self.journal or self.role is not Role.WRITER:
            raise _NotWriter

    async def _wait_committed(self, store: Store, revision: int) -> None:
        if revision <= store.revision:
            return  # nothing in flight: answer inline, as before
        try:
            await asyncio.wait_for(store.wait_for_revision(revision), self.config.forward_wait)
        except TimeoutError:
            raise unavailable(ERR_TIMEOUT) from None

    async def _read_index(self) -> int:
        # One future per read: the h2 transport steps handlers inline, and two inline steps
        # must not await one shared future (asyncio lets only one awaiter block on it per turn).
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        self._read_index_waiters.append(fut)
        if self._read_index_task is None or self._read_index_task.done():
            self._read_index_task = loop.create_task(self._read_index_loop())
        return await fut

    async def _read_index_loop(self) -> None:
        # Every read waiting when a query is sent shares it; reads arriving meanwhile wait for
        # the next query (the answer must come from after they arrived).
        while self._read_index_waiters:
            waiters, self._read_index_waiters = self._read_index_waiters, []
            outcome: int | BaseException
            try:
                outcome = await self._ask_read_index()
            except RpcError as exc:
                outcome = exc
            for fut in waiters:
                if fut.done():
                    continue
                if isinstance(outcome, BaseException):
                    fut.set_exception(outcome)
                else:
                    fut.set_result(outcome)

    async def _ask_read_index(self) -> int:
        """A round trip through the writer. Not a query to the stream: a newly elected stream
        leader may answer it before applying everything committed under the previous one, and
        an old writer may still be acknowledging from state it believes current."""
        path = READ_INDEX_PATH.encode()
        payload = LEN.pack(len(path)) + path + LEN.pack(0)
        deadline = time.monotonic() + self.config.forward_wait
        while True:
            if self.role is Role.WRITER:
                return 0  # promoted meanwhile: read_barrier takes the writer's path
            else:
                try:
                    reply = await self._request_unless_writer_changes(payload)
                except (nats.errors.NoRespondersError, RpcError):
                    reply = None
                except (nats.errors.TimeoutError, TimeoutError):
                    raise unavailable(ERR_TIMEOUT) from None
                except nats.errors.Error as exc:
                    log.debug("replica: read index request failed: %r", exc)
                    reply = None
                if reply is not None and reply.data and reply.data[0] == REPLY_OK:
                    return int(SEQ.unpack_from(reply.data, 1)[0])
                if reply is not None and reply.data and reply.data[0] == REPLY_ERROR:
                    (code,) = CODE.unpack_from(reply.data, 1)
                    raise RpcError(code, bytes(reply.data[1 + CODE.size :]).decode())
            if time.monotonic() > deadline:
                raise unavailable(ERR_NO_LEADER if self.writer is None else ERR_LEADER_CHANGED)
            await asyncio.sleep(0.02)


__all__ = ["ReplicaConfig", "ReplicaMember", "ReplicaService", "Role", "cluster_id_for"]
