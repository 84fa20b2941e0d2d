"""kube-scheduler's default profile on small hand-worked cases: PodTopologySpread's system default
constraints, selectHost's random tie-break, ImageLocality, and the score weights.

The expected numbers are worked out by hand in the comments from upstream's formulas:
PodTopologySpread raw = sum over constraints of round(count * log(size + 2) + maxSkew - 1), normalized
as 100 * (max + min - raw) / max; LeastAllocated = mean of (alloc - used) * 100 / alloc over cpu and
memory with 100m / 200Mi for request-less containers; BalancedAllocation = (1 - |cpu% - mem%| / 2) * 100.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from tests.scheduler.test_plugins import cluster, node, place, pod
from ultraplane.scheduler import plugins, spreading
from ultraplane.scheduler.cache import ClusterCache
from ultraplane.scheduler.core import Algorithm, FitError
from ultraplane.scheduler.model import pod_info

ZONE = "topology.kubernetes.io/zone"
RS_LABELS = {"app": "web", "pod-template-hash": "5d4f"}


def replicaset(name: str = "web-5d4f", labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "default"},
            "spec": {"selector": {"matchLabels": labels or RS_LABELS}}}


def owned(name: str, kind: str = "ReplicaSet", owner: str = "web-5d4f", api_version: str = "apps/v1",
          labels: dict[str, str] | None = None, **kw: Any) -> dict[str, Any]:
    obj = pod(name, labels=dict(labels or RS_LABELS), **kw)
    obj["metadata"]["ownerReferences"] = [{"apiVersion": api_version, "kind": kind, "name": owner, "uid": "u",
                                           "controller": True}]
    return obj


def big_nodes(count: int, zones: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Nodes so large that one more request-less pod does not change their integer resource scores."""
    return [node(f"n{i}", cpu="96", memory="384Gi", labels={ZONE: zones[i % len(zones)]} if zones else None)
            for i in range(count)]


def with_replicaset(*nodes: dict[str, Any], seed: int = 1) -> tuple[ClusterCache, Algorithm]:
    cache = ClusterCache()
    for n in nodes:
        cache.upsert_node(n)
    cache.upsert_workload("ReplicaSet", replicaset())
    return cache, Algorithm(cache, seed=seed)


# ---------------------------------------------------------------------- the selector kube derives
def test_default_selector_from_owner_and_services() -> None:
    cache = ClusterCache()
    cache.upsert_workload("ReplicaSet", replicaset())
    info = pod_info(owned("p"))
    assert cache.default_selector(info) == {"matchLabels": RS_LABELS, "matchExpressions": []}
    # A bare pod with no Service selecting it has no default constraints.
    assert cache.default_selector(pod_info(pod("bare", labels=RS_LABELS))) is None
    # Services selecting the pod are merged in; one selecting other pods, or without a selector, is not.
    cache.upsert_workload("Service", {"metadata": {"name": "front", "namespace": "default"},
                                      "spec": {"selector": {"tier": "front"}}})
    cache.upsert_workload("Service", {"metadata": {"name": "other", "namespace": "default"},
                                      "spec": {"selector": {"app": "db"}}})
    cache.upsert_workload("Service", {"metadata": {"name": "external", "namespace": "default"}, "spec": {}})
    labelled = pod_info(owned("q", labels={**RS_LABELS, "tier": "front"}))
    assert cache.default_selector(labelled) == {"matchLabels": {"tier": "front", **RS_LABELS},
                                                "matchExpressions": []}
    assert cache.default_selector(pod_info(pod("svc-only", labels={"tier": "front"}))) == {
        "matchLabels": {"tier": "front"}, "matchExpressions": []}
    # ReplicationController (a plain map) and StatefulSet (a LabelSelector with expressions).
    cache.upsert_workload("ReplicationController", {"metadata": {"name": "rc", "namespace": "default"},
                                                    "spec": {"selector": {"rc": "x"}}})
    rc_pod = pod_info(owned("r", kind="ReplicationController", owner="rc", api_version="v1", labels={"rc": "x"}))
    assert cache.default_selector(rc_pod) == {"matchLabels": {"rc": "x"}, "matchExpressions": []}
    expr = {"key": "role", "operator": "In", "values": ["db"]}
    cache.upsert_workload("StatefulSet", {"metadata": {"name": "db", "namespace": "default"},
                                          "spec": {"selector": {"matchExpressions": [expr]}}})
    sts_pod = pod_info(owned("db-0", kind="StatefulSet", owner="db", labels={"role": "db"}))
    assert cache.default_selector(sts_pod) == {"matchLabels": {}, "matchExpressions": [expr]}
    # Other controllers (a Job, a DaemonSet) add nothing; an owner not (yet) in the cache adds nothing.
    job_pod = pod_info(owned("j", kind="Job", owner="j", api_version="batch/v1", labels={"job": "j"}))
    assert cache.default_selector(job_pod) is None
    assert cache.default_selector(pod_info(owned("late", owner="not-yet"))) is None
    # Removing the ReplicaSet forgets its selector.
    cache.remove_workload("ReplicaSet", replicaset())
    assert cache.default_selector(info) is None


