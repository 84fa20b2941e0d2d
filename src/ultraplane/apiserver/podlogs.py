"""The pods/log subresource.

kube-apiserver answers ``GET .../pods/P/log`` by proxying to the kubelet of the pod's node. Here the
logs come from a ``LogSource``: the default one, ``MemoryLogSource``, keeps a ring of recent lines per
container instance (current and previous) that whatever runs the containers (a node simulator)
writes into, and answers like the kubelet when there is nothing to read ("container "c" in pod "p"
is waiting to start: ContainerCreating"). The API server's part — container choice, option
validation, the pod being unscheduled — follows kube-apiserver.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from ultraplane.apiserver import errors
from ultraplane.apiserver.registry import Obj, Registry
from ultraplane.apiserver.server import Request, Response

RING_LINES = 10_000  # lines kept per container instance


class LogUnavailable(Exception):
    """The node has no log to give for this container (the kubelet's 400 text)."""


@dataclass
class LogOptions:
    container: str = ""
    follow: bool = False
    previous: bool = False
    timestamps: bool = False
    tail_lines: int | None = None
    limit_bytes: int | None = None
    since: dt.datetime | None = None


class LogSource(Protocol):
    async def open(self, pod: Obj, container: str, opts: LogOptions) -> AsyncIterator[bytes]:
        """The log stream of one container of a scheduled pod; raises LogUnavailable before streaming."""
        ...


def format_timestamp(at: dt.datetime) -> str:
    # the kubelet's timeFormatOut: RFC 3339 with nanoseconds always printed
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond * 1000:09d}Z"


@dataclass
class ContainerLog:
    current: deque[tuple[dt.datetime, bytes]] = field(default_factory=lambda: deque(maxlen=RING_LINES))
    previous: deque[tuple[dt.datetime, bytes]] | None = None
    written: int = 0  # lines ever written to current (followers track their position with it)
    ended: bool = False  # the container stopped: followers finish
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


def container_status(pod: Obj, container: str) -> Obj | None:
    status = pod.get("status") or {}
    for key in ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses"):
        for cs in status.get(key) or []:
            if cs.get("name") == container:
                return cs
    return None


def kubelet_refusal(pod: Obj, container: str, previous: bool) -> str | None:
    """What the kubelet says when a container has nothing to read yet (or no previous instance)."""
    name = pod["metadata"]["name"]
    cs = container_status(pod, container)
    if cs is None:
        return f'container "{container}" in pod "{name}" is waiting to start: ContainerCreating'
    state, last = cs.get("state") or {}, cs.get("lastState") or {}
    if previous:
        if not (last.get("terminated") or {}).get("containerID"):
            return f'previous terminated container "{container}" in pod "{name}" not found'
        return None
    if state.get("running") or (state.get("terminated") or {}).get("containerID"):
        return None
    if state.get("terminated"):
        if (last.get("terminated") or {}).get("containerID"):
            return None
        return f'container "{container}" in pod "{name}" is terminated'
    if last.get("terminated"):
        return None
    waiting = state.get("waiting")
    if waiting is not None:
        reason = waiting.get("reason") or ""
        if reason == "ErrImagePull":
            return f'container "{container}" in pod "{name}" is waiting to start: image can\'t be pulled'
        if reason == "ImagePullBackOff":
            return f'container "{container}" in pod "{name}" is waiting to start: trying and failing to pull image'
        return f'container "{container}" in pod "{name}" is waiting to start: {reason}'
    return f'container "{container}" in pod "{name}" is waiting to start - no logs yet'


class MemoryLogSource:
    """Rings of log lines per container instance, written by whatever runs the containers."""

    def __init__(self) -> None:
        self.logs: dict[tuple[str, str, str], ContainerLog] = {}  # (namespace, pod uid, container)

    def _log(self, namespace: str, uid: str, container: str) -> ContainerLog:
        return self.logs.setdefault((namespace, uid, container), ContainerLog())

    def write(self, namespace: str, uid: str, container: str, line: str, at: dt.datetime | None = None) -> None:
        log = self._log(namespace, uid, container)
        log.current.append((at or dt.datetime.now(dt.UTC), line.rstrip("\n").encode() + b"\n"))
        log.written += 1
        log.wake()

    def restart(self, namespace: str, uid: str, container: str) -> None:
        """The container restarted: its lines become the previous instance's."""
        log = self._log(namespace, uid, container)
        log.previous, log.current = log.current, deque(maxlen=RING_LINES)
        log.written, log.ended = 0, False
        log.wake()

    def stop(self, namespace: str, uid: str, container: str) -> None:
        log = self._log(namespace, uid, container)
        log.ended = True
        log.wake()

    def forget(self, namespace: str, uid: str) -> None:
        for key in [k for k in self.logs if k[0] == namespace and k[1] == uid]:
            log = self.logs.pop(key)
            log.ended = True
            log.wake()

    async def open(self, pod: Obj, container: str, opts: LogOptions) -> AsyncIterator[bytes]:
        refusal = kubelet_refusal(pod, container, opts.previous)
        if refusal is not None:
            raise LogUnavailable(refusal)
        log = self._log(pod["metadata"]["namespace"], pod["metadata"].get("uid", ""), container)
        return self._stream(log, opts)

    async def _stream(self, log: ContainerLog, opts: LogOptions) -> AsyncIterator[bytes]:
        ring = log.previous if opts.previous else log.current
        lines = list(ring or ())
        if opts.since is not None:
            lines = [entry for entry in lines if entry[0] >= opts.since]
        if opts.tail_lines is not None:
            lines = lines[-opts.tail_lines:] if opts.tail_lines else []
        budget = opts.limit_bytes
        position = log.written
        while True:
            for at, text in lines:
                chunk = (format_timestamp(at).encode() + b" " + text) if opts.timestamps else text
                if budget is not None:
                    chunk = chunk[:budget]
                    budget -= len(chunk)
                yield chunk
                if budget is not None and budget <= 0:
                    return
            if not opts.follow or opts.previous or log.ended:
                return
            changed = log.changed
            await changed.wait()
            if log.written < position or not log.current and log.ended:
                return  # restarted or forgotten: this instance's stream is over
            fresh = log.written - position
            lines = list(log.current)[-fresh:] if fresh else []
            position = log.written


