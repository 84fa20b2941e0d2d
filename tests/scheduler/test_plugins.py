"""Filters, scores, FailedScheduling messages and equivalence classes on a cache fed directly."""

from __future__ import annotations

import random
from typing import Any

import pytest

from ultraplane.scheduler import plugins
from ultraplane.scheduler.cache import ClusterCache
from ultraplane.scheduler.core import Algorithm, FitError, nodes_to_find
from ultraplane.scheduler.model import pod_info, pod_requests
from ultraplane.scheduler.preemption import Preemption
from ultraplane.scheduler.quantity import parse_resource
from ultraplane.scheduler.queue import SchedulingQueue


def node(name: str, cpu: str = "4", memory: str = "8Gi", pods: int = 110, labels: dict[str, str] | None = None,
         taints: list[dict[str, Any]] | None = None, unschedulable: bool = False, **extra: str) -> dict[str, Any]:
    alloc = {"cpu": cpu, "memory": memory, "pods": str(pods), **extra}
    return {"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
            "spec": {"taints": taints or [], "unschedulable": unschedulable},
            "status": {"allocatable": alloc, "capacity": alloc}}


def pod(name: str, cpu: str | None = None, memory: str | None = None, ns: str = "default",
        labels: dict[str, str] | None = None, node_name: str = "", **spec: Any) -> dict[str, Any]:
    requests = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v}
    for key in list(spec):
        if key.startswith("req_"):
            requests[key[4:]] = spec.pop(key)
    body = {"containers": [{"name": "c", "image": "nginx", "resources": {"requests": requests}}], **spec}
    if node_name:
        body["nodeName"] = node_name
    return {"metadata": {"name": name, "namespace": ns, "uid": name, "labels": labels or {}}, "spec": body}


def cluster(*nodes: dict[str, Any]) -> tuple[ClusterCache, Algorithm]:
    cache = ClusterCache()
    for n in nodes:
        cache.upsert_node(n)
    return cache, Algorithm(cache, seed=1)


def place(algo: Algorithm, obj: dict[str, Any]) -> str:
    info = pod_info(obj)
    chosen = algo.schedule(info)
    algo.cache.assume(info, chosen)
    return chosen


def fit_error(algo: Algorithm, obj: dict[str, Any]) -> str:
    with pytest.raises(FitError) as err:
        algo.schedule(pod_info(obj))
    return str(err.value)


def test_quantities() -> None:
    assert parse_resource("cpu", "250m") == 250
    assert parse_resource("cpu", "2") == 2000
    assert parse_resource("cpu", "0.1") == 100
    assert parse_resource("memory", "1Gi") == 2**30
    assert parse_resource("memory", "1G") == 10**9
    assert parse_resource("memory", "128974848") == 128974848
    assert parse_resource("nvidia.com/gpu", "8") == 8


def test_requests_take_init_container_max_sidecars_and_overhead() -> None:
    spec = {"containers": [{"resources": {"requests": {"cpu": "100m"}}}, {"resources": {"limits": {"cpu": "200m"}}}],
            "initContainers": [{"resources": {"requests": {"cpu": "1", "memory": "1Gi"}}},
                               {"restartPolicy": "Always", "resources": {"requests": {"cpu": "50m"}}}],
            "overhead": {"cpu": "10m"}}
    assert pod_requests(spec) == {"cpu": 1010, "memory": 2**30}


def test_resources_fit_reasons_and_message() -> None:
    _, algo = cluster(node("a", cpu="1"), node("b", cpu="1", memory="1Gi"), node("c", cpu="4", pods=0))
    message = fit_error(algo, pod("big", cpu="2", memory="2Gi"))
    assert message == ("0/3 nodes are available: 1 Insufficient memory, 1 Too many pods, 2 Insufficient cpu. "
                       "preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod.")


