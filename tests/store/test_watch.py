"""Watch guarantees: whole revisions in order, no gaps/duplicates, history replay, filters,
prev_kv, compaction, slow watchers, visibility only after durability."""

from __future__ import annotations

import asyncio
import random

from ultraplane.store import Store
from ultraplane.store import watch as watch_mod
from ultraplane.store.types import DeleteRangeRequest, EventType, PutRequest, RangeRequest, TxnRequest

from .conftest import MemJournal


async def take(w, n):
    """Collect batches until at least n events arrived."""
    out, batches = [], []
    while len(out) < n:
        batch = await asyncio.wait_for(w.__anext__(), 5)
        batches.append(batch)
        out.extend(batch)
    return out, batches


async def test_live_watch_key_and_prefix(store):
    wk = store.watch(b"a", b"", 0, prev_kv=True, filter_put=False, filter_delete=False)
    wp = store.watch(b"p/", b"p0", 0, prev_kv=False, filter_put=False, filter_delete=False)
    await store.put(PutRequest(b"a", b"1"))
    await store.put(PutRequest(b"p/x", b"1"))
    await store.put(PutRequest(b"a", b"2"))
    await store.delete_range(DeleteRangeRequest(b"a"))
    evs, _ = await take(wk, 3)
    assert [(e.type, e.kv.mod_revision) for e in evs] == [
        (EventType.PUT, 2),
        (EventType.PUT, 4),
        (EventType.DELETE, 5),
    ]
    assert evs[1].prev_kv.value == b"1" and evs[2].prev_kv.value == b"2" and evs[0].prev_kv is None
    assert evs[2].kv.key == b"a" and evs[2].kv.version == 0
    evs, _ = await take(wp, 1)
    assert evs[0].kv.key == b"p/x"
    wk.close()
    wp.close()


async def test_txn_events_are_one_batch_in_subrevision_order(store):
    w = store.watch(b"\0", b"\0", 0, prev_kv=False, filter_put=False, filter_delete=False)
    await store.put(PutRequest(b"z", b"0"))
    await store.txn(
        TxnRequest(success=[PutRequest(b"m", b"1"), DeleteRangeRequest(b"z"), PutRequest(b"b", b"2")])
    )
    evs, batches = await take(w, 4)
    assert [e.kv.key for e in evs] == [b"z", b"m", b"z", b"b"]
    assert all(e.kv.mod_revision == 3 for e in evs[1:])
    # a revision is never split across batches
    for batch in batches:
        revs = {e.kv.mod_revision for e in batch}
        assert all(r in revs for r in revs)
    w.close()


async def test_history_replay_from_any_revision_and_filters(store):
    for i in range(20):
        await store.put(PutRequest(b"k%d" % (i % 3), b"%d" % i))
        if i % 5 == 4:
            await store.delete_range(DeleteRangeRequest(b"k0"))
    all_events = []
    for rev in range(2, store.revision + 1):
        w = store.watch(b"k", b"l", rev, prev_kv=False, filter_put=False, filter_delete=False)
        expected = store.revision - rev + 1
        evs, _ = await take(w, expected)
        revs = [e.kv.mod_revision for e in evs]
        assert revs == list(range(rev, store.revision + 1))  # every revision once, in order
        if rev == 2:
            all_events = evs
        w.close()
    nodel = store.watch(b"k", b"l", 2, prev_kv=False, filter_put=False, filter_delete=True)
    puts = [e for e in all_events if e.type == EventType.PUT]
    evs, _ = await take(nodel, len(puts))
    assert [e.kv.mod_revision for e in evs] == [e.kv.mod_revision for e in puts]
    nodel.close()


async def test_watch_resumes_live_after_catch_up(store):
    for i in range(5):
        await store.put(PutRequest(b"a", b"%d" % i))
    w = store.watch(b"a", b"", 3, prev_kv=False, filter_put=False, filter_delete=False)
    evs, _ = await take(w, 4)
    await store.put(PutRequest(b"a", b"x"))
    more, _ = await take(w, 1)
    assert [e.kv.mod_revision for e in evs + more] == [3, 4, 5, 6, 7]
    w.close()


async def test_watch_future_start_revision(store):
    w = store.watch(b"a", b"", 4, prev_kv=False, filter_put=False, filter_delete=False)
    for i in range(4):
        await store.put(PutRequest(b"a", b"%d" % i))
    evs, _ = await take(w, 2)
    assert [e.kv.mod_revision for e in evs] == [4, 5]
    w.close()


async def test_compacted_watch(store):
    for i in range(6):
        await store.put(PutRequest(b"a", b"%d" % i))
    await store.compact(5, physical=True)
    w = store.watch(b"a", b"", 3, prev_kv=False, filter_put=False, filter_delete=False)
    assert w.compact_revision == 5
    assert [b async for b in w] == []
    w = store.watch(
        b"a", b"", 5, prev_kv=False, filter_put=False, filter_delete=False
    )  # etcd allows == compact
    evs, _ = await take(w, 3)
    assert [e.kv.mod_revision for e in evs] == [5, 6, 7]
    w.close()


