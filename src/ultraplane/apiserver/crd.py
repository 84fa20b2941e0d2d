"""CustomResourceDefinitions (apiextensions.k8s.io/v1) and the custom resources they define.

* ``crd_strategy()``: the CRD resource itself (kube's defaults, validation and 422 messages; the first
  DELETE adds the ``customresourcecleanup.apiextensions.k8s.io`` finalizer and a Terminating condition).
* ``cr_strategies(crd)``: one ``Strategy`` per served version of a CRD, so custom resources go through
  the same registry, REST, watch-cache, table and selector code as built-ins. Objects live under
  ``/registry/<group>/<plural>/`` (kube's key) in the storage version's apiVersion (conversion ``None``).
* ``CrdController``: what kube's naming, establishing and finalizing controllers do, in-process. It
  lists the CRDs at start (so CRDs survive restarts), then follows their watch: it (re)registers the
  served strategies, writes NamesAccepted/Established and acceptedNames, and on deletion deletes every
  custom resource before dropping the finalizer. Every change refreshes discovery and OpenAPI.
* ``crdopenapi.CustomOpenApi``: the OpenAPI documents of the served CRDs, installed in front of the
  built-in ones.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import logging
import re
from collections.abc import Callable
from typing import Any

from ultraplane.apiserver import celvalidation, crdschema, errors
from ultraplane.apiserver import validation as v
from ultraplane.apiserver.crdopenapi import CustomOpenApi
from ultraplane.apiserver.registry import (
    Column,
    ListOptions,
    Obj,
    Registry,
    Strategy,
    WriteOptions,
    now_rfc3339,
)
from ultraplane.apiserver.resources import AGE_DESCRIPTION, NAME

log = logging.getLogger("ultraplane.apiserver.crd")

GROUP = "apiextensions.k8s.io"
PLURAL = "customresourcedefinitions"
CLEANUP_FINALIZER = "customresourcecleanup.apiextensions.k8s.io"
CR_VERBS = ("delete", "deletecollection", "get", "list", "patch", "create", "update", "watch")
CLEANUP_TIMEOUT_S = 60.0  # kube's finalizer waits this long for instances to go before it reports and retries
FINALIZE_RETRY_S = 5.0
_KUBE_VERSION = re.compile(r"^v(\d+)(?:(alpha|beta)(\d+))?$")


def version_priority(version: str) -> tuple[int, int, int, str]:
    """Sort key for kube's version order: GA > beta > alpha, higher numbers first, then the rest by name."""
    m = _KUBE_VERSION.match(version)
    if m is None:
        return (3, 0, 0, version)
    stage = {None: 0, "beta": 1, "alpha": 2}[m.group(2)]
    return (stage, -int(m.group(1)), -int(m.group(3) or 0), version)


def condition(kind: str, status: str, reason: str, message: str) -> dict[str, str]:
    return {"type": kind, "status": status, "lastTransitionTime": now_rfc3339(), "reason": reason,
            "message": message}


def set_condition(obj: Obj, cond: dict[str, str]) -> None:
    """Replace the condition of cond's type, keeping lastTransitionTime when its status did not change."""
    conditions = obj.setdefault("status", {}).setdefault("conditions", []) or []
    for i, existing in enumerate(conditions):
        if existing.get("type") == cond["type"]:
            if existing.get("status") == cond["status"]:
                cond = {**cond, "lastTransitionTime": existing.get("lastTransitionTime", cond["lastTransitionTime"])}
            conditions[i] = cond
            break
    else:
        conditions.append(cond)
    obj["status"]["conditions"] = conditions


def condition_true(obj: Obj, kind: str) -> bool:
    return any(c.get("type") == kind and c.get("status") == "True"
               for c in (obj.get("status") or {}).get("conditions") or [])


def storage_version(spec: dict[str, Any]) -> str:
    return next((ver.get("name", "") for ver in spec.get("versions") or [] if ver.get("storage")), "")