# ---------------------------------------------------------------------- placements
def test_deployment_replicas_spread_one_per_identical_node() -> None:
    for seed in range(20):
        _, algo = with_replicaset(*big_nodes(3), seed=seed)
        assert sorted(place(algo, owned(f"w{i}")) for i in range(3)) == ["n0", "n1", "n2"]
        assert algo.stats["class_with_spreading"] == 3
        _, algo = with_replicaset(*big_nodes(3), seed=seed)
        assert Counter(place(algo, owned(f"w{i}")) for i in range(6)) == {"n0": 2, "n1": 2, "n2": 2}


def test_bare_pods_on_identical_nodes_are_not_spread_by_default() -> None:
    """The control: without an owner or Service, nothing spreads request-less pods on big nodes (their
    resource scores tie), so some seed stacks two of three pods on a node -- kube does the same."""
    stacked = 0
    for seed in range(20):
        _, algo = with_replicaset(*big_nodes(3), seed=seed)
        stacked += len({place(algo, pod(f"b{i}", labels=RS_LABELS)) for i in range(3)}) < 3
    assert stacked > 0


def test_many_replicas_stay_within_kube_skew() -> None:
    for replicas, nodes in ((10, 3), (7, 4), (20, 6)):
        _, algo = with_replicaset(*big_nodes(nodes))
        counts = Counter(place(algo, owned(f"w{i}")) for i in range(replicas))
        assert len(counts) == nodes and max(counts.values()) - min(counts.values()) <= 1, counts


def test_spread_across_zones_before_nodes() -> None:
    # z1 has four nodes, z2 and z3 one each: zone spreading sends the first three replicas to three zones.
    nodes = [node(f"a{i}", cpu="96", memory="384Gi", labels={ZONE: "z1"}) for i in range(4)]
    nodes += [node("b0", cpu="96", memory="384Gi", labels={ZONE: "z2"}),
              node("c0", cpu="96", memory="384Gi", labels={ZONE: "z3"})]
    for seed in range(10):
        cache, algo = with_replicaset(*nodes, seed=seed)
        first = [place(algo, owned(f"w{i}")) for i in range(3)]
        assert sorted(cache.nodes[n].labels[ZONE] for n in first) == ["z1", "z2", "z3"]


def test_hand_worked_spread_and_resource_scores() -> None:
    """Nodes A (z1), B (z1), C (z2), 4 cpu / 8Gi each; one replica already runs on A.

    PodTopologySpread: 3 feasible nodes -> hostname weight ln(5) = 1.609; zones {z1, z2} -> ln(4) = 1.386.
      raw A = round(1*1.609 + 2 + 1*1.386 + 4) = round(8.996) = 9
      raw B = round(0 + 2 + 1*1.386 + 4) = round(7.386) = 7
      raw C = round(0 + 2 + 0 + 4) = 6
      normalized: A 100*(9+6-9)//9 = 66, B 100*(15-7)//9 = 88, C 100; weight 2 -> 132, 176, 200.
    LeastAllocated: A holds 100m/200Mi already: cpu 3800*100//4000 = 95, mem 7792*100//8192 = 95 -> 95;
      B, C: 3900*100//4000 = 97, 7992*100//8192 = 97 -> 97.
    BalancedAllocation: no requests -> 100. TaintToleration: no taints -> 100 * 3. No affinity, images.
    Totals: A 95+100+300+132 = 627, B 97+100+300+176 = 673, C 97+100+300+200 = 697.
    """
    cache, _ = with_replicaset(node("A", labels={ZONE: "z1"}), node("B", labels={ZONE: "z1"}),
                               node("C", labels={ZONE: "z2"}))
    cache.upsert_pod(owned("w0", node_name="A"))
    incoming = pod_info(owned("w1"))
    nodes = [cache.nodes[n] for n in ("A", "B", "C")]
    assert plugins.score_nodes(incoming, plugins.pre_filter(incoming, cache), nodes, cache) == [627, 673, 697]
    # The fast path agrees: C.
    assert Algorithm(cache, seed=3).schedule(incoming) == "C"


