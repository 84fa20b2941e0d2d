"""The archive storage class: manifests and their blobs moved out of the serving store, gzip-compressed.

Layout under DATA_DIR/archive:
  blobs/<alg>/<hex>.gz                          compressed blob content, shared by every archived image using it
  images/<repository>/<alg>-<hex>.json          {"mediaType", "tags", "archivedAt", "manifest" (base64),
                                                 "blobs": [...], "referrers": [digest, ...]}
An archived manifest is gone from the repository (its revision, tags and referrer entry), so pulls answer the
spec's MANIFEST_UNKNOWN. Blobs no other stored manifest references lose their repository link and are
reclaimed by garbage collection; blobs still shared stay where they are (the archive holds a copy either way,
so a restore never depends on what happened to other images meanwhile). Referrers of an archived manifest
(signatures, SBOMs) and its cosign `sha256-<hex>.sig|.att|.sbom` tags go into the archive with it.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import os
import time
from pathlib import Path
from typing import Any

import orjson

from ultraplane.registry.manifests import parse_manifest
from ultraplane.registry.names import parse_digest
from ultraplane.registry.storage import Storage, _listdir, _referenced_digests

COSIGN_SUFFIXES = (".sig", ".att", ".sbom")


def cosign_tags(storage: Storage, name: str, digest: str) -> list[str]:
    """cosign's tag-based attachments of `digest` (signatures, attestations, SBOMs)."""
    algorithm, encoded = parse_digest(digest)
    stem = f"{algorithm}-{encoded}"
    return [tag for tag in storage.tags(name) if tag.startswith(stem) and tag.endswith(COSIGN_SUFFIXES)]


def attachments(storage: Storage, name: str, digest: str) -> list[str]:
    """Digests of manifests attached to `digest`: referrers and cosign tag attachments."""
    found = [d["digest"] for d in storage.referrers(name, digest) if isinstance(d.get("digest"), str)]
    for tag in cosign_tags(storage, name, digest):
        attached = storage.resolve_tag(name, tag)
        if attached is not None and attached not in found:
            found.append(attached)
    return found


def revisions(storage: Storage, name: str) -> list[str]:
    base = storage.root / "repositories" / name / "_manifests" / "revisions"
    return [f"{algorithm}:{encoded}" for algorithm in _listdir(base) for encoded in _listdir(base / algorithm)]


def revision_mtime(storage: Storage, name: str, digest: str) -> float:
    algorithm, encoded = parse_digest(digest)
    try:
        return (storage.root / "repositories" / name / "_manifests" / "revisions" / algorithm / encoded).stat().st_mtime
    except FileNotFoundError:
        return 0.0


