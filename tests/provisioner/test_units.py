"""The provisioner's pure parts: catalogue, requirements, packing and budget arithmetic."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from ultraplane.provisioner import apis
from ultraplane.provisioner.binpack import Limits, Option, UnitPrices, pack
from ultraplane.provisioner.catalog import CatalogError, load
from ultraplane.provisioner.disruption import allowed_disruptions
from ultraplane.provisioner.options import options_for, pool_view
from ultraplane.provisioner.pods import pending_pod
from ultraplane.provisioner.requirements import Requirement, pod_terms

GI = 2**30


def test_catalog_carries_real_shapes_prices_and_its_source() -> None:
    catalog = load("us-east-1")
    assert "AWS" in catalog.source and "eni-max-pods" in catalog.source
    m5 = catalog.types["m5.large"]
    assert (m5.shape.vcpus, m5.shape.memory_gib, m5.shape.max_pods) == (2, 8, 29)
    assert catalog.price("m5.large", "us-east-1a", "on-demand") == pytest.approx(0.096)
    assert catalog.price("m5.large", "us-east-1b", "spot") < 0.096
    p5 = catalog.types["p5.48xlarge"]
    assert p5.labels["karpenter.k8s.aws/instance-gpu-count"] == "8"
    assert p5.labels["karpenter.k8s.aws/instance-gpu-manufacturer"] == "nvidia"
    assert p5.allocatable["nvidia.com/gpu"] == 8
    assert catalog.types["m6g.large"].labels["kubernetes.io/arch"] == "arm64"
    assert load("eu-west-1").price("m5.large", "eu-west-1a", "on-demand") > 0.096


def test_catalog_from_a_file_and_its_errors(tmp_path) -> None:
    doc = {"source": "test", "regions": {"r1": {"zones": ["r1a"]}},
           "instanceTypes": [{"name": "x1.large", "vcpu": 2, "memoryGiB": 4, "maxPods": 10,
                              "prices": {"r1": {"on-demand": 0.5}}}]}
    path = tmp_path / "types.json"
    path.write_text(json.dumps(doc))
    catalog = load("r1", path)
    assert list(catalog.types) == ["x1.large"] and catalog.zones == ["r1a"]
    with pytest.raises(CatalogError, match="region 'nowhere' is not in the catalogue"):
        load("nowhere", path)
    path.write_text("{not json")
    with pytest.raises(CatalogError):
        load("r1", path)


def test_requirements_operators() -> None:
    labels = {"karpenter.k8s.aws/instance-cpu": "8", "kubernetes.io/arch": "amd64"}
    assert Requirement("karpenter.k8s.aws/instance-cpu", "Gt", ("4",)).matches(labels)
    assert not Requirement("karpenter.k8s.aws/instance-cpu", "Lt", ("8",)).matches(labels)
    assert Requirement("karpenter.k8s.aws/instance-cpu", "Lte", ("8",)).matches(labels)
    assert Requirement("kubernetes.io/arch", "NotIn", ("arm64",)).matches(labels)
    assert Requirement("gpu", "DoesNotExist").matches(labels)
    spec = {"nodeSelector": {"a": "1"}, "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "b", "operator": "In", "values": ["2"]}]},
                              {"matchExpressions": [{"key": "c", "operator": "Exists"}]}]}}}}
    terms = pod_terms(spec)
    assert len(terms) == 2 and all(t[0] == Requirement("a", "In", ("1",)) for t in terms)


def _option(name: str, price: float, cpu: int, mem_gi: int, pods: int = 110, gpu: int = 0) -> Option:
    return Option("default", 0, name, "z1", "on-demand", price, (cpu * 1000, mem_gi * GI, gpu, pods))


PRICES = UnitPrices(cpu=0.02 / 1000, memory=0.005 / GI, gpu=1.0)


def test_pack_prefers_the_cheapest_fleet_and_repeats_identical_nodes() -> None:
    options = [_option("small", 0.10, 2, 8), _option("big", 0.80, 16, 64), _option("pricey", 0.30, 2, 8)]
    pods = {(500, GI, 0, 1): [f"p{i}" for i in range(40)]}
    plans, left = pack(pods, options, PRICES, {})
    assert not left
    # 4 pods per small node, 32 per big: 10 small nodes cost 1.00; 1 big + 2 small cost 1.00 too, but the
    # price per value packed decides per node; whichever wins, no node is "pricey" and all pods are placed
    assert {p.option.type for p in plans} <= {"small", "big"}
    assert sum(len(p.pods) for p in plans) == 40
    assert sum(p.option.price for p in plans) <= 1.0 + 1e-9


def test_pack_bin_packs_mixed_shapes_and_respects_limits() -> None:
    options = [_option("m", 0.20, 4, 16), _option("gpu", 1.0, 4, 16, gpu=1)]
    pods = {(3000, 2 * GI, 0, 1): ["big1", "big2"], (500, GI, 0, 1): ["s1", "s2"], (1000, GI, 1, 1): ["g1"]}
    plans, left = pack(pods, options, PRICES, {"default": Limits(nodes=2)})
    # the GPU pod needs the gpu type; one m node holds a big pod and both small ones; the limit of two
    # nodes leaves the second big pod unplaced
    assert len(plans) == 2
    assert sorted(len(p.pods) for p in plans) in ([1, 3], [2, 3])
    assert "g1" in {k for p in plans for k in p.pods} or "g1" in left
    assert len(left) == 5 - sum(len(p.pods) for p in plans)


def test_pack_leaves_pods_no_type_holds() -> None:
    plans, left = pack({(64000, GI, 0, 1): ["huge"]}, [_option("m", 0.2, 4, 16)], PRICES, {})
    assert plans == [] and left == ["huge"]


def _pool(taints: list | None = None, requirements: list | None = None) -> dict:
    return {"metadata": {"name": "default", "uid": "u"}, "spec": {"template": {"spec": {
        "nodeClassRef": {"group": apis.NODECLASS_GROUP, "kind": apis.NODECLASS_KIND, "name": "default"},
        "requirements": requirements or [], "taints": taints or []}}}}


def _pod(requests: dict, **spec: object) -> dict:
    return {"metadata": {"name": "p", "namespace": "ns", "uid": "1"},
            "spec": {"containers": [{"name": "c", "resources": {"requests": requests}}], **spec}}


def test_options_honour_taints_selectors_arch_gpu_and_daemonset_overhead() -> None:
    catalog = load()
    daemonset = {"spec": {"template": {"spec": {"containers": [{"name": "agent", "resources": {
        "requests": {"cpu": "1", "memory": "1Gi"}}}], "tolerations": [{"operator": "Exists"}]}}}}
    view = pool_view(_pool(taints=[{"key": "team", "value": "a", "effect": "NoSchedule"}],
                           requirements=[{"key": "karpenter.sh/capacity-type", "operator": "In",
                                          "values": ["on-demand"]}]), catalog, {"spec": {}}, [daemonset])
    pod = pending_pod(_pod({"cpu": "1"}))
    options, reason = options_for(pod, [view])
    assert options == [] and "did not tolerate team=a:NoSchedule" in reason
    tolerant = {"tolerations": [{"key": "team", "operator": "Equal", "value": "a", "effect": "NoSchedule"}]}
    options, _ = options_for(pending_pod(_pod({"cpu": "1"}, **tolerant)), [view])
    assert options and all(o.capacity_type == "on-demand" for o in options)
    # the DaemonSet's cpu is taken off every node: a 2-vCPU type cannot hold a 1-cpu pod plus the agent
    assert not any(catalog.types[o.type].shape.vcpus == 2 for o in options if o.type.startswith("m5"))
    arm = pending_pod(_pod({"cpu": "100m"}, nodeSelector={"kubernetes.io/arch": "arm64"}, **tolerant))
    assert {catalog.types[o.type].shape.arch for o in options_for(arm, [view])[0]} == {"arm64"}
    gpu = pending_pod(_pod({"nvidia.com/gpu": "4"}, **tolerant))
    assert {o.type for o in options_for(gpu, [view])[0]} == {"g4dn.12xlarge", "g5.12xlarge", "g5.48xlarge",
                                                             "p4d.24xlarge", "p5.48xlarge"}
    none, why = options_for(pending_pod(_pod({"cpu": "500"}, **tolerant)), [view])
    assert none == [] and "no instance type satisfied resources" in why


def test_budgets() -> None:
    now = dt.datetime(2026, 1, 5, 10, 30, tzinfo=dt.UTC)
    assert allowed_disruptions(None, "Empty", 25, 0, now) == 3  # 10% of 25, rounded up
    assert allowed_disruptions([{"nodes": "10%"}], "Empty", 25, 2, now) == 1
    assert allowed_disruptions([{"nodes": "0"}], "Empty", 5, 0, now) == 0
    assert allowed_disruptions([{"nodes": "0", "reasons": ["Drifted"]}, {"nodes": "100%"}], "Empty", 5, 0, now) == 5
    # a schedule blocks only inside its window
    window = [{"nodes": "100%"}, {"nodes": "0", "schedule": "0 10 * * *", "duration": "1h"}]
    assert allowed_disruptions(window, "Underutilized", 4, 0, now) == 0
    assert allowed_disruptions(window, "Underutilized", 4, 0, now + dt.timedelta(hours=1)) == 4


def test_plan_spreads_over_zones_and_groups_compatible_pods() -> None:
    from ultraplane.client.http import KubeClient
    from ultraplane.provisioner.controller import Provisioner

    catalog = load()
    provisioner = Provisioner(KubeClient("https://127.0.0.1:1"), catalog, cloud=None)  # type: ignore[arg-type]
    view = pool_view(_pool(), catalog, {"spec": {}}, [])
    spread = {"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                                             "whenUnsatisfiable": "DoNotSchedule",
                                             "labelSelector": {"matchLabels": {"app": "s"}}}]}
    pods = []
    for i in range(6):
        body = _pod({"cpu": "1", "memory": "1Gi"}, **spread)
        body["metadata"].update(name=f"s{i}", labels={"app": "s"})
        pods.append(pending_pod(body))
    plans, failures = provisioner.plan(pods, [view], {"default": Limits()})
    assert not failures
    per_zone: dict[str, int] = {}
    for plan in plans:
        per_zone[plan.option.zone] = per_zone.get(plan.option.zone, 0) + len(plan.pods)
    assert per_zone == {"us-east-1a": 2, "us-east-1b": 2, "us-east-1c": 2}
    # without the constraint the same pods share the cheapest node(s) of one zone
    plain = [pending_pod({**_pod({"cpu": "1", "memory": "1Gi"}), "metadata": {"name": f"p{i}", "namespace": "ns"}})
             for i in range(6)]
    plans, _ = provisioner.plan(plain, [view], {"default": Limits()})
    assert sum(len(p.pods) for p in plans) == 6 and len({p.option.zone for p in plans}) == 1


async def test_capacity_errors_fall_back_to_the_next_offering() -> None:
    from ultraplane.client.http import KubeClient
    from ultraplane.provisioner.cloud import InsufficientCapacity, LaunchRequest, SimCloud

    catalog = load()
    cloud = SimCloud(KubeClient("https://127.0.0.1:1"), catalog)
    offerings = [("m5.large", "us-east-1a", "spot"), ("m5.large", "us-east-1b", "spot"),
                 ("m5.xlarge", "us-east-1a", "on-demand")]
    try:
        request = LaunchRequest("c1", offerings, {}, [], {offerings[0]}, latency=60)
        instance = await cloud.create(request)
        assert (instance.instance_type, instance.zone, instance.capacity_type) == offerings[1]
        with pytest.raises(InsufficientCapacity):
            await cloud.create(LaunchRequest("c2", offerings, {}, [], set(offerings), latency=60))
    finally:
        for task in cloud.registering:
            task.cancel()
