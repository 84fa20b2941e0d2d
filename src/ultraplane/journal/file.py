"""A durable journal in plain files: append-only segments plus checksummed snapshots.

Directory layout (everything lives directly in the data directory)::

    LOCK                                    flock(2)'ed while a process has the journal open;
                                            holds that process's pid, for diagnostics
    segment-<first_seq:020d>.wal            an append-only run of records; <first_seq> is the
                                            sequence number of its first record
    snapshot-<seq:020d>.snap                a snapshot standing for records 1..<seq>
    snapshot-<seq:020d>.snap.corrupt        a snapshot found damaged on open, set aside (never read)
    *.tmp                                   a segment or snapshot being created; removed on open

Records are numbered 1, 2, 3, ... across all segments (the "sequence number").

Segment file::

    header  = magic b"UPJSEG1\\n" | u64 first_seq | u32 crc32(magic + first_seq)     (20 bytes)
    record  = u32 crc | u32 length | u64 seq | payload[length]                      (16 + length)
              crc = crc32(length + seq + payload), so a damaged length or seq is caught too

Snapshot file::

    header  = magic b"UPJSNP1\\n" | u64 seq | u64 payload_length | sha256(payload)[32]
              | u32 reserved (0) | u32 crc32(everything before it)                  (64 bytes)
    payload = the state machine's bytes, exactly payload_length of them, to end of file

All integers are little-endian.

Crash safety:

* Records go to the newest segment only. A batch of records is one ``write()`` followed by
  one ``fdatasync()``; every future in the batch resolves after that (group commit).
* A segment is sealed (fsync'ed) before the next one is created, and new segments and
  snapshots are written to a ``.tmp`` name, fsync'ed, renamed into place and the directory
  fsync'ed, so they appear whole or not at all. Hence only the tail of the newest segment
  can be torn. ``open()`` cuts such a tail (truncate + WARNING). Damage anywhere else, or a
  bad record followed by a good one, is a hard ``JournalCorrupt`` error: that is not what a
  crash leaves behind, and cutting there would silently drop acknowledged records.
* The two newest snapshots are kept, with the records after the older one, so a snapshot
  found damaged on open (checked with its sha256) is set aside and recovery falls back to
  the one before it plus its records (or to the empty state plus every record).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import re
import struct
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from ultraplane.journal.base import Recovery

__all__ = ["FileJournal", "JournalClosed", "JournalCorrupt", "JournalError", "JournalLocked", "JournalStats"]

LOCK_NAME = "LOCK"
SEGMENT_MAGIC = b"UPJSEG1\n"
SNAPSHOT_MAGIC = b"UPJSNP1\n"
SEGMENT_HEADER = struct.Struct("<8sQI")
RECORD_HEADER = struct.Struct("<IIQ")  # crc, length, seq
RECORD_LENGTH_AND_SEQ = struct.Struct("<IQ")
SNAPSHOT_HEADER = struct.Struct("<8sQQ32sII")
MAX_RECORD_BYTES = 2**31 - 1
INLINE_FSYNC_SECONDS = 0.001  # a lone record is fsync'ed on the event loop only on disks this fast
SEGMENT_RE = re.compile(r"^segment-(\d{20})\.wal$")
SNAPSHOT_RE = re.compile(r"^snapshot-(\d{20})\.snap$")
# How far past a bad record's sequence number we look for a later good record when deciding
# whether the bad bytes are a torn tail (nothing good after them) or damage in the middle.
LATER_RECORD_SEQ_WINDOW = 0xFFFF
_NONZERO = re.compile(rb"[^\x00]")

# fdatasync also persists the file size, which is all an append needs; fsync where it is missing.
_sync_file_data = getattr(os, "fdatasync", os.fsync)


class JournalError(Exception):
    """The journal cannot do what was asked (I/O failure, misuse)."""


class JournalCorrupt(JournalError):
    """The files on disk are damaged in a way a crash cannot explain; nothing was changed."""


class JournalLocked(JournalError):
    """Another process (or another FileJournal in this one) has the data directory open."""


class JournalClosed(JournalError):
    """append/flush/write_snapshot after close(), or after a write failure poisoned the journal."""


@dataclass
class JournalStats:
    """Counters for tests, benchmarks and status output. Written by the journal's I/O thread."""

    appends: int = 0
    batches: int = 0  # write() calls that carried records (one per group commit)
    fsyncs: int = 0  # fdatasync/fsync calls on segment files (batch commits and seals)
    dir_fsyncs: int = 0
    bytes_written: int = 0
    largest_batch: int = 0
    segments_created: int = 0
    snapshots_written: int = 0


