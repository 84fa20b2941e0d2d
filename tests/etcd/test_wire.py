"""The hand-written encoders produce exactly the bytes protobuf itself would."""

from __future__ import annotations

import pytest

from ultraplane.etcd import wire
from ultraplane.etcd.proto import kv_pb2, rpc_pb2
from ultraplane.store.types import DeleteRangeResult, KeyValue, PutResult, RangeResult, TxnResult

KVS = [
    KeyValue(b"a", 2, 2, 1, b"x", 0),
    KeyValue(b"/registry/pods/default/p" + b"q" * 300, 100_000, 2**40, 3, b"\x00" * 70_000, 7587812345678),
    KeyValue(b"k", 5, 9, 2, b"", 0),  # empty value: omitted on the wire
    KeyValue(b"neg", 1, 1, 1, b"v", -5),  # a negative lease still round-trips (10-byte varint)
]


def _pb_kv(kv: KeyValue) -> kv_pb2.KeyValue:
    return kv_pb2.KeyValue(
        key=kv.key,
        create_revision=kv.create_revision,
        mod_revision=kv.mod_revision,
        version=kv.version,
        value=kv.value,
        lease=kv.lease,
    )


@pytest.mark.parametrize("value", [0, 1, 127, 128, 16383, 16384, 2**35, 2**63 - 1, -1, -(2**63)])
def test_varint_matches_protobuf(value: int) -> None:
    expected = rpc_pb2.RangeResponse(count=value).SerializeToString()
    assert wire.varint(value) == expected[1:] if value else expected == b""


@pytest.mark.parametrize("kv", KVS, ids=lambda kv: kv.key[:8].decode())
def test_kv_matches_protobuf(kv: KeyValue) -> None:
    assert wire.encode_kv(kv) == _pb_kv(kv).SerializeToString()


@pytest.mark.parametrize("revision", [0, 1, 300, 2**40])
@pytest.mark.parametrize("more", [False, True])
def test_range_response_matches_protobuf(revision: int, more: bool) -> None:
    headers = wire.HeaderEncoder(cluster_id=0xCDEF0123456789AB, member_id=17, raft_term=2)
    for kvs in ([], KVS[:1], KVS):
        got = wire.encode_range_response(headers.field(revision), kvs, more, len(kvs) + 3)
        want = rpc_pb2.RangeResponse(
            header=rpc_pb2.ResponseHeader(
                cluster_id=0xCDEF0123456789AB, member_id=17, revision=revision, raft_term=2
            ),
            kvs=[_pb_kv(kv) for kv in kvs],
            more=more,
            count=len(kvs) + 3,
        )
        assert got == want.SerializeToString()
        assert rpc_pb2.RangeResponse.FromString(got) == want


def test_put_response_matches_protobuf() -> None:
    headers = wire.HeaderEncoder(cluster_id=1, member_id=2, raft_term=2)
    header = rpc_pb2.ResponseHeader(cluster_id=1, member_id=2, revision=99, raft_term=2)
    assert (
        wire.encode_put_response(headers.field(99), None)
        == rpc_pb2.PutResponse(header=header).SerializeToString()
    )
    with_prev = rpc_pb2.PutResponse(header=header, prev_kv=_pb_kv(KVS[1]))
    assert wire.encode_put_response(headers.field(99), KVS[1]) == with_prev.SerializeToString()


def _pb_txn(resp: rpc_pb2.TxnResponse, res: TxnResult, *, top: bool) -> rpc_pb2.TxnResponse:
    """Reference: the same TxnResponse built with the generated classes."""
    if not top:
        resp.header.SetInParent()
    resp.succeeded = res.succeeded
    for sub in res.responses:
        op = resp.responses.add()
        if isinstance(sub, RangeResult):
            op.response_range.header.revision = sub.revision
            op.response_range.kvs.extend(_pb_kv(kv) for kv in sub.kvs)
            op.response_range.more = sub.more
            op.response_range.count = sub.count
        elif isinstance(sub, PutResult):
            op.response_put.header.revision = sub.revision
            if sub.prev_kv is not None:
                op.response_put.prev_kv.CopyFrom(_pb_kv(sub.prev_kv))
        elif isinstance(sub, DeleteRangeResult):
            op.response_delete_range.header.revision = sub.revision
            op.response_delete_range.deleted = sub.deleted
            op.response_delete_range.prev_kvs.extend(_pb_kv(kv) for kv in sub.prev_kvs)
        else:
            _pb_txn(op.response_txn, sub, top=False)
    return resp


def test_txn_and_delete_responses_match_protobuf() -> None:
    headers = wire.HeaderEncoder(cluster_id=5, member_id=6, raft_term=2)
    nested = TxnResult(41, False, [RangeResult([], False, 0, 40)])
    result = TxnResult(
        41,
        True,
        [
            PutResult(41, KVS[0]),
            PutResult(41),
            RangeResult(KVS[:2], True, 7, 41),
            DeleteRangeResult(41, 2, KVS[2:]),
            DeleteRangeResult(41, 0),
            nested,
        ],
    )
    want = rpc_pb2.TxnResponse(
        header=rpc_pb2.ResponseHeader(cluster_id=5, member_id=6, revision=41, raft_term=2)
    )
    _pb_txn(want, result, top=True)
    got = wire.encode_txn_response(headers.field(41), result)
    assert got == want.SerializeToString()
    assert rpc_pb2.TxnResponse.FromString(got) == want
    failed = TxnResult(9, False, [])
    assert (
        wire.encode_txn_response(headers.field(9), failed)
        == rpc_pb2.TxnResponse(
            header=rpc_pb2.ResponseHeader(cluster_id=5, member_id=6, revision=9, raft_term=2)
        ).SerializeToString()
    )

    deleted = wire.encode_delete_response(headers.field(12), 2, KVS[:2])
    want_delete = rpc_pb2.DeleteRangeResponse(
        header=rpc_pb2.ResponseHeader(cluster_id=5, member_id=6, revision=12, raft_term=2),
        deleted=2,
        prev_kvs=[_pb_kv(kv) for kv in KVS[:2]],
    )
    assert deleted == want_delete.SerializeToString()


def test_kv_cache_keeps_keys_only_apart() -> None:
    cache = wire.KVCache(budget_bytes=1000)
    full = KeyValue(b"k", 3, 9, 2, b"value", 0)
    keys_only = KeyValue(b"k", 3, 9, 2, b"", 0)
    assert cache.encode(full) == _pb_kv(full).SerializeToString()
    assert cache.encode(keys_only) == _pb_kv(keys_only).SerializeToString()
    assert cache.encode(full) == _pb_kv(full).SerializeToString()
    big = KeyValue(b"big", 1, 1, 1, b"x" * 5000, 0)  # over budget: the cache empties, stays correct
    assert cache.encode(big) == _pb_kv(big).SerializeToString()
    assert cache.encode(full) == _pb_kv(full).SerializeToString()
