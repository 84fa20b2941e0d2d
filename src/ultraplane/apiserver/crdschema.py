"""Structural schemas of CustomResourceDefinitions: validation, pruning, defaulting, printer columns.

Custom resources are plain JSON checked against their version's ``openAPIV3Schema``. The messages are
the ones kube-apiserver builds: kube-openapi's validator texts ("spec.replicas in body must be of type
integer: \"string\"") turned into field errors by apiextensions-apiserver (TypeInvalid, Required,
NotSupported for enums, TooLong, TooMany, Invalid for the rest). Paths follow kube-openapi: fields
joined with ``.``, array items as ``[i]``.

``x-kubernetes-validations`` (CEL rules) are compiled and evaluated by ``celvalidation``.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import ipaddress
import math
import re
import uuid
from functools import lru_cache
from typing import Any

from ultraplane.apiserver import validation as v

Schema = dict[str, Any]
Cause = dict[str, Any]

IN = " in body"
RESOURCE_FIELDS = ("apiVersion", "kind", "metadata")
PRINTER_COLUMN_TYPES = ["date", "integer", "number", "string", "boolean"]


# ============================================================================ value rendering
def go_number(value: Any) -> str:
    """Go's %v for a JSON number (ints as they are, floats in Go's shortest %g form)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e21:
            return str(int(value))
        text = repr(value)
        if "e" in text:
            mantissa, exp = text.split("e")
            sign = "-" if exp.startswith("-") else "+"
            digits = exp.lstrip("+-").rjust(2, "0")
            return f"{mantissa}e{sign}{digits}"
        return text
    return str(value)


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# ============================================================================ formats
_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")
_HOSTNAME = re.compile(r"^([a-zA-Z0-9]([-a-zA-Z0-9]{0,61}[a-zA-Z0-9])?)(\.[a-zA-Z0-9]([-a-zA-Z0-9]{0,61}[a-zA-Z0-9])?)*$")
_MAC = re.compile(r"^([0-9A-Fa-f]{2}[:-]){5}[0-9A-Fa-f]{2}$")
_DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h|d|w))+$")
_HEXCOLOR = re.compile(r"^#([0-9a-fA-F]{3}|[0-9a-fA-F]{6})$")


def _valid_ip(text: str, version: int) -> bool:
    try:
        return ipaddress.ip_address(text).version == version
    except ValueError:
        return False


