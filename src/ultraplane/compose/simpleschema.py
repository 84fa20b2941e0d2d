"""kro's SimpleSchema: `field: "type | marker=value ..."` mappings turned into OpenAPI v3 schemas.

Types: string, integer, boolean, float (OpenAPI number; `number` is accepted too), object (schemaless,
unknown fields preserved), `[]T`, `map[string]T`, nested mappings (structs) and names of custom types
from `spec.schema.types` (expanded inline; cycles between them are rejected). Markers are kro's:
required, default, description, minimum, maximum, validation, immutable, enum, pattern, minLength,
maxLength, uniqueItems, minItems, maxItems, listType, listMapKey. As in kro, a struct whose fields have
defaults and none is required defaults to `{}`, so the inner defaults apply to instances that omit it.
"""

from __future__ import annotations

import json
from typing import Any

Schema = dict[str, Any]
ATOMIC = {"string": "string", "integer": "integer", "boolean": "boolean", "float": "number", "number": "number"}
MAX_NESTING = 64
MARKERS = {"required", "default", "description", "minimum", "maximum", "validation", "immutable", "enum",
           "pattern", "uniqueItems", "minLength", "maxLength", "minItems", "maxItems", "listType", "listMapKey"}


class SchemaError(ValueError):
    """A SimpleSchema that cannot become an OpenAPI schema."""


def parse_markers(text: str) -> list[tuple[str, str]]:
    """`key=value key="quoted value" key=[1, 2]` -> [(key, value)], kro's quoting and bracket rules."""
    result: list[tuple[str, str]] = []
    key: str | None = None
    buffer: list[str] = []
    in_quotes = escaped = False
    depth = 0
    for char in text:
        if char == "=" and key is None and not in_quotes and depth == 0:
            key = "".join(buffer).strip()
            if not key:
                raise SchemaError("empty marker key")
            if key not in MARKERS:
                raise SchemaError(f"invalid marker key {key!r}: unknown marker: {key}")
            buffer = []
            continue
        if char == '"' and not escaped:
            in_quotes = not in_quotes
        elif char == "\\" and in_quotes and not escaped:
            escaped = True
            buffer.append(char)
            continue
        elif char in "{[" and not in_quotes:
            depth += 1
        elif char in "}]" and not in_quotes:
            depth -= 1
            if depth < 0:
                raise SchemaError("unmatched closing bracket/brace")
        elif char.isspace() and not in_quotes and depth == 0:
            if key is not None:
                result.append((key, _marker_value("".join(buffer))))
                key, buffer = None, []
            continue
        escaped = False
        buffer.append(char)
    if key is None:
        raise SchemaError(f"marker key '{''.join(buffer).strip()}' without a value")
    if in_quotes:
        raise SchemaError("unclosed quote")
    if depth > 0:
        raise SchemaError("unclosed bracket/brace")
    result.append((key, _marker_value("".join(buffer))))
    return result


def _marker_value(raw: str) -> str:
    raw = raw.strip()
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        out: list[str] = []
        escaped = False
        for char in raw[1:-1]:
            if escaped:
                if char not in '"\\':
                    out.append("\\")
                out.append(char)
                escaped = False
            elif char == "\\":
                escaped = True
            else:
                out.append(char)
        return "".join(out)
    return raw


def _bool(value: str, marker: str) -> bool:
    if value.lower() in ("true", "1", "t"):
        return True
    if value.lower() in ("false", "0", "f"):
        return False
    raise SchemaError(f"failed to parse {marker} marker value: invalid syntax {value!r}")


def _number(value: str, marker: str) -> int | float:
    try:
        number = float(value)
    except ValueError:
        raise SchemaError(f"failed to parse {marker} value: {value!r}") from None
    return int(number) if number.is_integer() else number


