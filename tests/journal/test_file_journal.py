"""FileJournal on a real directory: framing, torn tails, corruption, group commit, snapshots."""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

import ultraplane
from ultraplane.journal import FileJournal, JournalCorrupt, JournalLocked
from ultraplane.journal.file import RECORD_HEADER, SEGMENT_HEADER, SNAPSHOT_HEADER


def payload(seq: int) -> bytes:
    """A record whose bytes depend only on its number, of varying length (0..300 bytes)."""
    body = f"record-{seq}:".encode()
    return (body * (seq % 17))[: (seq * 37) % 301]


async def reopen(directory: Path, **kwargs: int) -> tuple[bytes | None, list[bytes], int]:
    """Open the journal, read everything it recovers, close it."""
    journal = FileJournal(str(directory), **kwargs)
    recovery = journal.open()
    snapshot = None
    if recovery.snapshot is not None:
        with recovery.snapshot as f:
            snapshot = f.read()
    records = list(recovery.records)
    await journal.close()
    return snapshot, records, recovery.truncated_bytes


async def write_records(directory: Path, seqs: range, **kwargs: int) -> FileJournal:
    journal = FileJournal(str(directory), **kwargs)
    journal.open()
    await asyncio.gather(*(journal.append(payload(seq)) for seq in seqs))
    await journal.close()
    return journal


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("segment-*.wal"))


def record_offsets(segment: Path) -> list[tuple[int, int]]:
    """(start, end) of every record in a segment, parsed independently of the journal code."""
    data = segment.read_bytes()
    offsets = []
    offset = SEGMENT_HEADER.size
    while offset < len(data):
        _crc, length, _seq = RECORD_HEADER.unpack_from(data, offset)
        end = offset + RECORD_HEADER.size + length
        offsets.append((offset, end))
        offset = end
    return offsets


async def test_round_trip(tmp_path: Path) -> None:
    assert await reopen(tmp_path) == (None, [], 0)
    special = [b"", b"\x00" * 64, os.urandom(200_000)]
    journal = FileJournal(str(tmp_path))
    journal.open()
    futures = [journal.append(payload(seq)) for seq in range(1, 201)]
    futures += [journal.append(record) for record in special]
    await asyncio.gather(*futures)
    assert journal.durable_seq == journal.last_seq == 203
    await journal.close()
    expected = [payload(seq) for seq in range(1, 201)] + special
    assert await reopen(tmp_path) == (None, expected, 0)

    # appending after a reopen continues the same sequence
    journal = FileJournal(str(tmp_path))
    journal.open()
    await journal.append(b"after reopen")
    assert journal.last_seq == 204
    await journal.close()
    assert (await reopen(tmp_path))[1] == [*expected, b"after reopen"]


async def test_rollover_by_size_keeps_order(tmp_path: Path) -> None:
    await write_records(tmp_path, range(1, 301), segment_bytes=2000)
    assert len(segments(tmp_path)) > 5
    journal = FileJournal(str(tmp_path), segment_bytes=2000)
    journal.open()
    for seq in range(301, 401):
        await journal.append(payload(seq))
    await journal.close()
    assert (await reopen(tmp_path))[1] == [payload(seq) for seq in range(1, 401)]
    assert sum(p.stat().st_size for p in segments(tmp_path)) == journal.size_bytes


async def test_group_commit_batches_concurrent_appends(tmp_path: Path) -> None:
    journal = FileJournal(str(tmp_path))
    journal.open()
    rounds = 10

    async def appender(worker: int) -> None:
        for round_ in range(rounds):
            await journal.append(b"%d/%d" % (worker, round_))

    await asyncio.gather(*(appender(worker) for worker in range(100)))
    stats = journal.stats
    await journal.close()
    assert stats.appends == 1000
    # every round of 100 appends shares one write and one fsync (a couple of stragglers allowed)
    assert stats.fsyncs <= 2 * rounds + 2, stats
    assert stats.batches == stats.fsyncs
    assert stats.largest_batch >= 50, stats
    records = (await reopen(tmp_path))[1]
    assert sorted(records) == sorted(b"%d/%d" % (w, r) for w in range(100) for r in range(rounds))
    # each worker's records are in the order it appended them
    for worker in range(5):
        mine = [r for r in records if r.startswith(b"%d/" % worker)]
        assert mine == [b"%d/%d" % (worker, r) for r in range(rounds)]


