"""The Node authorizer and NodeRestriction: what a kubelet (``system:node:n1`` in ``system:nodes``) may do.

The kubelet is real to the API server: a client certificate from the cluster's CA, driven through
kubectl and the official Python client against ``ultraplane up`` and ``ultraplane apiserver`` over etcd. Two nodes (n1, n2), pods bound to
each, and the secrets, configmaps, claims, volumes and service accounts those pods use; n1 must see
only its side of that graph, and write only its own Node, Lease and pods' status.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from tests.apiserver.conftest import API_ONLY_FLAGS, Cluster, start_cluster
from tests.harness import wait_until
from ultraplane import pki

NS = "nodeauthz"
N1 = "system:node:n1"


def node_kubeconfig(cluster: Cluster, node: str) -> Path:
    """A kubeconfig with the client certificate a kubelet of ``node`` gets (CN system:node:<node>, O system:nodes)."""
    ca = pki.CertPair(cluster.pki / "ca.crt", cluster.pki / "ca.key")
    pair = pki.issue(ca, cluster.work_dir, f"kubelet-{node}", f"system:node:{node}", client=True,
                     organizations=["system:nodes"])
    kubeconfig = yaml.safe_load(cluster.kubeconfig.read_text())
    kubeconfig["users"] = [{"name": node, "user": {"client-certificate": str(pair.cert),
                                                   "client-key": str(pair.key)}}]
    kubeconfig["contexts"] = [{"name": node, "context": {"cluster": kubeconfig["clusters"][0]["name"], "user": node}}]
    kubeconfig["current-context"] = node
    path = cluster.work_dir / f"kubeconfig-{node}"
    path.write_text(yaml.safe_dump(kubeconfig))
    return path


def pod(name: str, node: str, *, secret: str = "", configmap: str = "", claim: str = "", sa: str = "") -> dict:
    spec: dict = {"containers": [{"name": "c", "image": "busybox"}]}
    if node:
        spec["nodeName"] = node
    volumes = []
    if secret:
        volumes.append({"name": "s", "secret": {"secretName": secret}})
    if claim:
        volumes.append({"name": "d", "persistentVolumeClaim": {"claimName": claim}})
    if volumes:
        spec["volumes"] = volumes
    if configmap:
        spec["containers"][0]["envFrom"] = [{"configMapRef": {"name": configmap}}]
    if sa:
        spec["serviceAccountName"] = sa
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS}, "spec": spec}


def pv(name: str, claim: str, csi_secret: str) -> dict:
    """A CSI volume bound to ``claim`` whose driver gets ``csi_secret`` when the kubelet publishes it."""
    csi = {"driver": "example.csi.k8s.io", "volumeHandle": name,
           "nodePublishSecretRef": {"name": csi_secret, "namespace": NS}}
    return {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "csi": csi,
                     "claimRef": {"namespace": NS, "name": claim}}}


def pvc(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name, "namespace": NS},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}


def objects() -> list[dict]:
    out: list[dict] = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}]
    for n in ("n1", "n2"):
        out.append({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}})
        out.append({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": n, "namespace": "kube-node-lease"}, "spec": {"holderIdentity": n}})
    for name in ("s1", "s2", "s-free", "csi1", "csi2"):
        out.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS},
                    "stringData": {"k": name}})
    out.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm1", "namespace": NS},
                "data": {"k": "v"}})
    for sa in ("sa1", "sa2"):
        out.append({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa, "namespace": NS}})
    out += [pvc("claim1"), pvc("claim2"), pv("pv1", "claim1", "csi1"), pv("pv2", "claim2", "csi2"),
            pod("p1", "n1", secret="s1", configmap="cm1", claim="claim1", sa="sa1"),
            pod("p2", "n2", secret="s2", claim="claim2", sa="sa2"), pod("unbound", "")]
    return out


@pytest.fixture(scope="module", params=["inprocess", "etcd"])
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    c = start_cluster(request.param, *API_ONLY_FLAGS)
    c.ok("apply", "-f", "-", input="\n---\n".join(yaml.safe_dump(o) for o in objects()))
    yield c
    c.stop()
    shutil.rmtree(c.work_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def kubelet(cluster: Cluster) -> Iterator[client.ApiClient]:
    api = config.new_client_from_config(str(node_kubeconfig(cluster, "n1")))
    yield api
    api.close()


def n1_kubectl(cluster: Cluster, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["kubectl", "--kubeconfig", str(node_kubeconfig(cluster, "n1")), *args], input=input,
                          capture_output=True, text=True, timeout=60)


def refused(call: object, *args: object, **kwargs: object) -> str:
    """The message of the 403 a Python-client call must get."""
    with pytest.raises(ApiException) as exc:
        call(*args, **kwargs)  # type: ignore[operator]
    assert exc.value.status == 403, exc.value.body
    body = json.loads(exc.value.body)
    assert body["reason"] == "Forbidden"
    return body["message"]


def forbidden(resource: str, name: str, verb: str, namespace: str, reason: str, group: str = "") -> str:
    """kube's authorization 403 text for user system:node:n1."""
    qualified = f"{resource}.{group}" if group else resource
    subject = f'{qualified} "{name}" is forbidden' if name else f"{qualified} is forbidden"
    where = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
    text = f'{subject}: User "{N1}" cannot {verb} resource "{resource}" in API group "{group}" {where}'
    return f"{text}: {reason}" if reason else text


