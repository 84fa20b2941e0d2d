"""The Deployment controller: ReplicaSets per pod template, rolled over by RollingUpdate or Recreate.

As kube's (pkg/controller/deployment): the ReplicaSet whose template equals the deployment's (ignoring
the pod-template-hash label) is the new one, named `<deployment>-<hash>`; every other owned set is old.
A rolling update grows the new set up to replicas + maxSurge pods in total and shrinks old sets while
at least replicas - maxUnavailable pods stay available; Recreate scales the old sets to zero, waits for
their pods to be gone and only then scales the new one up. A change of spec.replicas alone (or a paused
deployment) scales all active sets proportionally. Revisions live in the
`deployment.kubernetes.io/revision` annotation (kubectl rollout history / undo read them), sets beyond
revisionHistoryLimit are deleted once the rollout is complete, and status carries the replica counts
and the Progressing / Available / ReplicaFailure conditions with kube's reasons and messages.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import orjson

from ultraplane.apiserver.selectors import SelectorError, label_selector_from_dict
from ultraplane.client.http import MERGE, ApiError, KubeClient
from ultraplane.client.informer import object_key
from ultraplane.controllers.base import Controller, InformerFactory
from ultraplane.controllers.podcontrol import (
    EventRecorder,
    claim,
    controller_ref,
    deep_copy,
    is_terminating,
    namespace_index,
    now_utc,
    owner_ref,
    parse_time,
    phase,
    rfc3339,
)

Obj = dict[str, Any]
DEPLOYMENTS = "/apis/apps/v1/deployments"
HASH_LABEL = "pod-template-hash"
REVISION = "deployment.kubernetes.io/revision"
REVISION_HISTORY = "deployment.kubernetes.io/revision-history"
DESIRED = "deployment.kubernetes.io/desired-replicas"
MAX_REPLICAS = "deployment.kubernetes.io/max-replicas"
NOT_COPIED = {"kubectl.kubernetes.io/last-applied-configuration", REVISION, REVISION_HISTORY, DESIRED, MAX_REPLICAS,
              "deprecated.deployment.rollback.to"}
MAX_INT32 = 2**31 - 1
SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # k8s.io/apimachinery/pkg/util/rand: no vowels, no 0/1/3


# ---------------------------------------------------------------------- naming
def safe_encode(text: str) -> str:
    return "".join(SAFE_ALPHABET[ord(ch) % len(SAFE_ALPHABET)] for ch in text)


def fnv32a(data: bytes) -> int:
    value = 0x811C9DC5
    for byte in data:
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return value


def template_hash(template: Obj, collision_count: int | None) -> str:
    """ComputeHash: fnv32a over the template, then the collision count as 8 little-endian bytes, rendered
    in decimal and SafeEncodeString'd. kube feeds the Go struct through go-spew; we feed canonical JSON
    (sorted keys), so names are kube-shaped and stable but not byte-identical to kube's."""
    data = orjson.dumps(normalized(template), option=orjson.OPT_SORT_KEYS)
    if collision_count is not None:
        data += (collision_count & 0xFFFFFFFF).to_bytes(4, "little") + b"\x00\x00\x00\x00"
    return safe_encode(str(fnv32a(data)))


