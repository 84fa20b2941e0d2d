"""The in-memory MVCC key-value store (etcd 3.4 semantics) on top of a journal.

State, all in memory:
  _kv      key -> newest live KeyValue (includes writes not yet durable)
  _hist    key -> every retained version of the key, oldest first; a tombstone is a
           KeyValue with version 0 whose mod_revision is the deleting revision
  _live    SortedList of keys in _kv (ranges and counts at the latest revision)
  _all     SortedList of keys in _hist (ranges at past revisions)
  _revlog  per revision, the tuple of versions it wrote in sub-revision order (watch
           replay, snapshots); holds revisions from _revlog_base (= compact revision) on

Writes apply at once (so the next write sees them) and append an effects record to the
journal; readers and watchers see only revisions the journal reports durable
(``_committed``). A latest-revision read with nothing in flight is a dict lookup.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import random
import re
import time
import zlib
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator
from operator import attrgetter
from typing import Any, Protocol

from sortedcontainers import SortedList

from ultraplane.journal.base import Journal, Recovery
from ultraplane.store import codec
from ultraplane.store.errors import (
    Compacted,
    DuplicateKey,
    EmptyKey,
    FutureRevision,
    KeyNotFound,
    LeaseExists,
    LeaseNotFound,
    LeaseProvided,
    LeaseTTLTooLarge,
    NoSpace,
    StoreError,
    TooManyOps,
    ValueProvided,
)
from ultraplane.store.types import (
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    DeleteRangeResult,
    Event,
    EventType,
    KeyValue,
    LeaseInfo,
    PutRequest,
    PutResult,
    RangeRequest,
    RangeResult,
    SortOrder,
    SortTarget,
    TxnRequest,
    TxnResult,
)
from ultraplane.store.watch import Watcher

log = logging.getLogger(__name__)

MAX_LEASE_TTL = 9_000_000_000  # etcd lease.MaxLeaseTTL
# etcd 3.4: minTTL = ceil((3 * electionTicks / 2) * heartbeat) = ceil(15 * 100 ms) = 2 s by default
DEFAULT_MIN_LEASE_TTL = 2
KV_OVERHEAD = 256  # etcd's quota cost of one put beyond key and value
LEASE_OVERHEAD = 64  # etcd's quota cost of one lease
VERSION_OVERHEAD = 128  # our per-retained-version bookkeeping estimate for db_size
LEASE_CHECK_INTERVAL = 0.5  # etcd's lessor checks expiry every 500 ms
LEASE_REVOKE_PER_TICK = 500  # etcd revokes at most 1000 leases/s
COMPACT_TRIM_BATCH = 5_000
CATCH_UP_SCAN_REVISIONS = (
    20_000  # revisions a catching-up watcher scans before yielding  # keys trimmed between event-loop yields
)
NOSPACE = "NOSPACE"

_mod_rev = attrgetter("mod_revision")
_SORT_KEYS: dict[SortTarget, Callable[[KeyValue], Any]] = {
    SortTarget.KEY: attrgetter("key"),
    SortTarget.VERSION: attrgetter("version"),
    SortTarget.CREATE: attrgetter("create_revision"),
    SortTarget.MOD: attrgetter("mod_revision"),
    SortTarget.VALUE: attrgetter("value"),
}


class StateMachine(Protocol):
    name: str

    def apply(self, op: bytes) -> Any: ...

    def dump(self) -> bytes: ...

    def load(self, data: bytes) -> None: ...


class _Lease:
    __slots__ = ("id", "ttl", "expiry", "keys")

    def __init__(self, lease_id: int, ttl: int, expiry: float) -> None:
        self.id = lease_id
        self.ttl = ttl
        self.expiry = expiry
        self.keys: set[bytes] = set()


def _in_range(key: bytes, start: bytes, end: bytes) -> bool:
    """etcd range semantics: end b"" = the single key, b"\\0" = every key >= start."""
    if not end:
        return key == start
    if end == b"\0":
        return key >= start
    return start <= key < end


def _txn_has_writes(req: TxnRequest) -> bool:
    for ops in (req.success, req.failure):
        for op in ops:
            t = type(op)
            if t is PutRequest or t is DeleteRangeRequest:
                return True
            if t is TxnRequest and _txn_has_writes(op):
                return True
    return False


def _txn_put_cost(req: TxnRequest) -> int:
    """etcd's costTxn: the larger branch's put cost (top level puts only, as etcd)."""
    best = 0
    for ops in (req.success, req.failure):
        cost = 0
        for op in ops:
            if type(op) is PutRequest:
                cost += KV_OVERHEAD + len(op.key) + len(op.value)
        best = max(best, cost)
    return best


def _check_intervals(ops: list) -> tuple[set[bytes], list[tuple[bytes, bytes]]]:
    """etcd's checkIntervals: a put may not share a key with another put or overlap a delete
    of the same branch, nested txns included (then/else of one nested txn may share puts)."""
    dels: list[tuple[bytes, bytes]] = []
    for op in ops:
        if type(op) is DeleteRangeRequest:
            dels.append((op.key, op.range_end))

    def deleted(key: bytes) -> bool:
        return any(_in_range(key, start, end) for start, end in dels)

    puts: set[bytes] = set()
    for op in ops:
        if type(op) is not TxnRequest:
            continue
        puts_then, dels_then = _check_intervals(op.success)
        puts_else, dels_else = _check_intervals(op.failure)
        for key in puts_then:
            if key in puts or deleted(key):
                raise DuplicateKey()
            puts.add(key)
        for key in puts_else:
            if key in puts and key not in puts_then:
                raise DuplicateKey()
            if deleted(key):
                raise DuplicateKey()
            puts.add(key)
        dels.extend(dels_then)
        dels.extend(dels_else)
    for op in ops:
        if type(op) is not PutRequest:
            continue
        if op.key in puts or deleted(op.key):
            raise DuplicateKey()
        puts.add(op.key)
    return puts, dels


def _check_put(req: PutRequest) -> None:
    if not req.key:
        raise EmptyKey()
    if req.ignore_value and req.value:
        raise ValueProvided()
    if req.ignore_lease and req.lease:
        raise LeaseProvided()


def _check_txn_request(req: TxnRequest, max_ops: int) -> None:
    """etcd's checkTxnRequest (including its budget passed down to nested txns)."""
    opc = max(len(req.compare), len(req.success), len(req.failure))
    if opc > max_ops:
        raise TooManyOps()
    for cmp in req.compare:
        if not cmp.key:
            raise EmptyKey()
    for ops in (req.success, req.failure):
        for op in ops:
            t = type(op)
            if t is PutRequest:
                _check_put(op)
            elif t is RangeRequest or t is DeleteRangeRequest:
                if not op.key:
                    raise EmptyKey()
            elif t is TxnRequest:
                _check_txn_request(op, max_ops - opc)
            else:
                raise KeyNotFound()


