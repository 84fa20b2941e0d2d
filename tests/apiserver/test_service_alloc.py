"""ClusterIP / NodePort allocation through reservation keys in the store (servicealloc.py).

The unit tests drive a Registry over the in-process store; the integration test runs real etcd 3.4 with
two ``ultraplane apiserver`` processes and a tiny service range, so concurrent creates must collide.
"""

from __future__ import annotations

import http.client
import json
import shutil
import ssl
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.apiserver.conftest import Cluster
from tests.harness import ETCD_BIN, free_port, ultraplane_command
from ultraplane.apiserver import errors
from ultraplane.apiserver.registry import Registry, WriteOptions
from ultraplane.apiserver.resources import builtin_strategies
from ultraplane.apiserver.servicealloc import IP_PREFIX, PORT_PREFIX, ServiceAllocator
from ultraplane.apiserver.storage import InProcessBackend
from ultraplane.journal.file import FileJournal
from ultraplane.store import Store


def service(name: str, namespace: str = "default", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
            "spec": {"ports": [{"port": 80}], **spec}}


# ============================================================================ in-process
@pytest.fixture
async def reg(tmp_path: Path) -> AsyncIterator[Registry]:
    store = Store(FileJournal(str(tmp_path / "store"), fsync=False))
    await store.open()
    registry = Registry(InProcessBackend(store), compaction_interval=0)
    for strategy in builtin_strategies():
        registry.register(strategy)
    await registry.start()
    try:
        yield registry
    finally:
        await registry.close()
        await store.close()


async def install(reg: Registry, cidr: str = "10.96.0.0/29") -> ServiceAllocator:
    alloc = ServiceAllocator(reg, cidr)
    namespaces = reg.strategies[("", "v1", "namespaces")]
    await reg.create(namespaces, "", {"metadata": {"name": "default"}}, WriteOptions())
    reg.admission["services"] = alloc.allocate
    reg.update_admission["services"] = alloc.allocate_update
    reg.on_deleted["services"] = alloc.release
    return alloc


async def test_create_delete_and_failed_create_release(reg: Registry) -> None:
    alloc = await install(reg)
    svc = reg.strategies[("", "v1", "services")]
    first = await reg.create(svc, "default", service("a", type="NodePort"), WriteOptions())
    ip, port = first["spec"]["clusterIP"], first["spec"]["ports"][0]["nodePort"]
    assert 30000 <= port <= 32767
    assert set(await alloc.ips.held()) == {ip} and set(await alloc.ports.held()) == {str(port)}
    # explicit duplicates are refused with kube's field errors
    with pytest.raises(errors.ApiError) as exc:
        await reg.create(svc, "default", service("b", clusterIP=ip), WriteOptions())
    assert exc.value.code == 422
    assert exc.value.status["details"]["causes"] == [{
        "reason": "FieldValueInvalid", "field": "spec.clusterIPs",
        "message": f'Invalid value: []string{{"{ip}"}}: failed to allocate IP {ip}: provided IP is already allocated'}]
    with pytest.raises(errors.ApiError) as exc:
        await reg.create(svc, "default", service("b", type="NodePort", ports=[{"port": 1, "nodePort": port}]),
                         WriteOptions())
    assert exc.value.status["details"]["causes"][0]["message"] == \
        f"Invalid value: {port}: provided port is already allocated"
    with pytest.raises(errors.ApiError) as exc:
        await reg.create(svc, "default", service("b", clusterIP="10.0.0.1"), WriteOptions())
    assert "the provided IP (10.0.0.1) is not in the valid range. The range of valid IPs is 10.96.0.0/29" in \
        exc.value.status["message"]
    # a create failing after allocation (invalid name, duplicate name) and a dry run keep nothing
    for bad in (service("Bad_Name", type="NodePort"), service("a", type="NodePort")):
        with pytest.raises(errors.ApiError):
            await reg.create(svc, "default", bad, WriteOptions())
    dry = await reg.create(svc, "default", service("dry"), WriteOptions(dry_run=True))
    assert dry["spec"]["clusterIP"]
    assert set(await alloc.ips.held()) == {ip} and set(await alloc.ports.held()) == {str(port)}
    await reg.delete(svc, "default", "a", {}, WriteOptions())
    assert await alloc.ips.held() == {} and await alloc.ports.held() == {}


async def test_range_full_and_repair(reg: Registry) -> None:
    alloc = await install(reg)  # /29: 6 hosts, the first kept for the kubernetes service
    svc = reg.strategies[("", "v1", "services")]
    ips = {(await reg.create(svc, "default", service(f"s{i}"), WriteOptions()))["spec"]["clusterIP"]
           for i in range(5)}
    assert ips == {f"10.96.0.{i}" for i in range(2, 7)}
    with pytest.raises(errors.ApiError) as exc:
        await reg.create(svc, "default", service("full"), WriteOptions())
    assert exc.value.code == 500
    assert exc.value.status["message"] == "Internal error occurred: failed to allocate a serviceIP: range is full"
    backend = reg.backend_for(svc)
    # a lost reservation (data written before reservations existed) is re-created from the service...
    _, stored = await backend.get(IP_PREFIX + b"10.96.0.2")
    assert stored is not None
    await backend.delete(IP_PREFIX + b"10.96.0.2", stored.mod_revision)
    # ...and a leaked one (its service is gone) is released on the second pass that finds it leaked
    await backend.create(PORT_PREFIX + b"31000", b'{"namespace":"default","name":"gone","uid":"x"}')
    await alloc.repair()
    assert "10.96.0.2" in await alloc.ips.held() and "31000" in await alloc.ports.held()
    await alloc.repair()
    assert "31000" not in await alloc.ports.held()


