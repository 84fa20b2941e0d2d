"""An RGD's spec compiled into a resource graph: the instance CRD, nodes, dependencies and their order.

Everything kro checks before accepting an RGD happens here, with kro's messages where kro has one:
resource ids (lowerCamelCase CEL identifiers, not reserved, unique), exactly one of template or
externalRef, every `${...}` parsed, every reference naming `schema`, a resource id or a forEach
iterator, field paths existing in the schemas (`schema.*` against the generated instance schema,
resource fields against the kinds' OpenAPI schemas handed in by the caller), includeWhen/readyWhen/forEach
standalone, and no dependency cycle. The order is kro's: ready nodes leave in declaration order.
"""

from __future__ import annotations

import heapq
import itertools
import re
from dataclasses import dataclass, field
from typing import Any

from ultraplane.compose import simpleschema
from ultraplane.compose.expressions import (
    ANY,
    ELEM,
    Expression,
    ExpressionError,
    Reference,
    Template,
    parse_standalone,
    parse_template,
    template_fields,
)

Schema = dict[str, Any]
RESERVED = {"apiVersion", "context", "dependency", "dependencies", "each", "externalRef", "externalReference",
            "externalRefs", "externalReferences", "graph", "instance", "item", "items", "kind", "kro", "metadata",
            "namespace", "object", "resource", "resourcegraphdefinition", "resourceGraphDefinition", "resources",
            "root", "runtime", "schema", "self", "serviceAccountName", "spec", "status", "this", "variables",
            "vars", "version"}
ID_PATTERN = re.compile(r"^[a-z][a-zA-Z0-9]*$")
CONDITION_SCHEMA: Schema = {"type": "object", "properties": {
    "type": {"type": "string"}, "status": {"type": "string"}, "reason": {"type": "string"},
    "message": {"type": "string"}, "lastTransitionTime": {"type": "string"},
    "observedGeneration": {"type": "integer"}}}
OBJECT_META: Schema = {"type": "object", "properties": {
    "name": {"type": "string"}, "namespace": {"type": "string"}, "uid": {"type": "string"},
    "generateName": {"type": "string"}, "resourceVersion": {"type": "string"}, "generation": {"type": "integer"},
    "creationTimestamp": {"type": "string"}, "deletionTimestamp": {"type": "string"},
    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    "finalizers": {"type": "array", "items": {"type": "string"}},
    "ownerReferences": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
    "managedFields": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}}


class GraphError(ValueError):
    """The RGD is not acceptable; the message is what the GraphAccepted condition reports."""


@dataclass
class Node:
    id: str
    order: int
    api_version: str
    kind: str
    template: Any = None
    external: bool = False
    fields: list[tuple[tuple[Any, ...], Template]] = field(default_factory=list)
    include_when: list[Expression] = field(default_factory=list)
    ready_when: list[Expression] = field(default_factory=list)
    for_each: list[tuple[str, Expression]] = field(default_factory=list)
    dependencies: set[str] = field(default_factory=set)

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]

    @property
    def collection(self) -> bool:
        return bool(self.for_each)


@dataclass
class Graph:
    name: str
    group: str
    version: str
    kind: str
    scope: str
    spec_schema: Schema
    status_schema: Schema
    status_fields: list[tuple[tuple[Any, ...], Template]]
    nodes: dict[str, Node]
    order: list[str]
    crd: Schema

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"

    def reverse_layers(self) -> list[list[str]]:
        """Nodes grouped for deletion: a node goes only after every node depending on it is gone."""
        remaining = dict.fromkeys(self.order)
        layers: list[list[str]] = []
        while remaining:
            layer = [n for n in remaining if not any(n in self.nodes[o].dependencies for o in remaining if o != n)]
            layers.append(layer)
            for n in layer:
                remaining.pop(n)
        return layers


def pluralize(word: str) -> str:
    if re.search(r"(s|x|z|ch|sh)$", word):
        return word + "es"
    if re.search(r"[^aeiou]y$", word):
        return word[:-1] + "ies"
    return word + "s"