def _valid_cidr(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
        return "/" in text
    except ValueError:
        return False


def _valid_uuid(text: str, version: int = 0) -> bool:
    try:
        parsed = uuid.UUID(text)
    except ValueError:
        return False
    return version == 0 or parsed.version == version


def _valid_byte(text: str) -> bool:
    try:
        base64.b64decode(text, validate=True)
        return True
    except ValueError:
        return False


def _valid_date_time(text: str) -> bool:
    if not _DATE_TIME.match(text):
        return False
    try:
        dt.datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00").replace(" ", "T"))
        return True
    except ValueError:
        return False


def _valid_date(text: str) -> bool:
    try:
        return bool(_DATE.match(text)) and bool(dt.date.fromisoformat(text))
    except ValueError:
        return False


# the formats kube-apiserver checks (others are accepted without checking, as upstream strips them)
FORMATS: dict[str, Any] = {
    "date-time": _valid_date_time, "datetime": _valid_date_time, "date": _valid_date,
    "email": lambda s: bool(_EMAIL.match(s)), "hostname": lambda s: bool(_HOSTNAME.match(s)) and len(s) <= 255,
    "ipv4": lambda s: _valid_ip(s, 4), "ipv6": lambda s: _valid_ip(s, 6), "cidr": _valid_cidr,
    "mac": lambda s: bool(_MAC.match(s)), "uuid": _valid_uuid, "uuid3": lambda s: _valid_uuid(s, 3),
    "uuid4": lambda s: _valid_uuid(s, 4), "uuid5": lambda s: _valid_uuid(s, 5), "byte": _valid_byte,
    "duration": lambda s: bool(_DURATION.match(s)), "hexcolor": lambda s: bool(_HEXCOLOR.match(s)),
}


@lru_cache(maxsize=512)
def _pattern(pattern: str) -> re.Pattern[str] | None:
    try:
        return re.compile(pattern)
    except re.error:
        return None


# ============================================================================ validation
def validate(value: Any, schema: Schema | None, path: str = "") -> list[Cause]:
    """kube-openapi's schema validation of ``value``, as apiextensions-apiserver reports it."""
    out: list[Cause] = []
    if schema:
        _validate(value, schema, path, out)
    return out


def _types(schema: Schema) -> list[str]:
    if schema.get("x-kubernetes-int-or-string"):
        return ["integer", "string"]
    t = schema.get("type")
    return [t] if t else []


def _validate(value: Any, schema: Schema, path: str, out: list[Cause]) -> None:
    types = _types(schema)
    if value is None:
        if types and not schema.get("nullable"):
            out.append(v.type_invalid(path, "null", f'{path}{IN} must be of type {",".join(types)}: "null"'))
        return
    actual = json_type(value)
    if types:
        fits = actual in types or (actual == "number" and "integer" in types and float(value).is_integer()) or (
            actual == "integer" and "number" in types)
        if not fits:
            out.append(v.type_invalid(path, actual, f'{path}{IN} must be of type {",".join(types)}: "{actual}"'))
            return
    for sub in schema.get("allOf") or []:
        _validate(value, sub, path, out)
    for key, word in (("anyOf", "at least one schema (anyOf)"), ("oneOf", "one and only one schema (oneOf)")):
        subs = schema.get(key)
        if subs:
            passing = sum(1 for sub in subs if not validate(value, sub, path))
            if (key == "anyOf" and passing == 0) or (key == "oneOf" and passing != 1):
                out.append(v.invalid(path, "", f"{path}{IN} must validate {word}"))
    if isinstance(schema.get("not"), dict) and not validate(value, schema["not"], path):
        out.append(v.invalid(path, "", f"{path}{IN} must not validate the schema (not)"))
    if isinstance(value, str):
        _validate_string(value, schema, path, out)
    elif actual in ("integer", "number"):
        _validate_number(value, schema, path, out)
    elif isinstance(value, list):
        _validate_array(value, schema, path, out)
    elif isinstance(value, dict):
        _validate_object(value, schema, path, out)
    enum = schema.get("enum")
    if enum is not None and value not in enum:
        out.append(v.not_supported(path, value, [e if isinstance(e, str) else _json(e) for e in enum]))


def _json(value: Any) -> str:
    import orjson

    return orjson.dumps(value).decode()


def _validate_string(value: str, schema: Schema, path: str, out: list[Cause]) -> None:
    max_len = schema.get("maxLength")
    if max_len is not None and len(value) > max_len:
        out.append(v.too_long(path, int(max_len)))
    min_len = schema.get("minLength")
    if min_len is not None and len(value) < min_len:
        out.append(v.invalid(path, value, f"{path}{IN} should be at least {int(min_len)} chars long"))
    pattern = schema.get("pattern")
    if pattern:
        compiled = _pattern(pattern)
        if compiled is not None and not compiled.search(value):
            out.append(v.invalid(path, value, f"{path}{IN} should match '{pattern}'"))
    fmt = schema.get("format")
    check = FORMATS.get(fmt or "")
    if check is not None and not check(value):
        out.append(v.type_invalid(path, value, f'{path}{IN} must be of type {fmt}: {v.go_quote(value)}'))


def _validate_number(value: float, schema: Schema, path: str, out: list[Cause]) -> None:
    multiple = schema.get("multipleOf")
    if multiple and not math.isclose(value / multiple, round(value / multiple), abs_tol=1e-9):
        out.append(v.invalid(path, value, f"{path}{IN} should be a multiple of {go_number(multiple)}"))
    maximum = schema.get("maximum")
    if maximum is not None:
        exclusive = bool(schema.get("exclusiveMaximum"))
        if value > maximum or (exclusive and value == maximum):
            word = "less than" if exclusive else "less than or equal to"
            out.append(v.invalid(path, value, f"{path}{IN} should be {word} {go_number(maximum)}"))
    minimum = schema.get("minimum")
    if minimum is not None:
        exclusive = bool(schema.get("exclusiveMinimum"))
        if value < minimum or (exclusive and value == minimum):
            word = "greater than" if exclusive else "greater than or equal to"
            out.append(v.invalid(path, value, f"{path}{IN} should be {word} {go_number(minimum)}"))


def _too_many(path: str, actual: int, limit: int) -> Cause:
    """field.TooMany: ``Too many: 4: must have at most 3 items``."""
    return {"reason": "FieldValueTooMany", "field": path,
            "message": f"Too many: {actual}: must have at most {limit} item{'' if limit == 1 else 's'}"}


def _validate_array(value: list[Any], schema: Schema, path: str, out: list[Cause]) -> None:
    items = schema.get("items")
    if isinstance(items, dict):
        for i, item in enumerate(value):
            _validate(item, items, f"{path}[{i}]", out)
    min_items = schema.get("minItems")
    if min_items is not None and len(value) < min_items:
        out.append(v.invalid(path, len(value), f"{path}{IN} should have at least {int(min_items)} items"))
    max_items = schema.get("maxItems")
    if max_items is not None and len(value) > max_items:
        out.append(_too_many(path, len(value), int(max_items)))


def _validate_object(value: dict[str, Any], schema: Schema, path: str, out: list[Cause]) -> None:
    max_props = schema.get("maxProperties")
    if max_props is not None and len(value) > max_props:
        out.append(_too_many(path, int(max_props), int(max_props)))  # kube-openapi reports the limit twice
    min_props = schema.get("minProperties")
    if min_props is not None and len(value) < min_props:
        out.append(v.invalid(path, int(min_props), f"{path}{IN} should have at least {int(min_props)} properties"))
    for name in schema.get("required") or []:
        if name not in value:
            out.append(v.required(_child(path, name)))
    props = schema.get("properties") or {}
    for name, sub in props.items():
        if name in value:
            _validate(value[name], sub, _child(path, name), out)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for name, item in value.items():
            if name not in props:
                _validate(item, extra, _child(path, name), out)
    if schema.get("x-kubernetes-embedded-resource"):
        out.extend(_embedded_causes(value, path))


def _embedded_causes(value: dict[str, Any], path: str) -> list[Cause]:
    """apiextensions' objectmeta validation of an embedded resource's apiVersion and kind."""
    causes: list[Cause] = []
    for key in ("apiVersion", "kind"):
        if key not in value:
            causes.append(v.required(_child(path, key), "must not be empty"))
    api_version = value.get("apiVersion")
    if "apiVersion" in value:
        if not isinstance(api_version, str):
            causes.append(v.invalid(_child(path, "apiVersion"), api_version, "must be a string"))
        elif not api_version:
            causes.append(v.invalid(_child(path, "apiVersion"), api_version, "must not be empty"))
        elif api_version.count("/") > 1:
            causes.append(v.invalid(_child(path, "apiVersion"), api_version,
                                    f"unexpected GroupVersion string: {api_version}"))
    kind = value.get("kind")
    if "kind" in value:
        if not isinstance(kind, str):
            causes.append(v.invalid(_child(path, "kind"), kind, "must be a string"))
        elif not kind:
            causes.append(v.invalid(_child(path, "kind"), kind, "must not be empty"))
        elif dns1035_label_errors(kind.lower()):
            causes.append(v.invalid(_child(path, "kind"), kind, "may have mixed case, but should otherwise match: "
                                    + ",".join(dns1035_label_errors(kind.lower()))))
    return causes


def dns1035_label_errors(value: str) -> list[str]:
    out = []
    if len(value) > 63:
        out.append("must be no more than 63 characters")
    if not re.fullmatch("[a-z]([-a-z0-9]*[a-z0-9])?", value):
        out.append("a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
                   "alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', "
                   "regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')")
    return out


_PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def value_at(obj: Any, path: str) -> tuple[bool, Any]:
    """The value at a cause's field path (``spec.items[0].name``), and whether it exists."""
    cur = obj
    for m in _PATH_PART.finditer(path):
        key, index = m.group(1), m.group(2)
        if key is not None and isinstance(cur, dict) and key in cur:
            cur = cur[key]
        elif index is not None and isinstance(cur, list) and int(index) < len(cur):
            cur = cur[int(index)]
        else:
            return False, None
    return True, cur


def ratchet(causes: list[Cause], new: Any, old: Any) -> list[Cause]:
    """Drop the errors of values an update did not change (a missing required field: its object)."""
    kept = []
    for cause in causes:
        path = cause.get("field", "")
        if cause.get("reason") == "FieldValueRequired" and "." in path:
            path = path.rsplit(".", 1)[0]
        if value_at(new, path) != value_at(old, path):
            kept.append(cause)
    return kept


# ============================================================================ pruning and defaulting
def prune(obj: Any, schema: Schema | None, *, resource: bool = True, path: str = "") -> list[str]:
    """Drops fields the structural schema does not specify (kube's pruning); returns their paths."""
    removed: list[str] = []
    _prune(obj, schema or {}, resource, path, removed, True)
    return removed


def unknown_paths(obj: Any, schema: Schema | None) -> list[str]:
    """The paths ``prune`` would drop, without touching obj (fieldValidation Warn/Strict)."""
    found: list[str] = []
    _prune(obj, schema or {}, True, "", found, False)
    return found


def _prune(value: Any, schema: Schema, resource: bool, path: str, removed: list[str], remove: bool) -> None:
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        preserve = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
        embedded = resource or bool(schema.get("x-kubernetes-embedded-resource"))
        for key in list(value):
            # apiVersion, kind and metadata of a resource are the server's to check, whatever the schema says:
            # a schema's `metadata: {type: object}` (as every controller-gen CRD has) must not prune its name
            if embedded and key in RESOURCE_FIELDS:
                continue
            if key in props:
                _prune(value[key], props[key], False, _child(path, key), removed, remove)
            elif isinstance(extra, dict):
                _prune(value[key], extra, False, _child(path, key), removed, remove)
            elif extra is True or preserve:
                continue
            else:
                if remove:
                    del value[key]
                removed.append(_child(path, key))
    elif isinstance(value, list):
        items = schema.get("items")
        if isinstance(items, dict):
            for i, item in enumerate(value):
                _prune(item, items, False, f"{path}[{i}]", removed, remove)


def has_defaults(schema: Any) -> bool:
    if not isinstance(schema, dict):
        return False
    if "default" in schema:
        return True
    return any(has_defaults(s) for s in (schema.get("properties") or {}).values()) or \
        has_defaults(schema.get("items")) or has_defaults(schema.get("additionalProperties"))


def apply_defaults(value: Any, schema: Schema | None) -> None:
    """Structural defaulting: missing (or null, when not nullable) fields with a default get a copy of it."""
    if not schema:
        return
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for key, sub in props.items():
            if "default" in sub and (key not in value or (value[key] is None and not sub.get("nullable"))):
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                apply_defaults(value[key], sub)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key, item in value.items():
                if key not in props:
                    apply_defaults(item, extra)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            apply_defaults(item, schema["items"])


# ============================================================================ structural schema checks
def structural_causes(schema: Any, path: str) -> list[Cause]:
    """A CRD version's openAPIV3Schema checks: kube's per-node rules (ValidateCustomResourceDefinition-
    OpenAPISchema, in its order), then the structural-schema rules (sorted by text, as kube sorts them)."""
    if not isinstance(schema, dict):
        return [v.required(path, "schemas are required")]
    shape: list[Cause] = []
    _shape(schema, path, shape, root=True, in_meta=False)
    structural: list[Cause] = []
    _structural(schema, "root", path, structural)
    return shape + sorted(structural, key=lambda c: f"{c['field']}: {c['message']}")


def _structural(s: Schema, level: str, path: str, causes: list[Cause]) -> None:
    stype = s.get("type", "")
    if stype == "array" and not isinstance(s.get("items"), dict):
        causes.append(v.required(f"{path}.items", "must be specified"))
    if isinstance(s.get("items"), dict):
        _structural(s["items"], "item", f"{path}.items", causes)
    for key, sub in (s.get("properties") or {}).items():
        if isinstance(sub, dict):
            _structural(sub, "field", f"{path}.properties[{key}]", causes)
    extra = s.get("additionalProperties")
    if extra is not None and extra is not False:
        if level == "root":
            causes.append(v.forbidden(f"{path}.additionalProperties", "must not be used at the root"))
        if isinstance(extra, dict):
            _structural(extra, "field", f"{path}.additionalProperties", causes)
    int_or_string = bool(s.get("x-kubernetes-int-or-string"))
    preserve = bool(s.get("x-kubernetes-preserve-unknown-fields"))
    embedded = bool(s.get("x-kubernetes-embedded-resource"))
    if int_or_string and preserve:
        causes.append(v.invalid(f"{path}.x-kubernetes-preserve-unknown-fields", True,
                                "must be false if x-kubernetes-int-or-string is true"))
    if int_or_string and embedded:
        causes.append(v.invalid(f"{path}.x-kubernetes-embedded-resource", True,
                                "must be false if x-kubernetes-int-or-string is true"))
    if embedded and stype != "object":
        if not stype:
            causes.append(v.required(f"{path}.type", "must be object if x-kubernetes-embedded-resource is true"))
        else:
            causes.append(v.invalid(f"{path}.type", stype, "must be object if x-kubernetes-embedded-resource is true"))
    elif not stype and not int_or_string and not preserve:
        where = {"root": "at the root", "item": "for specified array items",
                 "field": "for specified object fields"}[level]
        causes.append(v.required(f"{path}.type", f"must not be empty {where}"))
    if embedded and extra is not None:
        causes.append(v.forbidden(f"{path}.additionalProperties",
                                  "must not be used if x-kubernetes-embedded-resource is set"))
    if level == "root" and stype and stype != "object":
        causes.append(v.invalid(f"{path}.type", stype, "must be object at the root"))
    props = s.get("properties") or {}
    check_meta = level == "root" or embedded
    for name in ("kind", "apiVersion"):
        if check_meta and isinstance(props.get(name), dict) and props[name].get("type") != "string":
            causes.append(v.invalid(f"{path}.properties[{name}].type", props[name].get("type", ""), "must be string"))
    meta = props.get("metadata")
    if isinstance(meta, dict):
        if check_meta and meta.get("type") != "object":
            causes.append(v.invalid(f"{path}.properties[metadata].type", meta.get("type", ""), "must be object"))
        if level == "root":
            allowed = {"type", "properties"}
            extra_keys = set(meta) - allowed
            names = set(meta.get("properties") or {})
            if extra_keys or not names <= {"name", "generateName"}:
                causes.append(v.forbidden(f"{path}.properties[metadata]", "must not specify anything other than name "
                                          "and generateName, but metadata is implicitly specified"))
    if embedded and not preserve and not props:
        causes.append(v.required(f"{path}.properties", "must not be empty if x-kubernetes-embedded-resource is "
                                 "true without x-kubernetes-preserve-unknown-fields"))
    pattern = s.get("pattern")
    if isinstance(pattern, str) and _pattern(pattern) is None:
        causes.append(v.invalid(f"{path}.pattern", pattern, "must be a valid regular expression, but isn't"))


def _shape(s: Schema, path: str, causes: list[Cause], *, root: bool, in_meta: bool,
           no_defaults: str = "") -> None:
    """ValidateCustomResourceDefinitionOpenAPISchema with the v3 spec validator, node by node."""
    if "default" in s:
        if no_defaults:
            causes.append(v.forbidden(f"{path}.default", f"must not be set {no_defaults}"))
        else:
            causes.extend(_default_causes(s, path))
    for key, text in (("id", "id is not supported"), ("additionalItems", "additionalItems is not supported"),
                      ("patternProperties", "patternProperties is not supported"),
                      ("definitions", "definitions is not supported"),
                      ("dependencies", "dependencies is not supported"), ("$ref", "$ref is not supported")):
        if s.get(key):
            causes.append(v.forbidden(f"{path}.{key}", text))
    if s.get("type") == "null":
        causes.append(v.forbidden(f"{path}.type", "type cannot be set to null, use nullable as an alternative"))
    if isinstance(s.get("items"), list):
        causes.append(v.forbidden(f"{path}.items", "items must be a schema object and not an array"))
    if in_meta and s.get("x-kubernetes-embedded-resource"):
        causes.append(v.forbidden(f"{path}.x-kubernetes-embedded-resource", "must not be used inside of resource meta"))
    if s.get("uniqueItems") is True:
        causes.append(v.forbidden(f"{path}.uniqueItems", "uniqueItems cannot be set to true since the runtime "
                                  "complexity becomes quadratic"))
    extra = s.get("additionalProperties")
    if extra is not None:
        if s.get("properties") and (extra is False or isinstance(extra, dict)):
            causes.append(v.forbidden(f"{path}.additionalProperties",
                                      "additionalProperties and properties are mutual exclusive"))
        if isinstance(extra, dict):
            _shape(extra, f"{path}.additionalProperties", causes, root=False, in_meta=in_meta,
                   no_defaults="inside additionalProperties applying to object metadata" if in_meta else no_defaults)
    for key, sub in (s.get("properties") or {}).items():
        if isinstance(sub, dict):
            meta = (root or bool(s.get("x-kubernetes-embedded-resource"))) and key in RESOURCE_FIELDS
            _shape(sub, f"{path}.properties[{key}]", causes, root=False, in_meta=in_meta or meta,
                   no_defaults=f"in top-level {key}" if root and meta else no_defaults)
    if isinstance(s.get("not"), dict):
        _shape(s["not"], f"{path}.not", causes, root=False, in_meta=in_meta, no_defaults=no_defaults)
    for key in ("allOf", "oneOf", "anyOf"):
        for i, sub in enumerate(s.get(key) or []):
            if isinstance(sub, dict):
                _shape(sub, f"{path}.{key}[{i}]", causes, root=False, in_meta=in_meta, no_defaults=no_defaults)
    if isinstance(s.get("items"), dict):
        _shape(s["items"], f"{path}.items", causes, root=False, in_meta=in_meta, no_defaults=no_defaults)
    if s.get("x-kubernetes-preserve-unknown-fields") is False:
        causes.append(v.invalid(f"{path}.x-kubernetes-preserve-unknown-fields", False, "must be true or undefined"))


def _default_causes(s: Schema, path: str) -> list[Cause]:
    """A default must survive pruning unchanged and validate against its own schema."""
    default = s["default"]
    pruned = copy.deepcopy(default)
    prune(pruned, s, resource=bool(s.get("x-kubernetes-embedded-resource")))
    if pruned != default:
        return [v.invalid(f"{path}.default", default, "must not have unknown fields")]
    errors = validate(default, s)
    if not errors:
        return []
    # fmt's %v of a field.ErrorList: each error's "field: detail", space separated, in brackets
    listed = " ".join(f"{e.get('field', '')}: {e['message']}" for e in errors)
    return [v.invalid(f"{path}.default", default, f"must validate: [{listed}]")]


# ============================================================================ strict-decoding schema
def strict_schema(schema: Schema | None) -> Schema:
    """The schema as ``validation.unknown_fields`` and the apply merge read it: objects without
    properties accept nothing (pruned), embedded resources and the root accept apiVersion/kind/metadata,
    ``x-kubernetes-list-type: map`` lists merge by their key."""
    root = _strict(schema or {"type": "object"})
    props = root.setdefault("properties", {})
    for name in RESOURCE_FIELDS:
        props.setdefault(name, {"x-kubernetes-preserve-unknown-fields": True})
    # metadata is ObjectMeta whatever the CRD declares: controller-gen CRDs all say `metadata: {type: object}`,
    # which read literally would make metadata.name an unknown field
    props["metadata"] = {"x-kubernetes-preserve-unknown-fields": True}
    return root


def _strict(s: Schema) -> Schema:
    out: Schema = {k: val for k, val in s.items() if k not in ("properties", "items", "additionalProperties")}
    if s.get("x-kubernetes-preserve-unknown-fields"):
        out["properties"] = {k: _strict(sub) for k, sub in (s.get("properties") or {}).items()}
        return out
    if "properties" in s:
        out["properties"] = {k: _strict(sub) for k, sub in s["properties"].items()}
    extra = s.get("additionalProperties")
    if isinstance(extra, dict):
        out["additionalProperties"] = _strict(extra)
    elif extra is True:
        out["additionalProperties"] = True
    elif s.get("type") == "object" and "properties" not in s:
        out["properties"] = {}
    if isinstance(s.get("items"), dict):
        out["items"] = _strict(s["items"])
    keys = s.get("x-kubernetes-list-map-keys") or []
    if s.get("x-kubernetes-list-type") == "map" and len(keys) == 1:
        # server-side apply merges such lists by key: the strategic-merge metadata says the same
        out["x-kubernetes-patch-strategy"] = "merge"
        out["x-kubernetes-patch-merge-key"] = keys[0]
    if s.get("x-kubernetes-embedded-resource"):
        props = out.setdefault("properties", {})
        for name in RESOURCE_FIELDS:
            props.setdefault(name, {"x-kubernetes-preserve-unknown-fields": True})
    return out


# ============================================================================ printer columns (JSONPath)
_SEGMENT = re.compile(r"""\.((?:[A-Za-z0-9_\-/$]|\\\.)+)|\[(\d+|\*)\]|\[\?\(@\.([A-Za-z0-9_.\-]+)\s*==\s*["']([^"']*)["']\)\]""")


def compile_jsonpath(expr: str) -> list[tuple[str, Any]] | None:
    """The simple JSONPaths printer columns use (``.spec.x``, ``.items[0]``, ``[*]``, ``[?(@.type=="Ready")]``)."""
    text = expr.strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1]
    if text.startswith("$"):
        text = text[1:]
    steps: list[tuple[str, Any]] = []
    pos = 0
    while pos < len(text):
        m = _SEGMENT.match(text, pos)
        if m is None:
            return None
        if m.group(1) is not None:
            steps.append(("key", m.group(1).replace("\\.", ".")))  # `\.` escapes a dot in a key (label names)
        elif m.group(2) is not None:
            steps.append(("index", None if m.group(2) == "*" else int(m.group(2))))
        else:
            steps.append(("filter", (m.group(3).split("."), m.group(4))))
        pos = m.end()
    return steps


