"""The upstream Kubernetes schemas (shipped by the ``kubernetes-validate`` package), served as OpenAPI.

One definitions file holds every type of a Kubernetes release as JSON Schema with the ``x-kubernetes-*``
metadata.  From it we build

* per-kind schemas with ``$ref`` resolved, for strategic merge patch and field validation;
* ``/openapi/v2`` (Swagger 2.0, upstream definition names);
* ``/openapi/v3`` (the index) and ``/openapi/v3/<group-version>`` documents, including the PATCH operations
  whose ``fieldValidation``/``dryRun`` parameters kubectl looks for before it relies on server-side validation.

Documents are built on first use and cached; the schema file itself parses in ~15 ms.
"""

from __future__ import annotations

import hashlib
import json
import threading
from importlib import resources
from typing import Any

SERVED_VERSION = "v1.32.0"

Schema = dict[str, Any]
GVK = tuple[str, str, str]

_REF_PREFIX = "#/$defs/"
# JSON-Schema keywords whose values are themselves schemas (everything else is copied verbatim).
_SCHEMA_KEYS = ("items", "additionalProperties", "not")
_SCHEMA_LIST_KEYS = ("allOf", "anyOf", "oneOf")

# Kinds kube-apiserver serves cluster-scoped; everything else in a group-version is namespaced.
_CLUSTER_SCOPED = {
    "Namespace", "Node", "PersistentVolume", "ComponentStatus", "ClusterRole", "ClusterRoleBinding",
    "CustomResourceDefinition", "APIService", "StorageClass", "CSIDriver", "CSINode", "VolumeAttachment",
    "PriorityClass", "RuntimeClass", "IngressClass", "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
    "MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding", "CertificateSigningRequest",
    "ClusterTrustBundle", "FlowSchema", "PriorityLevelConfiguration", "TokenReview", "SelfSubjectReview",
    "SelfSubjectAccessReview", "SelfSubjectRulesReview", "SubjectAccessReview", "DeviceClass",
    "ResourceSlice", "StorageVersion", "StorageVersionMigration", "IPAddress", "ServiceCIDR",
    "VolumeAttributesClass",
}
_META = "io.k8s.apimachinery.pkg.apis.meta.v1."
# Types every group-version lists with its own GVK upstream; they are not resources.
_NOT_RESOURCES = {"DeleteOptions", "WatchEvent", "Status", "APIGroup", "APIGroupList", "APIResourceList",
                  "APIVersions", "Eviction", "Scale", "Binding", "TokenRequest"}


def plural(kind: str) -> str:
    """The resource name kube-apiserver uses for a kind (gengo's default pluralisation)."""
    lower = kind.lower()
    if lower.endswith(("s", "x", "z", "ch", "sh")):
        return lower + "es"
    if lower.endswith("y") and lower[-2:-1] not in "aeiou":
        return lower[:-1] + "ies"
    return lower + "s"


def gv_path(group: str, version: str) -> str:
    return f"api/{version}" if not group else f"apis/{group}/{version}"