async def test_appends_during_a_flush_share_the_next_batch(tmp_path: Path) -> None:
    journal = FileJournal(str(tmp_path))
    journal.open()
    first = journal.append(b"first")
    await asyncio.sleep(0)  # the writer takes "first" and starts its fsync
    later = [journal.append(b"later %d" % i) for i in range(50)]
    await asyncio.gather(first, *later)
    assert (journal.stats.batches, journal.stats.fsyncs, journal.stats.largest_batch) == (2, 2, 50)
    await journal.close()


async def test_lone_writer_commits_each_record_alone(tmp_path: Path) -> None:
    journal = FileJournal(str(tmp_path))
    journal.open()
    for seq in range(1, 21):
        await journal.append(payload(seq))
        assert journal.durable_seq == seq
    assert journal.stats.fsyncs == journal.stats.batches == 20
    await journal.flush()  # nothing pending: returns at once, no extra fsync
    assert journal.stats.fsyncs == 20
    await journal.close()


async def test_unsafe_no_fsync_writes_in_order_without_fsync(tmp_path: Path) -> None:
    journal = FileJournal(str(tmp_path), fsync=False)
    journal.open()
    await asyncio.gather(*(journal.append(payload(seq)) for seq in range(1, 101)))
    assert journal.stats.fsyncs == 0
    await journal.close()
    assert (await reopen(tmp_path))[1] == [payload(seq) for seq in range(1, 101)]


async def test_torn_tail_at_every_byte_is_cut_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = tmp_path / "source"
    await write_records(source, range(1, 6))
    (segment,) = segments(source)
    whole = segment.read_bytes()
    last_start, last_end = record_offsets(segment)[-1]
    assert last_end == len(whole) and last_end - last_start > 40

    for cut_at in range(last_start, last_end):
        directory = tmp_path / f"cut-{cut_at}"
        directory.mkdir()
        (directory / segment.name).write_bytes(whole[:cut_at])
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="ultraplane.journal"):
            snapshot, records, truncated = await reopen(directory)
        assert records == [payload(seq) for seq in range(1, 5)]
        assert truncated == cut_at - last_start
        assert (directory / segment.name).stat().st_size == last_start
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        if cut_at == last_start:
            assert warnings == []  # nothing torn: the file simply ends between records
        else:
            assert len(warnings) == 1
            assert f"cut {cut_at - last_start} bytes" in warnings[0]
            assert str(directory / segment.name) in warnings[0]
        # the journal goes on from the cut
        journal = FileJournal(str(directory))
        journal.open()
        await journal.append(b"new fifth")
        await journal.close()
        assert (await reopen(directory))[1] == [*records, b"new fifth"]


