"""`ultraplane up` with its registry: skopeo pushes into it, a Deployment's pod is pulled from it (the simulated
kubelet resolves the tag to the pushed digest through the registry's API and token flow), a missing tag is
containerd's "not found", and scan on push attaches the SPDX SBOM as a referrer."""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.apiserver.conftest import Cluster, inprocess_cluster
from tests.harness import child_env, ultraplane_command
from tests.registry.conftest import Client, free_port, start_registry, wait_for_port
from tests.registry.images import Image, build_image, write_oci_layout
from tests.registry.oci import push_image
from tests.registry.test_skopeo import skopeo

DPKG_STATUS = (b"Package: zlib1g\nSource: zlib\nStatus: install ok installed\nVersion: 1:1.2.13.dfsg-1\n"
               b"Architecture: amd64\n\n"
               b"Package: bash\nStatus: install ok installed\nVersion: 5.2.15-2+b2\nArchitecture: amd64\n")


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[Cluster, int]]:
    port = free_port()
    with inprocess_cluster("ultraplane-registry-wiring-", "--nodes", "1", "--registry-port", str(port)) as c:
        wait_for_port(port)
        yield c, port


@pytest.fixture(scope="module")
def pushed(cluster: tuple[Cluster, int], tmp_path_factory: pytest.TempPathFactory) -> tuple[Image, str]:
    c, port = cluster
    data = c.work_dir / "data"
    certs = tmp_path_factory.mktemp("certs")
    shutil.copy(data / "pki" / "ca.crt", certs / "ca.crt")
    password = (data / "registry" / "auth" / "admin.password").read_text().strip()
    image = build_image([{"etc/os-release": b"ID=debian\nVERSION_ID=\"12\"\n",
                          "var/lib/dpkg/status": DPKG_STATUS},
                         {"usr/bin/app": random.randbytes(300_000)}])
    layout = write_oci_layout(tmp_path_factory.mktemp("layout"), {"1.0": image})
    skopeo("copy", "--dest-cert-dir", str(certs), "--dest-creds", f"admin:{password}", f"oci:{layout}:1.0",
           f"docker://127.0.0.1:{port}/team/app:1.0")
    return image, password


@dataclass
class Member:
    """kubectl against a fleet member's kubeconfig."""
    kubeconfig: Path

    def kubectl(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["kubectl", "--kubeconfig", str(self.kubeconfig), *args], input=input,
                              capture_output=True, text=True, timeout=60)

    def ok(self, *args: str, input: str | None = None) -> str:
        done = self.kubectl(*args, input=input)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def json(self, *args: str) -> dict[str, Any]:
        return dict(json.loads(self.ok(*args, "-o", "json")))


def wait_pod(c: Cluster | Member, selector: str, done: Any, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        pods = c.json("get", "pods", "-l", selector)["items"]
        if pods and done(pods[0]):
            return dict(pods[0])
        last = pods[0] if pods else {}
        time.sleep(0.3)
    raise AssertionError(f"pod {selector} not as wanted within {timeout}s: {json.dumps(last.get('status'))}")


def deployment(name: str, image: str) -> str:
    return json.dumps({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "default"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "app", "image": image}]}}}})


def test_deployment_pulls_the_pushed_digest(cluster: tuple[Cluster, int], pushed: tuple[Image, str]) -> None:
    c, port = cluster
    image, _ = pushed
    c.ok("apply", "-f", "-", input=deployment("app", f"127.0.0.1:{port}/team/app:1.0"))
    pod = wait_pod(c, "app=app", lambda p: p.get("status", {}).get("phase") == "Running")
    status = pod["status"]["containerStatuses"][0]
    assert status["imageID"] == f"127.0.0.1:{port}/team/app@{image.digest}"
    assert status["state"].get("running") is not None
    events = c.ok("get", "events", "--field-selector", f"involvedObject.name={pod['metadata']['name']}")
    layer_bytes = sum(len(layer) for layer in image.layers)
    assert f"Image size: {layer_bytes} bytes" in events


def test_missing_tag_is_err_image_pull(cluster: tuple[Cluster, int], pushed: tuple[Image, str]) -> None:
    c, port = cluster
    ref = f"127.0.0.1:{port}/team/app:missing"
    c.ok("apply", "-f", "-", input=deployment("missing", ref))
    pod = wait_pod(c, "app=missing", lambda p: ((p.get("status", {}).get("containerStatuses") or [{}])[0]
                                                .get("state", {}).get("waiting", {}).get("reason")
                                                == "ErrImagePull"))
    waiting = pod["status"]["containerStatuses"][0]["state"]["waiting"]
    assert waiting["message"] == (f'failed to pull and unpack image "{ref}": failed to resolve reference '
                                  f'"{ref}": {ref}: not found')
    assert pod["status"]["phase"] == "Pending"
    wait_pod(c, "app=missing", lambda p: p["status"]["containerStatuses"][0]["state"].get("waiting", {})
             .get("reason") == "ImagePullBackOff")