def _instance_schema(spec_schema: Schema, status_schema: Schema) -> Schema:
    return {"type": "object", "properties": {
        "apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": OBJECT_META,
        "spec": spec_schema, "status": status_schema}}


def resolve_path(schema: Schema | None, path: tuple[str, ...], where: str) -> Schema | None:
    """The schema at `path` below `schema`; None once a schemaless part is reached; GraphError for a
    field the schema does not have (cel-go's checker says "undefined field")."""
    current = schema
    for segment in path:
        if current is None or current.get("x-kubernetes-preserve-unknown-fields"):
            return None
        if segment == ELEM:
            if current.get("type") != "array":
                return None  # a map's keys, or a list we know nothing about
            current = current.get("items")
            continue
        if segment == ANY:
            if current.get("type") == "array":
                current = current.get("items")
            elif "additionalProperties" in current:
                current = current["additionalProperties"]
                current = current if isinstance(current, dict) else None
            else:
                return None
            continue
        if current.get("type") == "array":
            raise GraphError(f"{where}: type 'list' does not support field selection ('{segment}')")
        properties, extra, kind = current.get("properties"), current.get("additionalProperties"), current.get("type")
        if properties is not None and segment in properties:
            current = properties[segment]
        elif isinstance(extra, dict):
            current = extra
        elif extra is True or (properties is None and kind in (None, "object")):
            return None  # a free-form object: nothing to check against
        elif kind in ("string", "integer", "number", "boolean"):
            raise GraphError(f"{where}: type '{kind}' does not support field selection ('{segment}')")
        else:
            raise GraphError(f"{where}: undefined field '{segment}'")
    return current


def _check_reference(ref: Reference, schemas: dict[str, Schema | None], where: str) -> Schema | None:
    return resolve_path(schemas.get(ref.root), ref.path, f"{where}: {ref.dotted()}")


def _infer_status_type(template: Template, schemas: dict[str, Schema | None], where: str) -> Schema:
    if not template.standalone:
        return {"type": "string"}
    expr = template.expressions[0]
    if len(expr.references) == 1 and expr.source.replace(" ", "") == expr.references[0].dotted():
        found = _check_reference(expr.references[0], schemas, where)
        if found and found.get("type"):
            return _strip_for_status(found)
    return {"x-kubernetes-preserve-unknown-fields": True}


def _strip_for_status(schema: Schema) -> Schema:
    """A referenced field's schema, without validation that would make status writes fail."""
    kept = {k: v for k, v in schema.items() if k in ("type", "items", "properties", "additionalProperties",
                                                     "x-kubernetes-preserve-unknown-fields", "format")}
    if isinstance(kept.get("items"), dict):
        kept["items"] = _strip_for_status(kept["items"])
    if isinstance(kept.get("properties"), dict):
        kept["properties"] = {k: _strip_for_status(v) for k, v in kept["properties"].items()}
    if kept.get("format") not in ("int32", "int64", "date-time", "double", "float", None):
        kept.pop("format")
    return kept


def _status_schema(status: Any, schemas: dict[str, Schema | None], path: tuple[Any, ...] = ()) -> Schema:
    if isinstance(status, dict):
        return {"type": "object", "properties": {k: _status_schema(v, schemas, (*path, k)) for k, v in status.items()}}
    if isinstance(status, str):
        template = parse_template(status)
        if template is None:
            raise GraphError("failed to build instance status schema: status fields without expressions "
                             f"are not supported: [{'.'.join(map(str, path))}]")
        return _infer_status_type(template, schemas, f"status field {'.'.join(map(str, path))}")
    if isinstance(status, list):
        return {"type": "array", "items": {"x-kubernetes-preserve-unknown-fields": True}}
    raise GraphError(f"failed to build instance status schema: unsupported value at {'.'.join(map(str, path))}")


