"""Watch through `etcdctl watch -w json`: history replays (--rev), prefixes, prev-kv, live events.

Responses may be batched differently by two correct servers, so the comparison is over the
flattened event list (plus compaction/cancel information), never over response boundaries or the
header revision of a response (which depends on when it was sent).
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from typing import Any

from harness import Ctl, Recorder, ServerPair, assert_steps_same, decode_b64_fields

J = ("-w", "json")


class WatchProcess:
    """`etcdctl watch ... -w json` in the background, its output lines read by a thread."""

    def __init__(self, ctl: Ctl, *args: str) -> None:
        self.ctl = ctl
        self.proc = ctl.server.etcdctl_popen(*ctl.global_args, "watch", *args, "-w", "json")
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.events: list[Any] = []
        self.extra: list[Any] = []  # compact_revision / canceled markers
        self.ended = False  # etcdctl closed its output (it exits when the server cancels the watch)
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def collect(self, count: int, timeout: float = 20.0) -> list[Any]:
        """Read until ``count`` events arrived (or the watch ended / the deadline passed)."""
        deadline = time.monotonic() + timeout
        while len(self.events) < count:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                self.ended = True
                break
            if not line.strip():
                continue
            try:
                resp = json.loads(line)
            except json.JSONDecodeError:
                self.extra.append(self.ctl.norm.text(line.strip()))
                continue
            resp = decode_b64_fields(self.ctl.norm.json(resp))
            self.events += resp.get("Events") or []
            if resp.get("CompactRevision") or resp.get("Canceled"):
                self.extra.append({"CompactRevision": resp.get("CompactRevision"),
                                   "Canceled": resp.get("Canceled")})
        return self.events

    def stop(self) -> tuple[list[Any], list[Any], int | None, str]:
        """Stop etcdctl; returns (events, markers, exit code if it ended by itself, error line)."""
        ended_by_itself = self.proc.wait(10) if self.ended else self.proc.poll()
        if ended_by_itself is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        stderr = self.proc.stderr.read() if self.proc.stderr else ""
        err = next((ln for ln in stderr.splitlines() if ln.startswith("Error")), "")
        return self.events, self.extra, ended_by_itself, self.ctl.norm.text(err)


def _history(ctl: Ctl, count: int, *args: str) -> tuple[list[Any], list[Any], int | None, str]:
    watch = WatchProcess(ctl, *args)
    watch.collect(count)
    return watch.stop()


def _write_history(rec: Recorder, p: str) -> None:
    rec("put", f"{p}a", "1", *J)
    rec("put", f"{p}b", "2", *J)
    rec("put", f"{p}a", "3", *J)
    rec("del", f"{p}b", *J)
    rec.note("txn", rec.ctl("txn", *J, input=f"\nput {p}c 4\nput {p}d 5\ndel {p}a\n\n\n"))
    rec("put", f"{p}a", "6", *J)
    rec("put", "/outside", "x", *J)
    rec("del", p, "--prefix", *J)


def test_watch_history(both: ServerPair) -> None:
    def script(rec: Recorder) -> None:
        p = "/w/"
        _write_history(rec, p)
        # counts are exactly the events the history holds for each watch (revisions 2..9)
        rec.note("prefix from 1", _history(rec.ctl, 11, "--rev", "1", "--prefix", p))
        rec.note("prefix prev-kv", _history(rec.ctl, 11, "--rev", "2", "--prefix", "--prev-kv", p))
        rec.note("key a", _history(rec.ctl, 5, "--rev", "1", f"{p}a"))
        rec.note("key a from 4", _history(rec.ctl, 4, "--rev", "4", f"{p}a", "--prev-kv"))
        rec.note("range", _history(rec.ctl, 4, "--rev", "1", f"{p}b", f"{p}d"))
        rec.note("everything", _history(rec.ctl, 12, "--rev", "1", "--prefix", ""))
        rec.note("mid", _history(rec.ctl, 7, "--rev", "6", "--prefix", p))

    assert_steps_same(both, script)


def test_watch_live(both: ServerPair) -> None:
    def script(rec: Recorder) -> None:
        p = "/live/"
        _, head, _ = rec("put", "/start", "s", *J)
        next_rev = str(head["header"]["revision"] + 1)
        # start at the next revision: every later write is delivered, whenever the watch registers
        watch = WatchProcess(rec.ctl, "--rev", next_rev, "--prefix", "--prev-kv", p)
        other = WatchProcess(rec.ctl, "--rev", next_rev, f"{p}k")
        rec("put", f"{p}k", "1", *J)
        rec("put", f"{p}k", "2", *J)
        rec("put", "/elsewhere", "x", *J)
        rec("put", f"{p}j", "3", *J)
        rec("del", f"{p}k", *J)
        watch.collect(4)
        other.collect(3)
        rec.note("prefix", watch.stop())
        rec.note("key", other.stop())

    assert_steps_same(both, script)


def test_watch_compacted_revision(both: ServerPair) -> None:
    def script(rec: Recorder) -> None:
        for i in range(5):
            rec("put", "/c/k", str(i), *J)
        rec("compact", "4")
        rec.note("from compacted", _history(rec.ctl, 1, "--rev", "2", "/c/k"))
        rec.note("from compact point", _history(rec.ctl, 3, "--rev", "4", "/c/k"))

    assert_steps_same(both, script)


