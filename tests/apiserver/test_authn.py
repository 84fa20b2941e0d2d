"""Authentication: service-account tokens (TokenRequest, TokenReview, bearer use), impersonation and anonymous.

Driven with kubectl and the official Python client against a running API server (``cluster`` runs on
both storage backends). Expired and foreign tokens are minted in the test with the server's own key
file (DATA_DIR/pki/sa.key) or a fresh key, so their rejection is checked against real signatures.
"""

from __future__ import annotations

import base64
import http.client
import json
import shutil
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from tests.apiserver.conftest import Cluster, start_cluster
from ultraplane.apiserver import jwt

ISSUER = "https://kubernetes.default.svc.cluster.local"
UNAUTHORIZED = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": "Unauthorized",
                "reason": "Unauthorized", "code": 401}


# ---------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def admin(cluster: Cluster) -> Iterator[client.ApiClient]:
    api_client = config.new_client_from_config(str(cluster.kubeconfig))
    yield api_client
    api_client.close()


def bearer_client(cluster: Cluster, token: str) -> client.ApiClient:
    cfg = client.Configuration()
    cfg.host = cluster.url
    cfg.ssl_ca_cert = str(cluster.pki / "ca.crt")
    cfg.api_key = {"authorization": token}
    cfg.api_key_prefix = {"authorization": "Bearer"}
    return client.ApiClient(cfg)


def raw(cluster: Cluster, method: str, path: str, headers: dict[str, str] | list[tuple[str, str]] | None = None,
        body: Any = None, admin_cert: bool = False) -> tuple[int, str, bytes]:
    """One HTTPS request with exactly these headers (repeats allowed); returns (status, content type, body)."""
    ctx = ssl.create_default_context(cafile=str(cluster.pki / "ca.crt"))
    if admin_cert:
        ctx.load_cert_chain(str(cluster.pki / "admin.crt"), str(cluster.pki / "admin.key"))
    conn = http.client.HTTPSConnection("127.0.0.1", cluster.port, context=ctx, timeout=30)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.putrequest(method, path)
        items = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
        if data is not None:
            items += [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
        for name, value in items:
            conn.putheader(name, value)
        conn.endheaders(data)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        conn.close()


def token_kubectl(cluster: Cluster, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    """kubectl with only a bearer token (no kubeconfig, so no admin client certificate)."""
    return subprocess.run(["kubectl", "--kubeconfig", "/dev/null", "--server", cluster.url, "--certificate-authority",
                           str(cluster.pki / "ca.crt"), "--token", token, *args],
                          capture_output=True, text=True, timeout=60)


def claims_of(token: str) -> dict[str, Any]:
    return json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))


def server_signer(cluster: Cluster) -> jwt.SigningKey:
    return jwt.SigningKey.of(jwt.load_private_key(cluster.pki / "sa.key"))


def review(admin: client.ApiClient, token: str, audiences: list[str] | None = None) -> client.V1TokenReviewStatus:
    body = client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token, audiences=audiences))
    return client.AuthenticationV1Api(admin).create_token_review(body).status


def request_token(admin: client.ApiClient, ns: str, sa: str, audiences: list[str], seconds: int = 3600,
                  bound: client.V1BoundObjectReference | None = None) -> client.AuthenticationV1TokenRequest:
    spec = client.V1TokenRequestSpec(audiences=audiences, expiration_seconds=seconds, bound_object_ref=bound)
    return client.CoreV1Api(admin).create_namespaced_service_account_token(
        sa, ns, client.AuthenticationV1TokenRequest(spec=spec))


