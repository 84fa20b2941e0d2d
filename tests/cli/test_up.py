"""`ultraplane up` is secure by default: TLS, client certificates, and etcd RBAC with a root user."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.harness import child_env, free_port, ultraplane_command
from ultraplane import pki


def etcdctl(port: int, *args: str, tls: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["etcdctl", f"--endpoints=https://127.0.0.1:{port}", "--dial-timeout=2s", "--command-timeout=5s", *tls, *args],
        capture_output=True, text=True, timeout=60, env=dict(os.environ, ETCDCTL_API="3"),
    )


class Up:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.api_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [*ultraplane_command(), "up", "--data-dir", str(self.data_dir), "--etcd-port", str(self.port),
             "--secure-port", str(self.api_port)],
            env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "ultraplane up exited during startup"
            if etcdctl(self.port, "get", "x", tls=self.root_tls()).returncode == 0:
                return
            time.sleep(0.2)
        raise TimeoutError("ultraplane up did not serve within 30 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(15)

    def root_tls(self) -> list[str]:
        p = self.data_dir / "pki"
        return [f"--cacert={p / 'ca.crt'}", f"--cert={p / 'etcd-client-root.crt'}", f"--key={p / 'etcd-client-root.key'}"]


@pytest.fixture
def up(tmp_path: Path):
    server = Up(tmp_path / "data")
    server.start()
    yield server
    server.stop()


def test_root_certificate_reads_and_writes(up: Up) -> None:
    assert etcdctl(up.port, "put", "greeting", "hello", tls=up.root_tls()).stdout.strip() == "OK"
    got = etcdctl(up.port, "get", "greeting", "--print-value-only", tls=up.root_tls())
    assert got.stdout.strip() == "hello"
    # auth is on: a password login with a wrong password is refused
    wrong = etcdctl(up.port, "--user=root:wrong", "get", "greeting", tls=up.root_tls())
    assert "etcdserver: authentication failed, invalid user ID or password" in wrong.stderr
    assert etcdctl(up.port, "user", "list", tls=up.root_tls()).stdout.split() == ["root"]


def test_no_client_certificate_is_refused(up: Up) -> None:
    ca = up.data_dir / "pki" / "ca.crt"
    result = etcdctl(up.port, "get", "greeting", tls=[f"--cacert={ca}"])
    assert result.returncode != 0


def test_plaintext_is_refused(up: Up) -> None:
    result = subprocess.run(
        ["etcdctl", f"--endpoints=http://127.0.0.1:{up.port}", "--dial-timeout=2s", "get", "greeting"],
        capture_output=True, text=True, timeout=60, env=dict(os.environ, ETCDCTL_API="3"),
    )
    assert result.returncode != 0


def test_certificate_for_unknown_user_is_denied(up: Up) -> None:
    pki_dir = up.data_dir / "pki"
    ca = pki.CertPair(pki_dir / "ca.crt", pki_dir / "ca.key")
    alice = pki.issue(ca, pki_dir, "alice", "alice", client=True)
    result = etcdctl(up.port, "get", "greeting", tls=[f"--cacert={ca.cert}", f"--cert={alice.cert}", f"--key={alice.key}"])
    assert result.returncode != 0
    assert "etcdserver: permission denied" in result.stderr


def test_restart_keeps_data(up: Up) -> None:
    etcdctl(up.port, "put", "kept", "yes", tls=up.root_tls())
    up.stop()
    up.start()
    got = etcdctl(up.port, "get", "kept", "--print-value-only", tls=up.root_tls())
    assert got.stdout.strip() == "yes"