def normalized(value: Any) -> Any:
    """Go's view of a JSON object: a null, an empty map and an empty list are all the zero value
    (kubectl rollout undo sends template.metadata.creationTimestamp: null)."""
    if isinstance(value, dict):
        out = {k: normalized(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v is not None and v != {} and v != []}
    if isinstance(value, list):
        return [normalized(v) for v in value]
    return value


def without_hash(template: Obj) -> Obj:
    copy = normalized(template)
    labels = (copy.get("metadata") or {}).get("labels")
    if labels:
        labels.pop(HASH_LABEL, None)
    return copy


def equal_ignore_hash(a: Obj, b: Obj) -> bool:
    return without_hash(a) == without_hash(b)


# ---------------------------------------------------------------------- arithmetic
def scaled_value(value: Any, total: int, round_up: bool) -> int:
    """GetScaledValueFromIntOrPercent: an int as is, "N%" of total rounded up (surge) or down (unavailable)."""
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    text = str(value)
    if not text.endswith("%"):
        return int(text)
    scaled = int(text[:-1]) * total / 100
    return math.ceil(scaled) if round_up else math.floor(scaled)


def replicas_of(obj: Obj | None) -> int:
    if obj is None:
        return 0
    value = (obj.get("spec") or {}).get("replicas")
    return 1 if value is None else int(value)


def is_rolling(d: Obj) -> bool:
    return ((d.get("spec") or {}).get("strategy") or {}).get("type", "RollingUpdate") == "RollingUpdate"


def fenceposts(d: Obj) -> tuple[int, int]:
    rolling = ((d["spec"].get("strategy") or {}).get("rollingUpdate") or {})
    desired = replicas_of(d)
    surge = scaled_value(rolling.get("maxSurge", "25%"), desired, True)
    unavailable = scaled_value(rolling.get("maxUnavailable", "25%"), desired, False)
    if surge == 0 and unavailable == 0:
        unavailable = 1  # both zero would stall the rollout; kube validation forbids it, this guards anyway
    return surge, unavailable


def max_surge(d: Obj) -> int:
    return fenceposts(d)[0] if is_rolling(d) else 0


def max_unavailable(d: Obj) -> int:
    if not is_rolling(d) or replicas_of(d) == 0:
        return 0
    return min(fenceposts(d)[1], replicas_of(d))


def status_int(obj: Obj | None, field: str) -> int:
    return int(((obj or {}).get("status") or {}).get(field) or 0)


def revision_of(obj: Obj) -> int:
    try:
        return int(((obj.get("metadata") or {}).get("annotations") or {}).get(REVISION, "0"))
    except ValueError:
        return 0


def created_key(rs: Obj) -> tuple[str, str]:
    return (rs["metadata"].get("creationTimestamp") or "", rs["metadata"].get("name", ""))


def active(sets: list[Obj]) -> list[Obj]:
    return [rs for rs in sets if rs is not None and replicas_of(rs) > 0]


def condition(status: Obj, kind: str) -> Obj | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), None)


def new_condition(kind: str, status: str, reason: str, message: str) -> Obj:
    now = rfc3339()
    return {"type": kind, "status": status, "lastUpdateTime": now, "lastTransitionTime": now, "reason": reason,
            "message": message}


def set_condition(status: Obj, cond: Obj) -> None:
    """SetDeploymentCondition: same status and reason changes nothing; same status keeps the transition time."""
    current = condition(status, cond["type"])
    if current is not None and current.get("status") == cond["status"] and current.get("reason") == cond["reason"]:
        return
    if current is not None and current.get("status") == cond["status"]:
        cond["lastTransitionTime"] = current.get("lastTransitionTime")
    remove_condition(status, cond["type"])
    status.setdefault("conditions", []).append(cond)


def remove_condition(status: Obj, kind: str) -> None:
    if status.get("conditions"):
        status["conditions"] = [c for c in status["conditions"] if c.get("type") != kind]


def has_progress_deadline(d: Obj) -> bool:
    value = d["spec"].get("progressDeadlineSeconds")
    return value is not None and int(value) != MAX_INT32


def deployment_complete(d: Obj, status: Obj) -> bool:
    want = replicas_of(d)
    return (int(status.get("updatedReplicas") or 0) == want and int(status.get("replicas") or 0) == want
            and int(status.get("availableReplicas") or 0) == want
            and int(status.get("observedGeneration") or 0) >= int(d["metadata"].get("generation") or 1))


def deployment_progressing(d: Obj, new: Obj) -> bool:
    old = d.get("status") or {}
    old_old = int(old.get("replicas") or 0) - int(old.get("updatedReplicas") or 0)
    new_old = int(new.get("replicas") or 0) - int(new.get("updatedReplicas") or 0)
    return (int(new.get("updatedReplicas") or 0) > int(old.get("updatedReplicas") or 0) or new_old < old_old
            or int(new.get("readyReplicas") or 0) > int(old.get("readyReplicas") or 0)
            or int(new.get("availableReplicas") or 0) > int(old.get("availableReplicas") or 0))


def deployment_timed_out(d: Obj, status: Obj, now: dt.datetime) -> bool:
    if not has_progress_deadline(d):
        return False
    cond = condition(status, "Progressing")
    if cond is None or cond.get("reason") == "NewReplicaSetAvailable":
        return False
    if cond.get("reason") == "ProgressDeadlineExceeded":
        return True
    since = parse_time(cond.get("lastUpdateTime"))
    return since is not None and since + dt.timedelta(seconds=int(d["spec"]["progressDeadlineSeconds"])) < now


