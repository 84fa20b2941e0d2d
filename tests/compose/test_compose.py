"""ResourceGraphDefinitions end to end: `ultraplane up` with one simulated node, `ultraplane compose` against
it, and kubectl applying RGDs and instances (kro's published examples in fixtures/, named at their top)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.apiserver.conftest import Cluster, inprocess_cluster
from tests.harness import ultraplane_command, wait_for
from ultraplane.compose.rgdcrd import rgd_crd

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with inprocess_cluster("ultraplane-compose-", "--nodes", "1") as c:
        c.spawn([*ultraplane_command(), "compose", "--kubeconfig", str(c.kubeconfig)], "compose")
        wait_for(lambda: c.kubectl("get", "crd", "resourcegraphdefinitions.kro.run").returncode == 0,
                 "the RGD CRD", timeout=90)
        yield c


def get(cluster: Cluster, *args: str) -> dict[str, Any] | None:
    proc = cluster.kubectl("get", *args, "-o", "json")
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == kind:
            return c
    return {}


def wait_rgd(cluster: Cluster, name: str, state: str = "Active", timeout: float = 30) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        rgd = get(cluster, "rgd", name)
        return rgd if ((rgd or {}).get("status") or {}).get("state") == state else None
    try:
        return wait_for(check, f"RGD {name} {state}", timeout)
    except AssertionError:
        raise AssertionError(f"RGD {name} not {state}: {get(cluster, 'rgd', name)}\n{cluster.log_tail()}") from None


def wait_instance(cluster: Cluster, resource: str, name: str, state: str = "ACTIVE", namespace: str = "default",
                  timeout: float = 60) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = get(cluster, resource, name, "-n", namespace)
        return obj if ((obj or {}).get("status") or {}).get("state") == state else None
    try:
        return wait_for(check, f"{resource} {name} {state}", timeout)
    except AssertionError:
        raise AssertionError(f"{resource} {name} not {state}: {get(cluster, resource, name, '-n', namespace)}") \
            from None


def apply(cluster: Cluster, manifest: str | dict[str, Any]) -> str:
    text = manifest if isinstance(manifest, str) else yaml.safe_dump(manifest)
    return cluster.ok("apply", "-f", "-", input=text)


def test_rgd_crd_is_kros(cluster: Cluster) -> None:
    crd = get(cluster, "crd", "resourcegraphdefinitions.kro.run")
    published = rgd_crd()
    assert crd is not None
    assert crd["spec"]["names"] == {**published["spec"]["names"]}
    served = crd["spec"]["versions"][0]
    assert served["schema"] == published["spec"]["versions"][0]["schema"]
    assert served["additionalPrinterColumns"] == published["spec"]["versions"][0]["additionalPrinterColumns"]


def test_kro_web_app_example(cluster: Cluster) -> None:
    apply(cluster, (FIXTURES / "web-app-rg.yaml").read_text())
    rgd = wait_rgd(cluster, "deploymentservice")
    assert rgd["status"]["topologicalOrder"] == ["deployment", "service"]
    assert condition(rgd, "GraphAccepted")["status"] == "True"
    assert condition(rgd, "Ready")["status"] == "True"
    crd = get(cluster, "crd", "deploymentservices.kro.run")
    assert crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"] == {
        "name": {"type": "string"}}
    apply(cluster, {"apiVersion": "kro.run/v1alpha1", "kind": "DeploymentService",
                    "metadata": {"name": "web", "namespace": "default"}, "spec": {"name": "web"}})
    instance = wait_instance(cluster, "deploymentservice", "web")
    deployment = get(cluster, "deployment", "web")
    service = get(cluster, "service", "web")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["name"] == "web-deployment"
    assert service["spec"]["ports"][0]["port"] == 80
    labels = deployment["metadata"]["labels"]
    assert labels["kro.run/instance-name"] == "web" and labels["kro.run/node-id"] == "deployment"
    managed = get(cluster, "deployment", "web", "--show-managed-fields")["metadata"]["managedFields"]
    assert any(m.get("manager") == "kro.run/applyset" and m.get("operation") == "Apply" for m in managed)
    assert [c["type"] for c in instance["status"]["conditions"]][-1] == "Ready"
    assert "kro.run/finalizer" in instance["metadata"]["finalizers"]


def test_simpleschema_defaults_example_then_cel_functions(cluster: Cluster) -> None:
    apply(cluster, (FIXTURES / "defaults-rg.yaml").read_text())
    wait_rgd(cluster, "somethings.kro.run")
    schema = get(cluster, "crd", "somethings.kro.run")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec = schema["properties"]["spec"]
    assert spec["required"] == ["required"]
    assert spec["properties"]["elements"] == {"type": "array", "items": {"type": "string"},
                                              "default": ["a", "b", "c", "d"]}
    apply(cluster, (FIXTURES / "defaults-instance.yaml").read_text())
    instance = wait_instance(cluster, "something", "my-instance-will-cel-functions")
    assert instance["spec"]["elements"] == ["a", "b", "c", "d"]
    assert instance["spec"]["config"] == {"field2": 200, "field3": 2002}
    assert instance["spec"]["number"] == 100 and instance["spec"]["enabled"] is True
    # a required field is enforced by the generated CRD
    proc = cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump({
        "apiVersion": "kro.run/v1alpha1", "kind": "Something", "metadata": {"name": "bad", "namespace": "default"},
        "spec": {"name": "x"}}))
    assert proc.returncode != 0 and "spec.required: Required value" in proc.stderr
    cluster.ok("delete", "something", "my-instance-will-cel-functions", "--wait=true", "--timeout=30s")

    # kro's CEL functions example replaces the RGD of the same name: its schema drops fields, which kro
    # refuses (existing instances would break) until the RGD allows breaking changes
    apply(cluster, (FIXTURES / "cel-functions-rg.yaml").read_text())
    rgd = wait_for(lambda: condition(get(cluster, "rgd", "somethings.kro.run"), "KindReady").get("status") == "False"
                   and get(cluster, "rgd", "somethings.kro.run"), "the breaking change refused")
    message = condition(rgd, "KindReady")["message"]
    assert "breaking changes detected: Property config was removed; Property element was removed" in message
    assert rgd["status"]["state"] == "Inactive"
    cluster.ok("annotate", "rgd", "somethings.kro.run", "kro.run/allow-breaking-changes=true")
    wait_for(lambda: "deployment" in json.dumps(get(cluster, "rgd", "somethings.kro.run")["status"]
                                                  .get("topologicalOrder") or []), "the new graph")
    wait_rgd(cluster, "somethings.kro.run")
    apply(cluster, (FIXTURES / "cel-functions-instance.yaml").read_text())
    wait_for(lambda: get(cluster, "deployment", "app"), "the deployment of the CEL example")
    env = {e["name"]: e["value"] for e in get(cluster, "deployment", "app")["spec"]["template"]["spec"]
           ["containers"][0]["env"]}
    assert env["DNS_FIRST_PART"] == "a" and env["DNS_PARTIALS"] == "a"
    assert env["LISTS_SUM"] == "600" and env["JSON_UNMARSHAL_EXAMPLE"] == "exampleJSONValue"
    assert env["JSON_MARSHAL_EXAMPLE"] == '{"name":"app"}' and env["QUANTITY_COMPARISON"] == "small"
    assert len(env["RANDOM_SEEDED_STRING"]) == 10
    service = wait_for(lambda: get(cluster, "service", "app"), "the service of the CEL example")
    assert service["metadata"]["labels"]["partials"] == "a.b.c" and service["metadata"]["labels"]["first_part"] == "a"
    # status from expressions over the Deployment the simulated node runs: availableReplicas * 10
    instance = wait_for(lambda: (get(cluster, "something", "my-instance-will-cel-functions") or {}).get("status", {})
                        .get("availableReplicas") == 10 and get(cluster, "something", "my-instance-will-cel-functions"),
                        "the instance status from the Deployment", timeout=60)
    assert instance["status"]["state"] == "ACTIVE"
    assert any(c["type"] == "Available" for c in instance["status"]["deploymentConditions"])


GATED = """
apiVersion: kro.run/v1alpha1
kind: ResourceGraphDefinition
metadata: {name: gated}
spec:
  schema:
    apiVersion: v1alpha1
    kind: Gated
    spec:
      prefix: string | required=true
      extra: boolean | default=false
      names: '[]string | default=["x", "y"]'
    status:
      firstValue: ${first.data.value}
      secondName: ${second.metadata.name}
      summary: "${first.data.value}/${second.data.copied}"
  resources:
  - id: second
    template:
      apiVersion: v1
      kind: ConfigMap
      metadata: {name: "${schema.spec.prefix}-second"}
      data: {copied: "${first.data.value}", gate: "${gate.data.open}"}
  - id: gate
    externalRef:
      apiVersion: v1
      kind: ConfigMap
      metadata: {name: "${schema.spec.prefix}-gate"}
    readyWhen:
    - ${gate.data.open == "yes"}
  - id: first
    template:
      apiVersion: v1
      kind: ConfigMap
      metadata: {name: "${schema.spec.prefix}-first"}
      data: {value: "${schema.spec.prefix.upperAscii()}"}
  - id: extra
    includeWhen:
    - ${schema.spec.extra}
    template:
      apiVersion: v1
      kind: ConfigMap
      metadata: {name: "${schema.spec.prefix}-extra"}
      data: {from: "${second.metadata.name}"}
  - id: copies
    forEach:
    - suffix: ${schema.spec.names}
    template:
      apiVersion: v1
      kind: ConfigMap
      metadata: {name: "${schema.spec.prefix}-item-${suffix}"}
      data: {item: "${suffix}"}
