"""Breaking changes between a generated CRD's served schema and the one an RGD update would apply.

kro refuses such an update unless the RGD carries `kro.run/allow-breaking-changes: "true"`: a removed
property, a changed type, a newly required field, a removed enum value, an added or changed pattern,
and tightened bounds (minimum/maximum, lengths, item counts) would invalidate existing instances.
Descriptions follow kro's compat report ("Property replicas was removed; Type changed from integer to
string"), the first three and a count of the rest.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]
SUMMARY_LIMIT = 3
_TIGHTER = (("minimum", 1, "Minimum"), ("maximum", -1, "Maximum"), ("minLength", 1, "MinLength"),
            ("maxLength", -1, "MaxLength"), ("minItems", 1, "MinItems"), ("maxItems", -1, "MaxItems"))


def breaking_changes(old: Schema | None, new: Schema | None, path: str = "") -> list[str]:
    if not old or not new:
        return []
    changes: list[str] = []
    if old.get("type") != new.get("type"):
        return [f"Type changed from {old.get('type')} to {new.get('type')}"]
    old_props, new_props = old.get("properties") or {}, new.get("properties") or {}
    for name, schema in old_props.items():
        if name not in new_props:
            changes.append(f"Property {name} was removed")
        else:
            changes.extend(breaking_changes(schema, new_props[name], f"{path}.{name}"))
    for name in sorted(set(new.get("required") or []) - set(old.get("required") or [])):
        changes.append(f"Field {name} is newly required")
    if old.get("enum") is not None:
        for value in old["enum"]:
            if value not in (new.get("enum") or old["enum"]):
                changes.append(f"Enum value {value} was removed")
    elif new.get("enum") is not None:
        changes.append(f"Enum restriction {new['enum']} was added")
    if new.get("pattern") and not old.get("pattern"):
        changes.append(f"Validation pattern {new['pattern']} was added")
    elif new.get("pattern") and new["pattern"] != old.get("pattern"):
        changes.append(f"Validation pattern changed from {old['pattern']} to {new['pattern']}")
    for key, direction, label in _TIGHTER:
        before, after = old.get(key), new.get(key)
        if after is not None and before is None:
            changes.append(f"{label} constraint {after} was added")
        elif after is not None and (after - before) * direction > 0:
            changes.append(f"{label} constraint changed from {before} to {after}")
    for key in ("items", "additionalProperties"):
        if isinstance(old.get(key), dict) and isinstance(new.get(key), dict):
            changes.extend(breaking_changes(old[key], new[key], f"{path}[*]"))
    return changes


def crd_breaking_changes(old_crd: Schema, new_crd: Schema) -> list[str]:
    old_versions = (old_crd.get("spec") or {}).get("versions") or []
    new_versions = (new_crd.get("spec") or {}).get("versions") or []
    if len(old_versions) != 1 or len(new_versions) != 1:
        return []
    if old_versions[0].get("name") != new_versions[0].get("name"):
        return [f"Type changed from {old_versions[0].get('name')} to {new_versions[0].get('name')}"]
    schema = lambda v: ((v.get("schema") or {}).get("openAPIV3Schema") or {})  # noqa: E731
    return breaking_changes(schema(old_versions[0]), schema(new_versions[0]))


def summary(changes: list[str]) -> str:
    shown = changes[:SUMMARY_LIMIT]
    if len(changes) > SUMMARY_LIMIT:
        shown.append(f"and {len(changes) - SUMMARY_LIMIT} more changes")
    return "; ".join(shown)
