"""One in-process server with a fast compactor and a token file: 410 Gone / Expired once history is
compacted, bearer-token authentication, a second API server on its etcd endpoint (TLS client
certificates, etcd auth on), and a restart that keeps every object."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from tests.apiserver.conftest import Cluster, start_cluster
from tests.harness import free_port, ultraplane_command
from ultraplane.apiserver.registry import CONTINUE_EXPIRED

FLAGS: tuple[str, ...] = ()


@pytest.fixture(scope="module")
def compacting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    global FLAGS
    tokens = tmp_path_factory.mktemp("tokens") / "tokens.csv"
    tokens.write_text('admin-token,token-admin,1,"system:masters"\nalice-token,alice,2,"developers,testers"\n')
    FLAGS = ("--etcd-compaction-interval", "1s", "--token-auth-file", str(tokens))
    c = start_cluster("inprocess", *FLAGS)
    yield c
    c.stop()
    shutil.rmtree(c.work_dir, ignore_errors=True)


def test_expired_continue_token_and_too_old_watch(compacting: Cluster) -> None:
    api = config.new_client_from_config(str(compacting.kubeconfig))
    core = client.CoreV1Api(api)
    for i in range(3):
        core.create_namespaced_config_map("default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name=f"c{i}")))
    first = core.list_namespaced_config_map("default", limit=1)
    token = first.metadata._continue
    listed_at = first.metadata.resource_version
    deadline = time.monotonic() + 30
    expired = None
    while time.monotonic() < deadline:
        # the compactor compacts at the revision it saw one interval earlier: keep writing so it moves on
        current = core.read_namespaced_config_map("c0", "default")
        current.data = {"t": str(time.monotonic())}
        core.replace_namespaced_config_map("c0", "default", current)
        try:
            core.list_namespaced_config_map("default", limit=1, _continue=token)
        except ApiException as exc:
            expired = exc
            break
        time.sleep(0.3)
    assert expired is not None, "the continue token never expired"
    assert expired.status == 410
    assert json.loads(expired.body) == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                        "message": CONTINUE_EXPIRED, "reason": "Expired", "code": 410}
    with pytest.raises(ApiException) as old:
        for _event in watch.Watch().stream(core.list_namespaced_config_map, "default", resource_version=listed_at,
                                           timeout_seconds=5):
            pass
    assert old.value.status == 410
    assert old.value.reason.startswith(f"Expired: too old resource version: {listed_at} (")
    api.close()


def test_restart_keeps_objects(compacting: Cluster) -> None:
    compacting.ok("create", "configmap", "durable", "-n", "default", "--from-literal=a=b")
    before = compacting.json("get", "cm", "durable", "-n", "default")
    compacting.stop()
    compacting.start_inprocess(*FLAGS)
    after = compacting.json("get", "cm", "durable", "-n", "default")
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    assert after["data"] == {"a": "b"}
    # the bootstrap objects are not created twice
    assert compacting.json("get", "svc", "kubernetes", "-n", "default")["spec"]["clusterIP"] == "10.96.0.1"


def test_bearer_tokens(compacting: Cluster) -> None:
    def kubectl(token: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["kubectl", "--server", compacting.url, "--certificate-authority",
                               str(compacting.pki / "ca.crt"), "--token", token, *args],
                              capture_output=True, text=True, timeout=60)

    admin = kubectl("admin-token", "get", "ns", "default", "-o", "name")
    assert admin.stdout.strip() == "namespace/default"
    alice = kubectl("alice-token", "get", "ns")
    assert alice.stderr.strip() == ('Error from server (Forbidden): namespaces is forbidden: User "alice" cannot '
                                    'list resource "namespaces" in API group "" at the cluster scope')
    alice = kubectl("alice-token", "get", "deploy", "x", "-n", "default")
    assert alice.stderr.strip() == ('Error from server (Forbidden): deployments.apps "x" is forbidden: User "alice" '
                                    'cannot get resource "deployments" in API group "apps" in the namespace '
                                    '"default"')


def test_second_apiserver_on_our_etcd_endpoint(compacting: Cluster, tmp_path) -> None:  # noqa: ANN001
    pki = compacting.pki
    second = Cluster("etcd-tls", tmp_path, free_port())
    second.spawn([*ultraplane_command(), "apiserver", "--etcd-servers", f"https://127.0.0.1:{compacting.etcd_port}",
                  "--etcd-cafile", str(pki / "ca.crt"), "--etcd-certfile", str(pki / "etcd-client-root.crt"),
                  "--etcd-keyfile", str(pki / "etcd-client-root.key"), "--data-dir", str(tmp_path / "data"),
                  "--secure-port", str(second.port)], "apiserver")
    try:
        second.wait_ready()
        second.ok("create", "configmap", "shared", "-n", "default")
        assert compacting.json("get", "cm", "shared", "-n", "default")["metadata"]["name"] == "shared"
        assert "namespace/kube-system" in second.ok("get", "ns", "-o", "name").split()
    finally:
        second.stop()
