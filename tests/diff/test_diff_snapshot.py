"""etcd's snapshot format both ways, judged by real etcd 3.4 and etcdctl 3.4.

One history (snapshot_history.play) is written to a real etcd and to ultraplane. Then:
 - both answer every read of it alike, HashKV at every revision included;
 - ultraplane's `etcdctl snapshot save` file passes `etcdctl snapshot status` and `snapshot restore`,
   and a real etcd started on the restored directory answers exactly as the etcd that lived the
   history does (keys at every revision, compaction, leases, users, roles, passwords, HashKV);
 - real etcd's snapshot file restores into `ultraplane store --restore` and answers as ultraplane
   itself does;
 - ultraplane's own older snapshot format still restores, and a damaged file is refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import Server, ServerPair, start_pair
from snapshot_history import ROOT_PASSWORD, Client, Played, logins, observe, play

ROOT = ("--user", f"root:{ROOT_PASSWORD}")


@dataclass
class Lived:
    pair: ServerPair
    played: Played
    etcd_view: dict
    ultra_view: dict


def _view(server: Server, played: Played) -> dict:
    client = Client(server.endpoint)
    try:
        client.login("root", ROOT_PASSWORD)
        return {**observe(client, played), **logins(server.endpoint)}
    finally:
        client.close()


@pytest.fixture(scope="module")
def lived() -> Iterator[Lived]:
    pair = start_pair()
    try:
        played = {}
        for server in pair:
            client = Client(server.endpoint)
            try:
                played[server.label] = play(client)
            finally:
                client.close()
        assert played["etcd"] == played["ultraplane"]
        p = played["etcd"]
        yield Lived(pair, p, _view(pair.etcd, p), _view(pair.ultra, p))
    finally:
        pair.cleanup()


def _save(server: Server, path: Path) -> None:
    proc = server.etcdctl("snapshot", "save", str(path), *ROOT)
    assert proc.returncode == 0, proc.stderr
    assert f"Snapshot saved at {path}" in proc.stdout


def _status(path: Path) -> dict:
    proc = Server(kind="etcd", label="tool").etcdctl("snapshot", "status", str(path), "-w", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_same_history_reads_and_hashes_alike(lived: Lived) -> None:
    assert lived.etcd_view["revision"] == lived.played.revision
    # every HashKV from the compaction on is etcd's (the value, not only its presence)
    hashes = {k: v for k, v in lived.ultra_view.items() if k.startswith("hashkv")}
    assert len(hashes) == lived.played.revision - lived.played.compact + 2
    assert lived.ultra_view == lived.etcd_view


def test_ultraplane_snapshot_restores_into_real_etcd(lived: Lived, tmp_path: Path) -> None:
    saved = tmp_path / "ultraplane.db"
    _save(lived.pair.ultra, saved)
    status = _status(saved)
    reference = tmp_path / "etcd.db"
    _save(lived.pair.etcd, reference)
    expected = _status(reference)
    assert status["revision"] == expected["revision"] == lived.played.revision
    assert status["totalKey"] == expected["totalKey"]

    target = Server(kind="etcd", label="restored-etcd")
    try:
        target.work_dir  # noqa: B018 - creates the work dir and names data_dir inside it
        restore = target.etcdctl("snapshot", "restore", str(saved), "--data-dir", target.data_dir)
        assert restore.returncode == 0, restore.stderr
        target.start()
        assert _view(target, lived.played) == lived.etcd_view
        # and it goes on from there like any etcd
        client = Client(target.endpoint)
        client.login("root", ROOT_PASSWORD)
        assert client.put(b"/app/next", b"n") == lived.played.revision + 1
        client.close()
    finally:
        target.cleanup()


def test_real_etcd_snapshot_restores_into_ultraplane(lived: Lived, tmp_path: Path) -> None:
    saved = tmp_path / "etcd.db"
    _save(lived.pair.etcd, saved)
    target = Server(kind="ultraplane", label="restored-ultraplane", flags=["--restore", str(saved)])
    try:
        target.start()
        # (that the restored state, sub-revisions included, survives restarts: tests/store/test_etcdsnapshot.py)
        assert _view(target, lived.played) == lived.ultra_view
        client = Client(target.endpoint)
        client.login("root", ROOT_PASSWORD)
        assert client.put(b"/app/next", b"n") == lived.played.revision + 1
        client.close()
    finally:
        target.cleanup()


def test_restore_refuses_a_damaged_etcd_snapshot(lived: Lived, tmp_path: Path) -> None:
    from ultraplane.cli.store import UsageError, read_snapshot_file

    saved = tmp_path / "etcd.db"
    _save(lived.pair.etcd, saved)
    data = bytearray(saved.read_bytes())
    data[4096 * 3 + 100] ^= 0xFF
    saved.write_bytes(bytes(data))
    with pytest.raises(UsageError, match="is corrupt: its SHA-256 trailer does not match"):
        read_snapshot_file(saved)


def test_ultraplane_older_own_format_still_restores(tmp_path: Path) -> None:
    """Files saved before the etcd format: the store's own frames, zero-padded, SHA-256 last;
    `store --restore` tells them from etcd's by the missing bbolt meta page."""
    from ultraplane.cli.store import read_snapshot_file, snapshot_to_native
    from ultraplane.journal.file import FileJournal
    from ultraplane.store import Store
    from ultraplane.store.auth import AuthStore
    from ultraplane.store.types import PutRequest, RangeRequest

    async def build() -> bytes:
        store = Store(FileJournal(str(tmp_path / "old"), fsync=False))
        store.attach(AuthStore(store))
        await store.open()
        for i in range(5):
            await store.put(PutRequest(b"/old/%d" % i, b"v%d" % i))
        body = b"".join(store.snapshot_chunks())
        await store.close()
        return body + b"\0" * (-len(body) % 512)

    async def restore(chunks: list[bytes]) -> list[tuple[int, int]]:
        seed = FileJournal(str(tmp_path / "new"), fsync=False)
        seed.open()
        await seed.write_snapshot(chunks)
        await seed.close()
        store = Store(FileJournal(str(tmp_path / "new"), fsync=False))
        store.attach(AuthStore(store))
        await store.open()
        try:
            res = store.range(RangeRequest(b"/old/", b"/old0"))
            return [(kv.mod_revision, kv.version) for kv in res.kvs] + [(res.revision, 0)]
        finally:
            await store.close()

    body = asyncio.run(build())
    saved = tmp_path / "old.db"
    saved.write_bytes(body + hashlib.sha256(body).digest())
    chunks = snapshot_to_native(read_snapshot_file(saved))
    assert chunks == [body]  # kept as it is
    assert asyncio.run(restore(chunks)) == [(r, 1) for r in range(2, 7)] + [(6, 0)]
