"""Label and field selectors with the grammar, canonical form and error texts of k8s.io/apimachinery.

Parsing happens once per request; ``matches`` runs per object (list filtering, watch fan-out), so a parsed
selector is a tuple of precompiled checks with no per-call allocation beyond the label lookups.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ultraplane.apiserver import validation


class SelectorError(ValueError):
    """A selector kube-apiserver rejects with 400; ``str()`` is its message."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# ---------------------------------------------------------------------- label selectors
_MISSING = object()  # never a member of a value set: one dict lookup decides in / notin
@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str  # "=", "==", "!=", "in", "notin", "exists", "!", "gt", "lt"
    values: tuple[str, ...] = ()

    def __str__(self) -> str:
        if self.operator == "exists":
            return self.key
        if self.operator == "!":
            return "!" + self.key
        shown = self.values[0] if len(self.values) == 1 else ",".join(sorted(self.values))
        if self.operator in ("in", "notin"):
            return f"{self.key} {self.operator} ({shown})"
        symbol = {"gt": ">", "lt": "<"}.get(self.operator, self.operator)
        return f"{self.key}{symbol}{shown}"

    def compile(self) -> Callable[[Mapping[str, str]], bool]:
        key = self.key
        if self.operator == "exists":
            return lambda labels: key in labels
        if self.operator == "!":
            return lambda labels: key not in labels
        if self.operator in ("=", "=="):
            value = self.values[0]
            return lambda labels: labels.get(key) == value
        if self.operator == "!=":
            value = self.values[0]
            return lambda labels: labels.get(key) != value
        if self.operator in ("gt", "lt"):
            bound = int(self.values[0])
            greater = self.operator == "gt"

            def compare(labels: Mapping[str, str]) -> bool:
                current = labels.get(key)
                if current is None:
                    return False
                try:
                    number = _parse_int64(current)
                except ValueError:
                    return False
                return number > bound if greater else number < bound
            return compare
        allowed = frozenset(self.values)
        if self.operator == "in":
            return lambda labels: labels.get(key, _MISSING) in allowed
        return lambda labels: labels.get(key, _MISSING) not in allowed


@dataclass
class LabelSelector:
    requirements: tuple[Requirement, ...] = ()
    nothing: bool = False  # labels.Nothing(): what a nil metav1.LabelSelector selects
    _checks: tuple[Callable[[Mapping[str, str]], bool], ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        self._checks = tuple(r.compile() for r in self.requirements)

    @property
    def empty(self) -> bool:
        return not self.requirements and not self.nothing

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        if self.nothing:
            return False
        labels = labels or {}
        for check in self._checks:
            if not check(labels):
                return False
        return True

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)


_INT64 = re.compile(r"[+-]?[0-9]+")


def _parse_int64(text: str) -> int:
    """strconv.ParseInt(text, 10, 64)."""
    if not _INT64.fullmatch(text):
        raise ValueError(text)
    number = int(text)
    if not -(1 << 63) <= number < (1 << 63):
        raise ValueError(text)
    return number


def _go_quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _aggregate(errors: list[str]) -> str:
    """utilerrors.Aggregate's Error(): one message alone, several as ``[a, b]``."""
    unique = list(dict.fromkeys(errors))
    return unique[0] if len(unique) == 1 else "[" + ", ".join(unique) + "]"


_OPERATOR_LIST = "in, notin, =, ==, !=, gt, lt"
_OPERATORS = {"=": "=", "==": "==", "!=": "!=", ">": "gt", "<": "lt", "in": "in", "notin": "notin"}
_GO_OPERATOR = {"=": "=", "==": "==", "!=": "!=", "gt": "gt", "lt": "lt", "in": "in", "notin": "notin",
                "exists": "exists", "!": "!"}


def requirement_errors(key: str, operator: str, values: list[str], path: str = "") -> list[str]:
    """labels.NewRequirement's checks, as ``field.Error`` texts (``key``, ``values[i][key]`` paths)."""
    prefix = f"{path}." if path else ""
    errors: list[str] = []
    problems = validation.qualified_name_errors(key)
    if problems:
        errors.append(f'{prefix}key: Invalid value: {_go_quote(key)}: {"; ".join(problems)}')
    values_path = f"{prefix}values"
    shown = json.dumps(values, separators=(",", ":"))
    if operator in ("in", "notin"):
        if not values:
            errors.append(f"{values_path}: Invalid value: {shown}: for 'in', 'notin' operators, values set can't "
                          "be empty")
    elif operator in ("=", "==", "!="):
        if len(values) != 1:
            errors.append(f"{values_path}: Invalid value: {shown}: exact-match compatibility requires one single "
                          "value")
    elif operator in ("exists", "!"):
        if values:
            errors.append(f"{values_path}: Invalid value: {shown}: values set must be empty for exists and does "
                          "not exist")
    elif operator in ("gt", "lt"):
        if len(values) != 1:
            errors.append(f"{values_path}: Invalid value: {shown}: for 'Gt', 'Lt' operators, exactly one value is "
                          "required")
        for index, value in enumerate(values):
            try:
                _parse_int64(value)
            except ValueError:
                errors.append(f"{values_path}[{index}]: Invalid value: {_go_quote(value)}: for 'Gt', 'Lt' "
                              "operators, the value must be an integer")
    for index, value in enumerate(values):
        problems = validation.label_value_errors(value)
        if problems:
            errors.append(f'{values_path}[{index}][{key}]: Invalid value: {_go_quote(value)}: '
                          f'{"; ".join(problems)}')
    return errors


