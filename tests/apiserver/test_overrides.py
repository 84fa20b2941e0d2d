"""--etcd-servers-overrides: events live in their own etcd (as large clusters run them), the rest in the main one."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from tests.apiserver.conftest import Cluster
from tests.harness import ETCD_BIN, ETCDCTL_BIN, free_port, ultraplane_command


def start_etcd(cluster: Cluster, name: str) -> int:
    client_port, peer = free_port(), free_port()
    cluster.spawn([ETCD_BIN, "--name", name, "--data-dir", str(cluster.work_dir / name),
                   "--listen-client-urls", f"http://127.0.0.1:{client_port}",
                   "--advertise-client-urls", f"http://127.0.0.1:{client_port}",
                   "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                   "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                   "--initial-cluster", f"{name}=http://127.0.0.1:{peer}"], name)
    return client_port


def etcd_keys(port: int, prefix: str) -> list[str]:
    out = subprocess.run([ETCDCTL_BIN, f"--endpoints=http://127.0.0.1:{port}", "get", "--prefix", "--keys-only",
                          prefix], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, ETCDCTL_API="3"), check=True).stdout
    return [line for line in out.splitlines() if line]


@pytest.fixture(scope="module")
def split() -> Iterator[tuple[Cluster, int, int]]:
    cluster = Cluster("etcd-split", Path(tempfile.mkdtemp(prefix="ultraplane-api-split-")), free_port())
    try:
        main, events = start_etcd(cluster, "main"), start_etcd(cluster, "events")
        cluster.spawn([*ultraplane_command(), "apiserver", "--etcd-servers", f"http://127.0.0.1:{main}",
                       "--etcd-servers-overrides", f"/events#http://127.0.0.1:{events}",
                       "--data-dir", str(cluster.work_dir / "data"), "--secure-port", str(cluster.port)], "apiserver")
        cluster.wait_ready()
        yield cluster, main, events
    finally:
        cluster.stop()
        shutil.rmtree(cluster.work_dir, ignore_errors=True)


def test_events_go_to_their_own_etcd(split: tuple[Cluster, int, int]) -> None:
    cluster, main, events = split
    api = config.new_client_from_config(str(cluster.kubeconfig))
    core = client.CoreV1Api(api)
    core.create_namespaced_event("default", {"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e"},
                                             "involvedObject": {"kind": "Pod", "name": "p", "namespace": "default"},
                                             "reason": "Test", "message": "hello", "type": "Normal"})
    core.create_namespaced_config_map("default", {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}})
    assert etcd_keys(events, "/registry/events/") == ["/registry/events/default/e"]
    assert etcd_keys(main, "/registry/events/") == []
    assert "/registry/configmaps/default/c" in etcd_keys(main, "/registry/configmaps/")
    assert [e.message for e in core.list_namespaced_event("default").items] == ["hello"]
    api.close()