def test_tag_pushed_after_failure_is_pulled_on_retry(cluster: tuple[Cluster, int], pushed: tuple[Image, str],
                                                     tmp_path: Path) -> None:
    """The kubelet retries after its image back-off: pushing the tag turns ImagePullBackOff into Running."""
    c, port = cluster
    image, password = pushed
    ref = f"127.0.0.1:{port}/team/late:2.0"
    c.ok("apply", "-f", "-", input=deployment("late", ref))
    wait_pod(c, "app=late", lambda p: ((p.get("status", {}).get("containerStatuses") or [{}])[0]
                                       .get("state", {}).get("waiting", {}).get("reason") == "ImagePullBackOff"))
    shutil.copy(c.work_dir / "data" / "pki" / "ca.crt", tmp_path / "ca.crt")
    skopeo("copy", "--dest-cert-dir", str(tmp_path), "--dest-creds", f"admin:{password}",
           f"docker://127.0.0.1:{port}/team/app:1.0", f"docker://{ref}", "--src-cert-dir", str(tmp_path),
           "--src-creds", f"admin:{password}")
    pod = wait_pod(c, "app=late", lambda p: p.get("status", {}).get("phase") == "Running", timeout=60)
    assert pod["status"]["containerStatuses"][0]["imageID"] == f"127.0.0.1:{port}/team/late@{image.digest}"


def test_push_attaches_spdx_sbom_referrer(cluster: tuple[Cluster, int], pushed: tuple[Image, str]) -> None:
    c, port = cluster
    image, password = pushed
    client = Client(f"https://127.0.0.1:{port}", str(c.work_dir / "data" / "pki" / "ca.crt"), "admin", password)
    deadline = time.monotonic() + 30
    manifests: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not manifests:
        response = client.request("GET", f"/v2/team/app/referrers/{image.digest}?artifactType=application/spdx%2Bjson")
        assert response.status_code == 200
        manifests = response.json()["manifests"]
        time.sleep(0.2)
    assert len(manifests) == 1 and manifests[0]["artifactType"] == "application/spdx+json"
    manifest = client.request("GET", f"/v2/team/app/manifests/{manifests[0]['digest']}",
                              headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}).json()
    assert manifest["subject"]["digest"] == image.digest
    document = client.request("GET", f"/v2/team/app/blobs/{manifest['layers'][0]['digest']}").json()
    packages = {(p["name"], p.get("versionInfo")) for p in document["packages"]}
    assert ("zlib1g", "1:1.2.13.dfsg-1") in packages and ("bash", "5.2.15-2+b2") in packages


def test_tags_untouched_by_scan(cluster: tuple[Cluster, int], pushed: tuple[Image, str]) -> None:
    """The SBOM referrer is attached by digest: the repository's tags stay what was pushed."""
    c, port = cluster
    _, password = pushed
    client = Client(f"https://127.0.0.1:{port}", str(c.work_dir / "data" / "pki" / "ca.crt"), "admin", password)
    assert client.request("GET", "/v2/team/app/tags/list").json()["tags"] == ["1.0"]


