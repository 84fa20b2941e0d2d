"""Hand-written protobuf encoders for the hottest etcd responses.

Range and Put answer most of a Kubernetes API server's traffic. Building a RangeResponse
message object field by field and then serializing it costs more than writing the bytes
directly: the wire format is just tags, varints and length-prefixed bytes. The output is
byte-identical to protobuf's own serialization (fields in number order, proto3 defaults
omitted); tests/etcd/test_wire.py checks that against the generated classes.
"""

from __future__ import annotations

from collections.abc import Callable

from ultraplane.store.types import DeleteRangeResult, KeyValue, PutResult, RangeResult, TxnResult

_UINT64_MASK = (1 << 64) - 1

# etcd lets gRPC messages exceed --max-request-bytes by this much (v3rpc grpcOverheadBytes);
# its watch server fragments responses at the sum.
GRPC_OVERHEAD_BYTES = 512 * 1024


def varint(value: int) -> bytes:
    """Base-128 varint; negative int64 values take their 64-bit two's complement (10 bytes)."""
    if value < 0:
        value &= _UINT64_MASK
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# Small varints are by far the most common; a table avoids the loop for them.
_SMALL = [varint(i) for i in range(1 << 14)]


def _v(value: int) -> bytes:
    if 0 <= value < 16384:
        return _SMALL[value]
    return varint(value)


def encode_kv(kv: KeyValue) -> bytes:
    """mvccpb.KeyValue: key=1, create_revision=2, mod_revision=3, version=4, value=5, lease=6.

    Written out field by field (no helper calls for small varints) because a list response
    encodes hundreds of these."""
    small = _SMALL
    key = kv.key
    n = len(key)
    out = b"\x0a" + (small[n] if n < 16384 else varint(n)) + key if n else b""
    num = kv.create_revision
    if num:
        out += b"\x10" + (small[num] if 0 < num < 16384 else varint(num))
    num = kv.mod_revision
    if num:
        out += b"\x18" + (small[num] if 0 < num < 16384 else varint(num))
    num = kv.version
    if num:
        out += b"\x20" + (small[num] if 0 < num < 16384 else varint(num))
    value = kv.value
    if value:
        n = len(value)
        out += b"\x2a" + (small[n] if n < 16384 else varint(n)) + value
    num = kv.lease
    if num:
        out += b"\x30" + varint(num)
    return out


class KVCache:
    """Encoded KeyValues, reused across responses (lists return the same versions again and again).

    One per store: within a store a version of a key never changes once written, so
    (key, mod_revision) names its encoding;
    the value length is part of the name because keys_only reads return the same version
    without its value. Bounded by total bytes: when full it is simply emptied."""

    def __init__(self, budget_bytes: int = 64 * 1024 * 1024) -> None:
        self.budget_bytes = budget_bytes
        self._used = 0
        self._entries: dict[tuple[bytes, int, int], bytes] = {}

    def encode(self, kv: KeyValue) -> bytes:
        name = (kv.key, kv.mod_revision, len(kv.value))
        body = self._entries.get(name)
        if body is None:
            body = encode_kv(kv)
            self._used += len(body) + 100  # + rough per-entry overhead
            if self._used > self.budget_bytes:
                self._entries.clear()
                self._used = len(body) + 100
            self._entries[name] = body
        return body


class HeaderEncoder:
    """Encodes etcdserverpb.ResponseHeader as field 1 of a response, for a fixed cluster/member/term."""

    def __init__(self, cluster_id: int, member_id: int, raft_term: int) -> None:
        prefix = b""
        if cluster_id:
            prefix += b"\x08" + varint(cluster_id)
        if member_id:
            prefix += b"\x10" + varint(member_id)
        self._prefix = prefix
        self._suffix = b"\x20" + varint(raft_term) if raft_term else b""

    def field(self, revision: int) -> bytes:
        """The header as field 1 (tag 0x0a, length, body) of the enclosing response."""
        body = self._prefix + (b"\x18" + _v(revision) if revision else b"") + self._suffix
        return b"\x0a" + _v(len(body)) + body


def encode_range_response(
    header: bytes,
    kvs: list[KeyValue],
    more: bool,
    count: int,
    encode: Callable[[KeyValue], bytes] = encode_kv,
) -> bytes:
    """etcdserverpb.RangeResponse: header=1, kvs=2 (repeated), more=3, count=4.
    ``encode``: how to encode one KeyValue (e.g. a KVCache's ``encode``)."""
    parts = [header]
    for kv in kvs:
        body = encode(kv)
        parts += (b"\x12", _v(len(body)), body)
    if more:
        parts.append(b"\x18\x01")
    if count:
        parts += (b"\x20", _v(count))
    return b"".join(parts)


def encode_put_response(header: bytes, prev_kv: KeyValue | None) -> bytes:
    """etcdserverpb.PutResponse: header=1, prev_kv=2."""
    if prev_kv is None:
        return header
    body = encode_kv(prev_kv)
    return header + b"\x12" + _v(len(body)) + body


def _sub_header(revision: int) -> bytes:
    """The header of a response nested in a txn: etcd fills only its revision."""
    if not revision:
        return b"\x0a\x00"
    body = b"\x18" + _v(revision)
    return b"\x0a" + _v(len(body)) + body


def encode_delete_response(header: bytes, deleted: int, prev_kvs: list[KeyValue]) -> bytes:
    """etcdserverpb.DeleteRangeResponse: header=1, deleted=2, prev_kvs=3 (repeated)."""
    parts = [header]
    if deleted:
        parts += (b"\x10", _v(deleted))
    for kv in prev_kvs:
        body = encode_kv(kv)
        parts += (b"\x1a", _v(len(body)), body)
    return b"".join(parts)


# ResponseOp's oneof field tags: response_range=1, response_put=2, response_delete_range=3, response_txn=4
_OP_RANGE, _OP_PUT, _OP_DELETE, _OP_TXN = b"\x0a", b"\x12", b"\x1a", b"\x22"


def encode_txn_response(header: bytes, result: TxnResult) -> bytes:
    """etcdserverpb.TxnResponse: header=1, succeeded=2, responses=3 (repeated ResponseOp).

    Sub-responses carry a header holding only the revision they ran at; a nested txn's header
    is present but empty (etcd fills the top-level header only)."""
    parts = [header]
    if result.succeeded:
        parts.append(b"\x10\x01")
    for sub in result.responses:
        if isinstance(sub, PutResult):
            tag, body = _OP_PUT, encode_put_response(_sub_header(sub.revision), sub.prev_kv)
        elif isinstance(sub, RangeResult):
            tag, body = (
                _OP_RANGE,
                encode_range_response(_sub_header(sub.revision), sub.kvs, sub.more, sub.count),
            )
        elif isinstance(sub, DeleteRangeResult):
            tag, body = (
                _OP_DELETE,
                encode_delete_response(_sub_header(sub.revision), sub.deleted, sub.prev_kvs),
            )
        else:
            tag, body = _OP_TXN, encode_txn_response(b"\x0a\x00", sub)
        op = tag + _v(len(body)) + body
        parts += (b"\x1a", _v(len(op)), op)
    return b"".join(parts)
