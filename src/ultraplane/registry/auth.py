"""Docker's token flow: users with repository-scoped permissions, a token endpoint issuing ES256 JWTs after
Basic auth, and bearer checks on every registry request.

State lives under DATA_DIR/auth: `users.json` (scrypt password hashes and access rules) and `token.key`
(the JWT signing key, PEM). Verified tokens and credentials are cached so a request costs a dict lookup,
not a signature check or a key derivation.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import hmac
import os
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey

ALL_ACTIONS = ("pull", "push", "delete")
TOKEN_TTL = 300
_SCRYPT = {"n": 1 << 14, "r": 8, "p": 1}
_CACHE_LIMIT = 10_000


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    return "scrypt${n}${r}${p}${salt}${hash}".format(
        **_SCRYPT, salt=base64.b64encode(salt).decode(), hash=base64.b64encode(digest).decode())


def check_password(password: str, encoded: str) -> bool:
    try:
        scheme, n, r, p, salt, expected = encoded.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    digest = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                            dklen=32)
    return hmac.compare_digest(digest, base64.b64decode(expected))


@dataclass(frozen=True)
class Rule:
    """Actions granted on repositories whose name matches a glob (`*` matches across slashes)."""

    pattern: str
    actions: frozenset[str]

    @classmethod
    def parse(cls, text: str) -> Rule:
        """"PATTERN=ACTION,ACTION" (actions pull, push, delete or *)."""
        pattern, _, actions = text.partition("=")
        wanted = {a.strip() for a in (actions or "pull").split(",") if a.strip()}
        if "*" in wanted:
            wanted = set(ALL_ACTIONS)
        unknown = wanted - set(ALL_ACTIONS)
        if not pattern or unknown:
            raise ValueError(f"bad access rule {text!r}: want PATTERN=pull,push,delete")
        return cls(pattern, frozenset(wanted))

    def grants(self, repository: str) -> frozenset[str]:
        return self.actions if fnmatch.fnmatchcase(repository, self.pattern) else frozenset()


@dataclass(frozen=True)
class Scope:
    type: str
    name: str
    actions: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Scope | None:
        kind, _, rest = text.partition(":")
        name, _, actions = rest.rpartition(":")
        if not kind or not name:
            return None
        return cls(kind, name, tuple(a for a in actions.split(",") if a))

    def __str__(self) -> str:
        return f"{self.type}:{self.name}:{','.join(self.actions)}"


class UserStore:
    """users.json: {"users": {NAME: {"password": HASH, "access": ["PATTERN=ACTIONS", ...], "admin": bool}}}."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._verified: dict[tuple[str, bytes], float] = {}
        self._users: dict[str, Any] = {}
        self._mtime = -1.0
        self._reload()

    def _reload(self) -> None:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            self._users, self._mtime = {}, -1.0
            return
        if mtime != self._mtime:
            self._users = orjson.loads(self.path.read_bytes()).get("users", {})
            self._mtime = mtime
            self._verified.clear()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        staging = self.path.with_suffix(".tmp")
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(orjson.dumps({"users": self._users}, option=orjson.OPT_INDENT_2))
        os.replace(staging, self.path)
        self._reload()

    def names(self) -> list[str]:
        self._reload()
        return sorted(self._users)

    def set_user(self, name: str, password: str, rules: list[str]) -> None:
        for rule in rules:
            Rule.parse(rule)
        self._reload()
        self._users[name] = {"password": hash_password(password), "access": rules}
        self._save()

    def authenticate(self, name: str, password: str) -> bool:
        self._reload()
        user = self._users.get(name)
        if user is None:
            return False
        key = (name, hashlib.sha256(password.encode()).digest())
        if self._verified.get(key, 0.0) > time.monotonic():
            return True
        if not check_password(password, user.get("password", "")):
            return False
        if len(self._verified) > _CACHE_LIMIT:
            self._verified.clear()
        self._verified[key] = time.monotonic() + 300
        return True

    def rules(self, name: str) -> list[Rule]:
        self._reload()
        user = self._users.get(name) or {}
        return [Rule.parse(text) for text in user.get("access", [])]


