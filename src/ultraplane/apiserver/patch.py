"""JSON patch, merge patch and strategic merge patch with kube-apiserver's semantics and error texts.

Strategic merge patch follows ``k8s.io/apimachinery/pkg/util/strategicpatch``: the schema's
``x-kubernetes-patch-strategy`` / ``x-kubernetes-patch-merge-key`` decide how lists merge, and the patch may carry
the directives ``$patch`` (replace/delete/merge), ``$retainKeys``, ``$deleteFromPrimitiveList/<field>`` and
``$setElementOrder/<field>``.  Where the schema says nothing (free-form maps, unknown fields) lists are replaced,
which is what merge patch does too.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch

Obj = dict[str, Any]

_DIRECTIVE = "$patch"
_RETAIN_KEYS = "$retainKeys"
_DELETE_PRIMITIVE = "$deleteFromPrimitiveList/"
_SET_ORDER = "$setElementOrder/"


class PatchError(Exception):
    """A patch kube-apiserver would refuse; ``str()`` is its message."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# ---------------------------------------------------------------------- RFC 6902
def json_patch(obj: Obj, ops: list[Any]) -> Obj:
    """Apply an RFC 6902 patch with evanphx/json-patch v4's behaviour (kube-apiserver's library): its error
    texts, and ``replace`` of a missing key in an existing object acting as ``add``."""
    if not isinstance(ops, list):
        raise PatchError("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    doc: Any = obj
    for op in ops:
        kind = op.get("op") if isinstance(op, dict) else None
        if kind not in ("add", "remove", "replace", "move", "copy", "test"):
            raise PatchError(f"Unexpected kind: {kind if kind is not None else 'unknown'}")
        if not isinstance(op.get("path"), str):
            raise PatchError(f"{kind} operation failed to decode path: missing value")
        if kind == "replace":
            parent, key = _parent(doc, op["path"])
            if isinstance(parent, dict) and key not in parent:
                op = {**op, "op": "add"}
        try:
            doc = jsonpatch.JsonPatch([op]).apply(doc, in_place=False)
        except jsonpatch.JsonPatchTestFailed as exc:
            raise PatchError(f"testing value {op['path']} failed: test failed") from exc
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, KeyError, IndexError,
                TypeError) as exc:
            raise PatchError(_describe_failure(doc, op)) from exc
    return doc


def _describe_failure(doc: Any, op: Obj) -> str:
    path = op["path"]
    kind = op["op"]
    if kind in ("move", "copy"):
        source = str(op.get("from", ""))
        parent, key = _parent(doc, source)
        if parent is None:
            return f'{kind} operation does not apply: doc is missing from path: "{source}": missing value'
        if isinstance(parent, list):
            return f"error in {kind} for path: '{key}': Unable to access invalid index: {key}: invalid index referenced"
        if key not in parent:
            return f"error in {kind} for path: '{key}': Unable to remove nonexistent key: {key}: missing value"
        parent, key = _parent(doc, path)
        if parent is None:
            return f'{kind} operation does not apply: doc is missing destination path: "{path}": missing value'
        return f"error in {kind} for path: '{path}': Unable to access invalid index: {key}: invalid index referenced"
    parent, key = _parent(doc, path)
    if parent is None:
        if kind == "replace":
            return f"replace operation does not apply: doc is missing path: {path}: missing value"
        return f'{kind} operation does not apply: doc is missing path: "{path}": missing value'
    if isinstance(parent, list):
        if kind == "replace":
            return f"replace operation does not apply: doc is missing key: {path}: missing value"
        return f"error in {kind} for path: '{path}': Unable to access invalid index: {key}: invalid index referenced"
    if kind == "remove":
        return f"error in remove for path: '{path}': Unable to remove nonexistent key: {key}: missing value"
    return f'{kind} operation does not apply: doc is missing path: "{path}": missing value'


def _parent(doc: Any, path: str) -> tuple[Any, str]:
    """The container addressed by all but the last token of ``path`` (None when it does not exist)."""
    tokens = [t.replace("~1", "/").replace("~0", "~") for t in path.split("/")[1:]]
    if not tokens:
        return None, ""
    node = doc
    for token in tokens[:-1]:
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            return None, tokens[-1]
    return node, tokens[-1]


