"""Every read tool, the resources and the prompts, driven through the SDK's ClientSession over stdio and over
streamable HTTP against the live cluster with its injected faults; `diagnose` must name each fault's cause."""

from __future__ import annotations

import json
import re

import pytest

from tests.apiserver.conftest import Cluster
from tests.mcpserver.conftest import BAD_IMAGE, NS, Peer

READ_TOOLS = {"api_resources", "list_resources", "get_resource", "events", "pod_logs", "describe", "diagnose",
              "metrics", "search_runbooks", "image_inventory"}
WRITE_TOOLS = {"apply", "patch", "delete", "scale", "rollout_restart"}


def pod_named(peer: Peer, prefix: str) -> str:
    rows = peer.json("list_resources", kind="pods", namespace=NS, label_selector=f"app={prefix}")["items"]
    assert rows, f"no pod of {prefix}"
    return rows[0]["name"]


def test_lists_tools_resources_and_prompts(peer: Peer) -> None:
    tools = {t.name: t for t in peer.run(lambda s: s.list_tools()).tools}
    assert READ_TOOLS | WRITE_TOOLS <= set(tools)
    assert tools["get_resource"].annotations.read_only_hint is True
    assert tools["delete"].annotations.destructive_hint is True
    uris = {str(r.uri) for r in peer.run(lambda s: s.list_resources()).resources}
    assert "cluster://facts" in uris
    assert {"runbook://crashloopbackoff", "runbook://imagepullbackoff", "runbook://pending-pods",
            "runbook://oomkilled", "runbook://dns-failures", "runbook://node-notready",
            "runbook://pdb-blocked-drain", "runbook://job-backoff-failed", "runbook://probe-failures"} <= uris
    prompts = {p.name for p in peer.run(lambda s: s.list_prompts()).prompts}
    assert {"investigate_pod", "investigate_workload", "investigate_node", "cluster_health_check"} <= prompts


def test_resources_and_prompts_read(peer: Peer) -> None:
    facts = json.loads(peer.run(lambda s: s.read_resource("cluster://facts")).contents[0].text)
    assert facts["nodes"]["total"] == 2 and facts["nodes"]["ready"] == 2
    assert "widgets.example.com" in facts["customResources"]
    assert NS in facts["namespaces"]
    assert facts["server"]["secretValues"] == "redacted"
    book = peer.run(lambda s: s.read_resource("runbook://imagepullbackoff")).contents[0].text
    assert book.startswith("# ImagePullBackOff") and "## Fixes" in book
    prompt = peer.run(lambda s: s.get_prompt("investigate_pod", {"name": "hungry", "namespace": NS}))
    text = prompt.messages[0].content.text
    assert "diagnose" in text and "hungry" in text


def test_api_resources_include_crds(peer: Peer) -> None:
    kinds = {r["kind"]: r for r in peer.json("api_resources")["items"]}
    assert kinds["Widget"]["name"] == "widgets.example.com" and kinds["Widget"]["shortNames"] == ["wd"]
    assert kinds["Deployment"]["apiVersion"] == "apps/v1" and kinds["Node"]["namespaced"] is False


def test_list_and_get_any_kind(peer: Peer) -> None:
    pods = peer.json("list_resources", kind="po", namespace=NS)["items"]
    status = {p["name"]: p["status"] for p in pods}
    assert status["hungry"] == "Pending"
    assert any(name.startswith("crashy-") and s in ("CrashLoopBackOff", "Running") for name, s in status.items())
    widget = peer.json("get_resource", kind="wd", name="sprocket", namespace=NS)
    assert widget["kind"] == "Widget" and widget["spec"] == {"size": 3}
    widgets = peer.json("list_resources", kind="widgets.example.com", full=True)["items"]
    assert [w["metadata"]["name"] for w in widgets] == ["sprocket"]
    node = peer.json("get_resource", kind="Node", name=peer.json("list_resources", kind="nodes")["items"][0]["name"])
    assert "managedFields" not in node["metadata"] and node["status"]["allocatable"]["cpu"]


def test_list_pages_with_continue(peer: Peer) -> None:
    first = peer.json("list_resources", kind="pods", namespace=NS, limit=2)
    assert len(first["items"]) == 2 and first["continue"]
    second = peer.json("list_resources", kind="pods", namespace=NS, limit=2, continue_token=first["continue"])
    assert second["items"] and not {p["name"] for p in first["items"]} & {p["name"] for p in second["items"]}


