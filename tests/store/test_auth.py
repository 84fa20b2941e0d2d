"""The auth state machine: etcd 3.4's user/role/permission rules, tokens, checks, journaling.

The Store drives ``apply`` through ``propose``; here a minimal journal-recording proposer does
the same (apply at once, a StoreError rejects the op, otherwise the op is recorded), so replaying
the recorded ops into a fresh AuthStore must rebuild the same state.
"""

from __future__ import annotations

import random
import re
from typing import Any

import pytest

from ultraplane.store import errors
from ultraplane.store.auth import (
    AuthStore,
    Permission,
    PermissionType,
    ScryptParams,
    hash_password,
    verify_password,
)
from ultraplane.store.types import (
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    PutRequest,
    RangeRequest,
    TxnRequest,
)

FAST = ScryptParams(n=2**8, r=8, p=1)  # keeps the tests quick; the default is tested separately
READ, WRITE, READWRITE = PermissionType.READ, PermissionType.WRITE, PermissionType.READWRITE


class RecordingProposer:
    """Propose as the Store does: apply now; journal only what apply accepted."""

    def __init__(self) -> None:
        self.machines: dict[str, Any] = {}
        self.journal: list[tuple[str, bytes]] = []

    async def propose(self, machine_name: str, op: bytes) -> Any:
        result = self.machines[machine_name].apply(op)
        self.journal.append((machine_name, op))
        return result


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_auth(**kwargs: Any) -> tuple[AuthStore, RecordingProposer]:
    proposer = RecordingProposer()
    auth = AuthStore(proposer, scrypt_params=FAST, **kwargs)
    proposer.machines[auth.name] = auth
    return auth, proposer


async def with_root(auth: AuthStore, password: str = "rootpw") -> None:
    await auth.user_add("root", password)
    await auth.user_grant_role("root", "root")


def expect(error: type[errors.StoreError], code: int, message: str) -> Any:
    assert error.code == code and error.message == message
    return pytest.raises(error, match=re.escape(message))


# --- errors: etcd's exact strings and codes ---------------------------------------------------


def test_error_classes_carry_etcd_strings_and_codes() -> None:
    table = {
        errors.RootUserNotExist: (9, "etcdserver: root user does not exist"),
        errors.RootRoleNotExist: (9, "etcdserver: root user does not have root role"),
        errors.UserAlreadyExist: (9, "etcdserver: user name already exists"),
        errors.UserEmpty: (3, "etcdserver: user name is empty"),
        errors.UserNotFound: (9, "etcdserver: user name not found"),
        errors.RoleAlreadyExist: (9, "etcdserver: role name already exists"),
        errors.RoleNotFound: (9, "etcdserver: role name not found"),
        errors.RoleEmpty: (3, "etcdserver: role name is empty"),
        errors.AuthFailed: (3, "etcdserver: authentication failed, invalid user ID or password"),
        errors.PermissionDenied: (7, "etcdserver: permission denied"),
        errors.RoleNotGranted: (9, "etcdserver: role is not granted to the user"),
        errors.PermissionNotGranted: (9, "etcdserver: permission is not granted to the role"),
        errors.AuthNotEnabled: (9, "etcdserver: authentication is not enabled"),
        errors.InvalidAuthToken: (16, "etcdserver: invalid auth token"),
        errors.InvalidAuthMgmt: (3, "etcdserver: invalid auth management"),
        errors.AuthOldRevision: (3, "etcdserver: revision of auth store is old"),
        errors.NoPasswordUser: (2, "auth: authentication failed, password was given for no password user"),
    }
    for cls, (code, message) in table.items():
        err = cls()
        assert isinstance(err, errors.StoreError)
        assert (err.code, err.message, str(err)) == (code, message, message)


# --- enable / disable -------------------------------------------------------------------------


