"""NatsJournal against a real 3-node JetStream cluster."""

from __future__ import annotations

import asyncio
import time

import nats
import pytest

from ultraplane.journal.nats import JournalFenced, NatsJournal, decode_batch, encode_batch
from ultraplane.natscluster import NatsCluster


def journal(cluster: NatsCluster, stream: str, **kw: object) -> NatsJournal:
    # Tests share a cluster: each stream gets its own subjects.
    return NatsJournal(cluster.urls, stream=stream, subject_prefix=f"{stream}.journal", **kw)  # type: ignore[arg-type]


def test_batch_encoding_round_trip() -> None:
    records = [b"", b"a", b"x" * 1000]
    assert decode_batch(encode_batch(7, records)) == (7, records)


async def test_round_trip_group_commit_and_recovery(cluster: NatsCluster, stream_name: str) -> None:
    j = journal(cluster, stream_name)
    rec = await j.open_async()
    assert rec.snapshot is None and list(rec.records) == []
    records = [f"record-{i}".encode() for i in range(2000)]
    futures = [j.append(r) for r in records]
    await asyncio.gather(*futures)
    assert all(f.done() and f.exception() is None for f in futures)
    assert j.stats.appends == 2000
    # Group commit: far fewer JetStream messages than records.
    assert 1 <= j.stats.batches < 2000
    assert j.stats.largest_batch > 1
    await j.close()

    # The stream holds exactly those messages.
    nc = await nats.connect(servers=cluster.urls)
    try:
        info = await nc.jetstream().stream_info(stream_name)
        assert info.state.messages == j.stats.batches
    finally:
        await nc.close()

    # A new instance (synchronous open, on a helper thread) recovers the same records in order.
    j2 = journal(cluster, stream_name)
    rec2 = j2.open()
    assert rec2.snapshot is None
    assert list(rec2.records) == records
    # ... and can keep appending after them.
    await j2.append(b"after")
    await j2.close()
    j3 = journal(cluster, stream_name)
    assert list((await j3.open_async()).records) == records + [b"after"]
    await j3.close()


async def test_batches_respect_max_batch_bytes(cluster: NatsCluster, stream_name: str) -> None:
    j = journal(cluster, stream_name, max_batch_bytes=1000)
    await j.open_async()
    records = [bytes([i]) * 100 for i in range(100)]
    await asyncio.gather(*(j.append(r) for r in records))
    assert j.stats.batches >= 11  # at most 9 framed 100-byte records fit in 1000 bytes
    with pytest.raises(ValueError):
        j.append(b"y" * 2000)
    await j.close()
    j2 = journal(cluster, stream_name)
    assert list(j2.open().records) == records
    await j2.close()


async def test_concurrent_appenders_keep_order(cluster: NatsCluster, stream_name: str) -> None:
    j = journal(cluster, stream_name)
    await j.open_async()
    order: list[bytes] = []

    async def worker(w: int) -> None:
        for i in range(30):
            r = f"{w}:{i}".encode()
            order.append(r)  # call order == append order (append is synchronous)
            await j.append(r)

    await asyncio.gather(*(worker(w) for w in range(20)))
    await j.flush()
    await j.close()
    j2 = journal(cluster, stream_name)
    assert list((await j2.open_async()).records) == order
    await j2.close()


