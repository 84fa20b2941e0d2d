"""What the tools hand back: redacted objects, compact rows, and output cut to the size limit with a note."""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson

Obj = dict[str, Any]
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
MIN_STRING = 200  # strings are never cut below this when shrinking an oversized answer


def dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()


# ------------------------------------------------------------------------------------------------ redaction
def redact_secret(secret: Obj) -> Obj:
    """A Secret with its values replaced by their sizes (keys stay: they are names, not data)."""
    out = dict(secret)
    for field in ("data", "stringData"):
        if isinstance(out.get(field), dict):
            out[field] = {k: f"<redacted: {len(str(v or ''))} characters>" for k, v in out[field].items()}
    meta = dict(out.get("metadata") or {})
    annotations = dict(meta.get("annotations") or {})
    if LAST_APPLIED in annotations:  # kubectl apply keeps the whole manifest, values included, here
        annotations[LAST_APPLIED] = "<redacted>"
        meta["annotations"] = annotations
        out["metadata"] = meta
    out.pop("managedFields", None)
    return out


def redact(obj: Obj, is_secret: bool) -> Obj:
    """An object or a list of them; `is_secret` says the resource type is Secrets (list items carry no kind)."""
    if not is_secret and obj.get("kind") != "Secret":
        return obj
    if isinstance(obj.get("items"), list):
        return {**obj, "items": [redact_secret(i) for i in obj["items"]]}
    return redact_secret(obj)


def strip_noise(obj: Obj) -> Obj:
    """managedFields are bookkeeping, large and of no use for troubleshooting."""
    meta = obj.get("metadata")
    if isinstance(meta, dict) and "managedFields" in meta:
        obj = {**obj, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}
    return obj


# ------------------------------------------------------------------------------------------------ rows
def parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def age(value: str | None, now: dt.datetime | None = None) -> str:
    """kubectl's short age: 45s, 3m, 2h, 5d."""
    stamp = parse_time(value)
    if stamp is None:
        return "<unknown>"
    seconds = int(((now or dt.datetime.now(dt.UTC)) - stamp).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size or (unit == "m" and seconds >= size):
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def status_of(obj: Obj) -> str:
    """One word or two of what state the object is in, for listings."""
    status = obj.get("status") or {}
    kind = obj.get("kind", "")
    if kind == "Pod" or "containerStatuses" in status:
        meta = obj.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            return "Terminating"
        for c in status.get("containerStatuses") or []:
            state = c.get("state") or {}
            if "waiting" in state and state["waiting"].get("reason") not in (None, "ContainerCreating"):
                return state["waiting"]["reason"]
            if "terminated" in state and state["terminated"].get("exitCode"):
                return state["terminated"].get("reason") or "Error"
        return status.get("phase", "Unknown")
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    if "Ready" in conditions and kind in ("Node", ""):
        return "Ready" if conditions["Ready"] == "True" else "NotReady"
    if "replicas" in (obj.get("spec") or {}):
        return f"{status.get('readyReplicas', 0)}/{obj['spec'].get('replicas', 0)} ready"
    if status.get("phase"):
        return str(status["phase"])
    true = [t for t, s in conditions.items() if s == "True"]
    return ",".join(true)


def row(obj: Obj) -> Obj:
    meta = obj.get("metadata") or {}
    out: Obj = {"name": meta.get("name")}
    if meta.get("namespace"):
        out["namespace"] = meta["namespace"]
    out["age"] = age(meta.get("creationTimestamp"))
    state = status_of(obj)
    if state:
        out["status"] = state
    node = (obj.get("spec") or {}).get("nodeName")
    if node:
        out["node"] = node
    return out


# ------------------------------------------------------------------------------------------------ size limits
def fit(value: Any, max_chars: int) -> str:
    """`value` as JSON within `max_chars`: list items dropped from the end, then the longest strings cut, each
    time with a `truncated` note saying what was left out and how to get the rest."""
    text = dumps(value)
    if len(text) <= max_chars:
        return text
    if isinstance(value, dict) and isinstance(value.get("items"), list) and value["items"]:
        items = value["items"]
        low, high = 0, len(items)
        while low < high:  # the most items that fit, leaving room for the note
            mid = (low + high + 1) // 2
            if len(dumps({**value, "items": items[:mid]})) <= max_chars - 400:
                low = mid
            else:
                high = mid - 1
        if low > 0:
            return dumps({**value, "items": items[:low], "truncated": (
                f"only the first {low} of {len(items)} items fit the {max_chars}-character output limit; "
                f"ask again with limit={low} and the continue token, or a narrower selector")})
    shrunk, cut = _shrink_strings(value, max_chars)
    note = (f"{cut} long string value(s) were shortened to fit the {max_chars}-character output limit; "
            "ask for a narrower part (a field, fewer lines, a smaller limit)")
    result = {"truncated": note, "value": shrunk}
    text = dumps(result)
    if len(text) <= max_chars:
        return text
    return text[: max_chars - 200] + f"\n... [output truncated at {max_chars} characters of {len(text)}]"


def _shrink_strings(value: Any, max_chars: int) -> tuple[Any, int]:
    cut = 0
    current = orjson.loads(orjson.dumps(value))
    for _ in range(64):
        if len(dumps(current)) <= max_chars - 400:
            break
        longest = _longest_string(current)
        if longest is None:
            break
        container, key, text = longest
        keep = max(MIN_STRING, len(text) // 2)
        container[key] = text[:keep] + f"... [{len(text) - keep} characters truncated]"
        cut += 1
    return current, cut


def _longest_string(value: Any) -> tuple[Any, Any, str] | None:
    best: tuple[Any, Any, str] | None = None
    stack = [value]
    while stack:
        node = stack.pop()
        pairs = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, child in pairs:
            if isinstance(child, str):
                if len(child) > MIN_STRING + 40 and (best is None or len(child) > len(best[2])):
                    best = (node, key, child)
            elif isinstance(child, dict | list):
                stack.append(child)
    return best


def tail_text(text: str, max_chars: int) -> str:
    """Log text within `max_chars`, keeping the newest lines, with a note on top when lines were left out."""
    if len(text) <= max_chars:
        return text
    lines = text.splitlines()
    kept: list[str] = []
    size = 200
    for line in reversed(lines):
        if size + len(line) + 1 > max_chars:
            break
        kept.append(line)
        size += len(line) + 1
    kept.reverse()
    return (f"[truncated: the last {len(kept)} of {len(lines)} lines fit the {max_chars}-character output limit; "
            f"use tail_lines to choose how many]\n" + "\n".join(kept))