# Lexer tokens: (kind, literal); kind is the literal itself for symbols and keywords, "id" or "end" otherwise.
_SPECIAL = frozenset("=!(),><")
_WHITESPACE = frozenset(" \t\r\n")
_SYMBOLS = frozenset({")", ",", "!", "==", "=", ">", "<", "!=", "("})


def _lex(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos, size = 0, len(text)
    while True:
        while pos < size and text[pos] in _WHITESPACE:
            pos += 1
        if pos >= size:
            tokens.append(("end", ""))
            return tokens
        if text[pos] in _SPECIAL:
            # the longest run of special characters that is still a known symbol
            buffer, best, best_end = "", "", pos
            end = pos
            while end < size and text[end] in _SPECIAL:
                buffer += text[end]
                end += 1
                if buffer in _SYMBOLS:
                    best, best_end = buffer, end
                elif best:
                    break
            if not best:
                tokens.append(("error", f"error expected: keyword found '{buffer}'"))
                pos = end
            else:
                tokens.append((best, best))
                pos = best_end
            continue
        start = pos
        while pos < size and text[pos] not in _SPECIAL and text[pos] not in _WHITESPACE:
            pos += 1
        word = text[start:pos]
        tokens.append((word if word in ("in", "notin") else "id", word))


class _LabelParser:
    def __init__(self, text: str) -> None:
        self.tokens = _lex(text)
        self.pos = 0

    def peek(self, values: bool = True) -> tuple[str, str]:
        kind, literal = self.tokens[self.pos]
        return ("id" if values and kind in ("in", "notin") else kind), literal

    def take(self, values: bool = True) -> tuple[str, str]:
        token = self.peek(values)
        self.pos += 1
        return token

    def parse(self) -> list[Requirement]:
        requirements: list[Requirement] = []
        while True:
            kind, literal = self.peek()
            if kind in ("id", "!"):
                try:
                    requirements.append(self.requirement())
                except SelectorError as exc:
                    raise SelectorError(f"unable to parse requirement: {exc.message}") from None
                kind, literal = self.take()
                if kind == "end":
                    return requirements
                if kind == ",":
                    kind2, literal2 = self.peek()
                    if kind2 not in ("id", "!"):
                        raise SelectorError(f"found '{literal2}', expected: identifier after ','")
                else:
                    raise SelectorError(f"found '{literal}', expected: ',' or 'end of string'")
            elif kind == "end":
                return requirements
            else:
                raise SelectorError(f"found '{literal}', expected: !, identifier, or 'end of string'")

    def requirement(self) -> Requirement:
        operator = ""
        kind, key = self.take()
        if kind == "!":
            operator = "!"
            kind, key = self.take()
        if kind != "id":
            raise SelectorError(f"found '{key}', expected: identifier")
        problems = validation.qualified_name_errors(key)
        if problems:
            # the parser validates the key against a nil field path, which prints as <nil>
            raise SelectorError(f'<nil>: Invalid value: {_go_quote(key)}: {"; ".join(problems)}')
        if self.peek()[0] in ("end", ","):
            operator = operator or "exists"
        if operator in ("exists", "!"):
            return Requirement(key, operator)
        kind, literal = self.take(values=False)
        operator = _OPERATORS.get(kind, "")
        if not operator:
            raise SelectorError(f"found '{literal}', expected: {_OPERATOR_LIST}")
        values = self.value_set() if operator in ("in", "notin") else self.exact_value()
        ordered = sorted(values)
        errors = requirement_errors(key, operator, ordered)
        if errors:
            raise SelectorError(_aggregate(errors))
        return Requirement(key, operator, tuple(ordered))

    def value_set(self) -> set[str]:
        kind, literal = self.take()
        if kind != "(":
            raise SelectorError(f"found '{literal}' expected: '('")
        kind, literal = self.peek()
        if kind == ")":
            self.take()
            return {""}
        if kind not in ("id", ","):
            raise SelectorError(f"found '{literal}', expected: ',', ')' or identifier")
        values: set[str] = set()
        while True:
            kind, lit = self.take()
            if kind == "id":
                values.add(lit)
                kind2, lit2 = self.peek()
                if kind2 == ",":
                    continue
                if kind2 == ")":
                    break
                raise SelectorError(f"found '{lit2}', expected: ',' or ')'")
            if kind == ",":
                if not values:
                    values.add("")
                kind2, _ = self.peek()
                if kind2 == ")":
                    values.add("")
                    break
                if kind2 == ",":
                    self.take()
                    values.add("")
                continue
            raise SelectorError(f"found '{lit}', expected: ',', or identifier")
        if self.take()[0] != ")":
            raise SelectorError(f"found '{literal}', expected: ')'")
        return values

    def exact_value(self) -> set[str]:
        if self.peek()[0] in ("end", ","):
            return {""}
        kind, literal = self.take()
        if kind == "id":
            return {literal}
        raise SelectorError(f"found '{literal}', expected: identifier")


def parse_label_selector(text: str) -> LabelSelector:
    """``labels.Parse``: ``a=b,c!=d,e in (f,g),h notin (i),j,!k,l>1``; requirements end up sorted by key."""
    requirements = _LabelParser(text).parse()
    requirements.sort(key=lambda r: r.key)  # stable, like sort.Sort(ByKey) on distinct keys
    return LabelSelector(tuple(requirements))


_EXPRESSION_OPERATORS = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}


