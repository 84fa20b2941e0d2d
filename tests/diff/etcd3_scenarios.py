"""Scenarios for the python ``etcd3`` client, run in a child process (see test_diff_client.py).

etcd3's generated protobuf code needs the pure-python protobuf runtime
(PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python), which must not leak into the test process or a
server, so each scenario runs here: ``python etcd3_scenarios.py HOST PORT SCENARIO PREFIX``.
Prints one json list of [label, result] steps; protobuf messages become plain dicts that, like
etcdctl's json, omit default-valued fields.
"""

from __future__ import annotations

import json
import os
import queue
import sys
from collections.abc import Callable
from typing import Any

os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")

import etcd3  # noqa: E402
import grpc  # noqa: E402
from etcd3 import etcdrpc  # noqa: E402
from google.protobuf.descriptor import FieldDescriptor  # noqa: E402

Steps = list[list[Any]]


def to_py(message: Any) -> Any:
    """A protobuf message as a dict of its set fields (bytes decoded when they are text)."""
    out: dict[str, Any] = {}
    for fd, value in message.ListFields():
        if fd.is_repeated:
            out[fd.name] = [_value(fd, v) for v in value]
        else:
            out[fd.name] = _value(fd, value)
    return out


def _value(fd: FieldDescriptor, value: Any) -> Any:
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        return to_py(value)
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return "hex:" + value.hex()
    return value


class Runner:
    def __init__(self, client: etcd3.Etcd3Client, prefix: str) -> None:
        self.client = client
        self.p = prefix
        self.steps: Steps = []

    def k(self, suffix: str) -> bytes:
        return (self.p + suffix).encode()

    def call(self, label: str, fn: Callable[[], Any]) -> Any:
        """Record a result (a message becomes a dict) or the gRPC error it raised."""
        try:
            result = fn()
        except grpc.RpcError as err:
            self.steps.append([label, {"error": err.code().name, "details": err.details()}])
            return None
        except etcd3.exceptions.Etcd3Exception as err:
            self.steps.append([label, {"error": type(err).__name__, "details": str(err)}])
            return None
        self.steps.append([label, to_py(result) if hasattr(result, "ListFields") else result])
        return result

    # ---- raw request helpers -------------------------------------------------------------------
    def range(self, label: str, **fields: Any) -> Any:
        return self.call(label, lambda: self.client.kvstub.Range(etcdrpc.RangeRequest(**fields)))

    def put(self, key: str, value: str, **fields: Any) -> Any:
        req = etcdrpc.PutRequest(key=self.k(key), value=value.encode(), **fields)
        return self.call(f"put {key}", lambda: self.client.kvstub.Put(req))


