"""CRD ``x-kubernetes-validations`` (CEL) against a served API server, with kubectl and the Python client.

Rules at the root, nested, in list items and map values, transition rules with ``oldSelf``,
``messageExpression``, ``reason``/``fieldPath``, ``optionalOldSelf``, and CRDs whose rules do not compile.
The expected texts are kube-apiserver's (apiextensions-apiserver's schema/cel validation.go and
ValidateCustomResourceDefinitionOpenAPISchema).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from tests.apiserver.conftest import API_ONLY_FLAGS, Cluster, inprocess_cluster

GROUP, VERSION, PLURAL = "cel.example.com", "v1", "widgets"
SCHEMA_PATH = "spec.validation.openAPIV3Schema"  # one schema for all versions: kube hoists it

WIDGET_SCHEMA: dict[str, Any] = {
    "type": "object",
    "x-kubernetes-validations": [
        {"rule": "self.metadata.name.startsWith('w')", "message": "name must start with w"}],
    "properties": {
        "spec": {
            "type": "object",
            "x-kubernetes-validations": [
                {"rule": "self.minReplicas <= self.maxReplicas"},
                {"rule": "self.mode == oldSelf.mode", "message": "mode is immutable"},
                {"rule": "!has(self.max__dash__surge) || self.max__dash__surge < self.maxReplicas",
                 "messageExpression": "'max-surge ' + string(self.max__dash__surge) + ' must be below ' + "
                                      "string(self.maxReplicas)",
                 "reason": "FieldValueForbidden", "fieldPath": ".max-surge"},
            ],
            "properties": {
                "minReplicas": {"type": "integer"},
                "maxReplicas": {"type": "integer"},
                "mode": {"type": "string"},
                "max-surge": {"type": "integer"},
                "ratio": {"type": "number", "x-kubernetes-validations": [{"rule": "self < 1.0"}]},
                "cpu": {"type": "string",
                        "x-kubernetes-validations": [{"rule": "quantity(self).isLessThan(quantity('4'))",
                                                      "message": "cpu must be below 4"}]},
                "ports": {
                    "type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                    "x-kubernetes-validations": [{"rule": "self.all(p, p.port > 0)",
                                                  "reason": "FieldValueRequired", "message": "ports need a port"}],
                    "items": {"type": "object", "required": ["name"],
                              "properties": {"name": {"type": "string"}, "port": {"type": "integer"},
                                             "protocol": {"type": "string"}},
                              "x-kubernetes-validations": [
                                  {"rule": "self.name.matches('^[a-z]+$')", "message": "port names are lowercase"},
                                  {"rule": "!has(oldSelf.protocol) || self.protocol == oldSelf.protocol",
                                   "message": "protocol is immutable"}]}},
                "tags": {"type": "array", "items": {"type": "string"},
                         "x-kubernetes-validations": [{"rule": "self.isSorted()", "message": "tags must be sorted"}]},
                "labels": {"type": "object", "additionalProperties": {
                    "type": "string", "x-kubernetes-validations": [{"rule": "self != 'forbidden'"}]}},
                "owner": {"type": "string", "x-kubernetes-validations": [
                    {"rule": "!oldSelf.hasValue() || oldSelf.value() == '' || self == oldSelf.value()",
                     "optionalOldSelf": True, "message": "owner is set once"}]},
            }},
        "status": {"type": "object", "properties": {"phase": {"type": "string"}}},
    },
}


def widget_crd(name: str = f"{PLURAL}.{GROUP}", schema: dict[str, Any] | None = None) -> dict[str, Any]:
    plural, group = name.split(".", 1)
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": name},
            "spec": {"group": group, "scope": "Namespaced",
                     "names": {"plural": plural, "kind": plural[:-1].capitalize()},
                     "versions": [{"name": VERSION, "served": True, "storage": True,
                                   "subresources": {"status": {}},
                                   "schema": {"openAPIV3Schema": schema or WIDGET_SCHEMA}}]}}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with inprocess_cluster("ultraplane-cel-", *API_ONLY_FLAGS) as c:
        c.ok("apply", "-f", "-", input=json.dumps(widget_crd()))
        c.ok("wait", "--for", "condition=established", f"crd/{PLURAL}.{GROUP}", "--timeout=30s")
        yield c


@pytest.fixture(scope="module")
def custom(cluster: Cluster) -> Iterator[client.CustomObjectsApi]:
    api_client = config.new_client_from_config(str(cluster.kubeconfig))
    yield client.CustomObjectsApi(api_client)
    api_client.close()


def widget(name: str, **spec: Any) -> dict[str, Any]:
    base = {"minReplicas": 1, "maxReplicas": 3, "mode": "fast"}
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Widget", "metadata": {"name": name, "namespace": "default"},
            "spec": {**base, **spec}}


def refused(custom: client.CustomObjectsApi, body: dict[str, Any], *, replace: bool = False) -> dict[str, Any]:
    with pytest.raises(ApiException) as exc:
        if replace:
            custom.replace_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, body["metadata"]["name"], body)
        else:
            custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, body)
    assert exc.value.status == 422, exc.value.body
    status = json.loads(exc.value.body)
    assert status["reason"] == "Invalid"
    return status


def causes(status: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(c["reason"], c["field"], c["message"]) for c in status["details"]["causes"]]


def test_valid_widget_is_created(custom: client.CustomObjectsApi) -> None:
    body = widget("w-ok", cpu="500m", ratio=0.5, tags=["a", "b"], labels={"team": "x"},
                  ports=[{"name": "http", "port": 80}])
    created = custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, body)
    assert created["spec"]["cpu"] == "500m"


def test_root_and_nested_rules_with_kubectl(cluster: Cluster) -> None:
    bad = widget("bad-root", minReplicas=5, maxReplicas=2)
    proc = cluster.kubectl("create", "-f", "-", input=json.dumps(bad))
    assert proc.returncode != 0
    assert 'The Widget "bad-root" is invalid:' in proc.stderr
    assert '* <nil>: Invalid value: "object": name must start with w' in proc.stderr
    assert '* spec: Invalid value: "object": failed rule: self.minReplicas <= self.maxReplicas' in proc.stderr
    single = cluster.kubectl("create", "-f", "-", input=json.dumps(widget("w-ratio", ratio=1.5)))
    assert single.returncode != 0
    assert ('The Widget "w-ratio" is invalid: spec.ratio: Invalid value: "number": failed rule: self < 1.0'
            in single.stderr)


def test_messages_reasons_field_paths_lists_and_maps(custom: client.CustomObjectsApi) -> None:
    status = refused(custom, widget("w-many", **{"max-surge": 7}, cpu="8", tags=["b", "a"],
                                      labels={"team": "forbidden"},
                                      ports=[{"name": "HTTP", "port": 80}, {"name": "dns", "port": 0}]))
    got = causes(status)
    assert ("FieldValueForbidden", "spec.max-surge", "Forbidden: max-surge 7 must be below 3") in got
    assert ("FieldValueInvalid", "spec.cpu", 'Invalid value: "string": cpu must be below 4') in got
    assert ("FieldValueInvalid", "spec.tags", 'Invalid value: "array": tags must be sorted') in got
    assert ("FieldValueInvalid", "spec.labels[team]",
            "Invalid value: \"string\": failed rule: self != 'forbidden'") in got
    assert ("FieldValueRequired", "spec.ports", "Required value: ports need a port") in got
    assert ("FieldValueInvalid", "spec.ports[0]", 'Invalid value: "object": port names are lowercase') in got
    assert len(got) == 6
    assert status["message"].startswith('Widget.cel.example.com "w-many" is invalid: [')


def test_transition_rules_use_old_self_on_update_only(custom: client.CustomObjectsApi) -> None:
    body = widget("w-trans", ports=[{"name": "web", "port": 80, "protocol": "TCP"}], owner="alice")
    created = custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, body)
    changed = copy.deepcopy(created)
    changed["spec"]["mode"] = "slow"
    changed["spec"]["ports"][0]["protocol"] = "UDP"
    changed["spec"]["owner"] = "bob"
    got = causes(refused(custom, changed, replace=True))
    assert got == [("FieldValueInvalid", "spec", 'Invalid value: "object": mode is immutable'),
                   ("FieldValueInvalid", "spec.ports[0]", 'Invalid value: "object": protocol is immutable'),
                   ("FieldValueInvalid", "spec.owner", 'Invalid value: "string": owner is set once')]
    allowed = copy.deepcopy(created)
    allowed["spec"]["maxReplicas"] = 9
    allowed["spec"]["ports"].append({"name": "dns", "port": 53, "protocol": "UDP"})  # new item: no oldSelf
    updated = custom.replace_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "w-trans", allowed)
    assert updated["spec"]["maxReplicas"] == 9
    assert [p["name"] for p in updated["spec"]["ports"]] == ["web", "dns"]


def test_immutability_patch_is_refused(custom: client.CustomObjectsApi) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, widget("w-patch"))
    with pytest.raises(ApiException) as exc:
        custom.patch_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "w-patch",
                                              {"spec": {"mode": "other"}})
    assert exc.value.status == 422
    assert json.loads(exc.value.body)["message"] == (
        'Widget.cel.example.com "w-patch" is invalid: spec: Invalid value: "object": mode is immutable')
    # a status write leaves the spec alone: the transition rule holds and the rules are evaluated again
    status = custom.patch_namespaced_custom_object_status(GROUP, VERSION, "default", PLURAL, "w-patch",
                                                          {"status": {"phase": "Ready"}})
    assert status["status"]["phase"] == "Ready"


def test_schema_errors_block_the_rules(custom: client.CustomObjectsApi) -> None:
    got = causes(refused(custom, widget("w-type", minReplicas="many", maxReplicas=0)))
    assert got[0][:2] == ("FieldValueTypeInvalid", "spec.minReplicas")
    assert got[-1] == ("FieldValueInvalid", "<nil>", 'Invalid value: "null": some validation rules were not '
                       "checked because the object was invalid; correct the existing errors to complete validation")
    assert len(got) == 2


def crd_refused(cluster: Cluster, schema: dict[str, Any], name: str) -> list[tuple[str, str, str]]:
    api_client = config.new_client_from_config(str(cluster.kubeconfig))
    try:
        with pytest.raises(ApiException) as exc:
            client.ApiextensionsV1Api(api_client).create_custom_resource_definition(widget_crd(name, schema))
    finally:
        api_client.close()
    assert exc.value.status == 422, exc.value.body
    return causes(json.loads(exc.value.body))


def test_crd_with_a_rule_that_does_not_compile_is_refused(cluster: Cluster) -> None:
    def schema(*rules: dict[str, Any]) -> dict[str, Any]:
        return {"type": "object", "properties": {"spec": {
            "type": "object", "properties": {"size": {"type": "integer"}, "items": {
                "type": "array", "items": {"type": "object", "properties": {"a": {"type": "string"}},
                                           "x-kubernetes-validations": [{"rule": "self.a == oldSelf.a"}]}}},
            "x-kubernetes-validations": list(rules)}}}

    prefix = f"{SCHEMA_PATH}.properties[spec]"
    got = crd_refused(cluster, schema({"rule": "self.size >"}, {"rule": "self.nope > 1"}, {"rule": "self.size"},
                                      {"rule": "self.size > 1", "reason": "Bogus"}), "bad1s.cel.example.com")
    uncorrelatable = ("FieldValueInvalid", f"{prefix}.properties[items].items.x-kubernetes-validations[0].rule",
                      'Invalid value: "self.a == oldSelf.a": oldSelf cannot be used on the uncorrelatable portion '
                      f"of the schema within {prefix}.properties[items].items")
    # a malformed rule stops the compilation of its node's rules; the deeper node's rules are still compiled
    assert got == [("FieldValueNotSupported", f"{prefix}.x-kubernetes-validations[3].reason",
                    'Unsupported value: "Bogus": supported values: "FieldValueDuplicate", "FieldValueForbidden", '
                    '"FieldValueInvalid", "FieldValueRequired"'), uncorrelatable]
    got = crd_refused(cluster, schema({"rule": "self.size >"}, {"rule": "self.nope > 1"}, {"rule": "self.size"}),
                      "bad2s.cel.example.com")
    rule_value = ('apiextensions.ValidationRule{Rule:"%s", Message:"", MessageExpression:"", '
                  'Reason:(*apiextensions.FieldValueErrorReason)(nil), FieldPath:"", OptionalOldSelf:(*bool)(nil)}')
    assert got[0] == uncorrelatable
    assert got[1][1] == f"{prefix}.x-kubernetes-validations[0].rule"
    assert got[1][2].startswith(f"Invalid value: {rule_value % 'self.size >'}: compilation failed: ERROR: <input>:1:")
    assert got[2] == ("FieldValueInvalid", f"{prefix}.x-kubernetes-validations[1].rule",
                      f"Invalid value: {rule_value % 'self.nope > 1'}: compilation failed: ERROR: <input>:1:5: "
                      "undefined field 'nope'\n | self.nope > 1\n | ....^")
    assert got[3] == ("FieldValueInvalid", f"{prefix}.x-kubernetes-validations[2].rule",
                      f"Invalid value: {rule_value % 'self.size'}: cel expression must evaluate to a bool")
    assert len(got) == 4
    # nothing was stored: the CRD does not exist
    assert cluster.kubectl("get", "crd", "bad2s.cel.example.com").returncode != 0


def test_crd_rule_shape_errors(cluster: Cluster) -> None:
    schema = {"type": "object", "x-kubernetes-validations": [
        {"rule": ""}, {"rule": "true", "message": " "}, {"rule": "true", "fieldPath": ".nope"},
        {"rule": "self.metadata.name != ''", "optionalOldSelf": True}],
        "properties": {"spec": {"type": "object"}}}
    got = crd_refused(cluster, schema, "bad3s.cel.example.com")
    at = f"{SCHEMA_PATH}.x-kubernetes-validations"
    assert got == [
        ("FieldValueRequired", f"{at}[0].rule", "Required value: rule is not specified"),
        ("FieldValueInvalid", f"{at}[1].message", 'Invalid value: " ": message must be non-empty if specified'),
        ("FieldValueInvalid", f"{at}[2].fieldPath", 'Invalid value: ".nope": fieldPath must be a valid path')]
    only_optional = {"type": "object", "x-kubernetes-validations": [
        {"rule": "self.metadata.name != ''", "optionalOldSelf": True}]}
    assert crd_refused(cluster, only_optional, "bad4s.cel.example.com") == [
        ("FieldValueInvalid", f"{at}[0].optionalOldSelf",
         "Invalid value: true: may not be set if oldSelf is not used in rule")]


# ============================================================================ without a server
DIFFERENTIAL_RULES = [
    "self.name.startsWith('w') && self.replicas <= 10", "self.ports.all(p, p.port > 0 && p.port < 65536)",
    "self.ports.exists(p, p.name == 'http')", "self.ports.exists_one(p, p.port == 80)", "self.ratio < 1.0",
    "size(self.tags) <= 3 && self.tags.all(t, t.matches('^[a-z]+$'))", "'team' in self.labels",
    "self.labels.all(k, self.labels[k] != '')", "self.ports.map(p, p.port).filter(x, x > 100).size() == 0",
    "self.replicas % 2 == 1 || self.name.endsWith('x')", "self.name == oldSelf.name", "self.name.contains('id')",
    "self.replicas > 3 ? self.ratio > 0.5 : true", "int(self.ratio * 10.0) < 9", "self.tags[0] == 'a'",
]
DIFFERENTIAL_SCHEMA: dict[str, Any] = {"type": "object", "properties": {
    "name": {"type": "string"}, "replicas": {"type": "integer"}, "ratio": {"type": "number"},
    "tags": {"type": "array", "items": {"type": "string"}},
    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    "ports": {"type": "array", "items": {"type": "object", "properties": {
        "name": {"type": "string"}, "port": {"type": "integer"}}}}}}
DIFFERENTIAL_VALUES = [
    {"name": "widget", "replicas": 3, "ratio": 0.25, "tags": ["a", "b"], "labels": {"team": "x"},
     "ports": [{"name": "http", "port": 80}]},
    {"name": "idx", "replicas": 12, "ratio": 0.95, "tags": ["B"], "labels": {"team": ""},
     "ports": [{"name": "dns", "port": 0}, {"name": "web", "port": 8080}]},
    {"name": "w", "replicas": 4, "ratio": 1, "tags": [], "labels": {}, "ports": []},
]


def test_transpiled_rules_answer_as_the_interpreter() -> None:
    """The fast (transpiled) path is trusted only when it says true: it must never say true where
    cel-python's interpreter does not."""
    from ultraplane.apiserver import celvalidation as cv

    for rule in DIFFERENTIAL_RULES:
        schema = {**DIFFERENTIAL_SCHEMA, "x-kubernetes-validations": [{"rule": rule}]}
        validator, errors = cv.compile_schema(schema, "s")
        assert errors == [] and validator is not None, (rule, errors)
        compiled = validator.rules[0]
        for value in DIFFERENTIAL_VALUES:
            for old in (None, DIFFERENTIAL_VALUES[0]):
                activation = {"self": cv.to_cel(value, schema), "oldSelf": cv.to_cel(old, schema)}
                slow, slow_error = cv._run(compiled.program, activation)
                fast, fast_error = cv._run_rule(compiled, activation)
                assert (bool(fast) if fast_error is None else fast_error) == (
                    bool(slow) if slow_error is None else slow_error), (rule, value)
    assert sum(1 for r in DIFFERENTIAL_RULES
               if cv.compile_schema({**DIFFERENTIAL_SCHEMA, "x-kubernetes-validations": [{"rule": r}]},
                                    "s")[0].rules[0].fast is not None) >= 10  # the fast path is really used


