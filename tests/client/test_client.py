"""ultraplane.client against a real `ultraplane up`: verbs, Status errors, paging, watch and the informer."""

from __future__ import annotations

import asyncio
import base64
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.apiserver.conftest import Cluster, start_cluster
from ultraplane.client import kubeconfig
from ultraplane.client.http import JSON_PATCH, MERGE, ApiError, KubeClient
from ultraplane.client.informer import Informer

Obj = dict[str, Any]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = start_cluster("inprocess", "--no-scheduler")
    yield c
    c.stop()
    shutil.rmtree(c.work_dir, ignore_errors=True)


def run(coro_fn: Any, cluster: Cluster) -> Any:
    async def main() -> Any:
        client = await KubeClient.from_kubeconfig(cluster.kubeconfig, max_connections=4)
        try:
            return await coro_fn(client)
        finally:
            await client.close()
    return asyncio.run(main())


def configmap(name: str, **data: str) -> Obj:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}


def test_crud_and_status_errors(cluster: Cluster) -> None:
    async def scenario(client: KubeClient) -> None:
        await client.create("/api/v1/namespaces", {"metadata": {"name": "cl-crud"}})
        base = "/api/v1/namespaces/cl-crud/configmaps"
        created = await client.create(base, configmap("a", k="1"))
        assert created["metadata"]["uid"] and created["data"] == {"k": "1"}

        with pytest.raises(ApiError) as dup:
            await client.create(base, configmap("a"))
        assert (dup.value.code, dup.value.reason) == (409, "AlreadyExists")
        assert dup.value.message == 'configmaps "a" already exists'

        with pytest.raises(ApiError) as missing:
            await client.get(f"{base}/nope")
        assert (missing.value.code, missing.value.reason, missing.value.message) == (
            404, "NotFound", 'configmaps "nope" not found')

        stale = dict(created, data={"k": "2"})
        updated = await client.update(f"{base}/a", stale)
        assert updated["data"] == {"k": "2"}
        with pytest.raises(ApiError) as conflict:
            await client.update(f"{base}/a", dict(created, data={"k": "3"}))  # the old resourceVersion
        assert conflict.value.code == 409 and conflict.value.reason == "Conflict"

        merged = await client.patch(f"{base}/a", {"data": {"m": "x"}}, content_type=MERGE)
        assert merged["data"] == {"k": "2", "m": "x"}
        strategic = await client.patch(f"{base}/a", {"metadata": {"labels": {"l": "v"}}})
        assert strategic["metadata"]["labels"] == {"l": "v"}
        patched = await client.patch(f"{base}/a", [{"op": "remove", "path": "/data/m"}], content_type=JSON_PATCH)
        assert patched["data"] == {"k": "2"}
        applied = await client.apply(f"{base}/b", configmap("b", a="1"), field_manager="cl-test")
        assert [m["manager"] for m in applied["metadata"]["managedFields"]] == ["cl-test"]

        await client.delete(f"{base}/a")
        with pytest.raises(ApiError) as gone:
            await client.get(f"{base}/a")
        assert gone.value.code == 404

    run(scenario, cluster)


def test_list_follows_continue_tokens(cluster: Cluster) -> None:
    async def scenario(client: KubeClient) -> None:
        await client.create("/api/v1/namespaces", {"metadata": {"name": "cl-pages"}})
        base = "/api/v1/namespaces/cl-pages/configmaps"
        await asyncio.gather(*(client.create(base, configmap(f"c{i:02}")) for i in range(25)))
        first = await client.request("GET", base, {"limit": "10"})
        assert len(first["items"]) == 10 and first["metadata"]["continue"]
        listed = await client.list(base, {"limit": "10"})
        assert [i["metadata"]["name"] for i in listed["items"]] == [f"c{i:02}" for i in range(25)]
        assert not listed["metadata"].get("continue")

    run(scenario, cluster)