class DeploymentController(Controller):
    name = "deployment"
    component = "deployment-controller"
    workers = 4

    def __init__(self, client: KubeClient, informers: InformerFactory) -> None:
        super().__init__(client, informers)
        self.deployments = informers.informer(DEPLOYMENTS)
        self.sets = informers.informer("/apis/apps/v1/replicasets")
        self.pods = informers.informer("/api/v1/pods")
        self.deployments_by_ns = namespace_index(self.deployments)
        self.sets_by_ns = namespace_index(self.sets)
        self.pods_by_ns = namespace_index(self.pods)
        self.recorder = EventRecorder(client, self.component)
        self.deployments.add_handler(self.enqueue, lambda old, new: self.enqueue(new), self.enqueue)
        self.sets.add_handler(self._set_changed, self._set_updated, self._set_deleted)
        # ReplicaSets as our own updates returned them, until the informer shows that version: a sync
        # that runs before then must not count from an older copy (status would step backwards)
        self.written: dict[str, Obj] = {}
        self.pods.add_handler(None, None, self._pod_deleted)

    # ------------------------------------------------------------------ events in
    def _owner_key(self, obj: Obj, kind: str, informer: Any) -> str | None:
        ref = controller_ref(obj)
        if ref is None or ref.get("kind") != kind:
            return None
        key = f"{obj['metadata'].get('namespace', '')}/{ref.get('name', '')}"
        owner = informer.get(key)
        return key if owner is not None and owner["metadata"].get("uid") == ref.get("uid") else None

    def _set_changed(self, rs: Obj) -> None:
        key = self._owner_key(rs, "Deployment", self.deployments)
        if key is not None:
            self.queue.add(key)
        elif controller_ref(rs) is None:
            labels = rs["metadata"].get("labels") or {}
            for d in self.deployments_by_ns.list(rs["metadata"].get("namespace", "")):
                try:
                    if label_selector_from_dict(d["spec"].get("selector")).matches(labels):
                        self.enqueue(d)
                except SelectorError:
                    continue

    def _set_updated(self, old: Obj, new: Obj) -> None:
        written = self.written.get(new["metadata"]["uid"])
        if written is not None and _version(new) >= _version(written):
            del self.written[new["metadata"]["uid"]]  # the informer has caught up with our own write
        old_key = self._owner_key(old, "Deployment", self.deployments)
        if old_key is not None and old_key != self._owner_key(new, "Deployment", self.deployments):
            self.queue.add(old_key)
        self._set_changed(new)

    def _set_deleted(self, rs: Obj) -> None:
        self.written.pop(rs["metadata"]["uid"], None)
        self._set_changed(rs)

    def freshest(self, rs: Obj) -> Obj:
        written = self.written.get(rs["metadata"]["uid"])
        return written if written is not None and _version(written) > _version(rs) else rs

    def _pod_deleted(self, pod: Obj) -> None:
        # Recreate waits for the old pods to be gone; their deletions wake it up
        rs_key = self._owner_key(pod, "ReplicaSet", self.sets)
        if rs_key is None:
            return
        d_key = self._owner_key(self.sets.get(rs_key) or {}, "Deployment", self.deployments)
        if d_key is not None and not is_rolling(self.deployments.get(d_key) or {}):
            self.queue.add(d_key)

    # ------------------------------------------------------------------ reconcile
    async def sync(self, key: str) -> None:
        cached = self.deployments.get(key)
        if cached is None:
            return
        d = deep_copy(cached)
        ns, name = d["metadata"]["namespace"], d["metadata"]["name"]
        selector_dict = d["spec"].get("selector")
        if selector_dict == {} or (selector_dict is not None and not selector_dict.get("matchLabels")
                                   and not selector_dict.get("matchExpressions")):
            self.recorder.event(d, "Warning", "SelectingAll",
                                "This deployment is selecting all pods. A non-empty selector is required.")
            if int((d.get("status") or {}).get("observedGeneration") or 0) < int(d["metadata"].get("generation") or 1):
                d.setdefault("status", {})["observedGeneration"] = int(d["metadata"].get("generation") or 1)
                await self.write_status(d)
            return
        try:
            selector = label_selector_from_dict(selector_dict)
        except SelectorError:
            return
        candidates = [self.freshest(rs) for rs in self.sets_by_ns.claim_candidates(ns, d["metadata"]["uid"])]
        sets = await claim(self.client, d, "apps/v1", "Deployment", candidates, selector,
                           lambda rs: f"/apis/apps/v1/namespaces/{ns}/replicasets/{rs['metadata']['name']}",
                           lambda: self.client.get(f"/apis/apps/v1/namespaces/{ns}/deployments/{name}"))
        rollout = Rollout(self, d, sets)
        if is_terminating(d):
            await rollout.sync_status_only()
            return
        await rollout.check_paused_conditions()
        if d["spec"].get("paused"):
            await rollout.sync_scale()
            return
        if await rollout.is_scaling_event():
            await rollout.sync_scale()
            return
        if is_rolling(d):
            await rollout.rolling()
        else:
            await rollout.recreate()

    async def write_status(self, d: Obj) -> None:
        meta = d["metadata"]
        path = f"/apis/apps/v1/namespaces/{meta['namespace']}/deployments/{meta['name']}/status"
        written = await self.client.update(path, d)
        meta["resourceVersion"] = written["metadata"]["resourceVersion"]


