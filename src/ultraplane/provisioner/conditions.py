"""Status conditions as Karpenter's operatorpkg writes them, and durations in Go's syntax."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

Obj = dict[str, Any]
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> float | None:
    if not text:
        return None
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def parse_duration(text: str | None) -> float | None:
    """Seconds of a Go duration like 720h, 30s or 1h30m; None for "Never" or nothing."""
    if not text or text == "Never":
        return None
    total, pos = 0.0, 0
    for m in _DURATION_PART.finditer(text):
        if m.start() != pos:
            raise ValueError(f"bad duration {text!r}")
        pos = m.end()
        total += float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]
    if pos != len(text):
        raise ValueError(f"bad duration {text!r}")
    return total


def get(conditions: list[Obj] | None, kind: str) -> Obj | None:
    return next((c for c in conditions or [] if c.get("type") == kind), None)


def is_true(conditions: list[Obj] | None, kind: str) -> bool:
    cond = get(conditions, kind)
    return cond is not None and cond.get("status") == "True"


def set_condition(conditions: list[Obj], kind: str, status: str, reason: str = "", message: str = "",
                  generation: int | None = None) -> list[Obj]:
    """A copy of `conditions` with `kind` set; its transition time moves only when its status does."""
    out = [dict(c) for c in conditions if c.get("type") != kind]
    old = get(conditions, kind)
    stamp = old["lastTransitionTime"] if old and old.get("status") == status else now_rfc3339()
    cond: Obj = {"type": kind, "status": status, "lastTransitionTime": stamp,
                 "reason": reason or kind, "message": message}
    if generation is not None:
        cond["observedGeneration"] = generation
    out.append(cond)
    return sorted(out, key=lambda c: c["type"])


def same(a: list[Obj] | None, b: list[Obj] | None) -> bool:
    def norm(cs: list[Obj] | None) -> list[tuple[Any, ...]]:
        return sorted((c.get("type"), c.get("status"), c.get("reason"), c.get("message")) for c in cs or [])
    return norm(a) == norm(b)
