"""Concurrent recorded load across replicated members, with a fault injected part-way, then the
checks every fault test makes: linearizable history (closed by final reads on every survivor),
identical watch streams, no acknowledged write lost, survivors agreeing on keys and revision."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import grpc

from tests.replica.members import Member
from ultraplane.checker.history import WatchRecorder, final_reads, prefix_end, read_state, record_history
from ultraplane.checker.linearizability import Delete, Operation, Put, Txn, check_history
from ultraplane.checker.watch import WatchStream, check_watches
from ultraplane.etcd.proto import rpc_pb2, rpc_pb2_grpc

PREFIX = b"/rep/"
CLIENT_TIMEOUT_S = 12.0  # longer than a forwarded write waits for a new writer


@dataclass
class FaultOutcome:
    ops: int
    unknown: int
    resume_seconds: float | None  # fault -> first successful write invoked after it
    fault_at_ns: int


def writer_of(members: Sequence[Member]) -> Member:
    """The member every running member names as leader (the writer)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            statuses = [(m, m.status()) for m in members if m.running]
            leaders = {s.leader for _, s in statuses}
            if len(leaders) == 1 and 0 not in leaders:
                leader = leaders.pop()
                for m, s in statuses:
                    if s.header.member_id == leader:
                        return m
        except grpc.RpcError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError("members do not agree on a writer")
        time.sleep(0.2)


def _is_write(op: Operation) -> bool:
    return isinstance(op.input, Put | Delete) or (isinstance(op.input, Txn) and op.output is not None
                                                  and op.output.succeeded)


async def wait_converged(members: Sequence[Member], timeout: float = 30.0) -> int:
    """Wait until every member answers a linearizable range with the same revision."""
    deadline = time.monotonic() + timeout
    while True:
        revs = []
        for m in members:
            try:
                async with grpc.aio.insecure_channel(m.endpoint) as ch:
                    revs.append((await read_state(ch, PREFIX)).revision)
            except grpc.RpcError:
                revs.append(-1)
        if len(set(revs)) == 1 and revs[0] > 0:
            return revs[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"members did not converge: revisions {revs}")
        await asyncio.sleep(0.2)


async def assert_agree(members: Sequence[Member]) -> int:
    """Same revision, same keys (every key, not just the load's prefix) and same HashKV."""
    rev = await wait_converged(members)
    views = []
    for m in members:
        async with grpc.aio.insecure_channel(m.endpoint) as ch:
            kv = rpc_pb2_grpc.KVStub(ch)
            r = await kv.Range(rpc_pb2.RangeRequest(key=b"\0", range_end=b"\0", revision=rev), timeout=10)
            h = await rpc_pb2_grpc.MaintenanceStub(ch).HashKV(rpc_pb2.HashKVRequest(revision=rev), timeout=10)
            views.append(([(x.key, x.value, x.create_revision, x.mod_revision, x.version) for x in r.kvs],
                          h.hash))
    assert all(v == views[0] for v in views), f"members disagree at revision {rev}"
    return rev


async def replay_watch(member: Member, start: int, upto: int) -> WatchStream:
    w = WatchRecorder(member.endpoint, f"{member.name}-replay", PREFIX, prefix_end(PREFIX), start)
    await w.start()
    return await w.finish(upto, timeout=20)


async def run_with_fault(
    members: Sequence[Member],
    fault: Callable[[], Awaitable[None]],
    *,
    survivors: Sequence[Member],
    live_watch: Sequence[Member],
    heal: Callable[[], Awaitable[None]] | None = None,
    clients_per_member: int = 2,
    ops_per_client: int = 25,
    fault_after: int = 40,
) -> FaultOutcome:
    """Load on every member; ``fault()`` runs once ``fault_after`` ops are recorded; after the
    load, ``heal()``; then every check. ``live_watch`` members keep a watch open throughout;
    every survivor also replays the whole window afterwards."""
    async with grpc.aio.insecure_channel(survivors[0].endpoint) as ch:
        initial = await read_state(ch, PREFIX)
    start = initial.revision + 1
    watchers = [WatchRecorder(m.endpoint, m.name, PREFIX, prefix_end(PREFIX), start) for m in live_watch]
    for w in watchers:
        await w.start()
    fault_at = [0]
    fault_tasks: list[asyncio.Task[None]] = []

    def on_op(n: int) -> None:
        nonlocal counted
        counted += 1
        if counted == fault_after and not fault_tasks:
            fault_at[0] = time.monotonic_ns()
            fault_tasks.append(asyncio.get_running_loop().create_task(fault()))

    counted = 0
    results = await asyncio.gather(*(
        record_history(m.endpoint, clients=clients_per_member, ops_per_client=ops_per_client, prefix=PREFIX,
                       seed=i + 1, timeout=CLIENT_TIMEOUT_S, on_op=on_op)
        for i, m in enumerate(members)
    ))
    for t in fault_tasks:
        await t
    assert fault_tasks, "the load ended before the fault was injected"
    if heal is not None:
        await heal()
    ops: list[Operation] = []
    for i, hist in enumerate(results):
        ops += [dataclasses.replace(op, client=op.client + 100 * i) for op in hist.ops]
    final = await wait_converged(survivors)
    closing: list[Operation] = []
    for i, m in enumerate(survivors):
        closing += await final_reads(m.endpoint, results[0].keys, client=-1 - i)
    res = check_history([*ops, *closing], initial)
    assert res.ok, res.explain()

    streams = [await w.finish(final, timeout=20) for w in watchers]
    streams += [await replay_watch(m, start, final) for m in survivors]
    wres = check_watches(streams)
    assert wres.ok, wres.explain()
    await assert_agree(survivors)

    resumed = [op.complete - fault_at[0] for op in ops
               if op.complete is not None and op.invoke >= fault_at[0] and _is_write(op)]
    return FaultOutcome(len(ops), sum(1 for op in ops if op.complete is None),
                        min(resumed) / 1e9 if resumed else None, fault_at[0])