def scenario_range_filters(r: Runner) -> None:
    S = etcdrpc.RangeRequest
    for key, value in [("b", "2"), ("a", "3"), ("d", "1"), ("c", "4"), ("a", "5"), ("e", "0"), ("b", "9")]:
        r.put(key, value)
    first = r.client.get_response(r.k("b")).kvs[0]
    base = first.create_revision  # revision of the first put of this scenario
    start, end = r.k(""), r.k("\xff")
    for label, extra in [
        ("all", {}),
        ("min_mod", {"min_mod_revision": base + 4}),
        ("max_mod", {"max_mod_revision": base + 3}),
        ("min_create", {"min_create_revision": base + 2}),
        ("max_create", {"max_create_revision": base + 1}),
        ("mod window", {"min_mod_revision": base + 2, "max_mod_revision": base + 5}),
        ("create window", {"min_create_revision": base + 1, "max_create_revision": base + 3}),
        ("filters+limit", {"min_mod_revision": base + 1, "limit": 2}),
        ("filters+count_only", {"min_mod_revision": base + 4, "count_only": True}),
        ("count_only", {"count_only": True}),
        ("count_only+limit", {"count_only": True, "limit": 1}),
        ("keys_only", {"keys_only": True}),
        ("limit", {"limit": 3}),
        ("limit > count", {"limit": 30}),
        ("serializable", {"serializable": True}),
        ("at rev", {"revision": base + 3}),
        ("at rev+filter", {"revision": base + 5, "min_create_revision": base + 2}),
        ("none order, value target", {"sort_order": S.NONE, "sort_target": S.VALUE}),
        ("none order, key target", {"sort_order": S.NONE, "sort_target": S.KEY}),
        ("descend key", {"sort_order": S.DESCEND, "sort_target": S.KEY}),
        ("ascend version", {"sort_order": S.ASCEND, "sort_target": S.VERSION}),
        ("descend version limit", {"sort_order": S.DESCEND, "sort_target": S.VERSION, "limit": 2}),
        ("ascend create", {"sort_order": S.ASCEND, "sort_target": S.CREATE}),
        ("descend mod", {"sort_order": S.DESCEND, "sort_target": S.MOD}),
        ("descend value keys_only", {"sort_order": S.DESCEND, "sort_target": S.VALUE, "keys_only": True}),
        ("sorted+filtered+limited", {"sort_order": S.DESCEND, "sort_target": S.VALUE,
                                     "min_mod_revision": base + 1, "limit": 2}),
    ]:
        r.range(label, key=start, range_end=end, **extra)
    r.range("single key, range_end empty", key=r.k("a"))
    r.range("from key (range_end \\0)", key=r.k("c"), range_end=b"\0", keys_only=True, limit=3)
    r.range("range_end < key", key=r.k("d"), range_end=r.k("a"))
    r.range("future rev", key=start, range_end=end, revision=10_000)
    r.range("empty key", key=b"")
    # the library's own helpers
    r.call("get", lambda: [(v, m.version) for v, m in [r.client.get(r.k("a"))]])
    r.call("get_prefix sorted", lambda: [(v.decode(), m.key.decode()) for v, m in
                                         r.client.get_prefix(r.p, sort_order="descend", sort_target="value")])
    r.call("get_range", lambda: [m.key.decode() for _, m in r.client.get_range(r.k("b"), r.k("e"))])


def scenario_txn(r: Runner) -> None:
    C = etcdrpc.Compare
    r.put("a", "1")
    r.put("b", "2")
    r.put("c", "3")
    lease = r.call("grant", lambda: r.client.leasestub.LeaseGrant(etcdrpc.LeaseGrantRequest(TTL=300, ID=4242)))
    r.put("leased", "x", lease=4242 if lease else 0)

    def txn(label: str, compares: list[Any], success: list[Any], failure: list[Any] | None = None) -> None:
        req = etcdrpc.TxnRequest(compare=compares, success=success, failure=failure or [])
        r.call(label, lambda: r.client.kvstub.Txn(req))

    def get(key: str, **kw: Any) -> Any:
        return etcdrpc.RequestOp(request_range=etcdrpc.RangeRequest(key=r.k(key), **kw))

    def put(key: str, value: str, **kw: Any) -> Any:
        return etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(key=r.k(key), value=value.encode(), **kw))

    def delete(key: str, **kw: Any) -> Any:
        return etcdrpc.RequestOp(request_delete_range=etcdrpc.DeleteRangeRequest(key=r.k(key), **kw))

    def nested(success: list[Any], failure: list[Any] | None = None, compares: list[Any] | None = None) -> Any:
        return etcdrpc.RequestOp(request_txn=etcdrpc.TxnRequest(compare=compares or [], success=success,
                                                                failure=failure or []))

    def cmp(key: str, target: int, result: int, range_end: bytes = b"", **value: Any) -> Any:
        return C(key=r.k(key), target=target, result=result, range_end=range_end, **value)

    txn("lease equal", [cmp("leased", C.LEASE, C.EQUAL, lease=4242)], [get("leased")], [get("a")])
    txn("lease not equal", [cmp("leased", C.LEASE, C.NOT_EQUAL, lease=4242)], [get("leased")], [get("a")])
    txn("no lease = 0", [cmp("a", C.LEASE, C.EQUAL, lease=0)], [get("a")])
    txn("missing key lease", [cmp("zz", C.LEASE, C.EQUAL, lease=0)], [get("a")], [get("b")])
    txn("range compare all > 0", [cmp("a", C.VERSION, C.GREATER, range_end=r.k("d"), version=0)], [get("a")])
    txn("range compare value", [cmp("a", C.VALUE, C.EQUAL, range_end=r.k("d"), value=b"1")], [get("a")], [get("b")])
    txn("range compare mod <", [cmp("", C.MOD, C.LESS, range_end=r.k("\xff"), mod_revision=10_000)], [get("c")])
    txn("range compare over nothing", [cmp("x", C.VALUE, C.EQUAL, range_end=r.k("y"), value=b"q")], [get("a")])
    txn("value of missing key", [cmp("zz", C.VALUE, C.EQUAL, value=b"")], [get("a")], [get("b")])
    txn("nested", [], [put("n1", "1"), nested([put("n2", "2"), get("n1")]), get("n2")])
    txn("nested failure branch", [cmp("a", C.VALUE, C.EQUAL, value=b"nope")], [],
        [nested([get("a")], [get("b")], [cmp("b", C.VALUE, C.EQUAL, value=b"2")])])
    txn("nested duplicate put", [], [put("n3", "1"), nested([put("n3", "2")])])
    txn("nested duplicate across branches ok", [], [nested([put("n4", "1")], [put("n4", "2")]), get("n4")])
    txn("delete range + put inside", [], [delete("a", range_end=r.k("c")), put("b", "new")])
    txn("prev_kv", [], [put("a", "again", prev_kv=True), delete("c", prev_kv=True)])
    txn("put ignore_value missing", [], [put("missing", "", ignore_value=True)])
    txn("put unknown lease", [], [put("x", "1", lease=999)])
    txn("range with sort and limit", [], [get("", range_end=r.k("\xff"), limit=2,
                                              sort_order=etcdrpc.RangeRequest.DESCEND,
                                              sort_target=etcdrpc.RangeRequest.MOD)])
    txn("future revision range", [], [get("a", revision=10_000)])
    r.call("library transaction", lambda: _library_txn(r))


