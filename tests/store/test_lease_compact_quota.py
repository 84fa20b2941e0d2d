"""Leases, compaction, quota/alarms, hashes, auto-compaction parsing."""

from __future__ import annotations

import pytest

from ultraplane.store import Store, errors
from ultraplane.store.mvcc import parse_duration
from ultraplane.store.types import DeleteRangeRequest, EventType, PutRequest, RangeRequest, TxnRequest


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def clocked(journal):
    clock = FakeClock()
    s = Store(journal, clock=clock)
    await s.open()
    yield s, clock
    await s.close()


async def test_lease_grant_rules(store):
    lid, ttl = await store.lease_grant(1)
    assert lid > 0 and lid < 2**63 and ttl == 2  # etcd's minimum TTL for default timing
    with pytest.raises(errors.LeaseExists):
        await store.lease_grant(10, lid)
    assert await store.lease_grant(10, 42) == (42, 10)
    with pytest.raises(errors.LeaseTTLTooLarge):
        await store.lease_grant(9_000_000_001)
    assert sorted(store.leases()) == sorted([lid, 42])
    info = store.lease_time_to_live(999, True)
    assert info.ttl == -1
    with pytest.raises(errors.LeaseNotFound):
        await store.lease_revoke(999)
    with pytest.raises(errors.LeaseNotFound):
        store.lease_keepalive(999)


async def test_revoke_deletes_keys_in_one_revision(store):
    lid, _ = await store.lease_grant(60)
    for k in (b"c", b"a", b"b"):
        await store.put(PutRequest(k, b"v", lease=lid))
    await store.put(PutRequest(b"b", b"detached"))  # overwritten without lease: detached
    w = store.watch(b"\0", b"\0", 0, prev_kv=False, filter_put=False, filter_delete=False)
    rev = await store.lease_revoke(lid)
    assert rev == 6
    batch = await w.__anext__()
    assert [(e.type, e.kv.key, e.kv.mod_revision) for e in batch] == [
        (EventType.DELETE, b"a", 6),
        (EventType.DELETE, b"c", 6),
    ]
    assert store.range(RangeRequest(b"b")).kvs[0].value == b"detached"
    assert store.leases() == []
    w.close()


async def test_expiry_keepalive_and_ttl(clocked):
    store, clock = clocked
    lid, _ = await store.lease_grant(10)
    await store.put(PutRequest(b"k", b"v", lease=lid))
    clock.now += 6
    assert store.lease_time_to_live(lid, True).ttl == 4
    assert store.lease_keepalive(lid) == 10
    clock.now += 9
    assert await store.expire_leases() == 0
    info = store.lease_time_to_live(lid, True)
    assert (info.ttl, info.granted_ttl, info.keys) == (1, 10, [b"k"])
    clock.now += 2
    assert await store.expire_leases() == 1
    assert store.range(RangeRequest(b"k")).kvs == []
    assert store.lease_time_to_live(lid, False).ttl == -1


async def test_compaction(store):
    for i in range(5):
        await store.put(PutRequest(b"a", b"%d" % i))  # revs 2..6
    await store.put(PutRequest(b"b", b"x"))  # 7
    await store.delete_range(DeleteRangeRequest(b"b"))  # 8
    await store.put(PutRequest(b"c", b"y"))  # 9
    size_before = store.db_size
    assert await store.compact(8, physical=True) == 9
    assert store.compact_revision == 8
    assert store.db_size < size_before
    with pytest.raises(errors.Compacted):
        store.range(RangeRequest(b"a", revision=7))
    with pytest.raises(errors.Compacted):
        await store.compact(8)
    with pytest.raises(errors.FutureRevision):
        await store.compact(100)
    assert store.range(RangeRequest(b"a", revision=8)).kvs[0].value == b"4"  # kept: newest <= 8
    assert store.range(RangeRequest(b"b", revision=8)).kvs == []
    assert b"b" not in store._hist  # the tombstone went
    assert len(store._hist[b"a"]) == 1
    hash_kv = store.hash_kv(0)
    assert hash_kv[1:] == (8, 9)


async def test_quota_and_alarm(journal):
    s = Store(journal, quota_bytes=4096)
    await s.open()
    await s.put(PutRequest(b"a", b"x" * 100))
    with pytest.raises(errors.NoSpace):
        await s.put(PutRequest(b"b", b"x" * 5000))
    assert s.alarms == {"NOSPACE"}
    with pytest.raises(errors.NoSpace):
        await s.put(PutRequest(b"c", b"small"))
    with pytest.raises(errors.NoSpace):
        await s.txn(TxnRequest(success=[PutRequest(b"c", b"small")]))
    with pytest.raises(errors.NoSpace):
        await s.lease_grant(10)
    # reads, deletes, delete-only txns and compaction still work
    assert s.range(RangeRequest(b"a")).count == 1
    await s.txn(TxnRequest(success=[DeleteRangeRequest(b"zz")]))
    await s.delete_range(DeleteRangeRequest(b"a"))
    await s.compact(s.revision, physical=True)
    await s.alarm_disarm("NOSPACE")
    assert s.alarms == set()
    await s.put(PutRequest(b"c", b"small"))
    await s.close()
    # the alarm history is journaled: set and cleared again on replay
    s2 = Store(journal, quota_bytes=4096)
    await s2.open()
    assert s2.alarms == set()
    await s2.close()


async def test_alarm_survives_restart(journal):
    s = Store(journal, quota_bytes=1000)
    await s.open()
    with pytest.raises(errors.NoSpace):
        await s.put(PutRequest(b"b", b"x" * 5000))
    await s.close()
    s2 = Store(journal)
    await s2.open()
    assert s2.alarms == {"NOSPACE"}
    await s2.close()


async def test_hash_kv_deterministic_and_revision_scoped(store):
    await store.put(PutRequest(b"a", b"1"))
    h2 = store.hash_kv(2)[0]
    await store.put(PutRequest(b"a", b"2"))
    assert store.hash_kv(2)[0] == h2
    assert store.hash_kv(3)[0] != h2


def test_parse_duration():
    assert parse_duration("1h") == 3600
    assert parse_duration("5m") == 300
    assert parse_duration("1h30m") == 5400
    assert parse_duration("2") == 7200  # etcd: a bare number is hours in periodic mode
    with pytest.raises(ValueError):
        parse_duration("5x")


async def test_auto_compaction_start(store):
    assert store.start_auto_compaction("revision", "0") is None
    task = store.start_auto_compaction("periodic", "1h")
    assert task is not None and not task.done()
    with pytest.raises(ValueError):
        store.start_auto_compaction("weird", "1")


async def test_fresh_store_compact_revision_is_minus_one(store):
    assert store.compact_revision == -1 and store.hash_kv(0)[1] == -1
    assert await store.compact(0) == 1  # etcd accepts compacting to 0 once
    assert store.compact_revision == 0
    with pytest.raises(errors.Compacted):
        await store.compact(0)
