"""The python etcd3 client (the etcd3 package) against the service: KV, txn, watch, lease, errors."""

from __future__ import annotations

from tests.etcd.conftest import MEMBER_NAME, ServerThread


def test_kv(server: ServerThread) -> None:
    out = server.etcd3("kv")
    assert out["value"] == "1" and out["version"] == 1
    assert out["prefix"] == [["1", "/e3/a"], ["2", "/e3/b"]]
    assert out["missing"] is None and out["deleted"] is True
    assert out["after"] == ["/e3/a"]


def test_txn(server: ServerThread) -> None:
    out = server.etcd3("txn")
    assert out == {"ok": True, "got": ["new"], "ok2": False, "value_after": None}


def test_watch(server: ServerThread) -> None:
    out = server.etcd3("watch")
    assert out["seen"] == [
        ["PutEvent", "/e3/w/x", "1"],
        ["PutEvent", "/e3/w/x", "2"],
        ["DeleteEvent", "/e3/w/x", ""],
    ]


def test_lease(server: ServerThread) -> None:
    out = server.etcd3("lease")
    assert out["refreshed"] == [30]
    assert out["granted_ttl"] == 30 and out["keys"] == ["/e3/leased"]
    assert out["remaining_ok"] is True
    assert out["value_after_revoke"] is None


def test_errors(server: ServerThread) -> None:
    out = server.etcd3("errors")
    assert out["revoke_missing"] == "etcdserver: requested lease not found"
    assert out["compacted"] == out["compacted_expected"]


def test_status(server: ServerThread) -> None:
    out = server.etcd3("status")
    assert out["version"] == "3.4.23" and out["leader"] == MEMBER_NAME
    assert out["members"] == [[MEMBER_NAME, [f"http://{server.endpoint}"]]]
