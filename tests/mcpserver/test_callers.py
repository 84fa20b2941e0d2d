"""HTTP callers with their own bearer tokens (--callers, kube's token file format): requests without a
listed token get 401, and each caller's requests run as that caller (impersonated, audited as them)."""

from __future__ import annotations

from pathlib import Path

import httpx2

from tests.mcpserver.conftest import NS, Peer


def test_requests_without_a_callers_token_get_401(http_url: str) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": "Basic dmlld2VyOng="}):
        answer = httpx2.post(http_url, json=body, headers={**headers, "Accept": "application/json, text/event-stream"})
        assert answer.status_code == 401 and answer.json()["error"] == "invalid_token"
        assert answer.headers["www-authenticate"].startswith("Bearer")


def test_each_caller_acts_as_itself(http: Peer, viewer: Peer, stdio: Peer, audit_dir: Path) -> None:
    assert "403" in viewer.error("get_resource", kind="secret", name="db-creds", namespace=NS)
    assert http.json("get_resource", kind="secret", name="db-creds", namespace=NS)["data"]["password"] \
        .startswith("<redacted")  # ops is in system:masters; values stay redacted all the same
    facts = http.run(lambda s: s.read_resource("cluster://facts")).contents[0].text
    assert '"actsAs": "ops (groups system:masters, ops-team)"' in facts
    facts = stdio.run(lambda s: s.read_resource("cluster://facts")).contents[0].text
    assert '"actsAs": "sre (groups system:masters)"' in facts  # --as / --as-group
    log = (audit_dir / "http.jsonl").read_text()
    assert '"identity":"viewer"' in log and '"identity":"ops"' in log
    assert '"identity":"sre"' in (audit_dir / "stdio.jsonl").read_text()
