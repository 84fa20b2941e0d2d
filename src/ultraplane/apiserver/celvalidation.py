"""CRD ``x-kubernetes-validations``: CEL rules compiled once per CRD version, evaluated on every write.

What kube-apiserver's apiextensions ``schema/cel`` package does, on cel-python (``celpy``):

* ``compile_schema(schema, path)`` walks a version's structural schema and compiles each node's rules
  (and ``messageExpression``), checking what kube checks when a CRD is written: the rule parses, names
  only ``self``/``oldSelf``/macro variables and known functions, selects only fields the schema declares
  (``undefined field 'x'``), yields a bool; ``message``/``reason``/``fieldPath``/``optionalOldSelf`` are
  well formed; ``oldSelf`` is not used below a list whose items cannot be correlated. It returns a
  ``Validator`` tree (only the nodes with rules below them) and kube's field errors for the CRD.
* ``Validator.validate(obj, old)`` evaluates the rules with ``self`` bound to the value at the rule's
  node (typed by the schema: ``number`` as double, escaped property names, ``metadata`` limited to
  name/generateName at a resource root) and ``oldSelf`` to the correlated old value on updates. Rules
  using ``oldSelf`` (transition rules) are skipped without an old value unless ``optionalOldSelf``.
  Unchanged values skip non-transition rules (kube ratchets their errors to warnings).
  Failures become kube's field errors (``Invalid value: "object": failed rule: <rule>``, the ``reason``
  and ``fieldPath`` of the rule, ``messageExpression`` evaluated). Runaway evaluation is bounded: a rule
  with nested comprehensions is refused before it runs when its worst-case iteration count over the
  value exceeds the per-call limit, and all rules of one object share a wall-clock budget.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import celpy
import lark
from celpy import celtypes
from celpy.evaluation import TranspilerTree

from ultraplane.apiserver import validation as v
from ultraplane.apiserver.celfunctions import FUNCTIONS, Optional

logging.getLogger("celpy").setLevel(logging.ERROR)
logging.getLogger("celpy.Transpiler").setLevel(logging.CRITICAL)  # a failed fast run is retried, not an error

Schema = dict[str, Any]
Cause = dict[str, Any]

PER_CALL_LIMIT = 2_000_000  # kube's PerCallLimit, here in comprehension iterations
RUNTIME_BUDGET_S = 1.0  # kube's RuntimeCELCostBudget is sized for about a second per object
SUPPORTED_REASONS = ["FieldValueDuplicate", "FieldValueForbidden", "FieldValueInvalid", "FieldValueRequired"]
MACROS = {"all", "exists", "exists_one", "map", "filter"}
BUILTINS = {"size", "has", "int", "uint", "double", "string", "bytes", "bool", "duration", "timestamp", "type",
            "dyn", "matches", "startsWith", "endsWith", "contains", "getDate", "getDayOfMonth", "getDayOfWeek",
            "getDayOfYear", "getFullYear", "getMonth", "getHours", "getMilliseconds", "getMinutes", "getSeconds",
            *MACROS, *FUNCTIONS}
TYPE_NAMES = {"int", "uint", "double", "string", "bytes", "bool", "list", "map", "null_type", "type"}
_CEL_RESERVED = {"true", "false", "null", "in", "as", "break", "const", "continue", "else", "for", "function",
                 "if", "import", "let", "loop", "package", "namespace", "return", "var", "void", "while"}
_WRAPPERS = {"expr", "conditionalor", "conditionaland", "relation", "addition", "multiplication", "unary",
             "member", "primary", "paren_expr"}
_ENV = celpy.Environment()


class CostExceeded(Exception):
    pass


# ============================================================================ names and values
def escape(name: str) -> str | None:
    """kube's CEL property-name escaping (``x-y`` -> ``x__dash__y``); None when a name cannot be escaped."""
    if name in _CEL_RESERVED:
        return f"__{name}__"
    if name.isidentifier() and name.isascii():
        return name
    out = name.replace("__", "__underscores__").replace(".", "__dot__").replace("-", "__dash__")
    out = out.replace("/", "__slash__")
    if not out or not (out[0].isalpha() or out[0] == "_") or not all(c.isalnum() or c == "_" for c in out):
        return None
    return out