async def test_snapshot_purge_and_recovery(cluster: NatsCluster, stream_name: str) -> None:
    j = journal(cluster, stream_name, retain_snapshots=1, snapshot_bytes=1000)
    await j.open_async()
    await asyncio.gather(*(j.append(f"a{i}".encode().ljust(40, b".")) for i in range(25)))  # message 1
    for i in range(25, 50):
        j.append(f"a{i}".encode().ljust(40, b"."))  # message 2 (cut there by the snapshot)
    assert j.snapshot_due()
    # Records appended before write_snapshot are covered; the snapshot cuts the batch there.
    snap = j.write_snapshot([b"state-", b"after-50"])
    assert not j.snapshot_due()
    later = [f"b{i}".encode() for i in range(20)]
    for r in later:
        j.append(r)
    await snap
    await j.flush()
    assert j.stats.snapshots_written == 1 and j.stats.purges == 1
    assert j.size_bytes > len(b"state-after-50")
    await j.close()

    nc = await nats.connect(servers=cluster.urls)
    try:
        info = await nc.jetstream().stream_info(stream_name)
        # Everything before the snapshot's message (2) is gone; it and the later ones remain.
        assert info.state.first_seq == 2
        assert info.state.messages == j.stats.batches - 1
    finally:
        await nc.close()

    j2 = journal(cluster, stream_name, retain_snapshots=1)
    rec = await j2.open_async()
    assert rec.snapshot is not None and rec.snapshot.read() == b"state-after-50"
    assert list(rec.records) == later
    assert j2.durable_seq == 70
    # A second snapshot replaces the first; recovery then needs no records at all.
    await j2.write_snapshot([b"state-2"])
    await j2.close()
    j3 = journal(cluster, stream_name, retain_snapshots=1)
    rec = await j3.open_async()
    assert rec.snapshot is not None and rec.snapshot.read() == b"state-2"
    assert list(rec.records) == []
    await j3.append(b"c0")  # fencing state survived the purge: still the writer
    await j3.close()
    j4 = journal(cluster, stream_name, retain_snapshots=1)
    rec = await j4.open_async()
    assert rec.snapshot is not None and rec.snapshot.read() == b"state-2"
    assert list(rec.records) == [b"c0"]
    await j4.close()


async def test_second_writer_fences_first(cluster: NatsCluster, stream_name: str) -> None:
    first = journal(cluster, stream_name)
    await first.open_async()
    await first.append(b"one")
    second = journal(cluster, stream_name)
    assert list((await second.open_async()).records) == [b"one"]
    # Both believe they are the writer; the first writes first, so the second is fenced.
    await first.append(b"two-from-first")
    futures = [second.append(b"from-second-%d" % i) for i in range(5)]
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert all(isinstance(r, JournalFenced) for r in results)
    with pytest.raises(JournalFenced):
        second.append(b"more")
    await second.close()
    await first.close()

    reader = journal(cluster, stream_name)
    assert list((await reader.open_async()).records) == [b"one", b"two-from-first"]
    await reader.close()


async def test_writer_survives_node_kill(own_cluster: NatsCluster, stream_name: str) -> None:
    j = journal(own_cluster, stream_name, publish_timeout=2.0)
    await j.open_async()
    await asyncio.gather(*(j.append(b"before-%d" % i) for i in range(100)))
    # Kill the stream's leader (the worst case): the other two elect a new one.
    nc = await nats.connect(servers=own_cluster.urls)
    try:
        info = await nc.jetstream().stream_info(stream_name)
        leader = info.cluster.leader if info.cluster else None
    finally:
        await nc.close()
    victim = next(n.index for n in own_cluster.nodes if n.name == leader)
    own_cluster.kill(victim)
    after = [b"after-%d" % i for i in range(100)]
    await asyncio.gather(*(j.append(r) for r in after))
    assert not own_cluster.nodes[victim].running
    # The node comes back (same store dir) and catches up; the writer carries on throughout.
    own_cluster.start(victim)
    again = [b"again-%d" % i for i in range(50)]
    await asyncio.gather(*(j.append(r) for r in again))
    await j.close()
    own_cluster.stop((victim + 1) % 3)  # graceful stop of another node: still a quorum
    j2 = journal(own_cluster, stream_name)
    records = list((await j2.open_async()).records)
    # nothing lost or duplicated
    assert records == [b"before-%d" % i for i in range(100)] + after + again
    await j2.close()


