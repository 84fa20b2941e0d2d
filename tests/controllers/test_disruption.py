"""The disruption controller keeps PodDisruptionBudget status current as pods come, go and turn Ready."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from tests.apiserver.conftest import Cluster, start_cluster
from ultraplane.client.http import MERGE, KubeClient
from ultraplane.controllers.base import InformerFactory
from ultraplane.controllers.disruption import DisruptionController

Obj = dict[str, Any]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = start_cluster("inprocess", "--no-scheduler", "--no-controllers")
    yield c
    c.stop()
    shutil.rmtree(c.work_dir, ignore_errors=True)


def pod(name: str, labels: dict[str, str], owner: Obj | None = None) -> Obj:
    meta: Obj = {"name": name, "labels": labels}
    if owner:
        meta["ownerReferences"] = [owner]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}}


async def ready(client: KubeClient, ns: str, name: str, value: str) -> None:
    await client.patch(f"/api/v1/namespaces/{ns}/pods/{name}/status",
                       {"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": value}]}})


async def eventually(client: KubeClient, path: str, want: dict[str, int]) -> Obj:
    status: Obj = {}
    for _ in range(100):
        status = (await client.get(path)).get("status") or {}
        if all(status.get(k) == v for k, v in want.items()):
            return status
        await asyncio.sleep(0.1)
    raise AssertionError(f"status {status} never reached {want}")


def test_pdb_status_follows_pods(cluster: Cluster) -> None:
    async def scenario() -> None:
        client = await KubeClient.from_kubeconfig(cluster.kubeconfig)
        informers = InformerFactory(client)
        controller = DisruptionController(client, informers)
        stop = asyncio.Event()
        ns = "disruption"
        await client.create("/api/v1/namespaces", {"metadata": {"name": ns}})
        pods = f"/api/v1/namespaces/{ns}/pods"
        for i in range(3):
            await client.create(pods, pod(f"p{i}", {"app": "web"}))
        await client.create(f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets", {
            "metadata": {"name": "web"}, "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}}})
        # a percentage counts the controller's replicas, not the pods that exist
        deploy = await client.create(f"/apis/apps/v1/namespaces/{ns}/deployments", {
            "metadata": {"name": "api"}, "spec": {"replicas": 4, "selector": {"matchLabels": {"app": "api"}},
                                                  "template": {"metadata": {"labels": {"app": "api"}},
                                                               "spec": {"containers": [{"name": "c",
                                                                                        "image": "busybox"}]}}}})
        owner = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "api",
                 "uid": deploy["metadata"]["uid"], "controller": True}
        await client.create(pods, pod("a0", {"app": "api"}, owner))
        await client.create(f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets", {
            "metadata": {"name": "api"}, "spec": {"maxUnavailable": "50%", "selector": {"matchLabels": {"app": "api"}}}})

        await informers.start()
        await informers.wait_synced()
        runner = asyncio.ensure_future(controller.run(stop))
        try:
            web = f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/web"
            api = f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/api"
            for i in range(3):
                await ready(client, ns, f"p{i}", "True")
            status = await eventually(client, web, {"currentHealthy": 3, "desiredHealthy": 2, "expectedPods": 3,
                                                    "disruptionsAllowed": 1})
            assert status["conditions"][0]["reason"] == "SufficientPods"
            await ready(client, ns, "p0", "False")
            status = await eventually(client, web, {"currentHealthy": 2, "disruptionsAllowed": 0})
            assert (status["conditions"][0]["status"], status["conditions"][0]["reason"]) == (
                "False", "InsufficientPods")
            await client.delete(f"{pods}/p1")
            await eventually(client, web, {"currentHealthy": 1, "expectedPods": 2})

            await ready(client, ns, "a0", "True")
            await eventually(client, api, {"expectedPods": 4, "desiredHealthy": 2, "currentHealthy": 1,
                                           "disruptionsAllowed": 0})
            await client.patch(f"/apis/apps/v1/namespaces/{ns}/deployments/api/scale", {"spec": {"replicas": 2}},
                               content_type=MERGE)
            await client.create(pods, pod("a1", {"app": "api"}, owner))  # a pod event re-evaluates the budget
            await eventually(client, api, {"expectedPods": 2, "desiredHealthy": 1, "disruptionsAllowed": 0})
            await ready(client, ns, "a1", "True")
            await eventually(client, api, {"currentHealthy": 2, "disruptionsAllowed": 1})
        finally:
            stop.set()
            await runner
            await informers.stop()
            await client.close()

    asyncio.run(scenario())
