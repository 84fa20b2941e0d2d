"""Engine throughput (not a test): python bench/store_engine_bench.py [N] [--profile]

Puts go through the real FileJournal with fsync off, from `CONC` concurrent writers (a
server has many clients in flight); gets are latest-revision single-key reads."""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time

from ultraplane.journal.file import FileJournal
from ultraplane.store import Store
from ultraplane.store.types import PutRequest, RangeRequest

CONC = 64


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        store = Store(FileJournal(d, fsync=False))
        await store.open()
        value = b"v" * 100
        reqs = [PutRequest(b"/registry/pods/default/pod-%06d" % (i % 20000), value) for i in range(n)]

        async def writer(start: int) -> None:
            for i in range(start, n, CONC):
                await store.put(reqs[i])

        t = time.perf_counter()
        await asyncio.gather(*(writer(i) for i in range(CONC)))
        dt = time.perf_counter() - t
        print(f"puts: {n} in {dt:.2f}s = {n / dt:,.0f}/s ({CONC} concurrent writers)")

        t = time.perf_counter()
        for i in range(0, 5000):
            await store.put(reqs[i])
        dt = time.perf_counter() - t
        print(f"puts sequential (await each): {5000 / dt:,.0f}/s")

        gets = [RangeRequest(r.key) for r in reqs[:20000]]
        t = time.perf_counter()
        for _ in range(n // 20000 or 1):
            for g in gets:
                store.range(g)
        m = (n // 20000 or 1) * 20000
        dt = time.perf_counter() - t
        print(f"gets: {m} in {dt:.2f}s = {m / dt:,.0f}/s")
        t = time.perf_counter()
        res = store.range(RangeRequest(b"/registry/pods/", b"/registry/pods0", limit=500))
        print(f"list 500 of {res.count}: {(time.perf_counter() - t) * 1000:.1f} ms")
        t = time.perf_counter()
        chunks = list(store.snapshot_chunks())
        print(f"snapshot: {sum(map(len, chunks)) / 1e6:.1f} MB in {time.perf_counter() - t:.2f}s")
        await store.close()


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 100_000
    if "--profile" in sys.argv:
        from pyinstrument import Profiler

        p = Profiler()
        p.start()
        asyncio.run(main(n))
        p.stop()
        print(p.output_text(unicode=False, color=False, show_all=False))
    else:
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
        asyncio.run(main(n))