def test_extended_resources_gpu() -> None:
    _, algo = cluster(node("cpu-only"), node("gpu", **{"nvidia.com/gpu": "8"}))
    assert place(algo, pod("train", **{"req_nvidia.com/gpu": "8"})) == "gpu"
    assert "2 Insufficient nvidia.com/gpu." in fit_error(algo, pod("more", **{"req_nvidia.com/gpu": "1"}))


def test_node_name_and_unschedulable() -> None:
    _, algo = cluster(node("a"), node("b"), node("cordoned", unschedulable=True))
    assert place(algo, pod("pinned", nodeName="b")) == "b"
    message = fit_error(algo, pod("x", nodeName="cordoned"))
    assert message == ("0/3 nodes are available: 1 node(s) were unschedulable, 2 node(s) didn't match the requested "
                       "node name. preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling.")
    tolerant = pod("t", nodeName="cordoned",
                   tolerations=[{"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}])
    assert place(algo, tolerant) == "cordoned"


def test_node_affinity_operators_and_match_fields() -> None:
    _, algo = cluster(node("small", labels={"cores": "4", "zone": "z1"}), node("large", labels={"cores": "64"}),
                      node("gpu", labels={"zone": "z2", "accel": "h100"}))
    assert place(algo, pod("sel", nodeSelector={"zone": "z1"})) == "small"

    def required(*exprs: dict[str, Any], fields: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        term: dict[str, Any] = {"matchExpressions": list(exprs)}
        if fields:
            term["matchFields"] = fields
        return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}}

    assert place(algo, pod("gt", affinity=required({"key": "cores", "operator": "Gt", "values": ["8"]}))) == "large"
    assert place(algo, pod("lt", affinity=required({"key": "cores", "operator": "Lt", "values": ["8"]}))) == "small"
    assert place(algo, pod("ex", affinity=required({"key": "accel", "operator": "Exists"}))) == "gpu"
    assert place(algo, pod("in", affinity=required({"key": "zone", "operator": "In", "values": ["z2"]}))) == "gpu"
    not_in = required({"key": "zone", "operator": "NotIn", "values": ["z1", "z2"]})
    assert place(algo, pod("notin", affinity=not_in)) == "large"
    absent = required({"key": "cores", "operator": "DoesNotExist"})
    assert place(algo, pod("dne", affinity=absent)) == "gpu"
    by_name = required(fields=[{"key": "metadata.name", "operator": "In", "values": ["small"]}])
    by_name["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0].pop(
        "matchExpressions")
    assert place(algo, pod("field", affinity=by_name)) == "small"
    assert "3 node(s) didn't match Pod's node affinity/selector." in fit_error(
        algo, pod("none", nodeSelector={"zone": "z9"}))


def test_taints_and_tolerations() -> None:
    taint = {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}
    _, algo = cluster(node("tainted", taints=[taint]), node("exec", taints=[{"key": "k", "effect": "NoExecute"}]))
    assert fit_error(algo, pod("p")).startswith(
        "0/2 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, "
        "1 node(s) had untolerated taint {k: }.")
    tol = [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]
    assert place(algo, pod("ok", tolerations=tol)) == "tainted"
    assert place(algo, pod("any", tolerations=[{"operator": "Exists"}])) in ("tainted", "exec")


def test_prefer_no_schedule_and_preferred_affinity_scores() -> None:
    soft = {"key": "spot", "value": "true", "effect": "PreferNoSchedule"}
    _, algo = cluster(node("spot", taints=[soft]), node("regular"))
    assert all(place(algo, pod(f"p{i}", cpu="100m")) == "regular" for i in range(3))
    _, algo = cluster(node("a", labels={"disk": "ssd"}), node("b"))
    preferred = {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 50, "preference": {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}}]}}
    assert place(algo, pod("pref", cpu="100m", affinity=preferred)) == "a"


