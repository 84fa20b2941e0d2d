"""A tamper-evident audit log: one JSON line per MCP call, each carrying the hash of the line before it.

`hash = sha256(prev_hash + canonical JSON of the entry without its hash)`, starting from 64 zeros, and
`seq` counts up from 1. Editing an entry breaks its hash; removing or reordering one breaks the next
entry's `prev` (and the `seq` run). Cutting entries off the end is only visible against a head hash kept
elsewhere: `verify` returns the head, and `expect_head` checks it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

GENESIS = "0" * 64


def _digest(prev: str, entry: dict[str, Any]) -> str:
    body = orjson.dumps({k: v for k, v in entry.items() if k != "hash"}, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(prev.encode() + body).hexdigest()


class AuditLog:
    """Appends entries to `path` (created if missing; an existing chain is continued)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.head, self.seq = GENESIS, 0
        if self.path.exists():
            lines = self.path.read_bytes().splitlines()
            if lines and lines[-1].strip():
                last = orjson.loads(lines[-1])
                self.head, self.seq = last["hash"], int(last["seq"])
        self.file = open(self.path, "ab")  # noqa: SIM115 - held open for the server's lifetime

    def record(self, **fields: Any) -> dict[str, Any]:
        with self.lock:
            entry: dict[str, Any] = {"seq": self.seq + 1,
                                     "time": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
                                     **fields, "prev": self.head}
            entry["hash"] = _digest(self.head, entry)
            self.file.write(orjson.dumps(entry) + b"\n")
            self.file.flush()
            os.fsync(self.file.fileno())
            self.head, self.seq = entry["hash"], entry["seq"]
            return entry

    def close(self) -> None:
        self.file.close()


@dataclass
class Verification:
    ok: bool
    entries: int
    head: str
    problems: list[str] = field(default_factory=list)


def verify(path: str | os.PathLike[str], expect_head: str | None = None) -> Verification:
    """Walk the chain; every broken link is reported with its line number."""
    problems: list[str] = []
    prev, expected_seq, count = GENESIS, 1, 0
    for number, line in enumerate(Path(path).read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        count += 1
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            problems.append(f"line {number}: not JSON")
            continue
        if entry.get("seq") != expected_seq:
            problems.append(f"line {number}: seq {entry.get('seq')} where {expected_seq} was expected "
                            "(entries removed or reordered)")
        if entry.get("prev") != prev:
            problems.append(f"line {number}: prev does not match the hash of the entry before it")
        if entry.get("hash") != _digest(str(entry.get("prev")), entry):
            problems.append(f"line {number}: hash does not match the entry's contents (entry edited)")
        prev = str(entry.get("hash"))
        expected_seq = int(entry.get("seq") or 0) + 1
    if expect_head is not None and prev != expect_head:
        problems.append(f"head {prev} is not the expected {expect_head} (entries cut off the end)")
    return Verification(not problems, count, prev, problems)
