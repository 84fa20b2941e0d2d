"""The CronJob controller: the schedule arithmetic as a unit, and real cycles against the API server.

A real cycle is made deterministic by writing status.lastScheduleTime ten minutes into the past before
the controller starts: the most recent `* * * * *` time is then already due, whatever the clock says.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.apiserver.conftest import Cluster
from tests.controllers.workloads import Running, container, eventually, kget
from ultraplane.controllers.cronjob import CronJobController, job_name
from ultraplane.controllers.cronschedule import ScheduleError, most_recent, parse

Obj = dict[str, Any]
UTC = dt.UTC


def at(text: str, tz: dt.tzinfo = UTC) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=tz)


def test_schedule_next_times() -> None:
    assert parse("*/15 * * * *").next(at("2026-03-01T10:07:30")) == at("2026-03-01T10:15:00")
    assert parse("0 9-17/4 * * MON-FRI").next(at("2026-03-06T17:00:00")) == at("2026-03-09T09:00:00")  # Fri -> Mon
    assert parse("@hourly").next(at("2026-03-01T10:00:00")) == at("2026-03-01T11:00:00")
    assert parse("@monthly").next(at("2026-12-15T00:00:00")) == at("2027-01-01T00:00:00")
    assert parse("@every 90s").next(at("2026-03-01T10:00:00")) == at("2026-03-01T10:01:30")
    # both day fields restricted: either matches (the 13th, or a Friday)
    assert parse("0 0 13 * FRI").next(at("2026-03-01T00:00:00")) == at("2026-03-06T00:00:00")
    # only one restricted: both must hold
    assert parse("0 0 * * FRI").next(at("2026-03-01T00:00:00")) == at("2026-03-06T00:00:00")
    assert parse("0 0 31 2 *").next(at("2026-01-01T00:00:00")) is None  # never
    # in a time zone: 09:00 in New York is 14:00 UTC in winter and 13:00 in summer
    ny = ZoneInfo("America/New_York")
    assert parse("0 9 * * *").next(at("2026-01-10T10:00:00", ny)).astimezone(UTC) == at("2026-01-11T14:00:00")
    assert parse("0 9 * * *").next(at("2026-07-10T10:00:00", ny)).astimezone(UTC) == at("2026-07-11T13:00:00")
    for bad in ("* * * *", "61 * * * *", "TZ=UTC * * * * *", "@fortnightly", "5-1 * * * *"):
        with pytest.raises(ScheduleError):
            parse(bad)


def test_most_recent_and_missed() -> None:
    every_minute = parse("* * * * *")
    now = at("2026-03-01T10:00:30")
    assert most_recent(every_minute, at("2026-03-01T10:00:10"), now) == (None, 0)
    assert most_recent(every_minute, at("2026-03-01T09:59:10"), now) == (at("2026-03-01T10:00:00"), 1)
    latest, missed = most_recent(every_minute, at("2026-02-28T10:00:00"), now)
    assert latest == at("2026-03-01T10:00:00") and missed == 24 * 60
    assert job_name("report", at("2026-03-01T10:00:00")) == f"report-{int(at('2026-03-01T10:00:00').timestamp()) // 60}"


def cronjob(name: str, policy: str = "Allow") -> str:
    return json.dumps({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": name},
                       "spec": {"schedule": "* * * * *", "concurrencyPolicy": policy, "jobTemplate": {
                           "metadata": {"labels": {"team": "data"}},
                           "spec": {"template": {"spec": {"containers": [container()], "restartPolicy": "Never"}}}}}})


def backdate(cluster: Cluster, ns: str, name: str, extra: Obj | None = None) -> None:
    past = (dt.datetime.now(UTC) - dt.timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    cluster.ok("patch", "cronjob", name, "-n", ns, "--subresource=status", "--type=merge", "-p",
               json.dumps({"status": {"lastScheduleTime": past, **(extra or {})}}))


def owned_jobs(cluster: Cluster, ns: str, cj: str) -> list[Obj]:
    return [j for j in kget(cluster, "jobs", "-n", ns)["items"]
            if any(r["name"] == cj for r in j["metadata"].get("ownerReferences") or [])
            and not j["metadata"].get("deletionTimestamp")]


def test_one_cycle_then_completion(cluster: Cluster) -> None:
    ns = "cron-cycle"
    cluster.ok("create", "namespace", ns)
    cluster.ok("apply", "-n", ns, "-f", "-", input=cronjob("report"))
    backdate(cluster, ns, "report")
    with Running(cluster, [CronJobController]):
        [job] = eventually(lambda: owned_jobs(cluster, ns, "report"))
        cj = kget(cluster, "cronjob", "report", "-n", ns)
        scheduled = dt.datetime.fromisoformat(cj["status"]["lastScheduleTime"].replace("Z", "+00:00"))
        assert dt.datetime.now(UTC) - scheduled < dt.timedelta(minutes=2) and scheduled.second == 0
        assert job["metadata"]["name"] == job_name("report", scheduled)
        assert job["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"] == \
            scheduled.strftime("%Y-%m-%dT%H:%M:%SZ")
        assert job["metadata"]["labels"]["team"] == "data"
        ref = job["metadata"]["ownerReferences"][0]
        assert (ref["kind"], ref["name"], ref["controller"]) == ("CronJob", "report", True)
        assert [a["name"] for a in cj["status"]["active"]] == [job["metadata"]["name"]]

        # the job finishes (as the job controller would write it): no longer active, lastSuccessfulTime set
        done = dt.datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        cluster.ok("patch", "job", job["metadata"]["name"], "-n", ns, "--subresource=status", "--type=merge", "-p",
                   json.dumps({"status": {"startTime": done, "completionTime": done, "succeeded": 1, "conditions": [
                       {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached"},
                       {"type": "Complete", "status": "True", "reason": "CompletionsReached"}]}}))
        status = eventually(lambda: (s := kget(cluster, "cronjob", "report", "-n", ns)["status"]).get(
            "lastSuccessfulTime") and s)
        assert "active" not in status and status["lastSuccessfulTime"] == done
        events = kget(cluster, "events", "-n", ns, "--field-selector", "involvedObject.name=report")["items"]
        reasons = {(e["reason"], e["message"]) for e in events}
        assert ("SuccessfulCreate", f"Created job {job['metadata']['name']}") in reasons
        assert ("SawCompletedJob", f"Saw completed job: {job['metadata']['name']}, condition: Complete") in reasons

        # kubectl create job --from=cronjob (client-side) works against it
        cluster.ok("create", "job", "report-manual", "-n", ns, "--from=cronjob/report")
        manual = kget(cluster, "job", "report-manual", "-n", ns)
        assert manual["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"] == "manual"
        assert manual["metadata"]["ownerReferences"][0]["name"] == "report"


def running_job(cluster: Cluster, ns: str, cj: str, name: str) -> Obj:
    owner = kget(cluster, "cronjob", cj, "-n", ns)
    cluster.ok("apply", "-n", ns, "-f", "-", input=json.dumps({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob", "name": cj,
                                                        "uid": owner["metadata"]["uid"], "controller": True}]},
        "spec": {"template": {"spec": {"containers": [container()], "restartPolicy": "Never"}}}}))
    job = kget(cluster, "job", name, "-n", ns)
    return {"kind": "Job", "namespace": ns, "name": name, "uid": job["metadata"]["uid"], "apiVersion": "batch/v1"}


def test_forbid_and_replace(cluster: Cluster) -> None:
    ns = "cron-policy"
    cluster.ok("create", "namespace", ns)
    cluster.ok("apply", "-n", ns, "-f", "-", input=cronjob("single", "Forbid"))
    cluster.ok("apply", "-n", ns, "-f", "-", input=cronjob("fresh", "Replace"))
    backdate(cluster, ns, "single", {"active": [running_job(cluster, ns, "single", "single-1")]})
    backdate(cluster, ns, "fresh", {"active": [running_job(cluster, ns, "fresh", "fresh-1")]})
    with Running(cluster, [CronJobController]):
        # Replace: the running job goes, the scheduled one comes
        eventually(lambda: [j["metadata"]["name"] for j in owned_jobs(cluster, ns, "fresh")] not in ([], ["fresh-1"])
                   and "fresh-1" not in [j["metadata"]["name"] for j in owned_jobs(cluster, ns, "fresh")])
        # Forbid: the running job stays the only one
        events = eventually(lambda: [e for e in kget(cluster, "events", "-n", ns, "--field-selector",
                                                    "involvedObject.name=single")["items"]
                                     if e["reason"] == "JobAlreadyActive"])
        assert events[0]["message"] == \
            "Not starting job because prior execution is running and concurrency policy is Forbid"
        assert [j["metadata"]["name"] for j in owned_jobs(cluster, ns, "single")] == ["single-1"]
        assert [a["name"] for a in kget(cluster, "cronjob", "single", "-n", ns)["status"]["active"]] == ["single-1"]
