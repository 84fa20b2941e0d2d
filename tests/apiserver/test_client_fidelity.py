"""What the official Python client (and kubectl) see, pinned against a served `ultraplane up`.

Server-side apply as kube's structured-merge-diff does it (re-apply is a no-op, defaulted and
server-set fields are owned by nobody), ``create_from_yaml`` conflicts, watch streams that end with
the terminating chunk, and the aggregation layer (APIServices, availability, proxying to a real
HTTPS backend on loopback).
"""

from __future__ import annotations

import base64
import json
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config, utils
from kubernetes.client.rest import ApiException

from tests.apiserver.conftest import Cluster, inprocess_cluster

WAIT_S = 45.0
DEPLOYMENT = {
    "apiVersion": "apps/v1", "kind": "Deployment",
    "metadata": {"name": "nginx-app", "labels": {"app": "nginx"}},
    "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "nginx"}},
             "template": {"metadata": {"labels": {"app": "nginx"}},
                          "spec": {"containers": [{"name": "nginx", "image": "nginx:1.15.4",
                                                   "ports": [{"containerPort": 80}]}]}}}}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    # the controllers run: the deployment controller writes the objects the applies meet
    with inprocess_cluster("ultraplane-fidelity-", "--no-scheduler") as c:
        yield c


@pytest.fixture(scope="module")
def api(cluster: Cluster) -> Iterator[client.ApiClient]:
    api_client = config.new_client_from_config(str(cluster.kubeconfig))
    yield api_client
    api_client.close()


def wait_for(check: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def managers(obj: Any) -> set[tuple[str, str, str]]:
    return {(m.manager, m.operation, m.subresource or "") for m in obj.metadata.managed_fields or []}


def write_yaml(tmp: Path, name: str, docs: list[dict[str, Any]]) -> str:
    path = tmp / name
    path.write_text(yaml.safe_dump_all(docs))
    return str(path)


# ---------------------------------------------------------------------------------------------- apply
def test_create_then_server_side_apply_twice_is_idempotent(api: client.ApiClient, tmp_path: Path) -> None:
    apps = client.AppsV1Api(api)
    path = write_yaml(tmp_path, "dep.yaml", [DEPLOYMENT])
    utils.create_from_yaml(api, path)
    # the deployment controller writes its revision annotation (and status) first
    wait_for(lambda: (apps.read_namespaced_deployment("nginx-app", "default").metadata.annotations or {})
             .get("deployment.kubernetes.io/revision"), "the deployment controller's revision annotation")
    utils.create_from_yaml(api, path, apply=True)  # kube: no conflict, the values are the same
    first = apps.read_namespaced_deployment("nginx-app", "default")
    utils.create_from_yaml(api, path, apply=True)
    second = apps.read_namespaced_deployment("nginx-app", "default")
    # nothing changed (the controller may still write status meanwhile): same generation, same apply entry
    assert second.metadata.generation == first.metadata.generation
    assert [m for m in second.metadata.managed_fields if m.manager == "python-client"] == \
        [m for m in first.metadata.managed_fields if m.manager == "python-client"]
    assert second.spec.template.spec.containers[0].ports[0].protocol == "TCP"
    owners = managers(second)
    assert ("OpenAPI-Generator", "Update", "") in owners and ("python-client", "Apply", "") in owners
    raw = api.sanitize_for_serialization(second)
    for entry in raw["metadata"]["managedFields"]:
        fields = entry["fieldsV1"]
        if entry["manager"] == "python-client":
            # the applied set: the port is keyed by containerPort and its defaulted protocol
            container = fields["f:spec"]["f:template"]["f:spec"]["f:containers"]['k:{"name":"nginx"}']
            assert container["f:ports"] == {'k:{"containerPort":80,"protocol":"TCP"}': {
                ".": {}, "f:containerPort": {}}}
            assert "f:status" not in fields and "f:imagePullPolicy" not in container
        if entry["operation"] == "Update" and entry.get("subresource") != "status":
            assert "f:status" not in fields  # status is reset on the main resource: nobody owns it there
        if entry["operation"] == "Update" and entry["manager"] != "OpenAPI-Generator" \
                and entry.get("subresource") != "status":
            assert set(fields) == {"f:metadata"}, entry  # the controller owns only its annotations


def test_apply_conflict_names_the_owner_and_force_moves_it(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_config_map("default", client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="owned"), data={"a": "1", "b": "2"}))
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owned"}, "data": {"a": "9"}}
    with pytest.raises(ApiException) as conflict:
        core.patch_namespaced_config_map("owned", "default", body, field_manager="tool",
                                         _content_type="application/apply-patch+yaml")
    status = json.loads(conflict.value.body)
    assert conflict.value.status == 409 and status["reason"] == "Conflict"
    assert status["message"] == 'Apply failed with 1 conflict: conflict with "OpenAPI-Generator" using v1: .data.a'
    assert status["details"]["causes"] == [{"reason": "FieldManagerConflict", "field": ".data.a",
                                            "message": 'conflict with "OpenAPI-Generator" using v1'}]
    # the same value is no conflict; forcing moves data.a to the applier
    same = {**body, "data": {"b": "2"}}
    once = core.patch_namespaced_config_map("owned", "default", same, field_manager="tool",
                                            _content_type="application/apply-patch+yaml")
    twice = core.patch_namespaced_config_map("owned", "default", same, field_manager="tool",
                                             _content_type="application/apply-patch+yaml")
    assert twice.metadata.resource_version == once.metadata.resource_version  # a repeated apply writes nothing
    core.patch_namespaced_config_map("owned", "default", body, field_manager="tool", force=True,
                                     _content_type="application/apply-patch+yaml")
    got = api.sanitize_for_serialization(core.read_namespaced_config_map("owned", "default"))
    owners = {m["manager"]: m["fieldsV1"] for m in got["metadata"]["managedFields"]}
    assert got["data"] == {"a": "9", "b": "2"}
    assert owners["tool"] == {"f:data": {"f:a": {}}}  # b is no longer applied by tool: it stays, owned by the creator
    assert owners["OpenAPI-Generator"] == {"f:data": {".": {}, "f:b": {}}}


