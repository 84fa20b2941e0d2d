"""Error paths: the "Error: ..." line and the exit code must match etcd's exactly."""

from __future__ import annotations

import pytest
from harness import Recorder, ServerPair, assert_steps_same

J = ("-w", "json")


def test_request_errors(module_pair: ServerPair) -> None:
    def script(rec: Recorder) -> None:
        rec("put", "/err/k", "v", *J)
        rec("put", "", "v")
        rec("put", "", "v", *J)
        rec("get", "")
        rec("del", "")
        rec("get", "/err/k", "--rev", "1000")
        rec("get", "/err/k", "--rev", "1000", *J)
        rec("get", "/err/", "--prefix", "--rev", "1000", "--consistency=s")
        rec("put", "/err/k", "v", "--lease", "1234")
        rec("put", "/err/k", "v", "--lease", "1234", *J)
        rec("lease", "revoke", "1234")
        rec("lease", "keep-alive", "--once", "1234")
        rec("lease", "timetolive", "1234", *J)
        rec("lease", "timetolive", "1234")
        rec("lease", "grant", "--", "-5")
        rec("compact", "1000")
        rec("compact", "0")
        rec("put", "/err/k", "--ignore-value")  # fine: key exists
        rec("put", "/err/new", "--ignore-value")
        rec("put", "/err/k", "--ignore-lease")
        rec("put", "/err/k", "v2", "--ignore-lease", *J)  # key has no lease
        rec("get", "/err/z", "/err/a", *J)  # range end before key: empty
        rec("del", "/err/z", "/err/a", *J)
        rec("user", "list")
        rec("role", "list")
        rec("auth", "disable")
        rec("auth", "enable")
        rec("user", "get", "nobody")
        rec("role", "get", "nobody")
        rec("user", "delete", "nobody")
        rec("user", "grant-role", "nobody", "nothing")
        rec("role", "grant-permission", "nothing", "read", "/k")
        rec("get", "/err/k", "--user", "root:pw")

    assert_steps_same(module_pair, script)


@pytest.mark.server_flags("--max-request-bytes=1024")
def test_request_too_large(both: ServerPair) -> None:
    def script(rec: Recorder) -> None:
        rec("put", "small", "v", *J)
        rec("put", "big", input="x" * 2048)
        rec("put", "big", input="x" * 900)
        rec("txn", input="\n" + "".join(f"put k{i} {'y' * 100}\n" for i in range(12)) + "\n\n")
        rec("get", "", "--from-key", "--keys-only")

    assert_steps_same(both, script)
