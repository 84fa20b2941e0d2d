"""Moving a live `ultraplane up` cluster onto real etcd 3.4 and back, as the README's migration
guide does it: `etcdctl snapshot save` from ultraplane's embedded store, `etcdctl snapshot restore`,
real etcd started on the restored directory with ultraplane's certificates (auth enabled, the
client certificate's CN "root" is the etcd user), `ultraplane apiserver --etcd-servers` on it and
kubectl reading every object back (the Secret still decrypts: same encryption config); then the
reverse: real etcd's snapshot into `ultraplane store --restore`, same keys at the same revisions."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from harness import (
    ETCD_BIN,
    ETCDCTL_BIN,
    Server,
    TlsFiles,
    child_env,
    free_port,
    ultraplane_command,
    wait_for,
)

from tests.apiserver.conftest import Cluster


def _etcdctl(endpoint: str, pki: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [ETCDCTL_BIN, f"--endpoints={endpoint}", f"--cacert={pki / 'ca.crt'}",
           f"--cert={pki / 'etcd-client-root.crt'}", f"--key={pki / 'etcd-client-root.key'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=child_env({"ETCDCTL_API": "3"}))


def _objects(cluster: Cluster) -> dict:
    out = {}
    for kind, name in (("configmap", "settings"), ("secret", "creds"), ("deployment", "web"), ("service", "web")):
        obj = cluster.json("-n", "shop", "get", kind, name)
        out[kind] = (obj["metadata"]["uid"], obj["metadata"]["resourceVersion"], obj.get("data"), obj.get("spec"))
    out["namespaces"] = sorted(ns["metadata"]["name"] for ns in cluster.json("get", "ns")["items"])
    return out


def _registry(endpoint: str, pki: Path) -> list[tuple[str, int, int, int]]:
    proc = _etcdctl(endpoint, pki, "get", "/registry/", "--prefix", "--keys-only", "-w", "json")
    assert proc.returncode == 0, proc.stderr
    return [(base64.b64decode(kv["key"]).decode(), kv["create_revision"], kv["mod_revision"], kv["version"])
            for kv in json.loads(proc.stdout)["kvs"]]


def test_up_cluster_moves_to_real_etcd_and_back() -> None:
    work = Path(tempfile.mkdtemp(prefix="ultraplane-migrate-"))
    cluster = Cluster("inprocess", work, free_port())
    try:
        cluster.start_inprocess("--no-scheduler", "--no-controllers")
        cluster.ok("create", "namespace", "shop")
        cluster.ok("-n", "shop", "create", "configmap", "settings", "--from-literal=color=blue")
        cluster.ok("-n", "shop", "create", "secret", "generic", "creds", "--from-literal=password=s3cret")
        cluster.ok("-n", "shop", "create", "deployment", "web", "--image=nginx:1.27", "--replicas=2")
        cluster.ok("-n", "shop", "create", "service", "clusterip", "web", "--tcp=80:80")
        cluster.ok("-n", "shop", "label", "configmap", "settings", "tier=front")
        before = _objects(cluster)

        pki = work / "data" / "pki"
        source = f"https://127.0.0.1:{cluster.etcd_port}"
        saved = work / "ultraplane.db"
        proc = _etcdctl(source, pki, "snapshot", "save", str(saved))
        assert proc.returncode == 0, proc.stderr
        keys_before = _registry(source, pki)
        cluster.stop()

        # ---- onto real etcd
        restored = work / "etcd"
        client_port, peer_port = free_port(), free_port()
        peer_url, etcd_url = f"http://127.0.0.1:{peer_port}", f"https://127.0.0.1:{client_port}"
        proc = subprocess.run([ETCDCTL_BIN, "snapshot", "restore", str(saved), "--name", "migrated",
                               "--initial-cluster", f"migrated={peer_url}", "--initial-advertise-peer-urls", peer_url,
                               "--data-dir", str(restored)], capture_output=True, text=True, timeout=60,
                              env=child_env({"ETCDCTL_API": "3"}))
        assert proc.returncode == 0, proc.stderr
        cluster.spawn([ETCD_BIN, "--name", "migrated", "--data-dir", str(restored),
                       "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
                       "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
                       "--cert-file", str(pki / "etcd-server.crt"), "--key-file", str(pki / "etcd-server.key"),
                       "--trusted-ca-file", str(pki / "ca.crt"), "--client-cert-auth"], "etcd")
        wait_for(lambda: _etcdctl(etcd_url, pki, "endpoint", "health").returncode == 0, "restored etcd")
        assert _registry(etcd_url, pki) == keys_before

        cluster.spawn([*ultraplane_command(), "apiserver", "--etcd-servers", etcd_url,
                       "--etcd-cafile", str(pki / "ca.crt"), "--etcd-certfile", str(pki / "etcd-client-root.crt"),
                       "--etcd-keyfile", str(pki / "etcd-client-root.key"),
                       "--encryption-provider-config", str(work / "data" / "encryption-config.yaml"),
                       "--data-dir", str(work / "data"), "--secure-port", str(cluster.port)], "apiserver")
        cluster.wait_ready()
        assert _objects(cluster) == before
        assert cluster.ok("-n", "shop", "get", "secret", "creds", "-o", "jsonpath={.data.password}") == "czNjcmV0"
        # the API server writes to the real etcd from where ultraplane left off
        cluster.ok("-n", "shop", "create", "configmap", "after-move", "--from-literal=k=v")
        moved = cluster.json("-n", "shop", "get", "configmap", "after-move")
        assert int(moved["metadata"]["resourceVersion"]) > int(before["configmap"][1])

        # ---- and back into ultraplane
        back = work / "etcd.db"
        proc = _etcdctl(etcd_url, pki, "snapshot", "save", str(back))
        assert proc.returncode == 0, proc.stderr
        keys_on_etcd = _registry(etcd_url, pki)
        cluster.stop()
        assert [k for k, *_ in keys_on_etcd if k.endswith("/after-move")]
        tls = TlsFiles(str(pki / "ca.crt"), str(pki / "etcd-client-root.crt"), str(pki / "etcd-client-root.key"))
        home = Server(kind="ultraplane", label="back", tls=tls, flags=[
            "--restore", str(back), "--cert-file", str(pki / "etcd-server.crt"),
            "--key-file", str(pki / "etcd-server.key"), "--trusted-ca-file", str(pki / "ca.crt"), "--client-cert-auth",
        ])
        try:
            home.start()
            assert _registry(home.client_url, pki) == keys_on_etcd
        finally:
            home.cleanup()
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)

