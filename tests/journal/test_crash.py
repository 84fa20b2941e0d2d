"""kill -9 a process that is appending as fast as it can, again and again, on one data directory;
after every kill, every acknowledged record must be there, in order, with nothing else."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import ultraplane
from tests.journal.crash_writer import SEGMENT_BYTES, SNAPSHOT_BYTES, record, snapshot
from ultraplane.journal import FileJournal

TIME_BUDGET_S = 12.0
CHILD = Path(__file__).with_name("crash_writer.py")


def recover(directory: Path) -> tuple[int, int, int]:
    """Open the journal as the server would and check everything in it.
    Returns (snapshot position, last recovered record, bytes cut)."""
    journal = FileJournal(str(directory), segment_bytes=SEGMENT_BYTES, snapshot_bytes=SNAPSHOT_BYTES)
    recovery = journal.open()
    base = 0
    if recovery.snapshot is not None:
        with recovery.snapshot as f:
            data = f.read()
        head, _, _ = data.partition(b"\n")
        assert head.startswith(b"upto:"), data[:40]
        base = int(head[5:])
        assert data == b"".join(snapshot(base)), f"snapshot at {base} has the wrong bytes"
    last = base
    for got in recovery.records:
        last += 1
        assert got == record(last), f"record {last} has the wrong bytes"
    asyncio.run(journal.close())
    return base, last, recovery.truncated_bytes


def test_kill_9_never_loses_an_acknowledged_record(tmp_path: Path) -> None:
    rng = random.Random(1234)
    directory = tmp_path / "data"
    acks_file = tmp_path / "acks"
    src = str(Path(ultraplane.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    started = time.monotonic()
    iterations = acked_iterations = total_acked = total_cut = snapshots_seen = 0
    recovered_before = 0
    while time.monotonic() - started < TIME_BUDGET_S or iterations < 5:
        iterations += 1
        with acks_file.open("wb") as out:
            child = subprocess.Popen([sys.executable, str(CHILD), str(directory)], stdout=out, env=env)
            if rng.random() < 0.2:
                # during interpreter startup, journal recovery or the first appends
                time.sleep(rng.uniform(0.0, 0.4))
            else:
                # while appending: wait for the first acknowledgement, then a random moment more
                while acks_file.stat().st_size == 0 and child.poll() is None:
                    time.sleep(0.005)
                time.sleep(rng.uniform(0.0, 0.25))
            assert child.poll() is None, "the writer exited by itself"
            child.send_signal(signal.SIGKILL)
            child.wait()
        lines = acks_file.read_bytes().split(b"\n")
        acked = [int(line) for line in lines[:-1]]  # a line without its newline was not finished
        base, last, cut = recover(directory)
        if acked:
            acked_iterations += 1
            total_acked += len(acked)
            assert max(acked) <= last, (
                f"iteration {iterations}: acknowledged {max(acked)}, recovered only {last}"
            )
        # records recovered once stay recovered: the next run appends after them
        assert last >= recovered_before, f"iteration {iterations}: had {recovered_before}, now {last}"
        recovered_before = last
        total_cut += cut
        snapshots_seen += base > 0
    print(
        f"\n{iterations} kills, {acked_iterations} while acknowledging, {total_acked} acks checked, "
        f"{recovered_before} records in the journal, {total_cut} torn bytes cut, "
        f"{snapshots_seen} recoveries from a snapshot"
    )
    assert acked_iterations >= iterations // 2
    assert snapshots_seen > 0
