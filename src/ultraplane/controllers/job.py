"""The Job controller: runs pods to completion, counts successes and failures, decides the outcome.

As kube 1.32's: every pod carries the `batch.kubernetes.io/job-tracking` finalizer until its end is
counted. A finished pod's UID first goes to status.uncountedTerminatedPods, then the finalizer comes
off, then the UID moves into status.succeeded / failed, so a count survives a controller crash and
is never taken twice. Pods are created (slow start, expectations) up to
min(parallelism, completions - succeeded); Indexed jobs give each pod its completion index
(annotation, label, hostname `<job>-<index>`, JOB_COMPLETION_INDEX) and track status.completedIndexes.
Failures beyond backoffLimit, or a run beyond activeDeadlineSeconds, set FailureTarget; enough
successes set SuccessCriteriaMet; once no pod is left running the terminal Failed / Complete condition
follows (with completionTime for Complete). Replacements after failures wait kube's exponential
backoff (10 s doubling up to 6 min). suspend deletes the active pods and sets the Suspended condition.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from ultraplane.apiserver.selectors import SelectorError, label_selector_from_dict
from ultraplane.client.http import ApiError, KubeClient
from ultraplane.client.informer import object_key
from ultraplane.controllers.base import Controller, InformerFactory
from ultraplane.controllers.podcontrol import (
    EventRecorder,
    Expectations,
    OwnedPodHandlers,
    claim,
    controller_ref,
    is_ready,
    is_terminating,
    namespace_index,
    now_utc,
    parse_time,
    phase,
    pod_from_template,
    rfc3339,
    slow_start,
)
from ultraplane.controllers.replicaset import deletion_order

Obj = dict[str, Any]
JOBS = "/apis/batch/v1/jobs"
TRACKING = "batch.kubernetes.io/job-tracking"
INDEX = "batch.kubernetes.io/job-completion-index"
MAX_BACKOFF_S = 360.0


def parse_indexes(text: str) -> set[int]:
    out: set[int] = set()
    for part in (text or "").split(","):
        if not part:
            continue
        first, _, last = part.partition("-")
        out.update(range(int(first), int(last or first) + 1))
    return out


def format_indexes(indexes: set[int]) -> str:
    """status.completedIndexes: ascending, runs of consecutive indexes as "a-b"."""
    parts: list[str] = []
    ordered = sorted(indexes)
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def job_condition(job: Obj, kind: str) -> Obj | None:
    return next((c for c in (job.get("status") or {}).get("conditions") or [] if c.get("type") == kind), None)


def is_finished(job: Obj) -> bool:
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
               for c in (job.get("status") or {}).get("conditions") or [])


def pod_index(pod: Obj) -> int | None:
    value = ((pod.get("metadata") or {}).get("annotations") or {}).get(INDEX)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


class JobController(OwnedPodHandlers, Controller):
    name = "job"
    owner_kind = "Job"
    component = "job-controller"
    workers = 4
    pod_failure_backoff = 10.0  # kube's DefaultJobPodFailureBackOff; tests may shorten it

    def __init__(self, client: KubeClient, informers: InformerFactory) -> None:
        super().__init__(client, informers)
        self.jobs = informers.informer(JOBS)
        self.pods = informers.informer("/api/v1/pods")
        self.pods_by_ns = namespace_index(self.pods)
        self.expectations = Expectations()
        self.recorder = EventRecorder(client, self.component)
        self.jobs.add_handler(self.enqueue, lambda old, new: self.enqueue(new), self._job_deleted)
        self.pods.add_handler(self._pod_added, self._pod_updated, self._pod_deleted)

    def _job_deleted(self, job: Obj) -> None:
        self.expectations.forget(object_key(job))
        self.enqueue(job)  # its pods' finalizers still have to come off

    def _pod_updated(self, old: Obj, new: Obj) -> None:
        key = self._owner_key(new)
        if key is not None:
            if is_terminating(new) and not is_terminating(old):
                self.expectations.deletion_observed(key, object_key(new))
            self.queue.add(key)

    # ------------------------------------------------------------------ reconcile
    async def sync(self, key: str) -> None:
        job = self.jobs.get(key)
        namespace = key.split("/", 1)[0]
        if job is None:
            await self.release_orphans(namespace, key)
            return
        try:
            selector = label_selector_from_dict((job.get("spec") or {}).get("selector"))
        except SelectorError:
            return
        name = job["metadata"]["name"]
        pods = await claim(self.client, job, "batch/v1", "Job",
                           self.pods_by_ns.claim_candidates(namespace, job["metadata"]["uid"]), selector,
                           lambda p: f"/api/v1/namespaces/{namespace}/pods/{p['metadata']['name']}",
                           lambda: self.client.get(f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}"))
        await Run(self, job, pods).sync()

    async def release_orphans(self, namespace: str, key: str) -> None:
        """A deleted job's pods must not keep its tracking finalizer forever."""
        name = key.split("/", 1)[1]
        for pod in self.pods_by_ns.list(namespace):
            ref = controller_ref(pod)
            if ref and ref.get("kind") == "Job" and ref.get("name") == name and \
                    TRACKING in (pod["metadata"].get("finalizers") or []):
                await remove_finalizer(self.client, pod)