@dataclass
class _Segment:
    first_seq: int
    path: str
    size: int


@dataclass
class _Snapshot:
    seq: int
    path: str
    size: int


@dataclass
class _ScanResult:
    valid_end: int  # offset just past the last whole record
    last_seq: int  # sequence number of the last whole record (first_seq - 1 if none)
    record_bytes_after: int  # framed bytes of records with seq > the `after` argument
    bad_offset: int | None  # where the first bad record starts, if any
    bad_reason: str = ""


def _record_crc(length: int, seq: int, payload: bytes | memoryview) -> int:
    return zlib.crc32(payload, zlib.crc32(RECORD_LENGTH_AND_SEQ.pack(length, seq)))


def _frame(seq: int, payload: bytes) -> bytes:
    length = len(payload)
    return RECORD_HEADER.pack(_record_crc(length, seq, payload), length, seq)


def _segment_name(first_seq: int) -> str:
    return f"segment-{first_seq:020d}.wal"


def _snapshot_name(seq: int) -> str:
    return f"snapshot-{seq:020d}.snap"


def _segment_header(first_seq: int) -> bytes:
    head = SEGMENT_MAGIC + struct.pack("<Q", first_seq)
    return head + struct.pack("<I", zlib.crc32(head))


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _parse_record(buf: bytes, offset: int, expected_seq: int) -> tuple[int, str]:
    """Check the record at offset. Returns (end offset, "") if it is whole and is expected_seq,
    else (-1, why not)."""
    size = len(buf)
    if size - offset < RECORD_HEADER.size:
        return -1, f"incomplete record header ({size - offset} of {RECORD_HEADER.size} bytes)"
    crc, length, seq = RECORD_HEADER.unpack_from(buf, offset)
    end = offset + RECORD_HEADER.size + length
    if end > size:
        return (
            -1,
            f"record claims {length} payload bytes but only {size - offset - RECORD_HEADER.size} remain",
        )
    payload = memoryview(buf)[offset + RECORD_HEADER.size : end]
    if _record_crc(length, seq, payload) != crc:
        return -1, "checksum mismatch"
    if seq != expected_seq:
        return -1, f"record has sequence number {seq}, expected {expected_seq}"
    return end, ""


def _find_later_record(buf: bytes, start: int, expected_seq: int) -> tuple[int, int] | None:
    """Look for a whole record at any offset >= start whose seq is in
    [expected_seq, expected_seq + LATER_RECORD_SEQ_WINDOW]. Returns (offset, seq) or None.

    Candidates are found by searching for the upper six bytes of the seq field with bytes.find,
    which keeps this fast even over a long garbage tail."""
    size = len(buf)
    if buf.count(0, start) == size - start:
        return None  # an all-zero tail (e.g. extended but never written) holds no records
    seq_field = RECORD_HEADER.size - 8  # offset of the seq field inside a record header
    best: tuple[int, int] | None = None
    patterns = {struct.pack("<Q", s)[2:] for s in (expected_seq, expected_seq + LATER_RECORD_SEQ_WINDOW)}
    for pattern in patterns:
        hit = buf.find(pattern, start + seq_field + 2)
        while hit != -1:
            offset = hit - seq_field - 2
            if best is not None and offset >= best[0]:
                break
            if offset + RECORD_HEADER.size <= size:
                crc, length, seq = RECORD_HEADER.unpack_from(buf, offset)
                if seq == 0:
                    # Inside a run of zeros. A record's seq field is never zero, so no record
                    # starts until 15 bytes before the next non-zero byte: jump there.
                    nonzero = _NONZERO.search(buf, offset + seq_field)
                    if nonzero is None:
                        break
                    hit = buf.find(pattern, max(hit + 1, nonzero.start() - 15 + seq_field + 2))
                    continue
                end = offset + RECORD_HEADER.size + length
                if expected_seq <= seq <= expected_seq + LATER_RECORD_SEQ_WINDOW and end <= size:
                    payload = memoryview(buf)[offset + RECORD_HEADER.size : end]
                    if _record_crc(length, seq, payload) == crc:
                        best = (offset, seq)
                        break
            hit = buf.find(pattern, hit + 1)
    return best


