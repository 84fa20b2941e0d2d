"""--fleet DIR through the SDK client: a two-member fleet from `ultraplane fleet up`; tools default to the
fleet API, name a member with `cluster`, and list tools fan out over every member with cluster "*"."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.harness import child_env, ultraplane_command, wait_for
from tests.mcpserver.conftest import Peer, stdio_peer


def kubectl(config: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["kubectl", "--kubeconfig", str(config), *args], input=stdin, capture_output=True,
                          text=True, timeout=60)


@pytest.fixture(scope="module")
def fleet_dir() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="ultraplane-mcp-fleet-"))
    log = open(root / "fleet-up.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([*ultraplane_command(), "fleet", "up", "--data-dir", str(root), "--registry-port", "0", "--regions", "r1,r2",
                             "--clusters-per-region", "1", "--nodes", "1", "--unsafe-no-fsync"],
                            stdout=log, stderr=subprocess.STDOUT, env=child_env())

    def ready() -> bool:
        assert proc.poll() is None, (root / "fleet-up.log").read_text()[-3000:]
        listed = kubectl(root / "fleet" / "kubeconfig", "get", "clusters", "-o", "json")
        return listed.returncode == 0 and sum(
            any(c["type"] == "Ready" and c["status"] == "True" for c in (i.get("status") or {}).get("conditions")
                or []) for i in json.loads(listed.stdout)["items"]) == 2

    try:
        wait_for(ready, "two Ready member clusters", timeout=180)
        for member in sorted(p.name for p in (root / "clusters").iterdir()):
            marker = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "where-am-i", "namespace": "default"},
                      "data": {"cluster": member}}
            applied = kubectl(root / "clusters" / member / "kubeconfig", "apply", "-f", "-", stdin=json.dumps(marker))
            assert applied.returncode == 0, applied.stderr
        yield root
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def members(fleet_dir: Path) -> list[str]:
    listed = json.loads(kubectl(fleet_dir / "fleet" / "kubeconfig", "get", "clusters", "-o", "json").stdout)
    return sorted(i["metadata"]["name"] for i in listed["items"])


@pytest.fixture(scope="module")
def fleet_peer(fleet_dir: Path, audit_dir: Path) -> Iterator[Peer]:
    # --kubeconfig (from the shared helper) is ignored with --fleet: the fleet API's kubeconfig is used
    target: Any = SimpleNamespace(kubeconfig=fleet_dir / "fleet" / "kubeconfig")
    peer = stdio_peer(target, audit_dir / "fleet.jsonl", "--fleet", str(fleet_dir))
    yield peer
    peer.close()


def test_default_is_the_fleet_api(fleet_peer: Peer, members: list[str]) -> None:
    rows = fleet_peer.json("list_resources", kind="clusters.cluster.karmada.io")["items"]
    assert sorted(r["name"] for r in rows) == members and len(members) == 2


def test_named_member_and_fan_out(fleet_peer: Peer, members: list[str]) -> None:
    for member in members:
        marker = fleet_peer.json("get_resource", kind="configmap", name="where-am-i", cluster=member)
        assert marker["data"] == {"cluster": member}
    fanned = fleet_peer.json("list_resources", kind="cm", namespace="default", cluster="*",
                             field_selector="metadata.name=where-am-i")
    assert fanned["clusters"] == members
    assert sorted((r["cluster"], r["name"]) for r in fanned["items"]) == [(m, "where-am-i") for m in members]
    nodes = fleet_peer.json("list_resources", kind="nodes", cluster="*")["items"]
    assert sorted({r["cluster"] for r in nodes}) == members
    plan = fleet_peer.json("upgrade_insights", cluster=members[0])
    assert plan["cluster"] == members[0] and plan["hops"]


def test_unknown_member_is_a_clear_error(fleet_peer: Peer, members: list[str], stdio: Peer) -> None:
    message = fleet_peer.error("get_resource", kind="configmap", name="where-am-i", cluster="nowhere")
    assert 'no member cluster "nowhere"' in message and members[0] in message
    assert "--fleet" in stdio.error("list_resources", kind="pods", cluster="*")