def ensure_admin(users: UserStore, name: str = "admin") -> str | None:
    """Create the admin user with a random password if no user exists yet; return that password."""
    if users.names():
        return None
    password = secrets.token_urlsafe(18)
    users.set_user(name, password, ["*=pull,push,delete"])
    return password


def load_signing_key(path: Path) -> ECKey:
    if not path.exists():
        key = ECKey.generate_key("P-256", private=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.as_pem(private=True))
    return ECKey.import_key(path.read_bytes())


@dataclass
class Grant:
    subject: str
    expires: float
    access: dict[tuple[str, str], frozenset[str]]  # (type, name) -> actions

    def allows(self, kind: str, name: str, actions: tuple[str, ...]) -> bool:
        granted = self.access.get((kind, name), frozenset())
        return "*" in granted or all(action in granted for action in actions)


class TokenAuthority:
    """Issues and verifies the registry's bearer tokens."""

    def __init__(self, users: UserStore, key: ECKey, service: str, anonymous: list[Rule],
                 issuer: str = "ultraplane-registry") -> None:
        self.users = users
        self.key = key
        self.service = service
        self.anonymous = anonymous
        self.issuer = issuer
        self._kid = key.thumbprint()
        self._grants: dict[str, Grant] = {}

    def granted_actions(self, user: str | None, scope: Scope) -> tuple[str, ...]:
        """The subset of the scope's actions `user` (None: anonymous) may perform, as Docker's auth does."""
        if scope.type == "registry":
            if scope.name == "catalog" and user is not None and self._may_all(user):
                return tuple(a for a in scope.actions if a == "*")
            return ()
        if scope.type != "repository":
            return ()
        rules = self.users.rules(user) if user is not None else self.anonymous
        allowed: set[str] = set()
        for rule in rules:
            allowed |= rule.grants(scope.name)
        wanted = scope.actions
        if "*" in wanted:
            return ("*",) if allowed >= set(ALL_ACTIONS) else tuple(sorted(allowed))
        return tuple(a for a in wanted if a in allowed)

    def _may_all(self, user: str) -> bool:
        return any(rule.pattern == "*" and rule.actions >= set(ALL_ACTIONS) for rule in self.users.rules(user))

    def issue(self, user: str | None, scopes: list[Scope]) -> dict[str, Any]:
        now = int(time.time())
        access = []
        for scope in scopes:
            actions = self.granted_actions(user, scope)
            access.append({"type": scope.type, "name": scope.name, "actions": list(actions)})
        claims = {"iss": self.issuer, "sub": user or "", "aud": self.service, "iat": now, "nbf": now - 5,
                  "exp": now + TOKEN_TTL, "jti": uuid.uuid4().hex, "access": access}
        token = jwt.encode({"alg": "ES256", "typ": "JWT", "kid": self._kid}, claims, self.key)
        issued = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        return {"token": token, "access_token": token, "expires_in": TOKEN_TTL, "issued_at": issued}

    def verify(self, token: str) -> Grant | None:
        grant = self._grants.get(token)
        now = time.time()
        if grant is not None:
            return grant if grant.expires > now else None
        try:
            claims = jwt.decode(token, self.key, algorithms=["ES256"]).claims
        except (JoseError, ValueError):
            return None
        if claims.get("iss") != self.issuer or claims.get("aud") != self.service:
            return None
        if not isinstance(claims.get("exp"), int) or claims["exp"] <= now or claims.get("nbf", 0) > now + 5:
            return None
        access: dict[tuple[str, str], frozenset[str]] = {}
        for entry in claims.get("access") or []:
            key = (entry.get("type", ""), entry.get("name", ""))
            access[key] = access.get(key, frozenset()) | frozenset(entry.get("actions") or [])
        grant = Grant(claims.get("sub") or "", float(claims["exp"]), access)
        if len(self._grants) > _CACHE_LIMIT:
            self._grants = {t: g for t, g in self._grants.items() if g.expires > now}
        self._grants[token] = grant
        return grant
