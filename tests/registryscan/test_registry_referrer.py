"""The scanner with the real `ultraplane registry`: skopeo pushes an image, the scanner reads it from the
registry's blob directory by digest, and the SBOM goes back as an OCI 1.1 referrer (listed by the referrers
API with its artifactType)."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.registry.conftest import RegistryProcess, start_registry
from tests.registryscan.images import debian_app_layers, write_layout
from ultraplane.registry.scan.export import SPDX_MEDIA_TYPE, referrer_artifact, to_spdx
from ultraplane.registry.scan.layout import RegistryBlobs, load_image, open_layout
from ultraplane.registry.scan.sbom import build_sbom

MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    server = start_registry(tmp_path_factory.mktemp("scan-registry"), "--insecure-http", "--no-auth")
    yield server
    server.stop()


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is installed by scripts/setup")
def test_sbom_from_registry_storage_attached_as_referrer(registry: RegistryProcess, tmp_path: Path) -> None:
    layout = tmp_path / "img"
    write_layout(layout, debian_app_layers())
    subprocess.run(
        [
            "skopeo",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            "--format",
            "oci",
            f"oci:{layout}:latest",
            f"docker://{registry.host}/scan/app:v1",
        ],
        check=True,
        timeout=60,
    )
    head = requests.head(f"{registry.url}/v2/scan/app/manifests/v1", headers={"Accept": MANIFEST}, timeout=10)
    assert head.status_code == 200
    digest = head.headers["Docker-Content-Digest"]

    image = load_image(RegistryBlobs(registry.data_dir / "storage"), digest, name="scan/app:v1")
    sbom = build_sbom(image)
    expected = build_sbom(open_layout(layout))
    assert {(p.name, p.version) for p in sbom.packages} == {(p.name, p.version) for p in expected.packages}

    subject = {"mediaType": MANIFEST, "digest": digest, "size": int(head.headers["Content-Length"])}
    artifact = referrer_artifact(to_spdx(sbom), SPDX_MEDIA_TYPE, subject)
    for blob_digest, content in artifact.blobs.items():
        pushed = requests.post(
            f"{registry.url}/v2/scan/app/blobs/uploads/?digest={blob_digest}",
            data=content,
            headers={"Content-Type": "application/octet-stream"},
            timeout=10,
        )
        assert pushed.status_code == 201, pushed.text
    put = requests.put(
        f"{registry.url}/v2/scan/app/manifests/{artifact.manifest_digest}",
        data=artifact.manifest,
        headers={"Content-Type": MANIFEST},
        timeout=10,
    )
    assert put.status_code == 201, put.text

    listed = requests.get(
        f"{registry.url}/v2/scan/app/referrers/{digest}", params={"artifactType": SPDX_MEDIA_TYPE}, timeout=10
    )
    assert listed.status_code == 200
    entries = listed.json()["manifests"]
    assert [(m["digest"], m["artifactType"]) for m in entries] == [
        (artifact.manifest_digest, SPDX_MEDIA_TYPE)
    ]
    layer = json.loads(artifact.manifest)["layers"][0]["digest"]
    document = requests.get(f"{registry.url}/v2/scan/app/blobs/{layer}", timeout=10).json()
    assert document["spdxVersion"] == "SPDX-2.3" and document["packages"][0]["versionInfo"] == digest
