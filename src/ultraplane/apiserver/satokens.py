"""Service-account tokens: signing keys, ``serviceaccounts/token`` (TokenRequest) and TokenReview.

Keys follow kube-apiserver's flags: ``--service-account-signing-key-file`` signs, every key in
``--service-account-key-file`` verifies, the first ``--service-account-issuer`` is the ``iss`` of new
tokens and all of them are accepted. Without flags the API server uses ``DATA_DIR/pki/sa.key``
(RSA-2048, created on first start like kubeadm's) for both.

Tokens carry kube's claims: ``iss``, ``sub`` = system:serviceaccount:NS:NAME, ``aud``, ``exp``,
``iat``, ``nbf``, ``jti`` and ``kubernetes.io`` = {namespace, serviceaccount {name, uid}, and pod /
secret / node {name, uid} when bound}; ``authn.py`` verifies them.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from ultraplane.apiserver import errors, jwt
from ultraplane.apiserver.authn import DEFAULT_ISSUER, Authenticator, ServiceAccountKeys, TokenError, User
from ultraplane.apiserver.registry import ListOptions, Strategy, WriteOptions
from ultraplane.apiserver.server import Request, Response

log = logging.getLogger("ultraplane.apiserver.tokens")

GROUP = "authentication.k8s.io"
API_VERSION = f"{GROUP}/v1"
DEFAULT_EXPIRATION_S = 3600
MIN_EXPIRATION_S = 600
MAX_EXPIRATION_S = 1 << 32
# kube's --service-account-extend-token-expiration: the kubelet's 3607 s pod tokens live a year but warn after 3607 s
WARN_ONLY_EXPIRATION_S = 3607
EXTENDED_EXPIRATION_S = 365 * 24 * 3600


def ensure_signing_key(pki_dir: Path) -> Path:
    """DATA_DIR/pki/sa.key (and sa.pub), created once."""
    path = pki_dir / "sa.key"
    if not path.exists():
        pki_dir.mkdir(parents=True, exist_ok=True)
        jwt.generate_signing_key(path)
    return path


def load_keys(issuers: list[str], key_files: list[str], signing_key_file: str | None,
              api_audiences: list[str]) -> ServiceAccountKeys:
    issuers = issuers or [DEFAULT_ISSUER]
    signing = jwt.SigningKey.of(jwt.load_private_key(signing_key_file)) if signing_key_file else None
    public: list[jwt.PublicKey] = []
    for path in key_files or ([signing_key_file] if signing_key_file else []):
        public.extend(jwt.load_public_keys(path))
    return ServiceAccountKeys(issuers, public, signing, api_audiences or list(issuers))


def rfc3339(seconds: float) -> str:
    return dt.datetime.fromtimestamp(int(seconds), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ServiceAccountTokens:
    def __init__(self, registry: Any, authenticator: Authenticator, keys: ServiceAccountKeys,
                 extend_expiration: bool = True, max_expiration: int = 0) -> None:
        self.registry = registry
        self.authenticator = authenticator
        self.keys = keys
        self.extend_expiration = extend_expiration  # --service-account-extend-token-expiration
        self.max_expiration = max_expiration  # --service-account-max-token-expiration (0: none)

    async def _get(self, plural: str, namespace: str, name: str) -> dict[str, Any]:
        return await self.registry.get(self.registry.strategies[("", "v1", plural)], namespace, name)

    # ---------------------------------------------------------------- POST serviceaccounts/NAME/token
    async def serve_token_request(self, request: Request, namespace: str, name: str, verb: str) -> Response:
        """kube's TokenREST.Create."""
        from ultraplane.apiserver.app import ApiServer

        if verb != "create":
            raise errors.method_not_allowed("the server does not allow this method on the requested resource")
        body = ApiServer.decode_body(request, "TokenRequest")
        kind, api_version = body.get("kind"), body.get("apiVersion")
        if (kind and kind != "TokenRequest") or (api_version and api_version != API_VERSION):
            raise errors.bad_request(f"the object provided is unrecognized (must be of type TokenRequest): "
                                     f"{api_version}, Kind={kind}")
        meta = body.get("metadata") or {}
        spec = body.get("spec") or {}
        if meta.get("name") and meta["name"] != name:
            raise errors.invalid("TokenRequest", GROUP, name, [{
                "reason": "FieldValueInvalid", "field": "metadata.name",
                "message": f'Invalid value: "{meta["name"]}": must match the service account name if specified'}])
        if meta.get("namespace") and meta["namespace"] != namespace:
            raise errors.invalid("TokenRequest", GROUP, name, [{
                "reason": "FieldValueInvalid", "field": "metadata.namespace",
                "message": f'Invalid value: "{meta["namespace"]}": must match the service account namespace if '
                           f"specified"}])
        sa = await self._get("serviceaccounts", namespace, name)
        audiences = [a for a in spec.get("audiences") or [] if isinstance(a, str)] or list(self.keys.api_audiences)
        expiration = spec.get("expirationSeconds")
        if expiration is None:
            expiration = DEFAULT_EXPIRATION_S
        elif not isinstance(expiration, int) or isinstance(expiration, bool):
            json_type = {"str": "string", "float": "number", "list": "array", "dict": "object", "bool": "bool"}
            raise errors.bad_request(f"json: cannot unmarshal {json_type.get(type(expiration).__name__, 'value')} "
                                     f"into Go struct field "
                                     f"TokenRequestSpec.spec.expirationSeconds of type int64")
        causes: list[dict[str, str]] = []
        if expiration < MIN_EXPIRATION_S:
            causes.append({"reason": "FieldValueInvalid", "field": "spec.expirationSeconds",
                           "message": f"Invalid value: {expiration}: may not specify a duration less than 10 minutes"})
        if expiration > MAX_EXPIRATION_S:
            causes.append({"reason": "FieldValueInvalid", "field": "spec.expirationSeconds",
                           "message": f"Invalid value: {expiration}: may not specify a duration larger than 2^32 "
                                      f"seconds"})
        if causes:
            raise errors.invalid("TokenRequest", GROUP, "", causes)
        if self.keys.signing_key is None:
            raise errors.ApiError(errors.status(500, "InternalError", "Internal error occurred: failed to generate "
                                                "token: no service account signing key"))
        bound_ref = spec.get("boundObjectRef")
        pod, secret, node = await self._bound_objects(bound_ref, namespace, name)
        warnings: list[str] = []
        if self.max_expiration and expiration > self.max_expiration:
            warnings.append(f"requested expiration of {expiration} seconds shortened to {self.max_expiration} "
                            f"seconds")
            expiration = self.max_expiration
        warn_after = 0
        lifetime = expiration
        if self.extend_expiration and pod is not None and expiration == WARN_ONLY_EXPIRATION_S and \
                all(a in self.keys.api_audiences for a in audiences):
            warn_after, lifetime = expiration, EXTENDED_EXPIRATION_S
        now = time.time()
        token = self.issue(sa, audiences, lifetime, now, pod=pod, secret=secret, node=node, warn_after=warn_after)
        out = {"kind": "TokenRequest", "apiVersion": API_VERSION,
               "metadata": {"name": meta.get("name") or name, "namespace": meta.get("namespace") or namespace,
                            "creationTimestamp": rfc3339(now)},
               "spec": {"audiences": audiences, "expirationSeconds": expiration, "boundObjectRef": bound_ref},
               "status": {"token": token, "expirationTimestamp": rfc3339(now + expiration)}}
        return Response(201, orjson.dumps(out), headers=[("Warning", f'299 - "{text}"') for text in warnings])

    async def _bound_objects(self, ref: dict[str, Any] | None, namespace: str, sa_name: str
                             ) -> tuple[dict[str, Any] | None, dict[str, Any] | None, dict[str, Any] | None]:
        pod = secret = node = None
        if not ref:
            return pod, secret, node
        api_version, kind, ref_name = ref.get("apiVersion", ""), ref.get("kind", ""), ref.get("name", "")
        group = api_version.rpartition("/")[0] if "/" in api_version else ""
        version = api_version.rpartition("/")[2]
        if group == "" and kind == "Pod":
            obj = pod = await self._get("pods", namespace, ref_name)
            if (pod.get("spec") or {}).get("serviceAccountName", "default") != sa_name:
                raise errors.bad_request(f'cannot bind token for serviceaccount "{sa_name}" to pod running with '
                                         f"different serviceaccount name.")
            node_name = (pod.get("spec") or {}).get("nodeName")
            if node_name:  # kube's ServiceAccountTokenPodNodeInfo: the pod's node goes into the claims if it exists
                try:
                    node = await self._get("nodes", "", node_name)
                except errors.ApiError:
                    node = None
        elif group == "" and kind == "Node":
            obj = node = await self._get("nodes", "", ref_name)
        elif group == "" and kind == "Secret":
            obj = secret = await self._get("secrets", namespace, ref_name)
        else:
            raise errors.bad_request(f"cannot bind token to object of type {group}/{version}, Kind={kind}")
        if ref.get("uid") and ref["uid"] != obj["metadata"].get("uid"):
            raise errors.conflict(group, kind, ref_name,
                                  f"the UID in the bound object reference ({ref['uid']}) does not match the UID in "
                                  f"record. The object might have been deleted and then recreated")
        return pod, secret, node

    def issue(self, sa: dict[str, Any], audiences: list[str], lifetime: int, now: float, *,
              pod: dict[str, Any] | None = None, secret: dict[str, Any] | None = None,
              node: dict[str, Any] | None = None, warn_after: int = 0) -> str:
        signer = self.keys.signing_key
        assert signer is not None
        meta = sa["metadata"]
        private: dict[str, Any] = {"namespace": meta["namespace"],
                                   "serviceaccount": {"name": meta["name"], "uid": meta.get("uid", "")}}
        for key, obj in (("pod", pod), ("secret", secret), ("node", node)):
            if obj is not None:
                private[key] = {"name": obj["metadata"]["name"], "uid": obj["metadata"].get("uid", "")}
        if warn_after:
            private["warnafter"] = int(now) + warn_after
        issued = int(now)
        claims = {"iss": self.keys.issuers[0], "sub": f"system:serviceaccount:{meta['namespace']}:{meta['name']}",
                  "aud": audiences, "exp": issued + lifetime, "iat": issued, "nbf": issued,
                  "jti": str(uuid.uuid4()), "kubernetes.io": private}
        return jwt.sign(claims, signer)

    # ---------------------------------------------------------------- POST tokenreviews
    async def token_review(self, review: dict[str, Any], user: User) -> dict[str, Any]:
        """kube's TokenReview REST: authenticate spec.token for spec.audiences (default: the API's)."""
        spec = review.get("spec") or {}
        token = spec.get("token") or ""
        if not token:
            raise errors.bad_request("token is required for TokenReview in authentication")
        audiences = [a for a in spec.get("audiences") or [] if isinstance(a, str)]
        review["metadata"].setdefault("creationTimestamp", None)
        try:
            who, granted = await self.authenticator.authenticate_token(token, audiences or None)
        except TokenError as exc:
            review["status"] = {"user": {}, "error": exc.text}
            return review
        info: dict[str, Any] = {"username": who.name}
        if who.uid:
            info["uid"] = who.uid
        info["groups"] = who.groups
        if who.extra:
            info["extra"] = who.extra
        review["status"] = {"authenticated": True, "user": info, "audiences": granted}
        return review