def _int_option(q: dict[str, str], name: str) -> int | None:
    text = q.get(name)
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError as exc:
        raise errors.bad_request(f'strconv.ParseInt: parsing "{text}": invalid syntax') from exc


def _bool_option(q: dict[str, str], name: str) -> bool:
    text = q.get(name, "false")
    if text.lower() not in ("true", "false", "1", "0", "t", "f"):
        raise errors.bad_request(f'strconv.ParseBool: parsing "{text}": invalid syntax')
    return text.lower() in ("true", "1", "t")


def parse_options(q: dict[str, str], pod_name: str) -> LogOptions:
    """PodLogOptions from the query, validated as kube-apiserver does (422 PodLogOptions invalid)."""
    opts = LogOptions(container=q.get("container", ""), follow=_bool_option(q, "follow"),
                      previous=_bool_option(q, "previous"), timestamps=_bool_option(q, "timestamps"),
                      tail_lines=_int_option(q, "tailLines"), limit_bytes=_int_option(q, "limitBytes"))
    since_seconds = _int_option(q, "sinceSeconds")
    since_time = q.get("sinceTime")
    causes = []
    if opts.tail_lines is not None and opts.tail_lines < 0:
        causes.append({"reason": "FieldValueInvalid", "field": "tailLines",
                       "message": f"Invalid value: {opts.tail_lines}: must be greater than or equal to 0"})
    if opts.limit_bytes is not None and opts.limit_bytes < 1:
        causes.append({"reason": "FieldValueInvalid", "field": "limitBytes",
                       "message": f"Invalid value: {opts.limit_bytes}: must be greater than 0"})
    if since_seconds is not None and since_time:
        causes.append({"reason": "FieldValueForbidden", "field": "",
                       "message": "Forbidden: at most one of `sinceTime` or `sinceSeconds` may be specified"})
    if since_seconds is not None:
        if since_seconds < 1:
            causes.append({"reason": "FieldValueInvalid", "field": "sinceSeconds",
                           "message": f"Invalid value: {since_seconds}: must be greater than 0"})
        opts.since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=since_seconds)
    elif since_time:
        try:
            opts.since = dt.datetime.fromisoformat(since_time.replace("Z", "+00:00"))
        except ValueError as exc:
            raise errors.bad_request(f'parsing time "{since_time}" as "2006-01-02T15:04:05Z07:00": cannot parse '
                                     f'"{since_time}" as "2006"') from exc
    if causes:
        raise errors.invalid("PodLogOptions", "", pod_name, causes)
    return opts


def choose_container(pod: Obj, requested: str) -> str:
    """kube-apiserver's validateContainer: the only container by default, else the one asked for."""
    spec = pod.get("spec") or {}
    name = pod["metadata"]["name"]
    all_names = [c.get("name", "") for key in ("initContainers", "containers", "ephemeralContainers")
                 for c in spec.get(key) or []]
    if not requested:
        containers = spec.get("containers") or []
        if len(containers) == 1:
            return containers[0].get("name", "")
        if not containers:
            raise errors.bad_request(f"a container name must be specified for pod {name}")
        raise errors.bad_request(f"a container name must be specified for pod {name}, choose one of: "
                                 f"[{' '.join(all_names)}]")
    if requested not in all_names:
        raise errors.bad_request(f"container {requested} is not valid for pod {name}")
    return requested


class PodLogs:
    """Serves GET pods/log from a LogSource."""

    def __init__(self, registry: Registry, source: LogSource) -> None:
        self.registry = registry
        self.source = source
        self.pods = registry.strategies[("", "v1", "pods")]

    async def serve(self, request: Request, namespace: str, name: str, verb: str) -> Response:
        if verb != "get":
            raise errors.method_not_allowed("the server does not allow this method on the requested resource")
        q = request.query
        pod = await self.registry.get(self.pods, namespace, name)
        opts = parse_options(q, name)
        container = choose_container(pod, opts.container)
        if not (pod.get("spec") or {}).get("nodeName"):
            return Response(200, b"", content_type="text/plain")  # not scheduled: no node to ask, nothing to show
        try:
            stream = await self.source.open(pod, container, opts)
        except LogUnavailable as exc:
            raise errors.bad_request(str(exc)) from exc
        if not opts.follow:
            return Response(200, b"".join([chunk async for chunk in stream]), content_type="text/plain")
        return Response(200, content_type="text/plain", stream=stream)
