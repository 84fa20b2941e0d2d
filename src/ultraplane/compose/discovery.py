"""What the API server serves: resource names and scopes per kind, and the kinds' OpenAPI v3 schemas."""

from __future__ import annotations

from typing import Any

from ultraplane.client.http import ApiError, KubeClient

Schema = dict[str, Any]
MAX_REF_DEPTH = 12


def group_version_path(api_version: str) -> str:
    return "/api/v1" if api_version == "v1" else f"/apis/{api_version}"


class Discovery:
    def __init__(self, client: KubeClient) -> None:
        self.client = client
        self.resources: dict[str, dict[str, tuple[str, bool]]] = {}
        self.schemas: dict[str, dict[str, Schema]] = {}

    async def resource(self, api_version: str, kind: str, refresh: bool = False) -> tuple[str, bool] | None:
        """(plural, namespaced) of a served kind, or None."""
        found = self.resources.get(api_version)
        if found is None or refresh or kind not in found:
            try:
                listed = await self.client.get(group_version_path(api_version))
            except ApiError as exc:
                if exc.code == 404:
                    self.resources[api_version] = {}
                    return None
                raise
            found = {r["kind"]: (r["name"], bool(r.get("namespaced"))) for r in listed.get("resources") or []
                     if "/" not in r.get("name", "")}
            self.resources[api_version] = found
        return found.get(kind)

    async def schema(self, api_version: str, kind: str) -> Schema | None:
        """The kind's OpenAPI v3 schema with `$ref`s inlined (deep recursion cut off), or None."""
        components = self.schemas.get(api_version)
        if components is None:
            try:
                document = await self.client.get("/openapi/v3" + group_version_path(api_version))
            except ApiError:
                return None
            components = (document.get("components") or {}).get("schemas") or {}
            self.schemas[api_version] = components
        group, _, version = api_version.rpartition("/")
        for schema in components.values():
            for gvk in schema.get("x-kubernetes-group-version-kind") or []:
                if gvk.get("group", "") == group and gvk.get("version") == version and gvk.get("kind") == kind:
                    return _inline(schema, components, 0)
        return None

    def forget(self, api_version: str) -> None:
        self.resources.pop(api_version, None)
        self.schemas.pop(api_version, None)


def _inline(schema: Any, components: dict[str, Schema], depth: int) -> Any:
    if isinstance(schema, list):
        return [_inline(s, components, depth) for s in schema]
    if not isinstance(schema, dict):
        return schema
    ref = schema.get("$ref")
    if ref is None and len(schema.get("allOf") or []) == 1:
        ref = schema["allOf"][0].get("$ref")
    if ref:
        if depth >= MAX_REF_DEPTH:
            return {"x-kubernetes-preserve-unknown-fields": True}
        target = components.get(ref.rsplit("/", 1)[-1], {})
        merged = {**target, **{k: v for k, v in schema.items() if k not in ("$ref", "allOf")}}
        return _inline(merged, components, depth + 1)
    out = {}
    for key, value in schema.items():
        if key in ("properties", "patternProperties"):
            out[key] = {k: _inline(v, components, depth) for k, v in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _inline(value, components, depth)
        else:
            out[key] = value
    if "properties" in out and "type" not in out:
        out["type"] = "object"
    return out
