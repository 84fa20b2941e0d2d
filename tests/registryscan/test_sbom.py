"""SBOMs from real small images: package databases, whiteouts, per-layer history, SPDX/CycloneDX export,
layouts that skopeo reads and writes, the registry's blob directory, and bad layers."""

from __future__ import annotations

import gzip
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from tests.registryscan.images import (
    ALPINE_OS_RELEASE,
    apk_db,
    debian_app_layers,
    layer_tar,
    python_metadata,
    sha256,
    write_blob,
    write_layout,
)
from ultraplane.registry.scan.errors import ScanError
from ultraplane.registry.scan.export import purl, to_cyclonedx, to_spdx
from ultraplane.registry.scan.layout import RegistryBlobs, load_image, open_layout
from ultraplane.registry.scan.sbom import build_sbom
from ultraplane.registry.scan.store import SbomStore, Scanner
from ultraplane.registry.storage import Storage


def names(packages: list) -> set[tuple[str, str, str]]:
    return {(p.kind, p.name, p.version) for p in packages}


def test_debian_image_packages_whiteouts_and_history(tmp_path: Path) -> None:
    digest = write_layout(tmp_path / "img", debian_app_layers())
    image = open_layout(tmp_path / "img")
    assert image.digest == digest and image.name == "latest"
    sbom = build_sbom(image)
    assert sbom.distro == "Debian:12"
    assert names(sbom.packages) == {
        ("deb", "libssl3", "3.0.13-1~deb12u1"),
        ("deb", "openssl", "3.0.13-1~deb12u1"),
        ("deb", "zlib1g", "1:1.2.13.dfsg-1"),
        ("deb", "tzdata", "2024a-0+deb12u1"),
        ("pypi", "requests", "2.30.0"),
        ("pypi", "jinja2", "3.1.2"),
        ("npm", "lodash", "4.17.20"),
        ("npm", "@babel/traverse", "7.23.0"),
    }  # not: oldpkg (config-files only), pyyaml (whiteout), left-pad (opaque dir), lib/package.json
    by_name = {p.name: p for p in sbom.packages}
    layers = [layer.digest for layer in image.layers]
    assert by_name["zlib1g"].source == "zlib" and by_name["libssl3"].source == "openssl"
    assert by_name["zlib1g"].layer == layers[0]  # unchanged by the status rewrite in layer 3
    assert by_name["openssl"].layer == layers[2]  # the upgrade introduced this version
    assert by_name["tzdata"].location == "var/lib/dpkg/status.d/tzdata"
    assert by_name["lodash"].layer == layers[1]

    history = {h.digest: h for h in sbom.history}
    assert [h.digest for h in sbom.history] == layers
    assert names(history[layers[0]].added) == {
        ("deb", "libssl3", "3.0.11-1~deb12u1"),
        ("deb", "openssl", "3.0.11-1~deb12u1"),
        ("deb", "zlib1g", "1:1.2.13.dfsg-1"),
        ("deb", "tzdata", "2024a-0+deb12u1"),
    }
    assert names(history[layers[2]].removed) == {
        ("deb", "libssl3", "3.0.11-1~deb12u1"),
        ("deb", "openssl", "3.0.11-1~deb12u1"),
        ("pypi", "pyyaml", "6.0"),
        ("npm", "left-pad", "1.3.0"),
    }
    assert names(history[layers[2]].added) == {
        ("deb", "libssl3", "3.0.13-1~deb12u1"),
        ("deb", "openssl", "3.0.13-1~deb12u1"),
    }


def test_whiteout_of_a_whole_tree_and_readding_in_a_later_layer(tmp_path: Path) -> None:
    site = "usr/lib/python3.12/site-packages"
    layers = [
        {
            f"{site}/a-1.0.dist-info/METADATA": python_metadata("a", "1.0"),
            f"{site}/b-2.0.dist-info/METADATA": python_metadata("b", "2.0"),
        },
        {"usr/lib/.wh.python3.12": b""},  # hides the whole directory tree
        {f"{site}/a-1.1.dist-info/METADATA": python_metadata("a", "1.1")},
    ]
    write_layout(tmp_path / "img", layers, compress=False)
    sbom = build_sbom(open_layout(tmp_path / "img"))
    assert names(sbom.packages) == {("pypi", "a", "1.1")}
    assert [names(h.removed) for h in sbom.history] == [
        set(),
        {("pypi", "a", "1.0"), ("pypi", "b", "2.0")},
        set(),
    ]