async def test_throughput_100_appenders(cluster: NatsCluster, stream_name: str) -> None:
    j = journal(cluster, stream_name)
    await j.open_async()
    per_worker = 200
    payload = b"x" * 200

    async def worker() -> None:
        for _ in range(per_worker):
            await j.append(payload)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(100)))
    elapsed = time.perf_counter() - started
    total = 100 * per_worker
    print(f"\nNatsJournal R3: {total} appends by 100 concurrent appenders in {elapsed:.2f} s = "
          f"{total / elapsed:.0f} appends/s, {j.stats.batches} publishes "
          f"(avg {total / j.stats.batches:.1f} records/batch)")
    await j.close()


def test_sync_open_without_a_loop(cluster: NatsCluster, stream_name: str) -> None:
    """open() is synchronous (the Journal protocol); appends then run on whatever loop uses it."""
    j = journal(cluster, stream_name)
    assert list(j.open().records) == []

    async def use() -> None:
        await asyncio.gather(*(j.append(b"r%d" % i) for i in range(10)))
        await j.close()

    asyncio.run(use())
    j2 = journal(cluster, stream_name)
    assert list(j2.open().records) == [b"r%d" % i for i in range(10)]
    asyncio.run(j2.close())


async def test_two_snapshots_kept_purge_behind_the_older(cluster: NatsCluster, stream_name: str) -> None:
    j = journal(cluster, stream_name)  # retain_snapshots=2
    await j.open_async()
    await j.append(b"1")
    await j.write_snapshot([b"s1"])  # covers message 1; one snapshot: nothing purged
    await j.append(b"2")
    await j.write_snapshot([b"s2"])  # covers message 2; purge below message 1: nothing
    await j.append(b"3")
    await j.write_snapshot([b"s3"])  # s1 deleted; purge below message 2 (message 1 goes)
    await j.append(b"4")
    assert j.stats.snapshots_written == 3
    await j.close()
    nc = await nats.connect(servers=cluster.urls)
    try:
        info = await nc.jetstream().stream_info(stream_name)
        assert (info.state.first_seq, info.state.last_seq) == (2, 4)
        store = await nc.jetstream().object_store(f"{stream_name}_snapshots")
        names = sorted(i.name for i in await store.list(ignore_deletes=True))
        assert len(names) == 2
        reader = journal(cluster, stream_name)
        rec = await reader.open_async()
        assert rec.snapshot is not None and rec.snapshot.read() == b"s3"
        assert list(rec.records) == [b"4"]
        await reader.close()
        # Lose the newest: recovery falls back to the older snapshot plus the records after it.
        await store.delete(names[-1])
    finally:
        await nc.close()
    j2 = journal(cluster, stream_name)
    rec = await j2.open_async()
    assert rec.snapshot is not None and rec.snapshot.read() == b"s2"
    assert list(rec.records) == [b"3", b"4"]
    await j2.close()


async def test_follower_tails_then_claims_and_fences_the_old_writer(cluster: NatsCluster, stream_name: str) -> None:
    """fetch_next() follows another instance's appends; claim() makes the follower the writer
    and fences the old one even though the old one had not been told anything."""
    writer = journal(cluster, stream_name)
    await writer.open_async()
    follower = journal(cluster, stream_name)
    await follower.open_async()
    assert await follower.fetch_next() is None  # nothing yet
    await asyncio.gather(*(writer.append(f"r{i}".encode()) for i in range(50)))
    tailed: list[bytes] = []
    while (got := await follower.fetch_next()) is not None:
        seq, records = got
        tailed += records
        assert seq <= writer.last_stream_seq
    assert tailed == [f"r{i}".encode() for i in range(50)]
    assert follower.last_stream_seq == writer.last_stream_seq
    assert await follower.remote_last_seq() == writer.last_stream_seq

    claim_seq = await follower.claim()
    assert claim_seq > writer.last_stream_seq
    with pytest.raises(JournalFenced):
        await writer.append(b"stale")
    await follower.append(b"new")  # the new writer appends after its claim
    await follower.close()
    await writer.close()
    # recovery sees the old writer's records and the new one's, not the fenced one
    again = journal(cluster, stream_name)
    assert list((await again.open_async()).records) == tailed + [b"new"]
    await again.close()