async def remove_finalizer(client: KubeClient, pod: Obj) -> None:
    meta = pod["metadata"]
    kept = [f for f in meta.get("finalizers") or [] if f != TRACKING]
    try:
        await client.patch(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                           [{"op": "test", "path": "/metadata/uid", "value": meta["uid"]},
                            {"op": "replace", "path": "/metadata/finalizers", "value": kept}],
                           content_type="application/json-patch+json")
    except ApiError as exc:
        if exc.code not in (404, 422):
            raise


class Run:
    """One sync of one job."""

    def __init__(self, controller: JobController, job: Obj, pods: list[Obj]) -> None:
        self.c = controller
        self.client = controller.client
        self.job = job
        self.spec = job.get("spec") or {}
        self.key = object_key(job)
        self.ns = job["metadata"]["namespace"]
        self.pods = pods
        self.indexed = self.spec.get("completionMode") == "Indexed"
        self.now = now_utc()
        self.policy_failure: str | None = None  # the message of a matched FailJob rule
        self.failures_in_row = 0
        self.completed: set[int] = set()  # completed indexes of an Indexed job

    def completions(self) -> int | None:
        value = self.spec.get("completions")
        return None if value is None else int(value)

    async def sync(self) -> None:
        job, spec = self.job, self.spec
        old_status = job.get("status") or {}
        status: Obj = {k: v for k, v in old_status.items()}
        status["conditions"] = [dict(c) for c in old_status.get("conditions") or []]
        finished = is_finished(job)
        uncounted = status.get("uncountedTerminatedPods") or {}
        unc_succeeded = set(uncounted.get("succeeded") or [])
        unc_failed = set(uncounted.get("failed") or [])
        completed = parse_indexes(status.get("completedIndexes", "")) if self.indexed else set()

        # finished pods still holding the finalizer become uncounted (step 1 of 3)
        to_release: list[Obj] = []
        last_failure: dt.datetime | None = None
        for pod in self.pods:
            meta = pod["metadata"]
            if TRACKING not in (meta.get("finalizers") or []):
                continue
            uid = meta["uid"]
            p = phase(pod)
            if p == "Succeeded":
                if uid not in unc_succeeded and uid not in unc_failed:
                    index = pod_index(pod)
                    if not self.indexed or (index is not None and index not in completed):
                        unc_succeeded.add(uid)
                        if self.indexed and index is not None:
                            completed.add(index)
                    else:
                        unc_succeeded.add(uid)  # a duplicate success of an index counts nowhere
                to_release.append(pod)
            elif p == "Failed" or (is_terminating(pod) and p != "Succeeded"):
                if p != "Failed" and self.spec.get("podFailurePolicy") and pod.get("spec", {}).get("nodeName"):
                    continue  # with a podFailurePolicy a bound pod is judged once its kubelet says Failed
                action, message = pod_failure_action(self.spec, pod) if p == "Failed" else ("Count", "")
                if action == "FailJob" and self.policy_failure is None:
                    self.policy_failure = message
                if action != "Ignore" and uid not in unc_succeeded and uid not in unc_failed:
                    unc_failed.add(uid)
                to_release.append(pod)
            elif finished:
                to_release.append(pod)  # a finished job lets go of every pod

        # kube's backoff record: failures since the last success, and when the newest of them ended
        ends = sorted((_pod_end(p), phase(p)) for p in self.pods if phase(p) in ("Succeeded", "Failed"))
        self.failures_in_row = 0
        for ended, outcome in ends:
            self.failures_in_row = self.failures_in_row + 1 if outcome == "Failed" else 0
            if outcome == "Failed":
                last_failure = ended
        succeeded = int(status.get("succeeded") or 0)
        failed = int(status.get("failed") or 0)
        # already-counted pods plus uncounted ones (the finalizer removal may still be pending)
        total_succeeded = len(completed) if self.indexed else succeeded + len(unc_succeeded)
        total_failed = failed + len(unc_failed)
        active = [p for p in self.pods if phase(p) not in ("Succeeded", "Failed") and not is_terminating(p)]
        terminating = [p for p in self.pods if is_terminating(p) and phase(p) not in ("Succeeded", "Failed")]

        self.completed = completed
        if not finished and not spec.get("suspend") and not status.get("startTime"):
            status["startTime"] = rfc3339(self.now)
        target = self.target_condition(status, total_succeeded, total_failed)
        if target is not None and not finished:
            kind, reason, message = target
            cond_type = "SuccessCriteriaMet" if kind == "Complete" else "FailureTarget"
            if job_condition({"status": status}, cond_type) is None:
                self.add_condition(status, cond_type, reason, message)
            if active:
                await self.delete_pods(active, status)
                active = []
            if not active and not terminating:
                self.add_condition(status, kind, reason, message)
                if kind == "Complete":
                    status["completionTime"] = rfc3339(self.now)
                    self.c.recorder.event(job, "Normal", "Completed", "Job completed")
                else:
                    self.c.recorder.event(job, "Warning", reason, message)
                finished = True
                to_release = [p for p in self.pods if TRACKING in (p["metadata"].get("finalizers") or [])]
        elif not finished:
            self.wake_at_deadline(status)
            active = await self.manage(status, active, total_succeeded, completed, total_failed, last_failure)

        status["active"] = len(active)
        status["ready"] = sum(1 for p in active if is_ready(p))
        status["terminating"] = len(terminating)
        status["uncountedTerminatedPods"] = {k: sorted(v) for k, v in
                                             (("succeeded", unc_succeeded), ("failed", unc_failed)) if v}
        if self.indexed:
            status["completedIndexes"] = format_indexes(completed)
        await self.write(status)
        # step 2: let go of the counted pods; step 3: move the uncounted UIDs into the counters
        if to_release:
            await asyncio.gather(*(remove_finalizer(self.client, p) for p in to_release))
        if unc_succeeded or unc_failed:
            released = {p["metadata"]["uid"] for p in to_release}
            still = {p["metadata"]["uid"] for p in self.pods
                     if TRACKING in (p["metadata"].get("finalizers") or [])} - released
            moved_s = unc_succeeded - still
            moved_f = unc_failed - still
            status["succeeded"] = len(completed) if self.indexed else succeeded + len(moved_s)
            status["failed"] = failed + len(moved_f)
            status["uncountedTerminatedPods"] = {k: sorted(v) for k, v in
                                                 (("succeeded", unc_succeeded - moved_s),
                                                  ("failed", unc_failed - moved_f)) if v}
            await self.write(status)

    def target_condition(self, status: Obj, succeeded: int, failed: int) -> tuple[str, str, str] | None:
        for cond_type, kind in (("SuccessCriteriaMet", "Complete"), ("FailureTarget", "Failed")):
            cond = job_condition({"status": status}, cond_type)
            if cond is not None and cond.get("status") == "True":
                return kind, cond.get("reason", ""), cond.get("message", "")
        if self.policy_failure is not None:
            return "Failed", "PodFailurePolicy", self.policy_failure
        if failed > int(self.spec.get("backoffLimit", 6)) or self.past_backoff_limit_on_failure():
            return "Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit"
        deadline = self.spec.get("activeDeadlineSeconds")
        started = parse_time(status.get("startTime"))
        if deadline is not None and started is not None and not self.spec.get("suspend") and \
                started + dt.timedelta(seconds=int(deadline)) <= self.now:
            return "Failed", "DeadlineExceeded", "Job was active longer than specified deadline"
        matched = self.success_policy_rule()
        if matched is not None:
            return "Complete", "SuccessPolicy", f"Matched rules at index {matched}"
        completions = self.completions()
        if completions is not None and succeeded >= completions:
            return "Complete", "CompletionsReached", "Reached expected number of succeeded pods"
        if completions is None and succeeded > 0 and not any(
                phase(p) not in ("Succeeded", "Failed") and not is_terminating(p) for p in self.pods):
            return "Complete", "CompletionsReached", "Reached expected number of succeeded pods"
        return None

    def past_backoff_limit_on_failure(self) -> bool:
        """kube's pastBackoffLimitOnFailure: with restartPolicy OnFailure the kubelet restarts failing
        containers in place, so their restarts (in Pending/Running pods) count against backoffLimit."""
        if ((self.spec.get("template") or {}).get("spec") or {}).get("restartPolicy") != "OnFailure":
            return False
        restarts = sum(int(cs.get("restartCount") or 0) for p in self.pods if phase(p) in ("Pending", "Running")
                       for cs in ((p.get("status") or {}).get("initContainerStatuses") or [])
                       + ((p.get("status") or {}).get("containerStatuses") or []))
        limit = int(self.spec.get("backoffLimit", 6))
        return restarts > 0 if limit == 0 else restarts >= limit

    def success_policy_rule(self) -> int | None:
        """spec.successPolicy (Indexed jobs): the first rule whose succeededIndexes / succeededCount the
        completed indexes satisfy."""
        if not self.indexed:
            return None
        for index, rule in enumerate((self.spec.get("successPolicy") or {}).get("rules") or []):
            wanted = parse_indexes(rule["succeededIndexes"]) if rule.get("succeededIndexes") else None
            done = len(self.completed & wanted) if wanted is not None else len(self.completed)
            count = rule.get("succeededCount")
            if count is not None and done >= int(count):
                return index
            if count is None and wanted is not None and wanted <= self.completed:
                return index
        return None

    def wake_at_deadline(self, status: Obj) -> None:
        deadline = self.spec.get("activeDeadlineSeconds")
        started = parse_time(status.get("startTime"))
        if deadline is not None and started is not None and not self.spec.get("suspend"):
            left = (started + dt.timedelta(seconds=int(deadline)) - self.now).total_seconds()
            self.c.queue.add_after(self.key, max(left, 0.0) + 0.05)

    def add_condition(self, status: Obj, kind: str, reason: str, message: str, value: str = "True") -> None:
        now = rfc3339(self.now)
        conds = status.setdefault("conditions", [])
        for cond in conds:
            if cond.get("type") == kind:
                if cond.get("status") != value:
                    cond["lastTransitionTime"] = now
                cond.update({"status": value, "reason": reason, "message": message, "lastProbeTime": now})
                return
        conds.append({"type": kind, "status": value, "lastProbeTime": now, "lastTransitionTime": now,
                      "reason": reason, "message": message})

    async def manage(self, status: Obj, active: list[Obj], succeeded: int, completed: set[int], failed: int,
                     last_failure: dt.datetime | None) -> list[Obj]:
        spec, job = self.spec, self.job
        suspended = bool(spec.get("suspend"))
        suspend_cond = job_condition({"status": status}, "Suspended")
        if suspended:
            if suspend_cond is None or suspend_cond.get("status") != "True":
                self.add_condition(status, "Suspended", "JobSuspended", "Job suspended")
                self.c.recorder.event(job, "Normal", "Suspended", "Job suspended")
            status.pop("startTime", None)  # kube restarts the active-deadline clock on resume
            if active:
                await self.delete_pods(active, status)
            return []
        if suspend_cond is not None and suspend_cond.get("status") == "True":
            self.add_condition(status, "Suspended", "JobResumed", "Job resumed", value="False")
            self.c.recorder.event(job, "Normal", "Resumed", "Job resumed")
        if not self.c.expectations.satisfied(self.key):
            return active
        parallelism = int(spec.get("parallelism", 1))
        completions = self.completions()
        if completions is None:
            want = len(active) if succeeded > 0 else parallelism
        else:
            want = max(0, min(completions - succeeded, parallelism))
        if len(active) > want:
            extra = deletion_order(active, {})[:len(active) - want]
            await self.delete_pods(extra, status)
            keep = {p["metadata"]["uid"] for p in extra}
            return [p for p in active if p["metadata"]["uid"] not in keep]
        if len(active) >= want:
            return active
        # a replacement after failures waits out the pod failure backoff
        if self.failures_in_row > 0 and last_failure is not None:
            delay = min(self.c.pod_failure_backoff * 2 ** (min(self.failures_in_row, 30) - 1), MAX_BACKOFF_S)
            remaining = (last_failure + dt.timedelta(seconds=delay) - self.now).total_seconds()
            if remaining > 0:
                self.c.queue.add_after(self.key, remaining)
                return active
        indexes: list[int | None]
        if self.indexed:
            taken = {pod_index(p) for p in active}
            free = [i for i in range(completions or 0) if i not in completed and i not in taken]
            indexes = list(free[:want - len(active)])
        else:
            indexes = [None] * (want - len(active))
        if not indexes:
            return active
        self.c.expectations.expect(self.key, adds=len(indexes))
        pending = list(indexes)

        async def create_one() -> None:
            await self.create_pod(pending.pop(0))

        created, error = await slow_start(len(indexes), create_one)
        if error is not None:
            self.c.expectations.creation_observed(self.key, len(indexes) - created)
            raise error
        return active + [{}] * created  # counted as active until the informer shows them

    async def create_pod(self, index: int | None) -> None:
        job = self.job
        name = job["metadata"]["name"]
        pod = pod_from_template(self.spec.get("template") or {}, job, "batch/v1", "Job")
        meta = pod["metadata"]
        meta["generateName"] = f"{name}-{index}-" if index is not None else f"{name}-"
        meta["finalizers"] = [*(meta.get("finalizers") or []), TRACKING]
        if index is not None:
            meta.setdefault("annotations", {})[INDEX] = str(index)
            meta["labels"][INDEX] = str(index)
            pod["spec"]["hostname"] = f"{name}-{index}"
            env = {"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {
                "fieldPath": f"metadata.labels['{INDEX}']"}}}
            for c in [*(pod["spec"].get("initContainers") or []), *(pod["spec"].get("containers") or [])]:
                c["env"] = [*(c.get("env") or []), env]
        try:
            created = await self.client.create(f"/api/v1/namespaces/{self.ns}/pods", pod)
        except ApiError as exc:
            self.c.recorder.event(job, "Warning", "FailedCreate", f"Error creating: {exc.message}")
            raise
        self.c.recorder.event(job, "Normal", "SuccessfulCreate", f"Created pod: {created['metadata']['name']}")

    async def delete_pods(self, pods: list[Obj], status: Obj) -> None:
        self.c.expectations.expect(self.key, deletes=[object_key(p) for p in pods])
        for pod in pods:
            meta = pod["metadata"]
            try:
                await self.client.delete(f"/api/v1/namespaces/{self.ns}/pods/{meta['name']}",
                                         {"kind": "DeleteOptions", "apiVersion": "v1",
                                          "preconditions": {"uid": meta["uid"]}})
                self.c.recorder.event(self.job, "Normal", "SuccessfulDelete", f"Deleted pod: {meta['name']}")
            except ApiError as exc:
                self.c.expectations.deletion_observed(self.key, object_key(pod))
                if exc.code not in (404, 409):
                    raise

    async def write(self, status: Obj) -> None:
        current = self.job.get("status") or {}
        if not status.get("conditions"):
            status.pop("conditions", None)
        # omitempty as JobStatus serializes, except the pointer fields kube always shows
        status = {k: v for k, v in status.items() if v or k in ("uncountedTerminatedPods", "ready", "terminating")}
        if status == current:
            return
        meta = self.job["metadata"]
        body = {**self.job, "status": status}
        written = await self.client.update(f"/apis/batch/v1/namespaces/{self.ns}/jobs/{meta['name']}/status", body)
        self.job = {**self.job, "metadata": written["metadata"], "status": written.get("status") or {}}