def test_least_allocated_and_balanced_scores() -> None:
    cache, algo = cluster(node("busy"), node("idle"))
    cache.upsert_pod(pod("existing", cpu="3", memory="6Gi", node_name="busy"))
    assert place(algo, pod("new", cpu="500m", memory="1Gi")) == "idle"
    info = pod_info(pod("x", cpu="1", memory="1Gi"))
    idle = cache.nodes["idle"]
    assert plugins.score_least_allocated(info, idle) < 100
    # cpu 1/4 vs memory ~1/8 of the idle node: imbalance lowers the balanced score below 100.
    assert plugins.score_balanced_allocation(info, idle) == int((1 - abs(1000 / 4000 - 1 / 8) / 2) * 100)


def test_spreads_across_nodes_by_least_allocated() -> None:
    _, algo = cluster(*(node(f"n{i}") for i in range(4)))
    chosen = [place(algo, pod(f"p{i}", cpu="1", memory="1Gi")) for i in range(8)]
    assert sorted(chosen) == sorted([f"n{i}" for i in range(4)] * 2)


def test_required_anti_affinity_spreads_and_fails_when_full() -> None:
    anti = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "kubernetes.io/hostname"}]}}
    _, algo = cluster(node("a"), node("b"), node("c"))
    chosen = {place(algo, pod(f"db{i}", labels={"app": "db"}, affinity=anti)) for i in range(3)}
    assert chosen == {"a", "b", "c"}
    message = fit_error(algo, pod("db3", labels={"app": "db"}, affinity=anti))
    assert message.startswith("0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules.")
    # A pod without the anti-affinity term but matching others' terms is kept off their nodes too.
    assert "3 node(s) didn't satisfy existing pods anti-affinity rules" in fit_error(
        algo, pod("plain", labels={"app": "db"}))


def test_required_affinity_by_zone_and_namespace_selector() -> None:
    cache, algo = cluster(node("a", labels={"zone": "z1"}), node("b", labels={"zone": "z2"}),
                          node("c", labels={"zone": "z2"}))
    cache.upsert_namespace({"metadata": {"name": "cache-ns", "labels": {"team": "x"}}})
    cache.upsert_pod(pod("redis", labels={"app": "cache"}, ns="cache-ns", node_name="b"))
    affinity = {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "zone",
         "namespaceSelector": {"matchLabels": {"team": "x"}}}]}}
    assert {place(algo, pod(f"web{i}", affinity=affinity)) for i in range(4)} <= {"b", "c"}
    same_ns_only = {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "zone"}]}}
    assert "3 node(s) didn't match pod affinity rules." in fit_error(algo, pod("lost", affinity=same_ns_only))


def test_topology_spread_do_not_schedule_and_missing_label() -> None:
    _, algo = cluster(node("a", labels={"zone": "z1"}), node("b", labels={"zone": "z2"}), node("nolabel"))
    spread = [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule",
               "labelSelector": {"matchLabels": {"app": "web"}}}]
    zones = [place(algo, pod(f"w{i}", labels={"app": "web"}, topologySpreadConstraints=spread)) for i in range(6)]
    assert sorted(zones) == ["a", "a", "a", "b", "b", "b"]
    algo.cache.upsert_node(node("c", labels={"zone": "z3"}))  # a new, empty domain is seen at once
    assert place(algo, pod("w6", labels={"app": "web"}, topologySpreadConstraints=spread)) == "c"
    _, algo = cluster(node("nolabel"))
    assert "1 node(s) didn't match pod topology spread constraints (missing required label)" in fit_error(
        algo, pod("w", labels={"app": "web"}, topologySpreadConstraints=spread))


def test_topology_spread_max_skew_blocks() -> None:
    cache, algo = cluster(node("a", labels={"zone": "z1"}), node("b", labels={"zone": "z2"}, cpu="1"))
    cache.upsert_pod(pod("fill", cpu="1", node_name="b"))
    spread = [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule",
               "labelSelector": {"matchLabels": {"app": "web"}}}]
    assert place(algo, pod("w0", cpu="100m", labels={"app": "web"}, topologySpreadConstraints=spread)) == "a"
    message = fit_error(algo, pod("w1", cpu="100m", labels={"app": "web"}, topologySpreadConstraints=spread))
    assert message.startswith("0/2 nodes are available: 1 Insufficient cpu, "
                              "1 node(s) didn't match pod topology spread constraints.")


