"""Matching SBOM packages against OSV advisories.

Range evaluation follows the OSV schema's algorithm: events sorted by version (`introduced: "0"` first); a
version at or above an `introduced` is affected until a `fixed` at or below it, or a `last_affected` below
it; `limit` caps the range. Distro packages (dpkg, apk) match by their source package name, as Debian's and
Alpine's advisories are filed; an advisory for `Debian:12` matches only images whose os-release says 12,
one for plain `Debian` matches every release.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ultraplane.registry.scan import versions
from ultraplane.registry.scan.advisories import Advisory, Affected, Range, package_name_key
from ultraplane.registry.scan.sbom import Package, Sbom

_RATING_ORDER = {"UNKNOWN": 0, "NONE": 0, "LOW": 1, "MODERATE": 2, "MEDIUM": 2, "HIGH": 3, "CRITICAL": 4}


@dataclass(frozen=True)
class Finding:
    image_digest: str
    ecosystem: str
    package: str
    installed_version: str
    location: str
    layer: str
    advisory_id: str
    aliases: tuple[str, ...]
    severity: str  # LOW, MEDIUM, HIGH, CRITICAL (or the advisory's own label), UNKNOWN without data
    score: float | None  # CVSS base score, highest of the advisory's vectors
    fixed_version: str  # "" when no fix is known
    summary: str = ""

    @property
    def key(self) -> tuple[str, str, str, str, str]:
        return self.image_digest, self.advisory_id, self.package, self.installed_version, self.location


def _event_key(compare: Callable[[str, str], int]) -> Callable[[object], object]:
    def cmp(a: tuple[str, str], b: tuple[str, str]) -> int:
        if a[1] == b[1]:
            return 0
        if a[1] == "0" and a[0] == "introduced":
            return -1
        if b[1] == "0" and b[0] == "introduced":
            return 1
        return compare(a[1], b[1])

    return functools.cmp_to_key(cmp)  # type: ignore[arg-type]


def evaluate_range(version: str, range_: Range, compare: Callable[[str, str], int]) -> tuple[bool, str]:
    """(affected, fixed version) of `version` under one ECOSYSTEM or SEMVER range."""
    events = sorted(((e.kind, e.version) for e in range_.events), key=_event_key(compare))

    def at_or_above(bound: str) -> bool:
        return bound == "0" or compare(version, bound) >= 0

    for kind, bound in events:
        if kind == "limit" and at_or_above(bound):
            return False, ""
    affected = False
    fixed = ""
    for kind, bound in events:
        if kind == "introduced" and at_or_above(bound):
            affected, fixed = True, ""
        elif kind == "fixed":
            if at_or_above(bound):
                affected = False
            elif affected and not fixed:
                fixed = bound
        elif kind == "last_affected" and compare(version, bound) > 0:
            affected = False
    return affected, (fixed if affected else "")


def affected_by(version: str, affected: Affected) -> tuple[bool, str]:
    compare = versions.comparator(affected.ecosystem)
    for listed in affected.versions:
        try:
            if listed == version or compare(listed, version) == 0:
                return True, _fix_from_ranges(version, affected)
        except versions.VersionError:
            continue
    for range_ in affected.ranges:
        if range_.type == "GIT":
            continue  # commit ranges say nothing about packaged versions
        range_compare = versions.compare_semver if range_.type == "SEMVER" else compare
        hit, fixed = evaluate_range(version, range_, range_compare)
        if hit:
            return True, fixed
    return False, ""


def _fix_from_ranges(version: str, affected: Affected) -> str:
    for range_ in affected.ranges:
        if range_.type != "GIT":
            hit, fixed = evaluate_range(
                version,
                range_,
                versions.compare_semver
                if range_.type == "SEMVER"
                else versions.comparator(affected.ecosystem),
            )
            if hit and fixed:
                return fixed
    return ""


def _severity(advisory: Advisory, affected: Affected) -> tuple[str, float | None]:
    if advisory.severity:
        best = max(advisory.severity, key=lambda s: s.score)
        return best.rating.upper(), best.score
    label = (affected.severity or str(advisory.database_specific.get("severity", ""))).upper()
    return (label if label else "UNKNOWN"), None


def severity_rank(severity: str) -> int:
    return _RATING_ORDER.get(severity.upper(), 0)


class AdvisoryIndex:
    """Advisories by (base ecosystem, package name) for lookups per package."""

    def __init__(self, advisories: Iterable[Advisory]) -> None:
        self.advisories = list(advisories)
        self.by_package: dict[tuple[str, str], list[tuple[Advisory, Affected]]] = defaultdict(list)
        for advisory in self.advisories:
            for affected in advisory.affected:
                base = versions.base_ecosystem(affected.ecosystem)
                self.by_package[(base, affected.name)].append((advisory, affected))

    def candidates(self, ecosystem: str, name: str) -> list[tuple[Advisory, Affected]]:
        base = versions.base_ecosystem(ecosystem)
        found = self.by_package.get((base, package_name_key(ecosystem, name)), [])
        return [(a, f) for a, f in found if ":" not in f.ecosystem or f.ecosystem == ecosystem]


def _names(package: Package) -> list[str]:
    if package.kind in ("deb", "apk") and package.source and package.source != package.name:
        return [package.source, package.name]
    return [package.name]


def match_sbom(sbom: Sbom, index: AdvisoryIndex) -> list[Finding]:
    findings: dict[tuple[str, str, str, str, str], Finding] = {}
    for package in sbom.packages:
        ecosystem = sbom.ecosystem(package)
        for name in _names(package):
            for advisory, affected in index.candidates(ecosystem, name):
                try:
                    hit, fixed = affected_by(package.version, affected)
                except versions.VersionError:
                    continue  # an installed version its ecosystem cannot parse matches nothing
                if not hit:
                    continue
                severity, score = _severity(advisory, affected)
                finding = Finding(
                    sbom.image_digest,
                    ecosystem,
                    package.name,
                    package.version,
                    package.location,
                    package.layer,
                    advisory.id,
                    advisory.aliases,
                    severity,
                    score,
                    fixed,
                    advisory.summary,
                )
                findings.setdefault(finding.key, finding)
    return sorted(findings.values(), key=lambda f: (-severity_rank(f.severity), f.package, f.advisory_id))
