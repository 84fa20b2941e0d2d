"""ObjectMeta, name, label and annotation validation plus the Status bodies kube-apiserver returns.

Messages are apimachinery's ``validation`` package texts; a cause is kube's StatusCause
(``{"reason", "message", "field"}``) and the 422 Status joins causes the way ``errors.NewInvalid`` does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from ultraplane.apiserver.errors import status

Cause = dict[str, str]

DNS1123_LABEL_FMT = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_SUBDOMAIN_FMT = DNS1123_LABEL_FMT + r"(\." + DNS1123_LABEL_FMT + ")*"
QUALIFIED_NAME_FMT = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
LABEL_VALUE_FMT = "(" + QUALIFIED_NAME_FMT + ")?"

_DNS1123_LABEL = re.compile(DNS1123_LABEL_FMT)
_DNS1123_SUBDOMAIN = re.compile(DNS1123_SUBDOMAIN_FMT)
_QUALIFIED_NAME = re.compile(QUALIFIED_NAME_FMT)
_LABEL_VALUE = re.compile(LABEL_VALUE_FMT)

DNS1123_LABEL_MSG = ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and "
                     "must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex "
                     f"used for validation is '{DNS1123_LABEL_FMT}')")
DNS1123_SUBDOMAIN_MSG = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' "
                         "or '.', and must start and end with an alphanumeric character (e.g. 'example.com', "
                         f"regex used for validation is '{DNS1123_SUBDOMAIN_FMT}')")
QUALIFIED_NAME_MSG = ("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and "
                      "end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex "
                      f"used for validation is '{QUALIFIED_NAME_FMT}')")
LABEL_VALUE_MSG = ("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
                   "and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or "
                   f"'12345', regex used for validation is '{LABEL_VALUE_FMT}')")
TOTAL_ANNOTATION_SIZE_LIMIT = 256 * 1024


def _max_len(limit: int) -> str:
    return f"must be no more than {limit} characters"


def dns1123_label_errors(value: str) -> list[str]:
    out = []
    if len(value) > 63:
        out.append(_max_len(63))
    if not _DNS1123_LABEL.fullmatch(value):
        out.append(DNS1123_LABEL_MSG)
    return out


def dns1123_subdomain_errors(value: str) -> list[str]:
    out = []
    if len(value) > 253:
        out.append(_max_len(253))
    if not _DNS1123_SUBDOMAIN.fullmatch(value):
        out.append(DNS1123_SUBDOMAIN_MSG)
    return out


def path_segment_errors(value: str) -> list[str]:
    out = []
    if value in (".", ".."):
        out.append(f"may not be '{value}'")
    for bad in ("/", "%"):
        if bad in value:
            out.append(f"may not contain '{bad}'")
    return out


def qualified_name_errors(value: str) -> list[str]:
    """IsQualifiedName: ``[prefix/]name`` where prefix is a DNS-1123 subdomain and name at most 63 characters."""
    errors: list[str] = []
    parts = value.split("/")
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            errors.append("prefix part must be non-empty")
        else:
            errors += ["prefix part " + p for p in dns1123_subdomain_errors(prefix)]
    else:
        return ["a qualified name " + QUALIFIED_NAME_MSG.removeprefix("name part ")
                + " with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"]
    if not name:
        errors.append("name part must be non-empty")
    elif len(name) > 63:
        errors.append("name part " + _max_len(63))
    if not _QUALIFIED_NAME.fullmatch(name):
        errors.append(QUALIFIED_NAME_MSG)
    return errors


def label_value_errors(value: str) -> list[str]:
    out = []
    if len(value) > 63:
        out.append(_max_len(63))
    if not _LABEL_VALUE.fullmatch(value):
        out.append(LABEL_VALUE_MSG)
    return out


_NAME_RULES = {"dns1123subdomain": dns1123_subdomain_errors, "dns1123label": dns1123_label_errors,
               "pathsegment": path_segment_errors}


# ---------------------------------------------------------------------- causes
_GO_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r", "\a": "\\a", "\b": "\\b",
               "\f": "\\f", "\v": "\\v"}


def go_quote(value: str) -> str:
    """Go's %q for a string: printable characters as they are, the rest escaped."""
    out = []
    for ch in value:
        if ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) <= 0xFFFF:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return '"' + "".join(out) + '"'


