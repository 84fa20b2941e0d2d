"""The OCI Distribution Spec v1.1 workflows (pull, push, content discovery, content management) against a
real `ultraplane registry` subprocess over TLS with token auth, in the spirit of the spec's conformance suite."""

from __future__ import annotations

import json
import os
import random
import socket
import ssl
from pathlib import Path

from tests.registry.conftest import Client, RegistryProcess
from tests.registry.images import build_image, sha256
from tests.registry.oci import (
    EMPTY_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    artifact,
    error_codes,
    push_blob,
    push_image,
    push_manifest,
)

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"


def test_base_endpoint_requires_a_token_then_answers(registry: RegistryProcess, admin: Client) -> None:
    anonymous = Client(registry.url, registry.ca_cert)
    bare = anonymous.session.get(registry.url + "/v2/", verify=registry.ca_cert)
    assert bare.status_code == 401
    assert bare.headers["WWW-Authenticate"].startswith(f'Bearer realm="{registry.url}/token"')
    assert error_codes(bare) == ["UNAUTHORIZED"]
    response = admin.request("GET", "/v2/")
    assert response.status_code == 200
    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"


def test_monolithic_push_then_pull_by_tag_and_digest(admin: Client) -> None:
    name = "pull/monolithic"
    image = build_image([{"etc/os-release": b"ID=test\n"}, {"data.bin": random.randbytes(200_000)}])
    for data in image.blobs().values():
        response = admin.request("POST", f"/v2/{name}/blobs/uploads/", params={"digest": sha256(data)}, data=data)
        assert response.status_code == 201
        assert response.headers["Location"] == f"/v2/{name}/blobs/{sha256(data)}"
        assert response.headers["Docker-Content-Digest"] == sha256(data)
    put = push_manifest(admin, name, "v1", image.manifest)
    assert put.headers["Docker-Content-Digest"] == image.digest
    assert put.headers["Location"] == f"/v2/{name}/manifests/{image.digest}"

    for reference in ("v1", image.digest):
        got = admin.request("GET", f"/v2/{name}/manifests/{reference}", headers={"Accept": OCI_MANIFEST})
        assert got.status_code == 200
        assert got.content == image.manifest
        assert got.headers["Content-Type"] == OCI_MANIFEST
        assert got.headers["Docker-Content-Digest"] == image.digest
        head = admin.request("HEAD", f"/v2/{name}/manifests/{reference}")
        assert head.status_code == 200 and head.content == b""
        assert int(head.headers["Content-Length"]) == len(image.manifest)
    for digest, data in image.blobs().items():
        head = admin.request("HEAD", f"/v2/{name}/blobs/{digest}")
        assert head.status_code == 200 and int(head.headers["Content-Length"]) == len(data)
        assert head.headers["Docker-Content-Digest"] == digest
        assert admin.request("GET", f"/v2/{name}/blobs/{digest}").content == data


def test_post_then_put_upload(admin: Client) -> None:
    name = "push/post-put"
    data = random.randbytes(70_000)
    started = admin.request("POST", f"/v2/{name}/blobs/uploads/")
    assert started.status_code == 202
    location = started.headers["Location"]
    assert location.startswith(f"/v2/{name}/blobs/uploads/")
    assert started.headers["Range"] == "0-0"
    finished = admin.request("PUT", location, params={"digest": sha256(data)}, data=data,
                             headers={"Content-Type": "application/octet-stream"})
    assert finished.status_code == 201
    assert finished.headers["Docker-Content-Digest"] == sha256(data)
    assert admin.request("GET", f"/v2/{name}/blobs/{sha256(data)}").content == data
    assert admin.request("GET", location).status_code == 404  # the session is gone once committed


