"""The garbage collector of `ultraplane controllers` (run by `ultraplane up`) in its three modes, on plain
ConfigMaps owned by ConfigMaps so that no workload controller is involved."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from kubernetes import client

from tests.apiserver.conftest import Cluster
from tests.controllers.managed import eventually, managed_cluster, python_client

NS = "gc"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    for c in managed_cluster():
        c.ok("create", "namespace", NS)
        yield c


@pytest.fixture(scope="module")
def core(cluster: Cluster) -> client.CoreV1Api:
    return client.CoreV1Api(python_client(cluster))


def owned(cluster: Cluster, name: str, owner: dict, block: bool = False, finalizers: list[str] | None = None) -> dict:
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": owner["metadata"]["name"],
           "uid": owner["metadata"]["uid"]}
    if block:
        ref["blockOwnerDeletion"] = True
    meta: dict = {"name": name, "namespace": NS, "ownerReferences": [ref]}
    if finalizers:
        meta["finalizers"] = finalizers
    return json.loads(cluster.ok("create", "-o", "json", "-f", "-",
                                 input=json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta})))


def exists(cluster: Cluster, name: str) -> bool:
    return cluster.kubectl("get", "configmap", name, "-n", NS).returncode == 0


def test_background_deletes_dependents_after_the_owner(cluster: Cluster) -> None:
    owner = cluster.json("create", "configmap", "bg-owner", "-n", NS)
    child = owned(cluster, "bg-child", owner)
    owned(cluster, "bg-grandchild", child)
    other = cluster.json("create", "configmap", "bg-other", "-n", NS)
    owned(cluster, "bg-two-owners", owner)
    # a dependent with a second, living owner survives and loses only the dangling reference
    two = cluster.json("get", "configmap", "bg-two-owners", "-n", NS)
    two["metadata"]["ownerReferences"].append({"apiVersion": "v1", "kind": "ConfigMap", "name": "bg-other",
                                               "uid": other["metadata"]["uid"]})
    cluster.ok("replace", "-f", "-", input=json.dumps(two))

    assert cluster.ok("delete", "configmap", "bg-owner", "-n", NS).strip() == 'configmap "bg-owner" deleted'
    eventually(lambda: not exists(cluster, "bg-child") and not exists(cluster, "bg-grandchild"))
    survivor = eventually(lambda: (o := cluster.json("get", "configmap", "bg-two-owners", "-n", NS))
                          and len(o["metadata"]["ownerReferences"]) == 1 and o)
    assert survivor["metadata"]["ownerReferences"][0]["uid"] == other["metadata"]["uid"]


def test_dependent_of_an_owner_that_never_existed_is_deleted(cluster: Cluster) -> None:
    ghost = {"metadata": {"name": "never-there", "uid": "00000000-0000-0000-0000-000000000001"}}
    owned(cluster, "orphaned-at-birth", ghost)
    eventually(lambda: not exists(cluster, "orphaned-at-birth"))


def test_foreground_keeps_the_owner_until_blocking_dependents_are_gone(cluster: Cluster,
                                                                       core: client.CoreV1Api) -> None:
    owner = cluster.json("create", "configmap", "fg-owner", "-n", NS)
    # the finalizer holds the dependent (deleting, not gone), so the owner's wait can be observed
    owned(cluster, "fg-child", owner, block=True, finalizers=["example.com/hold"])
    core.delete_namespaced_config_map("fg-owner", NS, propagation_policy="Foreground")

    waiting = cluster.json("get", "configmap", "fg-owner", "-n", NS)
    assert waiting["metadata"]["deletionTimestamp"]
    assert waiting["metadata"]["finalizers"] == ["foregroundDeletion"]
    child = eventually(lambda: (o := cluster.json("get", "configmap", "fg-child", "-n", NS))
                       ["metadata"].get("deletionTimestamp") and o)
    assert child["metadata"]["finalizers"] == ["example.com/hold"]
    assert exists(cluster, "fg-owner")  # still there while its blocking dependent is

    core.patch_namespaced_config_map("fg-child", NS, {"metadata": {"finalizers": None}})
    eventually(lambda: not exists(cluster, "fg-child") and not exists(cluster, "fg-owner"))


def test_foreground_through_kubectl_cascade(cluster: Cluster) -> None:
    owner = cluster.json("create", "configmap", "fgk-owner", "-n", NS)
    owned(cluster, "fgk-child", owner, block=True)
    done = cluster.kubectl("delete", "configmap", "fgk-owner", "-n", NS, "--cascade=foreground", "--timeout=30s")
    assert done.returncode == 0, done.stderr
    assert not exists(cluster, "fgk-child") and not exists(cluster, "fgk-owner")


def test_orphan_leaves_dependents_without_owner_references(cluster: Cluster, core: client.CoreV1Api) -> None:
    owner = cluster.json("create", "configmap", "or-owner", "-n", NS)
    owned(cluster, "or-child", owner, block=True)
    owned(cluster, "or-child2", owner)
    assert cluster.ok("delete", "configmap", "or-owner", "-n", NS, "--cascade=orphan").strip() == \
        'configmap "or-owner" deleted'
    eventually(lambda: not exists(cluster, "or-owner"))
    for name in ("or-child", "or-child2"):
        child = cluster.json("get", "configmap", name, "-n", NS)
        assert "ownerReferences" not in child["metadata"], child["metadata"]

    # the API server answers a DELETE with propagationPolicy=Orphan with the object holding `orphan`
    owner = cluster.json("create", "configmap", "or-owner2", "-n", NS)
    owned(cluster, "or-child3", owner)
    request = core.api_client.param_serialize(
        "DELETE", f"/api/v1/namespaces/{NS}/configmaps/or-owner2", body={"propagationPolicy": "Orphan"},
        header_params={"Content-Type": "application/json", "Accept": "application/json"},
        auth_settings=["BearerToken"])
    response = core.api_client.call_api(*request)
    assert response.status == 200
    answered = json.loads(response.read())
    assert answered["kind"] == "ConfigMap" and answered["metadata"]["finalizers"] == ["orphan"]
    assert answered["metadata"]["deletionTimestamp"]
    eventually(lambda: not exists(cluster, "or-owner2"))
    assert "ownerReferences" not in cluster.json("get", "configmap", "or-child3", "-n", NS)["metadata"]


def test_collections_only_the_collector_watches_work_from_metadata(cluster: Cluster, core: client.CoreV1Api) -> None:
    """No other controller follows Secrets, so the collector's monitor for them keeps metadata only: owners,
    finalizers and deletion still drive background and orphan deletion."""
    def secret(name: str, owner: client.V1Secret | None = None) -> client.V1Secret:
        meta: dict = {"name": name}
        if owner is not None:
            meta["ownerReferences"] = [{"apiVersion": "v1", "kind": "Secret", "name": owner.metadata.name,
                                        "uid": owner.metadata.uid}]
        return core.create_namespaced_secret(NS, {"metadata": meta, "stringData": {"k": "v" * 64}})

    def names() -> set[str]:
        return {s.metadata.name for s in core.list_namespaced_secret(NS).items}
    doomed = secret("s-owner")
    secret("s-child", doomed)
    kept = secret("s-owner2")
    secret("s-child2", kept)
    core.delete_namespaced_secret("s-owner", NS)
    eventually(lambda: "s-child" not in names())
    core.delete_namespaced_secret("s-owner2", NS, propagation_policy="Orphan")
    eventually(lambda: "s-owner2" not in names()
               and not core.read_namespaced_secret("s-child2", NS).metadata.owner_references)