def token_review_strategy(tokens: ServiceAccountTokens) -> Strategy:
    """authentication.k8s.io/v1 tokenreviews: create-only, nothing stored."""
    return Strategy(GROUP, "v1", "TokenReview", "tokenreviews", "", namespaced=False, verbs=("create",),
                    create_handler=tokens.token_review)


def install(registry: Any, *, tokens: dict[str, User], anonymous: bool, issuers: list[str], key_files: list[str],
            signing_key_file: str | None, api_audiences: list[str], extend_expiration: bool = True,
            max_expiration: int = 0) -> tuple[Authenticator, ServiceAccountTokens]:
    """The authenticator and the token endpoints; registers TokenReview (call before the registry starts)."""
    keys = load_keys(issuers, key_files, signing_key_file, api_audiences)
    authenticator = Authenticator(registry, tokens=tokens, anonymous=anonymous, keys=keys)
    sa_tokens = ServiceAccountTokens(registry, authenticator, keys, extend_expiration, max_expiration)
    registry.register(token_review_strategy(sa_tokens))
    return authenticator, sa_tokens


SA_TOKEN_SECRET = "kubernetes.io/service-account-token"
SA_NAME_ANNOTATION = "kubernetes.io/service-account.name"
SA_UID_ANNOTATION = "kubernetes.io/service-account.uid"


