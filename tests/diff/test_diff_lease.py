"""Leases through etcdctl: grant, attach, time-to-live, list, keep-alive, revoke, expiry.

Lease ids are random, so each side's ids are renamed <lease1>, <lease2>, ... in order of first
appearance. Remaining TTLs depend on timing and are reduced to "positive and not above the grant".
"""

from __future__ import annotations

import json
import re

from harness import Recorder, ServerPair, assert_steps_same, wait_until

J = ("-w", "json")


def _remaining_ok(result: tuple[int, object, str]) -> tuple[int, object, str]:
    """Replace the remaining TTL (timing-dependent) by whether it is within (0, granted]."""
    rc, out, err = result
    if isinstance(out, dict) and "ttl" in out:
        out = dict(out)
        ttl, granted = out["ttl"], out.get("granted-ttl", 0)
        out["ttl"] = "in-range" if 0 < ttl <= granted else ttl
        if out.get("keys"):
            out["keys"] = sorted(out["keys"])  # etcd lists attached keys in map (random) order
    elif isinstance(out, str):
        out = re.sub(r"remaining\((\d+)s\)", "remaining(<n>s)", out)
        out = re.sub(r"attached keys\(\[(.*)\]\)",
                     lambda m: "attached keys([" + " ".join(sorted(m.group(1).split())) + "])", out)
    return rc, out, err


def test_grant_attach_ttl_revoke(both: ServerPair) -> None:
    def script(rec: Recorder) -> None:
        rec("lease", "list", *J)
        raw = rec.ctl.raw("lease", "grant", "100", "-w", "json")
        lease = f"{json.loads(raw.stdout)['ID']:x}"
        rec.note("grant", rec.ctl.outcome(raw, json_out=True).as_tuple())
        rec("lease", "grant", "200")
        rec("lease", "grant", "1", *J)  # below the minimum TTL: etcd raises it
        rec("put", "a", "1", "--lease", lease, *J)
        rec("put", "b", "2", f"--lease={lease}", *J)
        rec("put", "c", "3", *J)
        rec("get", "", "--from-key", *J)
        rec.note("ttl", _remaining_ok(rec.ctl("lease", "timetolive", lease, *J)))
        rec.note("ttl keys", _remaining_ok(rec.ctl("lease", "timetolive", lease, "--keys", *J)))
        rec.note("ttl keys text", _remaining_ok(rec.ctl("lease", "timetolive", lease, "--keys")))
        _, listed, _ = rec.ctl("lease", "list", *J)
        rec.note("list", sorted(entry["id"] for entry in listed.get("leases", [])))
        rec("lease", "keep-alive", "--once", lease)
        rec("lease", "keep-alive", "--once", lease, *J)
        # moving a key to no lease, and to another lease
        rec("put", "b", "2b", *J)
        rec.note("ttl keys after detach", _remaining_ok(rec.ctl("lease", "timetolive", lease, "--keys", *J)))
        rec("lease", "revoke", lease)
        rec("get", "", "--from-key", *J)
        rec.note("ttl revoked", rec.ctl("lease", "timetolive", lease, *J))
        rec.note("ttl revoked text", rec.ctl("lease", "timetolive", lease))
        rec("lease", "revoke", lease)
        rec("lease", "keep-alive", "--once", lease)
        rec("put", "d", "4", "--lease", lease, *J)
        rec("put", "d", "4", "--lease", "123abc", *J)
        _, listed, _ = rec.ctl("lease", "list", *J)
        rec.note("list after revoke", sorted(entry["id"] for entry in listed.get("leases", [])))

    assert_steps_same(both, script)


def test_expiry_deletes_keys(both: ServerPair) -> None:
    def script(rec: Recorder) -> None:
        raw = rec.ctl.raw("lease", "grant", "2", "-w", "json")
        lease = f"{json.loads(raw.stdout)['ID']:x}"
        rec.note("grant", rec.ctl.outcome(raw, json_out=True).as_tuple())
        rec("put", "exp/a", "1", "--lease", lease, *J)
        rec("put", "exp/b", "2", "--lease", lease, *J)
        rec("put", "keep", "3", *J)
        gone = wait_until(lambda: rec.ctl.raw("get", "exp/", "--prefix", "--keys-only").stdout.strip() == "",
                          timeout=30, interval=0.2)
        rec.note("expired", gone)
        # the expiry deleted both keys in one revision
        rec("get", "", "--from-key", *J)
        rec.note("ttl expired", rec.ctl("lease", "timetolive", lease, *J))
        rec("lease", "keep-alive", "--once", lease)

    assert_steps_same(both, script)


def test_lock_and_election(both: ServerPair) -> None:
    """etcdctl's lock/elect recipes: sessions (leases), txns on create revision, and watches."""

    def script(rec: Recorder) -> None:
        rec("lock", "L1", "--", "sh", "-c", "echo held")
        rec("lock", "--ttl", "5", "L2", "--", "false")
        rec("get", "", "--from-key", *J)  # the lock keys are gone again, their revisions counted
        rec("lease", "list", *J)

    assert_steps_same(both, script)