def to_cel(value: Any, schema: Schema | None, memo: dict[tuple[int, int], Any] | None = None) -> Any:
    """A JSON value as CEL sees it under ``schema`` (numbers typed, declared property names escaped).
    ``memo`` keeps one write's converted objects, so a rule below a converted node reuses its value."""
    if memo is not None and isinstance(value, dict | list):
        key = (id(value), id(schema))
        if key not in memo:
            memo[key] = _to_cel(value, schema, memo)
        return memo[key]
    return _to_cel(value, schema, memo)


def _to_cel(value: Any, schema: Schema | None, memo: dict[tuple[int, int], Any] | None) -> Any:
    if value is None:
        return None
    if isinstance(value, bool):
        return celtypes.BoolType(value)
    stype = (schema or {}).get("type")
    if isinstance(value, int):
        return celtypes.DoubleType(value) if stype == "number" else celtypes.IntType(value)
    if isinstance(value, float):
        if stype == "integer" and value.is_integer():
            return celtypes.IntType(int(value))
        return celtypes.DoubleType(value)
    if isinstance(value, str):
        return celtypes.StringType(value)
    if isinstance(value, list):
        items = (schema or {}).get("items")
        return celtypes.ListType([to_cel(item, items, memo) for item in value])
    if isinstance(value, dict):
        props = (schema or {}).get("properties")
        extra = (schema or {}).get("additionalProperties")
        out: dict[Any, Any] = {}
        for key, item in value.items():
            sub = props.get(key) if props else None
            if sub is not None:
                name = escape(key)
                if name is not None:
                    out[celtypes.StringType(name)] = to_cel(item, sub, memo)
            else:
                out[celtypes.StringType(key)] = to_cel(item, extra if isinstance(extra, dict) else None, memo)
        return celtypes.MapType(out)
    return celpy.json_to_cel(value)