def parse_duration(text: str) -> float:
    """Go-style durations ("1h", "5m", "30s", "1h30m", "500ms"); a bare number means hours
    (etcd's --auto-compaction-retention in periodic mode)."""
    text = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text) * 3600
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"invalid duration {text!r}")
    return sum(float(n) * units[u] for n, u in parts)


class Store:
    def __init__(
        self,
        journal: Journal,
        *,
        quota_bytes: int = 2 * 1024**3,
        max_txn_ops: int = 128,
        snapshot_records: int = 200_000,
        min_lease_ttl: int = DEFAULT_MIN_LEASE_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._journal = journal
        self._quota = quota_bytes
        self._max_txn_ops = max_txn_ops
        self._snapshot_records = snapshot_records
        self._min_lease_ttl = min_lease_ttl
        self._clock = clock
        self._machines: dict[str, StateMachine] = {}

        self._kv: dict[bytes, KeyValue] = {}
        self._hist: dict[bytes, list[KeyValue]] = {}
        self._live = SortedList()
        self._all = SortedList()
        self._rev = 1  # newest revision in memory
        self._committed = 1  # newest durable revision: what readers and watchers see
        self._compact_rev = -1  # etcd: -1 until the first compaction (compact(0) is then allowed)
        self._revlog: list[tuple[KeyValue, ...]] = [()]  # revision 1 wrote nothing
        self._revlog_base = 1
        # etcd's sub-revisions of retained versions older than _revlog_base, for revisions that
        # wrote several keys (a version alone in its revision has sub-revision 0): rev -> key -> sub
        self._old_subs: dict[int, dict[bytes, int]] = {}
        self._size = 0

        self._leases: dict[int, _Lease] = {}
        self._lease_heap: list[tuple[float, int]] = []
        self._alarms: set[str] = set()

        self._key_watchers: dict[bytes, list[Watcher]] = {}
        self._range_watchers: list[Watcher] = []
        self._rev_waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._waiter_seq = 0

        self._records_since_snapshot = 0
        self._snapshot_countdown = 256
        self._snapshot_task: asyncio.Task[None] | None = None
        self._background: list[asyncio.Task[None]] = []
        self._compact_trim: asyncio.Task[None] | None = None
        self._opened = False
        self._failed: BaseException | None = None
        self._successor: Store | None = None  # set by hand_over_watchers

    # ================================================================ lifecycle
    def attach(self, machine: StateMachine) -> None:
        if self._opened:
            raise RuntimeError("attach state machines before open()")
        self._machines[machine.name] = machine

    async def open(self, recovery: Recovery | None = None, *, lease_expiry: bool = True) -> None:
        """Rebuild state from the journal (or from ``recovery``, already read from it).

        ``lease_expiry=False`` opens a replica that only applies what another member decided:
        it expires no leases until ``start_lease_expiry()`` (when it becomes the writer)."""
        if recovery is None:
            recovery = self._journal.open()
        if recovery.snapshot is not None:
            self._load_snapshot(recovery.snapshot)
        for rec in recovery.records:
            self._replay(rec)
        self._trim_all(self._compact_rev)
        self._committed = self._rev
        self._opened = True
        if lease_expiry:
            self.start_lease_expiry()

    def start_lease_expiry(self) -> None:
        """Refresh every lease to its full TTL and start expiring them (etcd does the same when
        a leader takes over: the new leader cannot know how long the old one had counted)."""
        now = self._clock()
        self._lease_heap = []
        for lease in self._leases.values():
            lease.expiry = now + lease.ttl
            self._lease_heap.append((lease.expiry, lease.id))
        heapq.heapify(self._lease_heap)
        self._background.append(asyncio.get_running_loop().create_task(self._lease_loop()))

    def apply_replicated(self, records: Iterable[bytes]) -> None:
        """Apply records another member appended (a replica tailing the journal), exactly as
        recovery does, and make them visible at once: they are durable already."""
        for rec in records:
            self._replay(rec)
        if self._rev > self._committed:
            self._commit(self._rev)

    def hand_over_watchers(self, successor: Store) -> None:
        """This store is being replaced by ``successor`` (a replica rebuilt from the journal,
        holding at least every revision this one committed): every watcher continues there
        from the revision it has reached. Call before close(), which would end them."""
        self._successor = successor
        for w in list(self._range_watchers) + [w for ws in self._key_watchers.values() for w in ws]:
            self._unregister(w)
            w._wake()

    @property
    def failed(self) -> BaseException | None:
        """Why the store stopped accepting writes (its journal failed or was fenced), or None."""
        return self._failed

    async def close(self) -> None:
        for task in self._background:
            task.cancel()
        for task in self._background:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self._background.clear()
        if self._snapshot_task is not None:
            try:
                await self._snapshot_task
            except Exception:
                log.exception("snapshot failed")
        if self._compact_trim is not None:
            await self._compact_trim
        for w in list(self._range_watchers) + [w for ws in self._key_watchers.values() for w in ws]:
            w.close()
        await self._journal.flush()
        await self._journal.close()

    # ================================================================ properties
    @property
    def revision(self) -> int:
        return self._committed

    @property
    def latest_revision(self) -> int:
        """The newest revision in memory, writes not yet durable included (a replicated writer's
        read index: wait_for_revision(latest_revision) covers every write issued so far)."""
        return self._rev

    @property
    def compact_revision(self) -> int:
        return self._compact_rev

    @property
    def db_size(self) -> int:
        return self._size

    @property
    def db_size_in_use(self) -> int:
        return self._size

    @property
    def alarms(self) -> set[str]:
        return set(self._alarms)

    # ================================================================ core apply (live and replay)
    def _apply_put(self, key: bytes, value: bytes, lease: int, rev: int) -> tuple[KeyValue, KeyValue | None]:
        prev = self._kv.get(key)
        if prev is None:
            kv = KeyValue(key, rev, rev, 1, value, lease)
            hist = self._hist.get(key)
            if hist is None:
                self._hist[key] = [kv]
                self._all.add(key)
            else:
                hist.append(kv)
            self._live.add(key)
        else:
            kv = KeyValue(key, prev.create_revision, rev, prev.version + 1, value, lease)
            self._hist[key].append(kv)
            if prev.lease and prev.lease != lease:
                old = self._leases.get(prev.lease)
                if old is not None:
                    old.keys.discard(key)
        self._kv[key] = kv
        if lease:
            owner = self._leases.get(lease)
            if owner is not None:
                owner.keys.add(key)
        self._size += len(key) + len(value) + VERSION_OVERHEAD
        return kv, prev

    def _apply_delete(self, key: bytes, rev: int) -> KeyValue | None:
        prev = self._kv.pop(key, None)
        if prev is None:
            return None
        tomb = KeyValue(key, 0, rev, 0, b"", 0)
        self._hist[key].append(tomb)
        self._live.remove(key)
        if prev.lease:
            owner = self._leases.get(prev.lease)
            if owner is not None:
                owner.keys.discard(key)
        self._size += len(key) + VERSION_OVERHEAD
        return tomb

    def _replay(self, rec: bytes) -> None:
        tag = rec[0]
        if tag == 0x50:  # P
            rev, key, value, lease = codec.decode_put(rec)
            kv, _ = self._apply_put(key, value, lease, rev)
            self._rev = rev
            self._revlog.append((kv,))
        elif tag == 0x54:  # T
            rev, ops = codec.decode_ops(rec)
            self._rev = rev
            self._revlog.append(self._replay_ops(rev, ops))
        elif tag == 0x47:  # G
            lease_id, ttl = codec.GRANT.unpack_from(rec, 1)
            self._leases[lease_id] = _Lease(lease_id, ttl, 0.0)
            self._size += LEASE_OVERHEAD
        elif tag == 0x52:  # R
            lease_id, rev, keys = codec.decode_revoke(rec)
            if keys:
                self._rev = rev
                self._revlog.append(self._replay_ops(rev, [(codec.OP_DELETE, k, b"", 0) for k in keys]))
            if self._leases.pop(lease_id, None) is not None:
                self._size -= LEASE_OVERHEAD
        elif tag == 0x43:  # C
            (rev,) = codec.I64.unpack_from(rec, 1)
            self._set_compact_rev(rev)
            self._trim_all(rev)
        elif tag == 0x41:  # A
            name = rec[2:].decode()
            if rec[1]:
                self._alarms.add(name)
            else:
                self._alarms.discard(name)
        elif tag == 0x4D:  # M
            name, op = codec.decode_machine(rec)
            machine = self._machines.get(name)
            if machine is None:
                raise RuntimeError(f"journal has an op for unattached state machine {name!r}")
            try:
                machine.apply(op)
            except StoreError:
                log.warning("state machine %s rejected a journaled op on replay", name)
        else:
            raise RuntimeError(f"unknown journal record tag {tag:#x}")

    def _replay_ops(self, rev: int, ops: list[tuple[int, bytes, bytes, int]]) -> tuple[KeyValue, ...]:
        out = []
        for kind, key, value, lease in ops:
            if kind == codec.OP_PUT:
                out.append(self._apply_put(key, value, lease, rev)[0])
            else:
                tomb = self._apply_delete(key, rev)
                if tomb is not None:
                    out.append(tomb)
        return tuple(out)

    # ================================================================ durability
    def _append(self, record: bytes) -> asyncio.Future[None]:
        if self._failed is not None:
            raise StoreError("etcdserver: journal failed")
        try:
            fut = self._journal.append(record)
        except BaseException as exc:
            # the change is already applied in memory: stop accepting writes rather than diverge
            self._failed = exc
            raise
        self._records_since_snapshot += 1
        self._snapshot_countdown -= 1
        if self._snapshot_countdown <= 0:
            # asking the journal costs little, but not nothing: ask every so many records
            self._snapshot_countdown = 256
            self._maybe_snapshot()
        return fut

    async def _durable(self, fut: asyncio.Future[None], rev: int) -> None:
        try:
            await fut
        except asyncio.CancelledError:
            # the caller went away (which cancels the journal's future), the write did not:
            # make it visible once durable all the same
            self._background.append(asyncio.get_running_loop().create_task(self._late_commit(rev)))
            raise
        except BaseException as exc:
            # memory is ahead of the journal now; refuse further writes rather than diverge
            self._failed = exc
            raise
        if rev > self._committed:
            self._commit(rev)

    async def _late_commit(self, rev: int) -> None:
        try:
            await self._journal.flush()
        except Exception as exc:
            self._failed = exc
            return
        finally:
            task = asyncio.current_task()
            if task in self._background:
                self._background.remove(task)
        if rev > self._committed:
            self._commit(rev)

    def _commit(self, rev: int) -> None:
        old = self._committed
        self._committed = rev
        if self._key_watchers or self._range_watchers:
            self._deliver(old + 1, rev)
        waiters = self._rev_waiters
        while waiters and waiters[0][0] <= rev:
            fut = heapq.heappop(waiters)[2]
            if not fut.done():
                fut.set_result(None)

    async def wait_for_revision(self, rev: int) -> None:
        if rev <= self._committed:
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiter_seq += 1
        heapq.heappush(self._rev_waiters, (rev, self._waiter_seq, fut))
        await fut

    async def _settle(self) -> int:
        """For requests that wrote nothing: answer at the newest in-memory revision once durable."""
        rev = self._rev
        if rev > self._committed:
            await self.wait_for_revision(rev)
        return rev

    # ================================================================ reads
    def _get_at(self, key: bytes, rev: int) -> KeyValue | None:
        hist = self._hist.get(key)
        if hist is None:
            return None
        i = bisect_right(hist, rev, key=_mod_rev)
        if i == 0:
            return None
        kv = hist[i - 1]
        return kv if kv.version else None

    def _check_read_rev(self, rev: int, current: int) -> int:
        if rev <= 0:
            return current
        if rev > current:
            raise FutureRevision()
        if rev < self._compact_rev:
            raise Compacted()
        return rev

    def count_live(self, key: bytes, end: bytes) -> int:
        """Live keys in [key, end) in the newest state, writes in flight included: two bisections. For estimates
        (object counts), where a range at the committed revision would walk every key while writes are pending."""
        live = self._live
        if end == b"\0":
            return len(live) - live.bisect_left(key)
        return max(0, live.bisect_left(end) - live.bisect_left(key))

    def range(self, req: RangeRequest) -> RangeResult:
        key = req.key
        if not key:
            raise EmptyKey()
        committed = self._committed
        rev = self._check_read_rev(req.revision, committed)
        if not req.range_end:
            # hot path: one key
            if rev == self._rev:
                kv = self._kv.get(key)
            else:
                kv = self._kv.get(key)
                if kv is None or kv.mod_revision > rev:
                    kv = self._get_at(key, rev)
            if kv is None:
                return RangeResult([], False, 0, committed)
            if (
                req.min_mod_revision
                or req.max_mod_revision
                or req.min_create_revision
                or req.max_create_revision
                or req.keys_only
                or req.count_only
            ):
                return self._finish_range(req, [kv], 1, committed)
            return RangeResult([kv], False, 1, committed)
        end = req.range_end
        if req.count_only and rev == self._rev:
            live = self._live
            if end == b"\0":
                count = len(live) - live.bisect_left(key)
            else:
                count = max(0, live.bisect_left(end) - live.bisect_left(key))
            return RangeResult([], False, count, committed)
        if (
            req.limit > 0
            and rev == self._rev
            and req.sort_target == SortTarget.KEY
            and not (
                req.min_mod_revision
                or req.max_mod_revision
                or req.min_create_revision
                or req.max_create_revision
            )
        ):
            return self._range_limited(req, committed)
        kvs = self._range_kvs(key, end, rev)
        return self._finish_range(req, kvs, len(kvs), committed)

    def _range_limited(self, req: RangeRequest, header: int) -> RangeResult:
        """Latest-revision page in key order: count by bisection, touch only `limit` keys."""
        live = self._live
        key, end, limit = req.key, req.range_end, req.limit
        if end == b"\0":
            lo, hi = live.bisect_left(key), len(live)
        elif end <= key:
            lo = hi = 0
        else:
            lo, hi = live.bisect_left(key), live.bisect_left(end)
        count = max(0, hi - lo)
        take = min(limit, count)
        if req.sort_order == SortOrder.DESCEND:
            names = live[hi - take : hi][::-1] if take else []
        else:
            names = live[lo : lo + take] if take else []
        kvmap = self._kv
        kvs = [kvmap[k] for k in names]
        if req.keys_only:
            kvs = [
                KeyValue(kv.key, kv.create_revision, kv.mod_revision, kv.version, b"", kv.lease) for kv in kvs
            ]
        return RangeResult(kvs, count > limit, count, header)

    def _key_iter(self, keys: SortedList, start: bytes, end: bytes) -> Iterable[bytes]:
        if end == b"\0":
            return keys.irange(minimum=start)
        if end <= start:
            return ()
        return keys.irange(start, end, inclusive=(True, False))

    def _range_kvs(self, start: bytes, end: bytes, rev: int) -> list[KeyValue]:
        """Every live version in [start, end) as of rev, in key order."""
        kvmap = self._kv
        if rev == self._rev:
            return [kvmap[k] for k in self._key_iter(self._live, start, end)]
        if rev >= self._committed:
            # writes are in flight: take the in-memory state, undo what came after rev
            out = []
            for k in self._key_iter(self._live, start, end):
                kv = kvmap[k]
                if kv.mod_revision > rev:
                    kv = self._get_at(k, rev)
                    if kv is None:
                        continue
                out.append(kv)
            base = self._revlog_base
            extra: dict[bytes, KeyValue] = {}
            for r in range(rev + 1, self._rev + 1):
                for change in self._revlog[r - base]:
                    k = change.key
                    if not change.version and k not in kvmap and _in_range(k, start, end):
                        old = self._get_at(k, rev)
                        if old is not None:
                            extra[k] = old
            if extra:
                out.extend(extra.values())
                out.sort(key=attrgetter("key"))
            return out
        return self._range_hist(start, end, rev)

    def _range_hist(self, start: bytes, end: bytes, rev: int) -> list[KeyValue]:
        """Range at a past revision from per-key history (correct even mid-txn)."""
        out = []
        get_at = self._get_at
        for k in self._key_iter(self._all, start, end):
            kv = get_at(k, rev)
            if kv is not None:
                out.append(kv)
        return out

    def _finish_range(self, req: RangeRequest, kvs: list[KeyValue], count: int, header: int) -> RangeResult:
        if req.count_only:
            return RangeResult([], False, count, header)
        filtered = (
            req.min_mod_revision or req.max_mod_revision or req.min_create_revision or req.max_create_revision
        )
        if req.limit > 0 and req.sort_order == SortOrder.NONE and not filtered:
            # etcd fetches only limit+1 keys (in key order) when no order and no filter was asked
            # for, and sorts those: with a non-KEY target the page is not a global sort
            kvs = kvs[: req.limit + 1]
        if req.max_mod_revision:
            kvs = [kv for kv in kvs if kv.mod_revision <= req.max_mod_revision]
        if req.min_mod_revision:
            kvs = [kv for kv in kvs if kv.mod_revision >= req.min_mod_revision]
        if req.max_create_revision:
            kvs = [kv for kv in kvs if kv.create_revision <= req.max_create_revision]
        if req.min_create_revision:
            kvs = [kv for kv in kvs if kv.create_revision >= req.min_create_revision]
        order = req.sort_order
        target = req.sort_target
        if target != SortTarget.KEY and order == SortOrder.NONE:
            order = SortOrder.ASCEND
        if order == SortOrder.DESCEND:
            if target == SortTarget.KEY:
                kvs = kvs[::-1]
            else:
                kvs = sorted(kvs, key=_SORT_KEYS[target], reverse=True)
        elif order == SortOrder.ASCEND and target != SortTarget.KEY:
            kvs = sorted(kvs, key=_SORT_KEYS[target])
        more = False
        if req.limit > 0 and len(kvs) > req.limit:
            kvs = kvs[: req.limit]
            more = True
        if req.keys_only:
            kvs = [
                KeyValue(kv.key, kv.create_revision, kv.mod_revision, kv.version, b"", kv.lease) for kv in kvs
            ]
        return RangeResult(kvs, more, count, header)

    # ================================================================ writes
    def _check_quota(self, cost: int) -> None:
        if NOSPACE in self._alarms:
            raise NoSpace()
        if cost and self._size + cost >= self._quota:
            self._alarms.add(NOSPACE)
            self._append(codec.encode_alarm(True, NOSPACE))
            raise NoSpace()

    async def put(self, req: PutRequest) -> PutResult:
        if self._failed is not None:
            raise StoreError("etcdserver: journal failed")
        key = req.key
        if not key or req.ignore_value or req.ignore_lease:
            _check_put(req)
        value = req.value
        lease = req.lease
        if self._alarms or self._size + len(key) + len(value) + KV_OVERHEAD >= self._quota:
            self._check_quota(KV_OVERHEAD + len(key) + len(value))
        if lease and lease not in self._leases:
            raise LeaseNotFound()
        if req.ignore_value or req.ignore_lease:
            cur = self._kv.get(key)
            if cur is None:
                raise KeyNotFound()
            if req.ignore_value:
                value = cur.value
            if req.ignore_lease:
                lease = cur.lease
        rev = self._rev + 1
        self._rev = rev
        kv, prev = self._apply_put(key, value, lease, rev)
        self._revlog.append((kv,))
        await self._durable(self._append(codec.encode_put(rev, key, value, lease)), rev)
        return PutResult(rev, prev if req.prev_kv else None)

    def _delete_keys(
        self, start: bytes, end: bytes, rev: int, changes: list[KeyValue], prevs: list[KeyValue] | None
    ) -> int:
        if not end:
            keys: Iterable[bytes] = (start,) if start in self._kv else ()
        else:
            keys = list(self._key_iter(self._live, start, end))
        n = 0
        for k in keys:
            if prevs is not None:
                prevs.append(self._kv[k])
            tomb = self._apply_delete(k, rev)
            if tomb is not None:
                changes.append(tomb)
                n += 1
        return n

    async def delete_range(self, req: DeleteRangeRequest) -> DeleteRangeResult:
        if not req.key:
            raise EmptyKey()
        if self._failed is not None:
            raise StoreError("etcdserver: journal failed")
        rev = self._rev + 1
        changes: list[KeyValue] = []
        prevs: list[KeyValue] | None = [] if req.prev_kv else None
        n = self._delete_keys(req.key, req.range_end, rev, changes, prevs)
        if not n:
            return DeleteRangeResult(await self._settle(), 0, [])
        self._rev = rev
        entry = tuple(changes)
        self._revlog.append(entry)
        await self._durable(self._append(codec.encode_ops(rev, entry)), rev)
        return DeleteRangeResult(rev, n, prevs or [])

    # ---------------------------------------------------------------- txn
    def _compare(self, cmp: Compare) -> bool:
        if cmp.range_end:
            kvs = self._range_kvs(cmp.key, cmp.range_end, self._rev)
        else:
            kv = self._kv.get(cmp.key)
            kvs = [kv] if kv is not None else []
        target = cmp.target
        if not kvs:
            if target == CompareTarget.VALUE:
                return False  # etcd: a value compare on a missing key always fails
            kvs = [KeyValue(cmp.key, 0, 0, 0, b"", 0)]
        result = cmp.result
        for kv in kvs:
            if target == CompareTarget.VALUE:
                a, b = kv.value, cmp.value
            elif target == CompareTarget.VERSION:
                a, b = kv.version, cmp.version
            elif target == CompareTarget.CREATE:
                a, b = kv.create_revision, cmp.create_revision
            elif target == CompareTarget.MOD:
                a, b = kv.mod_revision, cmp.mod_revision
            else:
                a, b = kv.lease, cmp.lease
            if result == CompareResult.EQUAL:
                ok = a == b
            elif result == CompareResult.NOT_EQUAL:
                ok = a != b
            elif result == CompareResult.GREATER:
                ok = a > b
            else:
                ok = a < b
            if not ok:
                return False
        return True

    def _txn_path(self, req: TxnRequest, path: list[bool]) -> None:
        """Decide every branch up front against the pre-txn state (etcd's compareToPath)."""
        ok = all(self._compare(c) for c in req.compare)
        path.append(ok)
        for op in req.success if ok else req.failure:
            if type(op) is TxnRequest:
                self._txn_path(op, path)

    def _txn_check(self, req: TxnRequest, path: list[bool], pos: int) -> int:
        """etcd's checkRequests for puts (lease exists, ignore_* needs the key) and ranges."""
        ops = req.success if path[pos] else req.failure
        pos += 1
        for op in ops:
            t = type(op)
            if t is TxnRequest:
                pos = self._txn_check(op, path, pos)
            elif t is PutRequest:
                if (op.ignore_value or op.ignore_lease) and op.key not in self._kv:
                    raise KeyNotFound()
                if op.lease and op.lease not in self._leases:
                    raise LeaseNotFound()
            elif t is RangeRequest:
                self._check_read_rev(op.revision, self._rev)
        return pos

    def _txn_exec(
        self, req: TxnRequest, path: list[bool], pos: int, rev: int, changes: list[KeyValue]
    ) -> tuple[TxnResult, int]:
        ok = path[pos]
        pos += 1
        responses: list[Any] = []
        for op in req.success if ok else req.failure:
            t = type(op)
            if t is PutRequest:
                key = op.key
                cur = self._kv.get(key)
                value = cur.value if op.ignore_value and cur is not None else op.value
                lease = cur.lease if op.ignore_lease and cur is not None else op.lease
                kv, prev = self._apply_put(key, value, lease, rev)
                changes.append(kv)
                responses.append(PutResult(rev, prev if op.prev_kv else None))
            elif t is DeleteRangeRequest:
                prevs: list[KeyValue] | None = [] if op.prev_kv else None
                n = self._delete_keys(op.key, op.range_end, rev, changes, prevs)
                responses.append(DeleteRangeResult(rev if changes else rev - 1, n, prevs or []))
            elif t is RangeRequest:
                cur_rev = rev if changes else rev - 1
                at = op.revision if op.revision > 0 else cur_rev
                if not op.range_end:
                    kv = self._kv.get(op.key) if at == cur_rev else self._get_at(op.key, at)
                    kvs = [kv] if kv is not None else []
                else:
                    kvs = (
                        self._range_hist(op.key, op.range_end, at)
                        if at != cur_rev
                        else [self._kv[k] for k in self._key_iter(self._live, op.key, op.range_end)]
                    )
                responses.append(self._finish_range(op, kvs, len(kvs), cur_rev))
            else:
                sub, pos = self._txn_exec(op, path, pos, rev, changes)
                responses.append(sub)
        return TxnResult(rev if changes else rev - 1, ok, responses), pos

    def _fix_revisions(self, res: TxnResult, rev: int) -> None:
        """A txn that wrote nothing answers every op at the revision it was served at."""
        res.revision = rev
        for r in res.responses:
            if type(r) is TxnResult:
                self._fix_revisions(r, rev)
            else:
                r.revision = rev

    async def txn(self, req: TxnRequest) -> TxnResult:
        _check_txn_request(req, self._max_txn_ops)
        _check_intervals(req.success)
        _check_intervals(req.failure)
        writes = _txn_has_writes(req)
        if writes:
            if self._failed is not None:
                raise StoreError("etcdserver: journal failed")
            cost = _txn_put_cost(req)
            if NOSPACE in self._alarms and cost > 0:
                raise NoSpace()
            if cost and self._size + cost >= self._quota:
                self._check_quota(cost)
        path: list[bool] = []
        self._txn_path(req, path)
        self._txn_check(req, path, 0)
        rev = self._rev + 1
        changes: list[KeyValue] = []
        result, _ = self._txn_exec(req, path, 0, rev, changes)
        if not changes:
            base = await self._settle()
            self._fix_revisions(result, base)
            return result
        self._rev = rev
        entry = tuple(changes)
        self._revlog.append(entry)
        # the ops keep the revisions they ran at (a range before the first write reads rev - 1,
        # as etcd 3.4 answers); the txn itself answers at its own revision
        result.revision = rev
        await self._durable(self._append(codec.encode_ops(rev, entry)), rev)
        return result

    # ================================================================ leases
    async def lease_grant(self, ttl: int, lease_id: int = 0) -> tuple[int, int]:
        if ttl > MAX_LEASE_TTL:
            raise LeaseTTLTooLarge()
        if NOSPACE in self._alarms or self._size + LEASE_OVERHEAD >= self._quota:
            self._check_quota(LEASE_OVERHEAD)
        if lease_id == 0:
            lease_id = random.getrandbits(63) or 1
            while lease_id in self._leases:
                lease_id = random.getrandbits(63) or 1
        elif lease_id in self._leases:
            raise LeaseExists()
        ttl = max(ttl, self._min_lease_ttl)
        lease = _Lease(lease_id, ttl, self._clock() + ttl)
        self._leases[lease_id] = lease
        self._size += LEASE_OVERHEAD
        heapq.heappush(self._lease_heap, (lease.expiry, lease_id))
        fut = self._append(codec.encode_grant(lease_id, ttl))
        await fut
        return lease_id, ttl

    async def lease_revoke(self, lease_id: int) -> int:
        lease = self._leases.get(lease_id)
        if lease is None:
            raise LeaseNotFound()
        return await self._revoke(lease)

    async def _revoke(self, lease: _Lease) -> int:
        if self._failed is not None:
            raise StoreError("etcdserver: journal failed")
        keys = sorted(lease.keys)
        rev = self._rev + 1
        changes: list[KeyValue] = []
        for k in keys:
            tomb = self._apply_delete(k, rev)
            if tomb is not None:
                changes.append(tomb)
        del self._leases[lease.id]
        self._size -= LEASE_OVERHEAD
        if changes:
            self._rev = rev
            self._revlog.append(tuple(changes))
        else:
            rev = self._rev
        record = codec.encode_revoke(lease.id, rev, [kv.key for kv in changes])
        await self._durable(self._append(record), rev)
        return rev

    def lease_keepalive(self, lease_id: int) -> int:
        lease = self._leases.get(lease_id)
        now = self._clock()
        if lease is None or lease.expiry <= now:
            raise LeaseNotFound()
        lease.expiry = now + lease.ttl
        heapq.heappush(self._lease_heap, (lease.expiry, lease_id))
        return lease.ttl

    def lease_time_to_live(self, lease_id: int, keys: bool) -> LeaseInfo:
        lease = self._leases.get(lease_id)
        if lease is None:
            return LeaseInfo(lease_id, -1, 0, [])
        remaining = int(lease.expiry - self._clock())
        if remaining < 0:
            remaining = -1
        return LeaseInfo(lease_id, remaining, lease.ttl, sorted(lease.keys) if keys else [])

    def leases(self) -> list[int]:
        return list(self._leases)

    async def expire_leases(self) -> int:
        """Revoke leases past their expiry (each in its own revision); returns how many."""
        now = self._clock()
        heap = self._lease_heap
        done = 0
        while heap and heap[0][0] <= now and done < LEASE_REVOKE_PER_TICK:
            expiry, lease_id = heapq.heappop(heap)
            lease = self._leases.get(lease_id)
            if lease is None or lease.expiry != expiry:
                continue  # revoked already, or renewed (a newer heap entry exists)
            await self._revoke(lease)
            done += 1
        return done

    async def _lease_loop(self) -> None:
        while True:
            await asyncio.sleep(LEASE_CHECK_INTERVAL)
            try:
                await self.expire_leases()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("lease expiry failed")

    # ================================================================ watch
    def watch(
        self,
        key: bytes,
        range_end: bytes,
        start_revision: int,
        *,
        prev_kv: bool = False,
        filter_put: bool = False,
        filter_delete: bool = False,
    ) -> Watcher:
        start = start_revision if start_revision > 0 else self._committed + 1
        w = Watcher(self, key, range_end, start, prev_kv, filter_put, filter_delete)
        if start < self._compact_rev:
            w.compact_revision = self._compact_rev
        elif start > self._committed:
            self._register(w)
        return w

    def _register(self, w: Watcher) -> None:
        if w._synced or w._closed:
            return
        w._synced = True
        if w.is_range:
            self._range_watchers.append(w)
        else:
            self._key_watchers.setdefault(w.key, []).append(w)

    def _unregister(self, w: Watcher) -> None:
        if not w._synced:
            return
        w._synced = False
        if w.is_range:
            self._range_watchers.remove(w)
        else:
            ws = self._key_watchers.get(w.key)
            if ws is not None:
                ws.remove(w)
                if not ws:
                    del self._key_watchers[w.key]

    def _prev_of(self, kv: KeyValue) -> KeyValue | None:
        hist = self._hist.get(kv.key)
        if not hist:
            return None
        i = bisect_left(hist, kv.mod_revision, key=_mod_rev)
        if i == 0:
            return None
        prev = hist[i - 1]
        return prev if prev.version else None

    def _events_for(self, w: Watcher, kvs: Iterable[KeyValue]) -> list[Event]:
        out = []
        for kv in kvs:
            if kv.version:
                if w.filter_put:
                    continue
                etype = EventType.PUT
            else:
                if w.filter_delete:
                    continue
                etype = EventType.DELETE
            out.append(Event(etype, kv, self._prev_of(kv) if w.prev_kv else None))
        return out

    def _deliver(self, lo: int, hi: int) -> None:
        key_watchers = self._key_watchers
        range_watchers = self._range_watchers
        base = self._revlog_base
        revlog = self._revlog
        for r in range(lo, hi + 1):
            entry = revlog[r - base]
            hits: dict[Watcher, list[KeyValue]] | None = None
            for kv in entry:
                k = kv.key
                ws = key_watchers.get(k)
                if ws:
                    for w in ws:
                        if hits is None:
                            hits = {}
                        hits.setdefault(w, []).append(kv)
                for w in range_watchers:
                    if w.key <= k and (w.unbounded or k < w.range_end):
                        if hits is None:
                            hits = {}
                        hits.setdefault(w, []).append(kv)
            if hits:
                for w, kvs in hits.items():
                    w._push(r, self._events_for(w, kvs))

    def _collect(self, w: Watcher, max_events: int) -> list[Event]:
        """Catch-up read for an unsynced watcher: whole committed revisions from w.next_rev."""
        out: list[Event] = []
        base = self._revlog_base
        revlog = self._revlog
        r = w.next_rev
        last = min(self._committed, r + CATCH_UP_SCAN_REVISIONS - 1)  # bound the work per call
        while r <= last and len(out) < max_events:
            matched = [kv for kv in revlog[r - base] if w.matches(kv.key)]
            if matched:
                out.extend(self._events_for(w, matched))
            r += 1
        w.next_rev = r
        return out

    # ================================================================ compaction
    def _set_compact_rev(self, rev: int) -> None:
        self._compact_rev = rev
        cut = rev - self._revlog_base
        if cut > 0:
            self._keep_subs(rev, cut)
            del self._revlog[:cut]
            self._revlog_base = rev

    def _keep_subs(self, rev: int, cut: int) -> None:
        """Remember the sub-revisions the dropped part of the revision log knew, for the versions
        compaction at ``rev`` keeps (each key's newest at ``rev``): etcd's key bucket (snapshots,
        HashKV) names them by (revision, sub-revision)."""
        subs = self._old_subs
        base = self._revlog_base
        for i in range(cut):
            entry = self._revlog[i]
            if len(entry) > 1:
                subs[base + i] = {kv.key: n for n, kv in enumerate(entry) if kv.version}
        for r in list(subs):
            kept = {}
            for key, sub in subs[r].items():
                kv = self._get_at(key, rev)
                if kv is not None and kv.mod_revision == r:
                    kept[key] = sub
            if len(kept) > 1 or any(kept.values()):
                subs[r] = kept
            else:
                del subs[r]

    def _trim_key(self, key: bytes, rev: int) -> None:
        """Keep the newest version at or before rev (unless it is a tombstone) and everything after."""
        hist = self._hist.get(key)
        if hist is None:
            return
        i = bisect_right(hist, rev, key=_mod_rev)
        if i == 0:
            return
        keep_from = i - 1 if hist[i - 1].version else i
        if keep_from == 0:
            return
        dropped = hist[:keep_from]
        for kv in dropped:
            self._size -= len(kv.key) + len(kv.value) + VERSION_OVERHEAD
        if keep_from == len(hist):
            del self._hist[key]
            self._all.remove(key)
        else:
            self._hist[key] = hist[keep_from:]  # a new list: snapshot readers keep the old one

    def _trim_all(self, rev: int) -> None:
        for key in list(self._hist):
            self._trim_key(key, rev)

    async def _trim_async(self, rev: int) -> None:
        keys = list(self._hist)
        for i in range(0, len(keys), COMPACT_TRIM_BATCH):
            for key in keys[i : i + COMPACT_TRIM_BATCH]:
                self._trim_key(key, rev)
            await asyncio.sleep(0)

    async def compact(self, revision: int, physical: bool = False) -> int:
        if revision <= self._compact_rev:
            raise Compacted()
        if revision > self._committed:
            raise FutureRevision()
        if self._failed is not None:
            raise StoreError("etcdserver: journal failed")
        self._set_compact_rev(revision)
        fut = self._append(codec.encode_compact(revision))
        previous = self._compact_trim
        trim = asyncio.get_running_loop().create_task(self._trim_after(previous, revision))
        self._compact_trim = trim
        # compaction can retire watchers that are catching up below the new compact revision
        await fut
        if physical:
            await trim
        return self._committed

    async def _trim_after(self, previous: asyncio.Task[None] | None, rev: int) -> None:
        if previous is not None:
            await previous
        await self._trim_async(rev)

    def start_auto_compaction(self, mode: str, retention: str) -> asyncio.Task[None] | None:
        """etcd's --auto-compaction-mode/--auto-compaction-retention. Returns the running task
        (None when retention is zero, i.e. disabled)."""
        if mode == "periodic":
            period = parse_duration(retention)
            if period <= 0:
                return None
            task = asyncio.get_running_loop().create_task(self._periodic_compaction(period))
        elif mode == "revision":
            keep = int(retention)
            if keep <= 0:
                return None
            task = asyncio.get_running_loop().create_task(self._revision_compaction(keep))
        else:
            raise ValueError(f"unknown auto-compaction mode {mode!r}")
        self._background.append(task)
        return task

    async def _periodic_compaction(self, period: float) -> None:
        # etcd 3.4's periodic compactor: sample the revision every interval/10 (interval =
        # min(period, 1 h)), keeping period/(interval/10)+1 samples so the oldest one is the
        # revision `period` ago; first compaction once `period` has passed, then every interval
        interval = min(period, 3600.0)
        retry = interval / 10
        keep = int(period / retry) + 1
        samples: list[int] = []
        last_success = self._clock()
        base_interval = period
        while True:
            samples.append(self._committed)
            if len(samples) > keep:
                del samples[0]
            await asyncio.sleep(retry)
            if self._clock() - last_success < base_interval:
                continue
            base_interval = interval
            try:
                if samples[0] > self._compact_rev:
                    await self.compact(samples[0])
                last_success = self._clock()
            except Compacted:
                last_success = self._clock()
            except StoreError:
                log.warning("auto compaction to %d failed", samples[0])

    async def _revision_compaction(self, keep: int) -> None:
        while True:
            await asyncio.sleep(300)  # etcd checks every 5 minutes
            target = self._committed - keep
            if target > self._compact_rev:
                try:
                    await self.compact(target)
                except StoreError:
                    pass

    # ================================================================ alarms, state machines
    async def alarm_activate(self, alarm: str) -> None:
        self._alarms.add(alarm)
        await self._append(codec.encode_alarm(True, alarm))

    async def alarm_disarm(self, alarm: str) -> None:
        if alarm not in self._alarms:
            return
        self._alarms.discard(alarm)
        await self._append(codec.encode_alarm(False, alarm))

    async def propose(self, machine_name: str, op: bytes) -> Any:
        machine = self._machines[machine_name]
        if self._failed is not None:
            raise StoreError("etcdserver: journal failed")
        result = machine.apply(op)
        await self._append(codec.encode_machine(machine_name, op))
        return result

    # ================================================================ hashes
    def hash_kv(self, revision: int = 0) -> tuple[int, int, int]:
        """etcd's HashKV: (hash, compact revision, current revision), computed over the versions
        as etcd's key bucket would hold them, so it equals etcd's for the same history."""
        from ultraplane.store import etcdsnapshot

        rev = revision if revision > 0 else self._committed
        if revision > 0 and revision <= self._compact_rev:
            raise Compacted()
        if rev > self._committed:
            raise FutureRevision()
        return etcdsnapshot.hash_kv(self, rev), self._compact_rev, self._committed

    def hash(self) -> int:
        crc = 0
        for chunk in self.snapshot_chunks():
            crc = zlib.crc32(chunk, crc)
        return crc

    # ================================================================ snapshots
    def snapshot_chunks(self) -> Iterator[bytes]:
        """A consistent full-state snapshot as of the newest in-memory revision (= everything
        appended to the journal so far). State is captured now; chunks are built lazily."""
        rev = self._rev
        compact = self._compact_rev
        start = max(compact, self._revlog_base)
        header = codec.encode_header(
            rev,
            compact,
            start,
            sorted((lease.id, lease.ttl) for lease in self._leases.values()),
            sorted(self._alarms),
            [(name, m.dump()) for name, m in sorted(self._machines.items())],
        )
        hist_items = list(self._hist.items())  # history lists are appended to or replaced, never edited
        revlog = self._revlog[start - self._revlog_base : rev - self._revlog_base + 1]
        subs = codec.encode_subs(self._old_subs) if self._old_subs else b""
        return self._snapshot_gen(header, hist_items, revlog, start, subs)

    @staticmethod
    def _snapshot_gen(
        header: bytes,
        hist_items: list[tuple[bytes, list[KeyValue]]],
        revlog: list[tuple[KeyValue, ...]],
        start: int,
        subs: bytes = b"",
    ) -> Iterator[bytes]:
        fw = codec.FrameWriter()
        fw.frame(b"H", header)
        if subs and (chunk := fw.frame(b"S", subs)):
            yield chunk
        batch = bytearray()
        for _key, hist in sorted(hist_items):
            for kv in hist:
                if kv.mod_revision >= start:
                    break
                codec.pack_raw_kv(batch, kv)
            if len(batch) >= 256 * 1024:
                chunk = fw.frame(b"B", batch)
                batch = bytearray()
                if chunk:
                    yield chunk
        if batch:
            chunk = fw.frame(b"B", batch)
            if chunk:
                yield chunk
        batch = bytearray()
        r = start
        for entry in revlog:
            batch += codec.TXN_HEAD.pack(r, len(entry))
            for kv in entry:
                codec.pack_raw_kv(batch, kv)
            r += 1
            if len(batch) >= 256 * 1024:
                chunk = fw.frame(b"V", batch)
                batch = bytearray()
                if chunk:
                    yield chunk
        if batch:
            chunk = fw.frame(b"V", batch)
            if chunk:
                yield chunk
        yield fw.finish()

    def _load_snapshot(self, stream: Any) -> None:
        frames = codec.read_frames(stream)
        kind, payload = next(frames)
        if kind != b"H":
            raise codec.SnapshotError("snapshot does not start with a header")
        rev, compact, start, leases, alarms, machines = codec.decode_header(payload)
        for lease_id, ttl in leases:
            self._leases[lease_id] = _Lease(lease_id, ttl, 0.0)
            self._size += LEASE_OVERHEAD
        self._alarms = set(alarms)
        for name, dump in machines:
            machine = self._machines.get(name)
            if machine is None:
                raise RuntimeError(f"snapshot has state for unattached state machine {name!r}")
            machine.load(dump)
        hist = self._hist
        self._revlog = []
        self._revlog_base = start
        for kind, payload in frames:
            pos = 0
            end = len(payload)
            if kind == b"B":
                while pos < end:
                    kv, pos = codec.unpack_raw_kv(payload, pos)
                    self._load_version(hist, kv)
            elif kind == b"V":
                while pos < end:
                    r, n = codec.TXN_HEAD.unpack_from(payload, pos)
                    pos += codec.TXN_HEAD.size
                    entry = []
                    for _ in range(n):
                        kv, pos = codec.unpack_raw_kv(payload, pos)
                        entry.append(kv)
                    self._revlog.append(tuple(entry))
                    # the entry at the compact revision may list versions compaction dropped;
                    # open() trims them again after loading
                    for kv in entry:
                        self._load_version(hist, kv)
            elif kind == b"S":
                self._old_subs = codec.decode_subs(payload)
        if self._revlog_base + len(self._revlog) - 1 != rev:
            raise codec.SnapshotError("snapshot revision log is incomplete")
        self._rev = rev
        self._compact_rev = compact
        self._all = SortedList(hist)
        for key, versions in hist.items():
            last = versions[-1]
            if last.version:
                self._kv[key] = last
                if last.lease:
                    lease = self._leases.get(last.lease)
                    if lease is not None:
                        lease.keys.add(key)
        self._live = SortedList(self._kv)

    def _load_version(self, hist: dict[bytes, list[KeyValue]], kv: KeyValue) -> None:
        versions = hist.get(kv.key)
        if versions is None:
            hist[kv.key] = [kv]
        elif versions[-1].mod_revision < kv.mod_revision:
            versions.append(kv)
        else:
            return  # already loaded (a base version equal to an entry of the log)
        self._size += len(kv.key) + len(kv.value) + VERSION_OVERHEAD

    def _maybe_snapshot(self) -> None:
        if self._snapshot_task is not None and not self._snapshot_task.done():
            return
        if not (self._journal.snapshot_due() or self._records_since_snapshot >= self._snapshot_records):
            return
        # capture and hand over in one step: the journal's cut point is "every record appended
        # before write_snapshot was called", and FileJournal consumes the chunks in that call
        self._records_since_snapshot = 0
        pending = self._journal.write_snapshot(self.snapshot_chunks())
        self._snapshot_task = asyncio.ensure_future(self._await_snapshot(pending))

    @staticmethod
    async def _await_snapshot(pending: Any) -> None:
        try:
            await pending
        except Exception:
            log.exception("writing a snapshot failed")

    async def take_snapshot(self) -> None:
        """Write a snapshot now (tests, shutdown)."""
        self._records_since_snapshot = 0
        await self._journal.write_snapshot(self.snapshot_chunks())

    @staticmethod
    async def restore(snapshot_file: str, journal: Journal) -> None:
        """Seed an empty journal (a fresh data dir) with a snapshot file: one from
        snapshot_chunks(), or an etcd backend database (`etcdctl snapshot save`), converted."""
        from ultraplane.store import bbolt, etcdsnapshot

        with open(snapshot_file, "rb") as f:
            head = f.read(bbolt.DEFAULT_PAGE_SIZE)
        native: list[bytes] | None = None
        if bbolt.is_bolt(head):
            with open(snapshot_file, "rb") as f:
                body = etcdsnapshot.strip_trailer(f.read())
            native = list(etcdsnapshot.native_snapshot(etcdsnapshot.parse_db(body)))
        else:
            with open(snapshot_file, "rb") as f:
                for _ in codec.read_frames(f):
                    pass  # validate the whole file (crc) before touching the journal
        recovery = journal.open()
        if recovery.snapshot is not None or next(iter(recovery.records), None) is not None:
            raise RuntimeError("restore needs an empty data directory")

        def chunks() -> Iterator[bytes]:
            with open(snapshot_file, "rb") as f:
                while block := f.read(codec.SNAPSHOT_CHUNK_BYTES):
                    yield block

        await journal.write_snapshot(native if native is not None else chunks())
        await journal.close()
