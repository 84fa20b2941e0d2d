"""kro's condition sets for RGDs and instances: dependents plus a root `Ready` that reports the most
unhealthy dependent (False before Unknown), sorted with the root last."""

from __future__ import annotations

import time
from typing import Any

Obj = dict[str, Any]


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def set_condition(conditions: list[Obj], kind: str, status: str, reason: str, message: str,
                  generation: int) -> list[Obj]:
    """kro's ConditionSet.Set: keep lastTransitionTime unless the status changes; the root (Ready) last."""
    previous = next((c for c in conditions if c.get("type") == kind), None)
    changed = previous is None or previous.get("status") != status
    condition = {"type": kind, "status": status, "reason": reason, "message": message,
                 "observedGeneration": generation,
                 "lastTransitionTime": now() if changed else previous.get("lastTransitionTime", now())}
    out = [c for c in conditions if c.get("type") != kind] + [condition]
    return sorted(out, key=lambda c: c.get("type") == "Ready")


def root_condition(conditions: list[Obj], dependents: list[str], generation: int) -> list[Obj]:
    unhealthy = [c for c in conditions if c.get("type") in dependents and c.get("status") != "True"]
    if not unhealthy:
        return set_condition(conditions, "Ready", "True", "Ready", "", generation)
    worst = next((c for c in unhealthy if c["status"] == "False"), unhealthy[0])
    return set_condition(conditions, "Ready", worst["status"], worst.get("reason", ""), worst.get("message", ""),
                         generation)


def same_status(old: Obj, new: Obj) -> bool:
    """Equal but for the conditions' lastTransitionTime: such a status write would change nothing."""
    def strip(status: Obj) -> Obj:
        return {**status, "conditions": [{k: v for k, v in c.items() if k != "lastTransitionTime"}
                                         for c in status.get("conditions") or []]}
    return strip(old) == strip(new)
