"""A hash-chained, tamper-evident audit log of what changed the registry (push, delete, sign, verify, archive,
restore, policy changes).

DATA_DIR/audit/audit.jsonl holds one JSON object per line. Each record carries its sequence number, the hash of
the previous record (`prev`) and its own `hash`: SHA-256 over the canonical JSON (sorted keys, no spaces) of the
record without `hash`. Editing a record breaks its own hash; reordering or removing one breaks `seq` and `prev`
of the next; removing records at the end is caught by DATA_DIR/audit/head, which names the last seq and hash.
(Someone who can rewrite both files consistently can forge history: the chain proves integrity, not origin;
ship the head hash elsewhere, e.g. to a log collector, for that.)
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

GENESIS = "0" * 64
ACTIONS = frozenset({"push", "delete", "sign", "verify", "archive", "restore", "expire", "policy", "inuse",
                     "rotate-key"})


def record_hash(record: dict[str, Any]) -> str:
    body = {key: value for key, value in record.items() if key != "hash"}
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


class AuditLog:
    """Appends are synchronous and meant for the event loop thread, which serializes them."""

    def __init__(self, directory: Path, *, fsync: bool = False) -> None:
        self.directory = directory
        self.path = directory / "audit.jsonl"
        self.head_path = directory / "head"
        self.fsync = fsync
        directory.mkdir(parents=True, exist_ok=True)
        self._seq, self._last = self._read_head()
        self._file = open(self.path, "ab")

    def _read_head(self) -> tuple[int, str]:
        try:
            head = orjson.loads(self.head_path.read_bytes())
            return int(head["seq"]), str(head["hash"])
        except FileNotFoundError:
            return -1, GENESIS

    def append(self, action: str, *, who: str, source: str, repository: str | None = None,
               reference: str | None = None, digest: str | None = None, **detail: Any) -> dict[str, Any]:
        now = time.time()
        record: dict[str, Any] = {"seq": self._seq + 1, "time": _iso(now), "ts": round(now, 3), "who": who,
                                  "from": source, "action": action, "repository": repository,
                                  "reference": reference, "digest": digest, "prev": self._last}
        if detail:
            record["detail"] = detail
        record["hash"] = record_hash(record)
        self._file.write(orjson.dumps(record) + b"\n")
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())
        self._seq, self._last = record["seq"], record["hash"]
        staging = self.head_path.with_suffix(".tmp")
        staging.write_bytes(orjson.dumps({"seq": self._seq, "hash": self._last}))
        os.replace(staging, self.head_path)
        return record

    def query(self, *, repository: str | None = None, action: str | None = None, since: float | None = None,
              limit: int = 1000) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for record in read_records(self.path):
            if repository is not None and record.get("repository") != repository:
                continue
            if action is not None and record.get("action") != action:
                continue
            if since is not None and float(record.get("ts", 0)) < since:
                continue
            found.append(record)
        return found[-limit:] if limit else found

    def close(self) -> None:
        self._file.close()


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    try:
        with open(path, "rb") as f:
            for line in f:
                if line.strip():
                    yield orjson.loads(line)
    except FileNotFoundError:
        return


@dataclass
class VerifyResult:
    records: int
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_log(directory: Path) -> VerifyResult:
    """Walk the chain; every broken link, bad hash, gap, reordering or missing tail is a problem."""
    problems: list[str] = []
    previous = GENESIS
    expected_seq = 0
    count = 0
    path = directory / "audit.jsonl"
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        lines = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        count += 1
        try:
            record = orjson.loads(line)
            assert isinstance(record, dict)
        except (orjson.JSONDecodeError, AssertionError):
            problems.append(f"line {number}: not a JSON object")
            continue
        seq = record.get("seq")
        if seq != expected_seq:
            problems.append(f"line {number}: seq {seq} where {expected_seq} was expected "
                            "(a record was removed, inserted or reordered)")
        if record.get("prev") != previous:
            problems.append(f"line {number} (seq {seq}): prev does not match the hash of the record before it")
        if record_hash(record) != record.get("hash"):
            problems.append(f"line {number} (seq {seq}): hash mismatch, the record was edited")
        previous = str(record.get("hash"))
        expected_seq = (seq if isinstance(seq, int) else expected_seq) + 1
    try:
        head = orjson.loads((directory / "head").read_bytes())
    except FileNotFoundError:
        if count:
            problems.append("head file is missing")
    else:
        if head.get("hash") != previous or head.get("seq") != expected_seq - 1:
            problems.append(f"the log ends at seq {expected_seq - 1} but head names seq {head.get('seq')}: "
                            "records were removed from the end or the head was altered")
    return VerifyResult(count, problems)
