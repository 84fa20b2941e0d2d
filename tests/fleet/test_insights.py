"""Upgrade insights: the API lifecycle facts, the rules, and `ultraplane fleet insights` on a live cluster."""

from __future__ import annotations

import base64
import gzip
import json
import subprocess
from collections.abc import Iterator

import pytest

from tests.apiserver.conftest import Cluster, inprocess_cluster
from tests.harness import child_env, ultraplane_command, wait_for
from ultraplane.fleet import apilifecycle as lifecycle
from ultraplane.fleet import insights
from ultraplane.fleet.insights import ApiUse, ClusterFacts


# ------------------------------------------------------------------------------------- lifecycle facts
def test_derived_removals_agree_with_the_published_guide() -> None:
    guide = {(r.group, r.version, r.kind): r for r in lifecycle.guide_removals()}
    overlap = [r for r in lifecycle.derived_removals() if (r.group, r.version, r.kind) in guide]
    # the guide's removals in 1.26, 1.27, 1.29 and 1.32 are all visible in the shipped schemas
    assert {lifecycle.format_minor(r.removed_in) for r in overlap} == {"1.26", "1.27", "1.29", "1.32"}
    for derived in overlap:
        row = guide[(derived.group, derived.version, derived.kind)]
        assert derived.removed_in == row.removed_in, derived
        assert derived.replacement == row.replacement, derived


def test_status_of_an_api_across_releases() -> None:
    hpa = ("autoscaling", "v2beta2", "HorizontalPodAutoscaler")
    assert lifecycle.status_at(*hpa, (1, 25)).state == "deprecated"
    assert lifecycle.status_at(*hpa, (1, 25)).preferred == "autoscaling/v2"
    removed = lifecycle.status_at(*hpa, (1, 26))
    assert removed.state == "removed" and removed.removal and removed.removal.replacement == "autoscaling/v2"
    assert lifecycle.status_at("apps", "v1", "Deployment", (1, 33)).state == "served"
    assert lifecycle.status_at("extensions", "v1beta1", "Ingress", (1, 30)).state == "removed"
    assert lifecycle.status_at("example.com", "v1", "Widget", (1, 30)).state == "unknown"
    # derived from the schemas alone (after the guide's last row): beta VAP served beside v1, then removed
    vap = ("admissionregistration.k8s.io", "v1beta1", "ValidatingAdmissionPolicy")
    assert lifecycle.status_at(*vap, (1, 33)).state == "deprecated"
    gone = lifecycle.status_at(*vap, (1, 34))
    assert gone.state == "removed" and gone.removal and gone.removal.source == "schemas"
    assert gone.removal.replacement == "admissionregistration.k8s.io/v1"


# ------------------------------------------------------------------------------------------- rules
def _facts(**kwargs: object) -> ClusterFacts:
    return ClusterFacts("c", (1, 32), "v1.32.0", **kwargs)  # type: ignore[arg-type]


def test_multi_hop_plan_names_the_blocker_of_each_hop() -> None:
    facts = _facts(api_uses=[ApiUse("admissionregistration.k8s.io/v1beta1", "ValidatingAdmissionPolicy",
                                    "helm-release", "helm release default/guard v3")],
                   kubelets={"old": "v1.30.4", "new": "v1.32.0"})
    plan = insights.plan(facts, "1.34")
    assert [h.version for h in plan.hops] == ["1.33", "1.34"]
    hop33, hop34 = plan.hops
    apis33 = next(i for i in hop33.insights if i.id == "deprecated-apis@1.33")
    assert apis33.status == insights.WARNING
    apis34 = next(i for i in hop34.insights if i.id == "deprecated-apis@1.34")
    assert apis34.status == insights.ERROR
    detail = apis34.deprecation_details[0]
    assert detail["replacedWith"] == "admissionregistration.k8s.io/v1" and detail["stopServingVersion"] == "1.34"
    # kubelet 1.30 is three releases behind 1.33 (allowed), four behind 1.34 (not)
    assert next(i for i in hop33.insights if i.id.startswith("kubelet")).status == insights.PASSING
    skew34 = next(i for i in hop34.insights if i.id.startswith("kubelet"))
    assert skew34.status == insights.ERROR
    assert [r["kubernetesResourceUri"] for r in skew34.resources] == ["/api/v1/nodes/old"]
    assert {b.id.split("@")[0] for b in hop34.blockers} == {"deprecated-apis", "kubelet-version-skew"}
    assert plan.status == insights.ERROR


def test_unreadable_facts_are_unknown_and_downgrades_are_refused() -> None:
    facts = _facts(unreadable={"pdb-blocks-drain": "forbidden"})
    hop = insights.plan(facts).hops[0]
    assert hop.version == "1.33"
    assert next(i for i in hop.insights if i.id.startswith("pdb")).status == insights.UNKNOWN
    with pytest.raises(insights.InsightError, match="older than the cluster's 1.32"):
        insights.plan(facts, "1.30")


