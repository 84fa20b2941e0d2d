"""The served schemas: resolved kind schemas, and /openapi/v2 + /openapi/v3 as kubectl consumes them."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import pytest

from ultraplane.apiserver.openapi import SERVED_VERSION, Schemas


@pytest.fixture(scope="module")
def schemas() -> Schemas:
    return Schemas.load()


def test_kind_schema_resolves_refs_and_keeps_patch_metadata(schemas: Schemas) -> None:
    pod = schemas.kind_schema("", "v1", "Pod")
    assert pod is not None
    containers = pod["properties"]["spec"]["properties"]["containers"]
    assert containers["x-kubernetes-patch-merge-key"] == "name"
    assert containers["x-kubernetes-patch-strategy"] == "merge"
    assert containers["items"]["properties"]["image"]["type"] == "string"
    strategy = schemas.kind_schema("apps", "v1", "Deployment")["properties"]["spec"]["properties"]["strategy"]
    assert strategy["x-kubernetes-patch-strategy"] == "retainKeys" and "rollingUpdate" in strategy["properties"]
    crd = schemas.kind_schema("apiextensions.k8s.io", "v1", "CustomResourceDefinition")
    props = crd["properties"]["spec"]["properties"]["versions"]["items"]["properties"]["schema"]["properties"]
    recursive = props["openAPIV3Schema"]["properties"]["properties"]["additionalProperties"]
    assert recursive is props["openAPIV3Schema"]  # self-referencing type stays a shared cycle
    assert schemas.kind_schema("", "v1", "NoSuchKind") is None
    assert Schemas.load("1.32") is schemas


def test_openapi_documents(schemas: Schemas) -> None:
    v2 = json.loads(schemas.openapi_v2_json())
    assert v2["swagger"] == "2.0" and v2["info"]["version"] == SERVED_VERSION
    pod = v2["definitions"]["io.k8s.api.core.v1.Pod"]
    assert pod["x-kubernetes-group-version-kind"] == [{"group": "", "kind": "Pod", "version": "v1"}]
    assert pod["properties"]["spec"]["$ref"] == "#/definitions/io.k8s.api.core.v1.PodSpec"
    assert v2["definitions"]["io.k8s.apimachinery.pkg.util.intstr.IntOrString"]["format"] == "int-or-string"
    index = schemas.openapi_v3_paths()
    assert index["apis/apps/v1"]["serverRelativeURL"].startswith("/openapi/v3/apis/apps/v1?hash=")
    apps = json.loads(schemas.openapi_v3_json("apis/apps/v1") or b"")
    assert "io.k8s.api.apps.v1.Deployment" in apps["components"]["schemas"]
    patch = apps["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"]
    assert {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": True}} in \
        patch["parameters"]
    assert schemas.openapi_v3_json("apis/nope/v1") is None


def _discovery(schemas: Schemas) -> dict[str, Any]:
    resources = {"api/v1": [("pods", "Pod", True), ("namespaces", "Namespace", False)],
                 "apis/apps/v1": [("deployments", "Deployment", True)]}
    routes: dict[str, Any] = {
        "/api": {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []},
        "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
            {"name": "apps", "versions": [{"groupVersion": "apps/v1", "version": "v1"}],
             "preferredVersion": {"groupVersion": "apps/v1", "version": "v1"}}]},
        "/version": {"major": "1", "minor": "32", "gitVersion": SERVED_VERSION},
        "/openapi/v3": {"paths": schemas.openapi_v3_paths()},
    }
    for path, items in resources.items():
        routes["/" + path] = {"kind": "APIResourceList", "groupVersion": path.removeprefix("api/").removeprefix(
            "apis/"), "resources": [{"name": n, "singularName": k.lower(), "namespaced": ns, "kind": k,
                                     "verbs": ["get", "list", "create", "patch"]} for n, k, ns in items]}
    return routes


@pytest.fixture(scope="module")
def discovery_server(schemas: Schemas) -> Iterator[str]:
    routes = _discovery(schemas)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = urlsplit(self.path).path
            if path in routes:
                body = json.dumps(routes[path]).encode()
            elif path == "/openapi/v2" and "protobuf" in (self.headers.get("Accept") or ""):
                body = schemas.openapi_v2_protobuf()
            elif path == "/openapi/v2":
                body = schemas.openapi_v2_json()
            elif path.startswith("/openapi/v3/"):
                body = schemas.openapi_v3_json(path.removeprefix("/openapi/v3/")) or b""
            else:
                body = b""
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _kubectl(server: str, *args: str) -> str:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl 1.32 is part of the test environment"
    result = subprocess.run([kubectl, "--server", server, *args], capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "KUBECONFIG": "/dev/null", "HOME": "/nonexistent"})
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("args", [("pod.spec.containers",), ("deployment.spec.strategy",),
                                  ("pod.spec", "--output", "plaintext-openapiv2")])
def test_kubectl_explain(discovery_server: str, args: tuple[str, ...]) -> None:
    out = _kubectl(discovery_server, "explain", *args)
    if args[0] == "pod.spec.containers":
        assert "KIND:       Pod" in out and "FIELD: containers <[]Container>" in out and "image\t<string>" in out
    elif args[0] == "deployment.spec.strategy":
        assert "GROUP:      apps" in out and "rollingUpdate\t<RollingUpdateDeployment>" in out
    else:
        assert "KIND:     Pod" in out and "containers\t<[]Object> -required-" in out, out


def test_kubectl_finds_server_side_field_validation(discovery_server: str, tmp_path: Any) -> None:
    """kubectl --validate=strict first asks /openapi/v3 whether PATCH takes fieldValidation; when the document
    says so it leaves validation to the server instead of falling back to the (protobuf) /openapi/v2 schema."""
    manifest = tmp_path / "deploy.json"
    manifest.write_text(json.dumps({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
                                    "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {
                                        "metadata": {"labels": {"a": "b"}},
                                        "spec": {"containers": [{"name": "c", "image": "i"}]}}}}))
    out = _kubectl(discovery_server, "create", "--dry-run=client", "--validate=strict", "-f", str(manifest))
    assert out.strip() == "deployment.apps/web created (dry run)"


def test_kubectl_client_side_validation_with_openapi_v2(discovery_server: str, tmp_path: Any) -> None:
    """A ``kind: List`` is validated client-side against the /openapi/v2 protobuf document."""
    manifest = tmp_path / "list.json"
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
           "spec": {"containers": [{"name": "c", "image": "i", "bogus": 1}]}}
    manifest.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": [pod]}))
    kubectl = shutil.which("kubectl")
    assert kubectl
    result = subprocess.run([kubectl, "--server", discovery_server, "create", "--dry-run=client",
                             "--validate=strict", "-f", str(manifest)], capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "KUBECONFIG": "/dev/null", "HOME": "/nonexistent"})
    assert result.returncode != 0
    assert 'ValidationError(Pod.spec.containers[0]): unknown field "bogus" in io.k8s.api.core.v1.Container' \
        in result.stderr, result.stderr
    del pod["spec"]["containers"][0]["bogus"]
    manifest.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": [pod]}))
    assert _kubectl(discovery_server, "create", "--dry-run=client", "--validate=strict", "-f",
                    str(manifest)).strip() == "pod/p created (dry run)"
