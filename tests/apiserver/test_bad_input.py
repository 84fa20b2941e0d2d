"""Bad requests answered as kube-apiserver 1.32 answers them, on both backends; the server keeps serving.

Covers fieldValidation on every write (create, update, merge / strategic / JSON patch, apply), duplicate
fields, malformed JSON and YAML, kind / apiVersion / namespace mismatches, oversized bodies, invalid names
and selectors, and patches that cannot apply.
"""

from __future__ import annotations

import http.client
import json
import ssl
from typing import Any

import pytest

from tests.apiserver.conftest import Cluster

NS = "bad-input"
CMS = f"/api/v1/namespaces/{NS}/configmaps"


def call(cluster: Cluster, method: str, path: str, body: bytes | str | None = None,
         ctype: str = "application/json") -> tuple[int, dict[str, list[str]], Any]:
    ctx = ssl.create_default_context(cafile=str(cluster.pki / "ca.crt"))
    ctx.load_cert_chain(str(cluster.pki / "admin.crt"), str(cluster.pki / "admin.key"))
    conn = http.client.HTTPSConnection("127.0.0.1", cluster.port, context=ctx, timeout=60)
    try:
        data = body.encode() if isinstance(body, str) else body
        conn.request(method, path, data, {"Content-Type": ctype, "Accept": "application/json"})
        resp = conn.getresponse()
        headers: dict[str, list[str]] = {}
        for k, v in resp.getheaders():
            headers.setdefault(k.lower(), []).append(v)
        raw = resp.read()
        return resp.status, headers, json.loads(raw) if raw[:1] == b"{" else raw
    finally:
        conn.close()


def status(code: int, reason: str | None, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                            "message": message}
    if reason:
        body["reason"] = reason
    if details is not None:
        body["details"] = details
    body["code"] = code
    return body


def cm(name: str, **extra: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"a": "1"}, **extra}


@pytest.fixture(scope="module", autouse=True)
def namespace(cluster: Cluster) -> None:
    code, _, _ = call(cluster, "POST", "/api/v1/namespaces", json.dumps({"metadata": {"name": NS}}))
    assert code in (201, 409)


def warnings_of(headers: dict[str, list[str]]) -> list[str]:
    return headers.get("warning", [])


# ============================================================================ fieldValidation
def test_create_unknown_and_duplicate_fields(cluster: Cluster) -> None:
    dup = '{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"dup-strict"},"data":{"a":"1","a":"2"},"x":1}'
    code, _, body = call(cluster, "POST", f"{CMS}?fieldValidation=Strict", dup)
    assert (code, body) == (400, status(400, "BadRequest", 'ConfigMap in version "v1" cannot be handled as a '
                                        'ConfigMap: strict decoding error: duplicate field "data.a", unknown field "x"'))
    code, headers, body = call(cluster, "POST", CMS, dup.replace("dup-strict", "dup-warn"))
    assert code == 201 and body["data"] == {"a": "2"} and "x" not in body
    assert warnings_of(headers) == ['299 - "duplicate field \\"data.a\\""', '299 - "unknown field \\"x\\""']
    code, headers, body = call(cluster, "POST", f"{CMS}?fieldValidation=Ignore", dup.replace("dup-strict", "dup-ign"))
    assert code == 201 and warnings_of(headers) == [] and "x" not in body
    # the dropped field is not stored either (kube decodes into typed objects)
    assert "x" not in call(cluster, "GET", f"{CMS}/dup-warn")[2]
    code, _, body = call(cluster, "POST", f"{CMS}?fieldValidation=Loud", json.dumps(cm("nope")))
    assert (code, body["message"]) == (400, 'fieldValidation: Unsupported value: "Loud": supported values: '
                                             '"Ignore", "Strict", "Warn"')