# ============================================================================ the CRD resource
def crd_defaults(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    names = spec.setdefault("names", {})
    kind = names.get("kind") or ""
    if kind:
        names.setdefault("singular", kind.lower())
        names.setdefault("listKind", kind + "List")
    spec.setdefault("conversion", {"strategy": "None"})
    for ver in spec.get("versions") or []:
        if isinstance(ver, dict):
            ver.setdefault("served", False)
            ver.setdefault("storage", False)


def crd_prepare_create(obj: Obj) -> None:
    """kube's PrepareForCreate: status reset, the storage version recorded in storedVersions."""
    stored = storage_version(obj.get("spec") or {})
    obj["status"] = {"acceptedNames": {"kind": "", "plural": ""}, "storedVersions": [stored] if stored else []}


def crd_prepare_delete(obj: Obj) -> None:
    """kube's CRD REST Delete: the cleanup finalizer holds the CRD until its custom resources are gone."""
    finalizers = obj["metadata"].setdefault("finalizers", [])
    if CLEANUP_FINALIZER not in finalizers:
        finalizers.append(CLEANUP_FINALIZER)
    set_condition(obj, condition("Terminating", "True", "InstanceDeletionPending",
                                 "CustomResourceDefinition marked for deletion; CustomResource deletion will "
                                 "begin soon"))


def _label_causes(field: str, value: Any, mixed_case: bool = False) -> list[v.Cause]:
    text = str(value)
    problems = crdschema.dns1035_label_errors(text.lower() if mixed_case else text)
    if not problems:
        return []
    detail = ",".join(problems)
    if mixed_case:
        detail = "may have mixed case, but should otherwise match: " + detail
    return [v.invalid(field, value, detail)]


def names_causes(names: dict[str, Any], path: str) -> list[v.Cause]:
    """ValidateCustomResourceDefinitionNames."""
    causes: list[v.Cause] = []
    for key in ("plural", "singular"):
        if names.get(key):
            causes += _label_causes(f"{path}.{key}", names[key])
    for key in ("kind", "listKind"):
        if names.get(key):
            causes += _label_causes(f"{path}.{key}", names[key], mixed_case=True)
    for i, short in enumerate(names.get("shortNames") or []):
        causes += _label_causes(f"{path}.shortNames[{i}]", short)
    if names.get("kind") and names.get("kind") == names.get("listKind"):
        causes.append(v.invalid(f"{path}.listKind", names["listKind"], "kind and listKind may not be the same"))
    for i, category in enumerate(names.get("categories") or []):
        causes += _label_causes(f"{path}.categories[{i}]", category)
    return causes


def _go_versions(versions: list[Any]) -> str:
    """A short Go-syntax rendering of spec.versions for the messages that print the whole list."""
    inner = ", ".join(
        f'apiextensions.CustomResourceDefinitionVersion{{Name:{v.go_quote(str(x.get("name", "")))}, '
        f'Served:{str(bool(x.get("served"))).lower()}, Storage:{str(bool(x.get("storage"))).lower()}}}'
        for x in versions if isinstance(x, dict))
    return f"[]apiextensions.CustomResourceDefinitionVersion{{{inner}}}"


def _versions_invalid(versions: list[Any], detail: str) -> v.Cause:
    return {"reason": "FieldValueInvalid", "field": "spec.versions",
            "message": f"Invalid value: {_go_versions(versions)}: {detail}"}


def schema_causes(schema: Any, path: str) -> list[v.Cause]:
    """A openAPIV3Schema's structural checks, then (on a sound schema) its CEL rules' compilation."""
    causes = crdschema.structural_causes(schema, path)
    if not causes and celvalidation.has_rules(schema):
        causes = celvalidation.compile_schema(schema, path)[1]
    return causes


def version_causes(ver: dict[str, Any], path: str, hoisted: bool = False) -> list[v.Cause]:
    """ValidateCustomResourceDefinitionVersion: schema, subresources, printer columns (kube's order).
    ``hoisted``: the schema is identical in every version and is checked once as spec.validation."""
    schema = (ver.get("schema") or {}).get("openAPIV3Schema")
    if hoisted:
        causes = []
    elif schema is None:
        causes = [v.required(f"{path}.schema.openAPIV3Schema", "schemas are required")]
    else:
        causes = schema_causes(schema, f"{path}.schema.openAPIV3Schema")
    return causes + _scale_causes(ver, path) + _column_causes(ver, path)


def hoisted_schema(versions: list[dict[str, Any]]) -> Any:
    """The schema kube's v1 -> internal conversion moves to spec.validation: the one every version has."""
    if not versions or not isinstance((versions[0].get("schema") or {}).get("openAPIV3Schema"), dict):
        return None
    first = versions[0].get("schema")
    return first["openAPIV3Schema"] if all(ver.get("schema") == first for ver in versions) else None


def _scale_causes(ver: dict[str, Any], path: str) -> list[v.Cause]:
    causes: list[v.Cause] = []
    scale = (ver.get("subresources") or {}).get("scale")
    if isinstance(scale, dict):
        spath = f"{path}.subresources.scale"
        for key, under in (("specReplicasPath", ".spec"), ("statusReplicasPath", ".status")):
            value = scale.get(key) or ""
            if not value:
                causes.append(v.required(f"{spath}.{key}"))
            elif not value.startswith(under + "."):
                causes.append(v.invalid(f"{spath}.{key}", value, f"should be a json path under {under}"))
        selector = scale.get("labelSelectorPath")
        if selector and not selector.startswith((".spec.", ".status.")):
            causes.append(v.invalid(f"{spath}.labelSelectorPath", selector,
                                    "should be a json path under either .spec or .status"))
    return causes


def _column_causes(ver: dict[str, Any], path: str) -> list[v.Cause]:
    causes: list[v.Cause] = []
    for i, col in enumerate(ver.get("additionalPrinterColumns") or []):
        cpath = f"{path}.additionalPrinterColumns[{i}]"
        if not col.get("name"):
            causes.append(v.required(f"{cpath}.name"))
        if not col.get("type"):
            causes.append(v.required(f"{cpath}.type"))
        elif col["type"] not in crdschema.PRINTER_COLUMN_TYPES:
            causes.append(v.not_supported(f"{cpath}.type", col["type"], sorted(crdschema.PRINTER_COLUMN_TYPES)))
        fmt = col.get("format")
        formats = ["byte", "date", "date-time", "double", "float", "int32", "int64", "password"]
        if fmt and fmt not in formats:
            causes.append(v.not_supported(f"{cpath}.format", fmt, formats))
        path_text = col.get("jsonPath", "")
        if not path_text:
            causes.append(v.required(f"{cpath}.jsonPath"))
        elif crdschema.compile_jsonpath(path_text) is None:
            causes.append(v.invalid(f"{cpath}.jsonPath", path_text, "must be a simple json path"))
    return causes


def crd_validate(obj: Obj, old: Obj | None) -> list[v.Cause]:
    """ValidateCustomResourceDefinition (plus ...Update's immutable fields)."""
    causes: list[v.Cause] = []
    spec = obj.get("spec") or {}
    names = spec.get("names") or {}
    group = spec.get("group") or ""
    name = obj["metadata"].get("name", "")
    if name and name != f"{names.get('plural', '')}.{group}":
        causes.append(v.invalid("metadata.name", name, 'must be spec.names.plural+"."+spec.group'))
    if not group:
        causes.append(v.required("spec.group"))
    elif v.dns1123_subdomain_errors(group):
        causes.append(v.invalid("spec.group", group, ",".join(v.dns1123_subdomain_errors(group))))
    elif "." not in group:
        causes.append(v.invalid("spec.group", group, "should be a domain with at least one dot"))
    scope = spec.get("scope") or ""
    if not scope:
        causes.append(v.required("spec.scope"))
    elif scope not in ("Cluster", "Namespaced"):
        causes.append(v.not_supported("spec.scope", scope, ["Cluster", "Namespaced"]))
    versions = [ver for ver in spec.get("versions") or [] if isinstance(ver, dict)]
    seen: set[str] = set()
    unique = True
    shared_schema = hoisted_schema(versions)
    for i, ver in enumerate(versions):
        vname = ver.get("name") or ""
        if vname in seen:
            unique = False
        seen.add(vname)
        causes += _label_causes(f"spec.versions[{i}].name", vname)  # "" fails the label rule too, as in kube
        causes += version_causes(ver, f"spec.versions[{i}]", hoisted=shared_schema is not None)
    if not unique:
        causes.append(_versions_invalid(versions, "must contain unique version names"))
    if sum(1 for ver in versions if ver.get("storage")) != 1:
        causes.append(_versions_invalid(versions, "must have exactly one version marked as storage version"))
    for key in ("plural", "singular", "kind", "listKind"):
        if not names.get(key):
            causes.append(v.required(f"spec.names.{key}"))
    causes += names_causes(names, "spec.names")
    if shared_schema is not None:
        causes += schema_causes(shared_schema, "spec.validation.openAPIV3Schema")
    if spec.get("preserveUnknownFields") is True:
        causes.append(v.invalid("spec.preserveUnknownFields", True, "cannot set to true, set "
                                "x-kubernetes-preserve-unknown-fields to true in spec.versions[*].schema instead"))
    if old is not None:
        old_spec = old.get("spec") or {}
        for field, new_value, old_value in (
                ("spec.group", group, old_spec.get("group")),
                ("spec.names.plural", names.get("plural"), (old_spec.get("names") or {}).get("plural"))):
            if new_value != old_value:
                causes.append(v.invalid(field, new_value, "field is immutable"))
        if condition_true(old, "Established"):
            for field, new_value, old_value in (
                    ("spec.scope", scope, old_spec.get("scope")),
                    ("spec.names.kind", names.get("kind"), (old_spec.get("names") or {}).get("kind"))):
                if new_value != old_value:
                    causes.append(v.invalid(field, new_value, "field is immutable"))
        stored = (obj.get("status") or {}).get("storedVersions") or []
        served_names = {ver.get("name") for ver in versions}
        for i, stored_version in enumerate(stored):
            if stored_version not in served_names:
                causes.append(v.invalid(f"status.storedVersions[{i}]", stored_version, "must appear in spec.versions"))
    return causes


def crd_row(obj: Obj, now: dt.datetime) -> list[Any]:
    return [obj["metadata"]["name"], obj["metadata"].get("creationTimestamp", "")]


def crd_strategy() -> Strategy:
    return Strategy(GROUP, "v1", "CustomResourceDefinition", PLURAL, "customresourcedefinition",
                    namespaced=False, short_names=["crd", "crds"], categories=["api-extensions"],
                    storage=f"{GROUP}/{PLURAL}", subresources=("status",), generation=True,
                    defaults=crd_defaults, validate=crd_validate, prepare_create=crd_prepare_create,
                    prepare_delete=crd_prepare_delete,
                    columns=[NAME(), Column("Created At", "date", "", AGE_DESCRIPTION)], row=crd_row)


# ============================================================================ custom resources
def _no_fields(obj: Obj) -> dict[str, str]:
    return {}


def _printer_columns(ver: dict[str, Any]) -> list[dict[str, Any]]:
    columns = ver.get("additionalPrinterColumns") or []
    if not columns:  # kube's default when a version declares none
        return [{"name": "Age", "type": "date", "description": AGE_DESCRIPTION,
                 "jsonPath": ".metadata.creationTimestamp"}]
    return columns


def cr_strategies(crd: Obj, terminating: Callable[[], bool]) -> list[Strategy]:
    """One Strategy per served version of the CRD."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    group = spec["group"]
    stored_as = storage_version(spec)
    out = []
    for ver in spec.get("versions") or []:
        if ver.get("served"):
            out.append(_cr_strategy(group, ver, names, spec.get("scope") == "Namespaced", stored_as, terminating))
    return out


def _cr_strategy(group: str, ver: dict[str, Any], names: dict[str, Any], namespaced: bool, stored_as: str,
                 terminating: Callable[[], bool]) -> Strategy:
    version = ver["name"]
    kind = names["kind"]
    plural = names["plural"]
    schema: crdschema.Schema = (ver.get("schema") or {}).get("openAPIV3Schema") or {"type": "object"}
    strict = crdschema.strict_schema(schema)
    defaulted = crdschema.has_defaults(schema)
    api_version = f"{group}/{version}"
    stored_api_version = f"{group}/{stored_as}"

    def defaults(obj: Obj) -> None:
        crdschema.prune(obj, schema)
        if defaulted:
            crdschema.apply_defaults(obj, schema)

    # x-kubernetes-validations: compiled once per CRD version (the CRD was refused if a rule did not compile)
    rules = celvalidation.compile_schema(schema, "")[0] if celvalidation.has_rules(schema) else None

    def validate(obj: Obj, old: Obj | None) -> list[v.Cause]:
        causes = crdschema.validate(obj, schema)
        # CRDValidationRatcheting (on by default since 1.30): errors in parts an update left alone pass
        if old is not None and causes:
            causes = crdschema.ratchet(causes, obj, old)
        if rules is not None:
            blocking = celvalidation.blocked(causes)
            causes = [*causes, blocking] if blocking is not None else [*causes, *rules.validate(obj, old)]
        return causes

    has_status = "status" in (ver.get("subresources") or {})

    def prepare_create(obj: Obj) -> None:
        if terminating():
            # kube: NewMethodNotSupported with its message replaced
            raise errors.ApiError(errors.status(
                405, "MethodNotAllowed", "create not allowed while custom resource definition is terminating",
                {"group": group, "kind": plural}))
        if has_status:
            obj.pop("status", None)  # with a status subresource, create cannot set status

    def find_unknown(obj: Obj) -> list[str]:
        return crdschema.unknown_paths(obj, schema)

    from_storage = to_storage = None
    if defaulted or version != stored_as:
        def from_storage(obj: Obj) -> Obj:  # defaults apply on read, as kube's decoder does
            obj["apiVersion"] = api_version
            if defaulted:
                crdschema.apply_defaults(obj, schema)
            return obj
    if version != stored_as:
        def to_storage(obj: Obj) -> Obj:
            return {**obj, "apiVersion": stored_api_version}

    column_specs = _printer_columns(ver)
    compiled = [(c.get("type", "string"), crdschema.compile_jsonpath(c.get("jsonPath", "")) or [])
                for c in column_specs]

    def row(obj: Obj, now: dt.datetime) -> list[Any]:
        cells: list[Any] = [obj["metadata"]["name"]]
        for ctype, steps in compiled:
            found = crdschema.eval_jsonpath(steps, obj)
            cells.append(crdschema.column_cell(ctype, found[0], now) if found else None)
        return cells

    # selectableFields (CustomResourceFieldSelectors, on by default in 1.32): extra field-selector labels
    selectable = [(str(f.get("jsonPath", "")).lstrip("."), crdschema.compile_jsonpath(f.get("jsonPath", "")) or [])
                  for f in ver.get("selectableFields") or []]

    def fields(obj: Obj) -> dict[str, str]:
        out = {}
        for label, steps in selectable:
            found = crdschema.eval_jsonpath(steps, obj)
            value = found[0] if found else ""
            out[label] = value if isinstance(value, str) else crdschema.go_number(value)
        return out

    subresources = ver.get("subresources") or {}
    scale = subresources.get("scale") or {}
    scale_path = (str(scale.get("specReplicasPath", ".spec.replicas")).lstrip("."),
                  str(scale.get("statusReplicasPath", ".status.replicas")).lstrip("."),
                  str(scale.get("labelSelectorPath") or "").lstrip("."))
    return Strategy(
        group, version, kind, plural, names.get("singular") or kind.lower(), namespaced=namespaced,
        short_names=list(names.get("shortNames") or []), categories=list(names.get("categories") or []),
        storage=f"{group}/{plural}", subresources=tuple(s for s in ("status", "scale") if s in subresources),
        generation=True, verbs=CR_VERBS, defaults=defaults, validate=validate, prepare_create=prepare_create,
        columns=[NAME(), *(Column(c.get("name", ""), c.get("type", "string"), c.get("format", ""),
                                  c.get("description", ""), int(c.get("priority") or 0)) for c in column_specs)],
        row=row, scale_path=scale_path, from_storage=from_storage, to_storage=to_storage, custom=True,
        fields=fields if selectable else _no_fields,
        schema=strict, find_unknown=find_unknown)


# ============================================================================ the controller
class CrdController:
    """Naming, establishing and finalizing controllers for CRDs, and the registration of their resources."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.crd = registry.strategies[(GROUP, "v1", PLURAL)]
        self.served: dict[str, list[Strategy]] = {}  # CRD name -> its registered strategies
        self.specs: dict[str, dict[str, Any]] = {}  # CRD name -> the spec they were built from
        self.terminating: set[str] = set()
        self.listeners: list[Callable[[], None]] = []  # discovery / OpenAPI refresh
        self.openapi: CustomOpenApi | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.task: asyncio.Task[None] | None = None
        self.wo = WriteOptions(field_manager="kube-apiserver")
        self._batching = False

    async def start(self) -> None:
        """Serve every stored CRD before the API server takes requests, then follow changes."""
        listed = await self.registry.list(self.crd, "", ListOptions())
        self._batching = True  # one discovery/OpenAPI refresh for all of them
        try:
            for obj in listed["items"]:
                await self.sync(obj)
        finally:
            self._batching = False
        self.notify()
        revision = int(listed["metadata"]["resourceVersion"])
        self.task = asyncio.get_running_loop().create_task(self.run(revision))

    async def stop(self) -> None:
        for task in [*self._tasks, *([self.task] if self.task else [])]:
            task.cancel()
        await asyncio.gather(*self._tasks, *([self.task] if self.task else []), return_exceptions=True)

    async def run(self, revision: int) -> None:
        cache = self.registry.cache_for(self.crd)
        while True:
            try:
                sub = cache.subscribe(self.crd.prefix, self.crd.prefix, False, revision)
            except Exception:  # compacted past us: resynchronise from a fresh list
                listed = await self.registry.list(self.crd, "", ListOptions())
                for obj in listed["items"]:
                    await self.sync(obj)
                revision = int(listed["metadata"]["resourceVersion"])
                continue
            try:
                while not sub.ended:
                    await sub.wait(30.0)
                    while sub.queue:
                        ev = sub.queue.popleft()
                        revision = ev.revision
                        obj = ev.obj()
                        if obj is None:
                            continue
                        try:
                            if ev.deleted:
                                self.unserve(obj["metadata"]["name"])
                                await self.resync_unserved()  # names it held may be free now
                            else:
                                await self.sync(copy.deepcopy(obj))
                        except asyncio.CancelledError:
                            raise
                        except Exception:
                            log.exception("syncing CRD %s failed", obj["metadata"].get("name"))
            finally:
                sub.close()

    async def resync_unserved(self) -> None:
        listed = await self.registry.list(self.crd, "", ListOptions())
        for obj in listed["items"]:
            if obj["metadata"]["name"] not in self.served and not obj["metadata"].get("deletionTimestamp"):
                await self.sync(obj)

    # ---------------------------------------------------------------- serving
    def notify(self) -> None:
        if self._batching:
            return
        if self.openapi is not None:
            self.openapi.update([s for strategies in self.served.values() for s in strategies], self.specs)
        for listener in self.listeners:
            listener()

    def serve(self, name: str, crd: Obj) -> None:
        spec = crd.get("spec") or {}
        if self.specs.get(name) == spec and name in self.served:
            return
        self.unserve(name, notify=False)
        strategies = cr_strategies(crd, lambda: name in self.terminating)
        for s in strategies:
            self.registry.register(s)
        self.served[name] = strategies
        self.specs[name] = copy.deepcopy(spec)
        self.notify()

    def unserve(self, name: str, *, notify: bool = True) -> None:
        strategies = self.served.pop(name, None)
        self.specs.pop(name, None)
        if strategies is None:
            return
        for s in strategies:
            if self.registry.strategies.get((s.group, s.version, s.plural)) is s:
                del self.registry.strategies[(s.group, s.version, s.plural)]
        if notify:
            self.notify()

    def name_conflicts(self, name: str, spec: dict[str, Any]) -> list[str]:
        """The naming controller: names another CRD of the group already serves."""
        names = spec.get("names") or {}
        taken: set[str] = set()
        kinds: set[str] = set()
        for other, other_spec in self.specs.items():
            if other == name or other_spec.get("group") != spec.get("group"):
                continue
            other_names = other_spec.get("names") or {}
            taken |= {other_names.get("plural"), other_names.get("singular"), *(other_names.get("shortNames") or [])}
            kinds |= {other_names.get("kind"), other_names.get("listKind")}
        problems = [f'"{n}" is already in use' for n in
                    [names.get("plural"), names.get("singular"), *(names.get("shortNames") or [])] if n in taken]
        problems += [f'"{n}" is already in use' for n in (names.get("kind"), names.get("listKind")) if n in kinds]
        return problems

    async def sync(self, crd: Obj) -> None:
        name = crd["metadata"]["name"]
        if crd["metadata"].get("deletionTimestamp"):
            if name not in self.terminating:
                self.terminating.add(name)
                if name not in self.served and condition_true(crd, "Established"):
                    self.serve(name, crd)  # restarted mid-deletion: serve them so they can be deleted
                task = asyncio.get_running_loop().create_task(self.finalize(name))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            return
        spec = crd.get("spec") or {}
        conflicts = self.name_conflicts(name, spec)
        if not conflicts:
            self.serve(name, crd)
        await self.update_status(name, conflicts)

    async def update_status(self, name: str, conflicts: list[str]) -> None:
        def mutate(obj: Obj) -> Obj:
            spec = obj.get("spec") or {}
            status = obj.setdefault("status", {})
            if conflicts:
                # utilerrors.NewAggregate's text: one error as is, several in brackets
                text = conflicts[0] if len(conflicts) == 1 else "[" + ", ".join(conflicts) + "]"
                set_condition(obj, condition("NamesAccepted", "False", "NameConflict", text))
                if not condition_true(obj, "Established"):
                    set_condition(obj, condition("Established", "False", "NotAccepted", "not all names are accepted"))
                return obj
            names = dict(spec.get("names") or {})
            status["acceptedNames"] = names
            set_condition(obj, condition("NamesAccepted", "True", "NoConflicts", "no conflicts found"))
            set_condition(obj, condition("Established", "True", "InitialNamesAccepted",
                                         "the initial names have been accepted"))
            stored = status.setdefault("storedVersions", [])
            current = storage_version(spec)
            if current and current not in stored:
                stored.append(current)
            return obj

        try:
            await self.registry.guaranteed_update(self.crd, "", name, mutate, self.wo, subresource="status")
        except errors.ApiError as exc:
            if exc.code != 404:
                raise

    # ---------------------------------------------------------------- deletion (the finalizing controller)
    async def finalize(self, name: str) -> None:
        """Delete every instance, then drop the cleanup finalizer; retried (as kube requeues) until done."""
        try:
            while not await self._finalize_once(name):
                await asyncio.sleep(FINALIZE_RETRY_S)
        except asyncio.CancelledError:
            raise
        except errors.ApiError as exc:
            if exc.code != 404:  # 404: the CRD is gone already
                log.exception("finalizing CRD %s failed", name)
        except Exception:
            log.exception("finalizing CRD %s failed", name)
        finally:
            self.terminating.discard(name)

    async def _finalize_once(self, name: str) -> bool:
        await self._set_status_condition(name, condition("Terminating", "True", "InstanceDeletionInProgress",
                                                         "CustomResource deletion is in progress"))
        strategies = self.served.get(name) or []
        if strategies:
            done = await self.delete_instances(strategies[0])
        else:
            done = condition("Terminating", "False", "NeverEstablished", "resource was never established")
        await self._set_status_condition(name, done)
        if done["reason"] not in ("InstanceDeletionCompleted", "NeverEstablished"):
            return False

        def drop_finalizer(obj: Obj) -> Obj:
            obj["metadata"]["finalizers"] = [f for f in obj["metadata"].get("finalizers") or []
                                             if f != CLEANUP_FINALIZER]
            return obj

        await self.registry.guaranteed_update(self.crd, "", name, drop_finalizer, self.wo)
        return True

    async def _set_status_condition(self, name: str, cond: dict[str, str]) -> None:
        def mutate(obj: Obj) -> Obj:
            set_condition(obj, cond)
            return obj

        await self.registry.guaranteed_update(self.crd, "", name, mutate, self.wo, subresource="status")

    async def delete_instances(self, s: Strategy) -> dict[str, str]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CLEANUP_TIMEOUT_S
        wo = WriteOptions(field_manager="kube-apiserver")
        while True:
            try:
                listed = await self.registry.list(s, "", ListOptions())
            except errors.ApiError as exc:
                return condition("Terminating", "True", "InstanceDeletionFailed",
                                 f"could not list instances: {exc.status.get('message')}")
            if not listed["items"]:
                return condition("Terminating", "False", "InstanceDeletionCompleted", "removed all instances")
            for item in listed["items"]:
                meta = item["metadata"]
                if meta.get("deletionTimestamp"):
                    continue
                try:
                    await self.registry.delete(s, meta.get("namespace", ""), meta["name"], {}, wo)
                except errors.ApiError as exc:
                    if exc.code != 404:
                        log.warning("deleting %s/%s: %s", s.plural, meta["name"], exc.status.get("message"))
            if loop.time() > deadline:
                return condition("Terminating", "True", "InstanceDeletionCheck",
                                 "could not confirm zero CustomResources remaining: timed out waiting for the "
                                 "condition")
            await asyncio.sleep(0.2)


async def install(registry: Registry, app: Any) -> CrdController:
    """Wire CRDs into a started registry and its ApiServer; returns the running controller."""
    controller = CrdController(registry)
    if app.schemas is not None:
        controller.openapi = CustomOpenApi(app.schemas)
        app.schemas = controller.openapi
        registry.schemas = controller.openapi  # type: ignore[attr-defined]
    controller.listeners.append(app.resources_changed)
    await controller.start()
    return controller
