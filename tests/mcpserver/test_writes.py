"""Writes through the HTTP server (--allow-write): each a server-side dry run returning a diff and its hash, then
applied only by a confirming call with that hash; impersonation makes the caller's RBAC apply."""

from __future__ import annotations

import json

import yaml

from tests.apiserver.conftest import Cluster
from tests.mcpserver.conftest import NS, Peer

SCALER = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "scaler", "namespace": NS},
          "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "scaler"}},
                   "template": {"metadata": {"labels": {"app": "scaler"}},
                                "spec": {"containers": [{"name": "app", "image": "busybox",
                                                         "command": ["sh", "-c", "sleep 3600"]}]}}}}


def exists(c: Cluster, *args: str) -> bool:
    return c.kubectl("get", *args, "-n", NS).returncode == 0


def test_apply_is_a_dry_run_until_confirmed(http: Peer, cluster: Cluster) -> None:
    plan = http.json("apply", manifest=yaml.safe_dump(SCALER))
    assert plan["dryRun"] is True and len(plan["hash"]) == 64
    assert "+kind: Deployment" in plan["diff"] and "+  replicas: 1" in plan["diff"]
    assert not exists(cluster, "deployment", "scaler")  # the dry run stored nothing
    done = http.json("apply", manifest=yaml.safe_dump(SCALER), confirm=plan["hash"])
    assert done["applied"] is True and done["diff"] == plan["diff"]
    assert exists(cluster, "deployment", "scaler")
    # the hash is spent: a second confirmation is refused
    assert "no pending dry run" in http.error("apply", manifest=yaml.safe_dump(SCALER), confirm=plan["hash"])


def test_scale_diff_hash_and_confirm(http: Peer, cluster: Cluster) -> None:
    plan = http.json("scale", kind="deployment", name="scaler", namespace=NS, replicas=3)
    assert "-  replicas: 1" in plan["diff"] and "+  replicas: 3" in plan["diff"]
    assert cluster.json("get", "deployment", "scaler", "-n", NS)["spec"]["replicas"] == 1
    # a different request cannot ride on this hash
    error = http.error("scale", kind="deployment", name="scaler", namespace=NS, replicas=9, confirm=plan["hash"])
    assert "arguments differ" in error
    assert "no pending dry run" in http.error("scale", kind="deployment", name="scaler", namespace=NS, replicas=3,
                                              confirm="0" * 64)
    http.json("scale", kind="deployment", name="scaler", namespace=NS, replicas=3, confirm=plan["hash"])
    assert cluster.json("get", "deployment", "scaler", "-n", NS)["spec"]["replicas"] == 3


def test_confirm_refused_when_object_changed_since_dry_run(http: Peer, cluster: Cluster) -> None:
    plan = http.json("patch", kind="deployment", name="scaler", namespace=NS,
                     patch=json.dumps({"metadata": {"labels": {"tier": "web"}}}), patch_type="merge")
    assert "+    tier: web" in plan["diff"]
    cluster.ok("label", "deployment", "scaler", "-n", NS, "owner=someone-else")  # a change in between
    error = http.error("patch", kind="deployment", name="scaler", namespace=NS,
                       patch=json.dumps({"metadata": {"labels": {"tier": "web"}}}), patch_type="merge",
                       confirm=plan["hash"])
    assert "changed since the dry run" in error and "nothing was changed" in error
    assert "tier" not in cluster.json("get", "deployment", "scaler", "-n", NS)["metadata"]["labels"]
    fresh = error.split("(hash ", 1)[1].split(")", 1)[0]  # the new diff's hash, offered with the refusal
    http.json("patch", kind="deployment", name="scaler", namespace=NS,
              patch=json.dumps({"metadata": {"labels": {"tier": "web"}}}), patch_type="merge", confirm=fresh)
    assert cluster.json("get", "deployment", "scaler", "-n", NS)["metadata"]["labels"]["tier"] == "web"


