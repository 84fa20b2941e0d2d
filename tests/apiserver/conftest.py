"""A running API server for the kubectl / Python-client tests, on both storage backends.

``cluster`` is module-scoped and parametrized: ``inprocess`` runs ``ultraplane up`` (the API server
over the in-process store); ``etcd`` runs real etcd 3.4 and ``ultraplane apiserver --etcd-servers``
pointed at it. Tests use distinct namespaces or names so they share one server per module.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.harness import ETCD_BIN, child_env, free_port, ultraplane_command

START_TIMEOUT_S = 60.0
KUBECTL_TIMEOUT_S = 60.0


@dataclass
class Cluster:
    backend: str
    work_dir: Path
    port: int
    etcd_port: int = 0
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    @property
    def kubeconfig(self) -> Path:
        return self.work_dir / "data" / "kubeconfig"

    @property
    def pki(self) -> Path:
        return self.work_dir / "data" / "pki"

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def kubectl(self, *args: str, input: str | None = None, check: bool = False) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["kubectl", "--kubeconfig", str(self.kubeconfig), *args], input=input,
                              capture_output=True, text=True, timeout=KUBECTL_TIMEOUT_S)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
        return proc

    def ok(self, *args: str, input: str | None = None) -> str:
        return self.kubectl(*args, input=input, check=True).stdout

    def json(self, *args: str) -> dict:
        return json.loads(self.ok(*args, "-o", "json"))

    def spawn(self, argv: list[str], name: str) -> None:
        log = self.work_dir / f"{name}.log"
        self.logs.append(log)
        with open(log, "wb") as out:
            self.procs.append(subprocess.Popen(argv, env=child_env(), stdout=out, stderr=subprocess.STDOUT))

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited during startup:\n{self.log_tail()}")
            if self.kubeconfig.exists() and self.kubectl("get", "--raw", "/readyz").returncode == 0:
                return
            time.sleep(0.2)
        raise TimeoutError(f"API server not ready within {START_TIMEOUT_S}s:\n{self.log_tail()}")

    def log_tail(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in self.logs if p.exists())

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs.clear()

    def start_inprocess(self, *flags: str) -> None:
        self.etcd_port = free_port()
        self.spawn([*ultraplane_command(), "up", "--data-dir", str(self.work_dir / "data"),
                    "--etcd-port", str(self.etcd_port), "--secure-port", str(self.port), "--unsafe-no-fsync",
                    *([] if "--nodes" in flags or "--node-type" in flags else ["--nodes", "0"]),
                    # no registry unless a test asks for one: clusters of parallel modules would race for :5000
                    *([] if "--registry-port" in flags or "--registry" in flags else ["--registry-port", "0"]),
                    *flags],
                   "up")
        self.wait_ready()

    def start_etcd(self) -> None:
        client, peer = free_port(), free_port()
        self.spawn([ETCD_BIN, "--name", "apitest", "--data-dir", str(self.work_dir / "etcd"),
                    "--listen-client-urls", f"http://127.0.0.1:{client}",
                    "--advertise-client-urls", f"http://127.0.0.1:{client}",
                    "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                    "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                    "--initial-cluster", f"apitest=http://127.0.0.1:{peer}"], "etcd")
        self.spawn([*ultraplane_command(), "apiserver", "--etcd-servers", f"http://127.0.0.1:{client}",
                    "--data-dir", str(self.work_dir / "data"), "--secure-port", str(self.port)], "apiserver")
        self.wait_ready()


def start_cluster(backend: str, *flags: str) -> Cluster:
    cluster = Cluster(backend, Path(tempfile.mkdtemp(prefix=f"ultraplane-api-{backend}-")), free_port())
    try:
        if backend == "inprocess":
            cluster.start_inprocess(*flags)
        else:
            cluster.start_etcd()
    except BaseException:
        cluster.stop()
        shutil.rmtree(cluster.work_dir, ignore_errors=True)
        raise
    return cluster


# These suites test the API server itself, so `up` runs without the cluster components (the etcd
# backend's `ultraplane apiserver` has none): a scheduler binding the tests' pods would race them, and
# the controller manager legitimately adds objects (kube-root-ca.crt, default ServiceAccounts, a
# Deployment's pods) that the suites' exact listings do not expect.
API_ONLY_FLAGS = ("--no-scheduler", "--no-controllers")


@pytest.fixture(scope="module", params=["inprocess", "etcd"])
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    c = start_cluster(request.param, *API_ONLY_FLAGS)
    yield c
    c.stop()
    if os.environ.get("ULTRAPLANE_KEEP_TEST_DIRS") != "1":
        shutil.rmtree(c.work_dir, ignore_errors=True)


@contextlib.contextmanager
def inprocess_cluster(prefix: str, *flags: str) -> Iterator[Cluster]:
    """A started `ultraplane up` in a fresh directory (``flags`` as for start_inprocess), stopped and removed
    afterwards: the body of the cluster-level test modules' module fixtures."""
    c = Cluster("inprocess", Path(tempfile.mkdtemp(prefix=prefix)), free_port())
    try:
        c.start_inprocess(*flags)
        yield c
    finally:
        c.stop()
        shutil.rmtree(c.work_dir, ignore_errors=True)