def test_chunked_upload_refuses_an_out_of_order_chunk_with_416(admin: Client) -> None:
    name = "push/chunked"
    data = random.randbytes(300_000)
    first, second, third = data[:100_000], data[100_000:250_000], data[250_000:]
    location = admin.request("POST", f"/v2/{name}/blobs/uploads/").headers["Location"]

    patched = admin.request("PATCH", location, data=first, headers={
        "Content-Type": "application/octet-stream", "Content-Range": "0-99999"})
    assert patched.status_code == 202
    assert patched.headers["Range"] == "0-99999"
    location = patched.headers["Location"]

    skipped = admin.request("PATCH", location, data=third, headers={
        "Content-Type": "application/octet-stream", "Content-Range": "250000-299999"})
    assert skipped.status_code == 416
    assert error_codes(skipped) == ["BLOB_UPLOAD_INVALID"]
    assert skipped.headers["Range"] == "0-99999"

    status = admin.request("GET", location)
    assert status.status_code == 204 and status.headers["Range"] == "0-99999"
    assert admin.request("PATCH", location, data=second, headers={
        "Content-Type": "application/octet-stream", "Content-Range": "100000-249999"}).status_code == 202
    finished = admin.request("PUT", location, params={"digest": sha256(data)}, data=third, headers={
        "Content-Type": "application/octet-stream", "Content-Range": "250000-299999"})
    assert finished.status_code == 201, finished.text
    assert admin.request("GET", f"/v2/{name}/blobs/{sha256(data)}").content == data


def test_wrong_digest_stores_nothing(registry: RegistryProcess, admin: Client) -> None:
    name = "push/wrong-digest"
    data = b"the real content " * 1000
    claimed = sha256(b"something else")
    response = admin.request("POST", f"/v2/{name}/blobs/uploads/", params={"digest": claimed}, data=data)
    assert response.status_code == 400 and error_codes(response) == ["DIGEST_INVALID"]
    for digest in (claimed, sha256(data)):
        assert admin.request("HEAD", f"/v2/{name}/blobs/{digest}").status_code == 404
        assert not (registry.data_dir / "storage" / "blobs" / "sha256" / digest[7:9] / digest[7:]).exists()
    location = admin.request("POST", f"/v2/{name}/blobs/uploads/").headers["Location"]
    assert admin.request("PUT", location, params={"digest": claimed}, data=data).status_code == 400
    missing = admin.request("PUT", admin.request("POST", f"/v2/{name}/blobs/uploads/").headers["Location"])
    assert missing.status_code == 400 and error_codes(missing) == ["DIGEST_INVALID"]
    bad = admin.request("POST", f"/v2/{name}/blobs/uploads/", params={"digest": "sha256:1234"}, data=data)
    assert bad.status_code == 400 and error_codes(bad) == ["DIGEST_INVALID"]


def test_truncated_upload_is_discarded_and_the_server_keeps_serving(registry: RegistryProcess,
                                                                     admin: Client) -> None:
    name = "push/truncated"
    data = random.randbytes(50_000)
    token = admin.token(f"repository:{name}:pull,push")
    host, port = registry.host.split(":")
    context = ssl.create_default_context(cafile=str(registry.ca_cert))
    with socket.create_connection((host, int(port))) as raw, context.wrap_socket(raw, server_hostname=host) as tls:
        tls.sendall((f"POST /v2/{name}/blobs/uploads/?digest={sha256(data)} HTTP/1.1\r\nHost: {registry.host}\r\n"
                     f"Authorization: Bearer {token}\r\nContent-Length: {len(data)}\r\n\r\n").encode()
                    + data[:20_000])
    assert admin.request("HEAD", f"/v2/{name}/blobs/{sha256(data)}").status_code == 404
    assert push_blob(admin, name, data) == sha256(data)


def test_range_requests_on_blobs(admin: Client) -> None:
    name = "pull/range"
    data = bytes(range(256)) * 100
    digest = push_blob(admin, name, data)
    partial = admin.request("GET", f"/v2/{name}/blobs/{digest}", headers={"Range": "bytes=10-19"})
    assert partial.status_code == 206 and partial.content == data[10:20]
    assert partial.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
    suffix = admin.request("GET", f"/v2/{name}/blobs/{digest}", headers={"Range": "bytes=-5"})
    assert suffix.status_code == 206 and suffix.content == data[-5:]
    open_ended = admin.request("GET", f"/v2/{name}/blobs/{digest}", headers={"Range": "bytes=25000-"})
    assert open_ended.content == data[25000:]
    beyond = admin.request("GET", f"/v2/{name}/blobs/{digest}", headers={"Range": f"bytes={len(data)}-"})
    assert beyond.status_code == 416 and beyond.headers["Content-Range"] == f"bytes */{len(data)}"


