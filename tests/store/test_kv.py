"""KV semantics: revisions, versions, ranges, put flags, delete, txn rules (etcd 3.4)."""

from __future__ import annotations

import pytest

from ultraplane.store import errors
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


def keys(res):
    return [kv.key for kv in res.kvs]


async def test_empty_store_is_revision_1(store):
    assert store.revision == 1
    res = store.range(RangeRequest(b"a"))
    assert res.kvs == [] and res.count == 0 and res.revision == 1


async def test_put_revisions_and_versions(store):
    r1 = await store.put(PutRequest(b"a", b"1"))
    r2 = await store.put(PutRequest(b"a", b"2", prev_kv=True))
    assert (r1.revision, r2.revision) == (2, 3)
    assert r2.prev_kv.value == b"1"
    kv = store.range(RangeRequest(b"a")).kvs[0]
    assert (kv.create_revision, kv.mod_revision, kv.version, kv.value) == (2, 3, 2, b"2")
    d = await store.delete_range(DeleteRangeRequest(b"a"))
    assert d.deleted == 1 and d.revision == 4
    await store.put(PutRequest(b"a", b"3"))
    kv = store.range(RangeRequest(b"a")).kvs[0]
    assert (kv.create_revision, kv.version) == (5, 1)  # delete resets version


async def test_delete_nothing_does_not_bump_revision(store):
    await store.put(PutRequest(b"a", b"1"))
    d = await store.delete_range(DeleteRangeRequest(b"zzz"))
    assert d.deleted == 0 and d.revision == 2 and store.revision == 2


async def test_put_flags(store):
    with pytest.raises(errors.KeyNotFound):
        await store.put(PutRequest(b"k", ignore_value=True))
    with pytest.raises(errors.ValueProvided):
        await store.put(PutRequest(b"k", b"v", ignore_value=True))
    with pytest.raises(errors.LeaseProvided):
        await store.put(PutRequest(b"k", lease=5, ignore_lease=True))
    with pytest.raises(errors.LeaseNotFound):
        await store.put(PutRequest(b"k", b"v", lease=12345))
    with pytest.raises(errors.EmptyKey):
        await store.put(PutRequest(b"", b"v"))
    lease, _ = await store.lease_grant(100)
    await store.put(PutRequest(b"k", b"v", lease=lease))
    await store.put(PutRequest(b"k", ignore_value=True))  # keeps value, drops lease
    kv = store.range(RangeRequest(b"k")).kvs[0]
    assert (kv.value, kv.lease) == (b"v", 0)
    await store.put(PutRequest(b"k", b"v2", lease=lease))
    await store.put(PutRequest(b"k", b"v3", ignore_lease=True))
    kv = store.range(RangeRequest(b"k")).kvs[0]
    assert (kv.value, kv.lease) == (b"v3", lease)
    assert store.lease_time_to_live(lease, True).keys == [b"k"]
    assert store.revision == 5


async def fill(store, names):
    for n in names:
        await store.put(PutRequest(n, n.upper()))


async def test_range_forms(store):
    await fill(store, [b"a", b"b", b"c", b"d", b"e"])
    assert keys(store.range(RangeRequest(b"b", b"d"))) == [b"b", b"c"]
    assert keys(store.range(RangeRequest(b"c", b"\0"))) == [b"c", b"d", b"e"]
    assert keys(store.range(RangeRequest(b"\0", b"\0"))) == [b"a", b"b", b"c", b"d", b"e"]
    assert keys(store.range(RangeRequest(b"d", b"b"))) == []
    res = store.range(RangeRequest(b"a", b"z", limit=2))
    assert keys(res) == [b"a", b"b"] and res.more and res.count == 5
    res = store.range(RangeRequest(b"a", b"z", count_only=True))
    assert res.kvs == [] and res.count == 5
    res = store.range(RangeRequest(b"a", b"z", keys_only=True))
    assert all(kv.value == b"" for kv in res.kvs) and len(res.kvs) == 5
    with pytest.raises(errors.EmptyKey):
        store.range(RangeRequest(b""))


async def test_range_prefix_at_past_revision(store):
    await fill(store, [b"p/1", b"p/2"])
    await store.delete_range(DeleteRangeRequest(b"p/1"))
    await store.put(PutRequest(b"p/3", b"x"))
    assert keys(store.range(RangeRequest(b"p/", b"p0"))) == [b"p/2", b"p/3"]
    assert keys(store.range(RangeRequest(b"p/", b"p0", revision=3))) == [b"p/1", b"p/2"]
    assert store.range(RangeRequest(b"p/1", revision=3)).kvs[0].value == b"P/1"
    assert store.range(RangeRequest(b"p/1", revision=4)).kvs == []
    with pytest.raises(errors.FutureRevision):
        store.range(RangeRequest(b"p/1", revision=99))