def _check_segment_header(buf: bytes, path: str, first_seq: int) -> None:
    if len(buf) < SEGMENT_HEADER.size:
        raise JournalCorrupt(f"journal segment {path}: header is incomplete ({len(buf)} bytes)")
    magic, header_seq, crc = SEGMENT_HEADER.unpack_from(buf, 0)
    if magic != SEGMENT_MAGIC or zlib.crc32(buf[: SEGMENT_HEADER.size - 4]) != crc:
        raise JournalCorrupt(f"journal segment {path}: header is damaged (bad magic or checksum)")
    if header_seq != first_seq:
        raise JournalCorrupt(
            f"journal segment {path}: header says first sequence {header_seq}, file name says {first_seq}"
        )


def _scan_segment(buf: bytes, first_seq: int, after: int) -> _ScanResult:
    offset = SEGMENT_HEADER.size
    seq = first_seq
    counted = 0
    size = len(buf)
    while offset < size:
        end, why = _parse_record(buf, offset, seq)
        if end < 0:
            return _ScanResult(offset, seq - 1, counted, offset, why)
        if seq > after:
            counted += end - offset
        offset = end
        seq += 1
    return _ScanResult(offset, seq - 1, counted, None)


def _iter_segment_records(
    buf: bytes, path: str, first_seq: int, after: int, last_seq: int
) -> Iterator[bytes]:
    offset = SEGMENT_HEADER.size
    seq = first_seq
    while seq <= last_seq:
        end, why = _parse_record(buf, offset, seq)
        if end < 0:
            raise JournalCorrupt(f"journal segment {path} changed while recovering: offset {offset}: {why}")
        if seq > after:
            yield bytes(buf[offset + RECORD_HEADER.size : end])
        offset = end
        seq += 1


