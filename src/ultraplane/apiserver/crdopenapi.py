"""OpenAPI documents for CRDs: the built-in ``openapi.Schemas`` plus what the served CRDs add.

``CustomOpenApi`` has the interface app.py uses for /openapi: one ``/openapi/v3/apis/<group>/<version>``
document per CRD group-version (definitions named ``<reversed group>.<version>.<Kind>``, as kube
names them, with PATCH operations carrying ``fieldValidation`` so kubectl validates on the server) and
the CRD definitions added to ``/openapi/v2`` (JSON and gnostic protobuf, for ``kubectl explain
--output plaintext-openapiv2`` and kubectl's client-side validation of ``kind: List`` documents).
Documents are built on first request after a change.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from ultraplane.apiserver import crdschema
from ultraplane.apiserver.registry import Strategy

_META = "io.k8s.apimachinery.pkg.apis.meta.v1."
_API_VERSION_DESCRIPTION = (
    "APIVersion defines the versioned schema of this representation of an object. Servers should convert "
    "recognized schemas to the latest internal value, and may reject unrecognized values. More info: "
    "https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources")
_KIND_DESCRIPTION = (
    "Kind is a string value representing the REST resource this object represents. Servers may infer this from "
    "the endpoint the client submits requests to. Cannot be updated. In CamelCase. More info: "
    "https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds")
_METADATA_DESCRIPTION = (
    "Standard object's metadata. More info: "
    "https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata")


def definition_name(group: str, version: str, kind: str) -> str:
    """kube's name for a CRD kind's OpenAPI definition: the reversed group, the version and the kind."""
    return ".".join(reversed(group.split("."))) + f".{version}.{kind}"


def _published(schema: crdschema.Schema, ref_prefix: str, v3: bool, gvk: dict[str, str]) -> crdschema.Schema:
    out = copy.deepcopy(schema)
    out.setdefault("type", "object")
    props = out.setdefault("properties", {})
    props["apiVersion"] = {"type": "string", "description": _API_VERSION_DESCRIPTION}
    props["kind"] = {"type": "string", "description": _KIND_DESCRIPTION}
    meta_ref = {"$ref": f"{ref_prefix}{_META}ObjectMeta"}
    props["metadata"] = {"allOf": [meta_ref], "description": _METADATA_DESCRIPTION} if v3 else \
        {**meta_ref, "description": _METADATA_DESCRIPTION}
    out["x-kubernetes-group-version-kind"] = [gvk]
    return out if v3 else _v2_clean(out)


def _v2_clean(schema: Any) -> Any:
    """OpenAPI v2 has no nullable/anyOf/oneOf/not; kube drops them when publishing CRDs in v2."""
    if isinstance(schema, list):
        return [_v2_clean(x) for x in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in ("nullable", "anyOf", "oneOf", "not", "x-kubernetes-validations"):
            continue
        if key == "properties":
            out[key] = {k: _v2_clean(sub) for k, sub in value.items()}
        elif key in ("items", "additionalProperties", "allOf"):
            out[key] = _v2_clean(value)
        else:
            out[key] = value
    return out


class CustomOpenApi:
    """The built-in ``openapi.Schemas`` plus what the served CRDs add (same interface for app.py)."""

    def __init__(self, base: Any) -> None:
        self.base = base
        # what update() was given; documents are built from it on first request (CRD changes come in
        # bursts, e.g. every stored CRD at start, and most of them are never asked for)
        self._by_gv: dict[str, list[Strategy]] = {}
        self._schemas: dict[tuple[str, str, str], crdschema.Schema] = {}
        self._v3_docs: dict[str, bytes] = {}
        self._v3_index: dict[str, Any] | None = None
        self._v2_definitions: dict[str, Any] | None = None
        self._v2: bytes | None = None
        self._v2_pb: bytes | None = None
        self._meta_components: dict[str, Any] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.base, name)

    def update(self, strategies: list[Strategy], specs: dict[str, dict[str, Any]]) -> None:
        schemas: dict[tuple[str, str, str], crdschema.Schema] = {}
        for spec in specs.values():
            for ver in spec.get("versions") or []:
                schema = (ver.get("schema") or {}).get("openAPIV3Schema")
                if ver.get("served") and isinstance(schema, dict):
                    schemas[(spec.get("group", ""), ver["name"], (spec.get("names") or {}).get("kind", ""))] = schema
        by_gv: dict[str, list[Strategy]] = {}
        for s in strategies:
            by_gv.setdefault(f"apis/{s.group}/{s.version}", []).append(s)
        self._by_gv, self._schemas = by_gv, schemas
        self._v3_docs = {}
        self._v3_index = None
        self._v2_definitions = None
        self._v2 = self._v2_pb = None

    def v2_definitions(self) -> dict[str, Any]:
        if self._v2_definitions is None:
            definitions: dict[str, Any] = {}
            for strategies in self._by_gv.values():
                for s in strategies:
                    gvk = {"group": s.group, "kind": s.kind, "version": s.version}
                    schema = self._schemas.get((s.group, s.version, s.kind), {"type": "object"})
                    definitions[definition_name(s.group, s.version, s.kind)] = _published(
                        schema, "#/definitions/", False, gvk)
            self._v2_definitions = definitions
        return self._v2_definitions

    def v3_document(self, path: str) -> bytes | None:
        body = self._v3_docs.get(path)
        if body is None and path in self._by_gv:
            body = self._v3_docs[path] = self._build_v3(self._by_gv[path], self._schemas)
        return body

    def _build_v3(self, strategies: list[Strategy], schemas: dict[tuple[str, str, str], Any]) -> bytes:
        prefix = "#/components/schemas/"
        if self._meta_components is None:
            roots = [_META + n for n in ("ObjectMeta", "ListMeta", "Status", "Patch", "DeleteOptions")]
            self._meta_components = {dep: self.base._openapi_definition(dep, prefix, True)
                                     for dep in sorted(self.base._closure(roots))}
        components: dict[str, Any] = {}
        paths: dict[str, Any] = {}
        for s in strategies:
            gvk = {"group": s.group, "kind": s.kind, "version": s.version}
            name = definition_name(s.group, s.version, s.kind)
            schema = schemas.get((s.group, s.version, s.kind), {"type": "object"})
            components[name] = _published(schema, prefix, True, gvk)
            components[name + "List"] = {
                "type": "object", "required": ["items"],
                "properties": {"apiVersion": {"type": "string", "description": _API_VERSION_DESCRIPTION},
                               "items": {"type": "array", "items": {"$ref": prefix + name}},
                               "kind": {"type": "string", "description": _KIND_DESCRIPTION},
                               "metadata": {"allOf": [{"$ref": f"{prefix}{_META}ListMeta"}]}},
                "x-kubernetes-group-version-kind": [{**gvk, "kind": s.list_kind}]}
            paths.update(self._paths(s, {"$ref": prefix + name}, gvk))
        components.update(self._meta_components)
        return json.dumps({"openapi": "3.0.0", "info": {"title": "Kubernetes CRD Swagger", "version": "v0.1.0"},
                           "paths": paths, "components": {"schemas": components}}, separators=(",", ":")).encode()

    @staticmethod
    def _paths(s: Strategy, ref: dict[str, str], gvk: dict[str, str]) -> dict[str, Any]:
        base = f"/apis/{s.group}/{s.version}/" + ("namespaces/{namespace}/" if s.namespaced else "")
        query = [{"name": n, "in": "query", "schema": {"type": "string", "uniqueItems": True}}
                 for n in ("dryRun", "fieldManager", "fieldValidation")]
        ok = {"200": {"description": "OK", "content": {"application/json": {"schema": ref}}}}
        body = {"content": {"application/json": {"schema": ref}}, "required": True}
        patch_body = {"content": {ctype: {"schema": {"$ref": f"#/components/schemas/{_META}Patch"}} for ctype in (
            "application/json-patch+json", "application/merge-patch+json", "application/apply-patch+yaml")},
            "required": True}
        params = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]
        if s.namespaced:
            params.append({"name": "namespace", "in": "path", "required": True, "schema": {"type": "string"}})
        common = {"x-kubernetes-group-version-kind": gvk}
        item = {
            "get": {"responses": ok, "x-kubernetes-action": "get", **common},
            "put": {"parameters": query, "requestBody": body, "responses": ok, "x-kubernetes-action": "put", **common},
            "patch": {"parameters": [*query, {"name": "force", "in": "query", "schema": {"type": "boolean"}}],
                      "requestBody": patch_body, "responses": ok, "x-kubernetes-action": "patch", **common},
            "delete": {"responses": ok, "x-kubernetes-action": "delete", **common},
            "parameters": params}
        collection = {"post": {"parameters": query, "requestBody": body, "responses": ok,
                               "x-kubernetes-action": "post", **common},
                      "parameters": params[1:]}
        return {f"{base}{s.plural}/{{name}}": item, f"{base}{s.plural}": collection}

    # ---------------------------------------------------------------- the interface app.py uses
    def openapi_v3_paths(self) -> dict[str, Any]:
        if self._v3_index is None:
            index = dict(self.base.openapi_v3_paths())
            for path in sorted(self._by_gv):
                digest = hashlib.sha512(self.v3_document(path) or b"").hexdigest().upper()
                index[path] = {"serverRelativeURL": f"/openapi/v3/{path}?hash={digest}"}
            self._v3_index = index
        return self._v3_index

    def openapi_v3_json(self, group_version_path: str) -> bytes | None:
        body = self.v3_document(group_version_path.strip("/"))
        return body if body is not None else self.base.openapi_v3_json(group_version_path)

    def openapi_v2_json(self) -> bytes:
        if not self._by_gv:
            return self.base.openapi_v2_json()
        if self._v2 is None:
            document = json.loads(self.base.openapi_v2_json())
            document["definitions"].update(self.v2_definitions())
            self._v2 = json.dumps(document, separators=(",", ":")).encode()
        return self._v2

    def openapi_v2_protobuf(self) -> bytes:
        if not self._by_gv:
            return self.base.openapi_v2_protobuf()
        if self._v2_pb is None:
            from ultraplane.apiserver import openapi

            extra = b"".join(openapi._pb_msg(1, openapi._pb_str(1, name) + openapi._pb_msg(2, openapi._pb_schema(s)))
                             for name, s in self.v2_definitions().items())
            # field 9 (definitions) is repeated-merged by protobuf parsers: a second one adds entries
            self._v2_pb = self.base.openapi_v2_protobuf() + openapi._pb_msg(9, extra)
        return self._v2_pb