def test_cross_repository_mount(admin: Client) -> None:
    data = random.randbytes(10_000)
    digest = push_blob(admin, "mount/source", data)
    # Mounting needs pull on the source too: a token for the target alone gets an upload session instead.
    unauthorized_source = admin.request("POST", "/v2/mount/target/blobs/uploads/",
                                        params={"mount": digest, "from": "mount/source"})
    assert unauthorized_source.status_code == 202
    token = admin.token("repository:mount/target:pull,push", "repository:mount/source:pull")
    mounted = admin.request("POST", "/v2/mount/target/blobs/uploads/", params={"mount": digest, "from": "mount/source"},
                            headers={"Authorization": f"Bearer {token}"})
    assert mounted.status_code == 201
    assert mounted.headers["Location"] == f"/v2/mount/target/blobs/{digest}"
    assert mounted.headers["Docker-Content-Digest"] == digest
    assert admin.request("GET", f"/v2/mount/target/blobs/{digest}").content == data
    # A blob the source does not hold falls back to an ordinary upload session.
    fallback = admin.request("POST", "/v2/mount/other/blobs/uploads/",
                             params={"mount": sha256(b"absent"), "from": "mount/source"})
    assert fallback.status_code == 202 and "/blobs/uploads/" in fallback.headers["Location"]


def test_tags_list_with_pagination(admin: Client) -> None:
    name = "discovery/tags"
    image = build_image([{"a": b"a"}])
    tags = [f"t{i:02d}" for i in range(12)]
    shuffled = tags[:]
    random.shuffle(shuffled)
    push_image(admin, name, shuffled[0], image)
    for tag in shuffled[1:]:
        push_manifest(admin, name, tag, image.manifest)
    everything = admin.request("GET", f"/v2/{name}/tags/list")
    assert everything.json() == {"name": name, "tags": tags}
    assert "Link" not in everything.headers

    pages, url = [], f"/v2/{name}/tags/list?n=5"
    while url:
        page = admin.request("GET", url)
        pages.append(page.json()["tags"])
        link = page.headers.get("Link")
        url = link.split(";")[0].strip("<>") if link else ""
        if link:
            assert link.endswith('rel="next"')
    assert pages == [tags[0:5], tags[5:10], tags[10:12]]
    after = admin.request("GET", f"/v2/{name}/tags/list", params={"n": 3, "last": "t04"})
    assert after.json()["tags"] == ["t05", "t06", "t07"]
    unknown = admin.request("GET", "/v2/discovery/nothing-here/tags/list")
    assert unknown.status_code == 404 and error_codes(unknown) == ["NAME_UNKNOWN"]


def test_manifest_and_blob_delete(admin: Client) -> None:
    name = "management/delete"
    image = build_image([{"x": b"x"}])
    push_image(admin, name, "keep", image)
    push_manifest(admin, name, "drop", image.manifest)
    assert admin.request("DELETE", f"/v2/{name}/manifests/drop").status_code == 202
    gone = admin.request("GET", f"/v2/{name}/manifests/drop")
    assert gone.status_code == 404 and error_codes(gone) == ["MANIFEST_UNKNOWN"]
    assert admin.request("GET", f"/v2/{name}/manifests/keep").status_code == 200

    assert admin.request("DELETE", f"/v2/{name}/manifests/{image.digest}").status_code == 202
    for reference in ("keep", image.digest):
        assert admin.request("GET", f"/v2/{name}/manifests/{reference}").status_code == 404
    assert admin.request("GET", f"/v2/{name}/tags/list").json()["tags"] == []
    again = admin.request("DELETE", f"/v2/{name}/manifests/{image.digest}")
    assert again.status_code == 404 and error_codes(again) == ["MANIFEST_UNKNOWN"]

    layer = sha256(image.layers[0])
    assert admin.request("DELETE", f"/v2/{name}/blobs/{layer}").status_code == 202
    assert admin.request("HEAD", f"/v2/{name}/blobs/{layer}").status_code == 404
    missing = admin.request("DELETE", f"/v2/{name}/blobs/{layer}")
    assert missing.status_code == 404 and error_codes(missing) == ["BLOB_UNKNOWN"]


