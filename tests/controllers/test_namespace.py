"""The namespace, serviceaccount and root-CA-publisher controllers of `ultraplane controllers`, as run by
`ultraplane up`, seen through kubectl and the Python client."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.apiserver.conftest import Cluster
from tests.controllers.managed import eventually, managed_cluster, python_client


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    yield from managed_cluster()


@pytest.fixture(scope="module")
def core(cluster: Cluster) -> client.CoreV1Api:
    return client.CoreV1Api(python_client(cluster))


def conditions(ns: dict) -> dict[str, dict]:
    return {c["type"]: c for c in (ns.get("status") or {}).get("conditions") or []}


def test_default_service_account_appears_and_comes_back(cluster: Cluster, core: client.CoreV1Api) -> None:
    cluster.ok("create", "namespace", "sa-one")
    first = eventually(lambda: core.read_namespaced_service_account("default", "sa-one"))
    cluster.ok("delete", "serviceaccount", "default", "-n", "sa-one")
    again = eventually(lambda: core.read_namespaced_service_account("default", "sa-one").metadata.uid
                       != first.metadata.uid)
    assert again
    assert "default" in cluster.ok("get", "sa", "-n", "sa-one", "-o", "name")


def test_root_ca_configmap_in_every_namespace(cluster: Cluster, core: client.CoreV1Api) -> None:
    ca = (cluster.pki / "ca.crt").read_text()
    for ns in ("default", "kube-system", "kube-public"):
        cm = eventually(lambda ns=ns: core.read_namespaced_config_map("kube-root-ca.crt", ns))
        assert cm.data == {"ca.crt": ca}
        assert cm.metadata.annotations["kubernetes.io/description"].startswith("Contains a CA bundle")
    cluster.ok("create", "namespace", "ca-one")
    cm = eventually(lambda: core.read_namespaced_config_map("kube-root-ca.crt", "ca-one"))
    core.patch_namespaced_config_map("kube-root-ca.crt", "ca-one", {"data": {"ca.crt": "tampered"}})
    eventually(lambda: core.read_namespaced_config_map("kube-root-ca.crt", "ca-one").data == {"ca.crt": ca})
    core.delete_namespaced_config_map("kube-root-ca.crt", "ca-one")
    assert eventually(lambda: core.read_namespaced_config_map("kube-root-ca.crt", "ca-one").metadata.uid
                      != cm.metadata.uid)


def test_namespace_deletion_removes_content_then_namespace(cluster: Cluster, core: client.CoreV1Api) -> None:
    ns = "doomed"
    cluster.ok("create", "namespace", ns)
    cluster.ok("create", "configmap", "plain", "-n", ns, "--from-literal=a=b")
    cluster.ok("create", "secret", "generic", "s", "-n", ns, "--from-literal=a=b")
    held = {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "held", "namespace": ns, "finalizers": ["example.com/hold"]}}
    cluster.ok("create", "-f", "-", input=json.dumps(held))

    deleted = cluster.kubectl("delete", "namespace", ns, "--wait=false")
    assert deleted.returncode == 0 and deleted.stdout.strip() == f'namespace "{ns}" deleted'
    terminating = cluster.json("get", "namespace", ns)
    assert terminating["status"]["phase"] == "Terminating"
    assert terminating["metadata"]["deletionTimestamp"]
    assert terminating["spec"]["finalizers"] == ["kubernetes"]

    # the finalizer on `held` keeps the namespace: the controller says why in its conditions
    def waiting() -> dict:
        conds = conditions(core.read_namespace(ns).to_dict())
        assert conds.get("NamespaceFinalizersRemaining", {}).get("status") == "True", conds
        return conds
    conds = eventually(waiting)
    assert conds["NamespaceDeletionDiscoveryFailure"]["reason"] == "ResourcesDiscovered"
    assert conds["NamespaceDeletionContentFailure"]["reason"] == "ContentDeleted"
    assert conds["NamespaceContentRemaining"]["message"] == \
        "Some resources are remaining: configmaps has 1 resource instances"
    assert conds["NamespaceFinalizersRemaining"]["message"] == \
        "Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances"
    assert cluster.ok("get", "configmaps,secrets", "-n", ns, "-o", "name").split() == ["configmap/held"]

    refused = cluster.kubectl("create", "configmap", "late", "-n", ns)
    assert refused.returncode != 0
    assert refused.stderr.strip() == (f'error: failed to create configmap: configmaps "late" is forbidden: unable '
                                      f'to create new content in namespace {ns} because it is being terminated')
    with pytest.raises(ApiException) as forbidden:
        core.create_namespaced_config_map(ns, {"metadata": {"name": "late"}})
    assert forbidden.value.status == 403
    assert json.loads(forbidden.value.body)["reason"] == "Forbidden"

    core.patch_namespaced_config_map("held", ns, {"metadata": {"finalizers": None}})
    eventually(lambda: cluster.kubectl("get", "namespace", ns).returncode != 0)
    assert cluster.kubectl("get", "namespace", ns).stderr.strip() == \
        f'Error from server (NotFound): namespaces "{ns}" not found'


def test_controller_manager_holds_its_lease(cluster: Cluster, core: client.CoreV1Api) -> None:
    coordination = client.CoordinationV1Api(core.api_client)
    lease = eventually(lambda: coordination.read_namespaced_lease("kube-controller-manager", "kube-system"))
    assert lease.spec.holder_identity and lease.spec.lease_duration_seconds == 15
    first = lease.spec.renew_time
    renewed = eventually(lambda: coordination.read_namespaced_lease(
        "kube-controller-manager", "kube-system").spec.renew_time > first, timeout=10)
    assert renewed
