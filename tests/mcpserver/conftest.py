"""A live cluster with injected faults, and `ultraplane mcp` servers reached through the official SDK's client.

The cluster is `ultraplane up` plus simulated nodes with a short container restart back-off (1 s doubling to
4 s), so that a crash loop shows within seconds. Faults: a Deployment whose container exits (crash loop), a
Deployment rolled out to an image whose registry does not resolve (`.invalid`), a pod requesting more CPU than
any node has (Pending), and a pod that exits on a DNS lookup failure. The MCP servers are real subprocesses:
one over stdio (read-only) and one over streamable HTTP (--allow-write), each driven by `mcp.ClientSession`.
The sessions live in a thread of their own with its own event loop, so the (sync) tests share them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from tests.apiserver.conftest import Cluster, inprocess_cluster
from tests.harness import child_env, free_port, ultraplane_command, wait_for

NS = "default"
CALL_TIMEOUT_S = 60.0
CRASH_COMMAND = 'echo "starting worker"; echo "fatal: required setting DB_URL is empty"; exit 3'
DNS_COMMAND = 'echo "connecting to db.prod.svc.cluster.local"; ' \
              'echo "dial tcp: lookup db.prod.svc.cluster.local on 10.96.0.10:53: no such host"; exit 1'
BAD_IMAGE = "registry.invalid/team/api:2.0"
LEDGER_COMMAND = 'echo "opening ledger"; echo "panic: ledger volume /data is not writable"; exit 2'
JOB_COMMAND = 'echo "applying migration 42"; echo "error: relation users already exists"; exit 2'
WIDGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.com"},
    "spec": {"group": "example.com", "scope": "Namespaced",
             "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
             "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                 "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]}}


def deployment(name: str, image: str, command: str | None = None, replicas: int = 1,
               config: str | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "app", "image": image}
    if command:
        container["command"] = ["sh", "-c", command]
    if config:
        container["envFrom"] = [{"configMapRef": {"name": config}}]
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": NS},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [container]}}}}


def pod(name: str, command: str | None = None, requests: dict[str, str] | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "app", "image": "busybox"}
    if command:
        container["command"] = ["sh", "-c", command]
    if requests:
        container["resources"] = {"requests": requests}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS, "labels": {"app": name}},
            "spec": {"containers": [container]}}


def job(name: str, command: str) -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": NS},
            "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never", "containers": [
                {"name": "work", "image": "busybox", "command": ["sh", "-c", command]}]}}}}


def unready_pod(name: str) -> dict[str, Any]:
    """A readiness probe that fails (the simulator's failing-probes annotation: connection refused)."""
    spec = pod(name, "sleep 3600")
    spec["metadata"]["annotations"] = {"ultraplane.io/failing-probes": "app:readiness"}
    spec["spec"]["containers"][0]["readinessProbe"] = {"httpGet": {"path": "/healthz", "port": 8080},
                                                       "periodSeconds": 1, "failureThreshold": 1}
    return spec


def guarded() -> list[dict[str, Any]]:
    """One replica under a PodDisruptionBudget that allows no disruption: its node cannot be drained."""
    return [deployment("guarded", "busybox", "sleep 3600"),
            {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "guarded", "namespace": NS},
             "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "guarded"}}}}]


def stateful(name: str, command: str) -> dict[str, Any]:
    spec = deployment(name, "busybox", command)
    spec["kind"] = "StatefulSet"
    spec["spec"]["serviceName"] = name
    return spec


def apply(c: Cluster, *objs: dict[str, Any]) -> None:
    c.ok("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objs)}))


def container_state(c: Cluster, selector: str) -> list[dict[str, Any]]:
    pods = c.json("get", "pods", "-n", NS, "-l", selector)["items"]
    return [s for p in pods for s in (p.get("status") or {}).get("containerStatuses") or []]


@pytest.fixture(scope="package")
def cluster() -> Iterator[Cluster]:
    with inprocess_cluster("ultraplane-mcp-") as c:
        c.spawn([*ultraplane_command(), "nodes", "--kubeconfig", str(c.kubeconfig), "--count", "2",
                 "--node-type", "m5.large=2", "--crash-loop-backoff", "1", "--max-container-restart-period", "4"],
                "nodes")
        wait_for(lambda: len(c.json("get", "nodes")["items"]) == 2, "2 simulated nodes", 60)
        wait_for(lambda: c.kubectl("get", "serviceaccount", "default", "-n", NS).returncode == 0,
                 "the default ServiceAccount", 60)
        apply(c, WIDGET_CRD, deployment("api", "busybox", "sleep 3600"), deployment("crashy", "busybox", CRASH_COMMAND, config="crashy-config"),
              {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "crashy-config", "namespace": NS},
               "data": {"DB_URL": "postgres://db:5432/app"}},
              pod("hungry", "sleep 3600", {"cpu": "64", "memory": "1Gi"}), pod("resolver", DNS_COMMAND),
              {**pod("picky", "sleep 3600"), "spec": {**pod("picky", "sleep 3600")["spec"],
                                                      "nodeSelector": {"disktype": "ssd"}}},
              job("migrate", JOB_COMMAND), unready_pod("unready"), *guarded(), stateful("ledger", LEDGER_COMMAND),
              {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db-creds", "namespace": NS},
               "stringData": {"password": "hunter2-very-secret"}},
              {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "big", "namespace": NS},
               "data": {"blob": "x" * 150_000}},
              {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "viewer-view", "namespace": NS},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
               "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "viewer"}]})
        wait_for(lambda: c.kubectl("get", "widgets").returncode == 0, "the Widget CRD to be served", 30)
        c.ok("apply", "-f", "-", input=json.dumps({"apiVersion": "example.com/v1", "kind": "Widget",
                                                    "metadata": {"name": "sprocket", "namespace": NS},
                                                    "spec": {"size": 3}}))
        wait_for(lambda: any(s.get("ready") for s in container_state(c, "app=api")), "deployment api ready", 60)
        # the bad rollout: revision 2 of api points at an image whose registry does not resolve
        c.ok("set", "image", "deployment/api", f"app={BAD_IMAGE}", "-n", NS)
        wait_for(lambda: any((s.get("state") or {}).get("waiting", {}).get("reason") in ("ErrImagePull",
                                                                                            "ImagePullBackOff")
                             for s in container_state(c, "app=api")), "api's new pod failing to pull", 60)
        wait_for(lambda: any(s.get("restartCount", 0) >= 2 for s in container_state(c, "app=crashy")),
                 "crashy to crash-loop", 60)
        # a config change after crashy's pod started: diagnose cites it
        c.ok("patch", "configmap", "crashy-config", "-n", NS, "--type", "merge", "-p", '{"data":{"DB_URL":""}}')
        for name in ("resolver", "ledger"):
            wait_for(lambda name=name: any(s.get("restartCount", 0) >= 1 for s in container_state(c, f"app={name}")),
                     f"{name} to restart", 60)
        wait_for(lambda: (c.json("get", "pdb", "guarded", "-n", NS).get("status") or {}).get("currentHealthy") == 1,
                 "guarded's budget to count its pod", 60)
        guarded_node = c.json("get", "pods", "-n", NS, "-l", "app=guarded")["items"][0]["spec"]["nodeName"]
        c.ok("cordon", guarded_node)
        wait_for(lambda: any(cond.get("type") == "Failed" for cond in
                             (c.json("get", "job", "migrate", "-n", NS).get("status") or {}).get("conditions") or []),
                 "the migrate Job to fail", 60)
        yield c


class Peer:
    """One MCP client session to a server, hosted on a private event loop thread."""

    def __init__(self, name: str, open_transport: Callable[[], contextlib.AbstractAsyncContextManager[Any]]) -> None:
        self.name = name
        self.open_transport = open_transport
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name=f"mcp-{name}")
        self.session: ClientSession | None = None
        self.ready: Future[None] = Future()
        self.stop_event: asyncio.Event | None = None
        self.main: Future[None] | None = None

    def start(self, log: Path | None = None) -> Peer:
        self.thread.start()
        self.main = asyncio.run_coroutine_threadsafe(self._main(), self.loop)
        try:
            self.ready.result(CALL_TIMEOUT_S)
        except BaseException as exc:
            self.loop.call_soon_threadsafe(self.loop.stop)
            output = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"MCP session to the {self.name} server failed: {exc!r}\n{output}") from exc
        return self

    async def _main(self) -> None:
        self.stop_event = asyncio.Event()
        try:
            async with self.open_transport() as (read, write), ClientSession(read, write) as session:
                await session.initialize()
                self.session = session
                self.ready.set_result(None)
                await self.stop_event.wait()
        except BaseException as exc:
            if not self.ready.done():
                self.ready.set_exception(exc)
            raise

    def run(self, coro_factory: Callable[[ClientSession], Any]) -> Any:
        assert self.session is not None
        return asyncio.run_coroutine_threadsafe(coro_factory(self.session), self.loop).result(CALL_TIMEOUT_S)

    def call(self, tool: str, **arguments: Any) -> Any:
        return self.run(lambda s: s.call_tool(tool, arguments))

    def text(self, tool: str, **arguments: Any) -> str:
        result = self.call(tool, **arguments)
        assert not result.is_error, f"{tool} failed: {result.content}"
        return result.content[0].text

    def json(self, tool: str, **arguments: Any) -> Any:
        return json.loads(self.text(tool, **arguments))

    def error(self, tool: str, **arguments: Any) -> str:
        result = self.call(tool, **arguments)
        assert result.is_error, f"{tool} was expected to fail: {result.content}"
        return result.content[0].text

    def close(self) -> None:
        if self.stop_event is not None:
            self.loop.call_soon_threadsafe(self.stop_event.set)
        if self.main is not None:
            with contextlib.suppress(Exception):
                self.main.result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def mcp_argv(c: Cluster, audit: Path, *flags: str) -> list[str]:
    return [*ultraplane_command(), "mcp", "--kubeconfig", str(c.kubeconfig), "--audit-log", str(audit), *flags]