def whoami(cluster: Cluster, token: str) -> tuple[int, bytes]:
    status, _, body = raw(cluster, "POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                          {"Authorization": f"Bearer {token}"},
                          {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
    return status, body


def eventually_unauthorized(cluster: Cluster, token: str) -> None:
    """Deletions reach the token cache through the watch a moment after the DELETE answers."""
    deadline = time.monotonic() + 5
    while True:
        status, body = whoami(cluster, token)
        if status == 401 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert status == 401 and json.loads(body) == UNAUTHORIZED


def setup_namespace(cluster: Cluster, ns: str, *accounts: str) -> None:
    cluster.ok("create", "namespace", ns)
    for sa in accounts:
        cluster.ok("-n", ns, "create", "serviceaccount", sa)


def pod_manifest(ns: str, name: str, sa: str) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
                       "spec": {"serviceAccountName": sa, "containers": [{"name": "c", "image": "busybox"}]}})


# ---------------------------------------------------------------- kubectl
def test_kubectl_create_token_and_whoami(cluster: Cluster) -> None:
    setup_namespace(cluster, "authn-kubectl", "robot")
    token = cluster.ok("-n", "authn-kubectl", "create", "token", "robot").strip()
    sa_uid = cluster.json("-n", "authn-kubectl", "get", "serviceaccount", "robot")["metadata"]["uid"]
    claims = claims_of(token)
    assert claims["iss"] == ISSUER and claims["aud"] == [ISSUER]
    assert claims["sub"] == "system:serviceaccount:authn-kubectl:robot"
    assert claims["exp"] - claims["iat"] == 3600 and claims["nbf"] == claims["iat"]
    assert claims["kubernetes.io"] == {"namespace": "authn-kubectl",
                                       "serviceaccount": {"name": "robot", "uid": sa_uid}}
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header == {"alg": "RS256", "kid": server_signer(cluster).kid}

    who = json.loads(token_kubectl(cluster, token, "auth", "whoami", "-o", "json").stdout)
    info = who["status"]["userInfo"]
    assert info["username"] == "system:serviceaccount:authn-kubectl:robot"
    assert info["uid"] == sa_uid
    assert info["groups"] == ["system:serviceaccounts", "system:serviceaccounts:authn-kubectl", "system:authenticated"]
    assert info["extra"] == {"authentication.kubernetes.io/credential-id": [f"JTI={claims['jti']}"]}

    # authenticated but not authorized: the 403 names the service account
    denied = token_kubectl(cluster, token, "-n", "authn-kubectl", "get", "pods")
    assert denied.returncode != 0
    assert ('pods is forbidden: User "system:serviceaccount:authn-kubectl:robot" cannot list resource "pods" in API '
            'group "" in the namespace "authn-kubectl"') in denied.stderr

    longer = claims_of(cluster.ok("-n", "authn-kubectl", "create", "token", "robot", "--duration", "2h",
                                  "--audience", "vault").strip())
    assert longer["aud"] == ["vault"] and longer["exp"] - longer["iat"] == 7200
    short = cluster.kubectl("-n", "authn-kubectl", "create", "token", "robot", "--duration", "1m")
    assert ('TokenRequest.authentication.k8s.io "" is invalid: spec.expirationSeconds: Invalid value: 60: may not '
            'specify a duration less than 10 minutes') in short.stderr
    cluster.ok("create", "-f", "-", input=pod_manifest("authn-kubectl", "runner", "robot"))
    pod_uid = cluster.json("-n", "authn-kubectl", "get", "pod", "runner")["metadata"]["uid"]
    bound = claims_of(cluster.ok("-n", "authn-kubectl", "create", "token", "robot", "--bound-object-kind", "Pod",
                                 "--bound-object-name", "runner", "--bound-object-uid", pod_uid).strip())
    assert bound["kubernetes.io"]["pod"] == {"name": "runner", "uid": pod_uid}
    missing = cluster.kubectl("-n", "authn-kubectl", "create", "token", "ghost")
    assert 'serviceaccounts "ghost" not found' in missing.stderr


