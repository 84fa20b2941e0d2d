"""Shared pieces of the workload-controller tests: a cluster without scheduler, the controllers running
in-process on a thread of their own, and a stand-in kubelet that marks pods Running and Ready through
the API (the tests play the kubelet; there are no nodes running pods)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from tests.apiserver.conftest import Cluster
from ultraplane.client.http import ApiError, KubeClient
from ultraplane.controllers.base import Controller, InformerFactory

Obj = dict[str, Any]
WAIT_S = 30.0
LIFECYCLE_S = 90.0  # starting (informers listed) or stopping the controllers' thread, on a loaded machine


class Running:
    """Controllers (and optionally the stand-in kubelet) on an event loop in a background thread."""

    def __init__(self, cluster: Cluster, factories: list[Callable[[KubeClient, InformerFactory], Controller]],
                 kubelet_namespaces: tuple[str, ...] = ()) -> None:
        self.cluster = cluster
        self.factories = factories
        self.kubelet_namespaces = kubelet_namespaces
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.stop_event: asyncio.Event | None = None
        self.main: Future[None] | None = None
        self.client: KubeClient | None = None
        self.ready_delay = 0.0  # seconds the stand-in kubelet waits before marking a pod Ready
        self.kubelet_paused = False
        self.outcome = "Running"  # or "Succeeded" / "Failed": what the stand-in kubelet makes of each pod
        self.exit_code = 1  # of the container of a pod it fails

    def __enter__(self) -> Running:
        self.thread.start()
        started: Future[None] = Future()
        self.main = asyncio.run_coroutine_threadsafe(self._main(started), self.loop)
        started.result(LIFECYCLE_S)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.stop_event is not None and self.main is not None
        self.loop.call_soon_threadsafe(self.stop_event.set)
        try:
            self.main.result(LIFECYCLE_S)
        except TimeoutError:
            for task in asyncio.all_tasks(self.loop):  # say where it hangs: the whole await chain
                frames, awaited = [], task.get_coro()
                while awaited is not None:
                    frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "ag_frame", None)
                    if frame is not None:
                        frames.append(f"{frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
                    awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "ag_await", None)
                print(f"HANG {task.get_name()} {task._state}: " + " -> ".join(frames), flush=True)  # noqa: SLF001
            raise
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(LIFECYCLE_S)
        self.loop.close()

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(WAIT_S)

    async def _main(self, started: Future[None]) -> None:
        self.stop_event = asyncio.Event()
        self.client = await KubeClient.from_kubeconfig(self.cluster.kubeconfig)
        informers = InformerFactory(self.client)
        controllers = [factory(self.client, informers) for factory in self.factories]
        await informers.start()
        await informers.wait_synced()
        tasks = [asyncio.ensure_future(c.run(self.stop_event)) for c in controllers]
        tasks += [asyncio.ensure_future(self._kubelet(ns)) for ns in self.kubelet_namespaces]
        started.set_result(None)
        await self.stop_event.wait()
        for task in tasks[len(controllers):]:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await informers.stop()
        await self.client.close()

    async def _kubelet(self, namespace: str) -> None:
        """Marks each new pod of the namespace Running + Ready (after ready_delay), as a kubelet would."""
        assert self.client is not None
        seen: set[str] = set()
        version = ""
        while True:
            try:
                if not version:
                    listed = await self.client.list(f"/api/v1/namespaces/{namespace}/pods")
                    version = listed["metadata"]["resourceVersion"]
                    for pod in listed.get("items") or []:
                        self._maybe_run(namespace, pod, seen)
                async for event in self.client.watch(f"/api/v1/namespaces/{namespace}/pods",
                                                     {"resourceVersion": version}):
                    obj = event.get("object") or {}
                    version = (obj.get("metadata") or {}).get("resourceVersion") or version
                    if event.get("type") in ("ADDED", "MODIFIED"):
                        self._maybe_run(namespace, obj, seen)
            except ApiError:
                version = ""
            except asyncio.CancelledError:
                raise
            await asyncio.sleep(0.1)

    def _maybe_run(self, namespace: str, pod: Obj, seen: set[str]) -> None:
        uid = pod["metadata"]["uid"]
        if uid in seen or pod["metadata"].get("deletionTimestamp") or self.kubelet_paused:
            return
        if (pod.get("status") or {}).get("phase") in ("Running", "Succeeded", "Failed"):
            return
        seen.add(uid)
        asyncio.ensure_future(self._run_pod(namespace, pod["metadata"]["name"]))

    async def _run_pod(self, namespace: str, name: str) -> None:
        assert self.client is not None
        if self.ready_delay:
            await asyncio.sleep(self.ready_delay)
        try:
            if self.outcome == "Running":
                await mark(self.client, namespace, name, "Running", ready=True)
            else:
                await mark(self.client, namespace, name, self.outcome,
                           exit_code=0 if self.outcome == "Succeeded" else self.exit_code)
        except ApiError:
            pass


async def mark(client: KubeClient, namespace: str, name: str, phase: str, ready: bool = False,
               exit_code: int | None = None, conditions: tuple[str, ...] = ()) -> None:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    status: Obj = {"phase": phase, "conditions": [
        {"type": "Ready", "status": "True" if ready else "False", "lastTransitionTime": now},
        *({"type": c, "status": "True", "lastTransitionTime": now} for c in conditions)]}
    if phase == "Running":
        status["startTime"] = now
    if exit_code is not None:
        status["containerStatuses"] = [{"name": "c", "image": "busybox", "imageID": "", "ready": False,
                                        "restartCount": 0, "state": {"terminated": {
                                            "exitCode": exit_code, "reason": "Completed" if exit_code == 0
                                            else "Error", "finishedAt": now}}}]
    await client.patch(f"/api/v1/namespaces/{namespace}/pods/{name}/status", {"status": status})


def eventually(check: Callable[[], Any], timeout: float = WAIT_S, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except AssertionError as exc:
            last = exc
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s; last: {last!r}")


def kget(cluster: Cluster, *args: str) -> Obj:
    return json.loads(cluster.ok("get", *args, "-o", "json"))


def apply(cluster: Cluster, manifest: Obj, namespace: str) -> str:
    return cluster.ok("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))


def container(image: str = "busybox:1.36") -> Obj:
    return {"name": "c", "image": image}
