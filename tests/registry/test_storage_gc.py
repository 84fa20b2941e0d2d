"""Content-addressed storage: digest verification on every write, nothing half-stored across a crash, and
garbage collection that never takes a blob from under a push."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.registry.conftest import Client, start_registry
from tests.registry.images import build_image, sha256
from ultraplane.registry.errors import RegistryError
from ultraplane.registry.server import Registry, RegistryConfig
from ultraplane.registry.storage import Storage

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def stored(storage: Storage, digest: str) -> bool:
    return storage.blob_path(digest).exists()


def upload(storage: Storage, name: str, data: bytes) -> str:
    session = storage.create_upload(name)
    session.append(data)
    storage.commit_upload(session, sha256(data))
    return sha256(data)


def test_every_write_is_verified_and_atomic(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    session = storage.create_upload("repo")
    session.append(b"actual bytes")
    with pytest.raises(RegistryError) as refused:
        storage.commit_upload(session, sha256(b"claimed bytes"))
    assert refused.value.code == "DIGEST_INVALID"
    with pytest.raises(RegistryError):
        storage.put_blob(sha256(b"manifest"), b"not the manifest")
    assert not stored(storage, sha256(b"actual bytes")) and not stored(storage, sha256(b"claimed bytes"))
    assert os.listdir(tmp_path / "uploads") == [] and os.listdir(tmp_path / "tmp") == []
    digest = upload(storage, "repo", b"good")
    assert storage.blob_path(digest).read_bytes() == b"good" and storage.repo_blob_size("repo", digest) == 4


def test_a_killed_upload_leaves_no_blob_and_resumes_after_restart(tmp_path: Path) -> None:
    data = random.randbytes(600_000)
    server = start_registry(tmp_path, "--insecure-http", "--no-auth")
    client = Client(server.url, False)
    location = client.request("POST", "/v2/crash/app/blobs/uploads/").headers["Location"]
    assert client.request("PATCH", location, data=data[:250_000],
                          headers={"Content-Range": "0-249999"}).status_code == 202
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait()
    assert not (tmp_path / "storage" / "blobs" / "sha256" / sha256(data)[7:9] / sha256(data)[7:]).exists()

    server = start_registry(tmp_path, "--insecure-http", "--no-auth")
    try:
        client = Client(server.url, False)
        assert client.request("HEAD", f"/v2/crash/app/blobs/{sha256(data)}").status_code == 404
        status = client.request("GET", location)
        assert status.status_code == 204 and status.headers["Range"] == "0-249999"
        finished = client.request("PUT", location, params={"digest": sha256(data)}, data=data[250_000:],
                                  headers={"Content-Range": f"250000-{len(data) - 1}"})
        assert finished.status_code == 201
        assert client.request("GET", f"/v2/crash/app/blobs/{sha256(data)}").content == data
    finally:
        server.stop()


async def test_gc_removes_only_unreferenced_blobs_past_the_grace_period(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    image = build_image([{"kept": b"kept"}])
    for data in image.blobs().values():
        upload(storage, "app", data)
    storage.put_manifest("app", image.digest, OCI_MANIFEST, image.manifest, tag="v1",
                         references=list(image.blobs()), subject=None, descriptor={})
    orphan = upload(storage, "app", b"orphan layer")
    dropped = build_image([{"dropped": b"dropped"}])
    for data in dropped.blobs().values():
        upload(storage, "app", data)
    storage.put_manifest("app", dropped.digest, OCI_MANIFEST, dropped.manifest, tag="old",
                         references=list(dropped.blobs()), subject=None, descriptor={})
    assert storage.delete_manifest("app", dropped.digest)

    fresh = await storage.collect_garbage(grace_seconds=3600)
    assert fresh.deleted_blobs == 0 and stored(storage, orphan)

    report = await storage.collect_garbage(grace_seconds=0)
    assert not stored(storage, orphan) and not stored(storage, dropped.digest)
    assert not any(stored(storage, d) for d in dropped.blobs())
    assert all(stored(storage, d) for d in [image.digest, *image.blobs()])
    assert report.deleted_blobs == 1 + 1 + len(dropped.blobs())
    assert not storage._layer_link("app", orphan).exists() and storage.repo_blob_size("app", orphan) is None
    assert upload(storage, "app", b"orphan layer") == orphan  # pushing it again brings it back
    assert storage.repo_blob_size("app", orphan) == len(b"orphan layer")


async def test_gc_does_not_race_a_push(tmp_path: Path) -> None:
    """A manifest pushed while the collector is marking pins the old, so far unreferenced, blobs it uses."""
    registry = Registry(RegistryConfig(tmp_path, port=0, tls=False, auth=False, gc_interval=0))
    await registry.start()
    try:
        client = Client(registry.url, False)
        image = build_image([{"layer": b"pushed long ago"}])
        for data in image.blobs().values():
            response = await asyncio.to_thread(client.request, "POST", "/v2/race/app/blobs/uploads/",
                                               params={"digest": sha256(data)}, data=data)
            assert response.status_code == 201
        long_ago = time.time() - 7200
        for path in [*tmp_path.rglob("*")]:
            os.utime(path, (long_ago, long_ago))

        marking, proceed = threading.Event(), threading.Event()
        original_mark = registry.storage._mark

        def slow_mark() -> set[str]:
            marked = original_mark()
            marking.set()
            proceed.wait(30)
            return marked

        registry.storage._mark = slow_mark  # type: ignore[method-assign]
        collection = asyncio.ensure_future(registry.storage.collect_garbage(grace_seconds=60))
        await asyncio.to_thread(marking.wait, 30)
        put = await asyncio.to_thread(client.request, "PUT", "/v2/race/app/manifests/v1", data=image.manifest,
                                      headers={"Content-Type": OCI_MANIFEST})
        assert put.status_code == 201
        proceed.set()
        report = await collection
        assert report.deleted_blobs == 0
        for digest, data in image.blobs().items():
            got = await asyncio.to_thread(client.request, "GET", f"/v2/race/app/blobs/{digest}")
            assert got.content == data

        # Without a manifest, the same old blobs go on the next collection.
        orphan = build_image([{"layer": b"never referenced"}])
        config = orphan.config
        await asyncio.to_thread(client.request, "POST", "/v2/race/app/blobs/uploads/",
                                params={"digest": sha256(config)}, data=config)
        os.utime(registry.storage.blob_path(sha256(config)), (long_ago, long_ago))
        os.utime(registry.storage._layer_link("race/app", sha256(config)), (long_ago, long_ago))
        report = await registry.storage.collect_garbage(grace_seconds=60)
        assert report.deleted_blobs == 1 and not stored(registry.storage, sha256(config))
    finally:
        await registry.close()


async def test_concurrent_pushes_and_collections_never_leave_a_dangling_manifest(tmp_path: Path) -> None:
    registry = Registry(RegistryConfig(tmp_path, port=0, tls=False, auth=False, gc_interval=0))
    await registry.start()
    stop = asyncio.Event()

    async def collect_repeatedly() -> int:
        runs = 0
        while not stop.is_set():
            await registry.storage.collect_garbage(grace_seconds=30)
            runs += 1
            await asyncio.sleep(0.01)
        return runs

    def push(index: int) -> str:
        client = Client(registry.url, False, session=requests.Session())
        image = build_image([{f"file{index}": random.randbytes(20_000)}, {"shared": b"shared layer"}])
        for data in image.blobs().values():
            assert client.request("POST", f"/v2/many/app{index % 4}/blobs/uploads/",
                                  params={"digest": sha256(data)}, data=data).status_code == 201
        response = client.request("PUT", f"/v2/many/app{index % 4}/manifests/t{index}", data=image.manifest,
                                  headers={"Content-Type": OCI_MANIFEST})
        assert response.status_code == 201
        return image.digest

    try:
        collector = asyncio.ensure_future(collect_repeatedly())
        digests = await asyncio.gather(*(asyncio.to_thread(push, i) for i in range(24)))
        stop.set()
        assert await collector > 0
        await registry.storage.collect_garbage(grace_seconds=30)
        for index, digest in enumerate(digests):
            manifest = json.loads(registry.storage.read_manifest(digest))
            for descriptor in [manifest["config"], *manifest["layers"]]:
                assert registry.storage.repo_blob_size(f"many/app{index % 4}", descriptor["digest"]) is not None
    finally:
        await registry.close()
