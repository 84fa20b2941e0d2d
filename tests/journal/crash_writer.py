"""Child process for test_crash: append records as fast as possible until killed.

Usage: python crash_writer.py DATA_DIR. Writes the sequence number of every record whose
append future has resolved (i.e. acknowledged as durable) to stdout, one per line, after it
resolves. Takes snapshots as the journal asks for them and rolls segments often, so a kill
can land in any of those paths too.
"""

from __future__ import annotations

import asyncio
import os
import sys

import uvloop

from ultraplane.journal import FileJournal

APPENDERS = 8
SEGMENT_BYTES = 16 * 1024
SNAPSHOT_BYTES = 48 * 1024


def record(seq: int) -> bytes:
    """Record bytes depend only on the sequence number, so the test can check them: mostly
    0..2000 bytes, every 61st 1 MiB (a kill in the middle of such a write() can tear it)."""
    if seq % 61 == 0:
        return b"%d;" % seq * (2**20 // len(b"%d;" % seq))
    return (b"%d;" % seq * 500)[: seq * 131 % 2001]


def snapshot(upto: int) -> list[bytes]:
    return [b"upto:%d\n" % upto, bytes(range(256)) * 40]


async def main(directory: str) -> None:
    journal = FileJournal(directory, segment_bytes=SEGMENT_BYTES, snapshot_bytes=SNAPSHOT_BYTES)
    recovery = journal.open()
    if recovery.snapshot is not None:
        recovery.snapshot.close()
    for _ in recovery.records:
        pass
    snapshot_running: list[asyncio.Future[None]] = []

    async def appender() -> None:
        while True:
            seq = journal.last_seq + 1
            await journal.append(record(seq))
            os.write(1, b"%d\n" % seq)
            if journal.snapshot_due() and not snapshot_running:
                snapshot_running.append(journal.write_snapshot(snapshot(journal.last_seq)))
                await snapshot_running[0]
                snapshot_running.clear()

    await asyncio.gather(*(appender() for _ in range(APPENDERS)))


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1]))
