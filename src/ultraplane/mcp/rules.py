"""The diagnose rules: each reads the gathered evidence of a pod and, when it applies, returns a Finding.

A Finding names the runbook it matches, the cause in one sentence, the fix, and the evidence lines it rests
on (quoted from status, events and logs). Findings are ranked by the rule's specificity: an OOM kill or a
DNS error in the logs explains a crash loop better than the crash loop itself, so they rank first.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from ultraplane.mcp import runbooks
from ultraplane.mcp.views import age, parse_time

Obj = dict[str, Any]
PULL_REASONS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")
DNS_ERRORS = re.compile(r"no such host|NXDOMAIN|SERVFAIL|could not resolve|can't resolve|cannot resolve|"
                        r"temporary failure in name resolution|name or service not known|ENOTFOUND|"
                        r"server can't find", re.I)
# rank: lower is more specific (wins when several rules apply)
RANK = {"oomkilled": 1, "dns-failures": 2, "imagepullbackoff": 3, "pending-pods": 4, "node-notready": 5,
        "probe-failures": 6, "job-backoff-failed": 7, "crashloopbackoff": 8, "pdb-blocked-drain": 9}


@dataclass
class Finding:
    runbook: str
    cause: str
    fix: str
    evidence: list[str] = field(default_factory=list)

    def as_dict(self) -> Obj:
        book = runbooks.corpus()[self.runbook]
        return {**asdict(self), "runbookTitle": book.title, "runbookUri": book.uri}


# ------------------------------------------------------------------------------------------------ pods
def pod_rules(ev: Obj) -> list[Finding]:
    findings: list[Finding] = []
    pod = ev["pod"]
    ref = f"pod {pod['namespace']}/{pod['name']}"
    events = ev["events"]
    workload = next((o for o in ev["owners"] if o.startswith("Deployment/")), None)
    undo = f"kubectl rollout undo {workload.lower()} -n {pod['namespace']}" if workload else None
    latest = ev["rollout"].get("latestChanges") or []
    newest = (ev["rollout"].get("revisions") or [{}])[-1]
    rollout_note = (f". The latest rollout (revision {newest.get('revision')}, {age(newest.get('created'))} ago) "
                    f"changed: {'; '.join(latest)}") if latest and newest else ""

    # Pending: not scheduled
    scheduled = next((c for c in pod["conditions"] if c.get("type") == "PodScheduled"), None)
    if scheduled and scheduled.get("status") == "False":
        message = scheduled.get("message") or ""
        failed = [e for e in events if "FailedScheduling" in e]
        evidence = [f"{ref}: condition PodScheduled=False reason {scheduled.get('reason')}: {message}", *failed[-1:]]
        requests = {c: r for c, r in pod["requests"].items() if r}
        if requests:
            evidence.append(f"requests: {requests}")
        reasons = [_unschedulable_reason(part, requests, pod) for part in _scheduler_reasons(message)]
        reasons.sort(key=lambda r: -r[0])
        cause = "the scheduler cannot place the pod: " + ("; ".join(r[1] for r in reasons) or message)
        fix = "; ".join(dict.fromkeys(r[2] for r in reasons)) or "see the FailedScheduling message"
        findings.append(Finding("pending-pods", cause, fix, evidence))

    config_notes = [f"config: {cfg['kind']} {cfg['name']} last changed {cfg['lastChanged']}, after the pod started"
                    for cfg in ev["config"] if cfg.get("changedAfterPodStart")]
    for c in ev["containers"]:
        state, last = c["state"], c["lastState"]
        waiting = state.get("waiting") or {}
        terminated = last.get("terminated") or state.get("terminated") or {}
        name = c["name"]
        logs = ev["logs"].get(name) or {}
        log_lines = (logs.get("previous") or []) + (logs.get("current") or [])
        if waiting.get("reason") in PULL_REASONS:
            message = waiting.get("message") or ""
            failed = next((e for e in reversed(events) if "Failed to pull image" in e), "")
            detail = failed or message
            image = c.get("image")
            if re.search(r"no such host|lookup .* on|dial tcp", detail):
                why = "its registry host does not resolve"
            elif re.search(r"not found|manifest unknown", detail, re.I):
                why = "the repository or tag does not exist"
            elif re.search(r"unauthorized|authentication required|denied|403", detail, re.I):
                why = "the registry refuses the credentials (imagePullSecrets)"
            else:
                why = "the pull fails"
            fix = f'correct the image reference (kubectl set image ... {name}=<image:tag>)'
            if undo:
                fix += f" or roll back to the last working revision ({undo})"
            findings.append(Finding(
                "imagepullbackoff", f'container "{name}" cannot pull image "{image}": {why}' + rollout_note, fix,
                [f"{ref} container {name}: waiting {waiting.get('reason')}: {message}", *([failed] if failed else []),
                 *[f"rollout: {x}" for x in latest if "image" in x]]))
            continue
        if terminated.get("reason") == "OOMKilled":
            findings.append(Finding(
                "oomkilled", f'container "{name}" was killed for exceeding its memory limit '
                             f"(exit code {terminated.get('exitCode')})",
                "raise resources.limits.memory (and requests) or bound the application's memory use",
                [f"{ref} container {name}: terminated OOMKilled, exit {terminated.get('exitCode')}"]))
            continue
        dns = [line for line in log_lines if DNS_ERRORS.search(line)]
        if dns and (c["restartCount"] or not c["ready"]):
            host = re.search(r"(?:lookup|resolve|resolve host|find)\s+'?\"?([\w.-]+)", dns[-1])
            name_hint = f' "{host.group(1)}"' if host else ""
            findings.append(Finding(
                "dns-failures", f'container "{name}" fails because the name{name_hint} does not resolve in the '
                                "cluster DNS",
                "check the name and namespace of the Service it looks up (use <service>.<namespace>.svc), that "
                "the Service exists, and that the DNS pods are running; make the program retry lookups",
                [f"{ref} container {name} log: {dns[-1]}",
                 f"{ref} container {name}: restartCount {c['restartCount']}"]))
        unhealthy = [e for e in events if "Unhealthy" in e and "probe failed" in e]
        if unhealthy:
            findings.append(Finding(
                "probe-failures", f'a probe of container "{name}" fails: {unhealthy[-1].split(": ", 1)[-1]}',
                "point the probe at the port/path the app serves, or relax its timing (startupProbe, "
                "initialDelaySeconds, failureThreshold)", unhealthy[-2:]))
        looping = waiting.get("reason") == "CrashLoopBackOff" or (c["restartCount"] and terminated)
        ended = state.get("terminated") or {}
        if not looping and ended.get("exitCode"):
            last_line = next((line for line in reversed(log_lines) if line.strip()), None)
            in_job = any(o.startswith("Job/") for o in ev["owners"])
            findings.append(Finding(
                "job-backoff-failed" if in_job else "crashloopbackoff",
                f'container "{name}" exited with code {ended.get("exitCode")} ({ended.get("reason", "Error")})'
                + (f'; its last log line: "{last_line.strip()}"' if last_line else ""),
                "fix the command or its input from the logs, then run it again",
                [f"{ref} container {name}: terminated {ended.get('reason', 'Error')} exit {ended.get('exitCode')}",
                 *([f"{ref} container {name} log: {last_line.strip()}"] if last_line else [])]))
        if looping:
            code = terminated.get("exitCode")
            ran = _ran_seconds(terminated)
            last_line = next((line for line in reversed(log_lines) if line.strip()), None)
            if code == 0 and pod["restartPolicy"] == "Always":
                cause = (f'container "{name}" runs to completion (exit 0) and is restarted by restartPolicy Always '
                         "again and again")
                fix = "run it as a Job, or make the command a long-running process"
            else:
                cause = (f'container "{name}" exits with code {code} ({terminated.get("reason", "Error")})'
                         f"{f' after {ran:g}s' if ran is not None else ''} and is restarted with back-off "
                         f"({c['restartCount']} restarts)")
                if last_line:
                    cause += f'; its last log line: "{last_line.strip()}"'
                fix = "fix the command or configuration that makes it exit (see the previous logs)"
                if undo:
                    fix += f", or roll back ({undo})"
            backoff = [e for e in events if "Back-off restarting" in e]
            findings.append(Finding(
                "crashloopbackoff", cause + rollout_note, fix,
                [f"{ref} container {name}: state {_state_text(state)}, last state {_state_text(last)}, "
                 f"restartCount {c['restartCount']}", *backoff[-1:],
                 *([f"{ref} container {name} log: {last_line.strip()}"] if last_line else []),
                 *[f"rollout: {x}" for x in latest], *config_notes]))

    node = ev.get("node")
    if node and node.get("ready") not in (None, "True"):
        findings.append(Finding(
            "node-notready", f"the pod's node {node['name']} is NotReady ({node.get('readyReason')}: "
                             f"{node.get('readyMessage')})",
            "recover or replace the node; its pods are evicted after the not-ready/unreachable toleration expires",
            [f"node {node['name']}: Ready={node.get('ready')} since heartbeat {node.get('lastHeartbeat')}"]))
    for cfg in ev["config"]:
        if cfg.get("missing"):
            findings.append(Finding(
                "crashloopbackoff", f"the pod references {cfg['kind']} {cfg['name']}, which does not exist",
                f"create the {cfg['kind']} or fix the reference", [f"{cfg['kind']} {cfg['name']}: {cfg.get('error')}"]))
    return sorted(findings, key=lambda f: RANK.get(f.runbook, 99))


def _scheduler_reasons(message: str) -> list[str]:
    """"0/3 nodes are available: 2 Insufficient cpu, 1 node(s) were unschedulable. preemption: ..." → the
    per-node reasons."""
    _, _, rest = message.partition("are available: ")
    head = rest.split(". preemption:", 1)[0].rstrip(".")
    return [part.strip() for part in re.split(r", (?=\d+ )", head) if part.strip()]


def _unschedulable_reason(part: str, requests: Obj, pod: Obj) -> tuple[int, str, str]:
    """(nodes, explanation, fix) for one reason of a FailedScheduling message."""
    count_text, _, reason = part.partition(" ")
    count = int(count_text) if count_text.isdigit() else 0
    nodes = f"{count} node(s)"
    if reason.startswith("Insufficient "):
        resource = reason.removeprefix("Insufficient ").rstrip(".")
        return (count, f"{nodes} lack the free {resource} the pod requests ({requests})",
                "lower the container's resources.requests to what it needs (or fix a unit typo), or add nodes large "
                "enough for it")
    taint = re.search(r"untolerated taint \{([^}]*)\}", reason)
    if "were unschedulable" in reason or (taint and "node.kubernetes.io/unschedulable" in taint.group(1)):
        return (count, f"{nodes} cordoned (unschedulable)", "uncordon the nodes once their maintenance is over")
    if taint:
        return (count, f"{nodes} carry the taint {{{taint.group(1)}}} that the pod does not tolerate",
                "add the matching toleration to the pod, or remove the taint (kubectl taint nodes NODE KEY-)")
    if "affinity/selector" in reason or "node affinity" in reason:
        return (count, f"{nodes} do not match the pod's nodeSelector/affinity ({pod.get('nodeSelector')})",
                "fix the nodeSelector/affinity, or label nodes to match (kubectl label nodes NODE key=value)")
    return (count, part, "see the FailedScheduling message for each node's reason")


def _ran_seconds(terminated: Obj) -> float | None:
    start, end = parse_time(terminated.get("startedAt")), parse_time(terminated.get("finishedAt"))
    return round((end - start).total_seconds(), 1) if start and end else None


def _state_text(state: Obj) -> str:
    if not state:
        return "(none)"
    (what, detail), = list(state.items())[:1]
    if what == "terminated":
        return f"terminated {detail.get('reason', '')} exit {detail.get('exitCode')}"
    if what == "waiting":
        return f"waiting {detail.get('reason', '')}"
    return what
