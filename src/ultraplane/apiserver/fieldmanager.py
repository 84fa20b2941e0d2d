"""Server-side apply field management: kube's managedFields, as structured-merge-diff computes them.

A field set is kept as its FieldsV1 tree (``{"f:spec": {"f:replicas": {}}}``): a node is a member
(owned) when it is an empty dict or carries ``"."``; other nodes only lead to members. Path elements
are FieldsV1 keys: ``f:<field>``, ``k:<sorted JSON of the list-map keys>`` for items of associative
lists, ``v:<JSON>`` for items of sets. Lists and maps are typed from the kind's OpenAPI schema
(``x-kubernetes-list-type`` / ``-list-map-keys``, else the strategic-merge patch strategy and merge
key, as kube's schema conversion does; ``x-kubernetes-map-type: atomic``); without a schema maps are
granular and lists atomic (SMD's deduced type).

- Update (create, PUT, JSON/merge/strategic patch, subresources): the manager gains the fields the
  write added or changed (compared with the stored object, after decode-time defaulting), every other
  manager loses the fields that changed or went. Changes the server makes itself (admission,
  allocation, status reset) are made after this step and owned by nobody, as in kube.
- Apply: the applier owns exactly the fields of its configuration; a field another manager owns
  whose value the apply changes is a conflict (409) unless forced, which moves it; fields the applier
  applied last time, no longer applies and nobody else owns are removed from the object.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from typing import Any

import orjson

from ultraplane.apiserver import errors

Obj = dict[str, Any]
Tree = dict[str, Any]
Path = tuple[str, ...]

_MISSING: Any = object()
# metadata fields no manager owns (kube's stripMetaManager)
STRIPPED_META = frozenset({"name", "namespace", "creationTimestamp", "selfLink", "uid", "clusterName", "generation",
                           "managedFields", "resourceVersion"})
# values of list-map keys the schema defaults when an item leaves them out (kube's OpenAPI defaults)
KEY_DEFAULTS = {"protocol": "TCP"}


# ---------------------------------------------------------------------------------------------- schema
def _node(schema: Any) -> Obj | None:
    if not isinstance(schema, dict):
        return None
    if "allOf" in schema and "properties" not in schema and len(schema["allOf"]) == 1:
        return _node(schema["allOf"][0])
    return schema


_FIELD_SCHEMAS: dict[tuple[int, str], tuple[Obj, Obj | None]] = {}


def field_schema(schema: Obj | None, key: str) -> Obj | None:
    """The schema of a field (memoized: every write walks the same few hundred schema nodes)."""
    if schema is None:
        return None
    memo = _FIELD_SCHEMAS.get((id(schema), key))
    if memo is not None and memo[0] is schema:
        return memo[1]
    props = schema.get("properties")
    if props is not None and key in props:
        found = _node(props[key])
    else:
        extra = schema.get("additionalProperties")
        found = _node(extra) if isinstance(extra, dict) else None
    if len(_FIELD_SCHEMAS) > 100_000:  # schemas of deleted CRDs: start over rather than grow
        _FIELD_SCHEMAS.clear()
    _FIELD_SCHEMAS[(id(schema), key)] = (schema, found)
    return found


def _declared(schema: Obj | None, key: str) -> bool:
    return schema is not None and key in (schema.get("properties") or ())


def _map_atomic(schema: Obj | None) -> bool:
    return schema is not None and schema.get("x-kubernetes-map-type") == "atomic"


def list_type(schema: Obj | None) -> tuple[str, tuple[str, ...]]:
    """("atomic" | "set" | "map", map keys) of a list field."""
    if schema is None:
        return "atomic", ()
    kind = schema.get("x-kubernetes-list-type")
    if kind == "map":
        return "map", tuple(schema.get("x-kubernetes-list-map-keys") or ())
    if kind in ("set", "atomic"):
        return kind, ()
    if "merge" in str(schema.get("x-kubernetes-patch-strategy", "")).split(","):
        key = schema.get("x-kubernetes-patch-merge-key")
        return ("map", (key,)) if key else ("set", ())
    return "atomic", ()


def item_element(item: Any, kind: str, keys: tuple[str, ...]) -> str:
    if kind == "map" and isinstance(item, dict):
        ident = {}
        for k in keys:
            if k in item:
                ident[k] = item[k]
            elif k in KEY_DEFAULTS:
                ident[k] = KEY_DEFAULTS[k]
        return "k:" + orjson.dumps(ident, option=orjson.OPT_SORT_KEYS).decode()
    return "v:" + orjson.dumps(item, option=orjson.OPT_SORT_KEYS).decode()


def _items(value: Any, kind: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """A granular list's items by path element (the first of duplicates)."""
    out: dict[str, Any] = {}
    if isinstance(value, list):
        for item in value:
            out.setdefault(item_element(item, kind, keys), item)
    return out