def test_hand_worked_balanced_allocation_and_least_allocated() -> None:
    """A 4 cpu / 8Gi node with 2 cpu / 1Gi requested; the pod asks 500m / 3Gi.

    BalancedAllocation: cpu (2000+500)/4000 = 0.625, memory (1+3)/8 = 0.5, std = |0.625-0.5|/2 = 0.0625,
      (1 - 0.0625) * 100 = 93.75 -> 93.
    LeastAllocated: cpu (4000-2500)*100//4000 = 37, memory (8-4)Gi*100//8Gi = 50, mean (37+50)//2 = 43.
    """
    cache, _ = cluster(node("n"))
    cache.upsert_pod(pod("existing", cpu="2", memory="1Gi", node_name="n"))
    incoming = pod_info(pod("new", cpu="500m", memory="3Gi"))
    assert plugins.score_balanced_allocation(incoming, cache.nodes["n"]) == 93
    assert plugins.score_least_allocated(incoming, cache.nodes["n"]) == 43


def test_nodes_without_zone_label_still_spread_by_hostname() -> None:
    """System defaults do not require every key: a zone-less node is scored on hostname alone.

    n0 (zone z1) holds one replica; n1 (z1) and bare (no zone) are empty. Weights: 3 nodes -> ln(5);
    zone values {z1, ""} -> ln(4). raw n0 = round(1.609+2+1.386+4) = 9, n1 = round(2+1.386+4) = 7,
    bare = round(2) = 2. normalized: n0 100*(11-9)//9 = 22, n1 100*(11-7)//9 = 44, bare 100*(11-2)//9 = 100.
    """
    cache, _ = with_replicaset(node("n0", labels={ZONE: "z1"}), node("n1", labels={ZONE: "z1"}), node("bare"))
    cache.upsert_pod(owned("w0", node_name="n0"))
    incoming = pod_info(owned("w1"))
    nodes = [cache.nodes[n] for n in ("n0", "n1", "bare")]
    counts = spreading.spread_counts(incoming, cache)
    assert counts is not None
    weights = spreading.spread_weights(counts, nodes)
    assert spreading.normalize_spread([counts.raw_for(weights, n) for n in nodes]) == [22, 44, 100]


def test_own_schedule_anyway_constraint_ignores_nodes_missing_the_key() -> None:
    """A pod's own constraint requires its key: the unlabelled node scores 0 for spreading."""
    cache, _ = cluster(node("a", labels={ZONE: "z1"}), node("b", labels={ZONE: "z2"}), node("bare"))
    spread = [{"maxSkew": 1, "topologyKey": ZONE, "whenUnsatisfiable": "ScheduleAnyway",
               "labelSelector": {"matchLabels": {"app": "x"}}}]
    cache.upsert_pod(pod("x0", labels={"app": "x"}, node_name="a"))
    incoming = pod_info(pod("x1", labels={"app": "x"}, topologySpreadConstraints=spread))
    counts = spreading.spread_counts(incoming, cache)
    assert counts is not None and counts.require_all
    nodes = [cache.nodes[n] for n in ("a", "b", "bare")]
    weights = spreading.spread_weights(counts, nodes)  # zones {z1, z2}: ln(4) = 1.386
    raw = [None if counts.ignores(n) else counts.raw_for(weights, n) for n in nodes]
    assert raw == [1, 0, None]  # round(1*1.386 + 0), round(0 + 0)
    assert spreading.normalize_spread(raw) == [0, 100, 0]  # a: 100*(1+0-1)//1; b: 100*(1+0-0)//1


def test_terminating_and_other_namespace_pods_are_not_counted() -> None:
    cache, algo = with_replicaset(*big_nodes(2))
    gone = owned("old", node_name="n0")
    gone["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    cache.upsert_pod(gone)
    cache.upsert_pod(owned("elsewhere", ns="other", node_name="n0"))
    counts = spreading.spread_counts(pod_info(owned("w")), cache)
    assert counts is not None and dict(counts.by_node[0]) == {}


# ---------------------------------------------------------------------- ties, images, weights
def test_ties_are_broken_at_random_on_both_paths() -> None:
    """selectHost picks uniformly among the top-scoring nodes, not the first in order."""
    preferred = {"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 1, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "none"}},
                                          "topologyKey": "kubernetes.io/hostname"}}]}}
    for spec in ({}, {"affinity": preferred}):  # the class path, then the generic path
        first = Counter()
        for seed in range(90):
            _, algo = cluster(*big_nodes(3))
            algo.random.seed(seed)
            first[place(algo, pod("p", **spec))] += 1
        assert set(first) == {"n0", "n1", "n2"} and min(first.values()) >= 15, first


