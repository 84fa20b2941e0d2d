"""The README's first kubectl session works, command by command, against `ultraplane up` with no flags
(the small default cluster: scheduler, controllers and 3 simulated nodes)."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

from tests.harness import child_env, free_port, ultraplane_command

README = Path(__file__).resolve().parents[2] / "README.md"


def session_commands() -> list[str]:
    text = README.read_text()
    block = re.search(r"A first session.*?```sh\n(.*?)```", text, re.S)
    assert block, "README lost its first-session block"
    commands = [line.split("  #")[0].strip() for line in block.group(1).splitlines()]
    return [c for c in commands if c and not c.startswith("export ")]


def test_readme_first_session(tmp_path: Path) -> None:
    data = tmp_path / "ultraplane-data"
    proc = subprocess.Popen([*ultraplane_command(), "up", "--data-dir", str(data), "--etcd-port", str(free_port()),
                             "--secure-port", str(free_port()), "--unsafe-no-fsync"],
                            env=child_env(), stdout=subprocess.DEVNULL, stderr=open(tmp_path / "up.log", "wb"))
    env = dict(os.environ, KUBECONFIG=str(data / "kubeconfig"))
    try:
        deadline = time.monotonic() + 60
        ready = 0
        while time.monotonic() < deadline and ready < 3:
            assert proc.poll() is None, (tmp_path / "up.log").read_text()[-3000:]
            out = subprocess.run(["kubectl", "get", "nodes", "--no-headers"], env=env, capture_output=True, text=True)
            ready = sum(1 for line in out.stdout.splitlines() if " Ready " in line)
            time.sleep(0.5)
        assert ready == 3, "the default cluster has 3 Ready nodes"
        for command in session_commands():
            # rollout status and wait need a bound: a hang must fail the test, not stall it
            if command.startswith("kubectl"):
                command = command.replace("kubectl ", "kubectl --request-timeout=60s ", 1)
            out = subprocess.run(["bash", "-c", f"set -e; {command}"], env=env, capture_output=True, text=True,
                                 timeout=120, cwd=tmp_path)
            assert out.returncode == 0, f"{command}\n{out.stdout}\n{out.stderr}"
            if command.startswith("kubectl --request-timeout=60s get pods"):
                assert out.stdout.count("Running") == 3, out.stdout
            if "logs deployment/web" in command:
                assert out.stdout.strip(), "simulated container output"
    finally:
        proc.terminate()
        proc.wait(30)