class Transformer:
    """Builds schemas for one RGD: its custom types are resolved once, in dependency order."""

    def __init__(self, types: dict[str, Any] | None = None) -> None:
        self.custom: dict[str, tuple[Schema, bool]] = {}
        self.raw_types = dict(types or {})
        self._resolving: list[str] = []
        for name in self.raw_types:
            self._custom(name)

    def _custom(self, name: str) -> tuple[Schema, bool]:
        if name in self.custom:
            return self.custom[name]
        if name not in self.raw_types:
            raise SchemaError(f"unknown type: {name}")
        if name in self._resolving:
            cycle = " -> ".join([*self._resolving[self._resolving.index(name):], name])
            raise SchemaError(f"cyclic dependency in type {name}: {cycle}")
        self._resolving.append(name)
        try:
            spec = self.raw_types[name]
            if isinstance(spec, str):
                parent: Schema = {}
                schema = self.field_from_string(name, spec, parent)
                built = (schema, bool(parent.get("required")))
            elif isinstance(spec, dict):
                built = (self.struct(spec), False)
            else:
                raise SchemaError(f"building schema for {name}: unexpected type: {type(spec).__name__}")
        finally:
            self._resolving.pop()
        self.custom[name] = built
        return built

    def struct(self, spec: dict[str, Any]) -> Schema:
        schema: Schema = {"type": "object", "properties": {}}
        child_default = False
        for field, field_spec in spec.items():
            try:
                if isinstance(field_spec, str):
                    built = self.field_from_string(field, field_spec, schema)
                elif isinstance(field_spec, dict):
                    built = self.struct(field_spec)
                else:
                    raise SchemaError(f"unexpected type: {type(field_spec).__name__}")
            except SchemaError as exc:
                raise SchemaError(f"field {field}: {exc}") from None
            schema["properties"][field] = built
            child_default = child_default or "default" in built
        if not schema.get("required") and child_default and "default" not in schema:
            schema["default"] = {}
        if schema.get("required"):
            schema["required"] = sorted(schema["required"])
        return schema

    def type_schema(self, text: str, depth: int = 0) -> tuple[Schema, bool]:
        """The schema of a type expression, and whether it names a custom type marked required."""
        if depth > MAX_NESTING:
            raise SchemaError(f"type nesting too deep (max {MAX_NESTING}): {text!r}")
        text = text.strip()
        if not text:
            raise SchemaError("empty type")
        if text in ATOMIC:
            return {"type": ATOMIC[text]}, False
        if text == "object":
            return {"type": "object", "x-kubernetes-preserve-unknown-fields": True}, False
        if text.startswith("[]"):
            if not text[2:]:
                raise SchemaError("empty slice element type")
            items, _ = self.type_schema(text[2:], depth + 1)
            return {"type": "array", "items": items}, False
        if text.startswith("map["):
            if not text.startswith("map[string]"):
                raise SchemaError("map key must be string")
            if not text[len("map[string]"):]:
                raise SchemaError("map value type is required")
            values, _ = self.type_schema(text[len("map[string]"):], depth + 1)
            return {"type": "object", "additionalProperties": values}, False
        schema, required = self._custom(text)
        return json.loads(json.dumps(schema)), required

    def field_from_string(self, name: str, text: str, parent: Schema) -> Schema:
        type_text, _, marker_text = text.partition("|")
        schema, custom_required = self.type_schema(type_text)
        if custom_required:
            parent.setdefault("required", []).append(name)
        markers = parse_markers(marker_text) if marker_text.strip() else []
        for key, value in markers:
            self._apply(schema, key, value, name, parent)
        if schema.get("x-kubernetes-list-map-keys"):
            list_type = schema.get("x-kubernetes-list-type")
            if list_type is None:
                raise SchemaError("listMapKey set while listType is unset, listType must be set to map")
            if list_type != "map":
                raise SchemaError(f"listMapKey set while listType is set to {list_type}, "
                                  "listType must be set to map")
        return schema

    def _apply(self, schema: Schema, key: str, value: str, name: str, parent: Schema) -> None:
        kind = schema.get("type")
        if key == "required":
            if _bool(value, "required"):
                parent.setdefault("required", []).append(name)
        elif key == "default":
            schema["default"] = _default(kind, value)
        elif key == "description":
            schema["description"] = value
        elif key in ("minimum", "maximum"):
            schema[key] = _number(value, key)
        elif key == "validation":
            if not value.strip():
                raise SchemaError("validation failed")
            schema.setdefault("x-kubernetes-validations", []).append({"rule": value, "message": "validation failed"})
        elif key == "immutable":
            if _bool(value, "immutable"):
                schema.setdefault("x-kubernetes-validations", []).append(
                    {"rule": "self == oldSelf", "message": "field is immutable"})
        elif key == "enum":
            schema["enum"] = [_enum_value(kind, v.strip()) for v in value.split(",")]
        elif key == "pattern":
            if kind != "string":
                raise SchemaError("pattern marker is only valid for string types")
            schema["pattern"] = value
        elif key in ("minLength", "maxLength"):
            if kind != "string":
                raise SchemaError(f"{key} marker is only valid for string types")
            schema[key] = int(_number(value, key))
        elif key in ("minItems", "maxItems"):
            if kind != "array":
                raise SchemaError(f"{key} marker is only valid for array types")
            schema[key] = int(_number(value, key))
        elif key == "uniqueItems":
            if kind != "array":
                raise SchemaError("uniqueItems marker is only valid for array types")
            if _bool(value, "uniqueItems"):
                # kro turns uniqueness into a set list: structural schemas forbid uniqueItems
                if schema.get("x-kubernetes-list-type") not in (None, "set"):
                    raise SchemaError("listType attempting to overwrite set type of "
                                      f"{schema['x-kubernetes-list-type']}")
                schema["x-kubernetes-list-type"] = "set"
        elif key == "listType":
            if kind != "array":
                raise SchemaError("listType marker only applies to array types")
            if value not in ("atomic", "set", "map"):
                raise SchemaError(f"unsupported value for listType {value}, needs to be one of atomic, set, or map")
            if schema.get("x-kubernetes-list-type") not in (None, value):
                raise SchemaError(f"listType attempting to overwrite set type of {schema['x-kubernetes-list-type']}")
            schema["x-kubernetes-list-type"] = value
        elif key == "listMapKey":
            if kind != "array":
                raise SchemaError("listMapKey marker only applies to array types")
            keys = schema.setdefault("x-kubernetes-list-map-keys", [])
            if value in keys:
                raise SchemaError(f"duplicate listMapKey marker, value {value}")
            keys.append(value)


