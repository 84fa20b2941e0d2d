"""Managed signing: images pushed to `signed/*` get a cosign `sha256-<hex>.sig` signature and a Notation
referrer. No cosign or notation binary installs from PyPI or Debian here, so the signatures are fetched with
skopeo and the Distribution API and checked by an independent verifier below (`cryptography` only, following
the published cosign and Notary Project formats), against the public keys the registry publishes."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from tests.registry.conftest import Client, RegistryProcess
from tests.registry.images import build_image, sha256
from tests.registry.oci import EMPTY_CONFIG, OCI_MANIFEST, push_blob, push_image, push_manifest

NOTATION = "application/vnd.cncf.notary.signature"


def public_keys(client: Client) -> list[ec.EllipticCurvePublicKey]:
    document = client.request("GET", "/ultraplane/v1/signing/keys").json()
    keys = []
    for entry in document["keys"]:
        key = serialization.load_pem_public_key(entry["pem"].encode())
        assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
        keys.append(key)
    assert len(document["jwks"]["keys"]) == len(keys)
    return keys


def skopeo_raw(registry: RegistryProcess, reference: str) -> dict[str, Any]:
    result = subprocess.run(["skopeo", "inspect", "--raw", "--cert-dir", str(registry.cert_dir), "--creds",
                             f"admin:{registry.password}", f"docker://{registry.host}/{reference}"],
                            capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def cosign_check(keys: list[ec.EllipticCurvePublicKey], manifest: dict[str, Any], payloads: dict[str, bytes],
                 digest: str) -> bool:
    """cosign's verification of a simple-signing layer: payload digest, claimed image digest, ECDSA P-256."""
    for layer in manifest["layers"]:
        payload = payloads[layer["digest"]]
        if layer["mediaType"] != "application/vnd.dev.cosign.simplesigning.v1+json" or sha256(payload) != layer["digest"]:
            continue
        claims = json.loads(payload)
        if claims["critical"]["type"] != "cosign container image signature":
            continue
        if claims["critical"]["image"]["docker-manifest-digest"] != digest:
            continue
        signature = base64.b64decode(layer["annotations"]["dev.cosignproject.cosign/signature"])
        for key in keys:
            try:
                key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
                return True
            except Exception:
                continue
    return False


def b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def jws_check(keys: list[ec.EllipticCurvePublicKey], envelope: dict[str, Any], target: dict[str, Any]) -> bool:
    """RFC 7515 ES256 over `protected.payload` (raw r||s), Notation's header and payload."""
    protected = json.loads(b64url(envelope["protected"]))
    if protected["alg"] != "ES256" or protected["io.cncf.notary.signingScheme"] != "notary.x509":
        return False
    if protected["crit"] != ["io.cncf.notary.signingScheme"]:
        return False
    if json.loads(b64url(envelope["payload"]))["targetArtifact"] != target:
        return False
    raw = b64url(envelope["signature"])
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    signed = f"{envelope['protected']}.{envelope['payload']}".encode()
    for key in keys:
        try:
            key.verify(der, signed, ec.ECDSA(hashes.SHA256()))
            return True
        except Exception:
            continue
    return False


def verify_api(client: Client, repository: str, reference: str) -> dict[str, Any]:
    response = client.request("POST", "/ultraplane/v1/signing/verify",
                              json={"repository": repository, "reference": reference})
    assert response.status_code == 200, response.text
    return dict(response.json())


@pytest.fixture(scope="module")
def signed_image(signing_registry: RegistryProcess) -> tuple[str, Any]:
    client = Client(signing_registry.url, signing_registry.ca_cert, "admin", signing_registry.password)
    image = build_image([{"app/main.py": b"print('signed')\n"}])
    push_image(client, "signed/app", "v1", image)
    return "signed/app", image


def test_push_is_signed_in_both_forms_and_verifies_independently(
        signing_registry: RegistryProcess, signing_admin: Client, signed_image: tuple[str, Any]) -> None:
    name, image = signed_image
    keys = public_keys(signing_admin)
    hexdigest = image.digest.split(":")[1]
    signature = skopeo_raw(signing_registry, f"{name}:sha256-{hexdigest}.sig")
    payloads = {layer["digest"]: signing_admin.request("GET", f"/v2/{name}/blobs/{layer['digest']}").content
                for layer in signature["layers"]}
    claims = json.loads(next(iter(payloads.values())))
    assert claims["critical"]["identity"]["docker-reference"] == f"{signing_registry.host}/{name}"
    assert claims["optional"] is None
    assert cosign_check(keys, signature, payloads, image.digest)
    assert not cosign_check(keys, signature, payloads, sha256(b"some other image"))

    referrers = signing_admin.request("GET", f"/v2/{name}/referrers/{image.digest}",
                                      params={"artifactType": NOTATION}).json()["manifests"]
    assert len(referrers) == 1
    manifest = signing_admin.request("GET", f"/v2/{name}/manifests/{referrers[0]['digest']}",
                                     headers={"Accept": OCI_MANIFEST}).json()
    assert manifest["artifactType"] == NOTATION and manifest["subject"]["digest"] == image.digest
    layer = manifest["layers"][0]
    assert layer["mediaType"] == "application/jose+json"
    envelope = signing_admin.request("GET", f"/v2/{name}/blobs/{layer['digest']}").json()
    target = {"mediaType": OCI_MANIFEST, "digest": image.digest, "size": len(image.manifest)}
    assert jws_check(keys, envelope, target)
    thumbprints = json.loads(manifest["annotations"]["io.cncf.notary.x509chain.thumbprint#S256"])
    assert thumbprints == [hashlib.sha256(base64.b64decode(envelope["header"]["x5c"][0])).hexdigest()]

    result = verify_api(signing_admin, name, "v1")
    assert result["verified"] and result["cosign"]["valid"] and result["notation"]["valid"]
    assert result["digest"] == image.digest


