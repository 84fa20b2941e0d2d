"""oras (the PyPI OCI Registry As Storage client) as the judge: artifacts pushed (whole and chunked) and
pulled, referrers attached with a subject and discovered through the referrers API."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import oras.client
import oras.oci
import pytest

from tests.registry.conftest import RegistryProcess

OCI_INDEX = "application/vnd.oci.image.index.v1+json"


@pytest.fixture
def client(registry: RegistryProcess) -> oras.client.OrasClient:
    oras_client = oras.client.OrasClient(hostname=registry.host, tls_verify=registry.ca_cert)
    oras_client.auth.set_basic_auth("admin", registry.password)  # login() would write ~/.docker/config.json
    return oras_client


def write_files(directory: Path, files: dict[str, bytes]) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (directory / name).write_bytes(content)
    return list(files)


def test_push_and_pull_artifact(registry: RegistryProcess, client: oras.client.OrasClient, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    files = {"model.bin": random.randbytes(400_000), "README.txt": b"an artifact\n"}
    monkeypatch.chdir(tmp_path)
    names = write_files(tmp_path, files)
    target = f"{registry.host}/oras/artifact:v1"
    pushed = client.push(target=target, files=names, manifest_annotations={"org.example.kind": "model"})
    assert pushed.status_code == 201
    pulled = client.pull(target=target, outdir=str(tmp_path / "out"))
    assert {Path(p).name: Path(p).read_bytes() for p in pulled} == files
    assert client.get_tags(f"{registry.host}/oras/artifact") == ["v1"]
    manifest = client.get_manifest(target)
    assert manifest["annotations"]["org.example.kind"] == "model"


def test_chunked_push(registry: RegistryProcess, client: oras.client.OrasClient, tmp_path: Path,
                      monkeypatch: pytest.MonkeyPatch) -> None:
    content = random.randbytes(700_000)
    monkeypatch.chdir(tmp_path)
    write_files(tmp_path, {"big.bin": content})
    target = f"{registry.host}/oras/chunked:v1"
    client.push(target=target, files=["big.bin"], do_chunked=True, chunk_size=128 * 1024)
    pulled = client.pull(target=target, outdir=str(tmp_path / "out"))
    assert Path(pulled[0]).read_bytes() == content


def test_referrers_pushed_and_discovered(registry: RegistryProcess, client: oras.client.OrasClient,
                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_files(tmp_path, {"app.tar": random.randbytes(50_000), "sig.json": b'{"signed": true}',
                           "sbom.json": b'{"packages": []}', "config.json": b"{}"})
    repo = f"{registry.host}/oras/with-referrers"
    response = client.push(target=f"{repo}:v1", files=["app.tar"])
    subject_digest = response.headers["Docker-Content-Digest"]
    subject_manifest = client.get_manifest(f"{repo}:v1")
    raw_size = len(client.do_request(f"https://{repo.replace(registry.host, registry.host + '/v2')}"
                                     f"/manifests/{subject_digest}").content)
    subject = oras.oci.Subject(subject_manifest["mediaType"], subject_digest, raw_size)

    signed = client.push(target=f"{repo}:sig", files=["sig.json"], subject=subject,
                         manifest_config="config.json:application/vnd.example.signature")
    assert signed.headers["OCI-Subject"] == subject_digest
    client.push(target=f"{repo}:sbom", files=["sbom.json"], subject=subject,
                manifest_config="config.json:application/vnd.example.sbom")

    url = f"https://{registry.host}/v2/oras/with-referrers/referrers/{subject_digest}"
    listed = client.do_request(url)
    assert listed.status_code == 200 and listed.headers["Content-Type"] == OCI_INDEX
    artifact_types = sorted(d["artifactType"] for d in listed.json()["manifests"])
    assert artifact_types == ["application/vnd.example.sbom", "application/vnd.example.signature"]

    filtered = client.do_request(url + "?artifactType=application/vnd.example.signature")
    assert filtered.headers["OCI-Filters-Applied"] == "artifactType"
    (signature,) = filtered.json()["manifests"]
    raw = client.do_request(f"https://{registry.host}/v2/oras/with-referrers/manifests/{signature['digest']}")
    assert "sha256:" + hashlib.sha256(raw.content).hexdigest() == signature["digest"]
    assert json.loads(raw.content)["subject"]["digest"] == subject_digest
    pulled = client.pull(target=f"{repo}@{signature['digest']}", outdir=str(tmp_path / "out"))
    assert Path(pulled[0]).read_bytes() == b'{"signed": true}'