def test_alpine_image(tmp_path: Path) -> None:
    layers = [
        {
            "etc/os-release": ALPINE_OS_RELEASE,
            "lib/apk/db/installed": apk_db(
                ("busybox", "1.36.1-r15", "busybox"),
                ("ssl_client", "1.36.1-r15", "busybox"),
                ("musl", "1.2.4_git20230717-r4", "musl"),
            ),
        }
    ]
    write_layout(tmp_path / "img", layers)
    sbom = build_sbom(open_layout(tmp_path / "img"))
    assert sbom.distro == "Alpine:v3.19"
    assert names(sbom.packages) == {
        ("apk", "busybox", "1.36.1-r15"),
        ("apk", "ssl_client", "1.36.1-r15"),
        ("apk", "musl", "1.2.4_git20230717-r4"),
    }
    ssl_client = next(p for p in sbom.packages if p.name == "ssl_client")
    assert ssl_client.source == "busybox" and ssl_client.license == "MIT"
    assert purl(ssl_client, sbom.distro) == (
        "pkg:apk/alpine/ssl_client@1.36.1-r15?arch=x86_64&distro=alpine-v3.19&upstream=busybox"
    )


def test_spdx_and_cyclonedx_exports(tmp_path: Path) -> None:
    write_layout(tmp_path / "img", debian_app_layers())
    sbom = build_sbom(open_layout(tmp_path / "img"))

    for version, schema in (("1.5", SchemaVersion.V1_5), ("1.6", SchemaVersion.V1_6)):
        document = to_cyclonedx(sbom, version)
        error = JsonStrictValidator(schema).validate_str(json.dumps(document))
        assert error is None, str(error)[:2000]
        assert document["metadata"]["component"]["version"] == sbom.image_digest
        purls = {c["purl"] for c in document["components"]}
        assert "pkg:npm/%40babel/traverse@7.23.0" in purls
        assert "pkg:deb/debian/zlib1g@1%3A1.2.13.dfsg-1?arch=amd64&distro=debian-12&upstream=zlib" in purls
        assert "pkg:pypi/requests@2.30.0" in purls
        layers = {
            p["value"]
            for c in document["components"]
            for p in c["properties"]
            if p["name"] == "ultraplane:layer"
        }
        assert layers == {layer.digest for layer in open_layout(tmp_path / "img").layers}

    spdx = to_spdx(sbom)
    assert spdx["spdxVersion"] == "SPDX-2.3" and spdx["dataLicense"] == "CC0-1.0"
    ids = [p["SPDXID"] for p in spdx["packages"]]
    assert len(ids) == len(set(ids)) == len(sbom.packages) + 1
    assert all(re.fullmatch(r"SPDXRef-[A-Za-z0-9.-]+", i) for i in ids)
    contained = {
        r["relatedSpdxElement"] for r in spdx["relationships"] if r["relationshipType"] == "CONTAINS"
    }
    assert contained == set(ids) - {"SPDXRef-Image"}
    assert {(p["name"], p["versionInfo"]) for p in spdx["packages"][1:]} == {
        (p.name, p.version) for p in sbom.packages
    }
    for package in spdx["packages"]:
        assert package["downloadLocation"] == "NOASSERTION" and package["filesAnalyzed"] is False
        assert package["externalRefs"][0]["referenceType"] == "purl"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", spdx["creationInfo"]["created"])


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is installed by scripts/setup")
def test_layouts_round_trip_through_skopeo(tmp_path: Path) -> None:
    digest = write_layout(tmp_path / "img", debian_app_layers())
    ours = build_sbom(open_layout(tmp_path / "img"))
    archive = tmp_path / "image.tar"
    subprocess.run(
        ["skopeo", "copy", "--quiet", f"oci:{tmp_path / 'img'}:latest", f"docker-archive:{archive}"],
        check=True,
        timeout=60,
    )
    subprocess.run(
        ["skopeo", "copy", "--quiet", f"docker-archive:{archive}", f"oci:{tmp_path / 'back'}:again"],
        check=True,
        timeout=60,
    )
    back = open_layout(tmp_path / "back", ref="again")
    assert back.digest != digest  # skopeo rewrote the manifest (docker-archive stores uncompressed layers)
    assert {(p.kind, p.name, p.version, p.location) for p in build_sbom(back).packages} == {
        (p.kind, p.name, p.version, p.location) for p in ours.packages
    }