class Rollout:
    """One sync of one deployment: its claimed ReplicaSets and the writes made on them so far."""

    def __init__(self, controller: DeploymentController, d: Obj, sets: list[Obj]) -> None:
        self.c = controller
        self.client = controller.client
        self.d = d
        self.ns = d["metadata"]["namespace"]
        self.sets = sorted(sets, key=created_key)

    # ------------------------------------------------------------------ new / old sets
    def split(self) -> tuple[Obj | None, list[Obj]]:
        template = self.d["spec"].get("template") or {}
        new = next((rs for rs in self.sets if equal_ignore_hash(rs["spec"].get("template") or {}, template)), None)
        return new, [rs for rs in self.sets if rs is not new]

    async def new_and_old(self, create: bool) -> tuple[Obj | None, list[Obj]]:
        """getAllReplicaSetsAndSyncRevision."""
        new, old = self.split()
        revision = str(max((revision_of(rs) for rs in old), default=0) + 1)
        d = self.d
        if new is not None:
            copy = deep_copy(new)
            changed = self.set_new_annotations(copy, revision, exists=True)
            min_ready = int(d["spec"].get("minReadySeconds") or 0)
            if changed or int(copy["spec"].get("minReadySeconds") or 0) != min_ready:
                copy["spec"]["minReadySeconds"] = min_ready
                new = await self.update_set(copy)
            needs_status = await self.set_deployment_revision((new["metadata"].get("annotations") or {}).get(
                REVISION, ""))
            status = d.setdefault("status", {})
            if has_progress_deadline(d) and condition(status, "Progressing") is None:
                set_condition(status, new_condition("Progressing", "True", "FoundNewReplicaSet",
                                                    f'Found new replica set "{new["metadata"]["name"]}"'))
                needs_status = True
            if needs_status:
                await self.c.write_status(d)
            return new, old
        if not create:
            return None, old
        return await self.create_new(revision, old), old

    def set_new_annotations(self, rs: Obj, revision: str, exists: bool) -> bool:
        annotations = rs["metadata"].setdefault("annotations", {})
        changed = False
        for k, v in ((self.d["metadata"].get("annotations") or {}).items()):
            if k not in NOT_COPIED and annotations.get(k) != v:
                annotations[k] = v
                changed = True
        old_revision = annotations.get(REVISION, "")
        try:
            old_int = int(old_revision) if old_revision else 0
        except ValueError:
            return changed
        if old_int < int(revision):
            annotations[REVISION] = revision
            changed = True
            if old_revision:
                history = annotations.get(REVISION_HISTORY)
                annotations[REVISION_HISTORY] = f"{history},{old_revision}" if history else old_revision
        if not exists and self.set_replica_annotations(rs):
            changed = True
        return changed

    def set_replica_annotations(self, rs: Obj) -> bool:
        annotations = rs["metadata"].setdefault("annotations", {})
        desired, most = str(replicas_of(self.d)), str(replicas_of(self.d) + max_surge(self.d))
        if annotations.get(DESIRED) == desired and annotations.get(MAX_REPLICAS) == most:
            return False
        annotations[DESIRED] = desired
        annotations[MAX_REPLICAS] = most
        return True

    async def set_deployment_revision(self, revision: str) -> bool:
        """The deployment carries its newest revision too (kube writes it with the status; our /status
        keeps metadata as it is, so it goes in as a metadata-only patch, which bumps no generation)."""
        meta = self.d["metadata"]
        if not revision or (meta.get("annotations") or {}).get(REVISION) == revision:
            return False
        patched = await self.client.patch(
            f"/apis/apps/v1/namespaces/{self.ns}/deployments/{meta['name']}",
            {"metadata": {"annotations": {REVISION: revision}}}, content_type=MERGE)
        meta.setdefault("annotations", {})[REVISION] = revision
        meta["resourceVersion"] = patched["metadata"]["resourceVersion"]
        return False

    async def create_new(self, revision: str, old: list[Obj]) -> Obj | None:
        d = self.d
        status = d.setdefault("status", {})
        collisions = status.get("collisionCount")
        template = deep_copy(d["spec"].get("template") or {})
        hash_value = template_hash(d["spec"].get("template") or {}, collisions)
        template.setdefault("metadata", {}).setdefault("labels", {})[HASH_LABEL] = hash_value
        selector = deep_copy(d["spec"].get("selector") or {})
        selector.setdefault("matchLabels", {})[HASH_LABEL] = hash_value
        name = f"{d['metadata']['name']}-{hash_value}"
        rs: Obj = {"apiVersion": "apps/v1", "kind": "ReplicaSet",
                   "metadata": {"name": name, "namespace": self.ns,
                                "ownerReferences": [owner_ref(d, "apps/v1", "Deployment")],
                                "labels": dict(template["metadata"]["labels"])},
                   "spec": {"replicas": 0, "minReadySeconds": int(d["spec"].get("minReadySeconds") or 0),
                            "selector": selector, "template": template}}
        rs["spec"]["replicas"] = self.new_replicas([*old, rs], rs)
        self.set_new_annotations(rs, revision, exists=False)
        already = False
        try:
            created = await self.client.create(f"/apis/apps/v1/namespaces/{self.ns}/replicasets", rs)
        except ApiError as exc:
            if exc.code == 409:
                existing = self.c.sets.get(f"{self.ns}/{name}")
                ref = controller_ref(existing) if existing else None
                if existing and ref and ref.get("uid") == d["metadata"]["uid"] and equal_ignore_hash(
                        existing["spec"].get("template") or {}, d["spec"].get("template") or {}):
                    created, already = existing, True
                else:
                    # a hash collision: another template has this name; bump collisionCount and try again
                    status["collisionCount"] = int(collisions or 0) + 1
                    await self.c.write_status(d)
                    raise
            else:
                if has_progress_deadline(d):
                    message = f'Failed to create new replica set "{name}": {exc.message}'
                    set_condition(status, new_condition("Progressing", "False", "ReplicaSetCreateError", message))
                    self.c.recorder.event(d, "Warning", "ReplicaSetCreateError", message)
                    await self.c.write_status(d)
                raise
        self.sets.append(created)
        if not already and replicas_of(created) > 0:
            self.c.recorder.event(d, "Normal", "ScalingReplicaSet",
                                  f"Scaled up replica set {name} from 0 to {replicas_of(created)}")
        await self.set_deployment_revision(revision)
        if not already and has_progress_deadline(d):
            set_condition(status, new_condition("Progressing", "True", "NewReplicaSetCreated",
                                                f'Created new replica set "{name}"'))
            await self.c.write_status(d)
        return created

    def new_replicas(self, all_sets: list[Obj], new: Obj) -> int:
        """NewRSNewReplicas: how big the new set may be now."""
        d = self.d
        want = replicas_of(d)
        if not is_rolling(d):
            return want
        current = sum(replicas_of(rs) for rs in all_sets)
        most = want + max_surge(d)
        if current >= most:
            return replicas_of(new)
        return replicas_of(new) + min(most - current, want - replicas_of(new))

    async def update_set(self, rs: Obj) -> Obj:
        meta = rs["metadata"]
        updated = await self.client.update(f"/apis/apps/v1/namespaces/{self.ns}/replicasets/{meta['name']}", rs)
        self.c.written[meta["uid"]] = updated
        self.sets = [updated if s["metadata"]["uid"] == meta["uid"] else s for s in self.sets]
        return updated

    async def scale_set(self, rs: Obj, size: int, operation: str | None = None) -> Obj:
        """scaleReplicaSet: the size and the desired/max annotations; an event when the size changed."""
        copy = deep_copy(rs)
        old_size = replicas_of(rs)
        resize = old_size != size
        if not resize and not self.set_replica_annotations(copy):
            return rs
        self.set_replica_annotations(copy)
        copy["spec"]["replicas"] = size
        updated = await self.update_set(copy)
        if resize:
            operation = operation or ("up" if size > old_size else "down")
            self.c.recorder.event(self.d, "Normal", "ScalingReplicaSet",
                                  f"Scaled {operation} replica set {rs['metadata']['name']} from {old_size} to {size}")
        return updated

    def current(self, rs: Obj | None) -> Obj | None:
        if rs is None:
            return None
        return next((s for s in self.sets if s["metadata"]["uid"] == rs["metadata"]["uid"]), rs)

    # ------------------------------------------------------------------ paused / scaling
    async def check_paused_conditions(self) -> None:
        d = self.d
        if not has_progress_deadline(d):
            return
        status = d.setdefault("status", {})
        cond = condition(status, "Progressing")
        if cond is not None and cond.get("reason") == "ProgressDeadlineExceeded":
            return
        paused = bool(d["spec"].get("paused"))
        if paused and (cond is None or cond.get("reason") != "DeploymentPaused"):
            set_condition(status, new_condition("Progressing", "Unknown", "DeploymentPaused", "Deployment is paused"))
        elif not paused and cond is not None and cond.get("reason") == "DeploymentPaused":
            set_condition(status, new_condition("Progressing", "Unknown", "DeploymentResumed",
                                                "Deployment is resumed"))
        else:
            return
        await self.c.write_status(d)

    async def is_scaling_event(self) -> bool:
        new, old = await self.new_and_old(create=False)
        want = str(replicas_of(self.d))
        for rs in active([*old, new] if new else old):
            desired = (rs["metadata"].get("annotations") or {}).get(DESIRED)
            if desired is not None and desired != want:
                return True
        return False

    async def sync_scale(self) -> None:
        new, old = await self.new_and_old(create=False)
        await self.scale(new, old)
        new, old = self.current(new), [self.current(rs) or rs for rs in old]
        if self.d["spec"].get("paused"):
            await self.cleanup(old)
        await self.sync_status(new)

    async def sync_status_only(self) -> None:
        new, _ = await self.new_and_old(create=False)
        await self.sync_status(new)

    async def scale(self, new: Obj | None, old: list[Obj]) -> None:
        d = self.d
        want = replicas_of(d)
        latest = self.active_or_latest(new, old)
        if latest is not None:
            if replicas_of(latest) != want:
                await self.scale_set(latest, want)
            return
        if new is not None and replicas_of(new) == want and \
                (new["metadata"].get("annotations") or {}).get(DESIRED) == str(want) and \
                status_int(new, "availableReplicas") == want:
            for rs in active(old):
                await self.scale_set(rs, 0)
            return
        if not is_rolling(d):
            return
        sets = active([*old, new] if new else old)
        total = sum(replicas_of(rs) for rs in sets)
        allowed = want + max_surge(d) if want > 0 else 0
        to_add = allowed - total
        if to_add > 0:  # ReplicaSetsBySizeNewer: larger first, newer first among equals
            sets.sort(key=lambda rs: (-replicas_of(rs), _neg(created_key(rs))))
        elif to_add < 0:  # ReplicaSetsBySizeOlder
            sets.sort(key=lambda rs: (-replicas_of(rs), created_key(rs)))
        added = 0
        sizes: dict[str, int] = {}
        for rs in sets:
            if to_add != 0:
                share = self.proportion(rs, to_add, added)
                sizes[rs["metadata"]["name"]] = replicas_of(rs) + share
                added += share
            else:
                sizes[rs["metadata"]["name"]] = replicas_of(rs)
        if to_add != 0 and sets:
            first = sets[0]["metadata"]["name"]
            sizes[first] = max(0, sizes[first] + to_add - added)  # the leftover goes to the largest set
        for rs in sets:
            await self.scale_set(rs, sizes[rs["metadata"]["name"]], "up" if to_add > 0 else "down")

    def active_or_latest(self, new: Obj | None, old: list[Obj]) -> Obj | None:
        if new is None and not old:
            return None
        newest_first = sorted(old, key=created_key, reverse=True)
        sets = active([*newest_first, new] if new else newest_first)
        if not sets:
            return new if new is not None else newest_first[0]
        return sets[0] if len(sets) == 1 else None

    def proportion(self, rs: Obj, to_add: int, added: int) -> int:
        if replicas_of(rs) == 0 or to_add == 0 or to_add == added:
            return 0
        d = self.d
        if replicas_of(d) == 0:
            fraction = -replicas_of(rs)
        else:
            most = replicas_of(d) + max_surge(d)
            try:
                before = int((rs["metadata"].get("annotations") or {}).get(MAX_REPLICAS, "0"))
            except ValueError:
                before = 0
            if before == 0:
                before = status_int(d, "replicas")
            size = replicas_of(rs) * most / before if before else replicas_of(rs)
            fraction = int(math.floor(size + 0.5)) - replicas_of(rs)  # math.Round: half away from zero
        allowed = to_add - added
        return min(fraction, allowed) if to_add > 0 else max(fraction, allowed)

    # ------------------------------------------------------------------ strategies
    async def rolling(self) -> None:
        new, old = await self.new_and_old(create=True)
        if await self.reconcile_new(new):
            await self.sync_rollout_status(self.current(new))
            return
        old = [self.current(rs) or rs for rs in old]
        if await self.reconcile_old(old, self.current(new)):
            await self.sync_rollout_status(self.current(new))
            return
        if deployment_complete(self.d, self.d.get("status") or {}):
            await self.cleanup([self.current(rs) or rs for rs in old])
        await self.sync_rollout_status(self.current(new))

    async def reconcile_new(self, new: Obj | None) -> bool:
        if new is None:
            return False
        want = replicas_of(self.d)
        if replicas_of(new) == want:
            return False
        if replicas_of(new) > want:
            await self.scale_set(new, want)
            return True
        size = self.new_replicas(self.sets, new)
        if size == replicas_of(new):
            return False
        await self.scale_set(new, size)
        return True

    async def reconcile_old(self, old: list[Obj], new: Obj | None) -> bool:
        d = self.d
        old_active = active(old)
        if sum(replicas_of(rs) for rs in old_active) == 0:
            return False
        all_count = sum(replicas_of(rs) for rs in self.sets)
        min_available = replicas_of(d) - max_unavailable(d)
        new_unavailable = replicas_of(new) - status_int(new, "availableReplicas") if new else 0
        most_down = all_count - min_available - new_unavailable
        if most_down <= 0:
            return False
        # first the old pods that are not available anyway (cleanupUnhealthyReplicas)
        cleaned = 0
        for rs in sorted(old_active, key=created_key):
            if cleaned >= most_down:
                break
            if replicas_of(rs) == 0 or replicas_of(rs) == status_int(rs, "availableReplicas"):
                continue
            down = min(most_down - cleaned, replicas_of(rs) - status_int(rs, "availableReplicas"))
            await self.scale_set(rs, replicas_of(rs) - down)
            cleaned += down
        # then available ones, as far as minAvailable allows (scaleDownOldReplicaSetsForRollingUpdate)
        available = sum(status_int(rs, "availableReplicas") for rs in self.sets)
        scaled = 0
        if available > min_available:
            budget = available - min_available
            for rs in sorted(active([self.current(r) or r for r in old_active]), key=created_key):
                if scaled >= budget:
                    break
                down = min(replicas_of(rs), budget - scaled)
                await self.scale_set(rs, replicas_of(rs) - down)
                scaled += down
        return cleaned + scaled > 0

    async def recreate(self) -> None:
        new, old = await self.new_and_old(create=False)
        scaled = False
        for rs in active(old):
            await self.scale_set(rs, 0)
            scaled = True
        if scaled:
            await self.sync_rollout_status(self.current(new))
            return
        old = [self.current(rs) or rs for rs in old]
        if self.old_pods_running(old):
            await self.sync_rollout_status(self.current(new))
            return
        if new is None:
            new = await self.create_new(str(max((revision_of(rs) for rs in old), default=0) + 1), old)
        new = self.current(new)
        if new is not None and replicas_of(new) != replicas_of(self.d):
            new = await self.scale_set(new, replicas_of(self.d))
        if deployment_complete(self.d, self.d.get("status") or {}):
            await self.cleanup(old)
        await self.sync_rollout_status(self.current(new))

    def old_pods_running(self, old: list[Obj]) -> bool:
        if sum(status_int(rs, "replicas") for rs in old) > 0:
            return True
        for pod in (p for rs in old for p in self.c.pods_by_ns.owned_by(rs["metadata"]["uid"])):
            if phase(pod) in ("Failed", "Succeeded"):
                continue
            return True
        return False

    async def cleanup(self, old: list[Obj]) -> None:
        """cleanupDeployment: delete the oldest revisions beyond revisionHistoryLimit once they are empty."""
        limit = self.d["spec"].get("revisionHistoryLimit")
        if limit is None:
            return
        alive = [rs for rs in old if not is_terminating(rs)]
        extra = len(alive) - int(limit)
        if extra <= 0:
            return
        for rs in sorted(alive, key=lambda r: (revision_of(r), created_key(r)))[:extra]:
            if status_int(rs, "replicas") or replicas_of(rs) or \
                    int(rs["metadata"].get("generation") or 1) > status_int(rs, "observedGeneration"):
                continue
            try:
                await self.client.delete(f"/apis/apps/v1/namespaces/{self.ns}/replicasets/{rs['metadata']['name']}",
                                         {"kind": "DeleteOptions", "apiVersion": "v1",
                                          "preconditions": {"uid": rs["metadata"]["uid"]}})
            except ApiError as exc:
                if exc.code not in (404, 409):
                    raise

    # ------------------------------------------------------------------ status
    def calculate_status(self, new: Obj | None) -> Obj:
        d = self.d
        sets = self.sets
        available = sum(status_int(rs, "availableReplicas") for rs in sets)
        total = sum(replicas_of(rs) for rs in sets)
        status: Obj = {"observedGeneration": int(d["metadata"].get("generation") or 1),
                       "replicas": sum(status_int(rs, "replicas") for rs in sets),
                       "updatedReplicas": status_int(new, "replicas"),
                       "readyReplicas": sum(status_int(rs, "readyReplicas") for rs in sets),
                       "availableReplicas": available,
                       "unavailableReplicas": max(total - available, 0)}
        status = {k: v for k, v in status.items() if v}  # omitempty, as kube serializes DeploymentStatus
        old = d.get("status") or {}
        if old.get("collisionCount") is not None:
            status["collisionCount"] = old["collisionCount"]
        status["conditions"] = [dict(c) for c in old.get("conditions") or []]
        if available >= replicas_of(d) - max_unavailable(d):
            set_condition(status, new_condition("Available", "True", "MinimumReplicasAvailable",
                                                "Deployment has minimum availability."))
        else:
            set_condition(status, new_condition("Available", "False", "MinimumReplicasUnavailable",
                                                "Deployment does not have minimum availability."))
        return status

    async def sync_status(self, new: Obj | None) -> None:
        status = self.calculate_status(new)
        await self.write_if_changed(status)

    async def sync_rollout_status(self, new: Obj | None) -> None:
        d = self.d
        status = self.calculate_status(new)
        now = now_utc()
        if not has_progress_deadline(d):
            remove_condition(status, "Progressing")
        current = condition(d.get("status") or {}, "Progressing")
        complete_already = (status.get("replicas", 0) == status.get("updatedReplicas", 0) and current is not None
                            and current.get("reason") == "NewReplicaSetAvailable")
        rs_name = new["metadata"]["name"] if new else ""
        if has_progress_deadline(d) and not complete_already:
            if deployment_complete(d, status):
                message = (f'ReplicaSet "{rs_name}" has successfully progressed.' if new
                           else "Deployment has successfully progressed.")
                set_condition(status, new_condition("Progressing", "True", "NewReplicaSetAvailable", message))
            elif deployment_progressing(d, status):
                message = f'ReplicaSet "{rs_name}" is progressing.' if new else "Deployment is progressing."
                cond = new_condition("Progressing", "True", "ReplicaSetUpdated", message)
                if current is not None:
                    if current.get("status") == "True":
                        cond["lastTransitionTime"] = current.get("lastTransitionTime")
                    remove_condition(status, "Progressing")
                set_condition(status, cond)
            elif deployment_timed_out(d, status, now):
                message = (f'ReplicaSet "{rs_name}" has timed out progressing.' if new
                           else f'Deployment "{d["metadata"]["name"]}" has timed out progressing.')
                set_condition(status, new_condition("Progressing", "False", "ProgressDeadlineExceeded", message))
        failures = [c for rs in ([new] if new else []) + [s for s in self.sets if s is not new]
                    for c in ((rs.get("status") or {}).get("conditions") or []) if c.get("type") == "ReplicaFailure"]
        if failures:
            f = failures[0]
            set_condition(status, new_condition("ReplicaFailure", f.get("status", "True"), f.get("reason", ""),
                                                f.get("message", "")))
        else:
            remove_condition(status, "ReplicaFailure")
        if not await self.write_if_changed(status):
            self.requeue_stuck(status, now)

    async def write_if_changed(self, status: Obj) -> bool:
        if not status.get("conditions"):
            status.pop("conditions", None)
        if status == (self.d.get("status") or {}):
            return False
        self.d["status"] = status
        await self.c.write_status(self.d)
        return True

    def requeue_stuck(self, status: Obj, now: dt.datetime) -> None:
        d = self.d
        current = condition(d.get("status") or {}, "Progressing")
        if not has_progress_deadline(d) or current is None:
            return
        if deployment_complete(d, status) or current.get("reason") == "ProgressDeadlineExceeded":
            return
        since = parse_time(current.get("lastUpdateTime")) or now
        after = (since + dt.timedelta(seconds=int(d["spec"]["progressDeadlineSeconds"])) - now).total_seconds()
        self.c.queue.add_after(object_key(d), 0 if after < 1 else after + 1)


def _version(obj: Obj) -> int:
    try:
        return int(obj["metadata"].get("resourceVersion") or 0)
    except ValueError:  # not an etcd revision: treat as unknown (never fresher)
        return 0


def _neg(key: tuple[str, str]) -> tuple[str, str]:
    # newest first inside an ascending sort: complement each character
    return tuple("".join(chr(0x10FFFF - ord(ch)) for ch in part) for part in key)  # type: ignore[return-value]