def test_secret_values_are_redacted(peer: Peer) -> None:
    secret = peer.text("get_resource", kind="secret", name="db-creds", namespace=NS)
    assert "hunter2" not in secret and "aHVudGVyMi" not in secret  # neither the value nor its base64
    assert json.loads(secret)["data"]["password"].startswith("<redacted")
    listed = peer.text("list_resources", kind="secrets", namespace=NS, full=True)
    assert "hunter2" not in listed and "aHVudGVyMi" not in listed and "<redacted" in listed


def test_events_of_object_and_namespace(peer: Peer) -> None:
    crashy = pod_named(peer, "crashy")
    own = peer.json("events", namespace=NS, kind="pod", name=crashy)["items"]
    assert own and all(e["object"] == f"Pod/{crashy}" for e in own)
    assert any("Back-off restarting failed container" in e["event"] for e in own)
    warnings = peer.json("events", namespace=NS, warnings_only=True, limit=500)["items"]
    assert warnings and all(e["event"].startswith("Warning") for e in warnings)
    assert any("FailedScheduling" in e["event"] and e["object"] == "Pod/hungry" for e in warnings)


def test_pod_logs_current_previous_and_tail(peer: Peer) -> None:
    crashy = pod_named(peer, "crashy")
    previous = peer.text("pod_logs", name=crashy, namespace=NS, previous=True)
    assert "fatal: required setting DB_URL is empty" in previous
    assert peer.text("pod_logs", name=crashy, namespace=NS, previous=True, tail_lines=1).strip() == \
        "fatal: required setting DB_URL is empty"
    assert 'pods "no-such-pod" not found' in peer.error("pod_logs", name="no-such-pod", namespace=NS)


def test_describe_summaries(peer: Peer) -> None:
    text = peer.text("describe", kind="deployment", name="api", namespace=NS)
    assert "revision 1:" in text and "revision 2:" in text and BAD_IMAGE in text
    pod = peer.text("describe", kind="pod", name=pod_named(peer, "crashy"), namespace=NS)
    assert "Last State:    Terminated reason=Error exitCode=3" in pod and "Restart Count:" in pod
    assert "Back-off restarting failed container" in pod
    widget = peer.text("describe", kind="widget", name="sprocket", namespace=NS)  # any kind, CRDs too
    assert "Kind:         Widget (example.com/v1)" in widget and "Events:       <none>" in widget
    node = peer.text("describe", kind="no", name=nodes_by_state(peer)[True])
    assert "Unschedulable: True" in node and "node.kubernetes.io/unschedulable=:NoSchedule" in node


def test_metrics_parsed(peer: Peer) -> None:
    answer = peer.json("metrics", name_contains="apiserver_request_total", labels={"verb": "LIST"}, limit=50)
    assert answer["samples"] > 0
    assert all(s["name"] == "apiserver_request_total" and s["labels"]["verb"] == "LIST" for s in answer["items"])
    assert all(isinstance(s["value"], float) and s["value"] >= 1 for s in answer["items"])


def test_image_inventory(peer: Peer, cluster: Cluster) -> None:
    bad = peer.json("image_inventory", contains="registry.invalid")["items"]
    assert [i["image"] for i in bad] == [BAD_IMAGE] and bad[0]["imageID"] is None  # never pulled
    assert len(bad[0]["pods"]) == 1 and bad[0]["pods"][0].startswith(f"{NS}/api-")
    busybox = next(i for i in peer.json("image_inventory", namespace=NS)["items"] if i["image"] == "busybox")
    digest = busybox["imageID"].split("@", 1)[1]
    by_digest = peer.json("image_inventory", contains=digest)["items"]
    running = {f"{NS}/{p['metadata']['name']}" for p in cluster.json("get", "pods", "-n", NS)["items"]
               if any(s.get("imageID", "").endswith(digest) for s in p["status"].get("containerStatuses") or [])}
    assert {p for i in by_digest for p in i["pods"]} == running
    assert set(busybox["nodes"]) <= {n["metadata"]["name"] for n in cluster.json("get", "nodes")["items"]}