def test_patch_unknown_fields_per_patch_type(cluster: Cluster) -> None:
    assert call(cluster, "POST", CMS, json.dumps(cm("fv")))[0] == 201
    merge = "application/merge-patch+json"
    # merge patch, Strict: kube's 422 with the patched object as the invalid value
    code, _, body = call(cluster, "PATCH", f"{CMS}/fv?fieldValidation=Strict", '{"foo":1}', merge)
    assert code == 422 and body["reason"] == "Invalid"
    assert body["message"].startswith(' "" is invalid: patch: Invalid value: "{')
    assert body["message"].endswith('": strict decoding error: unknown field "foo"')
    (cause,) = body["details"]["causes"]
    assert cause["reason"] == "FieldValueInvalid" and cause["field"] == "patch"
    assert "name" not in body["details"] and "kind" not in body["details"]
    # duplicates inside the patch come first
    code, _, body = call(cluster, "PATCH", f"{CMS}/fv?fieldValidation=Strict", '{"data":{"b":"1","b":"2"},"foo":1}',
                         merge)
    assert code == 422
    assert body["message"].endswith('strict decoding error: duplicate field "data.b", unknown field "foo"')
    # strategic merge patch, Strict: the invalid value is Go's rendering of the patch map
    code, _, body = call(cluster, "PATCH", f"{CMS}/fv?fieldValidation=Strict", '{"foo":{"y":2,"x":[1,"s"]}}',
                         "application/strategic-merge-patch+json")
    assert (code, body) == (422, status(422, "Invalid", ' "" is invalid: patch: Invalid value: "map[foo:map[x:[1 s] '
                                        'y:2]]": strict decoding error: unknown field "foo"', {"causes": [{
                                            "reason": "FieldValueInvalid", "message": 'Invalid value: "map[foo:map[x:'
                                            '[1 s] y:2]]": strict decoding error: unknown field "foo"',
                                            "field": "patch"}]}))
    # JSON patch, Strict
    code, _, body = call(cluster, "PATCH", f"{CMS}/fv?fieldValidation=Strict",
                         '[{"op":"add","path":"/foo","value":1}]', "application/json-patch+json")
    assert code == 422 and body["message"].endswith('strict decoding error: unknown field "foo"')
    # Warn (the default): applied without the field, with a warning; Ignore: silently
    code, headers, body = call(cluster, "PATCH", f"{CMS}/fv", '{"foo":1,"data":{"w":"1"}}', merge)
    assert code == 200 and "foo" not in body and body["data"]["w"] == "1"
    assert warnings_of(headers) == ['299 - "unknown field \\"foo\\""']
    code, headers, body = call(cluster, "PATCH", f"{CMS}/fv?fieldValidation=Ignore", '{"foo":1,"data":{"i":"1"}}',
                               "application/strategic-merge-patch+json")
    assert code == 200 and "foo" not in body and body["data"]["i"] == "1" and warnings_of(headers) == []


def test_apply_undeclared_field_is_kubes_500(cluster: Cluster) -> None:
    config = json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "fv-apply", "namespace": NS},
                         "data": {"a": "1"}, "foo": 1})
    for validation in ("Strict", "Warn", "Ignore"):  # the typed conversion fails whatever fieldValidation says
        code, _, body = call(cluster, "PATCH", f"{CMS}/fv-apply?fieldManager=t&fieldValidation={validation}", config,
                             "application/apply-patch+yaml")
        assert (code, body) == (500, status(500, None, "failed to create typed patch object (bad-input/fv-apply; "
                                            "/v1, Kind=ConfigMap): .foo: field not declared in schema"))
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
           "spec": {"containers": [{"name": "c", "image": "i", "bogus": True}]}}
    code, _, body = call(cluster, "PATCH", f"/api/v1/namespaces/{NS}/pods/p?fieldManager=t", json.dumps(pod),
                         "application/apply-patch+yaml")
    assert code == 500 and body["message"] == ('failed to create typed patch object (/p; /v1, Kind=Pod): '
                                               '.spec.containers[name="c"].bogus: field not declared in schema')


# ============================================================================ malformed bodies
def test_malformed_json_and_yaml(cluster: Cluster) -> None:
    code, _, body = call(cluster, "POST", CMS, '{"apiVersion":"v1","kind":"ConfigMap","metadata":{')
    assert (code, body) == (400, status(400, "BadRequest", "the object provided is unrecognized (must be of type "
                                        "ConfigMap): couldn't get version/kind; json parse error: unexpected end of "
                                        'JSON input ({"apiVersion":"v1","kind":"Con ...)'))
    code, _, body = call(cluster, "POST", CMS, '{"apiVersion" "v1"}')
    assert body["message"] == ("the object provided is unrecognized (must be of type ConfigMap): couldn't get "
                               "version/kind; json parse error: invalid character '\"' after object key "
                               '({"apiVersion" "v1"})')
    yaml_cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-yaml\ndata:\n  k: v\n"
    code, _, body = call(cluster, "POST", CMS, yaml_cm, "application/yaml")
    assert code == 201 and body["data"] == {"k": "v"}
    code, _, body = call(cluster, "POST", CMS, "kind: ConfigMap\nmetadata: [\n", "application/yaml")
    assert code == 400 and body["reason"] == "BadRequest"
    assert body["message"].startswith("the object provided is unrecognized (must be of type ConfigMap): error "
                                      "converting YAML to JSON: yaml: line ")
    code, _, body = call(cluster, "POST", CMS, "<xml/>", "text/xml")
    assert (code, body) == (415, status(415, "UnsupportedMediaType", "the body of the request was in an unknown "
                                        "format - accepted media types include: application/json, application/yaml, "
                                        "application/vnd.kubernetes.protobuf"))


