"""Raw HTTP behaviour kubectl and client-go depend on: version, health, discovery, content negotiation."""

from __future__ import annotations

import http.client
import json
import ssl

from tests.apiserver.conftest import Cluster


def request(cluster: Cluster, path: str, accept: str = "application/json", cert: bool = True,
            method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    ctx = ssl.create_default_context(cafile=str(cluster.pki / "ca.crt"))
    if cert:
        ctx.load_cert_chain(str(cluster.pki / "admin.crt"), str(cluster.pki / "admin.key"))
    conn = http.client.HTTPSConnection("127.0.0.1", cluster.port, context=ctx, timeout=30)
    try:
        conn.request(method, path, headers={"Accept": accept})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_version_health_and_anonymous(cluster: Cluster) -> None:
    status, _, body = request(cluster, "/version")
    assert status == 200 and json.loads(body)["gitVersion"] == "v1.32.0-ultraplane"
    for path in ("/healthz", "/livez", "/readyz"):
        assert request(cluster, path)[0:3:2] == (200, b"ok")
    status, _, body = request(cluster, "/api/v1/namespaces", cert=False)
    assert status == 401
    assert json.loads(body) == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                "message": "Unauthorized", "reason": "Unauthorized", "code": 401}


def test_aggregated_discovery(cluster: Cluster) -> None:
    accept = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
    status, headers, body = request(cluster, "/apis", accept)
    assert status == 200
    assert headers["content-type"] == "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
    groups = {item["metadata"]["name"]: item for item in json.loads(body)["items"]}
    assert {"apps", "batch", "coordination.k8s.io"} <= set(groups)
    deployments = next(r for r in groups["apps"]["versions"][0]["resources"] if r["resource"] == "deployments")
    assert deployments["scope"] == "Namespaced" and deployments["shortNames"] == ["deploy"]
    assert {s["subresource"] for s in deployments["subresources"]} == {"status", "scale"}
    status, _, body = request(cluster, "/api", accept)
    core = json.loads(body)["items"][0]
    assert core["metadata"]["name"] == ""
    pods = next(r for r in core["versions"][0]["resources"] if r["resource"] == "pods")
    assert pods["singularResource"] == "pod" and pods["categories"] == ["all"]
    legacy = json.loads(request(cluster, "/api/v1")[2])
    names = {r["name"]: r for r in legacy["resources"]}
    assert names["nodes"]["namespaced"] is False and names["pods/binding"]["kind"] == "Binding"


def test_table_and_partial_metadata(cluster: Cluster) -> None:
    status, _, body = request(cluster, "/api/v1/namespaces",
                              "application/json;as=Table;v=v1;g=meta.k8s.io,application/json")
    table = json.loads(body)
    assert status == 200 and table["kind"] == "Table"
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Status", "Age"]
    assert table["rows"][0]["object"]["kind"] == "PartialObjectMetadata"
    status, _, body = request(cluster, "/api/v1/namespaces/default",
                              "application/json;as=PartialObjectMetadata;v=v1;g=meta.k8s.io")
    partial = json.loads(body)
    assert partial["kind"] == "PartialObjectMetadata" and partial["metadata"]["name"] == "default"
    assert "spec" not in partial
    status, _, body = request(cluster, "/api/v1/namespaces",
                              "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io")
    assert json.loads(body)["kind"] == "PartialObjectMetadataList"


def test_unknown_paths_and_methods(cluster: Cluster) -> None:
    status, _, body = request(cluster, "/api/v1/nothings")
    assert status == 404
    assert json.loads(body)["message"] == "the server could not find the requested resource"
    status, _, body = request(cluster, "/api/v1/namespaces/default", method="OPTIONS")
    assert status == 405


def test_bad_bodies_get_kube_errors_and_the_server_stays_up(cluster: Cluster) -> None:
    ctx = ssl.create_default_context(cafile=str(cluster.pki / "ca.crt"))
    ctx.load_cert_chain(str(cluster.pki / "admin.crt"), str(cluster.pki / "admin.key"))

    def post(body: bytes, content_type: str = "application/json") -> tuple[int, dict]:
        conn = http.client.HTTPSConnection("127.0.0.1", cluster.port, context=ctx, timeout=30)
        try:
            conn.request("POST", "/api/v1/namespaces/default/configmaps", body=body,
                         headers={"Content-Type": content_type})
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read() or b"{}")
        finally:
            conn.close()

    status, body = post(b"{not json")
    assert status == 400 and body["reason"] == "BadRequest"
    assert body["message"].startswith("the object provided is unrecognized (must be of type ConfigMap)")
    status, body = post(b'{"apiVersion":"apps/v1","kind":"ConfigMap","metadata":{"name":"x"}}')
    assert (status, body["message"]) == (400, "the API version in the data (apps/v1) does not match the expected "
                                              "API version (v1)")
    status, body = post(b"x" * (3 * 1024 * 1024 + 1))
    assert (status, body["reason"], body["message"]) == (413, "RequestEntityTooLarge",
                                                         "Request entity too large: limit is 3145728")
    status, body = post(b"\x00\x01", "application/vnd.kubernetes.protobuf")
    assert status == 415
    assert request(cluster, "/readyz")[0] == 200


def test_metrics(cluster: Cluster) -> None:
    request(cluster, "/api/v1/namespaces/default")
    status, headers, body = request(cluster, "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    text = body.decode()
    assert ('apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="namespaces",'
            'scope="resource",subresource="",verb="GET",version="v1"}') in text
    assert "apiserver_request_duration_seconds_bucket{" in text
    assert 'apiserver_current_inflight_requests{request_kind="readOnly"} 1' in text


def test_openapi_v2_protobuf_negotiation(cluster: Cluster) -> None:
    """kubectl's client-side validation asks /openapi/v2 for the gnostic protobuf document."""
    proto = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"
    status, headers, body = request(cluster, "/openapi/v2", proto)
    assert status == 200
    assert headers["content-type"] == "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"
    assert body[:1] == b"\x0a" and b"io.k8s.api.core.v1.Pod" in body  # field 1 (swagger), then definitions
    status, headers, body = request(cluster, "/openapi/v2")
    assert status == 200 and json.loads(body)["swagger"] == "2.0"