def test_schedule_anyway_prefers_emptier_domain() -> None:
    cache, algo = cluster(node("a", labels={"zone": "z1"}), node("b", labels={"zone": "z2"}))
    for i in range(3):
        cache.upsert_pod(pod(f"old{i}", labels={"app": "web"}, node_name="a"))
    spread = [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway",
               "labelSelector": {"matchLabels": {"app": "web"}}}]
    assert place(algo, pod("new", labels={"app": "web"}, topologySpreadConstraints=spread)) == "b"


def test_equivalence_class_reuses_work_and_sees_freed_nodes() -> None:
    cache, algo = cluster(*(node(f"n{i}", cpu="2") for i in range(200)))
    for i in range(400):
        place(algo, pod(f"p{i}", cpu="1"))
    assert algo.stats["class"] == 400 and len(algo.classes) == 1
    # Per decision it rescored the chosen node and admitted a few, not 200 nodes each time.
    assert algo.stats["evaluated"] + algo.stats["rescored"] < 400 * 20
    assert all(n.requested["cpu"] == 2000 for n in cache.nodes.values())
    assert "200 Insufficient cpu" in fit_error(algo, pod("extra", cpu="1"))
    freed = cache.pods["default/p7"].node_name
    cache.remove_pod("default/p7")
    assert place(algo, pod("extra", cpu="1")) == freed
    assert "default/extra" in cache.nodes[freed].pods
    cache.upsert_node(node("new", cpu="8"))
    assert place(algo, pod("after", cpu="1")) == "new"


def test_forget_releases_assumed_capacity() -> None:
    cache, algo = cluster(node("only", cpu="1"))
    info = pod_info(pod("a", cpu="1"))
    cache.assume(info, algo.schedule(info))
    assert "Insufficient cpu" in fit_error(algo, pod("b", cpu="1"))
    cache.forget(info.key)
    assert place(algo, pod("b", cpu="1")) == "only"


def test_nodes_to_find_matches_upstream_adaptive_percentage() -> None:
    assert nodes_to_find(50) == 50
    assert nodes_to_find(5000) == 5000 * 10 // 100
    assert nodes_to_find(100_000) == 5000


def test_queue_orders_by_priority_and_parks_unschedulable() -> None:
    queue = SchedulingQueue()
    low, high = pod_info(pod("low")), pod_info(pod("high", priority=1000))
    queue.add(low)
    queue.add(high)
    assert [p.name for p in queue.pop_batch(10)] == ["high", "low"]
    queue.unschedulable(low)
    assert queue.pop_batch(10) == []
    queue.add(low)  # an update to the pod retries it at once
    assert [p.name for p in queue.pop_batch(10)] == ["low"]


def test_anti_affinity_pods_use_class_ranking_with_exclusions() -> None:
    anti = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "kv"}}, "topologyKey": "kubernetes.io/hostname"}]}}
    cache, algo = cluster(*(node(f"n{i}") for i in range(50)))
    chosen = [place(algo, pod(f"kv{i}", cpu="100m", labels={"app": "kv"}, affinity=anti)) for i in range(50)]
    assert len(set(chosen)) == 50 and algo.stats["generic"] == 0
    assert algo.stats["class_with_exclusions"] == 50
    assert "50 node(s) didn't match pod anti-affinity rules" in fit_error(
        algo, pod("kv50", cpu="100m", labels={"app": "kv"}, affinity=anti))
    # Unrelated pods are not held back by the kv pods' terms.
    assert place(algo, pod("other", cpu="100m", labels={"app": "web"})) in cache.nodes


