"""The diagnose rules on evidence the simulator cannot produce (an OOM kill, a tainted cluster, a NotReady
node), the runbook corpus' shape, and the output-size limits."""

from __future__ import annotations

import json
from typing import Any

from ultraplane.mcp import runbooks
from ultraplane.mcp.rules import pod_rules
from ultraplane.mcp.views import fit, tail_text


def evidence(containers: list[dict[str, Any]] | None = None, conditions: list[dict[str, Any]] | None = None,
             node: dict[str, Any] | None = None, events: list[str] | None = None) -> dict[str, Any]:
    return {"pod": {"name": "p", "namespace": "ns", "phase": "Running", "conditions": conditions or [],
                    "requests": {"app": {"memory": "64Mi"}}, "nodeSelector": None, "restartPolicy": "Always"},
            "containers": containers or [], "events": events or [], "logs": {}, "node": node,
            "owners": [], "rollout": {}, "config": []}


def test_oom_kill_outranks_the_crash_loop_it_causes() -> None:
    findings = pod_rules(evidence([{
        "name": "app", "image": "java", "ready": False, "restartCount": 4,
        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}]))
    assert [f.runbook for f in findings] == ["oomkilled"]  # the loop is its consequence, not a second cause
    assert "exceeding its memory limit" in findings[0].cause and "limits.memory" in findings[0].fix


def test_taint_and_cordon_reasons_of_a_pending_pod() -> None:
    message = ("0/3 nodes are available: 2 node(s) had untolerated taint {dedicated: gpu}, 1 node(s) were "
               "unschedulable. preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling.")
    findings = pod_rules(evidence(conditions=[{"type": "PodScheduled", "status": "False",
                                               "reason": "Unschedulable", "message": message}]))
    assert findings[0].runbook == "pending-pods"
    assert findings[0].cause.index("2 node(s) carry the taint {dedicated: gpu}") < \
        findings[0].cause.index("1 node(s) cordoned")
    assert "toleration" in findings[0].fix and "uncordon" in findings[0].fix


def test_pod_on_a_not_ready_node() -> None:
    findings = pod_rules(evidence(node={"name": "n1", "ready": "Unknown", "readyReason": "NodeStatusUnknown",
                                        "readyMessage": "Kubelet stopped posting node status.",
                                        "lastHeartbeat": "2026-01-01T00:00:00Z"}))
    assert findings[0].runbook == "node-notready" and "n1 is NotReady" in findings[0].cause


def test_every_runbook_has_the_four_sections() -> None:
    books = runbooks.corpus()
    assert len(books) == 9
    for book in books.values():
        assert book.keywords, book.id
        for section in ("Symptoms", "Evidence to check", "Causes", "Fixes"):
            assert book.section(section), (book.id, section)
    assert runbooks.search("zzzz unrelated words qqq") == []


def test_fit_pages_lists_and_cuts_strings_with_a_note() -> None:
    listing = {"items": [{"name": f"pod-{i}", "pad": "x" * 100} for i in range(500)]}
    text = fit(listing, 5_000)
    answer = json.loads(text)
    assert len(text) <= 5_000 and 0 < len(answer["items"]) < 500
    assert f"only the first {len(answer['items'])} of 500 items" in answer["truncated"]
    blob = json.loads(fit({"data": {"blob": "y" * 50_000}}, 5_000))
    assert "characters truncated" in blob["value"]["data"]["blob"] and "output limit" in blob["truncated"]
    logs = "\n".join(f"line {i}" for i in range(10_000))
    cut = tail_text(logs, 2_000)
    assert len(cut) <= 2_000 and cut.endswith("line 9999") and cut.startswith("[truncated: the last")
