"""The comparison machinery itself: normalization keeps what must match and drops only noise,
and a real difference between the two sides is reported."""

from __future__ import annotations

import pytest
from harness import Ctl, Normalizer, Recorder, Server, ServerPair, assert_steps_same, error_line


def _server() -> Server:
    server = Server(kind="etcd", label="etcd")
    server.client_port, server.peer_port = 12379, 12380
    return server


def test_lease_ids_named_by_first_appearance() -> None:
    norm = Normalizer(_server())
    first, second = 0x694D7F3D1A2B3C04, 0x12
    assert norm.text(f"lease {first:016x} granted with TTL(60s)\n") == "lease <lease1> granted with TTL(60s)\n"
    assert norm.json({"ID": second, "TTL": 5, "cluster_id": 1, "member_id": 2, "raft_term": 3, "revision": 7}) \
        == {"ID": "<lease2>", "TTL": 5, "revision": 7}
    assert norm.json({"kvs": [{"key": "k", "lease": first}, {"key": "j", "lease": 0}]}) \
        == {"kvs": [{"key": "k", "lease": "<lease1>"}, {"key": "j", "lease": "0"}]}
    assert norm.text(f"lease {second:016x} revoked") == "lease <lease2> revoked"
    assert norm.text(f"put k v --lease {first:x}") == "put k v --lease <lease1>"


def test_revisions_are_kept_and_endpoints_replaced() -> None:
    server = _server()
    norm = Normalizer(server)
    doc = {"header": {"cluster_id": 9, "member_id": 8, "revision": 12, "raft_term": 4}, "count": 1}
    assert norm.json(doc) == {"header": {"revision": 12}, "count": 1}
    assert norm.json({"dbSize": 4096, "version": "3.4.23"}, ignore=frozenset({"dbSize", "version"})) \
        == {"dbSize": "<ignored>", "version": "<ignored>"}
    assert norm.text(f"Finished defragmenting etcd member[{server.client_url}]") \
        == "Finished defragmenting etcd member[<client-url>]"


def test_error_line_skips_client_retry_logs() -> None:
    stderr = ('{"level":"warn","ts":"x","caller":"clientv3/retry_interceptor.go:62","msg":"retrying"}\n'
              "Error: etcdserver: key is not provided\n")
    assert error_line(stderr) == "Error: etcdserver: key is not provided"


def test_a_real_difference_is_reported(module_pair: ServerPair) -> None:
    def script(rec: Recorder) -> None:
        # each side stores something different: the comparison must notice
        rec("put", "/harness/k", rec.ctl.server.label)
        rec("get", "/harness/k", "--print-value-only")

    with pytest.raises(AssertionError, match="differs from etcd"):
        assert_steps_same(module_pair, script)


def test_revision_difference_is_reported(both: ServerPair) -> None:
    # a fresh pair: this test leaves the two sides deliberately out of step
    def script(rec: Recorder) -> None:
        if rec.ctl.server is both.ultra:
            rec.ctl.raw("put", "/harness/extra", "x")  # one more revision on one side only
        rec("put", "/harness/r", "v", "-w", "json")

    with pytest.raises(AssertionError, match="differs from etcd"):
        assert_steps_same(both, script)


def test_same_steps_compare_equal(module_pair: ServerPair) -> None:
    assert_steps_same(module_pair, lambda rec: rec("get", "/harness/none", "-w", "json"))
    assert isinstance(Ctl(module_pair.etcd).norm, Normalizer)
