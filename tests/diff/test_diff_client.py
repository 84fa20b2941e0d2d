"""The python etcd3 client against both stores: raw KV/lease/watch/maintenance requests (including
range filters, sorting and nested txns that etcdctl can't express) and the library's helpers.

Scenarios live in etcd3_scenarios.py and run in a child process (etcd3 needs the pure-python
protobuf runtime, which must stay out of this process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from harness import Normalizer, Server, ServerPair, child_env

RUNNER = Path(__file__).with_name("etcd3_scenarios.py")
SCENARIOS = ["range_filters", "txn", "put_delete", "watch", "lease", "maintenance"]


def run_scenario(server: Server, name: str) -> Any:
    env = child_env({"PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python"})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(RUNNER.parent), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, str(RUNNER), "127.0.0.1", str(server.client_port), name, f"/py/{name}/"],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert proc.returncode == 0, f"{server.label}: scenario {name} crashed:\n{proc.stderr[-3000:]}"
    return Normalizer(server).json(json.loads(proc.stdout))


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_etcd3_client(module_pair: ServerPair, scenario: str) -> None:
    expected = run_scenario(module_pair.etcd, scenario)
    actual = run_scenario(module_pair.ultra, scenario)
    if actual != expected:
        lines = [f"scenario {scenario}: ultraplane differs from etcd"]
        differing = [i for i, (e, a) in enumerate(zip(expected, actual, strict=False)) if e != a]
        for i in differing[:5]:
            lines.append(f"step {i}:\n  etcd:  {expected[i]!r}\n  ultra: {actual[i]!r}")
        if len(expected) != len(actual):
            lines.append(f"step counts: etcd {len(expected)}, ultra {len(actual)}")
        raise AssertionError("\n".join(lines))
