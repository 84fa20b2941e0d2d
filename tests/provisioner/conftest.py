"""A real cluster (`ultraplane up --nodes 0`) with `ultraplane provisioner` running against it.

Each test gets its own NodePool whose nodes carry a taint only that test's pods tolerate, so tests
sharing the cluster never land on each other's nodes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import yaml

from tests.apiserver.conftest import Cluster, inprocess_cluster
from tests.harness import ultraplane_command, wait_for

NODECLASS = """
apiVersion: karpenter.ultraplane.io/v1
kind: SimNodeClass
metadata:
  name: default
spec:
  launchLatency: 500ms
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with inprocess_cluster("ultraplane-prov-", "--nodes", "0") as c:
        c.spawn([*ultraplane_command(), "provisioner", "--kubeconfig", str(c.kubeconfig),
                 "--disruption-interval", "1", "--batch-idle-duration", "0.5", "--batch-max-duration", "3"],
                "provisioner")
        wait_for(lambda: c.kubectl("get", "simnodeclasses").returncode == 0, "the provisioner's CRDs", 60)
        c.ok("apply", "-f", "-", input=NODECLASS)
        yield c


def nodepool(name: str, *, requirements: list | None = None, labels: dict | None = None,
             disruption: dict | None = None, limits: dict | None = None, expire_after: str | None = None,
             nodeclass: str = "default") -> str:
    spec: dict = {
        "nodeClassRef": {"group": "karpenter.ultraplane.io", "kind": "SimNodeClass", "name": nodeclass},
        "requirements": requirements or [{"key": "karpenter.sh/capacity-type", "operator": "In",
                                          "values": ["on-demand"]}],
        "taints": [{"key": "test", "value": name, "effect": "NoSchedule"}],
    }
    if expire_after:
        spec["expireAfter"] = expire_after
    body: dict = {"apiVersion": "karpenter.sh/v1", "kind": "NodePool", "metadata": {"name": name},
                  "spec": {"template": {"metadata": {"labels": labels or {}}, "spec": spec},
                           "disruption": disruption or {"consolidationPolicy": "WhenEmptyOrUnderutilized",
                                                        "consolidateAfter": "1s", "budgets": [{"nodes": "100%"}]}}}
    if limits:
        body["spec"]["limits"] = limits
    return yaml.safe_dump(body)


def deployment(name: str, pool: str, replicas: int, cpu: str = "500m", memory: str = "512Mi",
               annotations: dict | None = None, **pod_spec: object) -> str:
    body = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "default"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}}, "template": {
                "metadata": {"labels": {"app": name}, "annotations": annotations or {}},
                "spec": {"tolerations": [{"key": "test", "operator": "Equal", "value": pool,
                                          "effect": "NoSchedule"}],
                         "terminationGracePeriodSeconds": 0,
                         "containers": [{"name": "app", "image": "nginx", "resources": {
                             "requests": {"cpu": cpu, "memory": memory}}}], **pod_spec}}}}
    return yaml.safe_dump(body)


def claims(c: Cluster, pool: str) -> list[dict]:
    return c.json("get", "nodeclaims", "-l", f"karpenter.sh/nodepool={pool}")["items"]


def nodes(c: Cluster, pool: str) -> list[dict]:
    return c.json("get", "nodes", "-l", f"karpenter.sh/nodepool={pool}")["items"]


def pods(c: Cluster, app: str) -> list[dict]:
    return c.json("get", "pods", "-n", "default", "-l", f"app={app}")["items"]


def running(c: Cluster, app: str, count: int) -> list[dict] | None:
    items = [p for p in pods(c, app) if p["status"].get("phase") == "Running"
             and not p["metadata"].get("deletionTimestamp")]
    return items if len(items) == count else None


def condition(obj: dict, kind: str) -> str | None:
    return next((c["status"] for c in obj.get("status", {}).get("conditions") or [] if c["type"] == kind), None)


def karpenter_events(c: Cluster, namespace: str = "default") -> list[dict]:
    items = json.loads(c.ok("get", "events", "-n", namespace, "-o", "json"))["items"]
    return [e for e in items if (e.get("source") or {}).get("component") == "karpenter"]


def cleanup(c: Cluster, app: str, pool: str) -> None:
    c.kubectl("delete", "deployment", app, "-n", "default", "--ignore-not-found", "--wait=false")
    c.kubectl("delete", "nodepool", pool, "--ignore-not-found", "--wait=false")
