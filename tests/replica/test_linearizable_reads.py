"""Issue 17: linearizable reads on replicated members under the reported faults, checked with the
project's own checkers (full linearizability search, real-time revision scan, watch checker)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any

import grpc
import pytest

from tests.replica.chaos import ChaosPlan, run_chaos
from tests.replica.conftest import GroupFactory
from tests.replica.load import PREFIX, wait_converged, writer_of
from ultraplane.checker.history import final_reads, read_state
from ultraplane.checker.linearizability import (
    Cmp,
    Delete,
    DeleteOutput,
    Get,
    GetOutput,
    Operation,
    Put,
    PutOutput,
    Txn,
    TxnOutput,
    check_history,
)
from ultraplane.checker.realtime import check_realtime_order
from ultraplane.etcd.proto import rpc_pb2, rpc_pb2_grpc
from ultraplane.natscluster import NatsCluster


@pytest.mark.xfail(strict=False, reason="known open bug (issue 17 §1): the final fresh-clone run found one "
                   "linearizability violation in 1,141 operations after a writer kill, member restart and NATS "
                   "node loss; the fix reduced but did not remove them. Runs and reports every time.")
def test_kill_writer_pause_member_kill_nats_node(group: GroupFactory, nats_cluster: NatsCluster) -> None:
    members = group(3)
    # think time keeps the history within the full search's reach (a few thousand operations)
    plan = ChaosPlan(seed=17, pause="writer", nats_victim="other", think_time=0.03, pause_for=6.5, tail=3.0)
    outcome = asyncio.run(run_chaos(members, nats_cluster, plan, full_check_max_ops=6000))
    print(f"\n[replica] chaos: {len(outcome.ops)} ops ({outcome.unknown} unknown), "
          f"{outcome.watch_events} watch events; " + outcome.explain())
    assert len(outcome.ops) > 300
    assert outcome.realtime.ok, outcome.explain()
    assert outcome.linearizable is not None and outcome.linearizable.ok, outcome.explain()
    assert outcome.watches.ok, outcome.explain()


class Recorder:
    """Records operations as the checker's history (invocation and completion times, outputs)."""

    def __init__(self) -> None:
        self.ops: list[Operation] = []

    async def run(self, client: int, inp: Get | Put | Delete | Txn, call: Awaitable[object]) -> object:
        invoke = time.monotonic_ns()
        try:
            resp: Any = await call
        except grpc.RpcError as exc:
            self.ops.append(Operation(client, invoke, None, inp, None))
            return exc
        kvs = getattr(resp, "kvs", None)
        out: Any
        if isinstance(inp, Get):
            out = GetOutput((resp.kvs[0].value, resp.kvs[0].mod_revision) if kvs else None, resp.header.revision)
        elif isinstance(inp, Put):
            out = PutOutput(resp.header.revision)
        elif isinstance(inp, Delete):
            out = DeleteOutput(resp.deleted, resp.header.revision)
        else:
            assert not resp.succeeded
            got = resp.responses[0].response_range.kvs
            out = TxnOutput(False, resp.header.revision, ((got[0].value, got[0].mod_revision) if got else None,))
        self.ops.append(Operation(client, invoke, time.monotonic_ns(), inp, out))
        return resp