def test_runaway_rules_are_refused_before_they_run() -> None:
    from ultraplane.apiserver import celvalidation as cv

    schema = {"type": "object", "properties": {"l": {"type": "array", "items": {"type": "integer"},
                                                     "x-kubernetes-validations": [
                                                         {"rule": "self.all(a, self.all(b, self.all(c, a + b + c >= 0)))"}]}}}
    validator, errors = cv.compile_schema(schema, "s")
    assert errors == [] and validator is not None
    assert validator.validate({"l": list(range(8))}, None) == []  # 9^3 iterations: within the limit
    assert validator.validate({"l": list(range(500))}, None) == [{
        "reason": "FieldValueInvalid", "field": "l",
        "message": "Invalid value: \"array\": 'operation cancelled: actual cost limit exceeded': no further "
                   "validation rules will be run due to call cost exceeds limit for rule: "
                   "self.all(a, self.all(b, self.all(c, a + b + c >= 0)))"}]


def test_printer_column_paths_may_escape_dots_in_keys() -> None:
    """Karpenter's NodeClaim columns (`.metadata.labels.node\\.kubernetes\\.io/instance-type`), as kube accepts."""
    from ultraplane.apiserver import crdschema

    steps = crdschema.compile_jsonpath(r".metadata.labels.node\.kubernetes\.io/instance-type")
    assert steps == [("key", "metadata"), ("key", "labels"), ("key", "node.kubernetes.io/instance-type")]
    assert crdschema.eval_jsonpath(steps, {"metadata": {"labels": {"node.kubernetes.io/instance-type": "m5"}}}) == [
        "m5"]
