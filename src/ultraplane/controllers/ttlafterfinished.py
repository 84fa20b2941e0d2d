"""The TTL-after-finished controller: a finished Job with spec.ttlSecondsAfterFinished is deleted once it
has been finished that long.

As kube-controller-manager's: finished means a Complete or Failed condition with status True; the clock
starts at the condition's lastTransitionTime (completionTime for Complete when set). Before deleting, the
Job is read again from the API server (the TTL may have been changed), and it is deleted in the
Foreground with uid and resourceVersion preconditions, so its pods go first.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from ultraplane.client.http import ApiError, KubeClient
from ultraplane.controllers.base import Controller, InformerFactory

log = logging.getLogger("ultraplane.controllers.ttlafterfinished")
Obj = dict[str, Any]
JOBS = "/apis/batch/v1/jobs"


def _parse(stamp: str | None) -> float | None:
    if not stamp:
        return None
    try:
        return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def expires_at(job: Obj) -> float | None:
    """When the job's TTL runs out (epoch seconds), or None when it has no TTL or has not finished."""
    ttl = (job.get("spec") or {}).get("ttlSecondsAfterFinished")
    if ttl is None or job["metadata"].get("deletionTimestamp"):
        return None
    status = job.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("type") in ("Complete", "Failed") and cond.get("status") == "True":
            finished = (_parse(status.get("completionTime")) if cond["type"] == "Complete" else None) or \
                _parse(cond.get("lastTransitionTime"))
            if finished is not None:
                return finished + int(ttl)
    return None


class TTLAfterFinishedController(Controller):
    name = "ttl-after-finished"
    workers = 2

    def __init__(self, client: KubeClient, informers: InformerFactory) -> None:
        super().__init__(client, informers)
        self.jobs = informers.informer(JOBS)
        self.jobs.add_handler(self._maybe_enqueue, lambda old, new: self._maybe_enqueue(new), None)

    def _maybe_enqueue(self, job: Obj) -> None:
        if expires_at(job) is not None:
            self.enqueue(job)

    async def sync(self, key: str) -> None:
        job = self.jobs.get(key)
        if job is None or (at := expires_at(job)) is None:
            return
        now = dt.datetime.now(dt.UTC).timestamp()
        if at > now:
            self.queue.add_after(key, at - now)
            return
        namespace, _, name = key.partition("/")
        path = f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}"
        try:
            fresh = await self.client.get(path)
        except ApiError as exc:
            if exc.code == 404:
                return
            raise
        at = expires_at(fresh)
        if at is None:
            return
        if at > now:
            self.queue.add_after(key, at - now)
            return
        meta = fresh["metadata"]
        try:
            await self.client.delete(path, {"apiVersion": "v1", "kind": "DeleteOptions",
                                            "propagationPolicy": "Foreground",
                                            "preconditions": {"uid": meta["uid"],
                                                              "resourceVersion": meta["resourceVersion"]}})
        except ApiError as exc:
            if exc.code != 404:
                raise
            return
        log.info("deleted finished job %s (ttlSecondsAfterFinished passed)", key)
