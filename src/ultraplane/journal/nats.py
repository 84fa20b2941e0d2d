"""A replicated journal on a NATS JetStream stream (R3 across three availability zones).

Layout::

    stream  <stream>                 file storage, ``replicas`` copies, subjects ``<prefix>.>``
    subject <prefix>.<partition>     one message per group commit (a batch of records)
    bucket  <snapshot_bucket>        JetStream object store; one object per snapshot, named
                                     ``<partition>/<stream_seq:020d>-<record_no:020d>``: the state
                                     after record ``record_no``, the last record of stream message
                                     ``stream_seq``

Batch message (little-endian)::

    header  = magic b"UPJB" | u64 first_record_no | u32 count | u32 crc32(body)   (20 bytes)
    body    = count x (u32 length | payload[length])

Records are numbered 1, 2, 3, ... per partition, across messages.

Writer-ship and fencing: every publish carries ``Nats-Expected-Last-Subject-Sequence`` = the
stream sequence of the last message on our subject as this journal knows it (0 for none). If
anyone else appended to the subject meanwhile, the server refuses with "wrong last sequence"
(API error 10071): the journal is fenced, fails every pending future with ``JournalFenced`` and
accepts no further writes. A publish whose outcome is unknown (timeout, reconnect, leader
election) is retried with the same ``Nats-Msg-Id`` (unique per journal instance and batch), so
the server's duplicate window turns a retry of a message that did land into a duplicate ack
rather than a second copy; and since nats-server may check the expected sequence first, a "wrong
last sequence" whose last message carries our own message id counts as landed, not as fencing.

Only one publish is in flight at a time; records appended meanwhile form the next batch.

Snapshots go to the object store (replicated like the stream); after one is stored, the stream is
purged on our subject below the stream sequence of the oldest snapshot kept (``retain_snapshots``,
default 2, so a damaged newest snapshot can fall back to the one before it plus its records). The
message at a snapshot's own sequence is kept, so the subject's last sequence, which fencing
depends on, never disappears.

``open()`` is synchronous (the Journal protocol): it recovers on a private event loop in a helper
thread with its own connection, and the journal connects again, on the caller's loop, on first
use. Inside a running loop that blocks the loop for the duration of recovery (as FileJournal's
open does). ``open_async()`` does the same on the running loop with a single connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import re
import struct
import threading
import time
import uuid
import zlib
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy, ObjectStoreConfig, StorageType, StreamConfig
from nats.js.errors import APIError, BadRequestError, NotFoundError

from ultraplane.journal.base import Recovery
from ultraplane.journal.file import JournalClosed, JournalCorrupt, JournalError

__all__ = ["JournalFenced", "NatsJournal", "NatsJournalStats"]

BATCH_MAGIC = b"UPJB"
BATCH_HEADER = struct.Struct("<4sQII")
RECORD_LENGTH = struct.Struct("<I")
WRONG_LAST_SEQUENCE = 10071  # JetStream API error code for a failed expected-last-sequence check
SNAPSHOT_NAME_RE = re.compile(r"^(?P<partition>.+)/(?P<seq>\d{20})-(?P<record>\d{20})$")
BATCH_OVERHEAD = 1024  # headers and protocol bytes allowed for on top of a batch's payload


class JournalFenced(JournalError):
    """Another writer appended to this journal's subject: this instance lost writer-ship."""


@dataclass
class NatsJournalStats:
    appends: int = 0
    batches: int = 0  # JetStream messages published (one per group commit)
    publish_attempts: int = 0  # includes retries
    bytes_published: int = 0
    largest_batch: int = 0
    snapshots_written: int = 0
    purges: int = 0


@dataclass
class _Snapshot:
    name: str
    stream_seq: int
    record_no: int
    size: int


def encode_batch(first_record_no: int, records: list[bytes]) -> bytes:
    body = bytearray()
    for record in records:
        body += RECORD_LENGTH.pack(len(record))
        body += record
    return BATCH_HEADER.pack(BATCH_MAGIC, first_record_no, len(records), zlib.crc32(body)) + bytes(body)


