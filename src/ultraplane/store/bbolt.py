"""Reading and writing bbolt (bolt) database files, the storage format of etcd's backend.

Only what a whole-file snapshot needs: ``write_db`` lays out a fresh file from nested buckets,
``read_db`` reads every bucket of an existing one (written by bbolt or by ``write_db``).

The layout, as bbolt 1.3 defines it (all integers little-endian, the byte order of the
machines etcd runs on):

  page header (16 bytes)    id:u64 flags:u16 count:u16 overflow:u32
                            flags: 0x01 branch, 0x02 leaf, 0x04 meta, 0x10 freelist; a node bigger
                            than one page continues in ``overflow`` more contiguous pages
  meta (pages 0 and 1)      magic:u32=0xED0CDAED version:u32=2 page_size:u32 flags:u32
                            root bucket (root:u64 sequence:u64) freelist:u64 pgid:u64 txid:u64
                            checksum:u64 = FNV-64a of the 56 bytes before it; the valid meta
                            with the higher txid is the current one; pgid is the high water mark
  freelist page             count ids (count 0xFFFF: the real count is the first u64)
  leaf element (16 bytes)   flags:u32 pos:u32 ksize:u32 vsize:u32; pos counts from the element
                            itself; flags 0x01 = the value is a bucket
  branch element (16 bytes) pos:u32 ksize:u32 pgid:u64; the key is the child's first key
  bucket value              root:u64 sequence:u64; root 0 = an inline bucket whose leaf page
                            (header id 0) follows in the value itself
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

MAGIC = 0xED0CDAED
VERSION = 2
DEFAULT_PAGE_SIZE = 4096

BRANCH_PAGE = 0x01
LEAF_PAGE = 0x02
META_PAGE = 0x04
FREELIST_PAGE = 0x10
BUCKET_LEAF_FLAG = 0x01

PAGE_HEADER = struct.Struct("<QHHI")
LEAF_ELEMENT = struct.Struct("<IIII")
BRANCH_ELEMENT = struct.Struct("<IIQ")
BUCKET_HEADER = struct.Struct("<QQ")
META = struct.Struct("<IIIIQQQQQ")  # everything the checksum covers
U64 = struct.Struct("<Q")
FREELIST_COUNT_OVERFLOW = 0xFFFF
NO_FREELIST = 0xFFFFFFFFFFFFFFFF

_FNV64_OFFSET = 0xCBF29CE484222325
_FNV64_PRIME = 0x100000001B3
_MASK64 = 0xFFFFFFFFFFFFFFFF


class BoltError(ValueError):
    """A file that is not a bbolt database, or a damaged one."""


def fnv64a(data: bytes) -> int:
    h = _FNV64_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV64_PRIME) & _MASK64
    return h


@dataclass
class Bucket:
    """One bucket: its key/value pairs and nested buckets. ``items`` must be sorted by key
    (bbolt's byte order) when writing; reading fills it in that order."""

    items: list[tuple[bytes, bytes]] = field(default_factory=list)
    buckets: dict[bytes, Bucket] = field(default_factory=dict)
    sequence: int = 0

    def get(self, key: bytes) -> bytes | None:
        for k, v in self.items:
            if k == key:
                return v
        return None


# ============================================================================ writing


class _PageWriter:
    """Hands out page ids in file order and collects the page bytes."""

    def __init__(self, page_size: int, first_pgid: int) -> None:
        self.page_size = page_size
        self.next_pgid = first_pgid
        self.chunks: list[bytes] = []

    def add(self, flags: int, count: int, body: bytes) -> int:
        pgid = self.next_pgid
        size = PAGE_HEADER.size + len(body)
        npages = -(-size // self.page_size)
        raw = PAGE_HEADER.pack(pgid, flags, count, npages - 1) + body
        self.chunks.append(raw + b"\x00" * (npages * self.page_size - len(raw)))
        self.next_pgid += npages
        return pgid


def _leaf_body(elements: list[tuple[int, bytes, bytes]]) -> bytes:
    heads = bytearray()
    data = bytearray()
    n = len(elements)
    for i, (flags, key, value) in enumerate(elements):
        # the distance from this element to its key: the rest of the element array plus data so far
        pos = (n - i) * LEAF_ELEMENT.size + len(data)
        heads += LEAF_ELEMENT.pack(flags, pos, len(key), len(value))
        data += key
        data += value
    return bytes(heads + data)


def _branch_body(children: list[tuple[bytes, int]]) -> bytes:
    heads = bytearray()
    data = bytearray()
    n = len(children)
    for i, (key, pgid) in enumerate(children):
        pos = (n - i) * BRANCH_ELEMENT.size + len(data)
        heads += BRANCH_ELEMENT.pack(pos, len(key), pgid)
        data += key
    return bytes(heads + data)


def _split(sizes: list[int], budget: int) -> Iterator[tuple[int, int]]:
    """Consecutive runs of elements whose sizes fit ``budget`` (a run holds at least one)."""
    start = 0
    used = 0
    for i, size in enumerate(sizes):
        if i > start and used + size > budget:
            yield start, i
            start, used = i, 0
        used += size
    if start < len(sizes):
        yield start, len(sizes)


def _write_tree(pages: _PageWriter, elements: list[tuple[int, bytes, bytes]]) -> int:
    """Leaf pages for the elements, then branch levels up to one root; returns the root pgid."""
    budget = pages.page_size - PAGE_HEADER.size
    sizes = [LEAF_ELEMENT.size + len(k) + len(v) for _, k, v in elements]
    level: list[tuple[bytes, int]] = []
    for lo, hi in _split(sizes, budget) if elements else [(0, 0)]:
        chunk = elements[lo:hi]
        pgid = pages.add(LEAF_PAGE, len(chunk), _leaf_body(chunk))
        level.append((chunk[0][1] if chunk else b"", pgid))
    while len(level) > 1:
        sizes = [BRANCH_ELEMENT.size + len(k) for k, _ in level]
        upper = []
        for lo, hi in _split(sizes, budget):
            chunk = level[lo:hi]
            upper.append((chunk[0][0], pages.add(BRANCH_PAGE, len(chunk), _branch_body(chunk))))
        level = upper
    return level[0][1]


def _bucket_value(pages: _PageWriter, bucket: Bucket, max_inline: int) -> bytes:
    elements: list[tuple[int, bytes, bytes]] = [(0, k, v) for k, v in bucket.items]
    for name, child in bucket.buckets.items():
        elements.append((BUCKET_LEAF_FLAG, name, _bucket_value(pages, child, max_inline)))
    elements.sort(key=lambda e: e[1])
    inline_size = PAGE_HEADER.size + sum(LEAF_ELEMENT.size + len(k) + len(v) for _, k, v in elements)
    if not bucket.buckets and inline_size <= max_inline:
        # bbolt keeps a small bucket without nested buckets inside its parent's leaf
        page = PAGE_HEADER.pack(0, LEAF_PAGE, len(elements), 0) + _leaf_body(elements)
        return BUCKET_HEADER.pack(0, bucket.sequence) + page
    return BUCKET_HEADER.pack(_write_tree(pages, elements), bucket.sequence)


def _meta_page(pgid: int, page_size: int, root: int, freelist: int, high_water: int, txid: int) -> bytes:
    meta = META.pack(MAGIC, VERSION, page_size, 0, root, 0, freelist, high_water, txid)
    raw = PAGE_HEADER.pack(pgid, META_PAGE, 0, 0) + meta + U64.pack(fnv64a(meta))
    return raw + b"\x00" * (page_size - len(raw))


def write_db(root: dict[bytes, Bucket], *, page_size: int = DEFAULT_PAGE_SIZE, txid: int = 2) -> bytes:
    """A complete bbolt file holding the top-level buckets ``root``: two metas, an empty
    freelist, then the bucket trees (children before parents)."""
    pages = _PageWriter(page_size, first_pgid=3)
    elements = [(BUCKET_LEAF_FLAG, name, _bucket_value(pages, b, page_size // 4)) for name, b in root.items()]
    elements.sort(key=lambda e: e[1])
    root_pgid = _write_tree(pages, elements)
    high_water = pages.next_pgid
    freelist = PAGE_HEADER.pack(2, FREELIST_PAGE, 0, 0)
    return b"".join([
        _meta_page(0, page_size, root_pgid, 2, high_water, txid - 1),
        _meta_page(1, page_size, root_pgid, 2, high_water, txid),
        freelist + b"\x00" * (page_size - len(freelist)),
        *pages.chunks,
    ])


# ============================================================================ reading


@dataclass(frozen=True)
class Meta:
    page_size: int
    root: int
    freelist: int
    high_water: int
    txid: int


def _read_meta(data: bytes, offset: int) -> Meta | None:
    if len(data) < offset + PAGE_HEADER.size + META.size + U64.size:
        return None
    start = offset + PAGE_HEADER.size
    raw = data[start : start + META.size]
    magic, version, page_size, _flags, root, _seq, freelist, high_water, txid = META.unpack(raw)
    (checksum,) = U64.unpack_from(data, start + META.size)
    if magic != MAGIC or version != VERSION or checksum != fnv64a(raw):
        return None
    return Meta(page_size, root, freelist, high_water, txid)


def read_meta(data: bytes) -> Meta:
    """The current meta: the valid one of pages 0 and 1 with the higher txid."""
    first = _read_meta(data, 0)
    # with page 0 damaged, bbolt looks for page 1 one default-sized page further
    second = _read_meta(data, first.page_size if first is not None else DEFAULT_PAGE_SIZE)
    metas = [m for m in (first, second) if m is not None]
    if not metas:
        raise BoltError("not a bbolt database (no valid meta page)")
    return max(metas, key=lambda m: m.txid)


class _Reader:
    def __init__(self, data: bytes, meta: Meta) -> None:
        self.data = data
        self.meta = meta
        self.view = memoryview(data)

    def page_offset(self, pgid: int) -> int:
        if pgid >= self.meta.high_water:
            raise BoltError(f"page {pgid} is above the high water mark {self.meta.high_water}")
        offset = pgid * self.meta.page_size
        if offset + PAGE_HEADER.size > len(self.data):
            raise BoltError(f"page {pgid} lies beyond the end of the file")
        return offset

    def walk(self, buf: bytes | memoryview, offset: int) -> Iterator[tuple[int, bytes, bytes]]:
        """Every leaf element under the page at ``offset`` of ``buf``, in key order."""
        _id, flags, count, _overflow = PAGE_HEADER.unpack_from(buf, offset)
        base = offset + PAGE_HEADER.size
        if flags == LEAF_PAGE:
            for i in range(count):
                at = base + i * LEAF_ELEMENT.size
                eflags, pos, ksize, vsize = LEAF_ELEMENT.unpack_from(buf, at)
                kstart = at + pos
                yield eflags, bytes(buf[kstart : kstart + ksize]), bytes(
                    buf[kstart + ksize : kstart + ksize + vsize]
                )
        elif flags == BRANCH_PAGE:
            for i in range(count):
                _pos, _ksize, child = BRANCH_ELEMENT.unpack_from(buf, base + i * BRANCH_ELEMENT.size)
                yield from self.walk(self.view, self.page_offset(child))
        else:
            raise BoltError(f"unexpected page type {flags:#x} in a bucket")

    def bucket(self, value: bytes) -> Bucket:
        if len(value) < BUCKET_HEADER.size:
            raise BoltError("bucket header is truncated")
        root, sequence = BUCKET_HEADER.unpack_from(value, 0)
        out = Bucket(sequence=sequence)
        if root == 0:
            elements = self.walk(value, BUCKET_HEADER.size)
        else:
            elements = self.walk(self.view, self.page_offset(root))
        for eflags, key, val in elements:
            if eflags & BUCKET_LEAF_FLAG:
                out.buckets[key] = self.bucket(val)
            else:
                out.items.append((key, val))
        return out


def read_db(data: bytes) -> dict[bytes, Bucket]:
    """Every top-level bucket of a bbolt file, with all its contents."""
    meta = read_meta(data)
    reader = _Reader(data, meta)
    try:
        top = reader.bucket(BUCKET_HEADER.pack(meta.root, 0))
    except struct.error as exc:
        raise BoltError(f"damaged bbolt database: {exc}") from None
    return top.buckets


def is_bolt(data: bytes) -> bool:
    """Whether ``data`` starts with a bbolt meta page."""
    return _read_meta(data, 0) is not None
