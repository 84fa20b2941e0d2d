"""Authentication: who is making a request.

kube-apiserver's chain, in its order: a verified client certificate (CN = user, O = groups), then a
bearer token (the static ``--token-auth-file``, then service-account JWTs), then ``system:anonymous``
when ``--anonymous-auth=true``. A token that is presented but not accepted is a 401 even when
anonymous requests are allowed (kube's union.NewFailOnError). Impersonation (``Impersonate-*``
headers) runs after authentication and before API Priority and Fairness, as in kube's handler chain.

Service-account tokens (``satokens.py`` issues them) are verified here: signature by ``kid``,
issuer, audiences, expiry, then the service account and the bound pod/secret/node must still exist
with the uids the token names. Successful results are cached per (token, audiences) for up to 10 s
(kube's token success cache) and dropped at once when a watch event touches one of the objects
the result depended on, so a deleted service account or pod stops authenticating immediately.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from ultraplane.apiserver import errors, jwt
from ultraplane.apiserver.errors import ApiError
from ultraplane.apiserver.server import Request

log = logging.getLogger("ultraplane.apiserver.authn")

AUTHENTICATED = "system:authenticated"
UNAUTHENTICATED = "system:unauthenticated"
ANONYMOUS = "system:anonymous"
SA_PREFIX = "system:serviceaccount:"
SA_GROUP = "system:serviceaccounts"
LEGACY_ISSUER = "kubernetes/serviceaccount"
DEFAULT_ISSUER = "https://kubernetes.default.svc.cluster.local"
LEEWAY_S = 60  # go-jose's DefaultLeeway for exp/nbf and kube's grace for deleted objects
SUCCESS_CACHE_S = 10.0  # kube-apiserver's --authentication-token-success-cache-ttl... for the token union
CACHE_ENTRIES = 16_384
RECENT_CHANGES = 4_096  # watched keys remembered to tell whether a lookup raced a change to its objects
INVALID_TOKEN = "invalid bearer token"

# user extra keys kube sets for service-account tokens
EXTRA_POD_NAME = "authentication.kubernetes.io/pod-name"
EXTRA_POD_UID = "authentication.kubernetes.io/pod-uid"
EXTRA_NODE_NAME = "authentication.kubernetes.io/node-name"
EXTRA_NODE_UID = "authentication.kubernetes.io/node-uid"
EXTRA_CREDENTIAL_ID = "authentication.kubernetes.io/credential-id"

IMPERSONATE_USER = "impersonate-user"
IMPERSONATE_GROUP = "impersonate-group"
IMPERSONATE_UID = "impersonate-uid"
IMPERSONATE_EXTRA = "impersonate-extra-"


@dataclass
class User:
    name: str
    groups: list[str]
    uid: str = ""
    extra: dict[str, list[str]] = field(default_factory=dict)


class ImpersonationError(Exception):
    """Impersonation headers that name no user: kube's plain-text 500."""