async def test_enable_needs_root_user_with_root_role() -> None:
    auth, proposer = make_auth()
    assert auth.status() == (False, 1)  # a fresh etcd auth store is at revision 1
    with expect(errors.RootUserNotExist, 9, "etcdserver: root user does not exist"):
        await auth.enable()
    await auth.user_add("root", "pw")
    with expect(errors.RootRoleNotExist, 9, "etcdserver: root user does not have root role"):
        await auth.enable()
    # the root role needs no role entry to be granted
    await auth.user_grant_role("root", "root")
    assert auth.role_list() == []
    with expect(errors.RoleNotFound, 9, "etcdserver: role name not found"):
        auth.role_get("root")
    revision = auth.revision
    await auth.enable()
    assert auth.status() == (True, revision)  # enable does not bump the revision
    journaled = len(proposer.journal)
    await auth.enable()  # repeated enable: accepted, nothing journaled
    assert len(proposer.journal) == journaled
    await auth.disable()
    assert auth.status() == (False, revision + 1)  # disable does
    await auth.disable()
    assert auth.status() == (False, revision + 1)
    assert len(proposer.journal) == journaled + 1


# --- users and roles --------------------------------------------------------------------------


async def test_user_management_errors_and_revisions() -> None:
    auth, _ = make_auth()
    with expect(errors.UserEmpty, 3, "etcdserver: user name is empty"):
        await auth.user_add("", "pw")
    await auth.user_add("bob", "pw")
    assert auth.revision == 2
    with expect(errors.UserAlreadyExist, 9, "etcdserver: user name already exists"):
        await auth.user_add("bob", "other")
    await auth.user_add("alice", no_password=True)
    assert auth.user_list() == ["alice", "bob"]
    with expect(errors.UserNotFound, 9, "etcdserver: user name not found"):
        auth.user_get("carol")
    with expect(errors.UserNotFound, 9, "etcdserver: user name not found"):
        await auth.user_grant_role("carol", "r")
    with expect(errors.RoleNotFound, 9, "etcdserver: role name not found"):
        await auth.user_grant_role("bob", "r")
    with expect(errors.RoleEmpty, 3, "etcdserver: role name is empty"):
        await auth.role_add("")
    await auth.role_add("r2")
    await auth.role_add("r1")
    with expect(errors.RoleAlreadyExist, 9, "etcdserver: role name already exists"):
        await auth.role_add("r1")
    assert auth.role_list() == ["r1", "r2"]
    await auth.user_grant_role("bob", "r2")
    await auth.user_grant_role("bob", "r1")
    assert auth.user_get("bob") == ["r1", "r2"]  # kept sorted
    revision = auth.revision
    await auth.user_grant_role("bob", "r1")  # already granted: OK, no change
    assert auth.revision == revision
    with expect(errors.RoleNotGranted, 9, "etcdserver: role is not granted to the user"):
        await auth.user_revoke_role("alice", "r1")
    with expect(errors.UserNotFound, 9, "etcdserver: user name not found"):
        await auth.user_revoke_role("carol", "r1")
    await auth.user_revoke_role("bob", "r2")
    assert auth.user_get("bob") == ["r1"]
    await auth.user_grant_role("alice", "r1")
    # deleting a role takes it away from every user
    await auth.role_delete("r1")
    assert auth.user_get("alice") == [] and auth.user_get("bob") == []
    with expect(errors.RoleNotFound, 9, "etcdserver: role name not found"):
        await auth.role_delete("r1")
    with expect(errors.UserNotFound, 9, "etcdserver: user name not found"):
        await auth.user_delete("carol")
    with expect(errors.UserNotFound, 9, "etcdserver: user name not found"):
        await auth.user_change_password("carol", "x")
    await auth.user_delete("alice")
    assert auth.user_list() == ["bob"]
    assert auth.revision == revision + 4


async def test_root_is_protected_only_while_enabled() -> None:
    auth, _ = make_auth()
    await with_root(auth)
    await auth.role_add("root")
    await auth.enable()
    mgmt = (errors.InvalidAuthMgmt, 3, "etcdserver: invalid auth management")
    with expect(*mgmt):
        await auth.user_delete("root")
    with expect(*mgmt):
        await auth.user_revoke_role("root", "root")
    with expect(*mgmt):
        await auth.role_delete("root")
    await auth.disable()
    await auth.user_revoke_role("root", "root")
    await auth.role_delete("root")
    await auth.user_delete("root")
    assert auth.user_list() == [] and auth.role_list() == []