NO_RELATIONSHIP = "no relationship found between node 'n1' and this object"
NO_READ_N2 = "node 'n1' cannot read 'n2', only its own Node object"


# ============================================================================ reads through the graph
def test_node_reads_only_what_its_pods_use(cluster: Cluster, kubelet: client.ApiClient) -> None:
    core = client.CoreV1Api(kubelet)
    assert core.read_namespaced_secret("s1", NS).data["k"]  # mounted by p1 on n1
    assert core.read_namespaced_config_map("cm1", NS).data == {"k": "v"}  # p1's envFrom
    assert core.read_namespaced_persistent_volume_claim("claim1", NS).metadata.name == "claim1"
    assert core.read_persistent_volume("pv1").metadata.name == "pv1"  # node <- pod <- pvc <- pv
    assert core.read_namespaced_secret("csi1", NS).data["k"]  # node <- pod <- pvc <- pv <- secret
    assert core.read_namespaced_pod("p1", NS).spec.node_name == "n1"
    for secret in ("s2", "s-free", "csi2"):
        assert refused(core.read_namespaced_secret, secret, NS) == forbidden("secrets", secret, "get", NS,
                                                                             NO_RELATIONSHIP)
    assert refused(core.read_persistent_volume, "pv2") == forbidden("persistentvolumes", "pv2", "get", "",
                                                                    NO_RELATIONSHIP)
    assert refused(core.read_namespaced_pod, "p2", NS) == forbidden("pods", "p2", "get", NS, NO_RELATIONSHIP)
    assert refused(core.list_namespaced_secret, NS) == forbidden("secrets", "", "list", NS, "No Object name found")
    assert refused(core.list_persistent_volume) == forbidden(
        "persistentvolumes", "", "list", "", "can only get individual resources of this type")

    # the graph follows pods: a pod bound to n1 that mounts s-free opens it, deleting the pod closes it again
    cluster.ok("apply", "-f", "-", input=yaml.safe_dump(pod("p3", "n1", secret="s-free")))
    assert wait_until(lambda: n1_kubectl(cluster, "get", "secret", "s-free", "-n", NS).returncode == 0, 10)
    cluster.ok("delete", "pod", "p3", "-n", NS, "--grace-period=0", "--force")
    assert wait_until(lambda: n1_kubectl(cluster, "get", "secret", "s-free", "-n", NS).returncode != 0, 10)
    proc = n1_kubectl(cluster, "get", "secret", "s-free", "-n", NS)
    assert f"Error from server (Forbidden): {forbidden('secrets', 's-free', 'get', NS, NO_RELATIONSHIP)}" \
        in proc.stderr


def test_node_lists_only_its_pods_and_its_node(cluster: Cluster, kubelet: client.ApiClient) -> None:
    core = client.CoreV1Api(kubelet)
    pods = core.list_pod_for_all_namespaces(field_selector="spec.nodeName=n1")
    assert [p.metadata.name for p in pods.items] == ["p1"]
    assert refused(core.list_pod_for_all_namespaces) == forbidden(
        "pods", "", "list", "", "can only list/watch pods with spec.nodeName field selector")
    assert refused(core.list_pod_for_all_namespaces, field_selector="spec.nodeName=n2") == forbidden(
        "pods", "", "list", "", "can only list/watch pods with spec.nodeName field selector")
    assert [n.metadata.name for n in core.list_node(field_selector="metadata.name=n1").items] == ["n1"]
    assert refused(core.list_node) == forbidden("nodes", "", "list", "",
                                                "node 'n1' cannot read all nodes, only its own Node object")
    assert refused(core.read_node, "n2") == forbidden("nodes", "n2", "get", "", NO_READ_N2)
    # kubectl's watch of its pods, as a kubelet opens it
    proc = n1_kubectl(cluster, "get", "pods", "-A", "--field-selector", "spec.nodeName=n1", "-o", "name")
    assert proc.returncode == 0 and proc.stdout.split() == ["pod/p1"], proc.stderr