def test_server_allocated_fields_belong_to_nobody(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_service("default", client.V1Service(
        metadata=client.V1ObjectMeta(name="alloc"),
        spec=client.V1ServiceSpec(ports=[client.V1ServicePort(port=80)])))
    got = api.sanitize_for_serialization(core.read_namespaced_service("alloc", "default"))
    assert got["spec"]["clusterIP"]
    [entry] = got["metadata"]["managedFields"]
    spec_fields = entry["fieldsV1"]["f:spec"]
    # defaulted at decode: the creator's; allocated by the registry: nobody's (as in kube)
    assert "f:type" in spec_fields and "f:sessionAffinity" in spec_fields
    assert "f:clusterIP" not in spec_fields and "f:clusterIPs" not in spec_fields


# ---------------------------------------------------------------------------------------------- create_from_yaml
def test_create_from_yaml_reports_every_conflict_and_creates_the_rest(api: client.ApiClient, tmp_path: Path) -> None:
    core = client.CoreV1Api(api)
    docs = [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"yc-{i}"}} for i in range(3)]
    utils.create_from_yaml(api, write_yaml(tmp_path, "first.yaml", docs[:2]))
    with pytest.raises(utils.FailToCreateError) as failed:
        utils.create_from_yaml(api, write_yaml(tmp_path, "all.yaml", docs))
    assert [e.status for e in failed.value.api_exceptions] == [409, 409]
    one = ('Error from server (Conflict): {"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",'
           '"message":"configmaps \\"yc-%d\\" already exists","reason":"AlreadyExists",'
           '"details":{"name":"yc-%d","kind":"configmaps"},"code":409}\n')
    assert str(failed.value) == one % (0, 0) + one % (1, 1)  # kube's bodies end with a newline
    assert core.read_namespaced_config_map("yc-2", "default").metadata.name == "yc-2"


