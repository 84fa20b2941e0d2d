"""image_inventory's `cve` through the SDK client: a small image scanned into an SBOM store against the OSV
fixtures, a pod on the live cluster whose runtime reports that image's digest, and the question "where does
CVE-2023-45853 run" answered with the pod and the finding."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.apiserver.conftest import Cluster
from tests.harness import wait_for
from tests.mcpserver.conftest import NS, Peer, pod, stdio_peer
from tests.registryscan.images import debian_app_layers, write_layout
from ultraplane.registry.scan import advisories
from ultraplane.registry.scan.layout import open_layout
from ultraplane.registry.scan.store import SbomStore, Scanner

OSV = Path(__file__).parent.parent / "registryscan" / "osv"
CVE = "CVE-2023-45853"  # zlib in the Debian 12 image (DEBIAN-CVE-2023-45853)


@pytest.fixture(scope="module")
def scanned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("mcp-scan")
    write_layout(root / "debian", debian_app_layers())
    image = open_layout(root / "debian")
    found = Scanner(SbomStore(root / "sboms"), advisories.load(OSV)).scan(image)
    assert any(CVE in f.aliases for f in found)
    return root / "sboms", image.digest


@pytest.fixture(scope="module")
def vulnerable_pod(cluster: Cluster, scanned: tuple[Path, str]) -> str:
    """An unschedulable pod whose container status reports the scanned digest, as a runtime that pulled the
    image would (the simulated nodes do not pull real images); no node owns its status."""
    name = "zlib-app"
    manifest = pod(name, "sleep 3600")
    manifest["spec"] |= {"nodeSelector": {"disktype": "nvme-none"}}
    manifest["spec"]["containers"][0]["image"] = "registry.local/app:1.0"
    cluster.ok("apply", "-f", "-", input=json.dumps(manifest))
    wait_for(lambda: any(c.get("type") == "PodScheduled" and c.get("status") == "False" for c in
                         (cluster.json("get", "pod", name, "-n", NS).get("status") or {}).get("conditions") or []),
             "the scheduler to give up on zlib-app", 60)
    status = {"status": {"containerStatuses": [{
        "name": "app", "image": "registry.local/app:1.0", "imageID": f"registry.local/app@{scanned[1]}",
        "ready": False, "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}}]}}
    cluster.ok("patch", "pod", name, "-n", NS, "--subresource", "status", "--type", "merge",
               "-p", json.dumps(status))
    return name


@pytest.fixture(scope="module")
def scanning(cluster: Cluster, audit_dir: Path, scanned: tuple[Path, str], vulnerable_pod: str) -> Iterator[Peer]:
    peer = stdio_peer(cluster, audit_dir / "cves.jsonl", "--advisories", str(OSV), "--sbom-store", str(scanned[0]))
    yield peer
    peer.close()


def test_where_does_a_cve_run(scanning: Peer, scanned: tuple[Path, str], vulnerable_pod: str) -> None:
    answer = scanning.json("image_inventory", cve=CVE)
    assert answer["scannedImages"] == 1 and answer["vulnerableDigests"] == [scanned[1]]
    assert [(i["image"], i["pods"]) for i in answer["items"]] == [("registry.local/app:1.0", [f"{NS}/{vulnerable_pod}"])]
    finding = answer["items"][0]["findings"][0]
    assert finding["package"] == "zlib1g" and CVE in finding["aliases"] and finding["fixedVersion"]
    # the same image, by its advisory id; a CVE no scanned image has runs nowhere
    assert scanning.json("image_inventory", cve="DEBIAN-CVE-2023-45853")["items"][0]["pods"] == [
        f"{NS}/{vulnerable_pod}"]
    assert scanning.json("image_inventory", cve="CVE-2099-0001")["items"] == []


def test_cve_needs_scan_data(stdio: Peer) -> None:
    assert "--advisories" in stdio.error("image_inventory", cve=CVE)
