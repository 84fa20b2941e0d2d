"""The store's journal record and snapshot encodings.

Records describe EFFECTS, not requests: a put record carries the value and lease that
were actually written (after ignore_value / ignore_lease were resolved), so replay
never re-validates anything and rebuilds exactly the state that was acknowledged.

Record layout: one tag byte, then little-endian fixed-width fields and raw bytes.

  P  put           rev:q lease:q klen:I key value
  T  multi-op      rev:q n:I  n x (kind:B lease:q klen:I vlen:I key value)   kind 0 put, 1 delete
  G  lease grant   id:q ttl:q
  R  lease revoke  id:q rev:q n:I  n x (klen:I key)     (the attached keys it deleted, at rev)
  C  compaction    rev:q
  A  alarm         on:B name(utf-8)
  M  machine op    nlen:H name op

Snapshot: a sequence of frames ``type:B len:I payload``; the final ``Z`` frame carries the
crc32 of everything before it.

  H  header    rev:q compact_rev:q revlog_start:q  nleases:I (id:q ttl:q)*
               nalarms:I (len:H name)*  nmachines:I (nlen:H name dlen:I dump)*
  B  base kvs  raw kvs (versions older than the compact revision that are still retained)
  V  revisions (rev:q n:I raw-kv*)*   every revision from revlog_start to rev, in order
  S  sub-revisions (rev:q n:I (sub:I klen:I key)*)*   for revisions before revlog_start that wrote
               several keys still retained: each key's place in its revision (etcd's sub-revision);
               optional (older snapshots lack it), readers ignore frame types they do not know
  Z  end       crc32:I

raw kv: klen:I vlen:I create:q mod:q version:q lease:q key value  (version 0 = tombstone)
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from ultraplane.store.types import KeyValue

PUT_HEAD = struct.Struct("<qqI")
TXN_HEAD = struct.Struct("<qI")
TXN_OP = struct.Struct("<BqII")
GRANT = struct.Struct("<qq")
REVOKE_HEAD = struct.Struct("<qqI")
U32 = struct.Struct("<I")
U16 = struct.Struct("<H")
I64 = struct.Struct("<q")
RAW_KV = struct.Struct("<IIqqqq")
FRAME = struct.Struct("<BI")
SNAP_HEAD = struct.Struct("<qqqI")
SUB_ENTRY = struct.Struct("<II")

OP_PUT = 0
OP_DELETE = 1

SNAPSHOT_CHUNK_BYTES = 1 << 20


class SnapshotError(ValueError):
    """A snapshot that is truncated, corrupt or not ours."""


# ---------------------------------------------------------------- records


def encode_put(rev: int, key: bytes, value: bytes, lease: int) -> bytes:
    return b"P" + PUT_HEAD.pack(rev, lease, len(key)) + key + value


def encode_ops(rev: int, ops: Iterable[KeyValue]) -> bytes:
    """A multi-op revision; each KeyValue is the version written (version 0 = delete)."""
    parts = [b"T", b""]
    n = 0
    for kv in ops:
        n += 1
        if kv.version:
            parts.append(TXN_OP.pack(OP_PUT, kv.lease, len(kv.key), len(kv.value)))
            parts.append(kv.key)
            parts.append(kv.value)
        else:
            parts.append(TXN_OP.pack(OP_DELETE, 0, len(kv.key), 0))
            parts.append(kv.key)
    parts[1] = TXN_HEAD.pack(rev, n)
    return b"".join(parts)


def decode_ops(rec: bytes) -> tuple[int, list[tuple[int, bytes, bytes, int]]]:
    rev, n = TXN_HEAD.unpack_from(rec, 1)
    pos = 1 + TXN_HEAD.size
    ops = []
    for _ in range(n):
        kind, lease, klen, vlen = TXN_OP.unpack_from(rec, pos)
        pos += TXN_OP.size
        key = rec[pos : pos + klen]
        pos += klen
        value = rec[pos : pos + vlen]
        pos += vlen
        ops.append((kind, key, value, lease))
    return rev, ops


def decode_put(rec: bytes) -> tuple[int, bytes, bytes, int]:
    rev, lease, klen = PUT_HEAD.unpack_from(rec, 1)
    start = 1 + PUT_HEAD.size
    return rev, rec[start : start + klen], rec[start + klen :], lease


def encode_grant(lease_id: int, ttl: int) -> bytes:
    return b"G" + GRANT.pack(lease_id, ttl)


def encode_revoke(lease_id: int, rev: int, keys: list[bytes]) -> bytes:
    parts = [b"R", REVOKE_HEAD.pack(lease_id, rev, len(keys))]
    for key in keys:
        parts.append(U32.pack(len(key)))
        parts.append(key)
    return b"".join(parts)


def decode_revoke(rec: bytes) -> tuple[int, int, list[bytes]]:
    lease_id, rev, n = REVOKE_HEAD.unpack_from(rec, 1)
    pos = 1 + REVOKE_HEAD.size
    keys = []
    for _ in range(n):
        (klen,) = U32.unpack_from(rec, pos)
        pos += 4
        keys.append(rec[pos : pos + klen])
        pos += klen
    return lease_id, rev, keys


def encode_compact(rev: int) -> bytes:
    return b"C" + I64.pack(rev)


def encode_alarm(on: bool, name: str) -> bytes:
    return b"A" + (b"\x01" if on else b"\x00") + name.encode()


def encode_machine(name: str, op: bytes) -> bytes:
    raw = name.encode()
    return b"M" + U16.pack(len(raw)) + raw + op


def decode_machine(rec: bytes) -> tuple[str, bytes]:
    (nlen,) = U16.unpack_from(rec, 1)
    return rec[3 : 3 + nlen].decode(), rec[3 + nlen :]


# ---------------------------------------------------------------- snapshots


def pack_raw_kv(out: bytearray, kv: KeyValue) -> None:
    out += RAW_KV.pack(len(kv.key), len(kv.value), kv.create_revision, kv.mod_revision, kv.version, kv.lease)
    out += kv.key
    out += kv.value


def unpack_raw_kv(buf: bytes, pos: int) -> tuple[KeyValue, int]:
    klen, vlen, create, mod, version, lease = RAW_KV.unpack_from(buf, pos)
    pos += RAW_KV.size
    key = buf[pos : pos + klen]
    pos += klen
    value = buf[pos : pos + vlen]
    return KeyValue(key, create, mod, version, value, lease), pos + vlen


def encode_header(
    rev: int,
    compact_rev: int,
    revlog_start: int,
    leases: list[tuple[int, int]],
    alarms: list[str],
    machines: list[tuple[str, bytes]],
) -> bytes:
    out = bytearray(SNAP_HEAD.pack(rev, compact_rev, revlog_start, len(leases)))
    for lease_id, ttl in leases:
        out += GRANT.pack(lease_id, ttl)
    out += U32.pack(len(alarms))
    for name in alarms:
        raw = name.encode()
        out += U16.pack(len(raw)) + raw
    out += U32.pack(len(machines))
    for name, dump in machines:
        raw = name.encode()
        out += U16.pack(len(raw)) + raw + U32.pack(len(dump)) + dump
    return bytes(out)


def decode_header(
    buf: bytes,
) -> tuple[int, int, int, list[tuple[int, int]], list[str], list[tuple[str, bytes]]]:
    rev, compact_rev, revlog_start, nleases = SNAP_HEAD.unpack_from(buf, 0)
    pos = SNAP_HEAD.size
    leases = []
    for _ in range(nleases):
        leases.append(GRANT.unpack_from(buf, pos))
        pos += GRANT.size
    (nalarms,) = U32.unpack_from(buf, pos)
    pos += 4
    alarms = []
    for _ in range(nalarms):
        (n,) = U16.unpack_from(buf, pos)
        alarms.append(buf[pos + 2 : pos + 2 + n].decode())
        pos += 2 + n
    (nmachines,) = U32.unpack_from(buf, pos)
    pos += 4
    machines = []
    for _ in range(nmachines):
        (n,) = U16.unpack_from(buf, pos)
        name = buf[pos + 2 : pos + 2 + n].decode()
        pos += 2 + n
        (dlen,) = U32.unpack_from(buf, pos)
        pos += 4
        machines.append((name, buf[pos : pos + dlen]))
        pos += dlen
    return rev, compact_rev, revlog_start, leases, alarms, machines


def encode_subs(subs: dict[int, dict[bytes, int]]) -> bytes:
    out = bytearray()
    for rev, keys in sorted(subs.items()):
        out += TXN_HEAD.pack(rev, len(keys))
        for key, sub in sorted(keys.items(), key=lambda item: item[1]):
            out += SUB_ENTRY.pack(sub, len(key))
            out += key
    return bytes(out)


def decode_subs(buf: bytes) -> dict[int, dict[bytes, int]]:
    subs: dict[int, dict[bytes, int]] = {}
    pos = 0
    while pos < len(buf):
        rev, n = TXN_HEAD.unpack_from(buf, pos)
        pos += TXN_HEAD.size
        keys = subs.setdefault(rev, {})
        for _ in range(n):
            sub, klen = SUB_ENTRY.unpack_from(buf, pos)
            pos += SUB_ENTRY.size
            keys[buf[pos : pos + klen]] = sub
            pos += klen
    return subs


class FrameWriter:
    """Turns frames into ~1 MiB chunks and keeps the running crc32 for the end frame."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.crc = 0

    def frame(self, kind: bytes, payload: bytes | bytearray) -> bytes | None:
        head = FRAME.pack(kind[0], len(payload))
        self.crc = zlib.crc32(payload, zlib.crc32(head, self.crc))
        self.buf += head
        self.buf += payload
        if len(self.buf) >= SNAPSHOT_CHUNK_BYTES:
            return self.take()
        return None

    def take(self) -> bytes:
        out = bytes(self.buf)
        self.buf.clear()
        return out

    def finish(self) -> bytes:
        head = FRAME.pack(ord("Z"), 4)
        self.buf += head + U32.pack(self.crc)
        return self.take()


def read_frames(stream: BinaryIO) -> Iterator[tuple[bytes, bytes]]:
    """Yield (type, payload) for every frame; verify the closing crc32."""
    crc = 0
    while True:
        head = stream.read(FRAME.size)
        if len(head) < FRAME.size:
            raise SnapshotError("snapshot truncated")
        kind, length = FRAME.unpack(head)
        payload = stream.read(length)
        if len(payload) < length:
            raise SnapshotError("snapshot truncated")
        if kind == ord("Z"):
            if U32.unpack(payload)[0] != crc:
                raise SnapshotError("snapshot checksum mismatch")
            return
        crc = zlib.crc32(payload, zlib.crc32(head, crc))
        yield bytes((kind,)), payload