def _count(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + sum(_count(x) for x in value.values())
    if isinstance(value, list):
        return 1 + sum(_count(x) for x in value)
    return 1


def resource_root(schema: Schema) -> Schema:
    """kube's WithTypeAndObjectMeta: a resource root exposes apiVersion, kind and metadata.name/generateName."""
    props = dict(schema.get("properties") or {})
    props["apiVersion"] = {"type": "string"}
    props["kind"] = {"type": "string"}
    props["metadata"] = {"type": "object", "properties": {"name": {"type": "string"},
                                                          "generateName": {"type": "string"}}}
    return {**schema, "properties": props}


def _metadata_view(value: dict[str, Any]) -> dict[str, Any]:
    meta = value.get("metadata")
    if not isinstance(meta, dict):
        return value
    view = {k: meta[k] for k in ("name", "generateName") if k in meta}
    return {**value, "metadata": view}


# ============================================================================ messages
def go_rule(rule: dict[str, Any]) -> str:
    """fmt's %#v of the internal apiextensions.ValidationRule kube prints for a rule that does not compile."""
    def ptr(kind: str, present: bool) -> str:
        return f"({kind})(0xc000a1e2b0)" if present else f"({kind})(nil)"

    return ("apiextensions.ValidationRule{"
            f"Rule:{v.go_quote(str(rule.get('rule') or ''))}, Message:{v.go_quote(str(rule.get('message') or ''))}, "
            f"MessageExpression:{v.go_quote(str(rule.get('messageExpression') or ''))}, "
            f"Reason:{ptr('*apiextensions.FieldValueErrorReason', rule.get('reason') is not None)}, "
            f"FieldPath:{v.go_quote(str(rule.get('fieldPath') or ''))}, "
            f"OptionalOldSelf:{ptr('*bool', rule.get('optionalOldSelf') is not None)}}}")


def _issue(source: str, line: int, column: int, text: str) -> str:
    """cel-go's issue text: ``ERROR: <input>:L:C: text`` with the source line and a caret under column C."""
    lines = source.split("\n")
    src_line = lines[line - 1] if 0 < line <= len(lines) else ""
    return f"ERROR: <input>:{line}:{column}: {text}\n | {src_line}\n | {'.' * max(column - 1, 0)}^"


class CompileError(ValueError):
    pass


def _parse(source: str) -> Any:
    try:
        return _ENV.compile(source)
    except celpy.CELParseError as exc:
        line, column = exc.line or 1, exc.column or 1
        cause = exc.__context__  # the lark error celpy wrapped: it knows the offending token
        if isinstance(cause, lark.exceptions.UnexpectedToken):
            token = "<EOF>" if cause.token.type == "$END" else str(cause.token.value)
            detail = f"Syntax error: mismatched input '{token}'"
        elif isinstance(cause, lark.exceptions.UnexpectedCharacters):
            detail = f"Syntax error: token recognition error at: '{source[cause.pos_in_stream:][:1]}'"
        else:
            detail = "Syntax error"
        raise CompileError(_issue(source, line, column, detail)) from None
    except lark.exceptions.LarkError as exc:
        raise CompileError(_issue(source, 1, 1, f"Syntax error: {exc}")) from None


# ============================================================================ static checks
def _unwrap(node: Any) -> Any:
    while isinstance(node, lark.Tree) and node.data in _WRAPPERS and len(node.children) == 1 \
            and isinstance(node.children[0], lark.Tree):
        node = node.children[0]
    return node


@dataclass
class _Check:
    source: str
    self_schema: Schema | None
    issues: list[str] = field(default_factory=list)
    functions: set[str] = field(default_factory=set)
    uses_old_self: bool = False
    depth: int = 0  # deepest nesting of comprehension macros

    def issue(self, token: Any, text: str, dot: bool = False) -> None:
        line = getattr(token, "line", 1) or 1
        column = (getattr(token, "column", 1) or 1) - (1 if dot else 0)
        self.issues.append(_issue(self.source, line, column, text))

    def walk(self, node: Any, bound: dict[str, Schema | None], depth: int = 0) -> Schema | None:
        """Checks ``node``; returns the schema of its value when it is a known member chain."""
        node = _unwrap(node)
        if not isinstance(node, lark.Tree):
            return None
        kind = node.data
        if kind == "ident":
            name = str(node.children[0])
            if name in bound:
                return bound[name]
            if name == "self":
                return self.self_schema
            if name == "oldSelf":
                self.uses_old_self = True
                return self.self_schema
            if name not in TYPE_NAMES:
                self.issue(node.children[0], f"undeclared reference to '{name}' (in container '')")
            return None
        if kind == "member_dot":
            owner = self.walk(node.children[0], bound, depth)
            name = str(node.children[1])
            return self._field(owner, name, node.children[1])
        if kind == "member_index":
            owner = self.walk(node.children[0], bound, depth)
            self.walk(node.children[1], bound, depth)
            if owner is None:
                return None
            if owner.get("type") == "array":
                return owner.get("items")
            extra = owner.get("additionalProperties")
            return extra if isinstance(extra, dict) else None
        if kind == "member_dot_arg":
            receiver = node.children[0]
            method = str(node.children[1])
            args = node.children[2].children if len(node.children) > 2 and node.children[2] is not None else []
            owner = self.walk(receiver, bound, depth)
            self.functions.add(method)
            if method not in BUILTINS:
                self.issue(node.children[1], f"undeclared reference to '{method}' (in container '')")
            if method in MACROS and len(args) >= 2:
                var = _unwrap(args[0])
                inner = dict(bound)
                if isinstance(var, lark.Tree) and var.data == "ident":
                    element: Schema | None = None
                    if owner is not None:
                        element = owner.get("items") if owner.get("type") == "array" else {"type": "string"}
                    inner[str(var.children[0])] = element
                self.depth = max(self.depth, depth + 1)
                for arg in args[1:]:
                    self.walk(arg, inner, depth + 1)
                return None
            for arg in args:
                self.walk(arg, bound, depth)
            return None
        if kind == "ident_arg":
            name = str(node.children[0])
            self.functions.add(name)
            if name not in BUILTINS:
                self.issue(node.children[0], f"undeclared reference to '{name}' (in container '')")
            for child in node.children[1:]:
                if isinstance(child, lark.Tree):
                    self.walk(child, bound, depth)
            return None
        for child in node.children:
            self.walk(child, bound, depth)
        return None

    def _field(self, owner: Schema | None, name: str, token: Any) -> Schema | None:
        if owner is None:
            return None
        props = owner.get("properties")
        if owner.get("type") == "object" and props is not None:
            for key, sub in props.items():
                if escape(key) == name:
                    return sub
            if not owner.get("x-kubernetes-preserve-unknown-fields"):
                self.issue(token, f"undefined field '{name}'", dot=True)
            return None
        extra = owner.get("additionalProperties")
        if isinstance(extra, dict):
            return extra
        if owner.get("type") in ("string", "integer", "number", "boolean", "array"):
            kind = {"string": "string", "integer": "int", "number": "double", "boolean": "bool",
                    "array": "list"}[owner["type"]]
            self.issue(token, f"type '{kind}' does not support field selection", dot=True)
        return None


_NOT_BOOL = {"addition_add", "addition_sub", "multiplication_mul", "multiplication_div", "multiplication_mod",
             "list_lit", "map_lit", "unary_neg"}


def _result_not_bool(tree: Any, check: _Check) -> bool:
    node = _unwrap(tree)
    if not isinstance(node, lark.Tree):
        return False
    if node.data in ("addition", "multiplication") and node.children and isinstance(node.children[0], lark.Tree) \
            and node.children[0].data in _NOT_BOOL:
        return True
    if node.data in _NOT_BOOL:
        return True
    if node.data == "literal":
        token = node.children[0]
        return not (isinstance(token, lark.Token) and token.type == "BOOL_LIT")
    if node.data in ("member_dot", "ident", "member_index"):
        schema = _Check(check.source, check.self_schema).walk(node, {})
        return schema is not None and schema.get("type") not in (None, "boolean")
    return False


# ============================================================================ compiled rules
@dataclass
class CompiledRule:
    index: int
    rule: str
    message: str
    reason: str | None
    field_path: str
    optional_old_self: bool
    uses_old_self: bool
    depth: int
    program: Any
    message_program: Any = None
    fast: Any = None  # the transpiled program, trusted only when it answers true


# cel-python's transpiler (CompiledRunner) runs rules 3-10x faster than its interpreter but mishandles
# has() and extension functions, so rules using them are interpreted only, and any answer other than
# true from a transpiled rule is decided again by the interpreter.
_NOT_TRANSPILABLE = {"has", *FUNCTIONS}


def _transpiled(tree: Any, check: _Check) -> Any:
    if check.functions & _NOT_TRANSPILABLE:
        return None
    try:
        return celpy.CompiledRunner(_ENV, _transpiler_tree(tree), FUNCTIONS)
    except Exception:  # the transpiler does not cover every construct: interpret those rules
        return None


def _transpiler_tree(node: Any) -> Any:
    if isinstance(node, lark.Tree):
        return TranspilerTree(node.data, [_transpiler_tree(c) for c in node.children], node.meta)
    return node


@dataclass
class Validator:
    """The compiled rules of one schema node and the validators of the nodes below it that have rules."""

    schema: Schema
    type_name: str
    resource_root: bool = False
    rules: list[CompiledRule] = field(default_factory=list)
    properties: dict[str, Validator] = field(default_factory=dict)
    items: Validator | None = None
    additional: Validator | None = None
    list_map_keys: list[str] | None = None
    atomic_map: bool = False

    # ---------------------------------------------------------------- evaluation
    def validate(self, obj: Any, old: Any | None) -> list[Cause]:
        out: list[Cause] = []
        try:
            self._validate(obj, old, None, out, time.perf_counter() + RUNTIME_BUDGET_S, {})
        except CostExceeded:
            pass
        return out

    def _validate(self, value: Any, old: Any, path: str | None, out: list[Cause], deadline: float,
                  memo: dict[tuple[int, int], Any]) -> None:
        if value is None:
            return
        if self.rules:
            self._evaluate(value, old, path, out, deadline, memo)
        if isinstance(value, dict):
            old_map = old if isinstance(old, dict) and not self.atomic_map else None
            for key, item in value.items():
                child = self.properties.get(key)
                if child is not None:
                    child._validate(item, old_map.get(key) if old_map else None, _child(path, key), out, deadline,
                                    memo)
                elif self.additional is not None and key not in (self.schema.get("properties") or {}):
                    self.additional._validate(item, old_map.get(key) if old_map else None, f"{path or ''}[{key}]",
                                              out, deadline, memo)
        elif isinstance(value, list) and self.items is not None:
            olds = self._correlate(old)
            for i, item in enumerate(value):
                old_item = olds.get(self._key(item)) if olds is not None else None
                self.items._validate(item, old_item, f"{path or ''}[{i}]", out, deadline, memo)

    def _key(self, item: Any) -> Any:
        keys = self.list_map_keys or []
        return tuple(repr(item.get(k)) for k in keys) if isinstance(item, dict) else None

    def _correlate(self, old: Any) -> dict[Any, Any] | None:
        if not self.list_map_keys or not isinstance(old, list):
            return None  # only map-type lists correlate items with their old values
        return {self._key(item): item for item in old if isinstance(item, dict)}

    def _evaluate(self, value: Any, old: Any, path: str | None, out: list[Cause], deadline: float,
                  memo: dict[tuple[int, int], Any]) -> None:
        schema = resource_root(self.schema) if self.resource_root else self.schema
        shown = _metadata_view(value) if self.resource_root and isinstance(value, dict) else value
        self_value: Any = None
        old_value: Any = None
        size = -1
        unchanged = old is not None and value == old
        for rule in self.rules:
            if rule.uses_old_self and old is None and not rule.optional_old_self:
                continue  # a transition rule needs a correlated old value
            if not rule.uses_old_self and unchanged:
                continue  # kube ratchets the errors of unchanged values to warnings
            if time.perf_counter() > deadline:
                out.append(v.invalid(path or "<nil>", self.type_name, "validation failed due to running out of cost "
                                     "budget, no further validation rules will be run"))
                raise CostExceeded
            if rule.depth > 0:
                if size < 0:
                    size = _count(value)
                if size ** rule.depth > PER_CALL_LIMIT:
                    out.append(v.invalid(path or "<nil>", self.type_name, "'operation cancelled: actual cost limit "
                                         "exceeded': no further validation rules will be run due to call cost "
                                         f"exceeds limit for rule: {_rule_text(rule)}"))
                    raise CostExceeded
            if self_value is None:
                self_value = to_cel(shown, schema, memo)
            activation: dict[str, Any] = {"self": self_value}
            if rule.uses_old_self:
                if old is not None and old_value is None:
                    old_value = to_cel(_metadata_view(old) if self.resource_root and isinstance(old, dict) else old,
                                       schema)
                if rule.optional_old_self:
                    activation["oldSelf"] = Optional(old is not None, old_value)
                else:
                    activation["oldSelf"] = old_value
            result, error = _run_rule(rule, activation)
            if error is not None:
                out.append(v.invalid(path or "<nil>", self.type_name, _eval_error_text(error, rule)))
                continue
            if result is True or (isinstance(result, celtypes.BoolType) and bool(result)):
                continue
            at = path or "<nil>"
            if rule.field_path:
                at = _child(path, rule.field_path)
            detail = self._message(rule, activation)
            out.append(_field_error(at, self.type_name, detail, rule.reason))

    def _message(self, rule: CompiledRule, activation: dict[str, Any]) -> str:
        if rule.message_program is not None:
            result, error = _run(rule.message_program, activation)
            if error is None and isinstance(result, str):
                text = str(result).strip()
                if text and "\n" not in text and len(text) <= 5000:
                    return text
        return rule.message or f"failed rule: {rule.rule.strip()}"


def _child(path: str | None, name: str) -> str:
    return f"{path}.{name}" if path else name


def _rule_text(rule: CompiledRule) -> str:
    return rule.message or rule.rule.strip()


def _run_rule(rule: CompiledRule, activation: dict[str, Any]) -> tuple[Any, str | None]:
    if rule.fast is not None:
        try:
            result = rule.fast.evaluate(activation)
            if isinstance(result, celtypes.BoolType) and bool(result):
                return result, None
        except Exception:  # decided again below, with the interpreter's error text
            pass
    return _run(rule.program, activation)


def _run(program: Any, activation: dict[str, Any]) -> tuple[Any, str | None]:
    try:
        result = program.evaluate(activation)
    except celpy.CELEvalError as exc:
        return None, _error_text(exc)
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, ZeroDivisionError,
            OverflowError) as exc:
        return None, str(exc) or type(exc).__name__
    if isinstance(result, celpy.CELEvalError):
        return None, _error_text(result)
    return result, None


