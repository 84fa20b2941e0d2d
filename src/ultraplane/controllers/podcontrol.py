"""What the workload controllers share: expectations, events, owner references, pod state, claiming.

These mirror kube's pkg/controller helpers: `Expectations` is ControllerExpectations (with the
UID-tracking deletions of the ReplicaSet controller), `EventRecorder` writes core/v1 Events as
client-go's recorder does for kube-controller-manager, `claim` is the ControllerRefManager's
adopt/release pass, and the pod predicates are the ones kube's controllers count with.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from ultraplane.apiserver.selectors import LabelSelector
from ultraplane.client.http import MERGE, ApiError, KubeClient
from ultraplane.client.informer import Informer, object_key

log = logging.getLogger("ultraplane.controllers")
Obj = dict[str, Any]
EXPECTATIONS_TTL_S = 300.0  # kube's ExpectationsTimeout: stale expectations never block a controller forever


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def rfc3339(when: dt.datetime | None = None) -> str:
    return (when or now_utc()).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


# ---------------------------------------------------------------------- expectations
class Expectations:
    """How many creations and which deletions a controller still waits to see in its informer.

    While a key has unmet expectations its sync does not create or delete again, so a lagging informer
    never causes a second burst of pods. Records expire after five minutes, as kube's do."""

    def __init__(self) -> None:
        self.adds: dict[str, int] = {}
        self.deletes: dict[str, set[str]] = {}
        self.stamp: dict[str, float] = {}

    def satisfied(self, key: str) -> bool:
        if key not in self.stamp:
            return True
        if self.adds.get(key, 0) <= 0 and not self.deletes.get(key):
            return True
        return time.monotonic() - self.stamp[key] > EXPECTATIONS_TTL_S

    def expect(self, key: str, adds: int = 0, deletes: Iterable[str] = ()) -> None:
        self.adds[key] = adds
        self.deletes[key] = set(deletes)
        self.stamp[key] = time.monotonic()

    def creation_observed(self, key: str, count: int = 1) -> None:
        if key in self.adds:
            self.adds[key] -= count

    def deletion_observed(self, key: str, pod_key: str) -> None:
        pending = self.deletes.get(key)
        if pending is not None:
            pending.discard(pod_key)

    def forget(self, key: str) -> None:
        self.adds.pop(key, None)
        self.deletes.pop(key, None)
        self.stamp.pop(key, None)


