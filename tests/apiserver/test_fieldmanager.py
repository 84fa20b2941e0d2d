"""Server-side apply field management (fieldmanager.py) on kube's own schemas: sets, updates, apply."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from ultraplane.apiserver import errors
from ultraplane.apiserver import fieldmanager as fm
from ultraplane.apiserver.openapi import Schemas

STATUS = frozenset({"status"})


@pytest.fixture(scope="module")
def deployment_schema() -> dict[str, Any]:
    schema = Schemas.load().kind_schema("apps", "v1", "Deployment")
    assert schema is not None
    return schema


def deployment(image: str = "nginx:1.27", replicas: int = 3) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "web", "image": image,
                                                           "ports": [{"containerPort": 80}]}]}}}}


def entries(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["manager"]: m for m in obj["metadata"]["managedFields"]}


def test_applied_set_uses_list_map_keys_with_defaults(deployment_schema: dict[str, Any]) -> None:
    fields = fm.to_field_set(deployment(), deployment_schema)
    assert "f:name" not in fields.get("f:metadata", {})  # stripped: nobody owns the name
    assert fields["f:metadata"] == {"f:labels": {"f:app": {}}}
    assert fields["f:spec"]["f:selector"] == {}  # x-kubernetes-map-type: atomic
    container = fields["f:spec"]["f:template"]["f:spec"]["f:containers"]['k:{"name":"web"}']
    # containerPort+protocol are the keys, protocol defaulted to TCP
    assert container["f:ports"] == {'k:{"containerPort":80,"protocol":"TCP"}': {".": {}, "f:containerPort": {}}}
    assert fm.path_text(("f:spec", "f:template", "f:spec", "f:containers", 'k:{"name":"web"}', "f:ports",
                         'k:{"containerPort":80,"protocol":"TCP"}')) == \
        '.spec.template.spec.containers[name="web"].ports[containerPort=80,protocol="TCP"]'


def test_update_moves_only_changed_fields(deployment_schema: dict[str, Any]) -> None:
    created = deployment()
    created["status"] = {"replicas": 0}
    fm.record_update(created, None, deployment_schema, "creator", "apps/v1", "", STATUS)
    creator = entries(created)["creator"]["fieldsV1"]
    assert "f:status" not in creator and "f:replicas" in creator["f:spec"]
    scaled = copy.deepcopy(created)
    scaled["spec"]["replicas"] = 5
    fm.record_update(scaled, created, deployment_schema, "scaler", "apps/v1", "", STATUS)
    owners = entries(scaled)
    assert owners["scaler"]["fieldsV1"] == {"f:spec": {"f:replicas": {}}}
    assert "f:replicas" not in owners["creator"]["fieldsV1"]["f:spec"]
    # a write that changes nothing records nothing (and keeps the entries as they were)
    again = copy.deepcopy(scaled)
    fm.record_update(again, scaled, deployment_schema, "someone", "apps/v1", "", STATUS)
    assert again["metadata"]["managedFields"] == scaled["metadata"]["managedFields"]


def test_apply_conflicts_prune_and_force(deployment_schema: dict[str, Any]) -> None:
    live = deployment()
    live["spec"]["template"]["spec"]["containers"][0]["ports"][0]["protocol"] = "TCP"  # defaulted
    fm.record_update(live, None, deployment_schema, "creator", "apps/v1", "", STATUS)
    config = {k: v for k, v in deployment().items() if k not in ("apiVersion", "kind")}
    config["metadata"] = {"labels": {"app": "web"}}
    # the same values: no conflict, even for the port the creator wrote with its defaulted protocol
    applied = fm.apply(live, copy.deepcopy(live), config, deployment_schema, "ci", "apps/v1", "", False, STATUS)
    assert {"ci", "creator"} <= set(entries(applied))
    other = copy.deepcopy(config)
    other["spec"]["replicas"] = 7
    with pytest.raises(errors.ApiError) as conflict:
        merged = copy.deepcopy(applied)
        merged["spec"]["replicas"] = 7
        fm.apply(applied, merged, other, deployment_schema, "other", "apps/v1", "", False, STATUS)
    assert conflict.value.status["message"] == (
        'Apply failed with 2 conflicts: conflicts with "ci"\n- .spec.replicas\n'
        'conflicts with "creator" using apps/v1\n- .spec.replicas')
    merged = copy.deepcopy(applied)
    merged["spec"]["replicas"] = 7
    forced = fm.apply(applied, merged, other, deployment_schema, "other", "apps/v1", "", True, STATUS)
    owners = entries(forced)
    assert "f:replicas" not in owners["ci"]["fieldsV1"]["f:spec"]
    assert "f:replicas" not in owners["creator"]["fieldsV1"]["f:spec"]
    # "other" stops applying replicas: it owns it alone, so the field goes from the object
    fewer = copy.deepcopy(other)
    del fewer["spec"]["replicas"]
    pruned = fm.apply(forced, copy.deepcopy(forced), fewer, deployment_schema, "other", "apps/v1", "", False, STATUS)
    assert "replicas" not in pruned["spec"]


def test_field_set_trees_stay_normal() -> None:
    tree: dict[str, Any] = {}
    fm.tree_insert(tree, ("f:data", "f:a"))
    fm.tree_insert(tree, ("f:data",))
    assert tree == {"f:data": {".": {}, "f:a": {}}}
    assert fm.tree_has(tree, ("f:data",)) and fm.tree_has(tree, ("f:data", "f:a"))
    assert fm.tree_remove(tree, ("f:data", "f:a"))
    assert tree == {"f:data": {}}  # only the map itself is owned now
    assert fm.tree_remove(tree, ("f:data",)) and tree == {}
    fm.tree_insert(tree, ("f:spec", "f:x"))
    assert not fm.tree_has(tree, ("f:spec",))  # a parent that only leads to a member is not one
    assert fm.tree_remove(tree, ("f:spec", "f:x")) and tree == {}