# ---------------------------------------------------------------------------------------------- watch streams
def test_watch_ends_with_the_terminating_chunk_at_its_timeout(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    for bookmarks in (False, True):
        started = time.monotonic()
        resp = core.list_namespaced_config_map("default", watch=True, timeout_seconds=3,
                                               allow_watch_bookmarks=bookmarks, _preload_content=False)
        body = resp.read()  # urllib3 raises ProtocolError("Response ended prematurely") on a bare close
        lines = [json.loads(line) for line in body.splitlines()]
        assert 2.5 < time.monotonic() - started < 10
        assert {e["type"] for e in lines} <= {"ADDED", "BOOKMARK"}
        # kube's cacher sends a bookmark 2 s before the deadline (here after about a second), not every minute
        assert [e["type"] for e in lines].count("BOOKMARK") == (1 if bookmarks else 0)


# ---------------------------------------------------------------------------------------------- aggregation
class Backend:
    """An aggregated API server on loopback: HTTPS with a certificate for wardle.default.svc, requiring
    a client certificate from the cluster CA (the API server's front-proxy client)."""

    def __init__(self, cluster_ca: Path) -> None:
        from ultraplane import pki

        self.dir = Path(tempfile.mkdtemp(prefix="wardle-"))
        ca = pki.ensure_ca(self.dir)
        self.ca_pem = ca.cert.read_bytes()
        cert = pki.issue(ca, self.dir, "wardle", "wardle", server_hosts=["wardle.default.svc"])
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert.cert), str(cert.key))
        ctx.load_verify_locations(str(cluster_ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
        self.seen: list[dict[str, Any]] = []
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                peer = self.connection.getpeercert() or {}
                subject = dict(x[0] for x in peer.get("subject", ()))
                backend.seen.append({"path": self.path, "user": self.headers.get("X-Remote-User"),
                                     "groups": self.headers.get_all("X-Remote-Group") or [],
                                     "authorization": self.headers.get("Authorization"),
                                     "client_cn": subject.get("commonName")})
                if self.path == "/apis/wardle.example.com/v1alpha1":
                    self.send_json({"kind": "APIResourceList", "apiVersion": "v1",
                                    "groupVersion": "wardle.example.com/v1alpha1",
                                    "resources": [{"name": "flunders", "singularName": "flunder", "namespaced": True,
                                                   "kind": "Flunder", "verbs": ["get", "list", "watch"]}]})
                elif self.path.startswith("/apis/wardle.example.com/v1alpha1/namespaces/default/flunders?watch"):
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for i in range(2):
                        line = json.dumps({"type": "ADDED", "object": {"kind": "Flunder", "metadata": {
                            "name": f"f{i}"}}}).encode() + b"\n"
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                    self.wfile.write(b"0\r\n\r\n")
                elif self.path.startswith("/apis/wardle.example.com/v1alpha1/namespaces/default/flunders"):
                    self.send_json({"kind": "FlunderList", "apiVersion": "wardle.example.com/v1alpha1",
                                    "metadata": {}, "items": [{"metadata": {"name": "seen-by",
                                                                            "annotations": {
                                                                                "user": self.headers.get(
                                                                                    "X-Remote-User")}}}]})
                else:
                    self.send_json({"kind": "Status", "code": 404}, 404)

            def send_json(self, body: Any, code: int = 200) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def raw_get(api: client.ApiClient, path: str, query: list[tuple[str, str]] | None = None) -> Any:
    """A GET through the client's own REST layer (urllib3 reads the whole chunked body)."""
    method, url, headers, body, post = api.param_serialize("GET", path, query_params=query or [],
                                                           auth_settings=["BearerToken"])
    return api.call_api(method, url, headers, body, post)


def available(reg: client.ApiregistrationV1Api, name: str) -> dict[str, Any] | None:
    obj = reg.api_client.sanitize_for_serialization(reg.read_api_service(name))
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == "Available"), None)


def test_local_apiservices_for_every_served_group_version(cluster: Cluster, api: client.ApiClient) -> None:
    reg = client.ApiregistrationV1Api(api)
    names = {a.metadata.name: a for a in reg.list_api_service().items}
    for name in ("v1.", "v1.apps", "v1.batch", "v1.rbac.authorization.k8s.io", "v1.coordination.k8s.io"):
        assert name in names and names[name].spec.service is None
        assert names[name].metadata.labels == {"kube-aggregator.kubernetes.io/automanaged": "onstart"}
    assert (names["v1."].spec.group_priority_minimum, names["v1."].spec.version_priority) == (18000, 1)
    assert (names["v1.apps"].spec.group_priority_minimum, names["v1.apps"].spec.version_priority) == (17800, 15)
    assert available(reg, "v1.apps") is not None
    cond = available(reg, "v1.apps") or {}
    assert (cond["status"], cond["reason"], cond["message"]) == (
        "True", "Local", "Local APIServices are always available")
    table = cluster.ok("get", "apiservices", "v1.apps", "v1.")
    assert table.split("\n")[0].split() == ["NAME", "SERVICE", "AVAILABLE", "AGE"]
    assert table.split("\n")[1].split()[:3] == ["v1.apps", "Local", "True"]
    assert any(g.name == "apiregistration.k8s.io" for g in client.ApisApi(api).get_api_versions().groups)


def test_apiservice_validation_and_missing_service(cluster: Cluster, api: client.ApiClient) -> None:
    reg = client.ApiregistrationV1Api(api)
    bad = {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService", "metadata": {"name": "v1.wrong.io"},
           "spec": {"group": "example.io", "version": "v1", "groupPriorityMinimum": 100, "versionPriority": 10,
                    "service": {"namespace": "default", "name": "nope"}}}
    with pytest.raises(ApiException) as invalid:
        reg.create_api_service(bad)
    assert invalid.value.status == 422
    assert json.loads(invalid.value.body)["message"] == (
        'APIService.apiregistration.k8s.io "v1.wrong.io" is invalid: metadata.name: Invalid value: "v1.wrong.io": '
        'must be `spec.version+"."+spec.group`: "v1.example.io"')
    bad["metadata"]["name"] = "v1.example.io"
    created = reg.create_api_service(bad)
    assert created.spec.service.port == 443  # defaulted
    cond = wait_for(lambda: available(reg, "v1.example.io"), "the Available condition")
    assert (cond["status"], cond["reason"], cond["message"]) == (
        "False", "ServiceNotFound", 'service/nope in "default" is not present')
    assert cluster.ok("get", "apiservice", "v1.example.io").split("\n")[1].split()[:4] == [
        "v1.example.io", "default/nope", "False", "(ServiceNotFound)"]
    out = cluster.kubectl("get", "--raw", "/apis/example.io/v1/things")
    assert out.returncode != 0 and "503" in out.stderr or "unable to handle" in out.stderr
    reg.delete_api_service("v1.example.io")


