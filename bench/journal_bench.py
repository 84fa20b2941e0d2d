"""Benchmark the file journal: appends/s and fsyncs/s with 1 and with N concurrent appenders.

    .venv/bin/python bench/journal_bench.py [--seconds 3] [--record-bytes 256] [--dir PATH]

Runs on uvloop with fsync on (the default; --no-fsync for the unsafe mode). Also measures a raw
write+fdatasync loop on the same filesystem, the ceiling for a lone writer.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from ultraplane.journal import FileJournal  # noqa: E402


def raw_fdatasync_rate(directory: str, record_bytes: int, seconds: float) -> float:
    path = os.path.join(directory, "raw-fsync-probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    data = b"x" * record_bytes
    count = 0
    started = time.perf_counter()
    try:
        while time.perf_counter() - started < seconds:
            os.write(fd, data)
            os.fdatasync(fd)
            count += 1
    finally:
        os.close(fd)
        os.unlink(path)
    return count / (time.perf_counter() - started)


async def run(directory: str, appenders: int, record_bytes: int, seconds: float, fsync: bool) -> dict:
    journal = FileJournal(directory, fsync=fsync)
    journal.open()
    record = os.urandom(record_bytes)
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def appender() -> None:
        while time.perf_counter() < stop:
            begun = time.perf_counter()
            await journal.append(record)
            latencies.append(time.perf_counter() - begun)

    started = time.perf_counter()
    await asyncio.gather(*(appender() for _ in range(appenders)))
    elapsed = time.perf_counter() - started
    stats = journal.stats
    await journal.close()
    latencies.sort()
    return {
        "appenders": appenders,
        "appends_per_s": stats.appends / elapsed,
        "fsyncs_per_s": stats.fsyncs / elapsed,
        "records_per_batch": stats.appends / max(1, stats.batches),
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
        "mb_per_s": stats.bytes_written / elapsed / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--record-bytes", type=int, default=256)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 100])
    parser.add_argument("--dir", default=None, help="parent directory for the data (default: system temp)")
    parser.add_argument("--no-fsync", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="journal-bench-", dir=args.dir) as parent:
        raw = raw_fdatasync_rate(parent, args.record_bytes, min(args.seconds, 2.0))
        print(f"raw write+fdatasync loop: {raw:,.0f}/s")
        for appenders in args.concurrency:
            result = uvloop.run(
                run(
                    os.path.join(parent, f"c{appenders}"),
                    appenders,
                    args.record_bytes,
                    args.seconds,
                    not args.no_fsync,
                )
            )
            print(
                f"{result['appenders']:>4} appender(s): {result['appends_per_s']:>10,.0f} appends/s  "
                f"{result['fsyncs_per_s']:>7,.0f} fsyncs/s  {result['records_per_batch']:>6.1f} records/batch  "
                f"p50 {result['p50_ms']:.2f} ms  p99 {result['p99_ms']:.2f} ms  {result['mb_per_s']:.1f} MB/s"
            )


if __name__ == "__main__":
    main()
