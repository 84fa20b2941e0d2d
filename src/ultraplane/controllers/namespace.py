"""The namespace controller: a Terminating namespace loses its content, then its `kubernetes` finalizer.

As kube-controller-manager's namespaced-resources deleter: discover every namespaced resource, delete
each collection in the namespace (deletecollection where the resource offers it, else item by item),
count what remains (and which finalizers hold it), write the five deletion conditions to the
namespace's status, and once nothing remains drop `kubernetes` from spec.finalizers through
/finalize, at which point the API server removes the namespace. While content remains the namespace
is re-queued (kube waits for graceful pod deletion the same way).

The API server (registry.finalize_namespace) still runs its own in-process cleanup, so that a bare
`ultraplane apiserver` without controllers does not leave namespaces Terminating for ever; both are
idempotent, whichever finishes first drops the finalizer.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from ultraplane.client.discovery import Resource, discover
from ultraplane.client.http import ApiError, KubeClient
from ultraplane.controllers.base import Controller, InformerFactory

log = logging.getLogger("ultraplane.controllers.namespace")
Obj = dict[str, Any]
NAMESPACES = "/api/v1/namespaces"
FINALIZER = "kubernetes"
RECHECK_S = 1.0
SKIPPED = {("", "events"), ("events.k8s.io", "events")}  # kube deletes these last; they hold nothing


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(kind: str, status: str, reason: str, message: str) -> Obj:
    return {"type": kind, "status": status, "reason": reason, "message": message}


class NamespaceController(Controller):
    name = "namespace"
    workers = 2

    def __init__(self, client: KubeClient, informers: InformerFactory) -> None:
        super().__init__(client, informers)
        self.namespaces = informers.informer(NAMESPACES)
        self.namespaces.add_handler(self.enqueue, lambda old, new: self.enqueue(new), None)

    async def sync(self, key: str) -> None:
        ns = self.namespaces.get(key)
        if ns is None or not ns["metadata"].get("deletionTimestamp"):
            return
        if FINALIZER not in ((ns.get("spec") or {}).get("finalizers") or []):
            return
        try:
            resources = [r for r in await discover(self.client)
                         if r.namespaced and {"list", "delete"} <= r.verbs and (r.group, r.plural) not in SKIPPED]
            discovery = _condition("NamespaceDeletionDiscoveryFailure", "False", "ResourcesDiscovered",
                                   "All resources successfully discovered")
        except (ApiError, OSError) as exc:
            await self._conditions(key, [_condition("NamespaceDeletionDiscoveryFailure", "True", "DiscoveryFailed",
                                                    f"Discovery failed for some groups: {exc}")])
            raise
        errors: list[str] = []
        remaining: dict[str, int] = {}
        held: dict[str, int] = {}
        for resource in resources:
            try:
                await self._delete_all(resource, key)
                left = (await self.client.list(resource.collection(key))).get("items") or []
            except ApiError as exc:
                if exc.code not in (404, 405):
                    errors.append(f"{resource.group_resource}: {exc}")
                continue
            if left:
                remaining[resource.group_resource] = len(left)
                for item in left:
                    for finalizer in item["metadata"].get("finalizers") or []:
                        held[finalizer] = held.get(finalizer, 0) + 1
        conditions = [
            discovery,
            _condition("NamespaceDeletionGroupVersionParsingFailure", "False", "ParsedGroupVersions",
                       "All legacy kube types successfully parsed"),
            _condition("NamespaceDeletionContentFailure", "True", "ContentDeletionFailed",
                       f"Failed to delete all resource types, {len(errors)} remaining: {', '.join(errors)}")
            if errors else _condition("NamespaceDeletionContentFailure", "False", "ContentDeleted",
                                      "All content successfully deleted, may be waiting on finalization"),
            _condition("NamespaceContentRemaining", "True", "SomeResourcesRemain", "Some resources are remaining: "
                       + ", ".join(f"{gr} has {n} resource instances" for gr, n in sorted(remaining.items())))
            if remaining else _condition("NamespaceContentRemaining", "False", "ContentRemoved",
                                         "All content successfully removed"),
            _condition("NamespaceFinalizersRemaining", "True", "SomeFinalizersRemain",
                       "Some content in the namespace has finalizers remaining: "
                       + ", ".join(f"{f} in {n} resource instances" for f, n in sorted(held.items())))
            if held else _condition("NamespaceFinalizersRemaining", "False", "ContentHasNoFinalizers",
                                    "All content-preserving finalizers finished"),
        ]
        if not await self._conditions(key, conditions):
            return  # already gone
        if errors or remaining:
            self.queue.add_after(key, RECHECK_S)
            return
        await self._finalize(key)

    async def _delete_all(self, resource: Resource, namespace: str) -> None:
        if "deletecollection" in resource.verbs:
            await self.client.delete(resource.collection(namespace))
            return
        for item in (await self.client.list(resource.collection(namespace))).get("items") or []:
            try:
                await self.client.delete(resource.item(namespace, item["metadata"]["name"]))
            except ApiError as exc:
                if exc.code != 404:
                    raise

    async def _conditions(self, name: str, conditions: list[Obj]) -> bool:
        """Write the deletion conditions (transition time kept when the status did not change)."""
        try:
            ns = await self.client.get(f"{NAMESPACES}/{name}")
        except ApiError as exc:
            if exc.code == 404:
                return False
            raise
        status = ns.setdefault("status", {})
        old = {c.get("type"): c for c in status.get("conditions") or []}
        merged = [c for c in status.get("conditions") or [] if c.get("type") not in {x["type"] for x in conditions}]
        for cond in conditions:
            previous = old.get(cond["type"])
            same = previous is not None and previous.get("status") == cond["status"]
            cond["lastTransitionTime"] = previous.get("lastTransitionTime") if same and previous else _now()
            merged.append(cond)
        if merged == status.get("conditions"):
            return True
        status["conditions"] = merged
        try:
            await self.client.update(f"{NAMESPACES}/{name}/status", ns)
        except ApiError as exc:
            if exc.code == 404:
                return False
            raise  # 409: retried with the fresh object
        return True

    async def _finalize(self, name: str) -> None:
        try:
            ns = await self.client.get(f"{NAMESPACES}/{name}")
        except ApiError as exc:
            if exc.code == 404:
                return
            raise
        spec = ns.setdefault("spec", {})
        if FINALIZER not in (spec.get("finalizers") or []):
            return
        spec["finalizers"] = [f for f in spec.get("finalizers") or [] if f != FINALIZER]
        try:
            await self.client.update(f"{NAMESPACES}/{name}/finalize", ns)
        except ApiError as exc:
            if exc.code != 404:
                raise
        log.info("namespace %s: content removed, finalizer %s dropped", name, FINALIZER)