def test_reads_images_from_the_registry_blob_store(tmp_path: Path) -> None:
    layout = tmp_path / "img"
    digest = write_layout(layout, debian_app_layers())
    storage = Storage(tmp_path / "registry")
    for blob in (layout / "blobs" / "sha256").iterdir():
        storage.put_blob(f"sha256:{blob.name}", blob.read_bytes())
    image = load_image(RegistryBlobs(tmp_path / "registry"), digest, name="library/app")
    assert names(build_sbom(image).packages) == names(build_sbom(open_layout(layout)).packages)


def _replace_layer(layout: Path, index: int, blob: bytes) -> None:
    """Point the manifest's layer at a new blob (and re-home the manifest under its new digest)."""
    index_doc = json.loads((layout / "index.json").read_text())
    old = index_doc["manifests"][0]["digest"]
    manifest = json.loads((layout / "blobs" / "sha256" / old.split(":")[1]).read_bytes())
    manifest["layers"][index]["digest"] = write_blob(layout, blob)
    manifest["layers"][index]["size"] = len(blob)
    data = json.dumps(manifest).encode()
    index_doc["manifests"][0]["digest"] = write_blob(layout, data)
    (layout / "index.json").write_text(json.dumps(index_doc))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("garbage", "corrupt tar archive"),
        ("truncated-gzip", "corrupt gzip stream"),
        ("digest-mismatch", "does not match its digest"),
        ("missing-blob", "not found"),
        ("diff-id", "config says diff_id"),
    ],
)
def test_bad_layers_raise_and_store_nothing(tmp_path: Path, damage: str, message: str) -> None:
    layout = tmp_path / "img"
    write_layout(layout, debian_app_layers())
    image = open_layout(layout)
    second = image.layers[1].digest
    second_path = layout / "blobs" / "sha256" / second.split(":")[1]
    if damage == "garbage":
        _replace_layer(layout, 1, b"this is not a tar archive at all" * 40)
    elif damage == "truncated-gzip":
        _replace_layer(layout, 1, second_path.read_bytes()[:200])
    elif damage == "digest-mismatch":
        second_path.write_bytes(gzip.compress(layer_tar({"etc/motd": b"tampered"})))
    elif damage == "missing-blob":
        second_path.unlink()
    elif damage == "diff-id":
        tar = layer_tar({"etc/motd": b"not what the config says"})
        _replace_layer(layout, 1, gzip.compress(tar))
        assert sha256(tar) != image.diff_ids[1]
    store_dir = tmp_path / "sboms"
    scanner = Scanner(SbomStore(store_dir))
    with pytest.raises(ScanError, match=message):
        scanner.scan(open_layout(layout))
    assert len(scanner.store) == 0 and list(store_dir.iterdir()) == [] and scanner.findings == {}


def test_not_a_layout(tmp_path: Path) -> None:
    with pytest.raises(ScanError, match="not an OCI image layout: oci-layout missing"):
        open_layout(tmp_path)
    write_layout(tmp_path / "img", [{"etc/hostname": b"x"}])
    with pytest.raises(ScanError, match="no manifest with ref name 'nope'"):
        open_layout(tmp_path / "img", ref="nope")