def decode_batch(data: bytes) -> tuple[int, list[bytes]]:
    """Returns (first record number, records); raises JournalCorrupt on a malformed message."""
    if len(data) < BATCH_HEADER.size:
        raise JournalCorrupt(f"journal message of {len(data)} bytes is shorter than its header")
    magic, first, count, crc = BATCH_HEADER.unpack_from(data, 0)
    body = memoryview(data)[BATCH_HEADER.size :]
    if magic != BATCH_MAGIC or zlib.crc32(body) != crc:
        raise JournalCorrupt("journal message has a bad magic or checksum")
    records: list[bytes] = []
    offset = 0
    for _ in range(count):
        if offset + RECORD_LENGTH.size > len(body):
            raise JournalCorrupt("journal message ends inside a record header")
        (length,) = RECORD_LENGTH.unpack_from(body, offset)
        offset += RECORD_LENGTH.size
        if offset + length > len(body):
            raise JournalCorrupt("journal message ends inside a record")
        records.append(bytes(body[offset : offset + length]))
        offset += length
    if offset != len(body):
        raise JournalCorrupt("journal message has trailing bytes")
    return first, records


def _take_pending(sub: Any) -> Any:
    """The next message already buffered on a subscription, or None; without awaiting (what
    Subscription.next_msg does, minus its task and timer)."""
    queue = sub._pending_queue
    if queue.empty():
        return None
    msg = queue.get_nowait()
    sub._pending_size -= len(msg.data)
    queue.task_done()
    return msg