# ---------------------------------------------------------------------- events
class EventRecorder:
    """core/v1 Events as kube-controller-manager's recorders write them (source.component = the
    controller's name), sent in the background so a sync never waits for its events.

    As client-go's EventCorrelator, a repeat of an event (same object, type, reason and message)
    within ten minutes is not a new Event: the first one's count and lastTimestamp are patched, so
    `kubectl describe` shows "(x5 over 2m)". From the tenth distinct message of one (object, type,
    reason) in ten minutes on, they go into a single "(combined from similar events): <latest>"
    Event (the aggregator). The last 4096 keys are remembered."""

    CACHE_SIZE = 4096
    REPEAT_WINDOW_S = 600.0
    SIMILAR_MAX = 10

    def __init__(self, client: KubeClient, component: str) -> None:
        self.client = client
        self.component = component
        self.pending: set[asyncio.Task[None]] = set()
        # (uid, type, reason, message) -> [namespace, event name, count, first seen, last send]
        self.seen: OrderedDict[tuple[str, str, str, str], list[Any]] = OrderedDict()
        # (uid, type, reason) -> [window start, distinct messages seen in it]
        self.similar: OrderedDict[tuple[str, str, str], list[Any]] = OrderedDict()

    def event(self, obj: Obj, kind: str, reason: str, message: str) -> None:
        meta = obj.get("metadata") or {}
        namespace = meta.get("namespace") or "default"
        stamp = rfc3339()
        now = time.monotonic()
        key = (meta.get("uid", ""), kind, reason, message)
        similar = self.similar.get(key[:3])
        if similar is None or now - similar[0] >= self.REPEAT_WINDOW_S:
            similar = self.similar[key[:3]] = [now, set()]
            if len(self.similar) > self.CACHE_SIZE:
                self.similar.popitem(last=False)
        similar[1].add(message)
        if len(similar[1]) >= self.SIMILAR_MAX:
            message = f"(combined from similar events): {message}"
            key = (*key[:3], "")  # one aggregate Event per (object, type, reason)
        previous = self.seen.get(key)
        if previous is not None and now - previous[3] < self.REPEAT_WINDOW_S:
            previous[2] += 1
            self.seen.move_to_end(key)
            previous[4] = self._spawn(self._repeat(previous[4], namespace, previous[1], previous[2], stamp,
                                                   message))
            return
        name = f"{meta.get('name', '')}.{time.time_ns():x}"
        body = {"apiVersion": "v1", "kind": "Event", "metadata": {"name": name, "namespace": namespace},
                "involvedObject": {"apiVersion": obj.get("apiVersion", ""), "kind": obj.get("kind", ""),
                                   "namespace": meta.get("namespace", ""), "name": meta.get("name", ""),
                                   "uid": meta.get("uid", ""), "resourceVersion": meta.get("resourceVersion", "")},
                "reason": reason, "message": message, "type": kind, "count": 1,
                "source": {"component": self.component}, "firstTimestamp": stamp, "lastTimestamp": stamp,
                "reportingComponent": self.component, "reportingInstance": ""}
        self.seen[key] = [namespace, name, 1, now, self._spawn(self._create(namespace, body))]
        if len(self.seen) > self.CACHE_SIZE:
            self.seen.popitem(last=False)

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)
        return task

    async def _create(self, namespace: str, body: Obj) -> None:
        try:
            await self.client.create(f"/api/v1/namespaces/{namespace}/events", body)
        except (ApiError, OSError, TimeoutError) as exc:
            log.debug("%s: event %s not recorded: %s", self.component, body["reason"], exc)

    async def _repeat(self, before: asyncio.Task[None], namespace: str, name: str, count: int, stamp: str,
                      message: str) -> None:
        await asyncio.wait([before])  # the Event must exist before its count can go up
        try:
            await self.client.patch(f"/api/v1/namespaces/{namespace}/events/{name}",
                                    {"count": count, "lastTimestamp": stamp, "message": message},
                                    content_type=MERGE)
        except (ApiError, OSError, TimeoutError) as exc:
            log.debug("%s: event %s not updated: %s", self.component, name, exc)


# ---------------------------------------------------------------------- owners
def controller_ref(obj: Obj) -> Obj | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return ref
    return None


def owner_key(obj: Obj, kind: str) -> str | None:
    """"namespace/name" of the object's controller when it is a `kind`, else None."""
    ref = controller_ref(obj)
    if ref is None or ref.get("kind") != kind:
        return None
    return f"{obj['metadata'].get('namespace', '')}/{ref.get('name', '')}"


class OwnedPodHandlers:
    """Pod informer handlers for a controller whose pods carry its controller reference (``owner_kind``):
    every event enqueues the owner, and creations and deletions settle its expectations (kube's
    addPod / updatePod / deletePod of the DaemonSet, Job and StatefulSet controllers)."""

    owner_kind: str
    expectations: Expectations
    queue: Any  # the Controller's WorkQueue

    def _owner_key(self, pod: Obj) -> str | None:
        return owner_key(pod, self.owner_kind)

    def _pod_added(self, pod: Obj) -> None:
        key = self._owner_key(pod)
        if key is not None:
            self.expectations.creation_observed(key)
            self.queue.add(key)

    def _pod_changed(self, pod: Obj) -> None:
        key = self._owner_key(pod)
        if key is not None:
            self.queue.add(key)

    def _pod_deleted(self, pod: Obj) -> None:
        key = self._owner_key(pod)
        if key is not None:
            self.expectations.deletion_observed(key, object_key(pod))
            self.queue.add(key)


def owner_ref(owner: Obj, api_version: str, kind: str) -> Obj:
    meta = owner["metadata"]
    return {"apiVersion": api_version, "kind": kind, "name": meta["name"], "uid": meta["uid"],
            "controller": True, "blockOwnerDeletion": True}