def _error_text(exc: BaseException) -> str:
    args = getattr(exc, "args", ())
    text = str(args[0]) if args else str(exc)
    if text.startswith("no such member in mapping: "):
        return "no such key: " + text.removeprefix("no such member in mapping: ").strip("'")
    if "divide by zero" in text or "division by zero" in text or (len(args) > 1 and args[1] is ZeroDivisionError):
        return "division by zero"
    if len(args) > 1 and args[1] is TypeError:
        return "no such overload"
    return text


def _eval_error_text(error: str, rule: CompiledRule) -> str:
    if error.startswith("no such overload"):
        return (f"'{error}': call arguments did not match a supported operator, function or macro signature "
                f"for rule: {_rule_text(rule)}")
    return f"{error} evaluating rule: {_rule_text(rule)}"


def _field_error(path: str, type_name: str, detail: str, reason: str | None) -> Cause:
    if reason == "FieldValueForbidden":
        return v.forbidden(path, detail)
    if reason == "FieldValueRequired":
        return v.required(path, detail)
    if reason == "FieldValueDuplicate":
        return v.duplicate(path, type_name)
    return v.invalid(path, type_name, detail)


# ============================================================================ compilation
def _valid_field_path(path: str, schema: Schema) -> bool:
    """kube's ValidFieldPath: ``.a.b`` or ``['a']`` steps through declared properties or map keys."""
    text = path.strip()
    node = schema
    i = 0
    while i < len(text):
        if text[i] == ".":
            j = i + 1
            while j < len(text) and text[j] not in ".[]":
                j += 1
            name = text[i + 1:j]
            i = j
        elif text[i] == "[" and text[i + 1:i + 2] == "'":
            end = text.find("']", i + 2)
            if end < 0:
                return False
            name = text[i + 2:end]
            i = end + 2
        else:
            return False
        if not name:
            return False
        props = node.get("properties")
        extra = node.get("additionalProperties")
        if props is not None:
            if name not in props:
                return False
            node = props[name]
        elif isinstance(extra, dict):
            node = extra
        else:
            return False
    return True


