"""skopeo (Debian's) as the judge: images copied into ultraplane from an OCI layout, out again, and between
ultraplane and Debian's docker-registry (Distribution 2.8), byte for byte."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

from tests.registry.conftest import Distribution, RegistryProcess
from tests.registry.images import build_image, image_index, sha256, write_oci_layout


def skopeo(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["skopeo", "--command-timeout", "60s", *args], capture_output=True, text=True,
                            timeout=90)
    if check and result.returncode != 0:
        raise AssertionError(f"skopeo {' '.join(args)} failed: {result.stderr}")
    return result


def src_flags(registry: RegistryProcess) -> list[str]:
    return ["--src-cert-dir", str(registry.cert_dir), "--src-creds", f"admin:{registry.password}"]


def dest_flags(registry: RegistryProcess) -> list[str]:
    return ["--dest-cert-dir", str(registry.cert_dir), "--dest-creds", f"admin:{registry.password}"]


def layout_blobs(layout: Path) -> dict[str, bytes]:
    return {f"sha256:{p.name}": p.read_bytes() for p in (layout / "blobs" / "sha256").iterdir()}


def test_copy_in_inspect_and_out(registry: RegistryProcess, tmp_path: Path) -> None:
    image = build_image([{"etc/os-release": b"ID=ultraplane\n"}, {"usr/bin/tool": random.randbytes(1_500_000)}])
    source = write_oci_layout(tmp_path / "in", {"v1": image})
    target = f"docker://{registry.host}/skopeo/app:v1"
    skopeo("copy", *dest_flags(registry), f"oci:{source}:v1", target)

    inspected = json.loads(skopeo("inspect", "--cert-dir", str(registry.cert_dir), "--creds",
                                  f"admin:{registry.password}", target).stdout)
    assert inspected["Digest"] == image.digest
    assert inspected["Layers"] == [sha256(layer) for layer in image.layers]
    tags = json.loads(skopeo("list-tags", "--cert-dir", str(registry.cert_dir), "--creds",
                             f"admin:{registry.password}", f"docker://{registry.host}/skopeo/app").stdout)
    assert tags["Tags"] == ["v1"]

    out = tmp_path / "out"
    skopeo("copy", *src_flags(registry), target, f"oci:{out}:v1")
    copied = layout_blobs(out)
    for digest, data in [*image.blobs().items(), (image.digest, image.manifest)]:
        assert copied[digest] == data


def test_wrong_credentials_are_refused(registry: RegistryProcess, tmp_path: Path) -> None:
    source = write_oci_layout(tmp_path / "in", {"v1": build_image([{"f": b"f"}])})
    result = skopeo("copy", "--dest-cert-dir", str(registry.cert_dir), "--dest-creds", "admin:wrong",
                    f"oci:{source}:v1", f"docker://{registry.host}/skopeo/denied:v1", check=False)
    assert result.returncode != 0
    assert "unauthorized" in result.stderr.lower() or "401" in result.stderr


def test_multi_arch_index_between_ultraplane_and_distribution(registry: RegistryProcess, distribution: Distribution,
                                                              tmp_path: Path) -> None:
    members = {"amd64": build_image([{"arch": b"amd64"}, {"lib": random.randbytes(300_000)}]),
               "arm64": build_image([{"arch": b"arm64"}])}
    index = image_index(members)
    source = write_oci_layout(tmp_path / "in", {}, {"multi": (index, list(members.values()))})
    ours = f"docker://{registry.host}/skopeo/multi:v1"
    theirs = f"docker://{distribution.host}/skopeo/multi:v1"
    back = f"docker://{registry.host}/skopeo/multi-back:v1"
    skopeo("copy", "--all", *dest_flags(registry), f"oci:{source}:multi", ours)
    skopeo("copy", "--all", *src_flags(registry), "--dest-tls-verify=false", ours, theirs)
    skopeo("copy", "--all", "--src-tls-verify=false", *dest_flags(registry), theirs, back)

    raw = skopeo("inspect", "--raw", "--tls-verify=false", theirs).stdout.encode()
    assert sha256(raw) == sha256(index)
    raw_back = skopeo("inspect", "--raw", "--cert-dir", str(registry.cert_dir), "--creds",
                      f"admin:{registry.password}", back).stdout.encode()
    assert raw_back == index
    out = tmp_path / "out"
    skopeo("copy", "--all", *src_flags(registry), back, f"oci:{out}:multi")
    copied = layout_blobs(out)
    for image in members.values():
        for digest, data in [*image.blobs().items(), (image.digest, image.manifest)]:
            assert copied[digest] == data


def test_docker_schema2_from_distribution_into_ultraplane_and_delete(registry: RegistryProcess,
                                                                     distribution: Distribution,
                                                                     tmp_path: Path) -> None:
    image = build_image([{"docker": b"schema2"}])
    source = write_oci_layout(tmp_path / "in", {"v1": image})
    theirs = f"docker://{distribution.host}/skopeo/docker:v1"
    ours = f"docker://{registry.host}/skopeo/docker:v1"
    skopeo("copy", "--format", "v2s2", "--dest-tls-verify=false", f"oci:{source}:v1", theirs)
    skopeo("copy", "--src-tls-verify=false", *dest_flags(registry), theirs, ours)
    creds = ["--cert-dir", str(registry.cert_dir), "--creds", f"admin:{registry.password}"]
    manifest = json.loads(skopeo("inspect", "--raw", *creds, ours).stdout)
    assert manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    skopeo("delete", *creds, ours)
    missing = skopeo("inspect", *creds, ours, check=False)
    assert missing.returncode != 0 and "manifest unknown" in missing.stderr.lower()
