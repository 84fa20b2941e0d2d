"""One process, many kubelets: registration, lease heartbeats, node status, and the pods bound to them.

Everything goes through the API server on a few keep-alive connections: a fixed pool of workers
drains one queue of writes (lease renewals, node status posts, pod status updates), one list+watch
covers the pods of every simulated node, and heartbeats are spread over the renew interval in 100 ms
ticks, so N nodes cost N / interval lease updates per second, evenly.

Pod status follows the kubelet's status manager: each pod has one desired status and at most one
queued write, so a pod that reached Running before its ContainerCreating write went out is written
once, as Running.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from ultraplane.client.http import ApiError, KubeClient
from ultraplane.nodes import objects
from ultraplane.nodes.containers import (
    POD_WORKER_RETRY,
    BackoffPolicy,
    Container,
    back_off_message,
    pod_phase,
    pod_status,
    stop_seconds,
    will_restart,
)
from ultraplane.nodes.events import EventCorrelator, EventLog
from ultraplane.nodes.ipam import Ec2Api, NodeAddresses, ZoneSubnet, zone_subnets
from ultraplane.nodes.objects import LEASE_NAMESPACE, Obj
from ultraplane.nodes.registrypull import (
    PullFailed,
    RegistryPuller,
    ResolvedImage,
    dockerconfig_credentials,
    repository_of,
)
from ultraplane.nodes.startup import (
    PullModel,
    RunPlan,
    image_id,
    image_size_mb,
    parallel_override,
    pull_error,
    run_plan,
)
from ultraplane.nodes.types import InstanceType

log = logging.getLogger("ultraplane.nodes")
TICK = 0.1
Job = Callable[[], Awaitable[None]]
LEASES = f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases"
MANIFEST_CHECK_SECONDS = 0.05  # imagePullPolicy Always on a cached image: only the manifest is fetched


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class SimConfig:
    region: str = "us-east-1"
    zones: int = 3
    vpc_cidr: str = "10.0.0.0/8"
    start_index: int = 0  # first node index (another simulator against the same cluster starts elsewhere)
    prefix_delegation: bool = True
    lease_duration: int = 40
    lease_renew_interval: float = 10.0  # the kubelet renews at a quarter of the lease duration
    status_report_interval: float = 300.0  # kubelet's nodeStatusReportFrequency when nothing changed
    concurrency: int = 64  # API writes in flight
    kubelet_host: str = "127.0.0.1"
    kubelet_port: int = 0
    events: bool = True  # the kubelet's Pulling/Pulled/Created/Started/Killing/BackOff events
    pull: PullModel = field(default_factory=PullModel)
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)  # container restarts: 10 s doubling to 5 min
    ec2: Ec2Api = field(default_factory=lambda: Ec2Api(latency=0.05))
    registry: RegistryPuller | None = None  # the cluster's registry: its images resolve through its API


POD, EVENT, LEASE, NODE_STATUS = 0, 1, 2, 3  # write lanes, most urgent first
MAX_QUEUED_EVENTS = 1000  # per kubelet, as client-go's event broadcaster (maxQueuedEvents, DropIfChannelFull)


class WriteQueue:
    """The process's pending API writes in lanes, served most urgent first.

    In a real cluster every kubelet has its own connection, so one node's pod status never waits
    behind 100,000 other nodes' heartbeats; here they share workers, so pod status (what users wait
    for) goes first, then events, then Lease renewals, then the periodic node status posts. Events
    come after status as in the kubelet, whose event broadcaster sends them on its own, never ahead
    of (or blocking) the status manager.
    """

    def __init__(self) -> None:
        self.lanes: tuple[deque[Job], ...] = (deque(), deque(), deque(), deque())
        self.size = 0
        self.nonempty = asyncio.Event()

    def __len__(self) -> int:
        return self.size

    def put(self, lane: int, job: Job) -> None:
        self.lanes[lane].append(job)
        self.size += 1
        self.nonempty.set()

    async def get(self) -> Job:
        while not self.size:
            self.nonempty.clear()
            await self.nonempty.wait()
        self.size -= 1
        return next(lane for lane in self.lanes if lane).popleft()


class SimNode:
    __slots__ = ("index", "name", "itype", "zone", "ip", "addresses", "uid", "lease", "alive", "registered",
                 "lease_queued", "status_queued", "status_due", "ready_since", "images", "attach_lock", "pods",
                 "queued_events", "events")

    def __init__(self, index: int, name: str, itype: InstanceType, zone: str, ip: str,
                 addresses: NodeAddresses) -> None:
        self.index = index
        self.name = name
        self.itype = itype
        self.zone = zone
        self.ip = ip
        self.addresses = addresses
        self.uid = ""
        self.lease: str | None = None  # resourceVersion of our Lease
        self.alive = True  # heartbeating and running pods; False when killed or cut off
        self.registered = False
        self.lease_queued = False
        self.status_queued = False  # like lease_queued: a slow server stretches the period, not the queue
        self.status_due = 0.0
        self.ready_since: str | None = None
        self.queued_events = 0  # this kubelet's events not yet sent (its broadcaster's queue)
        self.events: EventCorrelator | None = None  # its recorder's correlator, made on its first event
        self.images: set[str] = set()
        self.attach_lock = asyncio.Lock()
        self.pods: set[str] = set()  # uids


class PodState:
    __slots__ = ("uid", "namespace", "name", "node", "pod", "ip", "task", "phase", "status", "started_at",
                 "plan", "terminating", "queued", "desired", "containers", "start", "timer", "writing")

    def __init__(self, pod: Obj, node: SimNode) -> None:
        meta = pod["metadata"]
        self.uid: str = meta.get("uid", "")
        self.namespace: str = meta.get("namespace", "")
        self.name: str = meta["name"]
        self.node = node
        self.pod = pod
        self.ip = ""
        self.task: asyncio.Task[None] | None = None
        self.phase = "Pending"
        self.status: Obj | None = None  # last status this node decided (conditions keep their transition times)
        self.started_at: dt.datetime | None = None
        self.plan: dict[str, RunPlan] = {}
        self.terminating = False
        self.queued = False
        self.desired: Obj | None = None
        self.containers: list[Container] = []  # the regular containers' states (containers.py)
        self.start: dt.datetime | None = None  # status.startTime
        self.timer: asyncio.TimerHandle | None = None  # wakes the pod when a container has something due
        self.writing = False  # a status PATCH is in flight: the next one waits for it (keeps writes in order)


@dataclass
class Stats:
    registered: int = 0
    lease_renewals: int = 0
    lease_failures: int = 0
    status_posts: int = 0
    pod_writes: int = 0
    pods_running: int = 0
    pods_finished: int = 0
    container_restarts: int = 0
    pods_deleted: int = 0
    events: int = 0  # Event writes that landed (creates and count patches)
    event_patches: int = 0
    events_dropped: int = 0  # the broadcaster's queue was full
    events_filtered: int = 0  # the correlator's spam filter
    write_latencies: deque[float] = field(default_factory=lambda: deque(maxlen=20_000))


def _condition(status: Obj, kind: str) -> str | None:
    return next((c.get("status") for c in status.get("conditions") or [] if c.get("type") == kind), None)


def _go_duration(seconds: float) -> str:
    """time.Duration's String() for the durations a pull takes: 340.5ms, 1.234s."""
    if seconds < 1:
        return f"{seconds * 1000:.3f}".rstrip("0").rstrip(".") + "ms"
    return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"


