"""Inside a Txn, each op's response header carries the revision that op ran at (etcd 3.4's
applier): a range before the txn's first write reads (and reports) the revision before the txn,
a put the txn's revision, a delete that deleted nothing before any write the old revision; a
nested txn's header stays empty. Compared whole (headers included) with real etcd."""

from __future__ import annotations

from harness import ServerPair
from snapshot_history import Client, as_dict, rpc_pb2

K = b"/hdr/k"


def _range(key: bytes, revision: int = 0) -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=key, revision=revision))


def _put(key: bytes, value: bytes) -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=value))


def _delete(key: bytes) -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=key))


def _nested(*ops: rpc_pb2.RequestOp) -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(request_txn=rpc_pb2.TxnRequest(success=list(ops)))


def _script(c: Client) -> list:
    out = []
    c.put(K, b"v1")
    c.put(b"/hdr/other", b"o")
    txns = [
        # read, write, read again, delete nothing, read an older revision
        [_range(K), _put(K, b"v2"), _range(K), _delete(b"/hdr/missing"), _range(K, revision=2)],
        # a delete that deletes nothing before any write, then a write
        [_delete(b"/hdr/missing"), _range(b"/hdr/other"), _put(b"/hdr/other", b"o2"), _delete(b"/hdr/missing")],
        # read-only
        [_range(K), _range(b"/hdr/other"), _delete(b"/hdr/missing")],
        # nested: the inner txn's header is left empty, its ops carry theirs
        [_range(K), _nested(_range(K), _put(K, b"v3"), _range(K)), _range(K)],
        # a delete that deletes something, then reads
        [_range(b"/hdr/other"), _delete(b"/hdr/other"), _range(b"/hdr/other")],
    ]
    for ops in txns:
        out.append(as_dict(c.txn(*ops)))
    # the failure branch reports the same way
    fails = rpc_pb2.Compare(key=K, target=rpc_pb2.Compare.VALUE, value=b"nope")
    out.append(as_dict(c.txn(_put(K, b"never"), compare=[fails], failure=[_range(K), _put(K, b"v4"), _range(K)])))
    return out


def test_txn_op_headers_match_etcd(both: ServerPair) -> None:
    results = {}
    for server in both:
        client = Client(server.endpoint)
        try:
            results[server.label] = _script(client)
        finally:
            client.close()
    etcd, ultra = results["etcd"], results["ultraplane"]
    # the first txn's leading range reports the revision before the txn (etcd's own answer)
    first = etcd[0]["responses"]
    assert first[0]["responseRange"]["header"]["revision"] == "3"
    assert first[1]["responsePut"]["header"]["revision"] == "4"
    assert etcd[0]["header"]["revision"] == "4"
    for i, (expected, actual) in enumerate(zip(etcd, ultra, strict=True)):
        assert actual == expected, f"txn {i} differs\n etcd:  {expected}\n ultra: {actual}"