def _type_check(target: Schema | None, template: Template, schemas: dict[str, Schema | None], where: str) -> None:
    """A standalone expression that is a plain field path must have the target field's type."""
    if target is None or not template.standalone or "type" not in target:
        return
    expr = template.expressions[0]
    if len(expr.references) != 1 or expr.source.replace(" ", "") != expr.references[0].dotted():
        return  # only plain field paths have a type we know without a CEL type checker
    source = _check_reference(expr.references[0], schemas, where)
    if source is None or "type" not in source:
        return
    want, got = target["type"], source["type"]
    if want == got or (want == "number" and got == "integer") or target.get("x-kubernetes-int-or-string"):
        return
    if want == "string" and target.get("format") == "int-or-string":
        return
    raise GraphError(f"{where}: type mismatch: expression {expr.source!r} returns {got}, "
                     f"the field expects {want}")


def _template_target(schema: Schema | None, path: tuple[Any, ...]) -> Schema | None:
    current = schema
    for segment in path:
        if current is None or current.get("x-kubernetes-preserve-unknown-fields"):
            return None
        if isinstance(segment, int):
            current = current.get("items") if current.get("type") == "array" else None
        else:
            properties = current.get("properties") or {}
            if segment in properties:
                current = properties[segment]
            elif isinstance(current.get("additionalProperties"), dict):
                current = current["additionalProperties"]
            else:
                return None
    return current


def build(rgd: Schema, kind_schemas: dict[tuple[str, str], Schema | None]) -> Graph:
    """Compile an RGD. `kind_schemas` maps (apiVersion, kind) of every resource to its OpenAPI schema
    (None when the kind is served but its schema is unknown); a missing entry means not served."""
    name = (rgd.get("metadata") or {}).get("name", "")
    spec = rgd.get("spec") or {}
    schema_spec = spec.get("schema") or {}
    kind = schema_spec.get("kind") or ""
    version = schema_spec.get("apiVersion") or ""
    group = schema_spec.get("group") or "kro.run"
    scope = schema_spec.get("scope") or "Namespaced"
    if not re.match(r"^[A-Z][a-zA-Z0-9]{0,62}$", kind):
        raise GraphError(f"failed to build resourcegraphdefinition {name!r}: invalid kind {kind!r}")
    if not re.match(r"^v[0-9]+(alpha[0-9]+|beta[0-9]+)?$", version):
        raise GraphError(f"failed to build resourcegraphdefinition {name!r}: invalid apiVersion {version!r}")
    try:
        spec_schema = simpleschema.to_openapi(schema_spec.get("spec"), schema_spec.get("types"))
    except simpleschema.SchemaError as exc:
        raise GraphError(f"failed to build OpenAPI schema for instance: {exc}") from None

    # --- resources: ids, template/externalRef, expressions
    nodes: dict[str, Node] = {}
    for order, resource in enumerate(spec.get("resources") or []):
        node = _parse_node(resource, order, kind_schemas)
        if node.id in nodes:
            raise GraphError(f"found resources with duplicate id {node.id!r}")
        nodes[node.id] = node
    for node in nodes.values():
        iterators = {n for n, _ in node.for_each}
        if iterators & set(nodes):
            raise GraphError(f"resource {node.id!r}: forEach iterator conflicts with resource ID")

    instance_without_status = _instance_schema(spec_schema, {"type": "object"})
    schemas: dict[str, Schema | None] = {"schema": instance_without_status}
    for node in nodes.values():
        schemas[node.id] = kind_schemas.get((node.api_version, node.kind))

    # --- references and dependencies
    for node in nodes.values():
        scope_names = {"schema", *nodes, *(n for n, _ in node.for_each)}
        where = f"failed to build resource {node.id!r}"
        node_schemas = dict(schemas)
        for iterator, expr in node.for_each:
            _check_refs(expr, {"schema", *nodes}, schemas, where)
            node.dependencies |= expr.roots & set(nodes)
            node_schemas[iterator] = None
        for path, template in node.fields:
            target = _template_target(schemas.get(node.id), path)
            for expr in template.expressions:
                _check_refs(expr, scope_names, node_schemas, where)
                node.dependencies |= expr.roots & set(nodes)
            _type_check(target, template, node_schemas, f"{where} at path {'.'.join(map(str, path))!r}")
        for expr in node.include_when:
            _check_refs(expr, {"schema", *nodes}, schemas, f"{where}: includeWhen")
            node.dependencies |= expr.roots & set(nodes)
        ready_scope = {"each"} if node.collection else {node.id}
        for expr in node.ready_when:
            unknown = expr.roots - ready_scope
            if unknown:
                raise GraphError(f"{where}: readyWhen expression {expr.source!r} may only reference "
                                 f"{'each' if node.collection else node.id!r}, found {sorted(unknown)}")
            ready_schemas = {**schemas, "each": schemas.get(node.id)}
            for ref in expr.references:
                _check_reference(ref, ready_schemas, f"{where}: readyWhen")
        if node.id in node.dependencies:
            raise GraphError(f"{where}: self references are not allowed")

    order = topological_order(nodes)

    # --- status
    status_template = schema_spec.get("status") or {}
    status_schema = _status_schema(status_template, schemas) if status_template else {"type": "object",
                                                                                      "properties": {}}
    status_fields = template_fields(status_template) if status_template else []
    for path, template in status_fields:
        for expr in template.expressions:
            _check_refs(expr, {"schema", *nodes}, schemas, f"status field {'.'.join(map(str, path))!r}")
    status_schema.setdefault("properties", {})
    status_schema["properties"]["conditions"] = {"type": "array", "items": CONDITION_SCHEMA}
    status_schema["properties"]["state"] = {"type": "string"}

    crd = _crd(group, version, kind, scope, schema_spec, spec_schema, status_schema)
    return Graph(name, group, version, kind, scope, spec_schema, status_schema, status_fields, nodes, order, crd)


