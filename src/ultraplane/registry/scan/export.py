"""SBOM documents: SPDX 2.3 JSON and CycloneDX 1.5 / 1.6 JSON, written to the published schemas.

The image is the described root (an SPDX package with a `pkg:oci` purl / the CycloneDX metadata component of
type container); each package carries its purl and, as an annotation / property, the layer that introduced it.
"""

from __future__ import annotations

import datetime
import json
import re
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from ultraplane import __version__
from ultraplane.registry.scan.layout import digest_of
from ultraplane.registry.scan.sbom import Package, Sbom

SPDX_MEDIA_TYPE = "application/spdx+json"
CYCLONEDX_MEDIA_TYPE = "application/vnd.cyclonedx+json"
TOOL = "ultraplane-registry-scan"
_SPDX_ID_UNSAFE = re.compile(r"[^A-Za-z0-9.-]+")
_SPDX_LICENSE = re.compile(r"^[A-Za-z0-9.+-]+( (AND|OR|WITH) [A-Za-z0-9.+-]+)*$")


def purl(package: Package, distro: str = "") -> str:
    namespace = ""
    name = package.name
    qualifiers: list[str] = []
    if package.kind in ("deb", "apk"):
        namespace = (distro.split(":")[0] or ("debian" if package.kind == "deb" else "alpine")).lower() + "/"
        if package.arch:
            qualifiers.append(f"arch={quote(package.arch, safe='')}")
        if distro and ":" in distro:
            qualifiers.append(f"distro={quote(distro.replace(':', '-').lower(), safe='')}")
        if package.source and package.source != package.name:
            qualifiers.append(f"upstream={quote(package.source, safe='')}")
    elif package.kind == "npm" and name.startswith("@") and "/" in name:
        scope, _, name = name.partition("/")
        namespace = quote(scope, safe="") + "/"
    text = f"pkg:{package.kind}/{namespace}{quote(name, safe='')}@{quote(package.version, safe='')}"
    return text + ("?" + "&".join(sorted(qualifiers)) if qualifiers else "")


def image_purl(sbom: Sbom) -> str:
    name = sbom.image_name.rsplit("/", 1)[-1].split(":")[0].split("@")[0] or "image"
    return f"pkg:oci/{quote(name, safe='')}@{quote(sbom.image_digest, safe='')}"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _spdx_id(index: int, package: Package) -> str:
    return f"SPDXRef-Package-{package.kind}-{_SPDX_ID_UNSAFE.sub('-', package.name)}-{index}"


def to_spdx(sbom: Sbom) -> dict[str, Any]:
    image_id = "SPDXRef-Image"
    packages: list[dict[str, Any]] = [
        {
            "SPDXID": image_id,
            "name": sbom.image_name or sbom.image_digest,
            "versionInfo": sbom.image_digest,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": False,
            "primaryPackagePurpose": "CONTAINER",
            "checksums": [
                {
                    "algorithm": sbom.image_digest.split(":")[0].upper(),
                    "checksumValue": sbom.image_digest.split(":", 1)[1],
                }
            ],
            "externalRefs": [
                {
                    "referenceCategory": "PACKAGE-MANAGER",
                    "referenceType": "purl",
                    "referenceLocator": image_purl(sbom),
                }
            ],
        }
    ]
    relationships = [
        {"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES", "relatedSpdxElement": image_id}
    ]
    for index, package in enumerate(sbom.packages):
        spdx_id = _spdx_id(index, package)
        declared = package.license if _SPDX_LICENSE.match(package.license) else "NOASSERTION"
        entry: dict[str, Any] = {
            "SPDXID": spdx_id,
            "name": package.name,
            "versionInfo": package.version,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": False,
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": declared,
            "primaryPackagePurpose": "OPERATING-SYSTEM" if package.kind in ("deb", "apk") else "LIBRARY",
            "sourceInfo": f"found in {package.location}, introduced by layer {package.layer}",
            "externalRefs": [
                {
                    "referenceCategory": "PACKAGE-MANAGER",
                    "referenceType": "purl",
                    "referenceLocator": purl(package, sbom.distro),
                }
            ],
        }
        packages.append(entry)
        relationships.append(
            {"spdxElementId": image_id, "relationshipType": "CONTAINS", "relatedSpdxElement": spdx_id}
        )
    return {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": sbom.image_name or sbom.image_digest,
        "documentNamespace": f"https://ultraplane.invalid/spdx/{sbom.image_digest}/{uuid.uuid4()}",
        "creationInfo": {"created": _now(), "creators": [f"Tool: {TOOL}-{__version__}"]},
        "documentDescribes": [image_id],
        "packages": packages,
        "relationships": relationships,
    }


def to_cyclonedx(sbom: Sbom, spec_version: str = "1.6") -> dict[str, Any]:
    if spec_version not in ("1.5", "1.6"):
        raise ValueError(f"CycloneDX spec version {spec_version!r} not supported (1.5, 1.6)")
    image_ref = image_purl(sbom)
    components = []
    for package in sbom.packages:
        component_purl = purl(package, sbom.distro)
        component: dict[str, Any] = {
            "type": "library",
            "bom-ref": f"{component_purl}#{package.location}",
            "name": package.name,
            "version": package.version,
            "purl": component_purl,
            "properties": [
                {"name": "ultraplane:layer", "value": package.layer},
                {"name": "ultraplane:location", "value": package.location},
            ],
        }
        if package.license:
            component["licenses"] = [{"license": {"name": package.license}}]
        components.append(component)
    return {
        "bomFormat": "CycloneDX",
        "specVersion": spec_version,
        "serialNumber": f"urn:uuid:{uuid.uuid4()}",
        "version": 1,
        "metadata": {
            "timestamp": _now(),
            "tools": {"components": [{"type": "application", "name": TOOL, "version": __version__}]},
            "component": {
                "type": "container",
                "bom-ref": image_ref,
                "name": sbom.image_name or "image",
                "version": sbom.image_digest,
                "purl": image_ref,
            },
        },
        "components": components,
        "dependencies": [{"ref": image_ref, "dependsOn": [c["bom-ref"] for c in components]}],
    }


EMPTY_CONFIG = b"{}"
EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"


@dataclass
class ReferrerArtifact:
    """An SBOM as an OCI 1.1 referrer of its image: push `blobs`, then `manifest` under `manifest_digest`."""

    manifest_digest: str
    manifest: bytes
    blobs: dict[str, bytes]  # digest -> content: the SBOM document and the empty config


def referrer_artifact(document: dict[str, Any], media_type: str, subject: dict[str, Any]) -> ReferrerArtifact:
    """artifactType = the SBOM's media type, one layer holding the document, subject = the image's
    descriptor (mediaType, digest, size), config = the spec's empty descriptor."""
    body = json.dumps(document, separators=(",", ":"), sort_keys=True).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": media_type,
        "config": {
            "mediaType": EMPTY_MEDIA_TYPE,
            "digest": digest_of(EMPTY_CONFIG),
            "size": 2,
            "data": "e30=",
        },
        "layers": [{"mediaType": media_type, "digest": digest_of(body), "size": len(body)}],
        "subject": {key: subject[key] for key in ("mediaType", "digest", "size")},
        "annotations": {"org.opencontainers.image.created": _now()},
    }
    manifest_bytes = json.dumps(manifest, separators=(",", ":")).encode()
    return ReferrerArtifact(
        digest_of(manifest_bytes),
        manifest_bytes,
        {digest_of(body): body, digest_of(EMPTY_CONFIG): EMPTY_CONFIG},
    )