async def test_role_permissions_grant_update_revoke() -> None:
    auth, _ = make_auth()
    await auth.role_add("r")
    with expect(errors.RoleNotFound, 9, "etcdserver: role name not found"):
        await auth.role_grant_permission("nope", READ, b"a")
    await auth.role_grant_permission("r", READ, b"m", b"n")
    await auth.role_grant_permission("r", WRITE, b"a")
    await auth.role_grant_permission("r", READ, b"z", b"\0")
    assert auth.role_get("r") == [
        Permission(WRITE, b"a", b""),
        Permission(READ, b"m", b"n"),
        Permission(READ, b"z", b"\0"),
    ]
    await auth.role_grant_permission("r", READWRITE, b"m", b"n")  # same key+range: type updated
    assert auth.role_get("r")[1] == Permission(READWRITE, b"m", b"n")
    with expect(errors.PermissionNotGranted, 9, "etcdserver: permission is not granted to the role"):
        await auth.role_revoke_permission("r", b"m", b"o")
    with expect(errors.RoleNotFound, 9, "etcdserver: role name not found"):
        await auth.role_revoke_permission("nope", b"m", b"n")
    await auth.role_revoke_permission("r", b"m", b"n")
    assert [p.key for p in auth.role_get("r")] == [b"a", b"z"]
    with pytest.raises(ValueError):
        await auth.role_grant_permission("r", 7, b"a")


async def test_grant_permission_matches_etcd_quirk_with_several_range_ends() -> None:
    """etcd 3.4 compares only against the first permission with the same key, so this sequence
    lists [a,c) twice (observed with etcdctl against etcd 3.4.23)."""
    auth, _ = make_auth()
    await auth.role_add("r")
    await auth.role_grant_permission("r", READ, b"a", b"b")
    await auth.role_grant_permission("r", WRITE, b"a", b"c")
    await auth.role_grant_permission("r", READ, b"a", b"b")
    await auth.role_grant_permission("r", READ, b"a", b"c")
    assert auth.role_get("r") == [
        Permission(READ, b"a", b"b"),
        Permission(WRITE, b"a", b"c"),
        Permission(READ, b"a", b"c"),
    ]
    # revoking a (key, range_end) removes every entry for it
    await auth.role_revoke_permission("r", b"a", b"c")
    assert auth.role_get("r") == [Permission(READ, b"a", b"b")]


# --- permission checks ------------------------------------------------------------------------


async def test_checks_pass_while_disabled_and_need_a_user_once_enabled() -> None:
    auth, _ = make_auth()
    await with_root(auth)
    await auth.user_add("bob", "pw")
    auth.check_read(None, b"k")
    auth.check_write(None, b"k", b"\0")
    auth.check_admin(None)
    assert auth.is_admin(None) and auth.is_admin("bob")
    await auth.enable()
    with expect(errors.UserEmpty, 3, "etcdserver: user name is empty"):
        auth.check_read(None, b"k")
    with expect(errors.UserEmpty, 3, "etcdserver: user name is empty"):
        auth.check_admin(None)
    with expect(errors.PermissionDenied, 7, "etcdserver: permission denied"):
        auth.check_read("ghost", b"k")  # unknown user (e.g. a TLS CN with no user)
    with expect(errors.UserNotFound, 9, "etcdserver: user name not found"):
        auth.check_admin("ghost")
    with expect(errors.PermissionDenied, 7, "etcdserver: permission denied"):
        auth.check_admin("bob")
    with expect(errors.PermissionDenied, 7, "etcdserver: permission denied"):
        auth.check_write("bob", b"k")
    assert not auth.is_admin("bob") and auth.is_admin("root")
    # root may do anything, whatever roles exist
    auth.check_admin("root")
    auth.check_read("root", b"\0", b"\0")
    auth.check_write("root", b"any", b"thing")