class Schemas:
    """The definitions of one Kubernetes release, with lazily built resolved schemas and documents."""

    _cache: dict[str, Schemas] = {}
    _cache_lock = threading.Lock()

    def __init__(self, definitions: dict[str, Schema], version: str) -> None:
        self.version = version
        self.raw = definitions
        self.by_gvk: dict[GVK, str] = {}
        for name, definition in definitions.items():
            for gvk in definition.get("x-kubernetes-group-version-kind") or []:
                key = (gvk.get("group", ""), gvk["version"], gvk["kind"])
                # meta types (DeleteOptions, WatchEvent) carry every group's GVK; real kinds win
                if key not in self.by_gvk or not name.startswith(_META):
                    self.by_gvk[key] = name
        self._resolved: dict[str, Schema] = {}
        self._kind_cache: dict[GVK, Schema | None] = {}
        self._v2: bytes | None = None
        self._v2_pb: bytes | None = None
        self._v3: dict[str, bytes] = {}
        self._v3_index: dict[str, Any] | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, version: str = "1.32") -> Schemas:
        key = version.lstrip("v")
        if key.count(".") == 1:
            key += ".0"
        with cls._cache_lock:
            cached = cls._cache.get(key)
            if cached is None:
                base = resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{key}-local"
                definitions = json.loads((base / "_definitions.json").read_bytes())["$defs"]
                cached = cls._cache[key] = cls(definitions, f"v{key}")
            return cached

    # ------------------------------------------------------------------ resolved schemas
    def definition_name(self, group: str, version: str, kind: str) -> str | None:
        return self.by_gvk.get((group, version, kind))

    def kind_schema(self, group: str, version: str, kind: str) -> Schema | None:
        """The kind's schema, ``$ref`` resolved (shared sub-schemas; cycles stay cycles), types normalised."""
        key = (group, version, kind)
        try:
            return self._kind_cache[key]
        except KeyError:
            pass
        name = self.by_gvk.get(key)
        with self._lock:
            schema = self._resolve_definition(name) if name else None
        self._kind_cache[key] = schema
        return schema

    def resolved(self, name: str) -> Schema:
        with self._lock:
            return self._resolve_definition(name)

    def _resolve_definition(self, name: str) -> Schema:
        done = self._resolved.get(name)
        if done is not None:
            return done
        out: Schema = {}
        self._resolved[name] = out  # registered before filling, so recursive types terminate
        self._fill(out, self.raw[name])
        return out

    def _fill(self, out: Schema, raw: Schema) -> None:
        # Containers are attached before they are filled: a shallow copy taken mid-recursion still sees them.
        nested: list[tuple[Schema, Schema]] = []
        for key, value in raw.items():
            if key == "properties":
                props: Schema = {}
                out["properties"] = props
                nested.extend((props, {"__prop__": (k, v)}) for k, v in value.items())
            elif key in _SCHEMA_KEYS and isinstance(value, dict):
                out[key] = None
                nested.append((out, {"__key__": (key, value)}))
            elif key in _SCHEMA_LIST_KEYS:
                out[key] = [self._resolve_node(v) for v in value]
            elif key == "type":
                out["type"] = _single_type(value)
            else:
                out[key] = value
        if "oneOf" in raw and "type" not in raw and all("type" in v for v in raw["oneOf"]):
            out.update(_scalar_union(raw["oneOf"]))
        for target, spec in nested:
            if "__prop__" in spec:
                prop, value = spec["__prop__"]
                target[prop] = self._resolve_node(value)
            else:
                key, value = spec["__key__"]
                target[key] = self._resolve_node(value)

    def _resolve_node(self, raw: Schema) -> Schema:
        ref = raw.get("$ref")
        if ref is None:
            out: Schema = {}
            self._fill(out, raw)
            return out
        target = self._resolve_definition(ref.rsplit("/", 1)[1])
        extras = {k: v for k, v in raw.items() if k not in ("$ref", "description")}
        if not extras:
            return target
        merged = dict(target)
        for key, value in extras.items():
            merged[key] = _single_type(value) if key == "type" else value
        return merged

    # ------------------------------------------------------------------ OpenAPI documents
    def _convert(self, raw: Any, ref_prefix: str, v3: bool) -> Any:
        """One raw definition as an OpenAPI schema (single ``type``, refs renamed, int-or-string as upstream)."""
        if not isinstance(raw, dict):
            return raw
        ref = raw.get("$ref")
        if ref is not None:
            target = ref_prefix + ref.rsplit("/", 1)[1]
            siblings = {k: v for k, v in raw.items() if k != "$ref"}
            if v3 and siblings:
                return {"allOf": [{"$ref": target}], **siblings}
            return {"$ref": target, **siblings}
        out: Schema = {}
        for key, value in raw.items():
            if key == "properties":
                out[key] = {k: self._convert(v, ref_prefix, v3) for k, v in value.items()}
            elif key in _SCHEMA_KEYS:
                out[key] = self._convert(value, ref_prefix, v3)
            elif key in _SCHEMA_LIST_KEYS:
                out[key] = [self._convert(v, ref_prefix, v3) for v in value]
            elif key == "type":
                single = _single_type(value)
                if single is not None:
                    out[key] = single
            else:
                out[key] = value
        if "oneOf" in out and "type" not in raw and all("type" in v for v in raw["oneOf"]):
            del out["oneOf"]
            out.update(_scalar_union(raw["oneOf"]))
        return out

    def _openapi_definition(self, name: str, ref_prefix: str, v3: bool) -> Schema:
        converted = self._convert(self.raw[name], ref_prefix, v3)
        if self.raw[name].get("x-kubernetes-group-version-kind"):
            # the generator pins apiVersion/kind with enums upstream does not have
            for field in ("apiVersion", "kind"):
                prop = converted.get("properties", {}).get(field)
                if isinstance(prop, dict):
                    prop.pop("enum", None)
        return converted

    def openapi_v2_json(self) -> bytes:
        if self._v2 is None:
            document = {
                "swagger": "2.0",
                "info": {"title": "Kubernetes", "version": self.version},
                "paths": {},
                "definitions": {name: self._openapi_definition(name, "#/definitions/", False)
                                for name in sorted(self.raw)},
            }
            self._v2 = json.dumps(document, separators=(",", ":")).encode()
        return self._v2

    def openapi_v2_protobuf(self) -> bytes:
        """/openapi/v2 as gnostic's ``openapi.v2.Document`` protobuf: what kubectl requests (Accept
        ``application/com.github.proto-openapi.spec.v2.v1.0+protobuf``) for explain --output plaintext-openapiv2
        and for client-side validation of kinds the v3 documents do not vouch for (e.g. ``kind: List``)."""
        if self._v2_pb is None:
            v2 = json.loads(self.openapi_v2_json())
            info = _pb_str(1, v2["info"]["title"]) + _pb_str(2, v2["info"]["version"])
            definitions = b"".join(_pb_msg(1, _pb_str(1, name) + _pb_msg(2, _pb_schema(schema)))
                                   for name, schema in v2["definitions"].items())
            self._v2_pb = (_pb_str(1, v2["swagger"]) + _pb_msg(2, info) + _pb_msg(8, b"")
                           + _pb_msg(9, definitions))
        return self._v2_pb

    def group_versions(self) -> dict[str, list[GVK]]:
        """``api/v1`` / ``apis/apps/v1`` -> the resource kinds defined there."""
        out: dict[str, list[GVK]] = {}
        for (group, version, kind), name in self.by_gvk.items():
            if name.startswith(_META) or kind.endswith("List") or kind in _NOT_RESOURCES:
                continue
            out.setdefault(gv_path(group, version), []).append((group, version, kind))
        return out

    def openapi_v3_paths(self) -> dict[str, Any]:
        if self._v3_index is None:
            index = {}
            for path in sorted(self.group_versions()):
                digest = hashlib.sha512(self.openapi_v3_json(path) or b"").hexdigest().upper()
                index[path] = {"serverRelativeURL": f"/openapi/v3/{path}?hash={digest}"}
            self._v3_index = index
        return self._v3_index

    def openapi_v3_json(self, group_version_path: str) -> bytes | None:
        path = group_version_path.strip("/")
        cached = self._v3.get(path)
        if cached is not None:
            return cached
        kinds = self.group_versions().get(path)
        if not kinds:
            return None
        roots = [self.by_gvk[gvk] for gvk in kinds]
        roots += [self.by_gvk[(g, v, k + "List")] for g, v, k in kinds if (g, v, k + "List") in self.by_gvk]
        roots += [_META + "Status", _META + "Patch", _META + "DeleteOptions"]
        names = self._closure(roots)
        paths: dict[str, Any] = {}
        for group, version, kind in sorted(kinds):
            paths.update(self._resource_paths(path, group, version, kind))
        document = {
            "openapi": "3.0.0",
            "info": {"title": "Kubernetes", "version": self.version},
            "paths": paths,
            "components": {"schemas": {name: self._openapi_definition(name, "#/components/schemas/", True)
                                       for name in sorted(names)}},
        }
        body = json.dumps(document, separators=(",", ":")).encode()
        self._v3[path] = body
        return body

    def _closure(self, roots: list[str]) -> set[str]:
        seen: set[str] = set()
        stack = [r for r in roots if r in self.raw]
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            stack.extend(n for n in _refs(self.raw[name]) if n not in seen and n in self.raw)
        return seen

    def _resource_paths(self, path: str, group: str, version: str, kind: str) -> dict[str, Any]:
        """The item path of a resource with the operations kubectl inspects (PATCH with its query parameters)."""
        resource = plural(kind)
        if kind in _CLUSTER_SCOPED:
            item = f"/{path}/{resource}/{{name}}"
        else:
            item = f"/{path}/namespaces/{{namespace}}/{resource}/{{name}}"
        ref = {"$ref": f"#/components/schemas/{self.by_gvk[(group, version, kind)]}"}
        gvk = {"group": group, "version": version, "kind": kind}
        query = [{"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": True}}
                 for name in ("dryRun", "fieldManager", "fieldValidation")]
        body = {"content": {ctype: {"schema": ref} for ctype in ("application/json",)}}
        ok = {"200": {"description": "OK", "content": {"application/json": {"schema": ref}}}}
        operation = {"parameters": query, "responses": ok, "x-kubernetes-group-version-kind": gvk}
        patch_body = {"content": {ctype: {"schema": {"$ref": f"#/components/schemas/{_META}Patch"}} for ctype in (
            "application/json-patch+json", "application/merge-patch+json",
            "application/strategic-merge-patch+json", "application/apply-patch+yaml")}, "required": True}
        return {item: {
            "get": {"responses": ok, "x-kubernetes-action": "get", "x-kubernetes-group-version-kind": gvk},
            "put": {**operation, "requestBody": body, "x-kubernetes-action": "put"},
            "patch": {**operation, "requestBody": patch_body, "x-kubernetes-action": "patch",
                      "parameters": query + [{"name": "force", "in": "query", "schema": {"type": "boolean"}}]},
            "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]
            + ([] if kind in _CLUSTER_SCOPED else
               [{"name": "namespace", "in": "path", "required": True, "schema": {"type": "string"}}]),
        }}