# ---------------------------------------------------------------------------------------------- trees
def tree_insert(tree: Tree, path: Path) -> None:
    node = tree
    last = len(path) - 1
    for i, part in enumerate(path):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif i < last and not child:  # a member leaf that gains children stays a member
            child["."] = {}
        node = child
    if path and node and "." not in node:
        node["."] = {}


def tree_node(tree: Tree, path: Path) -> Tree | None:
    node: Tree | None = tree
    for part in path:
        node = node.get(part) if node is not None else None
        if node is None:
            return None
    return node


def tree_has(tree: Tree, path: Path) -> bool:
    node = tree_node(tree, path)
    return node is not None and (not node or "." in node)


def tree_remove(tree: Tree, path: Path) -> bool:
    """Remove one member; nodes left leading nowhere go too. Returns whether it was a member."""
    if not path:
        return False
    parent = tree_node(tree, path[:-1])
    if parent is None:
        return False
    node = parent.get(path[-1])
    if node is None:
        return False
    if not node:
        del parent[path[-1]]
    elif "." in node:
        del node["."]
    else:
        return False
    # prune ancestors that no longer lead to a member
    for depth in range(len(path) - 1, 0, -1):
        ancestor = tree_node(tree, path[:depth])
        if ancestor is None:
            break
        if ancestor == {".": {}}:
            ancestor.clear()  # only itself is owned now: a member leaf
            break
        if ancestor:
            break
        del tree_node(tree, path[:depth - 1])[path[depth - 1]]  # type: ignore[index]
    return True


def members(tree: Tree, prefix: Path = ()) -> Iterator[Path]:
    for key, sub in tree.items():
        if key == ".":
            continue
        path = (*prefix, key)
        if not sub or "." in sub:
            yield path
        if sub:
            yield from members(sub, path)


def sorted_tree(tree: Tree) -> Tree:
    return {k: sorted_tree(tree[k]) for k in sorted(tree, key=lambda k: (k != ".", k))}


# ---------------------------------------------------------------------------------------------- sets
def to_field_set(value: Any, schema: Obj | None, *, top: bool = True) -> Tree:
    """SMD's ToFieldSet: the fields a configuration sets (an applier's set)."""
    tree: Tree = {}
    _fill(value, schema, (), tree, top)
    return tree


def _fill(value: Any, schema: Obj | None, path: Path, tree: Tree, top: bool) -> None:
    if isinstance(value, dict):
        if _map_atomic(schema):
            tree_insert(tree, path)
            return
        for key, sub in value.items():
            if top and not path and key in ("apiVersion", "kind"):
                continue
            if top and path == ("f:metadata",) and key in STRIPPED_META:
                continue
            child = (*path, f"f:{key}")
            sub_schema = field_schema(schema, key)
            _fill(sub, sub_schema, child, tree, top)
            if top and child == ("f:metadata",):
                continue  # metadata itself is nobody's (kube strips it), only fields in it
            if sub is None or (isinstance(sub, dict) and not sub) or not _declared(schema, key):
                tree_insert(tree, child)
        return
    if isinstance(value, list):
        kind, keys = list_type(schema)
        if kind == "atomic" or not value:
            tree_insert(tree, path)
            return
        items_schema = _node(schema.get("items")) if schema else None
        for item in value:
            child = (*path, item_element(item, kind, keys))
            tree_insert(tree, child)
            if kind == "map" and isinstance(item, dict):
                _fill(item, items_schema, child, tree, False)
        return
    if path:
        tree_insert(tree, path)


class Changes:
    __slots__ = ("added", "modified", "removed")

    def __init__(self) -> None:
        self.added: list[Path] = []
        self.modified: list[Path] = []
        self.removed: list[Path] = []

    def __bool__(self) -> bool:
        return bool(self.added or self.modified or self.removed)