def test_manifest_errors(admin: Client) -> None:
    name = "push/manifest-errors"
    image = build_image([{"y": b"y"}])
    unknown_blobs = admin.request("PUT", f"/v2/{name}/manifests/v1", data=image.manifest,
                                  headers={"Content-Type": OCI_MANIFEST})
    assert unknown_blobs.status_code == 400 and error_codes(unknown_blobs) == ["MANIFEST_BLOB_UNKNOWN"] * 2
    push_image(admin, name, "v1", image)
    not_json = admin.request("PUT", f"/v2/{name}/manifests/v2", data=b"{not json",
                             headers={"Content-Type": OCI_MANIFEST})
    assert not_json.status_code == 400 and error_codes(not_json) == ["MANIFEST_INVALID"]
    wrong_schema = json.loads(image.manifest) | {"schemaVersion": 1}
    refused = admin.request("PUT", f"/v2/{name}/manifests/v2", data=json.dumps(wrong_schema),
                            headers={"Content-Type": OCI_MANIFEST})
    assert error_codes(refused) == ["MANIFEST_INVALID"]
    mismatch = admin.request("PUT", f"/v2/{name}/manifests/v2", data=image.manifest,
                             headers={"Content-Type": DOCKER_MANIFEST})
    assert mismatch.status_code == 400 and error_codes(mismatch) == ["MANIFEST_INVALID"]
    unknown_type = admin.request("PUT", f"/v2/{name}/manifests/v2", data=b'{"schemaVersion": 2}',
                                 headers={"Content-Type": "application/vnd.example.unknown+json"})
    assert error_codes(unknown_type) == ["MANIFEST_INVALID"]
    wrong_digest = admin.request("PUT", f"/v2/{name}/manifests/{sha256(b'other')}", data=image.manifest,
                                 headers={"Content-Type": OCI_MANIFEST})
    assert wrong_digest.status_code == 400 and error_codes(wrong_digest) == ["DIGEST_INVALID"]
    missing = admin.request("GET", f"/v2/{name}/manifests/nope")
    assert missing.status_code == 404 and error_codes(missing) == ["MANIFEST_UNKNOWN"]
    assert admin.request("GET", f"/v2/{name}/tags/list").json()["tags"] == ["v1"]
    unsupported = admin.request("PATCH", f"/v2/{name}/manifests/v1", data=b"{}")
    assert unsupported.status_code == 405 and error_codes(unsupported) == ["UNSUPPORTED"]


def test_upload_sessions_unknown_cancelled_and_foreign(admin: Client) -> None:
    name = "push/sessions"
    unknown = admin.request("PATCH", f"/v2/{name}/blobs/uploads/00000000-0000-0000-0000-000000000000", data=b"x")
    assert unknown.status_code == 404 and error_codes(unknown) == ["BLOB_UPLOAD_UNKNOWN"]
    location = admin.request("POST", f"/v2/{name}/blobs/uploads/").headers["Location"]
    session = location.rsplit("/", 1)[1]
    foreign = admin.request("GET", f"/v2/push/elsewhere/blobs/uploads/{session}")
    assert foreign.status_code == 404 and error_codes(foreign) == ["BLOB_UPLOAD_UNKNOWN"]
    assert admin.request("DELETE", location).status_code == 204
    assert error_codes(admin.request("GET", location)) == ["BLOB_UPLOAD_UNKNOWN"]