def _single_type(value: Any) -> Any:
    if isinstance(value, list):
        types = [t for t in value if t != "null"]
        return types[0] if len(types) == 1 else None
    return value


def _scalar_union(variants: list[Schema]) -> Schema:
    types = {_single_type(v["type"]) for v in variants}
    if types == {"string", "integer"}:
        return {"type": "string", "format": "int-or-string"}
    return {"type": "string"}  # resource.Quantity: upstream publishes it as a string


def _refs(raw: Any) -> list[str]:
    out: list[str] = []
    stack = [raw]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith(_REF_PREFIX):
                out.append(ref[len(_REF_PREFIX):])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return out


# ---------------------------------------------------------------------- gnostic OpenAPI v2 protobuf
# Field numbers of openapi.v2.Schema (github.com/google/gnostic-models openapiv2/OpenAPIv2.proto).
_PB_SCHEMA_STRINGS = {"$ref": 1, "format": 2, "title": 3, "description": 4, "pattern": 13, "discriminator": 26}
_PB_SCHEMA_INTS = {"maxLength": 11, "minLength": 12, "maxItems": 14, "minItems": 15, "maxProperties": 17,
                   "minProperties": 18}


def _pb_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _pb_msg(field: int, payload: bytes) -> bytes:
    return _pb_varint(field << 3 | 2) + _pb_varint(len(payload)) + payload