async def test_range_checks_use_the_union_of_all_roles() -> None:
    auth, _ = make_auth()
    await with_root(auth)
    await auth.user_add("u", "pw")
    for role in ("r1", "r2", "r3"):
        await auth.role_add(role)
        await auth.user_grant_role("u", role)
    await auth.role_grant_permission("r1", READ, b"a", b"c")
    await auth.role_grant_permission("r2", READWRITE, b"c", b"e")  # touches [a,c): merged read [a,e)
    await auth.role_grant_permission("r3", WRITE, b"x")  # single key
    await auth.role_grant_permission("r3", READ, b"p", b"\0")  # every key from p
    await auth.enable()

    auth.check_read("u", b"a", b"e")
    auth.check_read("u", b"b", b"d")
    auth.check_read("u", b"d")
    auth.check_read("u", b"p", b"\0")
    auth.check_read("u", b"q", b"zzz")
    auth.check_read("u", b"zz\xff\xff")
    auth.check_write("u", b"c", b"e")
    auth.check_write("u", b"x")
    auth.check_write("u", b"x", b"x\0")  # the range holding only x
    denied = [
        ("read", b"a", b"f"),  # runs past e
        ("read", b"0", b"b"),  # starts before a
        ("read", b"e"),  # e itself is outside [a,e)
        ("read", b"o", b"\0"),  # o is not readable
        ("read", b"\0", b"\0"),  # the whole keyspace
        ("write", b"b"),  # [a,c) is read-only
        ("write", b"b", b"d"),
        ("write", b"x", b"y"),  # more than the single key x
        ("write", b"x\0"),
        ("read", b"o"),  # between e and p
    ]
    for kind, *args in denied:
        check = auth.check_read if kind == "read" else auth.check_write
        with pytest.raises(errors.PermissionDenied):
            check("u", *args)
            pytest.fail(f"{kind} {args} was allowed")

    # a gap between two pieces is found even when the pieces overlap the request on both sides
    await auth.role_grant_permission("r1", READ, b"f", b"h")
    with pytest.raises(errors.PermissionDenied):
        auth.check_read("u", b"b", b"g")
    await auth.role_grant_permission("r2", READ, b"e", b"f")  # fill the gap: permission changes apply at once
    auth.check_read("u", b"b", b"g")

    # etcdctl's "--prefix ''" permission: key "\0", range_end "\0" covers every key
    await auth.role_grant_permission("r3", READWRITE, b"\0", b"\0")
    auth.check_write("u", b"\0", b"\0")
    auth.check_read("u", b"anything")


def naive_covered(perms: list[tuple[bytes, bytes]], key: bytes, range_end: bytes) -> bool:
    """Per-key reference: a gap in a union of half-open intervals always starts at one of the
    interval ends (or at the request's start), so checking those candidate keys is exact."""

    def bounds(k: bytes, e: bytes) -> tuple[bytes, bytes | None]:
        if not e:
            return k, k + b"\0"
        return k, None if e == b"\0" else e

    def inside(candidate: bytes, lo: bytes, hi: bytes | None) -> bool:
        return lo <= candidate and (hi is None or candidate < hi)

    q_lo, q_hi = bounds(key, range_end)
    intervals = [bounds(k, e) for k, e in perms]
    candidates = {q_lo} | {hi for _, hi in intervals if hi is not None}
    return all(any(inside(c, lo, hi) for lo, hi in intervals) for c in candidates if inside(c, q_lo, q_hi))


