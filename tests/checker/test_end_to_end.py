"""Record real concurrent histories and watch streams and check them.

* a real ``ultraplane store`` process (tests/harness.Server): the history is linearizable and two
  watchers' streams satisfy every watch guarantee against the full event history;
* an in-process server whose Store answers reads from a view a few revisions old: the recorded
  history is reported as not linearizable (and the same setup with lag 0 passes, so the
  violation comes from the bug, not from the harness);
* a watch stream with one event dropped is reported by the watch checker.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from ultraplane.checker.history import (
    RecordedHistory,
    WatchRecorder,
    final_reads,
    prefix_end,
    read_state,
    record_history,
)
from ultraplane.checker.linearizability import check_history
from ultraplane.checker.watch import WatchStream, check_watches
from ultraplane.store import Store
from ultraplane.store.types import RangeRequest, RangeResult

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness import Server  # noqa: E402

PREFIX = b"/chk/"


async def _load_with_watchers(endpoint: str, clients: int, per_client: int, seed: int) -> tuple[
    RecordedHistory, list[WatchStream], WatchStream
]:
    import grpc

    async with grpc.aio.insecure_channel(endpoint) as ch:
        start = (await read_state(ch, PREFIX)).revision + 1
    watchers = [WatchRecorder(endpoint, f"w{i}", PREFIX, prefix_end(PREFIX), start) for i in range(2)]
    for w in watchers:
        await w.start()
    hist = await record_history(endpoint, clients=clients, ops_per_client=per_client, prefix=PREFIX, seed=seed)
    async with grpc.aio.insecure_channel(endpoint) as ch:
        final = (await read_state(ch, PREFIX)).revision
    streams = [await w.finish(final) for w in watchers]
    full = WatchRecorder(endpoint, "history", PREFIX, prefix_end(PREFIX), 1)
    await full.start()
    history = await full.finish(final)
    return hist, streams, history


@pytest.fixture(scope="module")
def real_run() -> tuple[RecordedHistory, list[WatchStream], WatchStream]:
    server = Server(kind="ultraplane", label="checker")
    try:
        server.start()
        return asyncio.run(_load_with_watchers(server.endpoint, clients=4, per_client=40, seed=7))
    finally:
        server.cleanup()


def test_real_store_history_is_linearizable(real_run: tuple[RecordedHistory, list[WatchStream], WatchStream]) -> None:
    hist, _, _ = real_run
    assert len(hist.ops) == 160
    assert hist.unknown == 0
    res = check_history(hist.ops, hist.initial)
    assert res.ok, res.explain()


def test_real_store_watch_streams_hold_the_guarantees(
    real_run: tuple[RecordedHistory, list[WatchStream], WatchStream],
) -> None:
    hist, streams, history = real_run
    writes = {op.output.revision for op in hist.ops if op.output is not None and op.output.revision}
    assert streams[0].events, "the watchers saw the load"
    # every write revision of the load shows up in the watch history (and nothing else)
    assert {e.revision for e in history.events} == {r for r in writes if r > hist.initial.revision}
    res = check_watches(streams, history.events)
    assert res.ok, res.explain()


def test_dropped_watch_event_is_detected(real_run: tuple[RecordedHistory, list[WatchStream], WatchStream]) -> None:
    _, streams, history = real_run
    broken = dataclasses.replace(streams[1], events=list(streams[1].events))
    dropped = broken.events.pop(len(broken.events) // 2)
    res = check_watches([streams[0], broken], history.events)
    assert not res.ok
    assert res.kinds() & {"gap", "atomic"}
    assert res.kinds() & {"diverged"}
    assert str(dropped.revision) in res.explain()


def test_kill9_midway_leaves_a_linearizable_history_with_unknown_outcomes() -> None:
    """Crash the server part-way through the load: in-flight and later ops get unknown outcomes;
    after a restart, a final read of every key closes the history, which must still be
    linearizable (acknowledged writes survived; unacknowledged ones either did or didn't)."""
    server = Server(kind="ultraplane", label="checker-kill")
    try:
        server.start()

        def maybe_kill(n: int) -> None:
            if n == 40:
                server.kill9()

        hist = asyncio.run(
            record_history(server.endpoint, clients=4, ops_per_client=20, prefix=PREFIX, seed=5, timeout=3, on_op=maybe_kill)
        )
        server.restart()
        closing = asyncio.run(final_reads(server.endpoint, hist.keys))
    finally:
        server.cleanup()
    assert hist.unknown >= 40 - 4  # everything after the kill failed (up to 4 were in flight)
    res = check_history([*hist.ops, *closing], hist.initial)
    assert res.ok, res.explain()


# ---------------------------------------------------------------------------- a broken store


class StaleReadStore(Store):
    """Serves plain reads from the view ``lag`` revisions ago (header still says "now")."""

    lag = 0

    def range(self, req: RangeRequest) -> RangeResult:
        if self.lag and req.revision == 0 and not req.range_end:
            stale = max(self.compact_revision + 1, self.revision - self.lag, 1)
            res = super().range(dataclasses.replace(req, revision=stale))
            return dataclasses.replace(res, revision=self.revision)
        return super().range(req)


@asynccontextmanager
async def in_process_server(data_dir: Path, lag: int) -> AsyncIterator[str]:
    from ultraplane.etcd.h2server import serve_h2
    from ultraplane.etcd.service import etcd_methods
    from ultraplane.journal.file import FileJournal

    store = StaleReadStore(FileJournal(str(data_dir / "journal"), fsync=False))
    store.lag = lag
    await store.open()
    methods = etcd_methods(
        store, None, cluster_id=1, member_id=2, member_name="broken", client_urls=[], max_request_bytes=1 << 20
    )
    listener = await serve_h2(methods, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{listener.port}"
    finally:
        await listener.close()
        await store.close()


async def _record_in_process(data_dir: Path, lag: int) -> RecordedHistory:
    async with in_process_server(data_dir, lag) as endpoint:
        return await record_history(endpoint, clients=3, ops_per_client=40, prefix=PREFIX, seed=3)


@pytest.mark.parametrize("lag", [0, 2])
def test_stale_read_store_is_caught(tmp_path: Path, lag: int) -> None:
    hist = asyncio.run(_record_in_process(tmp_path, lag))
    assert hist.unknown == 0
    res = check_history(hist.ops, hist.initial)
    if lag == 0:
        assert res.ok, res.explain()
    else:
        assert not res.ok and not res.exhausted, "the stale reads went unnoticed"
        assert res.stuck
        assert "not linearizable" in res.explain()
