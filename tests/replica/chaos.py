"""The issue 17 scenario as a reusable run: three replicated members on a 3-node NATS cluster, a
randomized recorded load of puts, deletes, txns and linearizable gets from several clients per
member while the writer is SIGKILLed, another member is SIGSTOPped and later SIGCONTed, and one
NATS node is killed; then every check: the full linearizability search, the real-time revision
scan (which counts stale reads), and the watch checker over the paused member's live watch
against the committed history. Used by tests/replica/test_linearizable_reads.py and by
bench/replica_soak.py."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import grpc

from tests.replica.load import PREFIX, wait_converged, writer_of
from tests.replica.members import Member
from ultraplane.checker.history import WatchRecorder, final_reads, prefix_end, read_state, record_until
from ultraplane.checker.linearizability import CheckResult, Operation, check_history
from ultraplane.checker.realtime import RealtimeResult, check_realtime_order
from ultraplane.checker.watch import WatchCheckResult, check_watches
from ultraplane.natscluster import NatsCluster

CLIENT_TIMEOUT_S = 12.0  # longer than a forwarded write waits for a new writer


@dataclass
class ChaosPlan:
    """When each fault happens, in seconds (the pause and the NATS kill count from the moment
    the members agree on the writer that replaced the killed one)."""

    seed: int = 1
    pause: Literal["writer", "follower"] = "writer"  # SIGSTOP the new writer, or the other member
    nats_victim: Literal["leader", "other"] = "other"  # the journal stream's leader node, or not
    kill_writer_after: float = 2.0
    pause_after: float = 0.5
    pause_for: float = 7.0  # more than twice the 3 s writer lease
    nats_kill_after: float = 1.0  # after the pause began
    restart_killed: bool = True  # the SIGKILLed member rejoins once the paused one is resumed
    tail: float = 4.0  # load after the resume
    clients_per_member: int = 3
    max_ops_per_client: int = 600
    think_time: float = 0.0
    min_ops: int = 0  # after the tail, the load goes on until this many ops are recorded

    @staticmethod
    def random(seed: int) -> ChaosPlan:
        rng = random.Random(seed)
        return ChaosPlan(
            seed=seed, pause=rng.choice(["writer", "follower"]), nats_victim=rng.choice(["leader", "other"]),
            kill_writer_after=rng.uniform(1.0, 3.0), pause_after=rng.uniform(0.0, 1.5),
            pause_for=rng.uniform(6.5, 9.0), nats_kill_after=rng.uniform(0.0, 3.0),
            restart_killed=rng.random() < 0.7, tail=rng.uniform(3.0, 6.0),
        )


@dataclass
class ChaosOutcome:
    ops: list[Operation]
    unknown: int
    linearizable: CheckResult | None  # None: too long for the full search
    realtime: RealtimeResult
    watches: WatchCheckResult
    watch_events: int
    timeline: list[tuple[float, str]] = field(default_factory=list)

    @property
    def violations(self) -> int:
        return len(self.realtime.violations) + (0 if self.linearizable is None or self.linearizable.ok else
                                                (0 if self.realtime.violations else 1))

    def explain(self) -> str:
        parts = [self.realtime.explain()]
        if self.linearizable is not None:
            parts.append(self.linearizable.explain())
        parts.append(self.watches.explain())
        parts.append("timeline: " + ", ".join(f"{t:.1f}s {what}" for t, what in self.timeline))
        return "\n".join(parts)


async def stream_leader_index(cluster: NatsCluster, stream: str = "ULTRAPLANE") -> int:
    import nats

    nc = await nats.connect(servers=cluster.urls)
    try:
        info = await nc.jetstream(timeout=10).stream_info(stream)
    finally:
        await nc.close()
    assert info.cluster is not None and info.cluster.leader
    return next(n.index for n in cluster.nodes if n.name == info.cluster.leader)


async def run_chaos(members: Sequence[Member], cluster: NatsCluster, plan: ChaosPlan, *,
                    full_check_max_ops: int = 5000,
                    on_op: Callable[[Operation], None] | None = None) -> ChaosOutcome:
    members = list(members)
    t0 = time.monotonic()
    timeline: list[tuple[float, str]] = []

    def note(what: str) -> None:
        timeline.append((time.monotonic() - t0, what))

    writer = await asyncio.to_thread(writer_of, members)
    others = [m for m in members if m is not writer]
    async with grpc.aio.insecure_channel(others[0].endpoint) as ch:
        initial = await read_state(ch, PREFIX)
    start = initial.revision + 1
    # live watches on the members that are never killed (one of them is paused and resumed)
    watchers = {m.name: WatchRecorder(m.endpoint, f"{m.name}-live", PREFIX, prefix_end(PREFIX), start)
                for m in others}
    for w in watchers.values():
        await w.start()
    stop = asyncio.Event()
    nats_victim: list[int] = []
    serving = {m.name: True for m in members}  # clients of a killed member wait for its restart
    recorded = [0]

    def count(op: Operation) -> None:
        recorded[0] += 1
        if on_op is not None:
            on_op(op)

    async def faults() -> None:
        await asyncio.sleep(plan.kill_writer_after)
        serving[writer.name] = False
        writer.kill9()
        note(f"SIGKILL writer {writer.name}")
        new_writer = await asyncio.to_thread(writer_of, others)
        note(f"new writer {new_writer.name}")
        paused = new_writer if plan.pause == "writer" else next(m for m in others if m is not new_writer)
        await asyncio.sleep(plan.pause_after)
        paused.pause()
        note(f"SIGSTOP {plan.pause} {paused.name}")
        paused_at = time.monotonic()
        await asyncio.sleep(plan.nats_kill_after)
        leader = await stream_leader_index(cluster)
        victim = leader if plan.nats_victim == "leader" else next(n.index for n in cluster.nodes
                                                                  if n.index != leader)
        await asyncio.to_thread(cluster.kill, victim)
        nats_victim.append(victim)
        note(f"SIGKILL NATS node {victim} ({plan.nats_victim})")
        await asyncio.sleep(max(0.0, plan.pause_for - (time.monotonic() - paused_at)))
        paused.resume()
        note(f"SIGCONT {paused.name}")
        if plan.restart_killed:
            writer.start(wait=False)
            await asyncio.to_thread(writer.wait_ready)
            serving[writer.name] = True
            note(f"restarted {writer.name}")
        await asyncio.sleep(plan.tail)
        while recorded[0] < plan.min_ops:
            await asyncio.sleep(0.1)
        stop.set()
        note("load stopped")

    shared_seen: dict[bytes, int] = {}
    fault_task = asyncio.create_task(faults())
    try:
        loads = [record_until(m.endpoint, stop, clients=plan.clients_per_member,
                              max_ops_per_client=plan.max_ops_per_client, prefix=PREFIX,
                              seed=plan.seed * 100 + i, timeout=CLIENT_TIMEOUT_S, first_client=10 * i,
                              initial=initial, active=lambda m=m: serving[m.name], on_op=count,
                              think_time=plan.think_time, shared_seen=shared_seen)
                 for i, m in enumerate(members)]
        results = await asyncio.gather(*loads)
        stop.set()
        await fault_task
    finally:
        if not fault_task.done():
            fault_task.cancel()
        for m in members:
            if m.running:
                m.resume()
    ops = sorted((op for r in results for op in r), key=lambda o: o.invoke)
    if writer.running:
        await asyncio.to_thread(writer.wait_ready)
    survivors = [m for m in members if m.running]
    final = await wait_converged(survivors, timeout=60)
    closing: list[Operation] = []
    for i, m in enumerate(survivors):
        closing += await final_reads(m.endpoint, [PREFIX + f"k{k}".encode() for k in range(3)], client=-1 - i)
    history = [*ops, *closing]
    realtime = check_realtime_order(history)
    linear = None
    if len(history) <= full_check_max_ops:
        linear = await asyncio.to_thread(check_history, history, initial, max_ops=full_check_max_ops)
    # the committed history, as a fresh watch from the first revision replays it
    replay = WatchRecorder(survivors[0].endpoint, f"{survivors[0].name}-replay", PREFIX, prefix_end(PREFIX), start)
    await replay.start()
    committed = await replay.finish(final, timeout=30)
    streams = [await w.finish(final, timeout=30) for w in watchers.values()]
    watches = check_watches([*streams, committed], history=committed.events)
    if nats_victim:
        await asyncio.to_thread(cluster.start, nats_victim[0])
        note(f"restarted NATS node {nats_victim[0]}")
    return ChaosOutcome(ops, sum(1 for op in ops if op.complete is None), linear, realtime, watches,
                        len(committed.events), timeline)