def compare(lhs: Obj, rhs: Obj, schema: Obj | None, ignored: frozenset[str]) -> Changes:
    """SMD's Compare of two objects, without what no manager owns (stripped metadata, reset fields)."""
    out = Changes()
    for key in lhs.keys() | rhs.keys():
        if key in ("apiVersion", "kind") or key in ignored:
            continue
        a, b = lhs.get(key, _MISSING), rhs.get(key, _MISSING)
        if a is not _MISSING and b is not _MISSING and a == b:
            continue
        if key == "metadata" and isinstance(a, dict) and isinstance(b, dict):
            meta_schema = field_schema(schema, "metadata")
            for mkey in a.keys() | b.keys():
                if mkey in STRIPPED_META:
                    continue
                ma, mb = a.get(mkey, _MISSING), b.get(mkey, _MISSING)
                if ma is not _MISSING and mb is not _MISSING and ma == mb:
                    continue
                _compare(ma, mb, field_schema(meta_schema, mkey), ("f:metadata", f"f:{mkey}"), out)
            continue
        _compare(a, b, field_schema(schema, key), (f"f:{key}",), out)
    return out


def _leaf(lhs: Any, rhs: Any, path: Path, out: Changes) -> None:
    if lhs is _MISSING:
        out.added.append(path)
    elif rhs is _MISSING:
        out.removed.append(path)
    elif lhs != rhs:
        out.modified.append(path)


def _compare(lhs: Any, rhs: Any, schema: Obj | None, path: Path, out: Changes) -> None:
    if lhs is not _MISSING and rhs is not _MISSING and lhs == rhs:
        return
    # null and an empty map or list are alike for the walk (a Go nil slice), but null is present
    lhs_none = lhs is _MISSING or lhs is None
    rhs_none = rhs is _MISSING or rhs is None
    lhs_type, rhs_type = type(lhs), type(rhs)
    if (lhs_type is dict or lhs_none) and (rhs_type is dict or rhs_none):
        left = lhs if lhs_type is dict else {}
        right = rhs if rhs_type is dict else {}
        if (not left and not right) or (schema is not None and schema.get("x-kubernetes-map-type") == "atomic"):
            _leaf(lhs, rhs, path, out)
            return
        for key in left.keys() | right.keys():
            a, b = left.get(key, _MISSING), right.get(key, _MISSING)
            if a is not _MISSING and b is not _MISSING and a == b:
                continue
            _compare(a, b, field_schema(schema, key), (*path, f"f:{key}"), out)
    elif (lhs_type is list or lhs_none) and (rhs_type is list or rhs_none):
        kind, keys = list_type(schema)
        if kind == "atomic" or not (lhs_type is list and lhs or rhs_type is list and rhs):
            _leaf(lhs, rhs, path, out)
            return
        items_schema = _node(schema.get("items")) if schema else None
        left_items = _items(lhs, kind, keys)
        right_items = _items(rhs, kind, keys)
        for pe in left_items.keys() | right_items.keys():
            a, b = left_items.get(pe, _MISSING), right_items.get(pe, _MISSING)
            if kind == "map":
                _compare(a, b, items_schema, (*path, pe), out)
            else:
                _leaf(a, b, (*path, pe), out)
    else:
        _leaf(lhs, rhs, path, out)
        return
    if lhs is _MISSING:
        out.added.append(path)
    elif rhs is _MISSING:
        out.removed.append(path)


# ---------------------------------------------------------------------------------------------- values
def remove_at(value: Any, path: Path) -> None:
    """Delete the field or list item at path (and what is under it) from an object."""
    parent = value
    for part in path[:-1]:
        parent = _child(parent, part)
        if parent is _MISSING:
            return
    last = path[-1]
    if last.startswith("f:") and isinstance(parent, dict):
        parent.pop(last[2:], None)
    elif isinstance(parent, list):
        for i, item in enumerate(parent):
            if _matches(item, last):
                del parent[i]
                return


def _matches(item: Any, element: str) -> bool:
    if element.startswith("k:"):
        if not isinstance(item, dict):
            return False
        return all(item.get(k, KEY_DEFAULTS.get(k, _MISSING)) == v for k, v in orjson.loads(element[2:]).items())
    if element.startswith("v:"):
        return bool(item == orjson.loads(element[2:]))
    return False


def _child(value: Any, part: str) -> Any:
    if part.startswith("f:"):
        return value.get(part[2:], _MISSING) if isinstance(value, dict) else _MISSING
    if isinstance(value, list):
        return next((item for item in value if _matches(item, part)), _MISSING)
    return _MISSING