def test_search_runbooks(peer: Peer) -> None:
    cases = {"Back-off pulling image": "imagepullbackoff", "0/3 nodes are available: 3 Insufficient cpu":
             "pending-pods", "container terminated OOMKilled exit code 137": "oomkilled",
             "Cannot evict pod as it would violate the pod's disruption budget": "pdb-blocked-drain",
             "Job has reached the specified backoff limit": "job-backoff-failed",
             "Liveness probe failed: connection refused": "probe-failures",
             "Kubelet stopped posting node status": "node-notready",
             "Temporary failure in name resolution": "dns-failures",
             "Back-off restarting failed container": "crashloopbackoff"}
    for query, expected in cases.items():
        hits = peer.json("search_runbooks", query=query)["items"]
        assert hits[0]["id"] == expected, (query, hits)
        assert hits[0]["fixes"]


# ------------------------------------------------------------------------------------------------ diagnose
def test_diagnose_crash_looping_deployment(peer: Peer) -> None:
    verdict = peer.json("diagnose", kind="deployment", name="crashy", namespace=NS)
    assert verdict["runbook"] == "crashloopbackoff"
    assert "exits with code 3" in verdict["likelyCause"]
    assert "DB_URL is empty" in verdict["likelyCause"]
    assert any("CrashLoopBackOff" in e or "terminated Error exit 3" in e for e in verdict["evidenceCited"])
    assert "rollout undo deployment/crashy" in verdict["fix"]
    assert any(e.startswith("config: ConfigMap crashy-config last changed") and e.endswith("after the pod started")
               for e in verdict["evidenceCited"])


def test_diagnose_unpullable_image_names_the_rollout(peer: Peer) -> None:
    verdict = peer.json("diagnose", kind="deploy", name="api", namespace=NS)
    assert verdict["runbook"] == "imagepullbackoff"
    assert f'cannot pull image "{BAD_IMAGE}"' in verdict["likelyCause"]
    assert "registry host does not resolve" in verdict["likelyCause"]
    assert re.search(r"latest rollout \(revision 2, \d+[smhd] ago\) changed: container app image: busybox -> "
                     + re.escape(BAD_IMAGE), verdict["likelyCause"])
    assert any("no such host" in e for e in verdict["evidenceCited"])
    assert "rollout undo" in verdict["fix"]
    revisions = verdict["evidence"]["workload"]["rollout"]["revisions"]
    assert [r["images"]["app"] for r in revisions] == ["busybox", BAD_IMAGE]
    # the same answer from the pod itself
    failing = next(p for p in peer.json("list_resources", kind="pods", namespace=NS, label_selector="app=api")["items"]
                   if p["status"] in ("ErrImagePull", "ImagePullBackOff"))
    assert peer.json("diagnose", kind="pod", name=failing["name"], namespace=NS)["runbook"] == "imagepullbackoff"


def test_diagnose_pending_pod(peer: Peer) -> None:
    verdict = peer.json("diagnose", kind="pod", name="hungry", namespace=NS)
    assert verdict["runbook"] == "pending-pods"
    assert "lack the free cpu the pod requests" in verdict["likelyCause"]
    assert any("Insufficient cpu" in e for e in verdict["evidenceCited"])
    assert "resources.requests" in verdict["fix"]


def test_diagnose_dns_failure(peer: Peer) -> None:
    verdict = peer.json("diagnose", kind="pod", name="resolver", namespace=NS)
    assert verdict["runbook"] == "dns-failures"
    assert '"db.prod.svc.cluster.local" does not resolve' in verdict["likelyCause"]
    assert [f["runbook"] for f in verdict["findings"]][:2] == ["dns-failures", "crashloopbackoff"]


def test_diagnose_pod_selecting_no_node(peer: Peer) -> None:
    verdict = peer.json("diagnose", kind="pod", name="picky", namespace=NS)
    assert verdict["runbook"] == "pending-pods"
    assert "do not match the pod's nodeSelector/affinity ({'disktype': 'ssd'})" in verdict["likelyCause"]
    assert "label nodes" in verdict["fix"]


def test_diagnose_failing_readiness_probe(peer: Peer) -> None:
    verdict = peer.json("diagnose", kind="pod", name="unready", namespace=NS)
    assert verdict["runbook"] == "probe-failures"
    assert "Readiness probe failed" in verdict["likelyCause"] and "connection refused" in verdict["likelyCause"]


