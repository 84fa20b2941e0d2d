"""Watch and LeaseKeepAlive streams, driven with a grpcio client built from our .proto files.

Checks etcd 3.4's stream semantics response by response: watch ids, created/canceled responses,
ordering, compaction, progress requests and notifications, filters, prev_kv, fragmentation.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from tests.etcd.conftest import CLUSTER_ID, MEMBER_ID, ServerThread
from ultraplane.etcd.proto import rpc_pb2, rpc_pb2_grpc

WCR = rpc_pb2.WatchCreateRequest
NO_RESPONSE_WAIT_S = 0.5  # only for "nothing more arrives" checks, never for a positive assertion


class WatchStream:
    """One Watch call: send requests at will, take responses in order."""

    def __init__(self, channel: grpc.Channel, metadata: list[tuple[str, str]] | None = None) -> None:
        self._requests: queue.Queue[Any] = queue.Queue()
        self.responses: queue.Queue[Any] = queue.Queue()
        stub = rpc_pb2_grpc.WatchStub(channel)
        self._call = stub.Watch(iter(self._requests.get, None), metadata=metadata)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for resp in self._call:
                self.responses.put(resp)
        except grpc.RpcError as exc:
            self.responses.put(exc)

    def send(self, **request: Any) -> None:
        self._requests.put(rpc_pb2.WatchRequest(**request))

    def create(self, key: bytes, **fields: Any) -> Any:
        self.send(create_request=WCR(key=key, **fields))
        return self.next()

    def next(self, timeout: float = 20) -> Any:
        resp = self.responses.get(timeout=timeout)
        if isinstance(resp, Exception):
            raise resp
        return resp

    def nothing_more(self) -> bool:
        try:
            self.responses.get(timeout=NO_RESPONSE_WAIT_S)
        except queue.Empty:
            return True
        return False

    def close(self) -> None:
        self._requests.put(None)
        self._call.cancel()


@pytest.fixture
def kv(server: ServerThread) -> Iterator[rpc_pb2_grpc.KVStub]:
    with server.channel() as channel:
        yield rpc_pb2_grpc.KVStub(channel)


@pytest.fixture
def watch(server: ServerThread) -> Iterator[WatchStream]:
    channel = server.channel()
    stream = WatchStream(channel)
    yield stream
    stream.close()
    channel.close()


def put(kv: rpc_pb2_grpc.KVStub, key: bytes, value: bytes = b"v", **fields: Any) -> int:
    return kv.Put(rpc_pb2.PutRequest(key=key, value=value, **fields)).header.revision


def test_ids_created_and_events(server: ServerThread, kv, watch: WatchStream) -> None:
    first = watch.create(b"/w/ids/a")
    assert (first.watch_id, first.created, first.canceled) == (0, True, False)
    assert first.header.cluster_id == CLUSTER_ID and first.header.member_id == MEMBER_ID
    assert first.header.revision == server.store.revision
    second = watch.create(b"/w/ids/", range_end=b"/w/ids0")
    assert second.watch_id == 1
    chosen = watch.create(b"/w/ids/a", watch_id=100)
    assert chosen.watch_id == 100 and chosen.created
    duplicate = watch.create(b"/w/ids/a", watch_id=100)
    assert duplicate.watch_id == -1 and duplicate.created and duplicate.canceled
    assert duplicate.cancel_reason == "mvcc: duplicate watch ID provided on the WatchStream"
    backwards = watch.create(b"/w/z", range_end=b"/w/a")
    assert backwards.watch_id == -1 and backwards.canceled
    assert backwards.cancel_reason == "mvcc: watcher range is empty"

    rev = put(kv, b"/w/ids/a", b"1")
    got = {}
    for _ in range(3):
        resp = watch.next()
        got[resp.watch_id] = resp
    assert sorted(got) == [0, 1, 100]
    for resp in got.values():
        [ev] = resp.events
        assert ev.type == 0 and ev.kv.key == b"/w/ids/a" and ev.kv.value == b"1"
        assert ev.kv.mod_revision == rev and resp.header.revision == rev


def test_cancel(kv, watch: WatchStream) -> None:
    created = watch.create(b"/w/cancel")
    watch.send(cancel_request=rpc_pb2.WatchCancelRequest(watch_id=created.watch_id))
    canceled = watch.next()
    assert canceled.watch_id == created.watch_id and canceled.canceled and not canceled.created
    put(kv, b"/w/cancel")
    watch.send(cancel_request=rpc_pb2.WatchCancelRequest(watch_id=12345))  # unknown: no answer
    assert watch.nothing_more()


def test_prev_kv_filters_and_delete(kv, watch: WatchStream) -> None:
    put(kv, b"/w/pk", b"old")
    created = watch.create(b"/w/pk", prev_kv=True)
    no_put = watch.create(b"/w/pk", filters=[WCR.NOPUT])
    put(kv, b"/w/pk", b"new")
    changed = watch.next()
    assert changed.watch_id == created.watch_id
    [ev] = changed.events
    assert ev.kv.value == b"new" and ev.prev_kv.value == b"old"
    deleted_rev = kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=b"/w/pk")).header.revision
    by_id = {}
    for _ in range(2):
        resp = watch.next()
        by_id[resp.watch_id] = resp
    for resp in by_id.values():
        [ev] = resp.events
        assert ev.type == 1 and ev.kv.key == b"/w/pk" and ev.kv.mod_revision == deleted_rev
        assert ev.kv.value == b"" and ev.kv.version == 0
    assert by_id[created.watch_id].events[0].prev_kv.value == b"new"
    assert not by_id[no_put.watch_id].events[0].HasField("prev_kv")


def test_txn_revision_arrives_in_one_response(kv, watch: WatchStream) -> None:
    watch.create(b"/w/txn/", range_end=b"/w/txn0")
    ops = [
        rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"/w/txn/%d" % i, value=b"x")) for i in range(5)
    ]
    rev = kv.Txn(rpc_pb2.TxnRequest(success=ops)).header.revision
    resp = watch.next()
    assert [ev.kv.key for ev in resp.events] == [b"/w/txn/%d" % i for i in range(5)]
    assert {ev.kv.mod_revision for ev in resp.events} == {rev}
    assert not resp.fragment


def test_history_replay_and_compacted_start(server: ServerThread, kv, watch: WatchStream) -> None:
    r1 = put(kv, b"/w/hist", b"1")
    r2 = put(kv, b"/w/hist", b"2")
    watch.create(b"/w/hist", start_revision=r1)
    replay = []
    while len(replay) < 2:
        replay += [(ev.kv.value, ev.kv.mod_revision) for ev in watch.next().events]
    assert replay == [(b"1", r1), (b"2", r2)]

    kv.Compact(rpc_pb2.CompactionRequest(revision=r2))
    created = watch.create(b"/w/hist", start_revision=r1)
    assert created.created and not created.canceled
    compacted = watch.next()
    assert compacted.watch_id == created.watch_id
    assert compacted.canceled and compacted.compact_revision == server.store.compact_revision


def test_progress_request(server: ServerThread, kv, watch: WatchStream) -> None:
    watch.create(b"/w/progress")
    rev = put(kv, b"/w/progress")
    watch.send(progress_request=rpc_pb2.WatchProgressRequest())
    event = watch.next()
    assert event.events and event.events[0].kv.mod_revision == rev  # events before the notification
    progress = watch.next()
    assert progress.watch_id == -1 and not progress.events
    assert progress.header.revision == server.store.revision >= rev


def test_progress_request_waits_for_catch_up(server: ServerThread, kv, watch: WatchStream) -> None:
    # more history than the store replays in one batch, so the watcher is still catching up
    # when the progress request arrives; the notification must still come after all of it
    first = put(kv, b"/w/catchup", b"0")
    for i in range(1, 1500):
        put(kv, b"/w/catchup", b"%d" % i)
    current = server.store.revision
    watch.send(create_request=WCR(key=b"/w/catchup", start_revision=first))
    watch.send(progress_request=rpc_pb2.WatchProgressRequest())
    created = watch.next()
    assert created.created
    values: list[bytes] = []
    while True:
        resp = watch.next()
        if resp.watch_id == -1:
            break
        values += [ev.kv.value for ev in resp.events]
    assert values == [b"%d" % i for i in range(1500)]
    assert resp.header.revision >= current and not resp.events


def test_progress_notify_interval(make_server) -> None:
    srv = make_server(watch_progress_interval=0.2)
    with srv.channel() as channel:
        stream = WatchStream(channel)
        try:
            plain = stream.create(b"/w/quiet")
            notified = stream.create(b"/w/quiet", progress_notify=True)
            tick = stream.next()
            assert tick.watch_id == notified.watch_id != plain.watch_id
            assert not tick.events and not tick.canceled
            assert tick.header.revision == srv.store.revision
        finally:
            stream.close()


def test_fragment(make_server) -> None:
    limit = 64 * 1024 + 512 * 1024  # --max-request-bytes plus etcd's gRPC overhead allowance
    srv = make_server(max_request_bytes=64 * 1024)
    with srv.channel() as channel:
        kv_stub = rpc_pb2_grpc.KVStub(channel)
        for i in range(20):
            put(kv_stub, b"/w/frag/%02d" % i, b"f" * 60_000)
        stream = WatchStream(channel)
        try:
            whole = stream.create(b"/w/frag/", range_end=b"/w/frag0", prev_kv=True)
            split = stream.create(b"/w/frag/", range_end=b"/w/frag0", prev_kv=True, fragment=True)
            # one revision whose events (with their 60 KB prev_kvs) add up to 1.2 MB
            rev = kv_stub.DeleteRange(
                rpc_pb2.DeleteRangeRequest(key=b"/w/frag/", range_end=b"/w/frag0")
            ).header.revision
            responses: dict[int, list[Any]] = {whole.watch_id: [], split.watch_id: []}
            counts = {whole.watch_id: 0, split.watch_id: 0}
            while counts[whole.watch_id] < 20 or counts[split.watch_id] < 20:
                resp = stream.next()
                responses[resp.watch_id].append(resp)
                counts[resp.watch_id] += len(resp.events)
            # without fragment=true the revision is never split
            [single] = responses[whole.watch_id]
            assert len(single.events) == 20 and not single.fragment
            frags = responses[split.watch_id]
            assert len(frags) >= 3
            assert [r.fragment for r in frags] == [True] * (len(frags) - 1) + [False]
            assert all(r.ByteSize() < limit for r in frags)
            keys = [ev.kv.key for r in frags for ev in r.events]
            assert keys == [b"/w/frag/%02d" % i for i in range(20)]
            assert {ev.kv.mod_revision for r in frags for ev in r.events} == {rev}
        finally:
            stream.close()


def test_lease_keepalive_stream(server: ServerThread) -> None:
    with server.channel() as channel:
        lease = rpc_pb2_grpc.LeaseStub(channel)
        granted = lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=45))
        assert granted.ID > 0 and granted.TTL == 45
        chosen = lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=30, ID=777))
        assert chosen.ID == 777
        with pytest.raises(grpc.RpcError) as exists:
            lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=30, ID=777))
        assert exists.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert exists.value.details() == "etcdserver: lease already exists"
        with pytest.raises(grpc.RpcError) as too_long:
            lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=9_000_000_001))
        assert too_long.value.details() == "etcdserver: too large lease TTL"

        requests = [rpc_pb2.LeaseKeepAliveRequest(ID=i) for i in (granted.ID, 424242, 777)]
        replies = list(lease.LeaseKeepAlive(iter(requests)))
        assert [(r.ID, r.TTL) for r in replies] == [(granted.ID, 45), (424242, 0), (777, 30)]
        assert all(r.header.member_id == MEMBER_ID for r in replies)

        leases = {s.ID for s in lease.LeaseLeases(rpc_pb2.LeaseLeasesRequest()).leases}
        assert {granted.ID, 777} <= leases
        missing = lease.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=424242))
        assert (missing.ID, missing.TTL) == (424242, -1)
        lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=777))
        lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=granted.ID))


def test_range_count_only_and_keys_only(kv) -> None:
    for i in range(3):
        put(kv, b"/w/count/%d" % i, b"value")
    counted = kv.Range(rpc_pb2.RangeRequest(key=b"/w/count/", range_end=b"/w/count0", count_only=True))
    assert counted.count == 3 and not counted.kvs
    keys = kv.Range(rpc_pb2.RangeRequest(key=b"/w/count/", range_end=b"/w/count0", keys_only=True, limit=2))
    assert [k.key for k in keys.kvs] == [b"/w/count/0", b"/w/count/1"] and keys.more and keys.count == 3
    assert all(k.value == b"" for k in keys.kvs)


def test_status_codes(server: ServerThread, kv) -> None:
    cases = [
        (
            lambda: kv.Range(rpc_pb2.RangeRequest()),
            grpc.StatusCode.INVALID_ARGUMENT,
            "etcdserver: key is not provided",
        ),
        (
            lambda: kv.Txn(rpc_pb2.TxnRequest(success=[rpc_pb2.RequestOp()])),
            grpc.StatusCode.INVALID_ARGUMENT,
            "etcdserver: key not found",
        ),
        (
            lambda: kv.Txn(
                rpc_pb2.TxnRequest(
                    success=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=b"k"))] * 129
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "etcdserver: too many operations in txn request",
        ),
        (
            lambda: kv.Put(rpc_pb2.PutRequest(key=b"k", value=b"v", ignore_value=True)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "etcdserver: value is provided",
        ),
        (
            lambda: kv.Put(rpc_pb2.PutRequest(key=b"k", lease=5, ignore_lease=True)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "etcdserver: lease is provided",
        ),
        (
            lambda: kv.Range(rpc_pb2.RangeRequest(key=b"k", revision=server.store.revision + 100)),
            grpc.StatusCode.OUT_OF_RANGE,
            "etcdserver: mvcc: required revision is a future revision",
        ),
    ]
    for call, code, message in cases:
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert (err.value.code(), err.value.details()) == (code, message)