def tags_by_digest(storage: Storage, name: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for tag in storage.tags(name):
        digest = storage.resolve_tag(name, tag)
        if digest is not None:
            found.setdefault(digest, []).append(tag)
    return found


def references_elsewhere(storage: Storage, excluded: set[tuple[str, str]]) -> set[str]:
    """Every digest referenced by a stored manifest other than the (repository, digest) pairs in `excluded`."""
    referenced: set[str] = set()
    for name in storage.repositories():
        for digest in revisions(storage, name):
            if (name, digest) in excluded:
                continue
            try:
                referenced.update(_referenced_digests(orjson.loads(storage.read_manifest(digest))))
            except (FileNotFoundError, orjson.JSONDecodeError):
                continue
    return referenced


class Archive:
    def __init__(self, root: Path, storage: Storage) -> None:
        self.root = root
        self.storage = storage
        (root / "blobs").mkdir(parents=True, exist_ok=True)
        (root / "images").mkdir(parents=True, exist_ok=True)
        self.restores: dict[tuple[str, str], dict[str, Any]] = {}

    def _entry(self, name: str, digest: str) -> Path:
        algorithm, encoded = parse_digest(digest)
        return self.root / "images" / name / f"{algorithm}-{encoded}.json"

    def _blob(self, digest: str) -> Path:
        algorithm, encoded = parse_digest(digest)
        return self.root / "blobs" / algorithm / f"{encoded}.gz"

    def is_archived(self, name: str, digest: str) -> bool:
        return self._entry(name, digest).exists()

    def archived(self, name: str) -> list[dict[str, Any]]:
        directory = self.root / "images" / name
        listed = []
        for entry in sorted(_listdir(directory)):
            if entry.endswith(".json"):
                meta = orjson.loads((directory / entry).read_bytes())
                listed.append({"digest": meta["digest"], "tags": meta["tags"], "archivedAt": meta["archivedAt"],
                               "referrers": meta["referrers"]})
        return listed

    async def archive(self, name: str, digest: str) -> list[str]:
        """Move `digest` and its attachments into the archive; returns every digest archived."""
        group = self._closure(name, digest)
        tags = tags_by_digest(self.storage, name)
        for member in group:
            await self._archive_one(name, member, tags.get(member, []),
                                    [d for d in attachments(self.storage, name, member) if d in group])
        # Computed on the event loop thread right before the removal, so no push can slip in between and
        # reference a blob whose repository link is then dropped.
        shared = references_elsewhere(self.storage, {(name, member) for member in group})
        for member in reversed(group):  # attachments first: the subject stays until nothing points at it
            self._remove(name, member, shared)
        return group

    def _closure(self, name: str, digest: str) -> list[str]:
        group = [digest]
        for member in group:
            for attached in attachments(self.storage, name, member):
                if attached not in group:
                    group.append(attached)
        return group

    async def _archive_one(self, name: str, digest: str, tags: list[str], referrers: list[str]) -> None:
        data = self.storage.read_manifest(digest)
        media_type = self.storage.manifest_media_type(name, digest)
        blobs = _referenced_digests(orjson.loads(data))
        blobs = [blob for blob in dict.fromkeys(blobs) if self.storage.blob_size(blob) is not None
                 and self.storage.manifest_media_type(name, blob) is None]
        await asyncio.to_thread(self._copy_blobs, blobs)
        meta = {"repository": name, "digest": digest, "mediaType": media_type, "tags": tags,
                "archivedAt": time.time(), "manifest": base64.b64encode(data).decode(), "blobs": blobs,
                "referrers": referrers}
        entry = self._entry(name, digest)
        entry.parent.mkdir(parents=True, exist_ok=True)
        staging = entry.with_suffix(".tmp")
        staging.write_bytes(orjson.dumps(meta))
        os.replace(staging, entry)

    def _copy_blobs(self, blobs: list[str]) -> None:
        for blob in blobs:
            target = self._blob(blob)
            if target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = target.with_suffix(".tmp")
            with self.storage.open_blob(blob) as source, gzip.open(staging, "wb", compresslevel=6) as sink:
                while chunk := source.read(1 << 20):
                    sink.write(chunk)
            os.replace(staging, target)

    def _remove(self, name: str, digest: str, shared: set[str]) -> None:
        data = self.storage.read_manifest(digest)
        self.storage.delete_manifest(name, digest)
        for blob in _referenced_digests(orjson.loads(data)):
            if blob not in shared:
                self.storage.unlink_blob(name, blob)

    def expire(self, name: str, digest: str) -> list[str]:
        """Delete `digest` and its attachments from the repository (blobs go to garbage collection)."""
        group = self._closure(name, digest)
        for member in reversed(group):
            self.storage.delete_manifest(name, member)
        return group

    def restore_status(self, name: str, digest: str) -> dict[str, Any] | None:
        status = self.restores.get((name, digest))
        if status is None and self.is_archived(name, digest):
            return {"repository": name, "digest": digest, "status": "archived"}
        return status

    def start_restore(self, name: str, digest: str) -> dict[str, Any]:
        status = {"repository": name, "digest": digest, "status": "in progress", "startedAt": time.time()}
        self.restores[(name, digest)] = status
        return status

    async def restore(self, name: str, digest: str) -> list[str]:
        """Bring `digest` and its archived attachments back; returns every digest restored."""
        status = self.restores.get((name, digest)) or self.start_restore(name, digest)
        try:
            restored = await self._restore_one(name, digest)
            status.update(status="complete", completedAt=time.time(), restored=restored)
            return restored
        except Exception as exc:
            status.update(status="failed", error=str(exc))
            raise

    async def _restore_one(self, name: str, digest: str) -> list[str]:
        entry = self._entry(name, digest)
        meta = orjson.loads(entry.read_bytes())
        for blob in meta["blobs"]:
            if self.storage.blob_size(blob) is None:
                content = await asyncio.to_thread(lambda b=blob: gzip.decompress(self._blob(b).read_bytes()))
                self.storage.put_blob(blob, content)  # verifies the digest
            self.storage.link_blob(name, blob)
        data = base64.b64decode(meta["manifest"])
        parsed = parse_manifest(meta["mediaType"], data)
        tags = meta["tags"]
        self.storage.put_manifest(name, digest, parsed.media_type, data, tag=tags[0] if tags else None,
                                  references=parsed.blobs + parsed.manifests, subject=parsed.subject,
                                  descriptor=parsed.descriptor(digest, len(data)))
        for tag in tags[1:]:
            self.storage.put_tag(name, tag, digest)
        entry.unlink()
        restored = [digest]
        for attached in meta["referrers"]:
            if self.is_archived(name, attached):
                restored += await self._restore_one(name, attached)
        return restored