# ---------------------------------------------------------------------- RFC 7386
def merge_patch(obj: Any, patch: Any) -> Any:
    """RFC 7386: maps merge recursively, null deletes, everything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(obj) if isinstance(obj, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            result[key] = merge_patch(result.get(key), value)
        else:
            result[key] = copy.deepcopy(value)
    return result


# ---------------------------------------------------------------------- strategic merge patch
def strategic_merge_patch(obj: Obj, patch: Obj, schema: Obj | None, *, in_place: bool = False) -> Obj:
    """Apply a strategic merge patch to ``obj`` using the kind's resolved schema. ``obj`` is left as it was
    unless ``in_place`` (for a caller that owns a fresh copy: a guaranteed update's decoded object)."""
    if not isinstance(patch, dict):
        raise PatchError("json: cannot unmarshal array into Go value of type map[string]interface {}")
    merged = _merge_map(obj if in_place else copy.deepcopy(obj), patch, schema)
    return merged if merged is not None else {}


def _props(schema: Obj | None) -> Obj | None:
    if not isinstance(schema, dict):
        return None
    if "allOf" in schema and "properties" not in schema and len(schema["allOf"]) == 1:
        return _props(schema["allOf"][0])
    return schema


def _field_schema(schema: Obj | None, key: str) -> Obj | None:
    schema = _props(schema)
    if schema is None:
        return None
    props = schema.get("properties")
    if props is not None and key in props:
        return _props(props[key])
    extra = schema.get("additionalProperties")
    return _props(extra) if isinstance(extra, dict) else None


def _merge_map(original: Obj, patch: Obj, schema: Obj | None) -> Obj | None:
    directive = patch.get(_DIRECTIVE)
    if directive is not None:
        if directive == "replace":
            return _strip(patch)
        if directive == "delete":
            return {}  # upstream: "don't merge it, just return an empty map"
        if directive != "merge":
            raise PatchError(f"unknown patch type: {_go_value(directive)} in map: {_go_map(patch)}")
    result = original if isinstance(original, dict) else {}
    retain = patch.get(_RETAIN_KEYS)
    orders: dict[str, list[Any]] = {}
    for key, value in patch.items():
        if key in (_DIRECTIVE, _RETAIN_KEYS):
            continue
        if key.startswith(_SET_ORDER):
            orders[key[len(_SET_ORDER):]] = value
            continue
        if key.startswith(_DELETE_PRIMITIVE):
            field = key[len(_DELETE_PRIMITIVE):]
            current = result.get(field)
            if isinstance(current, list) and isinstance(value, list):
                doomed = set(map(_hashable, value))
                result[field] = [v for v in current if _hashable(v) not in doomed]
            continue
        if value is None:
            result.pop(key, None)
            continue
        current = result.get(key)
        if key not in result or type(current) is not type(value) or not isinstance(value, dict | list):
            # new fields and type changes take the patch value, minus anything carrying a $patch directive
            kept, keep = _remove_directives(copy.deepcopy(value))
            if keep:
                result[key] = kept
            else:
                result.pop(key, None)
            continue
        sub = _field_schema(schema, key)
        if isinstance(value, dict):
            if sub is not None and "replace" in str(sub.get("x-kubernetes-patch-strategy", "")).split(","):
                result[key] = _strip(value)
            else:
                result[key] = _merge_map(current, value, sub)
        else:
            result[key] = _merge_list(current, value, sub)
    for field, order in orders.items():
        if isinstance(result.get(field), list) and isinstance(order, list):
            result[field] = _apply_order(result[field], order, _field_schema(schema, field))
    if isinstance(retain, list):
        keep_keys = set(retain)
        for key in list(result):
            if key not in keep_keys:
                del result[key]
    return result


def _remove_directives(value: Any) -> tuple[Any, bool]:
    """strategicpatch.removeDirectives (+ discardNullValuesFromPatch): a map holding ``$patch`` disappears from
    its parent map or list."""
    if isinstance(value, dict):
        if _DIRECTIVE in value:
            return None, False
        out = {}
        for key, item in value.items():
            if key.startswith("$") or item is None:
                # $retainKeys & co. are no fields (a typed decode drops them); nulls are discarded as the
                # apiserver's IgnoreUnmatchedNulls does
                continue
            kept, keep = _remove_directives(item)
            if keep:
                out[key] = kept
        return out, True
    if isinstance(value, list):
        items = []
        for item in value:
            kept, keep = _remove_directives(item)
            if keep:
                items.append(kept)
        return items, True
    return value, True


def _strategy(schema: Obj | None) -> tuple[bool, str | None]:
    """(merge?, merge key) for a list field."""
    if schema is None:
        return False, None
    strategy = schema.get("x-kubernetes-patch-strategy", "")
    merge = "merge" in strategy.split(",")
    key = schema.get("x-kubernetes-patch-merge-key")
    return merge, key


def _merge_list(original: list[Any], patch: list[Any], schema: Obj | None) -> list[Any]:
    merge, merge_key = _strategy(schema)
    items_schema = _props(schema.get("items")) if schema else None
    if not merge:
        # atomic lists take the patch as it is (a typed decode would drop any "$..." keys, so do we)
        return [_strip(i) for i in patch]
    # a {"$patch": "replace"} element swaps the whole list for the rest of the patch
    replace = False
    for item in patch:
        if isinstance(item, dict) and _DIRECTIVE in item:
            directive = item[_DIRECTIVE]
            if directive == "replace":
                replace = True
            elif directive == "merge":
                raise PatchError("merging lists cannot yet be specified in the patch")
            elif directive != "delete":
                raise PatchError(f"unknown patch type: {_go_value(directive)} in map: {_go_map(item)}")
            elif merge_key is None or merge_key not in item:
                raise PatchError(f"map: {_go_map(item)} does not contain declared merge key: {merge_key or ''}")
    if replace:
        return [copy.deepcopy(i) for i in patch if not (isinstance(i, dict) and _DIRECTIVE in i)]
    if merge_key is None:
        # merge strategy on a list of primitives: union, new values appended in patch order
        result = list(original)
        seen = {_hashable(v) for v in result}
        for item in patch:
            if isinstance(item, dict) and _DIRECTIVE in item:
                continue
            marker = _hashable(item)
            if marker not in seen:
                seen.add(marker)
                result.append(copy.deepcopy(item))
        return _apply_order(result, [i for i in patch if not isinstance(i, dict)], schema, original)
    result = list(original)
    for item in patch:
        if not isinstance(item, dict):
            raise PatchError(f"unable to find api field in struct {_go_value(item)} for the json field")
        if merge_key not in item:
            raise PatchError(f"map: {_go_map(item)} does not contain declared merge key: {merge_key}")
        wanted = item[merge_key]
        index = next((i for i, cur in enumerate(result)
                      if isinstance(cur, dict) and cur.get(merge_key) == wanted), None)
        if item.get(_DIRECTIVE) == "delete":
            result = [cur for cur in result if not (isinstance(cur, dict) and cur.get(merge_key) == wanted)]
            continue
        if index is None:
            added = _merge_map({}, item, items_schema)
            if added is not None:
                result.append(added)
        else:
            merged = _merge_map(result[index], item, items_schema)
            if merged is None:
                del result[index]
            else:
                result[index] = merged
    wanted_order = [i for i in patch if not (isinstance(i, dict) and _DIRECTIVE in i)]
    return _apply_order(result, wanted_order, schema, original)


def _apply_order(items: list[Any], order: list[Any], schema: Obj | None,
                 server: list[Any] | None = None) -> list[Any]:
    """Upstream's element order: the patch's elements in patch (or ``$setElementOrder``) order, interleaved with
    the server-only elements by their server positions; an element the server lacks goes first."""
    _merge, merge_key = _strategy(schema)

    def identity(item: Any) -> Any:
        if merge_key is not None and isinstance(item, dict):
            return _hashable(item.get(merge_key))
        return _hashable(item)

    rank = {identity(v): i for i, v in enumerate(order)}
    server_rank = {identity(v): i for i, v in enumerate(server if server is not None else items)}
    left = sorted((v for v in items if identity(v) in rank), key=lambda v: rank[identity(v)])
    right = [v for v in items if identity(v) not in rank]
    merged: list[Any] = []
    i = j = 0
    while i < len(left) and j < len(right):
        li, ri = server_rank.get(identity(left[i])), server_rank.get(identity(right[j]))
        if li is not None and ri is not None and ri < li:
            merged.append(right[j])
            j += 1
        else:
            merged.append(left[i])
            i += 1
    return merged + left[i:] + right[j:]


def _strip(value: Any) -> Any:
    """The patch value without directives (what ``$patch: replace`` installs)."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k != _DIRECTIVE and not k.startswith("$")}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _hashable(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    return value


def _go_value(value: Any) -> str:
    if isinstance(value, dict):
        return _go_map(value)
    if isinstance(value, list):
        return "[" + " ".join(_go_value(v) for v in value) + "]"
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _go_map(value: Obj) -> str:
    """fmt's %v of a map[string]interface{} (keys sorted), as upstream error messages print patches."""
    return "map[" + " ".join(f"{k}:{_go_value(value[k])}" for k in sorted(value)) + "]"
