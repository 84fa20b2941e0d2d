"""`${...}` CEL expressions in RGD fields: splitting, compiling (cel-python), references and evaluation.

cel-python (`celpy`) parses CEL into a lark tree, which is what the dependency graph and the static checks
walk: every member chain rooted at an identifier (`deployment.status.availableReplicas`) is a reference.
Two kro syntaxes the library lacks are added here: the optional field/index operators (`a.?b`, `a.?b[0]`,
rewritten before parsing into `_optField`/`_optIndex` calls returning an `Optional`) and namespaced
functions (`base64.encode(...)`: the namespace is bound as a marker value and the method resolves to a
function). The string, list, json, base64, hash, random and quantity functions kro's examples use are
implemented in `library.py`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

import celpy
import lark
from celpy import celtypes

from ultraplane.compose import library

logging.getLogger("celpy").setLevel(logging.ERROR)
_ENV = celpy.Environment()
MACROS = {"map", "filter", "all", "exists", "exists_one"}
ANY = "[*]"  # a path segment for an index that is not a constant
ELEM = "[elem]"  # the element a comprehension variable stands for


class ExpressionError(ValueError):
    """A malformed `${...}` or a CEL expression that does not parse."""


class PendingData(LookupError):
    """The expression reads a field the object does not have yet (kro waits and retries)."""


@dataclass
class Template:
    """A string field: one standalone expression, or literal text with expressions (a string template)."""

    parts: list[str | Expression]

    @property
    def standalone(self) -> bool:
        return len(self.parts) == 1 and isinstance(self.parts[0], Expression)

    @property
    def expressions(self) -> list[Expression]:
        return [p for p in self.parts if isinstance(p, Expression)]

    def evaluate(self, variables: dict[str, Any]) -> Any:
        if self.standalone:
            assert isinstance(self.parts[0], Expression)
            return self.parts[0].evaluate(variables)
        out = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            value = part.evaluate(variables)
            if not isinstance(value, str):
                raise ExpressionError(f"expression {part.source!r} in a string template returned "
                                      f"{type_name(value)}, not a string")
            out.append(value)
        return "".join(out)


@dataclass
class Reference:
    root: str
    path: tuple[str, ...]
    through: str = ""  # the comprehension variable this reference was made through, if any

    def dotted(self) -> str:
        return self.root + "".join(s if s in (ANY, ELEM) else f".{s}" for s in self.path)


@dataclass
class Expression:
    source: str
    program: Any = field(repr=False, default=None)
    references: list[Reference] = field(default_factory=list)
    tree: Any = field(repr=False, default=None)

    @property
    def roots(self) -> set[str]:
        return {r.root for r in self.references}

    def evaluate(self, variables: dict[str, Any]) -> Any:
        # only the variables this expression reads are converted, each once per Variables
        convert = variables.cel if isinstance(variables, Variables) else (lambda name: to_cel(variables[name]))
        activation = {**library.NAMESPACES, **{r: convert(r) for r in self.roots if r in variables}}
        try:
            value = self.program.evaluate(activation)
        except celpy.CELEvalError as exc:
            raise _eval_error(self.source, exc) from None
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
            raise ExpressionError(f"failed to evaluate {self.source!r}: {exc}") from None
        if isinstance(value, celpy.CELEvalError):
            raise _eval_error(self.source, value)
        return from_cel(value)


class Variables(dict[str, Any]):
    """An expression scope (`schema`, resource ids, forEach iterators) that keeps each value's CEL form
    once converted, so a reconcile converts the instance and each observed object at most once."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._converted: dict[str, tuple[int, Any]] = {}

    def cel(self, name: str) -> Any:
        value = self[name]
        cached = self._converted.get(name)
        if cached is not None and cached[0] == id(value):
            return cached[1]
        converted = to_cel(value)
        self._converted[name] = (id(value), converted)
        return converted

    def with_values(self, values: dict[str, Any]) -> Variables:
        scope = Variables(self)
        scope._converted = {k: v for k, v in self._converted.items() if k not in values}
        scope.update(values)
        return scope


def _eval_error(source: str, exc: BaseException) -> Exception:
    args = getattr(exc, "args", ())
    text = str(args[0]) if args else str(exc)
    if "no such member" in text or "no such key" in text:
        return PendingData(f"expression {source!r}: {text}")
    return ExpressionError(f"failed to evaluate expression {source!r}: {text}")


def type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    return {int: "int", float: "double", str: "string", list: "list", dict: "map", type(None): "null"}.get(
        type(value), type(value).__name__)


# ---------------------------------------------------------------------------- splitting


def _scan_expression_end(text: str, start: int) -> int:
    """Index of the `}` closing the `${` whose body starts at `start` (CEL strings and braces skipped)."""
    depth = 0
    i = start
    while i < len(text):
        char = text[i]
        if char in "\"'":
            triple = text[i:i + 3] in ('"""', "'''")
            quote = text[i:i + 3] if triple else char
            i += len(quote)
            while i < len(text) and text[i:i + len(quote)] != quote:
                i += 2 if text[i] == "\\" else 1
            i += len(quote)
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            if depth == 0:
                return i
            depth -= 1
        i += 1
    raise ExpressionError(f"unterminated expression in {text!r}: missing closing '}}'")