class NatsJournal:
    """A Journal over one subject of a replicated JetStream stream. See the module docstring."""

    def __init__(
        self,
        urls: list[str],
        *,
        stream: str,
        partition: str = "default",
        subject_prefix: str = "ultraplane.journal",
        replicas: int = 3,
        snapshot_bucket: str | None = None,
        snapshot_bytes: int = 64 * 1024**2,
        retain_snapshots: int = 2,
        max_batch_bytes: int | None = None,
        publish_timeout: float = 5.0,
        retry_seconds: float = 60.0,
        create: bool = True,
        logger: logging.Logger | None = None,
    ) -> None:
        if retain_snapshots < 1:
            raise ValueError("retain_snapshots must be at least 1")
        if not re.fullmatch(r"[A-Za-z0-9_-]+", partition):
            raise ValueError(f"partition {partition!r} must be letters, digits, '-' or '_'")
        self.urls = list(urls)
        self.stream = stream
        self.partition = partition
        self.subject = f"{subject_prefix}.{partition}"
        self.subject_prefix = subject_prefix
        self.replicas = replicas
        self.snapshot_bucket = snapshot_bucket or f"{stream}_snapshots"
        self.snapshot_bytes = snapshot_bytes
        self.retain_snapshots = retain_snapshots
        self.max_batch_bytes = max_batch_bytes
        self.publish_timeout = publish_timeout
        self.retry_seconds = retry_seconds
        self.create = create
        self.log = logger or logging.getLogger("ultraplane.journal.nats")
        self.stats = NatsJournalStats()
        self.writer_id = uuid.uuid4().hex

        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._opened = False
        self._closing = False
        self._closed = False
        self._failure: BaseException | None = None

        # Positions: records numbered from 1; stream sequences of our subject's messages.
        self._appended_no = 0  # last record queued
        self._durable_no = 0  # last record acknowledged by JetStream
        self._last_subject_seq = 0  # expected-last-subject-sequence for the next publish
        self._bytes_since_snapshot = 0
        self._messages: deque[tuple[int, int]] = deque()  # (stream seq, bytes) not yet purged
        self._message_bytes = 0
        self._snapshots: list[_Snapshot] = []

        self._pending_records: list[bytes] = []
        self._pending_futures: list[asyncio.Future[None]] = []
        self._pending_bytes = 0
        self._inflight_futures: list[asyncio.Future[None]] = []  # the batch being published
        self._cuts: dict[int, asyncio.Future[int]] = {}  # record no -> future of its message's seq
        self._flush_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._barrier_waiters: list[asyncio.Future[int]] = []  # barrier() calls not yet published
        self._inflight_barriers: list[asyncio.Future[int]] = []  # ... waiting on the batch in flight
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._writer_task: asyncio.Task[None] | None = None
        self._snapshot_lock: asyncio.Lock | None = None
        self._tail_sub: Any = None  # a replica's ordered consumer (fetch_batch)
        self._tail_from = 0  # the stream sequence it was opened (or has advanced) to

    # ------------------------------------------------------------------------------ connect

    async def _connect(self) -> tuple[NatsClient, JetStreamContext]:
        async def on_error(exc: Exception) -> None:
            self.log.debug("journal: NATS connection error: %r", exc)

        nc = await nats.connect(
            error_cb=on_error,
            servers=self.urls, connect_timeout=2, max_reconnect_attempts=-1, reconnect_time_wait=0.2,
            allow_reconnect=True, name=f"ultraplane-journal-{self.partition}",
        )
        return nc, nc.jetstream(timeout=self.publish_timeout)

    async def _retrying(self, what: str, call: Any, max_delay: float = 1.0) -> Any:
        """Run ``await call()``, retrying transient cluster errors (elections, reconnects)
        with a back-off that doubles up to ``max_delay``."""
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.05
        while True:
            try:
                return await call()
            except (NotFoundError, BadRequestError, nats.errors.MaxPayloadError):
                raise
            except (TimeoutError, APIError, nats.errors.Error) as exc:
                if time.monotonic() > deadline:
                    raise JournalError(f"journal: {what} failed for {self.retry_seconds} s: {exc!r}") from exc
                self.log.debug("journal: %s failed (%r), retrying", what, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, max_delay)

    # --------------------------------------------------------------------------------- open

    def open(self) -> Recovery:
        """Recover on a helper thread's private event loop (see the module docstring)."""
        if self._opened:
            raise JournalError("NatsJournal.open() may be called only once")
        result: list[Recovery] = []
        error: list[BaseException] = []

        async def recover_once() -> Recovery:
            nc, js = await self._connect()
            try:
                return await self._recover(js)
            finally:
                with contextlib.suppress(Exception):
                    await nc.close()

        def run() -> None:
            try:
                result.append(asyncio.run(recover_once()))
            except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
                error.append(exc)

        thread = threading.Thread(target=run, name="nats-journal-open")
        thread.start()
        thread.join()
        if error:
            raise error[0]
        self._opened = True
        return result[0]

    async def open_async(self) -> Recovery:
        """Open on the running loop; the connection is kept for appends."""
        if self._opened:
            raise JournalError("NatsJournal.open() may be called only once")
        self._nc, self._js = await self._connect()
        try:
            recovery = await self._recover(self._js)
        except BaseException:
            nc, self._nc, self._js = self._nc, None, None
            with contextlib.suppress(Exception):
                await nc.close()
            raise
        self._opened = True
        return recovery

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        async def check() -> None:
            try:
                await js.stream_info(self.stream)
            except NotFoundError:
                if not self.create:
                    raise JournalError(f"JetStream stream {self.stream} does not exist") from None
                await js.add_stream(StreamConfig(
                    name=self.stream, subjects=[f"{self.subject_prefix}.>"], num_replicas=self.replicas,
                    storage=StorageType.FILE, allow_direct=True, duplicate_window=120.0,
                ))

        await self._retrying("stream lookup", check)

    async def _object_store(self, js: JetStreamContext) -> Any:
        async def get() -> Any:
            try:
                return await js.object_store(self.snapshot_bucket)
            except NotFoundError:
                return await js.create_object_store(
                    self.snapshot_bucket, config=ObjectStoreConfig(replicas=self.replicas,
                                                                   storage=StorageType.FILE))

        return await self._retrying("snapshot bucket lookup", get)

    async def _list_snapshots(self, store: Any) -> list[_Snapshot]:
        try:
            infos = await self._retrying("snapshot listing", lambda: store.list(ignore_deletes=True))
        except NotFoundError:  # an empty bucket
            return []
        snapshots = []
        for info in infos:
            m = SNAPSHOT_NAME_RE.match(info.name)
            if m and m["partition"] == self.partition and not info.deleted:
                snapshots.append(_Snapshot(info.name, int(m["seq"]), int(m["record"]), int(info.size or 0)))
        snapshots.sort(key=lambda s: (s.stream_seq, s.record_no))
        return snapshots

    async def _recover(self, js: JetStreamContext) -> Recovery:
        await self._ensure_stream(js)
        store = await self._object_store(js)
        snapshots = await self._list_snapshots(store)

        async def last_seq() -> int:
            try:
                msg = await js.get_last_msg(self.stream, self.subject)
            except NotFoundError:
                return 0
            return int(msg.seq or 0)

        last = await self._retrying("last message lookup", last_seq)

        payload: bytes | None = None
        base = _Snapshot("", 0, 0, 0)
        for snap in reversed(snapshots):
            try:
                payload = await self._retrying("snapshot read", lambda s=snap: self._read_object(store, s.name))
            except Exception as exc:  # noqa: BLE001 - fall back to the snapshot before it
                self.log.warning("journal: snapshot %s unreadable (%r), trying the one before", snap.name, exc)
                continue
            base = snap
            break
        if snapshots and payload is None:
            raise JournalCorrupt(f"no snapshot of partition {self.partition} is readable")
        self._snapshots = [s for s in snapshots if s.stream_seq <= base.stream_seq]

        batches = await self._read_messages(js, base.stream_seq + 1, last) if last > base.stream_seq else []
        expected = base.record_no + 1
        bodies: list[list[bytes]] = []
        for seq, data in batches:
            first, records = decode_batch(data)
            if first != expected:
                raise JournalCorrupt(
                    f"journal message {seq} starts at record {first}, expected {expected} "
                    f"(messages missing or purged beyond the newest snapshot)")
            expected += len(records)
            bodies.append(records)
            self._messages.append((seq, len(data)))
            self._message_bytes += len(data)
            self._bytes_since_snapshot += len(data)
        self._appended_no = self._durable_no = expected - 1
        self._last_subject_seq = last

        def records() -> Iterator[bytes]:
            for batch in bodies:
                yield from batch

        return Recovery(io.BytesIO(payload) if payload is not None else None, records())

    @staticmethod
    async def _read_object(store: Any, name: str) -> bytes:
        # Into a buffer: without one, nats-py grows a bytes object chunk by chunk, which copies
        # the object over and over (minutes for a snapshot of a gigabyte).
        buffer = io.BytesIO()
        await store.get(name, writeinto=buffer)
        return buffer.getvalue()

    async def _read_messages(self, js: JetStreamContext, start: int, last: int) -> list[tuple[int, bytes]]:
        """Every message on our subject with stream sequence in [start, last], in order."""
        out: list[tuple[int, bytes]] = []
        sub = await self._retrying("recovery consumer", lambda: js.subscribe(
            self.subject, stream=self.stream, ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start),
        ))
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=self.retry_seconds)
                except nats.errors.TimeoutError:
                    raise JournalError(f"journal: recovery stalled reading {self.subject}") from None
                seq = msg.metadata.sequence.stream
                if seq > last:
                    break
                out.append((seq, msg.data))
                if seq == last:
                    break
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        return out

    # ------------------------------------------------------------------------------- append

    def _check_usable(self) -> None:
        if not self._opened:
            raise JournalError("NatsJournal.open() must be called first")
        if self._failure is not None:
            if isinstance(self._failure, JournalFenced):
                raise JournalFenced(str(self._failure))
            raise JournalClosed(f"journal {self.subject} failed earlier: {self._failure!r}") from self._failure
        if self._closing:
            raise JournalClosed(f"journal {self.subject} is closed")

    def _ensure_writer(self) -> None:
        if self._writer_task is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._snapshot_lock = asyncio.Lock()
        self._writer_task = self._loop.create_task(self._run_writer(), name="nats-journal-writer")

    def append(self, record: bytes) -> asyncio.Future[None]:
        self._check_usable()
        self._ensure_writer()
        assert self._loop is not None and self._wake is not None
        if not isinstance(record, bytes):
            record = bytes(record)
        limit = self._batch_limit()
        if limit is not None and len(record) + RECORD_LENGTH.size + BATCH_HEADER.size > limit:
            raise ValueError(f"journal record of {len(record)} bytes exceeds the message limit {limit}")
        future: asyncio.Future[None] = self._loop.create_future()
        self._pending_records.append(record)
        self._pending_futures.append(future)
        self._pending_bytes += len(record) + RECORD_LENGTH.size
        self._appended_no += 1
        self._bytes_since_snapshot += len(record) + RECORD_LENGTH.size
        self.stats.appends += 1
        self._wake.set()
        return future

    def _batch_limit(self) -> int | None:
        limits = []
        if self.max_batch_bytes is not None:
            limits.append(self.max_batch_bytes)
        if self._nc is not None and self._nc.max_payload:
            limits.append(self._nc.max_payload - BATCH_OVERHEAD)
        return min(limits) if limits else None

    async def flush(self) -> None:
        self._check_usable()
        await self._wait_durable(self._appended_no)

    async def _wait_durable(self, no: int) -> None:
        if self._durable_no >= no:
            return
        self._ensure_writer()
        assert self._loop is not None and self._wake is not None
        future: asyncio.Future[None] = self._loop.create_future()
        self._flush_waiters.append((no, future))
        self._wake.set()
        await future

    def _take_batch(self) -> tuple[int, list[bytes], list[asyncio.Future[None]]]:
        """Take queued records up to the byte limit and the first snapshot cut."""
        first = self._durable_no + 1
        limit = self._batch_limit() or (1 << 62)
        count = 0
        size = BATCH_HEADER.size
        for record in self._pending_records:
            size += len(record) + RECORD_LENGTH.size
            if count and size > limit:
                break
            count += 1
            if first + count - 1 in self._cuts:
                break
        records, self._pending_records = self._pending_records[:count], self._pending_records[count:]
        futures, self._pending_futures = self._pending_futures[:count], self._pending_futures[count:]
        self._pending_bytes -= sum(len(r) + RECORD_LENGTH.size for r in records)
        return first, records, futures

    async def _run_writer(self) -> None:
        assert self._wake is not None
        try:
            if self._js is None:
                self._nc, self._js = await self._connect()
            while True:
                while not self._pending_records and not self._barrier_waiters:
                    self._resolve_flushes()
                    if self._closing:
                        return
                    self._wake.clear()
                    await self._wake.wait()
                # barrier() calls made before this publish starts are answered by it: with
                # records pending it carries them, else it is an empty batch
                self._inflight_barriers, self._barrier_waiters = self._barrier_waiters, []
                first, records, futures = self._take_batch()
                self._inflight_futures = futures
                payload = encode_batch(first, records)
                msg_id = f"{self.writer_id}-{first}" if records else f"{self.writer_id}-b{self.stats.batches}"
                ack_seq = await self._publish(payload, msg_id)
                last_no = first + len(records) - 1
                self._last_subject_seq = ack_seq
                self._durable_no = last_no
                self._messages.append((ack_seq, len(payload)))
                self._message_bytes += len(payload)
                self.stats.batches += 1
                self.stats.bytes_published += len(payload)
                self.stats.largest_batch = max(self.stats.largest_batch, len(records))
                cut = self._cuts.pop(last_no, None)
                if cut is not None and not cut.done():
                    cut.set_result(ack_seq)
                self._inflight_futures = []
                for future in futures:
                    if not future.done():
                        future.set_result(None)
                barriers, self._inflight_barriers = self._inflight_barriers, []
                for barrier in barriers:
                    if not barrier.done():
                        barrier.set_result(ack_seq)
                self._resolve_flushes()
                # Let the tasks just woken queue their next records before taking the next batch.
                await asyncio.sleep(0)
        except BaseException as exc:  # noqa: BLE001 - every waiter must learn of the failure
            self._fail(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise

    def _resolve_flushes(self) -> None:
        still = []
        for no, future in self._flush_waiters:
            if no <= self._durable_no:
                if not future.done():
                    future.set_result(None)
            else:
                still.append((no, future))
        self._flush_waiters = still

    async def _publish(self, payload: bytes, msg_id: str) -> int:
        assert self._js is not None
        js = self._js
        expected = self._last_subject_seq

        async def once() -> int:
            self.stats.publish_attempts += 1
            headers = {
                "Nats-Msg-Id": msg_id,
                "Nats-Expected-Last-Subject-Sequence": str(expected),
                "Nats-Expected-Stream": self.stream,
            }
            try:
                ack = await js.publish(self.subject, payload, timeout=self.publish_timeout, headers=headers)
            except APIError as exc:
                if exc.err_code == WRONG_LAST_SEQUENCE:
                    landed = await self._own_last_message(msg_id)
                    if landed is not None:
                        return landed
                    raise JournalFenced(
                        f"journal {self.subject}: another writer appended after stream sequence "
                        f"{expected}; this instance is fenced ({exc.description})") from exc
                if isinstance(exc, BadRequestError):
                    raise JournalError(f"journal {self.subject}: publish refused: {exc!r}") from exc
                raise
            return int(ack.seq)

        # While the stream elects a leader each attempt is answered at once ("no responders"):
        # retry often, so the first batch lands within ~0.1 s of the new leader.
        return int(await self._retrying("publish", once, max_delay=0.1))

    async def _own_last_message(self, msg_id: str) -> int | None:
        """After "wrong last sequence": the stream sequence of the subject's last message if it
        is our own ``msg_id`` (an earlier attempt landed but its ack was lost, and nats-server
        checks the expected sequence before its duplicate window), else None."""
        assert self._js is not None
        try:
            last = await self._js.get_last_msg(self.stream, self.subject)
        except NotFoundError:
            return None
        if (last.headers or {}).get("Nats-Msg-Id") == msg_id:
            self.log.info("journal: %s: a retried publish had landed at sequence %s", self.subject, last.seq)
            return int(last.seq or 0)
        return None

    def _fail(self, exc: BaseException) -> None:
        self._failure = exc
        if isinstance(exc, asyncio.CancelledError):
            self.log.debug("journal: writer for %s cancelled", self.subject)
            error: JournalError = JournalClosed(f"journal {self.subject}: writer cancelled")
        elif isinstance(exc, JournalFenced):
            self.log.error("journal: %s", exc)
            error = JournalFenced(str(exc))
        else:
            self.log.error("journal: write to %s failed, no further writes accepted: %r", self.subject, exc)
            error = JournalError(f"journal write failed: {exc!r}")
        error.__cause__ = exc
        waiters: list[asyncio.Future[Any]] = self._inflight_futures + self._pending_futures
        waiters += [f for _, f in self._flush_waiters] + list(self._cuts.values())
        waiters += self._inflight_barriers + self._barrier_waiters
        self._pending_records, self._pending_futures, self._pending_bytes = [], [], 0
        self._inflight_futures, self._flush_waiters, self._cuts = [], [], {}
        self._inflight_barriers, self._barrier_waiters = [], []
        for future in waiters:
            if not future.done():
                future.set_exception(error)

    # ------------------------------------------------------------------------------ replicas

    async def fetch_next(self) -> tuple[int, list[bytes]] | None:
        """For a replica that tails the journal another member writes: the next message on our
        subject after the last one this journal knows, as (stream sequence, records), or None
        if there is none yet. Positions advance as if this instance had appended it, so a
        replica that becomes the writer appends (and is fenced) from exactly there.

        Asks the stream leader (not a direct get, which a lagging replica could answer).
        Raises JournalCorrupt if records are missing (purged behind a snapshot this replica
        never loaded): the caller must recover afresh."""
        self._check_usable()
        if self._js is None:
            raise JournalError("fetch_next() needs a journal opened with open_async()")
        js = self._js
        after = self._last_subject_seq
        try:
            raw = await js.get_msg(self.stream, seq=after + 1, subject=self.subject, next=True)
        except NotFoundError:
            return None
        seq = int(raw.seq or 0)
        data = bytes(raw.data or b"")
        first, records = decode_batch(data)
        if first != self._durable_no + 1 or seq <= after:
            raise JournalCorrupt(
                f"journal {self.subject}: message {seq} starts at record {first}, expected "
                f"{self._durable_no + 1} (purged behind a snapshot, or a foreign writer)")
        self._durable_no = self._appended_no = first + len(records) - 1
        self._last_subject_seq = seq
        self._messages.append((seq, len(data)))
        self._message_bytes += len(data)
        self._bytes_since_snapshot += len(data)
        return seq, records

    async def fetch_batch(self, max_messages: int = 1024, wait: float = 0.25) -> list[tuple[int, list[bytes]]]:
        """For a replica: the messages after our position that have arrived, as fetch_next()
        returns them, up to ``max_messages``, waiting up to ``wait`` seconds for the first; an
        empty list means the leader holds nothing after our position.

        They come from an ordered push consumer (the stream leader streams them; no request per
        message). The consumer is only trusted for speed: every message must continue exactly
        from our position, and when it is silent for ``wait`` (idle, or stalled by a leader
        election it has not recovered from) one fetch_next() asks the leader directly; if that
        finds a message the consumer is recreated from the new position.

        Cancellation-safe: nothing is awaited once the position has moved, so a caller that is
        cancelled has either received every message it advanced over or advanced over none."""
        self._check_usable()
        if self._js is None:
            raise JournalError("fetch_batch() needs a journal opened with open_async()")
        if self._tail_sub is None or self._tail_from != self._last_subject_seq + 1:
            await self._open_tail()
        sub = self._tail_sub
        assert sub is not None
        try:
            msg = await sub.next_msg(timeout=wait)
        except nats.errors.TimeoutError:
            got = await self.fetch_next()
            if got is None:
                return []
            self._tail_from = -1  # it fell behind or stalled: reopen from here next time
            return [got]
        out: list[tuple[int, list[bytes]]] = []
        while msg is not None:
            accepted = self._accept_tail(msg)
            if accepted is False:
                # not the next message (a consumer gap): read from the leader instead
                self._tail_from = -1
                if out:
                    return out
                got = await self.fetch_next()
                return [got] if got is not None else []
            if accepted is not None:
                out.append(accepted)  # type: ignore[arg-type]
                self._tail_from = self._last_subject_seq + 1
            if len(out) >= max_messages:
                break
            msg = _take_pending(sub)
        return out

    def _accept_tail(self, msg: Any) -> tuple[int, list[bytes]] | None | bool:
        """The consumer's message applied to our position; None for one we already have, False
        for a gap."""
        seq = int(msg.metadata.sequence.stream)
        if seq <= self._last_subject_seq:
            return None
        data = bytes(msg.data or b"")
        first, records = decode_batch(data)
        if first != self._durable_no + 1:
            return False
        self._durable_no = self._appended_no = first + len(records) - 1
        self._last_subject_seq = seq
        self._messages.append((seq, len(data)))
        self._message_bytes += len(data)
        self._bytes_since_snapshot += len(data)
        return seq, records

    async def _open_tail(self) -> None:
        await self.close_tail()
        assert self._js is not None
        start = self._last_subject_seq + 1
        self._tail_sub = await self._js.subscribe(
            self.subject, stream=self.stream, ordered_consumer=True, idle_heartbeat=1.0,
            pending_msgs_limit=1 << 20, pending_bytes_limit=1 << 31,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start),
        )
        self._tail_from = start

    async def close_tail(self) -> None:
        """Stop the consumer fetch_batch() reads from (a replica that becomes the writer)."""
        sub, self._tail_sub = self._tail_sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def barrier(self) -> int:
        """For the writer: prove that nobody else has appended to our subject since our last
        append, without trusting any clock. Returns the stream sequence of a publish that started
        after this call and was conditioned, like every append, on the subject's last sequence as
        this journal knows it: the batch of records queued meanwhile, or else an empty batch (as a
        claim is). Once it returns, every message on the subject up to that sequence is ours or
        was applied before we claimed. Raises JournalFenced if another writer appended.

        Unlike asking the stream for its last sequence, this holds across a stream leader change:
        the condition is checked when the message is applied, in log order, whereas a newly
        elected leader may answer a query before it has applied everything committed before."""
        self._check_usable()
        self._ensure_writer()
        assert self._loop is not None and self._wake is not None
        future: asyncio.Future[int] = self._loop.create_future()
        self._barrier_waiters.append(future)
        self._wake.set()
        return await future

    async def remote_last_seq(self) -> int:
        """The stream sequence of the newest message on our subject, asked of the stream
        leader (the read index of a linearizable read on a replica)."""
        if self._js is None:
            raise JournalError("remote_last_seq() needs a journal opened with open_async()")
        js = self._js
        try:
            msg = await js.get_last_msg(self.stream, self.subject)
        except NotFoundError:
            return 0
        return int(msg.seq or 0)

    async def claim(self) -> int:
        """Become the writer: publish an empty batch conditioned on the last message this
        journal knows. Once it lands, any older writer still holding an earlier position is
        fenced, whether or not it has appended since. Raises JournalFenced if someone
        appended after our position. Returns the claim's stream sequence."""
        self._check_usable()
        if self._pending_records or self._writer_task is not None:
            raise JournalError("claim() must come before the first append")
        if self._js is None:
            self._nc, self._js = await self._connect()
        payload = encode_batch(self._durable_no + 1, [])
        seq = await self._publish(payload, f"{self.writer_id}-claim")
        self._last_subject_seq = seq
        self._messages.append((seq, len(payload)))
        self._message_bytes += len(payload)
        return seq

    # ---------------------------------------------------------------------------- snapshots

    def snapshot_due(self) -> bool:
        newest = self._snapshots[-1].size if self._snapshots else 0
        return self._bytes_since_snapshot > max(self.snapshot_bytes, newest)

    def write_snapshot(self, chunks: Iterable[bytes]) -> asyncio.Future[None]:
        """Store a snapshot of the state after every record appended before this call.

        The position is taken and ``chunks`` consumed now; the returned Task waits until those
        records are durable (the batch holding the last of them ends there), stores the snapshot
        and purges what it makes redundant."""
        self._check_usable()
        self._ensure_writer()
        assert self._loop is not None
        no = self._appended_no
        data = b"".join(bytes(chunk) for chunk in chunks)
        self._bytes_since_snapshot = 0
        seq_future: asyncio.Future[int] = self._loop.create_future()
        if no == self._durable_no and not self._pending_records:
            seq_future.set_result(self._last_subject_seq if no else 0)
        else:
            self._cuts[no] = seq_future
        return self._loop.create_task(self._finish_snapshot(no, data, seq_future), name="nats-journal-snapshot")

    async def _finish_snapshot(self, no: int, data: bytes, seq_future: asyncio.Future[int]) -> None:
        assert self._snapshot_lock is not None
        async with self._snapshot_lock:
            seq = await seq_future
            if self._js is None:
                await self._wait_durable(no)  # the writer connects
            assert self._js is not None
            js = self._js
            store = await self._object_store(js)
            name = f"{self.partition}/{seq:020d}-{no:020d}"
            await self._retrying("snapshot write", lambda: store.put(name, data))
            self.stats.snapshots_written += 1
            self.log.info("journal: wrote snapshot %s/%s (%d bytes)", self.snapshot_bucket, name, len(data))
            snapshots = [s for s in await self._list_snapshots(store) if s.name != name]
            snapshots.append(_Snapshot(name, seq, no, len(data)))
            snapshots.sort(key=lambda s: (s.stream_seq, s.record_no))
            doomed, kept = snapshots[: -self.retain_snapshots], snapshots[-self.retain_snapshots :]
            self._snapshots = kept
            for snap in doomed:
                with contextlib.suppress(NotFoundError):
                    await self._retrying("snapshot delete", lambda s=snap: store.delete(s.name))
            # Purge below the oldest kept snapshot once we keep as many as we retain; keep the
            # message at its own sequence (the subject's last sequence must not vanish).
            if len(kept) >= self.retain_snapshots and kept[0].stream_seq > 1:
                keep_from = kept[0].stream_seq
                await self._retrying("stream purge", lambda: js.purge_stream(
                    self.stream, seq=keep_from, subject=self.subject))
                self.stats.purges += 1
                while self._messages and self._messages[0][0] < keep_from:
                    _, size = self._messages.popleft()
                    self._message_bytes -= size

    # ------------------------------------------------------------------------------- status

    @property
    def size_bytes(self) -> int:
        """Bytes of unpurged messages plus kept snapshots (one replica's worth)."""
        return self._message_bytes + sum(s.size for s in self._snapshots)

    @property
    def last_seq(self) -> int:
        return self._appended_no

    @property
    def durable_seq(self) -> int:
        return self._durable_no

    @property
    def failure(self) -> BaseException | None:
        """Why this journal accepts no further writes (JournalFenced: another writer appended)."""
        return self._failure

    @property
    def last_stream_seq(self) -> int:
        """Stream sequence of the last message this journal knows on its subject."""
        return self._last_subject_seq

    # -------------------------------------------------------------------------------- close

    async def close(self) -> None:
        if self._closed:
            return
        try:
            if self._writer_task is not None:
                try:
                    if self._failure is None:
                        await self._wait_durable(self._appended_no)
                finally:
                    self._closing = True
                    assert self._wake is not None and self._snapshot_lock is not None
                    self._wake.set()
                    with contextlib.suppress(BaseException):
                        await self._writer_task
                    async with self._snapshot_lock:
                        pass
        finally:
            self._closing = True
            self._closed = True
            await self.close_tail()
            if self._nc is not None:
                nc, self._nc, self._js = self._nc, None, None
                with contextlib.suppress(Exception):
                    await nc.close()
