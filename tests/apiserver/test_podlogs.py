"""pods/log through kubectl and the Python client.

The API server runs in a thread of the test process (on the in-process store) so the test can play
the node: it writes container log lines into the server's MemoryLogSource, as a node simulator does.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from tests.apiserver.conftest import Cluster
from tests.harness import free_port
from ultraplane.apiserver.podlogs import MemoryLogSource
from ultraplane.apiserver.run import (
    ApiserverConfig,
    RunningApiserver,
    ensure_pki,
    start_apiserver,
    write_kubeconfig,
)
from ultraplane.apiserver.storage import InProcessBackend
from ultraplane.journal.file import FileJournal
from ultraplane.store import Store


class ServerThread:
    """An API server on its own event loop thread; call() runs a function on that loop."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.api: RunningApiserver | None = None
        self.store: Store | None = None

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(60)

    async def _start(self) -> None:
        data = self.work_dir / "data"
        data.mkdir(parents=True)
        self.store = Store(FileJournal(str(data / "store"), fsync=False))
        await self.store.open()
        files = ensure_pki(data / "pki", "127.0.0.1", "10.96.0.1")
        write_kubeconfig(data / "kubeconfig", f"https://127.0.0.1:{self.port}", files)
        cfg = ApiserverConfig(port=self.port, compaction_interval=0)
        self.api = await start_apiserver(InProcessBackend(self.store), cfg, files)

    def call(self, fn: Callable[[], Any]) -> Any:
        done: Future[Any] = Future()

        def run() -> None:
            try:
                done.set_result(fn())
            except BaseException as exc:  # handed back to the test thread
                done.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return done.result(10)

    def stop(self) -> None:
        async def shutdown() -> None:
            if self.api is not None:
                await self.api.stop()
            if self.store is not None:
                await self.store.close()

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[Cluster, ServerThread]]:
    work = Path(tempfile.mkdtemp(prefix="ultraplane-podlogs-"))
    thread = ServerThread(work)
    try:
        thread.start()
        yield Cluster("inprocess", work, thread.port), thread
    finally:
        thread.stop()
        shutil.rmtree(work, ignore_errors=True)


def source(thread: ServerThread) -> MemoryLogSource:
    assert thread.api is not None and isinstance(thread.api.log_source, MemoryLogSource)
    return thread.api.log_source