def parse_template(text: str) -> Template | None:
    """The parts of a string field, or None when it holds no `${`."""
    if "${" not in text:
        return None
    parts: list[str | Expression] = []
    i = 0
    literal: list[str] = []
    while i < len(text):
        if text.startswith("${", i):
            end = _scan_expression_end(text, i + 2)
            source = text[i + 2:end].strip()
            if not source:
                raise ExpressionError(f"empty expression in {text!r}")
            if literal:
                parts.append("".join(literal))
                literal = []
            parts.append(compile_expression(source))
            i = end + 1
        else:
            literal.append(text[i])
            i += 1
    if literal:
        parts.append("".join(literal))
    return Template(parts)


def parse_standalone(text: Any, what: str) -> Expression:
    """An `includeWhen`/`readyWhen`/`forEach` entry: exactly one `${...}` and nothing else."""
    if not isinstance(text, str):
        raise ExpressionError(f"{what}: expected a string, got {type(text).__name__}")
    template = parse_template(text)
    if template is None or not template.standalone:
        raise ExpressionError(f"{what}: {text!r} must be a single standalone expression wrapped in ${{...}}")
    expr = template.parts[0]
    assert isinstance(expr, Expression)
    return expr


# ---------------------------------------------------------------------------- optionals

_IDENT = re.compile(r"\s*([_a-zA-Z][_a-zA-Z0-9]*)")


def _skip_string(src: str, i: int) -> int:
    quote = src[i:i + 3] if src[i:i + 3] in ('"""', "'''") else src[i]
    i += len(quote)
    while i < len(src) and src[i:i + len(quote)] != quote:
        i += 2 if src[i] == "\\" else 1
    return i + len(quote)


def _matching(src: str, close: int) -> int:
    """Index of the bracket opening the one at `close` (scanning backwards, strings ignored)."""
    pairs = {")": "(", "]": "[", "}": "{"}
    stack = [src[close]]
    i = close - 1
    while i >= 0:
        char = src[i]
        if char in pairs:
            stack.append(char)
        elif char in "([{":
            if pairs[stack[-1]] != char:
                raise ExpressionError(f"unbalanced brackets in {src!r}")
            stack.pop()
            if not stack:
                return i
        i -= 1
    raise ExpressionError(f"unbalanced brackets in {src!r}")


def _operand_start(src: str, end: int) -> int:
    """Start of the member chain ending just before `end` (identifiers, dots, calls and indexes)."""
    i = end - 1
    while i >= 0:
        char = src[i]
        if char in ")]":
            i = _matching(src, i) - 1
        elif char.isalnum() or char in "_.":
            i -= 1
        else:
            break
    return i + 1


def _forward_close(src: str, open_at: int) -> int:
    depth = 0
    i = open_at
    while i < len(src):
        if src[i] in "\"'":
            i = _skip_string(src, i)
            continue
        if src[i] in "([{":
            depth += 1
        elif src[i] in ")]}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise ExpressionError(f"unbalanced brackets in {src!r}")


def rewrite_optionals(src: str) -> str:
    """`a.?b` -> `_optField(a, "b")`, and an index right after an optional -> `_optIndex(x, i)`."""
    while True:
        i = 0
        found = -1
        while i < len(src) - 1:
            if src[i] in "\"'":
                i = _skip_string(src, i)
                continue
            if src[i] == "." and src[i + 1] == "?":
                found = i
                break
            i += 1
        if found < 0:
            return src
        start = _operand_start(src, found)
        if start == found:
            raise ExpressionError(f"optional selection without an operand in {src!r}")
        match = _IDENT.match(src, found + 2)
        if not match:
            raise ExpressionError(f"optional selection needs a field name in {src!r}")
        rewritten = f'_optField({src[start:found]}, "{match.group(1)}")'
        rest = src[match.end():]
        while rest.lstrip().startswith("["):
            offset = len(rest) - len(rest.lstrip())
            close = _forward_close(rest, offset)
            rewritten = f"_optIndex({rewritten}, {rest[offset + 1:close]})"
            rest = rest[close + 1:]
        src = src[:start] + rewritten + rest


# ---------------------------------------------------------------------------- compile + references


def compile_expression(source: str) -> Expression:
    rewritten = rewrite_optionals(source)
    try:
        tree = _ENV.compile(rewritten)
    except celpy.CELParseError as exc:
        detail = " ".join(str(exc).split())
        raise ExpressionError(f"failed to parse expression {source!r}: {detail}") from None
    except lark.exceptions.LarkError as exc:
        raise ExpressionError(f"failed to parse expression {source!r}: {exc}") from None
    program = _ENV.program(tree, functions=library.FUNCTIONS)
    return Expression(source, program, list(_references(tree)), tree)


