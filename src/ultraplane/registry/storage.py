"""Content-addressed filesystem storage.

Layout under the root:
  blobs/<alg>/<hh>/<hex>                                 content, written once, verified against its digest
  uploads/<id>/data, uploads/<id>/repository             an upload session's bytes so far and its repository
  repositories/<name>/_layers/<alg>/<hex>                 empty link: the blob belongs to the repository
  repositories/<name>/_manifests/revisions/<alg>/<hex>    link to a manifest blob; holds its media type
  repositories/<name>/_manifests/tags/<tag>               the digest the tag points at
  repositories/<name>/_referrers/<alg>/<hex>/<alg>-<hex>  descriptor JSON of a manifest whose subject is <hex>
  tmp/                                                     staging for atomic renames

Every file appears by rename from tmp/ (same filesystem), so a reader or a crash never sees half a file;
blobs are renamed into place only after their digest matched. All methods are synchronous and meant to run on
the event loop thread: each call is then atomic relative to the others, which is what keeps garbage
collection from racing a push (see `collect_garbage`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from ultraplane.registry.errors import RegistryError
from ultraplane.registry.names import new_hasher, parse_digest

log = logging.getLogger("ultraplane.registry.storage")

_UPLOAD_ID_CHARS = set("0123456789abcdef-")


@dataclass
class Upload:
    """An open upload session; the hasher follows the bytes so the final digest check needs no re-read."""

    id: str
    repository: str
    path: Path
    file: BinaryIO
    size: int
    hasher: Any
    algorithm: str = "sha256"
    started: float = field(default_factory=time.time)

    busy: bool = False  # a request is writing to this session

    def append(self, chunk: bytes | memoryview) -> None:
        self.file.write(chunk)
        self.hasher.update(chunk)
        self.size += len(chunk)

    def append_all(self, chunks: list[bytes]) -> None:
        """Write and hash a batch; runs in a worker thread (both release the GIL for large buffers), so a
        stalling disk holds up this upload only, not the event loop, and hashing can use another core."""
        for chunk in chunks:
            self.append(chunk)

    def sync(self, fsync: bool) -> None:
        self.file.flush()
        if fsync:
            os.fsync(self.file.fileno())


@dataclass
class GcReport:
    marked: int = 0
    deleted_blobs: int = 0
    deleted_bytes: int = 0
    kept_in_grace: int = 0
    purged_uploads: int = 0


class Storage:
    def __init__(self, root: Path, *, fsync: bool = False) -> None:
        self.root = root
        self.fsync = fsync
        for sub in ("blobs", "uploads", "repositories", "tmp"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self._uploads: dict[str, Upload] = {}
        # While a collection runs, every digest a push links or references lands here and is spared.
        self._gc_pins: set[str] | None = None

    # -- paths and atomic writes ------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        algorithm, encoded = parse_digest(digest)
        return self.root / "blobs" / algorithm / encoded[:2] / encoded

    def _repo(self, name: str) -> Path:
        return self.root / "repositories" / name

    def _layer_link(self, name: str, digest: str) -> Path:
        algorithm, encoded = parse_digest(digest)
        return self._repo(name) / "_layers" / algorithm / encoded

    def _revision(self, name: str, digest: str) -> Path:
        algorithm, encoded = parse_digest(digest)
        return self._repo(name) / "_manifests" / "revisions" / algorithm / encoded

    def _tag(self, name: str, tag: str) -> Path:
        return self._repo(name) / "_manifests" / "tags" / tag

    def _referrers_dir(self, name: str, subject: str) -> Path:
        algorithm, encoded = parse_digest(subject)
        return self._repo(name) / "_referrers" / algorithm / encoded

    def _write_atomic(self, path: Path, data: bytes) -> None:
        staging = self.root / "tmp" / uuid.uuid4().hex
        with open(staging, "wb") as f:
            f.write(data)
            if self.fsync:
                f.flush()
                os.fsync(f.fileno())
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, path)

    def _pin(self, digest: str) -> None:
        if self._gc_pins is not None:
            self._gc_pins.add(digest)

    # -- blobs ------------------------------------------------------------------------------------------------

    def blob_size(self, digest: str) -> int | None:
        try:
            return self.blob_path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def repo_blob_size(self, name: str, digest: str) -> int | None:
        """The blob's size if it is stored and linked to `name`, else None."""
        if not self._layer_link(name, digest).exists():
            return None
        return self.blob_size(digest)

    def link_blob(self, name: str, digest: str) -> None:
        self._pin(digest)
        link = self._layer_link(name, digest)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.touch()  # a fresh mtime starts the blob's garbage-collection grace period again

    def unlink_blob(self, name: str, digest: str) -> bool:
        try:
            self._layer_link(name, digest).unlink()
            return True
        except FileNotFoundError:
            return False

    def put_blob(self, digest: str, data: bytes) -> None:
        """Store small content already in memory (manifests), verifying its digest."""
        algorithm, encoded = parse_digest(digest)
        if _hex(algorithm, data) != encoded:
            raise RegistryError("DIGEST_INVALID", {"digest": digest})
        self._pin(digest)
        path = self.blob_path(digest)
        if path.exists():
            os.utime(path)
            return
        self._write_atomic(path, data)

    def open_blob(self, digest: str) -> BinaryIO:
        return open(self.blob_path(digest), "rb")

    # -- uploads ----------------------------------------------------------------------------------------------

    def upload_count(self) -> int:
        return len(self._uploads)

    def create_upload(self, name: str) -> Upload:
        upload_id = str(uuid.uuid4())
        directory = self.root / "uploads" / upload_id
        directory.mkdir()
        (directory / "repository").write_text(name)
        path = directory / "data"
        upload = Upload(upload_id, name, path, open(path, "wb"), 0, new_hasher("sha256"))
        self._uploads[upload_id] = upload
        return upload

    def get_upload(self, name: str, upload_id: str) -> Upload:
        """The open session `upload_id` of repository `name`; sessions survive a restart (re-hashed once)."""
        upload = self._uploads.get(upload_id)
        if upload is None and upload_id and set(upload_id) <= _UPLOAD_ID_CHARS and len(upload_id) == 36:
            directory = self.root / "uploads" / upload_id
            try:
                repository = (directory / "repository").read_text()
                hasher = new_hasher("sha256")
                size = 0
                with open(directory / "data", "rb") as f:
                    while chunk := f.read(1 << 20):
                        hasher.update(chunk)
                        size += len(chunk)
            except FileNotFoundError:
                upload = None
            else:
                path = directory / "data"
                upload = Upload(upload_id, repository, path, open(path, "ab"), size, hasher)
                self._uploads[upload_id] = upload
        if upload is None or upload.repository != name:
            raise RegistryError("BLOB_UPLOAD_UNKNOWN", {"uuid": upload_id})
        return upload

    def commit_upload(self, upload: Upload, digest: str, *, keep_on_mismatch: bool = False) -> int:
        """Verify the session's bytes against `digest` and move them into place; returns the size."""
        algorithm, encoded = parse_digest(digest)
        upload.file.flush()  # a no-op after `sync` in a thread, which callers on the event loop should await
        if algorithm == upload.algorithm:
            actual = upload.hasher.hexdigest()
        else:
            with open(upload.path, "rb") as f:
                actual = _hex_stream(algorithm, f)
        if actual != encoded:
            if not keep_on_mismatch:
                self.cancel_upload(upload)
            raise RegistryError("DIGEST_INVALID", {"digest": digest})
        if self.fsync:
            os.fsync(upload.file.fileno())  # cheap when `sync(fsync=True)` ran just before
        upload.file.close()
        self._pin(digest)
        path = self.blob_path(digest)
        if path.exists():
            os.utime(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(upload.path, path)
        self.link_blob(upload.repository, digest)
        self._uploads.pop(upload.id, None)
        shutil.rmtree(upload.path.parent, ignore_errors=True)
        return upload.size

    def cancel_upload(self, upload: Upload) -> None:
        upload.file.close()
        self._uploads.pop(upload.id, None)
        shutil.rmtree(upload.path.parent, ignore_errors=True)

    # -- manifests and tags -----------------------------------------------------------------------------------

    def put_manifest(self, name: str, digest: str, media_type: str, data: bytes, *, tag: str | None,
                     references: list[str], subject: str | None, descriptor: dict[str, Any]) -> None:
        """Store a validated manifest: blob, then revision link, then referrer entry, then tag, so that
        nothing ever points at something missing."""
        for referenced in references:
            self._pin(referenced)
        self.put_blob(digest, data)
        self._write_atomic(self._revision(name, digest), media_type.encode())
        if subject is not None:
            algorithm, encoded = parse_digest(digest)
            self._write_atomic(self._referrers_dir(name, subject) / f"{algorithm}-{encoded}",
                               orjson.dumps(descriptor))
        if tag is not None:
            self.put_tag(name, tag, digest)

    def put_tag(self, name: str, tag: str, digest: str) -> None:
        self._write_atomic(self._tag(name, tag), digest.encode())

    def resolve_tag(self, name: str, tag: str) -> str | None:
        try:
            return self._tag(name, tag).read_text()
        except FileNotFoundError:
            return None

    def manifest_media_type(self, name: str, digest: str) -> str | None:
        try:
            return self._revision(name, digest).read_text()
        except FileNotFoundError:
            return None

    def read_manifest(self, digest: str) -> bytes:
        return self.blob_path(digest).read_bytes()

    def delete_tag(self, name: str, tag: str) -> bool:
        try:
            self._tag(name, tag).unlink()
            return True
        except FileNotFoundError:
            return False

    def delete_manifest(self, name: str, digest: str) -> bool:
        """Remove the revision, every tag that points at it, and its entry in its subject's referrers."""
        revision = self._revision(name, digest)
        if not revision.exists():
            return False
        tags_dir = self._repo(name) / "_manifests" / "tags"
        for tag in _listdir(tags_dir):
            if self.resolve_tag(name, tag) == digest:
                self.delete_tag(name, tag)
        try:
            subject = (orjson.loads(self.read_manifest(digest)).get("subject") or {}).get("digest")
        except (FileNotFoundError, orjson.JSONDecodeError, AttributeError):
            subject = None
        if isinstance(subject, str):
            algorithm, encoded = parse_digest(digest)
            try:
                (self._referrers_dir(name, subject) / f"{algorithm}-{encoded}").unlink()
            except (FileNotFoundError, RegistryError):
                pass
        revision.unlink()
        return True

    def repository_exists(self, name: str) -> bool:
        repo = self._repo(name)
        return (repo / "_manifests").is_dir() or (repo / "_layers").is_dir()

    def tags(self, name: str) -> list[str]:
        return sorted(_listdir(self._repo(name) / "_manifests" / "tags"))

    def referrers(self, name: str, subject: str) -> list[dict[str, Any]]:
        directory = self._referrers_dir(name, subject)
        found = []
        for entry in sorted(_listdir(directory)):
            try:
                found.append(orjson.loads((directory / entry).read_bytes()))
            except (FileNotFoundError, orjson.JSONDecodeError):
                continue
        return found

    def repositories(self) -> list[str]:
        base = self.root / "repositories"
        names = []
        for directory, subdirs, _files in os.walk(base):
            if "_manifests" in subdirs:
                names.append(os.path.relpath(directory, base))
            subdirs[:] = [d for d in subdirs if not d.startswith("_")]
        return sorted(names)

    def catalog(self) -> list[str]:
        """Every repository holding manifests or blobs."""
        return sorted(self.repositories() + self._layer_only_repositories())

    # -- garbage collection -----------------------------------------------------------------------------------

    def _mark(self) -> set[str]:
        """Every digest a stored manifest revision is or references (config, layers, child manifests)."""
        marked: set[str] = set()
        base = self.root / "repositories"
        for name in self.repositories():
            revisions = base / name / "_manifests" / "revisions"
            for algorithm in _listdir(revisions):
                for encoded in _listdir(revisions / algorithm):
                    digest = f"{algorithm}:{encoded}"
                    marked.add(digest)
                    try:
                        manifest = orjson.loads(self.read_manifest(digest))
                    except (FileNotFoundError, orjson.JSONDecodeError):
                        continue
                    marked.update(_referenced_digests(manifest))
        return marked

    def _last_links(self) -> dict[str, tuple[float, list[Path]]]:
        """Each linked blob's newest link time over all repositories, and its link files."""
        newest: dict[str, tuple[float, list[Path]]] = {}
        base = self.root / "repositories"
        for name in self.repositories() + self._layer_only_repositories():
            layers = base / name / "_layers"
            for algorithm in _listdir(layers):
                for encoded in _listdir(layers / algorithm):
                    digest = f"{algorithm}:{encoded}"
                    link = layers / algorithm / encoded
                    try:
                        mtime = link.stat().st_mtime
                    except FileNotFoundError:
                        continue
                    previous, links = newest.get(digest, (0.0, []))
                    links.append(link)
                    newest[digest] = (max(previous, mtime), links)
        return newest

    def _layer_only_repositories(self) -> list[str]:
        base = self.root / "repositories"
        names = []
        for directory, subdirs, _files in os.walk(base):
            if "_layers" in subdirs and "_manifests" not in subdirs:
                names.append(os.path.relpath(directory, base))
            subdirs[:] = [d for d in subdirs if not d.startswith("_")]
        return names

    def _stored_blobs(self) -> Iterator[tuple[str, Path]]:
        base = self.root / "blobs"
        for algorithm in _listdir(base):
            for prefix in _listdir(base / algorithm):
                for encoded in _listdir(base / algorithm / prefix):
                    yield f"{algorithm}:{encoded}", base / algorithm / prefix / encoded

    async def collect_garbage(self, grace_seconds: float, *, upload_max_age: float = 86400.0) -> GcReport:
        """Delete blobs no manifest references.

        Never races a push: the mark runs in a thread while every digest a push links or references meanwhile
        is pinned; each blob's delete decision then runs on the event loop thread, where no push can interleave
        with it; and a blob pushed or linked within `grace_seconds` is spared, because its manifest may not be
        pushed yet.
        """
        report = GcReport()
        self._gc_pins = set()
        started = time.time()
        try:
            marked, last_links = await asyncio.to_thread(lambda: (self._mark(), self._last_links()))
            report.marked = len(marked)
            cutoff = started - grace_seconds
            candidates = [(d, p) for d, p in await asyncio.to_thread(lambda: list(self._stored_blobs()))
                          if d not in marked]
            for index, (digest, path) in enumerate(candidates):
                try:
                    stat = path.stat()
                except FileNotFoundError:
                    continue
                last_linked, links = last_links.get(digest, (0.0, []))
                if digest in self._gc_pins or stat.st_mtime > cutoff or last_linked > cutoff:
                    report.kept_in_grace += 1
                    continue
                path.unlink()
                for link in links:  # a relink since the scan would have pinned the digest: these are stale
                    with contextlib.suppress(FileNotFoundError):
                        link.unlink()
                report.deleted_blobs += 1
                report.deleted_bytes += stat.st_size
                if index % 256 == 255:
                    await asyncio.sleep(0)
            report.purged_uploads = self._purge_uploads(started - upload_max_age)
        finally:
            self._gc_pins = None
        log.info("garbage collection: %s", report)
        return report

    def _purge_uploads(self, cutoff: float) -> int:
        purged = 0
        for upload_id in _listdir(self.root / "uploads"):
            directory = self.root / "uploads" / upload_id
            try:
                if directory.stat().st_mtime > cutoff or (directory / "data").stat().st_mtime > cutoff:
                    continue
            except FileNotFoundError:
                pass
            upload = self._uploads.pop(upload_id, None)
            if upload is not None:
                upload.file.close()
            shutil.rmtree(directory, ignore_errors=True)
            purged += 1
        return purged


def _referenced_digests(manifest: Any) -> list[str]:
    if not isinstance(manifest, dict):
        return []
    found = []
    config = manifest.get("config")
    if isinstance(config, dict) and isinstance(config.get("digest"), str):
        found.append(config["digest"])
    for key in ("layers", "manifests", "blobs"):
        for entry in manifest.get(key) or []:
            if isinstance(entry, dict) and isinstance(entry.get("digest"), str):
                found.append(entry["digest"])
    return found


def _listdir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _hex(algorithm: str, data: bytes) -> str:
    hasher = new_hasher(algorithm)
    hasher.update(data)
    return hasher.hexdigest()


def _hex_stream(algorithm: str, f: BinaryIO) -> str:
    hasher = new_hasher(algorithm)
    while chunk := f.read(1 << 20):
        hasher.update(chunk)
    return hasher.hexdigest()