def _raw_request(registry: RegistryProcess, token: str, target: str) -> tuple[int, bytes]:
    """Send `target` byte for byte (HTTP libraries would normalize the dot segments away)."""
    host, port = registry.host.split(":")
    context = ssl.create_default_context(cafile=str(registry.ca_cert))
    with socket.create_connection((host, int(port))) as raw, context.wrap_socket(raw, server_hostname=host) as tls:
        tls.sendall(f"GET {target} HTTP/1.1\r\nHost: {registry.host}\r\nAuthorization: Bearer {token}\r\n"
                    "Connection: close\r\n\r\n".encode())
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_names_and_references_are_validated(registry: RegistryProcess, admin: Client) -> None:
    admin.request("GET", "/v2/")
    token = admin.tokens[""]
    for target in ("/v2/../../etc/manifests/passwd", "/v2/a/../../../tmp/blobs/sha256:" + "0" * 64,
                   "/v2/%2e%2e/%2e%2e/manifests/latest", "/v2/UPPER/manifests/latest",
                   "/v2/a//b/tags/list", "/v2/-lead/tags/list"):
        status, body = _raw_request(registry, token, target)
        assert status == 400, target
        assert json.loads(body)["errors"][0]["code"] == "NAME_INVALID"
    token = admin.token("repository:ok:pull")
    status, body = _raw_request(registry, token, "/v2/ok/manifests/..%2f..%2fx")
    assert status == 400 and json.loads(body)["errors"][0]["code"] == "TAG_INVALID"
    status, body = _raw_request(registry, token, "/v2/ok/blobs/sha256:..%2f..%2fetc")
    assert status == 400 and json.loads(body)["errors"][0]["code"] == "DIGEST_INVALID"
    assert sorted(os.listdir(registry.data_dir)) == ["archive", "audit", "auth", "certs.d", "lifecycle", "pki",
                                                     "signing", "storage"]
    # nothing written outside the data dir by the traversal attempts above (other tests' temp dirs, such
    # as etcd data dirs, share the parent: look only for what these targets would have created)
    parent = Path(registry.data_dir).parent
    assert not (parent / "etc").exists() and not (parent / "tmp").exists() and not (parent / "x").exists()


def test_referrers_api(admin: Client) -> None:
    name = "discovery/referrers"
    image = build_image([{"bin/app": b"app"}])
    push_image(admin, name, "v1", image)
    push_blob(admin, name, EMPTY_CONFIG)
    subject = (image.digest, len(image.manifest))
    signature = artifact(subject, artifact_type="application/vnd.example.signature",
                         annotations={"org.example.signer": "ci"})
    sbom = artifact(subject, config_type="application/vnd.example.sbom.config")
    put = push_manifest(admin, name, sha256(signature), signature)
    assert put.headers["OCI-Subject"] == image.digest
    push_manifest(admin, name, sha256(sbom), sbom)

    listed = admin.request("GET", f"/v2/{name}/referrers/{image.digest}")
    assert listed.status_code == 200 and listed.headers["Content-Type"] == OCI_INDEX
    index = listed.json()
    assert index["schemaVersion"] == 2 and index["mediaType"] == OCI_INDEX
    by_digest = {d["digest"]: d for d in index["manifests"]}
    assert by_digest == {
        sha256(signature): {"mediaType": OCI_MANIFEST, "digest": sha256(signature), "size": len(signature),
                            "artifactType": "application/vnd.example.signature",
                            "annotations": {"org.example.signer": "ci"}},
        sha256(sbom): {"mediaType": OCI_MANIFEST, "digest": sha256(sbom), "size": len(sbom),
                       "artifactType": "application/vnd.example.sbom.config"},
    }
    filtered = admin.request("GET", f"/v2/{name}/referrers/{image.digest}",
                             params={"artifactType": "application/vnd.example.signature"})
    assert filtered.headers["OCI-Filters-Applied"] == "artifactType"
    assert [d["digest"] for d in filtered.json()["manifests"]] == [sha256(signature)]

    # A referrer may arrive before its subject: accepted, and listed under the missing subject.
    absent = sha256(b"not pushed yet")
    early = artifact((absent, 123), artifact_type="application/vnd.example.early")
    assert push_manifest(admin, name, sha256(early), early).headers["OCI-Subject"] == absent
    assert [d["digest"] for d in admin.request("GET", f"/v2/{name}/referrers/{absent}").json()["manifests"]] \
        == [sha256(early)]

    nothing = admin.request("GET", f"/v2/{name}/referrers/{sha256(b'nobody')}")
    assert nothing.status_code == 200 and nothing.json()["manifests"] == []
    assert admin.request("DELETE", f"/v2/{name}/manifests/{sha256(signature)}").status_code == 202
    remaining = admin.request("GET", f"/v2/{name}/referrers/{image.digest}").json()["manifests"]
    assert [d["digest"] for d in remaining] == [sha256(sbom)]
    invalid = admin.request("GET", f"/v2/{name}/referrers/sha256:nothex")
    assert invalid.status_code == 400 and error_codes(invalid) == ["DIGEST_INVALID"]