# ------------------------------------------------------------------------------------- live cluster
@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with inprocess_cluster("ultraplane-insights-", "--nodes", "2") as c:
        yield c


def _helm_secret(name: str, manifest: str) -> dict:
    release = {"name": name, "namespace": "default", "version": 3, "manifest": manifest,
               "info": {"status": "deployed"}}
    payload = base64.b64encode(gzip.compress(json.dumps(release).encode())).decode()
    return {"apiVersion": "v1", "kind": "Secret", "type": "helm.sh/release.v1",
            "metadata": {"name": f"sh.helm.release.v1.{name}.v3", "namespace": "default",
                         "labels": {"owner": "helm", "name": name, "status": "deployed", "version": "3"}},
            "data": {"release": base64.b64encode(payload.encode()).decode()}}


def test_insights_command_on_a_live_cluster(cluster: Cluster) -> None:
    cluster.ok("create", "deployment", "solo", "--image=nginx", "--replicas=1")
    cluster.ok("create", "deployment", "guarded", "--image=nginx", "--replicas=2")
    cluster.ok("create", "poddisruptionbudget", "guarded", "--selector=app=guarded", "--min-available=2")
    # an object last applied from a manifest that still says extensions/v1beta1
    cluster.ok("annotate", "deployment", "solo", "kubectl.kubernetes.io/last-applied-configuration="
               + json.dumps({"apiVersion": "extensions/v1beta1", "kind": "Deployment",
                             "metadata": {"name": "solo", "namespace": "default"}}))
    vap = ("apiVersion: admissionregistration.k8s.io/v1beta1\nkind: ValidatingAdmissionPolicy\n"
           "metadata:\n  name: guard\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: fine\n")
    cluster.ok("apply", "-f", "-", input=json.dumps(_helm_secret("guard", vap)))
    wait_for(lambda: cluster.json("get", "pdb", "guarded").get("status", {}).get("expectedPods") == 2,
             "the disruption controller to count the PDB's pods", timeout=60)

    proc = subprocess.run([*ultraplane_command(), "fleet", "insights", "--kubeconfig", str(cluster.kubeconfig),
                           "--target", "1.34", "-o", "json"], capture_output=True, text=True, env=child_env(),
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["currentVersion"] == "1.32" and [h["version"] for h in plan["hops"]] == ["1.33", "1.34"]
    by_id = {i["id"]: i for h in plan["hops"] for i in h["insights"]}

    apis = by_id["deprecated-apis@1.34"]
    assert apis["status"] == "ERROR"
    usages = {d["usage"]: d for d in apis["deprecation_details"]}
    assert usages["extensions/v1beta1/Deployment"]["replacedWith"] == "apps/v1"
    assert usages["extensions/v1beta1/Deployment"]["clientStats"][0]["where"] == \
        "/apis/apps/v1/namespaces/default/deployments/solo"
    helm = usages["admissionregistration.k8s.io/v1beta1/ValidatingAdmissionPolicy"]
    assert helm["stopServingVersion"] == "1.34" and "helm release default/guard" in helm["clientStats"][0]["where"]
    assert "v1/ConfigMap" not in usages
    assert plan["hops"][1]["blockers"] == ["Deprecated APIs removed in Kubernetes v1.34"]

    pdb = by_id["pdb-blocks-drain@1.33"]
    assert pdb["status"] == "WARNING"
    assert [r["kubernetesResourceUri"] for r in pdb["resources"]] == \
        ["/apis/policy/v1/namespaces/default/poddisruptionbudgets/guarded"]
    resilience = by_id["workload-resilience@1.33"]
    details = {r["kubernetesResourceUri"].rsplit("/", 1)[1]: r["detail"] for r in resilience["resources"]}
    assert "a single replica" in details["solo"] and "no readinessProbe" in details["solo"]
    assert "replicas may share a node" in details["guarded"]
    assert by_id["kubelet-version-skew@1.34"]["status"] == "PASSING"

    table = subprocess.run([*ultraplane_command(), "fleet", "insights", "--kubeconfig", str(cluster.kubeconfig),
                            "--target", "1.36"], capture_output=True, text=True, env=child_env(), timeout=120)
    assert table.returncode == 0, table.stderr
    assert "Upgrade insights: 1.32 -> 1.36" in table.stdout
    assert "summary: 4 hop(s)" in table.stdout and "ERROR" in table.stdout
    # kubelets at 1.32 fall out of the supported skew only at 1.36
    assert "kubelet-version-skew: /api/v1/nodes/" in table.stdout

    bad = subprocess.run([*ultraplane_command(), "fleet", "insights", "--kubeconfig", str(cluster.kubeconfig),
                          "--target", "1.20"], capture_output=True, text=True, env=child_env(), timeout=120)
    assert bad.returncode == 1 and "Kubernetes does not downgrade" in bad.stderr
