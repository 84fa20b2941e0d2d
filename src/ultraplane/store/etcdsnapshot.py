"""etcd 3.4's own snapshot format: the bbolt database of its backend.

Out: ``export_db`` lays the store's state out as etcd's backend does, so that ``etcdctl snapshot
status`` / ``snapshot restore`` accept it and a real etcd starts on the restored directory.
In: ``import_db`` reads such a database (from ``etcdctl snapshot save`` against a real etcd) into
the store's own snapshot format, which ``ultraplane store --restore`` seeds a data dir with.
``hash_kv`` is etcd's HashKV over the same key bucket layout.

etcd's buckets (mvcc/kvstore.go, lease/lessor.go, auth/store.go, etcdserver/api/membership,
etcdserver/api/v3alarm):
  key              revision bytes -> mvccpb.KeyValue; revision bytes are main:u64be '_' sub:u64be,
                   plus 't' for a tombstone (whose value is a KeyValue holding only the key)
  meta             consistent_index -> u64be; scheduledCompactRev / finishedCompactRev -> revision bytes
  lease            id:i64be -> leasepb.Lease{ID=1, TTL=2, RemainingTTL=3}
  auth             authEnabled -> 0x00/0x01; authRevision -> u64be
  authUsers        name -> authpb.User{name=1, password=2 (bcrypt), roles=3, options=4{no_password=1}}
  authRoles        name -> authpb.Role{name=1, keyPermission=2{permType=1, key=2, range_end=3}}
  members          id in hex -> member JSON;  members_removed  id in hex -> "removed"
  cluster          clusterVersion -> "3.4.0"
  alarm            etcdserverpb.AlarmMember{memberID=1, alarm=2} -> empty

A version's sub-revision (its place within its revision's changes) comes from the store's
revision log, or for versions older than the compaction point from the table the store keeps
of them (``Store._old_subs``); a store restored from a snapshot too old to carry that table
numbers such versions in key order.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from operator import attrgetter, itemgetter
from typing import Any, NamedTuple

import crc32c

from ultraplane.store import bbolt, codec
from ultraplane.store.types import KeyValue

REV_BYTES = struct.Struct(">Q")
U64BE = struct.Struct(">Q")
I64BE = struct.Struct(">q")
CLUSTER_VERSION = b"3.4.0"
ALARM_TYPES = {1: "NOSPACE", 2: "CORRUPT"}
ALARM_NUMBERS = {name: number for number, name in ALARM_TYPES.items()}
_MASK64 = 0xFFFFFFFFFFFFFFFF
_mod_rev = attrgetter("mod_revision")
_main_sub = itemgetter(0, 1)


class EtcdSnapshotError(ValueError):
    """A bbolt file that is not an etcd backend, or one this reader cannot make sense of."""


# ============================================================================ protobuf, by hand
# Only the few small messages etcd stores; written as Go's gogoproto marshals them (fields in
# number order, zero values left out), so the bytes, and the hashes over them, are etcd's.


_SMALL_VARINTS = [bytes((i,)) for i in range(128)]


def _varint(value: int) -> bytes:
    if 0 <= value < 0x80:
        return _SMALL_VARINTS[value]
    value &= _MASK64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _pb_int(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value) if value else b""


def _pb_bytes(number: int, value: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(value)) + value if value else b""


def _pb_message(number: int, body: bytes) -> bytes:
    """A present sub-message, even an empty one."""
    return _varint(number << 3 | 2) + _varint(len(body)) + body


def _pb_fields(data: bytes) -> dict[int, list[Any]]:
    """Field number -> values (ints for varints, bytes for length-delimited)."""
    out: dict[int, list[Any]] = {}
    pos = 0
    end = len(data)

    def varint() -> int:
        nonlocal pos
        shift = result = 0
        while True:
            if pos >= end:
                raise EtcdSnapshotError("truncated protobuf varint")
            byte = data[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result
            shift += 7

    while pos < end:
        tag = varint()
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value: Any = varint()
        elif wire == 2:
            n = varint()
            value = data[pos : pos + n]
            pos += n
        elif wire == 1:
            value = data[pos : pos + 8]
            pos += 8
        elif wire == 5:
            value = data[pos : pos + 4]
            pos += 4
        else:
            raise EtcdSnapshotError(f"unsupported protobuf wire type {wire}")
        out.setdefault(number, []).append(value)
    return out


def _int64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _first(fields: dict[int, list[Any]], number: int, default: Any) -> Any:
    values = fields.get(number)
    return values[-1] if values else default


def encode_kv(kv: KeyValue) -> bytes:
    """mvccpb.KeyValue as etcd stores it; a tombstone is a KeyValue holding only its key."""
    key = kv.key
    out = [b"\x0a", _varint(len(key)), key]
    if kv.version:
        if kv.create_revision:
            out += (b"\x10", _varint(kv.create_revision))
        if kv.mod_revision:
            out += (b"\x18", _varint(kv.mod_revision))
        out += (b"\x20", _varint(kv.version))
        if kv.value:
            out += (b"\x2a", _varint(len(kv.value)), kv.value)
        if kv.lease:
            out += (b"\x30", _varint(kv.lease))
    return b"".join(out)


def revision_bytes(main: int, sub: int, tombstone: bool = False) -> bytes:
    raw = REV_BYTES.pack(main) + b"_" + REV_BYTES.pack(sub)
    return raw + b"t" if tombstone else raw


# ============================================================================ the store's versions


class Version(NamedTuple):
    """One retained version as etcd's key bucket holds it (tuple order = bucket order)."""

    main: int
    sub: int
    kv: KeyValue  # version 0: a tombstone

    @property
    def bucket_key(self) -> bytes:
        return revision_bytes(self.main, self.sub, not self.kv.version)


