"""A fleet of three `up` clusters (regions r1, r2, r3, one cluster each) shared by the fleet test modules.

`ultraplane fleet up` runs as a user would start it; kubectl talks to the fleet API and to each member.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import child_env, ultraplane_command, wait_for


class Fleet:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.proc: subprocess.Popen[bytes] | None = None

    def kubectl(self, cluster: str | None, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        config = self.root / ("fleet" if cluster is None else f"clusters/{cluster}") / "kubeconfig"
        return subprocess.run(["kubectl", "--kubeconfig", str(config), *args], input=input, capture_output=True,
                              text=True, timeout=60)

    def json(self, cluster: str | None, *args: str) -> dict:
        proc = self.kubectl(cluster, *args, "-o", "json")
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    def maybe(self, cluster: str | None, *args: str) -> dict | None:
        proc = self.kubectl(cluster, *args, "-o", "json")
        return json.loads(proc.stdout) if proc.returncode == 0 else None

    def ultraplane(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*ultraplane_command(), "fleet", *args, "--fleet", str(self.root)],
                              capture_output=True, text=True, env=child_env(), timeout=300)

    def member_pid(self, cluster: str) -> int:
        marker = f"--data-dir {self.root}/clusters/{cluster} "
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                except OSError:
                    continue
                if marker in cmdline and " up " in cmdline:
                    return int(entry.name)
        raise AssertionError(f"no `up` process for {cluster}")


@pytest.fixture(scope="package")
def fleet() -> Iterator[Fleet]:
    root = Path(tempfile.mkdtemp(prefix="ultraplane-fleet-"))
    f = Fleet(root)
    log = open(root / "fleet-up.log", "wb")  # noqa: SIM115 - closed below
    f.proc = subprocess.Popen([*ultraplane_command(), "fleet", "up", "--data-dir", str(root), "--regions",
                               "r1,r2,r3", "--clusters-per-region", "1", "--nodes", "2", "--unsafe-no-fsync",
                               "--cluster-failure-threshold", "6", "--registry-port", "0"], stdout=log,
                              stderr=subprocess.STDOUT,
                              env=child_env())
    try:
        def ready() -> bool:
            assert f.proc and f.proc.poll() is None, (root / "fleet-up.log").read_text()[-3000:]
            listed = f.maybe(None, "get", "clusters")
            return bool(listed) and sum(
                any(c["type"] == "Ready" and c["status"] == "True" for c in (i.get("status") or {}).get(
                    "conditions") or []) for i in listed["items"]) == 3
        wait_for(ready, "three Ready member clusters", timeout=180)
        yield f
    finally:
        if f.proc and f.proc.poll() is None:
            f.proc.send_signal(signal.SIGINT)
            try:
                f.proc.wait(60)
            except subprocess.TimeoutExpired:
                f.proc.kill()
        log.close()
        if os.environ.get("ULTRAPLANE_KEEP_TEST_DIRS") != "1":
            shutil.rmtree(root, ignore_errors=True)
