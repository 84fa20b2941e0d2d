"""Differential: the same bad and edge-case requests against Distribution 2.8 (the anchor) and ultraplane
(plain HTTP, no auth, as Distribution runs by default) get the same status and error code."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator

import pytest
import requests

from tests.registry.conftest import Distribution
from tests.registry.images import build_image, sha256
from ultraplane.registry.server import Registry, RegistryConfig

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ZERO = "sha256:" + "0" * 64


@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An in-process registry on a loop in a background thread (no CLI start-up cost)."""
    loop = asyncio.new_event_loop()
    registry = Registry(RegistryConfig(tmp_path_factory.mktemp("anchor"), port=0, tls=False, auth=False,
                                       gc_interval=0))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(registry.start(), loop).result(30)
    yield registry.url
    asyncio.run_coroutine_threadsafe(registry.close(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def outcome(response: requests.Response) -> tuple[int, list[str]]:
    try:
        codes = [e["code"] for e in response.json().get("errors", [])]
    except ValueError:
        codes = []
    return response.status_code, codes


def scenario(base: str) -> dict[str, tuple[int, list[str]]]:
    session = requests.Session()
    image = build_image([{"anchor": b"layer"}])
    name = "anchor/app"
    results = {
        "manifest of unknown repository": outcome(session.get(f"{base}/v2/nobody/manifests/latest")),
        "blob of unknown repository": outcome(session.get(f"{base}/v2/nobody/blobs/{ZERO}")),
        "tags of unknown repository": outcome(session.get(f"{base}/v2/nobody/tags/list")),
        "manifest that is not JSON": outcome(session.put(f"{base}/v2/{name}/manifests/v1", data=b"{bad",
                                                         headers={"Content-Type": OCI_MANIFEST})),
        "manifest with unknown blobs": outcome(session.put(f"{base}/v2/{name}/manifests/v1", data=image.manifest,
                                                           headers={"Content-Type": OCI_MANIFEST})),
    }
    for data in image.blobs().values():
        location = session.post(f"{base}/v2/{name}/blobs/uploads/").headers["Location"]
        target = location if location.startswith("http") else base + location
        assert session.put(target, params={"digest": sha256(data)}, data=data).status_code == 201
    location = session.post(f"{base}/v2/{name}/blobs/uploads/").headers["Location"]
    target = location if location.startswith("http") else base + location
    results["upload finished without digest"] = outcome(session.put(target, data=b"x"))
    location = session.post(f"{base}/v2/{name}/blobs/uploads/").headers["Location"]
    target = location if location.startswith("http") else base + location
    results["upload finished with a wrong digest"] = outcome(session.put(target, params={"digest": ZERO},
                                                                         data=b"x"))
    results["manifest put by a wrong digest"] = outcome(session.put(
        f"{base}/v2/{name}/manifests/{ZERO}", data=image.manifest, headers={"Content-Type": OCI_MANIFEST}))
    results["manifest put"] = outcome(session.put(f"{base}/v2/{name}/manifests/v1", data=image.manifest,
                                                  headers={"Content-Type": OCI_MANIFEST}))
    results["manifest by tag"] = outcome(session.get(f"{base}/v2/{name}/manifests/v1",
                                                     headers={"Accept": OCI_MANIFEST}))
    results["unknown manifest delete"] = outcome(session.delete(f"{base}/v2/{name}/manifests/{ZERO}"))
    layer = sha256(image.layers[0])
    # Status only: Distribution 2.8 sends this 416 with the blob's Content-Length and a shorter text body.
    with requests.get(f"{base}/v2/{name}/blobs/{layer}", headers={"Range": "bytes=99999-"}, stream=True) as beyond:
        results["range past the end"] = (beyond.status_code, [])
    results["range inside"] = outcome(session.get(f"{base}/v2/{name}/blobs/{layer}", headers={"Range": "bytes=1-5"}))
    results["manifest delete"] = outcome(session.delete(f"{base}/v2/{name}/manifests/{image.digest}"))
    results["deleted manifest"] = outcome(session.get(f"{base}/v2/{name}/manifests/{image.digest}"))
    tags = session.get(f"{base}/v2/{name}/tags/list")
    results["tags after delete"] = (tags.status_code, json.loads(tags.content or b"{}").get("tags") or [])
    return results


def test_same_errors_as_distribution(ours: str, distribution: Distribution) -> None:
    expected = scenario(f"http://{distribution.host}")
    actual = scenario(ours)
    assert actual == expected
    assert expected["manifest with unknown blobs"] == (400, ["MANIFEST_BLOB_UNKNOWN"] * 2)  # config and layer