def _library_txn(r: Runner) -> Any:
    client = r.client
    ok, responses = client.transaction(
        compare=[client.transactions.value(r.k("a")) == b"again", client.transactions.version(r.k("b")) > 0],
        success=[client.transactions.put(r.k("lib"), b"yes"), client.transactions.get(r.k("lib"))],
        failure=[client.transactions.delete(r.k("lib"))],
    )
    return [ok, [[(v.decode(), m.version) for v, m in resp] if isinstance(resp, list) else to_py(resp)
                 for resp in responses]]


def scenario_put_delete(r: Runner) -> None:
    r.put("a", "1")
    r.put("a", "2", prev_kv=True)
    r.put("a", "", ignore_value=True, prev_kv=True)
    r.put("nokey", "", ignore_value=True)
    r.put("a", "3", ignore_lease=True)
    r.put("a", "3", lease=12345)
    r.put("b", "x" * 10)
    r.call("range after", lambda: r.client.kvstub.Range(etcdrpc.RangeRequest(key=r.k(""), range_end=r.k("\xff"))))
    r.call("delete prev_kv", lambda: r.client.kvstub.DeleteRange(
        etcdrpc.DeleteRangeRequest(key=r.k("a"), range_end=r.k("c"), prev_kv=True)))
    r.call("delete nothing", lambda: r.client.kvstub.DeleteRange(etcdrpc.DeleteRangeRequest(key=r.k("a"))))
    r.call("delete empty key", lambda: r.client.kvstub.DeleteRange(etcdrpc.DeleteRangeRequest(key=b"")))
    r.call("put empty key", lambda: r.client.kvstub.Put(etcdrpc.PutRequest(key=b"", value=b"v")))
    r.call("library put/get/delete", lambda: [r.client.put(r.k("lib"), "v") is not None,
                                              r.client.get(r.k("lib"))[0], r.client.delete(r.k("lib")),
                                              r.client.delete(r.k("lib")), r.client.get(r.k("lib"))[0]])
    r.call("replace", lambda: [r.client.replace(r.k("rep"), b"a", b"b"), r.client.put(r.k("rep"), "a") and None,
                               r.client.replace(r.k("rep"), b"a", b"b"), r.client.get(r.k("rep"))[0]])
    r.call("put_if_not_exists", lambda: [r.client.put_if_not_exists(r.k("pine"), "1"),
                                         r.client.put_if_not_exists(r.k("pine"), "2")])