def _pb_str(field: int, value: str) -> bytes:
    return _pb_msg(field, value.encode())


def _pb_any(field: int, value: Any) -> bytes:
    """A gnostic ``Any``: the value as YAML text (JSON is YAML)."""
    return _pb_msg(field, _pb_str(2, json.dumps(value)))


def _pb_schema(schema: Schema) -> bytes:
    out = bytearray()
    for key, value in schema.items():
        if key in _PB_SCHEMA_STRINGS:
            out += _pb_str(_PB_SCHEMA_STRINGS[key], value)
        elif key in _PB_SCHEMA_INTS:
            out += _pb_varint(_PB_SCHEMA_INTS[key] << 3) + _pb_varint(int(value))
        elif key == "uniqueItems" and value:
            out += _pb_varint(16 << 3) + b"\x01"
        elif key == "required":
            out += b"".join(_pb_str(19, item) for item in value)
        elif key == "enum":
            out += b"".join(_pb_any(20, item) for item in value)
        elif key == "additionalProperties":
            inner = _pb_msg(1, _pb_schema(value)) if isinstance(value, dict) else \
                _pb_varint(2 << 3) + (b"\x01" if value else b"\x00")
            out += _pb_msg(21, inner)
        elif key == "type":
            out += _pb_msg(22, _pb_str(1, value))
        elif key == "items" and isinstance(value, dict):
            out += _pb_msg(23, _pb_msg(1, _pb_schema(value)))
        elif key == "allOf":
            out += b"".join(_pb_msg(24, _pb_schema(item)) for item in value)
        elif key == "properties":
            out += _pb_msg(25, b"".join(_pb_msg(1, _pb_str(1, name) + _pb_msg(2, _pb_schema(item)))
                                        for name, item in value.items()))
        elif key.startswith("x-"):
            out += _pb_msg(31, _pb_str(1, key) + _pb_any(2, value))
    return bytes(out)