def test_fleet_up_wires_members_to_one_registry(tmp_path: Path) -> None:
    """`fleet up` runs one registry (in the fleet API's `up`) and every member's kubelets pull from it."""
    root, port = tmp_path / "fleet", free_port()
    log = open(tmp_path / "fleet-up.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([*ultraplane_command(), "fleet", "up", "--data-dir", str(root), "--regions", "r1",
                             "--clusters-per-region", "1", "--nodes", "1", "--unsafe-no-fsync",
                             "--registry-port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=child_env())
    try:
        wait_for_port(port, timeout=90)
        fleet_dir = root / "fleet"
        password = (fleet_dir / "registry" / "auth" / "admin.password").read_text().strip()
        certs = tmp_path / "certs"
        certs.mkdir()
        shutil.copy(fleet_dir / "pki" / "ca.crt", certs / "ca.crt")
        image = build_image([{"etc/hostname": b"fleet\n"}])
        layout = write_oci_layout(tmp_path / "layout", {"v1": image})
        skopeo("copy", "--dest-cert-dir", str(certs), "--dest-creds", f"admin:{password}", f"oci:{layout}:v1",
               f"docker://127.0.0.1:{port}/fleet/app:v1")
        member = Member(root / "clusters" / "r1-c1" / "kubeconfig")
        deadline = time.monotonic() + 90
        while not member.kubeconfig.exists() or "node/" not in member.kubectl("get", "nodes", "-o", "name").stdout:
            assert time.monotonic() < deadline, (tmp_path / "fleet-up.log").read_text()[-3000:]
            time.sleep(0.5)
        member.ok("apply", "-f", "-", input=deployment("fleet-app", f"127.0.0.1:{port}/fleet/app:v1"))
        pod = wait_pod(member, "app=fleet-app", lambda p: p.get("status", {}).get("phase") == "Running", 90)
        assert pod["status"]["containerStatuses"][0]["imageID"] == f"127.0.0.1:{port}/fleet/app@{image.digest}"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_scan_on_push_records_findings(tmp_path: Path) -> None:
    """`registry --advisories DIR`: the pushed image's findings (advisory, severity, fixed version) by digest."""
    advisories = Path(__file__).resolve().parents[1] / "registryscan" / "osv"
    registry = start_registry(tmp_path / "registry", "--advisories", str(advisories))
    try:
        client = Client(registry.url, registry.ca_cert, "admin", registry.password)
        image = build_image([{"etc/os-release": b"ID=debian\nVERSION_ID=\"12\"\n",
                              "var/lib/dpkg/status": DPKG_STATUS}])
        digest = push_image(client, "team/scanned", "1.0", image)
        deadline = time.monotonic() + 30
        response = client.request("GET", f"/ultraplane/v1/findings/team/scanned@{digest}")
        while response.status_code == 404 and time.monotonic() < deadline:
            time.sleep(0.2)
            response = client.request("GET", f"/ultraplane/v1/findings/team/scanned@{digest}")
        assert response.status_code == 200, response.text
        findings = {f["advisory_id"]: f for f in response.json()["findings"]}
        assert findings["DEBIAN-CVE-2023-45853"]["fixed_version"] == "1:1.3.dfsg-3"
        assert findings["DEBIAN-CVE-2023-45853"]["severity"] == "CRITICAL"
        unknown = client.request("GET", f"/ultraplane/v1/findings/team/scanned@sha256:{'0' * 64}")
        assert unknown.status_code == 404 and unknown.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
        anonymous = Client(registry.url, registry.ca_cert).request(
            "GET", f"/ultraplane/v1/findings/team/scanned@{digest}")
        assert anonymous.status_code == 403 and anonymous.json()["errors"][0]["code"] == "DENIED"
    finally:
        registry.stop()


def test_external_registry_and_image_pull_secret(tmp_path: Path) -> None:
    """`up --registry URL` without node credentials: a private image fails with the registry's authorization
    error, and pulls with a kubernetes.io/dockerconfigjson imagePullSecret read through the API server."""
    registry = start_registry(tmp_path / "registry")
    host = registry.url.removeprefix("https://")
    try:
        client = Client(registry.url, registry.ca_cert, "admin", registry.password)
        image = build_image([{"etc/hostname": b"private\n"}])
        push_image(client, "private/app", "1.0", image)
        with inprocess_cluster("ultraplane-registry-secret-", "--nodes", "1", "--registry", registry.url,
                               "--registry-ca-file", str(registry.ca_cert)) as c:
            ref = f"{host}/private/app:1.0"
            c.ok("apply", "-f", "-", input=deployment("nosecret", ref))
            pod = wait_pod(c, "app=nosecret", lambda p: ((p.get("status", {}).get("containerStatuses") or [{}])[0]
                                                         .get("state", {}).get("waiting", {}).get("reason")
                                                         == "ErrImagePull"))
            assert "authorization failed" in pod["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
            c.ok("create", "secret", "docker-registry", "pull", f"--docker-server={host}",
                 "--docker-username=admin", f"--docker-password={registry.password}")
            spec = json.loads(deployment("withsecret", ref))
            spec["spec"]["template"]["spec"]["imagePullSecrets"] = [{"name": "pull"}]
            c.ok("apply", "-f", "-", input=json.dumps(spec))
            pod = wait_pod(c, "app=withsecret", lambda p: p.get("status", {}).get("phase") == "Running")
            assert pod["status"]["containerStatuses"][0]["imageID"] == f"{host}/private/app@{image.digest}"
    finally:
        registry.stop()
