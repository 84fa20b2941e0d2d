"""Which Kubernetes API (group, version, kind) is served, deprecated or removed in which release.

The facts come from data, not from a hand-kept list: the OpenAPI schemas of every release that
`kubernetes-validate` ships (v1.25 onwards) say which kinds each release serves, so a kind served in
one release and missing from the next was removed there. Removals older than the oldest shipped
schema come from the published deprecation guide, kept as `data/deprecation-guide.json` with its
source named. Where both speak of the same removal they must agree (a test checks that).
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

Minor = tuple[int, int]  # (1, 33)
GVK = tuple[str, str, str]  # (group, version, kind); the core group is ""

# Kinds every group version carries for the wire protocol, not APIs anyone stores or calls by name.
_PROTOCOL_KINDS = {"DeleteOptions", "WatchEvent", "Status", "APIResourceList", "APIGroup", "APIGroupList",
                   "APIVersions"}
_VERSION = re.compile(r"^v(\d+)(?:(alpha|beta)(\d+))?$")


def parse_minor(text: str) -> Minor:
    """'1.33', 'v1.33.2' or 'v1.32.0-ultraplane' -> (1, 33)."""
    match = re.match(r"^v?(\d+)\.(\d+)", text.strip())
    if not match:
        raise ValueError(f"not a Kubernetes version: {text!r} (want e.g. 1.33)")
    return int(match.group(1)), int(match.group(2))


def format_minor(minor: Minor) -> str:
    return f"{minor[0]}.{minor[1]}"


def version_priority(version: str) -> tuple[int, int, int]:
    """Kubernetes' ordering of API versions: GA above beta above alpha, higher numbers first."""
    match = _VERSION.match(version)
    if not match:
        return (-1, 0, 0)
    major, stage, minor = int(match.group(1)), match.group(2), int(match.group(3) or 0)
    return ({None: 3, "beta": 2, "alpha": 1}[stage], major, minor)


def is_stable(version: str) -> bool:
    return version_priority(version)[0] == 3


def api_version(group: str, version: str) -> str:
    return f"{group}/{version}" if group else version


def split_api_version(text: str) -> tuple[str, str]:
    group, _, version = text.rpartition("/")
    return group, version


@dataclass(frozen=True)
class Removal:
    """A kind's version that stops being served in `removed_in`."""

    group: str
    version: str
    kind: str
    removed_in: Minor
    replacement: str  # apiVersion to move to, "" when there is none
    replacement_since: str  # release since which the replacement is served ("1.25 or earlier" when derived)
    source: str  # "deprecation-guide" or "schemas"
    note: str = ""

    @property
    def api_version(self) -> str:
        return api_version(self.group, self.version)


def _schema_root() -> Path:
    import kubernetes_validate

    return Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"


@functools.cache
def schema_releases() -> tuple[Minor, ...]:
    """The releases whose schemas are shipped, oldest first."""
    found = []
    for entry in _schema_root().iterdir():
        if entry.name.endswith("-local") and (entry / "_definitions.json").exists():
            found.append(parse_minor(entry.name))
    return tuple(sorted(found))


@functools.cache
def served_kinds(release: Minor) -> frozenset[GVK]:
    """Every (group, version, kind) the release's API server serves, from its OpenAPI definitions."""
    path = _schema_root() / f"v{release[0]}.{release[1]}.0-local" / "_definitions.json"
    if not path.exists():
        raise KeyError(f"no schemas shipped for Kubernetes {format_minor(release)}")
    definitions = json.loads(path.read_bytes())["$defs"]
    kinds: set[GVK] = set()
    for schema in definitions.values():
        for gvk in schema.get("x-kubernetes-group-version-kind") or ():
            kind = gvk["kind"]
            if kind in _PROTOCOL_KINDS or kind.endswith("List"):
                continue
            kinds.add((gvk["group"], gvk["version"], kind))
    return frozenset(kinds)


def _best_sibling(group: str, kind: str, release: Minor) -> str | None:
    """The apiVersion a user of (group, kind) should move to in `release`: its most stable served version."""
    versions = [v for g, v, k in served_kinds(release) if g == group and k == kind]
    if not versions:
        return None
    return api_version(group, max(versions, key=version_priority))


def _first_served(group: str, version: str, kind: str) -> str:
    releases = schema_releases()
    for release in releases:
        if (group, version, kind) in served_kinds(release):
            return format_minor(release) if release != releases[0] else f"{format_minor(release)} or earlier"
    return ""


@functools.cache
def guide_removals() -> tuple[Removal, ...]:
    raw = json.loads(resources.files("ultraplane.fleet").joinpath("data/deprecation-guide.json").read_text())
    return tuple(Removal(row["group"], row["version"], row["kind"], parse_minor(row["removedIn"]),
                         row["replacement"], row["replacementSince"], "deprecation-guide", row.get("note", ""))
                 for row in raw["removals"])


@functools.cache
def derived_removals() -> tuple[Removal, ...]:
    """Removals seen between consecutive shipped schema sets."""
    releases = schema_releases()
    found = []
    for before, after in zip(releases, releases[1:], strict=False):
        for group, version, kind in sorted(served_kinds(before) - served_kinds(after)):
            replacement = _best_sibling(group, kind, after) or ""
            since = _first_served(group, split_api_version(replacement)[1], kind) if replacement else ""
            found.append(Removal(group, version, kind, after, replacement, since, "schemas"))
    return tuple(found)


@functools.cache
def removals() -> dict[GVK, Removal]:
    """Every known removal; the guide's row wins where both know one (it names the intended replacement)."""
    table: dict[GVK, Removal] = {(r.group, r.version, r.kind): r for r in derived_removals()}
    for row in guide_removals():
        table[(row.group, row.version, row.kind)] = row
    return table


@dataclass(frozen=True)
class ApiStatus:
    """What happens to one apiVersion/kind at one release."""

    state: str  # "removed", "deprecated", "served", "unknown"
    removal: Removal | None = None
    preferred: str = ""  # the stable apiVersion to use instead, for a deprecated one


def status_at(group: str, version: str, kind: str, release: Minor) -> ApiStatus:
    """Removed (at or before `release`), deprecated (served, but a newer stable version exists or a later
    removal is known), served, or unknown (a kind the shipped schemas never mention, e.g. a CRD)."""
    removal = removals().get((group, version, kind))
    if removal and removal.removed_in <= release:
        return ApiStatus("removed", removal)
    releases = schema_releases()
    if release > releases[-1] or release < releases[0]:
        return ApiStatus("deprecated", removal) if removal else ApiStatus("unknown")
    if (group, version, kind) not in served_kinds(release):
        if removal:  # removed later than `release`, yet not served: an alpha that came and went
            return ApiStatus("deprecated", removal)
        served_before = any((group, version, kind) in served_kinds(r) for r in releases if r < release)
        return ApiStatus("removed" if served_before else "unknown")
    preferred = _best_sibling(group, kind, release) or ""
    if removal or (preferred and not is_stable(version) and is_stable(split_api_version(preferred)[1])):
        return ApiStatus("deprecated", removal, preferred)
    return ApiStatus("served")