async def test_updates_keep_allocate_and_free(reg: Registry) -> None:
    alloc = await install(reg)
    svc = reg.strategies[("", "v1", "services")]
    created = await reg.create(svc, "default", service("u"), WriteOptions())
    ip = created["spec"]["clusterIP"]
    # a PUT that leaves out the ClusterIP keeps it; turning it into a NodePort service allocates a port
    body = service("u", type="NodePort")
    body["metadata"]["resourceVersion"] = created["metadata"]["resourceVersion"]
    updated, _ = await reg.update(svc, "default", "u", body, WriteOptions())
    port = updated["spec"]["ports"][0]["nodePort"]
    assert updated["spec"]["clusterIP"] == ip and set(await alloc.ports.held()) == {str(port)}
    # the node port survives an update that leaves it out, and is freed when the type goes back
    again, _ = await reg.update(svc, "default", "u", service("u", type="NodePort"), WriteOptions())
    assert again["spec"]["ports"][0]["nodePort"] == port
    back, _ = await reg.update(svc, "default", "u", service("u", type="ClusterIP"), WriteOptions())
    assert "nodePort" not in back["spec"]["ports"][0] and await alloc.ports.held() == {}
    assert set(await alloc.ips.held()) == {ip}


# ============================================================================ two API servers on one etcd
class TwoServers:
    def __init__(self) -> None:
        self.cluster = Cluster("etcd", Path(tempfile.mkdtemp(prefix="ultraplane-alloc-")), free_port())
        self.ports: list[int] = []

    def start(self) -> None:
        c = self.cluster
        client, peer = free_port(), free_port()
        c.spawn([ETCD_BIN, "--name", "alloc", "--data-dir", str(c.work_dir / "etcd"),
                 "--listen-client-urls", f"http://127.0.0.1:{client}",
                 "--advertise-client-urls", f"http://127.0.0.1:{client}",
                 "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                 "--initial-cluster", f"alloc=http://127.0.0.1:{peer}"], "etcd")
        for i, port in enumerate((c.port, free_port())):
            c.spawn([*ultraplane_command(), "apiserver", "--etcd-servers", f"http://127.0.0.1:{client}",
                     "--data-dir", str(c.work_dir / "data"), "--secure-port", str(port),
                     "--service-cluster-ip-range", "10.96.0.0/27"], f"apiserver{i}")
            self.ports.append(port)
            self.wait_ready(port)

    def wait_ready(self, port: int) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if self.call(port, "GET", "/readyz")[0] == 200:
                    return
            except (OSError, FileNotFoundError):
                pass
            time.sleep(0.2)
        raise TimeoutError(self.cluster.log_tail())

    def call(self, port: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        pki = self.cluster.pki
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)
        try:
            conn.request(method, path, None if body is None else json.dumps(body),
                         {"Content-Type": "application/json"})
            resp = conn.getresponse()
            raw = resp.read()
            return resp.status, json.loads(raw) if raw.startswith(b"{") else raw
        finally:
            conn.close()


@pytest.fixture(scope="module")
def two_servers() -> Iterator[TwoServers]:
    servers = TwoServers()
    try:
        servers.start()
        yield servers
    finally:
        servers.cluster.stop()
        shutil.rmtree(servers.cluster.work_dir, ignore_errors=True)


def test_two_apiservers_never_hand_out_the_same_ip(two_servers: TwoServers) -> None:
    path = "/api/v1/namespaces/default/services"

    def create(i: int) -> tuple[int, Any]:
        spec = {"type": "NodePort"} if i % 2 else {}
        return two_servers.call(two_servers.ports[i % 2], "POST", path, service(f"race-{i}", **spec))

    # 10.96.0.0/27: 30 hosts, 10.96.0.1 is the kubernetes service, so 29 are left for 40 creates
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(create, range(40)))
    created = [body for code, body in results if code == 201]
    refused = [body for code, body in results if code != 201]
    ips = [s["spec"]["clusterIP"] for s in created]
    assert len(created) == 29 and len(set(ips)) == 29
    assert all(b["message"] == "Internal error occurred: failed to allocate a serviceIP: range is full"
               for b in refused)
    node_ports = [p["nodePort"] for s in created for p in s["spec"]["ports"] if "nodePort" in p]
    assert len(node_ports) == len(set(node_ports)) > 0
    # a deleted service's IP is free again, on either server
    victim = created[0]
    code, _ = two_servers.call(two_servers.ports[1], "DELETE", f"{path}/{victim['metadata']['name']}")
    assert code == 200
    code, again = two_servers.call(two_servers.ports[0], "POST", path, service("again"))
    assert code == 201 and again["spec"]["clusterIP"] == victim["spec"]["clusterIP"]