async def test_slow_watcher_does_not_block_and_loses_nothing(store, monkeypatch):
    monkeypatch.setattr(watch_mod, "MAX_BUFFERED_EVENTS", 10)
    w = store.watch(b"s", b"t", 0, prev_kv=False, filter_put=False, filter_delete=False)
    await asyncio.sleep(0)
    n = 300
    for i in range(n):  # nobody reads meanwhile
        await store.put(PutRequest(b"s%d" % (i % 7), b"%d" % i))
    assert len(w._buf) <= 10 + 1
    evs, _ = await take(w, n)
    assert [e.kv.mod_revision for e in evs] == list(range(2, n + 2))
    await store.put(PutRequest(b"s", b"last"))
    evs, _ = await take(w, 1)
    assert evs[0].kv.mod_revision == n + 2
    w.close()


async def test_randomized_watch_stream_matches_history(store):
    rnd = random.Random(7)
    w = store.watch(b"\0", b"\0", 0, prev_kv=True, filter_put=False, filter_delete=False)
    expected = []
    for _ in range(200):
        k = b"k%d" % rnd.randrange(10)
        if rnd.random() < 0.3:
            res = await store.delete_range(DeleteRangeRequest(k, prev_kv=True))
            expected += [(EventType.DELETE, k, res.revision)] * res.deleted
        else:
            res = await store.put(PutRequest(k, b"v"))
            expected.append((EventType.PUT, k, res.revision))
    evs, _ = await take(w, len(expected))
    assert [(e.type, e.kv.key, e.kv.mod_revision) for e in evs] == expected
    w.close()


async def test_reads_and_watchers_see_only_durable_revisions():
    journal = MemJournal(hold=True)
    store = Store(journal)
    await store.open()
    w = store.watch(b"a", b"", 0, prev_kv=False, filter_put=False, filter_delete=False)
    t1 = asyncio.ensure_future(store.put(PutRequest(b"a", b"1")))
    t2 = asyncio.ensure_future(store.put(PutRequest(b"a", b"2")))
    await asyncio.sleep(0.01)
    assert not t1.done() and not t2.done()
    assert store.revision == 1
    assert store.range(RangeRequest(b"a")).kvs == []
    assert store.range(RangeRequest(b"a", b"b")).kvs == []
    assert w._buf == []
    journal.release(1)
    await t1
    assert store.revision == 2
    assert store.range(RangeRequest(b"a")).kvs[0].value == b"1"
    assert store.range(RangeRequest(b"a", b"b")).kvs[0].value == b"1"
    evs, _ = await take(w, 1)
    assert evs[0].kv.value == b"1"
    # a delete still in flight: committed readers still see the key
    journal.release()
    await t2
    t3 = asyncio.ensure_future(store.delete_range(DeleteRangeRequest(b"a")))
    await asyncio.sleep(0.01)
    assert store.range(RangeRequest(b"a")).kvs[0].value == b"2"
    assert [kv.key for kv in store.range(RangeRequest(b"\0", b"\0")).kvs] == [b"a"]
    journal.release()
    await t3
    assert store.range(RangeRequest(b"a")).kvs == []
    w.close()
    await store.close()


async def test_compaction_while_catching_up_ends_the_watcher(store, monkeypatch):
    from ultraplane.store import mvcc

    monkeypatch.setattr(mvcc, "CATCH_UP_SCAN_REVISIONS", 5)
    for i in range(30):
        await store.put(PutRequest(b"a", b"%d" % i))
    w = store.watch(b"a", b"", 2, prev_kv=False, filter_put=False, filter_delete=False)
    first = await w.__anext__()
    assert [e.kv.mod_revision for e in first] == [2, 3, 4, 5, 6]
    await store.compact(20, physical=True)
    assert [b async for b in w] == []
    assert w.compact_revision == 20


async def test_read_only_txn_waits_for_inflight_writes():
    journal = MemJournal(hold=True)
    store = Store(journal)
    await store.open()
    put = asyncio.ensure_future(store.put(PutRequest(b"a", b"1")))
    await asyncio.sleep(0)
    txn = asyncio.ensure_future(store.txn(TxnRequest(success=[RangeRequest(b"a")])))
    await asyncio.sleep(0.01)
    assert not txn.done()  # it saw the in-flight write, so it may only answer once that is durable
    journal.release()
    res = await txn
    await put
    assert res.revision == 2 and res.responses[0].kvs[0].value == b"1"
    await store.close()


async def test_unsynced_and_synced_watchers_agree_under_concurrent_writes(store):
    async def writer(prefix: bytes) -> None:
        for i in range(100):
            await store.put(PutRequest(prefix + b"%d" % (i % 5), b"x"))

    live = store.watch(b"w", b"x", 0, prev_kv=False, filter_put=False, filter_delete=False)
    await asyncio.gather(writer(b"w1/"), writer(b"w2/"), writer(b"w3/"))
    replay = store.watch(b"w", b"x", 2, prev_kv=False, filter_put=False, filter_delete=False)
    a, _ = await take(live, 300)
    b, _ = await take(replay, 300)
    assert [(e.kv.key, e.kv.mod_revision) for e in a] == [(e.kv.key, e.kv.mod_revision) for e in b]
    assert [e.kv.mod_revision for e in a] == list(range(2, 302))
    live.close()
    replay.close()


async def test_cancelled_writer_still_commits():
    journal = MemJournal(hold=True)
    store = Store(journal)
    await store.open()
    w = store.watch(b"a", b"", 0, prev_kv=False, filter_put=False, filter_delete=False)
    put = asyncio.ensure_future(store.put(PutRequest(b"a", b"1")))
    await asyncio.sleep(0)
    put.cancel()
    await asyncio.sleep(0)
    journal.release()
    await store.wait_for_revision(2)
    evs, _ = await take(w, 1)
    assert evs[0].kv.value == b"1"
    w.close()
    await store.close()