def test_discovery_lists_token_resources(cluster: Cluster) -> None:
    core = json.loads(cluster.ok("get", "--raw", "/api/v1"))
    token = next(r for r in core["resources"] if r["name"] == "serviceaccounts/token")
    assert token["kind"] == "TokenRequest" and token["group"] == "authentication.k8s.io" and token["verbs"] == ["create"]
    group = json.loads(cluster.ok("get", "--raw", "/apis/authentication.k8s.io/v1"))
    names = {r["name"]: r for r in group["resources"]}
    assert names["tokenreviews"]["kind"] == "TokenReview" and names["tokenreviews"]["verbs"] == ["create"]
    assert "selfsubjectreviews" in names
    listed = cluster.ok("api-resources", "--api-group", "authentication.k8s.io", "-o", "name").split()
    assert sorted(listed) == ["selfsubjectreviews.authentication.k8s.io", "tokenreviews.authentication.k8s.io"]


# ---------------------------------------------------------------- Python client: TokenRequest and TokenReview
def test_token_request_bound_to_pod_and_token_review(cluster: Cluster, admin: client.ApiClient) -> None:
    ns = "authn-bound"
    setup_namespace(cluster, ns, "robot", "other")
    cluster.ok("create", "-f", "-", input=pod_manifest(ns, "worker", "robot"))
    pod_uid = cluster.json("-n", ns, "get", "pod", "worker")["metadata"]["uid"]

    bound = client.V1BoundObjectReference(api_version="v1", kind="Pod", name="worker")
    tr = request_token(admin, ns, "robot", ["vault", ISSUER], 600, bound)
    assert tr.spec.expiration_seconds == 600 and tr.spec.audiences == ["vault", ISSUER]
    assert tr.metadata.name == "robot" and tr.metadata.namespace == ns
    claims = claims_of(tr.status.token)
    assert claims["kubernetes.io"]["pod"] == {"name": "worker", "uid": pod_uid}
    assert claims["exp"] - claims["iat"] == 600
    assert abs(tr.status.expiration_timestamp.timestamp() - claims["exp"]) <= 1

    status = review(admin, tr.status.token, ["vault"])
    assert status.authenticated is True and status.audiences == ["vault"] and status.error is None
    assert status.user.username == f"system:serviceaccount:{ns}:robot"
    assert status.user.groups == ["system:serviceaccounts", f"system:serviceaccounts:{ns}", "system:authenticated"]
    assert status.user.extra["authentication.kubernetes.io/pod-name"] == ["worker"]
    assert status.user.extra["authentication.kubernetes.io/pod-uid"] == [pod_uid]
    assert review(admin, tr.status.token).audiences == [ISSUER]  # default: the API's audiences

    # the token as a bearer credential of the Python client
    with bearer_client(cluster, tr.status.token) as api_client:
        who = client.AuthenticationV1Api(api_client).create_self_subject_review(client.V1SelfSubjectReview())
        assert who.status.user_info.username == f"system:serviceaccount:{ns}:robot"
        with pytest.raises(ApiException) as denied:
            client.CoreV1Api(api_client).list_namespaced_pod(ns)
        assert denied.value.status == 403

    # a token only for "vault" is no API credential
    vault_only = request_token(admin, ns, "robot", ["vault"]).status.token
    assert whoami(cluster, vault_only)[0] == 401
    wrong = review(admin, vault_only)
    assert wrong.authenticated is None and wrong.user.username is None
    assert wrong.error == (f'[invalid bearer token, token audiences ["vault"] is invalid for the target audiences '
                           f'["{ISSUER}"]]')

    # kube's TokenRequest refusals
    with pytest.raises(ApiException) as exc:
        request_token(admin, ns, "other", [ISSUER], 3600, bound)
    assert exc.value.status == 400 and json.loads(exc.value.body)["message"] == (
        'cannot bind token for serviceaccount "other" to pod running with different serviceaccount name.')
    with pytest.raises(ApiException) as exc:
        request_token(admin, ns, "robot", [ISSUER], 3600,
                      client.V1BoundObjectReference(api_version="apps/v1", kind="Deployment", name="d"))
    assert exc.value.status == 400 and json.loads(exc.value.body)["message"] == (
        "cannot bind token to object of type apps/v1, Kind=Deployment")
    with pytest.raises(ApiException) as exc:
        request_token(admin, ns, "robot", [ISSUER], 3600,
                      client.V1BoundObjectReference(api_version="v1", kind="Pod", name="worker", uid="not-it"))
    assert exc.value.status == 409 and json.loads(exc.value.body)["message"] == (
        'Operation cannot be fulfilled on Pod "worker": the UID in the bound object reference (not-it) does not '
        "match the UID in record. The object might have been deleted and then recreated")
    with pytest.raises(ApiException) as exc:
        request_token(admin, ns, "robot", [ISSUER], 599)
    body = json.loads(exc.value.body)
    assert exc.value.status == 422 and body["reason"] == "Invalid"
    assert body["details"]["causes"] == [{"reason": "FieldValueInvalid", "field": "spec.expirationSeconds",
                                          "message": "Invalid value: 599: may not specify a duration less than 10 "
                                                     "minutes"}]

    # deleting the bound pod revokes the token at once
    pod_token = request_token(admin, ns, "robot", [ISSUER], 600, bound).status.token
    assert whoami(cluster, pod_token)[0] == 201
    cluster.ok("-n", ns, "delete", "pod", "worker", "--grace-period=0", "--force")
    eventually_unauthorized(cluster, pod_token)
    assert review(admin, pod_token).error == "[invalid bearer token, service account token has been invalidated]"


