"""`etcdctl snapshot save` from one store, `ultraplane store --restore` into a new data dir."""

from __future__ import annotations

import json
from pathlib import Path

from tests.harness import Server


def test_snapshot_save_then_restore(tmp_path: Path) -> None:
    source = Server(kind="ultraplane", label="source")
    source.start()
    try:
        for i in range(20):
            source.etcdctl("put", f"restore/{i:02d}", f"value-{i}")
        source.etcdctl("del", "restore/00")
        snapshot = tmp_path / "snap.db"
        saved = source.etcdctl("snapshot", "save", str(snapshot))
        assert saved.returncode == 0, saved.stderr
        before = json.loads(source.etcdctl("get", "restore/", "--prefix", "-w", "json").stdout)
    finally:
        source.stop()
        source.cleanup()

    restored = Server(kind="ultraplane", label="restored", flags=["--restore", str(snapshot)])
    restored.start()
    try:
        after = json.loads(restored.etcdctl("get", "restore/", "--prefix", "-w", "json").stdout)
        assert after["kvs"] == before["kvs"]
        assert after["header"]["revision"] == before["header"]["revision"] == 22
        # the restored store takes writes, continuing the revision sequence
        restored.etcdctl("put", "restore/new", "x")
        latest = json.loads(restored.etcdctl("get", "restore/new", "-w", "json").stdout)
        assert latest["kvs"][0]["mod_revision"] == 23
    finally:
        restored.stop()
        restored.cleanup()


def test_restore_refuses_a_corrupt_snapshot(tmp_path: Path) -> None:
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"not a snapshot" * 10)
    server = Server(kind="ultraplane", label="corrupt", flags=["--restore", str(bad)])
    server.spawn(new_ports=True)
    assert server.proc is not None
    assert server.proc.wait(30) == 1
    assert "is corrupt: its SHA-256 trailer does not match" in server.log_tail()
    server.cleanup()