def test_image_locality_hand_worked() -> None:
    """nginx:1.25 (500 MiB) is on one of two nodes: scaled 500 MiB * 1/2 = 250 MiB;
    100 * (250 MiB - 23 MiB) // (1000 MiB - 23 MiB) = 100 * 227 // 977 = 23."""
    mib = 1024 * 1024
    with_image = node("cached")
    with_image["status"]["images"] = [{"names": ["nginx:1.25", "nginx@sha256:abc"], "sizeBytes": 500 * mib}]
    latest = node("latest")
    latest["status"]["images"] = [{"names": ["busybox:latest"], "sizeBytes": 1000 * mib}]
    cache, algo = cluster(with_image, latest)
    web = pod("web")
    web["spec"]["containers"][0]["image"] = "nginx:1.25"
    assert plugins.score_image_locality(pod_info(web), cache.nodes["cached"], cache) == 23
    assert plugins.score_image_locality(pod_info(web), cache.nodes["latest"], cache) == 0
    # An untagged image is looked up as :latest; two containers double the upper bound:
    # 1000 MiB * 1/2 = 500 MiB -> 100 * (500 - 23) // (2000 - 23) = 24.
    box = pod("box")
    box["spec"]["containers"][0]["image"] = "busybox"
    box["spec"]["initContainers"] = [{"name": "init", "image": "alpine:3"}]
    assert plugins.score_image_locality(pod_info(box), cache.nodes["latest"], cache) == 24
    assert place(algo, web) == "cached"


def test_default_profile_weights() -> None:
    """kube-scheduler's default profile: TaintToleration 3, NodeAffinity 2, NodeResourcesFit 1,
    PodTopologySpread 2, InterPodAffinity 2, NodeResourcesBalancedAllocation 1, ImageLocality 1."""
    assert (plugins.WEIGHT_TAINT, plugins.WEIGHT_NODE_AFFINITY, plugins.WEIGHT_FIT, plugins.WEIGHT_SPREAD,
            plugins.WEIGHT_INTER_POD_AFFINITY, plugins.WEIGHT_BALANCED, plugins.WEIGHT_IMAGE) == (3, 2, 1, 2, 2, 1, 1)
    assert spreading.SYSTEM_DEFAULT_SPREAD == (("kubernetes.io/hostname", 3), (ZONE, 5))


def test_fast_path_picks_a_top_scoring_node() -> None:
    """On random small clusters the equivalence-class path chooses a node whose full default-profile
    score (the generic path's, over every feasible node) is the maximum."""
    rng = random.Random(7)
    for trial in range(60):
        zones = ("z1", "z2", "z3")[: rng.randint(1, 3)]
        nodes = []
        for i in range(rng.randint(3, 14)):
            labels = {ZONE: rng.choice(zones)} if rng.random() < 0.85 else {}
            nodes.append(node(f"n{i}", cpu=rng.choice(("4", "8", "16")), memory=rng.choice(("8Gi", "16Gi")),
                              labels=labels))
        cache, algo = with_replicaset(*nodes, seed=trial)
        for i in range(rng.randint(0, 4)):  # other pods already placed
            cache.upsert_pod(pod(f"other{i}", cpu="1", memory="1Gi", node_name=rng.choice(nodes)["metadata"]["name"]))
        for i in range(rng.randint(5, 25)):
            incoming = pod_info(owned(f"w{i}", cpu=rng.choice(("100m", "500m", "2")), memory="256Mi"))
            state = plugins.pre_filter(incoming, cache)
            feasible = [n for n in cache.nodes.values() if plugins.run_filters(incoming, state, n, cache) is None]
            scores = dict(zip((n.name for n in feasible),
                              plugins.score_nodes(incoming, state, feasible, cache), strict=True))
            if not scores:  # full: both paths agree there is no room
                with pytest.raises(FitError):
                    algo.schedule(incoming)
                continue
            chosen = algo.schedule(incoming)
            assert scores[chosen] == max(scores.values()), (trial, i, chosen, scores)
            cache.assume(incoming, chosen)
        assert algo.stats["class_with_spreading"] > 0 and algo.stats["generic"] == 0