def test_token_review_requires_a_token(cluster: Cluster) -> None:
    status, _, body = raw(cluster, "POST", "/apis/authentication.k8s.io/v1/tokenreviews", None,
                          {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {}},
                          admin_cert=True)
    assert (status, json.loads(body)) == (400, {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "token is required for TokenReview in authentication", "reason": "BadRequest", "code": 400})


# ---------------------------------------------------------------- rejected tokens
def test_bad_expired_and_foreign_tokens_are_401(cluster: Cluster, admin: client.ApiClient) -> None:
    setup_namespace(cluster, "authn-bad", "robot")
    sa_uid = cluster.json("-n", "authn-bad", "get", "serviceaccount", "robot")["metadata"]["uid"]
    now = int(time.time())

    def minted(signer: jwt.SigningKey, **changes: Any) -> str:
        claims = {"iss": ISSUER, "sub": "system:serviceaccount:authn-bad:robot", "aud": [ISSUER], "iat": now,
                  "nbf": now, "exp": now + 3600, "jti": str(uuid.uuid4()),
                  "kubernetes.io": {"namespace": "authn-bad", "serviceaccount": {"name": "robot", "uid": sa_uid}}}
        claims.update(changes)
        return jwt.sign(claims, signer)

    ours = server_signer(cluster)
    good = minted(ours)
    assert whoami(cluster, good)[0] == 201  # the minted claims are right: only the changes below matter
    expired = minted(ours, iat=now - 7200, nbf=now - 7200, exp=now - 120)
    not_yet = minted(ours, nbf=now + 600)
    foreign_rsa = minted(jwt.SigningKey.of(rsa.generate_private_key(public_exponent=65537, key_size=2048)))
    foreign_ec = minted(jwt.SigningKey.of(ec.generate_private_key(ec.SECP256R1())))
    other_issuer = minted(ours, iss="https://elsewhere.example")
    tampered = good.rsplit(".", 1)[0] + "." + jwt.b64url(b"\x00" * 256)

    for token in (expired, not_yet, foreign_rsa, foreign_ec, other_issuer, tampered, "garbage", good + "x"):
        status, ctype, body = raw(cluster, "GET", "/api/v1/namespaces", {"Authorization": f"Bearer {token}"})
        assert (status, ctype, json.loads(body)) == (401, "application/json", UNAUTHORIZED), token

    assert review(admin, expired).error == "[invalid bearer token, service account token has expired]"
    assert review(admin, not_yet).error == "[invalid bearer token, service account token is not valid yet]"
    assert review(admin, foreign_rsa).error == "[invalid bearer token, invalid signature, no keys found]"
    assert review(admin, tampered).error == (
        "[invalid bearer token, go-jose/go-jose: error in cryptographic primitive]")
    assert review(admin, other_issuer).error == "invalid bearer token"
    assert review(admin, "garbage").error == "invalid bearer token"
    failed = review(admin, expired)
    assert failed.authenticated is None and failed.audiences is None and failed.user.username is None

    # kubectl with a bad token: kube's 401
    result = token_kubectl(cluster, expired, "get", "ns")
    assert result.returncode != 0 and "error: You must be logged in to the server (Unauthorized)" in result.stderr