def _normalized_field_path(path: str) -> str:
    """The fieldPath as kube's field.Path prints it: ``.spec.x`` -> ``spec.x``, ``['a.b']`` -> ``a.b``."""
    parts: list[str] = []
    text = path.strip()
    i = 0
    while i < len(text):
        if text[i] == ".":
            j = i + 1
            while j < len(text) and text[j] not in ".[]":
                j += 1
            parts.append(text[i + 1:j])
            i = j
        else:
            end = text.find("']", i + 2)
            parts.append(text[i + 2:end])
            i = end + 2
    return ".".join(parts)


def _compile_rules(schema: Schema, path: str, root: bool, uncorrelatable: str | None,
                   errors: _Errors) -> list[CompiledRule]:
    rules = schema.get("x-kubernetes-validations") or []
    if not isinstance(rules, list):
        return []
    self_schema = resource_root(schema) if root else schema
    compiled: list[CompiledRule] = []
    shape_errors: list[Cause] = []
    for i, rule in enumerate(rules):
        if not isinstance(rule, dict):
            continue
        at = f"{path}.x-kubernetes-validations[{i}]"
        text = str(rule.get("rule") or "")
        message = str(rule.get("message") or "")
        message_expression = str(rule.get("messageExpression") or "")
        if not text.strip():
            shape_errors.append(v.required(f"{at}.rule", "rule is not specified"))
        elif message and not message.strip():
            shape_errors.append(v.invalid(f"{at}.message", message, "message must be non-empty if specified"))
        elif "\n" in message.strip() or "\r" in message.strip():
            shape_errors.append(v.invalid(f"{at}.message", message, "message must not contain line breaks"))
        elif ("\n" in text.strip() or "\r" in text.strip()) and not message.strip():
            shape_errors.append(v.required(f"{at}.message", "message must be specified if rule contains line breaks"))
        if message_expression and not message_expression.strip():
            shape_errors.append(v.required(f"{at}.messageExpression",
                                           "messageExpression must be non-empty if specified"))
        reason = rule.get("reason")
        if reason is not None and reason not in SUPPORTED_REASONS:
            shape_errors.append(v.not_supported(f"{at}.reason", reason, SUPPORTED_REASONS))
        field_path = rule.get("fieldPath")
        if field_path:
            if not str(field_path).strip():
                shape_errors.append(v.invalid(f"{at}.fieldPath", field_path, "fieldPath must be non-empty if specified"))
            elif "\n" in str(field_path):
                shape_errors.append(v.invalid(f"{at}.fieldPath", field_path, "fieldPath must not contain line breaks"))
            elif not _valid_field_path(str(field_path), schema):
                shape_errors.append(v.invalid(f"{at}.fieldPath", field_path, "fieldPath must be a valid path"))
    if shape_errors or errors.shape_below:
        errors.shape.extend(shape_errors)  # kube compiles no rule above a malformed one
        errors.shape_below = errors.shape_below or bool(shape_errors)
        return []
    causes = errors.cel
    for i, rule in enumerate(rules):
        at = f"{path}.x-kubernetes-validations[{i}]"
        text = str(rule.get("rule") or "").strip()
        check = _Check(text, self_schema)
        try:
            tree = _parse(text)
            check.walk(tree, {})
            if check.issues:
                raise CompileError("\n".join(check.issues))
            if _result_not_bool(tree, check):
                causes.append(_rule_invalid(f"{at}.rule", rule, "cel expression must evaluate to a bool"))
                continue
        except CompileError as exc:
            causes.append(_rule_invalid(f"{at}.rule", rule, f"compilation failed: {exc}"))
            continue
        message_program = None
        message_expression = str(rule.get("messageExpression") or "").strip()
        if message_expression:
            message_check = _Check(message_expression, self_schema)
            try:
                message_tree = _parse(message_expression)
                message_check.walk(message_tree, {})
                if message_check.issues:
                    raise CompileError("\n".join(message_check.issues))
                message_program = _ENV.program(message_tree, functions=FUNCTIONS)
            except CompileError as exc:
                causes.append(_rule_invalid(f"{at}.messageExpression", rule,
                                            f"messageExpression compilation failed: {exc}"))
                continue
        optional_old_self = rule.get("optionalOldSelf")
        if check.uses_old_self and uncorrelatable is not None:
            causes.append(v.invalid(f"{at}.rule", text, "oldSelf cannot be used on the uncorrelatable portion of the "
                                    f"schema within {uncorrelatable}"))
            continue
        if not check.uses_old_self and optional_old_self is not None:
            causes.append(v.invalid(f"{at}.optionalOldSelf", bool(optional_old_self),
                                    "may not be set if oldSelf is not used in rule"))
            continue
        compiled.append(CompiledRule(
            index=i, rule=str(rule.get("rule") or ""), message=str(rule.get("message") or "").strip(),
            reason=rule.get("reason"), field_path=_normalized_field_path(str(rule.get("fieldPath") or "")),
            optional_old_self=bool(optional_old_self), uses_old_self=check.uses_old_self, depth=check.depth,
            program=_ENV.program(tree, functions=FUNCTIONS), message_program=message_program,
            fast=_transpiled(tree, check)))
    return compiled