class LegacyTokenController:
    """kube-controller-manager's tokens controller, in-process: a Secret of type
    kubernetes.io/service-account-token naming a service account gets a legacy token (iss
    ``kubernetes/serviceaccount``, no expiry), ``ca.crt`` and ``namespace`` in its data."""

    def __init__(self, registry: Any, tokens: ServiceAccountTokens, ca_pem: bytes) -> None:
        self.registry = registry
        self.tokens = tokens
        self.ca_pem = ca_pem
        self.secrets = registry.strategies[("", "v1", "secrets")]

    async def run(self) -> None:
        cache = self.registry.cache_for(self.secrets)
        while True:
            # subscribe before listing so that no secret created in between is missed
            sub = cache.subscribe(self.secrets.prefix, self.secrets.prefix, False, cache.revision)
            try:
                for item in (await self.registry.list(self.secrets, "", ListOptions()))["items"]:
                    await self._sync(item)
                while not sub.ended:
                    await sub.wait(30.0)
                    while sub.queue:
                        event = sub.queue.popleft()
                        obj = event.obj()
                        if not event.deleted and obj is not None:
                            await self._sync(obj)
            finally:
                sub.close()
            await asyncio.sleep(0.5)

    async def _sync(self, secret: dict[str, Any]) -> None:
        if secret.get("type") != SA_TOKEN_SECRET or (secret.get("data") or {}).get("token"):
            return
        meta = secret["metadata"]
        annotations = meta.get("annotations") or {}
        sa_name = annotations.get(SA_NAME_ANNOTATION)
        if not sa_name or meta.get("deletionTimestamp"):
            return
        try:
            sa = await self.registry.get(self.registry.strategies[("", "v1", "serviceaccounts")], meta["namespace"],
                                         sa_name)
        except errors.ApiError:
            return  # kube deletes such a secret; here it just stays without a token
        wanted_uid = annotations.get(SA_UID_ANNOTATION)
        if wanted_uid and wanted_uid != sa["metadata"].get("uid"):
            return
        try:
            await self.fill(meta["namespace"], meta["name"], sa)
        except errors.ApiError as exc:
            log.warning("tokens controller: cannot fill secret %s/%s: %s", meta["namespace"], meta["name"], exc)

    async def fill(self, namespace: str, name: str, sa: dict[str, Any]) -> None:
        signer = self.tokens.keys.signing_key
        if signer is None:
            return
        sa_meta = sa["metadata"]
        token = jwt.sign({"iss": "kubernetes/serviceaccount", "sub": f"system:serviceaccount:{namespace}:{sa_meta['name']}",
                          "kubernetes.io/serviceaccount/namespace": namespace,
                          "kubernetes.io/serviceaccount/secret.name": name,
                          "kubernetes.io/serviceaccount/service-account.name": sa_meta["name"],
                          "kubernetes.io/serviceaccount/service-account.uid": sa_meta.get("uid", "")}, signer)

        def with_token(secret: dict[str, Any]) -> dict[str, Any]:
            data = secret.setdefault("data", {}) or {}
            secret["data"] = data
            if data.get("token"):
                return secret
            data["token"] = base64.b64encode(token.encode()).decode()
            data["ca.crt"] = base64.b64encode(self.ca_pem).decode()
            data["namespace"] = base64.b64encode(namespace.encode()).decode()
            secret["metadata"].setdefault("annotations", {})[SA_UID_ANNOTATION] = sa_meta.get("uid", "")
            return secret

        await self.registry.guaranteed_update(self.secrets, namespace, name, with_token,
                                              WriteOptions(field_manager="kube-controller-manager"))


