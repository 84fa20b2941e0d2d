"""Support status of Kubernetes releases, from the shipped release calendar (`data/kubernetes-releases.json`)."""

from __future__ import annotations

import datetime as dt
import functools
import json
from dataclasses import dataclass
from importlib import resources

from ultraplane.fleet.apilifecycle import parse_minor

WARN_BEFORE_DAYS = 90


@dataclass(frozen=True)
class Release:
    version: str
    released: dt.date
    end_of_life: dt.date


@functools.cache
def releases() -> tuple[Release, ...]:
    raw = json.loads(resources.files("ultraplane.fleet").joinpath("data/kubernetes-releases.json").read_text())
    return tuple(Release(r["version"], dt.date.fromisoformat(r["released"]), dt.date.fromisoformat(r["endOfLife"]))
                 for r in raw["releases"])


def release(version: str) -> Release | None:
    try:
        major, minor = parse_minor(version)
    except ValueError:
        return None
    return next((r for r in releases() if r.version == f"{major}.{minor}"), None)


def support_status(version: str, today: dt.date | None = None) -> str:
    """'Supported', 'Ending soon' (within 90 days of end of life), 'End of life', or 'Unknown'."""
    found = release(version)
    if found is None:
        return "Unknown"
    today = today or dt.date.today()
    if today > found.end_of_life:
        return "End of life"
    if (found.end_of_life - today).days <= WARN_BEFORE_DAYS:
        return "Ending soon"
    return "Supported"