async def test_range_check_agrees_with_a_per_key_reference() -> None:
    rng = random.Random(20240601)
    alphabet = [b"a", b"b", b"c", b"d"]

    def random_key() -> bytes:
        return b"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 2)))

    def random_range() -> tuple[bytes, bytes]:
        key = random_key()
        shape = rng.random()
        if shape < 0.25:
            return key, b""
        if shape < 0.4:
            return key, b"\0"
        end = random_key()
        return (key, end) if key < end else (end, key) if end < key else (key, b"")

    for _ in range(40):
        auth, _ = make_auth()
        await with_root(auth)
        await auth.user_add("u", "pw")
        await auth.role_add("r")
        await auth.user_grant_role("u", "r")
        perms = [random_range() for _ in range(rng.randint(0, 5))]
        for k, e in perms:
            await auth.role_grant_permission("r", READ, k, e)
        await auth.enable()
        granted = [(p.key, p.range_end) for p in auth.role_get("r")]
        for _ in range(60):
            key, range_end = random_range()
            expected = naive_covered(granted, key, range_end)
            try:
                auth.check_read("u", key, range_end)
                allowed = True
            except errors.PermissionDenied:
                allowed = False
            assert allowed == expected, (granted, key, range_end)


async def test_get_rules_and_request_shaped_checks() -> None:
    auth, _ = make_auth()
    await with_root(auth)
    await auth.user_add("bob", "pw")
    await auth.role_add("reader")
    await auth.role_add("other")
    await auth.user_grant_role("bob", "reader")
    await auth.role_grant_permission("reader", READ, b"k", b"l")
    await auth.role_grant_permission("reader", WRITE, b"w", b"x")
    await auth.enable()

    auth.check_user_get("bob", "bob")  # oneself
    with pytest.raises(errors.PermissionDenied):
        auth.check_user_get("bob", "root")
    auth.check_user_get("root", "bob")
    auth.check_role_get("bob", "reader")  # a role one has
    with pytest.raises(errors.PermissionDenied):
        auth.check_role_get("bob", "other")

    auth.check_range("bob", RangeRequest(key=b"k", range_end=b"l"))
    auth.check_put("bob", PutRequest(key=b"wa"))
    with pytest.raises(errors.PermissionDenied):
        auth.check_put("bob", PutRequest(key=b"wa", prev_kv=True))  # prev_kv needs read too
    with pytest.raises(errors.PermissionDenied):
        auth.check_put("bob", PutRequest(key=b"wa", lease=5), lease_keys=[b"wb", b"zz"])
    auth.check_delete_range("bob", DeleteRangeRequest(key=b"w", range_end=b"x"))
    with pytest.raises(errors.PermissionDenied):
        auth.check_delete_range("bob", DeleteRangeRequest(key=b"w", range_end=b"x", prev_kv=True))
    with pytest.raises(errors.PermissionDenied):
        auth.check_lease_revoke("bob", [b"wa", b"k1"])

    txn = TxnRequest(
        compare=[Compare(CompareResult.EQUAL, CompareTarget.VERSION, b"k1")],
        success=[PutRequest(key=b"wa", prev_kv=True)],  # etcd checks only write inside a txn
        failure=[RangeRequest(key=b"k2")],
    )
    auth.check_txn("bob", txn)
    nested = TxnRequest(success=[TxnRequest(failure=[DeleteRangeRequest(key=b"k1")])])
    with pytest.raises(errors.PermissionDenied):
        auth.check_txn("bob", nested)
    with pytest.raises(errors.PermissionDenied):
        auth.check_txn("bob", TxnRequest(compare=[Compare(CompareResult.EQUAL, CompareTarget.VALUE, b"w1")]))
    with pytest.raises(errors.UserEmpty):
        auth.check_txn(None, txn)


# --- authenticate and tokens ------------------------------------------------------------------


async def test_authenticate_errors() -> None:
    auth, _ = make_auth()
    await with_root(auth)
    await auth.user_add("np", no_password=True)
    with expect(errors.AuthNotEnabled, 9, "etcdserver: authentication is not enabled"):
        await auth.authenticate("root", "rootpw")
    await auth.enable()
    failed = (errors.AuthFailed, 3, "etcdserver: authentication failed, invalid user ID or password")
    with expect(*failed):
        await auth.authenticate("root", "wrong")
    with expect(*failed):
        await auth.authenticate("nobody", "rootpw")
    with expect(*failed):
        await auth.authenticate("", "")
    with expect(
        errors.NoPasswordUser, 2, "auth: authentication failed, password was given for no password user"
    ):
        await auth.authenticate("np", "")
    # a no-password user stays one after a password change, as in etcd
    await auth.user_change_password("np", "set")
    with pytest.raises(errors.NoPasswordUser):
        await auth.authenticate("np", "set")