def pod_failure_action(spec: Obj, pod: Obj) -> tuple[str, str]:
    """The first podFailurePolicy rule matching a failed pod: (action, FailJob message); Count if none."""
    meta = pod["metadata"]
    status = pod.get("status") or {}
    for index, rule in enumerate((spec.get("podFailurePolicy") or {}).get("rules") or []):
        action = rule.get("action", "Count")
        on_codes = rule.get("onExitCodes")
        if on_codes:
            values = set(on_codes.get("values") or [])
            for cs in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
                if on_codes.get("containerName") and cs.get("name") != on_codes["containerName"]:
                    continue
                code = ((cs.get("state") or {}).get("terminated") or {}).get("exitCode")
                if code is None or code == 0:
                    continue
                if (code in values) == (on_codes.get("operator", "In") == "In"):
                    return action, (f"Container {cs.get('name')} for pod {meta['namespace']}/{meta['name']} "
                                    f"failed with exit code {code} matching {action} rule at index {index}")
        for pattern in rule.get("onPodConditions") or []:
            for cond in status.get("conditions") or []:
                if cond.get("type") == pattern.get("type") and cond.get("status") == pattern.get("status", "True"):
                    return action, (f"Pod {meta['namespace']}/{meta['name']} has condition {cond['type']} "
                                    f"matching {action} rule at index {index}")
    return "Count", ""


def _pod_end(pod: Obj) -> dt.datetime:
    ended = None
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        t = parse_time(((cs.get("state") or {}).get("terminated") or {}).get("finishedAt"))
        if t and (ended is None or t > ended):
            ended = t
    return ended or parse_time((pod.get("metadata") or {}).get("deletionTimestamp")) or now_utc()