def retained_versions(store: Any, upto: int | None = None) -> list[Version]:
    """Every version the store keeps after its compaction (as etcd's key bucket would hold
    them), up to revision ``upto``, in bucket (revision) order."""
    compact = store._compact_rev
    base = store._revlog_base
    rev = store._rev if upto is None else upto
    subs: dict[tuple[int, bytes], int] = {}
    for r in range(base, rev + 1):
        for sub, kv in enumerate(store._revlog[r - base]):
            subs[(r, kv.key)] = sub
    older: dict[int, list[KeyValue]] = {}
    out: list[Version] = []
    for hist in store._hist.values():
        i = bisect_right(hist, compact, key=_mod_rev)
        start = i - 1 if i > 0 and hist[i - 1].version else i  # the version compaction keeps
        for kv in hist[start:]:
            mod = kv.mod_revision
            if mod > rev:
                break
            sub = subs.get((mod, kv.key))
            if sub is None:
                older.setdefault(mod, []).append(kv)
            else:
                out.append(Version(mod, sub, kv))
    old_subs = store._old_subs
    for mod, kvs in older.items():  # all before the change lists the store still holds
        known = old_subs.get(mod)
        for n, kv in enumerate(sorted(kvs, key=attrgetter("key"))):
            sub = known.get(kv.key) if known is not None else None
            out.append(Version(mod, n if sub is None else sub, kv))
    out.sort(key=_main_sub)
    return out