def stdio_peer(c: Cluster, audit: Path, *flags: str) -> Peer:
    argv = mcp_argv(c, audit, *flags)
    params = StdioServerParameters(command=argv[0], args=argv[1:], env=child_env())
    errlog = open(audit.with_suffix(".stderr"), "w")  # noqa: SIM115 - closed with the process

    def open_transport() -> contextlib.AbstractAsyncContextManager[Any]:
        return stdio_client(params, errlog=errlog)

    return Peer("stdio", open_transport).start(audit.with_suffix(".stderr"))


@contextlib.contextmanager
def http_server(c: Cluster, audit: Path, *flags: str) -> Iterator[str]:
    port = free_port()
    log = open(audit.with_suffix(".stderr"), "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(mcp_argv(c, audit, "--transport", "http", "--listen", f"127.0.0.1:{port}", *flags),
                            env=child_env(), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/mcp"

    def answers() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"ultraplane mcp exited: {audit.with_suffix('.stderr').read_text()}")
        try:
            httpx2.get(f"http://127.0.0.1:{port}/", timeout=1.0)
            return True
        except httpx2.TransportError:
            return False

    try:
        wait_for(answers, "the MCP HTTP server", 60)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def http_peer(url: str, token: str | None = None) -> Peer:
    """A session over streamable HTTP; with `token`, every request carries it as a bearer token."""
    if token is None:
        return Peer("http", lambda: streamable_http_client(url)).start()

    @contextlib.asynccontextmanager
    async def open_transport() -> Any:
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=300)) as client, \
                streamable_http_client(url, http_client=client) as streams:
            yield streams

    return Peer("http", open_transport).start()