def test_deleted_or_recreated_service_account_is_rejected(cluster: Cluster, admin: client.ApiClient) -> None:
    setup_namespace(cluster, "authn-gone", "robot")
    token = cluster.ok("-n", "authn-gone", "create", "token", "robot").strip()
    old_uid = claims_of(token)["kubernetes.io"]["serviceaccount"]["uid"]
    assert whoami(cluster, token)[0] == 201  # now cached
    cluster.ok("-n", "authn-gone", "delete", "serviceaccount", "robot")
    eventually_unauthorized(cluster, token)
    assert review(admin, token).error == '[invalid bearer token, serviceaccounts "robot" not found]'
    cluster.ok("-n", "authn-gone", "create", "serviceaccount", "robot")
    new_uid = cluster.json("-n", "authn-gone", "get", "serviceaccount", "robot")["metadata"]["uid"]
    assert whoami(cluster, token)[0] == 401
    assert review(admin, token).error == (
        f"[invalid bearer token, service account UID ({new_uid}) does not match claim ({old_uid})]")


def test_legacy_secret_token(cluster: Cluster, admin: client.ApiClient) -> None:
    setup_namespace(cluster, "authn-legacy", "robot")
    sa_uid = cluster.json("-n", "authn-legacy", "get", "serviceaccount", "robot")["metadata"]["uid"]
    cluster.ok("create", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
        "metadata": {"name": "robot-token", "namespace": "authn-legacy",
                     "annotations": {"kubernetes.io/service-account.name": "robot"}}}))
    deadline = time.monotonic() + 10
    while True:  # the tokens controller fills the secret in after it is created
        secret = cluster.json("-n", "authn-legacy", "get", "secret", "robot-token")
        if (secret.get("data") or {}).get("token") or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data["namespace"] == "authn-legacy"
    assert data["ca.crt"] == (cluster.pki / "ca.crt").read_text()
    assert secret["metadata"]["annotations"]["kubernetes.io/service-account.uid"] == sa_uid
    token = data["token"]
    assert claims_of(token) == {
        "iss": "kubernetes/serviceaccount", "sub": "system:serviceaccount:authn-legacy:robot",
        "kubernetes.io/serviceaccount/namespace": "authn-legacy",
        "kubernetes.io/serviceaccount/secret.name": "robot-token",
        "kubernetes.io/serviceaccount/service-account.name": "robot",
        "kubernetes.io/serviceaccount/service-account.uid": sa_uid}
    who = json.loads(token_kubectl(cluster, token, "auth", "whoami", "-o", "json").stdout)["status"]["userInfo"]
    assert who == {"username": "system:serviceaccount:authn-legacy:robot", "uid": sa_uid,
                   "groups": ["system:serviceaccounts", "system:serviceaccounts:authn-legacy", "system:authenticated"]}
    status = review(admin, token)
    assert status.authenticated is True and status.audiences == [ISSUER]
    cluster.ok("-n", "authn-legacy", "delete", "secret", "robot-token")
    eventually_unauthorized(cluster, token)
    assert review(admin, token).error == "[invalid bearer token, service account token has been invalidated]"


