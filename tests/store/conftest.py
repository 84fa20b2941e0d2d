"""Shared fixtures: an in-memory journal stand-in (used only by these tests) and store helpers."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterable

import pytest

from ultraplane.journal.base import Recovery
from ultraplane.store import Store


class MemJournal:
    """Keeps records and the latest snapshot in memory; survives a Store restart when reused.

    With ``hold=True`` appends stay un-durable until ``release()``: that lets tests observe
    the gap between "applied in memory" and "durable"."""

    def __init__(self, *, hold: bool = False, snapshot_every: int = 0) -> None:
        self.records: list[bytes] = []
        self.snapshot: bytes | None = None
        self.hold = hold
        self.snapshot_every = snapshot_every
        self._since_snapshot = 0
        self._held: list[asyncio.Future[None]] = []

    def open(self) -> Recovery:
        self._held = []
        snap = io.BytesIO(self.snapshot) if self.snapshot is not None else None
        return Recovery(snapshot=snap, records=iter(list(self.records)))

    def append(self, record: bytes) -> asyncio.Future[None]:
        self.records.append(record)
        self._since_snapshot += 1
        fut = asyncio.get_running_loop().create_future()
        if self.hold:
            self._held.append(fut)
        else:
            fut.set_result(None)
        return fut

    def release(self, n: int | None = None) -> None:
        take = self._held if n is None else self._held[:n]
        self._held = [] if n is None else self._held[n:]
        for fut in take:
            if not fut.done():  # a cancelled waiter cancels its future; the record stays
                fut.set_result(None)

    async def flush(self) -> None:
        self.release()

    def snapshot_due(self) -> bool:
        return bool(self.snapshot_every) and self._since_snapshot >= self.snapshot_every

    def write_snapshot(self, chunks: Iterable[bytes]) -> asyncio.Future[None]:
        # like FileJournal: the cut point and the chunks are taken at the call itself
        self.snapshot = b"".join(chunks)
        self.records = []
        self._since_snapshot = 0
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    @property
    def size_bytes(self) -> int:
        return len(self.snapshot or b"") + sum(map(len, self.records))

    async def close(self) -> None:
        self.release()


@pytest.fixture
def journal() -> MemJournal:
    return MemJournal()


@pytest.fixture
async def store(journal: MemJournal):
    s = Store(journal)
    await s.open()
    yield s
    await s.close()


async def reopen(journal, **kwargs) -> Store:
    s = Store(journal, **kwargs)
    await s.open()
    return s
