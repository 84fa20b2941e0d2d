"""Docker's token flow against a real `ultraplane registry`: challenges, the token endpoint, JWT claims,
repository-scoped users, anonymous pull where configured, and limits."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import oras.client
import pytest
import requests

from tests.registry.conftest import REPO_ROOT, Client, RegistryProcess, start_registry
from tests.registry.images import build_image
from tests.registry.oci import error_codes, push_blob, push_image


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    data_dir = tmp_path_factory.mktemp("guarded")
    server = start_registry(data_dir, "--anonymous-pull", "public/*", "--max-uploads", "3")
    subprocess.run([sys.executable, "-m", "ultraplane", "registry", "--data-dir", str(data_dir),
                    "--set-user", "reader", "--access", "team/*=pull", "--access", "public/*=pull,push"],
                   input="reader-secret\n", text=True, check=True, cwd=REPO_ROOT, capture_output=True)
    yield server
    server.stop()


def claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def challenge_params(response: requests.Response) -> dict[str, str]:
    header = response.headers["WWW-Authenticate"]
    assert header.startswith("Bearer ")
    return dict(re.findall(r'(\w+)="([^"]*)"', header))


def test_challenge_names_realm_service_and_scope(guarded: RegistryProcess) -> None:
    push = requests.post(f"{guarded.url}/v2/team/app/blobs/uploads/", verify=guarded.ca_cert)
    assert push.status_code == 401 and error_codes(push) == ["UNAUTHORIZED"]
    assert challenge_params(push) == {"realm": f"{guarded.url}/token", "service": "ultraplane-registry",
                                      "scope": "repository:team/app:pull,push"}
    pull = requests.get(f"{guarded.url}/v2/team/app/manifests/v1", verify=guarded.ca_cert)
    assert challenge_params(pull)["scope"] == "repository:team/app:pull"


def test_token_endpoint_issues_scoped_jwts(guarded: RegistryProcess) -> None:
    token_url = f"{guarded.url}/token"
    bad = requests.get(token_url, params={"service": "ultraplane-registry"}, auth=("admin", "nope"),
                       verify=guarded.ca_cert)
    assert bad.status_code == 401 and error_codes(bad) == ["UNAUTHORIZED"]
    good = requests.get(token_url, auth=("admin", guarded.password), verify=guarded.ca_cert, params={
        "service": "ultraplane-registry", "scope": ["repository:team/app:pull,push", "repository:other:*"]})
    assert good.status_code == 200
    body = good.json()
    assert body["token"] == body["access_token"] and body["expires_in"] > 0
    granted = claims(body["token"])
    assert granted["sub"] == "admin" and granted["aud"] == "ultraplane-registry"
    assert granted["access"] == [{"type": "repository", "name": "team/app", "actions": ["pull", "push"]},
                                 {"type": "repository", "name": "other", "actions": ["*"]}]
    reader = requests.get(token_url, auth=("reader", "reader-secret"), verify=guarded.ca_cert, params={
        "service": "ultraplane-registry", "scope": "repository:team/app:pull,push"})
    assert claims(reader.json()["token"])["access"][0]["actions"] == ["pull"]
    form = requests.post(token_url, verify=guarded.ca_cert, data={
        "grant_type": "password", "username": "reader", "password": "reader-secret",
        "service": "ultraplane-registry", "scope": "repository:public/x:pull"})
    assert claims(form.json()["access_token"])["access"][0]["actions"] == ["pull"]


def test_repository_scoped_permissions(guarded: RegistryProcess) -> None:
    admin = Client(guarded.url, guarded.ca_cert, "admin", guarded.password)
    image = build_image([{"team": b"image"}])
    push_image(admin, "team/app", "v1", image)

    reader = Client(guarded.url, guarded.ca_cert, "reader", "reader-secret")
    assert reader.request("GET", "/v2/team/app/manifests/v1").content == image.manifest
    refused = reader.request("POST", "/v2/team/app/blobs/uploads/")
    assert refused.status_code == 403 and error_codes(refused) == ["DENIED"]
    assert challenge_params(refused)["error"] == "insufficient_scope"
    assert reader.request("DELETE", f"/v2/team/app/manifests/{image.digest}").status_code == 403
    assert reader.request("GET", "/v2/private/thing/tags/list").status_code == 403
    assert reader.request("GET", "/v2/_catalog").status_code == 403
    assert push_blob(reader, "public/reader-upload", b"allowed")
    catalog = admin.request("GET", "/v2/_catalog", params={"n": 1})
    assert catalog.json()["repositories"] == ["public/reader-upload"]
    assert catalog.headers["Link"] == '</v2/_catalog?n=1&last=public/reader-upload>; rel="next"'

    forged = requests.get(f"{guarded.url}/v2/team/app/manifests/v1", verify=guarded.ca_cert,
                          headers={"Authorization": "Bearer " + reader.tokens["repository:team/app:pull"][:-4] + "AAAA"})
    assert forged.status_code == 401 and error_codes(forged) == ["UNAUTHORIZED"]


def test_anonymous_pull_only_where_configured(guarded: RegistryProcess, tmp_path: Path) -> None:
    admin = Client(guarded.url, guarded.ca_cert, "admin", guarded.password)
    public, private = build_image([{"p": b"public"}]), build_image([{"q": b"private"}])
    push_image(admin, "public/base", "v1", public)
    push_image(admin, "private/base", "v1", private)

    anonymous = Client(guarded.url, guarded.ca_cert)
    assert anonymous.request("GET", "/v2/public/base/manifests/v1").content == public.manifest
    assert anonymous.request("GET", "/v2/private/base/manifests/v1").status_code == 403
    assert anonymous.request("POST", "/v2/public/base/blobs/uploads/").status_code == 403

    oras_client = oras.client.OrasClient(hostname=guarded.host, tls_verify=guarded.ca_cert)
    assert oras_client.get_manifest(f"{guarded.host}/public/base:v1")["config"]["digest"] == \
        json.loads(public.manifest)["config"]["digest"]


def test_open_upload_sessions_are_limited(guarded: RegistryProcess) -> None:
    admin = Client(guarded.url, guarded.ca_cert, "admin", guarded.password)
    sessions = [admin.request("POST", "/v2/limits/app/blobs/uploads/") for _ in range(3)]
    assert [s.status_code for s in sessions] == [202, 202, 202]
    limited = admin.request("POST", "/v2/limits/app/blobs/uploads/")
    assert limited.status_code == 429 and error_codes(limited) == ["TOOMANYREQUESTS"]
    for session in sessions:
        assert admin.request("DELETE", session.headers["Location"]).status_code == 204
    assert admin.request("POST", "/v2/limits/app/blobs/uploads/").status_code == 202
