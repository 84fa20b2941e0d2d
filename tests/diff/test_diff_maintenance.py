"""Maintenance and cluster shape: endpoint status/health/hashkv, defrag, snapshot, member list.

Fields that describe a particular process rather than the data (version, db sizes, leader id, raft
indexes, hashes) are kept present but blanked: their presence is compared, their values are not.
"""

from __future__ import annotations

import os
import re
from typing import Any

from harness import Recorder, Server, ServerPair, assert_steps_same

J = ("-w", "json")
STATUS_IGNORED = ("Endpoint", "version", "dbSize", "dbSizeInUse", "leader", "raftIndex", "raftAppliedIndex",
                  "raftTerm")


def _member_shape(result: tuple[int, Any, str]) -> tuple[int, Any, str]:
    """member list: ids are random, peer URLs are whatever each store advertises."""
    rc, out, err = result
    if isinstance(out, dict):
        out = dict(out)
        out["members"] = [
            {**m, "ID": "<member>" if m.get("ID") else None,
             "peerURLs": ["<peer-url>" for _ in m.get("peerURLs", [])] or None}
            for m in out.get("members", [])
        ]
    elif isinstance(out, str):
        out = re.sub(r"^[0-9a-f]+, started, default, [^,]+,", "<member>, started, default, <peer-url>,", out)
    return rc, out, err


def test_endpoint_status_and_hashkv(module_pair: ServerPair) -> None:
    def script(rec: Recorder) -> None:
        rec("put", "/m/a", "1", *J)
        rec("put", "/m/b", "2", *J)
        rec("endpoint", "status", *J, ignore=STATUS_IGNORED)
        rec("endpoint", "hashkv", *J, ignore=("Endpoint", "hash"))
        rec("endpoint", "hashkv", "--rev", "2", *J, ignore=("Endpoint", "hash"))
        rec("endpoint", "health", *J, ignore=("took",))
        health = rec.ctl.raw("endpoint", "health")
        text = rec.ctl.norm.endpoints(health.stdout + health.stderr)
        rec.note("health text", (health.returncode, re.sub(r"took = \S+", "took = <t>", text).strip()))
        rec("defrag")
        rec("defrag", *J)
        rec("endpoint", "status", *J, ignore=STATUS_IGNORED)
        rec("get", "/m/", "--prefix", *J)
        rec("alarm", "list")
        rec("alarm", "list", *J)

    assert_steps_same(module_pair, script)


def test_hash_is_stable_for_same_data(module_pair: ServerPair) -> None:
    """Each store's hash must not change when nothing was written (and must be reported)."""

    def script(rec: Recorder) -> None:
        _, first, _ = rec.ctl("endpoint", "hashkv", *J)
        _, second, _ = rec.ctl("endpoint", "hashkv", *J)
        rec.note("stable", first[0]["HashKV"]["hash"] == second[0]["HashKV"]["hash"])
        rec.note("has hash", isinstance(first[0]["HashKV"].get("hash"), int))

    assert_steps_same(module_pair, script)


def test_member_list(module_pair: ServerPair) -> None:
    def script(rec: Recorder) -> None:
        rec.note("json", _member_shape(rec.ctl("member", "list", *J, lease_keys=frozenset())))
        rec.note("text", _member_shape(rec.ctl("member", "list")))

    assert_steps_same(module_pair, script)


def test_snapshot_save(module_pair: ServerPair) -> None:
    def script(rec: Recorder) -> None:
        rec("put", "/snap/k", "v", *J)
        path = os.path.join(rec.ctl.server.work_dir, "snap.db")
        proc = rec.ctl.raw("snapshot", "save", path)
        rec.note("save", (proc.returncode, proc.stdout.replace(path, "<path>")))
        rec.note("file written", os.path.getsize(path) > 0 if os.path.exists(path) else False)

    assert_steps_same(module_pair, script)


def test_data_survives_restart_and_kill(module_pair: ServerPair) -> None:
    def script(rec: Recorder) -> None:
        server: Server = rec.ctl.server
        rec("put", "/dur/a", "1", *J)
        rec("put", "/dur/b", "2", *J)
        rec("del", "/dur/a", *J)
        server.restart()
        rec("get", "/dur/", "--prefix", *J)
        rec("put", "/dur/c", "3", *J)
        server.kill9()
        server.restart()
        rec("get", "/dur/", "--prefix", *J)
        rec("put", "/dur/d", "4", *J)

    assert_steps_same(module_pair, script)