def _rule_invalid(path: str, rule: dict[str, Any], detail: str) -> Cause:
    """field.Invalid with the rule itself as the bad value (printed with %#v)."""
    return {"reason": "FieldValueInvalid", "message": f"Invalid value: {go_rule(rule)}: {detail}", "field": path}


@dataclass
class _Errors:
    """kube reports the rules' shape errors first, then their compilation errors (each deepest node first)."""

    shape: list[Cause] = field(default_factory=list)
    cel: list[Cause] = field(default_factory=list)
    shape_below: bool = False


def compile_schema(schema: Schema | None, path: str) -> tuple[Validator | None, list[Cause]]:
    """Compiles every rule of a version's openAPIV3Schema; returns the validator and the CRD's field errors."""
    if not isinstance(schema, dict):
        return None, []
    errors = _Errors()
    validator = _compile_node(schema, path, True, None, errors)
    return validator, errors.shape + errors.cel


def _compile_node(schema: Schema, path: str, root: bool, uncorrelatable: str | None,
                  errors: _Errors) -> Validator | None:
    node = Validator(schema=schema, type_name=str(schema.get("type") or ""), resource_root=root)
    outer_shape_below, errors.shape_below = errors.shape_below, False
    atomic_map = schema.get("x-kubernetes-map-type") == "atomic"
    node.atomic_map = atomic_map
    inner_uncorrelatable = uncorrelatable or (path if atomic_map else None)
    for key, sub in (schema.get("properties") or {}).items():
        if isinstance(sub, dict):
            child = _compile_node(sub, f"{path}.properties[{key}]", bool(sub.get("x-kubernetes-embedded-resource")),
                                  inner_uncorrelatable, errors)
            if child is not None:
                node.properties[key] = child
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        node.additional = _compile_node(extra, f"{path}.additionalProperties",
                                        bool(extra.get("x-kubernetes-embedded-resource")), inner_uncorrelatable,
                                        errors)
    items = schema.get("items")
    if isinstance(items, dict):
        keys = schema.get("x-kubernetes-list-map-keys") if schema.get("x-kubernetes-list-type") == "map" else None
        node.list_map_keys = list(keys) if keys else None
        items_uncorrelatable = uncorrelatable or (None if node.list_map_keys else f"{path}.items")
        node.items = _compile_node(items, f"{path}.items", bool(items.get("x-kubernetes-embedded-resource")),
                                   items_uncorrelatable, errors)
    node.rules = _compile_rules(schema, path, root, uncorrelatable, errors)
    errors.shape_below = errors.shape_below or outer_shape_below
    if node.rules or node.properties or node.items is not None or node.additional is not None:
        return node
    return None


def has_rules(schema: Any) -> bool:
    """Whether a schema has any x-kubernetes-validations (cheap: no compilation)."""
    if isinstance(schema, dict):
        if schema.get("x-kubernetes-validations"):
            return True
        return any(has_rules(x) for x in schema.values() if isinstance(x, dict | list))
    if isinstance(schema, list):
        return any(has_rules(x) for x in schema)
    return False


BLOCKING = {"FieldValueNotSupported", "FieldValueRequired", "FieldValueTooLong", "FieldValueTooMany",
            "FieldValueTypeInvalid"}


def blocked(causes: list[Cause]) -> Cause | None:
    """kube's hasBlockingErr: with type/required/enum/size errors the rules are not evaluated."""
    if any(c.get("reason") in BLOCKING for c in causes):
        return v.invalid("<nil>", "null", "some validation rules were not checked because the object was invalid; "
                         "correct the existing errors to complete validation")
    return None