def test_diagnose_crash_looping_statefulset(peer: Peer) -> None:
    verdict = peer.json("diagnose", kind="sts", name="ledger", namespace=NS)
    assert verdict["target"] == "StatefulSet default/ledger" and verdict["runbook"] == "crashloopbackoff"
    assert "exits with code 2" in verdict["likelyCause"] and "ledger volume /data is not writable" in \
        verdict["likelyCause"]
    assert verdict["evidence"]["workload"]["pods"]["unhealthy"] == ["ledger-0"]


def test_diagnose_failed_job(peer: Peer) -> None:
    verdict = peer.json("diagnose", kind="job", name="migrate", namespace=NS)
    assert verdict["runbook"] == "job-backoff-failed"
    assert "BackoffLimitExceeded" in verdict["likelyCause"]
    assert 'exited with code 2' in verdict["likelyCause"]
    assert "relation users already exists" in verdict["likelyCause"]


def nodes_by_state(peer: Peer) -> dict[bool, str]:
    """{cordoned: name}: the fixture cordoned the node running the PDB-guarded pod."""
    nodes = peer.json("list_resources", kind="nodes", full=True)["items"]
    return {bool(n["spec"].get("unschedulable")): n["metadata"]["name"] for n in nodes}


def test_diagnose_healthy_node(peer: Peer) -> None:
    verdict = peer.json("diagnose", kind="node", name=nodes_by_state(peer)[False])
    assert verdict["likelyCause"] is None and "Ready" in verdict["summary"]
    assert verdict["evidence"]["node"]["ready"] == "True"


def test_diagnose_drain_blocked_by_pdb(peer: Peer) -> None:
    verdict = peer.json("diagnose", kind="node", name=nodes_by_state(peer)[True])
    assert verdict["runbook"] == "pdb-blocked-drain"
    assert "default/guarded" in verdict["likelyCause"]
    assert "PodDisruptionBudget default/guarded: disruptionsAllowed=0" in verdict["evidenceCited"]


# ------------------------------------------------------------------------------------------------ bad input
def test_unknown_kind_is_a_clear_error(peer: Peer) -> None:
    for tool, args in (("get_resource", {"name": "x"}), ("list_resources", {}), ("describe", {"name": "x"}),
                       ("diagnose", {"name": "x"})):
        assert 'the server doesn\'t have a resource type "gizmos"' in peer.error(tool, kind="gizmos", **args)


def test_malformed_arguments(peer: Peer) -> None:
    assert "tail_lines" in peer.error("pod_logs", name="x", tail_lines="many")
    assert "name" in peer.error("get_resource", kind="pods")  # missing required argument
    assert "limit" in peer.error("list_resources", kind="pods", limit=0)
    assert "404" in peer.error("get_resource", kind="pod", name="no-such-pod", namespace=NS)
    assert "diagnose supports pods, nodes and workloads" in peer.error("diagnose", kind="configmap", name="big",
                                                                       namespace=NS)


def test_oversized_output_is_truncated_with_a_note(peer: Peer) -> None:
    text = peer.text("get_resource", kind="configmap", name="big", namespace=NS)
    assert len(text) <= 60_000
    answer = json.loads(text)
    assert "output limit" in answer["truncated"]
    assert answer["value"]["metadata"]["name"] == "big" and "characters truncated" in answer["value"]["data"]["blob"]


@pytest.mark.parametrize("peer", ["stdio"], indirect=True)
def test_writes_refused_when_read_only(peer: Peer, cluster: Cluster) -> None:
    before = cluster.json("get", "deployment", "crashy", "-n", NS)["spec"]["replicas"]
    for tool, args in (("scale", {"kind": "deployment", "name": "crashy", "replicas": 5}),
                       ("delete", {"kind": "pod", "name": "hungry"}),
                       ("rollout_restart", {"kind": "deployment", "name": "crashy"}),
                       ("patch", {"kind": "deployment", "name": "crashy", "patch": '{"spec":{"replicas":7}}'}),
                       ("apply", {"manifest": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: nope}\n"})):
        error = peer.error(tool, namespace=NS, **args) if tool != "apply" else peer.error(tool, **args)
        assert "writes are disabled" in error and "--allow-write" in error and "nothing was changed" in error
    assert cluster.json("get", "deployment", "crashy", "-n", NS)["spec"]["replicas"] == before
    assert cluster.kubectl("get", "pod", "hungry", "-n", NS).returncode == 0
    assert cluster.kubectl("get", "configmap", "nope", "-n", NS).returncode != 0