def test_watch_events_and_refused_watch(cluster: Cluster) -> None:
    async def scenario(client: KubeClient) -> None:
        await client.create("/api/v1/namespaces", {"metadata": {"name": "cl-watch"}})
        base = "/api/v1/namespaces/cl-watch/configmaps"
        start = (await client.list(base))["metadata"]["resourceVersion"]
        seen: list[tuple[str, str]] = []

        async def consume() -> None:
            async for event in client.watch(base, {"resourceVersion": start}):
                seen.append((event["type"], event["object"]["metadata"]["name"]))
                if event["type"] == "DELETED":
                    return

        watcher = asyncio.ensure_future(consume())
        await client.create(base, configmap("w"))
        await client.patch(f"{base}/w", {"data": {"x": "1"}}, content_type=MERGE)
        await client.delete(f"{base}/w")
        await asyncio.wait_for(watcher, 10)
        assert seen == [("ADDED", "w"), ("MODIFIED", "w"), ("DELETED", "w")]

        # a watch the server refuses up front raises the Status as ApiError
        with pytest.raises(ApiError) as bad:
            async for _ in client.watch(base, {"labelSelector": "a in (b"}):
                pass
        assert bad.value.code == 400 and bad.value.reason == "BadRequest"

    run(scenario, cluster)


def test_informer_lists_then_follows_changes(cluster: Cluster) -> None:
    async def scenario(client: KubeClient) -> None:
        await client.create("/api/v1/namespaces", {"metadata": {"name": "cl-inf"}})
        base = "/api/v1/namespaces/cl-inf/configmaps"
        await client.create(base, configmap("before"))
        calls: list[tuple[str, str]] = []
        changed = asyncio.Event()

        def on_add(obj: Obj) -> None:
            calls.append(("add", obj["metadata"]["name"]))

        async def on_update(old: Obj, new: Obj) -> None:  # coroutine handlers are awaited
            calls.append(("update", f"{old['data']}->{new['data']}"))

        def on_delete(obj: Obj) -> None:
            calls.append(("delete", obj["metadata"]["name"]))
            changed.set()

        informer = Informer(client, base, {"labelSelector": "!skip"})
        informer.add_handler(on_add, on_update, on_delete)
        await informer.start()
        await informer.wait_synced()
        assert calls == [("add", "before")] and informer.store["cl-inf/before"]["kind"] == "ConfigMap"
        await client.create(base, {**configmap("hidden"), "metadata": {"name": "hidden", "labels": {"skip": "y"}}})
        await client.create(base, configmap("after", v="1"))
        await client.patch(f"{base}/after", {"data": {"v": "2"}}, content_type=MERGE)
        await client.delete(f"{base}/before")
        await asyncio.wait_for(changed.wait(), 10)
        await informer.stop()
        assert calls == [("add", "before"), ("add", "after"), ("update", "{'v': '1'}->{'v': '2'}"),
                         ("delete", "before")]
        assert sorted(informer.store) == ["cl-inf/after"]

    run(scenario, cluster)


def test_kubeconfig_files_and_tokens(tmp_path: Path) -> None:
    source = tempfile.mkdtemp()
    try:
        ca = tmp_path / "ca.pem"
        from ultraplane import pki

        pair = pki.ensure_ca(Path(source))
        ca.write_bytes(Path(pair.cert).read_bytes())
        (tmp_path / "token").write_text("s3cret\n")
        config = {"apiVersion": "v1", "kind": "Config", "current-context": "c",
                  "clusters": [{"name": "k", "cluster": {"server": "https://127.0.0.1:6443/",
                                                         "certificate-authority": "ca.pem"}}],
                  "users": [{"name": "u", "user": {"tokenFile": "token"}}],
                  "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}]}
        (tmp_path / "kubeconfig").write_text(yaml.safe_dump(config))
        creds = kubeconfig.load(tmp_path / "kubeconfig")
        assert (creds.server, creds.token) == ("https://127.0.0.1:6443", "s3cret")
        assert creds.ssl_context is not None and creds.ssl_context.get_ca_certs()

        config["clusters"][0]["cluster"] = {"server": "https://h:1",
                                            "certificate-authority-data": base64.b64encode(ca.read_bytes()).decode()}
        config["current-context"] = "missing"
        (tmp_path / "kubeconfig").write_text(yaml.safe_dump(config))
        with pytest.raises(kubeconfig.KubeconfigError, match='context "missing" not found'):
            kubeconfig.load(tmp_path / "kubeconfig")
    finally:
        shutil.rmtree(source, ignore_errors=True)
