"""Parsing and validating the manifest kinds the registry accepts: OCI image manifests and indexes,
Docker v2 schema 2 manifests and manifest lists (schema 1 is refused, as Distribution 2.8 does by default)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from ultraplane.registry.errors import RegistryError
from ultraplane.registry.names import parse_digest

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
IMAGE_KINDS = {OCI_MANIFEST, DOCKER_MANIFEST}
INDEX_KINDS = {OCI_INDEX, DOCKER_LIST}
MANIFEST_MEDIA_TYPES = IMAGE_KINDS | INDEX_KINDS
# Layers that registries are not expected to hold (Windows base layers): their blobs need not be present.
_NON_DISTRIBUTABLE = ("nondistributable", "foreign")
MAX_MANIFEST_BYTES = 4 * 1024 * 1024


@dataclass
class ParsedManifest:
    media_type: str
    blobs: list[str] = field(default_factory=list)  # must be blobs of the repository
    manifests: list[str] = field(default_factory=list)  # must be manifests of the repository
    subject: str | None = None
    artifact_type: str | None = None
    annotations: dict[str, str] | None = None

    def descriptor(self, digest: str, size: int) -> dict[str, Any]:
        """The descriptor the referrers API lists for this manifest."""
        descriptor: dict[str, Any] = {"mediaType": self.media_type, "digest": digest, "size": size}
        if self.artifact_type:
            descriptor["artifactType"] = self.artifact_type
        if self.annotations:
            descriptor["annotations"] = self.annotations
        return descriptor


def _invalid(reason: str) -> RegistryError:
    return RegistryError("MANIFEST_INVALID", {"reason": reason})


def _descriptor(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _invalid(f"{where}: descriptor must be an object")
    media_type, digest, size = value.get("mediaType"), value.get("digest"), value.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise _invalid(f"{where}: mediaType is required")
    if not isinstance(digest, str):
        raise _invalid(f"{where}: digest is required")
    try:
        parse_digest(digest)
    except RegistryError as exc:
        raise _invalid(f"{where}: invalid digest {digest!r}") from exc
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _invalid(f"{where}: size must be a non-negative integer")
    return value


def parse_manifest(content_type: str | None, data: bytes) -> ParsedManifest:
    if len(data) > MAX_MANIFEST_BYTES:
        raise RegistryError("SIZE_INVALID", {"size": len(data), "limit": MAX_MANIFEST_BYTES}, status=413,
                            message="manifest too large")
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise _invalid(f"not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise _invalid("manifest must be a JSON object")
    declared = document.get("mediaType")
    if declared is not None and not isinstance(declared, str):
        raise _invalid("mediaType must be a string")
    content_type = (content_type or "").split(";")[0].strip() or None
    if content_type not in MANIFEST_MEDIA_TYPES:
        content_type = None  # a generic or missing Content-Type: the document says what it is
    if declared and content_type and declared != content_type:
        raise _invalid(f"mediaType {declared!r} does not match Content-Type {content_type!r}")
    media_type = content_type or declared
    if media_type is None:
        media_type = OCI_INDEX if "manifests" in document else OCI_MANIFEST
    if media_type not in MANIFEST_MEDIA_TYPES:
        raise RegistryError("MANIFEST_INVALID", {"mediaType": media_type},
                            message=f"unsupported manifest media type {media_type}")
    if document.get("schemaVersion") != 2:
        raise _invalid("schemaVersion must be 2")
    parsed = ParsedManifest(media_type)
    if media_type in IMAGE_KINDS:
        config = _descriptor(document.get("config"), "config")
        parsed.blobs.append(config["digest"])
        layers = document.get("layers")
        if not isinstance(layers, list):
            raise _invalid("layers must be an array")
        for index, layer in enumerate(layers):
            layer = _descriptor(layer, f"layers[{index}]")
            if not any(marker in layer["mediaType"] for marker in _NON_DISTRIBUTABLE):
                parsed.blobs.append(layer["digest"])
        parsed.artifact_type = document.get("artifactType") or config["mediaType"]
    else:
        children = document.get("manifests")
        if not isinstance(children, list):
            raise _invalid("manifests must be an array")
        for index, child in enumerate(children):
            parsed.manifests.append(_descriptor(child, f"manifests[{index}]")["digest"])
        if media_type == OCI_INDEX:
            for index, blob in enumerate(document.get("blobs") or []):
                parsed.blobs.append(_descriptor(blob, f"blobs[{index}]")["digest"])
        parsed.artifact_type = document.get("artifactType")
    if parsed.artifact_type is not None and not isinstance(parsed.artifact_type, str):
        raise _invalid("artifactType must be a string")
    annotations = document.get("annotations")
    if annotations is not None:
        if not isinstance(annotations, dict) or not all(isinstance(v, str) for v in annotations.values()):
            raise _invalid("annotations must map strings to strings")
        parsed.annotations = annotations
    if "subject" in document:
        parsed.subject = _descriptor(document["subject"], "subject")["digest"]
    return parsed