def hash_kv(store: Any, revision: int) -> int:
    """etcd 3.4's HashKV (mvcc/kvstore.go hashByRev): CRC-32C over "key", then the key and
    value of every key-bucket entry up to ``revision``; of the entries at or before the
    compaction revision only those the index would keep at ``revision`` (each key's newest
    version there, unless a tombstone) count, unless it would keep none."""
    versions = retained_versions(store, revision)
    newest: dict[bytes, Version] = {}
    for v in versions:
        newest[v.kv.key] = v
    keep = {(v.main, v.sub) for v in newest.values() if v.kv.version}
    compact = store._compact_rev
    crc = crc32c.crc32c(b"key")
    parts: list[bytes] = []
    pack = REV_BYTES.pack
    for main, sub, kv in versions:
        if main <= compact and keep and (main, sub) not in keep:
            continue
        parts += (pack(main), b"_", pack(sub), b"t" if not kv.version else b"", encode_kv(kv))
        if len(parts) >= 20_000:  # one CRC call per batch: the CRC of a concatenation chains
            crc = crc32c.crc32c(b"".join(parts), crc)
            parts.clear()
    return crc32c.crc32c(b"".join(parts), crc)


# ============================================================================ out: store -> bbolt


@dataclass
class Member:
    id: int
    name: str
    peer_urls: list[str]
    client_urls: list[str]


def _user_value(user: Any) -> bytes:
    password = b"" if user.password_hash is None else user.password_hash.encode()
    options = _pb_int(1, 1) if user.no_password else b""
    return b"".join((
        _pb_bytes(1, user.name.encode()), _pb_bytes(2, password),
        *(_pb_bytes(3, role.encode()) for role in user.roles),
        _pb_message(4, options),
    ))


def _role_value(name: str, perms: Iterable[Any]) -> bytes:
    parts = [_pb_bytes(1, name.encode())]
    for p in perms:
        body = _pb_int(1, int(p.perm_type)) + _pb_bytes(2, p.key) + _pb_bytes(3, p.range_end)
        parts.append(_pb_message(2, body))
    return b"".join(parts)


def export_db(store: Any, auth: Any | None, member: Member, consistent_index: int = 1) -> bytes:
    """The store's whole state as the bbolt database of an etcd 3.4 member."""
    return capture_db(store, auth, member, consistent_index)()


def capture_db(store: Any, auth: Any | None, member: Member, consistent_index: int = 1) -> Callable[[], bytes]:
    """Take the state now (one synchronous step, so it is consistent) and return the function
    that lays it out as etcd's database, which may run later, e.g. in a worker thread."""
    versions = retained_versions(store)
    compact_rev = store._compact_rev
    leases = [(lease.id, lease.ttl) for lease in store._leases.values()]
    alarms = [name for name in store._alarms if name in ALARM_NUMBERS]
    users: list[tuple[bytes, bytes]] = []
    roles: list[tuple[bytes, bytes]] = []
    auth_items: list[tuple[bytes, bytes]] = []
    if auth is not None:
        enabled, auth_revision = auth.status()
        auth_items = [(b"authEnabled", b"\x01" if enabled else b"\x00"), (b"authRevision", U64BE.pack(auth_revision))]
        users = sorted((u.name.encode(), _user_value(u)) for u in auth._users.values())
        roles = sorted((name.encode(), _role_value(name, perms)) for name, perms in auth._roles.items())

    def build() -> bytes:
        items = [(v.bucket_key, encode_kv(v.kv)) for v in versions]  # already in key (revision) order
        meta = [(b"consistent_index", U64BE.pack(consistent_index))]
        if compact_rev >= 0:
            compact = revision_bytes(compact_rev, 0)
            meta += [(b"finishedCompactRev", compact), (b"scheduledCompactRev", compact)]
        member_json = json.dumps(
            {"id": member.id, "peerURLs": member.peer_urls, "name": member.name, "clientURLs": member.client_urls},
            separators=(",", ":"),
        ).encode()
        root = {
            b"alarm": bbolt.Bucket(sorted((_pb_int(1, member.id) + _pb_int(2, ALARM_NUMBERS[n]), b"") for n in alarms)),
            b"auth": bbolt.Bucket(sorted(auth_items)),
            b"authRoles": bbolt.Bucket(roles),
            b"authUsers": bbolt.Bucket(users),
            b"cluster": bbolt.Bucket([(b"clusterVersion", CLUSTER_VERSION)]),
            b"key": bbolt.Bucket(items),
            b"lease": bbolt.Bucket(sorted((I64BE.pack(i), _pb_int(1, i) + _pb_int(2, ttl)) for i, ttl in leases)),
            b"members": bbolt.Bucket([(f"{member.id:x}".encode(), member_json)]),
            b"members_removed": bbolt.Bucket(),
            b"meta": bbolt.Bucket(sorted(meta)),
        }
        return bbolt.write_db(root)

    return build


