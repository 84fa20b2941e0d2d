"""Journal replay and snapshots rebuild identical state (MemJournal and the real FileJournal)."""

from __future__ import annotations

import json
import random

import pytest

from ultraplane.journal.file import FileJournal
from ultraplane.store import Store, errors
from ultraplane.store.errors import StoreError
from ultraplane.store.types import DeleteRangeRequest, PutRequest, RangeRequest, TxnRequest

from .conftest import MemJournal


class Counter:
    """A tiny deterministic state machine: ops are JSON {"add": n}; negative totals are refused."""

    name = "counter"

    def __init__(self) -> None:
        self.total = 0

    def apply(self, op: bytes) -> int:
        n = json.loads(op)["add"]
        if self.total + n < 0:
            raise StoreError("etcdserver: negative")
        self.total += n
        return self.total

    def dump(self) -> bytes:
        return json.dumps({"total": self.total}).encode()

    def load(self, data: bytes) -> None:
        self.total = json.loads(data)["total"]


async def workload(store: Store, seed: int, steps: int = 300) -> None:
    rnd = random.Random(seed)
    leases = []
    for i in range(steps):
        k = b"k/%02d" % rnd.randrange(40)
        r = rnd.random()
        if r < 0.45:
            lease = rnd.choice(leases) if leases and rnd.random() < 0.3 else 0
            await store.put(PutRequest(k, b"v%d" % i, lease=lease))
        elif r < 0.6:
            await store.delete_range(DeleteRangeRequest(k, b"k/%02d" % (int(k[2:]) + 3)))
        elif r < 0.75:
            await store.txn(TxnRequest(success=[PutRequest(k, b"t%d" % i), PutRequest(k + b"x", b"y")]))
        elif r < 0.8:
            leases.append((await store.lease_grant(100))[0])
        elif r < 0.85 and leases:
            await store.lease_revoke(leases.pop(rnd.randrange(len(leases))))
        elif r < 0.9:
            try:
                await store.propose("counter", json.dumps({"add": rnd.randrange(-3, 5)}).encode())
            except StoreError:
                pass  # refused by the machine: nothing journaled
        elif r < 0.93 and store.revision > store.compact_revision + 5:
            await store.compact(rnd.randrange(store.compact_revision + 1, store.revision), physical=True)


def state(store: Store):
    return (
        store.revision,
        store.compact_revision,
        [
            (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)
            for kv in store.range(RangeRequest(b"\0", b"\0")).kvs
        ],
        sorted(store.leases()),
        {lid: store.lease_time_to_live(lid, True).keys for lid in store.leases()},
        store.hash_kv(0),
        store.hash(),
        store.alarms,
        store._machines["counter"].total,
    )


async def open_store(journal) -> Store:
    s = Store(journal)
    s.attach(Counter())
    await s.open()
    return s


async def safe_workload(store, seed):
    try:
        await workload(store, seed)
    except StoreError:
        pass


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_replay_equivalence_memjournal(seed):
    journal = MemJournal()
    s = await open_store(journal)
    await safe_workload(s, seed)
    before = state(s)
    # every historical revision reads the same after replay
    hist = {
        r: s.range(RangeRequest(b"\0", b"\0", revision=r)).kvs
        for r in range(max(s.compact_revision, 1), s.revision + 1)
    }
    await s.close()
    s2 = await open_store(journal)
    assert state(s2) == before
    for r, kvs in hist.items():
        assert s2.range(RangeRequest(b"\0", b"\0", revision=r)).kvs == kvs
    await s2.close()


@pytest.mark.parametrize("seed", [4, 5])
async def test_snapshot_then_records(seed):
    journal = MemJournal()
    s = await open_store(journal)
    await safe_workload(s, seed)
    await s.take_snapshot()
    assert journal.records == []
    await safe_workload(s, seed + 100)
    before = state(s)
    await s.close()
    s2 = await open_store(journal)
    assert state(s2) == before
    # watch history after restore is complete too
    start = max(s2.compact_revision, 2)
    w = s2.watch(b"\0", b"\0", start, prev_kv=False, filter_put=False, filter_delete=False)
    seen = []
    while not seen or seen[-1] < s2.revision:
        seen += [e.kv.mod_revision for e in await w.__anext__()]
    assert seen == sorted(seen)
    w.close()
    await s2.close()