@pytest.fixture(scope="package")
def audit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mcp-audit")


@pytest.fixture(scope="package")
def stdio(cluster: Cluster, audit_dir: Path) -> Iterator[Peer]:
    """Read-only, acting as user "sre" in group system:masters through impersonation (--as/--as-group)."""
    peer = stdio_peer(cluster, audit_dir / "stdio.jsonl", "--as", "sre", "--as-group", "system:masters")
    yield peer
    peer.close()


# HTTP callers in kube's token file format: "ops" may do anything, "viewer" has the `view` role in default
CALLERS = 'viewer-token,viewer,1001\nops-token,ops,1002,"system:masters,ops-team"\n'


@pytest.fixture(scope="package")
def http_url(cluster: Cluster, audit_dir: Path) -> Iterator[str]:
    """The HTTP server: writes enabled, every request authenticated by a caller's token and run as that caller."""
    callers = audit_dir / "callers.csv"
    callers.write_text(CALLERS)
    with http_server(cluster, audit_dir / "http.jsonl", "--allow-write", "--callers", str(callers)) as url:
        yield url


@pytest.fixture(scope="package")
def http(http_url: str) -> Iterator[Peer]:
    peer = http_peer(http_url, "ops-token")
    yield peer
    peer.close()


@pytest.fixture(scope="package")
def viewer(http_url: str) -> Iterator[Peer]:
    peer = http_peer(http_url, "viewer-token")
    yield peer
    peer.close()


@pytest.fixture(scope="package", params=["stdio", "http"])
def peer(request: pytest.FixtureRequest) -> Peer:
    """Each read-only test runs over both transports."""
    return request.getfixturevalue(request.param)

