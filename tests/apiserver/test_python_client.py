"""The official Python client (`kubernetes`) against the API server, on both storage backends."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from tests.apiserver.conftest import Cluster


@pytest.fixture(scope="module")
def api(cluster: Cluster) -> Iterator[client.ApiClient]:
    api_client = config.new_client_from_config(str(cluster.kubeconfig))
    yield api_client
    api_client.close()


def make_namespace(core: client.CoreV1Api, name: str) -> str:
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    return name


def configmap(name: str, data: dict[str, str] | None = None, labels: dict[str, str] | None = None) -> client.V1ConfigMap:
    return client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name, labels=labels), data=data)


def test_crud_and_exact_status_bodies(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    ns = make_namespace(core, "py-crud")
    created = core.create_namespaced_config_map(ns, configmap("one", {"a": "1"}))
    assert created.metadata.uid and created.metadata.resource_version.isdigit()
    stale = created.metadata.resource_version
    created.data = {"a": "2"}
    updated = core.replace_namespaced_config_map("one", ns, created)
    assert int(updated.metadata.resource_version) > int(stale)
    created.data = {"a": "3"}
    created.metadata.resource_version = stale
    with pytest.raises(ApiException) as conflict:
        core.replace_namespaced_config_map("one", ns, created)
    assert conflict.value.status == 409
    assert json.loads(conflict.value.body) == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'Operation cannot be fulfilled on configmaps "one": the object has been modified; please apply '
                   'your changes to the latest version and try again',
        "reason": "Conflict", "details": {"name": "one", "kind": "configmaps"}, "code": 409}
    with pytest.raises(ApiException) as exists:
        core.create_namespaced_config_map(ns, configmap("one"))
    assert json.loads(exists.value.body) == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'configmaps "one" already exists', "reason": "AlreadyExists",
        "details": {"name": "one", "kind": "configmaps"}, "code": 409}
    with pytest.raises(ApiException) as missing:
        client.AppsV1Api(api).read_namespaced_deployment("nope", ns)
    assert json.loads(missing.value.body) == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'deployments.apps "nope" not found', "reason": "NotFound",
        "details": {"name": "nope", "group": "apps", "kind": "deployments"}, "code": 404}
    generated = core.create_namespaced_config_map(ns, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(generate_name="gen-")))
    assert generated.metadata.name.startswith("gen-") and len(generated.metadata.name) == 9
    status = core.delete_namespaced_config_map("one", ns)
    assert status["status"] == "Success" and status["details"]["name"] == "one"
    with pytest.raises(ApiException) as gone:
        core.read_namespaced_config_map("one", ns)
    assert gone.value.status == 404


def test_secret_string_data_and_finalizers(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    ns = make_namespace(core, "py-secrets")
    secret = core.create_namespaced_secret(ns, client.V1Secret(
        metadata=client.V1ObjectMeta(name="s", finalizers=["example.com/hold"]), string_data={"user": "admin"}))
    assert secret.data == {"user": "YWRtaW4="} and secret.type == "Opaque" and secret.string_data is None
    core.delete_namespaced_secret("s", ns)
    held = core.read_namespaced_secret("s", ns)
    assert held.metadata.deletion_timestamp is not None
    core.patch_namespaced_secret("s", ns, {"metadata": {"finalizers": None}})
    with pytest.raises(ApiException) as gone:
        core.read_namespaced_secret("s", ns)
    assert gone.value.status == 404


def test_list_pagination(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    ns = make_namespace(core, "py-pages")
    for i in range(5):
        core.create_namespaced_config_map(ns, configmap(f"cm-{i}"))
    names: list[str] = []
    token = None
    pages = 0
    while True:
        page = core.list_namespaced_config_map(ns, limit=2, _continue=token)
        pages += 1
        names += [item.metadata.name for item in page.items]
        token = page.metadata._continue
        if not token:
            break
    assert names == [f"cm-{i}" for i in range(5)]
    assert pages == 3
    with pytest.raises(ApiException) as bad:
        core.list_namespaced_config_map(ns, limit=2, _continue="not-a-token")
    assert bad.value.status == 400


def test_watch_events(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    ns = make_namespace(core, "py-watch")
    start = core.list_namespaced_config_map(ns).metadata.resource_version
    seen: list[tuple[str, str, str]] = []
    w = watch.Watch()
    ready = threading.Event()

    def consume() -> None:
        ready.set()
        for event in w.stream(core.list_namespaced_config_map, ns, resource_version=start, timeout_seconds=30):
            obj = event["object"]
            seen.append((event["type"], obj.metadata.name, (obj.data or {}).get("v", "")))
            if event["type"] == "DELETED":
                w.stop()

    thread = threading.Thread(target=consume)
    thread.start()
    ready.wait()
    core.create_namespaced_config_map(ns, configmap("w", {"v": "1"}))
    core.patch_namespaced_config_map("w", ns, {"data": {"v": "2"}})
    core.delete_namespaced_config_map("w", ns)
    thread.join(60)
    assert not thread.is_alive()
    assert seen == [("ADDED", "w", "1"), ("MODIFIED", "w", "2"), ("DELETED", "w", "2")]


def test_watch_with_label_selector_from_now(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    ns = make_namespace(core, "py-watch-sel")
    core.create_namespaced_config_map(ns, configmap("before", labels={"team": "a"}))
    w = watch.Watch()
    got: list[tuple[str, str]] = []
    for event in w.stream(core.list_namespaced_config_map, ns, label_selector="team=a", timeout_seconds=30):
        got.append((event["type"], event["object"].metadata.name))
        if len(got) == 1:
            core.create_namespaced_config_map(ns, configmap("other", labels={"team": "b"}))
            core.create_namespaced_config_map(ns, configmap("after", labels={"team": "a"}))
        if len(got) == 2:
            w.stop()
    assert got == [("ADDED", "before"), ("ADDED", "after")]


def test_status_and_scale_subresources(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    apps = client.AppsV1Api(api)
    ns = make_namespace(core, "py-subresources")
    dep = apps.create_namespaced_deployment(ns, {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
        "spec": {"selector": {"matchLabels": {"app": "d"}},
                 "template": {"metadata": {"labels": {"app": "d"}},
                              "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}})
    assert dep.spec.strategy.type == "RollingUpdate"
    assert dep.spec.strategy.rolling_update.max_surge == "25%"
    assert dep.spec.revision_history_limit == 10 and dep.spec.progress_deadline_seconds == 600
    assert dep.spec.replicas == 1
    apps.patch_namespaced_deployment_status("d", ns, {"status": {"replicas": 1, "readyReplicas": 1}})
    apps.patch_namespaced_deployment("d", ns, {"status": {"replicas": 7}})
    got = apps.read_namespaced_deployment("d", ns)
    assert got.status.replicas == 1 and got.status.ready_replicas == 1
    scale = apps.read_namespaced_deployment_scale("d", ns)
    assert scale.spec.replicas == 1 and scale.status.selector == "app=d"
    apps.patch_namespaced_deployment_scale("d", ns, {"spec": {"replicas": 3}})
    assert apps.read_namespaced_deployment("d", ns).spec.replicas == 3
    pod = core.create_namespaced_pod(ns, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                                          "spec": {"containers": [{"name": "c", "image": "nginx"}]}})
    assert pod.spec.node_name is None
    core.create_namespaced_pod_binding("p", ns, client.V1Binding(
        metadata=client.V1ObjectMeta(name="p"), target=client.V1ObjectReference(kind="Node", name="node-1")),
        _preload_content=False)
    assert core.read_namespaced_pod("p", ns).spec.node_name == "node-1"


def test_watch_services_and_leases(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    ns = make_namespace(core, "py-svc-watch")
    start = core.list_namespaced_service(ns).metadata.resource_version
    core.create_namespaced_service(ns, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
                                        "spec": {"ports": [{"port": 80}]}})
    events = []
    for event in watch.Watch().stream(core.list_namespaced_service, ns, resource_version=start, timeout_seconds=30):
        events.append((event["type"], event["object"].metadata.name, event["object"].spec.cluster_ip))
        break
    assert events[0][:2] == ("ADDED", "s") and events[0][2].startswith("10.")
    leases = client.CoordinationV1Api(api)
    lease = leases.create_namespaced_lease(ns, {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                                                "metadata": {"name": "leader"},
                                                "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}})
    lease.spec.holder_identity = "b"
    assert leases.replace_namespaced_lease("leader", ns, lease).spec.holder_identity == "b"


def test_events_in_both_api_groups(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    ns = make_namespace(core, "py-events")
    events_v1 = client.EventsV1Api(api)
    created = events_v1.create_namespaced_event(ns, {
        "apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e1"},
        "eventTime": "2026-01-01T00:00:00.000000Z", "reportingController": "ctl", "reportingInstance": "ctl-1",
        "action": "Scheduled", "reason": "Scheduled", "type": "Normal", "note": "hello",
        "regarding": {"kind": "Pod", "name": "p", "namespace": ns}})
    assert created.note == "hello" and created.regarding.name == "p"
    as_core = core.read_namespaced_event("e1", ns)
    assert as_core.message == "hello" and as_core.involved_object.name == "p"
    assert as_core.reporting_component == "ctl"
    assert [e.note for e in events_v1.list_namespaced_event(ns).items] == ["hello"]


def test_storage_and_replication_controller_resources(api: client.ApiClient, cluster: Cluster) -> None:
    core = client.CoreV1Api(api)
    ns = make_namespace(core, "py-storage")
    pv = core.create_persistent_volume({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pv1"},
                                        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                                                 "hostPath": {"path": "/tmp/pv1"}}})
    assert pv.spec.persistent_volume_reclaim_policy == "Retain" and pv.status.phase == "Pending"
    pvc = core.create_namespaced_persistent_volume_claim(ns, {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
    assert pvc.spec.volume_mode == "Filesystem" and pvc.status.phase == "Pending"
    rc = core.create_namespaced_replication_controller(ns, {
        "apiVersion": "v1", "kind": "ReplicationController", "metadata": {"name": "rc"},
        "spec": {"template": {"metadata": {"labels": {"app": "rc"}},
                              "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}})
    assert rc.spec.replicas == 1 and rc.spec.selector == {"app": "rc"}
    table = cluster.ok("get", "pv,pvc,rc", "-n", ns)
    rows = {line.split()[0]: line.split() for line in table.splitlines() if line and not line.startswith("NAME")}
    assert rows["persistentvolume/pv1"][1:5] == ["1Gi", "RWO", "Retain", "Pending"]
    assert rows["persistentvolumeclaim/data"][1] == "Pending"
    assert rows["replicationcontroller/rc"][1:4] == ["1", "0", "0"]
    core.delete_persistent_volume("pv1")
