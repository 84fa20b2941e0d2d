"""Users, roles and key permissions: etcd v3.4's auth store, as a journaled state machine.

The durable state (enabled flag, users with password hashes, roles with key-range
permissions, user->role grants, auth revision) changes only through ``apply``, which
the Store runs once when an op is proposed and again on replay, so it must be
deterministic: password hashing and salt generation happen *before* proposing, and
the op carries the finished hash (never the plaintext).

Tokens follow etcd's "simple" token provider: ``<16 random letters>.<index>``, held in
memory only (not journaled, lost on restart), expiring after a TTL (etcd's default is
5 minutes) that every successful use renews. Disabling auth drops all tokens;
deleting a user or changing their password drops that user's tokens.

Semantics follow etcd 3.4 (auth/store.go, auth/range_perm_cache.go,
etcdserver/apply_auth.go), including its quirks, which are noted where they matter:
 - the "root" role needs no role entry: granting it to a user always works, and it
   permits everything; ``role_get("root")`` still fails unless the role was added.
 - enable does not bump the auth revision; disable does (only if it was enabled).
 - granting a role the user already has succeeds without bumping the revision.

Passwords: as etcd, bcrypt with cost 10 (~50-100 ms per hash), so users move between
ultraplane and etcd with their snapshots and keep their passwords. ``scrypt_params`` selects
scrypt instead (``hash_password``; tests use a cheap setting); both kinds of stored hash
verify. Hashing and verification run in a worker thread so the event loop keeps serving.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Protocol

from .errors import (
    AuthFailed,
    AuthNotEnabled,
    InvalidAuthMgmt,
    InvalidAuthToken,
    NoPasswordUser,
    PermissionDenied,
    PermissionNotGranted,
    RoleAlreadyExist,
    RoleEmpty,
    RoleNotFound,
    RoleNotGranted,
    RootRoleNotExist,
    RootUserNotExist,
    StoreError,
    UserAlreadyExist,
    UserEmpty,
    UserNotFound,
)
from .types import DeleteRangeRequest, PutRequest, RangeRequest, TxnRequest

ROOT_USER = "root"
ROOT_ROLE = "root"
DEFAULT_TOKEN_TTL = 300.0  # seconds; etcd's --auth-token-ttl default
MACHINE_NAME = "auth"

_TOKEN_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_TOKEN_PREFIX_LENGTH = 16
_DUMP_FORMAT = 1


class PermissionType(IntEnum):
    """authpb.Permission.Type; the numbers are the protobuf enum values."""

    READ = 0
    WRITE = 1
    READWRITE = 2


@dataclass(frozen=True, slots=True)
class Permission:
    """One key permission of a role. ``range_end`` b"" means the single key ``key``;
    b"\\0" means every key >= ``key``; otherwise the half-open range [key, range_end)."""

    perm_type: PermissionType
    key: bytes
    range_end: bytes = b""


@dataclass(slots=True)
class _User:
    name: str
    password_hash: str | None  # None for a no-password user that never had one set
    no_password: bool
    roles: list[str] = field(default_factory=list)  # kept sorted, as etcd does


class Proposer(Protocol):
    """The part of the Store the auth store needs."""

    async def propose(self, machine_name: str, op: bytes) -> Any: ...


# --- passwords -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScryptParams:
    n: int = 2**14
    r: int = 8
    p: int = 1


def hash_password(password: str, params: ScryptParams = ScryptParams()) -> str:
    """A self-describing scrypt hash: ``scrypt$n$r$p$salt$digest`` (base64 parts)."""
    salt = os.urandom(16)
    digest = _scrypt(password.encode(), salt, params.n, params.r, params.p)
    return "$".join(("scrypt", str(params.n), str(params.r), str(params.p), _b64(salt), _b64(digest)))


BCRYPT_COST = 10  # etcd's (golang.org/x/crypto/bcrypt's DefaultCost)


def hash_password_bcrypt(password: str) -> str:
    """The hash etcd stores: bcrypt, cost 10, in Go's "$2a$" form."""
    import bcrypt

    return bcrypt.hashpw(_bcrypt_input(password), bcrypt.gensalt(BCRYPT_COST, prefix=b"2a")).decode("ascii")


def _bcrypt_input(password: str) -> bytes:
    # bcrypt reads at most 72 bytes of a password (and the Python binding refuses more)
    return password.encode()[:72]


