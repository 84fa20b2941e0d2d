"""Karmada placement and overrides, without clusters: hand-worked cases."""

from __future__ import annotations

import pytest

from ultraplane.fleet import overrides
from ultraplane.fleet.controller import match_policy, progress
from ultraplane.fleet.placement import MemberView, PlacementError, schedule


def _members() -> list[MemberView]:
    return [MemberView("east-1", {"env": "prod"}, "aws", "us-east-1", ("us-east-1a",), available_replicas=10),
            MemberView("east-2", {"env": "prod"}, "aws", "us-east-1", ("us-east-1b",), available_replicas=2),
            MemberView("west-1", {"env": "dev"}, "aws", "us-west-2", ("us-west-2a",), available_replicas=6)]


def _counts(targets: list[dict]) -> dict[str, int]:
    return {t["name"]: t["replicas"] for t in targets}


def test_duplicated_is_the_default_and_objects_without_replicas_go_everywhere() -> None:
    assert _counts(schedule({}, 3, _members())[0]) == {"east-1": 3, "east-2": 3, "west-1": 3}
    divided = {"replicaScheduling": {"replicaSchedulingType": "Divided"}}
    assert _counts(schedule(divided, 0, _members())[0]) == {"east-1": 0, "east-2": 0, "west-1": 0}


def test_static_weights_divide_by_largest_remainder() -> None:
    rule = {"replicaScheduling": {"replicaSchedulingType": "Divided", "replicaDivisionPreference": "Weighted",
                                  "weightPreference": {"staticWeightList": [
                                      {"targetCluster": {"clusterNames": ["east-1"]}, "weight": 2},
                                      {"targetCluster": {"labelSelector": {"matchLabels": {"env": "dev"}}},
                                       "weight": 1}]}}}
    # east-2 matches no weight rule: weight 0, no replicas; 7 = 2/3 * 7 (4.67) + 1/3 * 7 (2.33)
    assert _counts(schedule(rule, 7, _members())[0]) == {"east-1": 5, "west-1": 2}


def test_dynamic_weight_follows_available_replicas_and_refuses_what_does_not_fit() -> None:
    rule = {"replicaScheduling": {"replicaSchedulingType": "Divided", "replicaDivisionPreference": "Weighted",
                                  "weightPreference": {"dynamicWeight": "AvailableReplicas"}}}
    assert _counts(schedule(rule, 9, _members())[0]) == {"east-1": 5, "east-2": 1, "west-1": 3}
    with pytest.raises(PlacementError, match="do not fit"):
        schedule(rule, 19, _members())
    aggregated = {"replicaScheduling": {"replicaSchedulingType": "Divided",
                                        "replicaDivisionPreference": "Aggregated"}}
    assert _counts(schedule(aggregated, 12, _members())[0]) == {"east-1": 10, "west-1": 2}


def test_affinity_taints_and_spread() -> None:
    members = _members()
    members[0].taints = [{"key": "cluster.karmada.io/unreachable", "effect": "NoExecute"}]
    targets, why = schedule({"clusterAffinity": {"labelSelector": {"matchLabels": {"env": "prod"}}}}, 1, members)
    assert _counts(targets) == {"east-2": 1}
    assert "untolerated taint {cluster.karmada.io/unreachable: NoExecute}" in why["east-1"]
    assert "cluster affinity" in why["west-1"]
    tolerated = {"clusterTolerations": [{"key": "cluster.karmada.io/unreachable", "operator": "Exists"}]}
    assert len(schedule(tolerated, 1, members)[0]) == 3
    by_field = {"clusterAffinity": {"fieldSelector": {"matchExpressions": [
        {"key": "region", "operator": "In", "values": ["us-west-2"]}]}}}
    assert _counts(schedule(by_field, 1, members)[0]) == {"west-1": 1}
    spread = {"spreadConstraints": [{"spreadByField": "region", "maxGroups": 1, "minGroups": 1}],
              "clusterTolerations": tolerated["clusterTolerations"]}
    # one region only: us-east-1 has room for 12, us-west-2 for 6
    assert set(_counts(schedule(spread, 1, members)[0])) == {"east-1", "east-2"}
    with pytest.raises(PlacementError, match="0/3 clusters are available"):
        schedule({"clusterAffinity": {"clusterNames": ["nowhere"]}}, 1, members)
    with pytest.raises(PlacementError, match="at least 4"):
        schedule({"spreadConstraints": [{"spreadByField": "cluster", "minGroups": 4}]}, 1, _members())


