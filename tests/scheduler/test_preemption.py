"""Pod priority and preemption in a real `ultraplane up` with one small simulated node (m5.large, 1930m cpu):
the Priority admission plugin and PriorityClass validation through kubectl and the Python client, then the
scheduler's DefaultPreemption (victims, Preempted events, DisruptionTarget, nominatedNodeName).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from tests.apiserver.conftest import Cluster, inprocess_cluster
from tests.harness import wait_for
from ultraplane.apiserver.priority import PriorityAdmission

WAIT_S = 30.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with inprocess_cluster("ultraplane-preempt-", "--nodes", "1", "--node-type", "m5.large=1") as c:
        yield c


@pytest.fixture(scope="module")
def core(cluster: Cluster) -> client.CoreV1Api:
    return client.CoreV1Api(config.new_client_from_config(str(cluster.kubeconfig)))


@pytest.fixture(scope="module")
def scheduling(core: client.CoreV1Api) -> client.SchedulingV1Api:
    return client.SchedulingV1Api(core.api_client)



@pytest.fixture(scope="module")
def node(core: client.CoreV1Api) -> str:
    def registered() -> list[Any]:
        return core.list_node(label_selector="ultraplane.io/simulated=true").items

    return wait_for(registered, "the simulated node", 60)[0].metadata.name


def pod_body(name: str, cpu: str, **spec: Any) -> dict[str, Any]:
    resources = {"requests": {"cpu": cpu}, "limits": {"cpu": cpu}}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name.split("-")[0]}},
            "spec": {"containers": [{"name": "app", "image": "nginx", "resources": resources}],
                     "terminationGracePeriodSeconds": 1, **spec}}


def make_class(scheduling: client.SchedulingV1Api, name: str, value: int, **extra: Any) -> None:
    scheduling.create_priority_class({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                                      "metadata": {"name": name}, "value": value, **extra})


def failed_scheduling(core: client.CoreV1Api, ns: str, name: str) -> list[str]:
    return [e.message for e in core.list_namespaced_event(ns, field_selector=f"involvedObject.name={name}").items
            if e.reason == "FailedScheduling"]


# ---------------------------------------------------------------------------- admission and validation
def test_system_classes_exist_at_startup(cluster: Cluster, scheduling: client.SchedulingV1Api) -> None:
    out = cluster.ok("get", "priorityclasses", "--no-headers")
    rows = {line.split()[0]: line.split() for line in out.strip().splitlines()}
    assert rows["system-cluster-critical"][1:3] == ["2000000000", "false"]
    assert rows["system-node-critical"][1:3] == ["2000001000", "false"]
    pc = scheduling.read_priority_class("system-node-critical")
    assert pc.description == "Used for system critical pods that must not be moved from their current node."
    assert pc.preemption_policy == "PreemptLowerPriority"


def test_priority_class_name_resolves_into_the_pod(cluster: Cluster, core: client.CoreV1Api,
                                                    scheduling: client.SchedulingV1Api) -> None:
    cluster.ok("create", "namespace", "adm")
    cluster.ok("create", "priorityclass", "gold", "--value=1000", "--preemption-policy=Never")
    # schedulerName "nobody": no scheduler or kubelet writes to it, so the update below cannot conflict
    core.create_namespaced_pod("adm", pod_body("gold-1", "10m", priorityClassName="gold", schedulerName="nobody"))
    spec = core.read_namespaced_pod("gold-1", "adm").spec
    assert (spec.priority, spec.preemption_policy, spec.priority_class_name) == (1000, "Never", "gold")
    # A full update without the admission-set fields keeps them (the plugin's UPDATE path).
    pod = core.read_namespaced_pod("gold-1", "adm")
    pod.spec.priority, pod.spec.preemption_policy = None, None
    pod.metadata.labels["tier"] = "gold"
    replaced = core.replace_namespaced_pod("gold-1", "adm", pod)
    assert (replaced.spec.priority, replaced.spec.preemption_policy) == (1000, "Never")
    core.create_namespaced_pod("adm", pod_body("crit-1", "10m", priorityClassName="system-cluster-critical"))
    assert core.read_namespaced_pod("crit-1", "adm").spec.priority == 2000000000
    plain = core.create_namespaced_pod("adm", pod_body("plain-1", "10m"))
    assert (plain.spec.priority, plain.spec.preemption_policy, plain.spec.priority_class_name) == (
        0, "PreemptLowerPriority", None)

    with pytest.raises(ApiException) as err:
        core.create_namespaced_pod("adm", pod_body("x", "10m", priorityClassName="foo"))
    assert err.value.status == 403
    assert 'pods \\"x\\" is forbidden: no PriorityClass with name foo was found' in err.value.body
    proc = cluster.kubectl("run", "y", "-n", "adm", "--image=nginx", "--overrides",
                           '{"spec": {"priorityClassName": "foo"}}')
    assert proc.returncode != 0
    assert 'Error from server (Forbidden): pods "y" is forbidden: no PriorityClass with name foo was found' in \
        proc.stderr
    with pytest.raises(ApiException) as err:
        core.create_namespaced_pod("adm", pod_body("z", "10m", priorityClassName="gold", priority=7))
    assert err.value.status == 403
    assert ("the integer value of priority (7) must not be provided in pod spec; priority admission controller "
            "computed 1000 from the given PriorityClass name") in err.value.body


def test_priority_class_validation(cluster: Cluster, scheduling: client.SchedulingV1Api) -> None:
    proc = cluster.kubectl("create", "priorityclass", "too-high", "--value=1000000001")
    assert proc.returncode != 0
    assert ('PriorityClass.scheduling.k8s.io "too-high" is invalid: value: Forbidden: maximum allowed value of a '
            'user defined priority is 1000000000') in proc.stderr
    with pytest.raises(ApiException) as err:
        make_class(scheduling, "system-mine", 10)
    assert err.value.status == 422
    assert ("metadata.name: Forbidden: priority class names with 'system-' prefix are reserved for system use only. "
            "error: system-mine is not a known system priority class") in err.value.body
    make_class(scheduling, "fixed", 5)
    with pytest.raises(ApiException) as err:
        scheduling.patch_priority_class("fixed", {"value": 6})
    assert err.value.status == 422 and "value: Forbidden: may not be changed in an update." in err.value.body


def test_global_default_class(cluster: Cluster, core: client.CoreV1Api,
                              scheduling: client.SchedulingV1Api) -> None:
    make_class(scheduling, "everyday", 100, globalDefault=True)
    try:
        with pytest.raises(ApiException) as err:
            make_class(scheduling, "another", 200, globalDefault=True)
        assert err.value.status == 403
        assert ("PriorityClass everyday is already marked as default. Only one default can exist"
                in err.value.body)
        core.create_namespaced_pod("adm", pod_body("dflt-1", "10m"))
        spec = core.read_namespaced_pod("dflt-1", "adm").spec
        assert (spec.priority, spec.priority_class_name) == (100, "everyday")
    finally:
        scheduling.delete_priority_class("everyday")
    cluster.ok("delete", "namespace", "adm", "--wait=false")


def test_default_class_is_read_from_the_watch_cache(cluster: Cluster, core: client.CoreV1Api,
                                                    scheduling: client.SchedulingV1Api) -> None:
    """Past the short window in which pod creates read a class written through this server from the
    store, they read the index the watch cache keeps (no store read per pod), which follows creates
    and deletes of classes."""
    cluster.ok("create", "namespace", "idx")
    settle = PriorityAdmission.FRESH_READ_S + 0.5
    make_class(scheduling, "later", 300, globalDefault=True)
    try:
        time.sleep(settle)
        core.create_namespaced_pod("idx", pod_body("idx-1", "10m"))
        spec = core.read_namespaced_pod("idx-1", "idx").spec
        assert (spec.priority, spec.priority_class_name) == (300, "later")
    finally:
        scheduling.delete_priority_class("later")
    time.sleep(settle)
    core.create_namespaced_pod("idx", pod_body("idx-2", "10m"))
    spec = core.read_namespaced_pod("idx-2", "idx").spec
    assert (spec.priority, spec.priority_class_name, spec.preemption_policy) == (0, None, "PreemptLowerPriority")
    cluster.ok("delete", "namespace", "idx", "--wait=false")


def test_binding_clears_the_nomination(cluster: Cluster, core: client.CoreV1Api, node: str) -> None:
    """kube-apiserver's pods/binding clears status.nominatedNodeName, whoever set it (1.35's default)."""
    cluster.ok("create", "namespace", "bind")
    core.create_namespaced_pod("bind", pod_body("manual-1", "10m", schedulerName="nobody"))
    core.patch_namespaced_pod_status("manual-1", "bind", {"status": {"nominatedNodeName": node}})
    assert core.read_namespaced_pod("manual-1", "bind").status.nominated_node_name == node
    # the answer is a Status, which the client cannot read as a Binding: kept raw
    core.create_namespaced_pod_binding("manual-1", "bind", {
        "apiVersion": "v1", "kind": "Binding", "metadata": {"name": "manual-1", "annotations": {"bound-by": "test"}},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node}}, _preload_content=False)
    bound = core.read_namespaced_pod("manual-1", "bind")
    assert (bound.spec.node_name, bound.status.nominated_node_name) == (node, None)
    # setPodNodeAndMetadata also copies the binding's annotations and sets PodScheduled=True
    assert bound.metadata.annotations["bound-by"] == "test"
    scheduled = [c for c in bound.status.conditions or [] if c.type == "PodScheduled"]
    assert [c.status for c in scheduled] == ["True"] and scheduled[0].last_transition_time is not None
    cluster.ok("delete", "namespace", "bind", "--wait=false")


# ---------------------------------------------------------------------------- preemption
@pytest.fixture(scope="module")
def full_node(cluster: Cluster, core: client.CoreV1Api, scheduling: client.SchedulingV1Api, node: str) -> str:
    """Three low-priority pods of 600m fill the 1930m node."""
    cluster.ok("create", "namespace", "pre")
    make_class(scheduling, "low", 10)
    make_class(scheduling, "high", 1000)
    make_class(scheduling, "polite", 1000, preemptionPolicy="Never")
    for i in range(3):
        core.create_namespaced_pod("pre", pod_body(f"low-{i}", "600m", priorityClassName="low"))
    for i in range(3):
        wait_for(lambda i=i: core.read_namespaced_pod(f"low-{i}", "pre").status.phase == "Running", f"low-{i}")
    return node


def test_never_policy_and_equal_priority_do_not_preempt(core: client.CoreV1Api, full_node: str) -> None:
    core.create_namespaced_pod("pre", pod_body("polite-1", "1", priorityClassName="polite"))
    core.create_namespaced_pod("pre", pod_body("peer-1", "1", priorityClassName="low"))
    core.create_namespaced_pod("pre", pod_body("huge-1", "3", priorityClassName="high"))
    never = wait_for(lambda: failed_scheduling(core, "pre", "polite-1"), "FailedScheduling of polite-1")
    assert never[0] == ("0/1 nodes are available: 1 Insufficient cpu. preemption: not eligible due to "
                        "preemptionPolicy=Never.")
    peer = wait_for(lambda: failed_scheduling(core, "pre", "peer-1"), "FailedScheduling of peer-1")
    assert peer[0] == ("0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available: "
                       "1 No preemption victims found for incoming pod.")
    # Removing every lower-priority pod would not make room: the dry run reports the filter's reason.
    huge = wait_for(lambda: failed_scheduling(core, "pre", "huge-1"), "FailedScheduling of huge-1")
    assert huge[0] == ("0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available: "
                       "1 Insufficient cpu.")
    time.sleep(1.0)
    assert all(p.metadata.deletion_timestamp is None for p in core.list_namespaced_pod("pre").items)
    assert core.read_namespaced_pod("polite-1", "pre").spec.node_name is None
    for name in ("polite-1", "peer-1", "huge-1"):
        core.delete_namespaced_pod(name, "pre")


def test_high_priority_pod_preempts_low_priority_pods(core: client.CoreV1Api, full_node: str) -> None:
    rv = core.list_namespaced_pod("pre").metadata.resource_version
    created = core.create_namespaced_pod("pre", pod_body("high-1", "1", priorityClassName="high"))
    nominated: set[str] = set()
    disrupted: dict[str, Any] = {}
    deleted: set[str] = set()
    for event in watch.Watch().stream(core.list_namespaced_pod, "pre", resource_version=rv,
                                      timeout_seconds=int(WAIT_S)):
        pod = event["object"]
        name = pod.metadata.name
        if name == "high-1" and pod.status.nominated_node_name:
            nominated.add(pod.status.nominated_node_name)
        for cond in pod.status.conditions or []:
            if cond.type == "DisruptionTarget":
                disrupted[name] = cond
        if event["type"] == "DELETED":
            deleted.add(name)
        if name == "high-1" and pod.status.phase == "Running":
            break
    else:
        raise AssertionError("high-1 did not start")
    # 1930m holds the 1000m preemptor and one 600m pod: two low pods go, one is reprieved.
    assert len(deleted) == 2 and deleted <= {"low-0", "low-1", "low-2"}
    assert nominated == {full_node}
    bound = core.read_namespaced_pod("high-1", "pre")
    assert bound.spec.node_name == full_node
    # kube-apiserver's binding clears the nomination (ClearingNominatedNodeNameAfterBinding, default since 1.35)
    assert bound.status.nominated_node_name is None
    assert set(disrupted) == deleted
    for cond in disrupted.values():
        assert (cond.status, cond.reason, cond.message) == (
            "True", "PreemptionByScheduler", "default-scheduler: preempting to accommodate a higher priority pod")
    survivors = [p.metadata.name for p in core.list_namespaced_pod("pre").items if p.metadata.name.startswith("low")]
    assert len(survivors) == 1

    def preempted() -> list[Any]:
        found = [e for e in core.list_namespaced_event("pre").items if e.reason == "Preempted"]
        return found if len(found) >= 2 else []

    events = wait_for(preempted, "two Preempted events")
    assert {e.involved_object.name for e in events} == deleted
    # The preemptor's own failure names no preemption outcome: PostFilter succeeded by nominating the node.
    assert failed_scheduling(core, "pre", "high-1")[0] == "0/1 nodes are available: 1 Insufficient cpu."
    for e in events:
        assert e.type == "Normal" and e.message == f"Preempted by pod {created.metadata.uid} on node {full_node}"
    # The node is full again for anyone below: a new low pod stays pending and preempts nobody.
    core.create_namespaced_pod("pre", pod_body("low-9", "600m", priorityClassName="low"))
    wait_for(lambda: failed_scheduling(core, "pre", "low-9"), "FailedScheduling of low-9")
    assert core.read_namespaced_pod("high-1", "pre").status.phase == "Running"


def test_victims_spare_pods_guarded_by_a_disruption_budget(cluster: Cluster, core: client.CoreV1Api,
                                                           full_node: str) -> None:
    cluster.ok("delete", "pods", "--all", "-n", "pre", "--wait=true", "--timeout=30s")
    for name in ("free-0", "free-1"):
        core.create_namespaced_pod("pre", pod_body(name, "600m", priorityClassName="low"))
    for name in ("free-0", "free-1"):
        wait_for(lambda name=name: core.read_namespaced_pod(name, "pre").status.phase == "Running", name)
    time.sleep(1.1)  # the guarded pod starts last: without its budget it would be the first victim
    core.create_namespaced_pod("pre", pod_body("guarded-0", "600m", priorityClassName="low"))
    wait_for(lambda: core.read_namespaced_pod("guarded-0", "pre").status.phase == "Running", "guarded-0")
    policy = client.PolicyV1Api(core.api_client)
    policy.create_namespaced_pod_disruption_budget("pre", {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "guard"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "guarded"}}}})

    def settled() -> bool:
        status = policy.read_namespaced_pod_disruption_budget("guard", "pre").status
        return status is not None and status.current_healthy == 1 and status.disruptions_allowed == 0

    wait_for(settled, "the budget's status")
    core.create_namespaced_pod("pre", pod_body("high-2", "1", priorityClassName="high"))
    wait_for(lambda: core.read_namespaced_pod("high-2", "pre").status.phase == "Running", "high-2 running")
    left = {p.metadata.name for p in core.list_namespaced_pod("pre").items}
    assert left == {"guarded-0", "high-2"}