def test_selector_counts_follow_pod_changes() -> None:
    """The per-selector counts kept for spreading equal a fresh count after adds, moves, terminations
    and deletions, including pods that arrived before the selector was first counted."""
    cache, _ = with_replicaset(*big_nodes(4, zones=("z1", "z2")))
    selector = {"matchLabels": RS_LABELS, "matchExpressions": []}
    cache.upsert_pod(owned("early", node_name="n0"))
    rng = random.Random(3)
    live: dict[str, dict[str, Any]] = {}
    assert dict(cache.matching_by_node("default", selector)) == {"n0": 1}
    for step in range(200):
        name = f"p{rng.randrange(12)}"
        action = rng.random()
        if action < 0.5:
            obj = owned(name, node_name=f"n{rng.randrange(4)}") if rng.random() < 0.8 else pod(
                name, labels={"app": "web"}, node_name=f"n{rng.randrange(4)}")
            if rng.random() < 0.2:
                obj["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
            cache.upsert_pod(obj)
            live[name] = obj
        elif action < 0.7 and name in live:
            live[name]["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
            cache.upsert_pod(live[name])
        elif name in live:
            cache.remove_pod(f"default/{name}")
            del live[name]
        expected = Counter(p.node_name for p in cache.pods.values()
                           if not p.terminating and p.labels.get("pod-template-hash") == "5d4f")
        counts = cache.selector_counts("default", selector)
        assert dict(counts.by_node) == dict(expected), step
        zones = Counter()
        for name, n in expected.items():
            zones[cache.nodes[name].labels[ZONE]] += n
        assert dict(counts.by_zone) == dict(zones), step
        if step == 100:  # a node with pods changes zone: the zone counts follow
            moved = node("n1", cpu="96", memory="384Gi", labels={ZONE: "z3"})
            cache.upsert_node(moved)


def test_existing_pods_affinity_terms_score_the_incoming_pod() -> None:
    """InterPodAffinity also credits other pods' terms that match the incoming pod.

    Nodes a, b (zone z1) and c (z2), 4 cpu / 8Gi. "web" runs on c with a preferred affinity (weight 50,
    zone) to app=cache and a preferred anti-affinity (weight 20, hostname) to app=cache; "api" runs on a
    with a required affinity (zone) to app=cache, counted with hardPodAffinityWeight 1.
      raw: a = 1 (api's term, z1), b = 1 (z1), c = 50 - 20 = 30
      normalized int(100 * (raw - 1) / 29): a 0, b 0, c 100; weight 2 -> 0, 0, 200.
    LeastAllocated: a and c hold one request-less pod (95), b none (97). Balanced 100, taints 300.
    Totals: a 95+100+300 = 495, b 97+100+300 = 497, c 95+100+300+200 = 695.
    """
    cache, algo = cluster(node("a", labels={ZONE: "z1"}), node("b", labels={ZONE: "z1"}),
                          node("c", labels={ZONE: "z2"}))
    to_cache = {"labelSelector": {"matchLabels": {"app": "cache"}}}
    cache.upsert_pod(pod("web", node_name="c", affinity={
        "podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 50, "podAffinityTerm": {**to_cache, "topologyKey": ZONE}}]},
        "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 20, "podAffinityTerm": {**to_cache, "topologyKey": "kubernetes.io/hostname"}}]}}))
    cache.upsert_pod(pod("api", node_name="a", affinity={
        "podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{**to_cache, "topologyKey": ZONE}]}}))
    incoming = pod_info(pod("redis", labels={"app": "cache"}))
    nodes = [cache.nodes[n] for n in ("a", "b", "c")]
    assert plugins.score_nodes(incoming, plugins.pre_filter(incoming, cache), nodes, cache) == [495, 497, 695]
    assert algo.schedule(incoming) == "c" and algo.stats["generic"] == 1
    # A pod no term matches keeps the fast path.
    assert algo.schedule(pod_info(pod("other", labels={"app": "x"}))) == "b" and algo.stats["generic"] == 1


def test_spreading_beyond_the_sampled_nodes() -> None:
    """With more nodes than kube scores per pod (300 -> 138), the class admits further nodes as its
    sample fills up with the workload's pods: 600 replicas land 2 per node, in balanced zones."""
    cache, algo = with_replicaset(*big_nodes(300, zones=("z1", "z2", "z3")))
    counts = Counter(place(algo, owned(f"w{i}")) for i in range(600))
    assert set(counts.values()) == {2} and len(counts) == 300
    zones = Counter(cache.nodes[n].labels[ZONE] for n in counts.elements())
    assert zones == {"z1": 200, "z2": 200, "z3": 200}
    # Every node holds the workload's pods by the end, yet each decision stayed on the class's ranking.
    assert algo.stats["generic"] == 0 and algo.stats["class_fell_back"] == 0