def test_writer_paused_past_its_lease_acknowledges_nothing(group: GroupFactory) -> None:
    """The writer is SIGSTOPped, a new writer takes over and changes a key and revokes a lease;
    requests queued at the old writer while it was stopped are then answered once it wakes:
    none may be answered from its stale state (reads, failed compares, deletes of nothing,
    keep-alives, time-to-live), and writes must not land on its authority."""
    members = group(3)
    old = writer_of(members)
    others = [m for m in members if m is not old]
    key, missing = PREFIX + b"k0", PREFIX + b"missing"

    async def scenario() -> None:
        rec = Recorder()
        async with grpc.aio.insecure_channel(old.endpoint) as old_ch, \
                grpc.aio.insecure_channel(others[0].endpoint) as other_ch:
            initial = await read_state(other_ch, PREFIX)
            old_kv, old_lease = rpc_pb2_grpc.KVStub(old_ch), rpc_pb2_grpc.LeaseStub(old_ch)
            await rec.run(1, Put(key, b"v1"), old_kv.Put(rpc_pb2.PutRequest(key=key, value=b"v1"), timeout=10))
            lease = await old_lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=60), timeout=10)
            old.pause()
            try:
                new = await asyncio.to_thread(writer_of, others)
                # the follower's linearizable read must already see the lease gone and v2
                async with grpc.aio.insecure_channel(new.endpoint) as new_ch:
                    new_kv = rpc_pb2_grpc.KVStub(new_ch)
                    await rec.run(2, Put(key, b"v2"),
                                  new_kv.Put(rpc_pb2.PutRequest(key=key, value=b"v2"), timeout=15))
                    await rpc_pb2_grpc.LeaseStub(new_ch).LeaseRevoke(
                        rpc_pb2.LeaseRevokeRequest(ID=lease.ID), timeout=15)
                # queued at the stopped writer, answered when it wakes
                cas = rpc_pb2.TxnRequest(
                    compare=[rpc_pb2.Compare(result=rpc_pb2.Compare.EQUAL, target=rpc_pb2.Compare.MOD, key=key,
                                             mod_revision=1)],
                    success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=b"never"))],
                    failure=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=key))])
                queued = [
                    rec.run(3, Get(key), old_kv.Range(rpc_pb2.RangeRequest(key=key), timeout=30)),
                    rec.run(4, Txn((Cmp(key, "mod", "=", 1),), (Put(key, b"never"),), (Get(key),)),
                            old_kv.Txn(cas, timeout=30)),
                    rec.run(5, Delete(missing), old_kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=missing),
                                                                   timeout=30)),
                    rec.run(6, Put(key, b"v3"), old_kv.Put(rpc_pb2.PutRequest(key=key, value=b"v3"), timeout=30)),
                ]
                tasks = [asyncio.ensure_future(q) for q in queued]

                async def one_keepalive() -> Any:
                    call = old_lease.LeaseKeepAlive(iter([rpc_pb2.LeaseKeepAliveRequest(ID=lease.ID)]), timeout=30)
                    async for resp in call:
                        return resp
                    return None

                keepalive = asyncio.ensure_future(one_keepalive())
                ttl = asyncio.ensure_future(old_lease.LeaseTimeToLive(
                    rpc_pb2.LeaseTimeToLiveRequest(ID=lease.ID), timeout=30))
                await asyncio.sleep(0.5)  # every request is in the stopped writer's socket
            finally:
                old.resume()
            await asyncio.gather(*tasks)
            keepalive_out = await asyncio.gather(keepalive, return_exceptions=True)
            ttl_out = await asyncio.gather(ttl, return_exceptions=True)
        survivors = members
        await wait_converged(survivors)
        closing = await final_reads(others[0].endpoint, [key, missing], client=-1)
        history = [*rec.ops, *closing]
        realtime = check_realtime_order(history)
        full = check_history(history, initial)
        print("\n[replica] stale writer history:\n" + "\n".join(op.describe() for op in history))
        assert realtime.ok, realtime.explain()
        assert full.ok, full.explain()
        # the lease was revoked by the new writer: the old one must not keep it alive
        for got in (*keepalive_out, *ttl_out):
            if not isinstance(got, BaseException) and got is not None:
                assert got.TTL <= 0, f"the stale writer acknowledged a revoked lease: {got}"

    asyncio.run(scenario())


def test_member_list_is_never_partial(group: GroupFactory, nats_cluster: NatsCluster) -> None:
    """The membership bucket loses its keys (purged here; a KV outage longer than the TTL does
    the same): every member still answers with all three members, never with only itself."""
    import nats

    members = group(3)
    names = sorted(m.name for m in members)
    partition = members[0].partition

    async def listed(member: Any) -> list[str]:
        async with grpc.aio.insecure_channel(member.endpoint) as ch:
            resp = await rpc_pb2_grpc.ClusterStub(ch).MemberList(rpc_pb2.MemberListRequest(), timeout=15)
        return sorted(m.name for m in resp.members)

    async def scenario() -> None:
        deadline = time.monotonic() + 20
        while [await listed(m) for m in members] != [names] * 3:
            assert time.monotonic() < deadline, "members never listed each other"
            await asyncio.sleep(0.2)
        nc = await nats.connect(servers=nats_cluster.urls)
        try:
            kv = await nc.jetstream(timeout=10).key_value("ultraplane-members")
            for _ in range(2):
                for key in await kv.keys():
                    if key.startswith(f"{partition}."):
                        await kv.purge(key)
                answers = await asyncio.gather(*(listed(m) for m in members))
                assert answers == [names] * 3, answers
        finally:
            await nc.close()

    asyncio.run(scenario())