async def test_range_sort_and_filters(store):
    await fill(store, [b"c", b"a", b"b"])
    await store.put(PutRequest(b"a", b"Z"))  # a: version 2, mod 5
    r = store.range(RangeRequest(b"a", b"z", sort_order=SortOrder.DESCEND))
    assert keys(r) == [b"c", b"b", b"a"]
    r = store.range(RangeRequest(b"a", b"z", sort_target=SortTarget.MOD))  # NONE -> ASCEND
    assert keys(r) == [b"c", b"b", b"a"]
    r = store.range(RangeRequest(b"a", b"z", sort_target=SortTarget.CREATE, sort_order=SortOrder.DESCEND))
    assert keys(r) == [b"b", b"a", b"c"]
    r = store.range(RangeRequest(b"a", b"z", sort_target=SortTarget.VALUE, sort_order=SortOrder.ASCEND))
    assert keys(r) == [b"b", b"c", b"a"]
    r = store.range(
        RangeRequest(b"a", b"z", sort_target=SortTarget.VERSION, sort_order=SortOrder.DESCEND, limit=1)
    )
    assert keys(r) == [b"a"] and r.more and r.count == 3
    r = store.range(RangeRequest(b"a", b"z", min_mod_revision=4))
    assert keys(r) == [b"a", b"b"]
    r = store.range(RangeRequest(b"a", b"z", max_create_revision=3, min_create_revision=3))
    assert keys(r) == [b"a"] and r.count == 3  # count ignores the filters, as etcd


def cmp(key, target, result, **kw):
    return Compare(result=result, target=target, key=key, **kw)


async def test_txn_compares_and_branches(store):
    await store.put(PutRequest(b"k", b"v"))
    ok = await store.txn(
        TxnRequest(
            compare=[
                cmp(b"k", CompareTarget.VALUE, CompareResult.EQUAL, value=b"v"),
                cmp(b"k", CompareTarget.VERSION, CompareResult.GREATER, version=0),
                cmp(b"k", CompareTarget.CREATE, CompareResult.LESS, create_revision=3),
                cmp(b"k", CompareTarget.MOD, CompareResult.NOT_EQUAL, mod_revision=5),
                cmp(b"k", CompareTarget.LEASE, CompareResult.EQUAL, lease=0),
            ],
            success=[PutRequest(b"k2", b"x"), PutRequest(b"k3", b"y"), RangeRequest(b"k2")],
            failure=[PutRequest(b"nope", b"")],
        )
    )
    assert ok.succeeded and ok.revision == 3
    assert [r.revision for r in ok.responses[:2]] == [3, 3]
    assert ok.responses[2].kvs[0].value == b"x"  # reads inside a txn see its writes
    kv2 = store.range(RangeRequest(b"k2")).kvs[0]
    kv3 = store.range(RangeRequest(b"k3")).kvs[0]
    assert kv2.mod_revision == kv3.mod_revision == 3
    # value compare on a missing key always fails; version compare uses zero values
    r = await store.txn(
        TxnRequest(compare=[cmp(b"missing", CompareTarget.VALUE, CompareResult.NOT_EQUAL, value=b"x")])
    )
    assert not r.succeeded
    r = await store.txn(
        TxnRequest(compare=[cmp(b"missing", CompareTarget.VERSION, CompareResult.EQUAL, version=0)])
    )
    assert r.succeeded and r.revision == 3  # read-only txn does not bump
    # bytes comparison
    r = await store.txn(
        TxnRequest(compare=[cmp(b"k", CompareTarget.VALUE, CompareResult.GREATER, value=b"u")])
    )
    assert r.succeeded
    assert store.revision == 3


async def test_txn_compare_over_range(store):
    await fill(store, [b"r/a", b"r/b"])
    r = await store.txn(
        TxnRequest(
            compare=[cmp(b"r/", CompareTarget.VERSION, CompareResult.EQUAL, version=1, range_end=b"r0")]
        )
    )
    assert r.succeeded
    await store.put(PutRequest(b"r/b", b"2"))
    r = await store.txn(
        TxnRequest(
            compare=[cmp(b"r/", CompareTarget.VERSION, CompareResult.EQUAL, version=1, range_end=b"r0")]
        )
    )
    assert not r.succeeded


async def test_nested_txn_and_one_revision(store):
    await store.put(PutRequest(b"x", b"1"))
    inner = TxnRequest(
        compare=[cmp(b"x", CompareTarget.VALUE, CompareResult.EQUAL, value=b"1")],
        success=[PutRequest(b"in", b"yes")],
        failure=[PutRequest(b"in", b"no")],
    )
    r = await store.txn(TxnRequest(success=[PutRequest(b"out", b"1"), inner, DeleteRangeRequest(b"x")]))
    assert r.succeeded and r.responses[1].succeeded and r.revision == 3
    assert store.range(RangeRequest(b"in")).kvs[0].value == b"yes"
    assert store.range(RangeRequest(b"x")).kvs == []
    assert store.revision == 3


