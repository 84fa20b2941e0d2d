"""A simulated pod's containers as the kubelet runs them: exits, restarts with back-off, probes, status.

Each container instance has a *timeline*, computed from its run plan (startup.py) and its probes:
`(seconds after start, what, detail)` for "started" (startup probe passed), "ready" (True/False),
"unhealthy" (a failed probe's event message), "kill" (liveness/startup failure) and "exit" (its exit
code). The simulator (sim.py) sets a timer for the next entry of any container, applies what is due,
and writes the pod's status once per change. A container with nothing ahead (a service without failing probes)
has no timeline and costs nothing.

Kubelet behaviour reproduced here:

- restartPolicy: Always restarts every exit, OnFailure a non-zero one, Never none; the pod phase is
  kubelet's getPhase (a container waiting with a last termination counts as stopped, so a crash-looping
  pod stays Running; Never/OnFailure end Succeeded or Failed once every container stopped for good).
- Restart back-off is the kubelet's flowcontrol.Backoff per container (key pod+container): the first
  restart is immediate, then the container waits in CrashLoopBackOff for 10 s, 20 s, ... 300 s
  measured from its finishedAt; an entry untouched for twice the maximum (10 min) starts over.
  While it waits, the pod worker retries every 10 s, and each retry records a BackOff event.
- Probes: a worker per probe ticks at initialDelaySeconds and then every periodSeconds after the
  container starts (a real worker ticks on its own phase, up to one period later); liveness and
  readiness wait for the startup probe. Each failure records "<Kind> probe failed: <output>"
  (Unhealthy); failureThreshold failures in a row kill the container ("Container x failed liveness
  probe, will be restarted", Killing), which stops as it would on deletion: at once when its program
  honours SIGTERM (exit 0), at the end of the grace period (probe or pod terminationGracePeriodSeconds)
  with 137 when PID 1 is a shell or sleep. Readiness needs successThreshold passes in a row; the
  container is not ready until then, and turns unready after failureThreshold failures.
- What a probe sees: `exec` commands run in the shell interpreter against the files the container's
  command created or removed by then, so `cat /tmp/healthy` fails once the script removed it, and
  `false`/`exit 1` always fail. Nothing listens in a simulated pod, so `httpGet`, `tcpSocket` and
  `grpc` probes pass, unless the pod annotation `ultraplane.io/failing-probes` lists them:
  comma-separated `[container:]kind[@seconds]` entries (kind liveness, readiness or startup; seconds
  after the container's start from which it fails, default 0), e.g. `app:liveness@30,readiness`.
  They then fail with Go's connection-refused errors.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ultraplane.nodes.objects import container_id, init_statuses, rfc3339, scheduled_condition
from ultraplane.nodes.shell import exists_at, interpret
from ultraplane.nodes.startup import RunPlan

Obj = dict[str, Any]
FAILING_PROBES_ANNOTATION = "ultraplane.io/failing-probes"
POD_WORKER_RETRY = 10.0  # the kubelet's pod worker retries a failed sync (a container in back-off) every 10 s
DEFAULT_GRACE = 30.0
Happening = tuple[float, str, Any]  # (seconds after the instance started, what, detail)


# ------------------------------------------------------------------------------------------- back-off
@dataclass
class BackoffPolicy:
    initial: float = 10.0  # kubelet's backOffPeriod
    maximum: float = 300.0  # MaxContainerBackOff


class Backoff:
    """One container's entry of the kubelet's flowcontrol.Backoff (no jitter, as the kubelet's)."""
    __slots__ = ("delay", "updated")

    def __init__(self) -> None:
        self.delay = 0.0
        self.updated: float | None = None

    def _expired(self, policy: BackoffPolicy, ts: float) -> bool:
        return self.updated is None or ts - self.updated > 2 * policy.maximum

    def wait(self, policy: BackoffPolicy, ts: float | None, now: float) -> float:
        """IsInBackOffSince(ts): seconds left before the container may start again (0: now)."""
        if ts is None or self._expired(policy, ts):
            return 0.0
        return max(0.0, ts + self.delay - now)

    def next(self, policy: BackoffPolicy, ts: float, now: float) -> None:
        self.delay = policy.initial if self._expired(policy, ts) else min(self.delay * 2, policy.maximum)
        self.updated = now


def go_duration(seconds: float) -> str:
    """Go's time.Duration String(): 10s, 1m20s, 5m0s, 500ms, 1.5s."""
    if seconds < 1:
        return f"{round(seconds * 1000, 6):g}ms" if seconds else "0s"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{round(secs, 9):.9f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{int(hours)}h{int(minutes)}m{text}"
    return f"{int(minutes)}m{text}" if minutes else text


# ------------------------------------------------------------------------------------------- probes
@dataclass
class Probe:
    kind: str  # Liveness | Readiness | Startup, as the kubelet names them in events
    spec: Obj
    delay: float
    period: float
    timeout: float
    success: int
    failure: int
    grace: float | None  # the probe's terminationGracePeriodSeconds

    @classmethod
    def of(cls, kind: str, spec: Obj) -> Probe:
        grace = spec.get("terminationGracePeriodSeconds")
        return cls(kind, spec, float(spec.get("initialDelaySeconds") or 0), float(spec.get("periodSeconds") or 10),
                   float(spec.get("timeoutSeconds") or 1), int(spec.get("successThreshold") or 1),
                   int(spec.get("failureThreshold") or 3), None if grace is None else float(grace))


def failing_probes(pod: Obj) -> dict[tuple[str, str], float]:
    """The failing-probes annotation: (container or "*", kind) → seconds after start it fails from."""
    value = ((pod.get("metadata") or {}).get("annotations") or {}).get(FAILING_PROBES_ANNOTATION, "")
    out: dict[tuple[str, str], float] = {}
    for entry in (e.strip() for e in value.split(",")):
        if not entry:
            continue
        entry, _, since = entry.partition("@")
        name, _, kind = entry.rpartition(":")
        try:
            out[(name or "*", kind.strip().lower())] = float(since) if since else 0.0
        except ValueError:
            continue
    return out


def _port(spec: Obj, container: Obj) -> str:
    port = spec.get("port", "")
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return str(p.get("containerPort", port))
    return str(port)


def _refused(spec: Obj, container: Obj, pod_ip: str, timeout: float) -> str:
    """The prober's error for a probe that finds nothing listening (Go's net/http and net errors)."""
    if "httpGet" in spec:
        get = spec["httpGet"]
        host = get.get("host") or pod_ip
        port = _port(get, container)
        return (f'Get "{str(get.get("scheme") or "HTTP").lower()}://{host}:{port}{get.get("path") or "/"}": '
                f"dial tcp {host}:{port}: connect: connection refused")
    if "tcpSocket" in spec:
        host = spec["tcpSocket"].get("host") or pod_ip
        return f"dial tcp {host}:{_port(spec['tcpSocket'], container)}: connect: connection refused"
    if "grpc" in spec:
        return f'timeout: failed to connect service "{pod_ip}:{spec["grpc"].get("port", "")}" within {timeout:g}s'
    return ""


class Prober:
    """What one probe of one container instance answers at a given time."""
    __slots__ = ("probe", "container", "plan", "pod_ip", "fails_from", "settles")

    def __init__(self, probe: Probe, container: Obj, plan: RunPlan, pod_ip: str, fails_from: float | None) -> None:
        self.probe, self.container, self.plan, self.pod_ip = probe, container, plan, pod_ip
        self.fails_from = fails_from
        # after this the answer never changes: the last file change, or the annotation's time
        self.settles = max([t for t, _, _ in plan.files] + [fails_from or 0.0] + [0.0])

    def run(self, at: float) -> tuple[bool, str]:
        spec = self.probe.spec
        if "exec" in spec:
            argv = [str(a) for a in (spec["exec"] or {}).get("command") or []]
            done = interpret(argv, batch=True, exists=exists_at(self.plan.files, at))
            if done.seconds is None or done.seconds > self.probe.timeout:
                return False, f'command "{" ".join(argv)}" timed out'
            output = "\n".join(done.output) + "\n" if done.output else ""
            return done.status == 0, output
        if self.fails_from is not None and at >= self.fails_from:
            return False, _refused(spec, self.container, self.pod_ip, self.probe.timeout)
        return True, ""


class _Worker:
    __slots__ = ("prober", "next", "last", "run")

    def __init__(self, prober: Prober) -> None:
        self.prober = prober
        self.next = prober.probe.delay  # the first probe, in seconds after the container's start
        self.last: bool | None = None
        self.run = 0


def stop_seconds(container: Obj) -> float:
    """How long SIGTERM takes: a shell or sleep as PID 1 ignores it (killed at the end of the grace period)."""
    argv = [str(x) for x in (container.get("command") or []) + (container.get("args") or [])]
    if argv and argv[0].rsplit("/", 1)[-1] in ("sleep", "sh", "bash"):
        return math.inf
    return 0.1


def timeline(pod: Obj, container: Obj, plan: RunPlan, pod_ip: str) -> Iterator[Happening]:
    """One container instance's future, in time order (see the module doc); it ends with its exit."""
    end = math.inf if plan.seconds is None else plan.seconds
    failing = failing_probes(pod)
    name = container.get("name", "")

    def workers_for(*kinds: str) -> list[_Worker]:
        out = []
        for kind in kinds:
            spec = container.get(f"{kind}Probe")
            if spec:
                fails = failing.get((name, kind), failing.get(("*", kind)))
                out.append(_Worker(Prober(Probe.of(kind.capitalize(), spec), container, plan, pod_ip, fails)))
        return out

    # liveness and readiness wait for the startup probe to pass
    workers = workers_for("startup") or workers_for("liveness", "readiness")
    ready = False
    while True:
        w = min(workers, key=lambda x: x.next, default=None)
        at = math.inf if w is None else w.next
        if end <= at:
            if end < math.inf:
                yield end, "exit", plan.exit_code
            return
        assert w is not None
        probe = w.prober.probe
        ok, output = w.prober.run(at)
        w.next = at + probe.period
        w.run = w.run + 1 if ok == w.last else 1
        w.last = ok
        if not ok:
            yield at, "unhealthy", f"{probe.kind} probe failed: {output}"
        kind = probe.kind
        if not ok and w.run >= probe.failure and kind in ("Liveness", "Startup"):
            yield at, "kill", kind.lower()
            grace = probe.grace if probe.grace is not None else float(
                (pod.get("spec") or {}).get("terminationGracePeriodSeconds", DEFAULT_GRACE) or 0)
            stop = stop_seconds(container)
            if end <= at + min(stop, grace):
                yield end, "exit", plan.exit_code
            else:
                yield at + min(stop, grace), "exit", 0 if stop < grace else 137
            return
        settled = ok and at >= w.prober.settles
        if kind == "Startup" and ok:
            yield at, "started", None
            workers = workers_for("liveness", "readiness")
            for x in workers:  # probing starts now (readiness is triggered at once by the status update)
                x.next = max(x.prober.probe.delay, at)
            if not any(x.prober.probe.kind == "Readiness" for x in workers):
                yield at, "ready", True
            continue
        if kind == "Readiness":
            if ok and not ready and w.run >= probe.success:
                ready = True
                yield at, "ready", True
            elif not ok and ready and w.run >= probe.failure:
                ready = False
                yield at, "ready", False
            settled = settled and ready
        if settled:  # its answer can no longer change: the worker has nothing more to say
            workers.remove(w)


# ------------------------------------------------------------------------------------------- containers
class Container:
    """One container of a pod: its current instance and what the kubelet remembers of the last one."""
    __slots__ = ("name", "spec", "plan", "restarts", "state", "detail", "last", "ready", "started", "cid",
                 "image_id", "started_at", "finished_at", "previous_finished", "backoff", "until", "future",
                 "upcoming", "retry_at", "killed", "backoff_ref")

    def __init__(self, spec: Obj, plan: RunPlan, image_id: str = "") -> None:
        self.name: str = spec.get("name", "")
        self.spec = spec
        self.plan = plan
        self.restarts = 0
        self.state = "waiting"  # waiting | running | terminated
        self.detail: Obj = {"reason": "ContainerCreating"}  # the state's body
        self.last: Obj = {}  # lastState
        self.ready = False
        self.started = False
        self.cid = ""
        self.image_id = image_id
        self.started_at: dt.datetime | None = None
        self.finished_at: dt.datetime | None = None
        self.previous_finished: float | None = None  # finishedAt of the instance before (back-off key time)
        self.backoff = Backoff()
        self.until: float | None = None  # waiting in CrashLoopBackOff until then (epoch seconds)
        self.retry_at: float | None = None  # next pod-worker retry (a BackOff event) while waiting
        self.future: Iterator[Happening] | None = None
        self.upcoming: tuple[float, str, Any] | None = None  # the timeline's next entry, absolute time
        self.killed = False  # the running instance failed a liveness/startup probe and is being stopped
        self.backoff_ref: float | None = None  # the finishedAt the pending back-off is measured from

    def start(self, pod: Obj, pod_ip: str, at: dt.datetime, uid: str) -> None:
        """A new instance runs from `at` (restartCount counts the ones before it)."""
        self.state, self.detail = "running", {"startedAt": rfc3339(at)}
        self.started_at, self.until, self.retry_at = at, None, None
        self.cid = container_id(uid, self.name, self.restarts)
        has_startup = bool(self.spec.get("startupProbe"))
        self.started = not has_startup
        self.ready = not has_startup and not self.spec.get("readinessProbe")
        self.future = timeline(pod, self.spec, self.plan, pod_ip)
        self.upcoming = None
        self.peek()

    def peek(self) -> tuple[float, str, Any] | None:
        """The next thing to happen to this container (absolute epoch seconds), cached."""
        if self.upcoming is None and self.future is not None and self.started_at is not None:
            entry = next(self.future, None)
            if entry is None:
                self.future = None
            else:
                self.upcoming = (self.started_at.timestamp() + entry[0], entry[1], entry[2])
        return self.upcoming

    def skip_past(self, now: float) -> None:
        """Adopted after a simulator restart: what was due before now already happened (no replayed events)."""
        while (entry := self.peek()) is not None and entry[0] < now and entry[1] in ("unhealthy", "ready", "started"):
            self.upcoming = None

    def due(self) -> float | None:
        """When this container next needs the simulator: a timeline entry, a retry or a restart."""
        entry = self.peek()
        times = [t for t in (entry[0] if entry else None, self.retry_at, self.until) if t is not None]
        return min(times) if times else None

    def exit(self, code: int, at: float) -> None:
        self.finished_at = dt.datetime.fromtimestamp(at, dt.UTC)
        self.state = "terminated"
        self.detail = {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                       "startedAt": rfc3339(self.started_at or self.finished_at),
                       "finishedAt": rfc3339(self.finished_at), "containerID": self.cid}
        self.ready = self.started = False
        self.future, self.upcoming = None, None

    def crash_loop(self, until: float, message: str) -> None:
        """Waiting out the back-off: the terminated instance moves to lastState."""
        self.last = {"terminated": self.detail} if self.state == "terminated" else self.last
        self.state, self.detail = "waiting", {"reason": "CrashLoopBackOff", "message": message}
        self.until = until

    def restart(self, pod: Obj, pod_ip: str, at: dt.datetime, uid: str) -> None:
        if self.state == "terminated":
            self.last = {"terminated": self.detail}
        self.restarts += 1
        self.start(pod, pod_ip, at, uid)

    def status(self) -> Obj:
        out: Obj = {"name": self.name, "state": {self.state: self.detail}, "lastState": self.last,
                    "ready": self.ready, "restartCount": self.restarts, "image": self.spec.get("image", ""),
                    "imageID": self.image_id, "started": self.started and self.state == "running"}
        if self.cid:
            out["containerID"] = self.cid
        return out


def will_restart(policy: str, code: int) -> bool:
    return policy == "Always" or (policy == "OnFailure" and code != 0)


def pod_phase(policy: str, containers: list[Container], terminal: bool = False) -> str:
    """kubelet's getPhase over the regular containers."""
    running = waiting = stopped = succeeded = 0
    for c in containers:
        if c.state == "running":
            running += 1
        elif c.state == "terminated":
            stopped += 1
            succeeded += c.detail.get("exitCode") == 0
        elif c.last.get("terminated"):
            stopped += 1  # waiting to restart after a termination
        else:
            waiting += 1
    if waiting:
        return "Pending"
    if running:
        return "Running"
    if not stopped:
        return "Pending"
    if terminal:
        return "Succeeded" if stopped == succeeded else "Failed"
    if policy == "Always":
        return "Running"
    if stopped == succeeded:
        return "Succeeded"
    return "Failed" if policy == "Never" else "Running"


def _condition(kind: str, status: str, previous: dict[str, Obj], stamp: str, reason: str = "",
               message: str = "") -> Obj:
    before = previous.get(kind)
    since = before["lastTransitionTime"] if before and before.get("status") == status and \
        before.get("lastTransitionTime") else stamp
    cond: Obj = {"type": kind, "status": status, "lastProbeTime": None, "lastTransitionTime": since}
    if reason:
        cond["reason"] = reason
    if message:
        cond["message"] = message
    return cond


def pod_status(pod: Obj, containers: list[Container], phase: str, host_ip: str, pod_ip: str, start: dt.datetime,
               previous: Obj | None, now: dt.datetime) -> Obj:
    """The pod status the kubelet's generateAPIPodStatus would write for these containers."""
    stamp = rfc3339(now)
    before = {c["type"]: c for c in (previous or {}).get("conditions") or []}
    terminal = phase in ("Succeeded", "Failed")
    unready = [c.name for c in containers if not c.ready]
    if terminal:
        reason = "PodCompleted" if phase == "Succeeded" else "PodFailed"
        ready = [_condition("Ready", "False", before, stamp, reason),
                 _condition("ContainersReady", "False", before, stamp, reason)]
    elif unready:
        message = f"containers with unready status: [{' '.join(unready)}]"
        ready = [_condition("Ready", "False", before, stamp, "ContainersNotReady", message),
                 _condition("ContainersReady", "False", before, stamp, "ContainersNotReady", message)]
    else:
        ready = [_condition("Ready", "True", before, stamp), _condition("ContainersReady", "True", before, stamp)]
    scheduled = scheduled_condition(pod, rfc3339(start))
    status: Obj = {
        "phase": phase, "hostIP": host_ip, "hostIPs": [{"ip": host_ip}], "startTime": rfc3339(start),
        "conditions": [
            _condition("PodReadyToStartContainers", "False" if terminal else "True", before, stamp),
            _condition("Initialized", "True", before, stamp, "PodCompleted" if phase == "Succeeded" else ""),
            *ready, scheduled],
        "containerStatuses": [c.status() for c in containers],
    }
    if pod_ip:
        status["podIP"], status["podIPs"] = pod_ip, [{"ip": pod_ip}]
    if (pod.get("spec") or {}).get("initContainers"):
        first = min((c.started_at for c in containers if c.started_at), default=now)
        status["initContainerStatuses"] = init_statuses(pod, rfc3339(start), rfc3339(first), True)
    return status


def back_off_message(policy: BackoffPolicy, c: Container, pod_name: str, namespace: str, uid: str) -> str:
    return (f"back-off {go_duration(c.backoff.delay or policy.initial)} restarting failed container={c.name} "
            f"pod={pod_name}_{namespace}({uid})")