def eval_jsonpath(steps: list[tuple[str, Any]], obj: Any) -> list[Any]:
    current = [obj]
    for kind, arg in steps:
        nxt: list[Any] = []
        for node in current:
            if kind == "key":
                if isinstance(node, dict) and arg in node:
                    nxt.append(node[arg])
            elif kind == "index":
                if isinstance(node, list):
                    if arg is None:
                        nxt.extend(node)
                    elif -len(node) <= arg < len(node):
                        nxt.append(node[arg])
            elif isinstance(node, list):
                keys, wanted = arg
                for item in node:
                    cur: Any = item
                    for k in keys:
                        cur = cur.get(k) if isinstance(cur, dict) else None
                    if cur is not None and str(cur) == wanted:
                        nxt.append(item)
        current = nxt
    return current


def column_cell(column_type: str, value: Any, now: dt.datetime) -> Any:
    """kube's cellForJSONValue (and the JSONPath printer for strings)."""
    if value is None:
        return None
    if column_type == "string":
        if isinstance(value, str):
            return value
        if isinstance(value, int | float | bool):
            return go_number(value)
        return _json(value)
    if column_type == "integer":
        return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
    if column_type == "number":
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
    if column_type == "boolean":
        return value if isinstance(value, bool) else None
    if column_type == "date":
        if not isinstance(value, str):
            return None
        try:
            then = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return "<invalid>"
        from ultraplane.apiserver.resources import human_duration

        return human_duration((now - then).total_seconds())
    return None