def label_selector_from_dict(selector: Mapping[str, Any] | None) -> LabelSelector:
    """metav1.LabelSelectorAsSelector: None selects nothing, ``{}`` everything; matchLabels are ``=`` terms and
    matchExpressions use In, NotIn, Exists and DoesNotExist."""
    if selector is None:
        return LabelSelector((), nothing=True)
    requirements: list[Requirement] = []
    for key, value in (selector.get("matchLabels") or {}).items():
        errors = requirement_errors(key, "=", [str(value)])
        if errors:
            raise SelectorError(_aggregate(errors))
        requirements.append(Requirement(key, "=", (str(value),)))
    for expression in selector.get("matchExpressions") or []:
        key = expression.get("key", "")
        operator = _EXPRESSION_OPERATORS.get(expression.get("operator", ""))
        if operator is None:
            raise SelectorError(f'{_go_quote(str(expression.get("operator", "")))} is not a valid label selector '
                                "operator")
        values = [str(v) for v in expression.get("values") or []]
        errors = requirement_errors(key, operator, values)
        if errors:
            raise SelectorError(_aggregate(errors))
        requirements.append(Requirement(key, operator, tuple(values)))
    requirements.sort(key=lambda r: r.key)
    return LabelSelector(tuple(requirements))


# ---------------------------------------------------------------------- field selectors
@dataclass
class FieldSelector:
    requirements: tuple[tuple[str, str, str], ...]  # (field, "=" | "!=", value), sorted like upstream

    @property
    def empty(self) -> bool:
        return not self.requirements

    def matches(self, fields: Mapping[str, str]) -> bool:
        for name, op, value in self.requirements:
            if (fields.get(name) == value) != (op == "="):
                return False
        return True

    def __str__(self) -> str:
        return ",".join(f"{n}{op}{_escape(v)}" for n, op, v in self.requirements)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=")


def _split_terms(text: str) -> list[str]:
    """fields.splitTerms: split on commas not preceded by a backslash escape (escapes stay in the terms)."""
    terms: list[str] = []
    start = 0
    escaped = False
    for index, ch in enumerate(text):
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ",":
            terms.append(text[start:index])
            start = index + 1
    terms.append(text[start:])
    return terms


def _split_term(term: str) -> tuple[str, str, str] | None:
    """fields.splitTerm: the first position where ``!=``, ``==`` or ``=`` starts, in that preference."""
    for index in range(len(term)):
        for op in ("!=", "==", "="):
            if term.startswith(op, index):
                return term[:index], op, term[index + len(op):]
    return None


def _unescape(value: str) -> str:
    """fields.UnescapeValue, with its error texts (an unescaped rune prints as its code point, as Go's %v)."""
    if "\\" not in value and "," not in value and "=" not in value:
        return value
    out: list[str] = []
    escaped = False
    for ch in value:
        if escaped:
            if ch not in "\\,=":
                raise SelectorError(f"invalid field selector: invalid escape sequence: \\{ch}")
            out.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch in ",=":
            raise SelectorError(f"invalid field selector: unescaped character in value: {ord(ch)}")
        else:
            out.append(ch)
    if escaped:
        raise SelectorError("invalid field selector: invalid escape sequence: \\")
    return "".join(out)


def parse_field_selector(text: str) -> FieldSelector:
    """``fields.ParseSelector``: ``name=value``, ``name==value``, ``name!=value`` joined by commas; values escape
    ``\\``, ``,`` and ``=`` with a backslash."""
    requirements: list[tuple[str, str, str]] = []
    for term in sorted(_split_terms(text)):
        if term == "":
            continue
        split = _split_term(term)
        if split is None:
            raise SelectorError(f"invalid selector: '{text}'; can't understand '{term}'")
        name, op, raw = split
        requirements.append((name, "!=" if op == "!=" else "=", _unescape(raw)))
    return FieldSelector(tuple(requirements))