# ============================================================================ in: bbolt -> store


@dataclass
class EtcdState:
    """What an etcd backend database holds, in the store's terms."""

    revision: int = 1
    compact_revision: int = -1
    versions: list[Version] = field(default_factory=list)
    leases: list[tuple[int, int]] = field(default_factory=list)
    alarms: list[str] = field(default_factory=list)
    auth_enabled: bool = False
    auth_revision: int = 1
    users: list[dict[str, Any]] = field(default_factory=list)
    roles: list[dict[str, Any]] = field(default_factory=list)


def _parse_revision(raw: bytes) -> tuple[int, int, bool]:
    if len(raw) not in (17, 18) or raw[8:9] != b"_":
        raise EtcdSnapshotError(f"key bucket entry {raw!r} is not an etcd revision")
    return REV_BYTES.unpack_from(raw, 0)[0], REV_BYTES.unpack_from(raw, 9)[0], len(raw) == 18


def _parse_kv(raw: bytes, main: int, tombstone: bool) -> KeyValue:
    f = _pb_fields(raw)
    key = bytes(_first(f, 1, b""))
    if tombstone:
        return KeyValue(key, 0, main, 0, b"", 0)
    return KeyValue(
        key, _int64(_first(f, 2, 0)), _int64(_first(f, 3, 0)), _int64(_first(f, 4, 0)),
        bytes(_first(f, 5, b"")), _int64(_first(f, 6, 0)),
    )


def parse_db(data: bytes) -> EtcdState:
    """Read an etcd 3.4/3.5 backend database (without the SHA-256 trailer)."""
    try:
        buckets = bbolt.read_db(data)
    except bbolt.BoltError as exc:
        raise EtcdSnapshotError(str(exc)) from None
    if b"key" not in buckets or b"meta" not in buckets:
        raise EtcdSnapshotError("not an etcd database: no key or meta bucket")
    state = EtcdState()
    top = 1
    for raw_rev, raw_kv in buckets[b"key"].items:
        main, sub, tombstone = _parse_revision(raw_rev)
        state.versions.append(Version(main, sub, _parse_kv(raw_kv, main, tombstone)))
        top = max(top, main)
    meta = buckets[b"meta"]
    finished = meta.get(b"finishedCompactRev")
    scheduled = meta.get(b"scheduledCompactRev")
    compact = REV_BYTES.unpack_from(finished, 0)[0] if finished else -1
    if scheduled and REV_BYTES.unpack_from(scheduled, 0)[0] > compact:
        # etcd finishes a compaction it had scheduled when it starts; so do we (at open)
        compact = REV_BYTES.unpack_from(scheduled, 0)[0]
    state.compact_revision = compact
    state.revision = max(top, compact)  # as etcd's restore: the compaction may have dropped the tip
    for _, raw in buckets.get(b"lease", bbolt.Bucket()).items:
        f = _pb_fields(raw)
        state.leases.append((_int64(_first(f, 1, 0)), _int64(_first(f, 2, 0))))
    for raw, _ in buckets.get(b"alarm", bbolt.Bucket()).items:
        name = ALARM_TYPES.get(_first(_pb_fields(raw), 2, 0))
        if name and name not in state.alarms:
            state.alarms.append(name)
    auth = buckets.get(b"auth", bbolt.Bucket())
    state.auth_enabled = auth.get(b"authEnabled") == b"\x01"
    auth_revision = auth.get(b"authRevision")
    state.auth_revision = U64BE.unpack(auth_revision)[0] if auth_revision else 1
    for _, raw in buckets.get(b"authUsers", bbolt.Bucket()).items:
        f = _pb_fields(raw)
        options = _pb_fields(bytes(_first(f, 4, b"")))
        password = bytes(_first(f, 2, b""))
        state.users.append({
            "name": bytes(_first(f, 1, b"")).decode(),
            "hash": password.decode() if password else None,
            "no_password": bool(_first(options, 1, 0)),
            "roles": sorted((bytes(r).decode() for r in f.get(3, [])), key=str.encode),
        })
    for _, raw in buckets.get(b"authRoles", bbolt.Bucket()).items:
        f = _pb_fields(raw)
        perms = []
        for perm_raw in f.get(2, []):
            p = _pb_fields(bytes(perm_raw))
            perms.append([
                int(_first(p, 1, 0)), _b64(bytes(_first(p, 2, b""))), _b64(bytes(_first(p, 3, b""))),
            ])
        state.roles.append({"name": bytes(_first(f, 1, b"")).decode(), "perms": perms})
    return state


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def auth_dump(state: EtcdState) -> bytes:
    """The auth state in AuthStore.dump()'s format."""
    return json.dumps({
        "format": 1, "enabled": state.auth_enabled, "revision": state.auth_revision,
        "users": state.users, "roles": state.roles,
    }, sort_keys=True).encode()