# ---------------------------------------------------------------- service-account issuer discovery
def jwk(key: jwt.PublicKey) -> dict[str, Any]:
    """A public key as a JWK, fields in go-jose's order."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    def b64int(value: int, size: int = 0) -> str:
        return jwt.b64url(value.to_bytes(size or (value.bit_length() + 7) // 8, "big"))

    if isinstance(key, rsa.RSAPublicKey):
        numbers = key.public_numbers()
        return {"use": "sig", "kty": "RSA", "kid": jwt.key_id(key), "alg": "RS256", "n": b64int(numbers.n),
                "e": b64int(numbers.e)}
    size = (key.curve.key_size + 7) // 8
    point = key.public_numbers()
    alg = jwt.algorithm_for(key)
    return {"use": "sig", "kty": "EC", "kid": jwt.key_id(key), "crv": f"P-{key.curve.key_size}", "alg": alg,
            "x": b64int(point.x, size), "y": b64int(point.y, size)}


def openid_handlers(keys: ServiceAccountKeys, address: str, jwks_uri: str = "") -> dict[str, Any]:
    """kube's /.well-known/openid-configuration and /openid/v1/jwks (only for an https issuer);
    ``jwks_uri`` is --service-account-jwks-uri (default: this server's /openid/v1/jwks)."""
    issuer = keys.issuers[0]
    if not issuer.startswith("https://"):
        return {}
    jwks = [jwk(k) for k in keys.public_keys]
    config = orjson.dumps({"issuer": issuer, "jwks_uri": jwks_uri or f"https://{address}/openid/v1/jwks",
                           "response_types_supported": ["id_token"], "subject_types_supported": ["public"],
                           "id_token_signing_alg_values_supported": sorted({k["alg"] for k in jwks})})
    key_set = orjson.dumps({"keys": jwks})
    cache = [("Cache-Control", "public, max-age=3600")]

    def configuration(_request: Request) -> Response:
        return Response(200, config, "application/json", list(cache))

    def key_set_document(_request: Request) -> Response:
        return Response(200, key_set, "application/jwk-set+json", list(cache))

    return {"/.well-known/openid-configuration": configuration, "/openid/v1/jwks": key_set_document}
