"""The hash-chained audit log: the servers record every call with its outcome, and verify() (and
`ultraplane mcp --verify-audit`) detects edited, removed and cut-off entries."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from tests.mcpserver.conftest import NS, Peer
from ultraplane.cli.main import build_parser
from ultraplane.mcp.audit import AuditLog, verify


def entries(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_every_call_is_recorded_and_the_chain_verifies(stdio: Peer, audit_dir: Path) -> None:
    stdio.text("get_resource", kind="pod", name="hungry", namespace=NS)
    stdio.error("get_resource", kind="gizmos", name="x")
    stdio.error("scale", kind="deployment", name="crashy", namespace=NS, replicas=2)
    stdio.run(lambda s: s.read_resource("runbook://oomkilled"))
    log = entries(audit_dir / "stdio.jsonl")
    calls = [e for e in log if e["method"] == "tools/call"]
    assert {"name": "get_resource", "outcome": "ok"}.items() <= calls[-3].items()
    assert calls[-3]["arguments"] == {"kind": "pod", "name": "hungry", "namespace": NS}
    assert calls[-2]["outcome"] == "error" and "gizmos" in calls[-2]["error"]
    assert calls[-1]["name"] == "scale" and "writes are disabled" in calls[-1]["error"]
    assert any(e["method"] == "resources/read" and e["uri"] == "runbook://oomkilled" for e in log)
    assert any(e["method"] == "initialize" for e in log)
    assert [e["seq"] for e in log] == list(range(1, len(log) + 1))
    result = verify(audit_dir / "stdio.jsonl")
    assert result.ok and result.entries == len(log) and result.head == log[-1]["hash"]


def test_http_audit_records_peer_and_digests_manifests(http: Peer, audit_dir: Path) -> None:
    http.json("apply", manifest="apiVersion: v1\nkind: ConfigMap\nmetadata: {name: audited, namespace: default}\n")
    log = entries(audit_dir / "http.jsonl")
    apply = [e for e in log if e.get("name") == "apply"][-1]
    assert apply["transport"] == "http" and apply["peer"].startswith("127.0.0.1:") and apply["identity"] == "ops"
    assert set(apply["arguments"]["manifest"]) == {"sha256", "chars"}  # never the manifest itself
    assert verify(audit_dir / "http.jsonl").ok


def write_chain(path: Path, count: int) -> str:
    log = AuditLog(path)
    for i in range(count):
        log.record(method="tools/call", name=f"tool{i}", outcome="ok")
    log.close()
    return log.head


def test_tampering_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    head = write_chain(path, 5)
    assert verify(path, head).ok
    lines = path.read_bytes().splitlines()

    edited = orjson.loads(lines[2])
    edited["outcome"] = "error"
    (tmp_path / "edited.jsonl").write_bytes(b"\n".join([*lines[:2], orjson.dumps(edited), *lines[3:]]) + b"\n")
    result = verify(tmp_path / "edited.jsonl")
    assert not result.ok and any("line 3: hash does not match" in p for p in result.problems)

    (tmp_path / "removed.jsonl").write_bytes(b"\n".join([*lines[:1], *lines[2:]]) + b"\n")
    result = verify(tmp_path / "removed.jsonl")
    assert not result.ok and any("line 2: seq 3 where 2 was expected" in p for p in result.problems)
    assert any("prev does not match" in p for p in result.problems)

    (tmp_path / "cut.jsonl").write_bytes(b"\n".join(lines[:4]) + b"\n")
    assert verify(tmp_path / "cut.jsonl").ok  # a clean prefix: only the recorded head tells
    assert not verify(tmp_path / "cut.jsonl", head).ok

    # a restarted server continues the chain
    log = AuditLog(path)
    log.record(method="tools/call", name="after-restart", outcome="ok")
    log.close()
    assert verify(path).ok and verify(path).entries == 6


def test_verify_audit_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`ultraplane mcp --verify-audit FILE [--expect-head HASH]`: exit status 0 when intact, 1 when tampered."""
    path = tmp_path / "audit.jsonl"
    head = write_chain(path, 3)

    def run(*argv: str) -> int:
        args = build_parser().parse_args(["mcp", "--verify-audit", str(path), *argv])
        return args.run(args)

    assert run("--expect-head", head) == 0 and f"ok: 3 entries, head {head}" in capsys.readouterr().out
    path.write_text(path.read_text().replace("tool1", "tool9"))
    assert run() == 1
    captured = capsys.readouterr()
    assert "TAMPERED" in captured.out and "line 2: hash does not match" in captured.err
