"""The service driven by etcdctl 3.4: what etcd's own CLI sees must be what etcd would show."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import signal
import subprocess
from pathlib import Path

from tests.etcd.conftest import CLUSTER_ID, ETCDCTL, MEMBER_ID, MEMBER_NAME, ServerThread


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_put_get_header_and_kv(server: ServerThread) -> None:
    server.etcdctl("put", "/ctl/a", "1")
    out = server.etcdctl_json("get", "/ctl/a")
    header = out["header"]
    assert header["cluster_id"] == CLUSTER_ID
    assert header["member_id"] == MEMBER_ID
    assert header["raft_term"] == 2
    assert header["revision"] == server.store.revision
    [kv] = out["kvs"]
    assert kv["key"] == b64("/ctl/a") and kv["value"] == b64("1")
    assert kv["version"] == 1 and kv["create_revision"] == kv["mod_revision"] == header["revision"]


def test_range_options(server: ServerThread) -> None:
    for i in range(5):
        server.etcdctl("put", f"/ctl/r/{i}", f"v{i}")
    prefix = server.etcdctl("get", "/ctl/r/", "--prefix", "--keys-only").stdout.split()
    assert prefix == [f"/ctl/r/{i}" for i in range(5)]
    limited = server.etcdctl_json("get", "/ctl/r/", "--prefix", "--limit", "2")
    assert len(limited["kvs"]) == 2 and limited["more"] is True and limited["count"] == 5
    desc = server.etcdctl("get", "/ctl/r/", "--prefix", "--keys-only", "--order", "DESCEND").stdout.split()
    assert desc == [f"/ctl/r/{i}" for i in reversed(range(5))]
    ranged = server.etcdctl("get", "/ctl/r/1", "/ctl/r/3", "--keys-only").stdout.split()
    assert ranged == ["/ctl/r/1", "/ctl/r/2"]


def test_history_and_compaction_errors(server: ServerThread) -> None:
    server.etcdctl("put", "/ctl/h", "first")
    rev1 = server.etcdctl_json("get", "/ctl/h")["kvs"][0]["mod_revision"]
    server.etcdctl("put", "/ctl/h", "second")
    old = server.etcdctl("get", "/ctl/h", "--rev", str(rev1), "--print-value-only").stdout.strip()
    assert old == "first"
    future = server.etcdctl("get", "/ctl/h", "--rev", str(server.store.revision + 1000), check=False)
    assert future.returncode != 0
    assert "etcdserver: mvcc: required revision is a future revision" in future.stderr
    assert server.etcdctl("compact", str(rev1 + 1)).stdout.strip() == f"compacted revision {rev1 + 1}"
    gone = server.etcdctl("get", "/ctl/h", "--rev", str(rev1), check=False)
    assert "etcdserver: mvcc: required revision has been compacted" in gone.stderr


def test_delete_with_prev_kv(server: ServerThread) -> None:
    server.etcdctl("put", "/ctl/d/1", "x")
    server.etcdctl("put", "/ctl/d/2", "y")
    out = server.etcdctl("del", "/ctl/d/", "--prefix", "--prev-kv").stdout.split()
    assert out == ["2", "/ctl/d/1", "x", "/ctl/d/2", "y"]
    assert server.etcdctl("del", "/ctl/d/", "--prefix").stdout.strip() == "0"


def test_txn(server: ServerThread) -> None:
    server.etcdctl("put", "/ctl/t", "old")
    script = 'value("/ctl/t") = "old"\n\nput /ctl/t new\nget /ctl/t\n\nput /ctl/t failed\n\n'
    out = server.etcdctl("txn", input=script).stdout.split()
    assert out == ["SUCCESS", "OK", "/ctl/t", "new"]
    out = server.etcdctl("txn", input=script).stdout.split()
    assert out == ["FAILURE", "OK"]
    assert server.etcdctl("get", "/ctl/t", "--print-value-only").stdout.strip() == "failed"


def test_txn_revision_is_atomic(server: ServerThread) -> None:
    before = server.store.revision
    script = "\nput /ctl/ta 1\nput /ctl/tb 2\ndel /ctl/nothing\n\n\n"
    out = server.etcdctl("-w", "json", "txn", input=script).stdout
    assert '"succeeded":true' in out
    a = server.etcdctl_json("get", "/ctl/ta")["kvs"][0]
    b = server.etcdctl_json("get", "/ctl/tb")["kvs"][0]
    assert a["mod_revision"] == b["mod_revision"] == before + 1


def test_validation_errors(server: ServerThread) -> None:
    empty = server.etcdctl("put", "", "x", check=False)
    assert "etcdserver: key is not provided" in empty.stderr
    dup = server.etcdctl("txn", input="\nput /ctl/dup 1\nput /ctl/dup 2\n\n\n", check=False)
    assert "etcdserver: duplicate key given in txn request" in dup.stderr
    missing_key = server.etcdctl("put", "/ctl/never-written", "--ignore-value", check=False)
    assert "etcdserver: key not found" in missing_key.stderr


def test_request_too_large(make_server) -> None:
    small = make_server(max_request_bytes=4096)
    big = small.etcdctl("put", "/ctl/big", "x" * 5000, check=False)
    assert big.returncode != 0 and "etcdserver: request is too large" in big.stderr
    small.etcdctl("put", "/ctl/ok", "x" * 1000)


def test_leases(server: ServerThread) -> None:
    granted = server.etcdctl("lease", "grant", "60").stdout.split()
    lease_hex = granted[1]
    assert granted[-1] == "TTL(60s)"
    server.etcdctl("put", "/ctl/leased", "v", "--lease", lease_hex)
    assert lease_hex in server.etcdctl("lease", "list").stdout
    kept = server.etcdctl("lease", "keep-alive", "--once", lease_hex).stdout
    assert f"lease {lease_hex} keepalived with TTL(60)" in kept
    ttl = server.etcdctl("lease", "timetolive", lease_hex, "--keys").stdout
    assert "granted with TTL(60s)" in ttl and "/ctl/leased" in ttl
    assert server.etcdctl("lease", "revoke", lease_hex).stdout.strip() == f"lease {lease_hex} revoked"
    assert server.etcdctl("get", "/ctl/leased").stdout == ""
    expired = server.etcdctl("lease", "timetolive", lease_hex).stdout.strip()
    assert expired == f"lease {lease_hex} already expired"
    missing = server.etcdctl("lease", "revoke", lease_hex, check=False)
    assert "etcdserver: requested lease not found" in missing.stderr
    gone = server.etcdctl("lease", "keep-alive", "--once", lease_hex, check=False)
    assert "etcdserver: requested lease not found" in gone.stderr  # etcdctl turns TTL 0 into this


def test_cluster_and_maintenance(server: ServerThread) -> None:
    members = server.etcdctl("member", "list").stdout.strip()
    assert (
        members
        == f"{MEMBER_ID:x}, started, {MEMBER_NAME}, http://localhost:2380, http://{server.endpoint}, false"
    )
    status = server.etcdctl_json("endpoint", "status")[0]["Status"]
    assert status["version"] == "3.4.23" and status["leader"] == MEMBER_ID and status["raftTerm"] == 2
    hashkv = server.etcdctl_json("endpoint", "hashkv")[0]["HashKV"]
    assert hashkv["header"]["revision"] == server.store.revision
    assert server.etcdctl("alarm", "list").stdout == ""
    assert "Finished defragmenting" in server.etcdctl("defrag").stdout
    removing = server.etcdctl("member", "remove", "abc", check=False)
    assert "etcdserver: member not found" in removing.stderr
    adding = server.etcdctl("member", "add", "n2", "--peer-urls", "http://127.0.0.1:1", check=False)
    assert adding.returncode != 0 and "single member" in adding.stderr
    moving = server.etcdctl("move-leader", "abc", check=False)
    assert moving.returncode != 0


def test_snapshot_save(server: ServerThread, tmp_path: Path) -> None:
    server.etcdctl("put", "/ctl/snap", "v")
    path = tmp_path / "snap.db"
    out = server.etcdctl("snapshot", "save", str(path))
    assert f"Snapshot saved at {path}" in out.stdout
    data = path.read_bytes()
    body, digest = data[:-32], data[-32:]
    assert len(data) % 512 == 32  # what etcdctl demands of a snapshot with its checksum
    assert hashlib.sha256(body).digest() == digest
    # the saved file restores into a fresh store holding the same data
    assert asyncio.run(_restore_and_get(path, tmp_path / "restored", b"/ctl/snap")) == b"v"


async def _restore_and_get(snapshot: Path, data_dir: Path, key: bytes) -> bytes | None:
    from ultraplane.journal.file import FileJournal
    from ultraplane.store import Store
    from ultraplane.store.auth import AuthStore
    from ultraplane.store.types import RangeRequest

    await Store.restore(str(snapshot), FileJournal(str(data_dir), fsync=False))
    store = Store(FileJournal(str(data_dir), fsync=False))
    store.attach(AuthStore(store))
    await store.open()
    try:
        kvs = store.range(RangeRequest(key)).kvs
        return kvs[0].value if kvs else None
    finally:
        await store.close()


def test_watch_with_etcdctl(server: ServerThread) -> None:
    # Watching from an explicit revision makes the output independent of when the watch is set up.
    start = server.store.revision + 1
    server.etcdctl("put", "/ctl/w/k", "1")
    server.etcdctl("put", "/ctl/elsewhere", "ignored")
    server.etcdctl("put", "/ctl/w/k", "2")
    server.etcdctl("del", "/ctl/w/k")
    proc = subprocess.Popen(
        [
            ETCDCTL,
            "--endpoints",
            server.endpoint,
            "watch",
            "/ctl/w/",
            "--prefix",
            "--prev-kv",
            "--rev",
            str(start),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, ETCDCTL_API="3"),
    )
    expected = ["PUT", "/ctl/w/k", "1"]
    expected += ["PUT", "/ctl/w/k", "1", "/ctl/w/k", "2"]
    expected += ["DELETE", "/ctl/w/k", "2", "/ctl/w/k", ""]
    try:
        got = [proc.stdout.readline().rstrip("\n") for _ in expected]
        assert got == expected
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)


def test_nospace_alarm(make_server) -> None:
    small = make_server(quota_bytes=256 * 1024)
    value = "x" * 60_000
    failed = None
    for i in range(20):
        proc = small.etcdctl("put", f"/ctl/q/{i}", value, check=False)
        if proc.returncode != 0:
            failed = proc
            break
    assert failed is not None and "etcdserver: mvcc: database space exceeded" in failed.stderr
    assert small.etcdctl("alarm", "list").stdout.strip() == f"memberID:{MEMBER_ID} alarm:NOSPACE"
    status = small.etcdctl_json("endpoint", "status")[0]["Status"]
    assert status["errors"] == [f"memberID:{MEMBER_ID} alarm:NOSPACE "]
    assert small.etcdctl("get", "/ctl/q/0", "--print-value-only").stdout.strip() == value  # reads still work
    small.etcdctl("del", "/ctl/q/", "--prefix")
    small.etcdctl("compact", str(small.store.revision))
    assert small.etcdctl("alarm", "disarm").stdout.strip() == f"memberID:{MEMBER_ID} alarm:NOSPACE"
    assert small.etcdctl("alarm", "list").stdout == ""
    small.etcdctl("put", "/ctl/q/after", "ok")
