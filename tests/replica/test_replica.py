"""Replicated store members over one NATS JetStream journal (issue 3): real nats-server cluster,
real ``ultraplane store --journal nats://...`` processes, etcdctl and gRPC clients."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path

import grpc
import pytest

from tests.replica.conftest import GroupFactory
from tests.replica.load import PREFIX, assert_agree, run_with_fault, wait_converged, writer_of
from tests.replica.members import Member, make_members
from ultraplane.checker.history import WatchRecorder, prefix_end
from ultraplane.checker.watch import check_watches
from ultraplane.etcd.proto import rpc_pb2, rpc_pb2_grpc
from ultraplane.natscluster import NatsCluster

WRITE_RESUME_TARGET_S = 5.0  # issue 3: writes resume within 5 s of a fault


def etcdctl(member: Member, *args: str) -> str:
    out = subprocess.run(["etcdctl", "--endpoints", member.endpoint, "--command-timeout=15s", *args],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def report(name: str, value: object) -> None:
    print(f"\n[replica] {name}: {value}")


def test_members_share_one_store(group: GroupFactory) -> None:
    members = group(3)
    writer = writer_of(members)

    async def scenario() -> None:
        watchers = [WatchRecorder(m.endpoint, m.name, PREFIX, prefix_end(PREFIX), 1) for m in members]
        for w in watchers:
            await w.start()
        for i, m in enumerate(members):
            etcdctl(m, "put", f"{PREFIX.decode()}k{i}", f"from-{m.name}")
            # visible at once on every member (linearizable gets)
            for other in members:
                value = etcdctl(other, "get", f"{PREFIX.decode()}k{i}", "--print-value-only").strip()
                assert value == f"from-{m.name}"
        etcdctl(members[2], "del", f"{PREFIX.decode()}k0")
        rev = await assert_agree(members)
        streams = [await w.finish(rev) for w in watchers]
        assert [len(s.events) for s in streams] == [4, 4, 4]
        res = check_watches(streams)
        assert res.ok, res.explain()

    asyncio.run(scenario())
    for m in members:
        values = etcdctl(m, "get", "--prefix", PREFIX.decode(), "--print-value-only").split()
        assert values == [f"from-{members[1].name}", f"from-{members[2].name}"]
    listed = etcdctl(members[0], "member", "list", "-w", "json")
    names = sorted(x["name"] for x in json.loads(listed)["members"])
    assert names == sorted(m.name for m in members)
    status = [m.status() for m in members]
    assert {s.leader for s in status} == {writer.status().header.member_id}
    assert len({s.header.cluster_id for s in status}) == 1


def test_serializable_and_linearizable_reads_on_a_follower(group: GroupFactory) -> None:
    members = group(2)
    writer = writer_of(members)
    follower = next(m for m in members if m is not writer)
    for i in range(20):
        etcdctl(writer, "put", f"/rw/{i}", str(i))
        # a linearizable get on the follower right after the writer acknowledged must see it
        assert etcdctl(follower, "get", f"/rw/{i}", "--print-value-only").strip() == str(i)
    # a serializable read answers from local state: never more than was written, and all of it
    # once the follower has applied the stream
    deadline = time.monotonic() + 20
    while True:
        out = etcdctl(follower, "get", "/rw/", "--prefix", "--consistency=s", "--keys-only", "-w", "json")
        count = json.loads(out).get("count", 0)
        assert count <= 20
        if count == 20:
            break
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_lease_keepalive_through_follower_and_expiry_once(group: GroupFactory) -> None:
    members = group(3)
    writer = writer_of(members)
    follower = next(m for m in members if m is not writer)

    async def scenario() -> None:
        watchers = [WatchRecorder(m.endpoint, m.name, b"/lease/", prefix_end(b"/lease/"), 1) for m in members]
        for w in watchers:
            await w.start()
        async with grpc.aio.insecure_channel(follower.endpoint) as ch:
            lease = rpc_pb2_grpc.LeaseStub(ch)
            kv = rpc_pb2_grpc.KVStub(ch)
            granted = await lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=2), timeout=10)
            await kv.Put(rpc_pb2.PutRequest(key=b"/lease/a", value=b"1", lease=granted.ID), timeout=10)

            async def requests() -> object:
                for _ in range(8):  # 4 s of keep-alives: twice the TTL
                    yield rpc_pb2.LeaseKeepAliveRequest(ID=granted.ID)
                    await asyncio.sleep(0.5)

            ttls = [r.TTL async for r in lease.LeaseKeepAlive(requests())]
            assert ttls and all(t == 2 for t in ttls)
            got = await kv.Range(rpc_pb2.RangeRequest(key=b"/lease/a"), timeout=10)
            assert len(got.kvs) == 1, "keep-alives through a follower must keep the key"
            ttl = await lease.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=granted.ID), timeout=10)
            assert ttl.TTL > 0
        deadline = time.monotonic() + 20
        while True:
            async with grpc.aio.insecure_channel(members[0].endpoint) as ch:
                got = await rpc_pb2_grpc.KVStub(ch).Range(rpc_pb2.RangeRequest(key=b"/lease/a"), timeout=10)
            if not got.kvs:
                break
            assert time.monotonic() < deadline, "the lease never expired"
            await asyncio.sleep(0.2)
        rev = await wait_converged(members)
        streams = [await w.finish(rev) for w in watchers]
        for s in streams:
            assert [e.type for e in s.events] == ["PUT", "DELETE"], s.events
        assert check_watches(streams).ok

    asyncio.run(scenario())


def test_kill9_writer(group: GroupFactory) -> None:
    members = group(3)
    writer = writer_of(members)
    survivors = [m for m in members if m is not writer]

    async def fault() -> None:
        writer.kill9()

    outcome = asyncio.run(run_with_fault(members, fault, survivors=survivors, live_watch=survivors))
    report("kill -9 writer: writes resumed after (s)", outcome.resume_seconds)
    assert outcome.resume_seconds is not None and outcome.resume_seconds <= WRITE_RESUME_TARGET_S
    assert writer_of(survivors) in survivors


def test_kill9_follower(group: GroupFactory) -> None:
    members = group(3)
    writer = writer_of(members)
    victim = next(m for m in members if m is not writer)
    survivors = [m for m in members if m is not victim]

    async def fault() -> None:
        victim.kill9()

    outcome = asyncio.run(run_with_fault(members, fault, survivors=survivors, live_watch=survivors))
    report("kill -9 follower: writes resumed after (s)", outcome.resume_seconds)
    assert outcome.resume_seconds is not None and outcome.resume_seconds <= WRITE_RESUME_TARGET_S
    assert writer_of(survivors) is writer
    # the victim restarts on its data dir and catches up
    victim.start()

    async def rejoin() -> None:
        await assert_agree(members)

    asyncio.run(rejoin())


async def stream_leader_index(cluster: NatsCluster, stream: str = "ULTRAPLANE") -> int:
    """Which node leads the journal stream (the hardest node to lose)."""
    import nats

    nc = await nats.connect(servers=cluster.urls)
    try:
        info = await nc.jetstream(timeout=10).stream_info(stream)
    finally:
        await nc.close()
    assert info.cluster is not None and info.cluster.leader
    return next(n.index for n in cluster.nodes if n.name == info.cluster.leader)


# nats-server's Raft waits 4-9 s (minElectionTimeoutDefault..maxElectionTimeoutDefault in
# server/raft.go, not configurable) after its leader's last heartbeat before a follower campaigns;
# a stream whose leader is killed takes writes again only then, plus up to 0.8 s of campaigning.
# A graceful stop hands leadership over first (as lame-duck mode does), so that case meets 5 s.
NATS_RAFT_ELECTION_MAX_S = 9.0 + 0.8


@pytest.mark.parametrize(("how", "which", "bound"), [
    ("stop", "leader", WRITE_RESUME_TARGET_S),
    ("kill", "other", WRITE_RESUME_TARGET_S),
    ("kill", "leader", NATS_RAFT_ELECTION_MAX_S + 1.5),
])
def test_nats_node_fault(group: GroupFactory, nats_cluster: NatsCluster, how: str, which: str,
                         bound: float) -> None:
    """kill -9 or SIGTERM of one NATS node mid-load: the one leading the journal stream (the
    hardest to lose), or one that does not."""
    members = group(3)
    leader = asyncio.run(stream_leader_index(nats_cluster))
    victim = leader if which == "leader" else next(n.index for n in nats_cluster.nodes if n.index != leader)

    async def fault() -> None:
        # off the event loop: stop() waits for the node to exit, which would stall the load
        await asyncio.to_thread(nats_cluster.kill if how == "kill" else nats_cluster.stop, victim)

    async def heal() -> None:
        await asyncio.to_thread(nats_cluster.start, victim)

    outcome = asyncio.run(run_with_fault(members, fault, survivors=members, live_watch=members, heal=heal))
    report(f"{how} NATS node ({which}): writes resumed after (s)", outcome.resume_seconds)
    assert outcome.resume_seconds is not None and outcome.resume_seconds <= bound


def test_sigstop_writer_is_fenced_and_rejoins(group: GroupFactory) -> None:
    members = group(3)
    writer = writer_of(members)
    others = [m for m in members if m is not writer]

    async def fault() -> None:
        writer.pause()
        await asyncio.sleep(6)  # twice the writer lease TTL
        writer.resume()

    # the old writer's open watch must carry on across its rebuild, identical to the others
    outcome = asyncio.run(run_with_fault(members, fault, survivors=members, live_watch=members))
    report("SIGSTOP writer: writes resumed after (s)", outcome.resume_seconds)
    assert outcome.resume_seconds is not None and outcome.resume_seconds <= WRITE_RESUME_TARGET_S
    assert writer_of(members) in others, "a new writer took over while the old one was stopped"
    log = writer.log_path.read_text()
    assert "no longer the writer" in log


def test_new_member_bootstraps_from_snapshot(group: GroupFactory, tmp_path: Path) -> None:
    members = group(2, extra=["--snapshot-count", "100"])
    writer = writer_of(members)

    async def load() -> None:
        async with grpc.aio.insecure_channel(writer.endpoint) as ch:
            kv = rpc_pb2_grpc.KVStub(ch)
            await asyncio.gather(*(kv.Put(rpc_pb2.PutRequest(key=f"/boot/{i:04d}".encode(), value=b"v" * 100),
                                          timeout=20) for i in range(900)))

    asyncio.run(load())
    log = writer.log_path.read_text()
    assert "wrote snapshot" in log, "the writer should have written a snapshot to the object store"
    late = make_members(tmp_path, members[0].journal, members[0].partition, 3)[2]
    late.name = f"{members[0].partition}-late"
    late.data_dir = tmp_path / late.name
    late.start()
    try:
        asyncio.run(assert_agree([*members, late]))
        count = json.loads(etcdctl(late, "get", "/boot/", "--prefix", "--keys-only", "-w", "json"))["count"]
        assert count == 900
        assert "from a snapshot" in late.log_path.read_text()
    finally:
        late.stop()


def test_restart_everything(tmp_path: Path) -> None:
    cluster = NatsCluster(str(tmp_path / "nats-own"))
    cluster.start()
    members = make_members(tmp_path, ",".join(cluster.urls), "restart", 3)
    try:
        for m in members:
            m.start(wait=False)
        for m in members:
            m.wait_ready()

        async def fault() -> None:
            for m in members:
                m.kill9()
            for i in range(3):
                cluster.kill(i)

        async def heal() -> None:
            await asyncio.to_thread(cluster.start)
            for m in members:
                m.start(wait=False)
            for m in members:
                await asyncio.to_thread(m.wait_ready)

        outcome = asyncio.run(run_with_fault(members, fault, survivors=members, live_watch=[], heal=heal,
                                             ops_per_client=20, fault_after=60))
        report("restart of everything: ops / unknown outcomes", (outcome.ops, outcome.unknown))
        writer_of(members)
    finally:
        for m in members:
            m.stop()
        cluster.close()


@pytest.mark.parametrize("flag", ["--journal=http://x:1", "--journal=nats://127.0.0.1:1 --restore=x"])
def test_bad_journal_flags_are_refused(flag: str, tmp_path: Path) -> None:
    from harness import child_env, ultraplane_command

    out = subprocess.run([*ultraplane_command(), "store", "--data-dir", str(tmp_path / "d"), *flag.split()],
                         capture_output=True, text=True, timeout=60, env=child_env())
    assert out.returncode == 1
    assert "--journal" in out.stderr or "--restore" in out.stderr

