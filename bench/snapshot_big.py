"""Build a 60,000-key store (600 txns of 100 puts, then single puts, compacted 50 revisions back) and write
it as an etcd 3.4 snapshot file, for the snapshot-save and HashKV comparison with etcd (BENCHMARKS.md).

    .venv/bin/python bench/snapshot_big.py /tmp/snapw/big.db
    bench/snapshot_compare.sh /tmp/snapw          # etcd and ultraplane side by side on that data
"""

import asyncio
import hashlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "store"))
from conftest import MemJournal  # noqa: E402 - the tests' in-memory journal

from ultraplane.store import Store  # noqa: E402
from ultraplane.store.etcdsnapshot import Member, export_db  # noqa: E402
from ultraplane.store.types import PutRequest, TxnRequest  # noqa: E402


async def main(out: Path) -> None:
    store = Store(MemJournal())
    await store.open()
    for i in range(0, 60_000, 100):
        await store.txn(TxnRequest(success=[PutRequest(b"/registry/pods/ns%03d/p%06d" % (j % 100, j), b"x" * (j % 3000))
                                            for j in range(i, i + 100)]))
    for i in range(0, 60_000, 7):
        await store.put(PutRequest(b"/registry/pods/ns%03d/p%06d" % (i % 100, i), b"y" * 10))
    await store.compact(store.revision - 50, physical=True)
    db = export_db(store, None, Member(1, "d", ["http://localhost:2380"], []))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(db + hashlib.sha256(db).digest())
    print(f"revision {store.revision}, hashkv {store.hash_kv(0)}, {len(db)} bytes -> {out}")


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/snapw/big.db")))
