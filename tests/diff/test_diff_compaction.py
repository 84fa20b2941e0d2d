"""Compaction: revisions below the compact point are gone; the rest stays readable."""

from __future__ import annotations

import pytest
from harness import Recorder, ServerPair, assert_steps_same, wait_until

J = ("-w", "json")


def test_compact_then_read_old_revisions(both: ServerPair) -> None:
    def script(rec: Recorder) -> None:
        for i in range(6):
            rec("put", "k", f"v{i}", *J)  # revisions 2..7
        rec("put", "other", "o", *J)  # 8
        rec("del", "k", *J)  # 9
        rec("compact", "5")
        rec("compact", "5", *J)
        for rev in (1, 4, 5, 6, 8, 9):
            rec("get", "k", "--rev", str(rev), *J)
        rec("get", "", "--from-key", "--rev", "5", *J)
        rec("get", "k", "--rev", "4")
        rec("compact", "3")  # older than the current compact point
        rec("compact", "100")  # future
        rec("compact", "9", "--physical")
        rec("get", "other", "--rev", "8", *J)
        rec("get", "other", *J)
        rec("put", "k", "after", *J)
        rec("get", "k", *J)
        rec("endpoint", "hashkv", "-w", "json", ignore=("hash", "Endpoint"))
        rec("compact", "10", "--physical")
        rec("get", "k", "--rev", "10", *J)
        rec("get", "k", "--rev", "9", *J)

    assert_steps_same(both, script)


def test_compact_survives_restart(both: ServerPair) -> None:
    for server in both:
        for i in range(5):
            server.etcdctl("put", "k", f"v{i}", check=True)
        server.etcdctl("compact", "4", check=True)
    both.restart()

    def script(rec: Recorder) -> None:
        rec("get", "k", "--rev", "3", *J)
        rec("get", "k", "--rev", "4", *J)
        rec("get", "k", *J)
        rec("compact", "4")
        rec("put", "k", "after", *J)

    assert_steps_same(both, script)


@pytest.mark.server_flags("--auto-compaction-mode=periodic", "--auto-compaction-retention=1s")
def test_periodic_auto_compaction(both: ServerPair) -> None:
    """With a 1s retention, old revisions get compacted on their own; when exactly is timing, so
    only the eventual outcome is compared."""

    def compacted(server_ctl: Recorder) -> bool:
        return "compacted" in server_ctl.ctl.raw("get", "k", "--rev", "2").stderr

    def script(rec: Recorder) -> None:
        for i in range(5):
            rec("put", "k", f"v{i}", *J)
        rec.note("old revision compacted eventually", wait_until(lambda: compacted(rec), timeout=30, interval=0.3))
        rec("get", "k", "--print-value-only")
        rec.note("hashkv reports a compaction",
                 rec.ctl("endpoint", "hashkv", *J)[1][0]["HashKV"].get("compact_revision", 0) > 1)

    assert_steps_same(both, script)


@pytest.mark.server_flags("--auto-compaction-mode=revision", "--auto-compaction-retention=1000")
def test_revision_auto_compaction_flags_accepted(both: ServerPair) -> None:
    """etcd's revision compactor only runs every 5 minutes: here just check the flags are taken."""
    assert_steps_same(both, lambda rec: [rec("put", "k", "v", *J), rec("get", "k", "--rev", "1", *J)])
