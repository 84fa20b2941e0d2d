"""The garbage collector: objects whose owners are gone go too; Foreground and Orphan deletion finish here.

As kube-controller-manager's: one informer ("monitor") per discovered resource that can be listed,
watched and deleted (events excepted; rediscovered every 30 s so custom resources join), and a graph
of ownerReferences kept by uid: `nodes` (uid -> what we know of the object) and `dependents`
(owner uid -> dependent uids, kept while dependents still point at the owner, even after it is gone).
A work queue of uids does what kube's attemptToDelete and attemptToOrphan workers do:

* an object with ownerReferences is classified against each owner (looked up in the graph, else with a
  live GET): *solid* (exists), *dangling* (404 or another uid) or *waiting* (being deleted with the
  `foregroundDeletion` finalizer). Solid owners left: the dangling / waiting references are removed.
  None: the object is deleted (uid precondition), in Foreground if an owner is waiting for it and it
  has dependents itself, which is how foreground deletion cascades down the tree.
* an owner being deleted with `orphan`: its uid is removed from each dependent's ownerReferences, then
  the finalizer is removed.
* an owner being deleted with `foregroundDeletion`: its dependents are queued (and so deleted); once
  none with blockOwnerDeletion is left, the finalizer is removed and the API server deletes the owner.

Patches are JSON patches with `test` operations (uid, and the list being replaced), so they work on
custom resources and never overwrite a concurrent change: a failed test is retried from the fresh cache.

Like kube's metadata-only informers, the collector keeps no more than metadata: a collection another
controller already follows (pods, replicasets, ...) is read from that shared informer at no extra cost;
any other gets a monitor of its own that keeps only what the graph needs (uid, name, namespace,
ownerReferences, finalizers, deletionTimestamp, resourceVersion, kind/apiVersion). Graph nodes have slots.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import dataclass
from typing import Any

from ultraplane.client.discovery import Resource, by_kind, discover, group_of
from ultraplane.client.http import JSON_PATCH, ApiError, KubeClient
from ultraplane.client.informer import Informer
from ultraplane.controllers.base import InformerFactory, WorkQueue

log = logging.getLogger("ultraplane.controllers.garbagecollector")
Obj = dict[str, Any]
IGNORED = {("", "events"), ("events.k8s.io", "events")}  # kube's GC ignoredResources
REDISCOVERY_S = 30.0
ORPHAN = "orphan"
FOREGROUND = "foregroundDeletion"
ABSENT_CACHE_SIZE = 500  # kube's absentOwnerCache size
KEPT_METADATA = ("name", "namespace", "uid", "resourceVersion", "ownerReferences", "finalizers", "deletionTimestamp")


def metadata_only(obj: Obj) -> Obj:
    """What the collector needs of an object (kube's GC watches PartialObjectMetadata)."""
    meta = obj.get("metadata") or {}
    slim: Obj = {"metadata": {k: meta[k] for k in KEPT_METADATA if k in meta}}
    if "kind" in obj:  # interned: one string for all objects of a kind
        slim["kind"] = sys.intern(obj["kind"])
    if "apiVersion" in obj:
        slim["apiVersion"] = sys.intern(obj["apiVersion"])
    return slim


@dataclass(slots=True)
class Node:
    resource: Resource
    namespace: str
    name: str
    owners: list[Obj]
    deleting: bool = False
    finalizers: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """The object's key in its resource's informer ("ns/name" or "name")."""
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


def _state(meta: Obj) -> tuple[tuple[str, ...], bool, tuple[str, ...]]:
    owners = tuple(r.get("uid", "") for r in meta.get("ownerReferences") or [])
    return owners, bool(meta.get("deletionTimestamp")), tuple(meta.get("finalizers") or [])


class GarbageCollector:
    name = "garbagecollector"
    workers = 20  # kube's --concurrent-gc-syncs

    def __init__(self, client: KubeClient, informers: InformerFactory) -> None:
        self.client = client
        self.informers = informers
        self.queue = WorkQueue()
        self.monitors: dict[tuple[str, str], Informer] = {}
        self.own: list[Informer] = []  # the metadata-only monitors we started (not shared)
        self.kinds: dict[tuple[str, str], Resource] = {}
        self.nodes: dict[str, Node] = {}
        self.dependents: dict[str, set[str]] = {}
        self.deleted = 0
        # owner uids a live GET found gone (kube's absentOwnerCache): their other dependents skip the GET
        self.absent: dict[str, None] = {}

    # ------------------------------------------------------------------ monitors and the graph
    async def sync_monitors(self) -> None:
        resources = [r for r in await discover(self.client)
                     if {"list", "watch", "delete"} <= r.verbs and (r.group, r.plural) not in IGNORED]
        self.kinds = by_kind(resources)
        added = []
        for resource in resources:
            ident = (resource.group, resource.plural)
            if ident in self.monitors:
                continue
            # a full informer another controller already follows costs nothing more; otherwise metadata only
            informer = self.informers.informers.get((resource.collection(), ()))
            if informer is None:
                informer = Informer(self.client, resource.collection(), transform=metadata_only)
                self.own.append(informer)
            informer.add_handler(lambda obj, r=resource: self.observe(r, obj),
                                 lambda old, new, r=resource: self.observe(r, new),
                                 lambda obj, r=resource: self.forget(obj))
            self.monitors[ident] = informer
            added.append((resource, informer))
        for _resource, informer in added:
            await informer.start()
        for resource, informer in added:
            try:
                await asyncio.wait_for(informer.wait_synced(), 60)
            except (TimeoutError, ApiError, OSError) as exc:
                log.warning("monitor for %s did not sync: %s", resource.group_resource, exc)
                continue
            for obj in list(informer.store.values()):  # a shared informer synced before our handler came
                self.observe(resource, obj)

    def observe(self, resource: Resource, obj: Obj) -> None:
        meta = obj.get("metadata") or {}
        uid = meta.get("uid")
        if not uid:
            return
        node = self.nodes.get(uid)
        old_state = _state({"ownerReferences": node.owners, "deletionTimestamp": node.deleting,
                            "finalizers": list(node.finalizers)}) if node else None
        owners = list(meta.get("ownerReferences") or [])
        if node is None:
            node = self.nodes[uid] = Node(resource, meta.get("namespace", ""), meta.get("name", ""), [])
        for ref in node.owners:
            self._unlink(ref.get("uid", ""), uid)
        node.owners = owners
        for ref in owners:
            self.dependents.setdefault(ref.get("uid", ""), set()).add(uid)
        node.deleting = bool(meta.get("deletionTimestamp"))
        node.finalizers = tuple(meta.get("finalizers") or [])
        new_state = _state(meta)
        if new_state == old_state:
            return  # nothing the collector acts on changed (most pod status updates)
        if owners or (node.deleting and {ORPHAN, FOREGROUND} & set(node.finalizers)):
            self.queue.add(uid)
        if node.deleting and FOREGROUND in node.finalizers:
            for dep in self.dependents.get(uid, ()):
                self.queue.add(dep)

    def forget(self, obj: Obj) -> None:
        uid = (obj.get("metadata") or {}).get("uid")
        node = self.nodes.pop(uid, None) if uid else None
        if node is None:
            return
        for ref in node.owners:
            owner = ref.get("uid", "")
            self._unlink(owner, uid)
            if owner in self.nodes and self.nodes[owner].deleting:
                self.queue.add(owner)  # a foreground owner may be waiting for this one
        for dep in self.dependents.get(uid, ()):
            self.queue.add(dep)  # their owner is gone

    def _unlink(self, owner: str, dependent: str) -> None:
        deps = self.dependents.get(owner)
        if deps is not None:
            deps.discard(dependent)
            if not deps:
                del self.dependents[owner]

    def current(self, node: Node) -> Obj | None:
        informer = self.monitors.get((node.resource.group, node.resource.plural))
        return informer.get(node.key) if informer else None

    # ------------------------------------------------------------------ workers
    async def run(self, stop: asyncio.Event) -> None:
        await self.sync_monitors()
        workers = [asyncio.ensure_future(self._worker()) for _ in range(self.workers)]
        try:
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), REDISCOVERY_S)
                except TimeoutError:
                    try:
                        await self.sync_monitors()
                    except (ApiError, OSError) as exc:
                        log.warning("rediscovery: %s", exc)
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            self.queue.shutdown()
            if stop.is_set():  # shutting down; a run that failed is restarted and keeps its monitors
                await asyncio.gather(*(informer.stop() for informer in self.own), return_exceptions=True)

    async def _worker(self) -> None:
        while True:
            uid = await self.queue.get()
            try:
                await self.sync(uid)
                self.queue.forget(uid)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.info("garbage collecting %s: %s", uid, exc)
                self.queue.add_rate_limited(uid)
            finally:
                self.queue.done(uid)

    async def sync(self, uid: str) -> None:
        node = self.nodes.get(uid)
        obj = self.current(node) if node else None
        if node is None or obj is None or obj["metadata"].get("uid") != uid:
            return
        meta = obj["metadata"]
        finalizers = meta.get("finalizers") or []
        if meta.get("deletionTimestamp"):
            if ORPHAN in finalizers:
                await self.orphan_dependents(uid)
                await self.remove_finalizer(node, obj, ORPHAN)
            elif FOREGROUND in finalizers:
                await self.finish_foreground(node, obj)
            return
        refs = meta.get("ownerReferences") or []
        if not refs:
            return
        solid, dangling, waiting = [], [], []
        for ref in refs:
            state = await self.owner_state(ref, node.namespace)
            {"solid": solid, "dangling": dangling, "waiting": waiting}[state].append(ref)
        if solid:
            if dangling or waiting:
                gone = {r.get("uid") for r in dangling + waiting}
                await self.set_owner_refs(node, obj, [r for r in refs if r.get("uid") not in gone])
            return
        has_dependents = any(d in self.nodes for d in self.dependents.get(uid, ()))
        if waiting and has_dependents:
            policy = "Foreground"
        elif ORPHAN in finalizers:
            policy = "Orphan"
        elif FOREGROUND in finalizers:
            policy = "Foreground"
        else:
            policy = "Background"
        await self.delete(node, uid, policy)

    async def owner_state(self, ref: Obj, namespace: str) -> str:
        owner = self.nodes.get(ref.get("uid", ""))
        if owner is not None:
            return "waiting" if owner.deleting and FOREGROUND in owner.finalizers else "solid"
        if ref.get("uid", "") in self.absent:
            return "dangling"
        resource = self.kinds.get((group_of(ref.get("apiVersion", "")), ref.get("kind", "")))
        if resource is None:
            raise LookupError(f"no resource for ownerReference {ref.get('apiVersion')}/{ref.get('kind')}")
        try:
            live = await self.client.get(resource.item(namespace if resource.namespaced else "", ref.get("name", "")))
        except ApiError as exc:
            if exc.code == 404:
                self._remember_absent(ref.get("uid", ""))
                return "dangling"
            raise
        meta = live.get("metadata") or {}
        if meta.get("uid") != ref.get("uid"):
            self._remember_absent(ref.get("uid", ""))
            return "dangling"
        if meta.get("deletionTimestamp") and FOREGROUND in (meta.get("finalizers") or []):
            return "waiting"
        return "solid"

    def _remember_absent(self, uid: str) -> None:
        self.absent[uid] = None
        if len(self.absent) > ABSENT_CACHE_SIZE:  # drop the oldest (dicts keep insertion order)
            del self.absent[next(iter(self.absent))]

    async def finish_foreground(self, node: Node, obj: Obj) -> None:
        uid = obj["metadata"]["uid"]
        blocking = False
        for dep_uid in list(self.dependents.get(uid, ())):
            dep = self.nodes.get(dep_uid)
            if dep is None:
                continue
            self.queue.add(dep_uid)  # it will see its owner waiting and go
            if any(r.get("uid") == uid and r.get("blockOwnerDeletion") for r in dep.owners):
                blocking = True
        if not blocking:
            await self.remove_finalizer(node, obj, FOREGROUND)

    async def orphan_dependents(self, owner_uid: str) -> None:
        for dep_uid in list(self.dependents.get(owner_uid, ())):
            dep = self.nodes.get(dep_uid)
            dep_obj = self.current(dep) if dep else None
            if dep is None or dep_obj is None:
                continue
            refs = dep_obj["metadata"].get("ownerReferences") or []
            await self.set_owner_refs(dep, dep_obj, [r for r in refs if r.get("uid") != owner_uid])

    # ------------------------------------------------------------------ writes
    async def set_owner_refs(self, node: Node, obj: Obj, refs: list[Obj]) -> None:
        await self._set_meta_list(node, obj, "ownerReferences", refs)

    async def remove_finalizer(self, node: Node, obj: Obj, finalizer: str) -> None:
        await self._set_meta_list(node, obj, "finalizers",
                                  [f for f in obj["metadata"].get("finalizers") or [] if f != finalizer])

    async def _set_meta_list(self, node: Node, obj: Obj, field: str, value: list[Any]) -> None:
        """A JSON patch of metadata.<field> that applies only to this object as we saw it (uid and the
        field's current value are tested), emptying by removing the field."""
        meta = obj["metadata"]
        if value == (meta.get(field) or []):
            return
        ops: list[Obj] = [{"op": "test", "path": "/metadata/uid", "value": meta["uid"]},
                          {"op": "test", "path": f"/metadata/{field}", "value": meta.get(field)}]
        ops.append({"op": "replace", "path": f"/metadata/{field}", "value": value} if value
                   else {"op": "remove", "path": f"/metadata/{field}"})
        await self._patch(node, ops)

    async def _patch(self, node: Node, ops: list[Obj]) -> None:
        try:
            await self.client.patch(node.resource.item(node.namespace, node.name), ops, content_type=JSON_PATCH)
        except ApiError as exc:
            if exc.code != 404:
                raise

    async def delete(self, node: Node, uid: str, policy: str) -> None:
        try:
            await self.client.delete(node.resource.item(node.namespace, node.name), {
                "apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": policy,
                "preconditions": {"uid": uid}})
        except ApiError as exc:
            if exc.code not in (404, 409):
                raise
            return
        self.deleted += 1
        log.info("deleted %s %s/%s (owners gone; propagation %s)", node.resource.kind, node.namespace, node.name,
                 policy)


def garbage_collector(client: KubeClient, informers: InformerFactory, _options: Any) -> GarbageCollector:
    return GarbageCollector(client, informers)