def scenario_watch(r: Runner) -> None:
    W = etcdrpc.WatchCreateRequest
    base_resp = r.put("a", "1")
    base = base_resp.header.revision if base_resp else 0
    r.put("b", "2")
    r.put("a", "3")
    r.call("delete b", lambda: r.client.kvstub.DeleteRange(etcdrpc.DeleteRangeRequest(key=r.k("b"))))
    r.call("txn", lambda: r.client.kvstub.Txn(etcdrpc.TxnRequest(success=[
        etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(key=r.k("c"), value=b"4")),
        etcdrpc.RequestOp(request_delete_range=etcdrpc.DeleteRangeRequest(key=r.k("a")))])))

    def watch(label: str, count: int, key: bytes, **create: Any) -> None:
        """A raw Watch stream: events (and compaction/cancel notices) until ``count`` events."""
        requests: queue.Queue[Any] = queue.Queue()
        requests.put(etcdrpc.WatchRequest(create_request=W(key=key, **create)))

        def request_iter() -> Any:
            while (item := requests.get()) is not None:
                yield item

        call = etcdrpc.WatchStub(r.client.channel).Watch(request_iter(), timeout=20)
        got: list[Any] = []
        try:
            for resp in call:
                got += [to_py(ev) for ev in resp.events]
                if resp.compact_revision or resp.canceled:
                    got.append({"compact_revision": resp.compact_revision, "canceled": resp.canceled,
                                "cancel_reason": resp.cancel_reason})
                    break
                if len(got) >= count:
                    break
        except grpc.RpcError as err:
            got.append({"error": err.code().name, "details": err.details()})
        finally:
            requests.put(None)
            call.cancel()
        r.steps.append([label, got])

    end = r.k("\xff")
    watch("prefix history", 6, r.k(""), range_end=end, start_revision=base)
    watch("prev_kv", 6, r.k(""), range_end=end, start_revision=base, prev_kv=True)
    watch("no put", 2, r.k(""), range_end=end, start_revision=base, filters=[W.NOPUT])
    watch("no delete", 4, r.k(""), range_end=end, start_revision=base, filters=[W.NODELETE], prev_kv=True)
    watch("single key", 3, r.k("a"), start_revision=base)
    watch("from mid", 2, r.k(""), range_end=end, start_revision=base + 4)
    # live: the watch starts at the next revision, so it sees the write wherever it registers
    head = r.client.get_response(r.k("a")).header.revision
    events: queue.Queue[Any] = queue.Queue()
    watch_id = r.client.add_watch_prefix_callback(r.p, events.put, start_revision=head + 1)
    r.put("live", "v")
    try:
        item = events.get(timeout=20)
        r.steps.append(["live", [to_py(ev._event) for ev in item.events]])
    except queue.Empty:
        r.steps.append(["live", "timeout"])
    finally:
        r.client.cancel_watch(watch_id)
    iterator, cancel = r.client.watch_prefix(r.p, start_revision=base)
    seen = []
    for ev in iterator:
        seen.append([type(ev).__name__, ev.key.decode(), ev.value.decode()])
        if len(seen) == 7:
            break
    cancel()
    r.steps.append(["library watch_prefix iterator", seen])