async def test_automatic_snapshots_and_restart():
    journal = MemJournal(snapshot_every=50)
    s = await open_store(journal)
    for i in range(2000):
        await s.put(PutRequest(b"k%d" % (i % 37), b"%d" % i))
    assert journal.snapshot is not None
    before = state(s)
    await s.close()
    s2 = await open_store(journal)
    assert state(s2) == before
    await s2.close()


async def test_state_machine_propose(journal):
    s = await open_store(journal)
    assert await s.propose("counter", b'{"add": 5}') == 5
    with pytest.raises(StoreError):
        await s.propose("counter", b'{"add": -9}')
    n_records = len(journal.records)
    assert await s.propose("counter", b'{"add": 1}') == 6
    assert len(journal.records) == n_records + 1
    await s.close()
    s2 = await open_store(journal)
    assert s2._machines["counter"].total == 6
    await s2.close()


async def test_leases_survive_restart_with_full_ttl(journal):
    s = await open_store(journal)
    lid, _ = await s.lease_grant(30)
    await s.put(PutRequest(b"k", b"v", lease=lid))
    await s.close()
    s2 = await open_store(journal)
    info = s2.lease_time_to_live(lid, True)
    assert info.granted_ttl == 30 and info.ttl >= 29 and info.keys == [b"k"]
    assert await s2.lease_revoke(lid) == 3
    assert s2.range(RangeRequest(b"k")).kvs == []
    await s2.close()


@pytest.mark.parametrize("seed", [11, 12])
async def test_file_journal_recovery(tmp_path, seed):
    d = str(tmp_path / "data")
    s = await open_store(FileJournal(d, fsync=False))
    await safe_workload(s, seed)
    await s.take_snapshot()
    await safe_workload(s, seed + 1)
    before = state(s)
    await s.close()
    s2 = await open_store(FileJournal(d, fsync=False))
    assert state(s2) == before
    await s2.put(PutRequest(b"after", b"restart"))
    after = state(s2)
    await s2.close()
    s3 = await open_store(FileJournal(d, fsync=False))
    assert state(s3) == after
    await s3.close()


async def test_restore_from_snapshot_file(tmp_path):
    journal = MemJournal()
    s = await open_store(journal)
    await safe_workload(s, 21)
    snap = tmp_path / "snap.db"
    snap.write_bytes(b"".join(s.snapshot_chunks()))
    before = state(s)
    await s.close()
    d = str(tmp_path / "restored")
    await Store.restore(str(snap), FileJournal(d, fsync=False))
    s2 = await open_store(FileJournal(d, fsync=False))
    assert state(s2) == before
    await s2.close()
    bad = tmp_path / "bad.db"
    bad.write_bytes(snap.read_bytes()[:-3])
    with pytest.raises(ValueError):
        await Store.restore(str(bad), FileJournal(str(tmp_path / "x"), fsync=False))


async def test_errors_leave_no_record(journal):
    s = await open_store(journal)
    with pytest.raises(errors.DuplicateKey):
        await s.txn(TxnRequest(success=[PutRequest(b"a"), PutRequest(b"a")]))
    with pytest.raises(errors.KeyNotFound):
        await s.put(PutRequest(b"a", ignore_lease=True))
    assert journal.records == []
    await s.close()


async def test_snapshot_taken_while_compaction_trims(monkeypatch):
    from ultraplane.store import mvcc

    monkeypatch.setattr(mvcc, "COMPACT_TRIM_BATCH", 3)  # trimming spans many loop turns
    journal = MemJournal()
    s = await open_store(journal)
    for i in range(200):
        await s.put(PutRequest(b"k%02d" % (i % 30), b"%d" % i))
        if i % 7 == 0:
            await s.delete_range(DeleteRangeRequest(b"k%02d" % (i % 30)))
    await s.compact(s.revision - 20)  # logical now, physical trim in the background
    hash_before = s.hash_kv(0)
    await s.take_snapshot()  # mid-trim
    await s._compact_trim
    assert s.hash_kv(0) == hash_before  # trimming changes nothing visible
    before = state(s)
    await s.close()
    s2 = await open_store(journal)
    assert state(s2) == before
    await s2.close()