def test_docker_schema2_manifest_and_manifest_list(admin: Client) -> None:
    name = "push/docker"
    amd64 = build_image([{"arch": b"amd64"}], docker=True)
    arm64 = build_image([{"arch": b"arm64"}], docker=True)
    push_image(admin, name, "amd64", amd64)
    manifest_list = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": [
        {"mediaType": DOCKER_MANIFEST, "digest": amd64.digest, "size": len(amd64.manifest),
         "platform": {"architecture": "amd64", "os": "linux"}},
        {"mediaType": DOCKER_MANIFEST, "digest": arm64.digest, "size": len(arm64.manifest),
         "platform": {"architecture": "arm64", "os": "linux"}},
    ]}).encode()
    early = admin.request("PUT", f"/v2/{name}/manifests/multi", data=manifest_list,
                          headers={"Content-Type": DOCKER_LIST})
    assert early.status_code == 400 and error_codes(early) == ["MANIFEST_BLOB_UNKNOWN"]
    push_image(admin, name, "arm64", arm64)
    push_manifest(admin, name, "multi", manifest_list, DOCKER_LIST)
    got = admin.request("GET", f"/v2/{name}/manifests/multi")
    assert got.headers["Content-Type"] == DOCKER_LIST and got.content == manifest_list
    assert admin.request("GET", f"/v2/{name}/manifests/amd64").headers["Content-Type"] == DOCKER_MANIFEST

    oci_index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": DOCKER_MANIFEST, "digest": amd64.digest, "size": len(amd64.manifest)}]}).encode()
    push_manifest(admin, name, "index", oci_index, OCI_INDEX)
    assert admin.request("GET", f"/v2/{name}/manifests/index").headers["Content-Type"] == OCI_INDEX


def _raw_exchange(registry: RegistryProcess, payload: bytes) -> bytes:
    host, port = registry.host.split(":")
    context = ssl.create_default_context(cafile=str(registry.ca_cert))
    with socket.create_connection((host, int(port))) as raw, context.wrap_socket(raw, server_hostname=host) as tls:
        tls.sendall(payload)
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
    return answer


def test_malformed_and_oversized_requests_get_an_error_and_the_server_keeps_serving(
        registry: RegistryProcess, admin: Client) -> None:
    long_url = b"GET /v2/" + b"a" * 20_000 + b"/tags/list HTTP/1.1\r\nHost: x\r\n\r\n"
    assert _raw_exchange(registry, long_url).startswith(b"HTTP/1.1 414 ")
    huge_headers = b"GET /v2/ HTTP/1.1\r\nHost: x\r\n" + b"X-Filler: " + b"b" * 70_000 + b"\r\n\r\n"
    assert _raw_exchange(registry, huge_headers).startswith(b"HTTP/1.1 431 ")
    assert _raw_exchange(registry, b"NOT HTTP AT ALL\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert admin.request("GET", "/v2/").status_code == 200