def _quote(value: Any) -> str:
    """How field.Error renders a bad value: strings with %q, simple scalars with %v, the rest as JSON."""
    if isinstance(value, str):
        return go_quote(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def invalid(field: str, value: Any, detail: str) -> Cause:
    return {"reason": "FieldValueInvalid", "message": f"Invalid value: {_quote(value)}: {detail}", "field": field}


def required(field: str, detail: str = "") -> Cause:
    return {"reason": "FieldValueRequired", "message": "Required value" + (f": {detail}" if detail else ""),
            "field": field}


def forbidden(field: str, detail: str) -> Cause:
    return {"reason": "FieldValueForbidden", "message": f"Forbidden: {detail}", "field": field}


def not_supported(field: str, value: Any, supported: list[str]) -> Cause:
    detail = ("supported values: " + ", ".join(go_quote(str(v)) for v in supported)) if supported else ""
    return {"reason": "FieldValueNotSupported",
            "message": f"Unsupported value: {_quote(value)}" + (f": {detail}" if detail else ""), "field": field}


def duplicate(field: str, value: Any) -> Cause:
    return {"reason": "FieldValueDuplicate", "message": f"Duplicate value: {_quote(value)}", "field": field}


def not_found(field: str, value: Any) -> Cause:
    return {"reason": "FieldValueNotFound", "message": f"Not found: {_quote(value)}", "field": field}


def type_invalid(field: str, value: Any, detail: str) -> Cause:
    return {"reason": "FieldValueTypeInvalid", "message": f"Invalid value: {_quote(value)}: {detail}",
            "field": field}


def too_long(field: str, limit: int) -> Cause:
    # field.TooLong's wording since Kubernetes 1.30 (earlier releases said "must have at most N bytes")
    return {"reason": "FieldValueTooLong", "message": f"Too long: may not be more than {limit} bytes",
            "field": field}


def validate_labels(labels: Mapping[str, Any] | None, field: str = "metadata.labels") -> list[Cause]:
    causes: list[Cause] = []
    for key, value in (labels or {}).items():
        causes += [invalid(field, key, p) for p in qualified_name_errors(key)]
        causes += [invalid(field, value, p) for p in label_value_errors(str(value))]
    return causes


def validate_annotations(annotations: Mapping[str, Any] | None, field: str = "metadata.annotations") -> list[Cause]:
    causes: list[Cause] = []
    total = 0
    for key, value in (annotations or {}).items():
        causes += [invalid(field, key, p) for p in qualified_name_errors(key.lower())]
        total += len(key) + len(str(value))
    if total > TOTAL_ANNOTATION_SIZE_LIMIT:
        causes.append(too_long(field, TOTAL_ANNOTATION_SIZE_LIMIT))
    return causes


def validate_object_meta(meta: Mapping[str, Any], *, namespaced: bool,
                         name_rule: str = "dns1123subdomain") -> list[Cause]:
    """ValidateObjectMeta: name/generateName, namespace scope, labels and annotations."""
    causes: list[Cause] = []
    rule = _NAME_RULES[name_rule]
    name = meta.get("name") or ""
    generate_name = meta.get("generateName") or ""
    if generate_name:
        # a random suffix follows the prefix, so one trailing '-' is fine (upstream's maskTrailingDash)
        prefix = generate_name[:-2] + "a" if len(generate_name) > 1 and generate_name.endswith("-") \
            else generate_name
        causes += [invalid("metadata.generateName", generate_name, p) for p in rule(prefix)]
    if not name:
        if not generate_name:
            causes.append(required("metadata.name", "name or generateName is required"))
    else:
        causes += [invalid("metadata.name", name, p) for p in rule(name)]
    namespace = meta.get("namespace") or ""
    if namespaced:
        if not namespace:
            causes.append(required("metadata.namespace"))
        else:
            causes += [invalid("metadata.namespace", namespace, p) for p in dns1123_label_errors(namespace)]
    elif namespace:
        causes.append(forbidden("metadata.namespace", "not allowed on this type"))
    generation = meta.get("generation")
    if isinstance(generation, int) and generation < 0:
        causes.append(invalid("metadata.generation", generation, "must be greater than or equal to 0"))
    causes += validate_labels(meta.get("labels"))
    causes += validate_annotations(meta.get("annotations"))
    causes += validate_finalizers(meta.get("finalizers"))
    return causes


_ORPHAN = "orphan"
_FOREGROUND = "foregroundDeletion"


def validate_finalizers(finalizers: list[Any] | None, field: str = "metadata.finalizers") -> list[Cause]:
    """ValidateFinalizers: qualified names, and not both ``orphan`` and ``foregroundDeletion``."""
    causes: list[Cause] = []
    for finalizer in finalizers or []:
        causes += [invalid(field, finalizer, p) for p in qualified_name_errors(str(finalizer))]
    if finalizers and _ORPHAN in finalizers and _FOREGROUND in finalizers:
        causes.append(invalid(field, list(finalizers),
                              f"finalizer {_ORPHAN} and {_FOREGROUND} cannot be both set"))
    return causes


# ---------------------------------------------------------------------- Status bodies
def _details(name: str, group: str, kind: str) -> dict[str, Any]:
    details: dict[str, Any] = {}
    if name:
        details["name"] = name
    if group:
        details["group"] = group
    if kind:  # omitempty, as in metav1.StatusDetails
        details["kind"] = kind
    return details


def _qualified(resource: str, group: str) -> str:
    return f"{resource}.{group}" if group else resource


def invalid_status(kind: str, name: str, causes: list[Cause], group: str = "") -> dict[str, Any]:
    """errors.NewInvalid: 422 with ``Kind.group "name" is invalid: <cause>`` or ``[<cause>, <cause>]``
    (field.ErrorList.ToAggregate: repeated messages collapse into one)."""
    texts = list(dict.fromkeys(f"{c.get('field', '')}: {c['message']}" for c in causes))
    message = f"{_qualified(kind, group)} {go_quote(name)} is invalid"
    if texts:
        message += ": " + (texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]")
    details = _details(name, group, kind)
    details["causes"] = causes
    return status(422, "Invalid", message, details)


def not_found_status(group: str, resource: str, name: str) -> dict[str, Any]:
    return status(404, "NotFound", f"{_qualified(resource, group)} {go_quote(name)} not found",
                  _details(name, group, resource))


def already_exists_status(group: str, resource: str, name: str) -> dict[str, Any]:
    return status(409, "AlreadyExists", f"{_qualified(resource, group)} {go_quote(name)} already exists",
                  _details(name, group, resource))


def conflict_status(group: str, resource: str, name: str, message: str) -> dict[str, Any]:
    return status(409, "Conflict", f"Operation cannot be fulfilled on {_qualified(resource, group)} "
                  f"{go_quote(name)}: {message}", _details(name, group, resource))


def forbidden_status(group: str, resource: str, name: str, message: str) -> dict[str, Any]:
    """errors.NewForbidden: ``R.g "name" is forbidden: ...``, without the name for collections."""
    what = _qualified(resource, group)
    if not resource and not group:
        text = f"forbidden: {message}"
    elif not name:
        text = f"{what} is forbidden: {message}"
    else:
        text = f"{what} {go_quote(name)} is forbidden: {message}"
    return status(403, "Forbidden", text, _details(name, group, resource))


def gone_status(message: str, reason: str = "Expired") -> dict[str, Any]:
    """410: reason Expired (errors.NewResourceExpired: too old resourceVersion, expired continue token) or
    Gone (errors.NewGone)."""
    return status(410, reason, message)


def bad_request_status(message: str) -> dict[str, Any]:
    return status(400, "BadRequest", message)


def method_not_supported(group: str, resource: str, action: str) -> dict[str, Any]:
    """errors.NewMethodNotSupported."""
    return status(405, "MethodNotAllowed", f"{action} is not supported on resources of kind "
                  f"{go_quote(_qualified(resource, group))}", _details("", group, resource))
