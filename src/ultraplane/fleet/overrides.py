"""Karmada's OverridePolicy and ClusterOverridePolicy, without I/O: the per-cluster copy of a resource template.

Order as Karmada applies them: ClusterOverridePolicies before OverridePolicies, and within each kind the
policy whose selector matched more specifically (by name, then by labels, then by kind only) last, so the
most specific policy wins; ties by name. Overriders within a rule: plaintext (JSON patch), image,
command, args, labels, annotations and field (JSON or YAML embedded in a string field).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import jsonpatch
import orjson
import yaml

from ultraplane.fleet.placement import MemberView, match_affinity, match_label_selector

Obj = dict[str, Any]


class OverrideError(ValueError):
    """An overrider that cannot apply (a path that does not exist, a bad operator)."""


def selector_rank(selector: Obj, obj: Obj) -> int:
    """0 when the selector does not match; otherwise how specifically it does (3 name, 2 labels, 1 kind)."""
    meta = obj.get("metadata") or {}
    if selector.get("apiVersion") != obj.get("apiVersion") or selector.get("kind") != obj.get("kind"):
        return 0
    if selector.get("namespace") and selector["namespace"] != meta.get("namespace"):
        return 0
    if selector.get("name"):
        return 3 if selector["name"] == meta.get("name") else 0
    if selector.get("labelSelector"):
        return 2 if match_label_selector(selector["labelSelector"], meta.get("labels") or {}) else 0
    return 1


def policy_rank(policy: Obj, obj: Obj) -> int:
    selectors = (policy.get("spec") or {}).get("resourceSelectors") or []
    if not selectors:  # an override policy without selectors applies to every resource
        return 1
    return max((selector_rank(s, obj) for s in selectors), default=0)


def applicable(cluster_policies: Iterable[Obj], policies: Iterable[Obj], obj: Obj) -> list[Obj]:
    """The override policies that apply to `obj`, in the order they are applied."""
    namespace = (obj.get("metadata") or {}).get("namespace")
    ordered = []
    for group in (cluster_policies, [p for p in policies if p["metadata"].get("namespace") == namespace]):
        ranked = [(policy_rank(p, obj), p["metadata"]["name"], p) for p in group]
        ordered += [p for rank, _, p in sorted(ranked, key=lambda r: (r[0], r[1])) if rank]
    return ordered


def override(obj: Obj, policies: list[Obj], member: MemberView) -> tuple[Obj, list[str]]:
    """The copy of `obj` for `member`, and the names of the policies that changed it."""
    result = copy.deepcopy(obj)
    applied = []
    for policy in policies:
        spec = policy.get("spec") or {}
        rules = list(spec.get("overrideRules") or [])
        if spec.get("overriders"):  # the older single-rule form
            rules.append({"targetCluster": spec.get("targetCluster"), "overriders": spec["overriders"]})
        for rule in rules:
            if match_affinity(rule.get("targetCluster"), member):
                result = apply_overriders(result, rule.get("overriders") or {})
                applied.append(f"{policy.get('kind', 'OverridePolicy')}/{policy['metadata']['name']}")
    return result, applied


def apply_overriders(obj: Obj, overriders: Obj) -> Obj:
    patch: list[Obj] = []
    for item in overriders.get("plaintext") or []:
        op = {"op": item.get("operator"), "path": item.get("path")}
        if item.get("operator") != "remove":
            op["value"] = item.get("value")
        patch.append(op)
    if patch:
        try:
            obj = jsonpatch.apply_patch(obj, patch)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
            raise OverrideError(f"plaintext overrider: {exc}") from exc
    for item in overriders.get("imageOverrider") or []:
        _override_images(obj, item)
    for name in ("commandOverrider", "argsOverrider"):
        for item in overriders.get(name) or []:
            _override_list(obj, "command" if name == "commandOverrider" else "args", item)
    for name, key in (("labelsOverrider", "labels"), ("annotationsOverrider", "annotations")):
        for item in overriders.get(name) or []:
            _override_map(obj.setdefault("metadata", {}).setdefault(key, {}), item)
    for item in overriders.get("fieldOverrider") or []:
        _override_field(obj, item)
    return obj


# --------------------------------------------------------------------------------------------- images
def parse_image(image: str) -> tuple[str, str, str, str]:
    """(registry, repository, tag, digest) as the container runtime reads a reference."""
    digest = ""
    if "@" in image:
        image, digest = image.split("@", 1)
    first, _, rest = image.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        registry, remainder = first, rest
    else:
        registry, remainder = "", image
    repository, _, tag = remainder.rpartition(":") if ":" in remainder else (remainder, "", "")
    return registry, repository, tag, digest


def format_image(registry: str, repository: str, tag: str, digest: str) -> str:
    text = f"{registry}/{repository}" if registry else repository
    if tag:
        text += f":{tag}"
    if digest:
        text += f"@{digest}"
    return text


def _image_paths(obj: Obj) -> list[list[Any]]:
    spec = obj.get("spec") or {}
    pod = spec if obj.get("kind") == "Pod" else (spec.get("jobTemplate", {}).get("spec", {}).get("template", {})
                                                 .get("spec") if obj.get("kind") == "CronJob"
                                                 else (spec.get("template") or {}).get("spec"))
    if not pod:
        return []
    prefix = (["spec"] if obj.get("kind") == "Pod" else
              ["spec", "jobTemplate", "spec", "template", "spec"] if obj.get("kind") == "CronJob"
              else ["spec", "template", "spec"])
    return [[*prefix, field, i, "image"] for field in ("initContainers", "containers")
            for i, _ in enumerate(pod.get(field) or [])]


def _override_images(obj: Obj, item: Obj) -> None:
    predicate = (item.get("predicate") or {}).get("path")
    paths = [[int(p) if p.isdigit() else p for p in predicate.strip("/").split("/")]] if predicate \
        else _image_paths(obj)
    component, operator, value = item.get("component"), item.get("operator"), item.get("value") or ""
    for path in paths:
        parent: Any = obj
        try:
            for step in path[:-1]:
                parent = parent[step]
            image = parent[path[-1]]
        except (KeyError, IndexError, TypeError) as exc:
            raise OverrideError(f"imageOverrider: no image at {predicate or path}") from exc
        parts = list(parse_image(image))
        index = {"Registry": 0, "Repository": 1, "Tag": 2}.get(component or "")
        if index is None:
            raise OverrideError(f"imageOverrider: unknown component {component!r}")
        if operator == "remove":
            parts[index] = ""
        elif operator == "replace":
            parts[index] = value
        elif operator == "add":
            parts[index] = parts[index] + value if parts[index] and index != 2 else value
        else:
            raise OverrideError(f"imageOverrider: unknown operator {operator!r}")
        parent[path[-1]] = format_image(*parts)


# ---------------------------------------------------------------------------------- command, args, maps
def _containers(obj: Obj) -> list[Obj]:
    found = []
    for path in _image_paths(obj):
        parent: Any = obj
        for step in path[:-1]:
            parent = parent[step]
        found.append(parent)
    return found


def _override_list(obj: Obj, key: str, item: Obj) -> None:
    for container in _containers(obj):
        if container.get("name") != item.get("containerName"):
            continue
        current = list(container.get(key) or [])
        values = list(item.get("value") or [])
        if item.get("operator") == "add":
            container[key] = current + values
        elif item.get("operator") == "remove":
            container[key] = [v for v in current if v not in values]
        else:
            raise OverrideError(f"{key} overrider: unknown operator {item.get('operator')!r}")


def _override_map(target: Obj, item: Obj) -> None:
    values = item.get("value") or {}
    operator = item.get("operator")
    for key, value in values.items():
        if operator == "add" or operator == "replace" and key in target:
            target[key] = value
        elif operator == "remove":
            target.pop(key, None)
        elif operator not in ("add", "replace", "remove"):
            raise OverrideError(f"labels/annotations overrider: unknown operator {operator!r}")


def _override_field(obj: Obj, item: Obj) -> None:
    path = [int(p) if p.isdigit() else p for p in (item.get("fieldPath") or "").strip("/").split("/")]
    parent: Any = obj
    try:
        for step in path[:-1]:
            parent = parent[step]
        text = parent[path[-1]]
    except (KeyError, IndexError, TypeError) as exc:
        raise OverrideError(f"fieldOverrider: no field at {item.get('fieldPath')}") from exc
    for fmt in ("json", "yaml"):
        ops = item.get(fmt) or []
        if not ops:
            continue
        doc = orjson.loads(text) if fmt == "json" else yaml.safe_load(text)
        patch = [{"op": o["operator"], "path": o["subPath"], **({"value": o.get("value")}
                                                             if o["operator"] != "remove" else {})} for o in ops]
        try:
            doc = jsonpatch.apply_patch(doc, patch)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
            raise OverrideError(f"fieldOverrider: {exc}") from exc
        text = orjson.dumps(doc).decode() if fmt == "json" else yaml.safe_dump(doc, sort_keys=False)
    parent[path[-1]] = text
