"""The signature admission check: AdmissionReview v1 requests (as kube-apiserver sends a ValidatingWebhook)
to the registry's /ultraplane/v1/admission, and `ultraplane registry verify-image` on the data dir."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from tests.registry.conftest import REPO_ROOT, Client, RegistryProcess
from tests.registry.images import build_image
from tests.registry.oci import push_blob, push_image, push_manifest
from ultraplane.cli.main import build_parser
from ultraplane.registry.admission import ImageReference, pod_images


def review(client: Client, *images: str, uid: str = "7f0b2e51-1d0c-4a3e-9a52-0c6f7b0d7c11") -> dict[str, Any]:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "default"},
           "spec": {"containers": [{"name": f"c{i}", "image": image} for i, image in enumerate(images)]}}
    document = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "request": {"uid": uid, "kind": {"group": "", "version": "v1", "kind": "Pod"},
                            "resource": {"group": "", "version": "v1", "resource": "pods"},
                            "operation": "CREATE", "object": pod}}
    response = client.session.post(client.base + "/ultraplane/v1/admission", json=document, verify=client.verify)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
    assert answer["response"]["uid"] == uid
    return dict(answer["response"])


@pytest.fixture(scope="module")
def pushed(signing_registry: RegistryProcess) -> dict[str, Any]:
    client = Client(signing_registry.url, signing_registry.ca_cert, "admin", signing_registry.password)
    signed = build_image([{"srv": b"signed server"}])
    push_image(client, "signed/web", "v1", signed)
    unsigned = build_image([{"srv": b"unsigned server"}])
    push_image(client, "plain/web", "v1", unsigned)
    return {"signed": signed, "unsigned": unsigned}


def test_signed_images_are_admitted(signing_registry: RegistryProcess, signing_admin: Client,
                                    pushed: dict[str, Any]) -> None:
    host = signing_registry.host
    answer = review(signing_admin, f"{host}/signed/web:v1", f"{host}/signed/web@{pushed['signed'].digest}",
                    f"{host}/plain/web:v1")  # plain/* is not guarded by the policy
    assert answer == {"uid": answer["uid"], "allowed": True}


def test_unsigned_and_tampered_images_are_refused(signing_registry: RegistryProcess, signing_admin: Client,
                                                  pushed: dict[str, Any]) -> None:
    host = signing_registry.host
    # Tampering: an attacker with storage access points tag v2 of the guarded repository at an image whose
    # signatures they removed (the push signed it by policy; the signatures are deleted again).
    unsigned = pushed["unsigned"]
    for data in unsigned.blobs().values():
        push_blob(signing_admin, "signed/web", data)
    push_manifest(signing_admin, "signed/web", unsigned.digest, unsigned.manifest)
    tag = "sha256-" + unsigned.digest.split(":")[1] + ".sig"
    assert signing_admin.request("DELETE", f"/v2/signed/web/manifests/{tag}").status_code == 202
    for referrer in signing_admin.request("GET", f"/v2/signed/web/referrers/{unsigned.digest}").json()["manifests"]:
        assert signing_admin.request("DELETE", f"/v2/signed/web/manifests/{referrer['digest']}").status_code == 202
    tags = signing_registry.data_dir / "storage" / "repositories" / "signed" / "web" / "_manifests"
    (tags / "tags" / "v2").write_text(unsigned.digest)

    answer = review(signing_admin, f"{host}/signed/web:v1", f"{host}/signed/web:v2")
    assert answer["allowed"] is False and answer["status"]["code"] == 403
    message = answer["status"]["message"]
    assert f"'{host}/signed/web:v2'" in message and "requires a valid signature" in message
    assert "signed/web:v1" not in message

    missing = review(signing_admin, f"{host}/signed/web:nope")
    assert missing["allowed"] is False and "was not found in the registry" in missing["status"]["message"]
    garbage = review(signing_admin, "UPPER/Case:tag")
    assert garbage["allowed"] is False and "not a valid image reference" in garbage["status"]["message"]


def test_malformed_review_is_answered_not_crashed(signing_admin: Client) -> None:
    response = signing_admin.session.post(signing_admin.base + "/ultraplane/v1/admission", json={"kind": "x"},
                                          verify=signing_admin.verify)
    assert response.status_code == 200
    assert response.json()["response"] == {"uid": "", "allowed": False, "status": {
        "code": 400, "message": "not an AdmissionReview v1 with request.uid"}}


def test_image_references_and_pod_templates() -> None:
    assert ImageReference.parse("127.0.0.1:5000/team/app:v1") == ImageReference("127.0.0.1:5000", "team/app", "v1")
    assert ImageReference.parse("team/app") == ImageReference(None, "team/app", "latest")
    digest = "sha256:" + "a" * 64
    assert ImageReference.parse(f"localhost/app:v1@{digest}") == ImageReference("localhost", "app", digest)
    deployment = {"kind": "Deployment", "spec": {"template": {"spec": {
        "initContainers": [{"image": "init"}], "containers": [{"image": "main"}]}}}}
    cronjob = {"kind": "CronJob", "spec": {"jobTemplate": {"spec": {"template": {"spec": {
        "containers": [{"image": "job"}]}}}}}}
    assert pod_images(deployment) == ["init", "main"] and pod_images(cronjob) == ["job"]


def test_verify_image_cli(signing_registry: RegistryProcess, pushed: dict[str, Any],
                          capsys: pytest.CaptureFixture[str]) -> None:
    def verify(image: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ultraplane", "registry", "verify-image", image, "--data-dir",
                               str(signing_registry.data_dir)], capture_output=True, text=True, cwd=REPO_ROOT,
                              timeout=60)

    good = verify(f"{signing_registry.host}/signed/web:v1")
    assert good.returncode == 0 and "signature verified" in good.stdout, good.stdout + good.stderr
    # The refusal, in-process (the same parser and dispatch, without a second interpreter start).
    args = build_parser().parse_args(["registry", "verify-image", f"{signing_registry.host}/plain/web:v1",
                                      "--data-dir", str(signing_registry.data_dir)])
    assert args.run(args) == 1
    out = capsys.readouterr().out
    assert "requires a valid signature" in out and "no sha256-" in out and "no Notation signature" in out