async def test_duplicate_key_rules(store):
    with pytest.raises(errors.DuplicateKey):
        await store.txn(TxnRequest(success=[PutRequest(b"a"), PutRequest(b"a")]))
    with pytest.raises(errors.DuplicateKey):
        await store.txn(TxnRequest(success=[PutRequest(b"b"), DeleteRangeRequest(b"a", b"c")]))
    with pytest.raises(errors.DuplicateKey):
        await store.txn(TxnRequest(success=[PutRequest(b"a"), TxnRequest(success=[PutRequest(b"a")])]))
    with pytest.raises(errors.DuplicateKey):
        await store.txn(
            TxnRequest(success=[DeleteRangeRequest(b"a"), TxnRequest(failure=[PutRequest(b"a")])])
        )
    # then/else of one nested txn may write the same key; two deletes may overlap
    await store.txn(TxnRequest(success=[TxnRequest(success=[PutRequest(b"a")], failure=[PutRequest(b"a")])]))
    await store.txn(TxnRequest(success=[DeleteRangeRequest(b"a", b"c"), DeleteRangeRequest(b"b")]))
    # the failure branch is checked as well
    with pytest.raises(errors.DuplicateKey):
        await store.txn(TxnRequest(failure=[PutRequest(b"z"), PutRequest(b"z")]))


async def test_too_many_ops(journal):
    from ultraplane.store import Store

    s = Store(journal, max_txn_ops=2)
    await s.open()
    with pytest.raises(errors.TooManyOps):
        await s.txn(TxnRequest(success=[PutRequest(b"a"), PutRequest(b"b"), PutRequest(b"c")]))
    await s.txn(TxnRequest(success=[PutRequest(b"a"), PutRequest(b"b")]))
    await s.close()


async def test_txn_put_checks_before_any_write(store):
    with pytest.raises(errors.LeaseNotFound):
        await store.txn(TxnRequest(success=[PutRequest(b"a", b"1"), PutRequest(b"b", lease=77)]))
    with pytest.raises(errors.KeyNotFound):
        await store.txn(TxnRequest(success=[PutRequest(b"a", b"1"), PutRequest(b"b", ignore_value=True)]))
    assert store.revision == 1 and store.range(RangeRequest(b"a")).kvs == []


async def test_txn_range_at_revision_inside_write_txn(store):
    await store.put(PutRequest(b"a", b"1"))
    r = await store.txn(
        TxnRequest(
            success=[
                PutRequest(b"a", b"2"),
                RangeRequest(b"a", revision=2),
                RangeRequest(b"a", b"b", revision=2),
            ]
        )
    )
    assert r.responses[1].kvs[0].value == b"1"
    assert r.responses[2].kvs[0].value == b"1"
    with pytest.raises(errors.FutureRevision):
        await store.txn(TxnRequest(success=[RangeRequest(b"a", revision=50)]))


async def test_limited_pages_match_full_ranges(store):
    await fill(store, [b"k%02d" % i for i in range(30)])
    await store.delete_range(DeleteRangeRequest(b"k05", b"k10"))
    for order in (SortOrder.NONE, SortOrder.ASCEND, SortOrder.DESCEND):
        for limit in (1, 7, 25, 100):
            for start, end in ((b"k", b"l"), (b"k03", b"k12"), (b"k20", b"\0"), (b"k5", b"k1")):
                page = store.range(RangeRequest(start, end, limit=limit, sort_order=order, keys_only=True))
                full = store.range(RangeRequest(start, end, sort_order=order))
                assert keys(page) == keys(full)[:limit]
                assert page.count == full.count and page.more == (full.count > limit)


async def test_limit_without_order_sorts_only_the_first_page(store):
    # etcd quirk: order NONE + non-KEY target + limit sorts the first limit+1 keys only
    for k, v in ((b"a", b"5"), (b"b", b"9"), (b"c", b"4"), (b"d", b"1"), (b"e", b"0")):
        await store.put(PutRequest(k, v))
    r = store.range(RangeRequest(b"a", b"z", limit=3, sort_target=SortTarget.VALUE))
    assert keys(r) == [b"d", b"c", b"a"] and r.more and r.count == 5
    r = store.range(
        RangeRequest(b"a", b"z", limit=3, sort_target=SortTarget.VALUE, sort_order=SortOrder.ASCEND)
    )
    assert keys(r) == [b"e", b"d", b"c"]
