"""`up` restarts a component that exits, as the kubelet restarts kube-system's static pods (a scheduler
or controller manager that lost its leader lease exits and must come back)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.apiserver.conftest import inprocess_cluster
from tests.harness import wait_for


def _component_pids(kubeconfig: Path, component: str) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if component.encode() in argv and str(kubeconfig).encode() in argv:
            found.add(int(entry.name))
    return found


def test_a_component_that_exits_is_started_again() -> None:
    with inprocess_cluster("ultraplane-supervise-") as cluster:
        first = wait_for(lambda: _component_pids(cluster.kubeconfig, "scheduler"), "the scheduler", 30)
        for pid in first:
            os.kill(pid, signal.SIGKILL)
        again = wait_for(lambda: _component_pids(cluster.kubeconfig, "scheduler") - first, "a new scheduler", 30)
        assert again and not again & first
        assert "exited with code -9; restarting" in cluster.log_tail()
