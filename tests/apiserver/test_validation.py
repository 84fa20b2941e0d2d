"""ObjectMeta validation causes and the Status bodies, with kube-apiserver's exact texts."""

from __future__ import annotations

from ultraplane.apiserver import validation as v


def test_invalid_name_status_single_cause() -> None:
    causes = v.validate_object_meta({"name": "X", "namespace": "default"}, namespaced=True)
    assert causes == [{"reason": "FieldValueInvalid", "field": "metadata.name",
                       "message": f'Invalid value: "X": {v.DNS1123_SUBDOMAIN_MSG}'}]
    body = v.invalid_status("Pod", "X", causes)
    assert body["message"] == (
        "Pod \"X\" is invalid: metadata.name: Invalid value: \"X\": a lowercase RFC 1123 subdomain must consist "
        "of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character "
        "(e.g. 'example.com', regex used for validation is "
        "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")
    assert body["code"] == 422 and body["reason"] == "Invalid"
    assert body["details"] == {"name": "X", "kind": "Pod", "causes": causes}


def test_several_causes_are_bracketed_and_grouped() -> None:
    causes = v.validate_object_meta({"labels": {"bad key": "ok"}}, namespaced=True)
    body = v.invalid_status("Deployment", "", causes, group="apps")
    assert [c["field"] for c in causes] == ["metadata.name", "metadata.namespace", "metadata.labels"]
    assert body["message"].startswith('Deployment.apps "" is invalid: [metadata.name: Required value: name or '
                                      'generateName is required, metadata.namespace: Required value, '
                                      'metadata.labels: Invalid value: "bad key": name part must consist')
    assert body["message"].endswith("]") and body["details"]["group"] == "apps"


def test_scope_name_rules_labels_annotations() -> None:
    assert v.validate_object_meta({"name": "a", "namespace": "x"}, namespaced=False) == [
        {"reason": "FieldValueForbidden", "message": "Forbidden: not allowed on this type",
         "field": "metadata.namespace"}]
    assert v.validate_object_meta({"generateName": "web-"}, namespaced=False) == []
    assert v.validate_object_meta({"generateName": "-web-"}, namespaced=False)[0]["field"] == \
        "metadata.generateName"
    assert v.validate_object_meta({"name": "a.b"}, namespaced=False, name_rule="dns1123label")[0]["message"] == \
        f'Invalid value: "a.b": {v.DNS1123_LABEL_MSG}'
    assert v.validate_object_meta({"name": "a/b"}, namespaced=False, name_rule="pathsegment")[0]["message"] == \
        "Invalid value: \"a/b\": may not contain '/'"
    assert v.validate_labels({"example.com/app": "web", "x": ""}, "metadata.labels") == []
    assert v.validate_labels({"a": "x" * 64}, "metadata.labels")[0]["message"].endswith(
        "must be no more than 63 characters")
    big = v.validate_annotations({"a": "x" * (256 * 1024)}, "metadata.annotations")
    assert big == [{"reason": "FieldValueTooLong", "message": "Too long: may not be more than 262144 bytes",
                    "field": "metadata.annotations"}]


def test_other_status_bodies() -> None:
    assert v.not_found_status("apps", "deployments", "web") == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'deployments.apps "web" not found', "reason": "NotFound",
        "details": {"name": "web", "group": "apps", "kind": "deployments"}, "code": 404}
    assert v.already_exists_status("", "pods", "p")["message"] == 'pods "p" already exists'
    assert v.conflict_status("", "pods", "p", "the object has been modified; please apply your changes to the "
                             "latest version and try again")["message"].startswith(
        'Operation cannot be fulfilled on pods "p": the object has been modified')
    assert v.forbidden_status("", "pods", "", 'User "u" cannot list resource "pods"')["message"] == \
        'pods is forbidden: User "u" cannot list resource "pods"'
    assert v.gone_status("too old resource version: 1 (5)")["code"] == 410
    assert v.bad_request_status("bad")["reason"] == "BadRequest"
    assert v.method_not_supported("", "pods", "deletecollection")["code"] == 405


def test_qualified_names_collect_every_problem() -> None:
    assert v.qualified_name_errors("example.com/app") == []
    assert v.qualified_name_errors("/") == ["prefix part must be non-empty", "name part must be non-empty",
                                            v.QUALIFIED_NAME_MSG]
    assert v.qualified_name_errors("Bad_Prefix/x" + "y" * 63) == [
        "prefix part " + v.DNS1123_SUBDOMAIN_MSG, "name part must be no more than 63 characters"]
    assert v.qualified_name_errors("a/b/c")[0].startswith("a qualified name must consist of alphanumeric")
    causes = v.validate_object_meta({"name": "ok", "generation": -1, "finalizers": ["orphan", "foregroundDeletion",
                                                                                   "bad/x/y"]}, namespaced=False)
    assert [c["field"] for c in causes] == ["metadata.generation", "metadata.finalizers", "metadata.finalizers"]
    assert causes[0]["message"] == "Invalid value: -1: must be greater than or equal to 0"
    assert causes[2]["message"] == ('Invalid value: ["orphan","foregroundDeletion","bad/x/y"]: finalizer orphan '
                                    "and foregroundDeletion cannot be both set")


def test_invalid_status_quoting_dedup_and_no_causes() -> None:
    cause = v.invalid("spec.x", 'a"b\n', "bad")
    assert cause["message"] == 'Invalid value: "a\\"b\\n": bad'
    body = v.invalid_status("Widget", 'w"1', [cause, dict(cause)], group="example.com")
    assert body["message"] == 'Widget.example.com "w\\"1" is invalid: spec.x: Invalid value: "a\\"b\\n": bad'
    assert len(body["details"]["causes"]) == 2
    assert v.invalid_status("Pod", "p", [])["message"] == 'Pod "p" is invalid'
    assert v.forbidden_status("", "", "", "no")["message"] == "forbidden: no"
    assert v.forbidden_status("apps", "deployments", "d", "no")["message"] == \
        'deployments.apps "d" is forbidden: no'
    assert v.method_not_supported("apps", "deployments", "watch")["message"] == \
        'watch is not supported on resources of kind "deployments.apps"'
    assert v.gone_status("gone", reason="Gone")["reason"] == "Gone"


def test_cause_constructors_render_like_field_errors() -> None:
    assert v.not_supported("spec.restartPolicy", "Sometimes", ["Always", "OnFailure", "Never"]) == {
        "reason": "FieldValueNotSupported", "field": "spec.restartPolicy",
        "message": 'Unsupported value: "Sometimes": supported values: "Always", "OnFailure", "Never"'}
    assert v.duplicate("spec.containers[1].name", "c")["message"] == 'Duplicate value: "c"'
    assert v.not_found("spec.volumes", {"name": "x"})["message"] == 'Not found: {"name":"x"}'
    assert v.invalid("spec.replicas", -1, "must be greater than or equal to 0")["message"] == \
        "Invalid value: -1: must be greater than or equal to 0"
    assert v.required("spec.containers")["message"] == "Required value"
    assert v.forbidden("spec.x", "may not be set")["message"] == "Forbidden: may not be set"
