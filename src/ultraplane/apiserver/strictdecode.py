"""Pieces of kube's strict decoding that the registry's fieldValidation needs.

- duplicate keys in a JSON body (sigs.k8s.io/json reports ``duplicate field "spec.paused"``);
- removing undeclared fields once reported: kube decodes into typed structs, so they never reach etcd;
- Go's ``%+v`` rendering of a map, which kube puts into the error for a strict strategic merge patch.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

# A key followed by blanks before its colon (pretty printers that put " :" are rare)
_SPACED_KEY = re.compile(rb'"[ \t\r\n]+:')


class _DuplicateKeys(dict):  # type: ignore[type-arg]
    """A decoded JSON object that remembers which of its keys appeared more than once."""

    duplicates: list[str]


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    repeated: list[str] = []
    for key, value in pairs:
        if key in out and key not in repeated:
            repeated.append(key)
        out[key] = value
    if not repeated:
        return out
    marked = _DuplicateKeys(out)
    marked.duplicates = repeated
    return marked


def duplicate_fields(body: bytes, parsed: Any) -> list[str]:
    """``duplicate field "<path>"`` for each key repeated within one object of ``body`` (parsed as ``parsed``).

    Repeats are rare, so the common case costs a re-encode and two byte counts, all in C: every key in
    the body ends in ``":`` and so does every key of the compact re-encoding of ``parsed``; a ``":``
    inside a string is ``\\":`` in both. So equal counts mean the parser kept every key, unless a key had
    blanks before its colon or a string spelled a quote as ``\\u0022`` (then the body is decoded again).
    """
    if b"\\u0022" not in body and not _SPACED_KEY.search(body) and \
            body.count(b'":') == orjson.dumps(parsed).count(b'":'):
        return []
    try:
        tree = json.loads(body, object_pairs_hook=_pairs)
    except ValueError:
        return []
    out: list[str] = []
    _collect(tree, "", out)
    return out


def _collect(value: Any, path: str, out: list[str]) -> None:
    if isinstance(value, dict):
        for key in getattr(value, "duplicates", ()):
            out.append(f'duplicate field "{path}.{key}"' if path else f'duplicate field "{key}"')
        for key, item in value.items():
            _collect(item, f"{path}.{key}" if path else key, out)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _collect(item, f"{path}[{i}]", out)


_PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def drop_field(obj: Any, path: str) -> None:
    """Remove the field at an unknown-field path such as ``spec.containers[0].foo``."""
    parts = [(m.group(1), m.group(2)) for m in _PATH_PART.finditer(path)]
    node = obj
    for name, index in parts[:-1]:
        try:
            node = node[int(index)] if index is not None else node[name]
        except (KeyError, IndexError, TypeError):
            return
    last_name, last_index = parts[-1] if parts else (None, None)
    if isinstance(node, dict) and last_name is not None and last_index is None:
        node.pop(last_name, None)


def go_format(value: Any) -> str:
    """Go's ``fmt.Sprintf("%+v", v)`` of a decoded JSON value (maps print with sorted keys)."""
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{go_format(value[k])}" for k in sorted(value)) + "]"
    if isinstance(value, list):
        return "[" + " ".join(go_format(v) for v in value) + "]"
    if value is None:
        return "<nil>"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _go_char(ch: str) -> str:
    """Go's quoteChar in encoding/json syntax errors."""
    if ch == "'":
        return "'\\''"
    if ch == '"':
        return "'\"'"
    return f"'{ch}'" if ch.isprintable() else json.dumps(ch)[1:-1].join("''")


def go_json_error(body: bytes) -> str:
    """encoding/json's syntax error text for a body Python cannot parse (e.g. "unexpected end of JSON input")."""
    text = body.decode("utf-8", errors="replace")
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.pos >= len(text.rstrip()):
            return "unexpected end of JSON input"
        literal = _literal_error(text, exc.pos)
        if literal is not None:
            return literal
        ch = _go_char(text[exc.pos])
        context = {
            "Expecting property name enclosed in double quotes": "looking for beginning of object key string",
            "Expecting value": "looking for beginning of value",
            "Expecting ':' delimiter": "after object key",
            "Extra data": "after top-level value",
        }.get(exc.msg)
        if context is None and exc.msg == "Expecting ',' delimiter":
            opener = _innermost_open(text, exc.pos)
            context = "after array element" if opener == "[" else "after object key:value pair"
        if context is None:
            context = "in string literal" if exc.msg.startswith("Invalid control") else "looking for beginning of value"
        return f"invalid character {ch} {context}"
    except ValueError as exc:
        return str(exc)
    return "unexpected end of JSON input"


def _literal_error(text: str, pos: int) -> str | None:
    """encoding/json's error inside a misspelled null / true / false, e.g. ``in literal null (expecting 'u')``."""
    for literal in ("null", "true", "false"):
        if text[pos] != literal[0]:
            continue
        for i in range(1, len(literal)):
            if pos + i >= len(text):
                return "unexpected end of JSON input"
            if text[pos + i] != literal[i]:
                return f"invalid character {_go_char(text[pos + i])} in literal {literal} (expecting '{literal[i]}')"
    return None


def _innermost_open(text: str, pos: int) -> str:
    stack: list[str] = []
    in_string = escaped = False
    for ch in text[:pos]:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            stack.append(ch)
        elif ch in "]}" and stack:
            stack.pop()
    return stack[-1] if stack else ""


def summarize(body: bytes, limit: int = 30) -> str:
    """kube's summarizeData: the start of a JSON body, otherwise its bytes in hex."""
    if not body:
        return "<empty>"
    if body[:1] == b"{":
        head = body[:limit].decode("utf-8", errors="replace")
        return head + " ..." if len(body) > limit else head
    return body[:limit].hex() + (" ..." if len(body) > limit else "")