async def test_tokens_expire_renew_and_are_dropped() -> None:
    clock = Clock()
    auth, proposer = make_auth(clock=clock, token_ttl=300.0)
    await with_root(auth)
    await auth.user_add("bob", "bobpw")
    await auth.enable()
    journaled = len(proposer.journal)

    token = await auth.authenticate("bob", "bobpw")
    assert re.fullmatch(r"[A-Za-z]{16}\.\d+", token)
    assert len(proposer.journal) == journaled  # tokens are not journaled
    assert auth.user_from_token(token) == "bob"
    assert auth.user_from_token(None) is None
    invalid = (errors.InvalidAuthToken, 16, "etcdserver: invalid auth token")
    for bad in ("", "garbage", token + "x", token.split(".")[0] + ".999"):
        with expect(*invalid):
            auth.user_from_token(bad)

    # use renews the TTL; idleness past it expires the token
    clock.now += 250
    assert auth.user_from_token(token) == "bob"
    clock.now += 250
    assert auth.user_from_token(token) == "bob"
    clock.now += 301
    with expect(*invalid):
        auth.user_from_token(token)

    # a password change or deletion drops that user's tokens only
    bob, root = await auth.authenticate("bob", "bobpw"), await auth.authenticate("root", "rootpw")
    assert bob != root
    await auth.user_change_password("bob", "newpw")
    with pytest.raises(errors.InvalidAuthToken):
        auth.user_from_token(bob)
    assert auth.user_from_token(root) == "root"
    with pytest.raises(errors.AuthFailed):
        await auth.authenticate("bob", "bobpw")
    bob = await auth.authenticate("bob", "newpw")
    await auth.user_delete("bob")
    with pytest.raises(errors.InvalidAuthToken):
        auth.user_from_token(bob)

    # disabling drops every token; a token sent while disabled is invalid (etcd 3.4.23 agrees)
    await auth.disable()
    with pytest.raises(errors.InvalidAuthToken):
        auth.user_from_token(root)
    assert auth.user_from_token(None) is None


async def test_user_from_request_prefers_token_then_cert_common_name() -> None:
    auth, _ = make_auth()
    await with_root(auth)
    await auth.user_add("cn-user", no_password=True)
    await auth.enable()
    token = await auth.authenticate("root", "rootpw")
    assert auth.user_from_request(None, "cn-user") == "cn-user"
    assert auth.user_from_request(token, "cn-user") == "root"
    assert auth.user_from_request(None, None) is None
    with pytest.raises(errors.InvalidAuthToken):
        auth.user_from_request("bad.1", "cn-user")


# --- passwords --------------------------------------------------------------------------------


def test_default_password_hash_is_salted_scrypt() -> None:
    first, second = hash_password("s3cret"), hash_password("s3cret")
    assert first != second  # random salt
    assert first.startswith("scrypt$16384$8$1$") and "s3cret" not in first
    assert verify_password("s3cret", first) and verify_password("s3cret", second)
    assert not verify_password("s3creT", first)
    assert not verify_password("s3cret", "not-a-hash")
    assert not verify_password("s3cret", "bcrypt$1$2$3$AAAA$AAAA")


async def test_plaintext_passwords_reach_neither_journal_nor_snapshot() -> None:
    auth, proposer = make_auth()
    await auth.user_add("alice", "plain-text-password")
    await auth.user_change_password("alice", "another-plain-one")
    recorded = b"".join(op for _, op in proposer.journal) + auth.dump()
    assert b"plain-text-password" not in recorded and b"another-plain-one" not in recorded