def _check_refs(expr: Expression, allowed: set[str], schemas: dict[str, Schema | None], where: str) -> None:
    for ref in expr.references:
        if ref.root not in allowed:
            raise GraphError(f"{where}: expression {expr.source!r}: undeclared reference to '{ref.root}'")
        _check_reference(ref, schemas, f"{where}: expression {expr.source!r}")


def _parse_node(resource: Any, order: int, kind_schemas: dict[tuple[str, str], Schema | None]) -> Node:
    if not isinstance(resource, dict):
        raise GraphError(f"resources[{order}] must be an object")
    node_id = resource.get("id") or ""
    if node_id in RESERVED:
        raise GraphError(f"naming convention violation: id {node_id} is a reserved keyword in KRO")
    if not ID_PATTERN.match(node_id):
        raise GraphError(f"naming convention violation: id {node_id} is not a valid KRO resource id: "
                         "must be lower camelCase")
    template, external = resource.get("template"), resource.get("externalRef")
    if (template is None) == (external is None):
        raise GraphError(f"failed to build resource {node_id!r}: invalid combination of resource fields: "
                         "exactly one of template or externalRef must be provided")
    body = template if template is not None else external
    if not isinstance(body, dict) or not all(k in body for k in ("apiVersion", "kind", "metadata")):
        raise GraphError(f"resource {node_id} is not a valid Kubernetes object: "
                         "missing apiVersion, kind, or metadata")
    api_version, kind = body["apiVersion"], body["kind"]
    if not isinstance(api_version, str) or not isinstance(kind, str) or "${" in api_version + kind:
        raise GraphError(f"failed to extract GVK from resource {node_id}: apiVersion and kind must be literal")
    if (api_version, kind) not in kind_schemas:
        raise GraphError(f"failed to get schema for resource {node_id}: schema not found for "
                         f"{api_version}, Kind={kind}")
    where = f"failed to build resource {node_id!r}"
    try:
        node = Node(node_id, order, api_version, kind, body, external is not None, template_fields(body))
        node.include_when = [parse_standalone(e, f"{where}: includeWhen") for e in resource.get("includeWhen") or []]
        node.ready_when = [parse_standalone(e, f"{where}: readyWhen") for e in resource.get("readyWhen") or []]
        for dimension in resource.get("forEach") or []:
            if not isinstance(dimension, dict) or len(dimension) != 1:
                raise GraphError(f"{where}: each forEach entry must map exactly one iterator to an expression")
            ((iterator, source),) = dimension.items()
            if iterator in RESERVED or not ID_PATTERN.match(iterator):
                raise GraphError(f"{where}: forEach iterator {iterator!r} is a reserved keyword or not a valid "
                                 "identifier")
            node.for_each.append((iterator, parse_standalone(source, f"{where}: forEach")))
    except ExpressionError as exc:
        raise GraphError(f"{where}: {exc}") from None
    return node


