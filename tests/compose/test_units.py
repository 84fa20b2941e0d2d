"""SimpleSchema, `${...}` templates and graph ordering without a cluster."""

from __future__ import annotations

import pytest

from ultraplane.compose import graph as graphs
from ultraplane.compose.expressions import ExpressionError, PendingData, parse_template
from ultraplane.compose.simpleschema import SchemaError, to_openapi


def test_simpleschema_types_and_markers() -> None:
    schema = to_openapi({
        "name": 'string | required=true description="My Name" pattern="^[a-z]+$" minLength=2',
        "replicas": "integer | default=3 minimum=1 maximum=10",
        "ratio": "float | default=0.5",
        "mode": 'string | enum="debug,info" default="info"',
        "id": "string | immutable=true",
        "tags": "[]string | uniqueItems=true maxItems=5",
        "labels": "map[string]string",
        "matrix": "[][]integer",
        "values": "object",
        "owner": "Person",
        "people": "[]Person | listType=map listMapKey=name",
        "ingress": {"enabled": "boolean | default=false"},
    }, {"Person": {"name": "string | required=true", "address": "Address"}, "Address": {"city": "string"}})
    props = schema["properties"]
    assert schema["required"] == ["name"]
    assert props["name"] == {"type": "string", "description": "My Name", "pattern": "^[a-z]+$", "minLength": 2}
    assert props["replicas"] == {"type": "integer", "default": 3, "minimum": 1, "maximum": 10}
    assert props["ratio"] == {"type": "number", "default": 0.5}
    assert props["mode"] == {"type": "string", "enum": ["debug", "info"], "default": "info"}
    assert props["id"]["x-kubernetes-validations"] == [{"rule": "self == oldSelf", "message": "field is immutable"}]
    assert props["tags"] == {"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "set",
                             "maxItems": 5}
    assert props["labels"] == {"type": "object", "additionalProperties": {"type": "string"}}
    assert props["matrix"]["items"] == {"type": "array", "items": {"type": "integer"}}
    assert props["values"] == {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    assert props["owner"]["properties"]["address"]["properties"]["city"] == {"type": "string"}
    assert props["owner"]["required"] == ["name"]
    assert props["people"]["x-kubernetes-list-map-keys"] == ["name"]
    assert props["ingress"]["default"] == {}  # kro: a struct whose fields have defaults defaults to {}


@pytest.mark.parametrize(("spec", "types", "message"), [
    ({"a": "Person"}, {"Person": {"c": "Company"}, "Company": {"p": "[]Person"}}, "cyclic dependency in type"),
    ({"a": "integer | default=x"}, None, "default value must be a valid integer, got: x"),
    ({"a": "string | bogus=1"}, None, "unknown marker: bogus"),
    ({"a": "map[int]string"}, None, "map key must be string"),
    ({"a": "[]string | listMapKey=name"}, None, "listMapKey set while listType is unset"),
    ({"a": 'string | description="open'}, None, "unclosed quote"),
])
def test_simpleschema_errors(spec: dict, types: dict | None, message: str) -> None:
    with pytest.raises(SchemaError, match=message):
        to_openapi(spec, types)


def test_templates_and_optionals() -> None:
    assert parse_template("plain") is None
    template = parse_template("${a.b}-${'x}y'}")
    assert template is not None and not template.standalone
    assert template.evaluate({"a": {"b": "v"}}) == "v-x}y"
    expr = parse_template("${cm.data.?key.orValue('none')}")
    assert expr.evaluate({"cm": {"data": {}}}) == "none"
    assert expr.evaluate({"cm": {"data": {"key": "k"}}}) == "k"
    with pytest.raises(PendingData):
        parse_template("${job.status.completionTime != null}").evaluate({"job": {"status": {}}})
    with pytest.raises(ExpressionError, match="not a string"):
        parse_template("n-${n}").evaluate({"n": 3})
    refs = parse_template("${d.status.conditions.exists(c, c.type == 'A') && s.spec.x[0].y > 1}").expressions[0]
    assert sorted(r.dotted() for r in refs.references) == ["d.status.conditions", "d.status.conditions[elem].type",
                                                           "s.spec.x[*].y"]


def node(node_id: str, order: int, deps: set[str]) -> graphs.Node:
    return graphs.Node(node_id, order, "v1", "ConfigMap", dependencies=deps)


def test_topological_order_ties_break_by_declaration() -> None:
    nodes = {n.id: n for n in [node("c", 0, {"a"}), node("b", 1, set()), node("a", 2, set())]}
    assert graphs.topological_order(nodes) == ["b", "a", "c"]
    nodes["a"].dependencies = {"c"}
    with pytest.raises(graphs.GraphError, match="graph contains a cycle: c -> a -> c"):
        graphs.topological_order(nodes)


def test_breaking_changes_between_schemas() -> None:
    from ultraplane.compose.compat import breaking_changes, summary

    old = to_openapi({"name": "string", "replicas": "integer | minimum=1", "mode": 'string | enum="a,b"'})
    assert breaking_changes(old, to_openapi({"name": "string", "replicas": "integer | minimum=1",
                                             "mode": 'string | enum="a,b,c"', "extra": "string"})) == []
    changes = breaking_changes(old, to_openapi({"name": "integer | required=true",
                                                "replicas": "integer | minimum=2", "mode": 'string | enum="a"'}))
    assert changes == ["Type changed from string to integer", "Minimum constraint changed from 1 to 2",
                       "Enum value b was removed", "Field name is newly required"]
    assert summary(changes) == ("Type changed from string to integer; Minimum constraint changed from 1 to 2; "
                                "Enum value b was removed; and 1 more changes")
    assert breaking_changes(old, to_openapi({"name": "string"})) == ["Property replicas was removed",
                                                                     "Property mode was removed"]


def test_comprehension_variables_are_checked_as_list_elements() -> None:
    template = parse_template("${d.status.conditions.exists(c, c.tipe == 'A')}")
    refs = [(r.dotted(), r.through) for r in template.expressions[0].references]
    assert refs == [("d.status.conditions", ""), ("d.status.conditions[elem].tipe", "c")]
    conditions = {"type": "object", "properties": {"status": {"type": "object", "properties": {"conditions": {
        "type": "array", "items": {"type": "object", "properties": {"type": {"type": "string"}}}}}}}}
    with pytest.raises(graphs.GraphError, match="undefined field 'tipe'"):
        for ref in template.expressions[0].references:
            graphs.resolve_path(conditions, ref.path, "check")
    # a map's keys are not typed
    keys = parse_template("${d.metadata.labels.all(k, k.startsWith('a'))}").expressions[0].references
    labels = {"type": "object", "properties": {"metadata": {"type": "object", "properties": {"labels": {
        "type": "object", "additionalProperties": {"type": "string"}}}}}}
    for ref in keys:
        graphs.resolve_path(labels, ref.path, "check")
