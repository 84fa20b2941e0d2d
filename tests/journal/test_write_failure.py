"""A real write failure (the file size limit, RLIMIT_FSIZE, in a child process) poisons the
journal: waiting appends fail, later ones are refused, and a reopen keeps every acknowledged
record and cuts the partly written one."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import ultraplane
from ultraplane.journal import FileJournal

CHILD = """
import asyncio, os, resource, signal, sys
from ultraplane.journal import FileJournal, JournalClosed, JournalError

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so an oversized write fails with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))

async def main():
    journal = FileJournal(sys.argv[1])
    journal.open()
    acked = 0
    failed = 0
    for round_ in range(200):
        futures = [journal.append(b"%d" % (round_ * 10 + i) * 100) for i in range(10)]
        for future in futures:
            try:
                await future
                acked += 1
            except JournalError as exc:
                assert "File too large" in repr(exc.__cause__), repr(exc.__cause__)
                failed += 1
        if failed:
            break
    try:
        journal.append(b"after the failure")
    except JournalClosed as exc:
        print("refused:", exc, file=sys.stderr)
    else:
        raise AssertionError("append after a failed write was accepted")
    await journal.close()
    print(acked, failed)

asyncio.run(main())
"""


def test_write_failure_poisons_the_journal_and_loses_nothing_acknowledged(tmp_path: Path) -> None:
    src = str(Path(ultraplane.__file__).resolve().parent.parent)
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path)],
        capture_output=True,
        env={**os.environ, "PYTHONPATH": src},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr.decode()
    acked, failed = map(int, result.stdout.split())
    assert acked > 0 and failed > 0
    assert b"refused" in result.stderr

    journal = FileJournal(str(tmp_path))
    recovery = journal.open()
    records = list(recovery.records)
    asyncio.run(journal.close())
    # every acknowledged record, in order; the batch that failed may be partly there (it was
    # written but never acknowledged), but never garbage
    expected = [b"%d" % n * 100 for n in range(acked + failed)]
    assert records[:acked] == expected[:acked]
    assert records == expected[: len(records)]
    assert recovery.truncated_bytes > 0  # the write stopped at the size limit, mid-record
