"""OSV advisories (ossf.github.io/osv-schema): loading from a directory of JSON files or an OSV zip export
(one `<ID>.json` per advisory, as the per-ecosystem `all.zip`), validated up front.

A file set loads completely or not at all: an unknown ecosystem, a range without `introduced`, an event that
is not exactly one of introduced/fixed/last_affected/limit, a version the ecosystem cannot parse or a CVSS
vector that does not parse raises ScanError naming the file and advisory, and nothing is kept.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvss import CVSS2, CVSS3, CVSS4
from cvss.exceptions import CVSSError
from packaging.utils import canonicalize_name

from ultraplane.registry.scan import versions
from ultraplane.registry.scan.errors import ScanError

EVENT_KINDS = ("introduced", "fixed", "last_affected", "limit")
RANGE_TYPES = ("ECOSYSTEM", "SEMVER", "GIT")


@dataclass(frozen=True)
class Event:
    kind: str
    version: str


@dataclass(frozen=True)
class Range:
    type: str
    events: tuple[Event, ...]


@dataclass(frozen=True)
class Affected:
    ecosystem: str
    name: str
    ranges: tuple[Range, ...]
    versions: frozenset[str]
    severity: str = ""  # ecosystem_specific / database_specific severity label, if any


@dataclass(frozen=True)
class Severity:
    type: str  # CVSS_V2, CVSS_V3, CVSS_V4
    vector: str
    score: float
    rating: str  # None, Low, Medium, High, Critical


@dataclass
class Advisory:
    id: str
    aliases: tuple[str, ...]
    summary: str
    modified: str
    severity: tuple[Severity, ...]
    affected: tuple[Affected, ...]
    database_specific: dict[str, Any] = field(default_factory=dict)

    @property
    def cves(self) -> tuple[str, ...]:
        return tuple(a for a in (self.id, *self.aliases) if a.startswith("CVE-"))


def package_name_key(ecosystem: str, name: str) -> str:
    """Names as the ecosystem compares them: PyPI normalises (PEP 503), the others are exact."""
    return str(canonicalize_name(name)) if versions.base_ecosystem(ecosystem) == "PyPI" else name


def cvss_severity(kind: str, vector: str) -> Severity:
    try:
        if kind == "CVSS_V3":
            parsed3 = CVSS3(vector)
            return Severity(kind, vector, float(parsed3.base_score), parsed3.severities()[0])
        if kind == "CVSS_V4":
            parsed4 = CVSS4(vector)
            return Severity(kind, vector, float(parsed4.base_score), parsed4.severity)
        if kind == "CVSS_V2":
            parsed2 = CVSS2(vector)
            score = float(parsed2.base_score)
            rating = "Low" if score < 4 else "Medium" if score < 7 else "High"
            return Severity(kind, vector, score, rating)
    except (CVSSError, ValueError, KeyError) as exc:
        raise ScanError(f"invalid {kind} vector {vector!r}: {exc}") from None
    raise ScanError(f"unknown severity type {kind!r} (known: CVSS_V2, CVSS_V3, CVSS_V4)")


def _require(condition: bool, where: str, message: str) -> None:
    if not condition:
        raise ScanError(f"{where}: {message}")


def parse_advisory(data: Any, where: str) -> Advisory:
    _require(isinstance(data, dict), where, "advisory is not a JSON object")
    advisory_id = data.get("id")
    _require(isinstance(advisory_id, str) and bool(advisory_id), where, "advisory has no id")
    where = f"{where} ({advisory_id})"
    aliases = data.get("aliases") or []
    _require(
        isinstance(aliases, list) and all(isinstance(a, str) for a in aliases),
        where,
        "aliases is not a list of strings",
    )
    severities = []
    for entry in data.get("severity") or []:
        _require(isinstance(entry, dict) and isinstance(entry.get("score"), str), where, "bad severity entry")
        try:
            severities.append(cvss_severity(entry.get("type", ""), entry["score"]))
        except ScanError as exc:
            raise ScanError(f"{where}: {exc}") from None
    affected = []
    for item in data.get("affected") or []:
        _require(isinstance(item, dict), where, "affected entry is not an object")
        package = item.get("package") or {}
        ecosystem, name = package.get("ecosystem"), package.get("name")
        _require(
            isinstance(ecosystem, str) and isinstance(name, str) and bool(name),
            where,
            "affected package needs ecosystem and name",
        )
        _require(
            versions.known_ecosystem(ecosystem),
            where,
            f"unknown ecosystem {ecosystem!r} (known: Debian, Ubuntu, Alpine, PyPI, npm)",
        )
        compare = versions.comparator(ecosystem)
        ranges = []
        for raw_range in item.get("ranges") or []:
            ranges.append(_parse_range(raw_range, ecosystem, compare, f"{where} {ecosystem}/{name}"))
        listed = item.get("versions") or []
        _require(
            isinstance(listed, list) and all(isinstance(v, str) for v in listed),
            where,
            "versions is not a list of strings",
        )
        label = ""
        for extra in (item.get("ecosystem_specific"), item.get("database_specific")):
            if isinstance(extra, dict) and isinstance(extra.get("severity"), str):
                label = extra["severity"]
                break
        affected.append(
            Affected(ecosystem, package_name_key(ecosystem, name), tuple(ranges), frozenset(listed), label)
        )
    database_specific = data.get("database_specific")
    summary = data.get("summary") or data.get("details", "").split("\n")[0]
    return Advisory(
        advisory_id,
        tuple(aliases),
        str(summary)[:300],
        str(data.get("modified", "")),
        tuple(severities),
        tuple(affected),
        database_specific if isinstance(database_specific, dict) else {},
    )


def _parse_range(raw: Any, ecosystem: str, compare: Any, where: str) -> Range:
    _require(isinstance(raw, dict), where, "range is not an object")
    range_type = raw.get("type")
    _require(range_type in RANGE_TYPES, where, f"range type {range_type!r} is not ECOSYSTEM, SEMVER or GIT")
    events_raw = raw.get("events")
    _require(isinstance(events_raw, list) and bool(events_raw), where, "range has no events")
    events = []
    for event in events_raw:
        _require(
            isinstance(event, dict) and len(event) == 1,
            where,
            f"event {event!r} must have exactly one of {', '.join(EVENT_KINDS)}",
        )
        ((kind, version),) = event.items()
        _require(kind in EVENT_KINDS, where, f"unknown event {kind!r}")
        _require(isinstance(version, str) and bool(version), where, f"event {kind} has no version")
        if range_type != "GIT" and not (kind == "introduced" and version == "0"):
            try:
                (versions.compare_semver if range_type == "SEMVER" else compare)(version, version)
            except ScanError as exc:
                raise ScanError(f"{where}: {kind} {exc}") from None
        events.append(Event(kind, version))
    _require(any(e.kind == "introduced" for e in events), where, "range has no introduced event")
    fixes = [e for e in events if e.kind in ("fixed", "last_affected")]
    _require(
        not (any(e.kind == "fixed" for e in fixes) and any(e.kind == "last_affected" for e in fixes)),
        where,
        "range mixes fixed and last_affected",
    )
    return Range(range_type, tuple(events))


def _from_directory(root: Path) -> Iterator[tuple[str, bytes]]:
    for path in sorted(root.rglob("*.json")):
        yield str(path), path.read_bytes()


def _from_zip(path: Path) -> Iterator[tuple[str, bytes]]:
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.is_dir() and info.filename.endswith(".json"):
                    yield f"{path}!{info.filename}", archive.read(info)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ScanError(f"{path}: not a readable zip archive: {exc}") from None


def parse_files(files: Iterable[tuple[str, bytes]]) -> list[Advisory]:
    advisories: dict[str, Advisory] = {}
    for where, raw in files:
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise ScanError(f"{where}: invalid JSON: {exc}") from None
        # a file may hold one advisory or a list of them
        for item in data if isinstance(data, list) else [data]:
            advisory = parse_advisory(item, where)
            kept = advisories.get(advisory.id)
            if kept is None or advisory.modified >= kept.modified:
                advisories[advisory.id] = advisory
    return list(advisories.values())


def load(source: str | Path) -> list[Advisory]:
    """Every advisory from a directory of OSV JSON files (searched recursively) or an OSV zip export."""
    path = Path(source)
    if path.is_dir():
        return parse_files(_from_directory(path))
    if path.is_file():
        return parse_files(_from_zip(path))
    raise ScanError(f"{path}: no such advisories directory or zip file")
