"""Encryption at rest for Secrets, through kubectl, etcdctl and the files on disk, on both backends.

``ultraplane up`` writes DATA_DIR/encryption-config.yaml on first start; ``ultraplane apiserver`` is
given one with --encryption-provider-config (kube's flag).
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.apiserver.conftest import Cluster
from tests.harness import ETCD_BIN, ETCDCTL_BIN, free_port, ultraplane_command
from ultraplane.apiserver import encryption

PASSWORD = "hunter2"
PASSWORD_B64 = base64.b64encode(PASSWORD.encode()).decode()


class EncryptedCluster(Cluster):
    etcd_client_url: str = ""

    def start_apiserver(self) -> None:
        config = encryption.ensure_default(self.work_dir / "encryption.yaml")
        self.spawn([*ultraplane_command(), "apiserver", "--etcd-servers", self.etcd_client_url,
                    "--data-dir", str(self.work_dir / "data"), "--secure-port", str(self.port),
                    "--encryption-provider-config", str(config)], "apiserver")
        self.wait_ready()

    def start_etcd_only(self) -> None:
        client, peer = free_port(), free_port()
        self.etcd_client_url = f"http://127.0.0.1:{client}"
        self.spawn([ETCD_BIN, "--name", "enc", "--data-dir", str(self.work_dir / "etcd"),
                    "--listen-client-urls", self.etcd_client_url, "--advertise-client-urls", self.etcd_client_url,
                    "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                    "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                    "--initial-cluster", f"enc=http://127.0.0.1:{peer}"], "etcd")

    def restart(self) -> None:
        if self.backend == "inprocess":
            self.stop()
            self.start_inprocess()
            return
        api = self.procs.pop()  # the apiserver; etcd keeps running
        api.terminate()
        api.wait(15)
        self.start_apiserver()

    def etcdctl(self, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        if self.backend == "inprocess":
            p = self.pki
            flags = [f"--endpoints=https://127.0.0.1:{self.etcd_port}", f"--cacert={p / 'ca.crt'}",
                     f"--cert={p / 'etcd-client-root.crt'}", f"--key={p / 'etcd-client-root.key'}"]
        else:
            flags = [f"--endpoints={self.etcd_client_url}"]
        return subprocess.run([ETCDCTL_BIN, *flags, *args], input=input, capture_output=True, timeout=30,
                              env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})

    def files_on_disk(self) -> list[Path]:
        roots = [self.work_dir / "data"] if self.backend == "inprocess" else [self.work_dir / "etcd"]
        return [f for root in roots for f in root.rglob("*") if f.is_file()]


@pytest.fixture(scope="module", params=["inprocess", "etcd"])
def enc(request: pytest.FixtureRequest) -> Iterator[EncryptedCluster]:
    c = EncryptedCluster(request.param, Path(tempfile.mkdtemp(prefix=f"ultraplane-enc-{request.param}-")),
                         free_port())
    try:
        if c.backend == "inprocess":
            c.start_inprocess()
        else:
            c.start_etcd_only()
            c.start_apiserver()
        yield c
    finally:
        c.stop()
        shutil.rmtree(c.work_dir, ignore_errors=True)


def test_secret_is_encrypted_in_the_store_and_on_disk(enc: EncryptedCluster) -> None:
    enc.ok("create", "secret", "generic", "s", f"--from-literal=password={PASSWORD}")
    stored = enc.etcdctl("get", "/registry/secrets/default/s", "--print-value-only")
    assert stored.returncode == 0, stored.stderr
    assert stored.stdout.startswith(b"k8s:enc:aesgcm:v1:key1:")
    assert PASSWORD.encode() not in stored.stdout and PASSWORD_B64.encode() not in stored.stdout
    # plain resources stay readable JSON in the store
    ns = enc.etcdctl("get", "/registry/namespaces/default", "--print-value-only")
    assert json.loads(ns.stdout)["metadata"]["name"] == "default"
    if enc.backend == "inprocess":
        assert (enc.work_dir / "data" / "encryption-config.yaml").exists()
    files = enc.files_on_disk()
    assert files
    for f in files:
        data = f.read_bytes()
        assert PASSWORD.encode() not in data and PASSWORD_B64.encode() not in data, f
    assert enc.json("get", "secret", "s")["data"]["password"] == PASSWORD_B64
    assert enc.ok("get", "secret", "s", "-o", "jsonpath={.data.password}") == PASSWORD_B64


def test_updates_lists_and_watches_see_plaintext(enc: EncryptedCluster) -> None:
    rv = json.loads(enc.ok("get", "--raw", "/api/v1/namespaces/default/secrets"))["metadata"]["resourceVersion"]
    enc.ok("create", "secret", "generic", "w", "--from-literal=k=v1")
    enc.ok("patch", "secret", "w", "-p", json.dumps({"stringData": {"k": "v2"}}))
    watched = enc.ok("get", "--raw",
                     f"/api/v1/namespaces/default/secrets?watch=1&resourceVersion={rv}&timeoutSeconds=1")
    events = [json.loads(line) for line in watched.splitlines() if line.strip()]
    assert [(e["type"], e["object"]["data"]["k"]) for e in events if e["object"]["metadata"]["name"] == "w"] == [
        ("ADDED", base64.b64encode(b"v1").decode()), ("MODIFIED", base64.b64encode(b"v2").decode())]
    listed = {i["metadata"]["name"]: i for i in enc.json("get", "secrets")["items"]}
    assert listed["w"]["data"]["k"] == base64.b64encode(b"v2").decode()
    stored = enc.etcdctl("get", "/registry/secrets/default/w", "--print-value-only").stdout
    assert stored.startswith(b"k8s:enc:aesgcm:v1:key1:") and b"djI" not in stored


def test_plaintext_written_before_encryption_is_read_through_identity(enc: EncryptedCluster) -> None:
    body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": "old", "namespace": "default", "uid": "0d1a7e2c-1111-4c1c-9f00-000000000001",
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "data": {"k": base64.b64encode(b"plain").decode()}}
    put = enc.etcdctl("put", "/registry/secrets/default/old", json.dumps(body))
    assert put.returncode == 0, put.stderr
    assert enc.json("get", "secret", "old")["data"]["k"] == base64.b64encode(b"plain").decode()
    enc.ok("label", "secret", "old", "rewritten=yes")  # a write re-stores it encrypted
    stored = enc.etcdctl("get", "/registry/secrets/default/old", "--print-value-only").stdout
    assert stored.startswith(b"k8s:enc:aesgcm:v1:key1:")


def test_tampered_value_is_an_internal_error_and_server_keeps_running(enc: EncryptedCluster) -> None:
    enc.ok("create", "secret", "generic", "t", "--from-literal=k=v")
    stored = enc.etcdctl("get", "/registry/secrets/default/t", "--print-value-only").stdout[:-1]  # etcdctl's \n
    at = len(b"k8s:enc:aesgcm:v1:key1:") + 20
    tampered = stored[:at] + bytes([stored[at] ^ 1]) + stored[at + 1:]
    put = enc.etcdctl("put", "/registry/secrets/default/t", input=tampered)
    assert put.returncode == 0, put.stderr
    got = enc.kubectl("get", "secret", "t")
    assert got.returncode != 0
    assert 'unable to transform key "/registry/secrets/default/t"' in got.stderr
    assert enc.json("get", "secret", "s")["data"]["password"] == PASSWORD_B64
    # as upstream (without the alpha unsafe-deletion option) a value nobody can read cannot be deleted
    assert "unable to transform key" in enc.kubectl("delete", "secret", "t").stderr
    assert enc.etcdctl("del", "/registry/secrets/default/t").returncode == 0


def test_restart_keeps_secrets_readable(enc: EncryptedCluster) -> None:
    enc.restart()
    assert enc.json("get", "secret", "s")["data"]["password"] == PASSWORD_B64


def test_bad_encryption_config_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "enc.yaml"
    config.write_text("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n"
                      "- resources: [secrets]\n  providers:\n  - aesgcm:\n      keys:\n"
                      "      - name: k\n        secret: c2hvcnQ=\n")
    with pytest.raises(encryption.EncryptionConfigError, match="16, 24 or 32 bytes"):
        encryption.load(config)
    proc = subprocess.run([*ultraplane_command(), "apiserver", "--etcd-servers", "http://127.0.0.1:1",
                           "--data-dir", str(tmp_path / "data"), "--secure-port", str(free_port()),
                           "--encryption-provider-config", str(config)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "16, 24 or 32 bytes" in proc.stderr
