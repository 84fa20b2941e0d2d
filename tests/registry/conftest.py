"""Real servers for the registry judges: `ultraplane registry` and Debian's docker-registry (Distribution 2.8),
each a subprocess on a free loopback port, plus an HTTP client that follows Docker's token flow."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


@dataclass
class RegistryProcess:
    proc: subprocess.Popen[str]
    url: str
    data_dir: Path
    password: str | None
    cert_dir: Path | None  # a directory holding ca.crt, what skopeo's --cert-dir wants

    @property
    def host(self) -> str:
        return self.url.split("://", 1)[1]

    @property
    def ca_cert(self) -> str | bool:
        return str(self.cert_dir / "ca.crt") if self.cert_dir else False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_registry(data_dir: Path, *flags: str) -> RegistryProcess:
    proc = subprocess.Popen(
        [sys.executable, "-m", "ultraplane", "registry", "--data-dir", str(data_dir),
         "--listen", "127.0.0.1:0", "--log-level", "warn", *flags],
        stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    url = None
    deadline = time.monotonic() + 60
    while url is None and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"registry exited with {proc.wait()}")
        match = re.match(r"registry listening on (\S+)", line)
        if match:
            url = match.group(1)
    assert url is not None
    password_file = data_dir / "auth" / "admin.password"
    password = password_file.read_text().strip() if password_file.exists() else None
    cert_dir = None
    if url.startswith("https"):
        cert_dir = data_dir / "certs.d"
        cert_dir.mkdir(exist_ok=True)
        shutil.copy(data_dir / "pki" / "ca.crt", cert_dir / "ca.crt")
    return RegistryProcess(proc, url, data_dir, password, cert_dir)


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    """One TLS + token-auth registry for all registry tests (each starts a full CLI process, seconds on a
    loaded machine); tests use distinct repository names."""
    server = start_registry(tmp_path_factory.mktemp("registry"))
    yield server
    server.stop()


@dataclass
class Distribution:
    proc: subprocess.Popen[bytes]
    port: int

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"


def start_distribution(root: Path) -> Distribution:
    port = free_port()
    config = root / "config.yml"
    (root / "data").mkdir(parents=True, exist_ok=True)
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: error\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_for_port(port)
    return Distribution(proc, port)


@pytest.fixture(scope="session")
def distribution(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Distribution]:
    server = start_distribution(tmp_path_factory.mktemp("distribution"))
    yield server
    server.proc.terminate()
    server.proc.wait(10)


@dataclass
class Client:
    """requests with Docker's token flow: on a 401 challenge, fetch a token for its scope and retry."""

    base: str
    verify: str | bool
    user: str | None = None
    password: str | None = None
    session: requests.Session = field(default_factory=requests.Session)
    tokens: dict[str, str] = field(default_factory=dict)
    challenges: list[str] = field(default_factory=list)

    def token(self, *scopes: str, service: str = "ultraplane-registry") -> str:
        """A token for explicit scopes, fetched from the realm a bare /v2/ challenge names."""
        challenge = self.session.get(self.base + "/v2/", verify=self.verify).headers["WWW-Authenticate"]
        realm = dict(re.findall(r'(\w+)="([^"]*)"', challenge))["realm"]
        auth = (self.user, self.password) if self.user else None
        response = self.session.get(realm, params={"service": service, "scope": list(scopes)}, auth=auth,
                                    verify=self.verify)
        response.raise_for_status()
        return str(response.json()["token"])

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        url = path if path.startswith("http") else self.base + path
        headers = dict(kwargs.pop("headers", None) or {})
        scope_key = kwargs.pop("scope", None)
        if scope_key and scope_key in self.tokens:
            headers["Authorization"] = f"Bearer {self.tokens[scope_key]}"
        response = self.session.request(method, url, headers=headers, verify=self.verify,
                                        allow_redirects=False, **kwargs)
        challenge = response.headers.get("WWW-Authenticate", "")
        if response.status_code != 401 or not challenge.startswith("Bearer "):
            return response
        self.challenges.append(challenge)
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        query = {"service": params["service"]}
        if "scope" in params:
            query["scope"] = params["scope"]
        auth = (self.user, self.password) if self.user else None
        token_response = self.session.get(params["realm"], params=query, auth=auth, verify=self.verify)
        if token_response.status_code != 200:
            return response
        token = token_response.json()["token"]
        self.tokens[params.get("scope", "")] = token
        headers["Authorization"] = f"Bearer {token}"
        return self.session.request(method, url, headers=headers, verify=self.verify, allow_redirects=False,
                                    **kwargs)


@pytest.fixture
def admin(registry: RegistryProcess) -> Client:
    return Client(registry.url, registry.ca_cert, "admin", registry.password)


@pytest.fixture(scope="session")
def signing_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    """A registry that signs pushes to `signed/*`, guards `signed/*` in its admission check and evaluates
    lifecycle policies every second (for the audit, signing, lifecycle and admission tests)."""
    server = start_registry(tmp_path_factory.mktemp("signing-registry"), "--sign-on-push", "signed/*",
                            "--require-signature", "signed/*", "--lifecycle-interval", "1")
    yield server
    server.stop()


@pytest.fixture
def signing_admin(signing_registry: RegistryProcess) -> Client:
    return Client(signing_registry.url, signing_registry.ca_cert, "admin", signing_registry.password)