def topological_order(nodes: dict[str, Node]) -> list[str]:
    remaining = {n: len(node.dependencies) for n, node in nodes.items()}
    unlocks: dict[str, list[str]] = {n: [] for n in nodes}
    for n, node in nodes.items():
        for dep in node.dependencies:
            unlocks[dep].append(n)
    ready = [(nodes[n].order, n) for n, count in remaining.items() if count == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, n = heapq.heappop(ready)
        order.append(n)
        for child in unlocks[n]:
            remaining[child] -= 1
            if remaining[child] == 0:
                heapq.heappush(ready, (nodes[child].order, child))
    if len(order) != len(nodes):
        raise GraphError(f"failed to build dependency graph: graph contains a cycle: {' -> '.join(_cycle(nodes))}")
    return order


def _cycle(nodes: dict[str, Node]) -> list[str]:
    visiting: list[str] = []
    done: set[str] = set()

    def visit(n: str) -> list[str] | None:
        if n in visiting:
            return [*visiting[visiting.index(n):], n]
        if n in done:
            return None
        visiting.append(n)
        for dep in sorted(nodes[n].dependencies, key=lambda d: nodes[d].order):
            found = visit(dep)
            if found:
                return found
        visiting.pop()
        done.add(n)
        return None

    for n in sorted(nodes, key=lambda n: nodes[n].order):
        found = visit(n)
        if found:
            return found
    return []


def _crd(group: str, version: str, kind: str, scope: str, schema_spec: Schema, spec_schema: Schema,
         status_schema: Schema) -> Schema:
    plural = pluralize(kind.lower())
    names: Schema = {"kind": kind, "listKind": f"{kind}List", "plural": plural, "singular": kind.lower()}
    if schema_spec.get("shortNames"):
        names["shortNames"] = list(schema_spec["shortNames"])
    if schema_spec.get("categories"):
        names["categories"] = list(schema_spec["categories"])
    columns = schema_spec.get("additionalPrinterColumns") or [
        {"name": "State", "type": "string", "description": "The state of a ResourceGraphDefinition instance",
         "jsonPath": ".status.state"},
        {"name": "Ready", "type": "string", "description": "Whether a ResourceGraphDefinition instance is ready",
         "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
        {"name": "Age", "type": "date", "description": "Age of the resource", "jsonPath": ".metadata.creationTimestamp"}]
    crd_metadata = schema_spec.get("metadata") or {}
    metadata: Schema = {"name": f"{plural}.{group}",
                        "labels": {**(crd_metadata.get("labels") or {}), "kro.run/owned": "true"}}
    if crd_metadata.get("annotations"):
        metadata["annotations"] = dict(crd_metadata["annotations"])
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": metadata,
            "spec": {"group": group, "names": names, "scope": scope, "versions": [{
                "name": version, "served": True, "storage": True, "subresources": {"status": {}},
                "additionalPrinterColumns": columns,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"},
                    "spec": spec_schema, "status": status_schema}}}}]}}


def combinations(dimensions: list[tuple[str, list[Any]]]) -> list[dict[str, Any]]:
    """forEach's cartesian product, in the order of the dimensions."""
    names = [n for n, _ in dimensions]
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*(v for _, v in dimensions))]
