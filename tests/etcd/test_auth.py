"""The Auth service and permission checks, driven by etcdctl and (for watch) a grpcio client."""

from __future__ import annotations

import pytest

from tests.etcd.conftest import ServerThread
from tests.etcd.test_watch import WatchStream
from ultraplane.etcd.proto import auth_pb2, rpc_pb2, rpc_pb2_grpc

ROOT = ("--user", "root:rootpw")
ALICE = ("--user", "alice:alicepw")


@pytest.fixture
def secured(make_server) -> ServerThread:
    """A server with auth enabled: root, and alice who may read /pub/ only."""
    srv = make_server()
    srv.etcdctl("put", "/pub/x", "public")
    srv.etcdctl("put", "/priv/y", "secret")
    assert (
        srv.etcdctl("user", "add", "root", "--new-user-password", "rootpw").stdout.strip()
        == "User root created"
    )
    srv.etcdctl("user", "grant-role", "root", "root")
    assert srv.etcdctl("role", "add", "reader").stdout.strip() == "Role reader created"
    srv.etcdctl("role", "grant-permission", "reader", "--prefix=true", "read", "/pub/")
    srv.etcdctl("user", "add", "alice", "--new-user-password", "alicepw")
    srv.etcdctl("user", "grant-role", "alice", "reader")
    assert srv.etcdctl("auth", "enable").stdout.strip() == "Authentication Enabled"
    return srv


def test_auth_enforced(secured: ServerThread) -> None:
    anonymous = secured.etcdctl("get", "/pub/x", check=False)
    assert "etcdserver: user name is empty" in anonymous.stderr
    assert secured.etcdctl(*ALICE, "get", "/pub/x", "--print-value-only").stdout.strip() == "public"
    denied = secured.etcdctl(*ALICE, "get", "/priv/y", check=False)
    assert "etcdserver: permission denied" in denied.stderr
    write = secured.etcdctl(*ALICE, "put", "/pub/x", "mine", check=False)
    assert "etcdserver: permission denied" in write.stderr
    bad_password = secured.etcdctl("--user", "alice:wrong", "get", "/pub/x", check=False)
    assert "etcdserver: authentication failed, invalid user ID or password" in bad_password.stderr
    assert secured.etcdctl(*ROOT, "get", "/priv/y", "--print-value-only").stdout.strip() == "secret"
    admin_only = secured.etcdctl(*ALICE, "user", "list", check=False)
    assert "etcdserver: permission denied" in admin_only.stderr
    snapshot = secured.etcdctl(*ALICE, "snapshot", "save", "/dev/null", check=False)
    assert snapshot.returncode != 0


def test_auth_management(secured: ServerThread) -> None:
    assert secured.etcdctl(*ROOT, "user", "list").stdout.split() == ["alice", "root"]
    assert secured.etcdctl(*ROOT, "role", "list").stdout.split() == ["reader"]  # root needs no role entry
    assert secured.etcdctl(*ALICE, "user", "get", "alice").stdout.split() == [
        "User:",
        "alice",
        "Roles:",
        "reader",
    ]
    role = secured.etcdctl(*ROOT, "role", "get", "reader").stdout
    assert "KV Read:" in role and "[/pub/, /pub0) (prefix /pub/)" in role
    revoked = secured.etcdctl(*ROOT, "role", "revoke-permission", "reader", "/pub/", "/pub0").stdout
    assert "Permission of range [/pub/, /pub0) is revoked from role reader" in revoked
    missing = secured.etcdctl(*ROOT, "user", "get", "nobody", check=False)
    assert "etcdserver: user name not found" in missing.stderr
    secured.etcdctl(*ROOT, "user", "passwd", "alice", "--interactive=false", input="newpw\n")
    assert secured.etcdctl("--user", "alice:newpw", "user", "get", "alice").returncode == 0
    assert secured.etcdctl(*ROOT, "auth", "disable").stdout.strip() == "Authentication Disabled"
    assert secured.etcdctl("get", "/priv/y", "--print-value-only").stdout.strip() == "secret"


def test_watch_permission(secured: ServerThread) -> None:
    with secured.channel() as channel:
        auth = rpc_pb2_grpc.AuthStub(channel)
        token = auth.Authenticate(rpc_pb2.AuthenticateRequest(name="alice", password="alicepw")).token
        assert token
        role = auth.RoleGet(rpc_pb2.AuthRoleGetRequest(role="reader"), metadata=[("token", token)])
        assert [(p.permType, p.key) for p in role.perm] == [(auth_pb2.Permission.READ, b"/pub/")]

    # the token travels as call metadata, as etcd clients send it
    channel = secured.channel()
    stream = WatchStream(channel, metadata=[("token", token)])
    try:
        denied = stream.create(b"/priv/y")
        assert denied.created and denied.canceled and denied.watch_id == -1
        assert denied.cancel_reason == "etcdserver: permission denied"
        allowed = stream.create(b"/pub/x")
        assert allowed.created and not allowed.canceled
    finally:
        stream.close()
        channel.close()
