"""The bbolt writer and reader: layouts that exercise every page kind read back exactly.

(That real bbolt accepts the files, and that we read real bbolt's, is tested against etcd and
etcdctl in tests/diff/test_diff_snapshot.py.)"""

from __future__ import annotations

import struct

import pytest

from ultraplane.store import bbolt


def _pages(data: bytes, page_size: int = bbolt.DEFAULT_PAGE_SIZE) -> list[tuple[int, int, int, int]]:
    return [bbolt.PAGE_HEADER.unpack_from(data, off) for off in range(0, len(data), page_size)]


def test_fnv64a_known_values() -> None:
    # the FNV-1a 64-bit test vectors (offset basis for "", and "a")
    assert bbolt.fnv64a(b"") == 0xCBF29CE484222325
    assert bbolt.fnv64a(b"a") == 0xAF63DC4C8601EC8C


def test_round_trip_of_small_large_and_nested_buckets() -> None:
    many = [(b"k%06d" % i, b"v" * (i % 50)) for i in range(5000)]  # leaf pages under branch pages
    huge = [(b"big", b"x" * 20_000), (b"small", b"y")]  # one value needing overflow pages
    nested = bbolt.Bucket([(b"a", b"1")], {b"child": bbolt.Bucket([(b"c", b"2")], sequence=7)}, sequence=3)
    root = {
        b"many": bbolt.Bucket(many),
        b"huge": bbolt.Bucket(huge),
        b"tiny": bbolt.Bucket([(b"only", b"one")], sequence=42),
        b"empty": bbolt.Bucket(),
        b"nested": nested,
    }
    data = bbolt.write_db(root)
    assert len(data) % bbolt.DEFAULT_PAGE_SIZE == 0
    back = bbolt.read_db(data)
    assert sorted(back) == sorted(root)
    assert back[b"many"].items == many
    assert back[b"huge"].items == huge
    assert back[b"tiny"].items == [(b"only", b"one")] and back[b"tiny"].sequence == 42
    assert back[b"empty"].items == [] and back[b"empty"].buckets == {}
    assert back[b"nested"].sequence == 3 and back[b"nested"].items == [(b"a", b"1")]
    assert back[b"nested"].buckets[b"child"] == bbolt.Bucket([(b"c", b"2")], sequence=7)

    pages = _pages(data)
    kinds = {flags for _, flags, _, _ in pages}
    assert {bbolt.META_PAGE, bbolt.FREELIST_PAGE, bbolt.LEAF_PAGE, bbolt.BRANCH_PAGE} <= kinds
    assert any(overflow > 0 for _, flags, _, overflow in pages if flags == bbolt.LEAF_PAGE)
    meta = bbolt.read_meta(data)
    assert meta.page_size == 4096 and meta.freelist == 2
    assert meta.high_water * meta.page_size == len(data)


def test_small_buckets_are_inline_and_large_ones_are_not() -> None:
    data = bbolt.write_db({b"small": bbolt.Bucket([(b"k", b"v")]), b"large": bbolt.Bucket([(b"k", b"v" * 2000)])})
    meta = bbolt.read_meta(data)
    root_page = meta.root * meta.page_size
    _, flags, count, _ = bbolt.PAGE_HEADER.unpack_from(data, root_page)
    assert flags == bbolt.LEAF_PAGE and count == 2
    roots = {}
    for i in range(count):
        at = root_page + bbolt.PAGE_HEADER.size + i * bbolt.LEAF_ELEMENT.size
        eflags, pos, ksize, vsize = bbolt.LEAF_ELEMENT.unpack_from(data, at)
        assert eflags == bbolt.BUCKET_LEAF_FLAG
        key = data[at + pos : at + pos + ksize]
        roots[key] = bbolt.BUCKET_HEADER.unpack_from(data, at + pos + ksize)[0]
    assert roots[b"small"] == 0  # inline: the bucket's page lives inside the parent's value
    assert roots[b"large"] > 2


def test_the_newer_valid_meta_wins_and_a_damaged_one_is_skipped() -> None:
    data = bytearray(bbolt.write_db({b"b": bbolt.Bucket([(b"k", b"v")])}))
    assert bbolt.read_meta(bytes(data)).txid == 2  # page 1 holds the newer transaction
    # damage meta page 1: page 0 (the older one) is used instead
    data[4096 + 16 + 20] ^= 0xFF
    assert bbolt.read_meta(bytes(data)).txid == 1
    assert bbolt.read_db(bytes(data))[b"b"].items == [(b"k", b"v")]
    data[16 + 20] ^= 0xFF
    with pytest.raises(bbolt.BoltError, match="no valid meta page"):
        bbolt.read_db(bytes(data))


def test_not_a_database() -> None:
    assert not bbolt.is_bolt(b"\x00" * 8192)
    with pytest.raises(bbolt.BoltError):
        bbolt.read_db(b"hello" * 2000)
    # a page id beyond the high water mark is refused rather than read
    data = bytearray(bbolt.write_db({b"b": bbolt.Bucket()}))
    meta_at = 4096 + 16
    fields = list(bbolt.META.unpack_from(data, meta_at))
    fields[4] = 999  # root bucket page
    raw = bbolt.META.pack(*fields)
    data[meta_at : meta_at + len(raw)] = raw
    data[meta_at + len(raw) : meta_at + len(raw) + 8] = struct.pack("<Q", bbolt.fnv64a(raw))
    with pytest.raises(bbolt.BoltError, match="above the high water mark"):
        bbolt.read_db(bytes(data))
