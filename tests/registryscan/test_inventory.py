"""Live inventory against two real `ultraplane up` clusters (pod status imageIDs through watches), joined
with findings; and the `ultraplane registry-scan` CLI end to end."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.apiserver.conftest import API_ONLY_FLAGS, Cluster, start_cluster
from tests.registryscan.images import debian_app_layers, write_layout
from tests.registryscan.test_matching import FIXTURES, alpine_layers
from ultraplane.cli.main import main
from ultraplane.client.http import MERGE, KubeClient
from ultraplane.registry.scan import advisories as osv
from ultraplane.registry.scan.inventory import (
    InventoryIndex,
    InventoryWatcher,
    Placement,
    digest_from_image_id,
)
from ultraplane.registry.scan.layout import open_layout
from ultraplane.registry.scan.store import SbomStore, Scanner


@pytest.fixture(scope="module")
def clusters() -> Iterator[dict[str, Cluster]]:
    # started side by side: each `up` spends most of its start-up waiting on its own processes
    with ThreadPoolExecutor(2) as pool:
        futures = {
            name: pool.submit(start_cluster, "inprocess", *API_ONLY_FLAGS) for name in ("east", "west")
        }
    started: dict[str, Cluster] = {}
    errors = []
    for name, future in futures.items():
        try:
            started[name] = future.result()
        except Exception as exc:  # noqa: BLE001 - stop the other one before failing
            errors.append(exc)
    try:
        if errors:
            raise errors[0]
        yield started
    finally:
        for cluster in started.values():
            cluster.stop()
            shutil.rmtree(cluster.work_dir, ignore_errors=True)


def test_image_id_forms() -> None:
    hex_digest = "a" * 64
    for image_id in (
        f"docker-pullable://registry.local:5000/app@sha256:{hex_digest}",
        f"registry.local/app@sha256:{hex_digest}",
        f"sha256:{hex_digest}",
    ):
        assert digest_from_image_id(image_id) == f"sha256:{hex_digest}"
    assert digest_from_image_id("") == "" and digest_from_image_id("nginx:latest") == ""


def test_index_updates_and_deletes() -> None:
    index = InventoryIndex()
    d1, d2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    pod = {
        "metadata": {"namespace": "ns", "name": "p"},
        "status": {
            "initContainerStatuses": [{"name": "init", "imageID": d2}],
            "containerStatuses": [
                {"name": "a", "imageID": f"repo@{d1}"},
                {"name": "b", "imageID": f"repo@{d1}"},
            ],
        },
    }
    index.set_pod("c1", pod)
    assert sorted(index.runs(d1), key=lambda p: p.container) == [
        Placement("c1", "ns", "p", "a"),
        Placement("c1", "ns", "p", "b"),
    ]
    assert index.runs(d2) == [Placement("c1", "ns", "p", "init")]
    pod["status"]["containerStatuses"] = [{"name": "a", "imageID": d2}]
    pod["status"]["initContainerStatuses"] = []
    index.set_pod("c1", pod)
    assert index.runs(d1) == [] and d1 not in index.by_digest
    index.set_pod("c2", pod)
    assert {p.cluster for p in index.runs(d2)} == {"c1", "c2"}
    pod["status"]["phase"] = "Succeeded"  # a finished pod runs nothing
    index.set_pod("c1", pod)
    assert index.runs(d2) == [Placement("c2", "ns", "p", "a")]
    pod["status"]["phase"] = "Running"
    index.set_pod("c1", pod)
    index.delete_pod("c1", pod)
    assert index.runs(d2) == [Placement("c2", "ns", "p", "a")]
    index.forget_cluster("c2")
    assert index.pods == {} and index.by_digest == {}


async def _await(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def _run_pod(client: KubeClient, namespace: str, name: str, containers: dict[str, str]) -> None:
    """Create a pod and report its containers running with these image digests, as a kubelet would."""
    base = f"/api/v1/namespaces/{namespace}/pods"
    await client.create(
        base,
        {
            "metadata": {"name": name},
            "spec": {
                "containers": [{"name": c, "image": f"registry.local/app@{d}"} for c, d in containers.items()]
            },
        },
    )
    await client.patch(
        f"{base}/{name}/status",
        {
            "status": {
                "phase": "Running",
                "containerStatuses": [
                    {
                        "name": c,
                        "image": f"registry.local/app@{d}",
                        "imageID": f"registry.local/app@{d}",
                        "ready": True,
                        "restartCount": 0,
                        "state": {"running": {}},
                    }
                    for c, d in containers.items()
                ],
            }
        },
        content_type=MERGE,
    )


def _scanned(tmp_path: Path) -> tuple[Scanner, str, str]:
    write_layout(tmp_path / "debian", debian_app_layers())
    write_layout(tmp_path / "alpine", alpine_layers())
    scanner = Scanner(SbomStore(tmp_path / "sboms"), osv.load(FIXTURES))
    debian, alpine = open_layout(tmp_path / "debian"), open_layout(tmp_path / "alpine")
    scanner.scan(debian)
    scanner.scan(alpine)
    return scanner, debian.digest, alpine.digest


def test_live_inventory_across_two_clusters(clusters: dict[str, Cluster], tmp_path: Path) -> None:
    scanner, debian, alpine = _scanned(tmp_path)

    async def scenario() -> None:
        clients = {name: await KubeClient.from_kubeconfig(c.kubeconfig) for name, c in clusters.items()}
        try:
            for client in clients.values():
                await client.create("/api/v1/namespaces", {"metadata": {"name": "inv"}})
            await _run_pod(
                clients["east"], "inv", "web", {"app": debian, "proxy": alpine}
            )  # before the watch
            index = InventoryIndex()
            watcher = InventoryWatcher(index, clients)
            await watcher.start()
            await watcher.wait_synced()
            assert set(index.runs(debian)) == {Placement("east", "inv", "web", "app")}
            await _run_pod(clients["west"], "inv", "worker", {"main": debian})  # seen through the watch
            await _await(lambda: len(index.runs(debian)) == 2, "the west pod")

            where = index.where("CVE-2023-45853", scanner)  # zlib in the debian image
            assert set(where) == {debian}
            findings, placements = where[debian]
            assert {f.package for f in findings} == {"zlib1g"}
            assert set(placements) == {
                Placement("east", "inv", "web", "app"),
                Placement("west", "inv", "worker", "main"),
            }
            assert {p for _, ps in index.where("CVE-2023-42366", scanner).values() for p in ps} == {
                Placement("east", "inv", "web", "proxy")
            }  # busybox in the alpine image
            assert index.where("CVE-2099-0002", scanner) == {}  # matches no image

            await clients["west"].delete("/api/v1/namespaces/inv/pods/worker")
            await _await(lambda: len(index.runs(debian)) == 1, "the west pod's deletion")
            await clients["east"].patch(
                "/api/v1/namespaces/inv/pods/web/status",
                {
                    "status": {
                        "containerStatuses": [
                            {
                                "name": "app",
                                "imageID": f"registry.local/app@{alpine}",
                                "ready": True,
                                "restartCount": 1,
                                "image": "x",
                                "state": {"running": {}},
                            }
                        ]
                    }
                },
                content_type=MERGE,
            )
            await _await(lambda: index.runs(debian) == [], "the restarted container's new digest")
            assert index.where("CVE-2023-45853", scanner) == {}
            await watcher.stop()
        finally:
            for client in clients.values():
                await client.close()

    asyncio.run(scenario())


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The real command in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "ultraplane", "registry-scan", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _in_process(capsys: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess[str]:
    """The same command through cli.main in this process (saves an interpreter start per call)."""
    code = main(["registry-scan", *args])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def test_cli_sbom_scan_and_where(
    clusters: dict[str, Cluster], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_layout(tmp_path / "debian", debian_app_layers())
    digest = open_layout(tmp_path / "debian").digest

    spdx = _in_process(capsys, "sbom", str(tmp_path / "debian"))
    assert spdx.returncode == 0, spdx.stderr
    assert json.loads(spdx.stdout)["spdxVersion"] == "SPDX-2.3"
    cyclonedx = _in_process(capsys, "sbom", str(tmp_path / "debian"), "--format", "cyclonedx")
    assert json.loads(cyclonedx.stdout)["specVersion"] == "1.6"

    scan = _in_process(
        capsys,
        "scan",
        str(tmp_path / "debian"),
        "--advisories",
        str(FIXTURES),
        "--store",
        str(tmp_path / "s"),
    )
    assert scan.returncode == 0, scan.stderr
    report = json.loads(scan.stdout)
    assert report["digest"] == digest
    assert {f["advisory_id"] for f in report["findings"]} == {
        "DEBIAN-CVE-2023-45853",
        "PYSEC-2023-74",
        "GHSA-h5c8-rqwp-cp95",
        "GHSA-35jh-r3h4-6jhm",
        "GHSA-67hx-6x53-jw92",
    }

    async def place() -> None:
        client = await KubeClient.from_kubeconfig(clusters["east"].kubeconfig)
        try:
            await client.create("/api/v1/namespaces", {"metadata": {"name": "cli"}})
            await _run_pod(client, "cli", "api", {"server": digest})
        finally:
            await client.close()

    asyncio.run(place())
    kubeconfigs = [arg for name, c in clusters.items() for arg in ("--kubeconfig", f"{name}={c.kubeconfig}")]
    where = _cli(
        "where",
        "--cve",
        "CVE-2021-23337",
        "--store",
        str(tmp_path / "s"),
        "--advisories",
        str(FIXTURES),
        *kubeconfigs,
    )
    assert where.returncode == 0, where.stderr
    answer = json.loads(where.stdout)
    assert [image["digest"] for image in answer["images"]] == [digest]
    assert {"cluster": "east", "namespace": "cli", "pod": "api", "container": "server"} in answer["images"][
        0
    ]["runs"]
    assert answer["images"][0]["findings"][0]["package"] == "lodash"

    runs = _in_process(capsys, "where", "--digest", digest, *kubeconfigs)
    assert {"cluster": "east", "namespace": "cli", "pod": "api", "container": "server"} in json.loads(
        runs.stdout
    )["runs"]

    bad = tmp_path / "bad-osv"
    bad.mkdir()
    (bad / "x.json").write_text(
        json.dumps({"id": "X", "affected": [{"package": {"ecosystem": "Maven", "name": "a"}}]})
    )
    failed = _in_process(capsys, "scan", str(tmp_path / "debian"), "--advisories", str(bad))
    assert failed.returncode == 1 and "unknown ecosystem 'Maven'" in failed.stderr and failed.stdout == ""
