"""Real small images for the judges: gzip'd tar layers, an OCI config and manifest, in an OCI image layout."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tar_layer(files: dict[str, bytes]) -> tuple[bytes, bytes]:
    """(gzip'd tar, uncompressed tar) holding `files`."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, content in sorted(files.items()):
            info = tarfile.TarInfo(path)
            info.size = len(content)
            info.mtime = 1_700_000_000
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(content))
    uncompressed = raw.getvalue()
    return gzip.compress(uncompressed, mtime=0), uncompressed


@dataclass
class Image:
    manifest: bytes
    config: bytes
    layers: list[bytes]

    @property
    def digest(self) -> str:
        return sha256(self.manifest)

    def blobs(self) -> dict[str, bytes]:
        found = {sha256(self.config): self.config}
        found.update({sha256(layer): layer for layer in self.layers})
        return found


def build_image(layer_files: list[dict[str, bytes]], *, docker: bool = False) -> Image:
    compressed, diff_ids = [], []
    for files in layer_files:
        gz, raw = tar_layer(files)
        compressed.append(gz)
        diff_ids.append(sha256(raw))
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
        "config": {"Cmd": ["/bin/true"]}, "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }, sort_keys=True).encode()
    if docker:
        config_type = "application/vnd.docker.container.image.v1+json"
        layer_type = "application/vnd.docker.image.rootfs.diff.tar.gzip"
        manifest_type = "application/vnd.docker.distribution.manifest.v2+json"
    else:
        config_type = "application/vnd.oci.image.config.v1+json"
        layer_type = "application/vnd.oci.image.layer.v1.tar+gzip"
        manifest_type = "application/vnd.oci.image.manifest.v1+json"
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": manifest_type,
        "config": {"mediaType": config_type, "digest": sha256(config), "size": len(config)},
        "layers": [{"mediaType": layer_type, "digest": sha256(layer), "size": len(layer)} for layer in compressed],
    }, sort_keys=True).encode()
    return Image(manifest, config, compressed)


def image_index(images: dict[str, Image]) -> bytes:
    """An OCI image index of `images`, keyed by architecture."""
    return json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
        {"mediaType": json.loads(image.manifest)["mediaType"], "digest": image.digest, "size": len(image.manifest),
         "platform": {"architecture": arch, "os": "linux"}} for arch, image in images.items()]}).encode()


def write_oci_layout(directory: Path, images: dict[str, Image],
                     indexes: dict[str, tuple[bytes, list[Image]]] | None = None) -> Path:
    """An OCI image layout (what `skopeo copy oci:DIR:TAG` reads) holding `images` and `indexes` (the index
    document and its images) under their tags."""
    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    (directory / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    entries = []
    for tag, image in images.items():
        for digest, data in [*image.blobs().items(), (image.digest, image.manifest)]:
            (blobs / digest.split(":")[1]).write_bytes(data)
        entries.append({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": image.digest,
                        "size": len(image.manifest), "annotations": {"org.opencontainers.image.ref.name": tag}})
    for tag, (index, members) in (indexes or {}).items():
        for image in members:
            for digest, data in [*image.blobs().items(), (image.digest, image.manifest)]:
                (blobs / digest.split(":")[1]).write_bytes(data)
        (blobs / sha256(index)[7:]).write_bytes(index)
        entries.append({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": sha256(index),
                        "size": len(index), "annotations": {"org.opencontainers.image.ref.name": tag}})
    (directory / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": entries}))
    return directory