def verify_password(password: str, stored: str) -> bool:
    """Check ``password`` against a hash from ``hash_password`` (or a bcrypt hash, which etcd
    stores and a restored etcd snapshot brings along), in constant time."""
    if stored.startswith(("$2a$", "$2b$", "$2y$")):
        import bcrypt

        try:
            return bcrypt.checkpw(_bcrypt_input(password), stored.encode())
        except ValueError:
            return False
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = _unb64(digest)
        actual = _scrypt(password.encode(), _unb64(salt), int(n), int(r), int(p))
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected)


def _scrypt(password: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    # OpenSSL's default memory cap (32 MiB) is too tight for r=8, n=2**15 and up; allow 4x the need.
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=4 * 128 * r * n * p + 2**20, dklen=32)


# --- key intervals ---------------------------------------------------------------------------
#
# etcd compares permission bounds as "affine" byte strings: an empty byte string sorts after every
# other, i.e. stands for +infinity. A bound here is (0, bytes) for a real key and (1, b"") for
# +infinity, so plain tuple comparison orders them the same way.

_Bound = tuple[int, bytes]
_INFINITY: _Bound = (1, b"")


def _bound(key: bytes) -> _Bound:
    return _INFINITY if not key else (0, key)


def _interval(key: bytes, range_end: bytes) -> tuple[_Bound, _Bound]:
    """The half-open interval a (key, range_end) pair names, with etcd's conventions."""
    if not range_end:
        return _bound(key), _bound(key + b"\0")  # the single key: [key, key+"\0")
    if range_end == b"\0":
        return _bound(key), _INFINITY
    return _bound(key), _bound(range_end)


class _MergedIntervals:
    """The union of a set of half-open intervals, as sorted, disjoint, non-adjacent pieces."""

    __slots__ = ("begins", "ends")

    def __init__(self, intervals: Iterable[tuple[_Bound, _Bound]]) -> None:
        self.begins: list[_Bound] = []
        self.ends: list[_Bound] = []
        for begin, end in sorted(iv for iv in intervals if iv[0] < iv[1]):
            # touching pieces merge too: [a,b) + [b,c) covers [a,c)
            if self.ends and begin <= self.ends[-1]:
                if end > self.ends[-1]:
                    self.ends[-1] = end
            else:
                self.begins.append(begin)
                self.ends.append(end)

    def covers(self, begin: _Bound, end: _Bound) -> bool:
        if begin >= end:
            # An empty or inverted request range selects no keys; judge it by its first key.
            if begin == _INFINITY:
                return False
            end = (0, begin[1] + b"\0")
        i = bisect.bisect_right(self.begins, begin) - 1
        return i >= 0 and self.ends[i] >= end


@dataclass(slots=True)
class _UserPerms:
    read: _MergedIntervals
    write: _MergedIntervals


@dataclass(slots=True)
class _Token:
    user: str
    expires: float


# --- the store -------------------------------------------------------------------------------