def test_issuer_discovery_documents_verify_tokens(cluster: Cluster) -> None:
    setup_namespace(cluster, "authn-oidc", "robot")
    token = cluster.ok("-n", "authn-oidc", "create", "token", "robot").strip()
    # kube binds system:service-account-issuer-discovery to every service account
    status, ctype, body = raw(cluster, "GET", "/.well-known/openid-configuration", {"Authorization": f"Bearer {token}"})
    assert status == 200 and ctype == "application/json"
    assert json.loads(body) == {"issuer": ISSUER, "jwks_uri": f"https://127.0.0.1:{cluster.port}/openid/v1/jwks",
                                "response_types_supported": ["id_token"], "subject_types_supported": ["public"],
                                "id_token_signing_alg_values_supported": ["RS256"]}
    status, ctype, body = raw(cluster, "GET", "/openid/v1/jwks", {"Authorization": f"Bearer {token}"})
    assert status == 200 and ctype == "application/jwk-set+json"
    (key,) = json.loads(body)["keys"]
    assert {k: key[k] for k in ("use", "kty", "alg", "kid")} == {"use": "sig", "kty": "RSA", "alg": "RS256",
                                                                 "kid": server_signer(cluster).kid}
    # an outside verifier needs nothing but the published key
    numbers = rsa.RSAPublicNumbers(int.from_bytes(jwt.b64url_decode(key["e"]), "big"),
                                   int.from_bytes(jwt.b64url_decode(key["n"]), "big"))
    assert jwt.verify_signature(jwt.parse(token), numbers.public_key())


# ---------------------------------------------------------------- impersonation
def test_impersonation_with_kubectl(cluster: Cluster) -> None:
    who = json.loads(cluster.ok("auth", "whoami", "--as", "jane", "--as-group", "dev", "--as-group", "ops",
                                "--as-uid", "u-1", "-o", "json"))["status"]["userInfo"]
    assert who == {"username": "jane", "uid": "u-1", "groups": ["dev", "ops", "system:authenticated"]}
    sa = json.loads(cluster.ok("auth", "whoami", "--as", "system:serviceaccount:kube-system:bot", "-o", "json"))
    assert sa["status"]["userInfo"] == {"username": "system:serviceaccount:kube-system:bot", "groups": [
        "system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]}
    # jane has no rights: the impersonated request is authorized as jane
    denied = cluster.kubectl("get", "ns", "--as", "jane")
    assert 'namespaces is forbidden: User "jane" cannot list resource "namespaces" in API group "" at the cluster ' \
           'scope' in denied.stderr
    extra = raw(cluster, "POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                [("Impersonate-User", "jane"), ("Impersonate-Extra-Scopes", "view"),
                 ("Impersonate-Extra-Scopes", "edit"), ("Impersonate-Extra-Example.com%2fteam", "a")],
                {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}, admin_cert=True)
    assert extra[0] == 201
    assert json.loads(extra[2])["status"]["userInfo"]["extra"] == {"scopes": ["view", "edit"],
                                                                   "example.com/team": ["a"]}


def test_impersonation_needs_permission(cluster: Cluster) -> None:
    setup_namespace(cluster, "authn-imp", "robot")
    token = cluster.ok("-n", "authn-imp", "create", "token", "robot").strip()
    user = "system:serviceaccount:authn-imp:robot"
    cases = [
        ([("Impersonate-User", "jane")], 'users "jane" is forbidden: User "%s" cannot impersonate resource "users" in '
                                         'API group "" at the cluster scope', {"name": "jane", "kind": "users"}),
        ([("Impersonate-User", "system:serviceaccount:kube-system:bot")],
         'serviceaccounts "bot" is forbidden: User "%s" cannot impersonate resource "serviceaccounts" in API group "" '
         'in the namespace "kube-system"', {"name": "bot", "kind": "serviceaccounts"}),
    ]
    for headers, message, details in cases:
        status, _, body = raw(cluster, "GET", "/api/v1/namespaces", [("Authorization", f"Bearer {token}"), *headers])
        assert status == 403
        assert json.loads(body) == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                    "message": message % user, "reason": "Forbidden", "details": details, "code": 403}
    result = token_kubectl(cluster, token, "get", "pods", "--as", "jane")
    assert f'users "jane" is forbidden: User "{user}" cannot impersonate resource "users"' in result.stderr
    # RBAC grants impersonating jane (and the dev group) to the service account, nobody else
    cluster.ok("create", "clusterrole", "authn-imp", "--verb=impersonate", "--resource=users", "--resource=groups",
               "--resource-name=jane", "--resource-name=dev")
    cluster.ok("create", "clusterrolebinding", "authn-imp", "--clusterrole=authn-imp",
               "--serviceaccount=authn-imp:robot")
    deadline = time.monotonic() + 10
    while True:  # the authorizer follows RBAC objects through a watch
        who = token_kubectl(cluster, token, "auth", "whoami", "--as", "jane", "--as-group", "dev", "-o", "json")
        if who.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert json.loads(who.stdout)["status"]["userInfo"] == {"username": "jane",
                                                            "groups": ["dev", "system:authenticated"]}
    status, _, body = raw(cluster, "GET", "/api/v1/namespaces", [("Authorization", f"Bearer {token}"),
                                                                 ("Impersonate-User", "jane"),
                                                                 ("Impersonate-Group", "ops")])
    assert status == 403 and json.loads(body)["message"] == (
        f'groups "ops" is forbidden: User "{user}" cannot impersonate resource "groups" in API group "" at the '
        f"cluster scope")
    bob = token_kubectl(cluster, token, "auth", "whoami", "--as", "bob")
    assert bob.returncode != 0
    # groups without a user: kube's plain-text 500
    status, ctype, body = raw(cluster, "GET", "/api/v1/namespaces", [("Impersonate-Group", "g")], admin_cert=True)
    assert status == 500 and ctype.startswith("text/plain")
    assert b"without impersonating a user" in body