# --- journaling: replay and snapshots ---------------------------------------------------------


async def build_sample_state(auth: AuthStore) -> None:
    await with_root(auth)
    await auth.user_add("alice", "alicepw")
    await auth.user_add("np", no_password=True)
    await auth.role_add("reader")
    await auth.role_add("writer")
    await auth.role_grant_permission("reader", READ, b"/pub/", b"/pub0")
    await auth.role_grant_permission("writer", READWRITE, b"\x00\xff", b"\0")
    await auth.user_grant_role("alice", "reader")
    await auth.user_grant_role("np", "writer")
    await auth.user_revoke_role("np", "writer")
    await auth.enable()
    with pytest.raises(errors.InvalidAuthMgmt):
        await auth.user_delete("root")  # rejected: must not be journaled


async def test_replay_and_snapshot_rebuild_the_same_state() -> None:
    auth, proposer = make_auth()
    await build_sample_state(auth)
    assert all(op for _, op in proposer.journal)
    state = auth.dump()

    replayed, _ = make_auth()
    for name, op in proposer.journal:
        assert name == "auth"
        replayed.apply(op)
    assert replayed.dump() == state
    assert replayed.status() == auth.status() == (True, auth.revision)

    restored, _ = make_auth()
    restored.load(state)
    assert restored.dump() == state
    assert restored.user_list() == ["alice", "np", "root"]
    assert restored.role_get("writer") == [Permission(READWRITE, b"\x00\xff", b"\0")]
    restored.check_read("alice", b"/pub/x")
    with pytest.raises(errors.PermissionDenied):
        restored.check_read("alice", b"/priv/x")
    assert await restored.authenticate("alice", "alicepw")
    # loading replaces state (and live tokens) entirely
    token = await restored.authenticate("root", "rootpw")
    restored.load(b"")
    assert restored.status() == (False, 1) and restored.user_list() == []
    with pytest.raises(errors.InvalidAuthToken):
        restored.user_from_token(token)


# --- through the real Store and FileJournal ---------------------------------------------------


def real_store_class() -> Any:
    import ultraplane.store as store_package

    store_class = getattr(store_package, "Store", None)
    if store_class is None:
        pytest.skip("ultraplane.store.Store is not written yet")
    return store_class


async def open_store(directory: str, snapshot_records: int | None = None) -> tuple[Any, AuthStore]:
    from ultraplane.journal.file import FileJournal

    store_class = real_store_class()
    options = {} if snapshot_records is None else {"snapshot_records": snapshot_records}
    store = store_class(FileJournal(directory), **options)
    auth = AuthStore(store, scrypt_params=FAST)
    store.attach(auth)
    await store.open()
    return store, auth


@pytest.mark.parametrize("snapshot_records", [None, 3])
async def test_auth_state_survives_store_restart(tmp_path: Any, snapshot_records: int | None) -> None:
    directory = str(tmp_path / "data")
    store, auth = await open_store(directory, snapshot_records)
    try:
        await build_sample_state(auth)
        await store.put(PutRequest(key=b"/pub/x", value=b"v"))  # auth ops interleave with KV writes
        await auth.role_grant_permission("reader", WRITE, b"/pub/x")
        state = auth.dump()
        token = await auth.authenticate("alice", "alicepw")
    finally:
        await store.close()

    store, auth = await open_store(directory, snapshot_records)
    try:
        assert auth.dump() == state
        assert auth.enabled and auth.user_list() == ["alice", "np", "root"]
        auth.check_write("alice", b"/pub/x")
        with pytest.raises(errors.PermissionDenied):
            auth.check_write("alice", b"/pub/y")
        with pytest.raises(errors.InvalidAuthToken):
            auth.user_from_token(token)  # tokens live in memory only
        assert auth.user_from_token(await auth.authenticate("alice", "alicepw")) == "alice"
        assert store.range(RangeRequest(key=b"/pub/x")).kvs[0].value == b"v"
    finally:
        await store.close()