class AuthStore:
    """etcd-compatible auth state. Attach it to the Store (``store.attach(auth)``) before
    ``store.open()``; mutations are journaled through ``store.propose("auth", op)``.

    Permission checks (``check_*``) never raise while auth is disabled. A user of ``None``
    stands for "no credentials"; with auth enabled that is etcd's "user name is empty".
    """

    name = MACHINE_NAME

    def __init__(
        self,
        store: Proposer,
        *,
        token_ttl: float = DEFAULT_TOKEN_TTL,
        scrypt_params: ScryptParams | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.token_ttl = token_ttl
        self.scrypt_params = scrypt_params
        self._clock = clock
        self._tokens: dict[str, _Token] = {}
        self._token_index = 0
        self._next_token_sweep = 0.0
        self._reset()

    def _reset(self) -> None:
        self._enabled = False
        # a fresh etcd auth store starts at revision 1 (NewAuthStore commits once)
        self._revision = 1
        self._users: dict[str, _User] = {}
        self._roles: dict[str, list[Permission]] = {}
        self._perm_cache: dict[str, _UserPerms] = {}
        self._tokens.clear()

    # --- status ------------------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        return self._enabled

    @property
    def revision(self) -> int:
        """The auth revision: bumped by every journaled change except enable."""
        return self._revision

    def status(self) -> tuple[bool, int]:
        return self._enabled, self._revision

    # --- Auth RPCs: enable / disable / authenticate ------------------------------------------

    async def enable(self) -> None:
        if self._enabled:
            return  # etcd ignores a repeated enable
        self._check_can_enable()
        await self._propose({"op": "enable"})

    async def disable(self) -> None:
        if not self._enabled:
            return
        await self._propose({"op": "disable"})

    async def authenticate(self, name: str, password: str) -> str:
        """Check the password and return a new simple token. Not journaled."""
        while True:
            if not self._enabled:
                raise AuthNotEnabled()
            user = self._users.get(name)
            if user is None:
                raise AuthFailed()
            if user.no_password:
                raise NoPasswordUser()
            checked_revision = self._revision
            stored = user.password_hash
            ok = stored is not None and await asyncio.to_thread(verify_password, password, stored)
            if not ok:
                raise AuthFailed()
            # The check ran off the loop; if auth changed meanwhile (password changed, user
            # deleted, auth disabled) check again against the new state, as etcd does.
            if self._revision == checked_revision and self._enabled:
                break
        return self._issue_token(name)

    # --- Auth RPCs: users --------------------------------------------------------------------

    async def user_add(self, name: str, password: str = "", no_password: bool = False) -> None:
        self._check_user_add(name)
        password_hash = None if no_password else await self._hash(password)
        await self._propose(
            {"op": "user_add", "name": name, "hash": password_hash, "no_password": no_password}
        )

    def user_get(self, name: str) -> list[str]:
        """The user's roles, sorted."""
        user = self._users.get(name)
        if user is None:
            raise UserNotFound()
        return list(user.roles)

    def user_list(self) -> list[str]:
        return sorted(self._users, key=str.encode)

    async def user_delete(self, name: str) -> None:
        await self._propose({"op": "user_delete", "name": name})

    async def user_change_password(self, name: str, password: str) -> None:
        if name not in self._users:
            raise UserNotFound()
        password_hash = await self._hash(password)
        await self._propose({"op": "user_change_password", "name": name, "hash": password_hash})

    async def user_grant_role(self, user: str, role: str) -> None:
        if self._check_user_grant_role(user, role):
            return  # already granted: etcd answers OK and changes nothing
        await self._propose({"op": "user_grant_role", "user": user, "role": role})

    async def user_revoke_role(self, name: str, role: str) -> None:
        await self._propose({"op": "user_revoke_role", "name": name, "role": role})

    # --- Auth RPCs: roles --------------------------------------------------------------------

    async def role_add(self, name: str) -> None:
        await self._propose({"op": "role_add", "name": name})

    def role_get(self, name: str) -> list[Permission]:
        """The role's permissions, ordered by key (as etcd keeps them)."""
        perms = self._roles.get(name)
        if perms is None:
            raise RoleNotFound()
        return list(perms)

    def role_list(self) -> list[str]:
        return sorted(self._roles, key=str.encode)

    async def role_delete(self, name: str) -> None:
        await self._propose({"op": "role_delete", "name": name})

    async def role_grant_permission(
        self, name: str, perm_type: PermissionType | int, key: bytes, range_end: bytes = b""
    ) -> None:
        perm_type = PermissionType(perm_type)  # ValueError for a type etcd does not know
        await self._propose(
            {
                "op": "role_grant_permission",
                "name": name,
                "perm_type": int(perm_type),
                "key": _b64(key),
                "range_end": _b64(range_end),
            }
        )

    async def role_revoke_permission(self, name: str, key: bytes, range_end: bytes = b"") -> None:
        await self._propose(
            {"op": "role_revoke_permission", "name": name, "key": _b64(key), "range_end": _b64(range_end)}
        )

    # --- who is asking -----------------------------------------------------------------------

    def user_from_token(self, token: str | None) -> str | None:
        """The user a request's token belongs to, renewing the token's TTL.

        ``None`` (no token sent) gives ``None``. Any token that is not live raises
        InvalidAuthToken -- including every token while auth is disabled, because disabling
        drops them all (etcd 3.4 answers exactly so; checked against etcd 3.4.23)."""
        if token is None:
            return None
        entry = self._tokens.get(token)
        now = self._clock()
        if entry is None or now > entry.expires:
            if entry is not None:
                del self._tokens[token]
            raise InvalidAuthToken()
        entry.expires = now + self.token_ttl
        return entry.user

    def user_from_request(self, token: str | None, cert_common_name: str | None = None) -> str | None:
        """etcd's rule for who a request is from: the token if one is sent; otherwise, when the
        server runs with --client-cert-auth, the CN of the verified client certificate (pass
        ``cert_common_name`` only in that mode, and not for requests from the gRPC gateway)."""
        if token is not None:
            return self.user_from_token(token)
        if cert_common_name:
            return cert_common_name
        return None

    # --- permission checks -------------------------------------------------------------------

    def check_read(self, user: str | None, key: bytes, range_end: bytes = b"") -> None:
        self._check_op(user, key, range_end, write=False)

    def check_write(self, user: str | None, key: bytes, range_end: bytes = b"") -> None:
        self._check_op(user, key, range_end, write=True)

    def check_admin(self, user: str | None) -> None:
        """Admin RPCs (auth/user/role management) need the root role."""
        if not self._enabled:
            return
        if not user:
            raise UserEmpty()
        record = self._users.get(user)
        if record is None:
            raise UserNotFound()
        if ROOT_ROLE not in record.roles:
            raise PermissionDenied()

    def is_admin(self, user: str | None) -> bool:
        """True when ``check_admin(user)`` would pass (always, while auth is disabled)."""
        try:
            self.check_admin(user)
        except StoreError:
            return False
        return True

    def has_role(self, user: str | None, role: str) -> bool:
        record = self._users.get(user) if user else None
        return record is not None and role in record.roles

    def check_user_get(self, user: str | None, name: str) -> None:
        """UserGet: admins may read any user; anyone may read themselves."""
        try:
            self.check_admin(user)
        except StoreError:
            if name != user:
                raise

    def check_role_get(self, user: str | None, role: str) -> None:
        """RoleGet: admins may read any role; a user may read the roles they have."""
        try:
            self.check_admin(user)
        except StoreError:
            if not self.has_role(user, role):
                raise

    # Request-shaped checks, mirroring etcd's apply_auth.go.

    def check_range(self, user: str | None, req: RangeRequest) -> None:
        self.check_read(user, req.key, req.range_end)

    def check_put(self, user: str | None, req: PutRequest, lease_keys: Iterable[bytes] = ()) -> None:
        """``lease_keys``: the keys already attached to ``req.lease``; the user must be able to
        write them all, or it could revoke keys it can't write by attaching more to the lease."""
        self.check_write(user, req.key)
        for key in lease_keys:
            self.check_write(user, key)
        if req.prev_kv:
            self.check_read(user, req.key)

    def check_delete_range(self, user: str | None, req: DeleteRangeRequest) -> None:
        self.check_write(user, req.key, req.range_end)
        if req.prev_kv:
            self.check_read(user, req.key, req.range_end)

    def check_txn(self, user: str | None, req: TxnRequest) -> None:
        """Every compare needs read; each op in both branches needs what it would need alone
        (etcd checks both branches, whichever runs). Nested txns are checked too."""
        if not self._enabled:
            return
        for cmp in req.compare:
            self.check_read(user, cmp.key, cmp.range_end)
        for op in (*req.success, *req.failure):
            if isinstance(op, RangeRequest):
                self.check_range(user, op)
            elif isinstance(op, PutRequest):
                # etcd checks only write for puts inside a txn, even with prev_kv
                self.check_write(user, op.key)
            elif isinstance(op, DeleteRangeRequest):
                self.check_delete_range(user, op)
            elif isinstance(op, TxnRequest):
                self.check_txn(user, op)

    def check_lease_revoke(self, user: str | None, lease_keys: Iterable[bytes]) -> None:
        """Revoking a lease deletes its keys, so the user must be able to write every one."""
        for key in lease_keys:
            self.check_write(user, key)

    def _check_op(self, user: str | None, key: bytes, range_end: bytes, *, write: bool) -> None:
        if not self._enabled:
            return
        if not user:
            raise UserEmpty()
        record = self._users.get(user)
        if record is None:
            raise PermissionDenied()
        if ROOT_ROLE in record.roles:
            return
        perms = self._perm_cache.get(user)
        if perms is None:
            perms = self._perm_cache[user] = self._merge_perms(record)
        begin, end = _interval(key, range_end)
        if not (perms.write if write else perms.read).covers(begin, end):
            raise PermissionDenied()

    def _merge_perms(self, user: _User) -> _UserPerms:
        read: list[tuple[_Bound, _Bound]] = []
        write: list[tuple[_Bound, _Bound]] = []
        for role in user.roles:
            for perm in self._roles.get(role, ()):
                interval = _interval(perm.key, perm.range_end)
                if perm.perm_type in (PermissionType.READ, PermissionType.READWRITE):
                    read.append(interval)
                if perm.perm_type in (PermissionType.WRITE, PermissionType.READWRITE):
                    write.append(interval)
        return _UserPerms(_MergedIntervals(read), _MergedIntervals(write))

    # --- tokens ------------------------------------------------------------------------------

    def _issue_token(self, user: str) -> str:
        now = self._clock()
        if now >= self._next_token_sweep:
            # Expired tokens are otherwise dropped only when presented; sweep now and then.
            self._tokens = {t: e for t, e in self._tokens.items() if e.expires >= now}
            self._next_token_sweep = now + 1.0
        self._token_index += 1
        prefix = "".join(secrets.choice(_TOKEN_LETTERS) for _ in range(_TOKEN_PREFIX_LENGTH))
        token = f"{prefix}.{self._token_index}"
        self._tokens[token] = _Token(user, now + self.token_ttl)
        return token

    def _drop_tokens_of(self, user: str) -> None:
        self._tokens = {t: e for t, e in self._tokens.items() if e.user != user}

    # --- journaling --------------------------------------------------------------------------

    async def _hash(self, password: str) -> str:
        if self.scrypt_params is None:
            return await asyncio.to_thread(hash_password_bcrypt, password)
        return await asyncio.to_thread(hash_password, password, self.scrypt_params)

    async def _propose(self, op: dict[str, Any]) -> Any:
        return await self.store.propose(self.name, json.dumps(op, sort_keys=True).encode())

    def apply(self, op: bytes) -> int:
        """Apply one journaled op; returns the auth revision after it. Raises a StoreError
        (changing nothing) when the op is not valid against the current state."""
        fields = json.loads(op)
        handler = _APPLY.get(fields.get("op"))
        if handler is None:
            raise ValueError(f"unknown auth op {fields.get('op')!r}")
        handler(self, fields)
        return self._revision

    def _changed(self) -> None:
        self._revision += 1
        self._perm_cache.clear()

    # Validation shared by the RPC methods (before hashing) and apply (authoritative).

    def _check_can_enable(self) -> None:
        root = self._users.get(ROOT_USER)
        if root is None:
            raise RootUserNotExist()
        if ROOT_ROLE not in root.roles:
            raise RootRoleNotExist()

    def _check_user_add(self, name: str) -> None:
        if not name:
            raise UserEmpty()
        if name in self._users:
            raise UserAlreadyExist()

    def _check_user_grant_role(self, user: str, role: str) -> bool:
        """Validate a grant; True if the user already has the role."""
        record = self._users.get(user)
        if record is None:
            raise UserNotFound()
        if role != ROOT_ROLE and role not in self._roles:
            raise RoleNotFound()
        return role in record.roles

    def _apply_enable(self, op: dict[str, Any]) -> None:
        if self._enabled:
            return
        self._check_can_enable()
        self._enabled = True
        self._perm_cache.clear()

    def _apply_disable(self, op: dict[str, Any]) -> None:
        if not self._enabled:
            return
        self._enabled = False
        self._tokens.clear()
        self._changed()

    def _apply_user_add(self, op: dict[str, Any]) -> None:
        name = op["name"]
        self._check_user_add(name)
        self._users[name] = _User(name, op["hash"], bool(op["no_password"]))
        self._changed()

    def _apply_user_delete(self, op: dict[str, Any]) -> None:
        name = op["name"]
        if self._enabled and name == ROOT_USER:
            raise InvalidAuthMgmt()
        if name not in self._users:
            raise UserNotFound()
        del self._users[name]
        self._drop_tokens_of(name)
        self._changed()

    def _apply_user_change_password(self, op: dict[str, Any]) -> None:
        user = self._users.get(op["name"])
        if user is None:
            raise UserNotFound()
        # etcd keeps the user's options: a no-password user stays one (the hash is unused)
        user.password_hash = op["hash"]
        self._drop_tokens_of(user.name)
        self._changed()

    def _apply_user_grant_role(self, op: dict[str, Any]) -> None:
        user, role = op["user"], op["role"]
        if self._check_user_grant_role(user, role):
            return
        record = self._users[user]
        record.roles.append(role)
        record.roles.sort(key=str.encode)
        self._changed()

    def _apply_user_revoke_role(self, op: dict[str, Any]) -> None:
        name, role = op["name"], op["role"]
        if self._enabled and name == ROOT_USER and role == ROOT_ROLE:
            raise InvalidAuthMgmt()
        user = self._users.get(name)
        if user is None:
            raise UserNotFound()
        if role not in user.roles:
            raise RoleNotGranted()
        user.roles.remove(role)
        self._changed()

    def _apply_role_add(self, op: dict[str, Any]) -> None:
        name = op["name"]
        if not name:
            raise RoleEmpty()
        if name in self._roles:
            raise RoleAlreadyExist()
        self._roles[name] = []
        self._changed()

    def _apply_role_delete(self, op: dict[str, Any]) -> None:
        name = op["name"]
        if self._enabled and name == ROOT_ROLE:
            raise InvalidAuthMgmt()
        if name not in self._roles:
            raise RoleNotFound()
        del self._roles[name]
        for user in self._users.values():
            if name in user.roles:
                user.roles.remove(name)
        self._changed()

    def _apply_role_grant_permission(self, op: dict[str, Any]) -> None:
        perms = self._roles.get(op["name"])
        if perms is None:
            raise RoleNotFound()
        perm = Permission(PermissionType(op["perm_type"]), _unb64(op["key"]), _unb64(op["range_end"]))
        # Like etcd: look only at the first permission whose key is >= the new key; if it has the
        # same key and range_end, update its type, otherwise add the new one and re-sort by key.
        # (So a key with several range_ends can end up listed twice; etcd 3.4.23 does the same.)
        i = bisect.bisect_left([p.key for p in perms], perm.key)
        if i < len(perms) and perms[i].key == perm.key and perms[i].range_end == perm.range_end:
            perms[i] = perm
        else:
            perms.append(perm)
            perms.sort(key=lambda p: p.key)  # stable, so the order is deterministic
        self._changed()

    def _apply_role_revoke_permission(self, op: dict[str, Any]) -> None:
        name = op["name"]
        perms = self._roles.get(name)
        if perms is None:
            raise RoleNotFound()
        key, range_end = _unb64(op["key"]), _unb64(op["range_end"])
        kept = [p for p in perms if p.key != key or p.range_end != range_end]
        if len(kept) == len(perms):
            raise PermissionNotGranted()
        self._roles[name] = kept
        self._changed()

    # --- snapshots ---------------------------------------------------------------------------

    def dump(self) -> bytes:
        state = {
            "format": _DUMP_FORMAT,
            "enabled": self._enabled,
            "revision": self._revision,
            "users": [
                {"name": u.name, "hash": u.password_hash, "no_password": u.no_password, "roles": u.roles}
                for u in sorted(self._users.values(), key=lambda u: u.name.encode())
            ],
            "roles": [
                {"name": name, "perms": [[int(p.perm_type), _b64(p.key), _b64(p.range_end)] for p in perms]}
                for name, perms in sorted(self._roles.items(), key=lambda item: item[0].encode())
            ],
        }
        return json.dumps(state, sort_keys=True).encode()

    def load(self, data: bytes) -> None:
        """Replace all state with a ``dump()``. Live tokens are dropped."""
        self._reset()
        if not data:
            return
        state = json.loads(data)
        if state.get("format") != _DUMP_FORMAT:
            raise ValueError(f"unknown auth snapshot format {state.get('format')!r}")
        self._enabled = bool(state["enabled"])
        self._revision = int(state["revision"])
        for u in state["users"]:
            self._users[u["name"]] = _User(u["name"], u["hash"], bool(u["no_password"]), list(u["roles"]))
        for r in state["roles"]:
            self._roles[r["name"]] = [
                Permission(PermissionType(t), _unb64(k), _unb64(e)) for t, k, e in r["perms"]
            ]


_APPLY: dict[str, Callable[[AuthStore, dict[str, Any]], None]] = {
    "enable": AuthStore._apply_enable,
    "disable": AuthStore._apply_disable,
    "user_add": AuthStore._apply_user_add,
    "user_delete": AuthStore._apply_user_delete,
    "user_change_password": AuthStore._apply_user_change_password,
    "user_grant_role": AuthStore._apply_user_grant_role,
    "user_revoke_role": AuthStore._apply_user_revoke_role,
    "role_add": AuthStore._apply_role_add,
    "role_delete": AuthStore._apply_role_delete,
    "role_grant_permission": AuthStore._apply_role_grant_permission,
    "role_revoke_permission": AuthStore._apply_role_revoke_permission,
}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)