def make_pod(cluster: Cluster, ns: str, name: str, containers: list[str], node: str = "n1") -> str:
    cluster.ok("create", "-n", ns, "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"containers": [{"name": c, "image": "busybox"} for c in containers]}}))
    if node:
        cluster.ok("create", "--raw", f"/api/v1/namespaces/{ns}/pods/{name}/binding", "-f", "-", input=json.dumps(
            {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
             "target": {"apiVersion": "v1", "kind": "Node", "name": node}}))
    return cluster.json("get", "pod", name, "-n", ns)["metadata"]["uid"]


def set_statuses(cluster: Cluster, ns: str, name: str, statuses: list[dict[str, Any]]) -> None:
    cluster.ok("patch", "pod", name, "-n", ns, "--subresource=status", "--type=merge", "-p",
               json.dumps({"status": {"phase": "Running", "containerStatuses": statuses}}))


def running(name: str, restarts: int = 0, last: dict | None = None) -> dict[str, Any]:
    status = {"name": name, "image": "busybox", "imageID": "", "ready": True, "restartCount": restarts,
              "state": {"running": {"startedAt": "2026-11-28T00:00:00Z"}},
              "containerID": f"containerd://{name}-{restarts}"}
    if last:
        status["lastState"] = last
    return status


def test_not_scheduled_and_waiting_containers(server: tuple[Cluster, ServerThread]) -> None:
    cluster, _thread = server
    cluster.ok("create", "namespace", "logs-wait")
    make_pod(cluster, "logs-wait", "unscheduled", ["c"], node="")
    out = cluster.kubectl("logs", "unscheduled", "-n", "logs-wait")
    assert out.returncode == 0 and out.stdout == ""

    make_pod(cluster, "logs-wait", "p", ["c"])
    out = cluster.kubectl("logs", "p", "-n", "logs-wait")
    assert out.returncode != 0
    assert 'Error from server (BadRequest): container "c" in pod "p" is waiting to start: ContainerCreating' \
        in out.stderr
    set_statuses(cluster, "logs-wait", "p", [{"name": "c", "image": "busybox", "imageID": "", "ready": False,
                                              "restartCount": 0,
                                              "state": {"waiting": {"reason": "ImagePullBackOff"}}}])
    out = cluster.kubectl("logs", "p", "-n", "logs-wait")
    assert 'container "c" in pod "p" is waiting to start: trying and failing to pull image' in out.stderr


def test_logs_options(server: tuple[Cluster, ServerThread]) -> None:
    cluster, thread = server
    ns = "logs-opts"
    cluster.ok("create", "namespace", ns)
    uid = make_pod(cluster, ns, "app", ["main"])
    set_statuses(cluster, ns, "app", [running("main")])
    logs = source(thread)
    thread.call(lambda: [logs.write(ns, uid, "main", f"line {i}") for i in range(5)])

    assert cluster.ok("logs", "app", "-n", ns) == "".join(f"line {i}\n" for i in range(5))
    assert cluster.ok("logs", "app", "-n", ns, "--tail=2") == "line 3\nline 4\n"
    assert cluster.ok("logs", "app", "-n", ns, "--limit-bytes=8") == "line 0\nl"
    stamped = cluster.ok("logs", "app", "-n", ns, "--timestamps", "--tail=1")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z line 4\n", stamped), stamped
    assert cluster.ok("logs", "app", "-n", ns, "--since=1h", "--tail=1") == "line 4\n"

    bad = cluster.kubectl("logs", "app", "-n", ns, "-c", "nope")
    assert "container nope is not valid for pod app" in bad.stderr
    invalid = cluster.kubectl("get", "--raw", f"/api/v1/namespaces/{ns}/pods/app/log?tailLines=-1")
    assert 'PodLogOptions "app" is invalid: tailLines: Invalid value: -1: must be greater than or equal to 0' \
        in invalid.stderr

    api = client.CoreV1Api(config.new_client_from_config(str(cluster.kubeconfig)))
    assert api.read_namespaced_pod_log("app", ns, tail_lines=1) == "line 4\n"


def test_multiple_containers(server: tuple[Cluster, ServerThread]) -> None:
    cluster, thread = server
    ns = "logs-multi"
    cluster.ok("create", "namespace", ns)
    uid = make_pod(cluster, ns, "duo", ["a", "b"])
    set_statuses(cluster, ns, "duo", [running("a"), running("b")])
    logs = source(thread)
    thread.call(lambda: (logs.write(ns, uid, "a", "from a"), logs.write(ns, uid, "b", "from b")))
    raw = cluster.kubectl("get", "--raw", f"/api/v1/namespaces/{ns}/pods/duo/log")
    assert "a container name must be specified for pod duo, choose one of: [a b]" in raw.stderr
    assert cluster.ok("logs", "duo", "-n", ns, "-c", "b") == "from b\n"
    # kubectl picks the first container itself and says so
    picked = cluster.kubectl("logs", "duo", "-n", ns)
    assert picked.stdout == "from a\n" and 'Defaulted container "a" out of: a, b' in picked.stderr


def test_previous_instance(server: tuple[Cluster, ServerThread]) -> None:
    cluster, thread = server
    ns = "logs-prev"
    cluster.ok("create", "namespace", ns)
    uid = make_pod(cluster, ns, "crashy", ["c"])
    set_statuses(cluster, ns, "crashy", [running("c")])
    missing = cluster.kubectl("logs", "crashy", "-n", ns, "--previous")
    assert 'previous terminated container "c" in pod "crashy" not found' in missing.stderr
    logs = source(thread)
    thread.call(lambda: (logs.write(ns, uid, "c", "first run"), logs.restart(ns, uid, "c"),
                         logs.write(ns, uid, "c", "second run")))
    last = {"terminated": {"exitCode": 1, "reason": "Error", "containerID": "containerd://c-0"}}
    set_statuses(cluster, ns, "crashy", [running("c", restarts=1, last=last)])
    assert cluster.ok("logs", "crashy", "-n", ns, "-p") == "first run\n"
    assert cluster.ok("logs", "crashy", "-n", ns) == "second run\n"


def test_follow_streams_new_lines(server: tuple[Cluster, ServerThread]) -> None:
    cluster, thread = server
    ns = "logs-follow"
    cluster.ok("create", "namespace", ns)
    uid = make_pod(cluster, ns, "tail", ["c"])
    set_statuses(cluster, ns, "tail", [running("c")])
    logs = source(thread)
    thread.call(lambda: logs.write(ns, uid, "c", "before"))
    proc = subprocess.Popen(["kubectl", "--kubeconfig", str(cluster.kubeconfig), "logs", "-f", "tail", "-n", ns],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "before\n"
        thread.call(lambda: logs.write(ns, uid, "c", "after"))
        assert proc.stdout.readline() == "after\n"
        assert proc.poll() is None  # still following
        thread.call(lambda: logs.stop(ns, uid, "c"))
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
