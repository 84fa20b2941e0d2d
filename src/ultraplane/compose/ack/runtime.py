"""The generic ACK reconciler: one informer per kind, a finalizer, ACK's conditions and events.

A `ResourceManager` knows one service's API (sync = create-or-adopt-or-update, delete); this module does the
Kubernetes side the way ACK's runtime does: finalizer `finalizers.<group>/<Kind>`, `status.ackResourceMetadata`
{arn, ownerAccountID, region}, conditions `ACK.ResourceSynced`, `ACK.Terminal` (bad input, not retried until
the spec changes) and `ACK.Recoverable` (retried), and the `services.k8s.aws/deletion-policy: retain`
annotation. Synced resources are re-read every `resync` seconds so out-of-band drift is repaired.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

from ultraplane.client.http import MERGE, ApiError, KubeClient
from ultraplane.client.informer import Informer, object_key

log = logging.getLogger("ultraplane.ack")
Obj = dict[str, Any]
DELETION_POLICY = "services.k8s.aws/deletion-policy"
ADOPTION_POLICY = "services.k8s.aws/adoption-policy"
REGION = "local"
SYNCED, TERMINAL, RECOVERABLE = "ACK.ResourceSynced", "ACK.Terminal", "ACK.Recoverable"


class Terminal(Exception):
    """The spec cannot be satisfied as written (invalid names, immutable fields, foreign ownership)."""


class Recoverable(Exception):
    """A transient failure (server unreachable, dependency busy): retried with backoff."""


@dataclass(frozen=True)
class KindInfo:
    group: str
    version: str
    kind: str
    plural: str
    spec_schema: Obj

    @property
    def path(self) -> str:
        return f"/apis/{self.group}/{self.version}/{self.plural}"

    def collection(self, namespace: str | None) -> str:
        if namespace is None:
            return self.path
        return f"/apis/{self.group}/{self.version}/namespaces/{namespace}/{self.plural}"

    def object_path(self, namespace: str, name: str) -> str:
        return f"/apis/{self.group}/{self.version}/namespaces/{namespace}/{self.plural}/{name}"

    @property
    def finalizer(self) -> str:
        return f"finalizers.{self.group}/{self.kind}"

    def crd(self) -> Obj:
        status = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        return {
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{self.plural}.{self.group}"},
            "spec": {
                "group": self.group, "scope": "Namespaced",
                "names": {"kind": self.kind, "plural": self.plural, "singular": self.kind.lower(),
                          "listKind": f"{self.kind}List", "categories": ["ack", "ultraplane"]},
                "versions": [{
                    "name": self.version, "served": True, "storage": True,
                    "subresources": {"status": {}},
                    "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                        "spec": self.spec_schema, "status": status}}},
                    "additionalPrinterColumns": [
                        {"name": "Synced", "type": "string",
                         "jsonPath": '.status.conditions[?(@.type=="ACK.ResourceSynced")].status'},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}],
                }],
            },
        }


class ResourceManager(Protocol):
    info: KindInfo

    def identity(self, obj: Obj) -> tuple[str, str]:
        """(arn, ownerAccountID) of the resource this object manages."""

    async def sync(self, obj: Obj, controller: AckController) -> Obj:
        """Create, adopt or update the real resource; return the status fields to report."""

    async def delete(self, obj: Obj, controller: AckController) -> None:
        """Remove the real resource (absent already is fine)."""


def owner_marker(obj: Obj) -> str:
    """The tag written on a managed resource so a second object naming the same resource is a conflict."""
    meta = obj["metadata"]
    return f"ultraplane-ack {meta.get('namespace')}/{meta['name']} uid={meta.get('uid')}"


def adopts(obj: Obj) -> bool:
    return (obj["metadata"].get("annotations") or {}).get(ADOPTION_POLICY) in ("adopt", "adopt-or-create")


def _condition(conditions: list[Obj], kind: str, status: str, message: str = "", reason: str = "") -> list[Obj]:
    previous = next((c for c in conditions if c.get("type") == kind), None)
    stamp = previous.get("lastTransitionTime") if previous and previous.get("status") == status else None
    entry = {"type": kind, "status": status,
             "lastTransitionTime": stamp or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if message:
        entry["message"] = message
    if reason:
        entry["reason"] = reason
    return [c for c in conditions if c.get("type") != kind] + [entry]


class AckController:
    def __init__(self, client: KubeClient, managers: list[ResourceManager], resync: float = 5.0,
                 workers: int = 4, namespace: str | None = None) -> None:
        self.client = client
        self.managers = {m.info.kind: m for m in managers}
        self.informers = {m.info.kind: Informer(client, m.info.collection(namespace)) for m in managers}
        self.resync = resync
        self.workers = workers
        self.queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self.pending: set[tuple[str, str]] = set()
        self.timers: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self.reported: set[tuple[str, str, str]] = set()

    def enqueue(self, kind: str, key: str) -> None:
        if (kind, key) not in self.pending:
            self.pending.add((kind, key))
            self.queue.put_nowait((kind, key))

    def enqueue_after(self, delay: float, kind: str, key: str) -> None:
        old = self.timers.pop((kind, key), None)
        if old is not None:
            old.cancel()
        self.timers[(kind, key)] = asyncio.get_running_loop().call_later(delay, self.enqueue, kind, key)

    async def run(self, stop: asyncio.Event) -> None:
        for manager in self.managers.values():
            crd = manager.info.crd()
            await self.client.apply(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"
                                    f"{crd['metadata']['name']}", crd, "ultraplane-ack", force=True)
        for manager in self.managers.values():
            await self._wait_established(f"{manager.info.plural}.{manager.info.group}")
        for kind, informer in self.informers.items():
            informer.add_handler(lambda o, k=kind: self.enqueue(k, object_key(o)),
                                 lambda old, new, k=kind: self._changed(k, old, new), None)
            await informer.start()
        tasks = [asyncio.ensure_future(self._worker()) for _ in range(self.workers)]
        log.info("ack controllers running: %s", ", ".join(self.managers))
        try:
            await stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for timer in self.timers.values():
                timer.cancel()
            for informer in self.informers.values():
                await informer.stop()

    async def _wait_established(self, name: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            crd = await self.client.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
            if any(c.get("type") == "Established" and c.get("status") == "True"
                   for c in (crd.get("status") or {}).get("conditions") or []):
                return
            await asyncio.sleep(0.1)
        raise TimeoutError(f"CRD {name} not established after {timeout:.0f}s")

    def _changed(self, kind: str, old: Obj, new: Obj) -> None:
        # our own status writes change neither generation nor annotations: they need no reconcile
        o, n = old["metadata"], new["metadata"]
        if (o.get("generation") != n.get("generation") or o.get("annotations") != n.get("annotations")
                or n.get("deletionTimestamp") and not o.get("deletionTimestamp")):
            self.enqueue(kind, object_key(new))

    async def _worker(self) -> None:
        while True:
            kind, key = await self.queue.get()
            self.pending.discard((kind, key))
            try:
                await self.reconcile(kind, key)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the controller keeps running; the object is retried
                log.warning("reconcile %s %s failed: %s", kind, key, exc, exc_info=not isinstance(exc, ApiError))
                self.enqueue_after(2.0, kind, key)

    async def event(self, obj: Obj, kind: str, reason: str, message: str) -> None:
        meta = obj["metadata"]
        if (meta.get("uid", ""), reason, message) in self.reported:
            return
        self.reported.add((meta.get("uid", ""), reason, message))
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        try:
            await self.client.create(f"/api/v1/namespaces/{meta['namespace']}/events", {
                "apiVersion": "v1", "kind": "Event",
                "metadata": {"name": f"{meta['name']}.{time.time_ns():x}", "namespace": meta["namespace"]},
                "involvedObject": {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"),
                                   "name": meta["name"], "namespace": meta["namespace"], "uid": meta.get("uid")},
                "reason": reason, "message": message, "type": kind, "count": 1,
                "firstTimestamp": stamp, "lastTimestamp": stamp,
                "source": {"component": "ultraplane-ack"}, "reportingComponent": "ultraplane-ack"})
        except ApiError as exc:
            log.warning("event for %s not recorded: %s", meta["name"], exc)

    async def reconcile(self, kind: str, key: str) -> None:
        manager = self.managers[kind]
        obj = self.informers[kind].get(key)
        if obj is None:
            return
        meta = obj["metadata"]
        path = manager.info.object_path(meta["namespace"], meta["name"])
        finalizers = list(meta.get("finalizers") or [])
        if meta.get("deletionTimestamp"):
            if manager.info.finalizer not in finalizers:
                return
            if (meta.get("annotations") or {}).get(DELETION_POLICY) != "retain":
                try:
                    await manager.delete(obj, self)
                except Terminal as exc:  # e.g. an invalid name: nothing can have been created under it
                    log.info("%s %s: nothing to delete: %s", kind, key, exc)
                except Exception as exc:
                    await self._report(manager, obj, path, {}, exc)
                    self.enqueue_after(2.0, kind, key)
                    return
            finalizers.remove(manager.info.finalizer)
            await self.client.patch(path, {"metadata": {"finalizers": finalizers,
                                                        "resourceVersion": meta["resourceVersion"]}}, content_type=MERGE)
            return
        if manager.info.finalizer not in finalizers:
            obj = await self.client.patch(path, {"metadata": {
                "finalizers": [*finalizers, manager.info.finalizer], "resourceVersion": meta["resourceVersion"]}},
                content_type=MERGE)
        try:
            fields = await manager.sync(obj, self)
        except Exception as exc:
            if not await self._report(manager, obj, path, {}, exc):
                self.enqueue_after(2.0, kind, key)
            return
        await self._report(manager, obj, path, fields, None)
        self.enqueue_after(self.resync, kind, key)

    async def _report(self, manager: ResourceManager, obj: Obj, path: str, fields: Obj,
                      error: Exception | None) -> bool:
        """Write status and conditions; True when the error is terminal (no retry until the spec changes)."""
        status = dict(obj.get("status") or {})
        conditions = list(status.get("conditions") or [])
        terminal = isinstance(error, Terminal)
        if error is None:
            arn, account = manager.identity(obj)
            status.update(fields)
            status["ackResourceMetadata"] = {"arn": arn, "ownerAccountID": account, "region": REGION}
            conditions = [c for c in conditions if c.get("type") not in (TERMINAL, RECOVERABLE)]
            conditions = _condition(conditions, SYNCED, "True", "Resource synced successfully")
        else:
            message = str(error) or type(error).__name__
            kind = TERMINAL if terminal else RECOVERABLE
            other = RECOVERABLE if terminal else TERMINAL
            conditions = [c for c in conditions if c.get("type") != other]
            conditions = _condition(conditions, kind, "True", message, type(error).__name__)
            conditions = _condition(conditions, SYNCED, "False", message)
            await self.event(obj, "Warning", "Terminal" if terminal else "Recoverable", message)
            log.info("%s %s/%s: %s", manager.info.kind, obj["metadata"].get("namespace"),
                     obj["metadata"]["name"], message)
        status["conditions"] = conditions
        if status != (obj.get("status") or {}) or not _same_conditions(status, obj.get("status") or {}):
            try:
                await self.client.patch(path + "/status", {"status": status}, content_type=MERGE)
            except ApiError as exc:
                if exc.code != 404:
                    raise
        return terminal


def _same_conditions(a: Obj, b: Obj) -> bool:
    return a.get("conditions") == b.get("conditions")
