"""Which running images carry a vulnerability: the registry scanner's stored SBOMs (--sbom-store) matched
against OSV advisories (--advisories), joined with pods' imageIDs by digest."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from ultraplane.registry.scan import advisories
from ultraplane.registry.scan.errors import ScanError
from ultraplane.registry.scan.inventory import digest_from_image_id
from ultraplane.registry.scan.store import SbomStore, Scanner

Obj = dict[str, Any]
__all__ = ["CveIndex", "digest_from_image_id"]


class CveIndex:
    """The scanner over the SBOM store, rebuilt only when the store's or the advisories' files change (the
    registry scanner adds SBOMs while this server runs)."""

    def __init__(self, advisories_path: str, store_dir: str) -> None:
        self.advisories_path = Path(advisories_path)
        self.store_dir = Path(store_dir)
        self.scanner: Scanner | None = None
        self.seen: tuple[Any, ...] = ()
        self.lock = asyncio.Lock()

    def _state(self) -> tuple[Any, ...]:
        files = sorted(self.store_dir.glob("*.json")) if self.store_dir.is_dir() else []
        source = self.advisories_path.stat().st_mtime_ns if self.advisories_path.exists() else 0
        return (source, *((p.name, p.stat().st_mtime_ns) for p in files))

    def _load(self) -> Scanner:
        try:
            return Scanner(SbomStore(self.store_dir), advisories.load(self.advisories_path))
        except (ScanError, OSError) as exc:
            raise ValueError(f"cannot load the scan data: {exc}") from exc

    async def digests_with(self, vulnerability: str) -> tuple[dict[str, list[Obj]], int]:
        """Digest -> its findings for `vulnerability` (a CVE or advisory id), and how many images are scanned."""
        async with self.lock:
            state = await asyncio.to_thread(self._state)
            if self.scanner is None or state != self.seen:
                self.scanner = await asyncio.to_thread(self._load)
                self.seen = state
        hits = self.scanner.digests_with(vulnerability)
        return ({digest: [{"advisory": f.advisory_id, "aliases": list(f.aliases), "package": f.package,
                           "installedVersion": f.installed_version, "fixedVersion": f.fixed_version or None,
                           "severity": f.severity, "score": f.score, "layer": f.layer} for f in found]
                 for digest, found in hits.items()}, len(self.scanner.store))