class FileJournal:
    """A Journal kept in a local directory. See the module docstring for the format.

    ``fsync=False`` (--unsafe-no-fsync) skips the per-batch fdatasync: appends resolve once
    written to the OS. Segment seals, new files and snapshots are still fsync'ed (they are rare),
    so a power failure in that mode costs recent records but leaves a consistent journal.
    """

    def __init__(
        self,
        directory: str,
        *,
        fsync: bool = True,
        snapshot_bytes: int = 64 * 1024**2,
        segment_bytes: int = 64 * 1024**2,
        retain_snapshots: int = 2,
        logger: logging.Logger | None = None,
    ) -> None:
        if retain_snapshots < 1:
            raise ValueError("retain_snapshots must be at least 1")
        self.directory = os.path.abspath(directory)
        self.fsync = fsync
        self.snapshot_bytes = snapshot_bytes
        self.segment_bytes = segment_bytes
        self.retain_snapshots = retain_snapshots
        self.log = logger or logging.getLogger("ultraplane.journal")
        self.stats = JournalStats()

        self._lock_fd: int | None = None
        self._opened = False
        self._closing = False
        self._closed = False
        self._failure: BaseException | None = None

        # Files on disk. _segments is changed only by the I/O thread once the journal is open.
        self._segments: list[_Segment] = []
        self._snapshots: list[_Snapshot] = []
        self._segment_fd: int | None = None
        self._segment_last_seq = 0  # last record written to the current segment

        # Sequence numbers: appended (queued) <= written (handed to the OS) ... see _run_writer.
        self._appended_seq = 0
        self._durable_seq = 0
        self._bytes_since_snapshot = 0

        # Work queued for the writer task (event loop thread only).
        self._pending_records: list[bytes] = []
        self._pending_futures: list[asyncio.Future[None]] = []
        self._roll_requests: list[tuple[int, asyncio.Future[None]]] = []
        self._flush_waiters: list[asyncio.Future[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._writer_task: asyncio.Task[None] | None = None
        self._snapshot_lock: asyncio.Lock | None = None

        # One thread does all record I/O in order; snapshots get their own so a big one does not
        # hold up commits.
        self._io = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="journal-io")
        # Moving average of a record batch's fsync time. A lone record on a fast disk is written on
        # the event loop itself: two thread handoffs would cost more than the fsync they wrap.
        self._fsync_seconds = 0.0
        self._snapshot_io = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="journal-snapshot")

    # ----------------------------------------------------------------------------------- open

    def open(self) -> Recovery:
        if self._opened:
            raise JournalError("FileJournal.open() may be called only once")
        os.makedirs(self.directory, exist_ok=True)
        self._take_lock()
        try:
            recovery = self._recover()
        except BaseException:
            self._release_lock()
            raise
        self._opened = True
        return recovery

    def _take_lock(self) -> None:
        path = os.path.join(self.directory, LOCK_NAME)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise JournalLocked(
                    f"data directory {self.directory} is in use by another ultraplane process "
                    f"(lock held on {path}); stop it or use another --data-dir"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def _recover(self) -> Recovery:
        segments: list[_Segment] = []
        snapshots: list[_Snapshot] = []
        for name in sorted(os.listdir(self.directory)):
            path = self._path(name)
            if name.endswith(".tmp"):
                self.log.info("journal: removing unfinished file %s", path)
                os.unlink(path)
                continue
            if match := SEGMENT_RE.match(name):
                segments.append(_Segment(int(match.group(1)), path, os.path.getsize(path)))
            elif match := SNAPSHOT_RE.match(name):
                snapshots.append(_Snapshot(int(match.group(1)), path, os.path.getsize(path)))
        segments.sort(key=lambda s: s.first_seq)
        snapshots.sort(key=lambda s: s.seq)

        # Check every record of every segment; cut a torn tail off the newest one.
        truncated = 0
        last_seqs: list[int] = []
        for index, segment in enumerate(segments):
            newest = index == len(segments) - 1
            with open(segment.path, "rb") as f:
                buf = f.read()
            _check_segment_header(buf, segment.path, segment.first_seq)
            if last_seqs and segment.first_seq != last_seqs[-1] + 1:
                raise JournalCorrupt(
                    f"journal segment {segment.path} starts at record {segment.first_seq}, but the "
                    f"segment before it ends at record {last_seqs[-1]}: records are missing"
                )
            scan = _scan_segment(buf, segment.first_seq, 0)
            if scan.bad_offset is not None:
                where = (
                    f"journal segment {segment.path} offset {scan.bad_offset} (record {scan.last_seq + 1})"
                )
                if not newest:
                    raise JournalCorrupt(
                        f"{where}: {scan.bad_reason}; this segment was sealed and fsync'ed before "
                        "the next one was created, so this is damage, not a torn write. Refusing to "
                        "drop acknowledged records; restore this file or the data directory from backup."
                    )
                later = _find_later_record(buf, scan.bad_offset + 1, scan.last_seq + 1)
                if later is not None:
                    raise JournalCorrupt(
                        f"{where}: {scan.bad_reason}, but a whole record (sequence {later[1]}) follows at "
                        f"offset {later[0]}, so this is damage in the middle of the journal, not a torn "
                        "tail. Refusing to drop acknowledged records; restore from backup."
                    )
                cut = len(buf) - scan.valid_end
                self.log.warning(
                    "journal: cut %d bytes of torn or corrupt tail from %s at offset %d (%s); "
                    "the last whole record is sequence %d",
                    cut,
                    segment.path,
                    scan.valid_end,
                    scan.bad_reason,
                    scan.last_seq,
                )
                with open(segment.path, "r+b") as f:
                    f.truncate(scan.valid_end)
                    f.flush()
                    os.fsync(f.fileno())
                segment.size = scan.valid_end
                truncated += cut
            last_seqs.append(scan.last_seq)
        last_seq = last_seqs[-1] if segments else 0

        # Pick the newest snapshot that is whole and whose following records are all here.
        base_seq = 0
        snapshot_file: BinaryIO | None = None
        for snapshot in reversed(list(snapshots)):
            why = self._check_snapshot(snapshot)
            if why:
                aside = snapshot.path + ".corrupt"
                self.log.warning(
                    "journal: snapshot %s is damaged (%s); moved it to %s and falling back to an "
                    "older snapshot and the records after it",
                    snapshot.path,
                    why,
                    aside,
                )
                os.rename(snapshot.path, aside)
                self._fsync_directory()
                snapshots.remove(snapshot)
                continue
            if segments and snapshot.seq < last_seq and segments[0].first_seq > snapshot.seq + 1:
                raise JournalCorrupt(
                    f"snapshot {snapshot.path} stands for records up to {snapshot.seq}, but the oldest "
                    f"journal segment starts at record {segments[0].first_seq}: records are missing"
                )
            base_seq = snapshot.seq
            snapshot_file = open(snapshot.path, "rb")  # noqa: SIM115 - handed to the caller
            snapshot_file.seek(SNAPSHOT_HEADER.size)
            break
        else:
            if segments and segments[0].first_seq != 1:
                raise JournalCorrupt(
                    f"no usable snapshot in {self.directory} and the oldest journal segment starts at "
                    f"record {segments[0].first_seq}: records 1..{segments[0].first_seq - 1} are gone"
                )

        # Segments that hold records after the base, and how many bytes of records that is.
        needed: list[tuple[_Segment, int]] = []
        since_snapshot = 0
        for segment, seg_last in zip(segments, last_seqs, strict=True):
            if seg_last > base_seq:
                needed.append((segment, seg_last))
                since_snapshot += segment.size - SEGMENT_HEADER.size
        if needed and needed[0][0].first_seq <= base_seq:
            # the first needed segment also holds records the snapshot already covers
            with open(needed[0][0].path, "rb") as f:
                buf = f.read()
            first = _scan_segment(buf, needed[0][0].first_seq, base_seq)
            since_snapshot -= needed[0][0].size - SEGMENT_HEADER.size - first.record_bytes_after

        self._segments = segments
        self._snapshots = snapshots
        self._appended_seq = self._durable_seq = max(last_seq, base_seq)
        self._bytes_since_snapshot = since_snapshot
        if segments and last_seq == self._appended_seq:
            current = segments[-1]
            self._segment_fd = os.open(current.path, os.O_WRONLY)
            os.lseek(self._segment_fd, current.size, os.SEEK_SET)
            self._segment_last_seq = last_seq
        else:
            if segments:
                # The snapshot is ahead of every record (e.g. restored into a used directory): the
                # segments hold nothing it lacks and would leave a gap before the next record.
                for segment in segments:
                    self.log.info(
                        "journal: removing %s, covered by snapshot at record %d", segment.path, base_seq
                    )
                    os.unlink(segment.path)
                segments.clear()
                self._fsync_directory()
            self._create_segment(self._appended_seq + 1)
        self.log.info(
            "journal: opened %s: snapshot at record %d, %d records after it, next record %d",
            self.directory,
            base_seq,
            max(0, last_seq - base_seq),
            self._appended_seq + 1,
        )
        return Recovery(
            snapshot=snapshot_file,
            records=self._iter_records(needed, base_seq),
            truncated_bytes=truncated,
        )

    def _iter_records(self, needed: list[tuple[_Segment, int]], after: int) -> Iterator[bytes]:
        # Open every file now, so the iterator still works if a later snapshot deletes them.
        files = [(open(segment.path, "rb"), segment, last) for segment, last in needed]  # noqa: SIM115

        def records() -> Iterator[bytes]:
            try:
                for f, segment, last in files:
                    with f:
                        buf = f.read()
                    yield from _iter_segment_records(buf, segment.path, segment.first_seq, after, last)
            finally:
                for f, _, _ in files:
                    f.close()

        return records()

    @staticmethod
    def _check_snapshot(snapshot: _Snapshot) -> str:
        """Return why the snapshot file is unusable, or "" if it is whole."""
        with open(snapshot.path, "rb") as f:
            head = f.read(SNAPSHOT_HEADER.size)
            if len(head) < SNAPSHOT_HEADER.size:
                return f"header is incomplete ({len(head)} bytes)"
            magic, seq, length, digest, _reserved, crc = SNAPSHOT_HEADER.unpack(head)
            if magic != SNAPSHOT_MAGIC or zlib.crc32(head[:-4]) != crc:
                return "header is damaged (bad magic or checksum)"
            if seq != snapshot.seq:
                return f"header says record {seq}, file name says {snapshot.seq}"
            if snapshot.size != SNAPSHOT_HEADER.size + length:
                return f"file is {snapshot.size} bytes, header says {SNAPSHOT_HEADER.size + length}"
            hasher = hashlib.sha256()
            while chunk := f.read(1024 * 1024):
                hasher.update(chunk)
            if hasher.digest() != digest:
                return "payload sha256 mismatch"
        return ""

    # --------------------------------------------------------------------------- file helpers
    # These run on the I/O thread (or in open(), before that thread has work).

    def _fsync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self.stats.dir_fsyncs += 1

    def _create_segment(self, first_seq: int) -> None:
        """Make segment-<first_seq>.wal appear whole (tmp + fsync + rename + dir fsync) and make
        it the current segment. The previous current segment must already be sealed."""
        name = _segment_name(first_seq)
        final = self._path(name)
        tmp = final + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            header = _segment_header(first_seq)
            _write_all(fd, header)
            os.fsync(fd)
            os.rename(tmp, final)
            self._fsync_directory()
        except BaseException:
            os.close(fd)
            raise
        if self._segment_fd is not None:
            os.close(self._segment_fd)
        self._segment_fd = fd
        self._segment_last_seq = first_seq - 1
        self._segments.append(_Segment(first_seq, final, len(header)))
        self.stats.segments_created += 1

    def _seal_and_roll(self, next_seq: int) -> None:
        assert self._segment_fd is not None
        _sync_file_data(self._segment_fd)  # sealed segments are always whole, even with fsync off
        self.stats.fsyncs += 1
        self._create_segment(next_seq)

    def _current_segment_has_records(self) -> bool:
        return self._segment_last_seq >= self._segments[-1].first_seq

    def _write_batch(self, first_seq: int, records: list[bytes], roll_after: list[int]) -> None:
        """Write records (numbered from first_seq) and make them durable. roll_after holds
        sequence numbers after which a new segment must start (for snapshots)."""
        assert self._segment_fd is not None
        rolls = set(roll_after)
        buf = bytearray()
        seq = first_seq

        def write_out() -> None:
            if buf:
                _write_all(self._segment_fd, buf)
                self._segments[-1].size += len(buf)
                self.stats.bytes_written += len(buf)
                buf.clear()
            self._segment_last_seq = seq - 1

        for payload in records:
            has_records = bool(buf) or self._current_segment_has_records()
            if has_records and (
                (seq - 1) in rolls or self._segments[-1].size + len(buf) >= self.segment_bytes
            ):
                write_out()
                self._seal_and_roll(seq)
            buf += _frame(seq, payload)
            buf += payload
            seq += 1
        write_out()
        if records:
            self.stats.batches += 1
            self.stats.largest_batch = max(self.stats.largest_batch, len(records))
        if (seq - 1) in rolls and self._current_segment_has_records():
            self._seal_and_roll(seq)
        elif records and self.fsync:
            started = time.perf_counter()
            _sync_file_data(self._segment_fd)
            self._fsync_seconds = 0.8 * self._fsync_seconds + 0.2 * (time.perf_counter() - started)
            self.stats.fsyncs += 1

    # -------------------------------------------------------------------------------- append

    def _check_usable(self) -> None:
        if not self._opened:
            raise JournalError("FileJournal.open() must be called first")
        if self._failure is not None:
            raise JournalClosed(
                f"journal {self.directory} failed earlier: {self._failure!r}"
            ) from self._failure
        if self._closing:
            raise JournalClosed(f"journal {self.directory} is closed")

    def _ensure_writer(self) -> None:
        if self._writer_task is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._snapshot_lock = asyncio.Lock()
        self._writer_task = self._loop.create_task(self._run_writer(), name="journal-writer")

    def append(self, record: bytes) -> asyncio.Future[None]:
        self._check_usable()
        self._ensure_writer()
        assert self._loop is not None and self._wake is not None
        if len(record) > MAX_RECORD_BYTES:
            raise ValueError(f"journal record of {len(record)} bytes exceeds {MAX_RECORD_BYTES}")
        if not isinstance(record, bytes):
            record = bytes(record)  # the caller may reuse a mutable buffer
        future: asyncio.Future[None] = self._loop.create_future()
        self._pending_records.append(record)
        self._pending_futures.append(future)
        self._appended_seq += 1
        self._bytes_since_snapshot += RECORD_HEADER.size + len(record)
        self.stats.appends += 1
        self._wake.set()
        return future

    async def flush(self) -> None:
        self._check_usable()
        await self._wait_durable(self._appended_seq)

    async def _wait_durable(self, seq: int) -> None:
        if self._durable_seq >= seq:
            return
        self._ensure_writer()
        assert self._loop is not None and self._wake is not None
        # Every record up to `seq` is queued or being written now, so it is durable once the
        # writer finishes its next batch. A private future, so cancelling one flush hurts no one.
        future: asyncio.Future[None] = self._loop.create_future()
        self._flush_waiters.append(future)
        self._wake.set()
        await future

    def _request_roll(self, seq: int) -> asyncio.Future[None]:
        assert self._loop is not None and self._wake is not None
        future: asyncio.Future[None] = self._loop.create_future()
        self._roll_requests.append((seq, future))
        self._wake.set()
        return future

    async def _run_writer(self) -> None:
        assert self._loop is not None and self._wake is not None
        while True:
            while not self._pending_records and not self._roll_requests and not self._flush_waiters:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
            records, futures = self._pending_records, self._pending_futures
            requests, flushes = self._roll_requests, self._flush_waiters
            self._pending_records, self._pending_futures = [], []
            self._roll_requests, self._flush_waiters = [], []
            waiters = futures + [f for _, f in requests] + flushes
            first_seq = self._durable_seq + 1
            roll_after = [seq for seq, _ in requests]
            try:
                # (never while a snapshot's pruning may be using the I/O thread on the segment list)
                # Without fsync a batch is one write() into the page cache: cheaper on the loop than the
                # thread handoff, which waits for the GIL (up to the 5 ms switch interval) on a busy loop.
                inline = not self.fsync or (len(records) == 1 and self._fsync_seconds < INLINE_FSYNC_SECONDS)
                if inline and not roll_after and not self._snapshot_lock.locked():
                    self._write_batch(first_seq, records, roll_after)
                else:
                    await self._loop.run_in_executor(self._io, self._write_batch, first_seq, records, roll_after)
            except BaseException as exc:  # noqa: BLE001 - every waiter must learn of the failure
                self._fail(exc, waiters)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                return
            self._durable_seq = first_seq + len(records) - 1
            for future in waiters:
                if not future.done():
                    future.set_result(None)
            # Let the tasks just woken queue their next records before taking the next batch.
            await asyncio.sleep(0)

    def _fail(self, exc: BaseException, waiters: list[asyncio.Future[None]]) -> None:
        self._failure = exc
        self.log.error("journal: write to %s failed, no further writes accepted: %r", self.directory, exc)
        error = JournalError(f"journal write failed: {exc!r}")
        error.__cause__ = exc
        waiters += self._pending_futures + [f for _, f in self._roll_requests] + self._flush_waiters
        self._pending_records, self._pending_futures = [], []
        self._roll_requests, self._flush_waiters = [], []
        for future in waiters:
            if not future.done():
                future.set_exception(error)

    # ------------------------------------------------------------------------------ snapshots

    def snapshot_due(self) -> bool:
        # Once the state outgrows snapshot_bytes, wait until the records since the last snapshot
        # are as large as that snapshot: each snapshot then costs at most as much writing as the
        # records it replaces (not one full copy of the state per snapshot_bytes of writes), and
        # replay after a restart stays bounded by the size of the state.
        newest = self._snapshots[-1].size if self._snapshots else 0
        return self._bytes_since_snapshot > max(self.snapshot_bytes, newest)

    def write_snapshot(self, chunks: Iterable[bytes]) -> asyncio.Future[None]:
        """Persist a snapshot of the state after every record appended before this call.

        A plain method returning an awaitable (a Task), not a coroutine function, so the position
        is taken and ``chunks`` consumed at the call itself, on the event loop thread, even if the
        caller awaits later: a generator over live state sees exactly that state. The bytes are
        held in memory and written and fsync'ed on a separate thread."""
        self._check_usable()
        self._ensure_writer()
        assert self._loop is not None
        seq = self._appended_seq
        data = [bytes(chunk) for chunk in chunks]
        self._bytes_since_snapshot = 0
        # Start a new segment right after record `seq`, once everything up to it is durable.
        roll = self._request_roll(seq)
        return self._loop.create_task(self._finish_snapshot(seq, data, roll), name="journal-snapshot")

    async def _finish_snapshot(self, seq: int, data: list[bytes], roll: asyncio.Future[None]) -> None:
        assert self._snapshot_lock is not None and self._loop is not None
        async with self._snapshot_lock:
            await roll
            snapshot = await self._loop.run_in_executor(
                self._snapshot_io, self._write_snapshot_file, seq, data
            )
            data.clear()
            self._snapshots = [s for s in self._snapshots if s.seq != seq] + [snapshot]
            self._snapshots.sort(key=lambda s: s.seq)
            self.stats.snapshots_written += 1
            doomed = self._snapshots[: -self.retain_snapshots]
            self._snapshots = self._snapshots[-self.retain_snapshots :]
            # Keep the records after the oldest kept snapshot; with fewer snapshots than we keep,
            # keep everything (the empty state is the fallback then).
            keep_after = self._snapshots[0].seq if len(self._snapshots) >= self.retain_snapshots else 0
            await self._loop.run_in_executor(self._io, self._prune, doomed, keep_after)

    def _write_snapshot_file(self, seq: int, chunks: list[bytes]) -> _Snapshot:
        final = self._path(_snapshot_name(seq))
        tmp = final + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.lseek(fd, SNAPSHOT_HEADER.size, os.SEEK_SET)
            hasher = hashlib.sha256()
            length = 0
            for chunk in chunks:
                _write_all(fd, chunk)
                hasher.update(chunk)
                length += len(chunk)
            head = SNAPSHOT_HEADER.pack(SNAPSHOT_MAGIC, seq, length, hasher.digest(), 0, 0)[:-4]
            head += struct.pack("<I", zlib.crc32(head))
            os.pwrite(fd, head, 0)
            os.fsync(fd)
            os.close(fd)
            fd = -1
            os.rename(tmp, final)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._fsync_directory()
        self.log.info("journal: wrote snapshot %s (%d bytes, records up to %d)", final, length, seq)
        return _Snapshot(seq, final, SNAPSHOT_HEADER.size + length)

    def _prune(self, doomed_snapshots: list[_Snapshot], keep_after: int) -> None:
        # Snapshots first: a crash half way must not leave a snapshot without its records.
        removed = False
        for snapshot in doomed_snapshots:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(snapshot.path)
                removed = True
        while len(self._segments) > 1 and self._segments[1].first_seq - 1 <= keep_after:
            segment = self._segments.pop(0)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(segment.path)
                removed = True
        if removed:
            self._fsync_directory()

    # ------------------------------------------------------------------------------- status

    @property
    def size_bytes(self) -> int:
        return sum(s.size for s in list(self._segments)) + sum(s.size for s in self._snapshots)

    @property
    def last_seq(self) -> int:
        """Sequence number of the last record appended (durable or not)."""
        return self._appended_seq

    @property
    def durable_seq(self) -> int:
        return self._durable_seq

    # -------------------------------------------------------------------------------- close

    async def close(self) -> None:
        if self._closed:
            return
        if self._opened and self._writer_task is not None:
            try:
                if self._failure is None:
                    await self._wait_durable(self._appended_seq)
            finally:
                self._closing = True
                assert self._wake is not None and self._snapshot_lock is not None
                self._wake.set()
                with contextlib.suppress(BaseException):
                    await self._writer_task
                async with self._snapshot_lock:
                    pass
        self._closing = True
        self._closed = True
        self._io.shutdown(wait=True)
        self._snapshot_io.shutdown(wait=True)
        if self._segment_fd is not None:
            os.close(self._segment_fd)
            self._segment_fd = None
        self._release_lock()