def _default(kind: str | None, value: str) -> Any:
    if kind == "string":
        return value
    if kind == "integer":
        try:
            return int(value)
        except ValueError:
            raise SchemaError(f"default value must be a valid integer, got: {value}") from None
    if kind == "number":
        try:
            return float(value)
        except ValueError:
            raise SchemaError(f"default value must be a valid number, got: {value}") from None
    if kind == "boolean":
        return _bool(value, "default")
    try:
        return json.loads(value)
    except ValueError:
        raise SchemaError(f"failed to parse default value {value!r} as JSON") from None


def _enum_value(kind: str | None, value: str) -> Any:
    if not value:
        raise SchemaError("empty enum values are not allowed")
    if kind == "integer":
        try:
            return int(value)
        except ValueError:
            raise SchemaError(f"enum value {value} is not a valid integer") from None
    if kind == "number":
        return _number(value, "enum")
    if kind == "string":
        return value
    raise SchemaError(f"enum is not supported for type {kind}")


def to_openapi(spec: dict[str, Any] | None, types: dict[str, Any] | None = None) -> Schema:
    """The OpenAPI schema of an instance's `spec` from its SimpleSchema."""
    if spec is not None and not isinstance(spec, dict):
        raise SchemaError(f"spec must be a mapping, got {type(spec).__name__}")
    return Transformer(types).struct(spec or {})
