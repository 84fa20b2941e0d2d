"""CustomResourceDefinitions: kubectl's lifecycle, the Python client, kube's exact 422s, restarts.

Runs on both storage backends (the ``cluster`` fixture in conftest.py).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client, config, dynamic, watch
from kubernetes.client.rest import ApiException

from tests.apiserver.conftest import Cluster

CRONTAB_CRD = r"""
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: crontabs.stable.example.com
spec:
  group: stable.example.com
  scope: Namespaced
  names: {plural: crontabs, singular: crontab, kind: CronTab, shortNames: [ct], categories: [all]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources:
      status: {}
      scale: {specReplicasPath: .spec.replicas, statusReplicasPath: .status.replicas,
              labelSelectorPath: .status.labelSelector}
    additionalPrinterColumns:
    - {name: Spec, type: string, jsonPath: .spec.cronSpec}
    - {name: Replicas, type: integer, jsonPath: .spec.replicas}
    - {name: Image, type: string, priority: 1, jsonPath: .spec.image}
    - {name: Ready, type: string, jsonPath: '.status.conditions[?(@.type=="Ready")].status'}
    - {name: Age, type: date, jsonPath: .metadata.creationTimestamp}
    schema:
      openAPIV3Schema:
        type: object
        description: A cron job that runs a container image.
        properties:
          spec:
            type: object
            required: [cronSpec]
            properties:
              cronSpec: {type: string, description: The schedule in cron format.}
              image: {type: string, default: busybox}
              replicas: {type: integer, minimum: 0, default: 1}
              ports:
                type: array
                x-kubernetes-list-type: map
                x-kubernetes-list-map-keys: [name]
                items:
                  type: object
                  required: [name]
                  properties: {name: {type: string}, port: {type: integer}}
          status:
            type: object
            properties:
              replicas: {type: integer}
              labelSelector: {type: string}
              conditions:
                type: array
                items:
                  type: object
                  properties:
                    type: {type: string}
                    status: {type: string}
"""

WIDGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.com"},
    "spec": {"group": "example.com", "scope": "Cluster",
             "names": {"plural": "widgets", "kind": "Widget"},
             "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                 "type": "object",
                 "properties": {"spec": {"type": "object", "required": ["size"], "properties": {
                     "size": {"type": "integer", "minimum": 1, "maximum": 10},
                     "ratio": {"type": "number", "maximum": 1, "exclusiveMaximum": True},
                     "name": {"type": "string", "minLength": 3, "maxLength": 5, "pattern": "^[a-z]+$"},
                     "color": {"type": "string", "enum": ["red", "blue"]},
                     "tags": {"type": "array", "minItems": 1, "maxItems": 2, "items": {"type": "string"}},
                     "email": {"type": "string", "format": "email"},
                     "port": {"x-kubernetes-int-or-string": True},
                     "note": {"type": "string", "nullable": True},
                     "label": {"type": "string"},
                     "mode": {"type": "string", "default": "fast"},
                     "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                     "template": {"type": "object", "x-kubernetes-embedded-resource": True,
                                  "x-kubernetes-preserve-unknown-fields": True},
                 }}}}}}]},
}


@pytest.fixture(scope="module")
def api(cluster: Cluster) -> Iterator[client.ApiClient]:
    api_client = config.new_client_from_config(str(cluster.kubeconfig))
    yield api_client
    api_client.close()


def establish(cluster: Cluster, manifest: str, name: str) -> None:
    cluster.ok("apply", "-f", "-", input=manifest)
    cluster.ok("wait", "--for", "condition=established", f"crd/{name}", "--timeout=20s")


def wait_for(predicate: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def header(table: str) -> list[str]:
    return re.split(r"\s{2,}", table.splitlines()[0].strip())


def raw(api: client.ApiClient, method: str, path: str, body: Any = None) -> tuple[int, Any, Any]:
    """One request as it is sent, returning (status, decoded body, headers)."""
    resp = api.call_api(method, api.configuration.host + path, body=body,
                        header_params={"Content-Type": "application/json", "Accept": "application/json"})
    resp.read()
    return resp.status, json.loads(resp.data), resp.headers


def status_body(exc: pytest.ExceptionInfo[ApiException]) -> dict[str, Any]:
    return json.loads(exc.value.body)


# ============================================================================ kubectl
def test_kubectl_lifecycle(cluster: Cluster) -> None:
    establish(cluster, CRONTAB_CRD, "crontabs.stable.example.com")
    crd = cluster.json("get", "crd", "crontabs.stable.example.com")
    conditions = {c["type"]: (c["status"], c["reason"], c["message"]) for c in crd["status"]["conditions"]}
    assert conditions["NamesAccepted"] == ("True", "NoConflicts", "no conflicts found")
    assert conditions["Established"] == ("True", "InitialNamesAccepted", "the initial names have been accepted")
    assert crd["status"]["acceptedNames"]["shortNames"] == ["ct"]
    assert crd["status"]["acceptedNames"]["listKind"] == "CronTabList"
    assert crd["status"]["storedVersions"] == ["v1"]
    assert crd["spec"]["conversion"] == {"strategy": "None"}
    assert header(cluster.ok("get", "crd")) == ["NAME", "CREATED AT"]
    resources = cluster.ok("api-resources", "--api-group", "stable.example.com")
    assert resources.splitlines()[1].split() == ["crontabs", "ct", "stable.example.com/v1", "true", "CronTab"]

    cluster.ok("create", "namespace", "crd-kubectl")
    ns = ("-n", "crd-kubectl")
    out = cluster.ok("create", *ns, "-f", "-", input="apiVersion: stable.example.com/v1\nkind: CronTab\n"
                     "metadata: {name: nightly, labels: {team: a}}\nspec: {cronSpec: '0 3 * * *'}\n")
    assert out.strip() == "crontab.stable.example.com/nightly created"
    table = cluster.ok("get", "ct", *ns)
    assert header(table) == ["NAME", "SPEC", "REPLICAS", "READY", "AGE"]
    assert table.splitlines()[1].split()[:7] == ["nightly", "0", "3", "*", "*", "*", "1"]
    assert len(table.splitlines()[1].split()) == 8  # no Ready condition: kubectl leaves a null cell blank
    wide = cluster.ok("get", "crontabs", *ns, "-o", "wide")
    assert header(wide) == ["NAME", "SPEC", "REPLICAS", "IMAGE", "READY", "AGE"]
    assert "busybox" in wide.splitlines()[1]
    obj = cluster.json("get", "crontab.stable.example.com", "nightly", *ns)
    assert obj["spec"] == {"cronSpec": "0 3 * * *", "image": "busybox", "replicas": 1}  # schema defaults
    assert obj["metadata"]["generation"] == 1

    v2 = cluster.ok("explain", "crontabs", "--output", "plaintext-openapiv2")
    assert "VERSION:  stable.example.com/v1" in v2 and "A cron job that runs a container image." in v2
    # a List makes kubectl validate on the client, with the CRD's schema from /openapi/v2
    client_side = cluster.kubectl("create", *ns, "-f", "-", input=(
        "apiVersion: v1\nkind: List\nitems:\n- apiVersion: stable.example.com/v1\n  kind: CronTab\n"
        "  metadata: {name: listed}\n  spec: {cronSpec: '1 1 * * *', foo: 1}\n"))
    assert client_side.returncode == 1
    assert client_side.stderr.strip() == (
        'error: error validating "STDIN": error validating data: ValidationError(CronTab.spec): unknown field "foo" '
        "in com.example.stable.v1.CronTab.spec; if you choose to ignore these errors, turn validation off with "
        "--validate=false")
    explain = cluster.ok("explain", "crontab.spec")
    assert "KIND:       CronTab" in explain and "VERSION:    v1" in explain
    assert re.search(r"cronSpec\s+<string> -required-\n\s+The schedule in cron format.", explain)

    assert cluster.ok("scale", *ns, "ct/nightly", "--replicas=3").strip() == "crontab.stable.example.com/nightly scaled"
    assert cluster.json("get", "ct", "nightly", *ns)["spec"]["replicas"] == 3
    scale = json.loads(cluster.ok("get", "--raw", "/apis/stable.example.com/v1/namespaces/crd-kubectl/crontabs/"
                                  "nightly/scale"))
    assert scale["kind"] == "Scale" and scale["spec"] == {"replicas": 3}

    cluster.ok("patch", *ns, "ct", "nightly", "--type=merge", "-p", '{"spec":{"image":"alpine"}}')
    cluster.ok("patch", *ns, "ct", "nightly", "--type=json", "-p",
               '[{"op":"replace","path":"/spec/cronSpec","value":"*/5 * * * *"}]')
    obj = cluster.json("get", "ct", "nightly", *ns)
    assert (obj["spec"]["image"], obj["spec"]["cronSpec"], obj["metadata"]["generation"]) == (
        "alpine", "*/5 * * * *", 4)
    smp = cluster.kubectl("patch", *ns, "ct", "nightly", "-p", '{"spec":{"image":"x"}}')
    assert smp.returncode == 1
    assert smp.stderr.strip() == (
        "error: application/strategic-merge-patch+json is not supported by stable.example.com/v1, Kind=CronTab: "
        "the body of the request was in an unknown format - accepted media types include: "
        "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml")

    applied = cluster.ok("apply", "--server-side", *ns, "-f", "-", input=(
        "apiVersion: stable.example.com/v1\nkind: CronTab\nmetadata: {name: hourly}\n"
        "spec: {cronSpec: '0 * * * *', replicas: 2}\n"))
    assert applied.strip() == "crontab.stable.example.com/hourly serverside-applied"
    hourly = cluster.json("get", "ct", "hourly", *ns, "--show-managed-fields")
    assert hourly["spec"]["replicas"] == 2
    assert [m["manager"] for m in hourly["metadata"]["managedFields"]] == ["kubectl"]
    # a second manager adds an entry to a list-map: entries merge by key
    for manager, port in (("one", "a"), ("two", "b")):
        cluster.ok("apply", "--server-side", "--field-manager", manager, *ns, "-f", "-", input=(
            "apiVersion: stable.example.com/v1\nkind: CronTab\nmetadata: {name: hourly}\n"
            f"spec: {{ports: [{{name: {port}, port: 80}}]}}\n"))
    assert sorted(p["name"] for p in cluster.json("get", "ct", "hourly", *ns)["spec"]["ports"]) == ["a", "b"]
    assert "hourly" in cluster.ok("get", "all", *ns)
    assert cluster.ok("get", "ct", *ns, "-l", "team=a", "-o", "name").split() == ["crontab.stable.example.com/nightly"]

    assert cluster.ok("delete", *ns, "ct", "hourly").strip() == 'crontab.stable.example.com "hourly" deleted'
    out = cluster.ok("delete", "crd", "crontabs.stable.example.com", "--timeout=30s")
    assert out.strip() == 'customresourcedefinition.apiextensions.k8s.io "crontabs.stable.example.com" deleted'
    assert cluster.kubectl("get", "crd", "crontabs.stable.example.com").returncode == 1
    assert "stable.example.com" not in cluster.ok("api-versions")
    gone = cluster.kubectl("get", "--raw", "/apis/stable.example.com/v1/namespaces/crd-kubectl/crontabs")
    assert gone.returncode == 1 and "NotFound" in gone.stderr
    # the instances went with it: recreating the CRD finds none
    establish(cluster, CRONTAB_CRD, "crontabs.stable.example.com")
    assert cluster.ok("get", "ct", *ns, "-o", "name").strip() == ""


def test_delete_sets_terminating_and_removes_instances(cluster: Cluster, api: client.ApiClient) -> None:
    manifest = CRONTAB_CRD.replace("crontabs", "gadgets").replace("crontab", "gadget").replace(
        "CronTab", "Gadget").replace("shortNames: [ct]", "shortNames: [gd]")
    establish(cluster, manifest, "gadgets.stable.example.com")
    custom = client.CustomObjectsApi(api)
    body = {"apiVersion": "stable.example.com/v1", "kind": "Gadget",
            "metadata": {"name": "g1", "finalizers": ["example.com/hold"]}, "spec": {"cronSpec": "1 * * * *"}}
    args = ("stable.example.com", "v1", "default", "gadgets")
    custom.create_namespaced_custom_object(*args, body)
    ext = client.ApiextensionsV1Api(api)
    code, deleted, _ = raw(api, "DELETE", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"
                                          "gadgets.stable.example.com")
    assert code == 200
    assert deleted["metadata"]["finalizers"] == ["customresourcecleanup.apiextensions.k8s.io"]
    terminating = [c for c in deleted["status"]["conditions"] if c["type"] == "Terminating"]
    assert terminating[0]["reason"] == "InstanceDeletionPending"
    assert terminating[0]["message"] == ("CustomResourceDefinition marked for deletion; CustomResource deletion "
                                         "will begin soon")

    def reason() -> str:
        crd = ext.read_custom_resource_definition("gadgets.stable.example.com")
        return next(c.reason for c in crd.status.conditions if c.type == "Terminating")

    # the instance's own finalizer holds the cleanup; meanwhile creates are refused
    wait_for(lambda: reason() == "InstanceDeletionInProgress")
    # as kube's finalizer controller: the condition is written first, then the instances are deleted
    wait_for(lambda: custom.get_namespaced_custom_object(*args, "g1")["metadata"].get("deletionTimestamp"))
    code, refused, _ = raw(api, "POST", "/apis/stable.example.com/v1/namespaces/default/gadgets",
                           {**body, "metadata": {"name": "g2"}})
    assert (code, refused["reason"], refused["message"], refused["details"]) == (
        405, "MethodNotAllowed", "create not allowed while custom resource definition is terminating",
        {"group": "stable.example.com", "kind": "gadgets"})
    custom.patch_namespaced_custom_object(*args, "g1", {"metadata": {"finalizers": None}})

    def gone() -> bool:
        try:
            ext.read_custom_resource_definition("gadgets.stable.example.com")
            return False
        except ApiException as exc:
            return exc.status == 404

    wait_for(gone)
    with pytest.raises(ApiException) as missing:
        custom.list_namespaced_custom_object("stable.example.com", "v1", "default", "gadgets")
    assert missing.value.status == 404


# ============================================================================ Python client
def test_custom_objects_crud_and_watch(cluster: Cluster, api: client.ApiClient) -> None:
    establish(cluster, CRONTAB_CRD, "crontabs.stable.example.com")
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="crd-py")))
    custom = client.CustomObjectsApi(api)
    args = ("stable.example.com", "v1", "crd-py", "crontabs")
    events: list[tuple[str, str]] = []
    started = threading.Event()

    def consume() -> None:
        w = watch.Watch()
        started.set()
        for ev in w.stream(custom.list_namespaced_custom_object, *args, timeout_seconds=10):
            events.append((ev["type"], ev["object"]["metadata"]["name"]))
            if ev["type"] == "DELETED":
                w.stop()

    thread = threading.Thread(target=consume)
    thread.start()
    started.wait()
    time.sleep(0.3)
    created = custom.create_namespaced_custom_object(*args, {
        "apiVersion": "stable.example.com/v1", "kind": "CronTab", "metadata": {"name": "py", "labels": {"tier": "x"}},
        "spec": {"cronSpec": "* * * * *", "extra": 1}, "status": {"replicas": 5}})
    assert created["spec"] == {"cronSpec": "* * * * *", "image": "busybox", "replicas": 1}  # pruned, defaulted
    assert "status" not in created  # with a status subresource, create cannot set status
    created["spec"]["replicas"] = 4
    replaced = custom.replace_namespaced_custom_object(*args, "py", created)
    assert replaced["metadata"]["generation"] == 2
    # the main endpoint ignores status; /status ignores everything else and keeps generation
    with_status = custom.patch_namespaced_custom_object(*args, "py", {"status": {"replicas": 9}})
    assert "status" not in with_status and with_status["metadata"]["generation"] == 2
    status = custom.patch_namespaced_custom_object_status(*args, "py", {
        "spec": {"replicas": 7}, "status": {"replicas": 4, "labelSelector": "tier=x"}})
    assert status["status"] == {"replicas": 4, "labelSelector": "tier=x"}
    assert status["spec"]["replicas"] == 4 and status["metadata"]["generation"] == 2
    scale = custom.get_namespaced_custom_object_scale(*args, "py")
    assert scale["status"] == {"replicas": 4, "selector": "tier=x"}
    listed = custom.list_namespaced_custom_object(*args, label_selector="tier=x")
    assert [i["metadata"]["name"] for i in listed["items"]] == ["py"]
    assert listed["items"][0]["kind"] == "CronTab" and listed["kind"] == "CronTabList"
    assert custom.list_namespaced_custom_object(*args, field_selector="metadata.name=nope")["items"] == []
    assert len(custom.list_cluster_custom_object("stable.example.com", "v1", "crontabs",
                                                 field_selector="metadata.namespace=crd-py")["items"]) == 1
    custom.delete_namespaced_custom_object(*args, "py")
    thread.join(15)
    assert events[0] == ("ADDED", "py") and events[-1] == ("DELETED", "py")
    assert ("MODIFIED", "py") in events


def test_dynamic_client_and_warnings(cluster: Cluster, api: client.ApiClient) -> None:
    establish(cluster, CRONTAB_CRD, "crontabs.stable.example.com")
    dyn = dynamic.DynamicClient(api)
    crontabs = dyn.resources.get(api_version="stable.example.com/v1", kind="CronTab")
    assert crontabs.namespaced and crontabs.short_names == ["ct"]
    obj = crontabs.create(namespace="default", body={
        "apiVersion": "stable.example.com/v1", "kind": "CronTab", "metadata": {"name": "dyn"},
        "spec": {"cronSpec": "5 * * * *", "unknown": True}})
    assert obj.spec.image == "busybox" and "unknown" not in obj.spec
    assert crontabs.get(namespace="default", name="dyn").spec.cronSpec == "5 * * * *"
    # fieldValidation: Warn reports pruned fields as warnings, Strict refuses them
    path = "/apis/stable.example.com/v1/namespaces/default/crontabs?fieldValidation="
    body = {"apiVersion": "stable.example.com/v1", "kind": "CronTab", "metadata": {"name": "w"},
            "spec": {"cronSpec": "1 1 * * *", "foo": 1}}
    code, created, headers = raw(api, "POST", path + "Warn", body)
    assert code == 201 and "foo" not in created["spec"]
    assert headers.get("Warning") == '299 - "unknown field \\"spec.foo\\""'
    body["metadata"]["name"] = "s"
    code, refused, _ = raw(api, "POST", path + "Strict", body)
    assert (code, refused["reason"]) == (400, "BadRequest")
    assert refused["message"] == ('CronTab in version "v1" cannot be handled as a CronTab: strict decoding error: '
                                  'unknown field "spec.foo"')
    crontabs.delete(namespace="default", name="dyn")


MULTI_VERSION_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "things.multi.example.com"},
    "spec": {"group": "multi.example.com", "scope": "Namespaced",
             "names": {"plural": "things", "kind": "Thing"},
             "versions": [{"name": name, "served": True, "storage": name == "v1",
                           "selectableFields": [{"jsonPath": ".spec.color"}],
                           "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                               "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                               "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}}}
                          for name in ("v1beta1", "v1", "v2alpha1")]},
}


def test_versions_discovery_and_conversion(cluster: Cluster, api: client.ApiClient) -> None:
    client.ApiextensionsV1Api(api).create_custom_resource_definition(MULTI_VERSION_CRD)
    cluster.ok("wait", "--for", "condition=established", "crd/things.multi.example.com", "--timeout=20s")
    code, group, _ = raw(api, "GET", "/apis/multi.example.com")
    assert code == 200
    assert [v["version"] for v in group["versions"]] == ["v1", "v1beta1", "v2alpha1"]
    assert group["preferredVersion"] == {"groupVersion": "multi.example.com/v1", "version": "v1"}
    code, resources, _ = raw(api, "GET", "/apis/multi.example.com/v1beta1")
    assert [(r["name"], r["kind"], r["namespaced"]) for r in resources["resources"]] == [("things", "Thing", True)]
    resp = api.call_api("GET", api.configuration.host + "/apis", header_params={
        "Accept": "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"})
    resp.read()
    aggregated = {g["metadata"]["name"]: g for g in json.loads(resp.data)["items"]}
    versions = aggregated["multi.example.com"]["versions"]
    assert [v["version"] for v in versions] == ["v1", "v1beta1", "v2alpha1"]
    assert versions[0]["resources"][0]["resource"] == "things"
    assert versions[0]["resources"][0]["verbs"] == ["delete", "deletecollection", "get", "list", "patch", "create",
                                                    "update", "watch"]
    custom = client.CustomObjectsApi(api)
    custom.create_namespaced_custom_object("multi.example.com", "v1beta1", "default", "things", {
        "apiVersion": "multi.example.com/v1beta1", "kind": "Thing", "metadata": {"name": "t"}, "spec": {"a": 1}})
    for version in ("v1", "v1beta1", "v2alpha1"):
        got = custom.get_namespaced_custom_object("multi.example.com", version, "default", "things", "t")
        assert got["apiVersion"] == f"multi.example.com/{version}" and got["spec"] == {"a": 1}
    listed = custom.list_namespaced_custom_object("multi.example.com", "v2alpha1", "default", "things")
    assert listed["items"][0]["apiVersion"] == "multi.example.com/v2alpha1"
    # selectableFields add field-selector labels; others are refused as for any resource
    def names(selector: str) -> list[str]:
        return [i["metadata"]["name"] for i in custom.list_namespaced_custom_object(
            "multi.example.com", "v1", "default", "things", field_selector=selector)["items"]]

    custom.create_namespaced_custom_object("multi.example.com", "v1", "default", "things", {
        "apiVersion": "multi.example.com/v1", "kind": "Thing", "metadata": {"name": "red"},
        "spec": {"color": "red"}})
    assert names("spec.color=red") == ["red"] and names("spec.color!=red") == ["t"]
    code, refused, _ = raw(api, "GET", "/apis/multi.example.com/v1/namespaces/default/things?fieldSelector=spec.a%3D1")
    assert (code, refused["message"]) == (400, "field label not supported: spec.a")
    # without a status subresource, status is an ordinary field and its changes count as a generation
    patched = custom.patch_namespaced_custom_object("multi.example.com", "v1", "default", "things", "t",
                                                    {"status": {"phase": "x"}})
    assert patched["status"] == {"phase": "x"} and patched["metadata"]["generation"] == 2
    assert "multi.example.com/v2alpha1" in cluster.ok("api-versions").split()


# ============================================================================ exact 422s
WIDGET_CASES = [
    ({"size": "big"}, "spec.size", "FieldValueTypeInvalid",
     'Invalid value: "string": spec.size in body must be of type integer: "string"'),
    ({}, "spec.size", "FieldValueRequired", "Required value"),
    ({"size": 0}, "spec.size", "FieldValueInvalid",
     "Invalid value: 0: spec.size in body should be greater than or equal to 1"),
    ({"size": 11}, "spec.size", "FieldValueInvalid",
     "Invalid value: 11: spec.size in body should be less than or equal to 10"),
    ({"size": 1, "ratio": 1}, "spec.ratio", "FieldValueInvalid",
     "Invalid value: 1: spec.ratio in body should be less than 1"),
    ({"size": 1, "name": "ab"}, "spec.name", "FieldValueInvalid",
     'Invalid value: "ab": spec.name in body should be at least 3 chars long'),
    ({"size": 1, "name": "abcdef"}, "spec.name", "FieldValueTooLong", "Too long: may not be more than 5 bytes"),
    ({"size": 1, "name": "AB1"}, "spec.name", "FieldValueInvalid",
     "Invalid value: \"AB1\": spec.name in body should match '^[a-z]+$'"),
    ({"size": 1, "color": "purple"}, "spec.color", "FieldValueNotSupported",
     'Unsupported value: "purple": supported values: "red", "blue"'),
    ({"size": 1, "tags": []}, "spec.tags", "FieldValueInvalid",
     "Invalid value: 0: spec.tags in body should have at least 1 items"),
    ({"size": 1, "tags": ["a", "b", "c"]}, "spec.tags", "FieldValueTooMany", "Too many: 3: must have at most 2 items"),
    ({"size": 1, "tags": [5]}, "spec.tags[0]", "FieldValueTypeInvalid",
     'Invalid value: "integer": spec.tags[0] in body must be of type string: "integer"'),
    ({"size": 1, "email": "nope"}, "spec.email", "FieldValueTypeInvalid",
     'Invalid value: "nope": spec.email in body must be of type email: "nope"'),
    ({"size": 1, "port": True}, "spec.port", "FieldValueTypeInvalid",
     'Invalid value: "boolean": spec.port in body must be of type integer,string: "boolean"'),
    ({"size": 1, "label": None}, "spec.label", "FieldValueTypeInvalid",
     'Invalid value: "null": spec.label in body must be of type string: "null"'),
    ({"size": 1, "template": {"apiVersion": "v1"}}, "spec.template.kind", "FieldValueRequired",
     "Required value: must not be empty"),
]


@pytest.mark.parametrize(("spec", "field", "reason", "message"), WIDGET_CASES,
                         ids=[f"{c[1]}-{c[2]}" for c in WIDGET_CASES])
def test_schema_violation_messages(api: client.ApiClient, spec: dict[str, Any], field: str, reason: str,
                                   message: str) -> None:
    ext = client.ApiextensionsV1Api(api)
    try:
        ext.create_custom_resource_definition(WIDGET_CRD)
    except ApiException as exc:
        assert exc.status == 409
    custom = client.CustomObjectsApi(api)

    def create() -> Any:
        return custom.create_cluster_custom_object("example.com", "v1", "widgets", {
            "apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w1"}, "spec": spec})

    def served() -> bool:
        try:
            custom.list_cluster_custom_object("example.com", "v1", "widgets")
            return True
        except ApiException:
            return False

    wait_for(served)
    with pytest.raises(ApiException) as invalid:
        create()
    assert invalid.value.status == 422
    assert status_body(invalid) == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": f'Widget.example.com "w1" is invalid: {field}: {message}', "reason": "Invalid",
        "details": {"name": "w1", "group": "example.com", "kind": "Widget",
                    "causes": [{"reason": reason, "message": message, "field": field}]},
        "code": 422}


def test_valid_widget_keeps_preserved_and_nullable_fields(cluster: Cluster, api: client.ApiClient) -> None:
    ext = client.ApiextensionsV1Api(api)
    try:
        ext.create_custom_resource_definition(WIDGET_CRD)
    except ApiException as exc:
        assert exc.status == 409
    custom = client.CustomObjectsApi(api)
    spec = {"size": 2, "note": None, "port": "http", "free": {"any": {"thing": [1]}},
            "template": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "b"}}}
    created = wait_for(lambda: _try_create(custom, {"apiVersion": "example.com/v1", "kind": "Widget",
                                                    "metadata": {"name": "ok"}, "spec": spec}))
    assert created["spec"] == {**spec, "mode": "fast"}
    assert created["metadata"].get("namespace") is None  # cluster-scoped
    assert header(cluster.ok("get", "widgets")) == ["NAME", "AGE"]  # no printer columns: kube's default Age
    # validation ratcheting: an update may keep a value the schema refuses as long as it does not touch it
    widget = {"size": 2}
    code, _, _ = raw(api, "POST", "/apis/example.com/v1/widgets", {
        "apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "old"}, "spec": widget})
    assert code == 201
    cluster.ok("patch", "crd", "widgets.example.com", "--type=json", "-p", json.dumps([{
        "op": "replace", "path": "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/size/minimum",
        "value": 5}]))

    def refuses_new() -> bool:
        code, _, _ = raw(api, "POST", "/apis/example.com/v1/widgets", {
            "apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "new"}, "spec": widget})
        return code == 422

    wait_for(refuses_new)
    relabeled = custom.patch_cluster_custom_object("example.com", "v1", "widgets", "old",
                                                   {"metadata": {"labels": {"a": "b"}}})
    assert relabeled["spec"]["size"] == 2
    with pytest.raises(ApiException) as changed:
        custom.patch_cluster_custom_object("example.com", "v1", "widgets", "old", {"spec": {"size": 3}})
    assert status_body(changed)["details"]["causes"][0]["message"] == (
        "Invalid value: 3: spec.size in body should be greater than or equal to 5")
    cluster.ok("patch", "crd", "widgets.example.com", "--type=json", "-p", json.dumps([{
        "op": "replace", "path": "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/size/minimum",
        "value": 1}]))
    for name in ("ok", "old"):
        custom.delete_cluster_custom_object("example.com", "v1", "widgets", name)


def _try_create(custom: client.CustomObjectsApi, body: dict[str, Any]) -> Any:
    try:
        return custom.create_cluster_custom_object("example.com", "v1", "widgets", body)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def test_invalid_crds_are_refused_with_kubes_messages(api: client.ApiClient) -> None:
    ext = client.ApiextensionsV1Api(api)
    bad = yaml.safe_load(CRONTAB_CRD)
    bad["metadata"]["name"] = "wrong.stable.example.com"
    bad["spec"]["versions"][0]["storage"] = False
    bad["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["x"] = {}
    with pytest.raises(ApiException) as invalid:
        ext.create_custom_resource_definition(bad)
    body = status_body(invalid)
    assert invalid.value.status == 422
    causes = [(c["field"], c["message"]) for c in body["details"]["causes"]]
    assert causes[0] == ("metadata.name", 'Invalid value: "wrong.stable.example.com": must be '
                                          'spec.names.plural+"."+spec.group')
    # kube's v1 conversion moves a schema every version shares to spec.validation, checked after the versions
    assert causes[-1] == ("spec.validation.openAPIV3Schema.properties[spec].properties[x].type",
                          "Required value: must not be empty for specified object fields")
    assert causes[-2][0] == "spec.versions"
    assert causes[-2][1].endswith(": must have exactly one version marked as storage version")
    assert body["message"].startswith(
        'CustomResourceDefinition.apiextensions.k8s.io "wrong.stable.example.com" is invalid: [metadata.name: ')
    no_schema = yaml.safe_load(CRONTAB_CRD)
    del no_schema["spec"]["versions"][0]["schema"]
    no_schema["spec"]["group"] = "example"
    no_schema["metadata"]["name"] = "crontabs.example"
    with pytest.raises(ApiException) as invalid:
        ext.create_custom_resource_definition(no_schema)
    assert [(c["field"], c["message"]) for c in status_body(invalid)["details"]["causes"]] == [
        ("spec.group", 'Invalid value: "example": should be a domain with at least one dot'),
        ("spec.versions[0].schema.openAPIV3Schema", "Required value: schemas are required")]
    bad_default = yaml.safe_load(CRONTAB_CRD)
    spec_props = bad_default["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    spec_props["limits"] = {"type": "object", "properties": {"cpu": {"type": "string"}},
                            "default": {"cpu": "1", "gpu": "2"}}
    spec_props["image"]["x-kubernetes-preserve-unknown-fields"] = False
    with pytest.raises(ApiException) as invalid:
        ext.create_custom_resource_definition(bad_default)
    prefix = "spec.validation.openAPIV3Schema.properties[spec].properties"
    assert [(c["field"], c["message"]) for c in status_body(invalid)["details"]["causes"]] == [
        (f"{prefix}[image].x-kubernetes-preserve-unknown-fields", "Invalid value: false: must be true or undefined"),
        (f"{prefix}[limits].default", 'Invalid value: {"cpu":"1","gpu":"2"}: must not have unknown fields')]


def test_defaults_apply_on_read_after_the_schema_changes(cluster: Cluster, api: client.ApiClient) -> None:
    establish(cluster, CRONTAB_CRD, "crontabs.stable.example.com")
    custom = client.CustomObjectsApi(api)
    args = ("stable.example.com", "v1", "default", "crontabs")
    custom.create_namespaced_custom_object(*args, {"apiVersion": "stable.example.com/v1", "kind": "CronTab",
                                                   "metadata": {"name": "old"}, "spec": {"cronSpec": "3 3 * * *"}})
    cluster.ok("patch", "crd", "crontabs.stable.example.com", "--type=json", "-p", json.dumps([{
        "op": "add", "path": "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/tier",
        "value": {"type": "string", "default": "gold"}}]))
    stored_rv = custom.get_namespaced_custom_object(*args, "old")["metadata"]["resourceVersion"]
    got = wait_for(lambda: (o := custom.get_namespaced_custom_object(*args, "old"))["spec"].get("tier") and o)
    assert got["spec"]["tier"] == "gold" and got["metadata"]["resourceVersion"] == stored_rv  # no write happened
    custom.delete_namespaced_custom_object(*args, "old")
    cluster.ok("patch", "crd", "crontabs.stable.example.com", "--type=json", "-p", json.dumps([{
        "op": "remove", "path": "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/tier"}]))


def test_name_conflicts_keep_a_crd_from_being_established(cluster: Cluster, api: client.ApiClient) -> None:
    first = CRONTAB_CRD.replace("crontabs", "tables").replace("crontab", "table").replace(
        "CronTab", "Table").replace("shortNames: [ct]", "shortNames: [tb]").replace("stable.example", "dup.example")
    establish(cluster, first, "tables.dup.example.com")
    second = yaml.safe_load(first)
    second["metadata"]["name"] = "chairs.dup.example.com"
    second["spec"]["names"].update(plural="chairs", singular="chair")
    ext = client.ApiextensionsV1Api(api)
    ext.create_custom_resource_definition(second)

    def conditions() -> dict[str, tuple[str, str, str]]:
        crd = ext.read_custom_resource_definition("chairs.dup.example.com")
        return {c.type: (c.status, c.reason, c.message) for c in crd.status.conditions or []}

    wait_for(lambda: "NamesAccepted" in conditions())
    assert conditions() == {
        "NamesAccepted": ("False", "NameConflict",
                          '["tb" is already in use, "Table" is already in use, "TableList" is already in use]'),
        "Established": ("False", "NotAccepted", "not all names are accepted")}
    assert "chairs" not in cluster.ok("api-resources", "--api-group", "dup.example.com")
    # once the holder is gone, the names are free and the second CRD is established
    cluster.ok("delete", "crd", "tables.dup.example.com", "--timeout=30s")
    wait_for(lambda: conditions().get("Established", ("",))[0] == "True")
    assert conditions()["NamesAccepted"] == ("True", "NoConflicts", "no conflicts found")


# ============================================================================ restart (kept last: it restarts the server)
def test_crds_survive_restart(cluster: Cluster) -> None:
    establish(cluster, CRONTAB_CRD, "crontabs.stable.example.com")
    cluster.ok("apply", "-n", "default", "-f", "-", input=(
        "apiVersion: stable.example.com/v1\nkind: CronTab\nmetadata: {name: survivor}\nspec: {cronSpec: '2 2 * * *'}\n"))
    proc = cluster.procs.pop()  # the API server (``up`` also holds the in-process store)
    argv = [str(a) for a in proc.args]
    proc.terminate()
    proc.wait(15)
    cluster.spawn(argv, "restarted")
    cluster.wait_ready()
    assert cluster.json("get", "ct", "survivor", "-n", "default")["spec"]["image"] == "busybox"
    assert "crontabs" in cluster.ok("api-resources", "--api-group", "stable.example.com")