def test_type_and_namespace_mismatches(cluster: Cluster) -> None:
    code, _, body = call(cluster, "POST", f"/api/v1/namespaces/{NS}/pods", json.dumps(cm("wrong-kind")))
    assert code == 400 and body["reason"] == "BadRequest"
    code, _, body = call(cluster, "POST", f"/apis/apps/v1/namespaces/{NS}/deployments",
                         json.dumps({"apiVersion": "apps/v2", "kind": "Deployment", "metadata": {"name": "d"}}))
    assert code == 400 and "apps/v2" in body["message"]
    other = cm("ns-mismatch")
    other["metadata"]["namespace"] = "elsewhere"
    code, _, body = call(cluster, "POST", CMS, json.dumps(other))
    assert (code, body) == (400, status(400, "BadRequest", "the namespace of the provided object does not match "
                                        "the namespace sent on the request"))


def test_oversized_bodies(cluster: Cluster) -> None:
    big = json.dumps(cm("huge", data={"a": "x" * (3 * 1024 * 1024)}))
    code, _, body = call(cluster, "POST", CMS, big)
    assert (code, body) == (413, status(413, "RequestEntityTooLarge", "Request entity too large: limit is 3145728"))
    # under the API server's limit but over etcd's 1.5 MiB request limit: etcd's text as a 500
    code, _, body = call(cluster, "POST", CMS, json.dumps(cm("large", data={"a": "x" * (1700 * 1024)})))
    assert (code, body) == (500, status(500, None, "etcdserver: request is too large"))
    # over etcd's gRPC receive limit (request limit + 512 KiB): the transport's error
    code, _, body = call(cluster, "POST", CMS, json.dumps(cm("larger", data={"a": "x" * (2100 * 1024)})))
    assert code == 500 and body["message"].startswith("rpc error: code = ResourceExhausted desc = grpc: received "
                                                      "message larger than max (")
    assert call(cluster, "GET", "/readyz")[0] == 200


# ============================================================================ names and selectors
def test_invalid_names(cluster: Cluster) -> None:
    code, _, body = call(cluster, "POST", CMS, json.dumps(cm("Bad_Name")))
    assert code == 422 and body["details"]["causes"] == [{
        "reason": "FieldValueInvalid", "field": "metadata.name",
        "message": "Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain must consist of lower case "
                   "alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character "
                   "(e.g. 'example.com', regex used for validation is "
                   "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"}]
    code, _, body = call(cluster, "POST", "/api/v1/namespaces", json.dumps({"metadata": {"name": "a.b"}}))
    assert code == 422 and "a lowercase RFC 1123 label must consist of" in body["message"]


def test_invalid_selectors(cluster: Cluster) -> None:
    code, _, body = call(cluster, "GET", f"{CMS}?labelSelector=a%3D%3D%3Db")
    assert code == 400 and body["reason"] == "BadRequest"
    code, _, body = call(cluster, "GET", f"{CMS}?fieldSelector=spec.bogus%3D1")
    assert code == 400 and body["reason"] == "BadRequest" and "spec.bogus" in body["message"]


# ============================================================================ patches that do not apply
def test_patches_that_do_not_apply(cluster: Cluster) -> None:
    assert call(cluster, "POST", CMS, json.dumps(cm("p")))[0] == 201
    jp = "application/json-patch+json"
    code, _, body = call(cluster, "PATCH", f"{CMS}/p", '[{"op":"test","path":"/data/a","value":"2"}]', jp)
    assert code == 422 and body["message"] == "the server rejected our request due to an error in our request"
    assert body["details"]["causes"][0]["reason"] == "UnexpectedServerResponse"
    code, _, body = call(cluster, "PATCH", f"{CMS}/p", '[{"op":"remove","path":"/nope/x"}]', jp)
    assert code == 422 and body["details"]["causes"][0]["reason"] == "UnexpectedServerResponse"
    code, _, body = call(cluster, "PATCH", f"{CMS}/p", "not json", "application/merge-patch+json")
    assert (code, body) == (400, status(400, "BadRequest", "error decoding patch: invalid character 'o' in literal "
                                        "null (expecting 'u')"))
    code, _, body = call(cluster, "PATCH", f"{CMS}/p", "{}", "text/plain")
    assert (code, body) == (415, status(415, "UnsupportedMediaType", "the body of the request was in an unknown "
                                        "format - accepted media types include: application/json-patch+json, "
                                        "application/merge-patch+json, application/strategic-merge-patch+json, "
                                        "application/apply-patch+yaml"))
    assert call(cluster, "GET", f"{CMS}/p")[2]["data"] == {"a": "1"}