async def test_follower_fetch_batch_streams_many_messages_per_call(cluster: NatsCluster, stream_name: str) -> None:
    """fetch_batch() takes every message that has arrived from the ordered consumer at once, in
    order, and ends at the writer's last message; later appends arrive on the same consumer."""
    writer = journal(cluster, stream_name, max_batch_bytes=200)  # small batches: many messages
    await writer.open_async()
    follower = journal(cluster, stream_name)
    await follower.open_async()
    assert await follower.fetch_batch(wait=0.05) == []
    await asyncio.gather(*(writer.append(f"r{i:03d}".encode() * 10) for i in range(300)))
    assert writer.stats.batches >= 20
    tailed: list[bytes] = []
    calls = 0
    while follower.last_stream_seq < writer.last_stream_seq:
        got = await follower.fetch_batch(wait=1.0)
        calls += 1
        for _, records in got:
            tailed += records
    assert tailed == [f"r{i:03d}".encode() * 10 for i in range(300)]
    assert calls < writer.stats.batches, "one request per message: the consumer did not batch"
    assert await follower.fetch_batch(wait=0.05) == []
    await writer.append(b"later")
    got = await follower.fetch_batch(wait=2.0)
    assert [r for _, records in got for r in records] == [b"later"]
    await follower.close()
    await writer.close()


async def test_retry_of_a_publish_that_landed_is_not_a_fence(cluster: NatsCluster, stream_name: str) -> None:
    """A publish whose ack was lost is retried with the same message id and the old expected
    sequence; the server refuses it as "wrong last sequence" although the message is our own.
    The journal recognizes its message and carries on instead of fencing itself."""
    j = journal(cluster, stream_name)
    await j.open_async()
    await j.append(b"a")
    before = j.last_stream_seq
    payload = encode_batch(2, [b"b"])
    landed = await j._publish(payload, "lost-ack-1")  # lands at before + 1
    assert landed > before
    # the retry: same id, still expecting the sequence before the first attempt landed
    j._last_subject_seq = before
    assert await j._publish(payload, "lost-ack-1") == landed
    # a different message with a stale expectation is still fenced
    j._last_subject_seq = before
    with pytest.raises(JournalFenced):
        await j._publish(encode_batch(2, [b"c"]), "someone-else")
    await j.close()


async def test_barrier_proves_writership_and_fences_a_stale_writer(cluster: NatsCluster, stream_name: str) -> None:
    """barrier(): answered by a publish that started after the call (the queued records, or an
    empty batch when none are queued), conditioned like every append; once another instance has
    claimed, it raises JournalFenced instead of vouching for stale state."""
    writer = journal(cluster, stream_name)
    await writer.open_async()
    await asyncio.gather(*(writer.append(f"r{i}".encode()) for i in range(10)))
    before = writer.last_stream_seq
    idle = await writer.barrier()  # nothing queued: an empty batch
    assert idle > before and writer.last_stream_seq == idle
    pending = writer.append(b"queued")
    carried = await writer.barrier()  # the batch carrying the queued record answers it
    assert pending.done() and carried == writer.last_stream_seq
    many = await asyncio.gather(*(writer.barrier() for _ in range(20)))
    assert len(set(many)) <= 2  # concurrent barriers share publishes
    follower = journal(cluster, stream_name)
    recovered = list((await follower.open_async()).records)
    assert recovered == [f"r{i}".encode() for i in range(10)] + [b"queued"]  # empty batches add nothing
    await follower.claim()
    with pytest.raises(JournalFenced):
        await writer.barrier()
    await follower.close()
    await writer.close()