def test_aggregated_group_is_proxied_to_its_service(cluster: Cluster, api: client.ApiClient) -> None:
    backend = Backend(cluster.pki / "ca.crt")
    core = client.CoreV1Api(api)
    reg = client.ApiregistrationV1Api(api)
    try:
        core.create_namespaced_service("default", client.V1Service(
            metadata=client.V1ObjectMeta(name="wardle"),
            spec=client.V1ServiceSpec(ports=[client.V1ServicePort(name="https", port=443)])))
        core.create_namespaced_endpoints("default", client.V1Endpoints(
            metadata=client.V1ObjectMeta(name="wardle"),
            subsets=[client.V1EndpointSubset(addresses=[client.V1EndpointAddress(ip="127.0.0.1")],
                                             ports=[client.CoreV1EndpointPort(name="https", port=backend.port)])]))
        reg.create_api_service({
            "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
            "metadata": {"name": "v1alpha1.wardle.example.com"},
            "spec": {"group": "wardle.example.com", "version": "v1alpha1", "groupPriorityMinimum": 1000,
                     "versionPriority": 15, "service": {"namespace": "default", "name": "wardle", "port": 443},
                     "caBundle": base64.b64encode(backend.ca_pem).decode()}})
        cond = wait_for(lambda: (c := available(reg, "v1alpha1.wardle.example.com")) and c["status"] == "True"
                        and c, "the aggregated APIService to become available")
        assert (cond["reason"], cond["message"]) == ("Passed", "all checks passed")
        # discovery lists the aggregated group; its resources come from the backend
        wait_for(lambda: "flunders" in cluster.ok("api-resources", "--api-group=wardle.example.com"),
                 "flunders in discovery")
        listed = json.loads(cluster.ok("get", "--raw", "/apis/wardle.example.com/v1alpha1/namespaces/default/flunders"))
        assert listed["items"][0]["metadata"]["annotations"]["user"] == "kubernetes-admin"
        seen = [s for s in backend.seen if s["path"].startswith("/apis/wardle.example.com/v1alpha1/namespaces")]
        assert seen[-1]["client_cn"] == "front-proxy-client" and seen[-1]["authorization"] is None
        assert "system:masters" in seen[-1]["groups"]
        # a proxied watch streams through and ends cleanly
        resp = raw_get(api, "/apis/wardle.example.com/v1alpha1/namespaces/default/flunders", [("watch", "true")])
        assert resp.status == 200
        assert [json.loads(line)["object"]["metadata"]["name"] for line in resp.read().splitlines()] == ["f0", "f1"]
        # no endpoints: unavailable, and kube's plain 503
        core.delete_namespaced_endpoints("wardle", "default")
        cond = wait_for(lambda: (c := available(reg, "v1alpha1.wardle.example.com")) and c["status"] == "False"
                        and c, "the APIService to become unavailable")
        assert cond["reason"] in ("EndpointsNotFound", "MissingEndpoints")
        down = raw_get(api, "/apis/wardle.example.com/v1alpha1/namespaces/default/flunders")
        assert down.status == 503 and down.read() == b"service unavailable\n"
    finally:
        backend.stop()
        for delete in (lambda: reg.delete_api_service("v1alpha1.wardle.example.com"),
                       lambda: core.delete_namespaced_service("wardle", "default")):
            try:
                delete()
            except ApiException:
                pass


def test_watch_ends_with_the_terminating_chunk_on_shutdown(cluster: Cluster, api: client.ApiClient) -> None:
    """Last in the module: stops the server under open watches."""
    core = client.CoreV1Api(api)
    results: dict[int, Any] = {}

    def watch(i: int, kwargs: dict[str, Any]) -> None:
        resp = core.list_namespaced_config_map("default", watch=True, _preload_content=False, **kwargs)
        try:
            results[i] = resp.read()
        except Exception as exc:  # noqa: BLE001 - the assertion below shows it
            results[i] = exc

    threads = [threading.Thread(target=watch, args=(i, kw)) for i, kw in
               enumerate([{}, {"allow_watch_bookmarks": True}, {"timeout_seconds": 300}])]
    for t in threads:
        t.start()
    time.sleep(1.0)
    cluster.stop()
    for t in threads:
        t.join(30)
    assert all(isinstance(r, bytes) for r in results.values()) and len(results) == 3, results