def pod_from_template(template: Obj, owner: Obj, api_version: str, kind: str) -> Obj:
    """GetPodFromTemplate: the template's labels, annotations, finalizers and spec, owned by `owner`."""
    tmeta = template.get("metadata") or {}
    meta: Obj = {"labels": dict(tmeta.get("labels") or {}),
                 "ownerReferences": [owner_ref(owner, api_version, kind)]}
    if tmeta.get("annotations"):
        meta["annotations"] = dict(tmeta["annotations"])
    if tmeta.get("finalizers"):
        meta["finalizers"] = list(tmeta["finalizers"])
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": _copy(template.get("spec") or {})}


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


deep_copy = _copy


# ---------------------------------------------------------------------- pod state
def is_terminating(obj: Obj) -> bool:
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


def phase(pod: Obj) -> str:
    return (pod.get("status") or {}).get("phase") or "Pending"


def is_active(pod: Obj) -> bool:
    """FilterActivePods: not finished and not being deleted."""
    return phase(pod) not in ("Succeeded", "Failed") and not is_terminating(pod)


def ready_condition(pod: Obj) -> Obj | None:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return cond
    return None


def is_ready(pod: Obj) -> bool:
    cond = ready_condition(pod)
    return cond is not None and cond.get("status") == "True"


def is_available(pod: Obj, min_ready_seconds: int, now: dt.datetime) -> bool:
    """podutil.IsPodAvailable: Ready, and Ready for at least minReadySeconds."""
    cond = ready_condition(pod)
    if cond is None or cond.get("status") != "True":
        return False
    if min_ready_seconds <= 0:
        return True
    since = parse_time(cond.get("lastTransitionTime"))
    return since is not None and since + dt.timedelta(seconds=min_ready_seconds) <= now


def seconds_until_available(pod: Obj, min_ready_seconds: int, now: dt.datetime) -> float | None:
    cond = ready_condition(pod)
    if cond is None or cond.get("status") != "True" or min_ready_seconds <= 0:
        return None
    since = parse_time(cond.get("lastTransitionTime"))
    if since is None:
        return None
    left = (since + dt.timedelta(seconds=min_ready_seconds) - now).total_seconds()
    return left if left > 0 else None


# ---------------------------------------------------------------------- indexes
class NamespaceIndex:
    """Objects of one informer grouped by namespace, and by controller owner, kept current by the informer's
    own handlers: a sync looks at its namespace, or at its own objects plus the orphans it may adopt,
    and not at the whole cluster. One per informer (`namespace_index`)."""

    def __init__(self, informer: Informer) -> None:
        self.by_namespace: dict[str, dict[str, Obj]] = defaultdict(dict)
        self.by_owner: dict[str, dict[str, Obj]] = defaultdict(dict)  # controller uid -> key -> object
        self.orphans: dict[str, dict[str, Obj]] = defaultdict(dict)  # namespace -> key -> object
        self._owner_of: dict[str, str] = {}  # key -> controller uid ("" for an orphan)
        for obj in informer.store.values():
            self._put(obj)
        informer.add_handler(self._put, lambda old, new: self._put(new), self._drop)

    def _put(self, obj: Obj) -> None:
        key = object_key(obj)
        ns = (obj.get("metadata") or {}).get("namespace", "")
        self.by_namespace[ns][key] = obj
        owner = (controller_ref(obj) or {}).get("uid") or ""
        previous = self._owner_of.get(key)
        if previous is not None and previous != owner:
            self._unlink(key, ns, previous)
        self._owner_of[key] = owner
        if owner:
            self.by_owner[owner][key] = obj
        else:
            self.orphans[ns][key] = obj

    def _unlink(self, key: str, ns: str, owner: str) -> None:
        buckets, name = (self.by_owner, owner) if owner else (self.orphans, ns)
        bucket = buckets.get(name)
        if bucket is not None:
            bucket.pop(key, None)
            if not bucket:
                del buckets[name]

    def _drop(self, obj: Obj) -> None:
        key = object_key(obj)
        ns = (obj.get("metadata") or {}).get("namespace", "")
        bucket = self.by_namespace.get(ns)
        if bucket is not None:
            bucket.pop(key, None)
            if not bucket:
                del self.by_namespace[ns]
        owner = self._owner_of.pop(key, None)
        if owner is not None:
            self._unlink(key, ns, owner)

    def list(self, namespace: str) -> list[Obj]:
        return list(self.by_namespace.get(namespace, {}).values())

    def owned_by(self, uid: str) -> list[Obj]:
        return list(self.by_owner.get(uid, {}).values())

    def claim_candidates(self, namespace: str, uid: str) -> list[Obj]:
        """What ControllerRefManager.Claim can act on for the owner with this uid: its own objects and the
        namespace's orphans (objects controlled by another owner are skipped by Claim anyway)."""
        return [*self.by_owner.get(uid, {}).values(), *self.orphans.get(namespace, {}).values()]


