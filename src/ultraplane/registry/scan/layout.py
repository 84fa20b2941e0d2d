"""Reading images: an OCI image layout directory (image-layout spec v1.0) or the registry's blob directory.

Every blob read is checked against its digest; a mismatch, a missing blob or a manifest that is not an image
manifest raises ScanError. Layers stream through gzip (or none) and tar one at a time, in constant memory.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from ultraplane.registry.scan.errors import ScanError

_DIGEST = re.compile(r"^(sha256|sha512):([a-f0-9]+)$")
_HEX_LENGTH = {"sha256": 64, "sha512": 128}
IMAGE_MANIFEST_TYPES = {
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
}
INDEX_TYPES = {
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
}
REF_NAME = "org.opencontainers.image.ref.name"


def split_digest(digest: str) -> tuple[str, str]:
    match = _DIGEST.match(digest)
    if match is None or len(match[2]) != _HEX_LENGTH[match[1]]:
        raise ScanError(f"invalid digest {digest!r}")
    return match[1], match[2]


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


class BlobSource(Protocol):
    def read(self, digest: str) -> bytes: ...

    def open_verified(self, digest: str) -> BinaryIO: ...


_CHUNK = 1 << 20


class _HashingReader(io.RawIOBase):
    """Hashes what passes through; a read error of the inner stream becomes a ScanError naming the layer."""

    def __init__(self, inner: BinaryIO, algorithm: str, failure: str) -> None:
        self.inner = inner
        self.hasher = hashlib.new(algorithm)
        self.algorithm = algorithm
        self.failure = failure

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self.inner.read(len(buffer))
        except (EOFError, OSError, zlib.error) as exc:
            raise ScanError(f"{self.failure}: {exc}") from None
        buffer[: len(data)] = data
        self.hasher.update(data)
        return len(data)

    def digest(self) -> str:
        return f"{self.algorithm}:{self.hasher.hexdigest()}"


class _DirectoryBlobs:
    """Blobs as files under a root; subclasses say where a digest lives."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, algorithm: str, hex_digest: str) -> Path:
        raise NotImplementedError

    def read(self, digest: str) -> bytes:
        algorithm, hex_digest = split_digest(digest)
        path = self.path(algorithm, hex_digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ScanError(f"blob {digest} not found under {self.root}") from None
        actual = digest_of(data, algorithm)
        if actual != digest:
            raise ScanError(f"blob {digest} does not match its digest: content hashes to {actual}")
        return data

    def open_verified(self, digest: str) -> BinaryIO:
        """The blob's file, positioned at its start, after one streaming pass proved its digest."""
        algorithm, hex_digest = split_digest(digest)
        try:
            handle = open(self.path(algorithm, hex_digest), "rb")  # noqa: SIM115 - the caller closes it
        except FileNotFoundError:
            raise ScanError(f"blob {digest} not found under {self.root}") from None
        hasher = hashlib.new(algorithm)
        while chunk := handle.read(_CHUNK):
            hasher.update(chunk)
        actual = f"{algorithm}:{hasher.hexdigest()}"
        if actual != digest:
            handle.close()
            raise ScanError(f"blob {digest} does not match its digest: content hashes to {actual}")
        handle.seek(0)
        return handle


class LayoutBlobs(_DirectoryBlobs):
    """An OCI image layout: blobs/<alg>/<hex>."""

    def path(self, algorithm: str, hex_digest: str) -> Path:
        return self.root / "blobs" / algorithm / hex_digest


class RegistryBlobs(_DirectoryBlobs):
    """The ultraplane registry's storage root: blobs/<alg>/<first two hex>/<hex>."""

    def path(self, algorithm: str, hex_digest: str) -> Path:
        return self.root / "blobs" / algorithm / hex_digest[:2] / hex_digest


@dataclass(frozen=True)
class LayerRef:
    digest: str
    media_type: str
    size: int


@dataclass
class Image:
    digest: str  # the manifest's digest: what pods report as imageID
    manifest: dict[str, Any]
    config: dict[str, Any]
    layers: list[LayerRef]
    source: BlobSource
    name: str = ""  # e.g. the layout's ref name, for display
    diff_ids: list[str] = field(default_factory=list)

    @contextlib.contextmanager
    def open_layer(self, index: int) -> Iterator[BinaryIO]:
        """The layer's uncompressed tar as a stream (constant memory, whatever the layer's size). The blob's
        digest is checked before; the uncompressed bytes are checked against the config's diff_id after the
        caller is done (the rest of the stream is read to the end for that)."""
        ref = self.layers[index]
        handle = self.source.open_verified(ref.digest)
        try:
            magic = handle.read(4)
            handle.seek(0)
            if magic == b"\x28\xb5\x2f\xfd":
                raise ScanError(f"layer {ref.digest}: zstd-compressed layers are not supported")
            compressed = magic[:2] == b"\x1f\x8b"
            inner: Any = gzip.GzipFile(fileobj=handle, mode="rb") if compressed else handle
            expected = self.diff_ids[index] if index < len(self.diff_ids) else ""
            algorithm = split_digest(expected)[0] if expected else "sha256"
            failure = (
                f"layer {ref.digest}: corrupt gzip stream"
                if compressed
                else f"layer {ref.digest}: read error"
            )
            hashing = _HashingReader(inner, algorithm, failure)
            stream = io.BufferedReader(hashing, 1 << 16)
            yield stream  # type: ignore[misc]
            while stream.read(_CHUNK):
                pass
            if expected and hashing.digest() != expected:
                raise ScanError(
                    f"layer {ref.digest}: uncompressed content hashes to {hashing.digest()}, "
                    f"config says diff_id {expected}"
                )
        finally:
            handle.close()


def _json_blob(source: BlobSource, digest: str, what: str) -> dict[str, Any]:
    data = source.read(digest)
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise ScanError(f"{what} {digest} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ScanError(f"{what} {digest} is not a JSON object")
    return value


def load_image(
    source: BlobSource, manifest_digest: str, name: str = "", platform: str = "linux/amd64"
) -> Image:
    """The image whose manifest (or index: the entry for `platform`, else the first) has this digest."""
    manifest = _json_blob(source, manifest_digest, "manifest")
    media_type = manifest.get("mediaType", "")
    if media_type in INDEX_TYPES or (not media_type and "manifests" in manifest):
        entries = [
            m for m in manifest.get("manifests") or [] if m.get("mediaType", "") in IMAGE_MANIFEST_TYPES
        ]
        if not entries:
            raise ScanError(f"index {manifest_digest} lists no image manifest")
        wanted_os, _, wanted_arch = platform.partition("/")
        chosen = next(
            (
                m
                for m in entries
                if (m.get("platform") or {}).get("os") == wanted_os
                and (m.get("platform") or {}).get("architecture") == wanted_arch
            ),
            entries[0],
        )
        return load_image(source, chosen["digest"], name, platform)
    if media_type and media_type not in IMAGE_MANIFEST_TYPES:
        raise ScanError(f"manifest {manifest_digest} has media type {media_type!r}, not an image manifest")
    config_ref = manifest.get("config")
    if not isinstance(config_ref, dict) or "digest" not in config_ref:
        raise ScanError(f"manifest {manifest_digest} has no config descriptor")
    config = _json_blob(source, config_ref["digest"], "config")
    layers: list[LayerRef] = []
    for layer in manifest.get("layers") or []:
        if not isinstance(layer, dict) or "digest" not in layer:
            raise ScanError(f"manifest {manifest_digest} has a layer without a digest")
        split_digest(layer["digest"])
        layers.append(LayerRef(layer["digest"], layer.get("mediaType", ""), int(layer.get("size", 0))))
    diff_ids = list((config.get("rootfs") or {}).get("diff_ids") or [])
    return Image(manifest_digest, manifest, config, layers, source, name, diff_ids)


def open_layout(directory: str | Path, ref: str | None = None, platform: str = "linux/amd64") -> Image:
    """The image in an OCI layout directory: the index entry named `ref`, else the only (first) one."""
    root = Path(directory)
    try:
        marker = json.loads((root / "oci-layout").read_bytes())
        index = json.loads((root / "index.json").read_bytes())
    except FileNotFoundError as exc:
        raise ScanError(f"{root} is not an OCI image layout: {Path(exc.filename).name} missing") from None
    except ValueError as exc:
        raise ScanError(f"{root}: invalid JSON in oci-layout or index.json: {exc}") from None
    if not isinstance(marker, dict) or "imageLayoutVersion" not in marker:
        raise ScanError(f"{root}/oci-layout has no imageLayoutVersion")
    entries = index.get("manifests") or [] if isinstance(index, dict) else []
    if not entries:
        raise ScanError(f"{root}/index.json lists no manifests")
    if ref is not None:
        entries = [m for m in entries if (m.get("annotations") or {}).get(REF_NAME) == ref]
        if not entries:
            raise ScanError(f"{root}: no manifest with ref name {ref!r}")
    entry = entries[0]
    name = (entry.get("annotations") or {}).get(REF_NAME, "") or root.name
    return load_image(LayoutBlobs(root), entry["digest"], name, platform)