def scenario_lease(r: Runner) -> None:
    ls = r.client.leasestub
    r.call("grant fixed id", lambda: ls.LeaseGrant(etcdrpc.LeaseGrantRequest(TTL=100, ID=7001)))
    r.call("grant same id", lambda: ls.LeaseGrant(etcdrpc.LeaseGrantRequest(TTL=100, ID=7001)))
    r.call("grant tiny ttl", lambda: ls.LeaseGrant(etcdrpc.LeaseGrantRequest(TTL=1, ID=7002)))
    r.call("grant auto id", lambda: ls.LeaseGrant(etcdrpc.LeaseGrantRequest(TTL=50)))
    r.call("grant negative id", lambda: ls.LeaseGrant(etcdrpc.LeaseGrantRequest(TTL=50, ID=-5)))
    r.put("a", "1", lease=7001)
    r.put("b", "2", lease=7001)
    r.put("c", "3", lease=7002)
    r.put("d", "4", lease=4444)

    def ttl(label: str, lease_id: int, keys: bool) -> None:
        try:
            resp = ls.LeaseTimeToLive(etcdrpc.LeaseTimeToLiveRequest(ID=lease_id, keys=keys))
        except grpc.RpcError as err:
            r.steps.append([label, {"error": err.code().name, "details": err.details()}])
            return
        out = to_py(resp)
        if 0 < out.get("TTL", 0) <= out.get("grantedTTL", 0):
            out["TTL"] = "in-range"  # remaining time depends on timing
        out["keys"] = sorted(out.get("keys", []))
        r.steps.append([label, out])

    ttl("ttl 7001 keys", 7001, True)
    ttl("ttl 7001", 7001, False)
    ttl("ttl unknown", 9999, True)
    r.call("leases", lambda: sorted(lease.ID for lease in ls.LeaseLeases(etcdrpc.LeaseLeasesRequest()).leases
                                    if lease.ID in (7001, 7002)))
    r.call("refresh", lambda: [to_py(x) for x in r.client.refresh_lease(7001)])
    r.call("library lease", lambda: [_lib_lease(r)])
    r.call("revoke", lambda: ls.LeaseRevoke(etcdrpc.LeaseRevokeRequest(ID=7001)))
    r.call("revoke again", lambda: ls.LeaseRevoke(etcdrpc.LeaseRevokeRequest(ID=7001)))
    r.call("keys after revoke", lambda: r.client.kvstub.Range(etcdrpc.RangeRequest(
        key=r.k(""), range_end=r.k("\xff"), keys_only=True)))
    ttl("ttl revoked", 7001, True)
    r.call("refresh revoked", lambda: [to_py(x) for x in r.client.refresh_lease(7001)])


def _lib_lease(r: Runner) -> Any:
    lease = r.client.lease(ttl=77)
    r.client.put(r.k("lib"), "v", lease=lease)
    keys = sorted(k.decode() for k in lease.keys)
    granted = lease.granted_ttl
    lease.revoke()
    return [granted, keys, r.client.get(r.k("lib"))[0]]


def scenario_maintenance(r: Runner) -> None:
    ms = r.client.maintenancestub
    r.put("a", "1")
    r.call("alarms", lambda: ms.Alarm(etcdrpc.AlarmRequest(action=etcdrpc.AlarmRequest.GET)))
    status = ms.Status(etcdrpc.StatusRequest())
    r.steps.append(["status fields", sorted(f.name for f, _ in status.ListFields())])
    r.steps.append(["status revision", status.header.revision])
    hash1 = ms.HashKV(etcdrpc.HashKVRequest(revision=0))
    hash2 = ms.HashKV(etcdrpc.HashKVRequest(revision=0))
    r.steps.append(["hashkv stable", hash1.hash == hash2.hash, hash1.compact_revision, hash1.header.revision])
    r.call("hashkv future", lambda: ms.HashKV(etcdrpc.HashKVRequest(revision=10_000)))
    r.call("members", lambda: [(m.name, len(m.client_urls)) for m in r.client.members])


SCENARIOS = {name[len("scenario_"):]: fn for name, fn in globals().items() if name.startswith("scenario_")}


def main() -> None:
    host, port, name, prefix = sys.argv[1:5]
    client = etcd3.client(host=host, port=int(port), timeout=30)
    runner = Runner(client, prefix)
    try:
        SCENARIOS[name](runner)
    finally:
        client.close()
    print(json.dumps(runner.steps, default=_jsonable))


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    raise TypeError(f"not json: {type(value).__name__}")


if __name__ == "__main__":
    main()
