"""The interface between the store and a journal backend.

A journal keeps an ordered sequence of opaque records (the store's own encoding of
each state change) plus, now and then, a snapshot that stands for every record
appended before it. On start the store asks for a ``Recovery``: the newest whole
snapshot and the records after it. Backends: ``file`` (this package) and, later,
a replicated NATS JetStream stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol


@dataclass
class Recovery:
    snapshot: BinaryIO | None  # the newest valid snapshot's payload, positioned at its start; None if none
    records: Iterator[bytes]  # every record appended after that snapshot, in append order
    truncated_bytes: int = 0  # size of a torn or corrupt tail that was cut (and logged)


class Journal(Protocol):
    def open(self) -> Recovery:
        """Open (creating if needed) and return what to rebuild state from. Called once, before append."""
        ...

    def append(self, record: bytes) -> asyncio.Future[None]:
        """Queue a record. Records keep call order. The future resolves once this record and every
        record before it are durable (written and fsync'ed, unless fsync is disabled). Appends made
        while a flush is in progress share the next write and fsync (group commit)."""
        ...

    async def flush(self) -> None:
        """Wait until every record appended so far is durable."""
        ...

    def snapshot_due(self) -> bool:
        """True once enough has been appended since the last snapshot that one should be taken."""
        ...

    def write_snapshot(self, chunks: Iterable[bytes]) -> Awaitable[None]:
        """Persist a snapshot standing for every record appended before this call, atomically,
        then drop the records and older snapshots it makes redundant. The position is taken and
        ``chunks`` consumed during the call itself (not when the result is awaited), so chunks may
        be a generator over live state; await the result to know the snapshot is durable."""
        ...

    @property
    def size_bytes(self) -> int:
        """Bytes on disk (snapshot plus records), for status reporting."""
        ...

    async def close(self) -> None: ...