_WRAPPERS = {"expr", "conditionalor", "conditionaland", "relation", "addition", "multiplication", "unary",
             "member", "primary", "paren_expr"}


def _unwrap(node: Any) -> Any:
    while isinstance(node, lark.Tree) and node.data in _WRAPPERS and len(node.children) == 1 \
            and isinstance(node.children[0], lark.Tree):
        node = node.children[0]
    return node


def _literal_key(node: Any) -> str | None:
    node = _unwrap(node)
    if isinstance(node, lark.Tree) and node.data == "literal" and node.children:
        token = node.children[0]
        if isinstance(token, lark.Token) and token.type == "STRING_LIT":
            try:
                return _unquote(token.value)
            except ValueError:  # an odd escape: treat the key as dynamic
                return None
    return None


def _unquote(text: str) -> str:
    if text[:1] in "rR":
        return text[2:-1]
    return text[1:-1].encode().decode("unicode_escape")


def _chain(node: Any) -> tuple[str, list[str], list[Any]] | None:
    """A member chain's root identifier, path segments and index sub-expressions, or None."""
    node = _unwrap(node)
    if not isinstance(node, lark.Tree):
        return None
    if node.data == "ident":
        return str(node.children[0]), [], []
    if node.data == "member_dot":
        inner = _chain(node.children[0])
        if inner is None:
            return None
        return inner[0], [*inner[1], str(node.children[1])], inner[2]
    if node.data == "member_index":
        inner = _chain(node.children[0])
        if inner is None:
            return None
        key = _literal_key(node.children[1])
        return inner[0], [*inner[1], key if key is not None else ANY], [*inner[2], node.children[1]]
    return None


# A comprehension variable stands for an element of the list its macro ranges over: references through
# it are checked as that list's `[elem]` (unchecked when the receiver is not a list, e.g. a map's keys).
Bound = dict[str, "Reference | None"]


def _references(tree: Any) -> list[Reference]:
    out: list[Reference] = []
    _walk(tree, {}, out)
    return out


def _walk(node: Any, bound: Bound, out: list[Reference]) -> None:
    if not isinstance(node, lark.Tree):
        return
    node = _unwrap(node)
    if not isinstance(node, lark.Tree):
        return
    chain = _chain(node)
    if chain is not None:
        root, path, indexes = chain
        if root in bound:
            base = bound[root]
            if base is not None:
                out.append(Reference(base.root, (*base.path, ELEM, *path), through=root))
        elif root not in library.NAMESPACES:
            out.append(Reference(root, tuple(path)))
        for index in indexes:
            _walk(index, bound, out)
        return
    if node.data == "member_dot_arg":
        receiver, method = node.children[0], str(node.children[1])
        args = node.children[2].children if len(node.children) > 2 and node.children[2] is not None else []
        _walk(receiver, bound, out)
        if method in MACROS and len(args) >= 2:
            variable = _chain(args[0])
            inner = dict(bound)
            if variable is not None:
                inner[variable[0]] = _element_base(receiver, bound)
            for arg in args[1:]:
                _walk(arg, inner, out)
            return
        for arg in args:
            _walk(arg, bound, out)
        return
    for child in node.children:
        _walk(child, bound, out)


def _element_base(receiver: Any, bound: Bound) -> Reference | None:
    chain = _chain(receiver)
    if chain is None:
        return None
    root, path, _ = chain
    if root in bound:
        base = bound[root]
        return None if base is None else Reference(base.root, (*base.path, ELEM, *path))
    if root in library.NAMESPACES:
        return None
    return Reference(root, tuple(path))


# ---------------------------------------------------------------------------- values


def to_cel(value: Any) -> Any:
    if isinstance(value, library.Namespace | library.Optional):
        return value
    return celpy.json_to_cel(value)


def from_cel(value: Any) -> Any:
    if isinstance(value, library.Optional):
        return from_cel(value.value) if value.present else None
    if value is None or isinstance(value, celtypes.NullType):
        return None
    if isinstance(value, celtypes.BoolType | bool):
        return bool(value)
    if isinstance(value, celtypes.IntType | celtypes.UintType | int):
        return int(value)
    if isinstance(value, celtypes.DoubleType | float):
        return float(value)
    if isinstance(value, celtypes.StringType | str):
        return str(value)
    if isinstance(value, celtypes.BytesType | bytes):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, dict):
        return {str(from_cel(k)): from_cel(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [from_cel(v) for v in value]
    if isinstance(value, library.Quantity):
        return str(value)
    return str(value)


def template_fields(obj: Any, path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], Template]]:
    """Every string field holding `${...}` in a template, with its path (keys and list indexes)."""
    found: list[tuple[tuple[Any, ...], Template]] = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            found.extend(template_fields(value, (*path, key)))
    elif isinstance(obj, list):
        for index, value in enumerate(obj):
            found.extend(template_fields(value, (*path, index)))
    elif isinstance(obj, str):
        template = parse_template(obj)
        if template is not None:
            found.append((path, template))
    return found
