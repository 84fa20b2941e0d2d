"""The store's state through etcd's database layout and back, in-process.

(Against real etcd and etcdctl: tests/diff/test_diff_snapshot.py.)"""

from __future__ import annotations

import json

import pytest

from tests.store.conftest import MemJournal
from ultraplane.store import Store
from ultraplane.store.auth import AuthStore, ScryptParams
from ultraplane.store.errors import Compacted, FutureRevision
from ultraplane.store.etcdsnapshot import (
    EtcdSnapshotError,
    Member,
    auth_dump,
    export_db,
    native_snapshot,
    parse_db,
    retained_versions,
    revision_bytes,
)
from ultraplane.store.types import DeleteRangeRequest, PutRequest, RangeRequest, TxnRequest

MEMBER = Member(0xABC, "m1", ["http://127.0.0.1:2380"], ["http://127.0.0.1:2379"])


async def _history() -> tuple[Store, AuthStore, MemJournal]:
    journal = MemJournal()
    store = Store(journal)
    auth = AuthStore(store, scrypt_params=ScryptParams(n=2**4))
    store.attach(auth)
    await store.open()
    await store.put(PutRequest(b"/a", b"1"))
    # one revision, several keys: sub-revisions 0..3 (the order of the ops, not of the keys)
    await store.txn(TxnRequest(success=[PutRequest(b"/z", b"z"), PutRequest(b"/m", b"m"),
                                        PutRequest(b"/b", b"b"), DeleteRangeRequest(b"/a")]))
    lease, _ = await store.lease_grant(100, 0x51)
    await store.put(PutRequest(b"/leased", b"l", lease=lease))
    await store.put(PutRequest(b"/m", b"m2"))
    await store.compact(store.revision, physical=True)
    await store.put(PutRequest(b"/after", b"x"))
    await auth.role_add("reader")
    await auth.user_add("alice", "pw")
    await auth.user_grant_role("alice", "reader")
    return store, auth, journal


def _ranges(store: Store) -> dict[int, list]:
    return {
        rev: [(kv.key, kv.create_revision, kv.mod_revision, kv.version, kv.value, kv.lease)
              for kv in store.range(RangeRequest(b"\0", b"\0", revision=rev)).kvs]
        for rev in range(store.compact_revision, store.revision + 1)
    }


def _hashes(store: Store) -> dict[int, int]:
    return {rev: store.hash_kv(rev)[0] for rev in range(store.compact_revision + 1, store.revision + 1)}


async def _restored(chunks: list[bytes]) -> Store:
    journal = MemJournal()
    journal.snapshot = b"".join(chunks)
    store = Store(journal)
    store.attach(AuthStore(store))
    await store.open()
    return store


async def test_layout_of_the_key_bucket() -> None:
    store, auth, _ = await _history()
    versions = retained_versions(store)
    # the txn's puts at revision 3 keep their op order as sub-revisions, even behind the compaction
    at3 = [(v.sub, v.kv.key) for v in versions if v.main == 3]
    assert at3 == [(0, b"/z"), (2, b"/b")]  # /m (sub 1) was overwritten before the compaction
    buckets = parse_db(export_db(store, auth, MEMBER))
    assert [(v.main, v.sub, v.kv) for v in buckets.versions] == [(v.main, v.sub, v.kv) for v in versions]
    assert revision_bytes(3, 1) == b"\0\0\0\0\0\0\0\x03_\0\0\0\0\0\0\0\x01"
    assert revision_bytes(3, 3, tombstone=True).endswith(b"t")
    assert buckets.compact_revision == 5 and buckets.revision == store.revision
    assert buckets.leases == [(0x51, 100)]
    assert json.loads(auth_dump(buckets)) == json.loads(auth.dump())
    await store.close()


async def test_hash_kv_rules() -> None:
    store, _, _ = await _history()
    with pytest.raises(Compacted):
        store.hash_kv(store.compact_revision)  # etcd refuses the compaction revision itself
    with pytest.raises(FutureRevision):
        store.hash_kv(store.revision + 1)
    assert store.hash_kv(0) == (store.hash_kv(store.revision)[0], 5, store.revision)
    await store.close()


async def test_restore_keeps_reads_hashes_leases_and_auth_and_survives_restart() -> None:
    store, auth, _ = await _history()
    data = export_db(store, auth, MEMBER)
    restored = await _restored(list(native_snapshot(parse_db(data))))
    try:
        assert _ranges(restored) == _ranges(store)
        assert _hashes(restored) == _hashes(store)
        assert restored.leases() == [0x51]
        assert restored.lease_time_to_live(0x51, keys=True).keys == [b"/leased"]
        assert restored._machines["auth"].user_get("alice") == ["reader"]
        # the sub-revisions behind the compaction are part of the store's own snapshot too
        await restored.take_snapshot()
        again = await _restored([restored._journal.snapshot])
        assert _hashes(again) == _hashes(store)
        await again.close()
    finally:
        await restored.close()
        await store.close()


async def test_sub_revisions_survive_journal_replay() -> None:
    store, _, journal = await _history()
    expected = _hashes(store)
    await store.close()
    reopened = Store(journal)
    reopened.attach(AuthStore(reopened))
    await reopened.open()
    assert _hashes(reopened) == expected
    await reopened.close()


def test_not_an_etcd_database() -> None:
    from ultraplane.store import bbolt

    with pytest.raises(EtcdSnapshotError, match="no key or meta bucket"):
        parse_db(bbolt.write_db({b"other": bbolt.Bucket()}))
    with pytest.raises(EtcdSnapshotError, match="not an etcd revision"):
        parse_db(bbolt.write_db({b"key": bbolt.Bucket([(b"nope", b"")]), b"meta": bbolt.Bucket()}))
