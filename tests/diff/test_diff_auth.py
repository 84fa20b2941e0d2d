"""Authentication and RBAC through etcdctl: users, roles, permissions, root rules, enable/disable."""

from __future__ import annotations

from harness import Recorder, ServerPair, assert_steps_same

J = ("-w", "json")
ROOT = "--user=root:rootpw"
ALICE = "--user=alice:alicepw"
BOB = "--user=bob:bobpw"


def test_auth_lifecycle(both: ServerPair) -> None:
    def script(rec: Recorder) -> None:
        rec("put", "/data/x", "1", *J)
        rec("put", "/other", "o", *J)
        rec("auth", "enable")  # no root user yet
        rec("user", "add", "root:rootpw")
        rec("role", "add", "root")
        rec("user", "grant-role", "root", "root")
        rec("user", "add", "alice:alicepw")
        rec("user", "add", "alice:again")
        rec("user", "add", "bob:bobpw")
        rec("role", "add", "reader")
        rec("role", "add", "reader")
        rec("role", "add", "writer")
        rec("role", "grant-permission", "reader", "read", "/data/", "--prefix")
        rec("role", "grant-permission", "writer", "readwrite", "/data/w", "/data/x")
        rec("role", "grant-permission", "writer", "write", "/wonly")
        rec("role", "grant-permission", "writer", "bogus", "/wonly")
        rec("user", "grant-role", "alice", "reader")
        rec("user", "grant-role", "bob", "writer")
        rec("user", "grant-role", "bob", "nosuchrole")
        rec("role", "get", "reader")
        rec("role", "get", "writer")
        rec("role", "get", "writer", *J)
        rec("user", "get", "alice")
        rec("user", "get", "root", *J)
        rec("user", "list")
        rec("role", "list")
        rec("user", "list", *J)
        rec("auth", "enable")
        rec("auth", "enable")
        # no / wrong credentials
        rec("get", "/data/x")
        rec("get", "/data/x", "--user=alice:wrong")
        rec("get", "/data/x", "--user=nobody:pw")
        rec("put", "/data/x", "2")
        # alice reads /data/ only
        rec("get", "/data/x", ALICE, *J)
        rec("get", "/data/", "--prefix", ALICE, *J)
        rec("get", "/other", ALICE)
        rec("get", "/", "--prefix", ALICE)
        rec("put", "/data/x", "2", ALICE)
        rec("del", "/data/x", ALICE)
        rec("txn", ALICE, input="\nget /data/x\n\n\n")
        rec("txn", ALICE, input="\nput /data/x 3\n\n\n")
        rec("txn", ALICE, input='value("/other") = "o"\n\nget /data/x\n\n\n')
        # bob writes [/data/w, /data/x) and /wonly
        rec("put", "/data/w", "w", BOB, *J)
        rec("put", "/data/wz", "wz", BOB, *J)
        rec("get", "/data/w", BOB, *J)
        rec("put", "/data/x", "nope", BOB)
        rec("put", "/wonly", "ok", BOB, *J)
        rec("get", "/wonly", BOB)
        rec("del", "/data/w", "/data/x", BOB, *J)
        rec("del", "/data/", "--prefix", BOB)
        # root can do everything
        rec("get", "/", "--prefix", ROOT, *J)
        rec("put", "/other", "root", ROOT, *J)
        rec("compact", "2", ROOT)
        rec("user", "list", ALICE)
        rec("role", "list", BOB)
        rec("user", "add", "eve:evepw", ALICE)
        rec("auth", "disable", ALICE)
        # root rules while auth is on
        rec("user", "revoke-role", "root", "root", ROOT)
        rec("user", "delete", "root", ROOT)
        rec("role", "delete", "root", ROOT)
        # permission changes take effect
        rec("role", "revoke-permission", "reader", "/data/", "--prefix", ROOT)
        rec("role", "revoke-permission", "reader", "/data/", "--prefix", ROOT)
        rec("get", "/data/x", ALICE)
        rec("role", "grant-permission", "reader", "read", "/data/x", ROOT)
        rec("get", "/data/x", ALICE, "--print-value-only")
        rec("user", "revoke-role", "alice", "reader", ROOT)
        rec("get", "/data/x", ALICE)
        rec("user", "passwd", "alice", "--interactive=false", ROOT, input="newpw\n")
        rec("get", "/data/x", "--user=alice:alicepw")
        rec("user", "grant-role", "alice", "reader", ROOT)
        rec("get", "/data/x", "--user=alice:newpw", "--print-value-only")
        rec("user", "delete", "bob", ROOT)
        rec("put", "/wonly", "again", BOB)
        rec("role", "delete", "writer", ROOT)
        rec("role", "get", "writer", ROOT)
        # leases and maintenance with auth on
        rec("lease", "grant", "60", "--user=alice:newpw")
        rec("endpoint", "status", "--user=alice:newpw", *J, ignore=("Endpoint", "version", "dbSize", "dbSizeInUse", "leader",
                                                   "raftIndex", "raftAppliedIndex", "raftTerm"))
        rec("auth", "disable", ROOT)
        rec("auth", "disable")
        rec("get", "/data/x", *J)
        rec("put", "/data/x", "free", *J)
        rec("user", "list")

    assert_steps_same(both, script)


def test_auth_survives_restart(both: ServerPair) -> None:
    for server in both:
        for args in (["user", "add", "root:rootpw"], ["role", "add", "root"], ["user", "grant-role", "root", "root"],
                     ["user", "add", "alice:alicepw"], ["role", "add", "reader"],
                     ["role", "grant-permission", "reader", "read", "/r/", "--prefix"],
                     ["user", "grant-role", "alice", "reader"], ["put", "/r/a", "1"], ["auth", "enable"]):
            server.etcdctl(*args, check=True)
    both.restart()

    def script(rec: Recorder) -> None:
        rec("get", "/r/a")
        rec("get", "/r/a", ALICE, *J)
        rec("put", "/r/a", "2", ALICE)
        rec("put", "/r/a", "2", ROOT, *J)
        rec("user", "list", ROOT)

    assert_steps_same(both, script)
