"""One history played on a store over gRPC, and everything a snapshot must carry, observed.

``play`` writes the same operations on any etcd-compatible server (lease ids are chosen, so both
sides hold the same ones): puts, updates, deletes, multi-op txns (sub-revisions), a lease with a
key, a revoked lease, a 20 KB value, a compaction, users and roles, then auth enabled.
``observe`` reads back what must survive a snapshot save/restore: every key at every revision
since the compaction, the compaction itself, leases and their keys, users, roles and a login,
and HashKV at every revision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict

from ultraplane.etcd.proto import auth_pb2, rpc_pb2, rpc_pb2_grpc

ROOT_PASSWORD = "rootpw"
ALICE_PASSWORD = "alicepw"
LEASE_KEPT = 0x7E57
LEASE_SECOND = 0x7E58
LEASE_REVOKED = 0x7E59
VOLATILE = ("clusterId", "memberId", "raftTerm")


def _put(key: bytes, value: bytes, lease: int = 0) -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=value, lease=lease))


def _delete(key: bytes, range_end: bytes = b"") -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=key, range_end=range_end))


def _range(key: bytes, range_end: bytes = b"", revision: int = 0) -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=key, range_end=range_end, revision=revision))


def strip_volatile(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: strip_volatile(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [strip_volatile(v) for v in obj]
    return obj


def as_dict(message: Any) -> Any:
    return strip_volatile(MessageToDict(message, preserving_proto_field_name=False))


class Client:
    """Sync gRPC stubs on one server; ``login`` makes every later call carry the token."""

    def __init__(self, endpoint: str) -> None:
        self.channel = grpc.insecure_channel(endpoint)
        self.kv = rpc_pb2_grpc.KVStub(self.channel)
        self.lease = rpc_pb2_grpc.LeaseStub(self.channel)
        self.auth = rpc_pb2_grpc.AuthStub(self.channel)
        self.maintenance = rpc_pb2_grpc.MaintenanceStub(self.channel)
        self.metadata: tuple[tuple[str, str], ...] = ()

    def close(self) -> None:
        self.channel.close()

    def login(self, user: str, password: str) -> None:
        token = self.auth.Authenticate(rpc_pb2.AuthenticateRequest(name=user, password=password), timeout=10).token
        self.metadata = (("token", token),)

    def call(self, method: Any, request: Any) -> Any:
        return method(request, metadata=self.metadata, timeout=20)

    def txn(self, *success: rpc_pb2.RequestOp, compare: list[rpc_pb2.Compare] | None = None,
            failure: list[rpc_pb2.RequestOp] | None = None) -> rpc_pb2.TxnResponse:
        req = rpc_pb2.TxnRequest(compare=compare or [], success=list(success), failure=failure or [])
        return self.call(self.kv.Txn, req)

    def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        return self.call(self.kv.Put, rpc_pb2.PutRequest(key=key, value=value, lease=lease)).header.revision


@dataclass
class Played:
    revision: int
    compact: int


def play(c: Client) -> Played:
    c.put(b"/app/a", b"1")
    c.put(b"/app/a", b"2")
    c.put(b"/app/b", b"x")
    c.call(c.kv.DeleteRange, rpc_pb2.DeleteRangeRequest(key=b"/app/b"))
    for start in (0, 100):  # two 100-put txns: one revision each, sub-revisions 0..99
        c.txn(*(_put(b"/registry/pods/default/p%03d" % i, b"pod-%d" % i) for i in range(start, start + 100)))
    c.call(c.lease.LeaseGrant, rpc_pb2.LeaseGrantRequest(TTL=600, ID=LEASE_KEPT))
    c.put(b"/app/leased", b"v", lease=LEASE_KEPT)
    c.txn(_put(b"/app/c", b"3"), _delete(b"/app/a"), _put(b"/registry/pods/default/p000", b"pod-0-v2"),
          compare=[rpc_pb2.Compare(key=b"/app/a", target=rpc_pb2.Compare.VALUE, value=b"2")])
    compact = c.put(b"/app/big", b"B" * 20_000)
    c.call(c.kv.DeleteRange, rpc_pb2.DeleteRangeRequest(key=b"/registry/pods/default/p19",
                                                        range_end=b"/registry/pods/default/p1:"))
    c.put(b"/app/a", b"again")
    c.call(c.kv.Compact, rpc_pb2.CompactionRequest(revision=compact, physical=True))
    c.put(b"/app/after", b"compaction")
    c.call(c.lease.LeaseGrant, rpc_pb2.LeaseGrantRequest(TTL=300, ID=LEASE_SECOND))
    c.put(b"/app/leased2", b"w", lease=LEASE_SECOND)
    c.call(c.lease.LeaseGrant, rpc_pb2.LeaseGrantRequest(TTL=300, ID=LEASE_REVOKED))
    c.put(b"/app/gone/1", b"g", lease=LEASE_REVOKED)
    c.put(b"/app/gone/2", b"g", lease=LEASE_REVOKED)
    c.call(c.lease.LeaseRevoke, rpc_pb2.LeaseRevokeRequest(ID=LEASE_REVOKED))
    revision = c.put(b"/app/last", b"z")

    perm = auth_pb2.Permission(permType=auth_pb2.Permission.READ, key=b"/app/", range_end=b"/app0")
    c.call(c.auth.RoleAdd, rpc_pb2.AuthRoleAddRequest(name="reader"))
    c.call(c.auth.RoleGrantPermission, rpc_pb2.AuthRoleGrantPermissionRequest(name="reader", perm=perm))
    c.call(c.auth.UserAdd, rpc_pb2.AuthUserAddRequest(name="alice", password=ALICE_PASSWORD))
    c.call(c.auth.UserGrantRole, rpc_pb2.AuthUserGrantRoleRequest(user="alice", role="reader"))
    c.call(c.auth.UserAdd, rpc_pb2.AuthUserAddRequest(name="root", password=ROOT_PASSWORD))
    c.call(c.auth.UserGrantRole, rpc_pb2.AuthUserGrantRoleRequest(user="root", role="root"))
    c.call(c.auth.AuthEnable, rpc_pb2.AuthEnableRequest())
    c.login("root", ROOT_PASSWORD)
    return Played(revision, compact)


def _error(fn: Any) -> Any:
    try:
        return as_dict(fn())
    except grpc.RpcError as exc:
        return {"code": exc.code().name, "details": exc.details()}


def observe(c: Client, played: Played) -> dict[str, Any]:
    """Everything a restored copy must answer alike (logged in as root)."""
    out: dict[str, Any] = {}
    everything = rpc_pb2.RangeRequest(key=b"\0", range_end=b"\0")
    latest = c.call(c.kv.Range, everything)
    out["revision"] = latest.header.revision
    for rev in range(played.compact - 1, played.revision + 1):
        req = rpc_pb2.RangeRequest(key=b"\0", range_end=b"\0", revision=rev)
        out[f"range@{rev}"] = _error(lambda req=req: c.call(c.kv.Range, req))
    for rev in range(played.compact, played.revision + 1):
        out[f"hashkv@{rev}"] = _error(lambda rev=rev: c.call(c.maintenance.HashKV, rpc_pb2.HashKVRequest(revision=rev)))
    out["hashkv"] = as_dict(c.call(c.maintenance.HashKV, rpc_pb2.HashKVRequest()))
    leases = c.call(c.lease.LeaseLeases, rpc_pb2.LeaseLeasesRequest())
    out["leases"] = sorted(lease.ID for lease in leases.leases)
    for lease_id in out["leases"]:
        ttl = c.call(c.lease.LeaseTimeToLive, rpc_pb2.LeaseTimeToLiveRequest(ID=lease_id, keys=True))
        out[f"lease {lease_id:x}"] = (ttl.grantedTTL, sorted(ttl.keys), 0 < ttl.TTL <= ttl.grantedTTL)
    out["users"] = as_dict(c.call(c.auth.UserList, rpc_pb2.AuthUserListRequest()))
    out["roles"] = as_dict(c.call(c.auth.RoleList, rpc_pb2.AuthRoleListRequest()))
    out["alice"] = as_dict(c.call(c.auth.UserGet, rpc_pb2.AuthUserGetRequest(name="alice")))
    out["reader"] = as_dict(c.call(c.auth.RoleGet, rpc_pb2.AuthRoleGetRequest(role="reader")))
    return out


def logins(endpoint: str) -> dict[str, Any]:
    """Who can log in with which password, and what alice may read."""
    out: dict[str, Any] = {}
    alice = Client(endpoint)
    try:
        alice.login("alice", ALICE_PASSWORD)
        out["alice reads /app/c"] = [kv.value for kv in alice.call(alice.kv.Range, rpc_pb2.RangeRequest(key=b"/app/c")).kvs]
        out["alice reads /registry/"] = _error(
            lambda: alice.call(alice.kv.Range, rpc_pb2.RangeRequest(key=b"/registry/", range_end=b"/registry0"))
        )
        out["wrong password"] = _error(lambda: alice.login("alice", "nope"))
    finally:
        alice.close()
    return out