def test_rollout_restart_then_delete(http: Peer, cluster: Cluster) -> None:
    plan = http.json("rollout_restart", kind="deployment", name="scaler", namespace=NS)
    assert "kubectl.kubernetes.io/restartedAt" in plan["diff"]
    http.json("rollout_restart", kind="deployment", name="scaler", namespace=NS, confirm=plan["hash"])
    template = cluster.json("get", "deployment", "scaler", "-n", NS)["spec"]["template"]["metadata"]
    assert "kubectl.kubernetes.io/restartedAt" in template["annotations"]
    plan = http.json("delete", kind="deployment", name="scaler", namespace=NS)
    assert "-kind: Deployment" in plan["diff"] and exists(cluster, "deployment", "scaler")
    http.json("delete", kind="deployment", name="scaler", namespace=NS, confirm=plan["hash"])
    assert not exists(cluster, "deployment", "scaler")
    assert "does not exist" in http.error("delete", kind="deployment", name="scaler", namespace=NS)


def test_bad_write_input_changes_nothing(http: Peer, cluster: Cluster) -> None:
    assert "not valid YAML" in http.error("apply", manifest="kind: [unclosed")
    assert "apiVersion, kind and metadata.name" in http.error("apply", manifest="just a string")
    assert "not valid JSON" in http.error("patch", kind="deployment", name="crashy", namespace=NS, patch="{nope")
    assert 'no matches for kind "Gizmo" in version "example.com/v1"' in http.error(
        "apply", manifest="apiVersion: example.com/v1\nkind: Gizmo\nmetadata: {name: g}\n")
    assert "scale works on" in http.error("scale", kind="configmap", name="big", namespace=NS, replicas=2)
    # the API server's own validation runs in the dry run
    bad = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "Not_A_DNS_Name", "namespace": NS}}
    error = http.error("apply", manifest=json.dumps(bad))
    assert "422" in error and "Not_A_DNS_Name" in error
    assert "Not_A_DNS_Name" not in cluster.ok("get", "configmaps", "-n", NS)


def test_secret_diff_is_redacted(http: Peer, cluster: Cluster) -> None:
    manifest = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "api-token", "namespace": NS},
                "stringData": {"token": "s3cr3t-token-value"}}
    plan = http.json("apply", manifest=json.dumps(manifest))
    assert "s3cr3t" not in plan["diff"] and "<redacted" in plan["diff"]
    http.json("apply", manifest=json.dumps(manifest), confirm=plan["hash"])
    assert exists(cluster, "secret", "api-token")


def test_impersonation_applies_the_callers_rbac(viewer: Peer, http: Peer, cluster: Cluster) -> None:
    """The HTTP caller "viewer" (bound to the `view` ClusterRole in default) on the --allow-write server."""
    assert [p for p in viewer.json("list_resources", kind="pods", namespace=NS)["items"] if p["name"] == "hungry"]
    error = viewer.error("get_resource", kind="secret", name="db-creds", namespace=NS)
    assert "403" in error and 'User "viewer" cannot get resource "secrets"' in error
    error = viewer.error("scale", kind="deployment", name="crashy", namespace=NS, replicas=4)
    assert "403" in error and "viewer" in error
    assert cluster.json("get", "deployment", "crashy", "-n", NS)["spec"]["replicas"] == 1
    assert "403" in viewer.error("list_resources", kind="nodes")  # view is namespaced: no nodes
    plan = http.json("scale", kind="deployment", name="crashy", namespace=NS, replicas=2)  # ops' dry run
    # viewer cannot ride on ops' dry run, even with its hash
    error = viewer.error("scale", kind="deployment", name="crashy", namespace=NS, replicas=2, confirm=plan["hash"])
    assert "another caller" in error and "nothing was changed" in error
    assert cluster.json("get", "deployment", "crashy", "-n", NS)["spec"]["replicas"] == 1