def test_unschedulable_diagnosis_is_reused_until_a_node_frees() -> None:
    cache, algo = cluster(*(node(f"n{i}", cpu="1") for i in range(10)))
    for i in range(10):
        place(algo, pod(f"p{i}", cpu="1"))
    first = fit_error(algo, pod("x", cpu="1"))
    evaluated = algo.stats["evaluated"]
    assert fit_error(algo, pod("y", cpu="1")) == first == (
        "0/10 nodes are available: 10 Insufficient cpu. preemption: 0/10 nodes are available: "
        "10 No preemption victims found for incoming pod.")
    assert algo.stats["evaluated"] == evaluated
    freed = cache.pods["default/p3"].node_name
    cache.remove_pod("default/p3")
    assert place(algo, pod("y", cpu="1")) == freed


def test_no_nodes_message() -> None:
    _, algo = cluster()
    assert fit_error(algo, pod("p")) == "no nodes available to schedule pods"


def test_queue_backoff_and_cluster_events(monkeypatch: pytest.MonkeyPatch) -> None:
    import ultraplane.scheduler.queue as queue_module

    clock = [1000.0]
    monkeypatch.setattr(queue_module.time, "monotonic", lambda: clock[0])
    queue = SchedulingQueue()
    p = pod_info(pod("p"))
    queue.add(p)
    assert queue.pop_batch(1) == [p]
    queue.unschedulable(p)
    queue.cluster_changed()  # parked -> backoff (1 s after the first attempt)
    assert queue.pop_batch(1) == []
    clock[0] += 1.0
    assert queue.pop_batch(1) == [p]
    queue.retry(p)  # second failure: 2 s
    clock[0] += 1.0
    assert queue.pop_batch(1) == []
    clock[0] += 1.0
    assert queue.pop_batch(1) == [p]
    queue.delete(p.key)
    queue.unschedulable(p)
    assert len(queue) == 0


def test_preemption_picks_the_node_with_the_least_important_victims() -> None:
    cache, algo = cluster(node("a", cpu="2"), node("b", cpu="2"), node("c", cpu="2"))
    for i, prio in enumerate((500, 500)):  # a: two mid-priority pods
        cache.upsert_pod(pod(f"a{i}", cpu="1", node_name="a", priority=prio))
    for i, prio in enumerate((5, 7)):  # b: two low ones: the node to pick
        cache.upsert_pod(pod(f"b{i}", cpu="1", node_name="b", priority=prio))
    cache.upsert_pod(pod("c0", cpu="2", node_name="c", priority=5000))  # c: nothing lower than the preemptor
    preemptor = pod_info(pod("hi", cpu="1", priority=1000))
    candidate, message = Preemption(cache, {}, random.Random(1)).find(preemptor)
    assert candidate is not None and message == ""
    # one victim is enough; the lowest priority goes, the other is reprieved
    assert (candidate.node, [v.name for v in candidate.victims]) == ("b", ["b0"])
    cache.nominate(preemptor, "b")
    cache.remove_pod("default/b0")
    # the freed room is held for the nominated pod: a lower-priority pod cannot take it
    assert "3 Insufficient cpu" in fit_error(algo, pod("sneak", cpu="1", priority=10))
    assert algo.schedule(preemptor) == "b"


def test_preemption_prefers_victims_without_budget_violations() -> None:
    cache, _ = cluster(node("a", cpu="2"))
    cache.upsert_pod(pod("guarded", cpu="1", node_name="a", priority=1, labels={"app": "db"}))
    cache.upsert_pod(pod("free", cpu="1", node_name="a", priority=1))
    pdb = {"metadata": {"namespace": "default", "name": "db"}, "spec": {"selector": {"matchLabels": {"app": "db"}}},
           "status": {"disruptionsAllowed": 0}}
    candidate, _ = Preemption(cache, {"default/db": pdb}, random.Random(1)).find(pod_info(pod("hi", cpu="1",
                                                                                               priority=9)))
    assert candidate is not None and [v.name for v in candidate.victims] == ["free"]
    assert candidate.pdb_violations == 0
