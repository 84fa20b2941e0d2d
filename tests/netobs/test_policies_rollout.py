"""NetworkPolicy proposals applied to the cluster and replayed; a rollout that breaks an endpoint."""

from __future__ import annotations

import json
import math
import time

import kubernetes_validate

from tests.apiserver.conftest import Cluster
from tests.harness import wait_for
from tests.netobs.conftest import NS, OTHER, ready_endpoints, run_with_client, running_pods
from ultraplane.client.http import KubeClient
from ultraplane.netobs.cluster import ClusterSnapshot, latest_rollout, read_cluster
from ultraplane.netobs.flow import FORWARDED, Flow
from ultraplane.netobs.generator import FlowGenerator
from ultraplane.netobs.policy import PolicyEvaluator, propose_policies
from ultraplane.netobs.store import FlowStore


def _proposals_and_flows(shop: Cluster) -> tuple[list[dict], list[Flow], ClusterSnapshot]:
    snap = run_with_client(shop, read_cluster)
    flows = FlowGenerator(seed=3).generate(snap, time.time(), 5.0)
    return propose_policies(flows, snap), flows, snap


def _replay(shop: Cluster, policies: list[dict], flows: list[Flow], snap: ClusterSnapshot) -> None:
    evaluator = PolicyEvaluator(policies, snap)
    observed = [f for f in flows if f.verdict == FORWARDED and not f.timed_out and f.destination.pod_name]
    assert observed and all(evaluator.allows(f) for f in observed)

    def flow(src: str, src_ns: str, dst: str, port: int) -> Flow:
        s, d = running_pods(shop, src_ns, src)[0], running_pods(shop, NS, dst)[0]
        return Flow(time=0, verdict=FORWARDED, protocol="TCP", destination_port=port,
                    source=snap.pods_by_ip[s["status"]["podIP"]].endpoint(),
                    destination=snap.pods_by_ip[d["status"]["podIP"]].endpoint())

    assert evaluator.allows(flow("batch", OTHER, "api", 8080))
    assert not evaluator.allows(flow("batch", OTHER, "db", 5432)), "batch never talked to db"
    assert not evaluator.allows(flow("web", NS, "api", 9090)), "an unobserved port"
    assert not evaluator.allows(flow("cache", NS, "api", 8080)), "cache never talked to api"
    assert evaluator.allows(flow("api", NS, "cache", 6379)), "cache is selected by no policy"


def test_policy_proposals_admit_exactly_the_observed_flows(shop: Cluster) -> None:
    proposals, flows, snap = _proposals_and_flows(shop)
    assert {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in proposals} == {
        (NS, "netobs-allow-api"), (NS, "netobs-allow-db")}
    for policy in proposals:  # the networking.k8s.io/v1 schema of Kubernetes 1.32, strictly
        kubernetes_validate.validate(policy, "1.32", strict=True)
    api = next(p for p in proposals if p["metadata"]["name"] == "netobs-allow-api")
    assert api["spec"]["podSelector"] == {"matchLabels": {"app": "api"}}
    assert sorted(r["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                  for r in api["spec"]["ingress"]) == [OTHER, NS]
    assert all(r["ports"] == [{"protocol": "TCP", "port": 8080}] for r in api["spec"]["ingress"])
    _replay(shop, proposals, flows, snap)


def test_policy_proposals_applied_to_the_cluster_and_replayed(shop: Cluster) -> None:
    proposals, flows, snap = _proposals_and_flows(shop)
    manifest = json.dumps({"apiVersion": "v1", "kind": "List", "items": proposals})
    assert "created (server dry run)" in shop.ok("apply", "--dry-run=server", "-f", "-", input=manifest)
    assert shop.kubectl("get", "networkpolicy", "netobs-allow-api", "-n", NS).returncode != 0
    shop.ok("apply", "-f", "-", input=manifest)
    try:
        applied = [p for ns in (NS, OTHER) for p in shop.json("get", "networkpolicies", "-n", ns)["items"]]
        assert len(applied) == 2
        _replay(shop, applied, flows, snap)
    finally:
        shop.kubectl("delete", "networkpolicy", "--all", "-n", NS)


def test_rollout_that_empties_the_service_shows_broken_and_new_edges(shop: Cluster) -> None:
    store = FlowStore()
    generator = FlowGenerator(seed=5)

    async def window(client: KubeClient) -> None:
        snap = await read_cluster(client)
        now = time.time()
        store.add_many(generator.generate(snap, now - 5.0, 5.0))

    run_with_client(shop, window)
    before_end = time.time()
    # the rollout must begin in a later whole second than every "before" flow (creationTimestamp is in seconds)
    time.sleep(max(0.0, math.ceil(before_end) - time.time()) + 0.05)
    # revision 2 of api drops the track=stable label the Service selects on, and starts talking to cache
    patch = {"spec": {"template": {"metadata": {
        "labels": {"track": None},
        "annotations": {"netobs.ultraplane.io/talks-to": "db:5432@5rps,cache:6379@2rps"}}}}}
    shop.ok("patch", "deployment", "api", "-n", NS, "--type", "strategic", "-p", json.dumps(patch))
    wait_for(lambda: ready_endpoints(shop, "api") == 0 and len(running_pods(shop, NS, "api")) == 2
             and all("track" not in p["metadata"]["labels"] for p in running_pods(shop, NS, "api")),
             "api's new pods running outside the Service", 90)
    rollout_at, replicaset = run_with_client(shop, lambda client: latest_rollout(client, NS, "api"))
    assert rollout_at >= math.ceil(before_end) - 1e-6 and replicaset.startswith("api-")

    async def after(client: KubeClient) -> None:
        snap = await read_cluster(client)
        store.add_many(generator.generate(snap, max(time.time(), rollout_at + 1), 5.0))

    run_with_client(shop, after)
    changes = store.changes(rollout_at, 60.0)
    broken = {(e["source"], e["destination"], e["port"]) for e in changes["broken_edges"]}
    assert (f"{NS}/Deployment/web", f"{NS}/Service/api", 0) in broken
    assert (f"{OTHER}/Deployment/batch", f"{NS}/Service/api", 0) in broken
    web_api = next(e for e in changes["broken_edges"] if e["source"] == f"{NS}/Deployment/web")
    assert web_api["before"]["forwarded"] == 50 and web_api["after"]["dropped"] == 50
    assert web_api["after"]["drop_reasons"] == {"NO_SERVICE": 50}
    assert web_api["before"]["ports"] == [8080] and web_api["after"]["ports"] == [80]
    new = {(e["source"], e["destination"], e["port"]) for e in changes["new_edges"]}
    assert new == {(f"{NS}/Deployment/api", f"{NS}/Service/cache", 0)}
    assert (f"{NS}/Deployment/web", f"{NS}/Service/db", 0) not in broken
