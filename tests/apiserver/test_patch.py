"""Patch semantics: unit cases from upstream strategicpatch behaviour plus differential runs of kubectl's SMP."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ultraplane.apiserver.openapi import Schemas
from ultraplane.apiserver.patch import PatchError, json_patch, merge_patch, strategic_merge_patch


@pytest.fixture(scope="module")
def pod_schema() -> dict[str, Any]:
    schema = Schemas.load().kind_schema("", "v1", "Pod")
    assert schema is not None
    return schema


POD = {"apiVersion": "v1", "kind": "Pod",
       "metadata": {"name": "p", "labels": {"a": "1", "keep": "k"}, "finalizers": ["a", "b", "c"]},
       "spec": {"containers": [{"name": "a", "image": "1", "ports": [{"containerPort": 80}]},
                               {"name": "b", "image": "2", "args": ["x", "y"]},
                               {"name": "c", "image": "3"}],
                "volumes": [{"name": "v", "emptyDir": {}}]}}

SMP_CASES: list[dict[str, Any]] = [
    {"metadata": {"labels": {"a": None, "b": "2"}, "finalizers": ["d", "b"]}},
    {"spec": {"containers": [{"name": "d", "image": "4"}, {"name": "b", "image": "x"}]}},
    {"spec": {"containers": [{"name": "a", "$patch": "delete"}]}},
    {"spec": {"containers": [{"name": "b", "args": ["z"]}]}},
    {"spec": {"containers": [{"name": "z", "image": "z"}, {"$patch": "replace"}]}},
    {"metadata": {"$deleteFromPrimitiveList/finalizers": ["b"]}},
    {"spec": {"volumes": [{"name": "v", "emptyDir": None, "hostPath": {"path": "/x"}}]}},
    {"spec": {"$setElementOrder/containers": [{"name": "c"}, {"name": "a"}, {"name": "b"}],
              "containers": [{"name": "a", "image": "new"}]}},
    {"metadata": {"labels": {"$patch": "replace", "only": "this"}}},
    {"spec": {"nodeSelector": {"disk": "ssd"}, "containers": [{"name": "c", "ports": [{"containerPort": 9}]}]}},
    {"spec": {"containers": [{"name": "b", "env": [{"name": "E", "value": "1"}], "args": None}],
              "tolerations": [{"key": "k", "operator": "Exists"}]}},
    {"metadata": {"$setElementOrder/finalizers": ["c", "new", "a"], "finalizers": ["new"]}},
    {"spec": {"containers": [{"name": "a", "ports": [{"containerPort": 80, "$patch": "delete"},
                                                      {"containerPort": 81, "name": "x"}]}]}},
    {"$patch": "replace", "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {}},
    # $patch on maps: delete empties an existing map; a directive on an absent field leaves it absent
    {"spec": {"volumes": [{"name": "v", "emptyDir": {"$patch": "delete"}}]}},
    {"metadata": {"labels": {"$patch": "delete"}}, "spec": {"nodeSelector": {"$patch": "replace"}}},
    {"spec": {"nodeSelector": {"a": None, "b": "c"}, "securityContext": None}},
    {"spec": {"containers": [{"name": "b", "args": ["y", "q"]}], "foo": [1, 2]}},
    {"spec": {"tolerations": [{"key": "k2", "operator": "Exists"}]}},
    {"spec": {"$setElementOrder/volumes": [{"name": "w"}, {"name": "v"}], "volumes": [{"name": "w", "emptyDir": {}}]}},
    {"spec": {"volumes": [{"name": "v", "$retainKeys": ["name", "secret"], "secret": {"secretName": "s"}}]}},
]


DEPLOYMENT = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
              "spec": {"replicas": 1, "selector": {"matchLabels": {"a": "b"}},
                       "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}},
                       "template": {"metadata": {"labels": {"a": "b"}},
                                    "spec": {"containers": [{"name": "c", "image": "i"}]}}}}


@pytest.mark.parametrize("patch", [
    {"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}},
    {"spec": {"strategy": {"type": "Recreate", "rollingUpdate": None}, "replicas": 3}},
    {"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "j"}, {"name": "s", "image": "k"}]}}}},
    {"spec": {"strategy": {"rollingUpdate": {"maxSurge": "50%"}}, "replicas": None}},
    {"spec": {"template": {"spec": {"$patch": "replace", "containers": [{"name": "r", "image": "r"}]}}}},
])
def test_deployment_patch_matches_kubectl(patch: dict[str, Any], tmp_path: Path) -> None:
    schema = Schemas.load().kind_schema("apps", "v1", "Deployment")
    assert _kubectl_patch(DEPLOYMENT, patch, tmp_path) == strategic_merge_patch(DEPLOYMENT, patch, schema)


def _kubectl_patch(obj: dict[str, Any], patch: Any, tmp_path: Path, kind: str = "strategic") -> dict[str, Any]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl 1.32 is part of the test environment"
    source = tmp_path / "obj.json"
    source.write_text(json.dumps(obj))
    reference = subprocess.run([kubectl, "patch", "--local", "-f", str(source), "-o", "json", "--type",
                                kind, "-p", json.dumps(patch)], capture_output=True, text=True, timeout=60,
                               check=True)
    return json.loads(reference.stdout)


@pytest.mark.parametrize("patch", SMP_CASES)
def test_strategic_merge_patch_matches_kubectl(patch: dict[str, Any], pod_schema: dict[str, Any],
                                               tmp_path: Path) -> None:
    assert strategic_merge_patch(POD, patch, pod_schema) == _kubectl_patch(POD, patch, tmp_path)


def test_strategic_merge_patch_does_not_modify_input(pod_schema: dict[str, Any]) -> None:
    before = json.dumps(POD)
    strategic_merge_patch(POD, {"spec": {"containers": [{"name": "a", "image": "q"}]}}, pod_schema)
    assert json.dumps(POD) == before


def test_strategic_merge_patch_missing_merge_key(pod_schema: dict[str, Any]) -> None:
    with pytest.raises(PatchError) as exc:
        strategic_merge_patch(POD, {"spec": {"containers": [{"image": "x"}]}}, pod_schema)
    assert str(exc.value) == "map: map[image:x] does not contain declared merge key: name"


def test_retain_keys_drops_unlisted_fields() -> None:
    schema = Schemas.load().kind_schema("apps", "v1", "Deployment")
    deployment = {"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}}
    patched = strategic_merge_patch(deployment, {"spec": {"strategy": {"$retainKeys": ["type"],
                                                                        "type": "Recreate"}}}, schema)
    assert patched == {"spec": {"strategy": {"type": "Recreate"}}}


def test_unknown_fields_fall_back_to_merge_patch() -> None:
    obj = {"spec": {"list": [1, 2], "map": {"a": 1}}}
    assert strategic_merge_patch(obj, {"spec": {"list": [3], "map": {"b": 2}}}, None) == \
        {"spec": {"list": [3], "map": {"a": 1, "b": 2}}}


def test_merge_patch_rfc7386() -> None:
    assert merge_patch({"a": "b", "c": {"d": "e", "f": "g"}}, {"a": "z", "c": {"f": None}}) == \
        {"a": "z", "c": {"d": "e"}}
    assert merge_patch({"a": [1, 2]}, {"a": [3]}) == {"a": [3]}
    assert merge_patch({"a": 1}, {"b": {"c": None}}) == {"a": 1, "b": {}}


JSON_PATCH_CASES: list[list[dict[str, Any]]] = [
    [{"op": "add", "path": "/metadata/labels/b", "value": "2"}, {"op": "remove", "path": "/spec/volumes/0"}],
    [{"op": "replace", "path": "/metadata/labels/zz", "value": "1"}],
    [{"op": "add", "path": "/metadata/finalizers/-", "value": "z"}, {"op": "move", "from": "/metadata/labels/a",
                                                                      "path": "/metadata/labels/m"}],
    [{"op": "test", "path": "/metadata/labels/a", "value": "1"}, {"op": "copy", "from": "/metadata/name",
                                                                   "path": "/metadata/labels/n"}],
]

JSON_PATCH_ERRORS: list[list[dict[str, Any]]] = [
    [{"op": "test", "path": "/metadata/labels/a", "value": "9"}],
    [{"op": "remove", "path": "/metadata/labels/zz"}],
    [{"op": "remove", "path": "/nope/x"}],
    [{"op": "replace", "path": "/nope/x", "value": "1"}],
    [{"op": "add", "path": "/nope/x", "value": 1}],
    [{"op": "add", "path": "/spec/containers/9", "value": {}}],
    [{"op": "remove", "path": "/spec/containers/9"}],
    [{"op": "move", "from": "/nope", "path": "/x"}],
    [{"op": "frob", "path": "/a"}],
    [{"op": "add"}],
]


@pytest.mark.parametrize("ops", JSON_PATCH_CASES)
def test_json_patch_matches_kubectl(ops: list[dict[str, Any]], tmp_path: Path) -> None:
    before = json.dumps(POD)
    assert json_patch(POD, ops) == _kubectl_patch(POD, ops, tmp_path, "json")
    assert json.dumps(POD) == before


@pytest.mark.parametrize("ops", JSON_PATCH_ERRORS)
def test_json_patch_errors_match_kubectl(ops: list[dict[str, Any]], tmp_path: Path) -> None:
    """kubectl applies JSON patches with the same evanphx/json-patch v4 library as kube-apiserver."""
    with pytest.raises(PatchError) as exc:
        json_patch(POD, ops)
    source = tmp_path / "obj.json"
    source.write_text(json.dumps(POD))
    reference = subprocess.run(["kubectl", "patch", "--local", "-f", str(source), "-o", "json", "--type", "json",
                                "-p", json.dumps(ops)], capture_output=True, text=True, timeout=60)
    assert reference.returncode != 0
    assert reference.stderr.strip() == f"error: {exc.value}"


@pytest.mark.parametrize(("patch", "message"), [
    ({"spec": {"containers": [{"name": "c", "$patch": "merge"}]}},
     "merging lists cannot yet be specified in the patch"),
    ({"spec": {"containers": [{"name": "c", "$patch": "bogus"}]}},
     "unknown patch type: bogus in map: map[$patch:bogus name:c]"),
    ({"spec": {"containers": [{"$patch": "delete", "image": "i"}]}},
     "map: map[$patch:delete image:i] does not contain declared merge key: name"),
    ({"metadata": {"labels": {"$patch": "bogus"}}}, "unknown patch type: bogus in map: map[$patch:bogus]"),
])
def test_strategic_merge_patch_errors_match_kubectl(patch: dict[str, Any], message: str, pod_schema: dict[str, Any],
                                                    tmp_path: Path) -> None:
    with pytest.raises(PatchError) as exc:
        strategic_merge_patch(POD, patch, pod_schema)
    assert str(exc.value) == message
    source = tmp_path / "obj.json"
    source.write_text(json.dumps(POD))
    reference = subprocess.run(["kubectl", "patch", "--local", "-f", str(source), "-o", "json", "--type",
                                "strategic", "-p", json.dumps(patch)], capture_output=True, text=True, timeout=60)
    assert reference.returncode != 0 and reference.stderr.strip() == f"error: {message}"