def path_text(path: Path) -> str:
    """kube's field path notation: ``.spec.containers[name="web"].ports[containerPort=80,protocol="TCP"]``."""
    out = ""
    for key in path:
        if key.startswith("f:"):
            out += "." + key[2:]
        elif key.startswith("k:"):
            out += "[" + ",".join(f"{k}={orjson.dumps(v).decode()}" for k, v in orjson.loads(key[2:]).items()) + "]"
        else:
            out += "[=" + key[2:] + "]"
    return out


# ---------------------------------------------------------------------------------------------- managers
_clock: list[Any] = [0, ""]  # (whole second, its text): every write stamps an entry


def now_rfc3339() -> str:
    second = int(time.time())
    if _clock[0] != second:
        _clock[0], _clock[1] = second, dt.datetime.fromtimestamp(second, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return str(_clock[1])


def _identity(entry: Obj) -> tuple[str, str, str, str]:
    op = entry.get("operation", "")
    return (entry.get("manager", ""), op, entry.get("apiVersion", "") if op != "Apply" else "",
            entry.get("subresource", ""))


def _who(entry: Obj) -> str:
    text = orjson.dumps(entry.get("manager", "")).decode()
    if entry.get("subresource"):
        text += f' with subresource "{entry["subresource"]}"'
    if entry.get("operation") == "Update":
        text += f' using {entry.get("apiVersion", "")}'
    return text


class Managers:
    """The managedFields entries of one object, copied on first change."""

    def __init__(self, entries: list[Obj] | None) -> None:
        self.entries = [e for e in entries or [] if isinstance(e, dict) and e.get("manager") is not None]
        self.copied: set[int] = set()
        self.changed = False

    def tree(self, i: int) -> Tree:
        if i not in self.copied:
            entry = dict(self.entries[i])
            entry["fieldsV1"] = orjson.loads(orjson.dumps(entry.get("fieldsV1") or {}))
            self.entries[i] = entry
            self.copied.add(i)
        return self.entries[i]["fieldsV1"]  # type: ignore[no-any-return]

    def find(self, identity: tuple[str, str, str, str]) -> int:
        return next((i for i, e in enumerate(self.entries) if _identity(e) == identity), -1)

    def drop_from_others(self, mine: int, paths: list[Path]) -> None:
        for i, entry in enumerate(self.entries):
            if i == mine or not paths:
                continue
            fields = entry.get("fieldsV1") or {}
            hit = [p for p in paths if tree_has(fields, p)]
            if hit:
                tree = self.tree(i)
                for p in hit:
                    tree_remove(tree, p)
                self.changed = True

    def finish(self) -> list[Obj] | None:
        entries = [e for e in self.entries if e.get("fieldsV1")]
        entries.sort(key=lambda e: (e.get("operation", ""), e.get("time", ""), e.get("manager", ""),
                                    e.get("apiVersion", ""), e.get("subresource", "")))
        return entries or None


def record_update(new: Obj, current: Obj | None, schema: Obj | None, manager: str, api_version: str,
                  subresource: str, ignored: frozenset[str]) -> None:
    """An Update by ``manager``: set new's managedFields from current's (or the ones the client sent)."""
    meta = new["metadata"]
    sent = meta.get("managedFields")
    base = (current or {}).get("metadata", {}).get("managedFields")
    if current is not None and sent and sent != base:
        base = sent  # the client rewrote managedFields: kube takes them as they are
    if current is None and not base:
        _record_create(new, schema, manager, api_version, ignored)
        return
    before = current if current is not None else _empty_like(new, schema)
    changes = compare(before, new, schema, ignored)
    managers = Managers(base)
    if changes:
        identity = (manager, "Update", api_version, subresource)
        mine = managers.find(identity)
        gained = changes.added + changes.modified
        managers.drop_from_others(mine, gained + changes.removed)
        if mine >= 0 and changes.removed:  # its own entry keeps what it changes and loses what went
            owned = managers.entries[mine].get("fieldsV1") or {}
            gone = [p for p in changes.removed if tree_has(owned, p)]
            if gone:
                tree = managers.tree(mine)
                for path in gone:
                    tree_remove(tree, path)
                managers.changed = True
        if gained:
            owned = managers.entries[mine].get("fieldsV1") or {} if mine >= 0 else {}
            if all(tree_has(owned, p) for p in gained):  # the usual status write: fields it owns already
                fields = owned
            else:
                tree = managers.tree(mine) if mine >= 0 else {}
                for path in gained:
                    tree_insert(tree, path)
                fields = sorted_tree(tree)
            entry: Obj = {"manager": manager, "operation": "Update", "apiVersion": api_version,
                          "time": now_rfc3339(), "fieldsType": "FieldsV1", "fieldsV1": fields}
            if subresource:
                entry["subresource"] = subresource
            if mine >= 0:
                managers.entries[mine] = entry
            else:
                managers.entries.append(entry)
                managers.copied.add(len(managers.entries) - 1)
            managers.changed = True
    if managers.changed:
        finished = managers.finish()
        if finished is None:
            meta.pop("managedFields", None)
        else:
            meta["managedFields"] = finished
    elif base is not None:
        meta["managedFields"] = base
    else:
        meta.pop("managedFields", None)


def _record_create(obj: Obj, schema: Obj | None, manager: str, api_version: str, ignored: frozenset[str]) -> None:
    """The creator's entry, built in one walk (the same set as compare(_empty_like(obj), obj) gives):
    a create is on every hot path (pods), so it skips the general comparison."""
    live = _empty_like(obj, schema)
    fields: Tree = {}
    for key in sorted(obj):
        if key in ("apiVersion", "kind") or key in ignored:
            continue
        value = obj[key]
        if key == "metadata" and isinstance(value, dict):
            meta_schema = field_schema(schema, "metadata")
            meta = {k: _added(value[k], field_schema(meta_schema, k)) for k in sorted(value)
                    if k not in STRIPPED_META}
            if meta:
                fields["f:metadata"] = {f"f:{k}": v for k, v in meta.items()}
            continue
        sub = field_schema(schema, key)
        tree = _changed(value, live[key], sub) if key in live else _added(value, sub)
        if tree is not None:
            fields[f"f:{key}"] = tree
    if fields:
        obj["metadata"]["managedFields"] = [{"manager": manager, "operation": "Update", "apiVersion": api_version,
                                             "time": now_rfc3339(), "fieldsType": "FieldsV1", "fieldsV1": fields}]
    else:
        obj["metadata"].pop("managedFields", None)


def _added(value: Any, schema: Obj | None) -> Tree:
    """The set of a value that was not there before: itself and everything in it."""
    if isinstance(value, dict):
        if not value or _map_atomic(schema):
            return {}
        out: Tree = {".": {}}
        for key in sorted(value):
            out[f"f:{key}"] = _added(value[key], field_schema(schema, key))
        return out
    if isinstance(value, list) and value:
        kind, keys = list_type(schema)
        if kind == "atomic":
            return {}
        items_schema = _node(schema.get("items")) if schema else None
        out = {".": {}}
        for pe, item in sorted(_items(value, kind, keys).items()):
            out[pe] = _added(item, items_schema) if kind == "map" else {}
        return out
    return {}


def _changed(value: Any, live: Any, schema: Obj | None) -> Tree | None:
    """The set of what differs from a zero value that was there (None: nothing differs)."""
    if value == live:
        return None
    if isinstance(value, dict) and isinstance(live, dict) and value and not _map_atomic(schema):
        out: Tree = {}
        for key in sorted(value):
            sub = field_schema(schema, key)
            tree = _changed(value[key], live[key], sub) if key in live else _added(value[key], sub)
            if tree is not None:
                out[f"f:{key}"] = tree
        return out or None
    if isinstance(value, list) and value and live is None:
        added = _added(value, schema)
        added.pop(".", None)  # the list was there (null): only its items are new
        return added or {}
    return {}


def _empty_like(obj: Obj, schema: Obj | None) -> Obj:
    """The live object of a create: kube compares with the kind's Go zero value, whose top-level structs
    (metadata, spec, status) are there, empty. Below them the schema cannot tell a struct from a
    pointer to one, so only required fields are taken as present (structs empty, lists and maps null)."""
    out: Obj = {}
    for key, value in obj.items():
        sub = field_schema(schema, key)
        if isinstance(value, dict) and (sub is None or "properties" in sub):
            out[key] = _zero(value, sub)
    return out


def _zero(value: Obj, schema: Obj | None) -> Obj:
    out: Obj = {}
    if schema is None:
        return out
    for key in schema.get("required") or ():
        sub = field_schema(schema, key)
        if sub is None:
            continue
        if "properties" in sub:
            out[key] = _zero(value.get(key) if isinstance(value.get(key), dict) else {}, sub)
        elif sub.get("type") in ("array", "object"):
            out[key] = None
    return out


def record_apply_create(obj: Obj, config: Obj, schema: Obj | None, manager: str, api_version: str,
                        ignored: frozenset[str]) -> None:
    fields = to_field_set(config, schema)
    for key in ignored:
        fields.pop(f"f:{key}", None)
    meta = obj["metadata"]
    if fields:
        meta["managedFields"] = [{"manager": manager, "operation": "Apply", "apiVersion": api_version,
                                  "time": now_rfc3339(), "fieldsType": "FieldsV1", "fieldsV1": sorted_tree(fields)}]
    else:
        meta.pop("managedFields", None)


def apply(current: Obj, merged: Obj, config: Obj, schema: Obj | None, manager: str, api_version: str,
          subresource: str, force: bool, ignored: frozenset[str]) -> Obj:
    """SMD's Apply on the merged object: new applier set, prune, conflicts (409 unless forced)."""
    managers = Managers(current["metadata"].get("managedFields"))
    identity = (manager, "Apply", "", subresource)
    mine = managers.find(identity)
    last: Tree = (managers.entries[mine].get("fieldsV1") or {}) if mine >= 0 else {}
    applied = to_field_set(config, schema)
    for key in ignored:
        applied.pop(f"f:{key}", None)
    entry: Obj = {"manager": manager, "operation": "Apply", "apiVersion": api_version, "time": "",
                  "fieldsType": "FieldsV1", "fieldsV1": sorted_tree(applied)}
    if subresource:
        entry["subresource"] = subresource
    previous_time = ""
    if mine >= 0:
        previous_time = managers.entries[mine].get("time", "")
        managers.entries[mine] = entry
    else:
        managers.entries.append(entry)
        mine = len(managers.entries) - 1
    managers.copied.add(mine)
    if last:
        _prune(merged, last, [e.get("fieldsV1") or {} for e in managers.entries], ())
    changes = compare(current, merged, schema, ignored)
    # the time moves only when the object does: a repeated apply is a no-op write
    entry["time"] = now_rfc3339() if changes or not previous_time else previous_time
    changed = changes.added + changes.modified
    conflicts: list[tuple[Obj, Path]] = []
    for i, other in enumerate(managers.entries):
        if i == mine:
            continue
        fields = other.get("fieldsV1") or {}
        conflicts += [(other, p) for p in changed if tree_has(fields, p)]
    if conflicts and not force:
        raise conflict_error(conflicts)
    managers.drop_from_others(mine, [p for _, p in conflicts] + changes.removed)
    finished = managers.finish()
    if finished is None:
        merged["metadata"].pop("managedFields", None)
    else:
        merged["metadata"]["managedFields"] = finished
    return merged


def _prune(value: Any, last: Tree, owned: list[Tree], prefix: Path) -> None:
    """Remove from value what the applier applied last time, no longer applies and nobody owns."""
    for part, sub in list(last.items()):
        if part == ".":
            continue
        path = (*prefix, part)
        if not any(tree_node(tree, path) is not None for tree in owned):
            remove_at(value, path)
        elif sub:
            _prune(value, sub, owned, path)


def conflict_error(conflicts: list[tuple[Obj, Path]]) -> errors.ApiError:
    """kube's apply conflict: one line per conflict, or per manager (sorted) with its fields."""
    conflicts = sorted(conflicts, key=lambda c: (orjson.dumps([c[0].get("manager", ""), c[0].get("operation", ""),
                                                               c[0].get("apiVersion", "")]), c[1]))
    if len(conflicts) == 1:
        entry, path = conflicts[0]
        text = f"conflict with {_who(entry)}: {path_text(path)}"
    else:
        by_manager: dict[str, list[str]] = {}
        order: dict[str, str] = {}
        for entry, path in conflicts:
            who = _who(entry)
            by_manager.setdefault(who, []).append(path_text(path))
            order[who] = orjson.dumps([entry.get("manager", ""), entry.get("operation", ""),
                                       entry.get("apiVersion", ""), entry.get("subresource", "")]).decode()
        lines = []
        for who in sorted(by_manager, key=lambda w: order[w]):
            lines.append(f"conflicts with {who}")
            lines += [f"- {p}" for p in by_manager[who]]
        text = "\n".join(lines)
    n = len(conflicts)
    return errors.ApiError(errors.status(
        409, "Conflict", f"Apply failed with {n} conflict{'s' if n > 1 else ''}: {text}",
        {"causes": [{"reason": "FieldManagerConflict", "message": f"conflict with {_who(e)}", "field": path_text(p)}
                    for e, p in conflicts]}))
