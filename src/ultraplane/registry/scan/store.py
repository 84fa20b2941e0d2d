"""SBOMs kept per image digest, and findings recomputed from them when the advisories change.

`SbomStore` keeps each SBOM in memory and, with a directory, as `<alg>-<hex>.json` written by rename so a
crash never leaves half a file. `Scanner` holds the current advisory set and the findings per digest;
`update_advisories` re-matches every stored SBOM (no layer is read again) and returns what changed.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ultraplane.registry.scan.advisories import Advisory
from ultraplane.registry.scan.errors import ScanError
from ultraplane.registry.scan.layout import Image, split_digest
from ultraplane.registry.scan.matcher import AdvisoryIndex, Finding, match_sbom
from ultraplane.registry.scan.sbom import Sbom, build_sbom


class SbomStore:
    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.sboms: dict[str, Sbom] = {}
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            for path in sorted(self.directory.glob("*.json")):
                try:
                    sbom = Sbom.from_dict(json.loads(path.read_bytes()))
                except (ValueError, KeyError, TypeError) as exc:
                    raise ScanError(f"{path}: unreadable stored SBOM: {exc}") from None
                self.sboms[sbom.image_digest] = sbom

    def put(self, sbom: Sbom) -> None:
        algorithm, hex_digest = split_digest(sbom.image_digest)
        if self.directory is not None:
            data = json.dumps(sbom.to_dict(), separators=(",", ":")).encode()
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                os.replace(tmp, self.directory / f"{algorithm}-{hex_digest}.json")
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        self.sboms[sbom.image_digest] = sbom

    def get(self, digest: str) -> Sbom | None:
        return self.sboms.get(digest)

    def __contains__(self, digest: object) -> bool:
        return digest in self.sboms

    def __len__(self) -> int:
        return len(self.sboms)


@dataclass
class FindingsChange:
    added: list[Finding] = field(default_factory=list)
    removed: list[Finding] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed)


class Scanner:
    def __init__(self, store: SbomStore | None = None, advisories: Iterable[Advisory] = ()) -> None:
        self.store = store if store is not None else SbomStore()
        self.index = AdvisoryIndex(advisories)
        self.findings: dict[str, list[Finding]] = {}
        self.sbom_builds = 0  # how many times layers were read: a rescan must not add to it
        for digest, sbom in self.store.sboms.items():
            self.findings[digest] = match_sbom(sbom, self.index)

    def scan(self, image: Image) -> list[Finding]:
        """SBOM (built once per digest, then taken from the store) matched against the current advisories."""
        sbom = self.store.get(image.digest)
        if sbom is None:
            sbom = build_sbom(image)  # raises before anything is stored
            self.sbom_builds += 1
            self.store.put(sbom)
        found = match_sbom(sbom, self.index)
        self.findings[image.digest] = found
        return found

    def update_advisories(self, advisories: Iterable[Advisory]) -> dict[str, FindingsChange]:
        """Swap in a new advisory set and re-match every stored SBOM; returns the change per digest (only
        digests whose findings changed)."""
        index = AdvisoryIndex(advisories)
        fresh = {digest: match_sbom(sbom, index) for digest, sbom in self.store.sboms.items()}
        changes: dict[str, FindingsChange] = {}
        for digest, now in fresh.items():
            before = {f.key: f for f in self.findings.get(digest, [])}
            after = {f.key: f for f in now}
            change = FindingsChange(
                [f for k, f in after.items() if k not in before],
                [f for k, f in before.items() if k not in after],
            )
            if change:
                changes[digest] = change
        self.index, self.findings = index, fresh
        return changes

    def digests_with(self, vulnerability: str) -> dict[str, list[Finding]]:
        """Digests with a finding whose advisory id or an alias is `vulnerability` (e.g. a CVE id)."""
        result: dict[str, list[Finding]] = {}
        for digest, found in self.findings.items():
            hits = [f for f in found if f.advisory_id == vulnerability or vulnerability in f.aliases]
            if hits:
                result[digest] = hits
        return result