class TokenError(Exception):
    """A bearer token nobody accepted. ``reason`` is the token authenticator's error, if it had one."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason

    @property
    def text(self) -> str:
        """kube's aggregated error text (TokenReview's status.error)."""
        return f"[{INVALID_TOKEN}, {self.reason}]" if self.reason else INVALID_TOKEN


def go_quote_list(values: list[str]) -> str:
    """Go's %q of a []string: ["a" "b"]."""
    return "[" + " ".join('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values) + "]"


def service_account_user(namespace: str, name: str, uid: str, extra: dict[str, list[str]]) -> User:
    return User(f"{SA_PREFIX}{namespace}:{name}", [SA_GROUP, f"{SA_GROUP}:{namespace}", AUTHENTICATED], uid, extra)


@dataclass
class ServiceAccountKeys:
    """--service-account-issuer (first one signs), --service-account-key-file, --service-account-signing-key-file,
    --api-audiences (default: the issuers)."""

    issuers: list[str]
    public_keys: list[jwt.PublicKey]
    signing_key: jwt.SigningKey | None
    api_audiences: list[str]

    def __post_init__(self) -> None:
        self.by_kid: dict[str, list[jwt.PublicKey]] = {}
        for key in self.public_keys:
            self.by_kid.setdefault(jwt.key_id(key), []).append(key)


@dataclass
class CachedAuth:
    user: User
    audiences: list[str]
    expires: float  # monotonic
    keys: list[bytes]  # storage keys of the objects this result depended on


class Authenticator:
    def __init__(self, registry: Any, *, tokens: dict[str, User] | None = None, anonymous: bool = False,
                 keys: ServiceAccountKeys | None = None) -> None:
        self.registry = registry
        self.tokens = tokens or {}
        self.anonymous = anonymous
        self.keys = keys
        self.api_audiences = keys.api_audiences if keys else []
        self.issuers = set(keys.issuers) if keys else set()
        self.cache: dict[tuple[str, tuple[str, ...]], CachedAuth] = {}
        self.cache_by_key: dict[bytes, set[tuple[str, tuple[str, ...]]]] = {}
        self.invalidations = 0  # sequence number of watched changes
        self.recent: deque[bytes] = deque(maxlen=RECENT_CHANGES)  # the keys of the latest ones, newest last

    # ================================================================ requests
    def authenticate(self, request: Request) -> User | Awaitable[User]:
        """The user of a request; a coroutine only when a bearer token needs checking."""
        cert = request.peer_cert
        if cert:
            name = ""
            groups: list[str] = []
            for rdn in cert.get("subject", ()):
                for key, value in rdn:
                    if key == "commonName":
                        name = value
                    elif key == "organizationName":
                        groups.append(value)
            if name:
                return User(name, [*groups, AUTHENTICATED])
        auth = request.headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            token = auth[7:].strip()
            static = self.tokens.get(token)
            if static is not None:
                return User(static.name, [*static.groups, AUTHENTICATED], static.uid, static.extra)
            return self._bearer(token)
        if self.anonymous:
            return User(ANONYMOUS, [UNAUTHENTICATED])
        raise errors.unauthorized()

    async def _bearer(self, token: str) -> User:
        try:
            user, _ = await self.authenticate_token(token, None)
        except TokenError as exc:
            log.debug("Unable to authenticate the request: %s", exc.text)
            raise errors.unauthorized() from None
        return user

    # ================================================================ tokens
    async def authenticate_token(self, token: str, audiences: list[str] | None) -> tuple[User, list[str]]:
        """(user, audiences the token is good for) or TokenError; the TokenReview path too."""
        static = self.tokens.get(token)
        if static is not None:
            wanted = audiences or self.api_audiences
            if not audiences or set(wanted) & set(self.api_audiences):  # kube's audience-agnostic wrapper
                return User(static.name, [*static.groups, AUTHENTICATED], static.uid, static.extra), wanted
            raise TokenError()
        cache_key = (token, tuple(audiences or ()))
        hit = self.cache.get(cache_key)
        if hit is not None:
            if hit.expires > time.monotonic():
                return hit.user, hit.audiences
            self._forget(cache_key)
        seen = self.invalidations
        user, granted, deps, expiry = await self._verify_service_account_token(token, audiences)
        if not self._changed_since(seen, deps):
            self._remember(cache_key, CachedAuth(user, granted, min(time.monotonic() + SUCCESS_CACHE_S, expiry),
                                                 deps))
        return user, granted

    def _remember(self, cache_key: tuple[str, tuple[str, ...]], entry: CachedAuth) -> None:
        while len(self.cache) >= CACHE_ENTRIES:
            self._forget(next(iter(self.cache)))
        self.cache[cache_key] = entry
        for key in entry.keys:
            self.cache_by_key.setdefault(key, set()).add(cache_key)

    def _forget(self, cache_key: tuple[str, tuple[str, ...]]) -> None:
        entry = self.cache.pop(cache_key, None)
        if entry is None:
            return
        for key in entry.keys:
            keys = self.cache_by_key.get(key)
            if keys is not None:
                keys.discard(cache_key)
                if not keys:
                    del self.cache_by_key[key]

    def _changed_since(self, seen: int, deps: list[bytes]) -> bool:
        """Whether one of these objects changed while it was being looked up (then the result is not cached:
        its invalidation may already have gone by)."""
        changed = self.invalidations - seen
        if changed == 0:
            return False
        if changed > len(self.recent):
            return True
        latest = set(list(self.recent)[-changed:])
        return any(key in latest for key in deps)

    def invalidate(self, key: bytes) -> None:
        self.invalidations += 1
        self.recent.append(key)
        for cache_key in list(self.cache_by_key.get(key, ())):
            self._forget(cache_key)

    async def _verify_service_account_token(self, token: str, audiences: list[str] | None
                                            ) -> tuple[User, list[str], list[bytes], float]:
        keys = self.keys
        if keys is None:
            raise TokenError()
        try:
            parsed = jwt.parse(token)
        except jwt.JwtError:
            raise TokenError() from None  # not a JWT: not ours, and no reason to give
        claims = parsed.claims
        issuer = claims.get("iss")
        legacy = issuer == LEGACY_ISSUER
        if not legacy and issuer not in self.issuers:
            raise TokenError()
        kid = parsed.header.get("kid")
        candidates = keys.by_kid.get(kid, []) if isinstance(kid, str) and kid else keys.public_keys
        if not candidates:
            raise TokenError("invalid signature, no keys found")
        if not any(jwt.verify_signature(parsed, key) for key in candidates):
            raise TokenError(jwt.BAD_SIGNATURE)
        aud = claims.get("aud")
        token_audiences = [aud] if isinstance(aud, str) else [a for a in aud or [] if isinstance(a, str)]
        if not token_audiences:
            token_audiences = list(self.api_audiences)  # legacy tokens carry none: the API's audiences
        requested = audiences or self.api_audiences
        granted = [a for a in token_audiences if a in requested]
        if not granted and self.api_audiences:
            raise TokenError(f"token audiences {go_quote_list(token_audiences)} is invalid for the target audiences "
                             f"{go_quote_list(requested)}")
        if legacy:
            user, deps = await self._validate_legacy(token, claims)
            return user, granted, deps, time.monotonic() + SUCCESS_CACHE_S
        now = time.time()
        exp, nbf = claims.get("exp"), claims.get("nbf")
        if isinstance(exp, (int, float)) and now > exp + LEEWAY_S:
            raise TokenError("service account token has expired")
        if isinstance(nbf, (int, float)) and now < nbf - LEEWAY_S:
            raise TokenError("service account token is not valid yet")
        user, deps = await self._validate_bound(claims)
        expiry = time.monotonic() + (exp + LEEWAY_S - now if isinstance(exp, (int, float)) else SUCCESS_CACHE_S)
        return user, granted, deps, expiry

    async def _get(self, plural: str, namespace: str, name: str) -> dict[str, Any]:
        group_key = ("", "v1", plural)
        return await self.registry.get(self.registry.strategies[group_key], namespace, name)

    def _storage_key(self, plural: str, namespace: str, name: str) -> bytes:
        return self.registry.strategies[("", "v1", plural)].key(namespace, name)

    @staticmethod
    def _deleted_long_ago(obj: dict[str, Any]) -> bool:
        stamp = obj["metadata"].get("deletionTimestamp")
        if not stamp:
            return False
        deleted = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        return deleted < dt.datetime.now(dt.UTC) - dt.timedelta(seconds=LEEWAY_S)

    async def _validate_bound(self, claims: dict[str, Any]) -> tuple[User, list[bytes]]:
        """kube's serviceaccount validator: the objects the token names must still exist with their uids."""
        private = claims.get("kubernetes.io") or {}
        namespace = private.get("namespace", "")
        sa_ref = private.get("serviceaccount") or {}
        sa_name, sa_uid = sa_ref.get("name", ""), sa_ref.get("uid", "")
        deps = [self._storage_key("serviceaccounts", namespace, sa_name)]
        try:
            sa = await self._get("serviceaccounts", namespace, sa_name)
        except ApiError as exc:
            raise TokenError(str(exc)) from None
        if self._deleted_long_ago(sa):
            raise TokenError(f"service account {namespace}/{sa_name} has been deleted")
        if sa["metadata"].get("uid") != sa_uid:
            raise TokenError(f"service account UID ({sa['metadata'].get('uid')}) does not match claim ({sa_uid})")
        extra: dict[str, list[str]] = {}
        secret_ref, pod_ref, node_ref = private.get("secret"), private.get("pod"), private.get("node")
        if secret_ref:
            secret = await self._bound_object("secrets", namespace, secret_ref["name"], deps)
            if secret["metadata"].get("uid") != secret_ref.get("uid"):
                raise TokenError(f"secret UID ({secret['metadata'].get('uid')}) does not match service account "
                                 f"secret ref claim ({secret_ref.get('uid')})")
        if pod_ref:
            pod = await self._bound_object("pods", namespace, pod_ref["name"], deps)
            if pod["metadata"].get("uid") != pod_ref.get("uid"):
                raise TokenError(f"pod UID ({pod['metadata'].get('uid')}) does not match service account pod ref "
                                 f"claim ({pod_ref.get('uid')})")
            extra[EXTRA_POD_NAME] = [pod_ref["name"]]
            extra[EXTRA_POD_UID] = [pod_ref.get("uid", "")]
        if node_ref:
            if not pod_ref:  # a node-bound token: the node must still be there
                node = await self._bound_object("nodes", "", node_ref["name"], deps)
                if node["metadata"].get("uid") != node_ref.get("uid"):
                    raise TokenError(f"node UID ({node['metadata'].get('uid')}) does not match service account node "
                                     f"ref claim ({node_ref.get('uid')})")
            extra[EXTRA_NODE_NAME] = [node_ref["name"]]
            if node_ref.get("uid"):
                extra[EXTRA_NODE_UID] = [node_ref["uid"]]
        jti = claims.get("jti")
        if isinstance(jti, str) and jti:
            extra[EXTRA_CREDENTIAL_ID] = [f"JTI={jti}"]
        return service_account_user(namespace, sa_name, sa_uid, extra), deps

    async def _bound_object(self, plural: str, namespace: str, name: str, deps: list[bytes]) -> dict[str, Any]:
        deps.append(self._storage_key(plural, namespace, name))
        try:
            obj = await self._get(plural, namespace, name)
        except ApiError:
            raise TokenError("service account token has been invalidated") from None
        if self._deleted_long_ago(obj):
            raise TokenError("service account token has been invalidated")
        return obj

    async def _validate_legacy(self, token: str, claims: dict[str, Any]) -> tuple[User, list[bytes]]:
        """Secret-based tokens (kube's legacy validator with lookup): the secret must still hold this token."""
        namespace = claims.get("kubernetes.io/serviceaccount/namespace", "")
        secret_name = claims.get("kubernetes.io/serviceaccount/secret.name", "")
        sa_name = claims.get("kubernetes.io/serviceaccount/service-account.name", "")
        sa_uid = claims.get("kubernetes.io/serviceaccount/service-account.uid", "")
        for value, claim in ((claims.get("sub"), "sub"), (namespace, "namespace"), (secret_name, "secretName"),
                             (sa_name, "serviceAccountName"), (sa_uid, "serviceAccountUID")):
            if not value:
                raise TokenError(f"{claim} claim is missing")
        if claims["sub"] != f"{SA_PREFIX}{namespace}:{sa_name}":
            raise TokenError("sub claim is invalid")
        deps = [self._storage_key("secrets", namespace, secret_name),
                self._storage_key("serviceaccounts", namespace, sa_name)]
        try:
            secret = await self._get("secrets", namespace, secret_name)
        except ApiError:
            raise TokenError("service account token has been invalidated") from None
        if secret["metadata"].get("deletionTimestamp"):
            raise TokenError("service account token has been invalidated")
        stored = (secret.get("data") or {}).get("token") or ""
        if base64.b64decode(stored) != token.encode():
            raise TokenError("service account token does not match server's copy")
        try:
            sa = await self._get("serviceaccounts", namespace, sa_name)
        except ApiError as exc:
            raise TokenError(str(exc)) from None
        if sa["metadata"].get("deletionTimestamp"):
            raise TokenError(f"service account {namespace}/{sa_name} has been deleted")
        if sa["metadata"].get("uid") != sa_uid:
            raise TokenError(f"service account UID ({sa['metadata'].get('uid')}) does not match claim ({sa_uid})")
        return service_account_user(namespace, sa_name, sa_uid, {}), deps

    # ================================================================ keeping the cache honest
    async def run(self) -> None:
        """Drop cached results when a service account, pod, secret or node they depended on changes."""
        await asyncio.gather(*(self._watch(plural) for plural in ("serviceaccounts", "pods", "secrets", "nodes")))

    async def _watch(self, plural: str) -> None:
        strategy = self.registry.strategies[("", "v1", plural)]
        cache = self.registry.cache_for(strategy)
        while True:
            sub = cache.subscribe(strategy.prefix, strategy.prefix, False, cache.revision)
            try:
                while not sub.ended:
                    await sub.wait(30.0)
                    while sub.queue:
                        self.invalidate(sub.queue.popleft().key)
            finally:
                sub.close()
            log.info("token cache: %s watch ended (%s); dropping every cached token", plural, sub.ended)
            self.invalidations += RECENT_CHANGES + 1  # any lookup in flight must not be cached
            self.cache.clear()
            self.cache_by_key.clear()

    # ================================================================ impersonation
    def impersonate(self, request: Request, requester: User,
                    check: Callable[[User, str, str, str, str], None]) -> User:
        """kube's WithImpersonation. ``check(requester, target, name, namespace, extra_key)`` raises the 403
        when the requester may not ``impersonate`` that users / groups / serviceaccounts / uids / userextras."""
        headers = request.headers
        username = headers.get(IMPERSONATE_USER, "")
        groups = [g for g in headers.get(IMPERSONATE_GROUP, "").split("\n") if g] if IMPERSONATE_GROUP in headers \
            else []
        uid = headers.get(IMPERSONATE_UID, "")
        extra: dict[str, list[str]] = {}
        for name, value in headers.items():
            if name.startswith(IMPERSONATE_EXTRA):
                extra.setdefault(unquote(name[len(IMPERSONATE_EXTRA):]), []).extend(value.split("\n"))
        if not username:  # kube answers this with a plain-text 500, not a Status
            asked = [*(f"Group={g}" for g in groups), *([f"UID={uid}"] if uid else []),
                     *(f"Extra={k}" for k in extra)]
            raise ImpersonationError(f'Internal Server Error: "{request.path}": requested [{" ".join(asked)}] '
                                     f"without impersonating a user")
        if username.startswith(SA_PREFIX) and username.count(":") == 3:
            namespace, sa_name = username[len(SA_PREFIX):].split(":", 1)
            check(requester, "serviceaccounts", sa_name, namespace, "")
            result_groups = [SA_GROUP, f"{SA_GROUP}:{namespace}"]
        else:
            check(requester, "users", username, "", "")
            result_groups = []
        for group in groups:
            check(requester, "groups", group, "", "")
            if group not in result_groups:
                result_groups.append(group)
        if uid:
            check(requester, "uids", uid, "", "")
        for key, values in extra.items():
            for value in values:
                check(requester, "userextras", value, "", key)
        if username == ANONYMOUS:
            if UNAUTHENTICATED not in result_groups:
                result_groups.append(UNAUTHENTICATED)
        elif AUTHENTICATED not in result_groups:
            result_groups.append(AUTHENTICATED)
        return User(username, result_groups, uid, extra)


def wants_impersonation(request: Request) -> bool:
    headers = request.headers
    return IMPERSONATE_USER in headers or IMPERSONATE_GROUP in headers or IMPERSONATE_UID in headers
