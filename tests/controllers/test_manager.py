"""The controller manager's registry and --controllers selection (kube-controller-manager's syntax)."""

from __future__ import annotations

import subprocess

import pytest

from tests.harness import child_env, ultraplane_command
from ultraplane.controllers.manager import UnknownController, build_registry, select

CORE = ["namespace-controller", "serviceaccount-controller", "root-ca-certificate-publisher-controller",
        "garbage-collector-controller", "endpoints-controller", "endpointslice-controller",
        "node-lifecycle-controller", "pod-garbage-collector-controller", "ttl-after-finished-controller"]


def test_registry_holds_core_and_workload_controllers() -> None:
    registry, missing = build_registry()
    assert set(CORE) <= set(registry)
    workloads = {"replicaset-controller", "replicationcontroller-controller", "deployment-controller",
                 "statefulset-controller", "daemonset-controller", "job-controller", "cronjob-controller"}
    assert workloads <= set(registry) | set(missing)


def test_select_star_names_aliases_and_negation() -> None:
    known = ["namespace-controller", "garbage-collector-controller", "pod-garbage-collector-controller"]
    assert select("*", known) == known
    assert select("*,-podgc", known) == ["namespace-controller", "garbage-collector-controller"]
    assert select("-garbage-collector-controller,*", known) == ["namespace-controller",
                                                               "pod-garbage-collector-controller"]
    assert select("namespace,garbagecollector", known) == ["namespace-controller", "garbage-collector-controller"]
    assert select("", known) == []
    with pytest.raises(UnknownController) as err:
        select("*,-bogus", known)
    assert str(err.value) == '"bogus" is not in the list of known controllers'


def test_cli_refuses_unknown_controllers(tmp_path: object) -> None:
    proc = subprocess.run([*ultraplane_command(), "controllers", "--kubeconfig", "/nonexistent",
                           "--controllers", "*,nope"], env=child_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert '"nope" is not in the list of known controllers' in proc.stderr


def test_a_failing_controller_is_started_again() -> None:
    import asyncio

    from ultraplane.controllers import manager

    class FailsOnce:
        def __init__(self) -> None:
            self.starts = 0

        async def run(self, stop: asyncio.Event) -> None:
            self.starts += 1
            if self.starts == 1:
                raise RuntimeError("API server away")
            stop.set()

    async def main() -> int:
        controller = FailsOnce()
        stop = asyncio.Event()
        await asyncio.wait_for(manager.ControllerManager._supervise("flaky", controller, stop), 10)
        return controller.starts

    old = manager.RESTART_DELAY_S
    manager.RESTART_DELAY_S = 0.01
    try:
        assert asyncio.run(main()) == 2
    finally:
        manager.RESTART_DELAY_S = old


def test_leader_lease_taken_then_released_on_sigterm() -> None:
    import json
    import shutil
    import signal
    import time

    from tests.apiserver.conftest import start_cluster

    cluster = start_cluster("inprocess", "--no-scheduler", "--no-controllers")
    proc = None
    try:
        proc = subprocess.Popen([*ultraplane_command(), "controllers", "--kubeconfig", str(cluster.kubeconfig),
                                 "--controllers", "serviceaccount"], env=child_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def lease() -> dict:
            got = cluster.kubectl("get", "lease", "kube-controller-manager", "-n", "kube-system", "-o", "json")
            return json.loads(got.stdout) if got.returncode == 0 else {}
        deadline = time.monotonic() + 30
        while not (lease().get("spec") or {}).get("holderIdentity"):
            assert time.monotonic() < deadline, "the controller manager never took its Lease"
            time.sleep(0.2)
        # it works while holding the lease: the default ServiceAccount appears
        while cluster.kubectl("get", "sa", "default", "-n", "default").returncode != 0:
            assert time.monotonic() < deadline, "no default ServiceAccount"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        released = lease()["spec"]
        assert released.get("holderIdentity", "") == "" and released["leaseDurationSeconds"] == 1
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        cluster.stop()
        shutil.rmtree(cluster.work_dir, ignore_errors=True)
