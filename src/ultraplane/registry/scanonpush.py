"""Scan on push: each pushed image gets its SBOM (SPDX) attached as a referrer, and findings when advisories load.

The push has already answered when the scan starts: the layers are read in a worker thread (an SBOM of a
large image takes seconds), and only the small referrer writes come back to the event loop. A failed scan
(an image whose layers are not tar, say) is logged and never touches what was pushed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import orjson

from ultraplane.registry.manifests import parse_manifest
from ultraplane.registry.names import parse_digest
from ultraplane.registry.scan.advisories import load as load_advisories
from ultraplane.registry.scan.errors import ScanError
from ultraplane.registry.scan.export import SPDX_MEDIA_TYPE, referrer_artifact, to_spdx
from ultraplane.registry.scan.layout import RegistryBlobs, load_image
from ultraplane.registry.scan.matcher import AdvisoryIndex, Finding, match_sbom
from ultraplane.registry.scan.sbom import Sbom, build_sbom
from ultraplane.registry.storage import Storage

log = logging.getLogger("ultraplane.registry.scan")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


class PushScanner:
    def __init__(self, storage: Storage, state_dir: Path, advisories: str | Path | None = None) -> None:
        self.storage = storage
        self.findings_dir = state_dir / "findings"
        self.findings_dir.mkdir(parents=True, exist_ok=True)
        self.index = AdvisoryIndex(load_advisories(advisories)) if advisories else None
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, name: str, digest: str, media_type: str) -> None:
        """Start the scan of a just-pushed image in the background."""
        task = asyncio.ensure_future(self._scan(name, digest, media_type))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _scan(self, name: str, digest: str, media_type: str) -> None:
        try:
            sbom = await asyncio.to_thread(self._build, name, digest)
            findings = match_sbom(sbom, self.index) if self.index is not None else None
            size = self.storage.blob_size(digest) or 0
            artifact = referrer_artifact(to_spdx(sbom), SPDX_MEDIA_TYPE,
                                         {"mediaType": media_type, "digest": digest, "size": size})
            for blob_digest, content in artifact.blobs.items():
                self.storage.put_blob(blob_digest, content)
                self.storage.link_blob(name, blob_digest)
            parsed = parse_manifest(OCI_MANIFEST, artifact.manifest)
            self.storage.put_manifest(name, artifact.manifest_digest, parsed.media_type, artifact.manifest,
                                      tag=None, references=parsed.blobs + parsed.manifests, subject=parsed.subject,
                                      descriptor=parsed.descriptor(artifact.manifest_digest, len(artifact.manifest)))
            if findings is not None:
                self._save_findings(name, digest, findings)
            log.info("scanned %s@%s: %d packages, SBOM referrer %s", name, digest, len(sbom.packages),
                     artifact.manifest_digest)
        except (ScanError, OSError, ValueError) as exc:
            log.warning("cannot scan %s@%s: %s", name, digest, exc)
        except Exception:
            log.exception("scan of %s@%s failed", name, digest)

    def _build(self, name: str, digest: str) -> Sbom:
        return build_sbom(load_image(RegistryBlobs(self.storage.root), digest, name))

    def _path(self, digest: str) -> Path:
        algorithm, encoded = parse_digest(digest)
        return self.findings_dir / f"{algorithm}-{encoded}.json"

    def _save_findings(self, name: str, digest: str, findings: list[Finding]) -> None:
        document = {"repository": name, "digest": digest, "findings": [dataclasses.asdict(f) for f in findings]}
        staging = self._path(digest).with_suffix(".tmp")
        staging.write_bytes(orjson.dumps(document))
        os.replace(staging, self._path(digest))

    def findings(self, digest: str) -> dict[str, Any] | None:
        """The stored findings of `digest`, or None when it was not scanned (yet) against advisories."""
        try:
            return orjson.loads(self._path(digest).read_bytes())  # type: ignore[no-any-return]
        except FileNotFoundError:
            return None

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
