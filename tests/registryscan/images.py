"""Small real images for the scanner tests: layer tars made with tarfile, written as an OCI image layout."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

Layer = dict[str, bytes | None]  # path -> file content; None makes a directory


def layer_tar(files: Layer) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for path, content in files.items():
            info = tarfile.TarInfo(path)
            info.mtime = 1_700_000_000
            if content is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                archive.addfile(info)
            else:
                info.size = len(content)
                info.mode = 0o644
                archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write_blob(root: Path, data: bytes) -> str:
    digest = sha256(data)
    path = root / "blobs" / "sha256" / digest.split(":")[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return digest


def write_layout(root: Path, layers: list[Layer], ref: str = "latest", compress: bool = True) -> str:
    """Write an OCI image layout with these layers; returns the manifest digest."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    descriptors = []
    diff_ids = []
    for files in layers:
        tar = layer_tar(files)
        diff_ids.append(sha256(tar))
        blob = gzip.compress(tar, mtime=0) if compress else tar
        media_type = "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if compress else "")
        descriptors.append({"mediaType": media_type, "digest": write_blob(root, blob), "size": len(blob)})
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "config": {"Cmd": ["/bin/sh"]},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": write_blob(root, config),
                "size": len(config),
            },
            "layers": descriptors,
        }
    ).encode()
    manifest_digest = write_blob(root, manifest)
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": ref},
            }
        ],
    }
    (root / "index.json").write_text(json.dumps(index))
    return manifest_digest


def dpkg_stanza(name: str, version: str, source: str = "", status: str = "install ok installed") -> str:
    lines = [f"Package: {name}", f"Status: {status}", "Architecture: amd64", f"Version: {version}"]
    if source:
        lines.insert(2, f"Source: {source}")
    lines.append("Description: test package\n multi-line description")
    return "\n".join(lines) + "\n"


def dpkg_status(*stanzas: str) -> bytes:
    return "\n".join(stanzas).encode()


def apk_db(*packages: tuple[str, str, str]) -> bytes:
    blocks = [
        f"C:Q1abc=\nP:{name}\nV:{version}\nA:x86_64\nL:MIT\no:{origin}\n"
        for name, version, origin in packages
    ]
    return ("\n".join(blocks) + "\n").encode()


def python_metadata(name: str, version: str) -> bytes:
    headers = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nLicense: MIT\n"
    return (headers + "\nlong description\n").encode()


def package_json(name: str, version: str) -> bytes:
    return json.dumps({"name": name, "version": version, "license": "ISC"}).encode()


DEBIAN_OS_RELEASE = b'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n'
ALPINE_OS_RELEASE = b'NAME="Alpine Linux"\nID=alpine\nVERSION_ID=3.19.1\n'


def debian_app_layers() -> list[Layer]:
    """Debian 12 with dpkg packages; then Python and npm packages; then an upgrade and whiteouts."""
    base = {
        "etc/": None,
        "etc/os-release": DEBIAN_OS_RELEASE,
        "var/lib/dpkg/status": dpkg_status(
            dpkg_stanza("libssl3", "3.0.11-1~deb12u1", source="openssl"),
            dpkg_stanza("openssl", "3.0.11-1~deb12u1"),
            dpkg_stanza("zlib1g", "1:1.2.13.dfsg-1", source="zlib (1:1.2.13.dfsg-1)"),
            dpkg_stanza("oldpkg", "1.0-1", status="deinstall ok config-files"),
        ),
        "var/lib/dpkg/status.d/tzdata": dpkg_stanza("tzdata", "2024a-0+deb12u1").encode(),
    }
    apps = {
        "usr/lib/python3/dist-packages/requests-2.30.0.dist-info/METADATA": python_metadata(
            "requests", "2.30.0"
        ),
        "usr/lib/python3/dist-packages/Jinja2-3.1.2.egg-info/PKG-INFO": python_metadata("Jinja2", "3.1.2"),
        "usr/lib/python3/dist-packages/PyYAML-6.0.dist-info/METADATA": python_metadata("PyYAML", "6.0"),
        "app/node_modules/lodash/package.json": package_json("lodash", "4.17.20"),
        "app/node_modules/@babel/traverse/package.json": package_json("@babel/traverse", "7.23.0"),
        "app/node_modules/lodash/lib/package.json": package_json("not-a-package", "0.0.1"),
        "app/node_modules/left-pad/package.json": package_json("left-pad", "1.3.0"),
    }
    upgrade = {
        # openssl upgraded to the fix (status rewritten), PyYAML removed, left-pad's directory made opaque
        "var/lib/dpkg/status": dpkg_status(
            dpkg_stanza("libssl3", "3.0.13-1~deb12u1", source="openssl"),
            dpkg_stanza("openssl", "3.0.13-1~deb12u1"),
            dpkg_stanza("zlib1g", "1:1.2.13.dfsg-1", source="zlib (1:1.2.13.dfsg-1)"),
        ),
        "usr/lib/python3/dist-packages/.wh.PyYAML-6.0.dist-info": b"",
        "app/node_modules/left-pad/.wh..wh..opq": b"",
    }
    return [base, apps, upgrade]
