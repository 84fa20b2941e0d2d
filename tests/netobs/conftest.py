"""One `ultraplane up --nodes 3` cluster (three zones) running a small shop:

  web (1 pod)   talks-to api:80@10rps, db:5432@5rps, ghost:80@1rps (no such Service: NXDOMAIN)
  api (2 pods)  talks-to db:5432@5rps; Service api selects app=api,track=stable, port 80 -> named port http
  db  (1 pod)   Service db 5432; faults: drop-percent 20, retransmit-percent 10
  cache (1 pod) Service cache 6379, nobody talks to it until api's second rollout
  other/batch   talks-to api.shop:80@2rps (a cross-namespace client)
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from tests.apiserver.conftest import Cluster, inprocess_cluster
from tests.harness import wait_for
from ultraplane.client.http import KubeClient

NS, OTHER = "shop", "other"
T = TypeVar("T")


def deployment(name: str, namespace: str, replicas: int = 1, talks_to: str = "", port: tuple[str, int] | None = None,
               annotations: dict[str, str] | None = None, extra_labels: dict[str, str] | None = None) -> dict[str, Any]:
    notes = dict(annotations or {})
    if talks_to:
        notes["netobs.ultraplane.io/talks-to"] = talks_to
    container: dict[str, Any] = {"name": "app", "image": "busybox", "command": ["sh", "-c", "sleep 3600"]}
    if port:
        container["ports"] = [{"name": port[0], "containerPort": port[1], "protocol": "TCP"}]
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name, **(extra_labels or {})}, "annotations": notes},
                                  "spec": {"containers": [container], "terminationGracePeriodSeconds": 0}}}}


def service(name: str, port: int, target: int | str, selector: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NS},
            "spec": {"selector": selector, "ports": [{"name": "main", "port": port, "targetPort": target,
                                                      "protocol": "TCP"}]}}


SHOP = [
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OTHER}},
    deployment("web", NS, talks_to="api:80@10rps,db:5432@5rps,ghost:80@1rps"),
    deployment("api", NS, replicas=2, talks_to="db:5432@5rps", port=("http", 8080),
               extra_labels={"track": "stable"}),
    deployment("db", NS, port=("pg", 5432), annotations={"netobs.ultraplane.io/drop-percent": "20",
                                                         "netobs.ultraplane.io/retransmit-percent": "10"}),
    deployment("cache", NS, port=("redis", 6379)),
    deployment("batch", OTHER, talks_to="api.shop:80@2rps"),
    service("api", 80, "http", {"app": "api", "track": "stable"}),
    service("db", 5432, 5432, {"app": "db"}),
    service("cache", 6379, 6379, {"app": "cache"}),
]


def ready_endpoints(c: Cluster, svc: str) -> int:
    slices = c.json("get", "endpointslices", "-n", NS, "-l", f"kubernetes.io/service-name={svc}")["items"]
    return sum(1 for s in slices for ep in s.get("endpoints") or []
               if (ep.get("conditions") or {}).get("ready") is not False)


def running_pods(c: Cluster, namespace: str, app: str) -> list[dict[str, Any]]:
    pods = c.json("get", "pods", "-n", namespace, "-l", f"app={app}")["items"]
    return [p for p in pods if p.get("status", {}).get("phase") == "Running" and p["status"].get("podIP")
            and not p["metadata"].get("deletionTimestamp")]


@pytest.fixture(scope="package")
def shop() -> Iterator[Cluster]:
    with inprocess_cluster("ultraplane-netobs-", "--nodes", "3") as c:
        wait_for(lambda: len(c.json("get", "nodes")["items"]) == 3, "3 simulated nodes", 60)
        c.ok("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": SHOP[:2]}))
        wait_for(lambda: all(c.kubectl("get", "serviceaccount", "default", "-n", ns).returncode == 0
                             for ns in (NS, OTHER)), "default ServiceAccounts", 60)
        c.ok("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": SHOP[2:]}))
        for ns, app, count in ((NS, "web", 1), (NS, "api", 2), (NS, "db", 1), (NS, "cache", 1), (OTHER, "batch", 1)):
            wait_for(lambda ns=ns, app=app, count=count: len(running_pods(c, ns, app)) == count,
                     f"{count} running {app} pod(s)", 90)
        for svc, count in (("api", 2), ("db", 1), ("cache", 1)):
            wait_for(lambda svc=svc, count=count: ready_endpoints(c, svc) == count, f"{count} endpoints of {svc}", 60)
        yield c


def run_with_client(c: Cluster, body: Callable[[KubeClient], Coroutine[Any, Any, T]]) -> T:
    async def main() -> T:
        client = await KubeClient.from_kubeconfig(c.kubeconfig)
        try:
            return await body(client)
        finally:
            await client.close()

    return asyncio.run(main())