def namespace_index(informer: Informer) -> NamespaceIndex:
    index = getattr(informer, "namespace_index", None)
    if index is None:
        index = NamespaceIndex(informer)
        informer.namespace_index = index  # type: ignore[attr-defined]
    return index


# ---------------------------------------------------------------------- claiming
async def claim(client: KubeClient, owner: Obj, api_version: str, kind: str, candidates: Iterable[Obj],
                selector: LabelSelector, path_of: Callable[[Obj], str],
                fresh_owner: Callable[[], Any] | None = None) -> list[Obj]:
    """ControllerRefManager.Claim: keep owned objects the selector still matches, release (orphan) those
    it no longer matches, adopt matching orphans. Adoption re-reads the owner first (kube's canAdopt:
    an owner being deleted, or replaced by one with another UID, adopts nothing)."""
    uid = owner["metadata"]["uid"]
    deleting = is_terminating(owner)
    claimed: list[Obj] = []
    can_adopt: bool | None = None
    for obj in candidates:
        ref = controller_ref(obj)
        labels = (obj.get("metadata") or {}).get("labels") or {}
        if ref is not None:
            if ref.get("uid") != uid:
                continue
            if selector.matches(labels):
                claimed.append(obj)
            elif not deleting:
                await _patch_refs(client, path_of(obj), obj,
                                  [{"$patch": "delete", "uid": uid}])
            continue
        if deleting or is_terminating(obj) or not selector.matches(labels):
            continue
        if can_adopt is None:
            can_adopt = await _owner_still_current(owner, fresh_owner)
        if not can_adopt:
            continue
        try:
            adopted = await _patch_refs(client, path_of(obj), obj, [owner_ref(owner, api_version, kind)])
        except ApiError as exc:
            if exc.code in (404, 409, 422):
                continue
            raise
        if adopted is not None:
            claimed.append(adopted)
    return claimed


async def _owner_still_current(owner: Obj, fresh_owner: Callable[[], Any] | None) -> bool:
    if fresh_owner is None:
        return True
    try:
        fresh = await fresh_owner()
    except ApiError as exc:
        if exc.code == 404:
            return False
        raise
    return fresh["metadata"].get("uid") == owner["metadata"]["uid"] and not is_terminating(fresh)


async def _patch_refs(client: KubeClient, path: str, obj: Obj, refs: list[Obj]) -> Obj | None:
    body = {"metadata": {"ownerReferences": refs, "uid": obj["metadata"]["uid"]}}
    try:
        return await client.patch(path, body)
    except ApiError as exc:
        if exc.code == 404:
            return None
        raise


def selector_of(obj: Obj) -> Any:
    return (obj.get("spec") or {}).get("selector")


async def slow_start(count: int, create: Callable[[], Any], initial: int = 1) -> tuple[int, Exception | None]:
    """slowStartBatch: 1, 2, 4, 8... creations in parallel; stop at the first batch with an error, so a
    quota or webhook that refuses pods costs one call, not hundreds. Returns (created, first error)."""
    done = 0
    batch = min(count, initial)
    while batch > 0:
        results = await asyncio.gather(*(create() for _ in range(batch)), return_exceptions=True)
        errors = [r for r in results if isinstance(r, Exception)]
        done += batch - len(errors)
        if errors:
            return done, errors[0]
        count -= batch
        batch = min(count, 2 * batch)
    return done, None
