"""The CronJob controller: a Job per schedule time, within the concurrency policy and deadline.

As kube's cronjob_controllerv2: each sync reconciles status.active with the jobs the CronJob owns
(SawCompletedJob, lastSuccessfulTime), deletes finished jobs beyond the history limits, then looks
for the most recent schedule time since lastScheduleTime (or creation) that is not older than
startingDeadlineSeconds. Forbid skips it while a job runs, Replace deletes the running jobs first.
The job is `<cronjob>-<scheduled time in minutes since the epoch>`, carries the
batch.kubernetes.io/cronjob-scheduled-timestamp annotation and is owned by the CronJob; the key is
requeued for the next schedule time.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from ultraplane.client.http import ApiError, KubeClient
from ultraplane.client.informer import object_key
from ultraplane.controllers.base import Controller, InformerFactory
from ultraplane.controllers.cronschedule import ScheduleError, most_recent, parse, zone
from ultraplane.controllers.podcontrol import (
    EventRecorder,
    controller_ref,
    deep_copy,
    is_terminating,
    namespace_index,
    now_utc,
    owner_ref,
    parse_time,
)

Obj = dict[str, Any]
CRONJOBS = "/apis/batch/v1/cronjobs"
SCHEDULED_AT = "batch.kubernetes.io/cronjob-scheduled-timestamp"
TOO_MANY_MISSED = 100


def finished_condition(job: Obj) -> str | None:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") in ("Complete", "Failed") and cond.get("status") == "True":
            return cond["type"]
    return None


def job_name(cronjob: str, scheduled: dt.datetime) -> str:
    """getJobName: the scheduled time in minutes since the epoch, so one time makes one job."""
    return f"{cronjob}-{int(scheduled.timestamp()) // 60}"


def rfc3339_in(when: dt.datetime) -> str:
    text = when.isoformat()
    return text.replace("+00:00", "Z")


class CronJobController(Controller):
    name = "cronjob"
    component = "cronjob-controller"
    workers = 2

    def __init__(self, client: KubeClient, informers: InformerFactory) -> None:
        super().__init__(client, informers)
        self.cronjobs = informers.informer(CRONJOBS)
        self.jobs = informers.informer("/apis/batch/v1/jobs")
        self.jobs_by_ns = namespace_index(self.jobs)
        self.recorder = EventRecorder(client, self.component)
        self.cronjobs.add_handler(self.enqueue, self._cronjob_updated, None)
        self.jobs.add_handler(self._job_changed, lambda old, new: self._job_changed(new), self._job_changed)

    def _cronjob_updated(self, old: Obj, new: Obj) -> None:
        self.enqueue(new)

    def _job_changed(self, job: Obj) -> None:
        ref = controller_ref(job)
        if ref is not None and ref.get("kind") == "CronJob":
            self.queue.add(f"{job['metadata'].get('namespace', '')}/{ref.get('name', '')}")

    async def sync(self, key: str) -> None:
        cached = self.cronjobs.get(key)
        if cached is None:
            return
        cj = deep_copy(cached)
        ns = cj["metadata"]["namespace"]
        uid = cj["metadata"]["uid"]
        jobs = [j for j in self.jobs_by_ns.list(ns) if (controller_ref(j) or {}).get("uid") == uid]
        status = cj.setdefault("status", {})
        before = deep_copy(status)
        self.reconcile_active(cj, jobs)
        await self.cleanup_history(cj, jobs)
        after = await self.schedule(cj, jobs)
        if status != before:
            await self.write_status(cj)
        if after is not None:
            self.queue.add_after(key, max(after, 0.0) + 0.1)

    def reconcile_active(self, cj: Obj, jobs: list[Obj]) -> None:
        status = cj["status"]
        active = status.get("active") or []
        names = {j["metadata"]["name"]: j for j in jobs}
        kept = []
        for ref in active:
            job = names.get(ref.get("name", ""))
            if job is None or job["metadata"]["uid"] != ref.get("uid"):
                continue  # deleted behind our back: not active any more
            if finished_condition(job):
                continue
            kept.append(ref)
        active_names = {r.get("name") for r in active}
        for job in jobs:
            outcome = finished_condition(job)
            if outcome and job["metadata"]["name"] in active_names:
                self.recorder.event(cj, "Normal", "SawCompletedJob",
                                    f"Saw completed job: {job['metadata']['name']}, condition: {outcome}")
            if outcome == "Complete":
                done = (job.get("status") or {}).get("completionTime")
                last = status.get("lastSuccessfulTime")
                if done and (not last or parse_time(done) > parse_time(last)):  # type: ignore[operator]
                    status["lastSuccessfulTime"] = done
        if kept:
            status["active"] = kept
        else:
            status.pop("active", None)

    async def cleanup_history(self, cj: Obj, jobs: list[Obj]) -> None:
        spec = cj["spec"]
        for outcome, field in (("Complete", "successfulJobsHistoryLimit"), ("Failed", "failedJobsHistoryLimit")):
            limit = spec.get(field)
            if limit is None:
                continue
            finished = [j for j in jobs if finished_condition(j) == outcome and not is_terminating(j)]
            finished.sort(key=lambda j: ((j.get("status") or {}).get("startTime") or
                                         j["metadata"].get("creationTimestamp") or ""))
            for job in finished[:max(0, len(finished) - int(limit))]:
                await self.delete_job(cj, job)

    async def delete_job(self, cj: Obj, job: Obj) -> None:
        name = job["metadata"]["name"]
        try:
            await self.client.delete(f"/apis/batch/v1/namespaces/{cj['metadata']['namespace']}/jobs/{name}",
                                     {"kind": "DeleteOptions", "apiVersion": "v1",
                                      "propagationPolicy": "Background"})
        except ApiError as exc:
            if exc.code != 404:
                self.recorder.event(cj, "Warning", "FailedDelete", f"Deleted job: {exc.message}")
                raise
            return
        self.recorder.event(cj, "Normal", "SuccessfulDelete", f"Deleted job {name}")

    async def schedule(self, cj: Obj, jobs: list[Obj]) -> float | None:
        """Start the job of the most recent unmet schedule time; seconds until the next one."""
        spec, status = cj["spec"], cj["status"]
        if is_terminating(cj):
            return None
        try:
            tz = zone(spec.get("timeZone"))
        except ScheduleError:
            self.recorder.event(cj, "Warning", "UnknownTimeZone", f"invalid timeZone: {spec.get('timeZone')!r}")
            return None
        if spec.get("suspend"):
            return None
        try:
            sched = parse(spec.get("schedule", ""))
        except ScheduleError as exc:
            self.recorder.event(cj, "Warning", "UnparseableSchedule",
                                f"unparseable schedule: {spec.get('schedule', '')!r} : {exc}")
            return None
        now = now_utc().astimezone(tz)
        earliest = parse_time(status.get("lastScheduleTime") or cj["metadata"].get("creationTimestamp")) or now
        earliest = earliest.astimezone(tz)
        deadline = spec.get("startingDeadlineSeconds")
        if deadline is not None:
            window_start = now - dt.timedelta(seconds=int(deadline))
            earliest = max(earliest, window_start)
        scheduled, missed = most_recent(sched, earliest, now)
        following = sched.next(now)
        wait = (following - now).total_seconds() if following else None
        if scheduled is None:
            return wait
        if missed > TOO_MANY_MISSED:
            self.recorder.event(cj, "Warning", "TooManyMissedTimes",
                                f"too many missed start times: {missed}. Set or decrease "
                                ".spec.startingDeadlineSeconds or check clock skew")
        if deadline is not None and scheduled + dt.timedelta(seconds=int(deadline)) < now:
            self.recorder.event(cj, "Warning", "MissSchedule",
                                f"Missed scheduled time to start a job: {rfc3339_in(scheduled)}")
            return wait
        name = job_name(cj["metadata"]["name"], scheduled)
        if any(r.get("name") == name for r in status.get("active") or []):
            return wait
        active = status.get("active") or []
        policy = spec.get("concurrencyPolicy", "Allow")
        if policy == "Forbid" and active:
            self.recorder.event(cj, "Normal", "JobAlreadyActive",
                                "Not starting job because prior execution is running and concurrency policy is Forbid")
            return wait
        if policy == "Replace" and active:
            by_name = {j["metadata"]["name"]: j for j in jobs}
            for ref in active:
                job = by_name.get(ref.get("name", ""))
                if job is not None:
                    await self.delete_job(cj, job)
            status.pop("active", None)
        job = self.job_for(cj, scheduled, name)
        try:
            created = await self.client.create(f"/apis/batch/v1/namespaces/{cj['metadata']['namespace']}/jobs", job)
        except ApiError as exc:
            if exc.code != 409:
                self.recorder.event(cj, "Warning", "FailedCreate", f"Error creating job: {exc.message}")
                raise
            created = self.jobs.get(f"{cj['metadata']['namespace']}/{name}")  # made by an earlier pass
            if created is None or (controller_ref(created) or {}).get("uid") != cj["metadata"]["uid"]:
                return wait
        else:
            self.recorder.event(cj, "Normal", "SuccessfulCreate", f"Created job {name}")
        if not finished_condition(created):
            status["active"] = [*(status.get("active") or []), {
                "kind": "Job", "namespace": created["metadata"]["namespace"], "name": name,
                "uid": created["metadata"]["uid"], "apiVersion": "batch/v1",
                "resourceVersion": created["metadata"].get("resourceVersion", "")}]
        status["lastScheduleTime"] = scheduled.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return wait

    def job_for(self, cj: Obj, scheduled: dt.datetime, name: str) -> Obj:
        template = deep_copy(cj["spec"].get("jobTemplate") or {})
        meta = template.get("metadata") or {}
        labels = dict(meta.get("labels") or {})
        annotations = dict(meta.get("annotations") or {})
        annotations[SCHEDULED_AT] = rfc3339_in(scheduled)
        job_meta: Obj = {"name": name, "namespace": cj["metadata"]["namespace"], "annotations": annotations,
                         "ownerReferences": [owner_ref(cj, "batch/v1", "CronJob")]}
        if labels:
            job_meta["labels"] = labels
        return {"apiVersion": "batch/v1", "kind": "Job", "metadata": job_meta, "spec": template.get("spec") or {}}

    async def write_status(self, cj: Obj) -> None:
        meta = cj["metadata"]
        try:
            await self.client.update(f"/apis/batch/v1/namespaces/{meta['namespace']}/cronjobs/{meta['name']}/status",
                                     cj)
        except ApiError as exc:
            if exc.code == 409:
                self.queue.add_after(object_key(cj), 0.1)
            elif exc.code != 404:
                raise
