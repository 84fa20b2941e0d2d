"""Helpers that speak the Distribution API through a token-flow `Client` (pushing blobs and manifests)."""

from __future__ import annotations

import json
from typing import Any

from tests.registry.conftest import Client
from tests.registry.images import Image, sha256

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
EMPTY_CONFIG = b"{}"
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"


def push_blob(client: Client, name: str, data: bytes) -> str:
    digest = sha256(data)
    response = client.request("POST", f"/v2/{name}/blobs/uploads/", params={"digest": digest}, data=data,
                              headers={"Content-Type": "application/octet-stream"})
    assert response.status_code == 201, response.text
    return digest


def push_manifest(client: Client, name: str, reference: str, manifest: bytes,
                  media_type: str = OCI_MANIFEST) -> Any:
    response = client.request("PUT", f"/v2/{name}/manifests/{reference}", data=manifest,
                              headers={"Content-Type": media_type})
    assert response.status_code == 201, response.text
    return response


def push_image(client: Client, name: str, tag: str, image: Image) -> str:
    for data in image.blobs().values():
        push_blob(client, name, data)
    media_type = json.loads(image.manifest)["mediaType"]
    push_manifest(client, name, tag, image.manifest, media_type)
    return image.digest


def artifact(subject: tuple[str, int] | None, *, artifact_type: str | None = None,
             config_type: str = EMPTY_TYPE, annotations: dict[str, str] | None = None,
             layer: bytes | None = None) -> bytes:
    """An OCI artifact manifest (empty config) optionally pointing at `subject` (digest, size)."""
    document: dict[str, Any] = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": config_type, "digest": sha256(EMPTY_CONFIG), "size": 2},
        "layers": [],
    }
    if layer is not None:
        document["layers"] = [{"mediaType": "application/octet-stream", "digest": sha256(layer), "size": len(layer)}]
    if artifact_type:
        document["artifactType"] = artifact_type
    if subject is not None:
        document["subject"] = {"mediaType": OCI_MANIFEST, "digest": subject[0], "size": subject[1]}
    if annotations:
        document["annotations"] = annotations
    return json.dumps(document).encode()


def error_codes(response: Any) -> list[str]:
    return [error["code"] for error in response.json()["errors"]]