# ============================================================================ NodeRestriction on writes
def test_node_updates_its_own_node_and_lease_only(cluster: Cluster, kubelet: client.ApiClient) -> None:
    core, coord = client.CoreV1Api(kubelet), client.CoordinationV1Api(kubelet)
    patched = core.patch_node("n1", {"metadata": {"labels": {"node.kubernetes.io/pool": "a", "example.com/x": "1"}}})
    assert patched.metadata.labels["node.kubernetes.io/pool"] == "a"
    status = core.patch_node_status("n1", {"status": {"conditions": [
        {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status"}]}})
    assert status.status.conditions[0].reason == "KubeletReady"
    assert refused(core.patch_node, "n2", {"metadata": {"labels": {"a": "b"}}}) == \
        'nodes "n2" is forbidden: node "n1" is not allowed to modify node "n2"'
    assert refused(core.patch_node_status, "n2", {"status": {"phase": "Running"}}) == \
        'nodes "n2" is forbidden: node "n1" is not allowed to modify node "n2"'
    assert refused(core.patch_node, "n1", {"metadata": {"labels": {
        "node-restriction.kubernetes.io/pool": "x", "kubernetes.io/role": "master"}}}) == \
        'nodes "n1" is forbidden: is not allowed to modify labels: kubernetes.io/role, ' \
        'node-restriction.kubernetes.io/pool'
    assert refused(core.patch_node, "n1", {"spec": {"taints": [{"key": "k", "effect": "NoSchedule"}]}}) == \
        'nodes "n1" is forbidden: node "n1" is not allowed to modify taints'
    assert refused(core.delete_node, "n1") == forbidden("nodes", "n1", "delete", "", "")

    renewed = coord.patch_namespaced_lease("n1", "kube-node-lease", {"spec": {"leaseDurationSeconds": 40}})
    assert renewed.spec.lease_duration_seconds == 40
    assert refused(coord.patch_namespaced_lease, "n2", "kube-node-lease", {"spec": {"leaseDurationSeconds": 1}}) == \
        forbidden("leases", "n2", "patch", "kube-node-lease",
                  "can only access node lease with the same name as the requesting node", "coordination.k8s.io")
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "n3"}}
    assert refused(coord.create_namespaced_lease, "kube-node-lease", lease) == \
        'leases.coordination.k8s.io "n3" is forbidden: can only access node lease with the same name as the ' \
        'requesting node'
    # kubectl reads before it patches: another node's object is refused at that read, its own at the write
    proc = n1_kubectl(cluster, "label", "node", "n2", "x=y")
    assert f"Error from server (Forbidden): {forbidden('nodes', 'n2', 'get', '', NO_READ_N2)}" in proc.stderr
    proc = n1_kubectl(cluster, "label", "node", "n1", "node-restriction.kubernetes.io/x=y")
    assert 'Error from server (Forbidden): nodes "n1" is forbidden: is not allowed to modify labels: ' \
           'node-restriction.kubernetes.io/x' in proc.stderr
    assert n1_kubectl(cluster, "label", "node", "n1", "kubelet.kubernetes.io/x=y").returncode == 0


def test_node_writes_status_of_its_pods_and_mirror_pods(cluster: Cluster, kubelet: client.ApiClient) -> None:
    core = client.CoreV1Api(kubelet)
    running = core.patch_namespaced_pod_status("p1", NS, {"status": {"phase": "Running"}})
    assert running.status.phase == "Running"
    assert refused(core.patch_namespaced_pod_status, "p2", NS, {"status": {"phase": "Running"}}) == \
        'pods "p2" is forbidden: node "n1" can only update pod status for pods with spec.nodeName set to itself'
    assert refused(core.patch_namespaced_pod_status, "p1", NS, {"metadata": {"labels": {"x": "y"}}}) == \
        'pods "p1" is forbidden: node "n1" cannot update labels through pod status'
    assert refused(core.patch_namespaced_pod, "p1", NS, {"metadata": {"labels": {"x": "y"}}}) == \
        forbidden("pods", "p1", "patch", NS, "")
    assert refused(core.delete_namespaced_pod, "p2", NS) == \
        'pods "p2" is forbidden: node "n1" can only delete pods with spec.nodeName set to itself'
    assert refused(core.create_namespaced_pod, NS, pod("plain", "n1")) == \
        'pods "plain" is forbidden: pod does not have "kubernetes.io/config.mirror" annotation, node "n1" can ' \
        'only create mirror pods'
    eviction = client.V1Eviction(metadata=client.V1ObjectMeta(name="p2", namespace=NS))
    assert refused(core.create_namespaced_pod_eviction, "p2", NS, eviction) == \
        'pods "p2" is forbidden: node n1 can only evict pods with spec.nodeName set to itself'

    node_uid = client.CoreV1Api(config.new_client_from_config(str(cluster.kubeconfig))).read_node("n1").metadata.uid
    mirror = pod("static-web-n1", "n1")
    mirror["metadata"]["annotations"] = {"kubernetes.io/config.mirror": "hash"}
    mirror["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "Node", "name": "n1", "uid": node_uid,
                                              "controller": True}]
    assert core.create_namespaced_pod(NS, mirror).spec.node_name == "n1"
    with_secret = pod("static-secret-n1", "n1", secret="s1")
    with_secret["metadata"].update(annotations=mirror["metadata"]["annotations"],
                                   ownerReferences=mirror["metadata"]["ownerReferences"])
    assert refused(core.create_namespaced_pod, NS, with_secret) == \
        'pods "static-secret-n1" is forbidden: node "n1" can not create pods that reference secrets'
    core.delete_namespaced_pod("static-web-n1", NS, grace_period_seconds=0)


def test_node_tokens_only_for_its_pods(cluster: Cluster, kubelet: client.ApiClient) -> None:
    core = client.CoreV1Api(kubelet)
    p1_uid = core.read_namespaced_pod("p1", NS).metadata.uid

    def token_request(pod_name: str | None, uid: str = "") -> client.AuthenticationV1TokenRequest:
        bound = client.V1BoundObjectReference(api_version="v1", kind="Pod", name=pod_name, uid=uid) \
            if pod_name else None
        return client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(
            audiences=["https://kubernetes.default.svc"], bound_object_ref=bound))

    issued = core.create_namespaced_service_account_token("sa1", NS, token_request("p1", p1_uid))
    assert issued.status.token.count(".") == 2
    assert refused(core.create_namespaced_service_account_token, "sa2", NS, token_request("p1", p1_uid)) == \
        forbidden("serviceaccounts", "sa2", "create", NS, NO_RELATIONSHIP).replace(
            'resource "serviceaccounts"', 'resource "serviceaccounts/token"')
    assert refused(core.create_namespaced_service_account_token, "sa1", NS, token_request(None)) == \
        'serviceaccounts "sa1" is forbidden: node requested token not bound to a pod'


def test_kubectl_auth_can_i_as_a_node(cluster: Cluster) -> None:
    def can_i(*args: str) -> str:
        proc = cluster.kubectl("auth", "can-i", *args, "--as", N1, "--as-group", "system:nodes")
        return proc.stdout.strip()

    assert can_i("get", "secret/s1", "-n", NS) == "yes"
    assert can_i("get", "secret/s2", "-n", NS) == f"no - {NO_RELATIONSHIP}"
    assert can_i("get", "configmap/cm1", "-n", NS) == "yes"
    assert can_i("update", "nodes/n1") == "yes"
    assert can_i("get", "nodes/n2") == f"no - {NO_READ_N2}"
    assert can_i("list", "pods") == "no - can only list/watch pods with spec.nodeName field selector"
    assert can_i("patch", "pods", "--subresource", "status", "-n", NS) == "yes"
    assert can_i("create", "events", "-n", NS) == "yes"  # kube's static node rules
    assert can_i("delete", "nodes/n1") == "no"
    assert can_i("get", "leases/n2", "-n", "kube-node-lease") == \
        "no - can only access node lease with the same name as the requesting node"
    # the Node authorizer cannot enumerate a node's rules: the rules review says so, as kube's does
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview", "spec": {"namespace": NS}}
    status = json.loads(cluster.ok("create", "-f", "-", "-o", "json", "--as", N1, "--as-group", "system:nodes",
                                   input=json.dumps(review)))["status"]
    assert status["incomplete"] is True
    assert status["evaluationError"] == "node authorizer does not support user rule resolution"
    # the bootstrap system:node role stays unbound: without the group the user has no node rights at all
    proc = cluster.kubectl("auth", "can-i", "update", "nodes/n1", "--as", N1)
    assert proc.stdout.strip() == "no"