def test_overriders() -> None:
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment",
                  "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
                  "spec": {"replicas": 2, "template": {"spec": {"containers": [
                      {"name": "nginx", "image": "docker.io/library/nginx:1.27", "args": ["-g"]}]}}}}
    policy = {"kind": "OverridePolicy", "metadata": {"name": "eu", "namespace": "default"},
              "spec": {"resourceSelectors": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}],
                       "overrideRules": [{"targetCluster": {"clusterNames": ["west-1"]}, "overriders": {
                           "imageOverrider": [{"component": "Registry", "operator": "replace",
                                               "value": "mirror.example.com"},
                                              {"component": "Tag", "operator": "replace", "value": "1.28"}],
                           "plaintext": [{"path": "/spec/replicas", "operator": "replace", "value": 5}],
                           "labelsOverrider": [{"operator": "add", "value": {"tier": "edge"}}],
                           "argsOverrider": [{"containerName": "nginx", "operator": "add", "value": ["daemon off;"]}],
                       }}]}}
    selected = overrides.applicable([], [policy], deployment)
    assert selected == [policy]
    west, applied = overrides.override(deployment, selected, _members()[2])
    container = west["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "mirror.example.com/library/nginx:1.28"
    assert container["args"] == ["-g", "daemon off;"]
    assert west["spec"]["replicas"] == 5 and west["metadata"]["labels"]["tier"] == "edge"
    assert applied == ["OverridePolicy/eu"]
    east, applied = overrides.override(deployment, selected, _members()[0])
    assert east == deployment and applied == []
    broken = {**policy, "spec": {**policy["spec"], "overrideRules": [{"overriders": {
        "plaintext": [{"path": "/spec/nothing/here", "operator": "replace", "value": 1}]}}]}}
    with pytest.raises(overrides.OverrideError, match="plaintext overrider"):
        overrides.override(deployment, [broken], _members()[0])
    assert overrides.parse_image("localhost:5000/team/app@sha256:ab") == ("localhost:5000", "team/app", "",
                                                                            "sha256:ab")


def test_policy_matching_prefers_priority_then_the_most_specific_selector() -> None:
    web = {"apiVersion": "apps/v1", "kind": "Deployment",
           "metadata": {"name": "web", "namespace": "team", "labels": {"app": "web"}}}

    def pp(name: str, selector: dict, priority: int = 0, namespace: str = "team") -> dict:
        return {"metadata": {"name": name, "namespace": namespace},
                "spec": {"priority": priority, "resourceSelectors": [{"apiVersion": "apps/v1", "kind": "Deployment",
                                                                      **selector}]}}

    by_kind, by_label, by_name = pp("a", {}), pp("b", {"labelSelector": {"matchLabels": {"app": "web"}}}), \
        pp("c", {"name": "web"})
    assert match_policy(web, [by_kind, by_label, by_name], [])["metadata"]["name"] == "c"
    assert match_policy(web, [by_kind, by_label], [])["metadata"]["name"] == "b"
    assert match_policy(web, [by_kind, pp("z", {}, priority=5)], [])["metadata"]["name"] == "z"
    cluster_wide = {"metadata": {"name": "cpp"}, "spec": {"resourceSelectors": [{"apiVersion": "apps/v1",
                                                                                "kind": "Deployment"}]}}
    assert match_policy(web, [pp("other", {}, namespace="elsewhere")], [cluster_wide])["metadata"]["name"] == "cpp"
    assert match_policy(web, [], []) is None


def test_evacuation_progress_counts_replicas_left_in_the_region() -> None:
    binding = {"metadata": {"name": "web-deployment", "namespace": "default"},
               "spec": {"clusters": [{"name": "west-1", "replicas": 4}],
                        "gracefulEvictionTasks": [{"fromCluster": "east-1", "replicas": 2}]}}
    status = progress("us-east-1", {"east-1", "east-2"}, [binding], {"totalReplicas": 6}, ["us-east-1"])
    assert (status["phase"], status["totalReplicas"], status["movedReplicas"]) == ("Running", 6, 4)
    done = progress("us-east-1", {"east-1"}, [{**binding, "spec": {"clusters": binding["spec"]["clusters"]}}],
                    status, ["us-east-1"])
    assert (done["phase"], done["movedReplicas"], done["conditions"][-1]["reason"]) == ("Completed", 6, "Evacuated")
    missing = progress("mars-1", set(), [binding], {}, ["us-east-1", "us-west-2"])
    assert missing["phase"] == "Failed" and "known regions: us-east-1, us-west-2" in \
        missing["conditions"][0]["message"]


def test_ordered_cluster_affinities_fall_back_to_the_next_term() -> None:
    rule = {"clusterAffinities": [{"affinityName": "primary", "clusterNames": ["east-2"]},
                                  {"affinityName": "backup", "clusterNames": ["east-1", "west-1"]}],
            "replicaScheduling": {"replicaSchedulingType": "Divided", "replicaDivisionPreference": "Weighted",
                                  "weightPreference": {"dynamicWeight": "AvailableReplicas"}}}
    targets, why = schedule(rule, 2, _members())
    assert _counts(targets) == {"east-2": 2} and why["@affinity"] == "primary"
    # east-2 has room for 2: 8 replicas go to the backup term, by available replicas (10 and 6)
    targets, why = schedule(rule, 8, _members())
    assert _counts(targets) == {"east-1": 5, "west-1": 3} and why["@affinity"] == "backup"
    with pytest.raises(PlacementError, match="no cluster affinity term fits"):
        schedule(rule, 40, _members())