def native_snapshot(state: EtcdState, machines: Iterable[str] = ("auth",)) -> Iterator[bytes]:
    """The state as the store's own snapshot (codec's frames), ready to seed a journal."""
    start = max(state.compact_revision, 1)
    dumps = [("auth", auth_dump(state))] if "auth" in machines else []
    header = codec.encode_header(state.revision, state.compact_revision, start, sorted(state.leases),
                                 sorted(state.alarms), dumps)
    fw = codec.FrameWriter()
    if chunk := fw.frame(b"H", header):
        yield chunk
    base = bytearray()
    by_key = sorted((v for v in state.versions if v.main < start), key=lambda v: (v.kv.key, v.main, v.sub))
    for v in by_key:
        codec.pack_raw_kv(base, v.kv)
        if len(base) >= 256 * 1024:
            if chunk := fw.frame(b"B", base):
                yield chunk
            base = bytearray()
    if base and (chunk := fw.frame(b"B", base)):
        yield chunk
    subs: dict[int, dict[bytes, int]] = {}
    for v in by_key:
        subs.setdefault(v.main, {})[v.kv.key] = v.sub
    subs = {r: keys for r, keys in subs.items() if len(keys) > 1 or any(keys.values())}
    if subs and (chunk := fw.frame(b"S", codec.encode_subs(subs))):
        yield chunk
    log = bytearray()
    versions = [v for v in state.versions if v.main >= start]
    i = 0
    for r in range(start, state.revision + 1):
        entry = []
        while i < len(versions) and versions[i].main == r:
            entry.append(versions[i].kv)
            i += 1
        log += codec.TXN_HEAD.pack(r, len(entry))
        for kv in entry:
            codec.pack_raw_kv(log, kv)
        if len(log) >= 256 * 1024:
            if chunk := fw.frame(b"V", log):
                yield chunk
            log = bytearray()
    if log and (chunk := fw.frame(b"V", log)):
        yield chunk
    yield fw.finish()


def strip_trailer(data: bytes) -> bytes:
    """The database of a file `etcdctl snapshot save` wrote: a whole number of pages (a multiple
    of 512 bytes), then its SHA-256, which must match (as `etcdctl snapshot restore` checks)."""
    if len(data) % 512 != hashlib.sha256().digest_size:
        return data
    body, digest = data[:-32], data[-32:]
    if hashlib.sha256(body).digest() != digest:
        raise EtcdSnapshotError("snapshot's SHA-256 trailer does not match its contents")
    return body
