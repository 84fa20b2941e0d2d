"""Checks reproduced from the OCI distribution-spec conformance suite (conformance/run.go and api.go in
github.com/opencontainers/distribution-spec): its blob workflows for sha256 and sha512, its range table, its
data sets (large manifest, empty and nested indexes, artifacts, subjects present and missing), and its
delete-then-HEAD atomicity checks."""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any

import pytest

from tests.registry.conftest import Client
from tests.registry.oci import OCI_INDEX, OCI_MANIFEST, error_codes

EMPTY_JSON = "application/vnd.oci.empty.v1+json"
EXAMPLE_TYPE = "application/vnd.example.config.v1+json"
CHUNK = 2048


def digest(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def location(client: Client, name: str) -> str:
    started = client.request("POST", f"/v2/{name}/blobs/uploads/", headers={"Content-Length": "0"})
    assert started.status_code == 202
    return str(started.headers["Location"])


def verify_blob(client: Client, name: str, data: bytes, dig: str) -> None:
    head = client.request("HEAD", f"/v2/{name}/blobs/{dig}")
    assert head.status_code == 200 and int(head.headers["Content-Length"]) == len(data)
    got = client.request("GET", f"/v2/{name}/blobs/{dig}")
    assert got.status_code == 200 and got.content == data
    assert got.headers["Docker-Content-Digest"] == dig


def delete_blob_atomically(client: Client, name: str, dig: str) -> None:
    assert client.request("DELETE", f"/v2/{name}/blobs/{dig}").status_code == 202
    assert client.request("HEAD", f"/v2/{name}/blobs/{dig}").status_code == 404


def push_chunked(client: Client, name: str, data: bytes, dig: str, *, out_of_order: bool,
                 put_last_chunk: bool) -> Any:
    """The suite's BlobPatchChunked: three chunks, optionally with a wrong chunk (416) and a GET to recover
    before each, optionally sending the last chunk with the PUT."""
    loc = location(client, name)
    size = max(len(data) // 3 + 1, CHUNK)
    last = -1
    response = None
    while last < len(data) - 1:
        if out_of_order:
            bad_start = last + 1 + size
            if bad_start >= len(data):
                bad_start = 0
            bad_last = min(bad_start + size - 1, len(data) - 1)
            method = "PUT" if put_last_chunk and bad_last == len(data) - 1 else "PATCH"
            params = {"digest": dig} if method == "PUT" else None
            refused = client.request(method, loc, params=params, data=data[bad_start:bad_last + 1],
                                     headers={"Content-Range": f"{bad_start}-{bad_last}"})
            assert refused.status_code == 416 and error_codes(refused) == ["BLOB_UPLOAD_INVALID"]
            status = client.request("GET", loc)
            assert status.status_code == 204
            if last >= 0:
                assert status.headers["Range"] == f"0-{last}"
            loc = status.headers["Location"]
        start, last = last + 1, min(last + size, len(data) - 1)
        chunk = data[start:last + 1]
        headers = {"Content-Range": f"{start}-{last}", "Content-Type": "application/octet-stream"}
        if put_last_chunk and last == len(data) - 1:
            response = client.request("PUT", loc, params={"digest": dig}, data=chunk, headers=headers)
        else:
            patched = client.request("PATCH", loc, data=chunk, headers=headers)
            assert patched.status_code == 202
            loc = patched.headers["Location"]
    if not put_last_chunk:
        response = client.request("PUT", loc, params={"digest": dig}, headers={"Content-Length": "0"})
    return response


@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
def test_blob_push_workflows(admin: Client, algorithm: str) -> None:
    name, other = f"conformance/blobs-{algorithm}", f"conformance/blobs-{algorithm}-2"

    def blob(size: int = 512) -> tuple[bytes, str]:
        data = random.randbytes(size)
        return data, digest(data, algorithm)

    data, dig = blob()
    assert admin.request("GET", f"/v2/{name}/blobs/{dig}").status_code == 404

    data, dig = blob()  # post only
    assert admin.request("POST", f"/v2/{name}/blobs/uploads/", params={"digest": dig}, data=data).status_code == 201
    verify_blob(admin, name, data, dig)
    delete_blob_atomically(admin, name, dig)

    data, dig = blob()  # post+put
    assert admin.request("PUT", location(admin, name), params={"digest": dig}, data=data).status_code == 201
    verify_blob(admin, name, data, dig)

    data, dig = blob()  # stream: one PATCH without Content-Range, then an empty PUT
    streamed = admin.request("PATCH", location(admin, name), data=data,
                             headers={"Content-Type": "application/octet-stream"})
    assert streamed.status_code == 202
    assert admin.request("PUT", streamed.headers["Location"], params={"digest": dig}).status_code == 201
    verify_blob(admin, name, data, dig)

    for out_of_order in (False, True):
        for put_last_chunk in (False, True):
            data, dig = blob(CHUNK * 3 - 5)
            done = push_chunked(admin, name, data, dig, out_of_order=out_of_order, put_last_chunk=put_last_chunk)
            assert done.status_code == 201 and done.headers["Docker-Content-Digest"] == dig
            verify_blob(admin, name, data, dig)

    data, dig = blob()  # mount from a repository holding the blob
    assert admin.request("POST", f"/v2/{other}/blobs/uploads/", params={"digest": dig}, data=data).status_code == 201
    token = admin.token(f"repository:{name}:pull,push", f"repository:{other}:pull")
    mounted = admin.request("POST", f"/v2/{name}/blobs/uploads/", params={"mount": dig, "from": other},
                            headers={"Authorization": f"Bearer {token}"})
    assert mounted.status_code == 201
    verify_blob(admin, name, data, dig)

    data, dig = blob()  # post then cancel
    loc = location(admin, name)
    assert admin.request("DELETE", loc).status_code == 204
    assert admin.request("GET", loc).status_code == 404

    for content in (b"", b"{}"):
        dig = digest(content, algorithm)
        assert admin.request("POST", f"/v2/{name}/blobs/uploads/", params={"digest": dig},
                             data=content).status_code == 201
        verify_blob(admin, name, content, dig)
        delete_blob_atomically(admin, name, dig)

    for mode in ("post only", "post+put", "chunked", "chunked and put chunk", "stream"):
        data, dig = blob(CHUNK * 3 - 5)
        data += b"oh no"  # the suite corrupts the bytes after computing the digest
        if mode == "post only":
            bad = admin.request("POST", f"/v2/{name}/blobs/uploads/", params={"digest": dig}, data=data)
        elif mode == "post+put":
            bad = admin.request("PUT", location(admin, name), params={"digest": dig}, data=data)
        elif mode == "stream":
            loc = admin.request("PATCH", location(admin, name), data=data).headers["Location"]
            bad = admin.request("PUT", loc, params={"digest": dig})
        else:
            bad = push_chunked(admin, name, data, dig, out_of_order=False,
                               put_last_chunk=mode == "chunked and put chunk")
        assert bad.status_code == 400 and error_codes(bad) == ["DIGEST_INVALID"], mode
        assert admin.request("HEAD", f"/v2/{name}/blobs/{dig}").status_code == 404


def test_range_table(admin: Client) -> None:
    name = "conformance/range"
    body = random.randbytes(2048)
    dig = digest(body)
    admin.request("POST", f"/v2/{name}/blobs/uploads/", params={"digest": dig}, data=body)
    table = [("bytes=500-1499", body[500:1500], "bytes 500-1499/2048"),
             ("bytes=500-", body[500:], "bytes 500-2047/2048"),
             ("bytes=-500", body[-500:], "bytes 1548-2047/2048"),
             ("bytes=2000-5000", body[2000:], "bytes 2000-2047/2048")]
    for header, expected, content_range in table:
        got = admin.request("GET", f"/v2/{name}/blobs/{dig}", headers={"Range": header})
        assert got.status_code == 206 and got.content == expected
        assert got.headers["Content-Range"] == content_range
        assert got.headers["Content-Length"] == str(len(expected))
    for header in ("bytes=500-0", "bytes=5000-10000"):
        assert admin.request("GET", f"/v2/{name}/blobs/{dig}", headers={"Range": header}).status_code == 416


class DataSet:
    """Builds manifests the way the suite's testdata.go does and pushes them, children first."""

    def __init__(self, client: Client, name: str) -> None:
        self.client, self.name = client, name
        self.blobs: list[str] = []
        self.manifests: list[tuple[str, bytes, str]] = []  # (digest, body, media type) in push order
        self.tags: dict[str, str] = {}

    def blob(self, data: bytes) -> dict[str, Any]:
        dig = digest(data)
        response = self.client.request("POST", f"/v2/{self.name}/blobs/uploads/", params={"digest": dig}, data=data)
        assert response.status_code == 201
        self.blobs.append(dig)
        return {"digest": dig, "size": len(data)}

    def manifest(self, document: dict[str, Any], tag: str | None = None,
                 subject: dict[str, Any] | None = None) -> dict[str, Any]:
        body = json.dumps(document).encode()
        dig = digest(body)
        media_type = document["mediaType"]
        response = self.client.request("PUT", f"/v2/{self.name}/manifests/{tag or dig}", data=body,
                                       headers={"Content-Type": media_type})
        assert response.status_code == 201, response.text
        assert response.headers["Docker-Content-Digest"] == dig
        if subject is not None:
            assert response.headers["OCI-Subject"] == subject["digest"]
        pulled = self.client.request("GET", response.headers["Location"], headers={"Accept": f"{OCI_INDEX}, {OCI_MANIFEST}"})
        assert pulled.status_code == 200 and pulled.content == body
        assert pulled.headers["Content-Type"] == media_type and pulled.headers["Content-Length"] == str(len(body))
        self.manifests.append((dig, body, media_type))
        if tag:
            self.tags[tag] = dig
        return {"mediaType": media_type, "digest": dig, "size": len(body)}

    def image(self, tag: str | None = None, *, artifact_type: str | None = None, config_type: str | None = None,
              config: bytes | None = None, layer_type: str = "application/vnd.oci.image.layer.v1.tar",
              annotations: dict[str, str] | None = None, subject: dict[str, Any] | None = None,
              layer: bytes | None = None) -> dict[str, Any]:
        config = config if config is not None else json.dumps({"architecture": "amd64", "os": "linux",
                                                                "rootfs": {"type": "layers", "diff_ids": []}}).encode()
        document: dict[str, Any] = {
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": config_type or "application/vnd.oci.image.config.v1+json", **self.blob(config)},
            "layers": [{"mediaType": layer_type, **self.blob(layer if layer is not None else random.randbytes(512))}],
        }
        if artifact_type:
            document["artifactType"] = artifact_type
        if annotations:
            document["annotations"] = annotations
        if subject:
            document["subject"] = subject
        return self.manifest(document, tag, subject)

    def index(self, children: list[dict[str, Any]], tag: str | None = None, *, artifact_type: str | None = None,
              subject: dict[str, Any] | None = None, annotations: dict[str, str] | None = None) -> dict[str, Any]:
        document: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children}
        if artifact_type:
            document["artifactType"] = artifact_type
        if subject:
            document["subject"] = subject
        if annotations:
            document["annotations"] = annotations
        return self.manifest(document, tag, subject)

    def check_and_delete(self) -> None:
        listed = self.client.request("GET", f"/v2/{self.name}/tags/list").json()["tags"]
        assert listed == sorted(self.tags)
        for tag, dig in self.tags.items():
            assert self.client.request("HEAD", f"/v2/{self.name}/manifests/{tag}").headers[
                "Docker-Content-Digest"] == dig
            assert self.client.request("DELETE", f"/v2/{self.name}/manifests/{tag}").status_code == 202
            assert self.client.request("HEAD", f"/v2/{self.name}/manifests/{tag}").status_code == 404
        for dig, _, _ in reversed(self.manifests):
            assert self.client.request("DELETE", f"/v2/{self.name}/manifests/{dig}").status_code == 202
            assert self.client.request("HEAD", f"/v2/{self.name}/manifests/{dig}").status_code == 404
        for dig in dict.fromkeys(self.blobs):
            assert self.client.request("DELETE", f"/v2/{self.name}/blobs/{dig}").status_code == 202
            assert self.client.request("HEAD", f"/v2/{self.name}/blobs/{dig}").status_code == 404


def referrers(client: Client, name: str, subject: str, artifact_type: str | None = None) -> Any:
    params = {"artifactType": artifact_type} if artifact_type else None
    response = client.request("GET", f"/v2/{name}/referrers/{subject}", params=params)
    assert response.status_code == 200 and response.headers["Content-Type"] == OCI_INDEX
    index = response.json()
    assert index["mediaType"] == OCI_INDEX and index["schemaVersion"] == 2
    if artifact_type:
        assert "artifactType" in [f.strip() for f in response.headers["OCI-Filters-Applied"].split(",")]
    return index["manifests"]


def test_empty_repository(admin: Client) -> None:
    assert admin.request("GET", "/v2/conformance/empty/tags/list").status_code in (200, 404)
    assert referrers(admin, "conformance/empty", digest(b"random subject")) == []


def test_data_sets(admin: Client) -> None:
    platforms = [{"os": "linux", "architecture": "amd64"}, {"os": "linux", "architecture": "arm64"}]

    images = DataSet(admin, "conformance/image")
    images.image("image")
    images.image("image-uncompressed", layer_type="application/vnd.oci.image.layer.v1.tar")
    images.image("large-manifest", annotations={f"large-annotation-{i}": "A" * 10000 for i in range(390)})
    images.check_and_delete()

    indexes = DataSet(admin, "conformance/index")
    children = [images_for_index | {"platform": p} for p, images_for_index in
                zip(platforms, [indexes.image(), indexes.image()], strict=True)]
    indexes.index(children, "index")
    nested = [indexes.index([indexes.image() | {"platform": p} for p in platforms]) for _ in range(2)]
    indexes.index(nested, "index-of-index")
    indexes.index([], "empty-index")
    artifact_children = [indexes.image(artifact_type=EXAMPLE_TYPE, config_type=EMPTY_JSON, config=b"{}",
                                       layer_type=EXAMPLE_TYPE) | {"platform": p} for p in platforms]
    indexes.index(artifact_children, "artifact-index", artifact_type=EXAMPLE_TYPE)
    indexes.image("artifact-without-layers", artifact_type=EXAMPLE_TYPE, config_type=EMPTY_JSON, config=b"{}",
                  layer_type=EMPTY_JSON, layer=b"{}")
    indexes.check_and_delete()


def test_subjects_and_referrers(admin: Client) -> None:
    name = "conformance/subjects"
    data = DataSet(admin, name)
    subject = data.image("image")
    plain = data.image(subject=subject)
    first = data.image("tagged-artifact1", artifact_type=EXAMPLE_TYPE, config_type=EMPTY_JSON, config=b"{}",
                       layer_type=EXAMPLE_TYPE, subject=subject,
                       annotations={"org.opencontainers.conformance": "hello conformance test", "uniq": "1"})
    second_type = "application/vnd.example.config.v2+json"
    second = data.image("tagged-artifact2", artifact_type=second_type, config_type=EMPTY_JSON, config=b"{}",
                        layer_type="application/octet-stream", subject=subject,
                        annotations={"org.opencontainers.conformance": "hello conformance test", "uniq": "2"})
    listed = {d["digest"]: d for d in referrers(admin, name, subject["digest"])}
    assert listed[plain["digest"]] == plain | {"artifactType": "application/vnd.oci.image.config.v1+json"}
    assert listed[first["digest"]]["artifactType"] == EXAMPLE_TYPE
    assert listed[first["digest"]]["annotations"]["org.opencontainers.conformance"] == "hello conformance test"
    assert listed[second["digest"]]["artifactType"] == second_type and len(listed) == 3
    for artifact_type, expected in ((EXAMPLE_TYPE, first), (second_type, second)):
        assert [d["digest"] for d in referrers(admin, name, subject["digest"], artifact_type)] == [expected["digest"]]

    index_subject = data.index([], "index")
    index_referrer = data.index([], "tagged-artifact", artifact_type=EXAMPLE_TYPE, subject=index_subject,
                                annotations={"org.opencontainers.conformance": "hello conformance test"})
    (listed_index,) = referrers(admin, name, index_subject["digest"])
    assert listed_index["digest"] == index_referrer["digest"] and listed_index["mediaType"] == OCI_INDEX
    assert listed_index["artifactType"] == EXAMPLE_TYPE

    missing = {"mediaType": OCI_MANIFEST, "size": 123, "digest": digest(b"missing content")}
    dangling = data.image("missing-subject", artifact_type=EXAMPLE_TYPE, config_type=EMPTY_JSON, config=b"{}",
                          layer_type=EXAMPLE_TYPE, subject=missing)
    assert [d["digest"] for d in referrers(admin, name, missing["digest"])] == [dangling["digest"]]
    data.check_and_delete()
    assert referrers(admin, name, subject["digest"]) == []


def test_manifest_errors_and_tag_parameter(admin: Client) -> None:
    name = "conformance/manifest-errors"
    assert admin.request("GET", f"/v2/{name}/manifests/{digest(random.randbytes(1024))}").status_code == 404
    assert admin.request("GET", f"/v2/{name}/manifests/missing-abcdef").status_code == 404
    data = DataSet(admin, name)
    config = data.blob(b'{"architecture":"amd64","os":"linux"}')
    layer = data.blob(random.randbytes(256))
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
                       "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **layer}]}).encode()
    bad = admin.request("PUT", f"/v2/{name}/manifests/sha256:baddigeststring", data=body,
                        headers={"Content-Type": OCI_MANIFEST})
    assert bad.status_code == 400
    assert admin.request("GET", f"/v2/{name}/manifests/sha256:baddigeststring").status_code in (400, 404)

    tagged = admin.request("PUT", f"/v2/{name}/manifests/{digest(body)}", params={"tag": ["one", "two"]},
                           data=body, headers={"Content-Type": OCI_MANIFEST})
    assert tagged.status_code == 201
    assert sorted(t.strip() for t in tagged.headers["OCI-Tag"].split(",")) == ["one", "two"]
    assert admin.request("GET", f"/v2/{name}/tags/list").json()["tags"] == ["one", "two"]
    refused = admin.request("PUT", f"/v2/{name}/manifests/{digest(body)}", params={"tag": "../x"}, data=body,
                            headers={"Content-Type": OCI_MANIFEST})
    assert refused.status_code == 400 and error_codes(refused) == ["TAG_INVALID"]