@pytest.mark.parametrize("tail", [b"\x00" * 4096, b"\xff" * 7, b"garbage that is not a record at all" * 20])
async def test_garbage_after_the_last_record_is_cut(
    tmp_path: Path, tail: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    await write_records(tmp_path, range(1, 6))
    (segment,) = segments(tmp_path)
    with segment.open("ab") as f:
        f.write(tail)
    with caplog.at_level(logging.WARNING, logger="ultraplane.journal"):
        _, records, truncated = await reopen(tmp_path)
    assert records == [payload(seq) for seq in range(1, 6)]
    assert truncated == len(tail)
    assert any(f"cut {len(tail)} bytes" in r.getMessage() for r in caplog.records)


async def test_damage_in_the_last_record_is_cut(tmp_path: Path) -> None:
    source = tmp_path / "source"
    await write_records(source, range(1, 6))
    (segment,) = segments(source)
    whole = segment.read_bytes()
    last_start, last_end = record_offsets(segment)[-1]
    for position in range(last_start, last_end, 7):
        directory = tmp_path / f"flip-{position}"
        directory.mkdir()
        damaged = bytearray(whole)
        damaged[position] ^= 0x40
        (directory / segment.name).write_bytes(damaged)
        _, records, truncated = await reopen(directory)
        assert records == [payload(seq) for seq in range(1, 5)]
        assert truncated == last_end - last_start


async def test_damage_in_the_middle_raises_and_changes_nothing(tmp_path: Path) -> None:
    source = tmp_path / "source"
    await write_records(source, range(1, 11))
    (segment,) = segments(source)
    whole = segment.read_bytes()
    offsets = record_offsets(segment)
    start, end = offsets[3]  # record 4 of 10
    # every field: crc, length, seq, payload start, payload end
    for position in (start, start + 4, start + 8, start + RECORD_HEADER.size, end - 1):
        directory = tmp_path / f"flip-{position}"
        directory.mkdir()
        damaged = bytearray(whole)
        damaged[position] ^= 0x01
        (directory / segment.name).write_bytes(damaged)
        with pytest.raises(JournalCorrupt, match="not a torn tail") as raised:
            FileJournal(str(directory)).open()
        assert f"offset {start}" in str(raised.value)
        assert (directory / segment.name).read_bytes() == damaged  # nothing was cut
        # and the lock was released: a second attempt fails the same way, not with JournalLocked
        with pytest.raises(JournalCorrupt):
            FileJournal(str(directory)).open()


async def test_damage_in_a_sealed_segment_raises_even_at_its_end(tmp_path: Path) -> None:
    await write_records(tmp_path, range(1, 101), segment_bytes=1500)
    first = segments(tmp_path)[0]
    data = bytearray(first.read_bytes())
    data[-1] ^= 0x01  # last byte of the last record of a sealed segment
    first.write_bytes(data)
    with pytest.raises(JournalCorrupt, match="sealed"):
        FileJournal(str(tmp_path)).open()
    first.write_bytes(data[:-10])  # a sealed segment cut short is damage too
    with pytest.raises(JournalCorrupt, match="sealed"):
        FileJournal(str(tmp_path)).open()


async def test_missing_segment_raises(tmp_path: Path) -> None:
    await write_records(tmp_path, range(1, 101), segment_bytes=1500)
    segments(tmp_path)[1].unlink()
    with pytest.raises(JournalCorrupt, match="records are missing"):
        FileJournal(str(tmp_path)).open()
    segments(tmp_path)[0].unlink()
    with pytest.raises(JournalCorrupt, match="are gone"):
        FileJournal(str(tmp_path)).open()


async def test_damaged_segment_header_raises(tmp_path: Path) -> None:
    await write_records(tmp_path, range(1, 4))
    (segment,) = segments(tmp_path)
    data = bytearray(segment.read_bytes())
    data[2] ^= 0x01
    segment.write_bytes(data)
    with pytest.raises(JournalCorrupt, match="header"):
        FileJournal(str(tmp_path)).open()


async def test_snapshot_then_records(tmp_path: Path) -> None:
    journal = FileJournal(str(tmp_path), snapshot_bytes=5000, segment_bytes=3000)
    journal.open()
    seq = 0
    while not journal.snapshot_due():
        seq += 1
        journal.append(payload(seq))
    assert seq > 10
    snapshot_at = seq
    state = [b"state up to %d|" % snapshot_at, os.urandom(100_000)]
    done = journal.write_snapshot(iter(state))  # position and state are taken here
    assert not journal.snapshot_due()
    for seq in range(snapshot_at + 1, snapshot_at + 21):
        journal.append(payload(seq))
    await done
    await journal.flush()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert f"snapshot-{snapshot_at:020d}.snap" in files
    assert not [name for name in files if name.endswith(".tmp")]
    assert journal.size_bytes == sum(p.stat().st_size for p in tmp_path.iterdir() if p.name != "LOCK")
    await journal.close()

    snapshot, records, _ = await reopen(tmp_path)
    assert snapshot == b"".join(state)
    assert records == [payload(s) for s in range(snapshot_at + 1, snapshot_at + 21)]


async def test_snapshots_drop_redundant_files(tmp_path: Path) -> None:
    journal = FileJournal(str(tmp_path), segment_bytes=1000)
    journal.open()
    seq = 0
    for _round in range(5):
        for _ in range(50):
            seq += 1
            journal.append(payload(seq))
        await journal.write_snapshot([b"state %d" % seq])
    for _ in range(5):
        seq += 1
        journal.append(payload(seq))
    await journal.close()
    snapshots = sorted(p.name for p in tmp_path.glob("*.snap"))
    assert snapshots == [f"snapshot-{s:020d}.snap" for s in (200, 250)]  # the two newest are kept
    # segments hold only what the older kept snapshot needs
    first_seqs = [int(p.name[8:28]) for p in segments(tmp_path)]
    assert first_seqs[0] == 201
    snapshot, records, _ = await reopen(tmp_path)
    assert snapshot == b"state 250"
    assert records == [payload(s) for s in range(251, 256)]


async def test_torn_snapshot_falls_back_to_the_previous_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = FileJournal(str(tmp_path))
    journal.open()
    for seq in range(1, 11):
        journal.append(payload(seq))
    await journal.write_snapshot([b"state 10"])
    for seq in range(11, 21):
        journal.append(payload(seq))
    await journal.write_snapshot([b"state 20", os.urandom(5000)])
    for seq in range(21, 26):
        journal.append(payload(seq))
    await journal.close()

    newest = tmp_path / f"snapshot-{20:020d}.snap"
    newest.write_bytes(newest.read_bytes()[:-100])  # torn: short of what its header says
    with caplog.at_level(logging.WARNING, logger="ultraplane.journal"):
        snapshot, records, _ = await reopen(tmp_path)
    assert snapshot == b"state 10"
    assert records == [payload(s) for s in range(11, 26)]
    assert any(str(newest) in r.getMessage() and "damaged" in r.getMessage() for r in caplog.records)
    assert (tmp_path / (newest.name + ".corrupt")).exists() and not newest.exists()

    # the remaining snapshot damaged too: the records before it are gone, which must be an error
    older = tmp_path / f"snapshot-{10:020d}.snap"
    data = bytearray(older.read_bytes())
    data[SNAPSHOT_HEADER.size] ^= 0x01
    older.write_bytes(data)
    with pytest.raises(JournalCorrupt, match=r"no usable snapshot .* records 1\.\.10 are gone"):
        FileJournal(str(tmp_path)).open()


async def test_only_snapshot_damaged_falls_back_to_every_record(tmp_path: Path) -> None:
    journal = FileJournal(str(tmp_path), segment_bytes=500)
    journal.open()
    for seq in range(1, 31):
        journal.append(payload(seq))
    await journal.write_snapshot([b"state 30"])
    for seq in range(31, 36):
        journal.append(payload(seq))
    await journal.close()
    only = tmp_path / f"snapshot-{30:020d}.snap"
    data = bytearray(only.read_bytes())
    data[SNAPSHOT_HEADER.size] ^= 0x01  # payload bit flip: the sha256 catches it
    only.write_bytes(data)
    snapshot, records, _ = await reopen(tmp_path)
    assert snapshot is None
    assert records == [payload(s) for s in range(1, 36)]


async def test_unfinished_snapshot_file_is_ignored(tmp_path: Path) -> None:
    await write_records(tmp_path, range(1, 6))
    (tmp_path / "snapshot-00000000000000000005.snap.tmp").write_bytes(b"half a snapshot")
    assert await reopen(tmp_path) == (None, [payload(s) for s in range(1, 6)], 0)
    assert not list(tmp_path.glob("*.tmp"))


async def test_snapshot_on_an_empty_journal(tmp_path: Path) -> None:
    journal = FileJournal(str(tmp_path))
    journal.open()
    await journal.write_snapshot([b"restored ", b"state"])
    journal.append(b"first record")
    await journal.close()
    assert await reopen(tmp_path) == (b"restored state", [b"first record"], 0)


async def test_second_open_of_a_directory_is_refused(tmp_path: Path) -> None:
    journal = FileJournal(str(tmp_path))
    journal.open()
    with pytest.raises(JournalLocked, match="in use"):
        FileJournal(str(tmp_path)).open()
    # and from another process, as a second server on the same --data-dir would
    src = str(Path(ultraplane.__file__).resolve().parent.parent)
    child = subprocess.run(
        [sys.executable, "-c", LOCK_PROBE, str(tmp_path)],
        capture_output=True,
        env={**os.environ, "PYTHONPATH": src},
        timeout=60,
    )
    assert child.returncode == 3, child.stderr.decode()
    assert str(tmp_path) in child.stdout.decode()
    await journal.close()
    assert await reopen(tmp_path) == (None, [], 0)


LOCK_PROBE = """
import sys
from ultraplane.journal import FileJournal, JournalLocked
try:
    FileJournal(sys.argv[1]).open()
except JournalLocked as exc:
    print(exc)
    sys.exit(3)
"""


async def test_record_header_layout(tmp_path: Path) -> None:
    """The on-disk framing is what the module docstring says (other tools may read it)."""
    await write_records(tmp_path, range(3, 4))
    data = segments(tmp_path)[0].read_bytes()
    magic, first_seq, _ = SEGMENT_HEADER.unpack_from(data, 0)
    assert (magic, first_seq) == (b"UPJSEG1\n", 1)
    _crc, length, seq = struct.unpack_from("<IIQ", data, SEGMENT_HEADER.size)
    assert (length, seq) == (len(payload(3)), 1)
    assert data[SEGMENT_HEADER.size + 16 :] == payload(3)