def _parse_time(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def node_name(ip: str, region: str) -> str:
    domain = "ec2.internal" if region == "us-east-1" else f"{region}.compute.internal"
    return f"ip-{ip.replace('.', '-')}.{domain}"


class NodeSimulator:
    def __init__(self, client: KubeClient, types: list[InstanceType], cfg: SimConfig | None = None) -> None:
        self.client = client
        self.cfg = cfg or SimConfig()
        self.stats = Stats()
        self.subnets: list[ZoneSubnet] = zone_subnets(self.cfg.vpc_cidr, self.cfg.zones)
        self.nodes: list[SimNode] = []
        self.by_name: dict[str, SimNode] = {}
        for offset, itype in enumerate(types):
            index = self.cfg.start_index + offset
            zone_no = index % self.cfg.zones
            subnet = self.subnets[zone_no]
            ip = subnet.node_address(index // self.cfg.zones)
            name = node_name(ip, self.cfg.region)
            node = SimNode(index, name, itype, f"{self.cfg.region}{chr(ord('a') + zone_no)}", ip,
                           NodeAddresses(subnet, self.cfg.prefix_delegation))
            self.nodes.append(node)
            self.by_name[name] = node
        self.pods: dict[str, PodState] = {}  # uid -> state, pods bound to our nodes
        self.by_key: dict[tuple[str, str], PodState] = {}
        self.queue = WriteQueue()
        self.tasks: list[asyncio.Task[Any]] = []
        self.kubelet_port = self.cfg.kubelet_port
        self.synced = asyncio.Event()

    # ------------------------------------------------------------------ lifecycle
    async def start(self, register: bool = True) -> None:
        self.tasks += [asyncio.create_task(self._worker()) for _ in range(self.cfg.concurrency)]
        # heartbeats and pods start before registration ends: with 100,000 nodes that takes minutes,
        # and the first nodes' Leases would expire meanwhile (each kubelet heartbeats on its own)
        self.tasks.append(asyncio.create_task(self._tick_loop()))
        self.tasks.append(asyncio.create_task(self._pod_loop()))
        if register:
            await self.register_all()

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for state in self.pods.values():
            if state.task is not None:
                state.task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()

    async def _worker(self) -> None:
        while True:
            job = await self.queue.get()
            started = time.monotonic()
            try:
                await job()
            except asyncio.CancelledError:
                raise
            except ApiError as exc:
                log.debug("write failed: %s", exc)
            except Exception:
                log.exception("simulated kubelet write failed")
            self.stats.write_latencies.append(time.monotonic() - started)

    # ------------------------------------------------------------------ registration
    async def register_all(self, on_progress: Callable[[int], None] | None = None) -> None:
        """Launch every node: warm its first address block, create (or adopt) the Node, then its Lease.

        A fixed set of launchers walks the node list (not one coroutine per node: 100,000 pending
        coroutines would cost more memory than the nodes themselves).
        """
        pending = iter(self.nodes)
        done = 0

        async def launcher() -> None:
            nonlocal done
            for node in pending:
                for attempt in range(5):
                    try:
                        await self.register(node)
                        break
                    except ApiError as exc:  # 429 from priority and fairness, or a 5xx: back off and retry
                        if attempt == 4 or exc.code not in (429, 500, 503, 504):
                            raise
                        await asyncio.sleep(0.5 * 2 ** attempt)
                done += 1
                if on_progress is not None:
                    on_progress(done)

        await asyncio.gather(*(launcher() for _ in range(min(self.cfg.concurrency, len(self.nodes)) or 1)))

    async def register(self, node: SimNode) -> None:
        async with node.attach_lock:
            if not node.addresses.blocks:
                await self.cfg.ec2.call()  # the CNI warms one block before the network is ready
                node.addresses.attach()
        now = _now()
        body = objects.node_object(node.name, node.itype, node.zone, self.cfg.region, node.ip, node.index,
                                   self.kubelet_port, self.cfg.kubelet_host, now)
        try:
            created = await self.client.create("/api/v1/nodes", body)
        except ApiError as exc:
            if exc.code != 409:
                raise
            # registered before (a restarted simulator): reconcile the status the way the kubelet does
            created = await self.client.patch(f"/api/v1/nodes/{node.name}/status", {"status": body["status"]})
        node.uid = created["metadata"].get("uid", "")
        node.ready_since = objects.rfc3339(now)
        node.registered = True
        node.status_due = time.monotonic() + self.cfg.status_report_interval * (
            0.5 + (node.index % 100) / 200)  # spread the periodic posts too
        await self.renew_lease(node)
        self.stats.registered += 1

    # ------------------------------------------------------------------ heartbeats
    async def renew_lease(self, node: SimNode) -> None:
        """PUT the Lease with the last resourceVersion seen (only that is kept per node, not the object)."""
        node.lease_queued = False
        if not node.alive:
            return
        path = f"{LEASES}/{node.name}"
        for _attempt in range(3):
            body = objects.lease_object(node.name, node.uid, self.cfg.lease_duration, _now())
            try:
                if node.lease is None:
                    try:
                        result = await self.client.create(LEASES, body)
                    except ApiError as exc:
                        if exc.code != 409:
                            raise
                        node.lease = (await self.client.get(path))["metadata"]["resourceVersion"]
                        continue
                else:
                    body["metadata"]["resourceVersion"] = node.lease
                    result = await self.client.update(path, body)
                node.lease = result["metadata"]["resourceVersion"]
                self.stats.lease_renewals += 1
                return
            except ApiError as exc:
                if exc.code == 409:
                    node.lease = (await self.client.get(path))["metadata"]["resourceVersion"]
                elif exc.code == 404:
                    node.lease = None
                else:
                    break
        self.stats.lease_failures += 1

    async def post_status(self, node: SimNode) -> None:
        node.status_queued = False
        if not node.alive:
            return
        patch = objects.node_ready_patch(_now(), node.ready_since)
        await self.client.patch(f"/api/v1/nodes/{node.name}/status", patch)
        self.stats.status_posts += 1

    async def _tick_loop(self) -> None:
        loop = asyncio.get_running_loop()
        slots = max(1, round(self.cfg.lease_renew_interval / TICK))
        buckets: list[list[SimNode]] = [[] for _ in range(slots)]
        for offset, node in enumerate(self.nodes):
            buckets[offset * slots // max(1, len(self.nodes))].append(node)
        slot = 0
        deadline = loop.time()
        while True:
            now = time.monotonic()
            for node in buckets[slot]:
                if not node.alive or not node.registered:
                    continue
                if not node.lease_queued:
                    node.lease_queued = True
                    self.queue.put(LEASE, lambda n=node: self.renew_lease(n))
                if now >= node.status_due and not node.status_queued:
                    node.status_due = now + self.cfg.status_report_interval
                    node.status_queued = True
                    self.queue.put(NODE_STATUS, lambda n=node: self.post_status(n))
            slot = (slot + 1) % slots
            deadline += TICK
            await asyncio.sleep(max(0.0, deadline - loop.time()))

    # ------------------------------------------------------------------ killing and reviving
    def kill(self, name: str) -> None:
        """The kubelet stops: no more lease renewals, status posts or pod work (its pods stay as they are)."""
        node = self.by_name[name]
        node.alive = False
        for uid in node.pods:
            state = self.pods.get(uid)
            if state is not None and state.task is not None:
                state.task.cancel()
                state.task = None

    def revive(self, name: str) -> None:
        """The kubelet comes back: it renews its lease, posts Ready and resumes its pods."""
        node = self.by_name[name]
        if node.alive:
            return
        node.alive = True
        node.ready_since = objects.rfc3339(_now())
        self.queue.put(LEASE, lambda: self.renew_lease(node))
        self.queue.put(LEASE, lambda: self.post_status(node))  # Ready again: as urgent as the heartbeat
        for uid in list(node.pods):
            state = self.pods.get(uid)
            if state is not None:
                self._sync_pod(state)

    # ------------------------------------------------------------------ pods
    async def _pod_loop(self) -> None:
        params = {"fieldSelector": "spec.nodeName!="}
        while True:
            try:
                listed = await self.client.list("/api/v1/pods", params)
                version = listed["metadata"]["resourceVersion"]
                seen = set()
                for pod in listed["items"]:
                    seen.add(pod["metadata"].get("uid", ""))
                    self.on_pod(pod)
                for uid in [u for u in self.pods if u not in seen]:
                    self.on_pod_deleted(self.pods[uid].pod)
                self.synced.set()
                while True:
                    async for event in self.client.watch("/api/v1/pods", {
                            **params, "resourceVersion": version, "allowWatchBookmarks": "true"}):
                        kind, obj = event.get("type"), event.get("object") or {}
                        if kind == "ERROR":
                            raise ApiError(obj)
                        version = obj.get("metadata", {}).get("resourceVersion", version)
                        if kind in ("ADDED", "MODIFIED"):
                            self.on_pod(obj)
                        elif kind == "DELETED":
                            self.on_pod_deleted(obj)
            except asyncio.CancelledError:
                raise
            except ApiError as exc:
                if exc.code != 410:
                    log.warning("pod watch failed: %s", exc)
                    await asyncio.sleep(1)
            except (OSError, ConnectionError) as exc:
                log.warning("pod watch broke: %s", exc)
                await asyncio.sleep(1)

    def on_pod(self, pod: Obj) -> None:
        node = self.by_name.get((pod.get("spec") or {}).get("nodeName", ""))
        if node is None:
            return
        uid = pod["metadata"].get("uid", "")
        state = self.pods.get(uid)
        if state is None:
            state = PodState(pod, node)
            self.pods[uid] = state
            self.by_key[(state.namespace, state.name)] = state
            node.pods.add(uid)
            phase = (pod.get("status") or {}).get("phase", "Pending")
            if phase in ("Running", "Succeeded", "Failed"):  # ours from before a restart
                self._adopt(state, pod)
        else:
            state.pod = pod
            if node.alive:
                self._reconcile_status(state, pod)
        if node.alive:
            self._sync_pod(state)

    def _reconcile_status(self, state: PodState, pod: Obj) -> None:
        """The kubelet's status manager writes again when the API server's copy disagrees with its own view
        (needsReconcile): the node lifecycle controller sets Ready=False on the pods of a node whose heartbeats
        were late, and once the node answers, its kubelet puts its own Ready back. Without this a pod stays
        unready for good after a moment of load, and its ReplicaSet never counts it."""
        if state.status is None or state.terminating or pod["metadata"].get("deletionTimestamp"):
            return
        if state.desired is not None or state.writing or state.queued:
            return  # our own write is on its way; the API copy lags it legitimately
        mine = _condition(state.status, "Ready")
        theirs = _condition(pod.get("status") or {}, "Ready")
        if mine is not None and theirs is not None and mine != theirs:
            self._desire(state, state.status)

    def on_pod_deleted(self, pod: Obj) -> None:
        state = self.pods.pop(pod["metadata"].get("uid", ""), None)
        if state is None:
            return
        self.by_key.pop((state.namespace, state.name), None)
        state.node.pods.discard(state.uid)
        if state.task is not None:
            state.task.cancel()
        self._release_ip(state)
        self.stats.pods_deleted += 1

    def _adopt(self, state: PodState, pod: Obj) -> None:
        """A pod this node ran before the simulator restarted: pick its containers up where they are."""
        status = pod.get("status") or {}
        state.phase = status.get("phase", "Pending")
        state.status = status
        ip = status.get("podIP", "")
        if ip and state.phase == "Running" and state.node.addresses.adopt(ip):
            state.ip = ip
        state.start = _parse_time(status.get("startTime")) or _now()
        state.plan = {c["name"]: run_plan(pod, c) for c in pod["spec"].get("containers") or []}
        by_name = {cs.get("name"): cs for cs in status.get("containerStatuses") or []}
        now = _now()
        for spec in pod["spec"].get("containers") or []:
            cs = by_name.get(spec["name"]) or {}
            c = Container(spec, state.plan[spec["name"]], cs.get("imageID", ""))
            c.restarts, c.last = int(cs.get("restartCount") or 0), cs.get("lastState") or {}
            kind, body = next(iter((cs.get("state") or {"waiting": {}}).items()))
            if kind == "running":
                c.start(pod, state.ip, _parse_time(body.get("startedAt")) or now, state.uid)
                c.skip_past(now.timestamp())
                c.ready, c.started = bool(cs.get("ready")), bool(cs.get("started"))
            elif kind == "terminated":
                c.state, c.detail, c.cid = "terminated", body, cs.get("containerID", "")
                c.finished_at = _parse_time(body.get("finishedAt"))
            else:  # waiting out a back-off that this process no longer knows: restart now
                c.state, c.detail, c.cid, c.until = "waiting", body, cs.get("containerID", ""), now.timestamp()
            state.containers.append(c)
            state.started_at = state.started_at or c.started_at

    def _sync_pod(self, state: PodState) -> None:
        meta = state.pod["metadata"]
        if meta.get("deletionTimestamp"):
            if not state.terminating:
                state.terminating = True
                if state.task is not None:
                    state.task.cancel()
                state.task = asyncio.create_task(self._terminate(state))
            return
        if state.task is not None or state.terminating:
            return
        if state.phase == "Pending":
            state.task = asyncio.create_task(self._launch(state))
        elif state.phase == "Running" and state.timer is None:
            self._schedule(state)

    def _desire(self, state: PodState, status: Obj) -> None:
        """The status manager: keep the latest status, queue at most one write per pod."""
        state.desired = status
        if not state.queued and not state.writing:
            state.queued = True
            self.queue.put(POD, lambda: self._write_status(state))

    async def _write_now(self, state: PodState, status: Obj) -> None:
        state.desired = status
        while state.writing or state.desired is not None:
            if not state.writing:
                await self._write_status(state)
            else:
                await asyncio.sleep(0.01)  # the write in flight finishes first, then ours goes

    async def _write_status(self, state: PodState) -> None:
        state.queued = False
        status, state.desired = state.desired, None
        if status is None or state.uid not in self.pods or not state.node.alive:
            return
        state.writing = True
        try:
            await self._patch_status(state, status)
        finally:
            state.writing = False
            if state.desired is not None and not state.queued:  # changed while we wrote: write the latest
                state.queued = True
                self.queue.put(POD, lambda: self._write_status(state))

    async def _patch_status(self, state: PodState, status: Obj) -> None:
        path = f"/api/v1/namespaces/{state.namespace}/pods/{state.name}/status"
        try:
            if "conditions" in status:
                status = {**status, "conditions": objects.condition_patch(status["conditions"])}
            await self.client.patch(path, {"metadata": {"uid": state.uid}, "status": status})
            self.stats.pod_writes += 1
        except ApiError as exc:
            if exc.code not in (404, 409):
                raise

    def _event(self, state: PodState, container: str, kind: str, reason: str, message: str) -> None:
        """Record an event as the kubelet's recorder does: through its EventCorrelator (events.py), so a
        repeat becomes a count PATCH of the first Event, similar ones are aggregated and a chatty pod
        is throttled."""
        if not self.cfg.events:
            return
        node = state.node
        if node.queued_events >= MAX_QUEUED_EVENTS:
            self.stats.events_dropped += 1  # client-go's broadcaster drops when its queue is full
            return
        now = time.time()
        at = dt.datetime.fromtimestamp(now, dt.UTC)
        event = objects.pod_event(state.pod, node.name, container, kind, reason, message, at)
        if node.events is None:
            node.events = EventCorrelator()
        entry = node.events.correlate(event, now)
        if entry is None:
            self.stats.events_filtered += 1
            return
        if entry.queued:  # its write is queued or in flight: that write (or the one after it) carries this
            return
        entry.queued = True
        node.queued_events += 1
        self.queue.put(EVENT, lambda: self._send_event(node, entry))

    async def _send_event(self, node: SimNode, entry: EventLog) -> None:
        """Write the Event's newest state; one write at a time per Event, so counts land in order."""
        node.queued_events -= 1
        try:
            while (body := entry.pending) is not None:
                entry.pending = None
                await self._write_event(entry, body)
        finally:
            entry.queued = False

    async def _write_event(self, entry: EventLog, body: Obj) -> None:
        path = f"/api/v1/namespaces/{entry.namespace}/events"
        try:
            if entry.created:
                try:
                    # client-go's two-way merge patch against a copy with count 0, lastTimestamp at the
                    # epoch and no message: exactly these three fields
                    await self.client.patch(f"{path}/{entry.name}", {
                        "count": body.get("count"), "lastTimestamp": body.get("lastTimestamp"),
                        "message": body.get("message")})
                    self.stats.events += 1
                    self.stats.event_patches += 1
                    return
                except ApiError as exc:
                    if exc.code != 404:
                        raise
                    entry.created = False  # gone (its TTL, or deleted): recreated with the count so far
            await self.client.create(path, body)
            entry.created = True
            self.stats.events += 1
        except ApiError as exc:  # the recorder drops what the server refuses (a namespace being deleted)
            if exc.code == 409:
                entry.created = True  # already there: an earlier create landed though its answer did not
            elif exc.code not in (403, 404):
                raise

    async def _attach_block(self, node: SimNode) -> None:
        async with node.attach_lock:
            if node.addresses.needs_attach():
                await self.cfg.ec2.call()
                node.addresses.attach()

    async def _launch(self, state: PodState) -> None:
        try:
            node, pod = state.node, state.pod
            start = _now()
            state.status = objects.creating_status(pod, node.ip, start)
            self._desire(state, state.status)
            while not state.ip:
                await self._attach_block(node)
                if not node.addresses.needs_attach():
                    state.ip = node.addresses.allocate()
            delay = self.cfg.pull.sandbox_seconds
            parallel = parallel_override(pod)
            image_ids = {}
            pulled: list[tuple[str, str, float]] = []  # (container, image, seconds) pulled for this pod
            containers = (pod["spec"].get("initContainers") or []) + (pod["spec"].get("containers") or [])
            backoff: float | None = None
            while True:  # images of the cluster's registry are tried again after each back-off, as the kubelet does
                unpullable = [(c["name"], c.get("image", ""), error) for c in containers
                              if (error := pull_error(c.get("image", ""))) is not None]
                resolved = await self._resolve_registry_images(pod, containers, unpullable)
                if not unpullable:
                    break
                retry = self.cfg.registry is not None and all(self.cfg.registry.serves(image)
                                                              for _, image, _ in unpullable)
                backoff = await self._pull_back_off(state, unpullable, backoff, once=retry)
            for c in containers:
                image = c.get("image", "")
                known = resolved.get(image)
                if image not in node.images or (known is not None and f"{image}@{known.digest}" not in node.images):
                    seconds = self.cfg.pull.pull_seconds(image, parallel,
                                                         None if known is None else known.size / 2**20)
                    if known is not None:
                        node.images.add(f"{image}@{known.digest}")  # a new digest behind the tag: pull again
                    delay += seconds
                    node.images.add(image)
                    pulled.append((c["name"], image, seconds))
                    self._event(state, c["name"], "Normal", "Pulling", f'Pulling image "{image}"')
                elif c.get("imagePullPolicy") == "Always":
                    delay += MANIFEST_CHECK_SECONDS
                    pulled.append((c["name"], image, MANIFEST_CHECK_SECONDS))
                    self._event(state, c["name"], "Normal", "Pulling", f'Pulling image "{image}"')
                else:
                    self._event(state, c["name"], "Normal", "Pulled",
                                f'Container image "{image}" already present on machine')
                image_ids[image] = image_id(image) if known is None else f"{repository_of(image)}@{known.digest}"
            await asyncio.sleep(delay)
            for name, image, seconds in pulled:
                took = _go_duration(seconds)
                size = resolved[image].size if image in resolved else int(image_size_mb(image) * 2**20)
                self._event(state, name, "Normal", "Pulled", f'Successfully pulled image "{image}" in {took} '
                            f'({took} including waiting). Image size: {size} bytes.')
            for c in containers:
                self._event(state, c["name"], "Normal", "Created", f"Created container: {c['name']}")
                self._event(state, c["name"], "Normal", "Started", f"Started container {c['name']}")
            state.started_at, state.start = _now(), start
            state.plan = {c["name"]: run_plan(pod, c) for c in pod["spec"].get("containers") or []}
            state.containers = [Container(c, state.plan[c["name"]], image_ids.get(c.get("image", ""), ""))
                                for c in pod["spec"].get("containers") or []]
            for ctr in state.containers:
                ctr.start(pod, state.ip, state.started_at, state.uid)
            state.phase = pod_phase(pod["spec"].get("restartPolicy", "Always"), state.containers)
            # from the ContainerCreating status: conditions that did not change keep their transition time
            state.status = pod_status(pod, state.containers, state.phase, node.ip, state.ip, start, state.status,
                                      state.started_at)
            self.stats.pods_running += 1
            self._desire(state, state.status)
            state.task = None
            self._sync_pod(state)
        except asyncio.CancelledError:
            pass

    async def _resolve_registry_images(self, pod: dict[str, Any], containers: list[dict[str, Any]],
                                       unpullable: list[tuple[str, str, str]]) -> dict[str, ResolvedImage]:
        """Images of the cluster's registry: tag → digest and size through its API (failures join
        `unpullable` with containerd's message). The pod's dockerconfigjson imagePullSecrets come first."""
        registry = self.cfg.registry
        resolved: dict[str, ResolvedImage] = {}
        if registry is None:
            return resolved
        credentials: list[tuple[str, str]] | None = None
        for c in containers:
            image = c.get("image", "")
            if not registry.serves(image) or image in resolved:
                continue
            if credentials is None:
                credentials = await self._pull_secret_credentials(pod, registry.host)
            try:
                resolved[image] = await registry.resolve(image, credentials)
            except PullFailed as exc:
                unpullable.append((c["name"], image, str(exc)))
        return resolved

    async def _pull_secret_credentials(self, pod: dict[str, Any], host: str) -> list[tuple[str, str]]:
        """Credentials for `host` from the pod's imagePullSecrets, read through the API server as the kubelet
        does; a missing or unreadable Secret is skipped (the node's own credentials still apply)."""
        found: list[tuple[str, str]] = []
        namespace = pod["metadata"].get("namespace", "default")
        for ref in pod["spec"].get("imagePullSecrets") or []:
            try:
                secret = await self.client.get(f"/api/v1/namespaces/{namespace}/secrets/{ref.get('name', '')}")
            except Exception:  # noqa: BLE001 - the kubelet logs and goes on without that secret
                log.debug("cannot read imagePullSecret %s/%s", namespace, ref.get("name"))
                continue
            if secret.get("type") == "kubernetes.io/dockerconfigjson":
                found.extend(dockerconfig_credentials(secret, host))
        return found

    async def _pull_back_off(self, state: PodState, unpullable: list[tuple[str, str, str]],
                             delay: float | None = None, *, once: bool = False) -> float:
        """Pulls that fail: ErrImagePull, then ImagePullBackOff while the kubelet's image back-off (the
        container restart policy's delays) runs, and again, until the pod is deleted (the task is cancelled
        then). With `once` (a pull that may succeed later), return the next delay after one round."""
        delay = self.cfg.backoff.initial if delay is None else delay
        while True:
            for reason in ("ErrImagePull", "ImagePullBackOff"):
                status = orjson.loads(orjson.dumps(state.status or {}))  # a copy: the last one may be in flight
                for name, image, error in unpullable:
                    message = error if reason == "ErrImagePull" else f'Back-off pulling image "{image}"'
                    if reason == "ErrImagePull":
                        self._event(state, name, "Normal", "Pulling", f'Pulling image "{image}"')
                        self._event(state, name, "Warning", "Failed", f'Failed to pull image "{image}": {error}')
                    else:
                        self._event(state, name, "Normal", "BackOff", message)
                    self._event(state, name, "Warning", "Failed", f"Error: {reason}")
                    for entry in [*status.get("containerStatuses", []), *status.get("initContainerStatuses", [])]:
                        if entry.get("name") == name:
                            entry["state"] = {"waiting": {"reason": reason, "message": message}}
                state.status = status
                self._desire(state, status)
                await asyncio.sleep(0.5 if reason == "ErrImagePull" else delay)
            delay = min(delay * 2, self.cfg.backoff.maximum)
            if once:
                return delay

    def _schedule(self, state: PodState) -> None:
        """Wake the pod when one of its containers next has something due (containers.py timelines).

        A timer, not a task per pod: 100,000 pods whose `sleep 3600` ends in an hour cost a heap
        entry each. A pod with nothing ahead (a service without failing probes) has none.
        """
        due = [t for c in state.containers if (t := c.due()) is not None]
        if due and state.phase not in ("Succeeded", "Failed"):
            loop = asyncio.get_running_loop()
            state.timer = loop.call_at(loop.time() + max(0.0, min(due) - time.time()), self._wake, state)

    def _wake(self, state: PodState) -> None:
        state.timer = None
        # deleted, being deleted (_terminate owns it now) or its node killed (revive schedules it again)
        if state.uid not in self.pods or state.terminating or not state.node.alive:
            return
        self._step(state, time.time())
        self._schedule(state)

    def _step(self, state: PodState, now: float) -> None:
        policy = state.pod["spec"].get("restartPolicy", "Always")
        changed = False
        soon = now + 0.001
        for c in state.containers:
            while (entry := c.peek()) is not None and entry[0] <= soon:
                c.upcoming = None
                at, what, detail = entry
                if what == "unhealthy":
                    self._event(state, c.name, "Warning", "Unhealthy", detail)
                elif what == "ready" or what == "started":
                    changed = True
                    if what == "ready":
                        c.ready = detail
                    else:
                        c.started = True
                elif what == "kill":
                    c.killed = True
                    self._event(state, c.name, "Normal", "Killing", f"Container {c.name} failed {detail} probe"
                                + (", will be restarted" if policy != "Never" else ""))
                elif what == "exit":
                    changed = True
                    c.exit(detail, at)
                    self._exited(state, c, policy, now)
            if c.until is not None and c.until <= soon:
                if c.backoff_ref is not None:
                    c.backoff.next(self.cfg.backoff, c.backoff_ref, now)
                self._restart(state, c, now)
                changed = True
            elif c.retry_at is not None and c.retry_at <= soon:  # the pod worker retries, still in back-off
                self._back_off_event(state, c, now)
        if changed:
            self._container_change(state, pod_phase(policy, state.containers), now)

    def _exited(self, state: PodState, c: Container, policy: str, now: float) -> None:
        """restartPolicy and the back-off decide: stay terminated, restart now, or wait in CrashLoopBackOff."""
        killed, c.killed = c.killed, False
        code = int(c.detail.get("exitCode", 0))
        finished = c.finished_at.timestamp() if c.finished_at else now
        # kubelet's doBackOff looks at the newest exited instance before its sync: the one that just
        # ended, or for a probe kill (killed and started in one sync) the one before it
        ref = c.previous_finished if killed else finished
        c.previous_finished = finished
        if not (will_restart(policy, code) or (killed and policy != "Never")):
            return
        wait = c.backoff.wait(self.cfg.backoff, ref, now)
        if wait <= 0:
            if ref is not None:
                c.backoff.next(self.cfg.backoff, ref, now)
            self._restart(state, c, now)
            return
        c.backoff_ref = ref
        c.crash_loop(now + wait, back_off_message(self.cfg.backoff, c, state.name, state.namespace, state.uid))
        self._back_off_event(state, c, now)

    def _back_off_event(self, state: PodState, c: Container, now: float) -> None:
        self._event(state, c.name, "Warning", "BackOff", f"Back-off restarting failed container {c.name} in pod "
                    f"{state.name}_{state.namespace}({state.uid})")
        retry = now + POD_WORKER_RETRY
        c.retry_at = retry if c.until is not None and retry < c.until else None

    def _restart(self, state: PodState, c: Container, now: float) -> None:
        image = c.spec.get("image", "")
        if c.spec.get("imagePullPolicy") == "Always":
            took = _go_duration(MANIFEST_CHECK_SECONDS)
            self._event(state, c.name, "Normal", "Pulling", f'Pulling image "{image}"')
            self._event(state, c.name, "Normal", "Pulled", f'Successfully pulled image "{image}" in {took} '
                        f'({took} including waiting). Image size: {int(image_size_mb(image) * 2**20)} bytes.')
        else:
            self._event(state, c.name, "Normal", "Pulled", f'Container image "{image}" already present on machine')
        self._event(state, c.name, "Normal", "Created", f"Created container: {c.name}")
        self._event(state, c.name, "Normal", "Started", f"Started container {c.name}")
        c.backoff_ref = None
        c.restart(state.pod, state.ip, dt.datetime.fromtimestamp(now, dt.UTC), state.uid)
        self.stats.container_restarts += 1

    def _container_change(self, state: PodState, phase: str, now: float) -> None:
        """One status write for everything that changed in this step; a terminal phase frees the address."""
        assert state.start is not None
        state.status = pod_status(state.pod, state.containers, phase, state.node.ip, state.ip, state.start,
                                  state.status, dt.datetime.fromtimestamp(now, dt.UTC))
        if phase in ("Succeeded", "Failed") and state.phase not in ("Succeeded", "Failed"):
            self.stats.pods_finished += 1
            self._release_ip(state)
        state.phase = phase
        self._desire(state, state.status)

    async def _terminate(self, state: PodState) -> None:
        """Graceful deletion: stop the containers within the grace period, then confirm with grace 0."""
        try:
            meta = state.pod["metadata"]
            grace = float(meta.get("deletionGracePeriodSeconds") or 0)
            if state.phase == "Running" and state.containers:
                running = [c for c in state.containers if c.state == "running"]
                for c in running:
                    self._event(state, c.name, "Normal", "Killing", f"Stopping container {c.name}")
                stop = max((stop_seconds(c.spec) for c in running), default=0.0)
                if grace > 0 and running:
                    await asyncio.sleep(min(grace, stop))
                # the containers' end is written before the final delete (SIGTERM honoured: 0, killed: 137)
                now = time.time()
                for c in state.containers:
                    c.until = c.retry_at = None
                    if c.state == "running":
                        c.exit(0 if stop_seconds(c.spec) < grace else 137, now)
                phase = pod_phase(state.pod["spec"].get("restartPolicy", "Always"), state.containers, terminal=True)
                assert state.start is not None
                state.status = pod_status(state.pod, state.containers, phase, state.node.ip, state.ip, state.start,
                                          state.status, _now())
                state.phase = phase
                await self._write_now(state, state.status)
            self._release_ip(state)
            try:
                await self.client.delete(f"/api/v1/namespaces/{state.namespace}/pods/{state.name}",
                                         {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                                          "preconditions": {"uid": state.uid}})
            except ApiError as exc:
                if exc.code not in (404, 409):
                    raise
        except asyncio.CancelledError:
            pass

    def _release_ip(self, state: PodState) -> None:
        if state.ip:
            state.node.addresses.release(state.ip)
            state.ip = ""

    # ------------------------------------------------------------------ queries (kubelet endpoint, admin)
    def summary(self) -> Obj:
        alive = sum(1 for n in self.nodes if n.alive)
        return {"nodes": len(self.nodes), "alive": alive, "registered": self.stats.registered,
                "leaseRenewals": self.stats.lease_renewals, "leaseFailures": self.stats.lease_failures,
                "statusPosts": self.stats.status_posts, "podWrites": self.stats.pod_writes,
                "pods": len(self.pods), "podsRunning": self.stats.pods_running,
                "podsFinished": self.stats.pods_finished, "containerRestarts": self.stats.container_restarts,
                "events": self.stats.events, "eventPatches": self.stats.event_patches,
                "eventsDropped": self.stats.events_dropped, "eventsFiltered": self.stats.events_filtered,
                "queued": len(self.queue),
                "ec2Calls": self.cfg.ec2.calls, "prefixDelegation": self.cfg.prefix_delegation}