"""


def test_graph_order_readywhen_includewhen_foreach_status_and_reverse_deletion(cluster: Cluster) -> None:
    apply(cluster, GATED)
    rgd = wait_rgd(cluster, "gated")
    # declaration order breaks ties; `second` needs `first` and `gate`, `extra` needs `second`
    assert rgd["status"]["topologicalOrder"] == ["gate", "first", "second", "extra", "copies"]
    deps = {r["id"]: [d["id"] for d in r.get("dependencies") or []] for r in rgd["status"]["resources"]}
    assert deps["second"] == ["gate", "first"] and deps["extra"] == ["second"]

    apply(cluster, {"apiVersion": "kro.run/v1alpha1", "kind": "Gated",
                    "metadata": {"name": "g1", "namespace": "default"}, "spec": {"prefix": "g1"}})
    # the external ConfigMap is missing: independent resources go ahead, `second` waits
    wait_for(lambda: get(cluster, "configmap", "g1-first"), "g1-first")
    wait_for(lambda: get(cluster, "configmap", "g1-item-x") and get(cluster, "configmap", "g1-item-y"), "forEach")
    instance = wait_instance(cluster, "gated", "g1", "IN_PROGRESS")
    assert condition(instance, "ResourcesReady")["status"] == "False"
    assert instance["status"]["firstValue"] == "G1"
    assert get(cluster, "configmap", "g1-second") is None
    # the gate exists but readyWhen is false: still waiting
    cluster.ok("create", "configmap", "g1-gate", "--from-literal=open=no")
    wait_for(lambda: "gate: readyWhen not satisfied" in condition(get(cluster, "gated", "g1"), "ResourcesReady")
             .get("message", ""), "the gate seen but not ready")
    assert get(cluster, "configmap", "g1-second") is None
    cluster.ok("patch", "configmap", "g1-gate", "-p", '{"data": {"open": "yes"}}')
    instance = wait_instance(cluster, "gated", "g1")
    second = get(cluster, "configmap", "g1-second")
    assert second["data"] == {"copied": "G1", "gate": "yes"}
    assert instance["status"]["summary"] == "G1/G1" and instance["status"]["secondName"] == "g1-second"
    assert condition(instance, "Ready")["status"] == "True"
    assert get(cluster, "configmap", "g1-extra") is None
    item = get(cluster, "configmap", "g1-item-y")
    assert item["data"] == {"item": "y"} and item["metadata"]["labels"]["kro.run/collection-size"] == "2"

    # includeWhen true creates the resource, false prunes it; the forEach collection follows its list
    cluster.ok("patch", "gated", "g1", "--type=merge", "-p", '{"spec": {"extra": true, "names": ["x"]}}')
    wait_for(lambda: get(cluster, "configmap", "g1-extra"), "the included resource")
    wait_for(lambda: get(cluster, "configmap", "g1-item-y") is None, "the pruned collection item")
    assert get(cluster, "configmap", "g1-extra")["data"] == {"from": "g1-second"}
    cluster.ok("patch", "gated", "g1", "--type=merge", "-p", '{"spec": {"extra": false}}')
    wait_for(lambda: get(cluster, "configmap", "g1-extra") is None, "the excluded resource pruned")

    # deletion goes in reverse order: `first` waits until `second` (which depends on it) is gone
    cluster.ok("patch", "configmap", "g1-second", "--type=merge", "-p",
               '{"metadata": {"finalizers": ["test.ultraplane/hold"]}}')
    cluster.ok("delete", "gated", "g1", "--wait=false")
    wait_for(lambda: (get(cluster, "configmap", "g1-second") or {}).get("metadata", {}).get("deletionTimestamp"),
             "second being deleted")
    deleting = wait_instance(cluster, "gated", "g1", "DELETING")
    wait_for(lambda: "waiting for deletion of second/g1-second" in condition(get(cluster, "gated", "g1"),
                                                                            "ResourcesReady").get("message", ""),
             "the deletion waiting on second")
    assert condition(deleting, "ResourcesReady")["reason"] == "UnderDeletion"
    assert get(cluster, "configmap", "g1-first") is not None
    assert get(cluster, "configmap", "g1-item-x") is None  # no dependents: in the first layer
    cluster.ok("patch", "configmap", "g1-second", "--type=merge", "-p", '{"metadata": {"finalizers": null}}')
    wait_for(lambda: get(cluster, "configmap", "g1-first") is None, "first deleted after second")
    wait_for(lambda: get(cluster, "gated", "g1") is None, "the instance gone")
    assert get(cluster, "configmap", "g1-gate") is not None  # external references are never deleted


def rejected(cluster: Cluster, name: str, manifest: str) -> str:
    apply(cluster, manifest)
    rgd = wait_rgd(cluster, name, "Inactive")
    accepted = condition(rgd, "GraphAccepted")
    assert accepted["status"] == "False" and accepted["reason"] == "InvalidResourceGraph"
    assert condition(rgd, "Ready")["status"] == "False"
    return accepted["message"]


def rgd_with(name: str, kind: str, resources: list[dict[str, Any]], spec: dict[str, Any] | None = None) -> str:
    return yaml.safe_dump({"apiVersion": "kro.run/v1alpha1", "kind": "ResourceGraphDefinition",
                           "metadata": {"name": name},
                           "spec": {"schema": {"apiVersion": "v1alpha1", "kind": kind,
                                               "spec": spec or {"name": "string"}},
                                    "resources": resources}})


def configmap(node_id: str, data: dict[str, str]) -> dict[str, Any]:
    return {"id": node_id, "template": {"apiVersion": "v1", "kind": "ConfigMap",
                                        "metadata": {"name": f"${{schema.spec.name}}-{node_id}"}, "data": data}}


def test_cycle_rejected(cluster: Cluster) -> None:
    message = rejected(cluster, "cyclic", rgd_with("cyclic", "Cyclic", [
        configmap("alpha", {"b": "${beta.data.a}"}), configmap("beta", {"a": "${alpha.data.b}"})]))
    assert "graph contains a cycle: alpha -> beta -> alpha" in message


def test_expression_errors_rejected(cluster: Cluster) -> None:
    message = rejected(cluster, "typo", rgd_with("typo", "Typo", [configmap("cm", {"a": "${schema.spec.nme}"})]))
    assert "undefined field 'nme'" in message and "cm" in message
    message = rejected(cluster, "unknownref", rgd_with("unknownref", "UnknownRef", [
        configmap("cm", {"a": "${deployent.metadata.name}"})]))
    assert "undeclared reference to 'deployent'" in message
    message = rejected(cluster, "badcel", rgd_with("badcel", "BadCel", [configmap("cm", {"a": "${schema.spec.+}"})]))
    assert "failed to parse expression" in message
    message = rejected(cluster, "badfield", rgd_with("badfield", "BadField", [{
        "id": "dep", "template": {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
                                  "spec": {"replicas": "${schema.spec.name}"}}}]))
    assert "expects integer" in message
    message = rejected(cluster, "badstatus", yaml.safe_dump({
        "apiVersion": "kro.run/v1alpha1", "kind": "ResourceGraphDefinition", "metadata": {"name": "badstatus"},
        "spec": {"schema": {"apiVersion": "v1alpha1", "kind": "BadStatus", "spec": {"name": "string"},
                            "status": {"x": "${cm.data.?a.orValue('')}", "y": "${cm.spec.replicas}"}},
                 "resources": [configmap("cm", {"a": "b"})]}}))
    assert "undefined field 'spec'" in message
    message = rejected(cluster, "badmacro", rgd_with("badmacro", "BadMacro", [{
        "id": "dep", "readyWhen": ["${dep.status.conditions.exists(c, c.tipe == 'Available')}"],
        "template": {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}}}]))
    assert "undefined field 'tipe'" in message and "readyWhen" in message
    message = rejected(cluster, "notserved", rgd_with("notserved", "NotServed", [{
        "id": "thing", "template": {"apiVersion": "example.com/v1", "kind": "Thing", "metadata": {"name": "x"}}}]))
    assert "schema not found for example.com/v1, Kind=Thing" in message
    message = rejected(cluster, "badid", rgd_with("badid", "BadId", [configmap("my-cm", {"a": "b"})]))
    assert "is not a valid KRO resource id" in message
    message = rejected(cluster, "badmarker", rgd_with("badmarker", "BadMarker", [], {"n": "integer | default=abc"}))
    assert "default value must be a valid integer, got: abc" in message
    events = get(cluster, "events", "-n", "default")["items"]
    assert any(e["involvedObject"].get("name") == "typo" and e["reason"] == "InvalidResourceGraph"
               and e["type"] == "Warning" and "undefined field 'nme'" in e["message"] for e in events)
    # the controller keeps serving: a fixed RGD is accepted
    apply(cluster, rgd_with("typo", "Typo", [configmap("cm", {"a": "${schema.spec.name}"})]))
    wait_rgd(cluster, "typo")


def test_kro_coredns_example(cluster: Cluster) -> None:
    apply(cluster, (FIXTURES / "core-dns-rg.yaml").read_text())
    rgd = wait_rgd(cluster, "coredns.kro.run")
    order = rgd["status"]["topologicalOrder"]
    assert order.index("clusterRole") < order.index("clusterRoleBinding")
    assert order.index("serviceAccount") < order.index("clusterRoleBinding")
    assert order.index("serviceAccount") < order.index("deployment")
    apply(cluster, (FIXTURES / "core-dns-instance.yaml").read_text())
    wait_for(lambda: get(cluster, "clusterrolebinding", "mynameis"), "the ClusterRoleBinding", timeout=60)
    binding = get(cluster, "clusterrolebinding", "mynameis")
    assert binding["roleRef"]["name"] == "mynameis"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "mynameis", "namespace": "default"}]
    assert binding["metadata"]["annotations"]["rbac.authorization.kubernetes.io/autoupdate"] == '"true"'
    service = wait_for(lambda: get(cluster, "service", "mynameis"), "the Service")
    assert service["spec"]["clusterIP"] == "10.100.123.45"
    deployment = wait_for(lambda: get(cluster, "deployment", "mynameis"), "the Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "coredns/coredns:1.11.3"
    assert container["resources"]["limits"] == {"cpu": "100m", "memory": "128Mi"}
    assert get(cluster, "serviceaccount", "mynameis")["secrets"] == [{"name": "coredns-token-pvcnf"}]


def test_kro_optionals_example_external_ref(cluster: Cluster) -> None:
    apply(cluster, (FIXTURES / "optionals-configmap.yaml").read_text())
    apply(cluster, (FIXTURES / "optionals-rg.yaml").read_text())
    wait_for(lambda: (get(cluster, "rgd", "deploymentservice") or {}).get("status", {}).get("topologicalOrder")
             == ["input", "deployment"], "the optionals graph")
    apply(cluster, {"apiVersion": "kro.run/v1alpha1", "kind": "DeploymentService",
                    "metadata": {"name": "opt", "namespace": "default"}, "spec": {"name": "opt"}})

    def env() -> dict[str, str] | None:
        deployment = get(cluster, "deployment", "opt")
        if deployment is None:
            return None
        return {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert wait_for(env, "the deployment with the optional value") == {"MY_VALUE": "Hello, World!"}


def test_kro_noop_example(cluster: Cluster) -> None:
    apply(cluster, (FIXTURES / "noop-rg.yaml").read_text())
    rgd = wait_rgd(cluster, "noop")
    assert rgd["status"].get("topologicalOrder", []) == []
    apply(cluster, {"apiVersion": "kro.run/v1alpha1", "kind": "NoOp",
                    "metadata": {"name": "nop", "namespace": "default"}, "spec": {"name": "nop"}})
    wait_instance(cluster, "noop", "nop")
    cluster.ok("delete", "noop", "nop", "--timeout=30s")
    assert get(cluster, "noop", "nop") is None


def test_runtime_expression_error_sets_error_state_and_event(cluster: Cluster) -> None:
    apply(cluster, rgd_with("divider", "Divider", [configmap("cm", {"q": "${string(100 / schema.spec.divisor)}"})],
                            {"name": "string", "divisor": "integer | default=1"}))
    wait_rgd(cluster, "divider")
    apply(cluster, {"apiVersion": "kro.run/v1alpha1", "kind": "Divider",
                    "metadata": {"name": "div", "namespace": "default"}, "spec": {"name": "div", "divisor": 0}})
    instance = wait_instance(cluster, "divider", "div", "ERROR")
    resolved = condition(instance, "GraphResolved")
    assert resolved["status"] == "False" and resolved["reason"] == "ResolutionFailed"
    assert "'cm'" in resolved["message"] and "100 / schema.spec.divisor" in resolved["message"]
    assert condition(instance, "Ready")["status"] == "False"

    def warning() -> list[dict[str, Any]]:
        events = get(cluster, "events", "-n", "default")["items"]
        return [e for e in events if e["involvedObject"].get("name") == "div" and e["reason"] == "ReconcileError"]
    assert wait_for(warning, "the ReconcileError event")[0]["type"] == "Warning"
    # fixing the input recovers the instance
    cluster.ok("patch", "divider", "div", "--type=merge", "-p", '{"spec": {"divisor": 4}}')
    wait_instance(cluster, "divider", "div")
    assert get(cluster, "configmap", "div-cm")["data"] == {"q": "25"}


def test_rgd_chaining_instance_of_another_rgd(cluster: Cluster) -> None:
    apply(cluster, rgd_with("inner", "Inner", [configmap("cm", {"v": "${schema.spec.name}"})]))
    wait_rgd(cluster, "inner")
    apply(cluster, yaml.safe_dump({
        "apiVersion": "kro.run/v1alpha1", "kind": "ResourceGraphDefinition", "metadata": {"name": "outer"},
        "spec": {"schema": {"apiVersion": "v1alpha1", "kind": "Outer", "spec": {"name": "string"},
                            "status": {"innerState": "${child.status.state}"}},
                 "resources": [{"id": "child", "readyWhen": ["${child.status.state == 'ACTIVE'}"],
                                "template": {"apiVersion": "kro.run/v1alpha1", "kind": "Inner",
                                             "metadata": {"name": "${schema.spec.name}-inner"},
                                             "spec": {"name": "${schema.spec.name}-inner"}}},
                               configmap("after", {"inner": "${child.metadata.name}"})]}}))
    rgd = wait_rgd(cluster, "outer")
    assert rgd["status"]["topologicalOrder"] == ["child", "after"]
    apply(cluster, {"apiVersion": "kro.run/v1alpha1", "kind": "Outer",
                    "metadata": {"name": "chain", "namespace": "default"}, "spec": {"name": "chain"}})
    outer = wait_instance(cluster, "outer", "chain")
    assert outer["status"]["innerState"] == "ACTIVE"
    assert get(cluster, "configmap", "chain-inner-cm")["data"] == {"v": "chain-inner"}
    assert get(cluster, "configmap", "chain-after")["data"] == {"inner": "chain-inner"}
    cluster.ok("delete", "outer", "chain", "--timeout=60s")
    assert get(cluster, "inner", "chain-inner") is None and get(cluster, "configmap", "chain-inner-cm") is None