# ---------------------------------------------------------------- anonymous
def test_anonymous_is_rejected_by_default(cluster: Cluster) -> None:
    for path in ("/version", "/api/v1/namespaces", "/apis"):
        status, ctype, body = raw(cluster, "GET", path)
        assert (status, ctype, json.loads(body)) == (401, "application/json", UNAUTHORIZED)


@pytest.fixture(scope="module")
def anonymous_cluster() -> Iterator[Cluster]:
    c = start_cluster("inprocess", "--anonymous-auth=true", "--no-scheduler",
                      "--service-account-max-token-expiration=2h", "--service-account-issuer=https://issuer.example",
                      "--service-account-issuer", ISSUER, "--service-account-jwks-uri=https://keys.example/jwks")
    yield c
    c.stop()
    shutil.rmtree(c.work_dir, ignore_errors=True)


def test_anonymous_auth_true(anonymous_cluster: Cluster) -> None:
    status, _, body = raw(anonymous_cluster, "GET", "/version")
    assert status == 200 and json.loads(body)["major"] == "1"
    status, _, body = raw(anonymous_cluster, "GET", "/api/v1/namespaces")
    assert status == 403 and json.loads(body)["message"] == (
        'namespaces is forbidden: User "system:anonymous" cannot list resource "namespaces" in API group "" at the '
        "cluster scope")
    status, _, body = raw(anonymous_cluster, "POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", None,
                          {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
    assert status == 403
    # a bad token is still a 401, never anonymous (kube's union.NewFailOnError)
    status, _, body = raw(anonymous_cluster, "GET", "/version", {"Authorization": "Bearer nope"})
    assert (status, json.loads(body)) == (401, UNAUTHORIZED)


# ---------------------------------------------------------------- jwt unit checks
@pytest.mark.parametrize("key", [rsa.generate_private_key(public_exponent=65537, key_size=2048),
                                 ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP384R1())],
                         ids=["RS256", "ES256", "ES384"])
def test_jwt_sign_and_verify(key: Any, tmp_path: Path) -> None:
    signer = jwt.SigningKey.of(key)
    token = jwt.sign({"sub": "x", "aud": ["a"]}, signer)
    parsed = jwt.parse(token)
    assert parsed.header == {"alg": signer.alg, "kid": signer.kid} and parsed.claims == {"aud": ["a"], "sub": "x"}
    assert jwt.verify_signature(parsed, key.public_key())
    other = ec.generate_private_key(ec.SECP256R1()) if isinstance(key, rsa.RSAPrivateKey) else \
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert not jwt.verify_signature(parsed, other.public_key())
    parsed.signing_input += b"x"
    assert not jwt.verify_signature(parsed, key.public_key())
    # key files: the signing key's file yields its public key for verification
    from cryptography.hazmat.primitives import serialization

    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    (tmp_path / "k.pem").write_bytes(pem)
    loaded = jwt.load_public_keys(tmp_path / "k.pem")
    assert [jwt.key_id(k) for k in loaded] == [signer.kid]


def test_service_account_flags(anonymous_cluster: Cluster) -> None:
    """--service-account-max-token-expiration, a second accepted issuer, --service-account-jwks-uri."""
    c = anonymous_cluster
    setup_namespace(c, "authn-flags", "robot")
    made = c.kubectl("-n", "authn-flags", "create", "token", "robot", "--duration", "3h")
    assert made.returncode == 0
    assert "Warning: requested expiration of 10800 seconds shortened to 7200 seconds" in made.stderr
    token = made.stdout.strip()
    claims = claims_of(token)
    assert claims["exp"] - claims["iat"] == 7200
    assert claims["iss"] == "https://issuer.example" and claims["aud"] == ["https://issuer.example", ISSUER]
    assert whoami(c, token)[0] == 201
    # a token of the second issuer is accepted too
    sa_uid = c.json("-n", "authn-flags", "get", "serviceaccount", "robot")["metadata"]["uid"]
    now = int(time.time())
    second = jwt.sign({"iss": ISSUER, "sub": "system:serviceaccount:authn-flags:robot", "aud": [ISSUER], "iat": now,
                       "nbf": now, "exp": now + 600, "kubernetes.io": {
                           "namespace": "authn-flags", "serviceaccount": {"name": "robot", "uid": sa_uid}}},
                      server_signer(c))
    assert whoami(c, second)[0] == 201
    status, _, body = raw(c, "GET", "/.well-known/openid-configuration", {"Authorization": f"Bearer {token}"})
    assert status == 200 and json.loads(body)["issuer"] == "https://issuer.example"
    assert json.loads(body)["jwks_uri"] == "https://keys.example/jwks"


def test_cache_skips_results_that_raced_a_change() -> None:
    """A lookup that overlapped a change to one of its objects is not cached (its invalidation went by);
    changes to unrelated objects do not matter; a lost watch makes every lookup in flight uncacheable."""
    from ultraplane.apiserver.authn import RECENT_CHANGES, Authenticator

    authn = Authenticator(registry=None)
    seen = authn.invalidations
    assert not authn._changed_since(seen, [b"/registry/serviceaccounts/ns/robot"])
    authn.invalidate(b"/registry/pods/ns/other")
    assert not authn._changed_since(seen, [b"/registry/serviceaccounts/ns/robot"])
    authn.invalidate(b"/registry/serviceaccounts/ns/robot")
    assert authn._changed_since(seen, [b"/registry/serviceaccounts/ns/robot"])
    seen = authn.invalidations
    for i in range(RECENT_CHANGES + 1):
        authn.invalidate(f"/registry/pods/ns/p{i}".encode())
    assert authn._changed_since(seen, [b"/registry/serviceaccounts/ns/robot"])  # too many to tell: assume so