def test_unsigned_repository_is_not_signed(signing_admin: Client) -> None:
    image = build_image([{"x": b"unsigned"}])
    push_image(signing_admin, "plain/app", "v1", image)
    result = verify_api(signing_admin, "plain/app", "v1")
    assert not result["verified"]
    assert "no sha256-" in result["cosign"]["problems"][0]
    assert result["notation"]["problems"] == ["no Notation signature referrer"]


def test_tampered_signatures_fail(signing_admin: Client) -> None:
    name = "signed/tamper"
    image = build_image([{"bin/tool": b"v1"}])
    push_image(signing_admin, name, "v1", image)
    assert verify_api(signing_admin, name, "v1")["verified"]
    tag = "sha256-" + image.digest.split(":")[1] + ".sig"

    # cosign: the payload changed (another image's digest) under the original signature annotation.
    original = signing_admin.request("GET", f"/v2/{name}/manifests/{tag}", headers={"Accept": OCI_MANIFEST}).json()
    payload = signing_admin.request("GET", f"/v2/{name}/blobs/{original['layers'][0]['digest']}").content
    forged = payload.replace(b"cosign container image signature", b"cosign container image signaturE")
    push_blob(signing_admin, name, forged)
    original["layers"][0].update(digest=sha256(forged), size=len(forged))
    push_manifest(signing_admin, name, tag, json.dumps(original).encode())
    result = verify_api(signing_admin, name, "v1")
    assert not result["cosign"]["valid"] and result["notation"]["valid"]

    # cosign: a well-formed signature by a key that is not the registry's.
    outsider = ec.generate_private_key(ec.SECP256R1())
    original["layers"][0].update(digest=sha256(payload), size=len(payload))
    original["layers"][0]["annotations"]["dev.cosignproject.cosign/signature"] = base64.b64encode(
        outsider.sign(payload, ec.ECDSA(hashes.SHA256()))).decode()
    push_manifest(signing_admin, name, tag, json.dumps(original).encode())
    result = verify_api(signing_admin, name, "v1")
    assert result["cosign"]["problems"] == ["the signature does not verify with any registry key"]

    # Notation: the envelope's payload swapped for another target, signature kept.
    referrer = signing_admin.request("GET", f"/v2/{name}/referrers/{image.digest}").json()["manifests"][0]
    manifest = signing_admin.request("GET", f"/v2/{name}/manifests/{referrer['digest']}",
                                     headers={"Accept": OCI_MANIFEST}).json()
    envelope = signing_admin.request("GET", f"/v2/{name}/blobs/{manifest['layers'][0]['digest']}").json()
    claimed = json.loads(b64url(envelope["payload"]))
    claimed["targetArtifact"]["size"] += 1
    envelope["payload"] = base64.urlsafe_b64encode(json.dumps(claimed).encode()).decode().rstrip("=")
    forged_envelope = json.dumps(envelope).encode()
    push_blob(signing_admin, name, forged_envelope)
    push_blob(signing_admin, name, EMPTY_CONFIG)
    # Delete the genuine referrer so only the forged one remains.
    assert signing_admin.request("DELETE", f"/v2/{name}/manifests/{referrer['digest']}").status_code == 202
    manifest["layers"][0].update(digest=sha256(forged_envelope), size=len(forged_envelope))
    push_manifest(signing_admin, name, sha256(json.dumps(manifest).encode()), json.dumps(manifest).encode())
    result = verify_api(signing_admin, name, "v1")
    assert not result["verified"]
    assert any("does not verify" in problem for problem in result["notation"]["problems"])


def test_rotation_keeps_old_signatures_valid(signing_registry: RegistryProcess, signing_admin: Client,
                                             signed_image: tuple[str, Any]) -> None:
    name, _ = signed_image
    before = signing_admin.request("GET", "/ultraplane/v1/signing/keys").json()
    rotated = signing_admin.request("POST", "/ultraplane/v1/signing/rotate")
    assert rotated.status_code == 200, rotated.text
    after = rotated.json()
    assert after["active"] != before["active"]
    assert {k["kid"] for k in before["keys"]} < {k["kid"] for k in after["keys"]}
    assert verify_api(signing_admin, name, "v1")["verified"]  # signed by the previous key

    image = build_image([{"app/main.py": b"print('after rotation')\n"}])
    push_image(signing_admin, "signed/rotated", "v1", image)
    result = verify_api(signing_admin, "signed/rotated", "v1")
    assert result["verified"]
    audit = signing_admin.request("GET", "/ultraplane/v1/audit",
                                  params={"repository": "signed/rotated", "action": "sign"}).json()["records"]
    assert [record["detail"]["kid"] for record in audit] == [after["active"]]
    pem = signing_admin.request("GET", "/ultraplane/v1/signing/keys.pem").text
    assert pem.count("BEGIN PUBLIC KEY") == len(after["keys"])
    keys_dir = signing_registry.data_dir / "signing" / "keys"
    private_files = sorted(path.name for path in keys_dir.glob("*.key"))
    assert private_files == sorted(f"{key['kid']}.key" for key in after["keys"])
    assert all((keys_dir / name).stat().st_mode & 0o077 == 0 for name in private_files)
    assert "PRIVATE" not in signing_admin.request("GET", "/ultraplane/v1/signing/keys").text
